"""Streams past max_concurrent_streams, through a real gateway (found on 3848364, 2026-12-05).

1. A client may open streams before it has the gateway's SETTINGS: until then the limit is
   unlimited (RFC 9113 6.5.2; Go's client assumes 1,000, and a gRPC client starting with many
   calls sends them at once). Past max_concurrent_streams, h2 raised TooManyStreamsError as a
   connection error: GOAWAY PROTOCOL_ERROR, and every stream the client had was lost, the
   ten being served included. RFC 9113 5.1.2 makes it a stream error: those past the limit
   are refused (REFUSED_STREAM: safe to send again), the others served.
2. Refused so, they count as refused streams do: a flood of them still ends in GOAWAY
   ENHANCE_YOUR_CALM.
"""
import socket

import h2.errors
from hyperframe.frame import HeadersFrame, SettingsFrame

from .test_h2client_attack_dec05c import GOAWAY, RST_STREAM, h2c_gateway, read_frames
from .test_h2edge_attack_dec05i import goaway_code, request_block

E = h2.errors.ErrorCodes
DATA = 0x0
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def open_at_once(port, count, path="/slow/1"):
    """A client that sends ``count`` requests with its preface, before it has read the
    gateway's SETTINGS; -> its socket."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(PREFACE + SettingsFrame(0).serialize() + b"".join(
        HeadersFrame(s, request_block(path), flags=["END_HEADERS", "END_STREAM"]).serialize()
        for s in range(1, 2 * count, 2)))
    return sock


def test_streams_past_the_limit_before_settings_are_refused_not_the_connection(
        launcher, upstream):
    gw = h2c_gateway(launcher, upstream, http2={"max_concurrent_streams": 10})
    sock = open_at_once(gw.port, 15)
    answered = lambda fs: {f[2] for f in fs if f[0] == DATA and f[1] & 1}   # noqa: E731
    frames, _ = read_frames(sock, b"", lambda fs: any(f[0] == GOAWAY for f in fs) or
                            len(answered(fs)) >= 10, timeout=8)
    sock.close()
    assert [goaway_code(f) for f in frames if f[0] == GOAWAY] == [], gw.log()[-1000:]
    refused = {f[2]: int.from_bytes(f[3], "big") for f in frames if f[0] == RST_STREAM}
    assert refused == {sid: E.REFUSED_STREAM for sid in range(21, 31, 2)}, refused
    assert answered(frames) == set(range(1, 21, 2))


def test_a_flood_past_the_limit_is_still_ended(launcher, upstream):
    gw = h2c_gateway(launcher, upstream, http2={"max_concurrent_streams": 10,
                                                "max_resets_per_second": 50})
    sock = open_at_once(gw.port, 200)
    frames, _ = read_frames(sock, b"", lambda fs: any(f[0] == GOAWAY for f in fs), timeout=8)
    sock.close()
    assert [goaway_code(f) for f in frames if f[0] == GOAWAY] == [E.ENHANCE_YOUR_CALM]
