"""The admin listener: probes, token, views, and Prometheus metrics aggregated over workers."""
import http.client
import json
import os
import re
import signal
import subprocess

import pytest

from ..conftest import free_port, gateway_conf, route, wait_until

TOKEN = "s3cret-token"


def admin_get(port, path, token=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
    resp = conn.getresponse()
    return resp, resp.read()


@pytest.fixture
def admin_gw(launcher, upstream, tmp_path):
    port = free_port()
    metrics_dir = tmp_path / "metrics"
    gw = launcher.gateway(gateway_conf(
        [route("echo", ["/echo"], upstream.url, prefix=True)], workers=2,
        admin={"bind": f"127.0.0.1:{port}", "token": TOKEN, "metrics_dir": str(metrics_dir)}))
    gw.admin_port, gw.metrics_dir = port, metrics_dir
    return gw


def test_probes_need_no_token_everything_else_does(admin_gw):
    resp, body = admin_get(admin_gw.admin_port, "/-/healthz")
    assert resp.status == 200 and json.loads(body)["status"] == "ok"
    resp, body = admin_get(admin_gw.admin_port, "/-/ready")
    assert resp.status == 200 and json.loads(body)["routes"] == 1
    for path in ("/metrics", "/admin/routes", "/admin/upstreams", "/admin/config"):
        resp, _ = admin_get(admin_gw.admin_port, path)
        assert resp.status == 401 and resp.getheader("WWW-Authenticate").startswith("Bearer")
        assert admin_get(admin_gw.admin_port, path, "wrong")[0].status == 401
        assert admin_get(admin_gw.admin_port, path, TOKEN)[0].status == 200


def test_route_and_upstream_views(admin_gw, upstream):
    routes = json.loads(admin_get(admin_gw.admin_port, "/admin/routes", TOKEN)[1])
    assert routes["count"] == 1 and routes["routes"][0]["id"] == "echo"
    assert routes["routes"][0]["targets"] == [upstream.url]
    admin_gw.request("GET", "/echo")
    view = json.loads(admin_get(admin_gw.admin_port, "/admin/upstreams", TOKEN)[1])
    assert view["upstreams"]["echo.upstream"]["routes"] == ["echo"]


def test_a_route_view_shows_plugin_configs_and_retry_as_configured(launcher, upstream,
                                                                   tmp_path):
    """docs/operations.md promises plugin configs "defaults filled, secrets ***"; the view
    showed what plugins compiled ({"response": [[["X-A", "1"]], []]} for headers) and the
    retry policy as a Python repr string. Route, upstream and global plugins alike."""
    conf = gateway_conf([route("a", ["/a"], upstream.url, plugins={
        "headers": {"response": {"set": {"X-A": "1"}}}})], upstreams={"named": {
            "targets": [{"url": upstream.url}], "retry": {"on": ["connect", "503"]},
            "plugins": {"breaker": {"min_requests": 3}}}},
        plugins={"cors": {"allow_origins": ["https://app.example"]}})
    conf["routes"].append({"id": "b", "paths": ["/b"], "upstream": "named"})
    gw = launcher.gateway(conf)
    view = json.loads(gw.admin_get("/admin/routes/a")[1])
    plugins = {p["name"]: p["config"] for p in view["plugins"]}
    assert plugins["headers"]["response"]["set"] == {"X-A": "1"}, plugins
    assert plugins["headers"]["response"]["remove"] == []
    assert plugins["cors"]["allow_origins"] == ["https://app.example"], plugins   # global
    assert view["retry"] == {"on": ["connect"], "attempts": 1, "per_try_timeout": None,
                             "backoff": 0.025, "methods": ["DELETE", "GET", "HEAD", "OPTIONS",
                                                          "PUT", "TRACE"],
                             "timeout": None}, view["retry"]
    named = json.loads(gw.admin_get("/admin/upstreams/named")[1])
    assert named["retry"]["on"] == ["connect", "503"], named["retry"]
    assert {p["name"]: p["config"] for p in named["plugins"]}["breaker"]["min_requests"] == 3
    assert json.loads(gw.admin_get("/admin/config")[1])["path"] == str(gw.conf_path)


def scrape(gw):
    resp, body = admin_get(gw.admin_port, "/metrics", TOKEN)
    assert resp.status == 200
    return body.decode()


def sample(text, name, **labels):
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return None


def test_metrics_aggregate_workers_and_pass_promtool(admin_gw, tmp_path):
    for i in range(40):
        admin_gw.request("GET", f"/echo/{i}")              # new connection each: both workers
    admin_gw.request("GET", "/nowhere")
    text = wait_until(lambda: (t := scrape(admin_gw)) and
                      sample(t, "gwserver_requests_total", route="echo") == 40 and t)
    assert sample(text, "gwserver_requests_total", route="none", status="4xx") == 1
    assert sample(text, "gwserver_request_duration_seconds_count", route="echo") == 40
    assert sample(text, "gwserver_upstream_duration_seconds_count", route="echo") == 40
    assert sample(text, "gwserver_upstream_connections_opened_total") >= 1
    path = tmp_path / "scrape.prom"
    path.write_text(text)
    check = subprocess.run(["promtool", "check", "metrics"], stdin=open(path),
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_reloads_keep_counters_and_do_not_pile_up_files(admin_gw):
    for i in range(10):
        admin_gw.request("GET", f"/echo/{i}")
    wait_until(lambda: sample(scrape(admin_gw), "gwserver_requests_total", route="echo") == 10)
    for _ in range(3):
        before = set(admin_gw.worker_pids())
        os.kill(admin_gw.pid, signal.SIGHUP)
        wait_until(lambda: not before & set(admin_gw.worker_pids()))
    wait_until(lambda: sample(scrape(admin_gw), "gwserver_requests_total", route="echo") == 10)
    files = os.listdir(admin_gw.metrics_dir)
    per_pid = [f for f in files if not f.endswith("_archive.db")]
    # live workers' files only (2 workers x a few kinds), plus one archive per kind
    assert len(per_pid) <= 2 * 4, files
    assert "counter_archive.db" in files


def test_the_gateways_own_answers_are_counted_apart_from_the_upstreams(launcher, upstream,
                                                                        tmp_path):
    """gwserver_requests_total has status classes: a 5xx ratio alert could not tell a 502
    (the upstream failed) from a 504 (it was slow) or the upstream's own 503. The gateway's
    own answers are counted by exact status and by who answered; the access log names the
    target of a failed try (its upstream field was null)."""
    port, dead = free_port(), free_port()
    hour = 3600
    gw = launcher.gateway(gateway_conf([
        route("own", ["/status/:code"], upstream.url),
        route("dead", ["/dead"], f"http://127.0.0.1:{dead}"),
        route("slow", ["/slow/:s"], upstream.url, timeouts={"read": 0.3}),
        route("lim", ["/lim"], upstream.url, plugins={"rate_limit": {
            "rate": 1, "per": hour, "burst": 1, "key": "route"}})],
        admin={"bind": f"127.0.0.1:{port}", "token": TOKEN}))
    gw.admin_port = port
    assert gw.request("GET", "/status/503")[0].status == 503       # the upstream's own
    assert gw.request("GET", "/dead")[0].status == 502
    assert gw.request("GET", "/slow/2")[0].status == 504
    assert [gw.request("GET", "/lim")[0].status for _ in range(2)] == [200, 429]
    assert gw.request("GET", "/nowhere")[0].status == 404
    want = {("dead", "502", "gateway"): 1, ("slow", "504", "gateway"): 1,
            ("lim", "429", "rate_limit"): 1, ("none", "404", "gateway"): 1}
    text = wait_until(lambda: (t := scrape(gw)) and all(
        sample(t, "gwserver_gateway_answers_total", route=r, status=s, source=src) == n
        for (r, s, src), n in want.items()) and t)
    assert sample(text, "gwserver_gateway_answers_total", route="own") is None
    assert sample(text, "gwserver_requests_total", route="own", status="5xx") == 1
    lines = wait_until(lambda: len(gw.access_lines()) >= 6 and gw.access_lines())
    upstreams = [(line["route"], line["status"], line["upstream"]) for line in lines]
    assert upstreams == [("own", 503, upstream.url), ("dead", 502, f"http://127.0.0.1:{dead}"),
                         ("slow", 504, upstream.url), ("lim", 200, upstream.url),
                         ("lim", 429, None), (None, 404, None)]


def test_the_token_can_come_from_a_file_and_a_reload_rotates_it(launcher, upstream, tmp_path):
    """[admin] token_file (systemd LoadCredential=): the token stays out of the conf file,
    and a SIGHUP reads the file again, so rotating it needs no restart."""
    port, token_file = free_port(), tmp_path / "admin-token"
    token_file.write_text("first-token\n")
    gw = launcher.gateway(gateway_conf([route("echo", ["/echo"], upstream.url)], admin={
        "bind": f"127.0.0.1:{port}", "token_file": str(token_file)}))
    assert admin_get(port, "/admin/routes")[0].status == 401
    assert admin_get(port, "/admin/routes", "first-token")[0].status == 200
    token_file.write_text("second-token\n")
    before = set(gw.worker_pids())
    os.kill(gw.pid, signal.SIGHUP)
    wait_until(lambda: not before & set(gw.worker_pids()) and
               admin_get(port, "/admin/routes", "second-token")[0].status == 200)
    assert admin_get(port, "/admin/routes", "first-token")[0].status == 401
    token_file.write_text("")                               # refused: the second one stays
    os.kill(gw.pid, signal.SIGHUP)
    wait_until(lambda: "admin.token_file" in gw.log() and "is empty" in gw.log())
    assert admin_get(port, "/admin/routes", "second-token")[0].status == 200
    assert "second-token" not in gw.log() and "first-token" not in gw.log()
