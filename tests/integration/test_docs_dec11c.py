"""Docs pass dec11c: README.md and docs/ read as a new operator, each promise held to real
gateways, upstreams and Redis on loopback.

Defects found, each test below seen failing before its fix:

1. docs/health.md quotes the journal line of an ejection that max_ejected_percent holds back
   as `not ejecting ...: max_ejected_percent reached`; the line says the share,
   `upstream pool: not ejecting URL: max_ejected_percent (50%) reached`. An operator who
   greps the journal for the quoted words finds nothing while a target that keeps failing
   stays in rotation.
2. docs/operations.md, "Tuning": "**Redis**: rate limits only." Breakers, adaptive rates and
   limit_conn's cluster leases are kept in Redis too (`{key_prefix}br:`, `ad:`, `lc:`), and go
   through the same coalesced round trip: an operator sizing or flushing Redis by that line
   would not know the breakers live there.
3. docs/operations.md, "Install": `systemctl status gwserver` shows "gwserver: master",
   "gwserver: worker", "gwserver: config-sync". The conf scripts/install puts in place is
   the demo, with no [etcd]: no config-sync runs, and an operator following the page looks
   for a process that is not meant to be there. README.md's list of process titles left out
   the health, ocsp and rollouts helpers, which `ps` shows beside the workers.

Made tested here (passed before; no test held them): operations.md's `TTIN` / `TTOU`, one
worker more / fewer "until the next reload"; README.md's [[routes]] example, served by a real
gateway as each of its comments says.
"""
import json
import os
import re
import signal
import subprocess
import threading
import tomllib

from ..conftest import ROOT, gateway_conf, route, wait_until


def said(page):
    """A docs page's text with its lines joined (a quote may span two)."""
    return " ".join((ROOT / page).read_text().split())


def quoted(page, words):
    """The `backticked` text of ``page`` (outside its ``` blocks) that holds ``words``."""
    prose = re.sub(r"```.*?```", "", said(page))
    found = [q for q in re.findall(r"`([^`]+)`", prose) if words in q]
    assert found, f"{page} quotes nothing with {words!r}"
    return found[0]


def as_pattern(quote):
    """A quoted log line as a regex: its `...` stands for what varies."""
    return re.compile(".+?".join(map(re.escape, quote.split("..."))))


def test_the_max_ejected_percent_line_is_the_one_health_md_quotes(launcher):
    a, b = launcher.upstream("a"), launcher.upstream("b")
    gw = launcher.gateway(gateway_conf(
        [{"id": "r", "paths": ["/r/*rest"], "strip_prefix": "/r", "upstream": "pool"}],
        upstreams={"pool": {"targets": [{"url": a.url}, {"url": b.url}],
                            "passive": {"consecutive_failures": 1}}}))
    for _ in range(4):          # both answer 503: one is ejected (50%), the other held in
        assert gw.request("GET", "/r/status/503")[0].status == 503
    line = wait_until(lambda: [x for x in gw.log().splitlines() if "not ejecting" in x],
                      timeout=5)[0]
    quote = quoted("docs/health.md", "not ejecting")
    # before: `not ejecting ...: max_ejected_percent reached`, against
    # "upstream pool: not ejecting http://...: max_ejected_percent (50%) reached"
    assert as_pattern(quote).search(line), (quote, line)


def redis_keys(redis):
    out = subprocess.run(["redis-cli", "-p", str(redis.port), "--scan"], capture_output=True,
                         text=True, timeout=10)
    return out.stdout.split()


def tuning_bullet(name):
    section = said("docs/operations.md").split("## Tuning", 1)[1].split("## ", 1)[0]
    return section.split(f"- **{name}**:", 1)[1].split(" - **", 1)[0]


def test_operations_md_says_what_the_gateway_keeps_in_redis(launcher, upstream):
    slow = launcher.upstream("slow", delay=1.5)
    redis = launcher.redis()
    gw = launcher.gateway(gateway_conf([
        route("lim", ["/lim"], upstream.url, plugins={"rate_limit": {"rate": 100}}),
        route("brk", ["/brk"], upstream.url, plugins={"breaker": {}}),
        route("conn", ["/conn"], slow.url, plugins={"limit_conn": {"limit": 5}})],
        redis={"url": redis.url}))
    assert gw.request("GET", "/lim")[0].status == 200
    assert gw.request("GET", "/brk")[0].status == 200
    held = threading.Thread(target=gw.request, args=("GET", "/conn"))
    held.start()
    try:
        # the slow request holds its limit_conn lease in Redis while it is served
        keys = wait_until(lambda: (k := redis_keys(redis)) and
                          {"gw:rl:", "gw:br:", "gw:lc:"} <= {x[:6] for x in k} and k,
                          timeout=5)
    finally:
        held.join(10)
    assert "gw:br:route:brk" in keys, keys
    bullet = tuning_bullet("Redis")
    # before: "**Redis**: rate limits only. One connection pool of 4 per worker, ..."
    assert "rate limits only" not in bullet, bullet
    assert "breakers" in bullet and "limit_conn" in bullet, bullet


def test_ttin_adds_a_worker_until_the_next_reload(launcher, upstream):
    """operations.md, Signals: `TTIN` / `TTOU`: one worker more / fewer until the next
    reload, which starts server.workers again."""
    gw = launcher.gateway(gateway_conf([route("e", ["/echo"], upstream.url)], workers=2))
    assert "until the next reload" in said("docs/operations.md")
    os.kill(gw.pid, signal.SIGTTIN)
    wait_until(lambda: len(gw.serving_worker_pids()) == 3, timeout=10)
    os.kill(gw.pid, signal.SIGHUP)
    wait_until(lambda: "reload complete: generation 2, 2 workers" in gw.log(), timeout=15)
    wait_until(lambda: len(gw.worker_pids()) == 2, timeout=10)     # the old three drained
    assert len(gw.serving_worker_pids()) == 2
    assert gw.request("GET", "/echo")[0].status == 200


def titles(gw):
    """The process titles of a gateway's master and its children, as `ps` shows them."""
    out = subprocess.run(["ps", "-o", "args=", "-p", str(gw.pid), "--ppid", str(gw.pid)],
                         capture_output=True, text=True)
    return {line.strip() for line in out.stdout.splitlines()}


def test_the_processes_of_the_installed_conf_are_those_operations_md_shows(launcher):
    """scripts/install installs conf/gwserver.toml (the demo: static routes, no [etcd]);
    `systemctl status gwserver` then shows a master and workers, no config-sync, which only
    an [etcd] section starts. README.md's list of titles names the helpers too."""
    demo = launcher.upstream("demo")
    conf = tomllib.loads((ROOT / "conf" / "gwserver.toml").read_text())
    conf["server"]["workers"] = 1
    conf["upstreams"]["demo"]["targets"] = [{"url": demo.url}]
    gw = launcher.gateway(conf)
    assert gw.request("GET", "/hello")[0].status == 200
    assert titles(gw) == {"gwserver: master", "gwserver: worker"}, titles(gw)
    install = said("docs/operations.md").split("systemctl status gwserver", 1)[1]
    install = install.split("```", 1)[0]
    # before: # "gwserver: master", "gwserver: worker", "gwserver: config-sync"
    assert "[etcd]" in install and install.index("[etcd]") < install.index("config-sync"), \
        install
    readme = said("README.md").split("Process titles show roles:", 1)[1].split(". ", 1)[0]
    for role in ("master", "worker", "config-sync", "health", "ocsp", "rollouts"):
        assert f"`gwserver: {role}`" in readme, (role, readme)


def test_the_readme_route_example_serves_as_its_comments_say(launcher, upstream):
    """README.md, "Routes": the [[routes]] example, run with its upstream swapped for a real
    one; each comment held to what a client gets."""
    block = re.search(r"### Routes\n\n```toml\n(.*?)```", (ROOT / "README.md").read_text(),
                      re.S)[1]
    example = tomllib.loads(block)["routes"][0]
    assert example["upstream"]["targets"][0]["url"] == "http://127.0.0.1:9001"
    example["upstream"]["targets"][0]["url"] = upstream.url
    gw = launcher.gateway(gateway_conf([example]))
    ok = {"Host": "api.example.com", "X-Version": "beta"}

    def ask(method, path, headers=ok, body=None):
        resp, data = gw.request(method, path, body=body, headers=headers)
        return resp, data

    resp, data = ask("GET", "/api/users/42")
    assert resp.status == 200, data
    sent = json.loads(data)
    assert sent["path"] == "/users/42"                         # strip_prefix = "/api"
    assert ["X-Env", "prod"] in sent["headers"]                 # plugins.headers
    assert ask("HEAD", "/api/users/42")[0].status == 200       # GET also allows HEAD
    assert ask("DELETE", "/api/users/42")[0].status == 200
    resp, _ = ask("POST", "/api/users/42")
    assert resp.status == 405 and set(resp.getheader("Allow").split(", ")) == {"GET", "HEAD",
                                                                          "DELETE"}
    assert ask("GET", "/api/users/42", {**ok, "Host": "eu.example.com"})[0].status == 200
    assert ask("GET", "/api/users/42", {**ok, "Host": "example.org"})[0].status == 404
    assert ask("GET", "/api/users/42", {"Host": "api.example.com"})[0].status == 404
    assert ask("GET", "/api/users/42/orders")[0].status == 404    # prefix = false
    assert ask("DELETE", "/api/users/42", body=b"x" * 1048577)[0].status == 413
    assert ask("DELETE", "/api/users/42", body=b"x" * 1048576)[0].status == 200
