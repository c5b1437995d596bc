"""Attack pass of 2026-12-05 (helper s8): a review, as an attacker, of 0d0e114 (HTTP/2 client
edge: a PRIORITY making a stream depend on itself and a stream's WINDOW_UPDATE of 0 reset
their stream instead of closing the connection; h2's own stream resets handled as malformed
streams; ``:scheme`` checked). Every test starts a real gateway (the launcher fixture) and a
real upstream and talks to them over loopback with a hand-driven HTTP/2 client
(tests/h2client.RawH2, raw frames where h2 would not send them); every wait is bounded and
every socket closed. Each test failed on 28b90d4.

1. One stream's errors were counted as many resets. A stream error is an event made while
   h2 parses a read, and the stream is reset only when the event is dispatched, after the
   whole read was parsed: 12 PRIORITY frames making one stream depend on itself (or
   WINDOW_UPDATEs of 0), 14 bytes each in one write, made 12 events, each refused the
   stream again and counted one more reset toward max_resets_per_second. A client whose
   one stream went wrong got GOAWAY ENHANCE_YOUR_CALM and lost every other stream (what
   the commit set out to stop), and one whose stream's head came in the same write wrote
   an access line ("rejected") per frame, up to the reset budget a second. A stream is
   refused once now: an error on a stream already reset in the same read is not another
   reset, nor another line. (DATA past a stream's content-length had done the same since
   its StreamMalformed came in: one event per DATA frame; tested too.)
2. (Not of 0d0e114; found while attacking its flow control.) ``http2.connection_window_size
   = 65535``, the least the setting takes and RFC 9113's own default, made every HTTP/2
   connection fail as it began: the worker asked h2 to grow the window by 0, h2 raised
   ValueError, and the connection was dropped with a traceback in the log ("unhandled
   error serving"), before its SETTINGS: no client could use HTTP/2 at all. The window is
   grown only when the setting is larger than the default now.
"""
import json
import time

import h2.errors
import pytest
from hyperframe.frame import DataFrame

from ..conftest import wait_until
from ..h2client import RawH2
from .test_h2client_attack_dec05c import h2c_gateway, settled
from .test_h2edge_attack_dec05n import errors_of, self_priority, window_update

E = h2.errors.ErrorCodes


# -- 1. one stream's errors counted as many resets ---------------------------------------------

def head_bytes(client, path, body=False):
    """A request's HEADERS frame as bytes, not sent (h2 counts the stream as opened); with
    ``body``, a POST of content-length 1 whose DATA is to come."""
    sid = client.conn.get_next_available_stream_id()
    client.conn.send_headers(sid, [(b":method", b"POST" if body else b"GET"),
                                   (b":scheme", b"http"), (b":path", path.encode()),
                                   (b":authority", b"localhost"),
                                   *([(b"content-length", b"1")] if body else [])],
                             end_stream=not body)
    return sid, client.conn.data_to_send()


def stream_errors(sid):
    return self_priority(sid) * 8 + window_update(sid, 0) * 4


def overruns(sid):
    """DATA past the content-length: h2 raises each frame's as the stream's error too."""
    return DataFrame(sid, b"xx").serialize() * 12


CASES = {"while-served": (True, stream_errors, "depends on itself"),
         "with-its-head": (False, stream_errors, "depends on itself"),
         "content-length-overrun": (True, overruns, "")}


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_streams_errors_in_one_write_are_one_reset(launcher, upstream, case):
    served, frames, reason = CASES[case]
    gw = h2c_gateway(launcher, upstream, http2={"max_resets_per_second": 5})
    client = settled(RawH2(gw.port))
    other = client.request("/slow/1")           # another tab's request, on the same connection
    time.sleep(0.2)
    victim, head = head_bytes(client, "/slow/3", frames is overruns)
    if served:
        client.send_raw(head)
        time.sleep(0.3)                         # on its way upstream
        head = b""
    client.send_raw(head + frames(victim))
    assert client.pump(lambda c: c.reset_code(victim) is not None or c.goaway(), timeout=3)
    assert client.reset_code(victim) == E.PROTOCOL_ERROR
    assert client.response(other)[::2] == (200, b"slow done")   # cut before (ENHANCE_YOUR_CALM)
    assert client.goaway() is None, client.goaway()
    after = client.request("/echo")
    assert client.response(after)[0] == 200
    client.close()
    assert wait_until(lambda: len(gw.access_lines()) >= 3, timeout=5)
    time.sleep(0.3)
    refused = errors_of(gw)
    assert len(refused) == 1, refused                           # a line per frame before
    assert reason in str(refused[0]), refused


# -- 2. the least connection_window_size dropped every connection ------------------------------

def test_the_rfc_default_connection_window_serves(launcher, upstream):
    gw = h2c_gateway(launcher, upstream, http2={"connection_window_size": 65535})
    client = settled(RawH2(gw.port))                # no SETTINGS before: the connection dropped
    for _ in range(6):                              # 96,000 bytes: the window given back
        sid = client.request("/echo", "POST", [("content-length", "16000")], b"y" * 16000)
        status, _, body, _ = client.response(sid)
        assert status == 200 and json.loads(body)["body_size"] == 16000, (status, body[:200])
    client.close()
    assert "unhandled error" not in gw.log()
