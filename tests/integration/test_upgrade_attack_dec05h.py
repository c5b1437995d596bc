"""Websocket tunnels attacked as a hostile client and as a broken upstream, through real
gateways and upstreams (the attack pass of 2026-12-05, helper h2, on e96cb6d). Each test failed
on that commit.

1. A tunnel's traffic was invisible: its access line said ``bytes: 0`` and ``request_bytes:
   0`` however much went through it (100,000 bytes echoed each way, measured), the first
   frames sent with the handshake and with the 101 included. A client that moved gigabytes
   through a websocket left the same line as one that sent nothing; no one could tell which
   tunnel took the bandwidth, nor bill it.
2. A client that half-closed its side after its last message (``shutdown(SHUT_WR)``: ``nc
   -N``, a script that sends its request and waits for the answer, a websocket client that
   sends its Close frame and then its FIN) lost the upstream's answer to that message: at the
   first FIN the gateway shut both ways down, so the upstream's reply, written a moment later,
   went nowhere and the client read only an EOF. The other way too: an upstream that sent its
   last message and its FIN (closing its side, still reading) never got what the client sent
   after it. TCP keeps each way open until its own FIN (RFC 9293 3.6).
3. A client that stopped reading a tunnel while the upstream wrote to it (a flood, or a
   large download over a websocket) held the write that waited on it, the tunnel and the
   upstream connection for ever, as long as it sent a byte now and then: the one idle
   deadline was re-armed by the other way's traffic, so neither ``timeouts.read`` nor
   ``server.send_timeout`` (docs/security.md: "a write waiting longer than send_timeout is
   closed") ever fired. Each such client pinned an upstream connection (and the upstream's
   worker that fed it) at the cost of a ping a second.
4. An HTTP/1.1 client that hung up on a streamed answer (an event stream, a gRPC-Web server
   stream) was noticed only when the relay next wrote to it, twice over (the first write to
   a closed connection goes through): with an upstream that sends a heartbeat every 30 s,
   the upstream's connection (or HTTP/2 stream) and the request's ``limit_conn`` slot were
   held for up to a minute after the client left. A browser that reconnected its
   EventSource at once (a page reload, a network change) was refused 503
   ``too_many_connections`` by ``limit_conn = {limit = 1}`` for all that time, its own
   ghost holding the slot; an HTTP/2 client's reset ended its stream's upstream at once.
"""
import base64
import hashlib
import os
import socket
import threading
import time

import pytest

from ..conftest import WEBSOCKET_HANDSHAKE, gateway_conf, open_websocket, route, wait_until
from ..h2_upstreams import StreamingH2Upstream

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
FIELDS = ["time", "path", "status", "bytes", "request_bytes"]


class WebsocketUpstream:
    """A loopback upstream in this process: completes each websocket handshake with a 101,
    whose packet also holds ``with_101``, then runs ``after(conn, state)`` on the connection
    (its own thread); ``state`` is a dict the test reads."""

    def __init__(self, after, with_101=b""):
        self.after, self.with_101 = after, with_101
        self.state = {}
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns = []
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn):
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                piece = conn.recv(65536)
                if not piece:
                    return
                head += piece
            key = next(line.partition(b":")[2].strip() for line in head.split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key:"))
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n%s"
                         % (accept, self.with_101))
            self.after(conn, self.state)
        except OSError as exc:
            self.state["error"] = exc
        finally:
            conn.close()

    def close(self):
        self.sock.close()
        for conn in self.conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def read_to_eof(sock, limit=5.0):
    """What ``sock`` receives until the peer's FIN (or ``limit`` seconds: then None)."""
    sock.settimeout(limit)
    got = b""
    try:
        while piece := sock.recv(65536):
            got += piece
    except socket.timeout:
        return None
    return got


def access_line(gw, path=b"/ws"):
    """The access line of the tunnel (once the tunnel has closed and the line is written)."""
    return wait_until(lambda: next((line for line in gw.access_lines()
                                    if line["path"] == path.decode()
                                    and line["status"] == 101), None), timeout=10)


# -- 1. the bytes a tunnel moved are in its access line ---------------------------------------

def test_a_tunnels_bytes_each_way_are_in_its_access_line(launcher, upstream):
    gw = launcher.gateway(gateway_conf(
        [route("ws", ["/ws"], upstream.url)],
        log={"access_fields": FIELDS}))
    first = b"sent-with-the-handshake"
    sock, head, rest = open_websocket(gw.port, first)
    assert head.startswith(b"HTTP/1.1 101 "), head
    data = os.urandom(100_000)
    sock.sendall(data)
    got = rest
    while len(got) < len(first) + len(data):
        piece = sock.recv(65536)
        assert piece, len(got)
        got += piece
    assert got == first + data
    sock.close()
    line = access_line(gw)
    moved = len(first) + len(data)
    assert (line["bytes"], line["request_bytes"]) == (moved, moved), line


def test_a_tunnels_first_frames_with_its_101_count_as_sent(launcher):
    def then_more(conn, state):
        time.sleep(0.2)
        conn.sendall(b"-and-more")
        state["read"] = read_to_eof(conn)

    up = WebsocketUpstream(then_more, with_101=b"welcome")
    try:
        gw = launcher.gateway(gateway_conf(
            [route("ws", ["/ws"], up.url)],
            log={"access_fields": FIELDS}))
        sock, head, rest = open_websocket(gw.port)
        while len(rest) < 16:
            rest += sock.recv(65536)
        assert rest == b"welcome-and-more"
        sock.sendall(b"12345")
        sock.close()
        line = access_line(gw)
        assert (line["bytes"], line["request_bytes"]) == (16, 5), line
    finally:
        up.close()


# -- 2. half-closes ---------------------------------------------------------------------------

def test_a_client_that_half_closes_still_gets_the_upstreams_answer(launcher):
    def answer_after_the_fin(conn, state):
        got = b""
        while piece := conn.recv(65536):        # up to the client's FIN, passed on
            got += piece
        time.sleep(0.2)                         # the answer comes after the FIN
        conn.sendall(b"answer to " + got)
        state["got"] = got

    up = WebsocketUpstream(answer_after_the_fin)
    try:
        gw = launcher.gateway(gateway_conf([route("ws", ["/ws"], up.url)]))
        sock, head, rest = open_websocket(gw.port)
        assert head.startswith(b"HTTP/1.1 101 "), head
        sock.sendall(b"last message")
        sock.shutdown(socket.SHUT_WR)
        assert rest + read_to_eof(sock) == b"answer to last message"
        sock.close()
        assert up.state["got"] == b"last message"
    finally:
        up.close()


def test_an_upstream_that_half_closes_still_gets_what_the_client_sends(launcher):
    def last_word_then_listen(conn, state):
        conn.sendall(b"goodbye")
        conn.shutdown(socket.SHUT_WR)
        state["after"] = read_to_eof(conn)

    up = WebsocketUpstream(last_word_then_listen)
    try:
        gw = launcher.gateway(gateway_conf([route("ws", ["/ws"], up.url)]))
        sock, head, rest = open_websocket(gw.port)
        assert head.startswith(b"HTTP/1.1 101 "), head
        assert rest + read_to_eof(sock) == b"goodbye"       # its FIN reached the client
        sock.sendall(b"ack")
        sock.shutdown(socket.SHUT_WR)
        wait_until(lambda: "after" in up.state, timeout=5)
        assert up.state["after"] == b"ack"
        sock.close()
    finally:
        up.close()


# -- 3. a client that stops reading ------------------------------------------------------------

@pytest.mark.parametrize("pinging", [True, False])
def test_a_client_that_stops_reading_a_tunnel_is_cut_at_send_timeout(launcher, pinging):
    def flood(conn, state):
        block = b"y" * 65536
        state["sent"] = 0
        conn.settimeout(30)
        while True:
            conn.sendall(block)
            state["sent"] += len(block)

    up = WebsocketUpstream(flood)
    try:
        gw = launcher.gateway(gateway_conf(
            [route("ws", ["/ws"], up.url, timeouts={"read": 30.0})],
            server={"send_timeout": 1.0}))
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", gw.port))
        sock.sendall(WEBSOCKET_HANDSHAKE)
        started = time.monotonic()
        cut = None
        while time.monotonic() - started < 8 and cut is None:
            time.sleep(0.2)
            if pinging:                 # the other way moves: it kept the tunnel "busy"
                try:
                    sock.sendall(b"ping")
                except OSError:
                    cut = time.monotonic() - started
            elif "error" in up.state:
                cut = time.monotonic() - started
        if pinging:
            wait_until(lambda: "error" in up.state, timeout=5)
        sock.close()
        # the stalled write waited send_timeout (and a tick or two), not for ever
        assert cut is not None and cut < 5, cut
        assert isinstance(up.state["error"], OSError)      # the upstream was let go too
        line = access_line(gw)
        assert line["bytes"] > 0, line
    finally:
        up.close()


# -- 4. a client that hangs up on a quiet stream ------------------------------------------------

class EventStreamUpstream:
    """A loopback HTTP/1.1 upstream: each GET gets a chunked event stream, one event at once
    and then one every ``every`` seconds; ``ended`` counts the streams whose connection the
    gateway closed (seen between two events)."""

    def __init__(self, every):
        self.every, self.ended = every, 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.stream, args=(conn,), daemon=True).start()

    def stream(self, conn):
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n9\r\ndata: x\n\n\r\n")
            conn.settimeout(self.every)
            try:
                while True:
                    try:
                        if not conn.recv(65536):        # the gateway let it go
                            self.ended += 1
                            return
                    except socket.timeout:
                        conn.sendall(b"9\r\ndata: x\n\n\r\n")
            except OSError:
                return

    def close(self):
        self.sock.close()


def open_stream(port, path, until):
    """A GET of ``path``; -> (socket, what came up to ``until``, or a whole refusal)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET %s HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n" % path)
    got = b""
    while until not in got:
        piece = sock.recv(65536)
        if not piece:
            break
        got += piece
    return sock, got


def reconnects(port):
    sock, got = open_stream(port, b"/events", b"data: x")
    sock.close()
    return got.startswith(b"HTTP/1.1 200 ")


def test_a_client_that_hangs_up_on_a_quiet_event_stream_frees_its_slot_and_upstream(launcher):
    up = EventStreamUpstream(every=30)
    try:
        gw = launcher.gateway(gateway_conf([route(
            "sse", ["/events"], up.url, timeouts={"read": 60.0},
            plugins={"limit_conn": {"limit": 1, "scope": "host"}})]))
        sock, got = open_stream(gw.port, b"/events", b"data: x")
        assert got.startswith(b"HTTP/1.1 200 "), got
        sock.close()                                # the browser's page reload
        left = time.monotonic()
        # it comes back at once: its ghost must not hold the one slot for 30 s (or 60)
        wait_until(lambda: reconnects(gw.port), timeout=5, interval=0.3)
        assert time.monotonic() - left < 4
        wait_until(lambda: up.ended >= 1, timeout=5)    # and its upstream was let go
        line = next(line for line in gw.access_lines() if line["status"] == 200)
        assert line["bytes"] > 0 and "error" not in line, line
        log = gw.log()      # the client's doing: no failure of the upstream's is logged
        assert "[WARNING]" not in log and "[ERROR]" not in log, log[-2000:]
    finally:
        up.close()


def test_a_client_that_hangs_up_on_an_h2_upstreams_quiet_stream_resets_it(launcher):
    up = StreamingH2Upstream()
    try:
        gw = launcher.gateway(gateway_conf([{
            "id": "h2", "paths": ["/*rest"], "timeouts": {"read": 60.0},
            "upstream": {"targets": [{"url": f"http://127.0.0.1:{up.port}"}],
                         "protocol": "h2"}}]))
        sock, got = open_stream(gw.port, b"/tick?n=100&every=20", b"\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 200 "), got       # and nothing more for 20 s
        before = up.resets
        sock.close()
        left = time.monotonic()
        wait_until(lambda: up.resets > before, timeout=5)
        assert time.monotonic() - left < 4
        line = wait_until(lambda: next((line for line in gw.access_lines()
                                        if line["path"] == "/tick"), None), timeout=5)
        assert line["status"] == 200 and "error" not in line, line
    finally:
        up.close()
