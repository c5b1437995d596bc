"""Review of f0badad, 2e053f8 and 81e8b69 (Dec 7), against real processes."""
import http.client
import os
import signal
import threading
import time

import pytest

from ..conftest import free_port, gateway_conf, installed_plugin, wait_until
from .test_grpc_web import frame, parse_frames
from .test_limits_attack_dec06z import breaker_record, half_open_on_redis, status_of as get


@pytest.fixture(scope="module")
def grpc_web_gw(module_launcher):
    """A gRPC-Web route the gateway answers itself (a 429), on one worker."""
    dead = {"targets": [{"url": f"http://127.0.0.1:{free_port()}"}], "protocol": "h2"}
    return module_launcher.gateway(gateway_conf([
        {"id": "busy", "paths": ["/gw.Busy/*m"], "upstream": dead,
         "plugins": {"grpc_web": {}, "fault": {"abort": {"status": 429}}}},
    ]))


def call(gw, method, path):
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        conn.request(method, path, body=frame(b"\x0a\x02hi") if method == "POST" else None,
                     headers={"Content-Type": "application/grpc-web", "X-Grpc-Web": "1"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/gw.Busy/Get", 429), ("HEAD", "/gw.Busy/Get", 429), ("GET", "/nowhere", 404)])
def test_a_get_with_a_grpc_web_type_keeps_its_error_status(grpc_web_gw, method, path, status):
    """81e8b69 answers any request whose Content-Type is a gRPC-Web one as a gRPC call: a
    GET of any URL with that header got its 429 (503, 401, 404) as a 200 without
    Cache-Control, which a cache in front stores (Varnish keeps a GET's 200 for 2 minutes;
    no 429 or 503) and serves every client of the URL: one request poisoned it. A gRPC call
    is a POST: a GET or HEAD keeps its HTTP status."""
    got, _ = call(grpc_web_gw, method, path)
    assert got == status                                # before: 200
    got, body = call(grpc_web_gw, "POST", path)         # a call still gets its gRPC status
    assert got == 200 and parse_frames(body)[1]["grpc-status"] in ("8", "12")


def test_a_probes_verdict_owed_through_a_pause_survives_a_failed_retry(launcher, upstream):
    """2e053f8 owes a half-open probe's verdict that comes while the Redis store is paused
    and sends it once the pause is over, with the next batch. Redis still stalled then (a
    stall longer than one pause, with traffic), that batch failed and the verdict was
    dropped with it: Redis held the probe for max(window, open_for), every request a 503
    though the upstream and Redis were well again. It is owed again, as releases are."""
    redis, gw = half_open_on_redis(launcher, upstream)
    probe = []
    slow = threading.Thread(target=lambda: probe.append(get(gw, "/br/slow/1.05")[0]))
    slow.start()                                        # the probe, granted in Redis
    time.sleep(0.15)
    stopped = time.monotonic()
    os.kill(redis.pid, signal.SIGSTOP)                  # a stall: the store pauses ~0.2 s on
    try:
        get(gw, "/br/echo")
        slow.join(5)                                    # its verdict, owed in the pause
        time.sleep(max(0.0, stopped + 1.45 - time.monotonic()))
        get(gw, "/br/echo")     # past the pause, Redis still stalled: the owed batch fails
    finally:
        os.kill(redis.pid, signal.SIGCONT)
    assert probe == [200]

    def stored():
        return breaker_record(redis)["state"]
    # before: half_open, the probe held for max(window, open_for) and every request a 503
    assert wait_until(lambda: stored() == "closed", timeout=3)
    assert get(gw, "/br/echo")[0] == 200


DENIER = """
from gwserver.core.context import Reply
from gwserver.core.schema import Schema


class denier:
    NAME, PRIORITY, SCHEMA = "denier", 500, Schema()

    @staticmethod
    def access(conf, ctx):
        return Reply.json(403, ["denied", "by policy"])     # a JSON list, not an object
"""


def test_a_plugins_json_list_reply_to_a_grpc_web_call_keeps_its_status(launcher, tmp_path):
    """81e8b69 reads the message of the gateway's own answer to a gRPC-Web call from its
    JSON payload, as an object: a plugin's Reply.json(403, [...]) (a list, which any other
    client gets as it is) was an AttributeError, a traceback in the log for each call and a
    500 (grpc-status 13 INTERNAL) instead of the plugin's 403 (7 PERMISSION_DENIED)."""
    dead = {"targets": [{"url": f"http://127.0.0.1:{free_port()}"}], "protocol": "h2"}
    gw = launcher.gateway(gateway_conf([
        {"id": "deny", "paths": ["/gw.Deny/*m"], "upstream": dead,
         "plugins": {"grpc_web": {}, "denier": {}}}]),
        env=installed_plugin(tmp_path, "gwdenier", DENIER, "denier = gwdenier:denier\n"))
    got, body = call(gw, "POST", "/gw.Deny/Get")
    trailers = parse_frames(body)[1]
    assert got == 200 and trailers["grpc-status"] == "7", (got, body)    # before: 13
    assert "Traceback" not in gw.log()
