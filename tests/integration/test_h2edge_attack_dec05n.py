"""Attack pass of 2026-12-05 (helper s2): the HTTP/2 client edge (client/h2server.py,
core/h2request.py, core/h2limits.py), items an earlier review left open. Every test starts a
real gateway (the launcher fixture) and a real upstream, and talks to them over loopback
with a hand-driven HTTP/2 client (tests/h2client.RawH2, raw frames where h2 would not send
them); every wait is bounded and every socket closed. Each defect's test failed on bff7bbf.

1. A PRIORITY frame that makes a stream depend on itself (RFC 9113 5.3.1), and a stream's
   WINDOW_UPDATE of 0 (6.9), are stream errors; the gateway answered either with GOAWAY
   PROTOCOL_ERROR and closed: a client that sent one on a stream it no longer cared about
   lost every other stream of the connection (a browser's other tabs' requests, another
   user's behind a proxy that pools users on one connection). The stream is now reset
   (PROTOCOL_ERROR, counted as a malformed one: MadeYouReset), the others go on, its access
   line says why. The HTTP/2 upstream side had done this since 04eda52; the frame reader
   that tells a stream's WINDOW_UPDATE of 0 apart is now one, core.h2frames, for both. A
   HEADERS frame whose priority makes its own stream depend on itself was a stream error
   already (held up: tested); the connection's own WINDOW_UPDATE of 0 still ends it. A
   stream's WINDOW_UPDATE that took its window past 2^31 - 1 (6.9.1), and DATA after its
   END_STREAM (5.1), were reset by h2 as stream errors, but taken for the client's own
   reset: the access line said nothing (status 0). They are refused as malformed streams
   now, and the line says why.
2. ``:scheme`` was only required to be there: ``:scheme: javascript``, an empty one,
   ``1http`` or ``ht tp`` were served (200, the upstream's answer, nothing logged), while
   the same request over HTTP/1.1 (``GET javascript://x/ HTTP/1.1``) is a 400. A value that
   is not a URI scheme (RFC 3986 3.1: a letter, then letters, digits, ``+-.``) is now
   malformed (PROTOCOL_ERROR, as nginx's "client sent invalid :scheme header" and
   nghttp2's check make it); a scheme other than http or https (any case) is a 400 that
   names it, as on HTTP/1.1. ``:scheme: https`` on h2c and ``http`` over TLS held up:
   X-Forwarded-Proto, the redirect plugin and every plugin see the connection's scheme
   (what nginx's $scheme and Envoy's x-forwarded-proto are), never the client's word, and
   an HTTP/2 upstream is sent its target's (tested).
3. (Measured; the settings text was wrong, not the code.) ``connection_window_size`` was
   documented as "the most a client connection makes the worker hold". It bounds only the
   body bytes not yet read: a body read whole before the upstream is contacted (no
   content-length, or one within server.request_buffer_size, as on HTTP/1.1) is read, so
   acknowledged, as it comes, and each stream costs ~30 KiB of its own whatever the
   windows. 100 uploads without content-length on one connection to an upstream that reads
   nothing grew the worker by 7.1 MiB (73 KiB a stream) at the defaults, 34 MiB with
   request_buffer_size 256 KiB and 1 MiB windows; streamed ones 27-34 KiB a stream. The
   settings text, request_buffer_size's check warning (it counted one body per connection,
   tests/unit/test_http2_settings_dec05n.py) and docs/http2.md ("What one connection may
   hold") now give the arithmetic.
4. (Documented, with its bound tested.) One client connection holds up to
   max_concurrent_streams upstream connections, one per stream whose streamed body waits
   for the client, each until client_body_timeout passes without a DATA frame (or
   http2.send_timeout for an answer whose window stays shut): 100 where an HTTP/1.1
   connection holds one. Envoy does the same (one upstream request per stream); nginx
   buffers bodies whole by default. No per-connection cap: docs/http2.md gives the
   arithmetic and what bounds it (a listener's max_concurrent_streams, limit_conn on ip,
   request_buffer_size, min_body_rate).
5. (Documented.) The reset and flood budgets are per connection; the gateway keeps no
   per-address count of connections (worker_connections is every client's), so a client
   with N connections has N budgets: ~0.6% of a core each at the default 100 a second
   (~57 us a reset), ~175 connections to take a core, which an HTTP/1.1 client's requests
   on as many connections can take too. docs/http2.md says so and where a per-address
   bound belongs (limit_conn / rate_limit on ip for streams that begin; connlimit or the
   balancer for connections).
"""
import json
import socket
import threading
import time

import h2.errors
import pytest
from hyperframe.frame import DataFrame, HeadersFrame, PriorityFrame

from ..conftest import free_port, gateway_conf, route, wait_until
from ..h2client import RawH2
from ..pki import CA
from .test_h2client_attack_dec05c import h2c_gateway, settled

E = h2.errors.ErrorCodes


def window_update(stream_id, increment):
    return b"\0\0\4\x08\0" + stream_id.to_bytes(4, "big") + increment.to_bytes(4, "big")


def self_priority(stream_id):
    return PriorityFrame(stream_id, depends_on=stream_id, stream_weight=15).serialize()


def errors_of(gw):
    return [line for line in gw.access_lines() if line.get("error") or line.get("rejected")]


# -- 1. a stream's error ended the whole connection --------------------------------------------

STREAM_ERRORS = {"priority-on-itself": (self_priority, "depends on itself"),
                 "window-update-of-0": (lambda sid: window_update(sid, 0), "WINDOW_UPDATE of 0")}


@pytest.mark.parametrize("case", sorted(STREAM_ERRORS))
def test_a_stream_error_frame_resets_its_stream_only(launcher, upstream, case):
    frame, reason = STREAM_ERRORS[case]
    gw = h2c_gateway(launcher, upstream)
    client = settled(RawH2(gw.port))
    other = client.request("/slow/0.8")         # another tab's request, on the same connection
    victim = client.request("/slow/3")
    time.sleep(0.3)                             # both on their way upstream
    client.send_raw(frame(victim))
    assert client.pump(lambda c: c.reset_code(victim) is not None or c.goaway(), timeout=3)
    assert client.goaway() is None, client.goaway()     # GOAWAY PROTOCOL_ERROR before
    assert client.reset_code(victim) == E.PROTOCOL_ERROR
    assert client.response(other)[::2] == (200, b"slow done")
    after = client.request("/echo")
    assert client.response(after)[0] == 200
    client.close()
    assert wait_until(lambda: len(gw.access_lines()) >= 3, timeout=5)
    refused = errors_of(gw)
    assert len(refused) == 1 and reason in str(refused[0]), gw.access_lines()


LOCAL_RESETS = {
    "window-past-2^31": (lambda sid: window_update(sid, 0x7FFFFFFF), E.FLOW_CONTROL_ERROR,
                         "6.9.1"),
    "data-after-end": (lambda sid: DataFrame(sid, b"x").serialize(), E.STREAM_CLOSED, "5.1"),
}


@pytest.mark.parametrize("case", sorted(LOCAL_RESETS))
def test_a_stream_error_h2_resets_itself_says_why(launcher, upstream, case):
    """A stream's WINDOW_UPDATE that takes its window past 2^31 - 1 (RFC 9113 6.9.1), or
    DATA after its END_STREAM (5.1), is reset by h2 itself (FLOW_CONTROL_ERROR,
    STREAM_CLOSED): the dispatch took that for the client's own reset, and the stream's
    access line said nothing (status 0, as a client that hung up). It is the client's
    stream error now, as a malformed request is: the line says why."""
    frame, code, reason = LOCAL_RESETS[case]
    gw = h2c_gateway(launcher, upstream)
    client = settled(RawH2(gw.port))
    other = client.request("/slow/0.8")
    victim = client.request("/slow/3")
    time.sleep(0.3)
    client.send_raw(frame(victim))
    assert client.pump(lambda c: c.reset_code(victim) is not None or c.goaway(), timeout=3)
    assert client.goaway() is None and client.reset_code(victim) == code
    assert client.response(other)[::2] == (200, b"slow done")
    client.close()
    assert wait_until(lambda: len(gw.access_lines()) >= 2, timeout=5)
    refused = errors_of(gw)
    assert len(refused) == 1 and reason in str(refused[0]), gw.access_lines()


def test_stream_error_frames_on_streams_not_open(launcher, upstream):
    """On a stream that ended they are dropped (as h2 drops frames there); a PRIORITY on a
    stream never opened too (no RST_STREAM may name an idle stream); a WINDOW_UPDATE of 0
    for the connection, or for an idle stream (RFC 9113 5.1), still ends the connection."""
    gw = h2c_gateway(launcher, upstream)
    client = settled(RawH2(gw.port))
    done = client.request("/echo")
    assert client.response(done)[0] == 200
    client.send_raw(self_priority(done) + window_update(done, 0) + self_priority(101))
    after = client.request("/echo")
    assert client.response(after)[0] == 200
    assert client.reset_code(done) is None and client.goaway() is None
    client.send_raw(window_update(0, 0))
    assert client.pump(lambda c: c.goaway() is not None, timeout=3)
    assert client.goaway().error_code == E.PROTOCOL_ERROR
    client.close()
    idle = settled(RawH2(gw.port))
    idle.send_raw(window_update(201, 0))
    assert idle.pump(lambda c: c.goaway() is not None, timeout=3)
    assert idle.goaway().error_code == E.PROTOCOL_ERROR
    idle.close()


def test_a_headers_priority_on_its_own_stream_is_a_stream_error(launcher, upstream):
    """(Held up before the fix: h2 raises it after the block is decoded.)"""
    gw = h2c_gateway(launcher, upstream)
    client = settled(RawH2(gw.port))
    other = client.request("/slow/0.5")
    time.sleep(0.1)
    sid = client.conn.get_next_available_stream_id()
    client.conn.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"http"),
                                   (b":path", b"/echo"), (b":authority", b"localhost")],
                             end_stream=True)
    plain = client.conn.data_to_send()      # h2 will not send the priority: sent by hand
    block = plain[9:9 + int.from_bytes(plain[:3], "big")]
    client.send_raw(HeadersFrame(sid, block, flags=["END_HEADERS", "END_STREAM", "PRIORITY"],
                                 depends_on=sid, stream_weight=15).serialize())
    assert client.pump(lambda c: c.reset_code(sid) is not None or c.goaway(), timeout=3)
    assert client.goaway() is None and client.reset_code(sid) == E.PROTOCOL_ERROR
    assert client.response(other)[::2] == (200, b"slow done")
    client.close()


def test_stream_error_frames_count_toward_the_reset_limit(launcher, upstream):
    """A reset the client provokes is a reset (CVE-2025-8671): past max_resets_per_second
    of them, GOAWAY ENHANCE_YOUR_CALM, as for malformed requests."""
    gw = h2c_gateway(launcher, upstream, http2={"max_resets_per_second": 20})
    client = settled(RawH2(gw.port))
    sent = 0
    while sent < 200 and client.goaway() is None and not client.closed:
        sids = [client.request("/slow/2") for _ in range(10)]
        client.send_raw(b"".join(window_update(sid, 0) for sid in sids))
        sent += len(sids)
        client.pump(lambda c: c.goaway() is not None or all(
            c.reset_code(sid) is not None for sid in sids), timeout=3)
    assert client.goaway() is not None and client.goaway().error_code == E.ENHANCE_YOUR_CALM
    assert sent <= 40, sent
    client.close()


# -- 2. :scheme was not checked ------------------------------------------------------------------

def scheme_request(client, scheme, path="/echo"):
    """(``client`` made with validate=False: h2 sends any :scheme then.)"""
    sid = client.conn.get_next_available_stream_id()
    client.conn.send_headers(sid, [(b":method", b"GET"), (b":scheme", scheme),
                                   (b":path", path.encode()), (b":authority", b"localhost")],
                             end_stream=True)
    client.flush()
    return sid


@pytest.mark.parametrize("scheme", [b"", b"1http", b"ht tp", b"http:", b"ht/tp", b"-x"])
def test_a_scheme_that_is_no_uri_scheme_is_malformed(launcher, upstream, scheme):
    gw = h2c_gateway(launcher, upstream)
    client = settled(RawH2(gw.port, validate=False))
    sid = scheme_request(client, scheme)
    assert client.response(sid) is None                 # 200 before
    assert client.reset_code(sid) == E.PROTOCOL_ERROR
    assert client.goaway() is None
    good = scheme_request(client, b"http")
    assert client.response(good)[0] == 200
    client.close()
    assert wait_until(lambda: errors_of(gw), timeout=5)
    assert ":scheme" in str(errors_of(gw)[0]), errors_of(gw)


@pytest.mark.parametrize("scheme", [b"javascript", b"ftp", b"wss", b"h2c"])
def test_a_scheme_other_than_http_is_a_400_as_on_http1(launcher, upstream, scheme):
    gw = h2c_gateway(launcher, upstream)
    client = settled(RawH2(gw.port, validate=False))
    status, _, body, _ = client.response(scheme_request(client, scheme))
    assert status == 400, (status, body)                # 200 before
    assert b"scheme" in body, body
    for fine in (b"http", b"https", b"HTTP", b"Https"):
        assert client.response(scheme_request(client, fine))[0] == 200, fine
    client.close()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(b"GET " + scheme + b"://localhost/echo HTTP/1.1\r\nHost: localhost\r\n"
                     b"Connection: close\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 400")   # the same answer there
    assert wait_until(lambda: errors_of(gw), timeout=5)


def forwarded_proto(answer):
    headers = dict((k.lower(), v) for k, v in json.loads(answer[2])["headers"])
    return headers.get("x-forwarded-proto")


def test_the_connections_scheme_is_what_everyone_sees(launcher, upstream):
    """(Held up.) ``:scheme: https`` on h2c: X-Forwarded-Proto says http, and a route that
    redirects http to https still redirects; ``http`` over TLS is https to the upstream.
    nginx's $scheme and Envoy's x-forwarded-proto are the connection's."""
    cert, key, _ = CA(launcher.tmp_dir).issue("site")
    tls_port = free_port()
    conf = gateway_conf([route("r", ["/*rest"], upstream.url),
                         route("tls-only", ["/secure/*rest"], upstream.url,
                               plugins={"redirect": {"http_to_https": True}})],
                        http2={"h2c": True},
                        tls={"bind": [f"127.0.0.1:{tls_port}"],
                             "certificates": [{"cert": str(cert), "key": str(key)}]})
    gw = launcher.gateway(conf)
    client = settled(RawH2(gw.port, validate=False))
    answer = client.response(scheme_request(client, b"https"))
    assert answer[0] == 200 and forwarded_proto(answer) == "http", answer
    redirected = client.response(scheme_request(client, b"https", "/secure/x"))
    assert redirected[0] in (301, 302, 307, 308), redirected[:2]
    assert redirected[1]["location"].startswith("https://"), redirected[1]
    client.close()
    tls = settled(RawH2(tls_port, validate=False, tls=True))
    answer = tls.response(scheme_request(tls, b"http"))
    assert answer[0] == 200 and forwarded_proto(answer) == "https", answer
    assert tls.response(scheme_request(tls, b"http", "/secure/x"))[0] == 200
    tls.close()


# -- 4. upstream connections one client connection holds (documented; the bound tested) -------

class CountingUpstream:
    """Accepts and reads each connection until it closes, answering nothing: ``open``
    connections are those the gateway holds."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.open = 0
        self.lock = threading.Lock()
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.open += 1
            threading.Thread(target=self.drain, args=(conn,), daemon=True).start()

    def drain(self, conn):
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass
        finally:
            conn.close()
            with self.lock:
                self.open -= 1

    def close(self):
        self.sock.close()


def test_streams_waiting_on_their_body_hold_upstream_connections_for_the_body_timeout(
        launcher):
    """(Held up; docs/http2.md "What one connection may hold".) Each stream whose streamed
    body waits for the client holds one upstream connection, as an HTTP/1.1 connection
    does: one client connection holds up to max_concurrent_streams of them, each until
    client_body_timeout passes without a DATA frame; then all are given back."""
    up = CountingUpstream()
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], up.url)],
                                       http2={"h2c": True, "max_concurrent_streams": 20},
                                       server={"client_body_timeout": 2.0}))
    client = settled(RawH2(gw.port))
    sids = [client.request("/upload", "POST", [("content-length", str(1 << 20))], b"x",
                           end=False) for _ in range(20)]
    try:
        assert wait_until(lambda: up.open == 20, timeout=5), up.open
        started = time.monotonic()
        assert client.pump(lambda c: all(c.ended(sid) or c.reset_code(sid) is not None
                                          for sid in sids), timeout=8)
        assert 1.5 < time.monotonic() - started < 4.0
        assert wait_until(lambda: up.open == 0, timeout=5), up.open
    finally:
        client.close()
        up.close()
