"""A gRPC call's own deadline (grpc-timeout) that runs out is the client's patience, not the
upstream's failure: passive health did not count it, and split's gates no longer do (094fae6),
but a breaker did. Calls of grpc-timeout 1m (a millisecond) opened the breaker of a healthy
upstream answering in 0.3 s: every other client's call got 503 circuit_open. A hung upstream
still trips it through the gateway's own timeouts (read_timeout, per_try_timeout)."""
import h2.events

from ..conftest import gateway_conf
from ..h2_upstreams import ScriptedH2Upstream
from ..h2client import RawH2

GRPC = [("te", "trailers"), ("content-type", "application/grpc")]
CALL = b"\0\0\0\0\0"            # one empty gRPC message


def grpc_gateway(launcher, upstream, read_timeout=5):
    return launcher.gateway(gateway_conf(
        [{"id": "rpc", "paths": ["/Svc/*rest"], "timeouts": {"read": read_timeout},
          "upstream": {"targets": [{"url": f"http://127.0.0.1:{upstream.port}"}],
                       "protocol": "h2"},
          "plugins": {"breaker": {"min_requests": 5, "error_rate": 0.5, "open_for": 30}}}],
        http2={"h2c": True}))


def calls(gw, count, timeout=None, wait=3.0):
    """``count`` calls on one connection -> each answer's (:status, grpc-status)."""
    client = RawH2(gw.port)
    try:
        extra = [("grpc-timeout", timeout)] if timeout else []
        streams = [client.request("/Svc/Call", method="POST", body=CALL, headers=GRPC + extra)
                   for _ in range(count)]
        client.pump(lambda c: all(c.ended(s) or c.reset_code(s) is not None for s in streams),
                    timeout=wait)
        out = {}
        for event in client.events:
            if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                fields = dict(event.headers)
                entry = out.setdefault(event.stream_id, [None, None])
                entry[0] = entry[0] or fields.get(b":status")
                entry[1] = fields.get(b"grpc-status", entry[1])
        return [tuple(out.get(s, (None, None))) for s in streams]
    finally:
        client.sock.close()


def test_a_clients_short_deadlines_do_not_open_the_breaker(launcher):
    upstream = ScriptedH2Upstream("u", "slow", delay=0.3)
    try:
        gw = grpc_gateway(launcher, upstream)
        assert calls(gw, 10, timeout="1m") == [(b"200", b"4")] * 10   # DEADLINE_EXCEEDED
        answers = calls(gw, 2)
        assert answers == [(b"200", None)] * 2, answers     # the upstream's plain answer
        status, body = gw.admin_get("/admin/breakers")
        assert b'"state": "closed"' in body or b'"state":"closed"' in body, body
    finally:
        upstream.close()


def test_a_hung_upstream_still_opens_it_by_the_gateways_own_timeout(launcher):
    upstream = ScriptedH2Upstream("u", "slow", delay=20)
    try:
        gw = grpc_gateway(launcher, upstream, read_timeout=0.3)
        calls(gw, 5, wait=3)            # each the gateway's own timeout: the upstream's failure
        answers = calls(gw, 1)
        assert answers[0][0] == b"503" or answers[0][1] == b"14", answers     # circuit_open
        status, body = gw.admin_get("/admin/breakers")
        assert b"open" in body and b"route:rpc" in body, body
    finally:
        upstream.close()
