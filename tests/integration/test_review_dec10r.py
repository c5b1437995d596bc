"""Review by attack of a399353 (a gRPC call's deadline bounds its HTTP/2 connect): each test
failed before its fix.

1. A connect the call's grpc-timeout cut was abandoned: to an h2 target slower to connect
   (a name lookup, a TLS handshake) than a service's calls' grpc-timeout, every call opened
   a connection, cut it at its deadline and was answered 4 DEADLINE_EXCEEDED, for ever; no
   connection was ever made for the calls after it. The call still ends at its deadline,
   and the connect goes on within timeouts.connect for the next ones.
2. A call's wait for a free HTTP/2 stream that its grpc-timeout ended counted as a try of
   the upstream (the access log's attempts), though nothing of it was sent.
3. A connect that timed out while its name's lookup hangs was retried on a target of
   another name whose lookup hung too (a nameserver that is gone hangs every name): every
   request's 504 came after twice timeouts.connect, as a399353 meant to end.
"""
import textwrap
import threading
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

from ..conftest import gateway_conf, python_path_with, wait_until
from ..h2_upstreams import H2cUpstream, ScriptedH2Upstream
from .test_attack_dec10a import OneStreamUpstream
from .test_dns_bounded import RESOLVER

# names under .slow.test resolve to 127.0.0.1, 0.6 s late (a far nameserver)
SLOW_RESOLVER = textwrap.dedent("""
    import gevent
    from gevent.resolver.thread import Resolver

    class SlowResolver(Resolver):
        def getaddrinfo(self, host, *args, **kwargs):
            name = host.decode() if isinstance(host, bytes) else str(host)
            if name.endswith(".slow.test"):
                gevent.sleep(0.6)
                host = "127.0.0.1"
            return super().getaddrinfo(host, *args, **kwargs)
""")

GRPC_WEB = {"content-type": "application/grpc-web", "grpc-timeout": "200m"}


class GrpcOk(H2cUpstream):
    """Answers every call with a trailers-only status 0."""

    def connection(self, sock):
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        with sock:
            try:
                sock.sendall(conn.data_to_send())
                while data := sock.recv(65536):
                    for event in conn.receive_data(data):
                        if isinstance(event, h2.events.RequestReceived):
                            conn.send_headers(event.stream_id, [
                                (":status", "200"), ("content-type", "application/grpc"),
                                ("grpc-status", "0")], end_stream=True)
                    sock.sendall(conn.data_to_send())
            except (h2.exceptions.ProtocolError, OSError):
                pass


def grpc_call(gw):
    """(HTTP status, the answer's grpc-status: its head's, a trailers-only answer's, or its
    trailer frame's)"""
    resp, body = gw.request("POST", "/r", body=b"", headers=GRPC_WEB, timeout=10)
    code = resp.getheader("grpc-status")
    if code is None and b"grpc-status:" in body:
        code = body.split(b"grpc-status:")[1].split(b"\r")[0].decode()
    return resp.status, code


def test_a_connect_the_calls_deadline_cut_still_opens_the_connection(launcher, tmp_path):
    (tmp_path / "slow_resolver.py").write_text(SLOW_RESOLVER)
    up = GrpcOk()
    try:
        gw = launcher.gateway(gateway_conf([{
            "id": "r", "paths": ["/r"], "timeouts": {"connect": 2.0},
            "upstream": {"targets": [{"url": f"http://up.slow.test:{up.port}"}],
                         "protocol": "h2"}}]),
            env={**python_path_with(tmp_path),
                 "GEVENT_RESOLVER": "slow_resolver.SlowResolver"})
        begun = time.monotonic()
        answer = grpc_call(gw)
        # the call ends at its deadline (0.2 s and 0.1 s of grace), not at the connect's end
        assert answer == (200, "4") and time.monotonic() - begun < 0.55, answer
        time.sleep(0.8)         # the connect it began is done by now
        answers = []
        for _ in range(3):
            answers.append(grpc_call(gw))
            if answers[-1][1] == "0":
                break
            time.sleep(0.3)
        assert answers[-1] == (200, "0"), answers
    finally:
        up.close()


def test_a_deadline_in_the_wait_for_a_free_stream_is_no_try(launcher):
    """A call answered 500 by one target and retried on another whose one stream was
    taken ended in its wait for a free stream at its grpc-timeout: the access log said
    "attempts":2 (the wait counted as a try, which UpstreamBusy, its end before, was not)."""
    bad = ScriptedH2Upstream("bad", "500")
    held = OneStreamUpstream()
    try:
        gw = launcher.gateway(gateway_conf([{
            "id": "r", "paths": ["/r/*rest"], "timeouts": {"read": 2.0},
            "retry": {"on": ["500"], "methods": ["POST"], "attempts": 1},
            "upstream": {"targets": [{"url": f"http://127.0.0.1:{t.port}"}
                                     for t in (bad, held)], "protocol": "h2"}}],
            log={"access_fields": ["time", "path", "status", "attempts"]}))

        def call(path, headers):
            gw.request("POST", path, body=b"", headers=headers, timeout=10)

        holder = threading.Thread(target=call, args=("/r/hold", {}))
        holder.start()      # held's one stream, until the read timeout (2 s)
        assert wait_until(lambda: held.streams, timeout=3)
        for _ in range(2):  # (round robin: one of them goes to bad first)
            call("/r/call", GRPC_WEB)
        holder.join(10)
        def calls():
            return [line for line in gw.access_lines() if line["path"] == "/r/call"]

        assert wait_until(lambda: len(calls()) == 2, timeout=3)
        lines = calls()
        assert bad.requests >= 1
        assert len(lines) == 2 and all("attempts" not in line for line in lines), lines
    finally:
        bad.close()
        held.close()


def test_a_retry_to_another_name_that_hangs_too_is_not_made(launcher, tmp_path):
    """A nameserver that is gone hangs every name: an upstream of two named targets retried
    a connect that timed out on the other name, whose lookup hung too, and every request's
    504 came after twice timeouts.connect (1.7 s for 0.8 s)."""
    (tmp_path / "hanging_resolver.py").write_text(RESOLVER)
    gw = launcher.gateway(gateway_conf([
        {"id": "hang", "paths": ["/hang"], "timeouts": {"connect": 0.8},
         "upstream": {"targets": [{"url": "http://a.hang.test:9"},
                                  {"url": "http://b.hang.test:9"}]}}]),
        env={**python_path_with(tmp_path),
             "GEVENT_RESOLVER": "hanging_resolver.HangingResolver"})
    took = []
    for _ in range(3):      # (the first learns that both names hang)
        begun = time.monotonic()
        resp, body = gw.request("GET", "/hang", timeout=10)
        took.append((resp.status, round(time.monotonic() - begun, 2)))
    assert all(status == 504 for status, _ in took), took
    assert all(seconds < 1.3 for _, seconds in took[1:]), took
