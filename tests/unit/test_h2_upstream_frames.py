"""The HTTP/2 upstream's frame reader (upstream.h2client._UpstreamFrames): only a stream's
WINDOW_UPDATE whose increment is 0 becomes a stream error; everything else h2 refuses stays
the connection's error. (Review of 04eda52: the marker also took a WINDOW_UPDATE in the
middle of a header block, which RFC 9113 6.10 makes a connection error, and one whose
reserved bit was set, which is no increment of 0.)"""
import h2.exceptions
import pytest
from hyperframe.frame import HeadersFrame

from gwserver.upstream.h2client import _UpstreamFrames, _ZeroIncrement


def window_update(stream_id, raw_increment):
    return (b"\0\0\4\x08\0" + stream_id.to_bytes(4, "big") +
            raw_increment.to_bytes(4, "big"))


def frames(*data):
    buffer = _UpstreamFrames()
    buffer.max_frame_size = 16384
    for piece in data:
        buffer.add_data(piece)
    return buffer


def test_a_streams_increment_of_0_is_marked_even_split_across_reads():
    data = window_update(1, 0)
    buffer = frames(data[:7])
    assert list(buffer) == []
    buffer.add_data(data[7:])
    frame = next(buffer)
    assert type(frame) is _ZeroIncrement and frame.stream_id == 1


def test_an_increment_of_0_inside_a_header_block_ends_the_connection():
    headers = HeadersFrame(1, b"\x88")      # no END_HEADERS: CONTINUATION must follow
    buffer = frames(headers.serialize(), window_update(1, 0))
    with pytest.raises(h2.exceptions.ProtocolError):
        list(buffer)


def test_a_reserved_bit_is_no_increment_of_0():
    with pytest.raises(h2.exceptions.ProtocolError):
        list(frames(window_update(1, 0x80000005)))


def test_on_stream_0_it_ends_the_connection():
    with pytest.raises(h2.exceptions.ProtocolError):
        list(frames(window_update(0, 0)))
