"""Attack pass of 2026-12-16 (a helper's) on upstream plugins and splits under live config
change (eb6c29a's core.chain.Follow), against real etcd, gateways and upstreams on 127.0.0.1.

A breaker put on, changed on and taken off a canary's upstream in etcd is followed at once
by the route that splits to it (no defect: the guard below). Three defects, each test failed
before its fix: an etcd upstream put that a route using it could not take was accepted,
the route refused "(the previous version keeps serving)", yet a worker started after it
(a reload's, a dead one's replacement) compiled the published route against the new upstream
and answered 503 "its configuration was refused"; /admin/routes/ID showed a breaker set
on an upstream object with `scope = "route"`, though it is keyed upstream:ID; and
/admin/breakers left out the breaker the route's upstream's config opened on a canary that
sets none (upstream:v2)."""
import json
import os
import signal
import time

from ..conftest import gateway_conf, wait_until
from ..etcd_sync import PREFIX, status_json
from .test_rollouts import control


def put(etcd, kind, item_id, value):
    etcd.client().put(f"{PREFIX}/{kind}/{item_id}", json.dumps(value))


def etcd_gateway(launcher, tmp_path):
    etcd = launcher.etcd()
    gw = launcher.gateway(gateway_conf([], etcd={
        "endpoints": [etcd.url], "prefix": PREFIX, "runtime_dir": str(tmp_path / "run"),
        "snapshot_path": str(tmp_path / "snapshot.json")}))
    return etcd, gw


def split_to(route_id, own, canary, **plugins):
    return {"paths": [f"/{route_id}/*rest"], "upstream": own, "plugins": {
        **plugins, "split": {"upstreams": [{"upstream": own, "weight": 50},
                                           {"upstream": canary, "weight": 50}]}}}


def grpc_web_split(launcher, tmp_path):
    """Route rpc (grpc_web) in etcd, split between g1 and g2, both h2, served. -> (etcd,
    gateway, g2's upstream server): a put of g2 without protocol h2 is unfit for rpc."""
    etcd, gw = etcd_gateway(launcher, tmp_path)
    v1, v2 = launcher.upstream("v1"), launcher.upstream("v2")
    put(etcd, "upstreams", "g1", {"targets": [{"url": v1.url}], "protocol": "h2"})
    put(etcd, "upstreams", "g2", {"targets": [{"url": v2.url}], "protocol": "h2"})
    put(etcd, "routes", "rpc", split_to("rpc", "g1", "g2", grpc_web=True))
    wait_until(lambda: gw.admin_get("/admin/routes/rpc")[0] == 200, timeout=5)
    return etcd, gw, v2


def statuses(gw, group, count):
    return [gw.request("GET", "/shop/echo", headers={"X-AB-Group": group})[0].status
            for _ in range(count)]


def route_breakers(gw, route_id):
    """(upstream, min_requests, scope) of each breaker config /admin/routes/ID shows."""
    plugins = json.loads(gw.admin_get(f"/admin/routes/{route_id}")[1])["plugins"]
    return [(p.get("upstream"), p["config"]["min_requests"], p["config"]["scope"])
            for p in plugins if p["name"] == "breaker"]


def test_a_breaker_put_on_a_canarys_upstream_in_etcd_is_followed_at_once(launcher, tmp_path):
    """The route put first, its canary's breaker put, changed and taken off after: each
    version guards the split's requests to the canary from the next request on (the put
    recompiles the routes that name the upstream, by their split too)."""
    etcd, gw = etcd_gateway(launcher, tmp_path)
    v1, v2 = launcher.upstream("v1"), launcher.upstream("v2")
    put(etcd, "upstreams", "v1", {"targets": [{"url": v1.url}]})
    put(etcd, "upstreams", "v2", {"targets": [{"url": v2.url}]})
    put(etcd, "routes", "shop", split_to("shop", "v1", "v2"))
    wait_until(lambda: statuses(gw, "v2", 1) == [200], timeout=5)
    control(v2, fail=1.0)

    def guarded(min_requests):
        put(etcd, "upstreams", "v2", {"targets": [{"url": v2.url}], "plugins": {
            "breaker": {"min_requests": min_requests, "open_for": 30}}})
        wait_until(lambda: [m for _, m, _ in route_breakers(gw, "shop")] == [min_requests],
                   timeout=5)
        return statuses(gw, "v2", min_requests + 2)
    assert guarded(3) == [500] * 3 + [503] * 2
    # new thresholds: the same breaker (upstream:v2), still open
    assert guarded(5) == [503] * 7
    put(etcd, "upstreams", "v2", {"targets": [{"url": v2.url}]})
    wait_until(lambda: route_breakers(gw, "shop") == [], timeout=5)
    assert statuses(gw, "v2", 3) == [500] * 3      # taken off: the canary is called again
    assert statuses(gw, "v1", 2) == [200] * 2


def test_admin_shows_a_breaker_set_on_an_upstream_under_the_upstream_scope(launcher, tmp_path):
    """/admin/routes/ID showed the breakers of the route's own upstream and of its canary's
    as written and then validated: `scope = "route"` (the schema's default), where the
    gateway keys them upstream:v1 and upstream:v2 (/admin/breakers said so)."""
    v1, v2 = launcher.upstream("v1"), launcher.upstream("v2")
    conf = gateway_conf([{"id": "shop", **split_to("shop", "v1", "v2")}], upstreams={
        "v1": {"targets": [{"url": v1.url}], "plugins": {"breaker": {"min_requests": 7}}},
        "v2": {"targets": [{"url": v2.url}], "plugins": {"breaker": {"min_requests": 5}}}})
    gw = launcher.gateway(conf)
    assert statuses(gw, "v2", 1) == [200]
    breakers = json.loads(gw.admin_get("/admin/breakers")[1])["breakers"]
    assert sorted(breakers) == ["upstream:v1", "upstream:v2"], breakers
    assert route_breakers(gw, "shop") == [(None, 7, "upstream"), ("v2", 5, "upstream")]


def test_an_upstream_put_a_route_using_it_cannot_take_is_refused(launcher, tmp_path):
    """g2 put without protocol = "h2" while route rpc (grpc_web) splits to it: the upstream
    was accepted and the route refused, "the previous version keeps serving"; in the workers
    that had it. A worker started after (killed here; a reload's alike) compiled the published
    route against the published g2, failed, and answered 503 for the route's every request.
    Refused, naming the route, g2 keeps its previous version everywhere; a change of the
    route that lets it take g2 applies g2 by itself."""
    etcd, gw, v2 = grpc_web_split(launcher, tmp_path)
    put(etcd, "upstreams", "g2", {"targets": [{"url": v2.url}]})
    wait_until(lambda: status_json(gw).get("rejected"), timeout=5)
    time.sleep(0.5)         # (the worker reads the generation)
    pid = gw.serving_worker_pids()[0]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: gw.serving_worker_pids() not in ([], [pid]), timeout=15)
    resp, body = gw.request("GET", "/rpc/x")
    assert b"configuration was refused" not in body, body
    view = json.loads(gw.admin_get("/admin/routes/rpc")[1])
    assert view["upstream"]["id"] == "g1", view["upstream"]
    rejected = status_json(gw)["rejected"]
    assert list(rejected) == ["upstreams/g2"], rejected
    assert "route rpc" in rejected["upstreams/g2"] and \
        "the previous version keeps serving" in rejected["upstreams/g2"], rejected
    assert json.loads(gw.admin_get("/admin/upstreams/g2")[1])["protocol"] == "h2"
    put(etcd, "routes", "rpc", split_to("rpc", "g1", "g2"))
    wait_until(lambda: json.loads(gw.admin_get("/admin/upstreams/g2")[1])["protocol"] ==
               "http1", timeout=5)
    assert status_json(gw)["rejected"] == {}


def test_admin_breakers_shows_the_breaker_a_split_s_upstream_runs_under_the_routes_config(
        launcher, tmp_path):
    """The route's own upstream's breaker (v1's) guards the requests the split sends to v2,
    which sets none, under v2's key (docs/breaker.md). v2's failures opened upstream:v2, and
    /admin/breakers listed only upstream:v1 (closed): the open one was in no admin view."""
    v1, v2 = launcher.upstream("v1"), launcher.upstream("v2")
    conf = gateway_conf([{"id": "shop", **split_to("shop", "v1", "v2")}], upstreams={
        "v1": {"targets": [{"url": v1.url}],
               "plugins": {"breaker": {"min_requests": 3, "open_for": 30}}},
        "v2": {"targets": [{"url": v2.url}]}})
    gw = launcher.gateway(conf)
    control(v2, fail=1.0)
    assert statuses(gw, "v2", 5) == [500] * 3 + [503] * 2
    breakers = json.loads(gw.admin_get("/admin/breakers")[1])["breakers"]
    assert sorted(breakers) == ["upstream:v1", "upstream:v2"], breakers
    assert breakers["upstream:v2"]["state"] == "open" and \
        breakers["upstream:v2"]["routes"] == ["shop"], breakers
    assert breakers["upstream:v1"]["state"] == "closed", breakers
