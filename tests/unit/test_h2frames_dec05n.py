"""core.h2frames and core.h2fields (attack pass dec05n, helper u2): a PRIORITY frame of the
wrong size is its stream's error (RFC 9113 6.3), on the client edge and the upstream side;
where the reader ignores a WINDOW_UPDATE's reserved bit (the client edge), the frame is what
its other 31 bits say (6.9); a block HPACK cannot decode is a COMPRESSION_ERROR (4.3). The
integration tests: tests/integration/test_h2_attack_dec05n.py."""
import h2.errors
import h2.exceptions
import pytest
from hpack.exceptions import OversizedHeaderListError
from hyperframe.frame import HeadersFrame, WindowUpdateFrame

from gwserver.client.h2server import _BoundedFrameBuffer
from gwserver.core.h2fields import BlockUndecodable, CachingDecoder
from gwserver.core.h2frames import PrioritySizeError, StreamErrorFrames, ZeroIncrement


def window_update(stream_id, raw_increment):
    return b"\0\0\4\x08\0" + stream_id.to_bytes(4, "big") + raw_increment.to_bytes(4, "big")


def priority(stream_id, length):
    return length.to_bytes(3, "big") + b"\x02\0" + stream_id.to_bytes(4, "big") + \
        b"\0" * length


def frames(kind, *data):
    buffer = kind(server=False)
    buffer.max_frame_size = 16384
    for piece in data:
        buffer.add_data(piece)
    return list(buffer)


@pytest.mark.parametrize("kind", [StreamErrorFrames, _BoundedFrameBuffer])
@pytest.mark.parametrize("length", [0, 4, 6, 1000])
def test_a_priority_of_the_wrong_size_is_its_streams_error(kind, length):
    got = frames(kind, priority(3, length), window_update(3, 7))
    assert type(got[0]) is PrioritySizeError and got[0].stream_id == 3
    assert got[0].body_len == length
    assert type(got[1]) is WindowUpdateFrame and got[1].window_increment == 7


def test_a_priority_of_the_wrong_size_split_across_reads():
    data = priority(5, 7)
    buffer = StreamErrorFrames(server=False)
    buffer.max_frame_size = 16384
    buffer.add_data(data[:12])
    assert list(buffer) == []
    buffer.add_data(data[12:])
    assert type(next(buffer)) is PrioritySizeError


def test_inside_a_header_block_it_is_still_the_connections_error():
    with pytest.raises(h2.exceptions.ProtocolError):
        frames(_BoundedFrameBuffer, HeadersFrame(1, b"\x88").serialize(), priority(1, 4))


def test_the_client_edge_ignores_a_window_updates_reserved_bit():
    got = frames(_BoundedFrameBuffer, window_update(1, 0x80000005), window_update(0, 0xFFFFFFFF),
                 window_update(3, 0x80000000))
    assert [(type(f), f.stream_id) for f in got] == [
        (WindowUpdateFrame, 1), (WindowUpdateFrame, 0), (ZeroIncrement, 3)]
    assert [f.window_increment for f in got[:2]] == [5, 0x7FFFFFFF]
    with pytest.raises(h2.exceptions.ProtocolError):
        frames(_BoundedFrameBuffer, window_update(0, 0x80000000))


def test_a_block_hpack_cannot_decode_is_a_compression_error():
    """RFC 9113 4.3: COMPRESSION_ERROR (h2 made it PROTOCOL_ERROR); an HPACK bomb is still
    the OversizedHeaderListError h2 answers ENHANCE_YOUR_CALM."""
    decoder = CachingDecoder()
    with pytest.raises(BlockUndecodable) as caught:
        decoder.decode(b"\x82\x80", raw=True)       # index 0: RFC 7541 6.1
    assert caught.value.error_code == h2.errors.ErrorCodes.COMPRESSION_ERROR
    decoder = CachingDecoder()
    decoder.max_header_list_size = 100
    with pytest.raises(OversizedHeaderListError):
        decoder.decode(b"\x00\x01a\x7f\x30" + b"b" * 200, raw=True)
    assert CachingDecoder().decode(b"\x82", raw=True) == [(b":method", b"GET")]


def test_an_upstreams_priority_of_the_wrong_size_resets_its_stream_only():
    """The upstream side reads through the same frame reader: the new frame is its stream's
    error there too (h2 has no handler for the type: it would have been a KeyError)."""
    import h2.config
    import h2.connection
    import h2.events

    from gwserver.upstream.h2client import StreamMalformed, upstream_h2_state
    gateway = upstream_h2_state()
    gateway.initiate_connection()
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False,
                                                                  header_encoding=None))
    server.initiate_connection()
    request = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
               (b":authority", b"u")]
    gateway.send_headers(1, request, end_stream=True)
    gateway.send_headers(3, request, end_stream=True)
    server.receive_data(gateway.data_to_send())
    server.send_headers(1, [(b":status", b"200")])
    events = gateway.receive_data(server.data_to_send() + priority(1, 4) + priority(9, 7))
    malformed = [e for e in events if type(e) is StreamMalformed]
    assert [e.stream_id for e in malformed] == [1, 9]
    assert not any(isinstance(e, h2.events.ConnectionTerminated) for e in events)
    resets = [e for e in server.receive_data(gateway.data_to_send())
              if isinstance(e, h2.events.StreamReset)]
    assert [(e.stream_id, e.error_code) for e in resets] == [
        (1, h2.errors.ErrorCodes.FRAME_SIZE_ERROR)]
    assert gateway.streams[3].open        # the other request goes on
