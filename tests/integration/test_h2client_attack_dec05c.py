"""Attack pass of 2026-12-05 (helper h3): the HTTP/2 client side (h2c, h2) and native gRPC.

Every test starts real processes (a gateway from the launcher fixture, the recording
upstreams of the attack modules) and talks to them over loopback with a hand-driven HTTP/2
client (tests/h2client.RawH2, raw frames where h2 would not send them); every wait is
bounded and every socket closed in teardown. Each defect's test failed on 5bc977c.

1. A header block's HEADERS and CONTINUATION frames are held by h2 until END_HEADERS, up to
   64 frames whatever their size: 1 MiB a connection at the default max_frame_size (and 64
   times a listener's larger max_frame_size), held until server.header_timeout. 60
   connections that each sent 63 CONTINUATIONs of 16 KiB grew the worker by 79 MiB for 10 s
   (1,000 of them, a worker's slots, ~1.3 GiB), though a block over 64 KiB as sent is refused
   once it ends, and an HTTP/1.1 head is held to 64 KiB. A block is now refused (GOAWAY
   ENHANCE_YOUR_CALM) as soon as its frames hold more than that.
2. A client's GOAWAY (NO_ERROR: it opens no more streams, as Go's ClientConn.Shutdown sends
   before it waits for its streams) closed h2's whole state machine: an answer still on its
   way could not be sent (an "unhandled error" with a traceback in the log, the client's
   stream left without an answer until the connection closed), and the client's next frame,
   a WINDOW_UPDATE for the download it was reading, was taken for a protocol error that cut
   the download (98 KB of 2 MB) and every other stream with it. RFC 9113 6.8: the streams
   the client opened go on; now they are served to their end, no new one is taken
   (REFUSED_STREAM), and the connection closes after the last.
3. On an h2c listener, a connection whose first bytes are part of the HTTP/2 preface (one
   "P" will do) was polled every 10 ms until its header_timeout, to see whether the rest had
   come: the peeked bytes keep the socket readable, so the wait could not block. 400 such
   connections took 54% of the worker's core (the same number of half HTTP/1.1 heads: 1%).
   The wait now blocks until more bytes are in or the client closes (SO_RCVLOWAT): a wake
   per byte, 23 at most.
4. Header blocks are paced by their bytes as sent (512 KiB a second a connection, said to
   bound one connection's heads to ~20% of a core), but hpack takes ~2.3 us for each field
   it decodes and an indexed field is one byte: blocks of 1,400 one-byte fields (under the
   64 KiB list limit) went through at hundreds a second, 3.3 ms of decoding each, and one
   connection kept the worker's core at 100% for as long as it sent them (5.4 s of CPU in
   5.5 s; another client of the worker waited 4.3 s for an answer). Each decoded field now
   weighs 8 bytes more in that count.
5. Streams the gateway itself reset as malformed (PROTOCOL_ERROR: a pseudo-header after a
   regular field, an upper-case name, DATA past content-length) were not counted by the
   rapid-reset guard, which counts the client's own resets (max_resets_per_second): that is
   CVE-2025-8671 ("MadeYouReset"). One connection that sent a 5-byte malformed block (cached
   by the decoder) 50 at a time had 11,700 requests a second reset, for as long as it
   liked: 66% of the worker's core and 1.5 MB a second of access-log lines. They count now:
   past the limit, GOAWAY ENHANCE_YOUR_CALM.
(6. The HPACK encoder kept one dynamic table size update per SETTINGS change a peer made
   between two of its blocks: tests/unit/test_h2_fields_attack_dec05c.py.)

Held (tried, no defect; the existing suites cover them): :path spellings (``#``, ``?#``,
``//``, backslash, ``%2e``) routed, authorised and forwarded alike on both protocols;
:authority against Host; upper-case, CR, LF, NUL and colon in names and values;
connection-specific fields and TE; duplicate and late pseudo-headers; cookie crumbs joined
once; a client's trailers (counted, never forwarded); grpc-timeout huge, zero, unit-less or
sent twice (no deadline of the gateway's, the upstream told as sent); WINDOW_UPDATE past
2^31-1 on a stream (that stream reset, and counted); a stream window shut for good (reset
after send_timeout); gRPC to an HTTP/1.1 upstream (streamed, chunked, never buffered).
"""
import socket
import time

import h2.errors
import h2.events
from hyperframe.frame import ContinuationFrame, GoAwayFrame, HeadersFrame

from ..conftest import gateway_conf, route
from .test_auth_abuse import cpu_seconds
from .test_http2_hardening import Bystander, discard
from ..h2client import RawH2

E = h2.errors.ErrorCodes


def h2c_gateway(launcher, up, **sections):
    http2 = {"h2c": True, **sections.pop("http2", {})}
    return launcher.gateway(gateway_conf([route("r", ["/*rest"], up.url)], http2=http2,
                                         **sections))


def settled(client):
    """Wait for the gateway's SETTINGS to be acknowledged: the client's ACK must not land
    in the middle of a header block a test sends by hand."""
    assert client.pump(lambda c: any(isinstance(e, h2.events.SettingsAcknowledged)
                                     for e in c.events), timeout=5)
    return client


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# -- 1. a header block's frames are held without bound until END_HEADERS ---------------------

def test_a_header_block_that_never_ends_is_refused_at_the_head_limit(launcher, h1_up):
    gw = h2c_gateway(launcher, h1_up, server={"header_timeout": 10.0})
    worker = gw.worker_pids()[0]
    before = rss(worker)
    clients = []
    try:
        for _ in range(40):
            client = settled(RawH2(gw.port))
            clients.append(client)
            client.send_raw(HeadersFrame(1, b"\0" * 16000).serialize())   # no END_HEADERS
            for _ in range(63):
                client.send_raw(ContinuationFrame(1, b"\0" * 16384).serialize())
                if client.closed:
                    break
        grown = rss(worker) - before
        started = time.monotonic()
        for client in clients:
            client.pump(lambda c: c.goaway() is not None or c.closed, timeout=2)
        # Refused as it went over 64 KiB, not held for the header_timeout (10 s)
        assert time.monotonic() - started < 5
        assert all(c.goaway() is not None and c.goaway().error_code == E.ENHANCE_YOUR_CALM
                   for c in clients), [c.goaway() for c in clients]
        assert grown < 24 << 20, grown >> 20        # 53 MiB held before
    finally:
        for client in clients:
            client.close()
    # A head split over CONTINUATIONs within the limits is served as before.
    client = RawH2(gw.port)
    sid = client.request("/echo", headers=[(f"x-big-{i}", "v" * 6000) for i in range(6)])
    assert client.response(sid)[0] == 200
    client.close()


# -- 2. a client's GOAWAY cut the answers of the streams it had opened ------------------------

def client_goaway(code=E.NO_ERROR):
    frame = GoAwayFrame(0)
    frame.last_stream_id, frame.error_code = 0, code        # no stream of the gateway's
    return frame.serialize()


def test_a_clients_goaway_lets_its_streams_finish(launcher, upstream):
    gw = h2c_gateway(launcher, upstream)
    client = settled(RawH2(gw.port))
    slow = client.request("/slow/0.5")          # on its way when the GOAWAY comes
    download = client.request("/bytes/2000000")
    assert client.pump(lambda c: any(isinstance(e, h2.events.ResponseReceived)
                                     for e in c.events), timeout=5)
    client.send_raw(client_goaway())
    refused = client.request("/echo")           # after its own GOAWAY: not taken
    # reading the download sends WINDOW_UPDATEs after the GOAWAY
    status, _, body, _ = client.response(download, timeout=10)
    assert status == 200 and len(body) == 2000000
    assert client.response(slow, timeout=5)[::2] == (200, b"slow done")
    assert client.reset_code(refused) == E.REFUSED_STREAM
    assert client.goaway() is None              # no protocol error on the connection
    assert client.pump(lambda c: c.closed, timeout=5)     # closed after the last stream
    client.close()
    log = gw.log()
    assert "unhandled error" not in log and "Invalid input" not in log, log[-2000:]


# -- 3. half an HTTP/2 preface was polled every 10 ms ----------------------------------------

def test_connections_that_sent_part_of_the_preface_cost_no_cpu(launcher, upstream):
    gw = h2c_gateway(launcher, upstream, server={"header_timeout": 10.0,
                                                 "worker_connections": 1000})
    socks = []
    try:
        for i in range(400):
            sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
            socks.append(sock)
            sock.sendall(b"P" if i % 2 else b"PRI * HTTP/2.0\r\n")
        time.sleep(1.0)
        before, started = cpu_seconds(gw), time.monotonic()
        time.sleep(3.0)
        share = (cpu_seconds(gw) - before) / (time.monotonic() - started)
        assert share < 0.1, share                  # 0.35-0.54 of a core before
    finally:
        for sock in socks:
            sock.close()
    # A preface that comes in pieces is still HTTP/2, a "P" that goes on is HTTP/1.1, and a
    # client that closes after half a preface is let go at once.
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n")
        time.sleep(0.3)
        sock.sendall(b"\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        assert sock.recv(9)[3] == 0x04              # the gateway's SETTINGS
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(b"P")
        time.sleep(0.3)
        started = time.monotonic()
        sock.sendall(b"OST /echo HTTP/1.0\r\n\r\n")        # 22 bytes in all: no preface
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        assert time.monotonic() - started < 2
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(b"PRI * HTTP/2")
        sock.shutdown(socket.SHUT_WR)
        started = time.monotonic()
        sock.settimeout(5)
        try:
            while sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        assert time.monotonic() - started < 2       # not held to its header_timeout


# -- 4. blocks of one-byte indexed fields went past the header pacing -------------------------

def test_blocks_of_many_indexed_fields_are_paced(launcher, upstream):
    gw = h2c_gateway(launcher, upstream, server={"keepalive": 30.0})
    client = RawH2(gw.port)
    head = client.conn.encoder.encode([(b":method", b"GET"), (b":scheme", b"http"),
                                       (b":path", b"/echo"), (b":authority", b"a")])
    # 1,400 one-byte fields (static entry 2, ":method: GET" again: the stream is malformed
    # once decoded), and a literal that keeps each block out of the decoder's cache
    block = head + b"\x82" * 1400 + b"\x00\x01x\x01y"
    with Bystander(gw.port):
        used, end = cpu_seconds(gw), time.monotonic() + 5
        for sid in range(1, 200_001, 2):
            if time.monotonic() > end:
                break
            client.send_raw(HeadersFrame(sid, block, flags=["END_HEADERS",
                                                            "END_STREAM"]).serialize())
            if client.closed or not discard(client):
                break
        used = cpu_seconds(gw) - used
    client.close()
    assert "paced" in gw.log()
    assert used < 2.0, f"the worker spent {used:.1f}s of CPU in 5 s"     # 5.4 s before


# -- 5. malformed streams the gateway resets were not counted as resets (MadeYouReset) -------

def read_frames(sock, buffered, until, timeout=2.0):
    """Raw frames from ``sock`` (the client's own h2 would refuse resets of streams it did
    not open): (type, flags, stream id, payload) each, until ``until(frames)`` or a close or
    ``timeout``; -> (frames, what is left of a frame half read)."""
    frames, end = [], time.monotonic() + timeout
    while not until(frames) and time.monotonic() < end:
        while len(buffered) >= 9 and len(buffered) >= 9 + int.from_bytes(buffered[:3], "big"):
            length = int.from_bytes(buffered[:3], "big")
            frames.append((buffered[3], buffered[4],
                           int.from_bytes(buffered[5:9], "big") & 0x7fffffff,
                           buffered[9:9 + length]))
            buffered = buffered[9 + length:]
        if until(frames):
            break
        sock.settimeout(max(0.01, end - time.monotonic()))
        try:
            data = sock.recv(65536)
        except (socket.timeout, OSError):
            break
        if not data:
            break
        buffered += data
    return frames, buffered


RST_STREAM, GOAWAY = 0x3, 0x7


def flood_headers(client, block, sid, seconds):
    """Requests of header block ``block`` on ``client``, 50 at a time from stream ``sid``,
    each 50 sent once the gateway answered the last (their RST_STREAMs: h2 takes 100 open
    streams at most), until its GOAWAY or ``seconds``; -> (the GOAWAY frame or None, the
    streams sent)."""
    sock, sent, buffered, goaway = client.sock, 0, b"", None
    end = time.monotonic() + seconds
    while time.monotonic() < end and goaway is None:
        try:
            sock.sendall(b"".join(HeadersFrame(s, block, flags=["END_HEADERS", "END_STREAM"])
                                  .serialize() for s in range(sid, sid + 100, 2)))
        except OSError:
            break
        sid, sent = sid + 100, sent + 50
        frames, buffered = read_frames(sock, buffered, lambda frames: any(
            f[0] == GOAWAY for f in frames) or sum(f[0] == RST_STREAM for f in frames) >= 50)
        goaway = next((f for f in frames if f[0] == GOAWAY), None)
        if not frames:
            break
    return goaway, sent


def test_streams_reset_as_malformed_count_toward_the_reset_limit(launcher, upstream):
    gw = h2c_gateway(launcher, upstream, http2={"max_resets_per_second": 100},
                     server={"keepalive": 30.0})
    client = settled(RawH2(gw.port))
    # :method GET, :scheme http, :path /, accept-encoding, then :authority: a pseudo-header
    # after a regular field (RFC 9113 8.3), in five one-byte indexed fields
    goaway, sent = flood_headers(client, b"\x82\x86\x84\x90\x81", 1, 5)
    client.close()
    assert goaway is not None, sent
    assert int.from_bytes(goaway[3][4:8], "big") == E.ENHANCE_YOUR_CALM, goaway
    assert sent <= 300, sent                # 58,500 in 5 s before, and still going
    # A well-formed request on another connection is served.
    other = RawH2(gw.port)
    assert other.response(other.request("/echo"))[0] == 200
    other.close()
