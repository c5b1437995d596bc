"""Fixes of Dec 8 (a), against real gateways, upstreams and a real redis-server.

1. A half-open probe's verdict whose Redis batch timed out is sent again once the store's
   pause is over (else Redis held the probe for probe_timeout). When the timed-out batch
   had in fact run, late (Redis stalled: a fork, DEBUG SLEEP, a slow host), the copy counted
   too: with half_open_probes = 2, one probe's success closed the breaker. Each probe's
   verdict carries an id that Redis remembers for the half-open epoch: counted once.
2. A gRPC-Web call (HTTP/1.1) whose body stalled got the 408 that expire() writes as the
   JSON page; one whose body was malformed in the packet of its head got reject()'s JSON
   400. Both are trailers-only gRPC statuses now, as the gateway's other answers are.
3. claim_text spelled an object claim and a null in a list as Python does ("{'a': 1}",
   "None"): forward_claims sent that, and route conditions compared it. Compact JSON now.
4. A bind with an IPv6 scope id ("[::1%lo]:P") passed `check`, and `run` could not listen
   on it: both refuse it now, naming the setting.
"""
import base64
import http.client
import json
import socket
import subprocess
import sys
import threading
import time

import pytest

from ..conftest import check_conf, free_port, gateway_conf, route, wait_until
from .test_grpc_web import parse_frames
from .test_limits_attack_dec05b import status_of
from .test_limits_attack_dec06z import control


def redis_cli(redis, *args):
    return subprocess.run(["redis-cli", "-p", str(redis.port), *args], capture_output=True,
                          text=True, timeout=10).stdout


# -- 1. a probe's verdict sent again after its batch ran late ------------------------------------

def test_a_probe_verdict_resent_after_a_late_batch_counts_once(launcher, upstream, tmp_path):
    """Two probes needed. The first probe's 200 goes to Redis while Redis sleeps (DEBUG
    SLEEP): the batch times out, the verdict is owed and sent again after the pause; the
    batch runs too, once Redis wakes. The breaker stays half-open with one success (it
    closed: one probe counted as two)."""
    directory = tmp_path / "redis-debug"
    directory.mkdir()
    port = free_port()
    redis = launcher._redis_server(port, directory, "--enable-debug-command", "local")
    gw = launcher.gateway(gateway_conf([route(
        "br", ["/br/*rest"], upstream.url, strip_prefix="/br", plugins={"breaker": {
            "error_rate": 0.5, "window": 5.0, "min_requests": 2, "open_for": 0.3,
            "max_open_for": 0.3, "half_open_probes": 2}})],
        redis={"url": f"redis://127.0.0.1:{port}/0", "timeout": 0.1, "pause": 0.3}))
    control(upstream, "fail=1")
    assert [status_of(gw, "/br/echo") for _ in range(3)] == [500, 500, 503]
    control(upstream, "fail=0")
    time.sleep(0.4)                                     # half-open at the next admission

    def stored():
        return json.loads(redis_cli(redis, "GET", "gw:br:route:br") or "null")

    got = []
    probe = threading.Thread(target=lambda: got.append(status_of(gw, "/br/slow/0.7")))
    probe.start()
    assert wait_until(lambda: stored()["state"] == "half_open" and stored()["probes"] == 1,
                      timeout=2, interval=0.02)
    # Redis sleeps from before the probe's answer (0.7 s) until after its batch timed out
    sleeper = subprocess.Popen(["redis-cli", "-p", str(port), "DEBUG", "SLEEP", "0.9"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    probe.join(5)
    sleeper.wait(5)
    assert got == [200]
    assert wait_until(lambda: stored()["probe_ok"] >= 1, timeout=2, interval=0.02)
    time.sleep(0.8)                     # the pause (0.3 s) over: the owed copy went again
    assert "redis unreachable" in gw.log() or "did not answer" in gw.log()
    state = stored()
    assert (state["state"], state["probe_ok"]) == ("half_open", 1), state
    # the second probe's success closes it
    assert status_of(gw, "/br/echo") == 200
    assert wait_until(lambda: stored()["state"] == "closed", timeout=2)


# -- 2. a gRPC-Web call's stalled body -----------------------------------------------------------

ORIGIN = "https://app.test"


def grpc_web_raw(gw, head_extra, body, text=False, wait=5.0):
    """A gRPC-Web POST over a raw socket (its head, then ``body``, then nothing more) ->
    (the status line and headers, {header: value}, the body that came before the close)."""
    content_type = b"application/grpc-web-text" if text else b"application/grpc-web+proto"
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=wait)
    try:
        sock.sendall(b"POST /gw.Svc/Get HTTP/1.1\r\nHost: x\r\nContent-Type: " + content_type +
                     b"\r\nX-Grpc-Web: 1\r\nOrigin: " + ORIGIN.encode() + b"\r\n" +
                     head_extra + b"\r\n" + body)
        got = b""
        while True:
            piece = sock.recv(65536)
            if not piece:
                break
            got += piece
    finally:
        sock.close()
    head, _, data = got.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return lines[0], headers, data


@pytest.fixture(scope="module")
def grpc_web_stall_gw(module_launcher):
    # (nothing listens on the upstream's port: no call here gets that far)
    dead = {"targets": [{"url": f"http://127.0.0.1:{free_port()}"}], "protocol": "h2"}
    return module_launcher.gateway(gateway_conf([
        {"id": "svc", "paths": ["/gw.Svc/*m"], "upstream": dead,
         "plugins": {"grpc_web": {"allow_origins": [ORIGIN], "max_body_size": 64}}}],
        server={"client_body_timeout": 0.5}))


@pytest.mark.parametrize("text", [False, True])
def test_a_grpc_web_call_whose_body_stalls_gets_a_grpc_status(grpc_web_stall_gw, text):
    """The body stops after 3 of its 20 bytes: the 408 after client_body_timeout is a
    trailers-only gRPC-Web answer, grpc-status 4 (DEADLINE_EXCEEDED), with the CORS headers
    a browser needs to read it (it was the JSON error page, read as frames of no status)."""
    start = time.monotonic()
    status, headers, data = grpc_web_raw(grpc_web_stall_gw, b"Content-Length: 20\r\n",
                                         b"\x00\x00\x00", text)
    assert time.monotonic() - start < 3
    assert status == "HTTP/1.1 200 OK", (status, data)
    assert headers["content-type"] == ("application/grpc-web-text" if text
                                       else "application/grpc-web+proto")
    assert headers["access-control-allow-origin"] == ORIGIN
    messages, trailers = parse_frames(base64.b64decode(data) if text else data)
    assert messages == [] and trailers.get("grpc-status") == "4", trailers
    assert trailers["grpc-message"]
    wait_until(lambda: any(line.get("path") == "/gw.Svc/Get" and line.get("status") == 408
                           for line in grpc_web_stall_gw.access_lines()), timeout=5)


def test_a_grpc_web_call_whose_body_is_malformed_with_its_head_gets_a_grpc_status(
        grpc_web_stall_gw):
    """A bad chunk size in the packet that brings the head: the 400 is grpc-status 13, as
    when it comes in a later read (it was the JSON page of a request never parsed)."""
    status, headers, data = grpc_web_raw(grpc_web_stall_gw, b"Transfer-Encoding: chunked\r\n",
                                         b"zz\r\nab\r\n")
    assert status == "HTTP/1.1 200 OK", (status, data)
    assert headers["content-type"] == "application/grpc-web+proto"
    assert headers["access-control-allow-origin"] == ORIGIN
    messages, trailers = parse_frames(data)
    assert messages == [] and trailers.get("grpc-status") == "13", trailers
    assert "chunk" in trailers["grpc-message"]
    # not a gRPC-Web call: the JSON page, as before
    sock = socket.create_connection(("127.0.0.1", grpc_web_stall_gw.port), timeout=5)
    with sock:
        sock.sendall(b"POST /gw.Svc/Get HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     b"\r\nzz\r\nab\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 400 ")


# -- 3. claims as text: JSON, not Python ---------------------------------------------------------

JWT_SECRET = "fix-dec08a-secret-0123456789abcdef"


def test_object_and_null_claims_are_compact_json_as_text(launcher, upstream):
    """forward_claims sends an object claim as compact JSON and a null in a list as null
    (it sent "{'tier': 'gold', 'n': 1}" and "a None"); a route condition on a list claim
    matches "null" (it matched "None"), and one on an object claim its compact JSON.
    Strings, numbers and booleans are as before."""
    import jwt as pyjwt
    plugins = {"jwt": {"algorithms": ["HS256"], "secret": JWT_SECRET, "forward_claims": {
        "org": "X-Org", "tags": "X-Tags", "sub": "X-Sub", "n": "X-N", "ok": "X-Ok"}}}
    gw = launcher.gateway(gateway_conf([
        route("nulls", ["/p"], upstream.url, priority=2, claims={"tags": "null"},
              plugins=plugins),
        route("org", ["/p"], upstream.url, priority=1, claims={"org": '{"tier":"gold","n":1}'},
              plugins=plugins),
        route("rest", ["/p"], upstream.url, plugins=plugins)]))

    def ask(claims):
        """-> (the route that took it, the headers the upstream got)."""
        token = pyjwt.encode({"sub": "alice", "exp": int(time.time()) + 600, **claims},
                             JWT_SECRET, "HS256")
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
        try:
            conn.request("GET", "/p", headers={"Authorization": f"Bearer {token}"})
            resp = conn.getresponse()
            echoed = json.loads(resp.read())
        finally:
            conn.close()
        assert resp.status == 200, echoed
        request_id = resp.getheader("X-Request-ID")
        line = wait_until(lambda: next((line for line in gw.access_lines()
                                        if line.get("request_id") == request_id), None),
                          timeout=3)
        return line["route"], {k.lower(): v for k, v in echoed["headers"]}

    taken, headers = ask({"org": {"tier": "gold", "n": 1}, "tags": ["a", None], "n": 2.5,
                          "ok": True})
    assert headers["x-org"] == '{"tier":"gold","n":1}'
    assert headers["x-tags"] == "a null"
    assert (headers["x-sub"], headers["x-n"], headers["x-ok"]) == ("alice", "2.5", "true")
    # route conditions read the same text
    assert taken == "nulls"
    assert ask({"org": {"tier": "gold", "n": 1}})[0] == "org"
    assert ask({"org": "gold", "tags": ["None"]})[0] == "rest"


# -- 4. a listener with an IPv6 scope id ---------------------------------------------------------

def test_a_bind_with_an_ipv6_scope_id_is_refused_by_check_and_run_alike(tmp_path, upstream):
    """`[::1%lo]:P` passed `check`, and `run` could not listen on it (gunicorn's listener
    takes no scope id): both refuse it now, naming the setting."""
    port = free_port()
    conf = gateway_conf([route("r", ["/x"], upstream.url)],
                        server={"bind": [f"[::1%lo]:{port}"],
                                "state_dir": str(tmp_path / "state")},
                        admin={"bind": f"127.0.0.1:{free_port()}"})
    code, said = check_conf(tmp_path, conf)
    assert code != 0 and "server.bind[0]" in said and "scope id" in said, said
    done = subprocess.run([sys.executable, "-m", "gwserver", "run", "-c",
                           str(tmp_path / "checked.toml")], capture_output=True, text=True,
                          cwd=tmp_path, timeout=30)
    assert done.returncode != 0 and "server.bind[0]" in done.stderr + done.stdout
    conf["server"]["bind"] = [f"127.0.0.1:{port}"]
    conf["admin"]["bind"] = f"[fe80::1%eth0]:{free_port()}"
    code, said = check_conf(tmp_path, conf)
    assert code != 0 and "admin.bind" in said and "scope id" in said, said
