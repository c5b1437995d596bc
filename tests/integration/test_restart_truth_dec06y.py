"""A gateway started afresh (a reboot, a stop and start: nothing published in runtime_dir)
while etcd holds a refused update of a route, an upstream or a consumer it served: the sync
process that saw the update come kept the last good version, and so does every other host,
but the new one fenced the route (503), dropped the upstream (its routes 503) and the
consumer (401). It now serves the snapshot's good version, and says so."""

from gwserver.plugins.key_auth import hash_key

from ..conftest import wait_until
from .test_etcd import PREFIX, UP, all_workers_at, etcd_conf, put, reboot, serves, status_of


def test_a_fresh_start_keeps_the_last_good_version_the_snapshot_holds(launcher, upstream,
                                                                      tmp_path):
    member = launcher.etcd()
    conf = etcd_conf(tmp_path, [member.url], workers=1)
    gw = launcher.gateway(conf)
    client = member.client()
    put(client, "upstreams", "up", UP(upstream))
    put(client, "upstreams", "other", UP(upstream))
    put(client, "routes", "other", {"paths": ["/other"], "upstream": "other"})
    put(client, "consumers", "alice",
        {"credentials": {"key_auth": {"key_hash": hash_key("alice-key")}}})
    revision = put(client, "routes", "kept", {"paths": ["/kept"], "upstream": "up",
                                              "plugins": {"key_auth": {}}})
    wait_until(lambda: all_workers_at(gw, revision))
    assert gw.request("GET", "/kept", headers={"X-API-Key": "alice-key"})[0].status == 200
    # three bad updates: each keeps its last good version on this running gateway
    put(client, "routes", "kept", {"paths": ["/kept"], "upstream": "up",
                                   "plugins": {"key_auth": {"no_such_option": 1}}})
    put(client, "upstreams", "other", {"targets": [{"url": "ftp://nowhere"}]})
    revision = put(client, "consumers", "alice", {"credentials": {"key_auth": {"key_hash": 7}}})
    wait_until(lambda: (status_of(gw) or {}).get("revision") == revision)
    assert gw.request("GET", "/kept", headers={"X-API-Key": "alice-key"})[0].status == 200
    assert serves(gw, "/other") == 200
    reboot(gw, conf)
    second = launcher.gateway(conf)
    wait_until(lambda: "loaded" in second.log() and serves(second, "/other") != 404)
    # before: 503 (fenced), 503 (the upstream dropped), and alice's key unknown
    assert second.request("GET", "/kept", headers={"X-API-Key": "alice-key"})[0].status == 200
    assert serves(second, "/other") == 200
    log = second.log()
    assert "etcd holds refused updates of 3 item(s)" in log, log[-3000:]
    assert "upstreams/other" in log and "routes/kept" in log and "consumers/alice" in log
    # the refusals are still shown, as on the host that saw them come
    status = status_of(second)
    assert {"routes/kept", "upstreams/other", "consumers/alice"} <= set(status["rejected"]), \
        status


def test_a_kept_service_upstream_follows_the_live_instances_not_the_snapshots(launcher,
                                                                                tmp_path):
    """(the review pass on 61bc0a7) A service-following upstream is published expanded: the
    snapshot's version held the instances of its day as targets, and kept after a fresh
    start, an instance deregistered while the gateway was down kept half the traffic for
    good. The kept version follows the live instances."""
    import json

    from .test_health_attack_dec05e import register
    first, second = launcher.upstream("first"), launcher.upstream("second")
    member, conf, gw, client = orders_service_gateway(launcher, tmp_path, first)
    revision = put(client, "upstreams", "orders", {"service": "orders", "balance": "bogus"})
    wait_until(lambda: (status_of(gw) or {}).get("revision") == revision)
    reboot(gw, conf)
    client.delete(f"{PREFIX}/services/orders/i1")
    register(client, "orders", "i2", second.url)
    again = launcher.gateway(conf)
    wait_until(lambda: "loaded" in again.log())
    seen = []
    for _ in range(6):
        resp, body = again.request("GET", "/o/echo")
        seen.append(json.loads(body)["server"] if resp.status == 200 else resp.status)
    # before: first, second, first, ...: the gone instance in rotation for good
    assert seen == ["second"] * 6, seen


def orders_service_gateway(launcher, tmp_path, instance):
    """A gateway (one worker) on a fresh etcd, serving route "o" (/o/*rest) to upstream
    "orders", which follows service "orders" of one instance, i1 at ``instance``.
    -> (member, conf, gateway, client)"""
    from .test_health_attack_dec05e import register
    member = launcher.etcd()
    conf = etcd_conf(tmp_path, [member.url], workers=1)
    gw = launcher.gateway(conf)
    client = member.client()
    put(client, "upstreams", "orders", {"service": "orders"})
    register(client, "orders", "i1", instance.url)
    revision = put(client, "routes", "o", {"paths": ["/o/*rest"], "strip_prefix": "/o",
                                           "upstream": "orders"})
    wait_until(lambda: all_workers_at(gw, revision))
    return member, conf, gw, client
