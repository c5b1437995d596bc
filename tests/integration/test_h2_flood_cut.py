"""A read of many tiny HTTP/2 frames stops being parsed once the second's budget is past:
counted only after the whole read, a 64 KiB read of 3,855 PINGs was parsed, and 3,853 of
them answered, under max_control_frames_per_second = 500."""
import socket

import pytest
from hyperframe.frame import (HeadersFrame, PingFrame, RstStreamFrame, SettingsFrame,
                              WindowUpdateFrame)

from ..conftest import gateway_conf, route
from .test_h2client_attack_dec05c import GOAWAY, RST_STREAM, read_frames

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
PING, ACK, ENHANCE_YOUR_CALM = 0x6, 0x1, 0xb


def pings_answered(port, count):
    """(PING ACKs, the GOAWAY's error code or None) for ``count`` PINGs in one write."""
    data = PREFACE + SettingsFrame(0).serialize() + \
        b"".join(PingFrame(0, b"%08d" % n).serialize() for n in range(count))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        frames, _ = read_frames(sock, b"", lambda frames: any(f[0] == GOAWAY for f in frames)
                                or sum(f[0] == PING for f in frames) >= count, timeout=3)
    goaway = next((f for f in frames if f[0] == GOAWAY), None)
    return (sum(f[0] == PING and f[1] & ACK for f in frames),
            None if goaway is None else int.from_bytes(goaway[3][4:8], "big"))


@pytest.mark.parametrize("count, answered, code", [(3855, 499, ENHANCE_YOUR_CALM),
                                                   (499, 499, None)],
                         ids=["64KiB-of-pings", "within-the-budget"])
def test_pings_past_the_budget_are_not_parsed_nor_answered(launcher, upstream, count,
                                                           answered, code):
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)],
                                       http2={"h2c": True}))
    # the client's SETTINGS counts one of the 500
    assert pings_answered(gw.port, count) == (answered, code)


UNKNOWN = b"\0\0\0\xfa\0\0\0\0\0"      # an empty frame of type 0xfa, which receivers ignore


def calmed(port, data):
    """The frames the gateway sends back for a preface, SETTINGS and ``data`` in one write,
    up to its GOAWAY, which must say ENHANCE_YOUR_CALM."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(PREFACE + SettingsFrame(0).serialize() + data)
        frames, _ = read_frames(sock, b"", lambda frames: any(f[0] == GOAWAY for f in frames),
                                timeout=3)
    goaway = next(f for f in frames if f[0] == GOAWAY)
    assert int.from_bytes(goaway[3][4:8], "big") == ENHANCE_YOUR_CALM
    return frames


@pytest.mark.parametrize("empty", [WindowUpdateFrame(0, 1).serialize(), UNKNOWN],
                         ids=["window-update", "unknown-type"])
def test_frames_past_the_empty_frame_budget_are_not_parsed(launcher, upstream, empty):
    """max_empty_frames_per_second = 100: a PING behind 150 empty frames in one write was
    parsed and answered, the budget checked only after the read."""
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)], http2={
        "h2c": True, "max_empty_frames_per_second": 100}))
    data = empty * 150 + PingFrame(0, b"behind!!").serialize()
    frames = calmed(gw.port, data)
    assert not any(f[0] == PING and f[1] & ACK for f in frames)


def test_streams_refused_past_the_budget_are_not_decoded_nor_answered(launcher, upstream):
    """6,000 requests in one write (90 KB): past max_concurrent_streams (100) h2 refuses each
    (its block decoded, a RST_STREAM queued), and each refusal counts towards
    max_resets_per_second (100). Counted after the read, 4,266 were refused and answered,
    0.16 s of the worker's CPU; the parse now stops at the 101st."""
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)],
                                       http2={"h2c": True}))
    block = b"\x82\x84\x86\x41\x01x"     # GET / over http, :authority x
    data = b"".join(HeadersFrame(sid, block, flags=["END_HEADERS", "END_STREAM"]).serialize()
                    for sid in range(1, 12000, 2))
    frames = calmed(gw.port, data)
    assert sum(f[0] == RST_STREAM for f in frames) == 100


def test_a_rapid_reset_stops_the_parse_at_the_budget(launcher, upstream):
    """2,300 requests each reset in the same 64 KB write (CVE-2023-44487 in one read): all
    were decoded and parsed (0.14 s of the worker's CPU), and a PING behind them answered,
    before the resets budget (100 a second) closed the connection as the events were
    served. The parse now stops at the 101st reset."""
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)],
                                       http2={"h2c": True}))
    before = upstream.stats()["requests"]
    block = b"\x82\x84\x86\x41\x01x"     # GET / over http, :authority x
    cancel = RstStreamFrame(1)
    cancel.error_code = 8                # CANCEL

    def reset(sid):
        cancel.stream_id = sid
        return cancel.serialize()

    data = b"".join(HeadersFrame(sid, block, flags=["END_HEADERS"]).serialize() + reset(sid)
                    for sid in range(1, 4600, 2)) + PingFrame(0, b"behind!!").serialize()
    frames = calmed(gw.port, data)
    assert not any(f[0] == PING and f[1] & ACK for f in frames)
    assert upstream.stats()["requests"] == before
