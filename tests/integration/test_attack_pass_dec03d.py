"""Attack pass (Dec 03, upstream side): a buggy or hostile upstream, against real processes.
Each defect below is shown by a test that failed on c8937ea and passes with its fix.

The upstreams are small in-process socket servers on 127.0.0.1 that write what a test tells
them (HTTP/1.1: raw bytes; HTTP/2: the h2 library with validation off), and count what they
got; closed in teardown.

1. An HTTP/1.1 status under 100 (``000``, ``099``) was taken for an interim answer and dropped:
   the response after it reached the client (docs/security.md: outside 100-599 is a 502).
2. A 101 without ``Connection: Upgrade`` (llhttp then stops with an error instead of handing
   the rest over): the tunnel's first bytes, read with the head, were dropped, and the client's
   websocket stream began in the middle of nowhere.
3. An HTTP/2 upstream that sent an interim answer (103, 100) and then refused the stream
   (RST_STREAM REFUSED_STREAM, or a GOAWAY whose last_stream_id leaves it out) had a POST sent
   four times: a refusal says "not processed", which an answer on the stream already denied.
4. ``Transfer-Encoding: chunked,`` is read to the close by llhttp but was taken as chunked by
   the gateway: the upstream's chunk framing reached the client as body, then the answer was
   cut at the close as if the upstream had failed mid-body.
5. An HTTP/2 upstream's answer shorter than its content-length whose end came in an empty DATA
   frame (END_STREAM, no payload) failed the whole upstream connection (h2 raises for it
   outside the path that makes a malformed answer a stream error): other clients' answers
   on that connection were cut. A 304 whose content-length is the representation's (RFC 9113
   8.1.1 allows it) ended with an empty DATA frame was a 502 the same way (h2 holds DATA to a
   content-length for every answer but HEAD's).

6. An HTTP/2 upstream's HEAD or 304 answer that repeats its content-length (``5`` and ``05``,
   which h2 lets through as equal numbers) was relayed with both: an HTTP/1.1 client got two
   Content-Length fields, an HTTP/2 client a reset stream (the gateway's own HTTP/1.1 framer
   refuses the duplicate).

7. An HTTP/1.0 answer with Transfer-Encoding (and Connection: keep-alive) had its connection
   reused: RFC 9112 6.1 says its framing is faulty and the connection must close after it
   (an HTTP/1.0 server that passes an application's Transfer-Encoding on ends the body at
   the close, and the rest of it would answer the next request).

8. A PRIORITY frame that makes a stream depend on itself (RFC 9113 5.3.1: a stream error) failed
   the whole upstream connection, as in 5: other clients' answers on it were cut.

9. A status line in HTTP/2.0 or HTTP/0.9, which llhttp accepts, was relayed as an HTTP/1.1
   answer (with ``Via: 1.1``), though no HTTP/1.x framing rule holds for it.

10. A WINDOW_UPDATE of 0 on a stream (RFC 9113 6.9: a stream error) failed the whole upstream
    connection too (hyperframe refuses it as it parses, and h2 makes that the connection's).

Held (kept: nothing else covers them): a non-idempotent request on a reused connection the
upstream closes unanswered is never sent again, an idempotent one is, once.
"""
import base64
import hashlib
import socket
import threading
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import pytest
from hyperframe.frame import GoAwayFrame, PriorityFrame

from ..conftest import WEBSOCKET_HANDSHAKE, gateway_conf, route
from ..h2_upstreams import EventH2cUpstream, H2cUpstream
from ..h2client import RawH2
from .test_attack_pass_dec03 import RecordingHttp1, raw_request

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class ScriptedHttp1(RecordingHttp1):
    """A loopback HTTP/1.1 upstream: reads each request (its body by Content-Length), records
    its request line (``lines``), and writes ``script[path]`` (a function of the connection's
    request count, 1 for the first, returning bytes or None to close unanswered), else OK."""

    def __init__(self, script):
        self.script = script
        self.lines = []
        super().__init__()

    def answer(self, head, count):
        line = head.split(b"\r\n")[0]
        self.lines.append(line)
        return self.script.get(line.split(b" ")[1], lambda n: OK)(count)


def exchange(port, data, timeout=5):
    """Send raw bytes; everything the gateway sent back until it closed (or went quiet)."""
    return raw_request(port, data, timeout)


def served_after(gw):
    """The worker is alive and answers the next request."""
    return exchange(gw.port, b"GET /ok HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n") \
        .endswith(b"\r\n\r\nok")


# -- 1. a status under 100 is no interim answer ----------------------------------------------

@pytest.mark.parametrize("status", [b"000", b"099"])
def test_a_status_under_100_is_a_502_not_an_interim_answer(launcher, status):
    """The upstream's 0xx head says Content-Length: 0 and a second response follows it; the
    gateway dropped the first as a 1xx and relayed the second (status 200, INJECTED)."""
    up = ScriptedHttp1({b"/odd": lambda n: b"HTTP/1.1 %s X\r\nContent-Length: 0\r\n\r\n"
                        b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nINJECTED" % status})
    try:
        gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], up.url)]))
        answer = exchange(gw.port, b"GET /odd HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 502 "), answer[:200]
        assert b"INJECTED" not in answer
        assert "outside 100-599" in gw.log()
        assert served_after(gw)
    finally:
        up.close()


@pytest.mark.parametrize("version, interim", [(b"HTTP/2.0", b""), (b"HTTP/0.9", b""),
                                              (b"HTTP/2.0", b"103")])
def test_a_status_line_not_in_http1_is_a_502(launcher, version, interim):
    """The answer's status line, or (103) an interim head's before an HTTP/1.1 answer."""
    head = b"%s 200 OK\r\nContent-Length: 8\r\n\r\nINJECTED" % version
    if interim:
        head = b"%s %s Early Hints\r\nLink: </a>\r\n\r\n" % (version, interim) + \
            head.replace(version, b"HTTP/1.1", 1)
    up = ScriptedHttp1({b"/odd": lambda n: head})
    try:
        gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], up.url)]))
        answer = exchange(gw.port, b"GET /odd HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 502 "), answer[:200]
        assert b"INJECTED" not in answer
        assert f"upstream answered in {version.decode()}, not HTTP/1.x" in gw.log()
        assert served_after(gw)
    finally:
        up.close()


@pytest.mark.parametrize("interim", [
    b"HTTP/1.0 103 Early Hints\r\nLink: </a>\r\n\r\n",
    b"HTTP/1.0 100 Continue\r\n\r\n",
    b"HTTP/1.1 103 Early Hints\r\nConnection: close\r\n\r\n"])
def test_an_interim_head_that_ends_the_connection_is_a_502_at_once(launcher, interim):
    """llhttp takes a 1xx head without keep-alive (HTTP/1.0's, or one saying Connection:
    close) as the end of the connection and refuses what follows. The gateway read on,
    waiting for a final head that could not come: a 504 after read_timeout (60 s)."""
    up = ScriptedHttp1({b"/odd": lambda n: interim +
                        b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nINJECTED"})
    try:
        gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], up.url)]))
        answer = exchange(gw.port, b"GET /odd HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 502 "), answer[:200]
        assert "upstream sent more after an interim 1" in gw.log()
        assert served_after(gw)
    finally:
        up.close()


# -- 2. a 101 without Connection: Upgrade keeps the tunnel's first bytes ----------------------

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = base64.b64encode(hashlib.sha1(KEY + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
FRAME = b"\x81\x05hello"        # a websocket text frame, "hello", sent with the 101's head


@pytest.mark.parametrize("connection", [b"", b"Connection: Upgrade\r\n"])
def test_the_bytes_that_came_with_a_101_head_reach_the_client(launcher, connection):
    up = ScriptedHttp1({b"/ws": lambda n: b"HTTP/1.1 101 Switching Protocols\r\n"
                        b"Upgrade: websocket\r\n%sSec-WebSocket-Accept: %s\r\n\r\n%s"
                        % (connection, ACCEPT, FRAME)})
    try:
        gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], up.url)]))
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
            sock.sendall(WEBSOCKET_HANDSHAKE)
            got = b""
            try:
                while not got.endswith(FRAME) and (piece := sock.recv(65536)):
                    got += piece
            except socket.timeout:
                pass
        head, _, tunnel = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ") and b"Connection: Upgrade" in head, got
        assert tunnel == FRAME, got
        assert served_after(gw)
    finally:
        up.close()


# -- 3. an HTTP/2 stream that had an interim answer was processed -----------------------------

class InterimThenRefusing(EventH2cUpstream):
    """h2c: answers each request with an interim head (``/103-*``: 103 Early Hints,
    ``/100-*``: 100 Continue), then refuses it: ``*-refuse`` with RST_STREAM REFUSED_STREAM,
    ``*-goaway`` with GOAWAY(last_stream_id=0). ``requests`` holds (method, path) of each
    request it got; anything else is 200 "ok"."""

    def __init__(self):
        self.requests = []
        super().__init__()

    def on_event(self, conn, sock, event):
        if isinstance(event, h2.events.DataReceived):
            conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        if not isinstance(event, h2.events.RequestReceived):
            return
        sid, fields = event.stream_id, dict(event.headers)
        path = fields[b":path"]
        self.requests.append((fields[b":method"], path))
        if path[:5] not in (b"/103-", b"/100-"):
            conn.send_headers(sid, [(b":status", b"200"), (b"content-length", b"2")])
            conn.send_data(sid, b"ok", end_stream=True)
            return
        conn.send_headers(sid, [(b":status", path[1:4])])
        sock.sendall(conn.data_to_send())
        if path.endswith(b"-refuse"):
            conn.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
        else:
            sock.sendall(GoAwayFrame(0, last_stream_id=0).serialize())


@pytest.mark.parametrize("path", ["/103-refuse", "/100-refuse", "/103-goaway"])
def test_a_stream_refused_after_an_interim_answer_is_not_sent_again(launcher, path):
    """The upstream had begun on the POST (its 1xx says so) when it refused the stream: the
    gateway took the refusal at its word and sent the POST again, on a new connection and
    then as a retry: four times in all. It is a reset: a 502, sent once."""
    up = InterimThenRefusing()
    try:
        gw = launcher.gateway(gateway_conf([{
            "id": "r", "paths": ["/*rest"],
            "upstream": {"targets": [{"url": f"http://127.0.0.1:{up.port}"}],
                         "protocol": "h2"}}]))
        answer = exchange(gw.port, b"POST %s HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n"
                          b"Connection: close\r\n\r\ndata" % path.encode())
        assert answer.startswith(b"HTTP/1.1 502 "), answer[:200]
        assert up.requests == [(b"POST", path.encode())], up.requests
        assert served_after(gw)
    finally:
        up.close()


def test_held_a_stream_refused_before_any_answer_is_still_sent_again(launcher):
    """RFC 9113 8.7: a refused stream was not processed; a request may go again, whatever its
    method (the control of the test above)."""
    refused = []

    class RefuseFirst(InterimThenRefusing):
        def on_event(self, conn, sock, event):
            if isinstance(event, h2.events.RequestReceived):
                self.requests.append(event.stream_id)
                if not refused:
                    refused.append(event.stream_id)
                    conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                else:
                    conn.send_headers(event.stream_id, [
                        (b":status", b"200"), (b"content-length", b"2")])
                    conn.send_data(event.stream_id, b"ok", end_stream=True)

    up = RefuseFirst()
    try:
        gw = launcher.gateway(gateway_conf([{
            "id": "r", "paths": ["/*rest"],
            "upstream": {"targets": [{"url": f"http://127.0.0.1:{up.port}"}],
                         "protocol": "h2"}}]))
        answer = exchange(gw.port, b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n"
                          b"Connection: close\r\n\r\ndata")
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"ok"), answer[:300]
        assert len(up.requests) == 2
    finally:
        up.close()


# -- 4. Transfer-Encoding as llhttp frames it -------------------------------------------------

def test_a_transfer_coding_list_ending_in_an_empty_member_is_a_502(launcher):
    """llhttp reads ``chunked,`` to the close (not chunked); the gateway took it for chunked:
    the client got the upstream's chunk framing as its body, then a cut answer."""
    up = ScriptedHttp1({b"/te": lambda n: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked,\r\n"
                        b"\r\n5\r\nhello\r\n0\r\n\r\n"})
    try:
        gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], up.url)]))
        answer = exchange(gw.port, b"GET /te HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
                          timeout=3)
        assert answer.startswith(b"HTTP/1.1 502 "), answer[:300]
        assert served_after(gw)
    finally:
        up.close()


# -- 5. an empty DATA frame that ends an answer short -------------------------------------

class EmptyEndH2(H2cUpstream):
    """h2c. /slow: 200 with content-length 10, a byte every 0.2 s. /short: 200 with
    content-length 5, then an empty DATA frame with END_STREAM. /304: 304 with
    content-length 5 (the representation's), then an empty DATA frame with END_STREAM.
    /self-priority: 200 "ok", with a PRIORITY frame that makes its stream depend on itself
    between head and body. /zero-window: the same with a WINDOW_UPDATE of 0 on the stream.
    Anything else: 200 "ok". ``connections`` counts the connections it took."""

    def __init__(self):
        self.connections = 0
        super().__init__()

    def connection(self, sock):
        self.connections += 1
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None))
        conn.initiate_connection()
        lock = threading.Lock()

        def send():
            sock.sendall(conn.data_to_send())

        def slow(sid):
            for i in range(10):
                time.sleep(0.2)
                with lock:
                    conn.send_data(sid, b"%d" % i, end_stream=i == 9)
                    send()

        with sock:
            try:
                with lock:
                    send()
                while data := sock.recv(65536):
                    with lock:
                        for event in conn.receive_data(data):
                            if not isinstance(event, h2.events.RequestReceived):
                                continue
                            sid, path = event.stream_id, dict(event.headers)[b":path"]
                            status = b"304" if path == b"/304" else b"200"
                            length = {b"/slow": b"10", b"/short": b"5", b"/304": b"5"}.get(
                                path, b"2")
                            conn.send_headers(sid, [(b":status", status),
                                                    (b"content-length", length)])
                            if path == b"/slow":
                                threading.Thread(target=slow, args=(sid,), daemon=True).start()
                            elif path == b"/self-priority":
                                send()
                                sock.sendall(PriorityFrame(sid, depends_on=sid).serialize())
                                conn.send_data(sid, b"ok", end_stream=True)
                            elif path == b"/zero-window":
                                send()      # hyperframe will not write an increment of 0
                                sock.sendall(b"\0\0\4\x08\0" + sid.to_bytes(4, "big") +
                                             b"\0\0\0\0")
                                conn.send_data(sid, b"ok", end_stream=True)
                            else:
                                conn.send_data(sid, b"ok" if length == b"2" else b"",
                                               end_stream=True)
                        send()
            except (h2.exceptions.ProtocolError, OSError):
                pass


def h2_gateway(launcher, port):
    return launcher.gateway(gateway_conf([{
        "id": "r", "paths": ["/*rest"],
        "upstream": {"targets": [{"url": f"http://127.0.0.1:{port}"}], "protocol": "h2"}}]))


@pytest.mark.parametrize("path", [b"/short", b"/self-priority", b"/zero-window"])
def test_a_stream_error_of_one_answer_is_not_the_connections(launcher, path):
    """/short: 5 (an answer ended short by an empty DATA frame); /self-priority: 8;
    /zero-window: 10."""
    up = EmptyEndH2()
    try:
        gw = h2_gateway(launcher, up.port)
        victim = {}

        def read_slow():
            victim["answer"] = exchange(gw.port, b"GET /slow HTTP/1.1\r\nHost: h\r\n"
                                                 b"Connection: close\r\n\r\n", timeout=10)
        reader = threading.Thread(target=read_slow)
        reader.start()
        time.sleep(0.5)                 # its head is in, its body on the way
        answer = exchange(gw.port, b"GET %s HTTP/1.1\r\nHost: h\r\nConnection: close\r\n"
                                   b"\r\n" % path)
        reader.join(10)
        assert not answer.endswith(b"ok") if path != b"/short" else \
            answer.startswith(b"HTTP/1.1 502 "), answer[:200]
        assert victim["answer"].startswith(b"HTTP/1.1 200 "), victim["answer"][:300]
        assert victim["answer"].endswith(b"\r\n\r\n0123456789"), victim["answer"][-300:]
        assert up.connections == 1 and "malformed answer" in gw.log()
    finally:
        up.close()


def test_a_304_with_the_representations_content_length_is_relayed(launcher):
    up = EmptyEndH2()
    try:
        gw = h2_gateway(launcher, up.port)
        answer = exchange(gw.port, b"GET /304 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n"
                                   b"\r\n")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 304 ") and body == b"", answer[:300]
        assert b"content-length: 5" in head.lower()
        assert served_after(gw) and up.connections == 1
    finally:
        up.close()


# -- 6. one content-length for an answer with no body --------------------------------------

class RepeatedLengthH2(EventH2cUpstream):
    """h2c: every answer says content-length 5 twice (``5`` and ``05``); a 304 for /304, else
    200 with "hello" (none for HEAD)."""

    def on_event(self, conn, sock, event):
        if not isinstance(event, h2.events.RequestReceived):
            return
        fields = dict(event.headers)
        bodiless = fields[b":path"] == b"/304" or fields[b":method"] == b"HEAD"
        conn.send_headers(event.stream_id, [
            (b":status", b"304" if fields[b":path"] == b"/304" else b"200"),
            (b"content-length", b"5"), (b"content-length", b"05")], end_stream=bodiless)
        if not bodiless:
            conn.send_data(event.stream_id, b"hello", end_stream=True)


@pytest.mark.parametrize("method, path", [("HEAD", "/x"), ("GET", "/304")])
def test_an_answer_without_a_body_carries_one_content_length(launcher, method, path):
    up = RepeatedLengthH2()
    try:
        gw = launcher.gateway(gateway_conf([{
            "id": "r", "paths": ["/*rest"],
            "upstream": {"targets": [{"url": f"http://127.0.0.1:{up.port}"}],
                         "protocol": "h2"}}], http2={"h2c": True}))
        head = exchange(gw.port, b"%s %s HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
                        % (method.encode(), path.encode())).partition(b"\r\n\r\n")[0]
        lengths = [line for line in head.lower().split(b"\r\n")
                   if line.startswith(b"content-length:")]
        assert lengths == [b"content-length: 5"], head
        client = RawH2(gw.port)
        try:
            answer = client.response(client.request(path, method))
        finally:
            client.close()
        assert answer is not None and answer[0] == (304 if path == "/304" else 200), answer
        assert answer[1]["content-length"] == "5"
    finally:
        up.close()


# -- 7. an HTTP/1.0 answer with Transfer-Encoding ends its connection ------------------------

def test_an_http10_answer_with_transfer_encoding_is_never_followed_on_its_connection(
        launcher):
    up = ScriptedHttp1({b"/te10": lambda n: b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"})
    try:
        gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], up.url)]))
        answer = exchange(gw.port, b"GET /te10 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n"
                                   b"\r\n")
        assert answer.startswith(b"HTTP/1.1 200 ") and b"\r\n\r\n5\r\nhello\r\n" in answer
        assert served_after(gw)
        assert len(up.conns) == 2, "the HTTP/1.0 answer's connection was used again"
    finally:
        up.close()


# -- held --------------------------------------------------------------------------------------

@pytest.mark.parametrize("method, sent", [("POST", 1), ("PATCH", 1), ("PUT", 2), ("GET", 2)])
def test_held_a_reused_connection_closed_unanswered_retries_only_idempotent_requests(
        launcher, method, sent):
    """The keep-alive race: the upstream takes the second request on a connection and closes
    without a byte (it timed the connection out as the request came)."""
    up = ScriptedHttp1({b"/x": lambda n: None if n == 2 else OK})
    try:
        gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], up.url)]))
        assert exchange(gw.port, b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n") \
            .endswith(b"ok")
        del up.lines[:]
        answer = exchange(gw.port, b"%s /x HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n"
                          b"Connection: close\r\n\r\ndata" % method.encode())
        assert answer.startswith(b"HTTP/1.1 502 " if sent == 1 else b"HTTP/1.1 200 "), answer
        assert up.lines == [b"%s /x HTTP/1.1" % method.encode()] * sent
    finally:
        up.close()
