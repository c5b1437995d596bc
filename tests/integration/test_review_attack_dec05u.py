"""Attack pass of 2026-12-05 (helper s12): a review, as an attacker, of c8c2048 (HTTP/2:
``reset_refused`` queues the RST_STREAM h2 refuses to send for a stream whose HEADERS its
state machine refused, and marks the stream reset; ``reset_already`` asks h2 who closed a
stream). Every test starts a real gateway (the launcher fixture) and a real upstream and
talks to them over loopback with raw HTTP/2 frames; every wait is bounded and every socket
closed. Each test failed on c8c2048.

1. A HEADERS that opens with a 1xx ``:status``, sent again on a stream that is over (the
   one c8c2048 reset, or one the client reset itself) while h2 still keeps it (no later
   stream opened), was neither answered nor counted. h2's state machine has no transition
   for it on a closed stream: it raises a plain ProtocolError, not the StreamClosedError of
   any other HEADERS there, so the gateway made it the stream's error (StreamMalformed) and
   ``reset_already`` then dropped it, the stream being reset already. Any other frame on a
   finished stream counts toward max_empty_frames_per_second (an ordinary HEADERS there is
   answered with RST_STREAM by h2 and counted): these cost a decode, an event and a
   dispatch each, 5 bytes of header block, paced only by the header bytes (512 KiB a
   second: ~100,000 frames a second on one connection), never ENHANCE_YOUR_CALM. They are
   now counted as frames on a finished stream (dropped, as h2 drops the others there), and
   on a stream that ended by END_STREAM both ways they end the connection, as an ordinary
   HEADERS there does (RFC 9113 5.1). (Older than c8c2048: 77bc6b0's reset_already
   dropped them the same way; found beside its review.)
2. The same head with END_STREAM on a new stream, and in the same write the client's
   WINDOW_UPDATE or RST_STREAM for that stream (a client cancelling it, or opening its
   window, before any answer came): h2 refuses such a head before its state machine moves,
   so the stream was left idle, where neither frame has a transition: GOAWAY
   PROTOCOL_ERROR, every other stream of the connection lost, and this one never reset or
   logged. c8c2048 wrote the RST_STREAM by hand for such a stream, but only when its turn
   came, after the whole write was read. The stream is closed as h2 closes the same head
   without END_STREAM: the frames are taken, the stream reset, logged and counted once,
   and the connection goes on.
"""
import h2.errors
import pytest
from hyperframe.frame import GoAwayFrame, HeadersFrame, RstStreamFrame, WindowUpdateFrame

from ..conftest import wait_until
from ..h2client import RawH2
from .test_h2client_attack_dec05c import h2c_gateway, settled
from .test_h2edge_attack_dec05n import errors_of
from .test_review_attack_dec05t import FrameReader, informational_head, plain_get

E = h2.errors.ErrorCodes


def reset_by_client(sid):
    frame = RstStreamFrame(sid)
    frame.error_code = E.CANCEL
    return frame.serialize()


def window_update(sid):
    frame = WindowUpdateFrame(sid)
    frame.window_increment = 1000
    return frame.serialize()


def open_head(client, sid):
    """A POST whose body is to come: the stream stays open."""
    block = client.conn.encoder.encode([(b":method", b"POST"), (b":scheme", b"http"),
                                        (b":path", b"/echo"), (b":authority", b"localhost")])
    frame = HeadersFrame(sid, block)
    frame.flags.add("END_HEADERS")
    return frame.serialize()


# -- 1. a 1xx head again on a stream that is over: a free flood --------------------------------

@pytest.mark.parametrize("how", ["reset-by-gateway", "reset-by-client"])
def test_informational_heads_on_a_finished_stream_are_counted(launcher, upstream, how):
    gw = h2c_gateway(launcher, upstream, http2={"max_empty_frames_per_second": 100})
    client = settled(RawH2(gw.port, validate=False))
    reader = FrameReader(client.sock)
    if how == "reset-by-gateway":   # c8c2048: the RST_STREAM written by hand, the stream marked
        client.send_raw(informational_head(client, 1, False))
        assert reader.read_until(lambda frames: reader.reset_code(1) is not None)
        assert reader.reset_code(1) == E.PROTOCOL_ERROR
    else:                           # a request the client cancelled, still known to h2
        client.send_raw(open_head(client, 1) + reset_by_client(1))
    # 400 more on stream 1, no later stream opened: 5 bytes of header block each
    client.send_raw(b"".join(informational_head(client, 1, False, fields=())
                             for _ in range(400)))
    assert reader.read_until(lambda frames: reader.goaway() is not None), reader.frames
    client.close()
    code, data = reader.goaway()
    assert code == E.ENHANCE_YOUR_CALM and b"empty frame" in data, (code, data)



def test_informational_head_after_a_served_stream_ends_the_connection(launcher, upstream):
    gw = h2c_gateway(launcher, upstream)
    client = settled(RawH2(gw.port, validate=False))
    reader = FrameReader(client.sock)
    client.send_raw(plain_get(client, 1))
    assert reader.read_until(lambda frames: any(
        f.stream_id == 1 and "END_STREAM" in f.flags for f in frames
        if not isinstance(f, GoAwayFrame)))
    client.send_raw(informational_head(client, 1, False, fields=()))
    assert reader.read_until(lambda frames: reader.goaway() is not None), reader.frames
    client.close()
    assert reader.goaway()[0] == E.STREAM_CLOSED, reader.goaway()   # as any HEADERS there


# -- 2. a 1xx head with END_STREAM, then its WINDOW_UPDATE or RST_STREAM: the connection lost ----

@pytest.mark.parametrize("then", [window_update, reset_by_client], ids=["window", "reset"])
def test_frames_after_an_ended_informational_head_keep_the_connection(launcher, upstream,
                                                                     then):
    gw = h2c_gateway(launcher, upstream)
    client = settled(RawH2(gw.port, validate=False))
    reader = FrameReader(client.sock)
    client.send_raw(informational_head(client, 1, True) + then(1) + plain_get(client, 3))
    assert reader.read_until(lambda frames: reader.status(3) is not None or
                             reader.goaway() is not None), reader.frames
    client.close()
    assert reader.goaway() is None, reader.goaway()
    assert reader.status(3) == "200" and reader.reset_code(1) == E.PROTOCOL_ERROR
    assert wait_until(lambda: len(gw.access_lines()) >= 2, timeout=5), gw.access_lines()
    assert len(errors_of(gw)) == 1, errors_of(gw)
