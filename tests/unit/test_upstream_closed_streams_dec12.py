"""An upstream HTTP/2 connection's record of its ended streams (found 2026-12-07, from the h8
pass's question). h2 remembers how each of a connection's last 65,536 streams ended: one
connection per HTTP/2 target per worker held ~11.5 MB once it had carried that many requests
(20 targets, 4 workers: ~0.9 GB). It keeps the last 1,024 now, and a late header block on a
stream the gateway reset longer ago than that (trailers of a call a client gave up on) ends
that stream (RST_STREAM), as one within the record always did: without the record it was a
connection error, every other stream on the connection cut. The gateway's own state machine,
driven in memory by a real h2 server connection."""
import h2.config
import h2.connection
import h2.errors
import h2.events
from hyperframe.frame import HeadersFrame, RstStreamFrame

from gwserver.upstream.h2client import upstream_h2_state

REQUEST = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"), (b":authority", b"a")]


def connected():
    gateway = upstream_h2_state()
    server = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=False, header_encoding=None))
    gateway.initiate_connection()
    server.initiate_connection()
    server.receive_data(gateway.data_to_send())
    gateway.receive_data(server.data_to_send())
    server.receive_data(gateway.data_to_send())
    return gateway, server


def exchange(gateway, server, reset=False):
    sid = gateway.get_next_available_stream_id()
    gateway.send_headers(sid, REQUEST, end_stream=True)
    server.receive_data(gateway.data_to_send())
    if reset:
        gateway.reset_stream(sid)
        server.receive_data(gateway.data_to_send())
    else:
        server.send_headers(sid, [(b":status", b"200")], end_stream=True)
        gateway.receive_data(server.data_to_send())
    return sid


def test_the_record_of_ended_streams_is_bounded():
    gateway, server = connected()
    for _ in range(5000):
        exchange(gateway, server)
    assert len(gateway._closed_streams) <= 1024       # before: 5,000 (up to 65,536)


def test_late_trailers_on_a_stream_reset_long_ago_end_that_stream_only():
    gateway, server = connected()
    gone = exchange(gateway, server, reset=True)
    for _ in range(2000):
        exchange(gateway, server)
    open_sid = gateway.get_next_available_stream_id()
    gateway.send_headers(open_sid, REQUEST, end_stream=True)
    server.receive_data(gateway.data_to_send())
    late = HeadersFrame(gone)
    late.data = server.encoder.encode([(b"grpc-status", b"0")])     # HPACK kept in step
    late.flags.add("END_HEADERS")
    late.flags.add("END_STREAM")
    events = gateway.receive_data(late.serialize())     # before: StreamIDTooLowError
    assert events == []
    sent = gateway.data_to_send()
    rst = RstStreamFrame(gone)
    rst.error_code = h2.errors.ErrorCodes.STREAM_CLOSED
    assert sent == rst.serialize()
    # the connection goes on: the open stream gets its answer, its fields decoded aright
    server.send_headers(open_sid, [(b":status", b"200"), (b"x-after", b"1")],
                        end_stream=True)
    events = gateway.receive_data(server.data_to_send())
    answer, = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
    assert answer.stream_id == open_sid and (b"x-after", b"1") in answer.headers


# -- blocks on streams the gateway reset: weighed by what they cost (review r6's suspicion) ---

def late_block(server, sid, fields):
    block = HeadersFrame(sid)
    block.data = server.encoder.encode(fields)
    block.flags.add("END_HEADERS")
    block.flags.add("END_STREAM")
    return block.serialize()


def test_late_trailers_of_reset_calls_are_no_flood():
    """Weighed at one per 8 bytes, the 240-byte trailers (as sent) of a call the gateway had
    reset weighed 30 each: 340 cancelled calls a second spent the 10,000 a second budget
    (h2_max_empty_frames_per_second), and the connection, every call on it, was cut."""
    gateway, server = connected()
    sids = [exchange(gateway, server, reset=True) for _ in range(400)]
    gateway.empty_frames = 0
    for n, sid in enumerate(sids):
        gateway.receive_data(late_block(server, sid, [
            (b"grpc-status", b"4"), (b"grpc-message", b"deadline exceeded after %d.%03ds: the "
             b"call to the inventory service did not answer in time; " % (n % 7, n) +
             b"retry later " * 20)]))
    # ~5 a block here (hpack's Huffman decoding in Python: ~40 us a block); 16 leaves a
    # loaded host room. Before: by its bytes, ~30 a block (12,075), whatever the host.
    assert gateway.empty_frames < 400 * 16, gateway.empty_frames


def test_blocks_of_size_updates_on_a_reset_stream_still_weigh_by_their_cost():
    gateway, server = connected()
    sid = exchange(gateway, server, reset=True)
    gateway.empty_frames = 0
    block = HeadersFrame(sid)
    block.data = b"\x20" * 16000 + server.encoder.encode([(b"x", b"1")])  # size updates
    block.flags.add("END_HEADERS")
    gateway.receive_data(block.serialize())
    assert gateway.empty_frames > 500, gateway.empty_frames       # ~1 us a byte: ~16 ms
