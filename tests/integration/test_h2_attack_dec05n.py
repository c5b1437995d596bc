"""Attack pass of 2026-12-05 (helper u2): the HTTP/2 client edge (client/h2server.py,
core/h2frames.py), open items of earlier passes. Each test starts a real gateway and upstream
(the launcher fixture) and talks to them over loopback with tests/h2client.RawH2, hand-built
frames where h2 would not send them; every wait is bounded and every socket closed.

1. A buggy but harmless client lost its whole connection, every stream in flight with it,
   for a frame RFC 9113 makes no connection error: a WINDOW_UPDATE with its reserved bit set
   (6.9: "MUST be ignored when receiving"; hyperframe read the bit into the increment, past
   2^31 - 1: GOAWAY PROTOCOL_ERROR), and a PRIORITY frame whose payload is not 5 bytes (6.3:
   a stream error of type FRAME_SIZE_ERROR; hyperframe refused it, h2 made it GOAWAY
   FRAME_SIZE_ERROR). The client edge's frame reader (core.h2frames) now drops the bit and
   hands on the increment (0 is the stream's error, as without the bit; the connection's
   still ends it), and makes the PRIORITY a ``PrioritySizeError``: its stream is reset with
   FRAME_SIZE_ERROR and counted as a malformed one (once, however many come in one write),
   the others go on; on a stream over, or never opened, it is dropped (and weighed as a
   control frame). The HTTP/2 upstream side, which reads through the same reader, resets
   its stream for it too (the new frame type would have been a KeyError in h2 there); the
   upstream keeps its connection error for the reserved bit (a unit test pins it).
2. A field block HPACK cannot decode (an index of 0, a truncated integer) ended the
   connection with GOAWAY PROTOCOL_ERROR; RFC 9113 4.3 says COMPRESSION_ERROR (h2spec checks
   it). core.h2fields.CachingDecoder raises it as ``BlockUndecodable``, which h2 passes
   through with its code; an HPACK bomb is still ENHANCE_YOUR_CALM.

Held up (no test here, or tested by earlier passes): the reset budget is a rate already
(``resets`` restarts each second; 32 cancels over 8 s at max_resets_per_second = 5 kept
their connection); the reset credit outlives the streams it was for, but only forgives
refusals while other reset streams are still ending (a bank of max_concurrent_streams at
most); a 100 Continue, the final head and its body go out in that order, in one write or
several, and upstreams' interim heads are not relayed; HEADERS after END_STREAM is a stream
error (STREAM_CLOSED); trailers with pseudo-headers, :authority against Host, OPTIONS * (a
400 on both protocols), CONTINUATION, SETTINGS, PING and empty DATA floods.
"""
import time

import h2.errors
import h2.events
import h2.settings
import pytest
from hyperframe.frame import HeadersFrame, PriorityFrame

from ..conftest import wait_until
from ..h2client import RawH2
from .test_h2client_attack_dec05c import h2c_gateway, settled
from .test_h2edge_attack_dec05i import closed_count

E = h2.errors.ErrorCodes
RESERVED = 0x80000000


def window_update(stream_id, raw_increment):
    return b"\0\0\4\x08\0" + stream_id.to_bytes(4, "big") + raw_increment.to_bytes(4, "big")


def priority_of_length(stream_id, length):
    """A PRIORITY frame whose payload is ``length`` bytes (RFC 9113 6.3: it must be 5)."""
    body = PriorityFrame(stream_id, depends_on=0, stream_weight=15).serialize()[9:]
    body = (body + b"\0" * length)[:length]
    return length.to_bytes(3, "big") + b"\x02\0" + stream_id.to_bytes(4, "big") + body


def errors_of(gw):
    return [line for line in gw.access_lines() if line.get("error") or line.get("rejected")]


# -- 1. a reserved bit, a PRIORITY of the wrong size: the whole connection lost ----------------

def test_a_window_updates_reserved_bit_is_ignored(launcher, upstream):
    gw = h2c_gateway(launcher, upstream)
    client = settled(RawH2(gw.port, settings={
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0}))
    other = client.request("/slow/0.8")
    sid = client.request("/bytes/1000")
    assert client.pump(lambda c: any(isinstance(e, h2.events.ResponseReceived) and
                                     e.stream_id == sid for e in c.events), timeout=3)
    time.sleep(0.2)                 # the body waits for a window the client never opened
    assert not any(isinstance(e, h2.events.DataReceived) for e in client.events)
    # A buggy client sets the bit RFC 9113 6.9 says to ignore: the increment is 1,000 (its
    # own state machine is told, the frame it would send is replaced by one with the bit)
    client.conn.increment_flow_control_window(1000, sid)
    client.conn.data_to_send()
    client.send_raw(window_update(sid, RESERVED | 1000) + window_update(0, RESERVED | 1000))
    answer = client.response(sid, timeout=3)
    assert client.goaway() is None, client.goaway()
    assert answer is not None and answer[0] == 200 and len(answer[2]) == 1000
    client.conn.increment_flow_control_window(5000, other)
    client.conn.data_to_send()
    client.send_raw(window_update(other, RESERVED | 5000))
    assert client.response(other)[::2] == (200, b"slow done")
    assert client.goaway() is None
    # The bit and an increment of 0: the stream's error, as without the bit (it held up)
    victim = client.request("/slow/3")
    time.sleep(0.3)
    client.send_raw(window_update(victim, RESERVED))
    assert client.pump(lambda c: c.reset_code(victim) is not None or c.goaway(), timeout=3)
    assert client.goaway() is None and client.reset_code(victim) == E.PROTOCOL_ERROR
    client.send_raw(window_update(0, RESERVED))     # the connection's: still its error
    assert client.pump(lambda c: c.goaway() is not None, timeout=3)
    assert client.goaway().error_code == E.PROTOCOL_ERROR
    client.close()


@pytest.mark.parametrize("length", [0, 4, 6, 300])
def test_a_priority_of_the_wrong_size_is_a_stream_error(launcher, upstream, length):
    gw = h2c_gateway(launcher, upstream, http2={"max_resets_per_second": 5})
    client = settled(RawH2(gw.port))
    other = client.request("/slow/0.8")
    victim = client.request("/slow/3")
    time.sleep(0.3)
    # (12 in one write: one stream's error, counted once against max_resets_per_second)
    client.send_raw(priority_of_length(victim, length) * 12)
    assert client.pump(lambda c: c.reset_code(victim) is not None or c.goaway(), timeout=3)
    assert client.goaway() is None, client.goaway()
    assert client.reset_code(victim) == E.FRAME_SIZE_ERROR
    assert client.response(other)[::2] == (200, b"slow done")
    # On a stream over, or one never opened (no RST_STREAM may name it): dropped
    client.send_raw(priority_of_length(other, length) + priority_of_length(101, length))
    after = client.request("/echo")
    assert client.response(after)[0] == 200
    assert client.goaway() is None and client.reset_code(other) is None
    client.close()
    assert wait_until(lambda: len(gw.access_lines()) >= 3, timeout=5)
    refused = errors_of(gw)
    assert len(refused) == 1 and "6.3" in str(refused[0]), gw.access_lines()


# -- 2. a field block HPACK cannot decode: the wrong error code --------------------------------

@pytest.mark.parametrize("where", ["request", "trailers"])
def test_a_block_hpack_cannot_decode_is_a_compression_error(launcher, upstream, where):
    gw = h2c_gateway(launcher, upstream)
    client = settled(RawH2(gw.port))
    sid = client.request("/upload", method="POST", end=False) if where == "trailers" else \
        client.conn.get_next_available_stream_id()
    # 0x80: an indexed field of index 0, which RFC 7541 6.1 makes a decoding error
    client.send_raw(HeadersFrame(sid, b"\x82\x80", flags=["END_HEADERS", "END_STREAM"])
                    .serialize())
    assert client.pump(lambda c: c.goaway() is not None, timeout=3)
    assert client.goaway().error_code == E.COMPRESSION_ERROR     # RFC 9113 4.3
    client.close()
    # still a protocol error to the metric (the error log says which)
    assert wait_until(lambda: closed_count(gw, "protocol_error") == 1, timeout=5)
