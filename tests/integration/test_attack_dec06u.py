"""A new operator tries the docs (attack pass dec06u): README.md, then docs/operations.md,
routes.md, health.md, http2.md and security.md, every command run for real against a gateway
started from a temp conf (demo upstream, etcd, reloads, signals, admin views).

Defects found and fixed, each pinned below (each test seen failing before its fix):

1. README.md's signal table said `TERM`, `INT`: "finish in-flight requests within
   graceful_timeout" and `QUIT`: fast stop. SIGINT is gunicorn's fast stop (docs/operations.md
   said so, and the code does it): a request in flight was cut 0.1 s after an operator's ^C
   or `kill -INT` that the README promised would drain. The README's row now says what INT
   does; the test reads both tables and holds each to what TERM and INT really do.
2. `server.bind = ["127.0.0.1:0"]` (or `admin.bind`, a port of 70000) was refused with
   `must be "host:port" (IPv6 as "[::1]:port"), got "127.0.0.1:0"`: that is host:port, and
   the operator was not told that the port is what is wrong. It now names the port range.
3. `/admin/upstreams/ID` showed every target of an upstream `unhealthy` and never said
   whether traffic still went to them: `panic` was only in the list view (`/admin/upstreams`),
   which docs/health.md points to. The item view says `panic` now too.
4. `gwserver check` "names every problem of the file in one run" (README), but a route whose
   inline upstream was bad (`url = "ftp://x"`) had its paths left unchecked: its bad
   patterns and `strip_prefix` came out only in the next run, once the upstream was fixed.
"""
import json
import re
import signal
import subprocess
import sys
import threading
import time

from ..conftest import ROOT, free_port, gateway_conf, wait_until


def signal_rows(text):
    """{signal name: the effect column} of a Markdown signal table (`TERM`, `INT` | ...)."""
    rows = {}
    for line in text.splitlines():
        m = re.match(r"\| ((?:`[A-Z]+`(?:, )?)+) \| (.*) \|\s*$", line)
        if m:
            for name in re.findall(r"`([A-Z]+)`", m.group(1)):
                rows[name] = m.group(2)
    return rows


def said(effect):
    assert ("fast stop" in effect) != ("graceful" in effect), effect
    return "fast" if "fast stop" in effect else "graceful"


def test_the_readme_signal_table_says_what_term_and_int_do_to_a_request_in_flight(launcher,
                                                                                   upstream):
    readme = signal_rows((ROOT / "README.md").read_text())
    operations = signal_rows((ROOT / "docs" / "operations.md").read_text())
    for sig in (signal.SIGTERM, signal.SIGINT):
        name = sig.name[3:]
        gw = launcher.gateway(gateway_conf([{"id": "r", "paths": ["/*rest"],
                                             "upstream": {"targets": [{"url": upstream.url}]}}]))
        got = {}

        def call():
            try:
                got["status"] = gw.request("GET", "/slow/1.5", timeout=8)[0].status
            except OSError as exc:          # cut: the connection closed with no answer
                got["error"] = exc

        client = threading.Thread(target=call)
        client.start()
        time.sleep(0.5)                     # the request is at the upstream
        gw.proc.send_signal(sig)
        client.join(10)
        assert gw.proc.wait(10) == 0
        did = "graceful" if got.get("status") == 200 else "fast"
        assert (name, said(readme[name])) == (name, did), (readme[name], got)
        assert (name, said(operations[name])) == (name, did), (operations[name], got)


def check(tmp_path, text):
    path = tmp_path / "gw.toml"
    path.write_text(text)
    return subprocess.run([sys.executable, "-m", "gwserver", "check", "-c", str(path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=30)


def test_a_bind_on_port_0_or_past_65535_is_refused_naming_the_port(tmp_path):
    done = check(tmp_path, '[server]\nbind = ["127.0.0.1:0"]\n'
                           '[admin]\nbind = "127.0.0.1:70000"\n')
    assert done.returncode == 2, done
    out = done.stdout + done.stderr
    assert re.search(r"server\.bind\[0\]: port 0 .*from 1 to 65535, got \"127\.0\.0\.1:0\"",
                     out), out
    assert re.search(r"admin\.bind: port 70000 .*from 1 to 65535", out), out
    # what is not host:port at all is still told so
    done = check(tmp_path, '[server]\nbind = ["localhost"]\n')
    assert done.returncode == 2 and 'must be "host:port"' in done.stdout + done.stderr, done


def test_one_upstreams_view_says_panic_when_every_target_is_down(launcher):
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    conf = gateway_conf([{"id": "orders", "paths": ["/orders/*rest"], "upstream": "orders"}])
    conf["upstreams"] = {"orders": {
        "targets": [{"url": url} for url in dead],
        "health_check": {"type": "tcp", "interval": 0.5, "timeout": 0.5,
                         "unhealthy_threshold": 1, "healthy_threshold": 1}}}
    gw = launcher.gateway(conf)

    def view():
        status, body = gw.admin_get("/admin/upstreams/orders")
        assert status == 200, body
        answer = json.loads(body)
        return answer if all(t["health"] == "unhealthy" for t in answer["targets"]) else None

    answer = wait_until(view, timeout=8)
    assert answer.get("panic") is True, answer
    listed = json.loads(gw.admin_get("/admin/upstreams")[1])["upstreams"]["orders"]
    assert listed["panic"] is True, listed


def test_check_names_a_routes_bad_paths_beside_its_bad_inline_upstream(tmp_path):
    done = check(tmp_path, '[[routes]]\nid = "users"\npaths = ["/ok", "/users/", "x"]\n'
                           'strip_prefix = "/api"\n'
                           'upstream = { targets = [{ url = "ftp://x" }] }\n')
    assert done.returncode == 2, done
    out = done.stdout + done.stderr
    assert 'route users: upstream.targets[0].url: must be an http:// or https:// URL' in out
    # the paths' problems in the same run, as README says `check` names them
    assert 'route users: paths[1] "/users/" ends in /' in out, out
    assert 'route users: paths[2] must start with /, got "x"' in out, out
    assert 'route users: strip_prefix "/api" is not a prefix of paths[0] "/ok"' in out, out
