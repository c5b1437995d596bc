"""core.h2frames (review pass dec05o, helper u4): a frame whose header declares more than
max_frame_size is refused as soon as that header is in, not once the bytes it declares have
been read and held (h2's reader checked the length of whole frames only); an HTTP/2
upstream's PRIORITY of the wrong size weighs by its size against the flood budget. The
integration tests: tests/integration/test_review_attack_dec05o.py."""
import h2.exceptions
import pytest
from hyperframe.frame import PingFrame

from gwserver.client.h2server import _BoundedFrameBuffer
from gwserver.core.h2frames import StreamErrorFrames


def header(length, kind, stream_id):
    return length.to_bytes(3, "big") + bytes([kind, 0]) + stream_id.to_bytes(4, "big")


def reader(kind):
    buffer = kind(server=False)
    buffer.max_frame_size = 16384
    return buffer


@pytest.mark.parametrize("kind", [StreamErrorFrames, _BoundedFrameBuffer])
@pytest.mark.parametrize("frame_type", [0x0, 0x1, 0x2, 0x9, 0xBB])
def test_a_frame_declared_over_max_frame_size_is_refused_at_its_header(kind, frame_type):
    buffer = reader(kind)
    buffer.add_data(header((1 << 24) - 1, frame_type, 1) + b"\0" * 100)
    with pytest.raises(h2.exceptions.FrameTooLargeError, match="length 16777215, max 16384"):
        list(buffer)


def test_a_frame_of_max_frame_size_not_yet_whole_waits_for_the_rest():
    buffer = reader(StreamErrorFrames)
    buffer.add_data(header(16384, 0xBB, 1) + b"\0" * 100)
    assert list(buffer) == []
    buffer.add_data(b"\0" * (16384 - 100) + PingFrame(0, b"12345678").serialize())
    frames = list(buffer)
    assert [type(f).__name__ for f in frames] == ["ExtensionFrame", "PingFrame"]


def test_a_header_split_across_reads_is_judged_once_whole():
    buffer = reader(StreamErrorFrames)
    data = header(1 << 20, 0x0, 1)
    buffer.add_data(data[:5])
    assert list(buffer) == []
    buffer.add_data(data[5:])
    with pytest.raises(h2.exceptions.FrameTooLargeError):
        list(buffer)


def upstream_weight(payload_length):
    """empty_frames an upstream's PRIORITY of ``payload_length`` bytes on a stream never
    opened costs (the server's SETTINGS first)."""
    from hyperframe.frame import SettingsFrame

    from gwserver.upstream.h2client import upstream_h2_state
    conn = upstream_h2_state()
    conn.initiate_connection()
    conn.receive_data(SettingsFrame(0).serialize())
    before = conn.empty_frames
    conn.receive_data(header(payload_length, 0x2, 7) + b"\0" * payload_length)
    return conn.empty_frames - before


def test_an_upstreams_priority_of_the_wrong_size_is_weighed_by_its_size():
    """A 16 KiB PRIORITY (a stream's error, c617270) weighed 1 against the upstream's flood
    budget, where any other frame with nothing to relay weighs one more per KiB: an upstream
    had 17 times the junk bytes a second through the parser."""
    assert upstream_weight(4) == 1
    assert upstream_weight(16000) == 1 + (16000 >> 10)
