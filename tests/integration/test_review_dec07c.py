"""Review of the last session's commits (45caef6..baa8762), against real processes."""
import json
import os
import shutil
import signal
import subprocess
import threading
import time

from ..conftest import gateway_conf, route, wait_until
from .test_etcd import all_workers_at, etcd_conf, put, serves, status_of
from .test_health_attack_dec05e import register
from .test_limits_attack_dec06z import control, status_of as get


def test_a_fresh_start_keeps_a_service_upstreams_good_version_etcds_history_names(
        launcher, tmp_path):
    """61bc0a7 keeps the snapshot's version of an item updated (refused) while the gateway
    was down when etcd's history holds that version just before the update. A service-
    following upstream is published under the version it is served at, the later of its
    own and its service's (a full load's revision): never its own mod_revision, so it was
    never kept, and after a reboot its routes answered 503 while every other host served."""
    first = launcher.upstream("first")
    member = launcher.etcd()
    conf = etcd_conf(tmp_path, [member.url], workers=1)
    gw = launcher.gateway(conf)
    client = member.client()
    put(client, "upstreams", "orders", {"service": "orders"})
    register(client, "orders", "i1", first.url)
    revision = put(client, "routes", "o", {"paths": ["/o/*rest"], "strip_prefix": "/o",
                                           "upstream": "orders"})
    wait_until(lambda: (status_of(gw) or {}).get("revision") == revision)
    assert serves(gw, "/o/echo") == 200
    os.kill(gw.pid, signal.SIGTERM)         # the snapshot is written on exit
    gw.proc.wait(15)
    shutil.rmtree(conf["etcd"]["runtime_dir"])      # a reboot
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
    member = launcher.etcd()
    conf = etcd_conf(tmp_path, [member.url], workers=1)
    gw = launcher.gateway(conf)
    client = member.client()
    put(client, "upstreams", "orders", {"service": "orders"})
    register(client, "orders", "i1", first.url)
    put(client, "routes", "o", {"paths": ["/o/*rest"], "strip_prefix": "/o",
                                "upstream": "orders"})
    revision = put(client, "upstreams", "orders", {"service": "orders", "balance": "bogus"})
    wait_until(lambda: (status_of(gw) or {}).get("revision") == revision)
    os.kill(gw.pid, signal.SIGTERM)         # the snapshot is written on exit
    gw.proc.wait(15)
    shutil.rmtree(conf["etcd"]["runtime_dir"])      # a reboot
    client.delete("/gw/services/orders/i1")         # its lease expired meanwhile
    revision = register(client, "orders", "i2", second.url)
    os.kill(member.proc.pid, signal.SIGSTOP)        # etcd answers after the first try
    try:
        again = launcher.gateway(conf)
        wait_until(lambda: "serving snapshot" in again.log(), timeout=10)
    finally:
        os.kill(member.proc.pid, signal.SIGCONT)
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
        raw = subprocess.run(["redis-cli", "-p", str(redis.port), "GET", "gw:br:route:br"],
                             capture_output=True, text=True, timeout=10).stdout
        return json.loads(raw)["state"]
    # before: half_open, the probe held for max(window, open_for) and every request a 503
    assert wait_until(lambda: stored() == "closed", timeout=2.5)
    assert get(gw, "/br/echo")[0] == 200


def half_open_on_redis(launcher, upstream):
    """A gateway (one worker) whose breaker on Redis opened on the upstream's 500s and is
    half-open at its next admission, the upstream well again. -> (redis, gateway)"""
    redis = launcher.redis()
    gw = launcher.gateway(gateway_conf([route(
        "br", ["/br/*rest"], upstream.url, strip_prefix="/br", plugins={"breaker": {
            "error_rate": 0.5, "window": 6.0, "min_requests": 4, "open_for": 1.0,
            "max_open_for": 2.0, "half_open_probes": 1}})],
        workers=1, redis={"url": redis.url, "timeout": 0.2, "pause": 1.0}))
    control(upstream, "fail=1")
    opened = [get(gw, "/br/echo")[0] for _ in range(6)]
    assert opened[:4] == [500] * 4 and opened[-1] == 503
    control(upstream, "fail=0")
    time.sleep(1.1)                                     # half-open at the next admission
    return redis, gw
