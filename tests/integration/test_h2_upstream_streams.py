"""An HTTP/2 upstream's stream limit and status codes, against real h2c upstreams. Found by the
fourth attack pass: an upstream that answered an upload early without resetting the stream
left it open on the gateway's side for ever, so after SETTINGS_MAX_CONCURRENT_STREAMS such
uploads every request to it was a 500; requests past that limit were 500s too; a :status
that is not a status code was a 500 or reached the client as a status line."""
import http.client
import socket
import struct
import threading
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import pytest
from hyperframe.frame import DataFrame, GoAwayFrame, PingFrame, WindowUpdateFrame

from ..conftest import gateway_conf, route, wait_until
from ..h2_upstreams import H2cUpstream, StreamingH2Upstream, first_request
from .test_h2_upstream_fields import answer_to, body_of
from .test_http2_hardening import Bystander, worker_cpu


class LimitedH2Upstream(H2cUpstream):
    """h2c with prior knowledge that allows ``max_streams`` streams at once.
    - A request whose body is still coming is answered at once (200 "early", END_STREAM) and
      never reset: RFC 9113 8.1 makes the reset a MAY. The rest of its body is read (and
      acknowledged).
    - GET /slow is answered after ``delay`` seconds; GET /status/<digits or junk> with that
      :status, sent unchecked; GET /many-interim after twenty 103s; GET /goaway gets a graceful
      GOAWAY naming its stream, then its answer; anything else 200 "ok"."""

    def __init__(self, max_streams, delay=0.5):
        self.max_streams, self.delay = max_streams, delay
        self.most_open = self.goaways = self.connections = 0
        super().__init__()

    def connection(self, sock):
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_outbound_headers=False,
            normalize_outbound_headers=False))
        conn.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams})
        conn.initiate_connection()
        lock = threading.Lock()
        self.connections += 1

        def answer(stream_id, status=b"200", body=b"ok"):
            with lock:
                try:
                    conn.send_headers(stream_id, [(b":status", status),
                                                  (b"content-length", b"%d" % len(body))])
                    conn.send_data(stream_id, body, end_stream=True)
                    sock.sendall(conn.data_to_send())
                except (h2.exceptions.ProtocolError, OSError):
                    pass

        with sock:
            sock.sendall(conn.data_to_send())
            try:
                while data := sock.recv(65536):
                    with lock:
                        events = conn.receive_data(data)
                        self.most_open = max(self.most_open, conn.open_inbound_streams)
                    for event in events:
                        if isinstance(event, h2.events.DataReceived):
                            with lock:      # read and acknowledged, as a real server does
                                conn.acknowledge_received_data(event.flow_controlled_length,
                                                               event.stream_id)
                        if not isinstance(event, h2.events.RequestReceived):
                            continue
                        path = dict(event.headers)[b":path"]
                        if event.stream_ended is None:
                            answer(event.stream_id, body=b"early")
                        elif path == b"/slow":
                            threading.Timer(self.delay, answer, (event.stream_id,)).start()
                        elif path.startswith(b"/status/"):
                            answer(event.stream_id, status=path[8:])
                        elif path == b"/goaway":
                            # a graceful GOAWAY naming the last stream taken (nginx after
                            # keepalive_requests), then the answer: streams up to it finish.
                            # In this order: with the answer first, the client could send
                            # its next request before the GOAWAY came, on this connection.
                            with lock:
                                self.goaways += 1
                                sock.sendall(conn.data_to_send() + GoAwayFrame(
                                    0, last_stream_id=event.stream_id, error_code=0).serialize())
                            answer(event.stream_id)
                        elif path == b"/many-interim":
                            with lock:
                                for _ in range(20):
                                    conn.send_headers(event.stream_id, [(b":status", b"103")])
                            answer(event.stream_id)
                        else:
                            answer(event.stream_id)
                    with lock:
                        sock.sendall(conn.data_to_send())
            except (h2.exceptions.ProtocolError, OSError):
                pass


def gateway_to(launcher, upstream, read=None, paths=("/*rest",)):
    """A gateway with one route to ``upstream`` over HTTP/2; ``read``: its read timeout."""
    route = {"id": "h2", "paths": list(paths), "upstream": {
        "targets": [{"url": f"http://127.0.0.1:{upstream.port}"}], "protocol": "h2"}}
    if read is not None:
        route["timeouts"] = {"read": read}
    return launcher.gateway(gateway_conf([route]))


@pytest.fixture
def limited(launcher):
    upstream = LimitedH2Upstream(max_streams=3)
    try:
        yield gateway_to(launcher, upstream), upstream
    finally:
        upstream.close()


def test_an_early_answer_without_a_reset_frees_its_stream(limited):
    gw, _ = limited
    for _ in range(6):                  # twice the upstream's limit
        answer = answer_to(gw.port, b"POST /up HTTP/1.1\r\nHost: gw\r\nContent-Length: 400000"
                           b"\r\n\r\n" + b"x" * 200_000)
        assert answer.startswith(b"HTTP/1.1 200") and body_of(answer) == b"early", answer[:300]
    answer = answer_to(gw.port, b"GET /after HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200") and body_of(answer) == b"ok", answer[:300]
    assert "unhandled error" not in gw.log()


def test_requests_past_the_upstreams_stream_limit_wait_for_a_stream(limited):
    gw, upstream = limited
    answers = [None] * 8

    def get(i):
        answers[i] = answer_to(gw.port, b"GET /slow HTTP/1.1\r\nHost: gw\r\n"
                               b"Connection: close\r\n\r\n")
    threads = [threading.Thread(target=get, args=(i,)) for i in range(len(answers))]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert all(a is not None and a.startswith(b"HTTP/1.1 200") for a in answers), answers
    assert upstream.most_open <= 3
    # three at a time, 0.5 s each: at least three rounds
    assert time.monotonic() - started >= 1.0
    assert "unhandled error" not in gw.log()


@pytest.mark.parametrize("status", [b"abc", b"2000", b"-1", b"099", b"600", b"101"])
def test_a_status_that_is_not_a_status_code_is_a_502(limited, status):
    gw, _ = limited
    answer = answer_to(gw.port, b"GET /status/%s HTTP/1.1\r\nHost: gw\r\n"
                       b"Connection: close\r\n\r\n" % status)
    assert answer.startswith(b"HTTP/1.1 502 "), answer[:300]
    assert "unhandled error" not in gw.log()


def test_endless_interim_heads_are_a_502(limited):
    gw, _ = limited
    answer = answer_to(gw.port, b"GET /many-interim HTTP/1.1\r\nHost: gw\r\n"
                       b"Connection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 502 "), answer[:300]
    wait_until(lambda: "interim" in gw.log())        # the reason: the log's, not the client's


class DeafH2Upstream(H2cUpstream):
    """Takes the first request's head, then never reads again and floods PINGs (for at most
    ``seconds``): the gateway's acknowledgements fill the socket buffers."""

    def __init__(self, seconds=8.0):
        self.seconds, self.cut_after = seconds, None
        super().__init__()

    def frames(self):
        return b"".join(PingFrame(0, i.to_bytes(8, "big")).serialize() for i in range(4096))

    def connection(self, sock):
        """``cut_after``: how long the frames went on before the gateway closed (None:
        never)."""
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        started = time.monotonic()
        with sock:
            try:
                sock.sendall(conn.data_to_send())
                requested = False
                while not requested and (data := sock.recv(65536)):
                    requested = any(isinstance(e, h2.events.RequestReceived)
                                    for e in conn.receive_data(data))
                    sock.sendall(conn.data_to_send())
                sock.settimeout(1.0)
                frames, started = self.frames(), time.monotonic()
                while time.monotonic() < started + self.seconds:
                    try:
                        sock.sendall(frames)
                    except socket.timeout:
                        pass            # the gateway reads no more either: hold on
            except (h2.exceptions.ProtocolError, OSError):
                self.cut_after = time.monotonic() - started


def test_an_upstream_that_stops_reading_is_a_timely_error_not_a_hang(launcher):
    """Its unread acknowledgements fill the socket buffers, and a write to it waits: that
    write must hold no lock other requests need, and must end (the connection with it)."""
    upstream = DeafH2Upstream()
    try:
        gw = gateway_to(launcher, upstream, read=2.0)
        request = b"GET /a HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
        first = []
        thread = threading.Thread(target=lambda: first.append(answer_to(gw.port, request)))
        thread.start()
        time.sleep(3)                   # the buffers are full by now
        started = time.monotonic()
        answer = answer_to(gw.port, request)
        assert answer.startswith((b"HTTP/1.1 502 ", b"HTTP/1.1 504 ")), answer[:300]
        assert time.monotonic() - started < 6
        thread.join(10)
        assert first and first[0].startswith((b"HTTP/1.1 502 ", b"HTTP/1.1 504 ")), first
    finally:
        upstream.close()


def test_a_graceful_goaway_lets_the_streams_it_took_finish(limited):
    """nginx sends GOAWAY(NO_ERROR) after keepalive_requests, gRPC servers at
    MAX_CONNECTION_AGE: the streams it names as taken are answered on that connection, and
    the next requests go to a new one."""
    gw, upstream = limited
    slow = []
    thread = threading.Thread(target=lambda: slow.append(answer_to(
        gw.port, b"GET /slow HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")))
    thread.start()
    time.sleep(0.1)                     # /slow is in flight when the GOAWAY comes
    answer = answer_to(gw.port, b"GET /goaway HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    thread.join(10)
    assert slow and slow[0].startswith(b"HTTP/1.1 200") and body_of(slow[0]) == b"ok", slow
    for _ in range(3):
        answer = answer_to(gw.port, b"GET /after HTTP/1.1\r\nHost: gw\r\n"
                           b"Connection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert upstream.goaways == 1 and upstream.connections == 2
    assert "unhandled error" not in gw.log()


class SlowSinkH2Upstream(H2cUpstream):
    """Allows ``max_streams`` streams. POST /noack: never acknowledges the body (its window,
    the default 64 KiB, stays shut) and never answers. POST /sink: reads the body at
    ``rate`` bytes a second, acknowledging what it read, then answers; with ``huge_windows``
    its windows are the largest HTTP/2 allows. GET: 200."""

    def __init__(self, max_streams=3, huge_windows=False, rate=4 << 20):
        self.max_streams, self.huge_windows, self.rate = max_streams, huge_windows, rate
        super().__init__()

    def connection(self, sock):
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        settings = {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams}
        if self.huge_windows:
            settings[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] = 2 ** 31 - 1
        conn.local_settings = h2.settings.Settings(client=False, initial_values=settings)
        conn.initiate_connection()
        if self.huge_windows:
            conn.increment_flow_control_window(2 ** 31 - 1 - 65535)
        paths, deadline = {}, time.monotonic() + 30
        with sock:
            try:
                sock.sendall(conn.data_to_send())
                while time.monotonic() < deadline and (data := sock.recv(16384)):
                    for event in conn.receive_data(data):
                        if isinstance(event, h2.events.RequestReceived):
                            paths[event.stream_id] = dict(event.headers)[b":path"]
                            if event.stream_ended:
                                conn.send_headers(event.stream_id, [(b":status", b"200")],
                                                  end_stream=True)
                        elif isinstance(event, h2.events.DataReceived) and \
                                paths.get(event.stream_id) == b"/sink":
                            conn.acknowledge_received_data(event.flow_controlled_length,
                                                           event.stream_id)
                            if event.stream_ended:
                                conn.send_headers(event.stream_id, [(b":status", b"200")],
                                                  end_stream=True)
                    sock.sendall(conn.data_to_send())
                    time.sleep(len(data) / self.rate)
            except (h2.exceptions.ProtocolError, OSError):
                pass


@pytest.fixture(params=[False, True], ids=["small-windows", "huge-windows"])
def sink(launcher, request):
    """The gateway in front of a SlowSinkH2Upstream; read timeout 1 s, or 10 s for tests
    marked slow_reads (an upload's answer waits for the whole body)."""
    upstream = SlowSinkH2Upstream(huge_windows=request.param)
    read = 10.0 if request.node.get_closest_marker("slow_reads") else 1.0
    try:
        yield launcher.gateway(gateway_conf([
            {"id": "h2", "paths": ["/*rest"], "timeouts": {"read": read}, "upstream": {
                "targets": [{"url": f"http://127.0.0.1:{upstream.port}"}],
                "protocol": "h2"}}], upstream_defaults={"pool_timeout": 1.0}))
    finally:
        upstream.close()


def test_a_request_that_fails_while_its_body_waits_for_a_window_frees_its_stream(sink):
    """The body came whole with the head (so the gateway sends it itself), the upstream's
    window stays shut: a 504, and the stream is reset, not kept for ever (after three, with
    a limit of three, every request was a 503)."""
    for _ in range(4):
        answer = answer_to(sink.port, b"POST /noack HTTP/1.1\r\nHost: gw\r\n"
                           b"Content-Length: 100000\r\nConnection: close\r\n\r\n" +
                           b"x" * 100000)
        assert answer.startswith(b"HTTP/1.1 504"), answer[:300]
    answer = answer_to(sink.port, b"GET /after HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]


@pytest.mark.slow_reads
def test_an_upload_to_a_slow_reader_is_held_to_a_bounded_buffer(sink):
    """h2 debits its windows when DATA is queued, not when it is sent: an upstream with
    large windows that reads slowly must not make the worker hold the whole upload (RSS),
    and an upstream that keeps reading is not cut by the write deadline."""
    worker = sink.worker_pids()[0]

    def rss_mb():
        with open(f"/proc/{worker}/status") as status:
            return next(int(line.split()[1]) for line in status
                        if line.startswith("VmRSS")) / 1024

    before = rss_mb()
    size = 60 << 20
    with socket.create_connection(("127.0.0.1", sink.port), timeout=10) as sock:
        sock.sendall(b"POST /sink HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n" % size)
        piece = b"u" * (1 << 20)
        sock.settimeout(0.5)
        peak, sent, until = before, 0, time.monotonic() + 3
        while time.monotonic() < until:
            try:
                if sent < size:
                    sent += sock.send(piece)
                else:
                    time.sleep(0.1)
            except socket.timeout:
                pass
            peak = max(peak, rss_mb())
    assert peak - before < 40, f"worker RSS grew {peak - before:.0f} MB during the upload"


class RefusingH2Upstream(H2cUpstream):
    """Echoes each request's body (200) once it ended, but refuses the first request on a
    path beginning /refuse (RST_STREAM REFUSED_STREAM) or /goaway-before (GOAWAY NO_ERROR
    whose last_stream_id is below the stream: RFC 9113 says it was not processed; then the
    connection ends). ``processed`` lists the bodies of the requests it answered."""

    def __init__(self):
        self.refused, self.processed, self.connections = set(), [], 0
        super().__init__()

    def connection(self, sock):
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        self.connections += 1
        bodies, paths = {}, {}
        with sock:
            try:
                sock.sendall(conn.data_to_send())
                while data := sock.recv(65536):
                    for event in conn.receive_data(data):
                        if isinstance(event, h2.events.RequestReceived):
                            path = paths[event.stream_id] = dict(event.headers)[b":path"]
                            bodies[event.stream_id] = b""
                            if path not in self.refused and path.startswith(b"/refuse"):
                                self.refused.add(path)
                                conn.reset_stream(event.stream_id, 7)   # REFUSED_STREAM
                                paths[event.stream_id] = None
                            elif path not in self.refused and path.startswith(b"/goaway-b"):
                                self.refused.add(path)
                                sock.sendall(conn.data_to_send() + GoAwayFrame(
                                    0, last_stream_id=max(event.stream_id - 2, 0),
                                    error_code=0).serialize())
                                time.sleep(0.2)     # the gateway reads it, then: the end
                                return
                        elif isinstance(event, h2.events.DataReceived):
                            conn.acknowledge_received_data(event.flow_controlled_length,
                                                           event.stream_id)
                            bodies[event.stream_id] = bodies.get(event.stream_id, b"") + \
                                event.data
                            path = paths.get(event.stream_id)
                            if path and path.startswith(b"/goaway-late") and \
                                    path not in self.refused and \
                                    len(bodies[event.stream_id]) >= 20000:
                                self.refused.add(path)
                                sock.sendall(conn.data_to_send() + GoAwayFrame(
                                    0, last_stream_id=max(event.stream_id - 2, 0),
                                    error_code=0).serialize())
                                time.sleep(0.2)
                                return
                        elif isinstance(event, h2.events.StreamEnded) and \
                                paths.get(event.stream_id):
                            body = bodies.pop(event.stream_id)
                            self.processed.append(body)
                            conn.send_headers(event.stream_id, [
                                (b":status", b"200"), (b"content-length", b"%d" % len(body))])
                            for at in range(0, len(body), 16384):   # the frame size
                                conn.send_data(event.stream_id, body[at:at + 16384])
                            conn.end_stream(event.stream_id)
                    sock.sendall(conn.data_to_send())
            except (h2.exceptions.ProtocolError, OSError):
                pass


def dechunked(data):
    body = b""
    while True:
        size, _, data = data.partition(b"\r\n")
        size = int(size, 16)
        if not size:
            return body
        body, data = body + data[:size], data[size + 2:]


@pytest.fixture
def refusing(launcher):
    upstream = RefusingH2Upstream()
    try:
        yield gateway_to(launcher, upstream), upstream
    finally:
        upstream.close()


def test_a_goaway_that_comes_while_the_body_is_sent_refuses_it_too(refusing):
    """The GOAWAY names the stream unprocessed after the first 20,000 bytes of the body, while
    the gateway still sends it: the body goes again, whole."""
    gw, upstream = refusing
    body = b"L" * 60_000
    for attempt in range(3):
        answer = answer_to(gw.port, b"POST /goaway-late/%d HTTP/1.1\r\nHost: gw\r\n"
                           b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                           % (attempt, len(body), body))
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert upstream.processed == [body] * 3


def test_a_refused_stream_whose_body_was_over_the_replay_limit_is_a_502(refusing):
    """What a sender passed on is kept up to 64 KiB (REPLAY_LIMIT) to send again; past it a
    refused stream cannot be, and is a 502 that says so."""
    gw, upstream = refusing
    body = b"O" * 300_000
    answer = answer_to(gw.port, b"POST /refuse-big HTTP/1.1\r\nHost: gw\r\n"
                       b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
    assert answer.startswith(b"HTTP/1.1 502"), answer[:300]
    wait_until(lambda: "refused the stream" in gw.log())
    assert upstream.processed == []


@pytest.mark.parametrize("path", [b"/refuse", b"/goaway-before"])
@pytest.mark.parametrize("body", [b"", b"b" * 10, b"B" * 60_000], ids=["get", "post", "large"])
def test_a_stream_the_upstream_did_not_process_is_sent_again(refusing, path, body):
    """RFC 9113 8.7: a REFUSED_STREAM reset, or a stream above a GOAWAY's last_stream_id, was
    not processed, so any request (a POST too) may go to a new connection; it was a 502. The
    body is sent whole, once (the upstream answers each body it processed)."""
    gw, upstream = refusing
    method = b"POST" if body else b"GET"
    answer = answer_to(gw.port, b"%s %s HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n"
                       b"Connection: close\r\n\r\n%s" % (method, path, len(body), body))
    assert answer.startswith(b"HTTP/1.1 200"), (answer[:300], gw.log()[-3000:])
    head, _, content = answer.partition(b"\r\n\r\n")
    if b"\r\ntransfer-encoding: chunked" in head.lower():
        content = dechunked(content)
    assert content == body, (head, len(content))
    assert upstream.processed == [body]
    assert upstream.connections == (2 if path == b"/goaway-before" else 1)
    assert "unhandled error" not in gw.log()


def raw_frame(kind, stream_id, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, 0]) + \
        struct.pack(">I", stream_id) + payload


class FloodingH2Upstream(DeafH2Upstream):
    """Takes a request and never answers it: floods ``kind`` frames (WINDOW_UPDATE, PING,
    GOAWAY, ALTSVC, a large SETTINGS or an unknown type) for at most ``seconds``."""

    def __init__(self, kind, seconds=6.0):
        self.kind = kind
        super().__init__(seconds)

    def frames(self):
        if self.kind == "window-update":
            one = WindowUpdateFrame(0, window_increment=1).serialize()
        elif self.kind == "ping":
            one = PingFrame(0, b"12345678").serialize()
        elif self.kind == "goaway":     # again and again, naming the stream it keeps
            one = GoAwayFrame(0, last_stream_id=1, error_code=0).serialize()
        elif self.kind == "goaway-debug":
            one = GoAwayFrame(0, last_stream_id=1, error_code=0,
                              additional_data=b"d" * 16000).serialize()
        elif self.kind == "altsvc":
            one = raw_frame(0x0A, 0, b"\x00\x01a" + b'h2=":1"')
        elif self.kind == "settings-big":   # 2,730 entries of an unknown setting: 16 KiB
            one = raw_frame(0x04, 0, b"".join(struct.pack(">HI", 0x77, i)
                                              for i in range(2730)))
        else:
            one = raw_frame(0x20, 0, b"")     # an unknown type, empty
        return one * max(1, 65536 // len(one))


@pytest.mark.parametrize("kind", ["window-update", "ping", "unknown", "goaway", "goaway-debug",
                                  "altsvc", "settings-big"])
def test_an_upstream_flooding_empty_frames_is_cut_off(launcher, kind):
    """An HTTP/2 upstream that sends frames with nothing to relay as fast as it can took the
    worker's CPU for as long as it liked: requests the gateway answers itself waited
    seconds. Past the budget the connection ends, and the request on it is a 502."""
    upstream = FloodingH2Upstream(kind)
    try:
        gw = gateway_to(launcher, upstream, read=20.0, paths=["/flood"])
        flooded = []
        started = time.monotonic()
        thread = threading.Thread(target=lambda: flooded.append(answer_to(
            gw.port, b"GET /flood HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")))
        thread.start()
        time.sleep(0.3)
        probe = time.monotonic()        # no route: the worker answers a 404 itself
        answer = answer_to(gw.port, b"GET /other HTTP/1.1\r\nHost: gw\r\n"
                           b"Connection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 404"), answer[:300]
        assert time.monotonic() - probe < 1.0
        thread.join(15)
        assert flooded and flooded[0].startswith(b"HTTP/1.1 502 "), flooded
        assert time.monotonic() - started < 3.0
        # The upstream's thread sees the cut on its next send: under load that can be after
        # the client has its 502 (its flood would go on for 6 s had it not been cut).
        wait_until(lambda: upstream.cut_after is not None, timeout=5.0)
        assert upstream.cut_after < 3.0, upstream.cut_after
        assert "flood" in gw.log()
    finally:
        upstream.close()


class OneByteDataUpstream(H2cUpstream):
    """An h2 upstream: 200, then the body in 1-byte DATA frames within the stream window the
    gateway gives (1 MiB), for at most 6 s."""

    def connection(self, sock):
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        with sock:
            try:
                sock.sendall(conn.data_to_send())
                sid = first_request(conn, sock)
                conn.send_headers(sid, [(":status", "200")])
                sock.sendall(conn.data_to_send())
                batch = DataFrame(sid, b"d").serialize() * 6000
                sock.settimeout(1.0)
                end = time.monotonic() + 6
                for _ in range((1 << 20) // 6000):
                    if time.monotonic() > end:
                        break
                    sock.sendall(batch)
                time.sleep(max(0.0, end - time.monotonic()))
            except OSError:
                pass


def test_an_upstream_answer_in_one_byte_data_frames_is_paced(launcher, upstream):
    """DATA within the windows was never counted, and a 1-byte frame costs ~20 us: an
    upstream that answered a byte per frame took the worker for 5 s and another client
    timed out. Past 10,000 DATA frames under 1 KiB in a second, the connection is now not
    read until the second is over: ~3.1 s of the worker's CPU in 5 s with the relay and the
    other client's requests (it was all of it, and the other client waited 5 s)."""
    dribbling = OneByteDataUpstream()
    try:
        gw = launcher.gateway(gateway_conf([
            {"id": "h2", "paths": ["/dribble"], "upstream": {
                "targets": [{"url": f"http://127.0.0.1:{dribbling.port}"}], "protocol": "h2"}},
            route("r", ["/*rest"], upstream.url)]))
        sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        sock.sendall(b"GET /dribble HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")

        def read_all():
            try:
                while sock.recv(1 << 20):
                    pass
            except OSError:
                pass
        reader = threading.Thread(target=read_all, daemon=True)
        reader.start()
        with Bystander(gw.port):
            used = worker_cpu(gw)
            time.sleep(5)
            used = worker_cpu(gw) - used
        sock.shutdown(socket.SHUT_RDWR)
        reader.join(5)
        sock.close()
        assert used < 3.75, f"{used:.1f}s of CPU in 5 s"
        assert "paced" in gw.log()
    finally:
        dribbling.close()


def test_a_server_stream_of_small_messages_is_relayed_whole(streaming):
    """40,000 messages of 100 bytes, one DATA frame each (a gRPC server streaming rows): cut
    as a flood, with every other stream on the connection, when small DATA counted as empty
    frames. Paced, they all arrive."""
    gw, upstream = streaming
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=20)
    conn.request("GET", "/stream?n=4000000&f=100")
    resp = conn.getresponse()
    assert resp.status == 200
    assert len(resp.read()) == 4_000_000
    conn.close()
    assert "nothing to relay" not in gw.log() and upstream.connections == 1


class SlowHeadUpstream(H2cUpstream):
    """An h2 upstream that answers every request with one header field of 30-bit Huffman
    codes (a newline's): a 1 MiB block (HEADERS and 63 CONTINUATIONs, within h2's backlog)."""

    def connection(self, sock):
        from hpack.huffman import HuffmanEncoder
        from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
        from hyperframe.frame import ContinuationFrame, HeadersFrame
        from gwserver.core.h2fields import integer
        value = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH).encode(b"\n" * 8) * 34000
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        with sock:
            try:
                sock.sendall(conn.data_to_send())
                while data := sock.recv(65536):
                    for event in conn.receive_data(data):
                        if not isinstance(event, h2.events.RequestReceived):
                            continue
                        block = conn.encoder.encode([(b":status", b"200")]) + \
                            b"\x00\x03x-h" + integer(len(value), 7, 0x80) + value
                        pieces = [block[at:at + 16384] for at in range(0, len(block), 16384)]
                        frames = [HeadersFrame(event.stream_id, pieces[0],
                                               flags=["END_STREAM"])] + \
                            [ContinuationFrame(event.stream_id, piece) for piece in pieces[1:]]
                        frames[-1].flags.add("END_HEADERS")
                        sock.sendall(b"".join(frame.serialize() for frame in frames))
                    sock.sendall(conn.data_to_send())
            except (h2.exceptions.ProtocolError, OSError):
                pass


def test_an_upstream_head_too_large_to_decode_cheaply_is_refused_before_it_is(launcher):
    """A 1 MiB header block of the slowest Huffman codes took ~0.5 s of the worker's CPU to
    decode before hpack's 64 KiB list limit refused it. A block over 64 KiB as sent is now a
    connection error at once: each request is a 502 in milliseconds. (Since the upstream's
    frames are read as the client edge's, core.h2frames.BoundedBlocks, it is refused as its
    frames arrive, before its END_HEADERS, not once it was whole.)"""
    upstream = SlowHeadUpstream()
    try:
        gw = gateway_to(launcher, upstream)
        used = worker_cpu(gw)
        for attempt in range(5):
            answer = answer_to(gw.port, b"GET /%d HTTP/1.1\r\nHost: gw\r\n"
                               b"Connection: close\r\n\r\n" % attempt)
            assert answer.startswith(b"HTTP/1.1 502"), answer[:200]
        used = worker_cpu(gw) - used
        assert used < 1.0, f"five answers took {used:.2f}s of the worker's CPU"
        assert "header block over 65536 bytes before its END_HEADERS" in gw.log()
    finally:
        upstream.close()


def test_an_upload_earns_the_upstream_its_window_updates(launcher):
    """Each DATA frame sent lets the upstream send two WINDOW_UPDATEs (its stream's and the
    connection's): a large upload through small windows is no flood."""
    upstream = SlowSinkH2Upstream(rate=1 << 30)
    try:
        gw = gateway_to(launcher, upstream, read=20.0)
        size = 64 << 20
        answer = answer_to(gw.port, b"POST /sink HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n"
                           b"Connection: close\r\n\r\n" % size + b"u" * size)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        assert "flood" not in gw.log()
    finally:
        upstream.close()


def test_an_upload_longer_than_the_read_timeout_is_not_cut_while_it_moves(launcher):
    """The read timeout is for the answer, as on HTTP/1.1 upstreams: it runs from the last
    piece of the body sent, not from the request's start. An upload that took longer than
    it (a client-streaming gRPC call, a large POST) was a 504 while the upstream still read."""
    upstream = SlowSinkH2Upstream(rate=4 << 20)
    try:
        gw = gateway_to(launcher, upstream, read=1.0)
        size = 10 << 20                 # ~2.5 s at the upstream's 4 MiB/s
        started = time.monotonic()
        answer = answer_to(gw.port, b"POST /sink HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n"
                           b"Connection: close\r\n\r\n" % size + b"u" * size)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        assert time.monotonic() - started > 1.5      # longer than the read timeout indeed
        # and a stalled answer is still a 504 within the read timeout after the body
        started = time.monotonic()
        answer = answer_to(gw.port, b"POST /noack HTTP/1.1\r\nHost: gw\r\nContent-Length: 10"
                           b"\r\nConnection: close\r\n\r\n0123456789")
        assert answer.startswith(b"HTTP/1.1 504"), answer[:300]
        assert time.monotonic() - started < 3.0
    finally:
        upstream.close()


@pytest.fixture
def streaming(launcher):
    upstream = StreamingH2Upstream()
    try:
        yield launcher.gateway(gateway_conf([
            {"id": "h2", "paths": ["/*rest"], "timeouts": {"read": 5.0}, "upstream": {
                "targets": [{"url": f"http://127.0.0.1:{upstream.port}"}],
                "protocol": "h2"}}])), upstream
    finally:
        upstream.close()


def hang_up(sock):
    """Close with unread data: the kernel answers the gateway's next write with a reset."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_clients_hanging_up_on_streams_of_small_frames_are_no_upstream_flood(streaming):
    """A client that hangs up on a stream of small DATA frames leaves up to a window of them
    in flight to a stream the gateway reset: counted as frames with nothing to relay, thirty
    such clients made the gateway end a healthy upstream connection, and every other request
    on it was a 502 (the seventh attack pass). DATA within the windows is not counted."""
    gw, upstream = streaming
    get = b"GET /x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
    assert answer_to(gw.port, get).startswith(b"HTTP/1.1 200")
    victims = []

    def victim():
        victims.append(answer_to(gw.port, b"GET /slow HTTP/1.1\r\nHost: gw\r\n"
                                 b"Connection: close\r\n\r\n"))
    threads = [threading.Thread(target=victim) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    for _ in range(30):
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
            sock.sendall(b"GET /stream?f=256 HTTP/1.1\r\nHost: gw\r\n\r\n")
            got = b""
            while b"\r\n\r\n" not in got:
                got += sock.recv(4096)
            hang_up(sock)
    for thread in threads:
        thread.join(15)
    assert [v[:12] for v in victims] == [b"HTTP/1.1 200"] * 3, victims
    assert "nothing to relay" not in gw.log()
    assert upstream.connections == 1


def test_answers_left_unread_give_the_connection_window_back(streaming):
    """DATA queued for an exchange that ended before reading it (the client went away) was
    never acknowledged: each such download kept up to its stream's window (1 MiB) of the
    connection's, and after ~16 of them every answer from that upstream was a 504."""
    gw, upstream = streaming
    clients = []
    for _ in range(24):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", gw.port))
        sock.sendall(b"GET /stream?f=16384&n=8000000 HTTP/1.1\r\nHost: gw\r\n\r\n")
        clients.append(sock)
    time.sleep(1.5)                 # each stream's window filled, its relay stuck
    for sock in clients:
        hang_up(sock)
    time.sleep(0.5)
    for _ in range(3):
        answer = answer_to(gw.port, b"GET /stream?f=16384&n=3000000 HTTP/1.1\r\nHost: gw\r\n"
                           b"Connection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        head, _, content = answer.partition(b"\r\n\r\n")
        assert len(dechunked(content)) == 3000000
    assert upstream.connections == 1


def uploading(port, size, answers):
    """A thread POSTing ``size`` bytes to /up, started; (status, body) goes to ``answers``."""
    def upload():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=40)
        conn.request("POST", "/up", body=b"u" * size)
        response = conn.getresponse()
        answers.append((response.status, response.read()))
        conn.close()
    thread = threading.Thread(target=upload, daemon=True)
    thread.start()
    return thread


class TricklingWindowUpstream(H2cUpstream):
    """Takes uploads without opening its connection window again, until ``trickle`` seconds
    after the first request: meanwhile it opens it one byte a millisecond (``pingpong``: one
    byte each time the last one arrived). Then it opens it wide and answers each upload
    with 200 "got <bytes>"."""

    def __init__(self, trickle, pingpong=False):
        self.trickle, self.bytes_trickled, self.pingpong = trickle, 0, pingpong
        super().__init__()

    def connection(self, sock):
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        sizes, started, wide, next_byte = {}, None, False, 0.0
        sock.settimeout(0.001)
        end = time.monotonic() + 60
        with sock:
            try:
                sock.sendall(conn.data_to_send())
                while time.monotonic() < end:
                    try:
                        data = sock.recv(65536)
                        if not data:
                            return
                    except socket.timeout:
                        data = b""
                    for event in conn.receive_data(data) if data else ():
                        if isinstance(event, h2.events.RequestReceived):
                            started = started or time.monotonic()
                        elif isinstance(event, h2.events.DataReceived):
                            sizes[event.stream_id] = sizes.get(event.stream_id, 0) + \
                                len(event.data)
                            if event.stream_ended is None:  # the stream's window only
                                conn.increment_flow_control_window(
                                    event.flow_controlled_length, event.stream_id)
                        if isinstance(event, h2.events.StreamEnded):
                            conn.send_headers(event.stream_id, [(b":status", b"200")])
                            conn.send_data(event.stream_id, b"got %d" % sizes.get(
                                event.stream_id, 0), end_stream=True)
                    if started and not wide:
                        now = time.monotonic()
                        if now - started < self.trickle:
                            # pingpong: the next byte once the last arrived (or at first)
                            if self.pingpong and (data or not self.bytes_trickled) or \
                                    not self.pingpong and now >= next_byte:
                                conn.increment_flow_control_window(1)
                                self.bytes_trickled += 1
                                next_byte = now + 0.001
                        else:
                            wide = True
                            conn.increment_flow_control_window(1 << 30)
                    sock.sendall(conn.data_to_send())
            except (h2.exceptions.ProtocolError, OSError):
                pass


def test_an_upstream_opening_its_window_a_byte_at_a_time_wakes_one_upload_per_byte(launcher):
    """50 uploads wait for the upstream's connection window, which it opens one byte a
    millisecond: each WINDOW_UPDATE woke every waiting upload for one of them to send the
    byte. Only as many as the window can feed wake now, oldest first; once it opens wide,
    every upload arrives whole."""
    upstream = TricklingWindowUpstream(trickle=5.0)
    try:
        gw = gateway_to(launcher, upstream, read=30)
        answers = []
        uploads = [uploading(gw.port, 20_000, answers) for _ in range(50)]
        wait_until(lambda: upstream.bytes_trickled > 0, timeout=10)
        time.sleep(0.5)             # the connection window is spent: every upload waits
        used = worker_cpu(gw)
        time.sleep(4)
        used = worker_cpu(gw) - used
        for thread in uploads:
            thread.join(40)
        assert answers == [(200, b"got 20000")] * 50, answers[:3]
        assert used < 0.8, f"{upstream.bytes_trickled} one-byte updates: {used:.2f}s of CPU in 4 s"
    finally:
        upstream.close()


@pytest.mark.parametrize("per_second", [None, 1000], ids=["default", "1000"])
def test_the_pace_of_small_upstream_frames_is_a_setting(launcher, per_second):
    """upstream_defaults.h2_max_empty_frames_per_second: 4,000 messages of 100 bytes pass
    the default 10,000 a second unpaced; at 1,000 a second they are paced over 2 s or more,
    and still arrive whole."""
    upstream = StreamingH2Upstream()
    try:
        gw = launcher.gateway(gateway_conf([
            {"id": "h2", "paths": ["/*rest"], "upstream": {
                "targets": [{"url": f"http://127.0.0.1:{upstream.port}"}], "protocol": "h2"}}],
            upstream_defaults={"h2_max_empty_frames_per_second": per_second}
            if per_second else {}))
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=20)
        conn.request("GET", "/stream?n=400000&f=100")
        started = time.monotonic()
        resp = conn.getresponse()
        assert resp.status == 200 and len(resp.read()) == 400_000
        took = time.monotonic() - started
        conn.close()
        if per_second:
            assert took >= 2.0 and "paced" in gw.log(), took
        else:
            assert "paced" not in gw.log()
    finally:
        upstream.close()


def test_an_upstream_opening_its_window_a_byte_per_byte_received_is_paced(launcher):
    """The upstream opens its connection window by one byte each time it gets one: the
    gateway sent a 1-byte DATA frame per WINDOW_UPDATE, as fast as the two could go (26,800
    in 3 s, 1.9 s of the worker's CPU), and each frame sent raised the flood budget.
    A frame a tiny update made small is a silly-window send (core.h2limits): past 100 a
    second the upload waits for the second to end (~400 in 3 s, 0.04 s of CPU). It still
    arrives whole once the window opens."""
    upstream = TricklingWindowUpstream(trickle=4.0, pingpong=True)
    try:
        gw = gateway_to(launcher, upstream, read=30)
        answers = []
        thread = uploading(gw.port, 200_000, answers)
        wait_until(lambda: upstream.bytes_trickled > 0, timeout=10)
        used = worker_cpu(gw)
        time.sleep(3)
        used = worker_cpu(gw) - used
        thread.join(40)
        assert answers == [(200, b"got 200000")], answers
        assert used < 0.5, f"{upstream.bytes_trickled} one-byte updates: {used:.2f}s of CPU in 3 s"
        assert upstream.bytes_trickled < 1000
    finally:
        upstream.close()
