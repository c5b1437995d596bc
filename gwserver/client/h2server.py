"""The client side of HTTP/2: h2 on TLS listeners (ALPN) and h2c with prior knowledge.

One ``H2ServerConnection`` per client connection reads frames in its own greenlet and feeds
them to ``h2`` (sans-I/O framing, HPACK, stream states, windows). Each request stream becomes an
``H2Stream``: a ``ClientConnection`` for one request, so it goes through the very same
``handle()`` as HTTP/1.1 (router, plugin chain, limits, proxy step, access log, metrics). Its
``write(bytes)`` takes the HTTP/1.1 response the proxy or the gateway writes and turns it into
HEADERS and DATA frames (chunked trailers become a trailing HEADERS frame); its ``read_body()``
waits for the stream's DATA.

Rules this file keeps:
- Request heads and trailers are checked as RFC 9113 8.1-8.3 says (core.h2request); a
  malformed request is reset with PROTOCOL_ERROR, a stream's error, those h2 finds
  malformed itself too (StreamMalformed). Then the HTTP/1.1 rules apply unchanged
  (ClientConnection's on_header and check_target): limits, underscores, forwarded headers,
  canonical path and Host.
- Flow control both ways: received DATA is acknowledged only when the request path asks for
  more body (read_body), so a stream holds at most its window; response DATA waits for the
  client's windows, up to http2.send_timeout, then the stream is reset (CANCEL).
- Streams counted for max_concurrent_streams are those still being served, reset or not:
  a client that opens and resets streams (rapid reset) gets REFUSED_STREAM once at the limit,
  and GOAWAY ENHANCE_YOUR_CALM past http2.max_resets_per_second (streams reset as malformed
  and streams refused count too; a client's reset of a stream served 0.1 s is a cancel,
  not counted). PING, SETTINGS, PRIORITY and GOAWAY floods (ACKs too; a SETTINGS frame
  weighs one more per 64 entries): GOAWAY ENHANCE_YOUR_CALM past
  max_control_frames_per_second; WINDOW_UPDATE, empty DATA, unknown and finished-stream
  frame floods past max_empty_frames_per_second (plus two per DATA frame sent: a
  download's WINDOW_UPDATEs). DATA under 1 KiB and header blocks are
  paced past their share of a second (the connection is read again when it is over). A
  header list over 64 KiB (an HPACK bomb), or a block over 64 KiB as sent (counted as its
  frames arrive, before END_HEADERS), is a connection error (ENHANCE_YOUR_CALM); one within
  it but over limit_request_fields/_field_size is answered 431 on its stream. CONTINUATION
  floods end there, at h2's 64-frame backlog (PROTOCOL_ERROR) or at header_timeout, and a
  CONTINUATION under 1 KiB that does not end its block is an empty frame. A connection with
  a block begun and no stream open is a slow head when the slots run out
  (Runtime.close_slowest_head; one with streams is being served).
- Idle connections close after server.keepalive (header_timeout before the first request).
- The per-connection settings are those of the listener that accepted the connection
  ([http2.listeners."host:port"], found by the socket's local address), else [http2]'s.
- Draining (SIGTERM/SIGHUP): GOAWAY NO_ERROR naming the last stream taken; streams in flight
  finish; newer ones are refused; when none is left, FIN after the answers (nothing is
  written after it), and the connection closes once the client closes or its linger runs
  out (``drained``).
"""
import collections
import logging
import socket
import time
from types import MappingProxyType

import gevent
import gevent.event
import gevent.lock
import gevent.socket
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h2.stream
import httptools
from hyperframe.frame import (DataFrame, ExtensionFrame, GoAwayFrame, HeadersFrame, PingFrame,
                              PriorityFrame, RstStreamFrame, SettingsFrame, WindowUpdateFrame)

from ..core.context import RequestContext
from ..core.h2fields import CachingDecoder, FieldEncoder
from ..core.h2frames import BoundedBlocks, PrioritySizeError, ZeroIncrement
from ..core.h2request import (Malformed, check_method_and_path, check_trailers,
                              grpc_status_fields, is_grpc, split_request)
from ..core.h2limits import (CLOSED_STREAMS, SMALL_DATA, WindowPacer, fed_from_window, silly,
                             tiny_update)
from ..core.headers import MAX_CONTENT_LENGTH
from ..core.realip import connection_scheme
from ..core.throttledlog import throttled_log
from ..errors import BadRequest, HTTPError, RequestTimeout
from .http1 import (MAX_HEAD_BYTES, SLOW_BODY_GRACE, ClientConnection, ClientGone, error_reply,
                    grpc_web_call)
from .waiting import handshake_just_ended, serve_counted, wait_first_byte
from ..net.addresses import listener_addresses
from ..net.deadlines import WriteDeadline
from ..net.sockets import (LINGER_SECONDS, RECV_SIZE, PlainSocket, ReadableWake,
                           has_unread_input, linger, peer_address, raw_socket, send_all,
                           unsent_bytes)

log = logging.getLogger("gwserver.h2")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Response fields that belong to the HTTP/1.1 hop the proxy wrote (RFC 9113 8.2.2).
HOP_FIELDS = frozenset([b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                        b"upgrade", b"te"])
E = h2.errors.ErrorCodes


def wants_h2(sock, timeout):
    """h2c listener: do the first bytes spell the HTTP/2 preface? Peeked, never consumed, so
    an HTTP/1.1 client is served from its first byte. False on EOF or bytes that are not
    the preface; None when ``timeout`` ran out with part of it in (served as HTTP/1.1, such
    a client had a second header_timeout to send its "head", and its 408 was HTTP/1.1).

    While only part of the preface is in, the socket is made readable only once more than
    that is (SO_RCVLOWAT; the client's close wakes it too): the peeked bytes stay in its
    buffer, so it reads as readable at once, and the wait for the rest was a poll every 10
    ms. 400 connections that sent "P" and no more took 54% of a worker's core for their
    header_timeout (400 HTTP/1.1 half heads: 1%). Now each costs a wake per byte, 23 at
    most."""
    deadline = time.monotonic() + timeout
    raw = getattr(sock, "_sock", sock)
    waited_for = 0                  # SO_RCVLOWAT set: woken with no more, the client closed
    try:
        while True:
            try:
                data = raw.recv(len(PREFACE), socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                data = None
            except OSError:
                return False
            if data is not None:
                if not data or not PREFACE.startswith(data):
                    return False
                if len(data) == len(PREFACE):
                    return True
                if len(data) < waited_for:
                    return False
                waited_for = len(data) + 1
                set_low_water(raw, waited_for)
            left = deadline - time.monotonic()
            if left <= 0:
                return None if waited_for else False
            try:
                gevent.socket.wait_read(sock.fileno(), timeout=left)
            except gevent.socket.timeout:
                return None if waited_for else False
            except OSError:
                return False
    finally:
        if waited_for:
            set_low_water(raw, 1)       # what every later read of the connection expects


def set_low_water(raw, size):
    try:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, size)
    except OSError:
        pass                            # closed meanwhile: nothing will read it


class ResponseFramer:
    """The HTTP/1.1 response written for one stream, parsed (httptools) into what HTTP/2
    sends: ``feed(bytes)`` -> [("headers", pairs, end) | ("data", bytes, end)]. The body
    parsed from one write is one DATA action, and the end of the answer rides on the last
    action (no empty DATA frame just to say END_STREAM)."""

    def __init__(self, head_only):
        self.parser = httptools.HttpResponseParser(self)
        self.head_only = head_only
        self.fields, self.trailers = [], []
        self.head = None            # (status, fields) not sent yet: it may end the stream
        self.in_body = self.done = False
        self.out = []
        self.body = []              # body pieces of this feed

    def feed(self, data):
        if self.done:
            return []
        self.parser.feed_data(data)
        if self.body:
            self._take_body(False)
        out, self.out = self.out, []
        return out

    def _take_body(self, end):
        body = self.body
        self.out.append(("data", body[0] if len(body) == 1 else b"".join(body), end))
        self.body = []

    def on_message_begin(self):
        self.fields, self.trailers, self.in_body = [], [], False

    def on_header(self, name, value):
        # llhttp strips white space before a value, not after it (HTTP/1.1 allows both);
        # RFC 9113 8.2.1 forbids both, and HTTP/2 clients refuse the stream.
        (self.trailers if self.in_body else self.fields).append(
            (name.lower(), value.rstrip(b" \t")))

    def on_headers_complete(self):
        status = self.parser.get_status_code()
        named = set()
        for name, value in self.fields:
            if name == b"connection":
                named.update(t.strip().lower() for t in value.split(b","))
        fields = [(b":status", b"%d" % status)] + [
            (k, v) for k, v in self.fields if k not in HOP_FIELDS and k not in named]
        self.in_body = True
        if status < 200:
            self.out.append(("headers", fields, False))
        elif self.head_only:
            self.out.append(("headers", fields, True))
            self.done = True
        else:
            self.head = fields

    def on_body(self, body):
        if self.head is not None:
            self.out.append(("headers", self.head, False))
            self.head = None
        self.body.append(body)

    def on_message_complete(self):
        if self.done:
            return
        status = self.parser.get_status_code()
        if status < 200:
            return
        self.done = True
        trailers = [(k, v) for k, v in self.trailers if k not in HOP_FIELDS]
        if self.head is not None:
            # Nothing in the body: the head ends the stream (gRPC's trailers-only answer when
            # it carries grpc-status), unless trailers follow.
            self.out.append(("headers", self.head, not trailers))
            self.head = None
        elif self.body or not trailers:
            self._take_body(not trailers)
        if trailers:
            self.out.append(("headers", trailers, True))


class H2Stream(ClientConnection):
    """One request stream, served by ClientConnection.handle like an HTTP/1.1 request."""

    speaks_h2 = True

    def __init__(self, conn, stream_id):
        # Not ClientConnection.__init__: what it computes per connection is taken from ours.
        self.conn = conn
        self.stream_id = stream_id
        self.runtime, self.settings, self.sock = conn.runtime, conn.settings, conn.sock
        self.client_ip, self.scheme = conn.client_ip, conn.scheme
        self.limits, self.underscores, self.path_rules = conn.limits, conn.underscores, \
            conn.path_rules
        _, self.fields_limit, self.field_limit = conn.limits
        self.trusted_peer, self.body_timeout = conn.trusted_peer, conn.body_timeout
        self.head_hold = conn.conf["head_hold"]
        self.trusted_x_forwarded = conn.trusted_x_forwarded
        self.identity_peer = conn.identity_peer
        self.queue = collections.deque()
        self.head_size = self.head_fields = self.requests = 0
        self.upgraded = self.timed_out = self.answer_timeout = False
        self.keepalive_enabled = True
        self.last_host = self.last_host_parts = None
        self.head_status = self.body_sent = 0      # see ClientConnection.__init__
        self.req = self.current = None
        self.framer = None
        self.fresh = False          # body data or its end arrived since the last read_body
        self.unacked = 0            # flow-controlled bytes received, not yet acknowledged
        self.reset_code = None      # set when the client reset the stream
        # Made when first waited on (most streams never wait): data, end or reset; the
        # client's window may have opened.
        self.wake = self.window = None
        self.greenlet = None
        self.running = False        # its greenlet has begun
        self.ended = False          # END_STREAM sent
        self.pending = 0            # bytes to send while waiting for the connection's window
        self.writes = 0             # pieces of the answer written (read_body: is it flowing?)
        # server.min_body_rate: seconds this stream waited for its body (its bytes are
        # req.body_size), and since when it waits now
        self.body_waited = self.wait_started = 0.0
        self.waiting = False

    # -- building the request ------------------------------------------------------------------

    def open(self, headers, ended):
        """The request from a HEADERS block; raises Malformed or an HTTPError (answered)."""
        req = self.req = self.current = RequestContext(self.client_ip, self.scheme,
                                                       self.runtime.services, self)
        self.queue.append(req)
        self.framer = ResponseFramer(False)     # an early error is answered through it
        req.request_id = None
        req.version, req.keep_alive = "1.1", True      # HTTP/1.1 semantics for the proxy step
        req.vars["protocol"] = "HTTP/2"
        req.complete = ended
        pseudo, regular = split_request(headers)
        req.method = pseudo[b":method"].decode("latin-1")
        req.url = pseudo[b":path"]
        self.framer.head_only = req.method == "HEAD"
        check_method_and_path(pseudo[b":method"], req.url, pseudo[b":scheme"])
        if len(req.url) > self.limits[0]:
            from ..errors import HeadersTooLarge
            raise HeadersTooLarge(f":path longer than {self.limits[0]} bytes")
        authority = pseudo.get(b":authority")
        cookies = []
        for name, value in regular:
            if name == b"cookie":         # RFC 9113 8.2.3: one field for HTTP/1.1
                cookies.append(value)
                continue
            self.on_header(name, value)
        if cookies:
            self.on_header(b"cookie", b"; ".join(cookies))
        hmap = req.header_map
        if authority is not None and b"host" not in hmap:
            hmap[b"host"] = authority
            req.host_count = 1
        if b"host" not in hmap:
            raise BadRequest("no :authority or Host")
        cl = hmap.get(b"content-length")
        if cl is not None:
            if not cl.isdigit():
                raise Malformed("invalid content-length")
            if len(cl) > 19 or int(cl) > MAX_CONTENT_LENGTH:
                raise BadRequest("Content-Length over 2^63 - 1")
            req.content_length = int(cl)
            if ended and req.content_length:
                # RFC 9113 8.1.1: a body that cannot come is malformed, never forwarded. An
                # HTTP/2 upstream was sent it as declared; the HTTP/1.1 path found it short
                # only after the plugins had run (a limit counted it).
                raise Malformed("content-length with END_STREAM on the headers")
        req.chunked = cl is None and not ended     # a streamed body of unknown length
        req.head_done = True
        self.check_target(req, hmap)
        return req

    # -- events from the connection's reader --------------------------------------------------

    def on_data(self, data, flow_length, ended):
        req = self.req
        if data:
            req.add_body(data)
        self.unacked += flow_length
        if ended:
            req.complete = True
        if req.content_length is not None and (req.body_size > req.content_length or
                                               ended and req.body_size != req.content_length):
            raise Malformed("DATA does not add up to content-length (RFC 9113 8.1.1)")
        self.fresh = True
        if self.wake is not None:
            self.wake.set()

    def on_reset(self, code):
        self.reset_code = code
        self.hung_up = True         # the client ended the stream (its reset, its close)
        self.window_opened()
        if self.wake is not None:
            self.wake.set()

    def window_opened(self):
        if self.window is not None:
            self.window.set()

    # -- what ClientConnection.handle and the proxy call --------------------------------------

    def write(self, data):
        if self.reset_code is not None:
            raise ClientGone("the client reset the stream")
        try:
            actions = self.framer.feed(data)
        except httptools.HttpParserError as exc:
            raise ClientGone(f"unframeable response for HTTP/2: {exc}") from None
        if actions:
            self.writes += 1
            self.conn.send(self, actions)
            if actions[-1][2]:
                self.ended = True

    def read_body(self, watch=None, timeout=None):
        """(as ClientConnection.read_body: True when ``watch`` turned readable first)"""
        timeout = self.body_timeout if timeout is None else timeout
        if self.unacked:
            self.conn.acknowledge(self.stream_id, self.unacked)
            self.unacked = 0
        if not self.fresh and self.reset_code is None:
            if self.wake is None:
                self.wake = gevent.event.Event()
            self.wake.clear()
            conn = self.conn
            self.waiting, self.wait_started = True, time.monotonic()
            # answer_flowing's first look: what the answer wrote before this wait began is
            # no sign that it goes on (that held a stalled upload twice client_body_timeout)
            self._writes_seen = self.writes
            # (started here: the acknowledgement above may wait for the connection)
            wake = None if watch is None else ReadableWake(watch, self.wake)
            conn.body_wait_began()
            try:
                came = self.wake.wait(timeout)
                while not came and self.answer_flowing():
                    came = self.wake.wait(self.body_timeout)
            finally:
                if wake is not None:
                    wake.stop()
                self.waiting = False
                self.body_waited += time.monotonic() - self.wait_started
                conn.body_wait_ended()
            if not came and not self.fresh:
                raise RequestTimeout("client sent no body data in time")
            if wake is not None and wake.woke and not self.fresh and self.reset_code is None:
                return True
        if self.reset_code is not None:
            raise ClientGone("the client reset the stream")
        self.fresh = False
        return False

    _writes_seen = 0

    def answer_flowing(self):
        """Has a gRPC call's answer gone on since the last look? Then its client's silence is
        listening, not a stalled upload: a bidi call whose server streams while its client
        says nothing (a subscription) was reset at client_body_timeout (INTERNAL_ERROR), its
        answer cut. Its silence is then bounded by the answer's own pace (the upstream's
        read_timeout, its deadline), as a websocket's is by traffic either way."""
        if self.writes == self._writes_seen or self.req is None or \
                not is_grpc(self.req.header_map.get(b"content-type")):
            return False
        self._writes_seen = self.writes
        return True

    def buffer_body(self, req, max_body_size):
        """As on HTTP/1.1, except for gRPC calls: a streaming call's messages must reach the
        upstream as they come (bidi: the client waits for an answer before it sends more)."""
        if not is_grpc(req.header_map.get(b"content-type")):
            super().buffer_body(req, max_body_size)

    @property
    def holds_head(self):
        return self.framer.head is not None

    released = False        # the head went alone (release_head), before any body

    def release_head(self):
        """Send a held head alone: its body is slow to come (an event stream, a long poll,
        a gRPC server stream's initial metadata), and the client waits for it to begin."""
        head, self.framer.head = self.framer.head, None
        if head is not None and self.reset_code is None:
            self.conn.send(self, [("headers", head, False)])
            self.released = True

    def watch_hangup(self, waiting):
        """A stream's client that hangs up is seen by its connection's reader (a
        RST_STREAM, the connection's end), which ends the stream's relay itself."""
        return False

    def raise_if_gone(self):
        """(as watch_hangup: the reader ends a stream whose client left, its retries too)"""

    def take_back_head(self):
        """HTTP/2 sends a head with the first piece of its body (or its end): while the
        framer still holds it, the client has nothing and can get a whole error answer.
        A gRPC call whose head went alone (release_head) and none of its body can too: its
        status rides on trailers (answer), as held it rode on the head."""
        if self.framer.head is None and not self.grpc_status_may_follow():
            return False
        self.framer = ResponseFramer(self.framer.head_only)
        self.head_status = self.body_sent = 0
        return True

    def grpc_status_may_follow(self):
        """A gRPC call's head went alone and nothing of its body: a failure now (the
        upstream's reset, its timeout, the call's deadline; req.error says which, and a
        client that left has none) can still be a gRPC status in trailers rather than a
        reset stream (INTERNAL to its client, never retried)."""
        req = self.req
        return self.released and not self.body_sent and self.reset_code is None and \
            not self.conn.closed and req is not None and req.error is not None and \
            is_grpc(req.header_map.get(b"content-type"))

    def send_continue(self, req):
        if not req.complete and not self.head_status and \
                req.header_map.pop(b"expect", b"").lower() == b"100-continue":
            self.conn.send_headers(self, [(b":status", b"100")], False)

    def answer(self, req, reply, keep_alive):
        """A gateway-made answer; to a native gRPC call, a gRPC status (trailers-only)."""
        if not is_grpc(req.header_map.get(b"content-type")):
            return super().answer(req, reply, keep_alive)
        route = req.route
        reply.with_error_shape(req.request_id)
        if route is not None and route.chain.reply_steps:
            route.chain.run_reply(req, reply)
        if 200 <= reply.status < 300:
            # written as any answer, the hooks run once (answer() ran them a second time)
            return self.send_reply(req, reply, keep_alive)
        fields = grpc_status_fields(reply, req.error, req.var("grpc_deadline_hit"))
        if not self.released:       # trailers-only; else trailers after the head that went
            fields = [(b":status", b"200"), (b"content-type", b"application/grpc"), *fields] + \
                ([(b"x-request-id", req.request_id.encode("latin-1"))] if req.request_id else [])
        self.conn.send_headers(self, fields, True)
        self.ended = True
        return reply.status, 0

    # -- the stream's greenlet -----------------------------------------------------------------

    def run(self, early_error=None):
        self.running = True
        try:
            if early_error is not None and self.req.request_id is not None and \
                    grpc_web_call(self.req):
                # A gRPC-Web call refused once its target was read (a trusted proxy's
                # X-Forwarded-For naming no client): answered by handle(), by its route, as
                # over HTTP/1.1 (read_head). Answered here, it had no route's CORS headers,
                # and a browser read no status at all.
                self.body_error = early_error
                self.handle(self.req)
            elif early_error is not None:
                self.runtime.log_rejected(self.rejected_client(), early_error)
                self.req.error = early_error
                self.answer(self.req, error_reply(early_error, None), False)
            else:
                self.handle(self.req)
        except ClientGone:
            pass
        except Exception:
            log.exception("unhandled error on HTTP/2 stream %d", self.stream_id)
        finally:
            self.conn.stream_done(self)


_CONTROL_FRAMES = (PingFrame, SettingsFrame, PriorityFrame, GoAwayFrame)     # ACKs too
# DATA frames with less than SMALL_DATA bytes that do not end their stream are paced (see
# core.h2limits): past max_empty_frames_per_second of them in a second, the connection is not
# read until the second is over.
# Bytes of header blocks (HPACK, as sent) a connection's reads take in a second before they
# are paced the same way. hpack's Huffman decoder takes ~0.35 us an encoded byte (a block of
# 30-bit codes decodes at 1.5 us a character), so this bounds one connection's heads to ~20%
# of a core; fields a client sends again are indexed, a few bytes each.
MAX_HEADER_BYTES_PER_SECOND = 512 << 10
# What each decoded field weighs on top of its bytes as sent: hpack takes ~2.3 us a field
# (what 7 bytes of Huffman take), and an indexed field is one byte as sent. Weighed by their
# bytes alone, blocks of 1,400 one-byte indexed fields (the list limit holds ~1,500) went
# through at 370 a second, 3.3 ms of decoding each: one connection took the worker's whole
# core under the pacing. A request of 10 fields weighs 80 bytes more.
FIELD_BYTES = 8


class _BoundedFrameBuffer(BoundedBlocks):
    """The client edge's frame reader (core.h2frames.BoundedBlocks): a block held to
    MAX_HEAD_BYTES, as an HTTP/1.1 head is (60 connections that sent 63 CONTINUATIONs each
    grew a worker by 79 MiB; the decoder refuses a larger block anyway:
    core.h2fields.CachingDecoder), and a WINDOW_UPDATE's reserved bit ignored."""

    reserved_bit_ignored = True     # RFC 9113 6.9: a client that sets it is served
    max_block = MAX_HEAD_BYTES


class FloodCut(Exception):
    """Raised from ``_CountingH2`` once a read's control or empty frames, or the streams it
    refused past max_concurrent_streams, reset (rapid reset) or opened with a head h2 refused,
    pass what the second's budget has left (its ``*_cap``, set by read_loop): the rest of the
    read is not parsed. ``reason``: the budget's label in
    gwserver_http2_connections_closed_total; ``what``: the GOAWAY's and the log's words."""

    def __init__(self, reason, what):
        super().__init__(what)
        self.reason, self.what = reason, what


class StreamPastLimit:
    """The event ``_CountingH2`` makes of a stream it refused past max_concurrent_streams
    (``_refuse_past_limit``): counted as a refused one (count_refused)."""

    def __init__(self, stream_id):
        self.stream_id = stream_id


class StreamMalformed:
    """The event ``_CountingH2`` makes of a request h2 refused once its block was decoded or
    its DATA counted (a content-length that is not a number or disagrees with the DATA,
    trailers without END_STREAM), or of a frame that breaks a stream's rules (a PRIORITY
    making it depend on itself or of the wrong size, its WINDOW_UPDATE of 0): RFC 9113
    8.1.1, 5.3.1, 6.3 and 6.9 make each a stream error, h2 raises it as the connection's.
    ``flow_length``: the DATA's, to give back; ``code``: the RST_STREAM's."""

    def __init__(self, stream_id, error, flow_length=0, code=E.PROTOCOL_ERROR):
        self.stream_id, self.error, self.flow_length = stream_id, error, flow_length
        self.code = code




class _CountingH2(h2.connection.H2Connection):
    """h2, weighing each frame as it is parsed for the flood guards (read_loop takes the
    counts after each read):
    - ``empty_frames``: frames that carry nothing to serve, each one (a WINDOW_UPDATE's parse,
      15 us here): WINDOW_UPDATE, DATA with no data (empty or padding only) that does not
      end its stream, unknown types (one more per KiB), and any frame that raises no event
      (on a closed stream h2 drops it, at most queueing a RST_STREAM);
    - ``small_data``: DATA with less than SMALL_DATA bytes that does not end its stream
      (paced, not cut: see SMALL_DATA);
    - ``control_frames``: PING, SETTINGS, PRIORITY and GOAWAY, ACKs included (but not a PING
      after DATA or HEADERS sent: see sent_since_ping), one more per 64 entries (384 bytes)
      of payload, and a SETTINGS frame one more per 16 open streams
      (h2 walks them all when the initial window changes);
    - ``header_bytes``: header blocks as sent and FIELD_BYTES per field decoded (paced; one
      larger than the decoded list may be is refused before it is decoded:
      core.h2fields.CachingDecoder).
    DATA frames sent are counted for the WINDOW_UPDATEs they earn. A PRIORITY frame that
    makes a stream depend on itself and a stream's WINDOW_UPDATE of 0 are that stream's
    errors (``_stream_error``), not the connection's as h2 would have them: one bad stream
    cost a browser every other stream it had multiplexed on the connection.
    ``_receive_frame`` is h2's own (private since h2 2.0, the same through 4.x); the flood
    tests in test_http2_hardening.py fail if it changes."""

    empty_frames = small_data = control_frames = header_bytes = data_frames_sent = 0
    # What the connection's second has left of the control and empty frame budgets, set
    # before each read (read_loop): past either, parsing stops (FloodCut). Counted after the
    # read alone, a 64 KiB read of 3,855 PINGs was parsed and 3,853 of them answered under a
    # limit of 500.
    control_cap = empty_cap = resets_cap = 1 << 62
    refused = 0         # streams refused past max_concurrent_streams in this read
    rapid = 0           # streams opened and reset by the client in this read
    malformed = 0       # streams opened in this read whose head h2 refused (MadeYouReset)
    read_from = 0       # the highest stream the client had opened when this read began
    last_update_tiny = False        # the last WINDOW_UPDATE was tiny (core.h2limits)
    # A PING after the gateway sent DATA or HEADERS is not counted (one each time): gRPC
    # clients probe the bandwidth with a PING per round trip while a stream's DATA arrives
    # (grpc-go's BDP estimator), which on a fast stream is thousands a second. grpc-go's
    # server forgives such PINGs the same way (its ping strikes reset when it sends).
    sent_since_ping = False

    def __init__(self, config, max_concurrent_streams):
        # How the connection's last streams ended (h2's _closed_streams), for the frames a
        # client sent before it saw them end: h2 keeps 65,536, ~11 MiB of a connection that
        # served that many streams, for its life (1,000 such connections: a worker's 11 GiB).
        # RFC 9113 5.1 lets a frame on a stream reset long ago be an error; a client has at
        # most max_concurrent_streams in flight when it learns of a reset.
        self.MAX_CLOSED_STREAMS = max(CLOSED_STREAMS, 2 * max_concurrent_streams)
        super().__init__(config)
        self.incoming_buffer = _BoundedFrameBuffer(server=True)

    def _receive_frame(self, frame):
        kind = type(frame)
        if kind is DataFrame:
            if len(frame.data) < SMALL_DATA and "END_STREAM" not in frame.flags:
                if frame.data:
                    self.small_data += 1
                else:
                    self._weigh_empty(1)
        elif kind is HeadersFrame:
            # The block's small CONTINUATIONs (BoundedBlocks.fragments), weighed here so the
            # parse stops at the block past the budget: taken only after the read, blocks of
            # 39 empty ones had 2,925 parsed under a budget of 100. A block with none weighs
            # nothing: the first read of a second may leave less than nothing (the updates
            # the last second's DATA earned), and a request alone in a later read was cut.
            fragments = self.incoming_buffer.take_fragments()
            if fragments:
                self._weigh_empty(fragments)
            self.header_bytes += len(frame.data)    # the whole block: CONTINUATIONs joined
            decoded = self.decoder.blocks
        elif kind is WindowUpdateFrame:
            self._weigh_empty(1)
            self.last_update_tiny = tiny_update(frame.window_increment,
                                                self.remote_settings.initial_window_size)
        elif kind is ZeroIncrement:
            self._weigh_empty(1)
            return self._stream_error(frame, "WINDOW_UPDATE of 0 (RFC 9113 6.9)")
        elif kind is PingFrame and self.sent_since_ping and "ACK" not in frame.flags:
            self.sent_since_ping = False    # free: see sent_since_ping
        elif kind in _CONTROL_FRAMES:
            self._weigh_control(1 + frame.body_len // 384 + (
                len(self.streams) // 16 if kind is SettingsFrame else 0))
            if kind is PriorityFrame and frame.depends_on == frame.stream_id:
                return self._stream_error(frame, "depends on itself (RFC 9113 5.3.1)")
        elif kind is PrioritySizeError:
            self._weigh_control(1 + frame.body_len // 384)
            return self._stream_error(frame, f"PRIORITY of {frame.body_len} bytes, not 5 "
                                      "(RFC 9113 6.3)", E.FRAME_SIZE_ERROR)
        elif kind is ExtensionFrame:
            self._weigh_empty(1 + (frame.body_len >> 10))
        elif kind is RstStreamFrame:
            sid = frame.stream_id
            if self._is_idle(sid):
                # RFC 9113 6.4: a connection error. h2 dropped it as for a stream it forgot,
                # and a client's reset of a stream it never opened is a client out of step.
                raise h2.exceptions.ProtocolError(f"RST_STREAM on idle stream {sid} "
                                                  "(RFC 9113 6.4)")
            if sid > self.read_from and sid not in self._closed_streams:
                # Opened in this read, not refused: a rapid reset, which the connection
                # counts (no cancel: it was served no 0.1 s)
                self.rapid += 1
                if self.rapid + self.refused + self.malformed > self.resets_cap:
                    raise FloodCut("rapid_reset", "rapid reset")
        try:
            events = super()._receive_frame(frame)
        except h2.exceptions.InvalidBodyLengthError as exc:
            if kind is not DataFrame:
                raise
            return [StreamMalformed(frame.stream_id, exc, frame.flow_controlled_length)]
        except h2.exceptions.StreamClosedError:
            raise       # HEADERS on a stream that ended: a connection error (RFC 9113 5.1)
        except h2.exceptions.TooManyStreamsError:
            return self._refuse_past_limit(frame)
        except h2.exceptions.ProtocolError as exc:
            if kind is not HeadersFrame or self.decoder.blocks == decoded or \
                    frame.stream_id not in self.streams:
                raise   # HPACK failed (the table would be out of step), or no such stream
            if self._stream_closed_by(frame.stream_id) is not None:
                return self._head_on_finished_stream(frame.stream_id)
            self._close_if_idle(frame.stream_id)
            if frame.stream_id > self.read_from:
                # A new stream's head refused once decoded (a 1xx with END_STREAM): closed at
                # once, so max_concurrent_streams bounds none of them. Counted (a reset each)
                # only after the read, 6,000 in one 60 KB write were all decoded (0.13 s of
                # the worker's CPU) and a PING behind them answered, under a budget of 100.
                self.malformed += 1
                if self.rapid + self.refused + self.malformed > self.resets_cap:
                    raise FloodCut("malformed", "malformed requests (streams reset)")
            return [StreamMalformed(frame.stream_id, exc)]
        if not events:
            self._weigh_empty(1)
        elif kind is HeadersFrame:
            fields = getattr(events[0], "headers", None)    # RequestReceived, Trailers...
            if fields:
                self.header_bytes += FIELD_BYTES * len(fields)
        return events

    def _weigh_empty(self, frames):
        """Count ``frames`` empty frames; past what the second's budget has left (empty_cap)
        the parse stops here (FloodCut). Every frame weighed must come through here (or
        _weigh_control): a stream's WINDOW_UPDATE of 0 on a stream that ended, a 1xx head
        on one the client reset and a PRIORITY of the wrong size were counted by hand,
        uncut, and a 64 KiB read of them was parsed whole, a PING behind it answered."""
        self.empty_frames += frames
        if self.empty_frames > self.empty_cap:
            raise FloodCut("empty_frames", "empty frame flood")

    def _weigh_control(self, frames):
        """As _weigh_empty, for the control frame budget (control_cap)."""
        self.control_frames += frames
        if self.control_frames > self.control_cap:
            raise FloodCut("control_frames", "control frame flood")

    def _is_idle(self, stream_id):
        """Never opened: past the highest stream the client opened (odd ids) or the
        gateway did (even ones: it opens none, push is off)."""
        return stream_id > (self.highest_inbound_stream_id if stream_id % 2 else
                            self.highest_outbound_stream_id)

    def _refuse_past_limit(self, frame):
        """A new stream past max_concurrent_streams (h2's count: streams open): RFC 9113
        5.1.2 makes it a stream error, h2 raised it as the connection's. A client may open
        them before it has the gateway's SETTINGS (the limit is unlimited until then, 6.5.2;
        Go's client assumes 1,000): it lost every stream it had, those served included. The
        block is decoded (the HPACK table stays in step), the stream refused (REFUSED_STREAM:
        safe to send again, nothing of it ran) and counted as a refused one. A stream id
        that could not open a stream is the connection's error, as before."""
        sid = frame.stream_id
        if sid <= self.highest_inbound_stream_id or sid % 2 == 0:
            raise h2.exceptions.ProtocolError(f"stream {sid} cannot open a stream")
        self.refused += 1
        if self.refused > self.resets_cap:
            # (before its decode: the connection ends, its HPACK table with it)
            raise FloodCut("refused", "streams refused past max_concurrent_streams")
        fields = h2.connection._decode_headers(self.decoder, frame.data)
        self.header_bytes += FIELD_BYTES * len(fields)
        self.highest_inbound_stream_id = sid
        self._closed_streams[sid] = h2.stream.StreamClosedBy.SEND_RST_STREAM
        refusal = RstStreamFrame(sid)
        refusal.error_code = E.REFUSED_STREAM
        self._prepare_for_sending([refusal])
        return [StreamPastLimit(sid)]

    def _head_on_finished_stream(self, stream_id):
        """A HEADERS h2's state machine refused (a 1xx ``:status``) on a stream over before
        it, still in ``streams``: h2 raises a plain ProtocolError there, not the
        StreamClosedError of any other HEADERS. Taken for the stream's error, it was dropped
        as reset already, uncounted: ~100,000 such 5-byte heads a second, paced only by
        header bytes. It is what another HEADERS there is: after END_STREAM both ways a
        connection error (RFC 9113 5.1), after a reset a frame dropped and counted."""
        if not self._stream_is_closed_by_reset(stream_id):
            raise h2.exceptions.StreamClosedError(stream_id)
        self._weigh_empty(1)
        return []

    def _close_if_idle(self, stream_id):
        """h2 refuses a 1xx head with END_STREAM before its state machine moves: the stream
        was left idle, where the client's WINDOW_UPDATE or RST_STREAM for it in the same
        write has no transition: a connection error (GOAWAY PROTOCOL_ERROR, every other
        stream lost, this one never reset). Closed, as h2 closes it without END_STREAM."""
        machine = self.streams[stream_id].state_machine
        if machine.state is h2.stream.StreamState.IDLE:
            machine.state = h2.stream.StreamState.CLOSED

    def _stream_error(self, frame, reason, code=E.PROTOCOL_ERROR):
        """A frame RFC 9113 makes its stream's error: the stream, still open, is reset
        (StreamMalformed). On a stream that ended it is dropped, as h2 drops frames there;
        on one never opened (idle) a WINDOW_UPDATE is the connection's error (5.1), and a
        PRIORITY is dropped: no RST_STREAM may name an idle stream (6.4), and priority
        signals may be ignored (5.3)."""
        sid = frame.stream_id
        try:
            stream = self._get_stream_by_id(sid)
        except h2.exceptions.StreamClosedError:
            return []
        except h2.exceptions.NoSuchStreamError:
            if type(frame) is ZeroIncrement:
                raise h2.exceptions.ProtocolError(f"stream {sid} (idle): {reason}") from None
            return []
        if stream.closed:
            return []
        return [StreamMalformed(sid, h2.exceptions.ProtocolError(f"stream {sid}: {reason}"),
                                code=code)]

    def reset_refused(self, stream_id, code):
        """``reset_stream``, also for a stream whose HEADERS h2's state machine refused. One
        with a 1xx ``:status`` (a response's head) has no transition there: h2 closed the
        stream without a frame (or left it idle, with END_STREAM), and then refused to reset
        it: the client got no RST_STREAM, its request hung. Its RST_STREAM is queued by hand,
        and the stream marked reset as h2 marks those it resets: its other errors of the same
        read (an idle stream's PRIORITY) are not counted again (reset_already)."""
        try:
            self.reset_stream(stream_id, code)
            return
        except h2.exceptions.ProtocolError:     # StreamClosedError and NoSuchStreamError too
            if stream_id > self.highest_inbound_stream_id or \
                    self._stream_closed_by(stream_id) is not None:
                return      # never opened (no RST_STREAM may name it), or over: reset, ended
        frame = RstStreamFrame(stream_id)
        frame.error_code = code
        self._prepare_for_sending([frame])
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.state_machine.stream_closed_by = h2.stream.StreamClosedBy.SEND_RST_STREAM
        else:                               # dropped by a later stream's HEADERS
            self._closed_streams[stream_id] = h2.stream.StreamClosedBy.SEND_RST_STREAM

    def _receive_goaway_frame(self, frame):
        """A client's GOAWAY says it opens no more streams and will take none of the
        gateway's (RFC 9113 6.8: its last_stream_id names streams the gateway opened, and
        it opens none); the streams it opened go on. h2 closes its whole state machine on
        it instead: the answers still coming could not be sent (an "unhandled error" and a
        traceback each), and the client's next frame, a WINDOW_UPDATE for the download it
        is reading (Go's ClientConn.Shutdown sends GOAWAY, then waits for its streams),
        was a protocol error that cut every answer. Here it only makes the connection
        drain (dispatch): no new stream, the rest served to their end."""
        event = h2.events.ConnectionTerminated()
        try:
            event.error_code = E(frame.error_code)
        except ValueError:                  # a code RFC 9113 does not name
            event.error_code = frame.error_code
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]

    def send_data(self, *args, **kwargs):
        self.data_frames_sent += 1
        self.sent_since_ping = True
        return super().send_data(*args, **kwargs)

    def send_headers(self, *args, **kwargs):
        self.sent_since_ping = True
        return super().send_headers(*args, **kwargs)


# Streams a client may open past a GOAWAY's last stream id before it has read the GOAWAY
# (the race RFC 9113 6.8 describes): refused, not counted as resets (count_refused). At
# least; a client may have max_concurrent_streams open in that race (goaway_race_ids).
GOAWAY_RACE_STREAMS = 100
# ... and after the client's own GOAWAY, at most this many, whatever max_concurrent_streams
# says (it takes up to 2^31 - 1: from 2^30 no stream id fell past the race, and refusals
# were never counted again). The gateway's GOAWAY is not capped: see goaway_race_ids.
GOAWAY_RACE_MAX_STREAMS = 1000
# A client's reset of a stream served this long is a cancel, not counted (``cancelled``)
CANCEL_AFTER = 0.1
REQUEST_FRAME_TYPES = (0x1, 0x9)       # HEADERS, CONTINUATION: a request's head coming
# The stream errors h2 resets a stream for itself (StreamReset, remote_reset False): why, for
# the access line (it said nothing: status 0, as if the client had hung up)
LOCAL_RESETS = {
    E.FLOW_CONTROL_ERROR: "WINDOW_UPDATE took the stream's window past 2^31 - 1 "
                          "(RFC 9113 6.9.1)",
    E.STREAM_CLOSED: "a frame after the stream's END_STREAM (RFC 9113 5.1)"}


class H2ServerConnection:
    """One client connection speaking HTTP/2 (see the module doc)."""

    def __init__(self, runtime, sock, addr, scheme="http"):
        self.runtime = runtime          # the worker's Runtime (server/runtime.py)
        self.settings = server = runtime.conf.server
        self.conf = conf = runtime.http2_listeners.of(sock)
        self.sock = sock
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client_ip = peer_address(addr)
        self.scheme = connection_scheme(addr, scheme)
        self.limits = (server["limit_request_line"], server["limit_request_fields"],
                       server["limit_request_field_size"])
        self.underscores = server["headers_with_underscores"]
        self.path_rules = runtime.services.path_rules
        self.trusted_peer, self.trusted_x_forwarded = \
            runtime.trusted_proxies.trusts_peer(addr, self.client_ip)
        self.identity_peer = runtime.identity_proxies.trusts_peer(addr, self.client_ip)[0]
        self.body_timeout = server["client_body_timeout"]
        self.writing = WriteDeadline(self.expire)     # streams write while the reader reads
        self.h2 = _CountingH2(h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_inbound_headers=False,
            normalize_inbound_headers=False,
            # Response fields are made here: lower-case names, hop-by-hop ones dropped
            # (ResponseFramer), so h2's per-field checks and rewrites only cost CPU.
            validate_outbound_headers=False, normalize_outbound_headers=False),
            conf["max_concurrent_streams"])
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: conf["max_concurrent_streams"],
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: conf["initial_window_size"],
            h2.settings.SettingCodes.MAX_FRAME_SIZE: conf["max_frame_size"],
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEAD_BYTES,
            h2.settings.SettingCodes.ENABLE_PUSH: 0})
        # What h2 derived from its default settings in __init__ (it would apply ours only
        # once acknowledged, and a client need not wait for that).
        self.h2.max_inbound_frame_size = conf["max_frame_size"]
        self.h2.encoder = FieldEncoder()        # static table and literals: see core.h2fields
        self.h2.decoder = CachingDecoder()
        self.h2.decoder.max_header_list_size = MAX_HEAD_BYTES
        self.lock = gevent.lock.Semaphore()
        self.streams = {}               # stream id -> H2Stream still being served
        self.pacer = WindowPacer()
        self.starved = {}               # stream id -> H2Stream waiting for the connection's
        #                                 window only, in the order they began to wait
        self.timed_out = self.closed = False
        self.draining = False           # GOAWAY sent: no new streams
        self.client_went_away = False   # the client sent GOAWAY: its race capped
        self.last_stream_id = 0
        self.requests = 0
        self.resets = self.control_frames = self.empty_frames = 0
        # Streams the client reset that are still ending (so still counted toward
        # max_concurrent_streams), up to that many: a stream it opens in one's slot and
        # the gateway refuses is not counted again (count_refused)
        self.reset_credit = 0
        self.small_data = self.header_bytes = 0
        self.counted_since = time.monotonic()
        self.bodies_waiting = 0         # streams waiting for body data (body_rate)
        self.wait_state = None          # what the reader waits for: see _wait_for
        self.unsent_since = None        # idle, its last answer still queued (expire)
        self.idle_closing = False       # idle and timed out: GOAWAY sent, lingering (expire)
        self.write_shut = False         # drained: FIN sent, nothing more goes out
        self.timeout_reason = None      # why Runtime.close_slowest_body (_head) closed it
        self.head_read = 0              # bytes read since a head began (close_slowest_head)

    # -- output (any greenlet, under the lock) ------------------------------------------------

    def _flush(self):
        data = self.h2.data_to_send()
        if data and self.write_shut:
            # After drained()'s FIN (a PING's ACK, a refused stream's RST): dropped. Written,
            # the write failed and closed the connection, and the window updates of a client
            # still reading the last answer met a reset that threw its tail away.
            return
        if data:
            try:
                send_all(self.sock, data, self.runtime.deadlines, self.writing,
                         self.runtime.send_timeout)
            except OSError as exc:
                self.closed = True
                raise ClientGone(str(exc)) from None

    def send(self, stream, actions):
        """A stream's frames from one write, flushed with one send while the client's windows
        take them; what does not fit waits for its window in send_data."""
        sid = stream.stream_id
        with self.lock:
            if stream.reset_code is not None or self.closed:
                raise ClientGone("stream reset or connection closed")
            h2conn = self.h2
            try:
                for i, (kind, payload, end) in enumerate(actions):
                    if kind == "headers":
                        h2conn.send_headers(sid, payload, end_stream=end)
                    elif len(payload) <= min(h2conn.local_flow_control_window(sid),
                                             h2conn.max_outbound_frame_size):
                        h2conn.send_data(sid, payload, end_stream=end)
                    else:
                        break
                else:
                    i = len(actions)
            except h2.exceptions.StreamClosedError:
                raise ClientGone("stream closed") from None
            self._flush()
        for kind, payload, end in actions[i:]:
            if kind == "headers":
                self.send_headers(stream, payload, end)
            else:
                self.send_data(stream, payload, end)

    def send_headers(self, stream, fields, end):
        with self.lock:
            if stream.reset_code is not None or self.closed:
                raise ClientGone("stream reset or connection closed")
            try:
                self.h2.send_headers(stream.stream_id, fields, end_stream=end)
            except h2.exceptions.StreamClosedError:
                raise ClientGone("stream closed") from None
            self._flush()

    def send_data(self, stream, data, end):
        view = memoryview(data)
        sid = stream.stream_id
        waited = False
        try:
            while True:
                pause = 0.0
                with self.lock:
                    if stream.reset_code is not None or self.closed:
                        raise ClientGone("stream reset or connection closed")
                    try:
                        window = min(self.h2.local_flow_control_window(sid),
                                     self.h2.max_outbound_frame_size)
                        if silly(window, len(view), self.h2.last_update_tiny):
                            pause = self.pacer.pause(time.monotonic())
                        if (window > 0 or not view) and not pause:
                            chunk, view = view[:window], view[window:]
                            self.h2.send_data(sid, bytes(chunk), end_stream=end and not view)
                            self._flush()
                            if not view:
                                return
                            continue
                        own_window = self.h2.streams[sid].outbound_flow_control_window
                    except (h2.exceptions.StreamClosedError, KeyError):
                        raise ClientGone("stream closed") from None
                    if not pause:
                        if stream.window is None:
                            stream.window = gevent.event.Event()
                        stream.window.clear()
                        if own_window > 0:      # only the connection's window is shut
                            stream.pending = len(view)
                            self.starved[sid] = stream
                    if waited:
                        self.feed_starved()
                if pause:       # a window opened a few bytes at a time: see core.h2limits
                    gevent.sleep(pause)
                    continue
                waited = True
                if not stream.window.wait(self.conf["send_timeout"]):
                    throttled_log.log(log, logging.INFO, "h2 window shut",
                                      "HTTP/2 stream %d of %s: window shut for %ss; reset",
                                      sid, self.client_ip, self.conf["send_timeout"])
                    self.reset(sid, E.CANCEL)
                    stream.on_reset(E.CANCEL)
                    raise ClientGone("the client's window stayed shut")
                self.starved.pop(sid, None)
        finally:
            if waited:
                self.starved.pop(sid, None)
                # Woken with a share of the connection's window: what this stream did not
                # take (it ended, was reset, or its own window shrank) goes to the next.
                with self.lock:
                    self.feed_starved()

    def feed_starved(self):
        """Under the lock, when the connection's window opened: wake the streams waiting for
        it that it can feed (core.h2limits.fed_from_window)."""
        for stream in fed_from_window(self.h2, self.starved):
            stream.window_opened()

    def acknowledge(self, stream_id, size):
        with self.lock:
            try:
                self.h2.acknowledge_received_data(size, stream_id)
                self._flush()
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
                pass

    def reset(self, stream_id, code):
        with self.lock:
            try:
                self.h2.reset_stream(stream_id, code)
                self._flush()
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                pass
            except ClientGone:
                pass

    def goaway(self, code, reason=""):
        """GOAWAY naming the last stream taken; h2's state machine is left open so the
        streams in flight can finish (h2 would refuse to send once it sent GOAWAY itself)."""
        if self.draining and code == E.NO_ERROR:
            return
        self.draining = True
        self._send_goaway(code, reason)

    def _goaway_frame(self, code, reason=""):
        frame = GoAwayFrame(0)
        frame.last_stream_id, frame.error_code = self.last_stream_id, code
        frame.additional_data = reason.encode()[:100]
        return frame.serialize()

    def _send_goaway(self, code, reason=""):
        with self.lock:
            try:
                self._flush()
                send_all(self.sock, self._goaway_frame(code, reason), self.runtime.deadlines,
                         self.writing, self.runtime.send_timeout)
            except (OSError, ClientGone):
                self.closed = True

    def expire(self):
        """A deadline passed (idle, a head too slow, a stalled send, the linger after an
        error): close, so waits end. An idle connection closes gracefully (``idle_close``)."""
        if self.idle_closing:
            if not self.still_sending():
                self.sock.close()       # its linger ran out, or the slots are wanted now
            return
        idle = not self.streams
        if idle and self.wait_state == "idle" and self.still_sending():
            return
        self.timed_out = True
        if idle and not self.timeout_reason:
            self.idle_close()
            return
        try:
            # (not while a frame is half written: the lock's holder waits for the socket)
            if not self.lock.locked():
                if self.timeout_reason and not unsent_bytes(self.sock):
                    # Closed for a body under min_body_rate, or a head as slow, while every
                    # slot was taken: the client is told why, as an HTTP/1.1 one gets its
                    # 408 (nothing is queued ahead of it). Not a graceful close:
                    # ENHANCE_YOUR_CALM, as for the floods.
                    self._send_now(self._goaway_frame(E.ENHANCE_YOUR_CALM,
                                                      self.timeout_reason))
        finally:
            self.sock.close()

    def still_sending(self):
        """Is the last answer still queued for a slow reader (and for less than send_timeout:
        then looked at again in a second)? Closed now, the window updates it sends while
        reading would meet a closed socket, and the reset throws the rest away. It gets as
        long as a stalled send would."""
        if not unsent_bytes(self.sock):
            return False
        now = time.monotonic()
        if self.unsent_since is None:
            self.unsent_since = now
        if now - self.unsent_since >= self.runtime.send_timeout:
            return False
        self.runtime.deadlines.arm(self, 1.0)
        return True

    def _send_now(self, frame):
        """Write a small frame without waiting (the ticker must not), or drop it. Over TLS it
        is one record (TLSSocket.send_now), which a socket with nothing queued takes whole."""
        try:
            if type(self.sock) is PlainSocket:
                self.sock._sock.send(frame, socket.MSG_DONTWAIT)
            else:
                self.sock.send_now(frame)
        except (OSError, ValueError):
            pass

    def reclaim(self):
        """Runtime.close_oldest_idle: every slot is taken and this idle connection's is
        wanted now, so no linger (its GOAWAY still goes first; HTTP/1.1's idle ones are
        closed as plainly)."""
        self.timed_out = self.draining = self.idle_closing = True
        self.runtime.deadlines.disarm(self)
        if type(self.sock) is PlainSocket:
            try:
                if not self.lock.locked():      # (not into a frame half written)
                    self._send_now(self._goaway_frame(E.NO_ERROR))
            finally:
                self.sock.close()
            return
        # TLS: a record is written whole or not at all, by a greenlet that may wait
        # (briefly) rather than by the ticker
        gevent.spawn(self._goaway_then_close, True)

    def idle_close(self):
        """Close an idle connection whose keepalive or header_timeout ran out as nginx's
        lingering close does (one whose slot is wanted now goes at once: ``reclaim``):
        draining from now, GOAWAY(NO_ERROR), and the reader reads on, refusing any new
        stream (REFUSED_STREAM: safe to send again), until the client closes or
        LINGER_SECONDS pass (expire again). Closed at once, a request the client sent
        meanwhile would sit unread, and the reset such a close sends can take the GOAWAY
        with it: a request lost without a word. The GOAWAY goes out from a greenlet: the
        ticker must not wait, and a TLS record is written whole or not at all."""
        self.draining = self.idle_closing = True
        self.runtime.deadlines.arm(self, LINGER_SECONDS)
        # Reclaimable while it lingers (a header_timeout's, with half a HEADERS read, was not
        # in idle_clients): a new client need not wait for the linger to end.
        self.runtime.idle_clients[self] = None
        gevent.spawn(self._goaway_then_close, False)

    def _goaway_then_close(self, always):
        """GOAWAY(NO_ERROR) from a greenlet, within a second; then close, ``always``
        (reclaim) or only when it could not go out (idle_close: the client is not reading,
        so there is no reason to linger)."""
        sent = False
        with gevent.Timeout(1.0, False):
            self._send_goaway(E.NO_ERROR)
            sent = not self.closed
        if always or not sent:
            self.sock.close()

    # -- the reader ------------------------------------------------------------------------------

    def serve(self, counted=False):
        """As ClientConnection.serve (``counted`` too)."""
        runtime = self.runtime
        if not counted:
            runtime.client_opened()
        stopping = runtime.stopping
        stopping.rawlink(self._on_stop)
        killed = False
        try:
            with self.lock:
                self.h2.initiate_connection()
                grown = self.conf["connection_window_size"] - 65535
                if grown:       # h2 refuses an increment of 0 (ValueError: every connection)
                    self.h2.increment_flow_control_window(grown)
                self._flush()
            if not runtime.alive:
                self.goaway(E.NO_ERROR)
            self.read_loop()
        except ClientGone:
            pass
        except gevent.GreenletExit:
            killed = True       # the worker's stop cuts what it still holds (wait_finishing)
            raise
        finally:
            stopping.unlink(self._on_stop)
            runtime.deadlines.disarm(self)
            runtime.idle_clients.pop(self, None)
            runtime.head_readers.pop(self, None)
            self.closed = True
            spared = []
            for stream in list(self.streams.values()):
                stream.on_reset(E.CANCEL)
                if stream.greenlet is None:
                    continue
                if finishing(stream):
                    spared.append(stream.greenlet)
                else:
                    stream.greenlet.kill(StreamKilled("connection closed"), block=False)
            try:
                self.sock.close()
            except OSError:
                pass
            try:
                wait_finishing(spared, cut=killed)
            finally:
                runtime.client_closed()

    def _on_stop(self, _event):
        gevent.spawn(self.goaway, E.NO_ERROR)

    def _wait_for(self):
        """Arm the deadline of what the reader waits for, when that changed: "idle" (no
        stream open: keepalive, or header_timeout before the first request; in
        runtime.idle_clients), "head" (no stream served, and a header block begun or a
        HEADERS frame half read: header_timeout) or "streams" (the streams' own deadlines,
        a head begun or not). PINGs and other control frames of an idle connection, whole or
        in pieces, do not restart its keepalive, as they would not end an HTTP/1.1
        connection's idleness either."""
        if self.idle_closing:
            return                      # lingering: its deadline is idle_close's
        buffered = self.h2.incoming_buffer
        begun = buffered._data
        # A head begun while streams are served (a header block without its END_HEADERS, as
        # half a HEADERS frame) is timed from when the last of them ends: its header_timeout
        # closed the connection, the long poll it was serving cut with it. Until then the
        # streams' own deadlines bound it, and it holds at most a block (64 KiB).
        state = "streams" if self.streams else "head" if buffered._headers_buffer or (
            len(begun) > 3 and begun[3] in REQUEST_FRAME_TYPES) else "idle"
        if state == self.wait_state:
            return
        runtime, server = self.runtime, self.settings
        if self.wait_state == "head":
            runtime.head_readers.pop(self, None)    # (or closed as the slowest)
        self.wait_state = state
        self.unsent_since = None
        if state == "idle":
            runtime.idle_clients[self] = None
            runtime.deadlines.arm(self, server["keepalive"] if self.requests
                                  else server["header_timeout"])
            return
        runtime.idle_clients.pop(self, None)
        if state == "head":
            runtime.deadlines.arm(self, server["header_timeout"])
            self.slow_head_began(buffered)
        else:
            runtime.deadlines.disarm(self)

    def slow_head_began(self, buffered):
        """A head has begun: the connection is one of Runtime.head_readers, judged by its
        rate (head_read, counted from what of the head is in) as an HTTP/1.1 head is when
        every slot is taken and none is idle (close_slowest_head). It was not: connections
        that each sent half a header block held every slot for header_timeout, a newcomer
        left waiting 6 s where HTTP/1.1 heads as slow were closed after SLOW_HEAD_GRACE."""
        self.head_read = len(buffered._data) + buffered.held_bytes  # (BoundedBlocks' sum)
        self.runtime.head_readers[self] = time.monotonic()

    def read_loop(self):
        while not (self.closed or self.draining and not self.streams and
                   not self.idle_closing):
            self._wait_for()
            try:
                data = self.sock.recv(RECV_SIZE)
            except OSError:
                return
            if not data:
                return
            if self.wait_state == "head":
                self.head_read += len(data)         # its rate: close_slowest_head
            try:
                with self.lock:
                    # Under the lock: a stream's send may hold it for long (a slow reader),
                    # and caps set before were the last second's when the parse began: a
                    # client under the budgets in each second was cut.
                    self.set_caps()
                    events = self.h2.receive_data(data)
                    self._flush()
                self.count_frames_read()
            except FloodCut as cut:
                self.flood_cut(cut)
                return
            except h2.exceptions.ProtocolError as exc:
                throttled_log.log(log, logging.INFO, "h2 protocol error",
                                  "HTTP/2 connection from %s: %s", self.client_ip, exc)
                self.count_closed("header_block" if isinstance(
                    exc, h2.exceptions.DenialOfServiceError) else "protocol_error")
                with self.lock:
                    try:
                        self._flush()           # h2's GOAWAY with the error code
                    except ClientGone:
                        return
                # The GOAWAY must not be lost to the RST of a close with unread input.
                linger(self.sock, self.runtime.client_buf, self.runtime.deadlines, self)
                return
            for event in events:
                if self.closed:         # a flood guard closed it: the rest is not served
                    return
                self.dispatch(event)
            if len(data) == RECV_SIZE:
                # A client that keeps the socket full never makes recv wait: let the
                # worker's other connections run between its reads.
                gevent.sleep(0)

    def dispatch(self, event):
        kind = type(event)
        if kind is h2.events.RequestReceived:
            self.on_request(event)
        elif kind is h2.events.DataReceived:
            stream = self.streams.get(event.stream_id)
            if stream is None:          # answered already: the window must not leak
                self.acknowledge(event.stream_id, event.flow_controlled_length)
                return
            try:
                stream.on_data(event.data, event.flow_controlled_length,
                               event.stream_ended is not None)
            except Malformed as exc:
                self.refuse(stream, E.PROTOCOL_ERROR, exc)
        elif kind is h2.events.StreamEnded:
            stream = self.streams.get(event.stream_id)
            if stream is not None and not stream.req.complete:
                try:
                    stream.on_data(b"", 0, True)
                except Malformed as exc:
                    self.refuse(stream, E.PROTOCOL_ERROR, exc)
        elif kind is h2.events.StreamReset:
            stream = self.streams.get(event.stream_id)
            if not event.remote_reset and stream is not None:
                # h2 reset it itself, for the client's stream error: as a malformed one
                self.refuse(stream, event.error_code, LOCAL_RESETS.get(
                    event.error_code, f"stream error {event.error_code!s}"))
                return
            if stream is not None:
                stream.on_reset(event.error_code)
                self.stop(stream, "reset by the client")
                if event.stream_id in self.streams:     # still ending: see count_refused
                    self.reset_credit = min(self.reset_credit + 1,
                                            self.conf["max_concurrent_streams"])
                if cancelled(stream):
                    return
            # Resets count, refused streams' too: work is bounded by the streams being
            # served, the rate of new ones by this.
            self.count_flood("resets", self.conf["max_resets_per_second"], "rapid reset",
                             reason="rapid_reset")
        elif kind is h2.events.WindowUpdated:
            if event.stream_id:
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.window_opened()
            else:
                with self.lock:
                    self.feed_starved()
        elif kind is h2.events.TrailersReceived:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                try:
                    if len(event.headers) > self.limits[1]:
                        raise Malformed("too many trailer fields")
                    check_trailers(event.headers)
                except Malformed as exc:
                    self.refuse(stream, E.PROTOCOL_ERROR, exc)
        elif kind is h2.events.RemoteSettingsChanged:
            change = event.changed_settings.get(h2.settings.SettingCodes.INITIAL_WINDOW_SIZE)
            if change is not None and change.new_value > (change.original_value or 0):
                for stream in self.streams.values():     # the initial window grew
                    stream.window_opened()
        elif kind is h2.events.ConnectionTerminated:
            self.draining = self.client_went_away = True
        elif kind is StreamMalformed:
            self.on_malformed(event)
        elif kind is StreamPastLimit:       # refused (RST_STREAM sent): counted as such
            self.count_refused()

    def on_malformed(self, event):
        """A stream h2 refused as malformed (StreamMalformed): reset (PROTOCOL_ERROR) and
        counted as the client's, as one refused here is; the connection's other streams go
        on. A client whose body overran its content-length by one byte lost every stream
        of the connection (h2's GOAWAY PROTOCOL_ERROR), other users' too behind a proxy
        that pools them on one connection."""
        sid, reason = event.stream_id, str(event.error)
        stream = self.streams.get(sid)
        if stream is not None:
            self.refuse(stream, event.code, reason)
        elif not self.reset_already(sid):   # its head: no stream served yet
            self.runtime.log_rejected(self.client_ip, _Rejected(reason))
            self.reset_refused(sid, event.code)
            self.count_malformed()
        if event.flow_length:       # counted against the connection's window, never read
            self.acknowledge(sid, event.flow_length)

    def reset_already(self, stream_id):
        """Was the stream reset (refused, malformed) by an earlier event of the same read?
        A stream's errors come as one event each, all made before any is dispatched: 12
        PRIORITY frames on one stream in one write counted 12 resets (ENHANCE_YOUR_CALM,
        every other stream cut) and logged a rejected request for each. A stream h2 closed
        by itself (closed by no one: a HEADERS its state machine refused, reset_refused) was
        not: taken as reset, it went unanswered and uncounted (a flood of them free). h2's
        ``_stream_closed_by`` (private, as ``_receive_frame``) also knows the streams it
        dropped from ``streams`` when a later stream of the same read opened."""
        stream = self.h2.streams.get(stream_id)
        if stream is not None and not stream.closed:
            return False
        return self.h2._stream_closed_by(stream_id) is not None

    def reset_refused(self, stream_id, code):
        """``reset`` of a stream the client broke: _CountingH2.reset_refused."""
        with self.lock:
            try:
                self.h2.reset_refused(stream_id, code)
                self._flush()
            except ClientGone:
                pass

    # -- server.min_body_rate (Runtime.close_slowest_body) -----------------------------------

    def body_wait_began(self):
        if not self.bodies_waiting:
            self.runtime.body_readers[self] = None
        self.bodies_waiting += 1

    def body_wait_ended(self):
        self.bodies_waiting -= 1
        if not self.bodies_waiting:
            self.runtime.body_readers.pop(self, None)      # (or closed as the slowest)

    def body_rate(self, now):
        """As ClientConnection.body_rate, for the connection's open streams together: their
        body bytes over the longest any of them waited. None (not judged) unless every open
        stream waits for its body and none has begun its answer: a connection that is being
        served (a bidi gRPC call whose answers flow, a request whose body is in) is not a
        slow client. A stream that ended takes its bytes and time with it."""
        streams = self.streams
        if self.bodies_waiting < len(streams):
            return None
        read, waited = 0, 0.0
        for stream in streams.values():
            if stream.head_status:
                return None
            read += stream.req.body_size
            waited = max(waited, stream.body_waited +
                         (now - stream.wait_started if stream.waiting else 0.0))
        return read / waited if waited >= SLOW_BODY_GRACE else None

    def may_close_idle(self):
        """Runtime.close_oldest_idle: not while the last answer is still in the kernel's
        queue (the client's window updates would meet a closed socket, and the reset throws
        the rest away), nor while the client's next bytes wait unread (a TLS client's
        preface among them: the close would reset the connection, and its GOAWAY with it),
        nor when nothing came yet of a preface that follows a TLS handshake just ended.
        That one is asked first: it reads two attributes where the others cost syscalls,
        and a newcomer at the limit walks every idle connection in its grace (TLS clients
        that reconnect within it keep them all there)."""
        if self.h2.incoming_buffer._preamble_len == len(PREFACE) and \
                handshake_just_ended(self.sock):
            return False
        return not unsent_bytes(self.sock) and not has_unread_input(self.sock)

    def count_frames_read(self):
        """What _CountingH2 weighed in the last read, against each budget. Each DATA frame
        sent lets a client send a WINDOW_UPDATE for its stream and one for the connection: a
        download is no flood. Small DATA and header bytes past their share of the second
        are paced: the connection is not read again until the second is over."""
        counted = self.h2
        counted.empty_frames += counted.incoming_buffer.take_fragments()
        if counted.empty_frames:
            self.count_flood("empty_frames", self.conf["max_empty_frames_per_second"] +
                             2 * counted.data_frames_sent, "empty frame flood",
                             counted.empty_frames)
            counted.empty_frames = 0
        if counted.control_frames:
            self.count_flood("control_frames", self.conf["max_control_frames_per_second"],
                             "control frame flood", counted.control_frames)
            counted.control_frames = 0
        if counted.small_data or counted.header_bytes:
            self.start_second_if_due()
            self.small_data += counted.small_data
            self.header_bytes += counted.header_bytes
            counted.small_data = counted.header_bytes = 0
            if not self.closed and (
                    self.small_data > self.conf["max_empty_frames_per_second"] or
                    self.header_bytes > MAX_HEADER_BYTES_PER_SECOND):
                throttled_log.log(log, logging.INFO, "h2 paced",
                                  "HTTP/2 connection from %s: %d DATA frames under %d bytes "
                                  "and %d bytes of header blocks this second: paced (read "
                                  "again when the second is over)", self.client_ip,
                                  self.small_data, SMALL_DATA, self.header_bytes)
                gevent.sleep(max(0.0, self.counted_since + 1.0 - time.monotonic()))

    def set_caps(self):
        """Tell the parser what this second has left of the resets, control and empty frame
        budgets (_CountingH2.control_cap): a read past one stops there (FloodCut).
        A second that is over is not turned over here but by the read's count, as before
        (count_frames_read): the first read of a new second still has the DATA frames sent
        in the last one for the WINDOW_UPDATEs they earned. Turned over first, a client that
        gave a download's window back a second later, in one write, was cut as a flood."""
        counted, conf = self.h2, self.conf
        over = time.monotonic() - self.counted_since >= 1.0
        resets, control, empty = (0, 0, 0) if over else \
            (self.resets, self.control_frames, self.empty_frames)
        counted.refused = counted.rapid = counted.malformed = 0
        counted.read_from = counted.highest_inbound_stream_id
        counted.resets_cap = conf["max_resets_per_second"] - resets
        counted.control_cap = conf["max_control_frames_per_second"] - control
        counted.empty_cap = (conf["max_empty_frames_per_second"] +
                             2 * counted.data_frames_sent - empty)

    def start_second_if_due(self):
        """The budgets count per second: a new one starts at the first count after one."""
        now = time.monotonic()
        if now - self.counted_since >= 1.0:
            self.counted_since = now
            self.resets = self.control_frames = self.empty_frames = 0
            self.small_data = self.header_bytes = 0
            self.h2.data_frames_sent = 0

    def count_flood(self, counter, limit, what, frames=1, reason=None):
        """Add ``frames`` to this second's ``counter``; past ``limit``, GOAWAY
        ENHANCE_YOUR_CALM and close (``reason``, else ``counter``: the metric's label)."""
        if self.closed:
            return
        self.start_second_if_due()
        count = getattr(self, counter) + frames
        setattr(self, counter, count)
        if count > limit:
            throttled_log.log(log, logging.WARNING, ("h2 flood", what),
                              "HTTP/2 connection from %s: %s (more than %d a second): GOAWAY",
                              self.client_ip, what, limit)
            self.close_for_flood(what, reason or counter)

    def close_for_flood(self, what, reason):
        """GOAWAY ENHANCE_YOUR_CALM saying ``what``, and close (``reason``: the metric's)."""
        self.goaway(E.ENHANCE_YOUR_CALM, what)
        self.closed = True
        self.count_closed(reason)
        # The rest of the flood is unread: a plain close is a RST, which can overtake the
        # GOAWAY at the client and take its reason with it (as in read_loop's error path).
        linger(self.sock, self.runtime.client_buf, self.runtime.deadlines, self)
        try:
            self.sock.close()
        except OSError:
            pass

    def flood_cut(self, cut):
        """The parser stopped mid-read at a budget (FloodCut ``cut``): the read's counts are
        taken and the connection closed for that budget. The events of the frames parsed
        before the cut are lost with the read, so it is closed whatever the counts say (a
        second that turned over mid-parse started the budgets again), as the cut's budget
        (it was labelled control_frames whichever it was)."""
        self.count_frames_read()
        counted = self.h2
        resets = counted.rapid + counted.refused + counted.malformed
        if resets > counted.resets_cap:
            if counted.rapid:
                self.count_flood("resets", self.conf["max_resets_per_second"], "rapid reset",
                                 resets, reason="rapid_reset")
            elif counted.malformed:
                self.count_flood("resets", self.conf["max_resets_per_second"],
                                 "malformed requests (streams reset)", resets,
                                 reason="malformed")
            else:
                self.count_refused(counted.refused)
        if not self.closed:
            throttled_log.log(log, logging.WARNING, ("h2 flood", cut.what),
                              "HTTP/2 connection from %s: %s (at the budget as its second "
                              "ended): GOAWAY", self.client_ip, cut.what)
            self.close_for_flood(cut.what, cut.reason)

    def count_closed(self, reason):
        """gwserver_http2_connections_closed: a connection closed with an error, by why (the
        access log has no line for a connection, the error log's are throttled)."""
        metrics = self.runtime.metrics
        if metrics is not None:
            metrics.count_http2_close(reason)

    def on_request(self, event):
        sid = event.stream_id
        self.last_stream_id = max(self.last_stream_id, sid) if not self.draining else \
            self.last_stream_id
        if self.draining or len(self.streams) >= self.conf["max_concurrent_streams"]:
            # Streams still served after a reset count: rapid reset cannot pile up work.
            self.reset(sid, E.REFUSED_STREAM)
            if self.draining:
                if sid - self.last_stream_id > self.goaway_race_ids():
                    self.count_refused()
            elif self.reset_credit:
                self.reset_credit -= 1      # in the slot of a stream it reset: counted then
            else:
                self.count_refused()
            return
        self.requests += 1
        stream = H2Stream(self, sid)
        early_error = None
        try:
            stream.open(event.headers, event.stream_ended is not None)
        except Malformed as exc:
            self.runtime.log_rejected(stream.rejected_client(), _Rejected(str(exc)))
            self.reset(sid, E.PROTOCOL_ERROR)
            self.count_malformed()
            return
        except HTTPError as exc:
            early_error = exc
        self.streams[sid] = stream
        self._wait_for()
        stream.greenlet = gevent.spawn(stream.run, early_error)

    def refuse(self, stream, code, reason):
        if stream.reset_code is not None:
            return      # reset by an earlier event of the same read: once (reset_already)
        throttled_log.log(log, logging.INFO, "h2 stream refused", "HTTP/2 stream %d of %s: %s",
                          stream.stream_id, self.client_ip, reason)
        # The access line says why: the stream's own, or one of its own if it never began
        if not stream.running:      # (its head was read: the client a trusted proxy named)
            self.runtime.log_rejected(stream.rejected_client(), _Rejected(str(reason)))
        elif stream.req is not None and stream.req.error is None:
            stream.req.error = _Rejected(str(reason))
        self.reset_refused(stream.stream_id, code)     # (a trailer of 1xx: see reset_refused)
        stream.on_reset(code)
        self.stop(stream, "malformed")
        self.count_malformed()

    def count_malformed(self):
        """A stream the gateway reset because the client broke the protocol counts as a
        reset of the client's (CVE-2025-8671, "MadeYouReset"): uncounted, one connection
        had 11,700 malformed requests a second reset (66% of a core, 1.5 MB a second of
        access log), where a client's own resets end it past max_resets_per_second."""
        self.count_flood("resets", self.conf["max_resets_per_second"],
                         "malformed requests (streams reset)", reason="malformed")

    def goaway_race_ids(self):
        """How far past a GOAWAY's last stream id a client's streams are its race, not a
        flood: it may have max_concurrent_streams open before it reads the gateway's GOAWAY
        (their refusals come after it). 100 of a gRPC client's 300 calls in a reload's race
        were counted, with max_concurrent_streams = 500: ENHANCE_YOUR_CALM, the call being
        drained cut. Capped at 1,000 streams for every GOAWAY, a client with 1,500 calls in
        that race (max_concurrent_streams = 3000) was cut the same way: the cap is for the
        client's own GOAWAY (no real race, and a flood after it was 36,150 refusals in 3 s
        uncounted), while a huge max_concurrent_streams lets a client hold that many streams
        served anyway, which cost more than refusals."""
        streams = max(GOAWAY_RACE_STREAMS, self.conf["max_concurrent_streams"])
        if self.client_went_away:
            streams = min(streams, GOAWAY_RACE_MAX_STREAMS)
        return 2 * streams

    def count_refused(self, streams=1):
        """A stream refused (after a GOAWAY, either side's, or while streams are still served
        past max_concurrent_streams) counts as a reset of the client's, as a malformed one does: its
        HEADERS cost a decode and its RST_STREAM a send. Uncounted, a client that sent
        GOAWAY with a slow stream open (so the connection stays) had 16,000 streams a
        second refused, half a core, for as long as that stream lasted (a reload's drain:
        up to graceful_timeout). Those of a GOAWAY's race (goaway_race_ids) are not
        counted: a busy client opens that many before it has read it. Nor is one opened in
        the slot of a stream the client reset that is still ending (reset_credit): its
        reset counted already, and for the client that slot was free. A gRPC client that
        cancelled 60 of its 100 calls and sent 60 new ones at once was counted 120 and
        got ENHANCE_YOUR_CALM, its 40 other calls cut."""
        self.count_flood("resets", self.conf["max_resets_per_second"],
                         "streams refused (opened after GOAWAY or past the streams limit)",
                         streams, reason="refused")

    def stop(self, stream, why):
        """End a stream's greenlet. One that has not begun (HEADERS and RST_STREAM in one
        read: rapid reset) never will, so it is done with here, or it would count toward
        max_concurrent_streams for the rest of the connection. One whose answer has all gone
        out (finishing) runs on to its end, as an HTTP/1.1 request's does when its client
        leaves: killed, a plugin's waiting finish (a report sent somewhere) was cut by a
        client's reset of a stream it had been answered on whole, or by its connection's
        close after it, where over HTTP/1.1 it never is."""
        if stream.greenlet is not None and not finishing(stream):
            stream.greenlet.kill(StreamKilled(why), block=False)
            if not stream.running:
                self.stream_done(stream)

    def stream_done(self, stream):
        self.streams.pop(stream.stream_id, None)
        if stream.reset_code is None and not self.closed:
            if not stream.ended:
                self.reset(stream.stream_id, E.INTERNAL_ERROR)      # an answer cut short
            elif not stream.req.complete:
                self.reset(stream.stream_id, E.NO_ERROR)    # answered early (RFC 9113 8.1)
        if stream.unacked:
            self.acknowledge(stream.stream_id, stream.unacked)
            stream.unacked = 0
        if not self.streams and not self.closed:
            self._wait_for()        # idle from now, unless a frame has begun
        if self.draining and not self.streams:
            self.drained()

    def drained(self):
        """Draining, and the last stream answered: FIN after the answers, and the reader
        reads on (the window updates of a client still reading them, a stream it refuses)
        until the client closes, or LINGER_SECONDS pass (expire, which waits out an answer
        still queued for a slow reader). Shut both ways at once, the reader's close met
        those window updates with a reset, and the kernel threw away the answer's tail it
        had not sent yet: an 8 MB download cut at 7 MB by a reload."""
        if self.idle_closing or self.closed:
            return
        self.idle_closing = self.write_shut = True
        self.runtime.deadlines.arm(self, LINGER_SECONDS)
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def finishing(stream):
    """Has ``stream`` answered in full (END_STREAM sent) while its greenlet runs on: what is
    left is its finish hooks, its access line and its metrics, none of which writes to the
    client (H2ServerConnection.stop)."""
    return stream.ended and stream.running


def wait_finishing(greenlets, cut):
    """Wait for the streams answered in full that run on past their connection's close
    (finishing): the connection's slot, in the worker's pool and worker_connections, is
    held until they end, as an HTTP/1.1 connection's is until its request's finish has run.
    Let go at the close, they were nobody's: a drain found nothing held and the worker
    exited under their finish hooks (their access lines lost), and a client that closed
    and reconnected left any number of them running. The worker's kill of the connection
    (``cut``: the drain's graceful_timeout ran out, a SIGQUIT), before or while it waits,
    cuts them, within a second, so that their access lines are in the last flush."""
    try:
        if not cut:
            gevent.joinall(greenlets)
    finally:
        gevent.killall(greenlets, StreamKilled("the worker stopped"), timeout=1)


def cancelled(stream):
    """Was the client's reset of ``stream`` a cancel (not counted toward
    max_resets_per_second): the stream had been served CANCEL_AFTER seconds or more? A gRPC
    client cancels a call at its deadline, a hedged call's losers, a browser the requests of
    a page it left: counted, a client cancelling 200 calls a second at a 200 ms deadline
    (40 in flight) had its connection closed (ENHANCE_YOUR_CALM, "rapid reset") and every
    call on it cut. Streams that old are bounded by the streams being served: at most
    max_concurrent_streams / CANCEL_AFTER such resets a second, each after as much serving
    as a request that long (nothing a client's own requests could not cost). A reset in
    the read that opened the stream, or soon after, is rapid reset's and counts (Envoy's
    "premature" resets are those of streams younger than a second, judged by their share)."""
    started = stream.req.started            # (None until handle() began)
    return started is not None and time.monotonic() - started >= CANCEL_AFTER


class StreamKilled(ClientGone, gevent.GreenletExit):
    """Ends a stream's greenlet: ClientGone to the request path, and to gevent an exit, not
    a failure to print (a greenlet killed before it began cannot catch it)."""


class _Rejected(HTTPError):
    status, error = 400, "malformed_http2_request"


def serve_h2c_or_http1(runtime, sock, addr):
    """A plain listener with h2c on: the preface picks HTTP/2, anything else is HTTP/1.1.
    Until its first byte the connection is an idle one (client.waiting)."""
    timeout = runtime.conf.server["header_timeout"]
    if not wait_first_byte(runtime, sock, timeout):
        return
    try:
        h2 = wants_h2(sock, timeout)
        if h2 is None:
            runtime.log_rejected(peer_address(addr), RequestTimeout(
                "the HTTP/2 preface did not come whole within header_timeout"))
            sock.close()
    except BaseException:
        runtime.client_closed()
        raise
    if h2 is None:
        runtime.client_closed()
        return
    serve_counted(H2ServerConnection if h2 else ClientConnection, runtime, sock, addr)


def listener_table(http2):
    """[http2] and its per-listener entries -> ({(host, port): settings}, the defaults).
    Host names in a bind are resolved (once per worker), as the listener was bound."""
    defaults = MappingProxyType({k: v for k, v in http2.items() if k != "listeners"})
    table = {}
    for bind, own in http2["listeners"].items():
        settings = MappingProxyType({**defaults, **{k: v for k, v in own.items()
                                                    if v is not None}})
        for address in listener_addresses([bind]):
            table[address] = settings
    return table, defaults


class ListenerSettings:
    """The HTTP/2 settings of each listener, resolved once per worker (the Runtime holds
    them): ``of(sock)`` is the entry in [http2.listeners] of the listener that accepted
    ``sock`` (by local address, or the wildcard address it was bound to), else [http2]'s."""

    def __init__(self, http2):
        self.table, self.defaults = listener_table(http2)

    def of(self, sock):
        table, defaults = self.table, self.defaults
        if not table:
            return defaults
        try:
            host, port = raw_socket(sock).getsockname()[:2]
        except (OSError, TypeError, ValueError):           # a unix socket has no port
            return defaults
        for key in ((host, port), ("0.0.0.0", port), ("::", port),
                    (host.removeprefix("::ffff:"), port)):
            if key in table:
                return table[key]
        return defaults


def h2c_addresses(conf):
    """(host, port) pairs of the plain listeners where h2c is on."""
    h2c = conf.http2["h2c"] if conf.http2 is not None else False
    return listener_addresses(conf.server["bind"] if h2c is True else h2c or ())
