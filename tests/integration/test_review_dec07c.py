"""Review of the last session's commits (45caef6..baa8762), against real processes."""
import json
import os
import signal
import threading
import time

from ..conftest import wait_until
from .test_etcd import all_workers_at, put, reboot, serves, start_while_etcd_hangs, status_of
from .test_health_attack_dec05e import register
from .test_limits_attack_dec06z import breaker_record, half_open_on_redis, status_of as get
from .test_restart_truth_dec06y import orders_service_gateway


def test_a_fresh_start_keeps_a_service_upstreams_good_version_etcds_history_names(
        launcher, tmp_path):
    """61bc0a7 keeps the snapshot's version of an item updated (refused) while the gateway
    was down when etcd's history holds that version just before the update. A service-
    following upstream is published under the version it is served at, the later of its
    own and its service's (a full load's revision): never its own mod_revision, so it was
    never kept, and after a reboot its routes answered 503 while every other host served."""
    member, conf, gw, client = orders_service_gateway(launcher, tmp_path,
                                                      launcher.upstream("first"))
    assert serves(gw, "/o/echo") == 200
    reboot(gw, conf)
    put(client, "upstreams", "orders", {"service": "orders", "balance": "bogus"})
    again = launcher.gateway(conf)
    wait_until(lambda: "loaded" in again.log() and serves(again, "/o/echo") != 404)
    resp, body = again.request("GET", "/o/echo")
    # before: 503, the route waiting for an upstream the snapshot held good
    assert resp.status == 200 and json.loads(body)["server"] == "first", (resp.status, body)
    assert "etcd holds refused updates of 1 item(s)" in again.log(), again.log()[-3000:]


def test_a_kept_service_upstream_served_from_the_snapshot_follows_the_live_instances(
        launcher, tmp_path):
    """f02118c: a kept service-following upstream follows the live instances, not the
    snapshot's. Not when the start served the snapshot first (etcd slow or down for the
    first 2 s): the snapshot's version, already served, was left as it was, its targets the
    instances of the snapshot's day; one deregistered while the gateway was down kept its
    share of the traffic for good."""
    first, second = launcher.upstream("first"), launcher.upstream("second")
    member, conf, gw, client = orders_service_gateway(launcher, tmp_path, first)
    revision = put(client, "upstreams", "orders", {"service": "orders", "balance": "bogus"})
    wait_until(lambda: (status_of(gw) or {}).get("revision") == revision)
    reboot(gw, conf)
    client.delete("/gw/services/orders/i1")         # its lease expired meanwhile
    revision = register(client, "orders", "i2", second.url)
    again = start_while_etcd_hangs(launcher, conf, member)
    wait_until(lambda: all_workers_at(again, revision), timeout=10)
    seen = []
    for _ in range(6):
        resp, body = again.request("GET", "/o/echo")
        seen.append(json.loads(body)["server"] if resp.status == 200 else resp.status)
    # before: first, second, first, ...: the gone instance in rotation for good
    assert seen == ["second"] * 6, seen


def test_a_probes_verdict_that_comes_while_the_redis_store_is_paused_is_not_lost(
        launcher, upstream):
    """82da5fb gives back a probe Redis granted to a request that fell back in a stall. A
    probe granted before the stall, whose answer came while the worker's store was paused
    after it (pause, 1 s by default, past a 50 ms timeout: a fork's stall), had its verdict
    dropped: Redis held it for max(window, open_for), every request of every host a 503
    though the upstream had recovered and Redis answered again."""
    redis, gw = half_open_on_redis(launcher, upstream)
    probe = []
    slow = threading.Thread(target=lambda: probe.append(get(gw, "/br/slow/0.8")[0]))
    slow.start()                                        # the probe, granted in Redis
    time.sleep(0.2)
    os.kill(redis.pid, signal.SIGSTOP)                  # a stall: the store pauses
    try:
        get(gw, "/br/echo")
    finally:
        time.sleep(0.1)
        os.kill(redis.pid, signal.SIGCONT)
    slow.join(5)
    assert probe == [200]                               # its verdict, in the pause

    def stored():
        return breaker_record(redis)["state"]
    # before: half_open, the probe held for max(window, open_for) and every request a 503
    assert wait_until(lambda: stored() == "closed", timeout=2.5)
    assert get(gw, "/br/echo")[0] == 200

