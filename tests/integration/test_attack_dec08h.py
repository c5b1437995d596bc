"""Attack pass on what the gateway shows (access log, metrics, traces, admin, CLI), Dec 08,
helper w8: each test failed on 2801edf and passes with its fix.

1. ``gwserver_upstream_pool_idle_connections{target}``: two upstreams with other pool
   settings (pool_size, tls) to one target keep two pools, and each set the gauge over the
   other's count (2 idle connections shown as 1; /admin/upstreams' pools_in_this_worker
   showed one of the two pools too); and a target removed through etcd had its pool closed
   but its last count reported for the worker's life. Summed by target now, and 0 once the
   pool is closed.
2. ``gwserver_breaker_state``: the breaker of a route removed through etcd while open stayed
   1 for the worker's life (prometheus-client cannot delete a live worker's series), and
   ``GwserverBreakerOpen`` fired for a route that no longer exists; its adaptive
   ``gwserver_rate_limit_effective_rate`` stayed too. Only the breakers and rates of the
   routes and upstreams of the table served are shown now, as target_up's targets are.
3. The rollouts helper's gauges (``rollouts.prom``, which every worker's /metrics appends)
   outlived it: a reload that took the last rollout out stopped the helper and left its last
   step, weight and verdicts on /metrics for good (``gwserver_rollout_rolled_back`` 1 kept
   GwserverRolloutRolledBack firing), and so did a previous master's file at a start whose
   conf has no rollout. Removed then now, as health.prom is.
4. ``access_format = "common"``: a request refused before it could be parsed (a bad byte in
   its target, a header llhttp refuses) was logged ``"-" 400 0 "-" - 0`` whatever the listed
   fields: no word of why (JSON lines say ``rejected``), and a parser of the configured list
   read its fields wrong. Its listed fields follow the head now, the reason as ``error``.
5. ``gwserver register`` named the URL of a value another writer put on its key (etcdctl put
   by hand, another tool) as it was: an escape sequence there (a terminal's title, a
   screen clear, OSC 52 writing the clipboard) ran on the operator's terminal. Shown
   escaped now, as ``routes list`` shows etcd's values (terminal.printable).
6. A request refused before it could be parsed (a bad byte in the target, a head too large,
   HTTP/2's malformed streams) was counted in no metric: a flood of them showed in the access
   log alone. Counted in ``gwserver_gateway_answers_total{route="none",source="gateway"}``
   by status now.
"""
import json
import os
import signal
import socket

from ..conftest import gateway_conf, route, stop_process, to_toml, wait_until
from ..h2client import RawH2
from .test_attack_pass_dec03 import raw_request
from .test_etcd import PREFIX, all_workers_at, etcd_conf, put
from .test_review_attack_dec05r import line_of, register, register_conf
from .test_rollouts import rollout_conf


def series(gw, name):
    """{labels text: value} of one metric on /metrics (a scrape pushes the workers' counts
    first: admin.metrics_view)."""
    text = gw.admin_get("/metrics")[1].decode()
    return {line.partition("{")[2].partition("}")[0]: float(line.rpartition(" ")[2])
            for line in text.splitlines() if line.startswith(name + "{")}


def test_idle_connections_of_two_pools_to_one_target_are_summed(launcher, upstream):
    gw = launcher.gateway(gateway_conf([
        {"id": "a", "paths": ["/a"], "upstream": {"targets": [{"url": upstream.url}],
                                                  "pool_size": 5}},
        {"id": "b", "paths": ["/b"], "upstream": {"targets": [{"url": upstream.url}],
                                                  "pool_size": 7}}]))
    assert gw.request("GET", "/a")[0].status == 200
    assert gw.request("GET", "/b")[0].status == 200         # one idle connection in each pool
    assert series(gw, "gwserver_upstream_pool_idle_connections") == \
        {f'target="{upstream.url}"': 2.0}
    pools = json.loads(gw.admin_get("/admin/upstreams")[1])["pools_in_this_worker"]
    assert pools == {upstream.url: {"idle": 2, "max": 12}}


def test_a_removed_targets_closed_pool_shows_no_idle_connections(launcher, tmp_path):
    one, two = launcher.upstream("one"), launcher.upstream("two")
    etcd = launcher.etcd()
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], workers=1))
    client = etcd.client()
    put(client, "upstreams", "up", {"targets": [{"url": one.url}]})
    revision = put(client, "routes", "r", {"paths": ["/x"], "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, revision))
    assert gw.request("GET", "/x")[0].status == 200
    assert series(gw, "gwserver_upstream_pool_idle_connections") == \
        {f'target="{one.url}"': 1.0}
    revision = put(client, "upstreams", "up", {"targets": [{"url": two.url}]})
    wait_until(lambda: all_workers_at(gw, revision))
    wait_until(lambda: "closed the pools of 1 removed targets" in gw.log(), timeout=5)
    assert gw.request("GET", "/x")[0].status == 200
    # (the removed target's series, at 0 here until dec09p, is no longer shown at all)
    assert series(gw, "gwserver_upstream_pool_idle_connections") == \
        {f'target="{two.url}"': 1.0}


def test_the_open_breaker_and_adaptive_rate_of_a_route_removed_leave_the_metrics(launcher,
                                                                                 tmp_path):
    etcd = launcher.etcd()
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], workers=1))
    client = etcd.client()
    put(client, "upstreams", "up", {"targets": [{"url": "http://127.0.0.1:9"}]})
    plugins = {"breaker": {"min_requests": 2, "window": 5, "open_for": 30},
               "rate_limit": {"rate": 10, "burst": 1000, "key": "route",
                              "adaptive": {"floor": 4, "ceiling": 15}}}
    put(client, "routes", "br", {"paths": ["/br"], "upstream": "up", "plugins": plugins})
    put(client, "routes", "kept", {"paths": ["/kept"], "upstream": "up", "plugins": plugins})
    wait_until(lambda: all_workers_at(gw, client.revision()))
    assert [gw.request("GET", "/br")[0].status for _ in range(3)] == [502, 502, 503]
    assert [gw.request("GET", "/kept")[0].status for _ in range(3)] == [502, 502, 503]
    assert series(gw, "gwserver_breaker_state") == \
        {'breaker="route:br"': 1.0, 'breaker="route:kept"': 1.0}
    assert set(series(gw, "gwserver_rate_limit_effective_rate")) == \
        {'route="br"', 'route="kept"'}
    client.delete(f"{PREFIX}/routes/br")
    revision = client.revision()
    wait_until(lambda: all_workers_at(gw, revision))
    assert series(gw, "gwserver_breaker_state") == {'breaker="route:kept"': 1.0}
    assert set(series(gw, "gwserver_rate_limit_effective_rate")) == {'route="kept"'}


def rollout_gauges(gw):
    text = gw.admin_get("/metrics")[1].decode()
    return [line for line in text.splitlines() if line.startswith("gwserver_rollout_")]


def test_a_reload_that_takes_the_last_rollout_out_takes_its_gauges_out(launcher, tmp_path):
    v1, v2 = launcher.upstream("v1"), launcher.upstream("v2")
    gw = launcher.gateway(rollout_conf(tmp_path, v1, v2, workers=1))
    wait_until(lambda: 'gwserver_rollout_step{route="shop"} 1.0' in rollout_gauges(gw),
               timeout=10)
    conf = gw.conf
    conf["routes"][0]["plugins"] = {}           # no split, no rollout: the helper stops
    gw.conf_path.write_text(to_toml(conf))
    os.kill(gw.pid, signal.SIGHUP)
    wait_until(lambda: "reload complete" in gw.log(), timeout=15)
    assert gw.helper_pids("rollouts") == []
    assert rollout_gauges(gw) == []


def test_a_previous_masters_rollout_gauges_go_at_a_start_without_rollouts(launcher, tmp_path):
    v1, v2 = launcher.upstream("v1"), launcher.upstream("v2")
    state_dir = str(tmp_path / "host-state")
    conf = rollout_conf(tmp_path, v1, v2, workers=1)
    conf["server"]["state_dir"] = state_dir
    first = launcher.gateway(conf)
    wait_until(lambda: 'gwserver_rollout_step{route="shop"} 1.0' in rollout_gauges(first),
               timeout=10)
    stop_process(first.proc)
    conf["routes"][0]["plugins"] = {}
    second = launcher.gateway(conf)
    assert second.helper_pids("rollouts") == []
    assert rollout_gauges(second) == []


def test_a_rejected_requests_common_line_says_why_in_the_listed_fields(launcher, upstream):
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)],
                                       log={"access_format": "common"}))
    assert raw_request(gw.port, b"GET /ok HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
                       timeout=3).startswith(b"HTTP/1.1 200 ")
    assert raw_request(gw.port, b"GET /a\x1b[2J HTTP/1.1\r\nHost: h\r\n\r\n",
                       timeout=3).startswith(b"HTTP/1.1 400 ")
    wait_until(lambda: gw.log().count(" - - [") == 2, timeout=5)
    served, rejected = [line for line in gw.log().splitlines() if " - - [" in line]
    # the default fields after the head, on both: route, request_id, duration_ms, trace_id,
    # error (the served line's error is -)
    assert len(served.split('" 200 ', 1)[1].split(" ")) == 1 + 5 and served.endswith(" -")
    assert rejected.endswith(' "-" 400 0 - - - - "malformed request: Invalid char in url '
                             'path"'), rejected


def test_register_shows_an_escape_sequence_in_the_value_holding_its_key_escaped(launcher,
                                                                              tmp_path):
    etcd, client, conf_path = register_conf(launcher, tmp_path)
    key = f"{PREFIX}/services/orders/{socket.gethostname()}-8080"
    client.put(key, json.dumps({"url": "\x1b]0;owned\x07\x1b[2Jhttp://10.0.0.9:8080"}).encode())
    proc = register(conf_path, "http://127.0.0.1:8080")
    launcher.started.append(proc)
    said = line_of(proc.stderr)
    assert said.startswith(f"{key} is held by another registration (\\x1b]0;owned\\x07"
                           f"\\x1b[2Jhttp://10.0.0.9:8080)"), repr(said)
    assert "\x1b" not in said and "\x07" not in said


def test_requests_refused_before_they_are_parsed_are_counted(launcher, upstream):
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)],
                                       http2={"h2c": True}))
    for _ in range(3):
        assert raw_request(gw.port, b"GET /a\x1b HTTP/1.1\r\nHost: h\r\n\r\n",
                           timeout=3).startswith(b"HTTP/1.1 400 ")
    head = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n"
    assert raw_request(gw.port, head, timeout=3).startswith(b"HTTP/1.1 431 ")
    client = RawH2(gw.port, validate=False)
    try:
        client.request("/h2", method="BR EW")       # no token: a malformed stream, reset
        assert wait_until(lambda: gw.log().count('"status":400,"rejected"') == 4, timeout=5)
    finally:
        client.close()
    answers = series(gw, "gwserver_gateway_answers_total")
    assert answers.get('route="none",source="gateway",status="400"') == 4.0, answers
    assert answers.get('route="none",source="gateway",status="431"') == 1.0, answers
