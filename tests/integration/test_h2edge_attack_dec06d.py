"""Attack pass of 2026-12-06 (helper v4): the HTTP/2 client edge (client/h2server.py,
core/h2frames.py), items an earlier review left open. Every test starts a real gateway (the
launcher fixture) and a real upstream and talks to them over loopback with a hand-driven
HTTP/2 client (tests/h2client.RawH2, raw frames where h2 would not send them); every wait is
bounded and every socket closed. Each defect's test failed on 48bb0e7.

1. CONTINUATION flood (the 2024 family: nghttp2's CVE-2024-28182, Go's CVE-2023-45288). A
   header block's CONTINUATION frames weighed nothing: an empty one added no header bytes
   to the pacing and counted toward no budget, and a whole block (h2 holds up to 64 frames)
   counted as one frame at most. A client that reset a stream of its own, then sent blocks
   of a HEADERS and 63 empty CONTINUATIONs on it (each block dropped, "one empty frame" of
   10,000 a second), had ~480,000 frames parsed in 3 s, 0.2 s of the worker's CPU for each
   64 KiB read: 61% of its core, another client's request waiting 5 s (its timeout), and
   the connection never cut. Clients split a head over CONTINUATIONs only when it does not
   fit a frame, so every CONTINUATION of a block but its last is a whole frame: one under
   1 KiB that does not end its block now counts toward max_empty_frames_per_second, and
   the flood is cut (GOAWAY ENHANCE_YOUR_CALM) within its first reads. The frame reader's
   size check of a block held (a sum over its frames for each frame, a third of the
   flood's parse) is a running total. Held up: memory (a block is held to 64 KiB as sent,
   refused ENHANCE_YOUR_CALM before END_HEADERS: test_h2client_attack_dec05c.py), one
   block's frames (h2's backlog of 64: PROTOCOL_ERROR), and a block that never ends
   (server.header_timeout; 2. below for its slot).
2. A half-sent header block (HEADERS without END_HEADERS, then silence) was bounded by
   header_timeout, but the slow-head rule did not see it: when every
   server.worker_connections slot is taken and none is idle, the slowest HTTP/1.1 head is
   closed for a newcomer (Runtime.close_slowest_head), and HTTP/2 connections with half a
   header block were in neither idle_clients nor head_readers. Six of them held a worker's
   six slots: a newcomer waited 6 s, until the first header_timeout. They are head readers
   now, judged by the same rate: the slowest is closed with GOAWAY ENHANCE_YOUR_CALM that
   says why, and the newcomer is served at once.
3. gRPC cancellations against max_resets_per_second: every RST_STREAM of the client's
   counted as a rapid reset, however long its stream had been served. A gRPC client whose
   calls hit a 200 ms deadline (a slow backend), 200 calls a second with 40 in flight on
   one connection, got GOAWAY ENHANCE_YOUR_CALM ("rapid reset") within 1.5 s and lost
   every call on it. A reset of a stream served 0.1 s or more is now a cancel, not counted
   (bounded by the streams served: max_concurrent_streams / 0.1 s a second); one in the
   read that opened its stream, or soon after, still counts (rapid reset: tested). Held
   up: a reset of a stream that already ended (both END_STREAMs, or the gateway's reset
   after an early answer) is not counted as a reset, nor an error, whether h2 still holds
   the stream or has forgotten it (a newer stream opened meanwhile); the same for a
   WINDOW_UPDATE there.
4. A SETTINGS frame with the ACK flag and a payload was answered GOAWAY PROTOCOL_ERROR;
   RFC 9113 6.5 makes it FRAME_SIZE_ERROR (core.h2frames.SettingsAckWithPayload). An
   RST_STREAM on an idle stream (never opened; 6.4: a connection error PROTOCOL_ERROR) was
   dropped once the connection had a stream, as for a stream h2 forgot, and the connection
   served on; it is a connection error now (on a fresh connection h2 refused it already).
(5. Held up: the 100 Continue the gateway sends goes out before the answer's head and DATA
   (tried on the wire: uploads of 5 B and 200 KB that expect 100-continue, to an HTTP/1.1
   upstream), and a 1xx head parsed in the same write as the final head and DATA is framed
   in that order (ResponseFramer, fed both in one piece); interim heads of upstreams are
   dropped before they reach it.)
(Unit: tests/unit/test_h2_frames_dec06d.py, the frame reader's part of 1. and 4.)
"""
import http.client
import socket
import threading
import time

import h2.errors
import h2.events
from hyperframe.frame import ContinuationFrame, HeadersFrame, RstStreamFrame

from ..h2client import RawH2
from .test_auth_abuse import cpu_seconds
from .test_h2client_attack_dec05c import h2c_gateway, settled
from .test_http2_hardening import Bystander

E = h2.errors.ErrorCodes


def discard_input(sock):
    """Read and drop what the gateway sends (its RST_STREAMs), in a thread, so that its
    writes never wait on this client."""
    def run():
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass
    threading.Thread(target=run, daemon=True).start()


def end_headers(frame):
    frame.flags.add("END_HEADERS")
    return frame


# -- 1. empty CONTINUATIONs weighed nothing ---------------------------------------------------

def test_a_continuation_flood_on_a_reset_stream_is_refused(launcher, upstream):
    gw = h2c_gateway(launcher, upstream)
    client = settled(RawH2(gw.port))
    sid = client.request("/slow/5")
    time.sleep(0.2)
    client.conn.reset_stream(sid)
    client.flush()
    time.sleep(0.2)
    block = client.conn.encoder.encode([(b"x-a", b"1")])
    one = HeadersFrame(sid, block).serialize() + \
        ContinuationFrame(sid, b"").serialize() * 62 + \
        end_headers(ContinuationFrame(sid, b"")).serialize()
    burst = one * 20
    discard_input(client.sock)
    client.sock.settimeout(0.5)
    before, started = cpu_seconds(gw), time.monotonic()
    with Bystander(gw.port) as other:
        while time.monotonic() - started < 3.0:
            try:
                client.sock.sendall(burst)
            except socket.timeout:
                continue
            except OSError:
                break
        cut_after = time.monotonic() - started
        time.sleep(0.5)
    used = cpu_seconds(gw) - before
    assert cut_after < 2.0, f"the flood went on for {cut_after:.1f}s"     # 3 s, never cut
    assert other.failures == 0 and other.worst < 1.0, (other.failures, other.worst)  # 5 s
    assert used < 1.0, f"the worker spent {used:.2f}s of CPU"             # 1.83 s in 3 s
    assert "empty frame flood" in gw.log()
    client.close()
    # A head split over CONTINUATIONs as clients split them (whole frames) is served.
    client = RawH2(gw.port)
    sid = client.request("/echo", headers=[(f"x-big-{i}", "v" * 6000) for i in range(8)])
    assert client.response(sid)[0] == 200
    client.close()


# -- 2. half a header block held a slot the slow-head rule did not see ----------------------

def test_half_sent_header_blocks_give_way_to_a_newcomer(launcher, upstream):
    gw = h2c_gateway(launcher, upstream, server={"worker_connections": 6,
                                                 "header_timeout": 8.0})
    clients = []
    try:
        for _ in range(6):
            client = RawH2(gw.port)         # preface, SETTINGS and the half block at once
            block = client.conn.encoder.encode([
                (b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/echo"),
                (b":authority", b"a")])
            client.send_raw(HeadersFrame(1, block).serialize())     # no END_HEADERS
            clients.append(client)
            time.sleep(0.1)
        time.sleep(0.3)
        started = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        conn.request("GET", "/echo")
        assert conn.getresponse().status == 200
        conn.close()
        waited = time.monotonic() - started
        assert waited < 2.5, f"the newcomer waited {waited:.1f}s"     # 6 s before
        for client in clients:
            client.pump(lambda c: c.goaway() is not None or c.closed, timeout=0.5)
        told = [c.goaway() for c in clients if c.goaway() is not None and
                c.goaway().error_code == E.ENHANCE_YOUR_CALM]
        assert told and b"request head incomplete" in told[0].additional_data, \
            [c.goaway() for c in clients]
    finally:
        for client in clients:
            client.close()
    assert "slow head closed" in gw.log() or "request head still incomplete" in gw.log()


# -- 3. a client's cancellations counted as rapid resets --------------------------------------

def test_calls_cancelled_at_their_deadline_keep_the_connection(launcher, upstream):
    gw = h2c_gateway(launcher, upstream)
    client = settled(RawH2(gw.port))
    opened, cancelled = [], 0
    end = time.monotonic() + 2.0
    while time.monotonic() < end and client.goaway() is None and not client.closed:
        opened += [(client.request("/slow/1"), time.monotonic()) for _ in range(2)]
        now = time.monotonic()
        while opened and now - opened[0][1] > 0.2:     # each call's deadline: 200 ms
            client.conn.reset_stream(opened.pop(0)[0], E.CANCEL)
            cancelled += 1
        client.flush()
        client.pump(lambda c: False, timeout=0.01)
    assert client.goaway() is None, client.goaway()     # ENHANCE_YOUR_CALM after 1.3 s
    assert cancelled > 250
    sid = client.request("/echo")
    assert client.response(sid)[0] == 200
    client.close()
    # Rapid reset still ends the connection: streams reset as soon as they are opened.
    client = settled(RawH2(gw.port))
    for _ in range(300):
        client.conn.reset_stream(client.request("/slow/2"))
    client.flush()
    client.pump(lambda c: c.goaway() is not None, timeout=5)
    assert client.goaway() is not None and client.goaway().error_code == E.ENHANCE_YOUR_CALM
    client.close()


# -- 4. SETTINGS ACK with a payload, RST_STREAM on an idle stream -----------------------------

def test_a_settings_ack_with_a_payload_is_a_frame_size_error(launcher, upstream):
    gw = h2c_gateway(launcher, upstream)
    client = settled(RawH2(gw.port))
    assert client.response(client.request("/echo"))[0] == 200
    client.send_raw(b"\0\0\6\x04\x01\0\0\0\0" + b"\0\x03\0\0\0\x64")   # ACK, one entry
    assert client.pump(lambda c: c.goaway() is not None, timeout=3)
    assert client.goaway().error_code == E.FRAME_SIZE_ERROR, client.goaway()   # PROTOCOL
    client.close()


def test_rst_stream_on_an_idle_stream_ends_the_connection(launcher, upstream):
    gw = h2c_gateway(launcher, upstream)
    for idle in (7, 2):     # past the client's streams; one the gateway never opened
        client = settled(RawH2(gw.port))
        assert client.response(client.request("/echo"))[0] == 200
        client.send_raw(RstStreamFrame(idle).serialize())
        client.pump(lambda c: c.goaway() is not None, timeout=3)
        assert client.goaway() is not None and \
            client.goaway().error_code == E.PROTOCOL_ERROR, idle      # ignored before
        client.close()
    # A reset of a stream that ended, one h2 forgot too (a newer one opened), is no error.
    client = settled(RawH2(gw.port))
    done = client.request("/echo")
    assert client.response(done)[0] == 200
    newer = client.request("/slow/0.3")
    client.send_raw(RstStreamFrame(done).serialize())
    assert client.response(newer)[0] == 200
    assert client.goaway() is None
    client.close()
