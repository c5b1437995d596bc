"""Review of 0f12df3 (Dec 8, e), against real gateways, upstreams and a real redis-server.

1. expire()'s gRPC-Web 408 ran the route's reply hooks in the worker's ticker greenlet, the
   one that enforces every deadline of the worker ("the ticker must never block"). A
   third-party plugin's reply hook that waits (a lookup, a log shipped over the network)
   stalled every other connection's timeouts for as long: a slowloris head held past
   header_timeout. The ticker now runs only the built-in hooks (cors, grpc_web: CORS
   headers, no I/O).
2. A probe verdict's id was forgotten once 64 other ids had come in its half-open epoch,
   and an upload's given-back probe (one per POST whose body had not all come with its
   head) is one: a client that sent 64 such POSTs through another gateway while this
   one's verdict was owed (Redis stalled) made the owed copy count again, and one probe's
   success closed a breaker of half_open_probes = 2. The ids of verdicts are kept for the
   epoch (at most half_open_probes of them); only those of given-back probes are capped.
3. expire()'s 408 went out on plain listeners only: over TLS (HTTP/1.1), where browsers'
   gRPC-Web calls come, a stalled upload got a bare close, no status (the docs said its
   gRPC status, DEADLINE_EXCEEDED). It goes as one TLS record now, as HTTP/2's GOAWAY does.
"""
import json
import socket
import ssl
import subprocess
import threading
import time

from ..conftest import free_port, gateway_conf, installed_plugin, route, wait_until
from ..pki import CA
from .test_limits_attack_dec05b import status_of
from .test_limits_attack_dec06z import control

ORIGIN = "https://app.test"

SLOW_HOOK = '''
import gevent

from gwserver.core.schema import Schema


class slow_reply:
    """A reply hook that waits (as one shipping a log line over the network would)."""
    NAME, PRIORITY, SCHEMA = "slow_reply", 1, Schema()

    @staticmethod
    def access(conf, ctx):
        return None

    @staticmethod
    def reply(conf, ctx, head):
        gevent.sleep(3)
        head.headers.append((b"X-Slow", b"1"))
'''


def closed_after(sock, limit):
    """Seconds until the gateway closes ``sock`` (what it sends first is read and dropped)."""
    start = time.monotonic()
    sock.settimeout(limit)
    try:
        while sock.recv(65536):
            pass
    except socket.timeout:
        pass
    return time.monotonic() - start


# -- 1. a reply hook in the ticker ------------------------------------------------------------

def test_a_waiting_reply_hook_never_holds_the_workers_deadlines(launcher, upstream, tmp_path):
    """A gRPC-Web call's body stalls on a route with a third-party reply hook that waits 3 s;
    a slow head on another connection is still closed at header_timeout (0.5 s), not once
    the hook is done; the call still gets its gRPC status with CORS."""
    env = installed_plugin(tmp_path, "gwslowhook", SLOW_HOOK,
                           "slow_reply = gwslowhook:slow_reply\n")
    dead = {"targets": [{"url": f"http://127.0.0.1:{free_port()}"}], "protocol": "h2"}
    gw = launcher.gateway(gateway_conf([
        {"id": "svc", "paths": ["/gw.Svc/*m"], "upstream": dead,
         "plugins": {"grpc_web": {"allow_origins": [ORIGIN]}, "slow_reply": {}}},
        route("plain", ["/x"], upstream.url)],
        server={"client_body_timeout": 0.4, "header_timeout": 0.5}), env=env)
    call = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    slow = None
    try:
        call.sendall(b"POST /gw.Svc/Get HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     b"application/grpc-web+proto\r\nOrigin: " + ORIGIN.encode() +
                     b"\r\nContent-Length: 20\r\n\r\n\x00\x00\x00")
        time.sleep(0.3)
        slow = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
        slow.sendall(b"GET /x HTTP/1.1\r\nHost: x\r\n")         # and no more
        assert closed_after(slow, 5) < 1.5
        answer = b""
        call.settimeout(5)
        while piece := call.recv(65536):
            answer += piece
    finally:
        call.close()
        if slow is not None:
            slow.close()
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    head = answer.partition(b"\r\n\r\n")[0].lower()
    assert b"access-control-allow-origin: " + ORIGIN.encode() in head, answer[:300]
    assert b"grpc-status:4" in answer, answer


# -- 2. a verdict's id, pushed out by given-back probes ----------------------------------------

def given_back_probe(gw):
    """A POST whose body stops after its first byte, then the client's end: a half-open
    breaker grants it a probe and gives it back (an upload is not waited on), then the
    client is gone. -> once the gateway has closed the connection."""
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    with sock:
        sock.sendall(b"POST /br/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nx")
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass


def test_given_back_probes_never_push_out_a_verdicts_id(launcher, upstream, tmp_path):
    """Gateway A's probe verdict (a 200) is owed through a Redis stall; its batch ran, late.
    Before A's pause ends, 70 given-back probes come through gateway B. A's copy then
    counts nothing: half-open with one success (it closed)."""
    directory = tmp_path / "redis-debug"
    directory.mkdir()
    port = free_port()
    redis = launcher._redis_server(port, directory, "--enable-debug-command", "local")
    plugins = {"breaker": {"error_rate": 0.5, "window": 10.0, "min_requests": 2,
                           "open_for": 0.3, "max_open_for": 0.3, "half_open_probes": 2}}

    def conf(**redis_conf):
        return gateway_conf([route("br", ["/br/*rest"], upstream.url, strip_prefix="/br",
                                   plugins=plugins)],
                            redis={"url": f"redis://127.0.0.1:{port}/0", **redis_conf})
    gw_a = launcher.gateway(conf(timeout=0.1, pause=1.0))
    gw_b = launcher.gateway(conf())

    def stored():
        out = subprocess.run(["redis-cli", "-p", str(redis.port), "GET", "gw:br:route:br"],
                             capture_output=True, text=True, timeout=10).stdout
        return json.loads(out or "null")

    control(upstream, "fail=1")
    assert [status_of(gw_a, "/br/echo") for _ in range(3)] == [500, 500, 503]
    control(upstream, "fail=0")
    time.sleep(0.4)                                     # half-open at the next admission
    got = []
    probe = threading.Thread(target=lambda: got.append(status_of(gw_a, "/br/slow/0.5")))
    probe.start()
    assert wait_until(lambda: stored()["state"] == "half_open" and stored()["probes"] == 1,
                      timeout=2, interval=0.02)
    # Redis sleeps past the probe's answer (0.5 s) and its batch's timeout (0.1 s)
    subprocess.run(["redis-cli", "-p", str(port), "DEBUG", "SLEEP", "0.8"],
                   capture_output=True, timeout=5)
    probe.join(5)
    assert got == [200]
    assert wait_until(lambda: stored()["probe_ok"] == 1, timeout=1, interval=0.02)
    for _ in range(70):
        given_back_probe(gw_b)
    state = stored()
    assert (state["state"], state["probe_ok"]) == ("half_open", 1), state
    assert sum(1 for i in state["seen"] if i) >= 64     # (B's came in A's pause)
    # A's pause (1 s) over: Redis answers A again, and A's owed copy goes at once
    assert wait_until(lambda: "redis is answering again" in gw_a.log(), timeout=4,
                      interval=0.05)
    time.sleep(0.3)
    state = stored()
    assert (state["state"], state["probe_ok"]) == ("half_open", 1), state


# -- 3. the 408 over TLS -----------------------------------------------------------------------

def test_a_stalled_grpc_web_upload_over_tls_gets_its_grpc_status(launcher, tmp_path):
    """Over https the body stops after 3 of its 20 bytes: the answer at client_body_timeout
    is the trailers-only gRPC-Web 408 (grpc-status 4) with CORS, as on a plain listener (it
    was a close with nothing)."""
    ca = CA(tmp_path)
    cert, key, _ = ca.issue("localhost")
    port = free_port()
    dead = {"targets": [{"url": f"http://127.0.0.1:{free_port()}"}], "protocol": "h2"}
    launcher.gateway(gateway_conf(
        [{"id": "svc", "paths": ["/gw.Svc/*m"], "upstream": dead,
          "plugins": {"grpc_web": {"allow_origins": [ORIGIN]}}}],
        server={"client_body_timeout": 0.5},
        tls={"bind": [f"127.0.0.1:{port}"],
             "certificates": [{"cert": str(cert), "key": str(key)}]}))
    context = ssl.create_default_context(cafile=str(ca.cert_path))
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(b"POST /gw.Svc/Get HTTP/1.1\r\nHost: x\r\nContent-Type: "
                         b"application/grpc-web+proto\r\nOrigin: " + ORIGIN.encode() +
                         b"\r\nContent-Length: 20\r\n\r\n\x00\x00\x00")
            try:
                while piece := sock.recv(65536):
                    answer += piece
            except (ssl.SSLError, ConnectionResetError):
                pass                        # (the close that follows: no close_notify)
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    head = answer.partition(b"\r\n\r\n")[0].lower()
    assert b"access-control-allow-origin: " + ORIGIN.encode() in head, answer
    assert b"grpc-status:4" in answer, answer
