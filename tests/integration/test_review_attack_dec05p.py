"""A review, as an attacker, of 6b404b2 and cbd468d (Redis: the batcher's held connection and
BatchLost; one reading of a redis URL for check, parser and masks): the attack pass of
2026-12-05, helper s7. Each test failed on 28b90d4.

1. A Redis restarted with a dataset to load answers every command ``-LOADING`` until it has
   loaded it, which redis-py raises as a ConnectionError (BusyLoadingError). The batcher
   took that reply for a connection lost after its write (BatchLost): no pause, the
   decisions fell back one batch at a time, each batch on a new connection and handshake
   that Redis refused again (20 requests: 20 connections), ``gwserver_redis_up`` said 1,
   and the log said "not sent again, it may have counted" of calls Redis never ran. Before
   6b404b2 the store paused. A reply redis-py raises as ConnectionError (LOADING,
   WRONGPASS, max clients) is Redis refusing again: the store pauses, its words logged.
2. ``redis+cluster://host:7000,host:7001/0`` (db 0, a cluster's one database, as many
   write it and redis-py's own cluster URL takes it) was refused by ``check`` since 6b404b2
   ("a Redis Cluster has one database"): a gateway whose config said so failed to start or
   reload after the upgrade. ``/0`` passes again; another db is still refused.
3. A password given as ``?password=`` holding an unencoded "&" or "#"
   (``redis://127.0.0.1:6379/0?password=Tr0ub4dor&3#horse``): redis-py reads "Tr0ub4dor"
   (a piece without "=" is dropped, a fragment never read), so ``check`` said ok and every
   worker's AUTH failed; and the masks, whose value ended at the "&", "#" or a space,
   showed the rest of the password in ``check --dump``, its errors and the admin config
   view (``password=***&3#horse``; ``?password=c0rrect b4ttery`` as ``password=***
   b4ttery``). Refused now, naming the encoding; a query password is masked whole, to the
   next option.
4. A URL whose port answers, but not as Redis does (another server's port, an HTTP one;
   TLS wanted where the URL says redis://): redis-py raises InvalidResponse ("Protocol
   error, got "<" as reply type byte"), which the store did not count among Redis' errors:
   each batch, one a request, made a new connection and logged "redis batch failed" with
   a traceback, the store never paused and ``gwserver_redis_up`` said 1. It is Redis
   failing now: one "redis unreachable (what answers there does not speak Redis'
   protocol ...)", the store paused.
"""
import http.client
import subprocess
import time

import pytest

from ..conftest import TcpRelay, gateway_conf, route
from .test_open_items_dec05h import check_dump

HOUR = 3600.0


def get(gw, path="/lim"):
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    conn.request("GET", path)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp.status


def redis_cli(port, *args):
    return subprocess.run(["redis-cli", "-p", str(port), *args], check=True,
                          capture_output=True, timeout=60).stdout


# -- 1. a Redis loading its dataset pauses the store ------------------------------------------

def test_a_redis_loading_its_dataset_pauses_the_store_not_a_connection_a_batch(
        launcher, upstream):
    redis = launcher.redis()
    redis_cli(redis.port, "EVAL", "for i=1,300000 do redis.call('SET','k'..i,'v') end", "0")
    redis_cli(redis.port, "SAVE")
    relay = TcpRelay(redis.port)
    try:
        gw = launcher.gateway(gateway_conf(
            [route("lim", ["/lim"], upstream.url, plugins={"rate_limit": {
                "rate": 1000, "per": HOUR, "burst": 1000, "key": "route",
                "on_store_error": "allow"}})],
            redis={"url": f"redis://127.0.0.1:{relay.port}/0", "timeout": 0.5, "pause": 30.0}))
        assert get(gw) == 200
        redis.kill()
        redis.wait()
        # the same Redis again, slow to load its dump, answering -LOADING meanwhile
        launcher._redis_server(redis.port, launcher.tmp_dir / f"redis-{redis.port}",
                               "--key-load-delay", "50",
                               "--loading-process-events-interval-bytes", "1024")
        assert b"LOADING" in redis_cli(redis.port, "PING")
        before = relay.accepted
        for _ in range(20):
            assert get(gw) == 200           # allow: each falls back, none waits long
            time.sleep(0.01)
        assert b"LOADING" in redis_cli(redis.port, "PING")      # still loading
        assert relay.accepted - before <= 2, relay.accepted - before    # was 20: one a batch
        log = gw.log()
        assert "redis unreachable" in log and "loading the dataset" in log, log[-2000:]
        assert "it may have counted" not in log
        assert b"gwserver_redis_up 0.0" in gw.admin_get("/metrics")[1]
    finally:
        relay.close()


# -- 2. a Cluster URL's /0 ---------------------------------------------------------------------

def test_a_cluster_url_with_db_0_passes_check_as_it_did(tmp_path):
    code, out = check_dump(tmp_path, "redis+cluster://:s3cr3tpw@127.0.0.1:7000,127.0.0.1:7001/0")
    assert code == 0 and "url = " in out and "s3cr3tpw" not in out, out
    code, out = check_dump(tmp_path, "redis+cluster://127.0.0.1:7000,127.0.0.1:7001/3")
    assert code != 0 and "one database" in out, out


# -- 3. a query password holding "&", "#" or a space --------------------------------------------

@pytest.mark.parametrize("url", [
    "redis://127.0.0.1:6379/0?password=Tr0ub4dor&3#h0rse99",
    "redis://127.0.0.1:6379/0?db=1&password=Tr0ub4dor&h0rse99",
    "unix:///run/redis/redis.sock?password=Tr0ub4dor#h0rse99",
])
def test_a_query_password_redis_py_would_cut_is_refused_and_never_shown(tmp_path, url):
    code, out = check_dump(tmp_path, url)
    assert code != 0 and "%26" in out and "%23" in out, out
    assert "Tr0ub4dor" not in out and "h0rse99" not in out, out
    # encoded, it passes, masked whole
    code, out = check_dump(tmp_path, url.replace("&3#", "%263%23").replace(
        "r&h", "r%26h").replace("r#h", "r%23h"))
    assert code == 0 and "url = " in out, out
    assert "Tr0ub4dor" not in out and "h0rse99" not in out, out


def test_a_query_password_with_a_space_is_masked_whole(tmp_path):
    code, out = check_dump(tmp_path, "redis://127.0.0.1:6379/0?password=c0rrect b4ttery&db=2")
    assert code == 0 and "db=2" in out, out
    assert "c0rrect" not in out and "b4ttery" not in out, out



# -- 4. no Redis at the URL's port -------------------------------------------------------------

def test_a_port_that_answers_no_redis_pauses_the_store_without_a_traceback_a_request(
        launcher, upstream):
    port = int(upstream.url.rsplit(":", 1)[1])      # an HTTP server: "HTTP/1.1 400 ..."
    gw = launcher.gateway(gateway_conf(
        [route("lim", ["/lim"], upstream.url, plugins={"rate_limit": {
            "rate": 1000, "per": HOUR, "burst": 1000, "key": "route",
            "on_store_error": "allow"}})],
        redis={"url": f"redis://127.0.0.1:{port}/0", "timeout": 0.5, "pause": 30.0}))
    for _ in range(10):
        assert get(gw) == 200
        time.sleep(0.01)
    log = gw.log()
    assert "Traceback" not in log and "redis batch failed" not in log, log[-3000:]
    assert log.count("redis unreachable") == 1, log[-3000:]
    assert "does not speak Redis' protocol" in log
    assert b"gwserver_redis_up 0.0" in gw.admin_get("/metrics")[1]
