"""Review of this morning's helper commits (34db644, 82da5fb, 20c1e26, 314b2f2), attacked.

1. 34db644 took a gRPC-Web call's answer that is not 200 for no gRPC answer unless its head
   held grpc-status, and replaced the upstream's own trailers with a status mapped from the
   HTTP one: a gRPC server (or a proxy that speaks gRPC) answering 503 with application/grpc,
   a message and grpc-status 8 RESOURCE_EXHAUSTED in its trailers reached the client as 14
   UNAVAILABLE, its message gone and its frames' bytes as grpc-message. gRPC
   (http-grpc-status-mapping.md): a grpc-status the answer gives must be used; the mapping
   is for answers without one.
2. So was a grpc-status in the trailers of an answer of another type (a 503 text/plain page
   with grpc-status 8 in its trailers): the page's bytes are no message, but its grpc-status
   is the one the client gets (an OK over no message is mapped from the HTTP status still).
3. A page's verdict waited for the page's end: its bytes past the 16 KiB that become
   grpc-message were read and thrown away, the client given nothing meanwhile. A gRPC-Web
   call routed to a long download waited for all of it (an endless one for ever, the
   upstream's stream held as long). The answer ends once 16 KiB are in, the stream reset.
"""
import socket
import time

import h2.events

from ..conftest import gateway_conf, wait_until
from ..h2_upstreams import StreamingH2Upstream
from .test_attack_pass_dec03 import RecordingH2
from .test_grpc_web import frame, parse_frames
from .test_plugin_output_dec06y import PageH2, grpc_web_call, h2_route


class QuotaH2(RecordingH2):
    """An h2c gRPC upstream that answers every call 503 application/grpc, one message, and
    grpc-status 8 in its trailers (not its head)."""

    def on_event(self, conn, sock, event):
        if isinstance(event, h2.events.DataReceived):
            conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            conn.send_headers(event.stream_id, [(b":status", b"503"),
                                                (b"content-type", b"application/grpc+proto")])
            conn.send_data(event.stream_id, frame(b"\x0a\x02no"))
            conn.send_headers(event.stream_id, [(b"grpc-status", b"8"),
                                                (b"grpc-message", b"quota")], end_stream=True)


def test_a_grpc_answers_own_status_in_trailers_is_kept_whatever_its_http_status(launcher):
    up = QuotaH2()
    try:
        gw = launcher.gateway(gateway_conf([h2_route("g", ["/*rest"], up.port,
                                                     {"grpc_web": {}})]))
        head, body = grpc_web_call(gw.port, b"application/grpc-web+proto",
                                   frame(b"\x0a\x05world"))
        assert head.startswith(b"HTTP/1.1 503 "), head
        messages, trailers = parse_frames(body)
        assert trailers.get("grpc-status") == "8", (body, trailers)
        assert trailers.get("grpc-message") == "quota", trailers
        assert messages == [b"\x0a\x02no"], messages
    finally:
        up.close()


class TrailedPageH2(RecordingH2):
    """An h2c upstream that answers every call 503 text/plain "overloaded", with grpc-status
    8 and a grpc-message in its trailers (grpc-status 0 for a path ending in "Ok")."""

    def __init__(self):
        self.paths = {}
        super().__init__()

    def on_event(self, conn, sock, event):
        if isinstance(event, h2.events.RequestReceived):
            self.paths[event.stream_id] = dict(event.headers)[b":path"]
        elif isinstance(event, h2.events.DataReceived):
            conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            ok = self.paths[event.stream_id].endswith(b"Ok")
            conn.send_headers(event.stream_id, [(b":status", b"503"),
                                                (b"content-type", b"text/plain")])
            conn.send_data(event.stream_id, b"overloaded")
            conn.send_headers(event.stream_id, [(b"grpc-status", b"0" if ok else b"8"),
                                                (b"grpc-message", b"quota")], end_stream=True)


def test_a_pages_grpc_status_in_its_trailers_is_the_one_the_grpc_web_client_gets(launcher):
    up, page = TrailedPageH2(), PageH2()
    try:
        gw = launcher.gateway(gateway_conf([
            h2_route("t", ["/t/*rest"], up.port, {"grpc_web": {}}),
            h2_route("p", ["/p/*rest"], page.port, {"grpc_web": {}})]))
        head, body = grpc_web_call(gw.port, b"application/grpc-web+proto",
                                   frame(b"\x0a\x05world"), path=b"/t/svc.Echo/Say")
        assert head.startswith(b"HTTP/1.1 503 "), head
        messages, trailers = parse_frames(body)
        assert (messages, trailers.get("grpc-status"), trailers.get("grpc-message")) == \
            ([], "8", "quota"), (body, trailers)
        # one that says OK over no message: the status the HTTP one maps to (14), as for
        # a page without one
        head, body = grpc_web_call(gw.port, b"application/grpc-web+proto",
                                   frame(b"\x0a\x05world"), path=b"/t/svc.Echo/SayOk")
        messages, trailers = parse_frames(body)
        assert (messages, trailers.get("grpc-status"), trailers.get("grpc-message")) == \
            ([], "14", "overloaded"), (body, trailers)
        # a page without one: the status its HTTP one maps to, the page as grpc-message
        head, body = grpc_web_call(gw.port, b"application/grpc-web+proto",
                                   frame(b"\x0a\x05world"), path=b"/p/svc.Echo/Say")
        assert head.startswith(b"HTTP/1.1 502 "), head
        messages, trailers = parse_frames(body)
        assert (messages, trailers.get("grpc-status")) == ([], "14"), (body, trailers)
        assert trailers["grpc-message"].startswith("<html>"), trailers
    finally:
        up.close()
        page.close()


def test_a_grpc_web_call_answered_with_a_long_page_ends_once_its_message_is_in(launcher):
    """A 64 MiB answer that is no gRPC one (no content type: a download): the client's
    answer ends once its first 16 KiB are in, the upstream's stream reset; it was read
    whole first (an endless one: for ever)."""
    up = StreamingH2Upstream()
    try:
        gw = launcher.gateway(gateway_conf([h2_route("g", ["/*rest"], up.port,
                                                     {"grpc_web": {}})]))
        message = frame(b"\x0a\x05world")
        for calls in (1, 2):    # the second on the upstream connection the first's reset left
            started = time.monotonic()
            with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
                sock.sendall(b"POST /svc.Files/stream?n=%d&f=16384 HTTP/1.1\r\nHost: h\r\n"
                             b"Content-Type: application/grpc-web+proto\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (64 << 20, len(message), message))
                answer = b""
                while not answer.endswith(b"\r\n0\r\n\r\n"):     # the chunked end
                    piece = sock.recv(65536)
                    assert piece, answer[-200:]
                    answer += piece
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
            assert b"grpc-status:2" in answer and b"grpc-message:mmmm" in answer, answer[-200:]
            assert len(answer) < 64 << 10, len(answer)      # the page's first 16 KiB, encoded
            assert wait_until(lambda: up.resets == calls, timeout=2), up.resets
            assert time.monotonic() - started < 5
    finally:
        up.close()
