"""Review of 5220440 (HTTP/2 client edge) and 6cb7882 (preflights, redis URLs) as an
attacker and as a legitimate client (helper h10, 2026-12-05). Every test starts real
processes and talks to them over loopback; each failed on the code before its fix.

1. A reload's drain cut a busy HTTP/2 client's calls: the gateway's GOAWAY (NO_ERROR, a
   reload) names the last stream it took; a client that has not read it yet goes on
   opening streams, as many as its max_concurrent_streams lets it have open (RFC 9113
   6.8's race: it learns of their refusal only after the GOAWAY, which comes first). Past
   the first 100 of them, 5220440 counted each refused one as a reset: with
   max_concurrent_streams = 500 (a gRPC deployment's), a client with 300 calls opened in
   that race got GOAWAY ENHANCE_YOUR_CALM and its call still being drained was cut, where
   before all 300 were refused (safe to send again) and the call was answered. The race
   allowance is now the connection's max_concurrent_streams (100 at least).
2. A client that cancels calls and sends new ones at once (a gRPC client whose calls' deadline
   passed, a proxy whose users went away: RST_STREAM and HEADERS in one write) was counted
   twice for each: the reset, and the new stream the gateway refused because the one reset
   was still ending (still counted toward max_concurrent_streams, though the client's slot
   was free, RFC 9113 5.1.2). 60 cancelled of 100 calls in flight and 60 new ones were 120
   "resets" past max_resets_per_second = 100: GOAWAY ENHANCE_YOUR_CALM and the 40 other
   calls cut, where before 5220440 the new ones were only refused. A stream refused in the
   slot of one the client reset that is still ending is not counted again (as many as
   max_concurrent_streams); one opened past the limit with no such slot still is.
3. (pure code: tests/unit/test_review_attack_dec05l.py) a redis password holding "?db=" or
   "?client_name=" was shown whole by the masking 6cb7882 changed.
"""
import signal
import time

import h2.errors
import pytest

from .test_h2client_attack_dec05c import GOAWAY, RST_STREAM, h2c_gateway, read_frames, settled
from .test_h2edge_attack_dec05i import goaway_code, request_block
from ..h2client import RawH2
from hyperframe.frame import HeadersFrame

E = h2.errors.ErrorCodes
DATA = 0x0


# -- 1. a reload's drain and a busy client's race -----------------------------------------------

@pytest.mark.parametrize("max_streams, calls", [(500, 300), (3000, 1500)])
def test_streams_opened_in_a_reloads_goaway_race_are_refused_not_punished(launcher, upstream,
                                                                          max_streams, calls):
    """(3000, 1500): a cap of 1,000 streams on the race (0065081) cut such a client, found
    by the review of 2026-12-05 (test_review_attack_dec05n.py, defect 1)."""
    gw = h2c_gateway(launcher, upstream, http2={"max_concurrent_streams": max_streams,
                                                "max_resets_per_second": 100},
                     server={"graceful_timeout": 10.0})
    client = settled(RawH2(gw.port))
    slow = client.request("/slow/2")            # a call the drain must let finish
    time.sleep(0.3)
    gw.proc.send_signal(signal.SIGHUP)          # a reload: the old worker drains
    sock = client.sock
    frames, buffered = read_frames(sock, b"", lambda fs: any(f[0] == GOAWAY for f in fs),
                                   timeout=6)
    goaway = next(f for f in frames if f[0] == GOAWAY)
    assert goaway_code(goaway) == E.NO_ERROR
    # calls the client opened before it read the GOAWAY: within its streams
    block = request_block()
    late = range(slow + 2, slow + 2 + 2 * calls, 2)
    sock.sendall(b"".join(HeadersFrame(s, block, flags=["END_HEADERS", "END_STREAM"])
                          .serialize() for s in late))
    frames, buffered = read_frames(sock, buffered, lambda fs: any(
        f[0] == GOAWAY or f[0] == DATA and f[2] == slow and f[1] & 1 for f in fs), timeout=8)
    client.close()
    calm = [f for f in frames if f[0] == GOAWAY]
    assert not calm, goaway_code(calm[0])       # ENHANCE_YOUR_CALM before, the call cut
    refused = {f[2] for f in frames if f[0] == RST_STREAM}
    assert refused == set(late)
    assert any(f[0] == DATA and f[2] == slow and f[3] == b"slow done" for f in frames)


# -- 2. a cancelled call's slot, taken again at once --------------------------------------------

def test_a_stream_opened_in_a_cancelled_ones_slot_is_not_counted_twice(launcher, upstream):
    gw = h2c_gateway(launcher, upstream, http2={"max_resets_per_second": 100})
    client = settled(RawH2(gw.port))
    calls = [client.request("/slow/1.5") for _ in range(100)]     # max_concurrent_streams
    time.sleep(0.5)
    fields = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/echo"),
              (b":authority", b"localhost")]
    new = []
    for sid in calls[:60]:          # cancelled, and a new call in its place, in one write
        client.conn.reset_stream(sid, E.CANCEL)
        new.append(client.conn.get_next_available_stream_id())
        client.conn.send_headers(new[-1], fields, end_stream=True)
    client.flush()
    assert client.pump(lambda c: c.goaway() is not None or all(
        c.ended(s) for s in calls[60:]), timeout=6)
    assert client.goaway() is None, client.goaway()     # ENHANCE_YOUR_CALM before
    assert all(client.response(s)[::2] == (200, b"slow done") for s in calls[60:])
    assert all(client.ended(s) or client.reset_code(s) == E.REFUSED_STREAM for s in new)
    client.close()
