"""The shipped alerts (conf/alerts.yml) on what real gateways export: a /metrics scrape is
turned into promtool input series, held constant for 15 minutes, and `promtool test rules`
says which alerts fire."""
import json
import re
import subprocess
import time

from tests.conftest import ROOT, gateway_conf, route, wait_until

ALERTS = ROOT / "conf" / "alerts.yml"


def as_series(exposition):
    """Prometheus text format -> promtool input_series, every sample constant over 15m."""
    series = []
    for line in exposition.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        if value in ("NaN", "+Inf", "-Inf"):
            continue
        if "{" in name:
            name = name[:-1] + ',instance="gw"}'
        else:
            name += '{instance="gw"}'
        series.append({"series": name, "values": f"{float(value)!r}x15"})
    return series


def as_changing_series(before, after):
    """Two scrapes -> input_series: ``before``'s values for 5 minutes, then ``after``'s (a
    series absent before, a counter that was born meanwhile, starts at 0)."""
    first = {s["series"]: s["values"].partition("x")[0] for s in as_series(before)}
    return [{"series": s["series"],
             "values": f"{first.get(s['series'], '0.0')}x4 {s['values'].partition('x')[0]}x10"}
            for s in as_series(after)]


def firing(tmp_path, exposition, alertname="GwserverRedisUnreachable", before=None):
    """Whether ``alertname`` fires at 10m on the scrape (after ``before``'s values for the
    first 5 minutes, when given). promtool is told to expect no alert; when it disagrees,
    its report must name the alert (any other failure is an error here)."""
    series = as_changing_series(before, exposition) if before is not None else \
        as_series(exposition)
    test = {"rule_files": [str(ALERTS)], "evaluation_interval": "1m",
            "tests": [{"interval": "1m", "input_series": series,
                       "alert_rule_test": [{"eval_time": "10m", "alertname": alertname,
                                            "exp_alerts": []}]}]}
    path = tmp_path / "alert-test.yml"
    path.write_text(json.dumps(test))          # JSON is YAML
    run = subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True,
                         text=True, timeout=60)
    if run.returncode == 0:
        return False
    report = run.stdout + run.stderr
    assert re.search(r"got:.*alertname=\"%s\".*instance=\"gw\"" % alertname, report,
                     re.DOTALL), report
    return True


LIMITED = {"rate_limit": {"rate": 1000, "key": "route"}}


def test_redis_alert_stays_quiet_on_a_gateway_without_redis(launcher, upstream, tmp_path):
    gw = launcher.gateway(gateway_conf([route("r", ["/*p"], upstream.url, plugins=LIMITED)]))
    assert gw.request("GET", "/echo")[0].status == 200
    text = wait_until(lambda: (t := gw.admin_get("/metrics")[1].decode())
                      and 'outcome="allowed"' in t and t, timeout=5)
    assert "gwserver_redis_up" not in text
    assert not firing(tmp_path, text)


def test_redis_alert_fires_when_redis_is_down(launcher, upstream, tmp_path):
    redis = launcher.redis()
    gw = launcher.gateway(gateway_conf([route("r", ["/*p"], upstream.url, plugins=LIMITED)],
                                       redis={"url": redis.url}))
    assert gw.request("GET", "/echo")[0].status == 200
    wait_until(lambda: b"gwserver_redis_up 1.0" in gw.admin_get("/metrics")[1], timeout=5)
    assert not firing(tmp_path, gw.admin_get("/metrics")[1].decode())
    redis.kill()
    redis.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and b"gwserver_redis_up 0.0" not in \
            gw.admin_get("/metrics")[1]:
        gw.request("GET", "/echo")
        time.sleep(0.1)
    text = gw.admin_get("/metrics")[1].decode()
    assert "gwserver_redis_up 0.0" in text
    assert firing(tmp_path, text)


def test_redis_up_comes_back_without_a_request(launcher, upstream):
    """After an outage, gwserver_redis_up stayed 0 until a rate-limited request came (per
    worker), which kept the alert firing over a quiet route."""
    import os
    import signal
    redis = launcher.redis()
    gw = launcher.gateway(gateway_conf([route("r", ["/*p"], upstream.url, plugins=LIMITED)],
                                       redis={"url": redis.url, "timeout": 0.1, "pause": 0.5}))
    assert gw.request("GET", "/echo")[0].status == 200
    wait_until(lambda: b"gwserver_redis_up 1.0" in gw.admin_get("/metrics")[1], timeout=5)
    os.kill(redis.pid, signal.SIGSTOP)
    try:
        gw.request("GET", "/echo")
        wait_until(lambda: b"gwserver_redis_up 0.0" in gw.admin_get("/metrics")[1], timeout=5)
    finally:
        os.kill(redis.pid, signal.SIGCONT)
    wait_until(lambda: b"gwserver_redis_up 1.0" in gw.admin_get("/metrics")[1], timeout=5)


def test_reload_alert_fires_on_a_refused_reload_and_not_before(launcher, upstream, tmp_path):
    import os
    import signal
    gw = launcher.gateway(gateway_conf([route("r", ["/*p"], upstream.url)]))
    assert not firing(tmp_path, gw.admin_get("/metrics")[1].decode(), "GwserverReloadRefused")
    gw.conf_path.write_text(gw.conf_path.read_text() + "\n[log]\nlevel = \"loud\"\n")
    os.kill(gw.pid, signal.SIGHUP)
    text = wait_until(lambda: (t := gw.admin_get("/metrics")[1].decode())
                      and "gwserver_config_last_reload_successful 0.0" in t and t)
    assert firing(tmp_path, text, "GwserverReloadRefused")
