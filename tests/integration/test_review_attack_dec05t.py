"""Attack pass of 2026-12-05 (helper s11): a review, as an attacker, of 77bc6b0 (HTTP/2: a
stream's errors in one read reset and count it once, ``reset_already``; the connection window
grown only above 65535) and of 5deb8e7's ticket-key parts (a key file that is a symbolic link
refused, the temp file made in the realpath of the key's directory). Every test starts a real
gateway (the launcher fixture) and a real upstream and talks to them over loopback with raw
HTTP/2 frames (h2 would not send these); every wait is bounded and every socket closed. Each
test failed on 2297c8b.

1. A HEADERS whose first field is a 1xx ``:status`` (a response's head, sent as a request)
   was neither answered nor counted. h2's stream state machine has no transition for it: it
   closes the stream by itself, no frame sent, and raises, which the gateway makes the
   stream's error (StreamMalformed). 77bc6b0's ``reset_already`` took any closed stream as
   one reset by an earlier event, so this one, closed by no one, was skipped: no RST_STREAM
   (the client's request hung until it gave up), no access line, and no reset counted
   toward max_resets_per_second: such HEADERS, one after another on new streams, cost the
   worker a decode and an event each, without bound (what count_malformed is there for:
   CVE-2025-8671). With END_STREAM set, h2 leaves the stream idle instead; it was counted,
   but h2 refused to reset an idle stream and no RST_STREAM went out either (before
   77bc6b0 too), and each of its other errors in the same write (a PRIORITY making it
   depend on itself) counted one more reset: four such streams with three each, 16 resets,
   ENHANCE_YOUR_CALM. Each such stream gets its RST_STREAM (PROTOCOL_ERROR, written by hand
   where h2 refuses to), a rejected line and one reset counted, however many its errors,
   and the connection goes on.
2. (Not of 77bc6b0: found beside 1.) The same HEADERS as a request's trailers, on a stream
   being served: the stream was refused (counted, logged, its upstream request stopped),
   but the RST_STREAM h2 would not send for a stream it had closed itself never went out:
   the client waited for an answer that would never come. It is written by hand too.
"""
import socket
import time

import h2.errors
import hpack
import pytest
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, HeadersFrame, RstStreamFrame

from ..conftest import wait_until
from ..h2client import RawH2
from .test_h2client_attack_dec05c import h2c_gateway, settled
from .test_h2edge_attack_dec05n import errors_of, self_priority
from .test_review_attack_dec05q import head_bytes

E = h2.errors.ErrorCodes


# -- raw frames, both ways ----------------------------------------------------------------------

def informational_head(client, sid, end, fields=((b":method", b"GET"), (b":scheme", b"http"),
                                                  (b":path", b"/echo"),
                                                  (b":authority", b"localhost"))):
    """A request HEADERS that opens with ``:status: 100``, as a response's would."""
    block = client.conn.encoder.encode([(b":status", b"100"), *fields])
    frame = HeadersFrame(sid, block)
    frame.flags.add("END_HEADERS")
    if end:
        frame.flags.add("END_STREAM")
    return frame.serialize()


def plain_get(client, sid):
    block = client.conn.encoder.encode([(b":method", b"GET"), (b":scheme", b"http"),
                                        (b":path", b"/echo"), (b":authority", b"localhost")])
    frame = HeadersFrame(sid, block)
    frame.flags.add("END_HEADERS")
    frame.flags.add("END_STREAM")
    return frame.serialize()


class FrameReader:
    """The gateway's frames, parsed by hand (the client's h2 knows none of these streams)."""

    def __init__(self, sock):
        self.sock, self.buf, self.frames = sock, b"", []

    def read_until(self, done, timeout=3.0):
        deadline = time.monotonic() + timeout
        while not done(self.frames) and time.monotonic() < deadline:
            self.sock.settimeout(0.2)
            try:
                got = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not got:
                break
            self.buf += got
            while len(self.buf) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(self.buf[:9]))
                if len(self.buf) < 9 + length:
                    break
                frame.parse_body(memoryview(self.buf[9:9 + length]))
                self.frames.append(frame)
                self.buf = self.buf[9 + length:]
        return done(self.frames)

    def reset_code(self, sid):
        return next((f.error_code for f in self.frames
                     if isinstance(f, RstStreamFrame) and f.stream_id == sid), None)

    def goaway(self):
        return next(((f.error_code, f.additional_data) for f in self.frames
                     if isinstance(f, GoAwayFrame)), None)

    def status(self, sid):
        head = next((f for f in self.frames
                     if isinstance(f, HeadersFrame) and f.stream_id == sid), None)
        return None if head is None else dict(hpack.Decoder().decode(head.data))[":status"]


# -- 1. a 1xx :status HEADERS: no RST_STREAM, not counted ------------------------------------

@pytest.mark.parametrize("end", [False, True], ids=["open", "with-end-stream"])
def test_a_head_h2_closes_itself_is_reset_and_counted(launcher, upstream, end):
    gw = h2c_gateway(launcher, upstream, http2={"max_resets_per_second": 5})
    client = settled(RawH2(gw.port, validate=False))
    sids = [1, 3, 5, 7, 9, 11]      # one write: each later HEADERS drops the one before
    # Five, the budget, in one write: each reset. The sixth in one of its own: the parse of
    # a write stops at the head past the budget (521ca2b), and a cut write's resets are not
    # sent (the connection ends), so it comes alone.
    client.send_raw(b"".join(informational_head(client, sid, end) for sid in sids[:5]))
    reader = FrameReader(client.sock)
    reader.read_until(lambda frames: all(reader.reset_code(s) for s in sids[:5]))
    client.send_raw(informational_head(client, sids[5], end))
    reader.read_until(lambda frames: any(isinstance(f, GoAwayFrame) for f in frames))
    client.close()
    assert [reader.reset_code(sid) for sid in sids[:5]] == [E.PROTOCOL_ERROR] * 5, \
        reader.frames                                       # none before
    goaway = reader.goaway()            # six malformed streams: past 5 a second
    assert goaway is not None and goaway[0] == E.ENHANCE_YOUR_CALM, reader.frames
    assert b"malformed" in goaway[1], goaway
    assert wait_until(lambda: len(errors_of(gw)) >= 5, timeout=5), gw.access_lines()


@pytest.mark.parametrize("end", [False, True], ids=["open", "with-end-stream"])
def test_a_head_h2_closes_itself_counts_once_and_its_later_frames_are_taken(
        launcher, upstream, end):
    gw = h2c_gateway(launcher, upstream, http2={"max_resets_per_second": 5})
    client = settled(RawH2(gw.port, validate=False))
    sids = [1, 3, 5, 7]
    client.send_raw(b"".join(informational_head(client, sid, end) + self_priority(sid) * 3
                             for sid in sids))
    reader = FrameReader(client.sock)
    assert reader.read_until(lambda frames: all(reader.reset_code(s) is not None
                                                for s in sids)), reader.frames
    assert [reader.reset_code(sid) for sid in sids] == [E.PROTOCOL_ERROR] * 4
    # DATA the client sent on stream 1 before its RST_STREAM came; then its next request,
    # served on the same connection.
    client.send_raw(DataFrame(1, b"x").serialize() + plain_get(client, 9))
    assert reader.read_until(lambda frames: reader.status(9) is not None or reader.goaway())
    client.close()
    assert reader.goaway() is None, reader.goaway()     # 16 resets counted, or 0 (open)
    assert reader.status(9) == "200"
    assert wait_until(lambda: len(gw.access_lines()) >= 5, timeout=5)
    time.sleep(0.3)
    assert len(errors_of(gw)) == 4, errors_of(gw)       # a line each, once


# -- 2. the same HEADERS as a served stream's trailers: no RST_STREAM ---------------------------

def test_informational_trailers_reset_the_stream(launcher, upstream):
    gw = h2c_gateway(launcher, upstream)
    client = settled(RawH2(gw.port, validate=False))
    sid, head = head_bytes(client, "/slow/3", body=True)     # a POST whose body is to come
    client.send_raw(head)
    time.sleep(0.3)                                         # on its way upstream
    client.send_raw(informational_head(client, sid, False, fields=()))
    reader = FrameReader(client.sock)
    assert reader.read_until(lambda frames: reader.reset_code(sid) is not None), \
        reader.frames                                       # nothing came
    assert reader.reset_code(sid) == E.PROTOCOL_ERROR
    client.send_raw(plain_get(client, sid + 2))
    assert reader.read_until(lambda frames: reader.status(sid + 2) is not None)
    client.close()
    assert reader.goaway() is None and reader.status(sid + 2) == "200"
    assert wait_until(lambda: len(errors_of(gw)) == 1, timeout=5), gw.access_lines()
