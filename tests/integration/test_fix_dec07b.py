"""Fixes of Dec 7 (b): the gateway's own answers to gRPC-Web calls are gRPC statuses; a kept
service-following upstream keeps the static targets listed beside its service."""
import base64
import http.client
import json
import os
import signal

import pytest

from ..conftest import free_port, gateway_conf, wait_until
from ..h2client import RawH2
from .test_etcd import (PREFIX, all_workers_at, etcd_conf, put, reboot, start_while_etcd_hangs,
                         status_of)
from .test_grpc_web import frame, parse_frames
from .test_health_attack_dec05e import register

ORIGIN = "https://app.test"


@pytest.fixture(scope="module")
def grpc_web_gw(module_launcher):
    """gRPC-Web routes whose calls the gateway answers itself: an auth plugin's 401, a 429, a
    refused upstream's 502 (nothing listens on its port)."""
    dead = {"targets": [{"url": f"http://127.0.0.1:{free_port()}"}], "protocol": "h2"}
    web = {"allow_origins": [ORIGIN]}
    return module_launcher.gateway(gateway_conf([
        {"id": "auth", "paths": ["/gw.Auth/*m"], "upstream": dead,
         "plugins": {"grpc_web": web, "key_auth": {}}},
        {"id": "busy", "paths": ["/gw.Busy/*m"], "upstream": dead,
         "plugins": {"grpc_web": web, "fault": {"abort": {"status": 429}}}},
        {"id": "down", "paths": ["/gw.Down/*m"], "upstream": dead, "plugins": {"grpc_web": web}},
    ], http2={"h2c": True}))


def grpc_web_call(gw, path, text=False):
    body = frame(b"\x0a\x02hi")
    content_type = "application/grpc-web-text" if text else "application/grpc-web+proto"
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        conn.request("POST", path, body=base64.b64encode(body) if text else body, headers={
            "Content-Type": content_type, "X-Grpc-Web": "1", "Origin": ORIGIN})
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    return resp, parse_frames(base64.b64decode(data) if text else data)


@pytest.mark.parametrize("path, code, logged", [
    ("/gw.Auth/Get", "16", 401),        # UNAUTHENTICATED
    ("/gw.Busy/Get", "8", 429),         # RESOURCE_EXHAUSTED (the native path's mapping)
    ("/gw.Down/Get", "14", 502),        # UNAVAILABLE
    ("/gw.Nowhere/Get", "12", 404),     # UNIMPLEMENTED: no route
])
def test_gateway_answers_to_grpc_web_calls_are_grpc_statuses(grpc_web_gw, path, code, logged):
    """A gRPC-Web client library reads a gRPC status, not a JSON page: before, a 401 (502,
    429, 404) came as the JSON error page, which it read as frames (no grpc-status)."""
    resp, (messages, trailers) = grpc_web_call(grpc_web_gw, path)
    assert resp.status == 200
    assert resp.getheader("Content-Type") == "application/grpc-web+proto"
    assert messages == [] and trailers.get("grpc-status") == code, trailers
    assert trailers["grpc-message"]
    assert resp.getheader("X-Request-ID")
    # the access log keeps the HTTP status of the gateway's answer, as for native gRPC
    wait_until(lambda: any(line.get("path") == path and line.get("status") == logged
                           for line in grpc_web_gw.access_lines()), timeout=5)


def test_grpc_web_text_answer_is_base64_and_readable_cross_origin(grpc_web_gw):
    """-text: the trailer frame in base64; an allowed origin gets the CORS headers on the
    gateway's own answer too (a browser's script could not read a 401 before)."""
    resp, (messages, trailers) = grpc_web_call(grpc_web_gw, "/gw.Auth/Get", text=True)
    assert resp.status == 200
    assert resp.getheader("Content-Type") == "application/grpc-web-text"
    assert messages == [] and trailers["grpc-status"] == "16", trailers
    assert resp.getheader("Access-Control-Allow-Origin") == ORIGIN
    assert "grpc-status" in resp.getheader("Access-Control-Expose-Headers")


def test_grpc_web_call_over_http2_gets_its_status(grpc_web_gw):
    """A browser speaks HTTP/2 to the gateway: the same answer there."""
    client = RawH2(grpc_web_gw.port)
    try:
        sid = client.request("/gw.Down/Get", "POST", headers=[
            ("content-type", "application/grpc-web"), ("x-grpc-web", "1")],
            body=frame(b"\x0a\x02hi"))
        status, headers, body, _ = client.response(sid)
    finally:
        client.close()
    assert status == 200 and headers["content-type"] == "application/grpc-web", headers
    messages, trailers = parse_frames(body)
    assert messages == [] and trailers.get("grpc-status") == "14", (body, trailers)


def refused_service_upstream(launcher, tmp_path, static, first):
    """A gateway (one worker) on etcd whose upstream ``orders`` follows service orders beside
    the static target ``static``, its instance i1 ``first``, and an update of it that etcd
    holds refused. -> (etcd member, conf, gateway, etcd client)"""
    member = launcher.etcd()
    conf = etcd_conf(tmp_path, [member.url], workers=1)
    gw = launcher.gateway(conf)
    client = member.client()
    spec = {"service": "orders", "targets": [{"url": static.url}]}
    put(client, "upstreams", "orders", spec)
    put(client, "routes", "o", {"paths": ["/o/*rest"], "strip_prefix": "/o",
                                "upstream": "orders"})
    revision = register(client, "orders", "i1", first.url)
    wait_until(lambda: all_workers_at(gw, revision))
    revision = put(client, "upstreams", "orders", {**spec, "balance": "bogus"})
    wait_until(lambda: (status_of(gw) or {}).get("revision") == revision)
    return member, conf, gw, client


def test_a_kept_service_upstream_keeps_its_static_targets(launcher, tmp_path):
    """An upstream with a service and static targets beside it, whose update etcd holds
    refused: kept after a fresh start, it lost its static targets (only the live instances
    served) until etcd's version was fixed. It serves both."""
    static, live = launcher.upstream("static"), launcher.upstream("live")
    member, conf, gw, client = refused_service_upstream(launcher, tmp_path, static, live)
    reboot(gw, conf)
    again = launcher.gateway(conf)
    wait_until(lambda: "loaded" in again.log())
    seen = set()
    for _ in range(6):
        resp, body = again.request("GET", "/o/echo")
        seen.add(json.loads(body)["server"] if resp.status == 200 else resp.status)
    assert seen == {"static", "live"}, seen          # before: {"live"}
    # and it still follows its service: an instance gone is gone, the static target stays
    client.delete(f"{PREFIX}/services/orders/i1")

    def only_static():
        return {json.loads(again.request("GET", "/o/echo")[1])["server"]
                for _ in range(4)} == {"static"}
    wait_until(only_static, timeout=10)


def test_a_kept_service_upstream_served_from_the_snapshot_first_follows_its_service(
        launcher, tmp_path):
    """etcd hung at the start: the snapshot serves until it answers, its service-following
    upstream put expanded (the instances of the snapshot's day as its targets). Once etcd
    answered, that version was kept as it was: an instance deregistered while the gateway
    was down kept its share of the traffic for good. It serves its static target and the
    live instances."""
    static, first, second = (launcher.upstream(name) for name in ("static", "first", "second"))
    member, conf, gw, client = refused_service_upstream(launcher, tmp_path, static, first)
    reboot(gw, conf)
    client.delete(f"{PREFIX}/services/orders/i1")
    register(client, "orders", "i2", second.url)
    again = start_while_etcd_hangs(launcher, conf, member)
    wait_until(lambda: "loaded" in again.log() and (status_of(again) or {}).get("connected"),
               timeout=20)
    revision = put(client, "routes", "marker", {"paths": ["/marker"], "upstream": "orders"})
    wait_until(lambda: all_workers_at(again, revision))
    seen = {json.loads(again.request("GET", "/o/echo")[1])["server"] for _ in range(9)}
    assert seen == {"static", "second"}, seen       # before: "first" too


def test_a_kept_service_upstream_taken_up_by_a_restarted_sync_process_follows_its_service(
        launcher, tmp_path):
    """The sync process killed and restarted by the master takes up the table the workers
    serve, its service-following upstream expanded: its update refused in etcd, that version
    was kept, the instances of its day frozen in as static targets. One deregistered since
    kept its share of the traffic for good."""
    static, first, second = (launcher.upstream(name) for name in ("static", "first", "second"))
    _, _, gw, client = refused_service_upstream(launcher, tmp_path, static, first)
    killed = status_of(gw)["pid"]
    os.kill(killed, signal.SIGKILL)
    client.delete(f"{PREFIX}/services/orders/i1")
    register(client, "orders", "i2", second.url)
    wait_until(lambda: (status_of(gw) or {}).get("pid") not in (None, killed) and
               status_of(gw).get("connected"), timeout=20)
    revision = put(client, "routes", "marker", {"paths": ["/marker"], "upstream": "orders"})
    wait_until(lambda: all_workers_at(gw, revision))
    seen = {json.loads(gw.request("GET", "/o/echo")[1])["server"] for _ in range(9)}
    assert seen == {"static", "second"}, seen       # before: "first" too
