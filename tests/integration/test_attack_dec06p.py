"""Review of the 2026-12-06 attack passes (helper w4): the HTTP/2 client edge's flood budgets
(client/h2server.py: _CountingH2, FloodCut), over h2c.

Every test starts a real gateway (the launcher fixture) and the recording upstream, and talks
to it over loopback with raw frames; every wait is bounded and every socket closed.

1. A new stream's head that h2 refuses once decoded (a 1xx ``:status`` with END_STREAM) is
   closed at once, so max_concurrent_streams bounds none of them, and each counts as a reset
   (MadeYouReset) only when the read's events are dispatched: 6,000 of them in one 60 KB
   write were all decoded (0.13 s of the worker's CPU for one write, a connection each) and a
   PING behind them answered, under max_resets_per_second = 100. The parse now stops at the
   one past the budget, as it does for refused and rapidly reset streams. (Not new in
   2616f36: the one budget its "every weighed frame stops the parse" missed.)
2. A regression of 2616f36: a header block's small CONTINUATIONs are weighed as its HEADERS
   is parsed, and a block with none was weighed too, at zero, against what the second had
   left. The first read of a second may leave less than nothing (the WINDOW_UPDATEs the last
   second's DATA frames earned, which set_caps lets in): a request alone in a later read of
   that second was cut as an empty frame flood. Each test fails on HEAD before this pass's
   fix (the second passes on 91b4933).
"""
import socket
import time

from hyperframe.frame import HeadersFrame, PingFrame, SettingsFrame, WindowUpdateFrame

from gwserver.core.h2fields import FieldEncoder

from .test_h2client_attack_dec05c import GOAWAY, h2c_gateway, read_frames
from .test_h2edge_attack_dec05i import closed_count

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
PING, ACK, ENHANCE_YOUR_CALM = 0x6, 0x1, 0xb
BEHIND = PingFrame(0, b"behind!!").serialize()
OPENED = PingFrame(0, b"opened!!").serialize()


def request_block(path="/echo"):
    return FieldEncoder().encode([(b":method", b"GET"), (b":scheme", b"http"),
                                  (b":path", path.encode()), (b":authority", b"localhost")])


def test_malformed_new_heads_stop_the_parse_at_the_reset_budget(launcher, upstream):
    gw = h2c_gateway(launcher, upstream, http2={"max_resets_per_second": 100})
    # :status 103 with END_STREAM (h2 refuses it before the stream's state moves), the first
    # one indexed so the 5,999 others are a byte of block each
    flood = HeadersFrame(1, b"\x48\x03103", flags=["END_HEADERS", "END_STREAM"]).serialize() + \
        b"".join(HeadersFrame(sid, b"\xbe", flags=["END_HEADERS", "END_STREAM"]).serialize()
                 for sid in range(3, 12_000, 2))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(PREFACE + SettingsFrame(0).serialize() + OPENED)
        frames, _ = read_frames(sock, b"", lambda frames: any(
            f[0] == PING and f[1] & ACK for f in frames), timeout=3)
        assert frames, "no PING ACK for the opening PING"
        time.sleep(0.2)                                 # its frames all in, the read done
        sock.sendall(flood + BEHIND)
        frames, _ = read_frames(sock, b"", lambda frames: any(f[0] == GOAWAY for f in frames),
                                timeout=5)
    goaway = next((f for f in frames if f[0] == GOAWAY), None)
    assert goaway is not None, frames[-5:]
    assert int.from_bytes(goaway[3][4:8], "big") == ENHANCE_YOUR_CALM
    assert not any(f[0] == PING and f[1] & ACK for f in frames), \
        "a PING behind the flood was parsed and answered"
    assert closed_count(gw, "malformed") == 1


# -- 2. a header block weighed at zero against a second's budget gone below zero ---------------

UNKNOWN = b"\0\0\0\xfa\0\0\0\0\0"      # an empty frame of type 0xfa, which receivers ignore
END_STREAM = 0x1


def test_a_request_after_a_second_carried_over_window_updates_is_served(launcher, upstream):
    """The first read of a second may hold more empty frames than the second's budget: the
    WINDOW_UPDATEs the last second's DATA frames earned (two each; set_caps). A read later
    in that second with no empty frame at all, only a new request's HEADERS, weighed its
    block's small CONTINUATIONs (none) against what was left, below zero: GOAWAY
    ENHANCE_YOUR_CALM ("empty frame flood"), where the same request was served before
    2616f36."""
    gw = h2c_gateway(launcher, upstream, http2={"max_empty_frames_per_second": 100})
    size = 2_000_000                    # ~123 DATA frames of 16 KiB: 346 empty frames allowed
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        started = time.monotonic()      # (the connection's second starts at its accept)
        sock.sendall(PREFACE + SettingsFrame(0, settings={4: 1 << 30}).serialize() +
                     WindowUpdateFrame(0, 1 << 30).serialize() +
                     HeadersFrame(1, request_block(f"/bytes/{size}"),
                                  flags=["END_HEADERS", "END_STREAM"]).serialize())
        frames, buffered = read_frames(sock, b"", lambda frames: any(
            f[0] == 0 and f[2] == 1 and f[1] & END_STREAM for f in frames), timeout=3)
        assert sum(len(f[3]) for f in frames if f[0] == 0 and f[2] == 1) == size
        assert time.monotonic() - started < 0.9, "the download took its whole second"
        time.sleep(max(0.0, started + 1.15 - time.monotonic()))     # the next second
        sock.sendall(UNKNOWN * 300)     # under the 346 the last second's DATA frames allow
        time.sleep(0.2)                 # (another read, in the same second)
        sock.sendall(HeadersFrame(3, request_block(), flags=["END_HEADERS", "END_STREAM"])
                     .serialize())
        frames, _ = read_frames(sock, buffered, lambda frames: any(
            f[0] == GOAWAY or f[2] == 3 and f[1] & END_STREAM for f in frames), timeout=3)
    goaway = next((f for f in frames if f[0] == GOAWAY), None)
    assert goaway is None, bytes(goaway[3])
    assert any(f[2] == 3 and f[1] & END_STREAM for f in frames), frames
    assert closed_count(gw, "empty_frames") == 0
