"""The known HTTP/2 attacks against a real gateway with one worker, each from a hand-driven h2
client (real clients cannot misbehave): each ends the offending stream or connection with the
right error code, and another client of the same worker is served meanwhile (its worst latency
during the attack is measured)."""
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import pytest
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hyperframe.frame import (ContinuationFrame, DataFrame, GoAwayFrame, HeadersFrame, PingFrame,
                              SettingsFrame, WindowUpdateFrame)

from gwserver.core.h2fields import integer

from ..conftest import free_port, gateway_conf, route, wait_until
from ..h2_upstreams import H2cUpstream
from ..h2client import RawH2
from ..pki import CA, tls_section
from ..tricklers import H2Trickler, Trickler

E = h2.errors.ErrorCodes


@pytest.fixture
def gw(launcher, upstream):
    return launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)], http2={
        "h2c": True, "max_concurrent_streams": 5, "send_timeout": 1.0,
        "max_resets_per_second": 50, "max_control_frames_per_second": 200},
        server={"keepalive": 1.0, "header_timeout": 1.0}))


class Bystander:
    """Another client's HTTP/1.1 requests, in a thread, while an attack runs: worst latency."""

    def __init__(self, port):
        self.port, self.worst, self.failures, self.count = port, 0.0, 0, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/echo")
                assert conn.getresponse().status == 200
                conn.close()
            except Exception:
                self.failures += 1
            self.worst = max(self.worst, time.monotonic() - started)
            self.count += 1
            time.sleep(0.02)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        time.sleep(0.1)
        self.stop.set()
        self.thread.join(10)
        assert self.failures == 0 and self.count > 0
        assert self.worst < 1.0, f"another client waited {self.worst:.3f}s during the attack"


def test_rapid_reset(gw):
    with Bystander(gw.port):
        client = RawH2(gw.port)
        for _ in range(300):
            sid = client.request("/slow/2")
            client.conn.reset_stream(sid)
        client.flush()
        client.pump(lambda c: c.goaway() is not None, timeout=5)
        assert client.goaway().error_code == E.ENHANCE_YOUR_CALM


def test_continuation_flood(gw):
    with Bystander(gw.port):
        client = RawH2(gw.port)
        block = client.conn.encoder.encode([(b":method", b"GET"), (b":scheme", b"http"),
                                            (b":path", b"/echo"), (b":authority", b"a")])
        headers = HeadersFrame(1, block)        # no END_HEADERS: CONTINUATIONs follow
        client.send_raw(headers.serialize())
        for _ in range(200):
            client.send_raw(ContinuationFrame(1, b"x" * 1000).serialize())
            if client.closed:
                break
        client.pump(lambda c: c.goaway() is not None or c.closed, timeout=5)
        assert client.goaway() is not None or client.closed
        if client.goaway() is not None:
            assert client.goaway().error_code in (E.PROTOCOL_ERROR, E.ENHANCE_YOUR_CALM)


def test_hpack_bomb(gw):
    """A header list that expands past 64 KiB from a few bytes (each repeat is one index)."""
    with Bystander(gw.port):
        client = RawH2(gw.port)
        big = (b"x-bomb", b"b" * 4000)
        client.request("/echo", headers=[big] * 40)         # 160 KB decoded
        client.pump(lambda c: c.goaway() is not None or c.closed, timeout=5)
        assert client.goaway() is not None and \
            client.goaway().error_code in (E.ENHANCE_YOUR_CALM, E.PROTOCOL_ERROR)


def big_settings(i):
    """A SETTINGS frame of 2,730 entries of an unknown setting: 16 KiB, each entry parsed."""
    return b"\x00\x3f\xfc\x04\x00\x00\x00\x00\x00" + \
        b"".join(b"\x00\x77" + (i * 2730 + n).to_bytes(4, "big") for n in range(2730))


def ack(frame):
    frame.flags.add("ACK")
    return frame


@pytest.mark.parametrize("frame, count", [
    (lambda i: PingFrame(0, i.to_bytes(8, "big")).serialize(), 2000),
    (lambda i: SettingsFrame(0, {4: 65535 + i}).serialize(), 2000),
    # ACKs nobody asked for raise an event h2 does not answer: they were not counted at all
    (lambda i: ack(PingFrame(0, i.to_bytes(8, "big"))).serialize(), 2000),
    (lambda i: ack(SettingsFrame(0)).serialize(), 2000),
    # 60 frames cost the worker 100 ms of parse: they were 60 of the 200 a second allowed
    (big_settings, 60)], ids=["ping", "settings", "ping-ack", "settings-ack", "settings-big"])
def test_control_frame_floods(gw, frame, count):
    with Bystander(gw.port):
        client = RawH2(gw.port)
        client.send_raw(b"".join(frame(i) for i in range(count)))
        client.pump(lambda c: c.goaway() is not None or c.closed, timeout=5)
        assert client.goaway() is not None
        assert client.goaway().error_code == E.ENHANCE_YOUR_CALM


UNKNOWN_FRAME = b"\x00\x00\x00\xfa\x00\x00\x00\x00\x00"   # empty, type 0xfa, stream 0


def empty_frames(client, kind):
    """One frame of ``kind`` that carries nothing to serve."""
    if kind in ("empty_data", "padding_only"):
        sid = client.request("/echo", method="POST", end=False)
        frame = DataFrame(sid, b"")
        if kind == "padding_only":
            frame.flags.add("PADDED")
            frame.pad_length = 0
        return frame.serialize()
    if kind.startswith("closed_stream_"):
        sid = client.request("/echo")
        assert client.response(sid)[0] == 200      # the stream is over
        if kind == "closed_stream_data":
            return DataFrame(sid, b"").serialize()
        return WindowUpdateFrame(sid, 1).serialize()
    if kind == "unknown_16k":
        return b"\x00\x3e\x80\xfa\x00\x00\x00\x00\x00" + b"u" * 16000
    return WindowUpdateFrame(0, 1).serialize() if kind == "window_update" else UNKNOWN_FRAME


@pytest.mark.parametrize("kind", ["window_update", "unknown", "empty_data", "padding_only",
                                  "closed_stream_window_update", "closed_stream_data",
                                  "unknown_16k"])
def test_empty_frame_floods(launcher, upstream, kind):
    """Frames that carry nothing to serve cost the worker CPU and never make its reader wait,
    and h2 raises no event for one on a closed stream: past max_empty_frames_per_second
    (10,000 by default; 1,000 here, so that a loaded CI host that reads fewer than 10,000 a
    second still sees a flood), GOAWAY; meanwhile another client is served. An unknown frame
    weighs one more per KiB: 300 of 16 KB cost the parse of 5,000 small ones."""
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)], http2={
        "h2c": True, "max_empty_frames_per_second": 1000}))
    with Bystander(gw.port):
        client = RawH2(gw.port)
        client.send_raw(empty_frames(client, kind) * (300 if kind == "unknown_16k" else 30000))
        client.pump(lambda c: c.goaway() is not None or c.closed, timeout=5)
        assert client.goaway() is not None
        assert client.goaway().error_code == E.ENHANCE_YOUR_CALM
    assert gw.log().count("empty frame flood") == 1     # one line, not one per frame


def test_a_download_whose_client_opens_windows_per_frame_is_no_flood(launcher, upstream):
    """A client with the default 64 KiB windows sends a WINDOW_UPDATE for the stream and one
    for the connection per DATA frame it reads (node, nghttp2): many a second on a fast
    link. Each DATA frame sent earns those two, so a download is never taken for a flood
    (here past a limit of 100 a second: 640 frames of 16 KiB, 1,280 updates)."""
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)], http2={
        "h2c": True, "max_empty_frames_per_second": 100}))
    client = RawH2(gw.port)
    size = 10 << 20
    sid = client.request(f"/bytes/{size}")
    received = 0
    deadline = time.monotonic() + 30
    while not client.ended(sid) and not client.closed and time.monotonic() < deadline:
        client.sock.settimeout(1.0)
        data = client.sock.recv(65536)
        if not data:
            break
        for event in client.conn.receive_data(data):
            client.events.append(event)
            if isinstance(event, h2.events.DataReceived):
                received += len(event.data)
                client.events.pop()     # the body is counted, not kept
                client.conn.increment_flow_control_window(event.flow_controlled_length)
                if not client.ended(sid) and event.stream_ended is None:
                    try:        # (the end may be in this same read, already processed)
                        client.conn.increment_flow_control_window(
                            event.flow_controlled_length, sid)
                    except h2.exceptions.StreamClosedError:
                        pass
        client.flush()
    assert client.goaway() is None and received == size


def test_zero_window_that_never_opens(gw):
    """The client never opens its window: only its stream is reset (CANCEL), after
    http2.send_timeout; another stream on the same connection is served."""
    with Bystander(gw.port):
        client = RawH2(gw.port, settings={
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        stuck = client.request("/bytes/100000")
        served = client.request("/bytes/100000")
        client.conn.increment_flow_control_window(1 << 20, stream_id=served)
        client.conn.increment_flow_control_window(1 << 20)
        client.flush()
        status, _, body, _ = client.response(served)
        assert status == 200 and len(body) == 100000
        client.pump(lambda c: c.reset_code(stuck) is not None, timeout=5)
        assert client.reset_code(stuck) == E.CANCEL


def test_max_concurrent_streams(gw):
    """Announced; streams a client opens past it before reading it are refused (RFC 9113
    5.1.2: REFUSED_STREAM, a stream error), the others served. (It was a connection error,
    every stream lost: test_h2_past_limit_dec05n.py.)"""
    from .test_h2client_attack_dec05c import GOAWAY, RST_STREAM, read_frames
    client = RawH2(gw.port)
    client.pump(lambda c: c.conn.remote_settings.max_concurrent_streams == 5, timeout=5)
    assert client.conn.remote_settings.max_concurrent_streams == 5
    raw = RawH2(gw.port)
    for i in range(8):          # h2 would refuse to: the frames are built by hand
        block = raw.conn.encoder.encode([(b":method", b"GET"), (b":scheme", b"http"),
                                         (b":path", b"/slow/1"), (b":authority", b"a")])
        raw.send_raw(HeadersFrame(1 + 2 * i, block, flags=["END_HEADERS", "END_STREAM"])
                     .serialize())
    answered = lambda fs: {f[2] for f in fs if f[0] == 0x0 and f[1] & 1}     # noqa: E731
    frames, _ = read_frames(raw.sock, b"", lambda fs: any(f[0] == GOAWAY for f in fs) or
                            len(answered(fs)) >= 5, timeout=8)
    assert not [f for f in frames if f[0] == GOAWAY]
    refused = {f[2]: int.from_bytes(f[3], "big") for f in frames if f[0] == RST_STREAM}
    assert refused == {sid: E.REFUSED_STREAM for sid in (11, 13, 15)}, refused
    assert answered(frames) == {1, 3, 5, 7, 9}


def test_idle_and_header_timeouts(gw):
    client = RawH2(gw.port)
    sid = client.request("/echo")
    assert client.response(sid)[0] == 200
    started = time.monotonic()
    client.pump(lambda c: c.goaway() is not None, timeout=5)   # keepalive = 1 s
    assert client.goaway().error_code == E.NO_ERROR and 0.8 < time.monotonic() - started < 3
    # A client that does not close on the GOAWAY is closed after the linger (2 s) in which
    # a request it sent meanwhile is refused rather than reset with the connection.
    client.pump(lambda c: c.closed, timeout=6)
    assert client.closed and time.monotonic() - started < 5.5
    silent = RawH2(gw.port)                                # a preface, then nothing
    started = time.monotonic()
    silent.pump(lambda c: c.closed, timeout=6)             # header_timeout = 1 s (+ linger)
    assert silent.closed and silent.goaway() is not None and time.monotonic() - started < 5


def test_a_stream_reset_in_the_read_that_opened_it_is_forgotten(gw):
    """HEADERS and RST_STREAM in one segment (rapid reset's shape): the stream never runs,
    and it does not go on counting toward max_concurrent_streams (5 here) after."""
    client = RawH2(gw.port)
    client.pump(lambda c: c.conn.remote_settings.max_concurrent_streams == 5, timeout=5)
    for _ in range(8):
        sid = client.conn.get_next_available_stream_id()
        client.conn.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"http"),
                                       (b":path", b"/slow/0.5"), (b":authority", b"a")],
                                 end_stream=True)
        client.conn.reset_stream(sid)
        client.flush()                  # one sendall: HEADERS then RST_STREAM
        time.sleep(0.02)
    served = [client.request("/echo") for _ in range(3)]
    assert [client.response(sid, timeout=10)[0] for sid in served] == [200] * 3
    assert "failed with ClientGone" not in gw.log()


def test_a_stream_reset_while_the_gateway_connects_upstream_gives_its_slot_back(
        launcher, tmp_path):
    """The reset lands in the upstream connect (a slow TLS handshake here): the pool slot the
    request took must go back, or a block_when_full pool of 2 is empty after two resets."""
    cert, key, _ = CA(tmp_path).issue("upstream")
    upstream = SlowTlsUpstream(cert, key, delay=0.4)
    try:
        gw = launcher.gateway(gateway_conf([{
            "id": "tls", "paths": ["/*rest"], "upstream": {
                "targets": [{"url": f"https://127.0.0.1:{upstream.port}"}],
                "tls": {"verify": False}, "pool_size": 2, "block_when_full": True}}],
            http2={"h2c": True}, upstream_defaults={"pool_timeout": 1.0}))
        for _ in range(3):
            client = RawH2(gw.port)
            sid = client.request("/reset-me")
            time.sleep(0.15)            # the gateway is in the handshake now
            client.conn.reset_stream(sid)
            client.flush()
            time.sleep(0.6)
            client.close()
        for _ in range(3):
            conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
            conn.request("GET", "/after")
            assert conn.getresponse().status == 200
            conn.close()
    finally:
        upstream.close()


class SlowTlsUpstream(H2cUpstream):
    """HTTPS on loopback (the shared listener of the h2c test upstreams, a thread per
    connection) that waits ``delay`` before each handshake, then answers one request with
    200 and closes."""

    def __init__(self, cert, key, delay):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.delay = delay
        super().__init__()

    def connection(self, sock):
        time.sleep(self.delay)
        try:
            with self.context.wrap_socket(sock, server_side=True) as tls:
                head = b""
                while b"\r\n\r\n" not in head and (piece := tls.recv(65536)):
                    head += piece
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                            b"Connection: close\r\n\r\nok")
        except (OSError, ssl.SSLError):
            pass


def test_a_stream_reset_during_a_retry_backoff_gives_its_slot_back(launcher, upstream):
    """A 503 the route retries after a backoff: a client reset in that wait must not keep
    the connection the 503 came on (a block_when_full pool of 2 would be empty after two)."""
    gw = launcher.gateway(gateway_conf([{
        "id": "r", "paths": ["/*rest"],
        "retry": {"on": ["503"], "attempts": 1, "backoff": 1.0},
        "upstream": {"targets": [{"url": upstream.url}], "pool_size": 2,
                     "block_when_full": True}}],
        http2={"h2c": True}, upstream_defaults={"pool_timeout": 1.0}))
    for _ in range(3):
        client = RawH2(gw.port)
        sid = client.request("/status/503")
        time.sleep(0.25)                # the first try's 503 is in; the backoff waits
        client.conn.reset_stream(sid)
        client.flush()
        time.sleep(0.3)
        client.close()
    time.sleep(1.5)
    for _ in range(3):
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
        conn.request("GET", "/after")
        assert conn.getresponse().status == 200
        conn.close()


def test_a_body_that_arrives_while_a_plugin_waits_is_held_to_max_body_size(launcher,
                                                                           upstream):
    """HEADERS first, then DATA while the stream's handler waits in a plugin (a fault delay
    here; a Redis round trip does the same): the body was complete by the time the handler
    came back, so nothing measured it, and 60,000 bytes went upstream past a 1,000 limit."""
    gw = launcher.gateway(gateway_conf(
        [route("r", ["/upload"], upstream.url, max_body_size=1000,
               plugins={"fault": {"delay": {"seconds": 0.5}}})], http2={"h2c": True}))
    before = upstream.stats()["requests"]
    client = RawH2(gw.port)
    client.pump(lambda c: any(isinstance(e, h2.events.RemoteSettingsChanged)
                              for e in c.events), 2)
    stream = client.request("/upload", method="POST", end=False,
                            headers=[("content-type", "application/octet-stream")])
    time.sleep(0.15)                                    # the handler waits in the delay
    body = b"x" * 60_000
    for at in range(0, len(body), 16384):
        client.conn.send_data(stream, body[at:at + 16384], end_stream=at + 16384 >= len(body))
    client.flush()
    answer = client.response(stream, 10)
    client.sock.close()
    assert answer is not None and answer[0] == 413
    assert upstream.stats()["requests"] == before


# -- CPU a client takes while it stays under the budgets (an attack pass, 2026-12-02) -----------

def worker_cpu(gw):
    """Seconds of CPU the gateway's (only) worker has used."""
    with open(f"/proc/{gw.worker_pids()[0]}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def discard(client):
    """Drop what the gateway sent, unparsed; False once it closed the connection."""
    client.sock.setblocking(False)
    try:
        while client.sock.recv(1 << 20):
            pass
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        client.sock.settimeout(5)


def h2c_gateway(launcher, upstream):
    return launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)],
                                         http2={"h2c": True}))


HUFFMAN_LF = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH).encode(b"\n" * 8)  # 30 bits each


@pytest.mark.parametrize("codes", [7500, 2000], ids=["225KB-block", "60KB-blocks"])
def test_heads_of_slow_huffman_codes_are_bounded(launcher, upstream, codes):
    """One field of 30-bit Huffman codes (a newline's): hpack decodes them at ~1.5 us a
    character. 225 KB blocks decode to 60,000 octets, under the 64 KiB list limit, so each
    was a 400 on its stream after ~90 ms of decoding, and nothing counted heads: the worker
    spent 99% of a core and another client waited 4 s. A block over MAX_HEAD_BYTES is now a
    connection error before it is decoded, and a connection's header blocks are paced to
    512 KiB a second (60 KB blocks: 8 of them). The bound below counts the other client's
    requests too (~15% of the worker here)."""
    gw = h2c_gateway(launcher, upstream)
    client = RawH2(gw.port)
    value = HUFFMAN_LF * codes
    with Bystander(gw.port):
        used, end = worker_cpu(gw), time.monotonic() + 5
        for sid in range(1, 401, 2):
            if time.monotonic() > end:
                break
            block = client.conn.encoder.encode([(b":method", b"GET"), (b":scheme", b"http"),
                                                (b":path", b"/echo"), (b":authority", b"a")]) \
                + b"\x00\x03x-h" + integer(len(value), 7, 0x80) + value
            pieces = [block[at:at + 16384] for at in range(0, len(block), 16384)]
            frames = [HeadersFrame(sid, pieces[0], flags=["END_STREAM"])] + \
                [ContinuationFrame(sid, piece) for piece in pieces[1:]]
            frames[-1].flags.add("END_HEADERS")
            client.send_raw(b"".join(f.serialize() for f in frames))
            if client.closed or not discard(client):
                break
        used = worker_cpu(gw) - used
    if codes == 7500:
        assert client.closed or not discard(client), f"still open after {used:.1f}s of CPU"
    else:
        assert "paced" in gw.log()
    assert used < (1.5 if codes == 7500 else 3.0), f"the worker spent {used:.1f}s of CPU in 5 s"


def test_a_body_in_one_byte_data_frames_is_paced(launcher, upstream):
    """DATA within the windows was never counted, and a 1-byte frame costs ~19 us to parse:
    one stream window (256 KiB) of them took the worker for 5 s and another client timed
    out. Past max_empty_frames_per_second DATA frames under 1 KiB in a second, the
    connection is now not read until the second is over: ~2.3 s of the worker's CPU in 5 s
    with the other client's requests (it was all of it, 4.9 s)."""
    gw = h2c_gateway(launcher, upstream)
    client = RawH2(gw.port)
    sid = client.request("/upload", method="POST", end=False)
    frame = DataFrame(sid, b"x").serialize()
    with Bystander(gw.port):
        used, end = worker_cpu(gw), time.monotonic() + 5
        while time.monotonic() < end and not client.closed:
            n = min(client.conn.local_flow_control_window(sid), 6000)
            if n:       # h2's windows kept, the frames built by hand (h2 is slow at 1 byte)
                client.conn._get_stream_by_id(sid).outbound_flow_control_window -= n
                client.conn.outbound_flow_control_window -= n
                client.send_raw(frame * n)
            client.pump(lambda c: c.goaway() is not None or
                        c.conn.local_flow_control_window(sid) > 0, timeout=0.5)
        used = worker_cpu(gw) - used
    assert used < 3.0, f"{used:.1f}s of CPU in 5 s"
    assert "paced" in gw.log()


def test_settings_that_move_the_initial_window_are_weighed_by_the_streams(launcher, upstream):
    """100 downloads wait with INITIAL_WINDOW_SIZE 0; SETTINGS toggling it 0/1, 350 a second
    (under the 500 allowed): h2 walks every stream and the gateway woke them all on each,
    ~2 ms a frame, 75% of a core. Streams now wake only when the window grew, and a SETTINGS
    frame weighs one more per 16 open streams."""
    gw = h2c_gateway(launcher, upstream)
    client = RawH2(gw.port, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    for _ in range(100):
        client.request("/bytes/10000000")
    time.sleep(1.0)             # every stream waits for its window now
    discard(client)
    toggles = [SettingsFrame(0, {4: 1}).serialize(), SettingsFrame(0, {4: 0}).serialize()]
    used, end, sent = worker_cpu(gw), time.monotonic() + 5, 0
    while time.monotonic() < end and not client.closed:
        client.send_raw(toggles[sent % 2])
        sent += 1
        time.sleep(1 / 350)
        if sent % 50 == 0 and not discard(client):
            break
    used = worker_cpu(gw) - used
    assert client.closed or not discard(client), f"{sent} SETTINGS: {used:.1f}s, still open"
    assert used < 1.5, f"{sent} SETTINGS took {used:.1f}s of CPU in 5 s"


def test_a_goaway_flood_from_a_client_is_a_control_frame_flood(launcher, upstream):
    """Each GOAWAY raised an event no budget counted, and while one of its streams was still
    served the reader went on reading them: 544,000 in 5 s, the worker's whole core, another
    client timed out. GOAWAY now counts with PING and SETTINGS."""
    gw = h2c_gateway(launcher, upstream)
    client = RawH2(gw.port)
    client.request("/slow/10")
    flood = GoAwayFrame(0, last_stream_id=0).serialize() * 4000
    with Bystander(gw.port):
        used, end, sent = worker_cpu(gw), time.monotonic() + 5, 0
        while time.monotonic() < end and not client.closed:
            client.send_raw(flood)
            sent += 4000
            if not discard(client):
                break
        used = worker_cpu(gw) - used
    assert client.closed or not discard(client), f"{sent} GOAWAYs: {used:.1f}s, still open"
    assert used < 1.5, f"{sent} GOAWAYs took {used:.1f}s of CPU in 5 s"


def test_a_client_stream_of_12000_small_messages_a_second_is_served(launcher, upstream):
    """100-byte DATA frames, 12,000 a second for 3 s (a gRPC client stream of small
    messages, one frame each, as grpc-go sends them; a tenth of what a worker serves): they
    were cut as a flood when small DATA counted as empty frames. Paced, the whole body
    arrives, a little later."""
    gw = h2c_gateway(launcher, upstream)
    client = RawH2(gw.port)
    sid = client.request("/upload", method="POST", end=False)
    frame = DataFrame(sid, b"m" * 100).serialize()
    rate, sent, start = 12000, 0, time.monotonic()
    while time.monotonic() - start < 3 and client.goaway() is None and not client.closed:
        n = min(int((time.monotonic() - start) * rate) - sent,
                client.conn.local_flow_control_window(sid) // 100)
        if n > 0:       # h2's windows kept, the frames built by hand
            client.conn._get_stream_by_id(sid).outbound_flow_control_window -= n * 100
            client.conn.outbound_flow_control_window -= n * 100
            client.send_raw(frame * n)
            sent += n
        client.pump(lambda c: False, timeout=0.002)
    assert client.goaway() is None, f"GOAWAY {client.goaway().error_code!r} after {sent}"
    client.conn.send_data(sid, b"", end_stream=True)
    client.flush()
    status, _, body, _ = client.response(sid, timeout=10)
    assert status == 200 and b'"size": %d' % (sent * 100) in body, body[:100]


def test_bandwidth_probing_pings_during_a_download_are_no_flood(launcher, upstream):
    """gRPC clients probe the bandwidth with a PING whenever DATA arrives and no PING is
    unanswered (grpc-go's BDP estimator): one per round trip, hundreds to thousands a
    second on a fast download. They were counted as control frames and the connection was
    cut; a PING after DATA or HEADERS the gateway sent is now free (one each time), as
    grpc-go's own server forgives them. Here past a limit of 100 a second."""
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)], http2={
        "h2c": True, "max_control_frames_per_second": 100}))
    client = RawH2(gw.port)
    size = 40 << 20
    sid = client.request(f"/bytes/{size}")
    received = pings = 0
    waiting_ack = False
    started = time.monotonic()
    while not client.ended(sid) and not client.closed and client.goaway() is None \
            and time.monotonic() - started < 30:
        client.sock.settimeout(1.0)
        data = client.sock.recv(65536)
        if not data:
            break
        for event in client.conn.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                received += len(event.data)
                client.conn.acknowledge_received_data(event.flow_controlled_length, sid)
                if not waiting_ack:
                    client.conn.ping(b"bdp-ping")
                    waiting_ack, pings = True, pings + 1
            elif isinstance(event, h2.events.PingAckReceived):
                waiting_ack = False
            else:
                client.events.append(event)
        client.flush()
    elapsed = time.monotonic() - started
    assert client.goaway() is None and received == size, (received, pings)
    # More PINGs than the budget allows in each second the download took (else this proves
    # nothing): a counted PING flood is cut, as test_control_frame_floods checks.
    assert pings > 100 * (int(elapsed) + 2), f"{pings} PINGs in {elapsed:.2f}s"


def test_a_connection_window_opened_a_byte_at_a_time_wakes_one_stream_per_byte(launcher,
                                                                               upstream):
    """100 downloads wait for the connection's window (their own are wide open); the client
    opens it one byte a millisecond. Each WINDOW_UPDATE woke all 100 streams for one of them
    to send the byte: ~0.85 ms a frame, 90% of a core. Only as many streams as the window
    can feed wake now, oldest first, and whatever a woken stream does not take goes to the
    next: once the window opens wide, every download finishes (none is stranded)."""
    gw = h2c_gateway(launcher, upstream)
    client = RawH2(gw.port, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
    size = 100_000
    sids = [client.request(f"/bytes/{size}") for _ in range(100)]
    got = {sid: 0 for sid in sids}

    def read_what_came():
        client.sock.setblocking(False)
        try:
            while True:
                data = client.sock.recv(1 << 20)
                if not data:
                    client.closed = True
                    return
                for event in client.conn.receive_data(data):
                    if isinstance(event, h2.events.DataReceived):
                        got[event.stream_id] += len(event.data)
                    else:
                        client.events.append(event)
        except BlockingIOError:
            pass
        finally:
            client.sock.settimeout(5)

    end = time.monotonic() + 10     # (read, never acknowledged: the window stays shut)
    while sum(got.values()) < 65535 and time.monotonic() < end and not client.closed:
        time.sleep(0.05)
        read_what_came()
    def heads():
        return sum(isinstance(e, h2.events.ResponseReceived) for e in client.events)
    while heads() < 100 and time.monotonic() < end and not client.closed:
        time.sleep(0.05)
        read_what_came()
    time.sleep(0.2)                 # every stream has its head out, and waits
    read_what_came()
    assert sum(got.values()) == 65535 and heads() == 100
    used, end, sent = worker_cpu(gw), time.monotonic() + 5, 0
    while time.monotonic() < end and not client.closed:
        client.conn.increment_flow_control_window(1)
        client.flush()
        sent += 1
        time.sleep(0.001)
        read_what_came()
    used = worker_cpu(gw) - used
    assert client.goaway() is None and not client.closed, gw.log()[-3000:]
    trickled = sum(got.values()) - 65535
    # (what the last second opened may still be held: frames made small by the window are
    # paced, core.h2limits)
    assert trickled >= sent - 1100, f"{sent} bytes of window, {trickled} sent"
    assert used < 1.5, f"{sent} one-byte WINDOW_UPDATEs took {used:.1f}s of CPU in 5 s"
    assert sum(1 for n in got.values() if n) > 50, got     # in turns, not one stream
    client.conn.increment_flow_control_window(1 << 30)
    client.flush()
    end = time.monotonic() + 30
    while not all(client.ended(sid) for sid in sids) and time.monotonic() < end \
            and not client.closed:
        read_what_came()
        client.flush()
        time.sleep(0.01)
    assert all(n == size for n in got.values()), \
        f"{sum(n != size for n in got.values())} streams stranded short of {size} bytes"


def test_a_client_opening_its_window_a_byte_per_byte_received_is_paced(launcher, upstream):
    """The client opens the connection's window by one byte each time one arrives: the
    gateway sent a 1-byte DATA frame per WINDOW_UPDATE as fast as the two could go (20,000
    in 3 s, 53% of a core here), and each frame sent raised the client's flood budget.
    A frame a tiny update made small is a silly-window send (core.h2limits): past 100 a
    second the stream waits for the second to end (~300 in 3 s, 0.04 s of CPU). The
    download finishes once the window opens."""
    gw = h2c_gateway(launcher, upstream)
    client = RawH2(gw.port, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
    size = 200_000
    sid = client.request(f"/bytes/{size}")
    got = 0

    def read_some(timeout):
        nonlocal got
        client.sock.settimeout(timeout)
        try:
            data = client.sock.recv(1 << 20)
        except socket.timeout:
            return 0
        if not data:
            client.closed = True
            return 0
        before = got
        for event in client.conn.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                got += len(event.data)
            else:
                client.events.append(event)
        return got - before

    end = time.monotonic() + 10     # read, never acknowledged: the window stays shut
    while got < 65535 and time.monotonic() < end and not client.closed:
        read_some(0.5)
    used, end, updates = worker_cpu(gw), time.monotonic() + 3, 0
    client.conn.increment_flow_control_window(1)
    client.flush()
    while time.monotonic() < end and not client.closed:
        if read_some(0.05):         # the byte came: open the window by one more
            client.conn.increment_flow_control_window(1)
            client.flush()
            updates += 1
    used = worker_cpu(gw) - used
    assert client.goaway() is None and not client.closed
    assert used < 0.5, f"{updates} one-byte updates took {used:.2f}s of CPU in 3 s"
    assert updates < 1000
    client.conn.increment_flow_control_window(1 << 30)
    client.flush()
    end = time.monotonic() + 20
    while got < size and time.monotonic() < end and not client.closed:
        read_some(0.5)
    assert got == size and client.ended(sid)


@pytest.mark.parametrize("bits, size", [(10, 1 << 20), (16, 128 << 20)])
def test_a_client_with_small_windows_downloads_at_full_speed(launcher, upstream, bits, size):
    """nghttp with 1 KiB windows (-w 10 -W 10, opened half a window at a time), and with
    its default 64 KiB ones (a quarter of the frames are the small remainder of a window).
    A first version of the ping-pong pacing (above) counted every frame a window made small
    and held both to 100 of them a second: 1 MB took 10 s (0.15 s before), 128 MiB 2-11 s
    (0.6 s before) (a false-positive pass and a review pass). A send is paced only when a
    tiny update, judged against the peer's own windows, made its window small.
    The bound is relative to the same download with 1 GiB windows, each the best of two runs
    in this test: a fixed 4 s bound failed on a busy CI host (9 s for 128 MiB). Small windows
    cost time of their own: on a loaded host 0.53 s against 0.04 s for 1 MB, 2.8 s against
    0.8 s for 128 MiB; the pacing bug took 10 s for 1 MB."""
    gw = h2c_gateway(launcher, upstream)

    def download(window_bits):
        started = time.monotonic()
        out = subprocess.run(["nghttp", "-n", "-s", "-w", str(window_bits),
                              "-W", str(window_bits), f"http://127.0.0.1:{gw.port}/bytes/{size}"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "GOAWAY" not in out.stdout, out
        return time.monotonic() - started
    took = min(download(bits), download(bits))
    wide = min(download(30), download(30))
    assert took < 4 * wide + 1.0, \
        f"{size} bytes: {took:.2f}s with {2 ** bits - 1}-byte windows, {wide:.2f}s with 1 GiB"


def first_served(port, within, tls=False):
    """Seconds until a new HTTP/1.1 client (over TLS: the certificate unchecked) was served,
    trying for ``within`` s; or None."""
    if tls:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    started = time.monotonic()
    while time.monotonic() - started < within:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=1, context=context) \
            if tls else http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        try:
            conn.request("GET", "/echo")
            if conn.getresponse().status == 200:
                return time.monotonic() - started
        except OSError:
            pass
        finally:
            conn.close()
    return None


@pytest.mark.parametrize("min_body_rate", [0, 1024])
def test_h2_bodies_trickled_into_every_slot_give_way_to_new_clients(launcher, upstream,
                                                                   min_body_rate):
    """server.min_body_rate held only HTTP/1.1 bodies: 12 h2c connections, each trickling
    one stream's body at a byte a second, held all 10 slots of a worker for as long as they
    liked (the timeout between reads never trips). Now the slowest connection gives way,
    as an HTTP/1.1 one does, with a GOAWAY that says why; with 0, nobody else is served."""
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)], http2={
        "h2c": True}, server={"worker_connections": 10, "client_body_timeout": 4.0,
                              "min_body_rate": min_body_rate}))
    slow = H2Trickler(gw.port, 12)
    try:
        slow.wait_sending(10)
        served = first_served(gw.port, 10)
        if min_body_rate:
            assert served is not None and served < 9, "no client served while slots were full"
            assert "sending its request body at" in gw.log()
            wait_until(lambda: slow.answers, 5)     # a trickler looks once a second
            # It is told why, as an HTTP/1.1 client gets a 408 (it got a bare FIN)
            calm = wait_until(lambda: slow.calmed(), 5)
            assert b"under min_body_rate" in calm[0].additional_data, slow.goaways
        else:
            assert served is None, f"served after {served:.1f}s with every slot taken"
    finally:
        slow.close()


def test_an_h2_connection_over_tls_closed_for_a_slow_body_is_told_why(launcher, upstream,
                                                                      tmp_path):
    """The GOAWAY of the test above, over TLS: a record the timer writes without waiting
    (the send queue is empty), where the connection used to get a bare close."""
    cert, key, _ = CA(tmp_path).issue("localhost")
    port = free_port()
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)], server={
        "worker_connections": 10, "client_body_timeout": 4.0, "min_body_rate": 1024},
        tls={"bind": [f"127.0.0.1:{port}"],
             "certificates": [{"cert": str(cert), "key": str(key)}]}))
    slow = H2Trickler(port, 12, tls=True)
    try:
        slow.wait_sending(10)       # (the 11th and 12th wait for a slot to shake hands)
        served = first_served(gw.port, 10)
        assert served is not None and served < 9, "no client served while slots were full"
        calm = wait_until(lambda: slow.calmed(), 6)
        assert b"under min_body_rate" in calm[0].additional_data, slow.goaways
    finally:
        slow.close()


def test_idle_h2_connections_give_their_slots_to_new_clients(launcher, upstream):
    """An HTTP/2 connection with no stream open is idle, as a keep-alive HTTP/1.1 one is:
    when every slot is taken the oldest idle one is closed (GOAWAY) for a new client. They
    were never counted idle: 10 h2c connections that each made one request held a 10-slot
    worker until their keepalive ran out."""
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)], http2={
        "h2c": True}, server={"worker_connections": 10, "keepalive": 30.0}))
    clients = []
    try:
        for _ in range(10):
            client = RawH2(gw.port)
            assert client.response(client.request("/echo"))[0] == 200
            clients.append(client)
        served = first_served(gw.port, 5)
        assert served is not None and served < 2, served
        oldest = clients[0]
        oldest.pump(lambda c: c.closed or c.goaway(), timeout=3)
        assert oldest.goaway() is not None and oldest.goaway().error_code == E.NO_ERROR
        newest = clients[-1]        # the others are untouched
        assert newest.response(newest.request("/echo"))[0] == 200
    finally:
        for client in clients:
            client.close()


def test_an_idle_h2_connection_that_pings_does_not_turn_the_body_check_off(launcher, upstream):
    """An attack pass: the tick left min_body_rate alone while any connection was idle, and
    an idle h2 connection only closes when a new client is accepted (never, with every slot
    taken) or at its keepalive, which each PING restarted. One such connection next to nine
    trickled HTTP/1.1 bodies locked every other client out. PINGs no longer restart an idle
    connection's keepalive, and the tick closes an idle connection when slots are full."""
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)], http2={
        "h2c": True}, server={"worker_connections": 10, "keepalive": 30.0,
                              "client_body_timeout": 4.0}))
    slow = Trickler(gw.port, 9)
    pinger = RawH2(gw.port)
    stop = threading.Event()

    def ping():
        while not stop.wait(0.5) and not pinger.closed and not pinger.goaway():
            pinger.conn.ping(b"12345678")
            pinger.flush()
            pinger.pump(lambda c: c.closed, timeout=0.05)
    try:
        assert pinger.response(pinger.request("/slow/1"), timeout=5)[0] == 200
        threading.Thread(target=ping, daemon=True).start()
        slow.wait_sending(9)
        served = first_served(gw.port, 12)
        assert served is not None and served < 10, "no client served while slots were full"
    finally:
        stop.set()
        slow.close()
        pinger.close()


def slow_reader(port, path):
    """An h2c client with a 64 KiB receive buffer and 8 MiB windows that asked for ``path``:
    the gateway's answer waits in its kernel queue while the client reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.connect(("127.0.0.1", port))
    client = RawH2.__new__(RawH2)       # RawH2 over our small-buffered socket
    client.sock, client.events, client.closed = sock, [], False
    client.conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding=None))
    client.conn.initiate_connection()
    client.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 8 << 20})
    client.conn.increment_flow_control_window(8 << 20)
    client.flush()
    return client, client.request(path)


def read_slowly(client, sid, pause, ping_every=None, within=30, piece=32768):
    """Read the answer of ``sid`` one ``piece`` at a time, ``pause`` s apart (window updates
    go out as h2 acknowledges), a PING every ``ping_every`` s; -> bytes received."""
    deadline, pinged = time.monotonic() + within, time.monotonic()
    pending = b""
    client.sock.settimeout(1.0)
    while not client.ended(sid) and not client.closed and time.monotonic() < deadline:
        time.sleep(pause)
        if ping_every and time.monotonic() - pinged > ping_every:
            client.conn.ping(b"12345678")
            pinged = time.monotonic()
        try:
            data = client.sock.recv(piece)
        except socket.timeout:
            continue
        except OSError:
            break
        if not data:
            break
        pending += data
        # Frame by frame: a graceful GOAWAY (the keepalive ran out once the tail left the
        # gateway's queue) may be followed by the ACK of a PING sent before it arrived,
        # which h2 refuses in its CLOSED state; what came before it must still count.
        while len(pending) >= 9 and len(pending) >= 9 + int.from_bytes(pending[:3], "big"):
            end = 9 + int.from_bytes(pending[:3], "big")
            frame, pending = pending[:end], pending[end:]
            try:
                events = client.conn.receive_data(frame)
            except h2.exceptions.ProtocolError:
                if any(isinstance(e, h2.events.ConnectionTerminated) for e in client.events):
                    return received(client, sid)
                raise
            client.keep(events)
        client.flush()
    return received(client, sid)


def received(client, sid):
    return sum(len(e.data) for e in client.events
               if isinstance(e, h2.events.DataReceived) and e.stream_id == sid)


def test_a_download_still_on_its_way_is_not_cut_by_an_idle_close(launcher, upstream):
    """An attack pass: a stream is done once its last DATA is in the kernel's queue, so its
    connection went idle with megabytes still on the way; closed for a new client, the
    window updates the client sent while reading met a closed socket and the reset threw the
    rest away (3.2 of 6 MB, logged as 200). Not while the kernel still holds bytes for it."""
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)], http2={
        "h2c": True}, server={"worker_connections": 2}))
    size = 6_000_000
    client, sid = slow_reader(gw.port, f"/bytes/{size}")
    stop = threading.Event()

    def newcomers():        # take the second slot again and again
        while not stop.is_set():
            first_served(gw.port, 1)
    thread = threading.Thread(target=newcomers, daemon=True)
    try:
        thread.start()
        got = read_slowly(client, sid, 0.015)       # ~2 MB/s through a 64 KiB buffer
        assert got == size, f"{got} of {size} bytes"
    finally:
        stop.set()
        thread.join(5)
        client.close()


def test_a_slow_download_outlives_the_keepalive(launcher, upstream):
    """A second attack pass: the same loss when the connection's keepalive ran out while a
    slow reader still took the tail of its last answer and sent PINGs (gRPC keepalive, a
    BDP probe): 0.65 of 3 MB, reset, logged as 200 with every byte. The keepalive waits for
    what is still queued, as long as a stalled send may take."""
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)], http2={
        "h2c": True}, server={"keepalive": 2.0}))
    size = 3_000_000
    client, sid = slow_reader(gw.port, f"/bytes/{size}")
    try:
        got = read_slowly(client, sid, 0.1, ping_every=0.5)      # ~320 KB/s: ~9 s
        assert got == size, f"{got} of {size} bytes"
    finally:
        client.close()


def test_half_pings_do_not_keep_an_idle_connection(launcher, upstream):
    """A second attack pass: half a PING counted as a request begun (header_timeout, not
    idle), and its completion made the connection idle again with a fresh keepalive, so
    clients that end one PING and begin the next a moment later (idle for a fraction of a
    millisecond each time) held every slot for as long as they liked. A frame half read
    is a request begun only if it is HEADERS."""
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)], http2={
        "h2c": True}, server={"worker_connections": 3, "header_timeout": 5.0,
                              "keepalive": 30.0}))
    ping = PingFrame(0, opaque_data=b"12345678").serialize()
    holders = []
    try:
        for _ in range(3):
            client = RawH2(gw.port)
            client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            assert client.response(client.request("/echo"))[0] == 200
            client.send_raw(ping[:5])
            holders.append(client)
            time.sleep(0.2)
        stop = threading.Event()

        def cycle():
            while not stop.wait(1.0):
                for client in holders:
                    client.send_raw(ping[5:])       # two segments: the PING ends, and
                    client.send_raw(ping[:5])       # the next begins
        thread = threading.Thread(target=cycle, daemon=True)
        thread.start()
        served = first_served(gw.port, 4)       # under header_timeout: no other way out
        stop.set()
        thread.join(5)
        assert served is not None, "no client served while half PINGs held every slot"
    finally:
        for client in holders:
            client.close()


@pytest.mark.parametrize("tls", [False, True])
def test_a_header_block_half_in_is_not_idle(launcher, upstream, tmp_path, tls):
    """An attack pass: with no stream open a connection counted idle even with half a header
    block in (HTTP/1.1 stops being idle at a request's first byte), so a new client's arrival
    closed it under the request; over TLS without even a GOAWAY. The block now has
    header_timeout, and an idle TLS connection gets its GOAWAY too."""
    port = free_port() if tls else None
    extra = {"tls": tls_section(tmp_path, port)} if tls else {}
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)], http2={
        "h2c": True}, server={"worker_connections": 2, "keepalive": 30.0}, **extra))
    port = port or gw.port
    # Each connection waits for the ack of its SETTINGS: the gateway has read its preface,
    # so it counts as open (idle) before the next arrives. The server's own SETTINGS come
    # before that: a busy CI host served a newcomer before the "idle" one was counted.
    def acked(c):
        return any(isinstance(e, h2.events.SettingsAcknowledged) for e in c.events)
    client = RawH2(port, tls=tls)
    assert client.pump(acked, timeout=5)
    sid = client.conn.get_next_available_stream_id()
    client.conn.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"https" if tls else
                                                         b"http"), (b":path", b"/echo"),
                                   (b":authority", b"localhost"),
                                   *[(b"x-pad-%d" % i, b"v" * 200) for i in range(50)]],
                             end_stream=True)
    block = client.conn.data_to_send()
    client.send_raw(block[:5000])
    time.sleep(0.3)
    if tls:
        idle = RawH2(port, tls=True)            # idle: it is the one to go
        # (what it saw, if not the ack: a rare CI failure ended here within a second)
        assert idle.pump(acked, timeout=5), (idle.closed, idle.goaway(), idle.events[-6:])
    served = first_served(port, 3, tls=tls)
    client.send_raw(block[5000:])
    answer = client.response(sid)
    assert answer is not None and answer[0] == 200, (answer, client.goaway(), served)
    if tls:
        idle.pump(lambda c: c.closed or c.goaway(), timeout=3)
        assert idle.goaway() is not None and idle.goaway().error_code == E.NO_ERROR
        idle.close()
    client.close()


# A worker in a child process: its Runtime, TLS stack and one H2ServerConnection served
# from a greenlet, and ``hold``, which stops the whole loop (no greenlet runs), so a test can
# make two events land in one turn of it. A script appends its client and what it saw.
TLS_WORKER_CHILD = textwrap.dedent("""
    import json, ssl, sys
    from gevent import monkey
    monkey.patch_all()                  # as in a worker
    import gevent
    from gevent import socket
    from gwserver.client.h2server import H2ServerConnection
    from gwserver.client.tls import ServerTLS
    from gwserver.server.runtime import Runtime
    from gwserver.settings import parse_conf

    hold = monkey.get_original("time", "sleep")
    state, cert, key = sys.argv[1:4]

    def tls_worker(**server):
        conf = parse_conf({
            "server": {"state_dir": state, **server},
            "tls": {"certificates": [{"cert": cert, "key": key}]},
            "routes": [{"id": "r", "paths": ["/*rest"], "plugins": {"redirect": {"uri": "/x"}},
                        # never asked: the plugin answers
                        "upstream": {"targets": [{"url": "http://127.0.0.1:9"}]}}]})
        runtime = Runtime(conf, 10, ServerTLS(conf.tls))
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        served = []

        def serve():
            sock, addr = listener.accept()
            tls = runtime.tls_server.wrap(sock)
            tls.do_handshake()
            served.append(H2ServerConnection(runtime, tls, addr, scheme="https"))
            served[0].serve()

        gevent.spawn(serve)
        return runtime, listener, served
""")


RACE_CHILD = TLS_WORKER_CHILD + textwrap.dedent("""
    from gwserver.net.sockets import OPEN, idle_state
    from tests.h2client import RawH2

    ping_first = sys.argv[4]
    KEEPALIVE = 1.0
    runtime, listener, served = tls_worker(keepalive=KEEPALIVE)
    runtime.deadlines.start()           # the ticker that runs keepalives out
    client = RawH2(listener.getsockname()[1], tls=True)
    first = client.response(client.request("/first"))
    client.flush()
    conn = served[0]
    for _ in range(300):                # idle, all the client sent read: the HEADERS will be
        gevent.sleep(0.01)              # the first record the reader takes
        idle = conn.wait_state == "idle" and idle_state(conn.sock._sock) is OPEN
        if idle:
            break
    idle = idle and not conn.timed_out
    hold(KEEPALIVE + 0.3)               # the keepalive runs out: the ticker is due...
    if ping_first == "ping":            # a PING in a TLS record of its own, first: the
        client.conn.ping(b"12345678")   # reader takes it alone, and then it was draining
        client.flush()
    sid = client.conn.get_next_available_stream_id()
    client.conn.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"https"),
                                   (b":path", b"/second"), (b":authority", b"localhost")],
                             end_stream=True)
    client.flush()                      # ...and the reader: both in the loop's next turn
    hold(0.05)
    one_turn = not conn.timed_out       # (neither ran before both were due)
    client.pump(lambda c: c.closed or c.ended(sid), timeout=3)
    goaway = client.goaway()
    print(json.dumps({
        "first": first and first[0], "idle": idle, "one_turn": one_turn, "sid": sid,
        "expired": conn.timed_out, "taken": conn.last_stream_id,
        "answered": client.ended(sid), "reset": client.reset_code(sid),
        "goaway": goaway and [goaway.error_code, goaway.last_stream_id]}))
""")


@pytest.mark.parametrize("before", ["", "ping"])
def test_a_request_read_as_a_tls_keepalive_runs_out_is_refused_not_lost(tmp_path, before):
    """A second attack pass: on TLS an idle connection's GOAWAY goes out from a greenlet, and
    a request read before that greenlet ran was taken, named in the GOAWAY as taken and lost
    with the socket (1 in 93 tries against a gateway). The connection drains from the expiry
    on: the request is refused (REFUSED_STREAM, safe to send again) or answered, never lost.

    Made certain rather than tried: a worker (Runtime, the TLS stack, H2ServerConnection,
    its ticker) and its client in a child process, whose loop is held until the keepalive has
    run out and the HEADERS are in, so the ticker and the reader wake in the same turn of it
    (the ticker first: gevent's libev loop runs the timers due before the sockets ready), as
    in the race in a real worker.

    With a PING in a record of its own just before the HEADERS (a gRPC keepalive, say), the
    reader read the PING alone, left its loop (draining, no stream) and closed the socket
    before the GOAWAY went out: the unread HEADERS made the close a reset, and the client got
    no answer, no RST_STREAM and no GOAWAY. An idle connection now lingers after its GOAWAY,
    reading and refusing, until the client closes or LINGER_SECONDS pass."""
    cert, key, _ = CA(tmp_path).issue("localhost")
    out = subprocess.run([sys.executable, "-c", RACE_CHILD, str(tmp_path), str(cert),
                          str(key), before], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.splitlines()[-1])
    assert seen["first"] == 301 and seen["idle"], seen
    assert seen["one_turn"] and seen["expired"], f"the race was not set up: {seen}"
    goaway, sid = seen["goaway"], seen["sid"]
    assert seen["answered"] or seen["reset"] == E.REFUSED_STREAM or \
        (goaway is not None and goaway[1] < sid), f"stream {sid} lost: {seen}"


RECLAIM_CHILD = TLS_WORKER_CHILD + textwrap.dedent("""
    import h2.config, h2.connection, h2.events

    runtime, listener, served = tls_worker()
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    client = context.wrap_socket(socket.create_connection(listener.getsockname()),
                                 server_hostname="localhost")
    gevent.sleep(0.3)                   # the reader waits, an idle connection
    waiting = [c is served[0] for c in runtime.idle_clients]
    h2c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    h2c.initiate_connection()
    client.sendall(h2c.data_to_send())  # the preface and SETTINGS, as the timer...
    hold(0.2)                           # ...is due: both in the loop's next turn
    first_try = runtime.close_oldest_idle()
    gevent.sleep(0.3)                   # the reader reads them, and acknowledges
    second_try = runtime.close_oldest_idle()
    events, client_closed = [], False
    client.settimeout(3)
    try:
        while not any(isinstance(e, h2.events.ConnectionTerminated) for e in events):
            data = client.recv(65536)
            if not data:
                client_closed = True
                break
            events += h2c.receive_data(data)
    except OSError as exc:
        client_closed = repr(exc)
    goaway = [e.error_code for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    print(json.dumps({
        "waiting": waiting, "first_try": first_try, "second_try": second_try,
        "acked": any(isinstance(e, h2.events.SettingsAcknowledged) for e in events),
        "goaway": goaway, "client_closed": client_closed}))
""")


def test_an_idle_tls_connection_is_not_taken_over_its_unread_preface(tmp_path):
    """A CI failure (4 in 40 runs of the half-block test under load): the connection slot
    of a TLS client whose reader waited (idle) was taken for a newcomer while its preface
    sat unread; the close over those bytes reset the connection and its GOAWAY was lost, so
    the client saw its connection cut without a word. Unread bytes were looked for on plain
    sockets only; a TLS socket answers for itself now, and such a connection is taken once
    its reader has read them.

    Made certain rather than tried, as the keepalive race above: a worker's connection and
    its client in a child process, whose loop is held while the preface comes in, so the
    slot is asked for before the reader runs."""
    cert, key, _ = CA(tmp_path).issue("localhost")
    out = subprocess.run([sys.executable, "-c", RECLAIM_CHILD, str(tmp_path), str(cert),
                          str(key)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.splitlines()[-1])
    assert seen["waiting"] == [True], f"the race was not set up: {seen}"
    assert seen["first_try"] is False and seen["second_try"] is True, seen
    assert seen["acked"] and seen["goaway"] == [0], seen


def test_a_reset_upload_leaves_no_waiting_time_behind(launcher, upstream):
    """An attack pass: the connection's body accounting started over only when a body ended
    whole, so an upload reset after 6 s of waiting left its time behind, and the next upload
    on that connection was closed as slow within half a second of pausing. Each stream's
    bytes and time now leave with it."""
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)], http2={
        "h2c": True}, server={"worker_connections": 3, "client_body_timeout": 10.0}))
    client = RawH2(gw.port)
    first = client.request("/upload", "POST", [("content-length", "1000")], end=False)
    time.sleep(6)
    # The reset and the next upload in one write: written apart, Nagle held the HEADERS
    # for the ACK of the RST_STREAM (the gateway's delayed ACK), the connection had no
    # stream open meanwhile, and a trickler's connect took its slot as an idle one's
    # (a loaded machine let them in in that gap: 14 of 18 runs beside a CPU hog).
    client.conn.reset_stream(first)
    second = client.request("/upload", "POST", [("content-length", "100000")], end=False)
    others = Trickler(gw.port, 2)           # every slot is taken meanwhile
    try:
        time.sleep(1.5)                     # the pause: under 5 s of waiting, not judged
        left = 100000
        while left and not client.closed:
            room = min(left, 16384, client.conn.local_flow_control_window(second))
            if room:
                client.conn.send_data(second, b"x" * room, end_stream=room == left)
                client.flush()
                left -= room
            else:
                client.pump(lambda c: c.conn.local_flow_control_window(second) > 0 or
                            c.closed, 3)
        answer = client.response(second, timeout=5)
        assert answer is not None and answer[0] == 200, (answer, gw.log()[-1500:])
    finally:
        others.close()
        client.close()


def test_connections_lingering_after_a_header_timeout_give_their_slots_away(launcher,
                                                                         upstream):
    """A connection whose header_timeout ran out with half a HEADERS read lingers after its
    GOAWAY (2 s) as an idle one does; it was not among the idle connections a new client may
    take a slot from, so with every slot held by such ones a new client waited the linger
    out."""
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)], http2={
        "h2c": True}, server={"worker_connections": 4, "header_timeout": 1.0}))
    clients = []
    try:
        for _ in range(4):
            client = RawH2(gw.port)
            assert client.response(client.request("/echo"))[0] == 200
            client.conn.send_headers(client.conn.get_next_available_stream_id(), [
                (":method", "GET"), (":scheme", "http"), (":path", "/half"),
                (":authority", "h")], end_stream=True)
            data = client.conn.data_to_send()
            client.send_raw(data[:len(data) // 2])      # half a HEADERS: a head coming
            clients.append(client)
        for client in clients:                           # header_timeout: GOAWAY, linger
            assert client.pump(lambda c: c.goaway() is not None, timeout=5)
        started = time.monotonic()
        served = first_served(gw.port, 3)
        assert served is not None and time.monotonic() - started < 1.0, served
    finally:
        for client in clients:
            client.close()
