"""The client side of HTTP/1.1: read requests with httptools (llhttp, strict), answer them.

One ``ClientConnection`` per accepted socket runs ``serve()``: read a request head, route it, run
the access phase of its plugin chain, hand it to the proxy, repeat while keep-alive holds.

Rules this file enforces (RFC 9112 and what gunicorn's parser rejects):
- llhttp in strict mode rejects bad header names, CTLs, obs-fold, Content-Length together with
  Transfer-Encoding, duplicate or bad Content-Length, bad chunk sizes. We add: exactly one Host in
  HTTP/1.1 (at most one in 1.0) with a valid value, only HTTP/1.0 and 1.1, limits on the request
  line, the number and size of header fields, and no dot segments in the path.
- A rejected request is answered 400 (or 408/413/431) with ``Connection: close`` and never
  forwarded.
- Hop-by-hop headers (RFC 9110 7.6.1, and those named in Connection) are filtered while parsing,
  so the proxy step never sees them.
"""
import collections
import logging
import socket
import time
from functools import partial
from random import randbytes

import httptools

from ..core.context import RequestContext
from ..core.tracing import extract as extract_trace
from ..plugins.jwt import route_claims
from .sockets import recv_when_readable, send_all
from ..errors import (BadRequest, HeadersTooLarge, HTTPError, InternalError, PayloadTooLarge,
                      RequestTimeout)

log = logging.getLogger("gwserver.http")

RECV_SIZE = 64 * 1024          # one read; also the most body a worker holds per request
MAX_HEAD_BYTES = 64 * 1024     # whole head; nginx allows 4 x 8 KiB by default
LINGER_SECONDS = 2.0           # nginx: lingering_timeout 5s, lingering_time 30s
LINGER_BYTES = 16 * 1024 * 1024

HOP_BY_HOP = frozenset([b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                        b"transfer-encoding", b"upgrade", b"proxy-authenticate",
                        b"proxy-authorization"])
# Headers the gateway rewrites itself: kept in header_map for plugins, not forwarded as-is.
REWRITTEN = frozenset([b"host", b"content-length", b"x-forwarded-for", b"x-forwarded-proto",
                       b"x-forwarded-host", b"x-request-id", b"via", b"expect"])
NOT_FORWARDED = HOP_BY_HOP | REWRITTEN
LIST_HEADERS = frozenset([b"x-forwarded-for", b"via"])

IDEMPOTENT = frozenset(["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"])

HOST_TOKEN = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~"
                       b"!$&'()*+,;=%:[]")

REASONS = {200: b"OK", 201: b"Created", 204: b"No Content", 301: b"Moved Permanently",
           302: b"Found", 304: b"Not Modified", 400: b"Bad Request", 401: b"Unauthorized",
           403: b"Forbidden", 404: b"Not Found", 405: b"Method Not Allowed",
           408: b"Request Timeout", 413: b"Content Too Large", 429: b"Too Many Requests",
           431: b"Request Header Fields Too Large", 500: b"Internal Server Error",
           502: b"Bad Gateway", 503: b"Service Unavailable", 504: b"Gateway Timeout"}


class ClientGone(Exception):
    """The client closed or reset its connection; there is nobody left to answer."""


class ClientConnection:
    """Serves one client socket until it closes, errs, or keep-alive ends."""

    def __init__(self, worker, sock, addr, scheme="http"):
        self.worker = worker
        self.settings = worker.conf.server
        self.sock = sock
        if sock.family != socket.AF_UNIX:
            # A streamed response is several writes; Nagle would hold the last one back for a
            # delayed ACK (40 ms). nginx sets tcp_nodelay on keep-alive connections too.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client_ip = addr[0] if isinstance(addr, tuple) else "unix"
        self.scheme = scheme
        # One buffer per worker: every read is parsed before the greenlet can yield again,
        # and the parser copies what it keeps, so idle connections hold no buffer.
        self.buf = worker.client_buf
        self.view = worker.client_view
        self.queue = collections.deque()
        self.parser = httptools.HttpRequestParser(self)
        self.head_bytes = 0
        self.upgraded = False
        self.timed_out = False
        self.requests = 0
        self.limits = (self.settings["limit_request_line"], self.settings["limit_request_fields"],
                       self.settings["limit_request_field_size"])
        self.keepalive_enabled = self.settings["keepalive"] > 0

    # -- parser callbacks (called inside feed_data) ------------------------------------------

    def on_message_begin(self):
        self.queue.append(RequestContext(self.client_ip, self.scheme))
        self.head_bytes = 0

    def on_url(self, url):
        req = self.queue[-1]
        req.url += url
        if len(req.url) > self.limits[0]:
            raise HeadersTooLarge(f"request line longer than {self.limits[0]} bytes")

    def on_header(self, name, value):
        req = self.queue[-1]
        limits = self.limits
        if len(name) + len(value) + 2 > limits[2]:
            raise HeadersTooLarge(f"header field {name[:40]!r} longer than {limits[2]} bytes")
        hmap = req.header_map
        if len(hmap) >= limits[1] or len(req.headers) >= limits[1]:
            raise HeadersTooLarge(f"more than {limits[1]} header fields")
        lname = name.lower()
        if lname in NOT_FORWARDED:
            if lname == b"host":
                req.host_count += 1
            elif lname == b"connection":
                tokens = [t.strip().lower() for t in value.split(b",")]
                req.connection_tokens = (req.connection_tokens or []) + tokens
        else:
            req.headers.append((name, value))
        prior = hmap.get(lname)
        hmap[lname] = value if prior is None else prior + b", " + value

    def on_headers_complete(self):
        req = self.queue[-1]
        parser = self.parser
        req.method = parser.get_method().decode("ascii")
        req.version = version = parser.get_http_version()
        req.keep_alive = parser.should_keep_alive()
        hmap = req.header_map
        if b"upgrade" in hmap:
            req.upgrade = parser.should_upgrade()
        cl = hmap.get(b"content-length")
        if cl is not None:
            req.content_length = int(cl)        # llhttp already rejected a bad one
        req.chunked = b"transfer-encoding" in hmap
        if req.connection_tokens:               # RFC 9110 7.6.1: drop what Connection names
            named = set(req.connection_tokens) - {b"close", b"keep-alive", b"upgrade"}
            if named:
                req.headers = [(k, v) for k, v in req.headers if k.lower() not in named]
        req.head_done = True
        if version != "1.1" and version != "1.0":
            raise BadRequest(f"unsupported HTTP version {version}")
        self.check_target(req, hmap)

    def check_target(self, req, hmap):
        """Split the request target, check Host and the path (RFC 9112 3.2, 3.3)."""
        url = req.url
        host = hmap.get(b"host")
        if req.host_count > 1:
            raise BadRequest("more than one Host header")
        if url[:1] != b"/":
            lower = url[:8].lower()
            if lower.startswith(b"http://") or lower.startswith(b"https://"):
                scheme_end = url.index(b"//") + 2
                slash = url.find(b"/", scheme_end)
                host = url[scheme_end:] if slash < 0 else url[scheme_end:slash]
                url = b"/" if slash < 0 else url[slash:]   # 3.2.2: the URI's host wins
            else:
                raise BadRequest("request target must be a path or an absolute http URL")
        if host is None:
            if req.version == "1.1":
                raise BadRequest("missing Host header")
            host = b""
        elif not host or not HOST_TOKEN.issuperset(host):
            raise BadRequest("invalid Host header")
        path, _, query = url.partition(b"?")
        if b"#" in path:
            path = path.partition(b"#")[0]
        if b"/." in path or b"%2" in path:
            check_dot_segments(path)
        req.path = path.decode("latin-1")
        req.query = query.decode("latin-1")
        req.host_header = host
        name = host.lower()
        if b":" in name:
            name = name[:name.index(b"]") + 1] if name[:1] == b"[" else name.partition(b":")[0]
        req.host = name.decode("latin-1")
        request_id = hmap.get(b"x-request-id")
        if request_id is None or len(request_id) > 200:
            worker = self.worker        # unique per worker: a random prefix and a counter
            req.request_id = f"{worker.request_id_prefix}{next(worker.request_ids):08x}"
        else:
            req.request_id = request_id.decode("latin-1")

    def on_body(self, body):
        req = self.queue[-1]
        req.body.append(body)
        req.body_size += len(body)

    def on_message_complete(self):
        self.queue[-1].complete = True

    # -- socket I/O -------------------------------------------------------------------------

    def expire(self):
        """Deadline passed (idle keep-alive, slow head, stalled send): close, so waits end."""
        self.timed_out = True
        self.sock.close()

    def recv(self, wait_first=False):
        """Read once into the buffer and feed the parser; return bytes read (0 on EOF)."""
        try:
            n = recv_when_readable(self.sock, self.buf) if wait_first else \
                self.sock.recv_into(self.buf)
        except OSError as exc:
            if self.timed_out:
                raise RequestTimeout("client sent nothing in time") from None
            raise ClientGone(str(exc)) from None
        if n and not self.upgraded:
            self.feed(n)
        return n

    def feed(self, n):
        if not (self.queue and self.queue[-1].head_done):
            self.head_bytes += n
            if self.head_bytes > MAX_HEAD_BYTES + self.limits[0]:
                raise HeadersTooLarge("request head too large")
        try:
            self.parser.feed_data(self.view[:n])
        except httptools.HttpParserUpgrade as exc:
            self.upgraded = True
            self.queue[-1].upgrade_tail = bytes(self.view[exc.args[0]:n])
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, HTTPError):
                raise cause from None
            raise BadRequest(f"malformed request: {exc}") from None
        except httptools.HttpParserError as exc:
            raise BadRequest(f"malformed request: {exc}") from None

    def write(self, data):
        """Send all of ``data``; a stalled client is cut off by the send deadline."""
        try:
            send_all(self.sock, data, self.worker.deadlines, self, self.worker.send_timeout)
        except OSError as exc:
            raise ClientGone(str(exc)) from None

    def read_body(self, timeout):
        """Read more of the current request's body; raise ClientGone on EOF mid-body."""
        deadlines = self.worker.deadlines
        deadlines.arm(self, timeout)
        try:
            n = self.recv()
        finally:
            deadlines.disarm(self)
        if n == 0:
            raise ClientGone("client closed mid-body")

    # -- the request loop ----------------------------------------------------------------------

    def serve(self):
        try:
            # Not `while worker.alive`: a connection whose last answer promised keep-alive must
            # read one more request (answered with Connection: close) or reach its keep-alive
            # timeout; closing it now would reset a client that is sending at this instant.
            while True:
                req = self.read_head()
                if req is None:
                    return
                if not self.handle(req):
                    return
                self.queue.popleft()
        except ClientGone:
            pass
        finally:
            self.worker.deadlines.disarm(self)
            self.close()

    def close(self):
        """Close; after an early answer, drain what the client is still sending first.

        Closing a socket with unread input makes the kernel send RST, and the client may then
        lose the response we just wrote (a 413 in the middle of an upload, say). Like nginx's
        lingering_close: shut our side, read and discard for a short while, then close.
        """
        sock = self.sock
        if self.queue and not self.queue[0].complete and not self.timed_out:
            deadlines = self.worker.deadlines
            deadlines.arm(self, LINGER_SECONDS)
            try:
                sock.shutdown(socket.SHUT_WR)
                drained = 0
                while drained < LINGER_BYTES:
                    n = sock.recv_into(self.buf)
                    if not n:
                        break
                    drained += n
            except OSError:
                pass
            finally:
                deadlines.disarm(self)
        sock.close()

    def read_head(self):
        """Return the next request whose head is complete, or None when the client is done."""
        deadlines, server = self.worker.deadlines, self.settings
        waiting_first_byte = True
        try:
            while not (self.queue and self.queue[0].head_done):
                if waiting_first_byte and not self.queue:
                    idle = server["keepalive"] if self.requests else server["header_timeout"]
                    deadlines.arm(self, idle)
                elif waiting_first_byte:
                    deadlines.arm(self, server["header_timeout"])
                    waiting_first_byte = False
                try:
                    # After an answer on a keep-alive connection the next request cannot be
                    # here yet (pipelined ones are already parsed): park before reading.
                    n = self.recv(wait_first=self.requests > 0 and not self.queue)
                except RequestTimeout:
                    if not self.queue:      # an idle keep-alive connection ran out: not an error
                        return None
                    raise
                if n == 0:
                    return None
                if self.queue and waiting_first_byte:
                    deadlines.arm(self, server["header_timeout"])
                    waiting_first_byte = False
        except HTTPError as exc:
            self.reject(exc)
            return None
        finally:
            deadlines.disarm(self)
        return self.queue[0]

    def reject(self, exc):
        """Answer a request we could not even parse, then the connection closes."""
        if self.timed_out:
            return                          # the socket is closed already
        try:
            self.write(render_error(exc, keep_alive=False, request_id=None))
        except ClientGone:
            pass
        self.worker.log_rejected(self.client_ip, exc)

    def handle(self, req):
        """Serve one request; return True if the connection may carry another."""
        worker = self.worker
        self.requests += 1
        start = time.monotonic()
        status, sent, upstream = 0, 0, None
        worker.in_flight += 1
        reader = worker.table_reader
        if reader is not None and reader.changed():     # 8 bytes compared; etcd mode only
            worker.refresh_table()
        keep_alive = req.keep_alive and self.keepalive_enabled     # and worker.alive, when
                                                                   # the answer is written
        if worker.tracing:
            req.trace = extract_trace(req.header_map, new_trace_ids)
        try:
            router = worker.router
            req.route, req.params = route, _ = router.match(
                req.method, req.host, req.path, req.header_map,
                partial(route_claims, req) if router.claim_routes else None)
            if route.max_body_size and (req.content_length or 0) > route.max_body_size:
                raise PayloadTooLarge(f"body of {req.content_length} bytes is over the route's "
                                      f"limit of {route.max_body_size}")
            chain = route.chain
            reply = chain.run_access(req) if chain.access_steps else None
            if reply is None:
                status, sent, upstream, keep_alive = worker.proxy.forward(self, req, keep_alive)
            else:
                keep_alive = keep_alive and req.complete and worker.alive
                self.write(render_reply(reply, keep_alive, req.request_id, req.method == "HEAD"))
                status, sent = reply.status, len(reply.body)
        except ClientGone:
            raise
        except Exception as exc:
            if not isinstance(exc, HTTPError):
                log.exception("route %s: unhandled error", req.route.id if req.route else None)
                exc = InternalError("internal error; see the gateway's log")
            req.error = exc
            status = exc.status
            if exc.status >= 500 and req.route is not None:
                log.warning("route %s: %s: %s", req.route.id, exc.error, exc.reason)
            keep_alive = keep_alive and req.complete and exc.status < 500 and \
                not self.timed_out and worker.alive
            if getattr(exc, "response_started", False):
                keep_alive = False          # the head is out; all we can do is cut the body
            elif not self.timed_out:
                self.write(render_error(exc, keep_alive, req.request_id, req.method == "HEAD"))
        finally:
            worker.in_flight -= 1
            if req.route is not None and req.route.chain.finish_steps:
                req.route.chain.run_finish(req, status)
            if worker.access_enabled:
                worker.log_access(self, req, status, sent, upstream, start)
            if worker.span_exporter is not None and req.trace is not None:
                worker.export_span(req, status, upstream, start)
            if worker.metrics is not None:
                worker.metrics.observe(req.route.id if req.route else None, req.method, status,
                                       time.monotonic() - start, req.upstream_seconds)
        if self.upgraded:
            return False
        worker.handled += 1
        if worker.max_requests and worker.handled >= worker.max_requests:
            worker.retire()
            return False
        return keep_alive


def new_trace_ids():
    """48 random hex digits: a trace id and a span id (random is reseeded in each worker)."""
    return randbytes(24).hex()


def check_dot_segments(path):
    for segment in path.split(b"/"):
        if segment.lower().replace(b"%2e", b".") in (b".", b".."):
            raise BadRequest("path has a dot segment (. or ..)")


def render_reply(reply, keep_alive, request_id, head_only=False):
    """Bytes of a reply the gateway writes itself."""
    lines = [b"HTTP/1.1 %d %s" % (reply.status, REASONS.get(reply.status, b"Unknown"))]
    for name, value in reply.headers:
        lines.append(b"%s: %s" % (name.encode("latin-1") if isinstance(name, str) else name,
                                  value.encode("latin-1") if isinstance(value, str) else value))
    if request_id:
        lines.append(b"X-Request-ID: " + request_id.encode("latin-1"))
    lines.append(b"Content-Length: %d" % len(reply.body))
    lines.append(b"Connection: keep-alive" if keep_alive else b"Connection: close")
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    return head if head_only else head + reply.body


def render_error(exc, keep_alive, request_id, head_only=False):
    from ..core.context import Reply
    payload = {"error": exc.error, "status": exc.status, "message": exc.reason}
    if request_id:
        payload["request_id"] = request_id
    return render_reply(Reply.json(exc.status, payload, exc.headers), keep_alive, request_id,
                        head_only)

