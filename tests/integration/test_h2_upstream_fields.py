"""A broken HTTP/2 upstream's header and trailer fields: h2 itself refuses NUL, CR and LF; a
control character or a non-token name must not reach the client either (an HTTP/1.1 upstream
sending them gets a 502 from llhttp, and llhttp also frames our HTTP/2 answers)."""
import os
import socket
import subprocess
import threading
import time

import h2.config
import h2.connection
import h2.events
import pytest
from hyperframe.frame import HeadersFrame

from ..conftest import gateway_conf
from ..h2_upstreams import H2cUpstream, first_request

ANSWERS = {
    b"/good": ([(b"x-a", b"a\tb \xe9")], [(b"x-t", b"fine")]),
    b"/bad-value": ([(b"x-a", b"a\x0bb")], None),
    b"/bad-del": ([(b"x-a", b"a\x7f")], None),
    b"/bad-name": ([(b"x(a", b"1")], None),
    b"/bad-trailer": ([], [(b"x-t", b"\x01")]),
    b"/own-trace-id": ([(b"x-trace-id", b"upstream-chosen")], None),
    # fields a trailer may not carry (RFC 9110 6.5.1), beside a good one
    b"/framing-trailers": ([], [(b"content-length", b"4"), (b"host", b"evil"),
                                (b"trailer", b"x"), (b"grpc-status", b"0")]),
}


class BrokenH2Upstream(H2cUpstream):
    """h2c with prior knowledge; each path answers with the fields in ANSWERS, sent unchecked."""

    def connection(self, sock):
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_outbound_headers=False,
            normalize_outbound_headers=False))
        conn.initiate_connection()
        with sock:
            sock.sendall(conn.data_to_send())
            while data := sock.recv(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        path = dict(event.headers)[b":path"]
                        fields, trailers = ANSWERS[path]
                        conn.send_headers(event.stream_id, [(b":status", b"200")] + fields)
                        conn.send_data(event.stream_id, b"hello", end_stream=trailers is None)
                        if trailers is not None:
                            conn.send_headers(event.stream_id, trailers, end_stream=True)
                sock.sendall(conn.data_to_send())


@pytest.fixture
def gw(launcher):
    upstream = BrokenH2Upstream()
    try:
        yield launcher.gateway(gateway_conf([
            {"id": "h2", "paths": ["/*rest"], "upstream": {
                "targets": [{"url": f"http://127.0.0.1:{upstream.port}"}], "protocol": "h2"}}],
            http2={"h2c": True}))
    finally:
        upstream.close()


def http1(port, path):
    """The raw answer to a GET that asks for trailers, read to the close."""
    return answer_to(port, b"GET %s HTTP/1.1\r\nHost: gw\r\nTE: trailers\r\n"
                     b"Connection: close\r\n\r\n" % path)


def answer_to(port, request_bytes):
    """Send raw request bytes; the answer, read to the close (or a reset)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request_bytes)
        answer = b""
        try:
            while piece := sock.recv(65536):
                answer += piece
        except ConnectionResetError:
            pass
    return answer


def body_of(answer):
    """The body of a raw HTTP/1.1 answer, whatever its framing (chunked or not)."""
    head, _, rest = answer.partition(b"\r\n\r\n")
    if b"\r\ntransfer-encoding: chunked" not in head.lower():
        return rest
    body = b""
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        body, rest = body + rest[:size], rest[size + 2:]
    return body


def test_good_fields_pass_through(gw):
    answer = http1(gw.port, b"/good")
    assert answer.startswith(b"HTTP/1.1 200")
    assert b"\r\nx-a: a\tb \xe9\r\n" in answer                   # tab and obs-text are allowed
    assert answer.endswith(b"\r\n0\r\nx-t: fine\r\n\r\n")


@pytest.mark.parametrize("path", [b"/bad-value", b"/bad-del", b"/bad-name"])
def test_a_bad_header_field_is_a_502_on_either_protocol(gw, path):
    answer = http1(gw.port, path)
    assert answer.startswith(b"HTTP/1.1 502"), answer[:200]
    head = answer.partition(b"\r\n\r\n")[0].lower()
    assert b"x-a:" not in head and b"x(a:" not in head
    out = subprocess.run(["curl", "-sS", "--max-time", "10", "--http2-prior-knowledge", "-o",
                          "/dev/null", "-w", "%{http_code}",
                          f"http://127.0.0.1:{gw.port}{path.decode()}"],
                         capture_output=True, timeout=15)
    assert out.stdout == b"502", out
    assert "HTTP does not allow" in gw.log()


def test_a_bad_trailer_ends_the_answer_unfinished(gw):
    """The upstream sends head, body and the bad trailer in one write: the relay still holds
    the head when the trailer is refused, so the client gets a whole 502, nothing of the
    forged answer (a relay that had sent the head would cut the answer short instead: see
    test_cut_answers.py)."""
    answer = http1(gw.port, b"/bad-trailer")
    assert answer.startswith(b"HTTP/1.1 502") and answer.count(b"HTTP/1.1") == 1
    assert b"\x01" not in answer and b"hello" not in answer


def test_framing_and_routing_fields_in_trailers_are_dropped(gw):
    """A content-length in an HTTP/2 upstream's trailers made an HTTP/2 client's stream end
    in INTERNAL_ERROR (the HTTP/1.1 framing between the two sides refused it), logged as a
    200; host and the rest passed to HTTP/1.1 clients. They are dropped; the others pass."""
    answer = http1(gw.port, b"/framing-trailers")
    assert answer.startswith(b"HTTP/1.1 200") and body_of(answer) == b"hello"
    assert answer.endswith(b"\r\n0\r\ngrpc-status: 0\r\n\r\n"), answer[-120:]
    out = subprocess.run(["curl", "-sS", "--max-time", "10", "--http2-prior-knowledge",
                          "-H", "TE: trailers", "-w", "\n%{http_code}",
                          f"http://127.0.0.1:{gw.port}/framing-trailers"],
                         capture_output=True, timeout=15)
    assert out.returncode == 0 and out.stdout == b"hello\n200", out


class MalformingH2Upstream(H2cUpstream):
    """h2c. GET /slow: 200, then a byte every 0.2 s, ten of them. GET /pseudo-late: a head
    with :status after a regular field; /cl-more: content-length 2 and 7 bytes of body;
    /cl-less: content-length 7 and 2 bytes (each malformed, RFC 9113 8.1.1). ``connections``
    counts the connections it took."""

    def __init__(self):
        self.connections = 0
        super().__init__()

    def connection(self, sock):
        self.connections += 1
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_outbound_headers=False,
            normalize_outbound_headers=False))
        conn.initiate_connection()
        lock = threading.Lock()

        def send():
            sock.sendall(conn.data_to_send())

        def slow(sid):
            with lock:
                conn.send_headers(sid, [(b":status", b"200"), (b"content-length", b"10")])
                send()
            for i in range(10):
                time.sleep(0.2)
                with lock:
                    conn.send_data(sid, b"%d" % i, end_stream=i == 9)
                    send()

        with sock:
            with lock:
                send()
            try:
                while data := sock.recv(65536):
                    with lock:
                        events = conn.receive_data(data)
                        for event in events:
                            if not isinstance(event, h2.events.RequestReceived):
                                continue
                            sid, path = event.stream_id, dict(event.headers)[b":path"]
                            if path == b"/slow":
                                threading.Thread(target=slow, args=(sid,), daemon=True).start()
                            elif path == b"/pseudo-late":
                                conn.send_headers(sid, [(b"x-a", b"1"), (b":status", b"200")],
                                                  end_stream=True)
                            elif path in (b"/cl-more", b"/cl-less"):
                                more = path == b"/cl-more"
                                conn.send_headers(sid, [(b":status", b"200"), (
                                    b"content-length", b"2" if more else b"7")])
                                conn.send_data(sid, b"x" * (7 if more else 2), end_stream=True)
                        send()
            except (h2.exceptions.ProtocolError, OSError):
                pass


@pytest.mark.parametrize("path", [b"/pseudo-late", b"/cl-more", b"/cl-less"])
def test_a_malformed_answer_ends_its_stream_not_the_connection(launcher, path):
    """RFC 9113 8.1.1: a malformed message is a stream error. h2 raises a ProtocolError for
    it, which failed the whole upstream connection: another client's answer on it was cut
    (an attack pass). The malformed one is a 502; the other arrives whole, on the same
    connection."""
    upstream = MalformingH2Upstream()
    try:
        gw = launcher.gateway(gateway_conf([
            {"id": "h2", "paths": ["/*rest"], "upstream": {
                "targets": [{"url": f"http://127.0.0.1:{upstream.port}"}], "protocol": "h2"}}]))
        victim = {}

        def read_slow():
            victim["answer"] = answer_to(gw.port, b"GET /slow HTTP/1.1\r\nHost: gw\r\n"
                                                  b"Connection: close\r\n\r\n")
        reader = threading.Thread(target=read_slow)
        reader.start()
        time.sleep(0.5)                 # its head is in, its body on the way
        answer = answer_to(gw.port, b"GET %s HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
                           % path)
        reader.join(10)
        assert answer.startswith(b"HTTP/1.1 502"), answer[:100]
        assert victim["answer"].startswith(b"HTTP/1.1 200")
        assert body_of(victim["answer"]) == b"0123456789"
        assert upstream.connections == 1 and "malformed answer" in gw.log()
    finally:
        upstream.close()


def test_the_client_gets_the_gateways_trace_id_header_not_the_upstreams(gw):
    head = http1(gw.port, b"/own-trace-id").partition(b"\r\n\r\n")[0].lower()
    assert head.count(b"x-trace-id:") == 1 and b"upstream-chosen" not in head, head


class ClosedStreamHeadersUpstream(H2cUpstream):
    """Answers a GET with 200 "ok" and END_STREAM, then sends HEADERS on that finished stream
    again and again for 3 s (RFC 9113 5.1: a connection error, STREAM_CLOSED)."""

    def connection(self, sock):
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        with sock:
            try:
                sock.sendall(conn.data_to_send())
                sid = first_request(conn, sock)
                conn.send_headers(sid, [(b":status", b"200"), (b"content-length", b"2")])
                conn.send_data(sid, b"ok", end_stream=True)
                sock.sendall(conn.data_to_send())
                time.sleep(0.3)             # the answer is relayed first
                block = conn.encoder.encode([(b":status", b"200")])
                frame = HeadersFrame(sid, block, flags=["END_HEADERS", "END_STREAM"])
                end = time.monotonic() + 3
                while time.monotonic() < end:
                    sock.sendall(frame.serialize() * 100)
            except OSError:
                pass


def test_headers_on_a_finished_stream_end_the_upstream_connection(launcher):
    """A malformed answer is a stream error, but HEADERS on a stream that ended is a
    connection error: taken for a malformed answer (a review pass), they were neither
    counted nor answered, 34,000 a second took 95% of the worker for as long as they came."""
    upstream = ClosedStreamHeadersUpstream()
    try:
        gw = launcher.gateway(gateway_conf([
            {"id": "h2", "paths": ["/*rest"], "upstream": {
                "targets": [{"url": f"http://127.0.0.1:{upstream.port}"}], "protocol": "h2"}}]))
        with open(f"/proc/{gw.worker_pids()[0]}/stat") as f:
            before = f.read()
        answer = http1(gw.port, b"/x")
        assert answer.startswith(b"HTTP/1.1 200") and body_of(answer) == b"ok"
        time.sleep(3)
        with open(f"/proc/{gw.worker_pids()[0]}/stat") as f:
            after = f.read()

        def cpu(stat):
            fields = stat.rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        assert cpu(after) - cpu(before) < 1.0, f"{cpu(after) - cpu(before):.1f}s of CPU in 3 s"
        assert http1(gw.port, b"/y").startswith(b"HTTP/1.1 200")   # on a new connection
    finally:
        upstream.close()
