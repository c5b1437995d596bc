"""The client edge's frame reader (client.h2server._BoundedFrameBuffer, core.h2frames), pure:
attack pass dec06d (tests/integration/test_h2edge_attack_dec06d.py has the real processes).

- A SETTINGS ACK with a payload was GOAWAY PROTOCOL_ERROR: RFC 9113 6.5 makes it
  FRAME_SIZE_ERROR (h2spec 6.5.1). Both sides' readers (the HTTP/2 upstream's too).
- A CONTINUATION under 1 KiB that does not end its header block was weighed nothing (the
  CONTINUATION flood): it counts as an empty frame now; whole ones, and the block's last
  frame however small, do not.
"""
import h2.errors
import pytest
from hyperframe.frame import ContinuationFrame, HeadersFrame, SettingsFrame

from gwserver.client.h2server import _BoundedFrameBuffer
from gwserver.core.h2frames import HeaderBlockTooLarge, SettingsAckWithPayload
from gwserver.upstream.h2client import _UpstreamFrames


def frames(buffer, *data):
    buffer.max_frame_size = 16384
    for piece in data:
        buffer.add_data(piece)
    return buffer


def ack_with(payload):
    return b"\0\0" + bytes([len(payload)]) + b"\x04\x01\0\0\0\0" + payload


@pytest.mark.parametrize("reader", [lambda: _BoundedFrameBuffer(server=False),
                                    _UpstreamFrames], ids=["client-edge", "upstream"])
def test_a_settings_ack_with_a_payload_is_a_frame_size_error(reader):
    buffer = frames(reader(), ack_with(b"\0\x03\0\0\0\x64"))
    with pytest.raises(SettingsAckWithPayload) as caught:
        list(buffer)
    assert caught.value.error_code == h2.errors.ErrorCodes.FRAME_SIZE_ERROR
    # An empty ACK and a SETTINGS with entries are frames as before
    ack = SettingsFrame(0)
    ack.flags.add("ACK")
    buffer = frames(reader(), ack.serialize(), SettingsFrame(0, {3: 100}).serialize())
    assert [type(f) for f in buffer] == [SettingsFrame, SettingsFrame]


def end_headers(frame):
    frame.flags.add("END_HEADERS")
    return frame


READERS = pytest.mark.parametrize("reader", [lambda: _BoundedFrameBuffer(server=False),
                                              _UpstreamFrames], ids=["client-edge", "upstream"])


@READERS
def test_small_continuations_inside_a_block_count_as_empty_frames(reader):
    """On both sides: an HTTP/2 upstream's blocks of empty CONTINUATIONs (in 16 interim
    heads a request, each dropped) were ~1,000 frames parsed a request, weighed as none."""
    buffer = frames(reader(),
                    HeadersFrame(1, b"\x82").serialize(),
                    *[ContinuationFrame(1, b"").serialize()] * 10,
                    ContinuationFrame(1, b"x" * 1000).serialize(),
                    end_headers(ContinuationFrame(1, b"")).serialize())
    assert len(list(buffer)) == 1 and buffer.take_fragments() == 11
    assert buffer.take_fragments() == 0                 # taken once
    # Whole CONTINUATIONs (a head too large for one frame) and the block's last: none
    buffer = frames(reader(),
                    HeadersFrame(1, b"\x82" * 16384).serialize(),
                    ContinuationFrame(1, b"\x82" * 16384).serialize(),
                    end_headers(ContinuationFrame(1, b"\x82")).serialize())
    assert len(list(buffer)) == 1 and buffer.fragments == 0 and buffer.held_bytes == 0


@READERS
def test_a_header_block_is_held_to_its_bound_before_its_end(reader):
    """The upstream side held a block of 64 frames whatever their size (1 MiB a connection
    at 16 KiB frames) until its END_HEADERS; both sides refuse one past 64 KiB as sent."""
    buffer = frames(reader(), HeadersFrame(1, b"\x82" * 16384).serialize(),
                    *[ContinuationFrame(1, b"\x82" * 16384).serialize()] * 4)
    with pytest.raises(HeaderBlockTooLarge):
        list(buffer)
