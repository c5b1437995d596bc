"""Attack pass of 2026-12-06 (helper w2): the HTTP/2 client edge's flood budgets
(client/h2server.py: _CountingH2, FloodCut, set_caps), over h2c.

Every test starts a real gateway (the launcher fixture) and the recording upstream, and talks
to them over loopback with raw frames or tests/h2client.RawH2; every wait is bounded and every
socket closed. Each defect's test failed on 8a1eded.

1. Frames weighed on the empty-frame budget but not cut at it within one read (82403d8 and
   f5d4dec stop the parse at the frame past the budget): a stream's WINDOW_UPDATE of 0 on a
   stream that ended, an informational (1xx) HEADERS on a stream the client reset, and small
   CONTINUATIONs (each a fragment) were parsed to the end of the read, and a PING behind
   them answered; a PRIORITY of the wrong size the same on the control budget. The parse now
   stops at the frame (or the header block) past the budget.
2. The caps were set before the reader took the connection's lock: while a stream's answer
   held it (a slow reader's download), a read waited past the end of the second and was
   then parsed with the old second's caps. A client under every budget in each second was
   cut (GOAWAY ENHANCE_YOUR_CALM, "frames past a budget"), its download with it, and counted
   as ``control_frames`` whatever budget it was. The caps are now set under the lock, and a
   cut names its own budget.
3. A header block begun (HEADERS without END_HEADERS) on a connection serving a stream armed
   server.header_timeout for the connection: when it ran out, the connection was closed and
   the stream being served (a long poll) cut with it. A block begun while streams are served
   is timed from when the last of them ends, as half a HEADERS frame already was.
"""
import socket
import time

import h2.errors
import pytest
from hyperframe.frame import (ContinuationFrame, HeadersFrame, PingFrame, RstStreamFrame,
                              SettingsFrame, WindowUpdateFrame)

from gwserver.core.h2fields import FieldEncoder

from .test_h2client_attack_dec05c import GOAWAY, RST_STREAM, h2c_gateway, read_frames, settled
from .test_h2edge_attack_dec05i import closed_count
from ..h2client import RawH2

E = h2.errors.ErrorCodes
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
PING, ACK, HEADERS, END_STREAM, ENHANCE_YOUR_CALM = 0x6, 0x1, 0x1, 0x1, 0xb
BEHIND = PingFrame(0, b"behind!!").serialize()
OPENED = PingFrame(0, b"opened!!").serialize()


def request_block(path="/echo"):
    return FieldEncoder().encode([(b":method", b"GET"), (b":scheme", b"http"),
                                  (b":path", path.encode()), (b":authority", b"localhost")])


def goaway_of(frames):
    return next((f for f in frames if f[0] == GOAWAY), None)


def flood_after(port, opening, flood):
    """Send the preface, SETTINGS and ``opening`` (ENDED or RESET), wait until the gateway
    has read it (and answered stream 1), then write ``flood`` whole; -> the frames
    the gateway sent after the flood, up to its GOAWAY."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(PREFACE + SettingsFrame(0).serialize() + opening + OPENED)
        frames, _ = read_frames(sock, b"", lambda frames: any(
            f[0] == PING and f[1] & ACK for f in frames) and (
            opening != ENDED or any(f[2] == 1 and f[1] & END_STREAM for f in frames)),
            timeout=3)
        assert any(f[0] == PING and f[1] & ACK for f in frames), frames
        time.sleep(0.2)                                 # its frames all in, the read done
        sock.sendall(flood)
        frames, _ = read_frames(sock, b"", lambda frames: goaway_of(frames) is not None,
                                timeout=3)
    return frames


def assert_cut(frames, behind=BEHIND):
    goaway = goaway_of(frames)
    assert goaway is not None, frames
    assert int.from_bytes(goaway[3][4:8], "big") == ENHANCE_YOUR_CALM
    if behind == BEHIND:
        assert not any(f[0] == PING and f[1] & ACK for f in frames), \
            "a PING behind the flood was parsed and answered"
    else:
        assert not any(f[0] == RST_STREAM and f[2] == 1 for f in frames), \
            "a HEADERS behind the flood was parsed and answered (RST_STREAM)"


# Stream 1: a GET answered, ended both ways
ENDED = HeadersFrame(1, request_block(), flags=["END_HEADERS", "END_STREAM"]).serialize()
# Stream 1: a slow request the client reset (answered by nothing)
RESET = HeadersFrame(1, request_block("/slow/3"), flags=["END_HEADERS"]).serialize() + \
    RstStreamFrame(1, error_code=E.CANCEL).serialize()


def budgets(launcher, upstream, **http2):
    return h2c_gateway(launcher, upstream, http2={"max_empty_frames_per_second": 100,
                                                  "max_control_frames_per_second": 100,
                                                  **http2})


# -- 1. frames weighed on a budget but not cut at it within one read --------------------------

ZERO_WINDOW_UPDATE = b"\0\0\4\x08\0\0\0\0\1\0\0\0\0"     # stream 1, increment 0
INFORMATIONAL = HeadersFrame(1, FieldEncoder().encode([(b":status", b"103")]),
                             flags=["END_HEADERS"]).serialize()
PRIORITY_OF_4 = b"\0\0\4\x02\0\0\0\0\x63" + b"\0\0\0\0"    # idle stream 99, 4 bytes not 5
# Behind a control frame flood (where a PING is one more past the budget): a HEADERS on the
# stream the client reset, which h2 answers RST_STREAM as it parses it (an empty frame)
HEAD_ON_RESET = HeadersFrame(1, request_block(), flags=["END_HEADERS"]).serialize()


@pytest.mark.parametrize("opening, flood, behind", [
    (ENDED, ZERO_WINDOW_UPDATE * 3000, BEHIND),
    (RESET, INFORMATIONAL * 3000, BEHIND),
    (RESET, PRIORITY_OF_4 * 3000, HEAD_ON_RESET),
], ids=["zero-window-update-on-an-ended-stream", "1xx-heads-on-a-reset-stream",
        "priority-of-the-wrong-size"])
def test_weighed_frames_stop_the_parse_at_the_budget(launcher, upstream, opening, flood,
                                                     behind):
    gw = budgets(launcher, upstream)
    assert_cut(flood_after(gw.port, opening, flood + behind), behind)


def test_small_continuations_stop_the_parse_at_the_budget(launcher, upstream):
    """Blocks of a HEADERS and 39 empty CONTINUATIONs on a stream the client reset: each
    such CONTINUATION weighs an empty frame, and 2,925 of them in a write were all parsed
    (counted after the read) under a budget of 100."""
    gw = budgets(launcher, upstream)
    block = HeadersFrame(1, b"").serialize() + ContinuationFrame(1, b"").serialize() * 39 + \
        ContinuationFrame(1, request_block(), flags=["END_HEADERS"]).serialize()
    assert_cut(flood_after(gw.port, RESET, block * 75 + BEHIND))


# -- 2. a read held behind a slow download was weighed with the last second's caps ------------

UNKNOWN = b"\0\0\0\xfa\0\0\0\0\0"      # an empty frame of type 0xfa, which receivers ignore


def test_a_read_held_behind_a_download_is_weighed_in_its_own_second(launcher, upstream):
    """A client reads a download slowly: the stream's send holds the connection's lock while
    the socket is full. 700 empty frames in its first second, 600 in its second (budget
    1,000): the read of the 600 waited for the lock past the second's end and was parsed with
    the old second's caps (300 left, and two per DATA frame sent, ~64 KiB each: at most 4 MiB
    of them fill the socket): GOAWAY ENHANCE_YOUR_CALM, the download cut, counted as
    control_frames."""
    gw = budgets(launcher, upstream, max_empty_frames_per_second=1000)
    size = 8_000_000
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        sock.settimeout(5)
        sock.connect(("127.0.0.1", gw.port))
        # Windows and frames as large as HTTP/2 allows: few DATA frames (each lets the client
        # send two WINDOW_UPDATEs more, raising the empty frame budget)
        sock.sendall(PREFACE + SettingsFrame(0, settings={4: 1 << 30, 5: (1 << 24) - 1})
                     .serialize() + WindowUpdateFrame(0, 1 << 30).serialize() + UNKNOWN * 699 +
                     OPENED)
        read_frames(sock, b"", lambda frames: any(f[0] == PING for f in frames), timeout=3)
        sock.sendall(HeadersFrame(1, request_block(f"/bytes/{size}"),
                                  flags=["END_HEADERS", "END_STREAM"]).serialize())
        time.sleep(0.6)                 # the answer fills the socket: its send waits
        sock.sendall(UNKNOWN * 600)
        time.sleep(1.0)                 # a new second; then the client reads
        frames, _ = read_frames(sock, b"", lambda frames: goaway_of(frames) is not None or any(
            f[0] == 0 and f[2] == 1 and f[1] & END_STREAM for f in frames), timeout=5)
    goaway = goaway_of(frames)
    assert goaway is None, bytes(goaway[3])
    assert sum(len(f[3]) for f in frames if f[0] == 0 and f[2] == 1) == size
    assert closed_count(gw, "control_frames") == closed_count(gw, "empty_frames") == 0


# -- 3. a header block begun beside a stream served armed the connection's header_timeout ----

def test_a_slow_header_block_does_not_cut_the_streams_being_served(launcher, upstream):
    """A long poll in flight (4 s) and the next request's block sent in two frames 2.5 s
    apart (header_timeout 1.5 s): the connection was closed at header_timeout, the long poll
    cut with it. Both are answered now."""
    gw = h2c_gateway(launcher, upstream, server={"header_timeout": 1.5})
    client = settled(RawH2(gw.port))
    poll = client.request("/slow/4")
    sid = client.conn.get_next_available_stream_id()
    client.conn.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"http"),
                                   (b":path", b"/echo"), (b":authority", b"localhost"),
                                   (b"x-padding", b"p" * 200)], end_stream=True)
    frame = client.conn.data_to_send()
    assert frame[3] == HEADERS and frame[4] == 0x5          # END_STREAM | END_HEADERS
    block = frame[9:]
    first = HeadersFrame(sid, block[:100], flags=["END_STREAM"]).serialize()
    rest = ContinuationFrame(sid, block[100:], flags=["END_HEADERS"]).serialize()
    client.send_raw(first)
    assert not client.pump(lambda c: c.closed, timeout=2.5), "closed at header_timeout"
    client.send_raw(rest)
    assert client.response(sid, timeout=3)[0] == 200
    status, _, body, _ = client.response(poll, timeout=3)
    assert (status, body) == (200, b"slow done")
    client.close()
