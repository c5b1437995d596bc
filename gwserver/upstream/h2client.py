"""HTTP/2 to upstreams: one multiplexed connection per target per worker, driven by ``h2``.

``h2`` is a sans-I/O state machine (framing, HPACK, stream states, flow-control windows); this
module does its I/O with gevent: one reader greenlet per connection feeds received bytes to the
state machine and routes the events to per-stream queues; writers take a lock, let ``h2``
produce frames and send them. Request bodies respect the peer's flow-control windows (a writer
waits for WINDOW_UPDATE); received DATA gives the connection's window back as it arrives, and
its stream's as the answer is relayed (UNRELAYED_BUDGET).

Cleartext upstreams use prior knowledge (RFC 9113 3.3); https:// upstreams negotiate "h2" by
ALPN. A connection that fails, or runs out of stream ids, is replaced for the next request;
streams on it end with UpstreamError.
"""
import logging
import socket
import ssl
import time

import gevent
import gevent.event
import gevent.lock
import gevent.queue
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import (DataFrame, GoAwayFrame, HeadersFrame, PriorityFrame,
                              RstStreamFrame, SettingsFrame, WindowUpdateFrame)

from ..core.h2fields import CachingDecoder, FieldEncoder
from ..core.h2frames import BoundedBlocks, PrioritySizeError, ZeroIncrement
from ..core.h2limits import (CLOSED_STREAMS, SMALL_DATA, WindowPacer, fed_from_window, silly,
                             tiny_update)
from ..core.headers import TRAILER_FORBIDDEN, first_bad_field, length_over_max
from ..core.throttledlog import throttled_log
from ..files import client_tls_problem
from ..errors import (HeadersTooLarge, OutOfFiles, UpstreamBusy, UpstreamConnectError,
                      UpstreamConnectTimeout, UpstreamError, UpstreamTimeout,
                      UpstreamTLSFilesError)
from ..net.sockets import (OPENING_SLACK, RECV_SIZE, PlainSocket, failure_reason,
                           handshake_within, opening_within, out_of_files)
from .clienttls import client_context

log = logging.getLogger("gwserver.h2")

MAX_STREAMS_PER_CONNECTION = 2 ** 30     # stream ids are 31-bit and odd: renew before the end
# The connection's receive window is given back as DATA arrives, each stream's only as its
# client takes the answer: an answer waiting for a slow client holds its stream's window
# (1 MiB), never the connection's, which one client's stalled or trickled downloads held for
# everyone's on that upstream. What waits so is bounded per connection: past UNRELAYED_BUDGET
# the streams holding most are reset (H2Connection._shed; Envoy's overload manager resets its
# largest streams the same way).
UNRELAYED_BUDGET = 32 << 20
HIGH_WATER, LOW_WATER = 1 << 20, 256 << 10   # bytes queued for the writer: senders wait above
WRITE_PIECE = 256 << 10     # the writer's deadline is per piece: progress, not the whole queue
MAX_INTERIM_HEADS = 16      # 1xx heads before the answer (HTTP/1.1's are bounded by the head size)
# Frames with nothing to relay (WINDOW_UPDATE, PING, SETTINGS, GOAWAY, ALTSVC, empty DATA,
# unknown types, HEADERS or RST_STREAM on finished streams) an upstream may send in a second, each
# weighing one more per KiB of payload (a SETTINGS frame: per 16 entries), plus two per DATA
# frame sent to it (the WINDOW_UPDATEs an upload earns). Past it the connection is a flood that
# takes the worker's CPU from every other request: it ends (GOAWAY ENHANCE_YOUR_CALM). DATA is
# bounded by the windows, but one under SMALL_DATA bytes that does not end its stream costs
# about what an empty frame does (an answer sent a byte per frame took a worker's whole core):
# past the same number of those in a second, the connection is not read until the second is
# over. Paced, not cut: a gRPC server streaming small messages sends one frame per message.
# DATA for a stream the gateway reset is not counted (a client that hangs up on a stream of
# small messages leaves up to a window of them in flight). The client side's budget is the
# setting http2.max_empty_frames_per_second; this one is upstream_defaults'
# h2_max_empty_frames_per_second (max_empty_frames below).
_RELAYED = frozenset((
    h2.events.ResponseReceived, h2.events.InformationalResponseReceived,
    h2.events.TrailersReceived, h2.events.StreamEnded, h2.events.StreamReset))
# A header block with nothing to relay (on a stream the gateway reset: decoded only to keep
# HPACK's table in step) weighs one more per BLOCK_SECONDS its decoding took (what a frame
# weighing one costs: a WINDOW_UPDATE's parse is ~15 us). Weighed by the KiB as other frames
# are, 64 KiB blocks of size updates (~1 us a byte) on a stream the gateway had reset kept the
# worker's core busy for as long as they came; weighed by their bytes, the late trailers of
# a few hundred calls a second the gateway had reset (their clients gone) cut the connection
# as a flood. A block decoded before costs nothing (CachingDecoder.last_cost). (The client
# edge paces its header bytes: client.h2server's MAX_HEADER_BYTES_PER_SECOND.)
BLOCK_SECONDS = 12e-6
# ... and never more than one per BLOCK_BYTES of it as sent (1.5 us a byte: size updates
# take ~1 us a byte to decode, one-byte indexed fields ~1.7, weighed ~13% light). The time
# is the wall clock's: a worker preempted, stopped by its CPU quota or collecting garbage
# while it decoded a 240-byte block had that block weigh ~4,000 (50 ms), and an upstream's
# late trailers on a loaded host were cut as a flood.
BLOCK_BYTES = 8


def block_weight(decoder, frame):
    """What a header block relayed nowhere weighs beyond its frame (see BLOCK_SECONDS)."""
    return min(int(decoder.last_cost / BLOCK_SECONDS), len(frame.data) // BLOCK_BYTES)

# The 1xx heads of one answer, as sent, as HTTP/1.1's count toward max_response_head: sixteen
# (MAX_INTERIM_HEADS) 64 KiB 103 heads of size updates cost 1.3 s of the worker a request.
MAX_INTERIM_BYTES = 64 << 10


class StreamMalformed:
    """The event ``_UpstreamH2`` makes of an answer h2 refused (RFC 9113 8.1.1: a malformed
    message is a stream error): the stream is reset, its request gets ``error``."""

    def __init__(self, stream_id, error):
        self.stream_id, self.error = stream_id, error


class StreamNotOpened(UpstreamError):
    """The connection ended (or began to drain) before this request's stream was opened:
    nothing was sent, so another connection may take it."""


class StreamRefused(StreamNotOpened):
    """The upstream did not process this stream (RFC 9113 8.7): a REFUSED_STREAM reset, or a
    stream past a GOAWAY's last_stream_id. A request whose body the gateway still holds may
    go to another connection, whatever its method."""


# The largest request head (as RFC 9113 6.5.2 counts it) sent before the upstream's first
# SETTINGS say its limit: well under what servers say (Envoy's 60 KiB, h2's 64, Go's 1 MiB).
UNSETTLED_HEAD = 16384


class RequestHeadTooLarge(HeadersTooLarge):
    """A request head over the upstream's SETTINGS_MAX_HEADER_LIST_SIZE, as RFC 9113 6.5.2
    counts a field list (name, value and 32 bytes a field): not sent. Sent, an upstream that
    holds its decoder to the setting (h2's: hypercorn's) ended the connection, every other
    request on it failed by one client's 60 KB of headers; a 431 for that request alone, as
    the upstream would answer it, and no failure of the target's (nothing reached it)."""
    public = "the request head is larger than the upstream takes"
    unsent = True


class StreamBroken(UpstreamError):
    """The stream was reset, or its connection failed, before the answer's head: the
    ``reset`` event of a route's retry policy, as a connection closed before an answer is
    on HTTP/1.1 upstreams."""


# A stream's WINDOW_UPDATE of 0 is that stream's error; a header block is held to 64 KiB
# and its small CONTINUATIONs weighed, as the client edge's (core.h2frames)
_ZeroIncrement, _UpstreamFrames = ZeroIncrement, BoundedBlocks


def upstream_h2_state():
    """The h2 state machine of a connection to an upstream, before its preface (the health
    check's probe speaks through one too: it must read an answer as the proxy reads it)."""
    conn = _UpstreamH2(h2.config.H2Configuration(
        client_side=True, header_encoding=None, validate_inbound_headers=True))
    conn.local_settings = h2.settings.Settings(client=True, initial_values={
        h2.settings.SettingCodes.ENABLE_PUSH: 0,
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20,
        # The decoder's bound, said: a head past it ends the connection (the HPACK table
        # would be out of step), every stream on it; an upstream that reads the setting (Go's
        # and grpc-go's servers) fails that one stream instead.
        h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: conn.DEFAULT_MAX_HEADER_LIST_SIZE})
    # hpack's table search and Python Huffman coding cost more CPU than the rest of a gRPC
    # call's framing (client.h2server uses the same two).
    conn.encoder = FieldEncoder()
    conn.decoder = CachingDecoder()
    conn.decoder.max_header_list_size = conn.DEFAULT_MAX_HEADER_LIST_SIZE
    return conn


class _UpstreamH2(h2.connection.H2Connection):
    """h2, with two changes an upstream connection needs; both override h2's
    ``_receive_frame`` (private since h2 2.0, the same through 4.x; the GOAWAY and flood tests
    in test_h2_upstream_streams.py fail if it changes).
    - h2 closes its state machine on any GOAWAY, so the streams a graceful one lets finish
      (nginx after keepalive_requests, gRPC's MAX_CONNECTION_AGE, a reload) could not receive
      their answers. Here a GOAWAY is only reported (ConnectionTerminated); H2Connection stops
      opening streams, fails those past last_stream_id and lets the others finish.
    - Frames with nothing to relay are weighed (``empty_frames``), and DATA frames sent
      counted (``data_frames_sent``), for the flood budget (see SMALL_DATA).
    - A malformed answer (fields h2 refuses once the block is decoded, a body longer or
      shorter than its content-length, DATA before the head) ends its stream, not the
      connection: h2 raises a
      ProtocolError for either, which failed every other request on the connection
      (RFC 9113 8.1.1 makes it a stream error; so does 5.3.1 a PRIORITY frame that makes a
      stream depend on itself, 6.3 one whose payload is not 5 bytes, and 6.9 a stream's
      WINDOW_UPDATE of 0, which h2 raises too).
      ``StreamMalformed`` tells the stream's reader; a block HPACK could not decode still
      ends the connection (the dynamic table would be out of step)."""

    empty_frames = small_data = data_frames_sent = 0
    last_update_tiny = False        # the last WINDOW_UPDATE was tiny (core.h2limits)

    # How its last streams ended (h2's _closed_streams), per HTTP/2 target and worker. A
    # header block on a stream ended before them is that stream's error (_forgotten).
    MAX_CLOSED_STREAMS = CLOSED_STREAMS

    def __init__(self, config):
        super().__init__(config)
        self.incoming_buffer = _UpstreamFrames()

    def send_data(self, *args, **kwargs):
        self.data_frames_sent += 1
        return super().send_data(*args, **kwargs)

    def refill_connection_window(self):
        """After a read: the connection's receive window back to full, for every DATA frame
        received, whoever reads it (UNRELAYED_BUDGET), once a sixteenth of it is used. h2's
        own accounting (``process_bytes``) hands back half a window at a time, and held back
        the rest of what a finished burst used: an upstream with nothing more to send on the
        streams that used it could send nothing on a new one either."""
        manager = self._inbound_flow_control_window_manager
        gap = manager.max_window_size - manager.current_window_size
        if gap >= manager.max_window_size // 16:
            manager._bytes_processed = 0        # (all of it is in the gap)
            self.increment_flow_control_window(gap)

    def acknowledge_stream_data(self, size, stream_id):
        """The stream's share of ``acknowledge_received_data``: its answer relayed."""
        stream = self.streams.get(stream_id)
        if stream is not None and stream.open:
            self._prepare_for_sending(stream.acknowledge_received_data(size))

    def _receive_frame(self, frame):
        if isinstance(frame, DataFrame) and self._awaits_head(frame.stream_id):
            return self._data_before_head(frame)
        if isinstance(frame, DataFrame) and frame.flow_controlled_length:
            try:
                events = super()._receive_frame(frame)  # bounded by the windows (see above)
            except h2.exceptions.InvalidBodyLengthError as exc:
                # Counted against the connection's window before the stream refused it.
                increment = self._inbound_flow_control_window_manager.process_bytes(
                    frame.flow_controlled_length)
                if increment:
                    self.increment_flow_control_window(increment)
                return self._malformed(frame.stream_id, exc)
            if events and len(frame.data) < SMALL_DATA and "END_STREAM" not in frame.flags:
                self.small_data += 1        # to a stream still open: paced (see above)
            return events
        if type(frame) is WindowUpdateFrame:
            self.last_update_tiny = tiny_update(frame.window_increment,
                                                self.remote_settings.initial_window_size)
        if isinstance(frame, HeadersFrame) and frame.stream_id in self.streams:
            decoded = self.decoder.blocks
            # (h2 takes a trailer block's content-length, none, for the body's: _length_unmet)
            expected = self.streams[frame.stream_id]._expected_content_length
            try:
                events = super()._receive_frame(frame)
            except h2.exceptions.StreamClosedError:
                raise       # HEADERS on a stream that ended: a connection error (RFC 9113 5.1)
            except h2.exceptions.ProtocolError as exc:
                if self.decoder.blocks == decoded:
                    raise               # HPACK failed: a connection error
                # (decoded and relayed nowhere: a 1xx head on a stream the gateway reset
                # ends here, and weighs as any block on such a stream: block_weight)
                self.empty_frames += block_weight(self.decoder, frame)
                return self._malformed(frame.stream_id, exc)
            unmet = self._length_unmet(frame.stream_id, events, expected)
            if unmet is not None:
                return self._malformed(frame.stream_id, h2.exceptions.ProtocolError(
                    f"a header block ended the stream after {unmet[1]} body bytes, its "
                    f"content-length {unmet[0]}"))
        elif type(frame) is _ZeroIncrement:
            return self._malformed(frame.stream_id, h2.exceptions.ProtocolError(
                f"stream {frame.stream_id}: WINDOW_UPDATE of 0"))
        elif type(frame) is PrioritySizeError:
            # RFC 9113 6.3: a stream error (core.h2frames), not one of h2's frame types;
            # weighed by its size as any frame with nothing to relay is (16 KiB: 17, not 1)
            self.empty_frames += frame.body_len >> 10
            return self._malformed(frame.stream_id, h2.exceptions.ProtocolError(
                f"stream {frame.stream_id}: PRIORITY of {frame.body_len} bytes, not 5"),
                h2.errors.ErrorCodes.FRAME_SIZE_ERROR)
        elif isinstance(frame, PriorityFrame) and frame.depends_on == frame.stream_id:
            # RFC 9113 5.3.1: a stream error, which h2 raises as the connection's
            return self._malformed(frame.stream_id, h2.exceptions.ProtocolError(
                f"stream {frame.stream_id} depends on itself"))
        elif isinstance(frame, DataFrame):
            # An empty one (weighed below): its END_STREAM may end an answer short of its
            # content-length, malformed as above, which h2 raises as a connection's error.
            try:
                events = super()._receive_frame(frame)
            except h2.exceptions.InvalidBodyLengthError as exc:
                return self._malformed(frame.stream_id, exc)
        elif isinstance(frame, HeadersFrame):
            try:
                events = super()._receive_frame(frame)
            except h2.exceptions.StreamIDTooLowError:
                events = self._forgotten(frame.stream_id)
        else:
            events = self._goaway(frame) if isinstance(frame, GoAwayFrame) else \
                super()._receive_frame(frame)
        for event in events:
            if type(event) in _RELAYED:
                if type(event) is h2.events.InformationalResponseReceived:
                    event.block_size = len(frame.data)      # (MAX_INTERIM_BYTES)
                return events
        if isinstance(frame, HeadersFrame):
            self.empty_frames += 1 + block_weight(self.decoder, frame)
            return events
        # Nothing to relay: one (a WINDOW_UPDATE's parse, 15 us here), and one more per KiB
        # of payload (a GOAWAY's debug data). A SETTINGS frame costs three, and one more per
        # 16 entries: 2,730 of them (16 KiB) take 1.6 ms to parse and answer.
        if isinstance(frame, SettingsFrame):
            self.empty_frames += 3 + frame.body_len // 96
        else:
            self.empty_frames += 1 + (getattr(frame, "body_len", 0) >> 10)
        return events

    def _forgotten(self, stream_id):
        """A header block (decoded: HPACK is in step) on one of our streams that ended before
        the last MAX_CLOSED_STREAMS, so h2 cannot tell a reset one from one that ended: late
        trailers of a call the gateway reset (its client left) are the likely kind, that
        stream's error (RST_STREAM), as h2 makes them within the record. Raised, as h2 does
        for what it cannot place, it cut every other stream on the connection."""
        if stream_id % 2 == 0 or stream_id > self.highest_outbound_stream_id:
            raise h2.exceptions.ProtocolError(f"HEADERS on stream {stream_id}, never opened")
        frame = RstStreamFrame(stream_id)
        frame.error_code = h2.errors.ErrorCodes.STREAM_CLOSED
        self._prepare_for_sending([frame])
        return []

    def _length_unmet(self, stream_id, events, expected):
        """(content-length, body bytes) when a header block ends the stream short of the
        content-length (RFC 9113 8.1.1: malformed, as nghttp2 has it), else None. h2 checks
        the length only as DATA comes, and a trailer block replaces the length it expects
        with the trailers' (``expected``: the one before it). Relayed, an HTTP/1.1 client got
        "content-length: 5", no body and a close, an access line of 200 (a head that ended
        the stream); one that sent "TE: trailers" a whole chunked answer, the body cut short
        (trailers that ended it). A HEAD's answer, a 204's and a 304's have no body, whatever
        their content-length says (h2 held an empty DATA that ends a 304 to it)."""
        stream = self.streams[stream_id]
        for event in events:
            if type(event) is h2.events.ResponseReceived:
                if stream._expected_content_length is not None and \
                        dict(event.headers).get(b":status") in (b"204", b"304"):
                    stream._expected_content_length = 0     # (h2 does so for a HEAD's)
                expected = stream._expected_content_length
            elif type(event) is h2.events.TrailersReceived:
                stream._expected_content_length = expected
            else:
                continue
            if event.stream_ended and expected is not None and \
                    stream._actual_content_length != expected:
                return expected, stream._actual_content_length
        return None

    def _awaits_head(self, stream_id):
        """Is the stream open, its answer's head not come yet?"""
        stream = self.streams.get(stream_id)
        return stream is not None and not stream.closed and \
            not stream.state_machine.headers_received

    def _data_before_head(self, frame):
        """DATA before the answer's head: a malformed message (RFC 9113 8.1), its stream's
        error as nghttp2 makes it. h2 raised it as the connection's (every other answer on
        it was cut) and closed the stream unreset, so it is not handed to h2: its bytes
        count against the connection's window (a FlowControlError past it stays the
        connection's) and are given back at once."""
        manager = self._inbound_flow_control_window_manager
        manager.window_consumed(frame.flow_controlled_length)
        increment = manager.process_bytes(frame.flow_controlled_length)
        if increment:
            self.increment_flow_control_window(increment)
        return self._malformed(frame.stream_id, h2.exceptions.ProtocolError(
            f"stream {frame.stream_id}: DATA before the answer's head"))

    def _malformed(self, stream_id, exc, code=h2.errors.ErrorCodes.PROTOCOL_ERROR):
        self.empty_frames += 1          # nothing relayed: a flood of them is a flood
        try:
            self.reset_stream(stream_id, code)
        except h2.exceptions.ProtocolError:
            pass                        # closed already: nothing to reset
        return [StreamMalformed(stream_id, exc)]

    @staticmethod
    def _goaway(frame):
        event = h2.events.ConnectionTerminated()
        try:
            event.error_code = h2.errors.ErrorCodes(frame.error_code)
        except ValueError:
            event.error_code = frame.error_code
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [event]


class _Stream:
    __slots__ = ("events", "window_open", "ended_by", "sent_at", "pending", "awaiting_client",
                 "unread", "opened")

    def __init__(self):
        self.events = gevent.queue.Queue()
        self.window_open = gevent.event.Event()
        self.ended_by = None        # the error its end put on events, for a sender to raise
        self.sent_at = 0.0          # time.monotonic() of the last piece of body sent
        # time.monotonic() its head went out: the upstream has the request from then (the
        # wait for a free stream of the connection before it is the gateway's)
        self.opened = 0.0
        self.pending = 0            # body bytes to send while waiting for the connection's window
        # The sender waits for the client's next piece of body: the client's time, bounded
        # by client_body_timeout, not the upstream's (StreamResponse._next)
        self.awaiting_client = False
        # Answer bytes received and not yet taken by the reader, relayed to the client
        # (H2Connection.unrelayed sums them)
        self.unread = 0

    def end(self, error):
        """The stream ends with ``error``: its reader raises it, a sender waiting for a window
        wakes (and raises it too)."""
        self.ended_by = error
        self.events.put(error)
        self.window_open.set()


class H2Connection:
    """One multiplexed connection. Frames of every stream share its socket, so one greenlet
    writes it: a request greenlet that is killed (its client reset, its deadline ran out)
    while a write waited would leave half a frame on the wire, and the next stream's frames
    would land inside it (another client's headers in this one's body). ``_flush`` only
    queues what h2 produced; the writer sends it, within ``write_timeout``, and a write that
    fails or stalls fails the whole connection. No lock is held across socket I/O."""

    def __init__(self, target, connect_timeout, tls_context, server_name, write_timeout,
                 max_empty_frames=10_000, max_head=65536):
        self.target = target
        self.max_empty_frames = max_empty_frames    # a second's budget: see SMALL_DATA
        self.max_head = max_head        # max_response_head: StreamResponse.head
        begun = time.monotonic()
        try:
            with opening_within(connect_timeout, target.host):      # the name's lookup too
                sock = socket.create_connection((target.host, target.port),
                                                timeout=connect_timeout)
        except socket.timeout:
            raise UpstreamConnectTimeout(f"connect to {target.url} timed out") from None
        except OSError as exc:
            if out_of_files(exc):
                raise OutOfFiles.connecting_to(target.url) from None     # no target's fault
            raise UpstreamConnectError(f"cannot connect to {target.url}: "
                                       f"{failure_reason(exc)}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if target.scheme == "https":
            try:
                # As a whole, not read by read; and within what the lookup and the TCP
                # connect left of the connect timeout (a timeout of its own, the whole
                # connect took twice timeouts.connect: HTTP/1.1's is held to it once)
                left = max(connect_timeout - (time.monotonic() - begun), 0.0)
                with handshake_within(left):
                    sock = tls_context.wrap_socket(sock,
                                                   server_hostname=server_name or target.host)
            except socket.timeout:
                sock.close()
                raise UpstreamConnectTimeout(f"TLS handshake with {target.url} took over "
                                             f"{connect_timeout:g}s") from None
            except (ssl.SSLError, OSError) as exc:
                sock.close()
                raise UpstreamConnectError(f"TLS to {target.url} failed: {exc}") from None
            if sock.selected_alpn_protocol() != "h2":
                sock.close()
                raise UpstreamConnectError(f"{target.url} does not speak h2 (ALPN)")
        sock.settimeout(None)
        self.sock = sock
        self.conn = upstream_h2_state()
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(1 << 24)     # connection-level receive window
        self.lock = gevent.lock.Semaphore()
        self.stream_freed = gevent.event.Event()    # for requests waiting for a stream slot
        self.streams = {}
        self.pacer = WindowPacer()
        self.starved = {}           # stream id -> _Stream whose body waits for the connection's
        #                             window only, in the order they began to wait
        self.closed = self.shut = False     # shut: the socket is closed too
        self.unrelayed = 0          # answer bytes received, not yet relayed (UNRELAYED_BUDGET)
        self.draining = False       # a GOAWAY came: no new streams; the rest finish
        self.idle_since = time.monotonic()      # its last stream ended then (H2Pools)
        # Until the upstream's first SETTINGS, its stream limit is unknown: one stream at a
        # time (a burst of requests on a new connection would pass a limit of, say, 3).
        self.settled = False
        self.error = None
        self.write_timeout = write_timeout
        self.outbox = []
        self.queued = 0             # bytes in the outbox
        self.drained = gevent.event.Event()     # the outbox went under LOW_WATER
        self.writing = False
        self.wake_writer = gevent.event.Event()
        # TLS records cannot be written in part by a non-blocking send: the writer does them.
        self.raw = sock._sock if type(sock) is PlainSocket else None
        self.counted_since = time.monotonic()   # the flood budget's second
        self._flush()
        self.writer = gevent.spawn(self._write_loop)
        self.reader = gevent.spawn(self._read_loop)

    @property
    def usable(self):
        return not self.closed and not self.draining and \
            self.conn.highest_outbound_stream_id < MAX_STREAMS_PER_CONNECTION

    def _flush(self):
        """Send what h2 produced without waiting, or queue it for the writer (under the lock;
        never blocks, so never leaves a frame half written)."""
        data = self.conn.data_to_send()
        if not data:
            return
        if self.raw is not None and not self.outbox and not self.writing:
            try:            # what the kernel takes at once: no switch, no greenlet hop
                sent = self.raw.send(data, socket.MSG_DONTWAIT)
            except OSError:     # full (EAGAIN), or broken: the writer finds out which
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        self.outbox.append(data)
        self.queued += len(data)
        self.wake_writer.set()

    def wait_for_room(self, timeout):
        """A body's sender waits while the writer holds more than HIGH_WATER bytes: h2
        debits its windows when DATA is queued, not sent, so windows alone would let an
        upload pile up in memory (and other streams' frames queue behind it)."""
        while self.queued > HIGH_WATER and not self.shut:
            self.drained.clear()
            if not self.drained.wait(timeout):
                raise UpstreamTimeout(f"{self.target.url} took no HTTP/2 frames for "
                                      f"{timeout:g}s")

    def _write_loop(self):
        try:
            while True:
                self.wake_writer.wait()
                self.wake_writer.clear()
                if self.shut:
                    return
                while self.outbox:
                    data = self.outbox.pop(0)
                    self.writing = True     # what _flush adds meanwhile queues behind
                    for start in range(0, len(data), WRITE_PIECE):
                        # The deadline is for progress: an upstream that keeps reading a
                        # large upload is never cut.
                        sent = False
                        with gevent.Timeout(self.write_timeout, False):
                            self.sock.sendall(data[start:start + WRITE_PIECE])
                            sent = True
                        if not sent:
                            raise UpstreamTimeout(f"{self.target.url} took no HTTP/2 frames "
                                                  f"for {self.write_timeout:g}s")
                    self.queued -= len(data)
                    if self.queued <= LOW_WATER:
                        self.drained.set()
                self.writing = False
        except (OSError, UpstreamTimeout) as exc:
            if not self.shut:
                self._fail(UpstreamError(f"HTTP/2 connection to {self.target.url} failed: "
                                         f"{exc}"))

    def _read_loop(self):
        try:
            while True:
                data = self.sock.recv(RECV_SIZE)
                if not data:
                    raise UpstreamError(f"{self.target.url} closed the HTTP/2 connection")
                with self.lock:
                    self._start_second_if_due()
                    events = self.conn.receive_data(data)
                    self._flush()
                    pause = self._check_flood()
                for event in events:
                    self._dispatch(event)
                with self.lock:
                    self.conn.refill_connection_window()
                    self._flush()
                if self.unrelayed > UNRELAYED_BUDGET:
                    self._shed()
                self.stream_freed.set()     # streams ended, or the limit changed
                # An upstream that keeps sending never makes recv wait (a read takes what
                # is there, however little): the worker's other connections run between its
                # reads, whatever their size. Past its share of small DATA, it waits for the
                # next second.
                gevent.sleep(pause)
        except h2.exceptions.ProtocolError as exc:
            self._send_goaway_queued()
            self._fail(UpstreamError(f"HTTP/2 connection to {self.target.url} failed: {exc}"))
        except (OSError, UpstreamError) as exc:
            self._fail(exc if isinstance(exc, UpstreamError) else
                       UpstreamError(f"HTTP/2 connection to {self.target.url} failed: {exc}"))

    def _send_goaway_queued(self):
        """The upstream broke the protocol: h2 queued a GOAWAY naming the error (RFC 9113
        5.4.1), which the close that follows left unsent (the upstream saw a bare close,
        never why, a SETTINGS ACK with a payload's FRAME_SIZE_ERROR among them). Written
        as _flush writes, without waiting (over TLS, or behind queued frames, it is not)."""
        try:
            with self.lock:
                self._flush()
        except (OSError, h2.exceptions.ProtocolError):
            pass

    def _shed(self):
        """Past UNRELAYED_BUDGET of answers waiting for their clients on this connection:
        reset the streams holding most until a quarter of it is free again. Their clients
        are slower than the upstream (or read nothing); the error says so, and is none of the
        upstream's (``client_side``: no passive check or breaker counts it)."""
        for stream_id, stream in sorted(self.streams.items(), key=lambda item: -item[1].unread):
            if self.unrelayed <= UNRELAYED_BUDGET * 3 // 4 or not stream.unread:
                break
            del self.streams[stream_id]
            self.unrelayed -= stream.unread
            stream.unread = 0
            while not stream.events.empty():
                stream.events.get_nowait()
            error = UpstreamError(
                f"the gateway held over {UNRELAYED_BUDGET >> 20} MiB of answers from "
                f"{self.target.url} for clients slower than it: this stream, among those "
                f"holding most, was reset")
            error.client_side = True
            stream.end(error)
            throttled_log.log(log, logging.WARNING, ("h2 shed", self.target.url),
                              "HTTP/2 upstream %s: over %d MiB of answers waited for clients "
                              "slower than it: the streams holding most were reset",
                              self.target.url, UNRELAYED_BUDGET >> 20)
            with self.lock:
                state = self.conn.streams.get(stream_id)
                if state is not None and not state.closed:
                    try:
                        self.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
                    except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                        pass
                self._flush()

    def _start_second_if_due(self):
        """Before frames are read: the budgets count per second, this read's in the new one."""
        now = time.monotonic()
        if now - self.counted_since >= 1.0:
            self.counted_since = now
            conn = self.conn
            conn.empty_frames = conn.small_data = conn.data_frames_sent = 0

    def _check_flood(self):
        """Under the lock, after frames were read: past the budget the connection ends with
        GOAWAY(ENHANCE_YOUR_CALM), and its streams with a 502. Returns the seconds to wait
        before the next read: past the small DATA frames' share, the rest of the second."""
        conn, now = self.conn, time.monotonic()
        # (an upstream's small CONTINUATIONs too: blocks of 63 empty ones, each dropped as a
        # 1xx is, were 1,000 frames parsed a request and weighed as none)
        conn.empty_frames += conn.incoming_buffer.take_fragments()
        limit = self.max_empty_frames + 2 * conn.data_frames_sent
        if conn.empty_frames > limit:
            throttled_log.log(log, logging.WARNING, ("h2 upstream flood", self.target.url),
                              "HTTP/2 upstream %s sent more than %d frames with nothing (or "
                              "next to nothing) to relay in a second (a flood): connection "
                              "closed",
                              self.target.url, limit)
            try:
                conn.close_connection(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
                self._flush()
            except h2.exceptions.ProtocolError:
                pass
            raise UpstreamError(f"{self.target.url} flooded the HTTP/2 connection with "
                                f"frames carrying nothing or next to nothing (more than "
                                f"{limit} a second)")
        if conn.small_data > self.max_empty_frames:
            throttled_log.log(log, logging.INFO, ("h2 upstream paced", self.target.url),
                              "HTTP/2 upstream %s sent more than %d DATA frames under %d "
                              "bytes in a second: paced (read again when the second is over)",
                              self.target.url, self.max_empty_frames, SMALL_DATA)
            return self.counted_since + 1.0 - now
        return 0

    def _dispatch(self, event):
        if type(event) is StreamMalformed:
            stream = self.streams.pop(event.stream_id, None)
            throttled_log.log(log, logging.WARNING, ("h2 upstream malformed", self.target.url),
                              "HTTP/2 upstream %s sent a malformed answer on stream %d (%s): "
                              "the stream was reset", self.target.url, event.stream_id,
                              event.error)
            if stream is not None:
                stream.end(UpstreamError(f"{self.target.url} sent a malformed answer: "
                                         f"{event.error}"))
            return
        if isinstance(event, h2.events.WindowUpdated):
            if not event.stream_id:
                with self.lock:
                    self._feed_starved()
            elif event.stream_id in self.streams:
                self.streams[event.stream_id].window_open.set()
            return
        if isinstance(event, h2.events.ConnectionTerminated):
            self.drain(event)
            return
        if isinstance(event, h2.events.RemoteSettingsChanged):
            self.settled = True     # waiting requests wake on stream_freed (the reader's)
            for stream in self.streams.values():     # the initial window may have grown
                stream.window_open.set()
            return
        stream_id = getattr(event, "stream_id", None)
        stream = self.streams.get(stream_id)
        if stream is not None:     # (else its reader is gone: finished, reset, shed)
            if type(event) is h2.events.DataReceived:
                stream.unread += event.flow_controlled_length
                self.unrelayed += event.flow_controlled_length
            stream.events.put(event)
            if isinstance(event, h2.events.StreamReset):
                # Gone (its events are queued for the reader): a sender waiting for window
                # must stop; h2 reports a reset stream's window as 0, not as an error.
                del self.streams[stream_id]
                if event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM:
                    stream.ended_by = StreamRefused(f"{self.target.url} refused the stream")
                stream.window_open.set()

    def drain(self, goaway):
        """GOAWAY: streams past its last_stream_id were not processed and fail (a 502 for a
        request already sent); the others go on, unless it reports an error: then they fail
        and the connection closes at once. Else it closes when the last of them ends;
        requests waiting for a stream go elsewhere."""
        self.draining = True
        what = f"{self.target.url} ended the HTTP/2 connection (GOAWAY {goaway.error_code!r})"
        refused = StreamRefused(f"{what} before it processed the stream")
        # and forgotten: a sender of one finds its stream gone
        for stream_id in self._end_streams(refused, goaway.last_stream_id):
            del self.streams[stream_id]
        if goaway.error_code != h2.errors.ErrorCodes.NO_ERROR:
            # The streams it took end too (RFC 9113 5.4.1: the upstream closes the connection
            # after an error's GOAWAY). Kept open, a wedged upstream that sent one and went
            # quiet held each of them to the read timeout: a 504 for its 502.
            self._fail(UpstreamError(what))
        self.stream_freed.set()
        if not self.streams:
            self.close()

    def _fail(self, error):
        if self.shut:
            return                      # failed already: the first error is the one to tell
        self.closed = True
        self.error = error
        self._end_streams(error, 0)
        self.shut = True
        self.wake_writer.set()          # it ends; what is queued is not sent
        # Requests waiting for a stream slot, or for the first SETTINGS (a big head on a new
        # connection: no stream of it ends to wake them), go to a new connection now.
        self.stream_freed.set()
        try:
            self.sock.close()
        except OSError:
            pass

    def _end_streams(self, error, above):
        """Streams past ``above`` end with ``error``: their readers raise it, and a sender
        waiting for a window wakes. Returns their ids."""
        ended = [stream_id for stream_id in self.streams if stream_id > above]
        for stream_id in ended:
            self.streams[stream_id].end(error)
        return ended

    def close(self):
        self._fail(UpstreamError("connection closed"))
        self.reader.kill(block=False)
        self.writer.kill(block=False)
        self.stream_freed.set()

    def retire(self):
        """No new streams (a renewed connection, or no upstream has this target any more):
        closed now when idle or failed, else when its last stream ends (``finish``), as
        after a GOAWAY: answers in flight are not cut. Requests waiting for a stream slot
        on it go to a new connection."""
        self.draining = True
        if not self.streams or self.closed:
            self.close()
        self.stream_freed.set()

    # -- one exchange ----------------------------------------------------------------------------

    def request(self, headers, body, timeout, more, deadline, slot_timeout):
        """Send a request head and ``body``; with ``more``, the body goes on through
        ``send_body`` (streamed as the client sends it). Return a StreamResponse.

        The upstream's SETTINGS_MAX_CONCURRENT_STREAMS holds: past it a request waits up to
        ``slot_timeout`` for a stream to end (as a full pool does), then is a 503."""
        stream = _Stream()
        waited_until = None
        while True:
            self.stream_freed.clear()
            if self.closed or self.draining:
                raise StreamNotOpened(f"{self.target.url}: the HTTP/2 connection ended")
            with self.lock:
                if self.settled:
                    limit = self.conn.remote_settings.max_concurrent_streams
                    head_limit = self.conn.remote_settings.max_header_list_size
                else:
                    limit, head_limit = 1, UNSETTLED_HEAD
                # (counted only where a limit is said: most requests to most upstreams)
                size = 0 if head_limit is None else sum(len(k) + len(v) + 32
                                                        for k, v in headers)
                unheard = not self.settled and size > UNSETTLED_HEAD
                if unheard:
                    # The upstream's SETTINGS_MAX_HEADER_LIST_SIZE is not known yet: a big
                    # head sent before it, as a new connection's first request, ended the
                    # connection at an upstream that holds to it (a 502, booked as the
                    # target's failure). It waits for the SETTINGS, which come first.
                    limit = 0
                # Ours not finished bound h2's open ones (finish resets what is still open);
                # h2's count walks every stream, so it is asked only near the limit.
                if len(self.streams) < limit or self.conn.open_outbound_streams < limit:
                    if self.settled and head_limit is not None:
                        if size > head_limit:   # (h2 sends any head, whatever it says)
                            raise RequestHeadTooLarge(
                                f"request head of {size} bytes (HTTP/2's count), over the "
                                f"{head_limit} {self.target.url} takes "
                                f"(SETTINGS_MAX_HEADER_LIST_SIZE)")
                    stream_id = self.conn.get_next_available_stream_id()
                    self.streams[stream_id] = stream
                    self.conn.send_headers(stream_id, headers,
                                           end_stream=not body and not more)
                    stream.opened = time.monotonic()
                    if body and len(body) <= min(
                            self.conn.local_flow_control_window(stream_id),
                            self.conn.max_outbound_frame_size):
                        # A body that fits the windows (a unary call's message) goes out
                        # with its head in one send.
                        self.conn.send_data(stream_id, body, end_stream=not more)
                        body = b""
                    self._flush()
                    break
            now = time.monotonic()
            waited_until = waited_until or now + slot_timeout
            # (a call's grpc-timeout bounds this wait too: a DEADLINE_EXCEEDED at its time,
            # not UNAVAILABLE after the pool's)
            until = waited_until if deadline is None else min(waited_until, deadline)
            if now >= until or not self.stream_freed.wait(until - now):
                if until < waited_until:
                    raise deadline_hit(self.target, "waiting for a free HTTP/2 stream")
                if unheard:     # (a limit of 0 the upstream said is no free stream)
                    raise UpstreamBusy(f"{self.target.url} sent no HTTP/2 SETTINGS in "
                                       f"{slot_timeout:g} s (a request head of {size} bytes "
                                       f"waits for its header list size)")
                raise UpstreamBusy(f"{self.target.url} has no free HTTP/2 stream (it "
                                   f"allows {limit} at once)")
        if body:
            try:
                self.send_body(stream_id, stream, body, timeout, end=not more)
            except StreamNotOpened:
                self.finish(stream_id, stream)
                raise
            except UpstreamError as exc:
                # The stream ended while its body went out: reset, answered early (RFC 9113
                # 8.1 lets an upstream answer and reset), or the connection failed. What
                # came is queued ahead of this: head() reads it (an early answer is relayed,
                # a reset is StreamBroken: the policy's "reset").
                stream.events.put(exc)
                return StreamResponse(self, stream_id, stream, timeout, deadline)
            except BaseException:
                # No StreamResponse reaches the caller to close it: the stream would hold
                # one of the upstream's concurrent streams for ever.
                self.finish(stream_id, stream)
                raise
        return StreamResponse(self, stream_id, stream, timeout, deadline)

    def send_body(self, stream_id, stream, body, timeout, end=True):
        """Send ``body`` as the peer's windows allow (waiting for WINDOW_UPDATE); ``end``
        ends the stream, with an empty DATA frame if ``body`` is empty."""
        view = memoryview(body)
        waited = False
        try:
            while view or end:
                self.wait_for_room(timeout)
                pause = 0.0
                with self.lock:
                    if stream.ended_by is not None:     # refused (a GOAWAY): may go elsewhere
                        raise stream.ended_by
                    if self.closed:
                        raise self.error
                    if stream_id not in self.streams:
                        raise UpstreamError(f"{self.target.url}: the stream ended while "
                                            f"sending")
                    try:
                        window = min(self.conn.local_flow_control_window(stream_id),
                                     self.conn.max_outbound_frame_size)
                        if silly(window, len(view), self.conn.last_update_tiny):
                            pause = self.pacer.pause(time.monotonic())
                        sent = (window > 0 or not view) and not pause
                        if sent:
                            chunk, view = view[:max(window, 0)], view[max(window, 0):]
                            self.conn.send_data(stream_id, bytes(chunk),
                                                end_stream=end and not view)
                            self._flush()
                            stream.sent_at = time.monotonic()
                            if not view:
                                return
                        elif not pause:
                            stream.window_open.clear()
                            if self.conn.streams[stream_id].outbound_flow_control_window > 0:
                                stream.pending = len(view)  # only the connection's is shut
                                self.starved[stream_id] = stream
                            if waited:
                                self._feed_starved()
                    except (h2.exceptions.StreamClosedError, KeyError):
                        # The upstream answered and reset the stream before it had the body
                        # (RFC 9113 8.1 allows it): whoever reads the answer relays it.
                        raise UpstreamError(f"{self.target.url}: the stream ended while "
                                            f"sending") from None
                if pause:
                    gevent.sleep(pause)
                elif not sent:
                    waited = True
                    if not stream.window_open.wait(timeout):
                        raise UpstreamTimeout(f"{self.target.url} did not open its HTTP/2 "
                                              f"window in {timeout:g}s")
                    self.starved.pop(stream_id, None)
        finally:
            if waited:
                self.starved.pop(stream_id, None)
                with self.lock:     # what this stream was woken for and did not take
                    self._feed_starved()

    def _feed_starved(self):
        """Under the lock, when the connection's window opened: wake the bodies waiting for
        it that it can feed (core.h2limits.fed_from_window)."""
        for stream in fed_from_window(self.conn, self.starved):
            stream.window_open.set()

    def acknowledge(self, stream_id, size):
        """``size`` bytes of a stream's answer were relayed: its window may take as much more
        (the connection's took them back as they arrived)."""
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.unread -= size
            self.unrelayed -= size
        with self.lock:
            try:
                self.conn.acknowledge_stream_data(size, stream_id)
                self._flush()
            except (h2.exceptions.StreamClosedError, KeyError):
                pass

    def finish(self, stream_id, stream):
        """The exchange is over: reset the stream if either side is still open (an answer
        before the whole body, without the upstream's own reset, leaves the request side
        open: it would hold one of the upstream's concurrent streams for ever), and forget
        what of its answer was not read (the connection's window took it back as it
        arrived)."""
        self.streams.pop(stream_id, None)
        self.unrelayed -= stream.unread
        stream.unread = 0
        if not self.streams:
            self.idle_since = time.monotonic()
        if self.draining and not self.streams and not self.shut:
            self.close()        # the GOAWAY's last stream is done
        elif not self.closed:
            with self.lock:
                try:
                    state = self.conn.streams.get(stream_id)
                    if state is not None and not state.closed:
                        self.conn.reset_stream(stream_id)
                    self._flush()
                except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError,
                        OSError):
                    pass
        self.stream_freed.set()


class StreamResponse:
    """The answer on one stream: ``head()`` -> (status, headers); then ``chunks()`` yields
    body bytes; ``trailers`` holds the trailing headers once the stream ended."""

    def __init__(self, connection, stream_id, stream, timeout, deadline=None):
        self.connection, self.stream_id, self.stream = connection, stream_id, stream
        self.timeout = timeout
        self.deadline = deadline        # time.monotonic() when the call's grpc-timeout ends
        self.trailers = []
        self.ended = False
        self._pending = []

    def expire(self):
        """Its client hung up (Runtime.find_hangups): the wait for the next piece ends (the
        relay tells it from the upstream's failure; closing the exchange resets the stream)."""
        self.stream.end(UpstreamError(f"{self.connection.target.url}: the client hung up"))

    def ready(self):
        """Is more of the answer (or its end) already here, so that reading it will not
        wait?"""
        return self.ended or not self.stream.events.empty()

    def ready_within(self, seconds):
        """``ready``, waiting up to ``seconds`` for it (nothing is taken)."""
        if self.ready():
            return True
        try:
            self.stream.events.peek(timeout=seconds)
        except gevent.queue.Empty:
            return False
        return True

    def fail(self, exc):
        """The request side failed (the client's body): whoever reads the answer raises it."""
        self.stream.events.put(exc)

    def _next(self, since=None):
        """The stream's next event, waited for ``timeout`` from ``since`` (default: now)."""
        stream = self.stream
        waited_from = time.monotonic() if since is None else since
        while True:
            # The read timeout runs from this wait's start or the last piece of request body
            # sent, whichever is later: an upload that keeps moving is not cut, as it is not
            # on HTTP/1.1 upstreams (where the answer is read once the body is sent). While
            # the body waits for the client it does not run at all: a client that pauses
            # is no upstream's timeout (passive checks and breakers count those); its own
            # bound, client_body_timeout, ends the sender and this wait with it.
            now = time.monotonic()
            timeout = self.timeout if stream.awaiting_client else \
                max(waited_from, stream.sent_at) + self.timeout - now
            by_deadline = self.deadline is not None and self.deadline - now < timeout
            if by_deadline:
                timeout = self.deadline - now
            try:
                event = stream.events.get(timeout=max(timeout, 0))
                break
            except gevent.queue.Empty:
                if by_deadline:
                    exc = UpstreamTimeout(f"{self.connection.target.url}: the call's "
                                          f"grpc-timeout ran out")
                    exc.deadline_hit = True
                    raise exc from None
                if not stream.awaiting_client and \
                        max(waited_from, stream.sent_at) + self.timeout <= time.monotonic():
                    raise UpstreamTimeout(f"{self.connection.target.url} did not answer "
                                          f"within {self.timeout:g}s"
                                          f"{' (per_try_timeout)' if since else ''}") from None
        if isinstance(event, Exception):
            raise event
        if isinstance(event, h2.events.StreamReset):
            # ended_by: the StreamRefused the reader set for a REFUSED_STREAM
            raise stream.ended_by or UpstreamError(f"{self.connection.target.url} reset the "
                                                   f"stream ({event.error_code!r})")
        return event

    def head(self, whole=False):
        """(status, fields) of the final head. ``whole`` (a retry policy's per_try_timeout):
        ``timeout`` bounds the whole head, interim heads included, as on HTTP/1.1
        upstreams (Proxy.read_head); otherwise each wait, so that 102 Processing can keep a
        long request alive. Bounded per wait, a 1xx every few tenths of a second held a try
        up to MAX_INTERIM_HEADS times its per_try_timeout, past its retry."""
        bounds = HeadBounds(self.connection.max_head)
        since = time.monotonic() if whole else None
        while True:
            try:
                event = self._next(since)
            except StreamNotOpened as exc:
                if not bounds.interim:
                    raise
                # Refused after an interim answer: the upstream had begun on the request, so
                # it is a reset, not a stream it did not process (RFC 9113 8.7), and the
                # request may be sent again only as a retry policy's "reset" allows.
                raise StreamBroken(exc.reason) from None
            except UpstreamError as exc:        # reset, or the connection failed
                raise StreamBroken(exc.reason) from None
            if isinstance(event, HEADS):
                # (an interim head is dropped once counted, as HTTP/1.1 upstreams' 1xx are)
                try:
                    final = bounds.take(event)
                except HeadOutOfBounds as exc:
                    raise UpstreamError(f"upstream response {exc}" if exc.oversized else
                                        f"{self.connection.target.url} sent {exc}") from None
                if final:
                    if event.stream_ended:
                        self.ended = True
                    return bounds.status, bounds.fields
            elif isinstance(event, h2.events.StreamEnded):
                raise UpstreamError("stream ended before a response head")

    def chunks(self):
        while not self.ended:
            event = self._next()
            if isinstance(event, h2.events.DataReceived):
                if event.flow_controlled_length:
                    self.connection.acknowledge(self.stream_id, event.flow_controlled_length)
                if event.data:
                    yield bytes(event.data)
                elif not event.stream_ended:
                    yield b""   # nothing to relay, but a held head may have to go (hold_head)
                if event.stream_ended:
                    self.ended = True
            elif isinstance(event, h2.events.TrailersReceived):
                if head_bytes(event.headers) > self.connection.max_head:
                    # as an HTTP/1.1 upstream's trailer fields, framing held to the limit
                    raise UpstreamError(f"{self.connection.target.url} sent trailers over "
                                        f"{self.connection.max_head} bytes")
                self.trailers = [(k, v) for k, v in ((bytes(k), bytes(v))
                                                     for k, v in event.headers)
                                 if k.lower() not in TRAILER_FORBIDDEN]
                self._check(self.trailers, "trailer")
                if event.stream_ended:
                    self.ended = True
            elif isinstance(event, h2.events.StreamEnded):
                self.ended = True

    def _check(self, fields, kind):
        """h2 refuses NUL, CR and LF; a control character or a non-token name would still reach
        the client (and llhttp, which frames HTTP/2 answers, refuses them): a broken answer."""
        bad = first_bad_field(fields)
        if bad is not None:
            raise UpstreamError(f"{self.connection.target.url} sent {not_allowed(kind, bad)}")

    def close(self):
        self.connection.finish(self.stream_id, self.stream)


# An answer's heads, which HeadBounds takes: interim ones, then the final one
HEADS = (h2.events.ResponseReceived, h2.events.InformationalResponseReceived)


def is_status_code(code):
    """Is ``code`` (an HTTP/2 head's :status) a status code an answer may have? Three digits
    from 100 to 599, never 101 (RFC 9113 8.6), in an interim head too (h2 takes any :status
    that begins with 1 for one)."""
    return len(code) == 3 and code.isdigit() and b"1" <= code[:1] <= b"5" and code != b"101"


def head_bytes(headers):
    """An HTTP/2 head's size as HTTP/1.1 would write it, for max_response_head: its status
    line ("HTTP/1.1 200 \r\n"), a line a field and the blank line."""
    return 17 + sum(len(k) + len(v) + 4 for k, v in headers if not k.startswith(b":"))


class HeadOutOfBounds(Exception):
    """An answer's heads past HeadBounds: ``oversized`` when max_response_head is what they
    passed, else the words say which bound (an interim :status, the interim heads)."""

    def __init__(self, reason, oversized=False):
        super().__init__(reason)
        self.oversized = oversized


def not_allowed(kind, field):
    """What an answer's ``field`` that HTTP does not allow (first_bad_field) is called."""
    return (f"a {kind} HTTP does not allow (a control character or a bad name: "
            f"{field[0][:40].decode('latin-1')!r})")


class HeadBounds:
    """The bounds an HTTP/2 answer's heads are read within, by the proxy (StreamResponse.head)
    and by the health check (helpers.health.probe_h2) alike, so that a target the proxy
    answers 502 for fails its check: max_response_head over every head, 1xx ones included,
    each counted as HTTP/1.1 would write it; every head's :status a status code; at most
    MAX_INTERIM_HEADS interim heads, of MAX_INTERIM_BYTES as sent; the final head's fields
    ones HTTP allows, its content-length digits. ``take`` each head; after the final one,
    ``status`` and ``fields`` (bytes, no pseudo-header) are its."""

    def __init__(self, max_head):
        self.max_head = max_head
        self.size = self.interim = self.interim_bytes = 0
        self.status, self.fields = None, None

    def take(self, event):
        """Count ``event`` (one of HEADS); raise HeadOutOfBounds past a bound. True when it
        was the final head."""
        self.size += head_bytes(event.headers)
        if self.size > self.max_head:
            raise HeadOutOfBounds(f"head over {self.max_head} bytes", oversized=True)
        # (h2 takes any :status that begins with 1 for an interim one: a 101, "1")
        code = bytes(dict(event.headers).get(b":status", b""))
        if not is_status_code(code):
            raise HeadOutOfBounds(f":status {code[:20]!r}: not a status code")
        if type(event) is not h2.events.InformationalResponseReceived:
            self._final(event, int(code))
            return True
        self.interim += 1
        self.interim_bytes += getattr(event, "block_size", 0)    # (_receive_frame)
        if self.interim > MAX_INTERIM_HEADS or self.interim_bytes > MAX_INTERIM_BYTES:
            raise HeadOutOfBounds(f"more than {MAX_INTERIM_HEADS} interim (1xx) heads, "
                                  f"or more than {MAX_INTERIM_BYTES} bytes of them")
        return False

    def _final(self, event, status):
        # Held here, not by the proxy alone: the check passed a target whose every answer
        # the proxy refused for a control character or an overlong content-length
        self.status = status
        self.fields = [(k, v) for k, v in ((bytes(k), bytes(v)) for k, v in event.headers)
                       if not k.startswith(b":")]
        bad = first_bad_field(self.fields)
        if bad is not None:
            raise HeadOutOfBounds(not_allowed("header", bad))
        for name, value in self.fields:
            if name == b"content-length" and (not value.isdigit() or length_over_max(value)):
                # (as an HTTP/1.1 upstream's: Exchange.split_head, where llhttp takes digits
                # alone; h2 reads it with int(), and a HEAD's answer passed such a value on
                # to the client)
                raise HeadOutOfBounds(f"content-length {value[:40].decode('latin-1')!r}: "
                                      f"not digits, or over 2^63 - 1")


def deadline_hit(target, doing="connecting"):
    """A gRPC call's grpc-timeout ran out before its stream to ``target`` was open: the
    call's bound (DEADLINE_EXCEEDED), not the target's failure (no skip, no ejection)."""
    exc = UpstreamTimeout(f"{target.url}: the call's grpc-timeout ran out {doing}")
    exc.deadline_hit = True
    # nothing of the call was sent: no try of the upstream's (h2proxy's attempts, the
    # access log's; as UpstreamBusy, which a wait for a free stream ended in before)
    exc.unsent = True
    return exc


class H2Pools:
    """One H2Connection per target (and TLS settings) in this worker, opened on demand,
    replaced when broken."""

    def __init__(self, on_open=None, max_empty_frames=10_000, max_head=65536):
        self.max_empty_frames = max_empty_frames
        self.max_head = max_head
        self.connections = {}
        self._connecting = {}
        # key -> (its last connect's failure: UpstreamConnectError's class and reason, when,
        # that connect's timeout); not the exception, whose traceback held the failed
        # request's frames (its body) until the target's next connect
        self._failed = {}
        self.on_open = on_open      # called with the target's url for each new connection

    def get(self, target, connect_timeout, tls, write_timeout, deadline=None):
        """The target's connection, opened (or waited for) within ``connect_timeout`` and
        a gRPC call's ``deadline`` (time.monotonic()), whichever comes first."""
        key = (target.key, tls)
        connection = self.connections.get(key)
        if connection is not None and connection.usable:
            return connection
        asked = time.monotonic()
        # The wait for another request's connect and this request's own connect are one
        # connect: within its timeout, and within a gRPC call's deadline when that ends
        # first (a call of 300 ms waited a hung connect's whole timeouts.connect, 3 s, say,
        # and was answered UNAVAILABLE, not DEADLINE_EXCEEDED).
        connect_until = asked + connect_timeout
        by_deadline = deadline is not None and deadline < connect_until
        until = deadline if by_deadline else connect_until
        if until <= asked:
            raise deadline_hit(target)
        # One connect at a time per target: greenlets arriving meanwhile share its result
        # instead of opening a connection each.
        lock = self._connecting.setdefault(key, gevent.lock.Semaphore())
        # (unbounded, each waiter waited for every connect made before its own)
        waited = not lock.acquire(blocking=False)
        if waited and not lock.acquire(timeout=until - asked + (0 if by_deadline else
                                                                2 * OPENING_SLACK)):
            if by_deadline:
                raise deadline_hit(target)
            raise UpstreamConnectTimeout(f"connect to {target.url} timed out (another "
                                         f"request's connect to it took over "
                                         f"{connect_timeout:g}s)")
        handed = False      # the lock, to a connect that goes on past the call's deadline
        try:
            connection = self.connections.get(key)
            if connection is None or not connection.usable:
                failed = self._failed.get(key)
                if failed is not None and failed[2] >= asked and \
                        not (failed[0] is UpstreamConnectTimeout and
                             failed[3] < connect_timeout):
                    # The connect this request waited for failed: its failure is this one's
                    # too. Each waiter made one of its own in turn, and the tenth request
                    # to a target that timed out waited ten connect timeouts for its 504.
                    # A timeout under a shorter connect timeout (another route's to the
                    # target) is not: this one's 504 came at the other route's timeout.
                    raise failed[0](failed[1]) from None
                if connection is not None and not connection.draining:
                    # Failed, or out of stream ids (MAX_STREAMS_PER_CONNECTION): its streams
                    # in flight finish first; close() cut them, long-lived gRPC streams too.
                    connection.retire()
                try:
                    context = client_context(tls, ["h2"]) if target.scheme == "https" \
                        else None
                except (OSError, ValueError) as exc:   # (ssl.SSLError is an OSError)
                    # tls files the worker never read well (replaced by a bad one since the
                    # check): a 502 that says so, not a 500 with a traceback per request; no
                    # connect failure of the target's (UpstreamTLSFilesError)
                    # (which file, and why: OpenSSL's word names none)
                    problem = tls and client_tls_problem(tls[1], tls[3], tls[4]) or exc
                    raise UpstreamTLSFilesError(f"TLS to {target.url}: the upstream's tls "
                                                f"files cannot be loaded ({problem})") from None
                # What the wait left: a waiter whose connector left without a verdict (its
                # client reset the stream) connected for a whole timeout of its own after.
                now = time.monotonic()
                left = connect_until - now if waited else connect_timeout
                if now >= until:
                    raise deadline_hit(target) if by_deadline else UpstreamConnectTimeout(
                        f"connect to {target.url} timed out (waiting for another "
                        f"request's connect to it)")
                if not by_deadline:
                    connection = self._open(key, target, left, context, tls, write_timeout,
                                            waited, connect_timeout)
                else:
                    # The connect goes on past the call's deadline, within the connect
                    # timeout, for the calls after it: cut at each call's deadline, a target
                    # slower to connect than a service's grpc-timeout never had a connection
                    # and every call was answered DEADLINE_EXCEEDED. A call whose deadline
                    # came first is no failure of the target's; its waiters get the verdict.
                    opener = gevent.spawn(self._opened, key, target, left, context, tls,
                                          write_timeout, waited, connect_timeout)
                    opener.link(lambda _: lock.release())
                    handed = True
                    opener.join(max(until - time.monotonic(), 0))
                    if not opener.ready():
                        raise deadline_hit(target)
                    connection, exc = opener.value or (None, None)
                    if connection is None:
                        raise exc or deadline_hit(target)
        finally:
            if not handed:
                lock.release()
        return connection

    def _open(self, key, target, timeout, context, tls, write_timeout, waited,
              connect_timeout):
        """A new connection to ``target`` (under its connect lock), kept; a failure is kept
        for the requests that waited for it."""
        try:
            connection = H2Connection(target, timeout, context, tls[2] if tls else None,
                                      write_timeout, self.max_empty_frames, self.max_head)
        except UpstreamConnectError as exc:
            # (under what a wait left of it: a waiter whose own timeout had longer to run
            # is not failed by it)
            self._failed[key] = (type(exc), exc.reason, time.monotonic(),
                                 timeout if waited else connect_timeout)
            raise
        self._failed.pop(key, None)
        self.connections[key] = connection
        if self.on_open is not None:
            self.on_open(target.url)
        return connection

    def _opened(self, *args):
        """``_open`` in a greenlet of its own: (connection, None) or (None, its error)
        (raised, gevent's hub printed it whole, a traceback per slow connect)."""
        try:
            return self._open(*args), None
        except Exception as exc:        # noqa: BLE001 -- handed to the caller, not swallowed
            return None, exc

    def prune(self, upstreams):
        """Retire the connections no h2 upstream of ``upstreams`` (the table's) would use: a
        removed target's (they stayed open for the worker's life), or one whose upstream
        changed its ``tls``. Returns (URLs of removed targets, URLs of the others)."""
        live = {}       # key -> the table's targets that use it, by URL
        for upstream in upstreams:
            if upstream.protocol == "h2":
                for target in upstream.targets:
                    live.setdefault((target.key, upstream.tls), {})[target.url] = target
        gone = [key for key in self.connections if key not in live]
        for key in gone:
            self.connections.pop(key).retire()
            self._connecting.pop(key, None)
        # (a target that never connected has a lock and a failure but no connection: one
        # that came and went through etcd left them here for the worker's life)
        for key in [key for key in self._failed if key not in live]:
            del self._failed[key]
        for key in [key for key in self._connecting if key not in live]:
            del self._connecting[key]
        for key, connection in self.connections.items():
            if connection.target.url not in live[key]:
                # Two spellings of one target share the connection, named (metrics, admin,
                # errors) by the one that opened it: not a removed one's URL for good.
                connection.target = live[key][min(live[key])]
        targets = {key[0] for key in live}
        urls = {key: f"{key[0][0]}://{key[0][1]}:{key[0][2]}" for key in gone}
        return ({url for key, url in urls.items() if key[0] not in targets},
                {url for key, url in urls.items() if key[0] in targets})

    def close_idle(self, before):
        """Retire the connections without a stream since before ``before`` (monotonic):
        Proxy.close_idle's keepalive_timeout, for HTTP/2 upstreams."""
        for key, connection in list(self.connections.items()):
            if not connection.streams and connection.idle_since < before:
                del self.connections[key]
                connection.retire()

    def close(self):
        for connection in self.connections.values():
            connection.close()
        self.connections.clear()
