"""The proxy step: forward one request to an upstream target and stream the answer back.

urllib3 owns the keep-alive pools and the connection objects (``HTTPConnectionPool``, its
``_get_conn``/``_put_conn`` with the dropped-connection check, ``HTTPConnection.connect`` with
TLS and socket options). Its per-request path (``urlopen``: http.client's email-parser headers,
retries, response wrappers; ~450 us of CPU here) is not used: we write the request head ourselves
and parse the response with httptools on the pooled connection's socket (~10x cheaper).

Retry rules: a failed *connect* sent nothing, so any request may go to another target. A reused
keep-alive connection that turns out dead (reset or EOF before any response byte) is retried once
on a fresh connection, but only for idempotent requests whose body we still hold: nothing is
retried after a byte of a non-idempotent request reached an upstream.
"""
import logging
import socket

import gevent
import httptools
import urllib3
import urllib3.connection
from urllib3.exceptions import (ConnectTimeoutError, EmptyPoolError, LocationParseError,
                                NewConnectionError, NameResolutionError)

from ..core.balancer import SmoothWeighted
from ..core.context import ResponseHead
from ..errors import (HTTPError, PayloadTooLarge, ServiceUnavailable, UpstreamConnectError,
                      UpstreamConnectTimeout, UpstreamError, UpstreamTimeout)
from .http1 import IDEMPOTENT, NOT_FORWARDED, RECV_SIZE, REASONS, ClientGone

log = logging.getLogger("gwserver.proxy")

NO_BODY_STATUSES = frozenset([204, 304])
VIA = b"1.1 gwserver"


class _StaleConnection(Exception):
    """A reused keep-alive connection was dead before the upstream said anything."""


_PEEK_FLAGS = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)   # an IntFlag `|` costs ~1 us a call


def _raw_socket(sock):
    """The OS-level socket under a gevent socket (gevent keeps it as ``_sock``)."""
    return getattr(sock, "_sock", sock)


def _peek_connected(sock):
    """urllib3's dropped-connection rule (readable while idle = dropped), in one syscall.

    urllib3 asks ``wait_for_read(sock, 0)``; under gevent that runs gevent's poll emulation with
    a Timeout, 25% of a worker's CPU in a profile here. A non-blocking MSG_PEEK answers the same
    question: EAGAIN means idle and open; b"" means the peer closed; data or an error on an idle
    connection means it is not safe to reuse.
    """
    if sock is None:
        return False
    try:
        _raw_socket(sock).recv(1, _PEEK_FLAGS)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False        # EOF, or bytes nobody asked for


class CheapCheckHTTPConnection(urllib3.connection.HTTPConnection):
    @property
    def is_connected(self):
        return _peek_connected(self.sock)


class CheapCheckHTTPSConnection(urllib3.connection.HTTPSConnection):
    @property
    def is_connected(self):
        return _peek_connected(self.sock)


class HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = CheapCheckHTTPConnection


class HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = CheapCheckHTTPSConnection


class UpstreamPools:
    """One urllib3 pool per (target, pool settings) in this worker; built lazily after fork."""

    def __init__(self, defaults):
        self.defaults = defaults
        self.pools = {}
        self.new_connections = 0

    def get(self, target, upstream):
        key = (target.key, upstream.pool_size, upstream.block_when_full, upstream.connect_timeout)
        pool = self.pools.get(key)
        if pool is None:
            cls = HTTPSPool if target.scheme == "https" else HTTPPool
            pool = cls(target.host, target.port, maxsize=upstream.pool_size,
                       block=upstream.block_when_full,
                       timeout=urllib3.Timeout(connect=upstream.connect_timeout, read=None),
                       retries=False)
            self.pools[key] = pool
        return pool

    def close(self):
        for pool in self.pools.values():
            pool.close()
        self.pools.clear()


class Exchange:
    """One request/response on one upstream connection; also the response parser's protocol."""

    __slots__ = ("conn", "sock", "parser", "timed_out", "status", "reason", "headers",
                 "keep_alive", "head_done", "complete", "chunks", "content_length", "chunked",
                 "got_bytes", "via")

    def __init__(self, conn):
        self.conn = conn
        self.sock = conn.sock
        self.timed_out = False
        self.reset()
        self.got_bytes = False
        self.parser = httptools.HttpResponseParser(self)

    def reset(self):
        self.status = 0
        self.reason = b""
        self.headers = []
        self.keep_alive = False
        self.head_done = False
        self.complete = False
        self.chunks = []
        self.content_length = None
        self.chunked = False
        self.via = None

    def expire(self):
        self.timed_out = True
        self.sock.close()

    # httptools callbacks
    def on_message_begin(self):
        self.reset()

    def on_status(self, reason):
        self.reason += reason

    def on_header(self, name, value):
        lname = name.lower()
        if lname in NOT_FORWARDED:
            if lname == b"content-length":
                self.content_length = value
            elif lname == b"transfer-encoding":
                self.chunked = True
            elif lname == b"via":
                self.via = value if self.via is None else self.via + b", " + value
            elif lname == b"upgrade":
                self.headers.append((name, value))
        else:
            self.headers.append((name, value))

    def on_headers_complete(self):
        # llhttp answers should_keep_alive() = False once the message completed: read it here.
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        self.head_done = True

    def on_body(self, body):
        self.chunks.append(body)

    def on_message_complete(self):
        self.complete = True


class Proxy:
    """Per-worker upstream side: balancers, pools, and ``forward()``."""

    def __init__(self, worker):
        self.worker = worker
        defaults = worker.conf.upstream_defaults
        self.pools = UpstreamPools(defaults)
        self.pool_timeout = defaults["pool_timeout"]
        self.retries = defaults["retries"]
        self.deadlines = worker.deadlines
        self._balancers = {}

    # -- choosing and connecting -------------------------------------------------------------

    def pick(self, upstream, tried):
        targets = upstream.targets
        if len(targets) == 1:
            return targets[0]
        entry = self._balancers.get(upstream.id)
        if entry is None or entry.targets_source is not targets:
            entry = SmoothWeighted(targets)
            entry.targets_source = targets
            self._balancers[upstream.id] = entry
        return entry.pick(tried)

    def checkout(self, pool, target, fresh=False):
        """Return (connection, reused) with an open socket; raise an HTTPError if impossible."""
        try:
            conn = pool._new_conn() if fresh else pool._get_conn(timeout=self.pool_timeout)
        except EmptyPoolError:
            raise ServiceUnavailable(f"connection pool for {target.url} is exhausted") from None
        if conn.sock is not None:
            return conn, True
        try:
            conn.connect()
        except ConnectTimeoutError:
            pool._put_conn(None)
            raise UpstreamConnectTimeout(f"connect to {target.url} timed out") from None
        except (NewConnectionError, NameResolutionError, LocationParseError, OSError) as exc:
            pool._put_conn(None)
            reason = getattr(exc, "reason", None) or exc
            raise UpstreamConnectError(f"cannot connect to {target.url}: {reason}") from None
        conn.sock.settimeout(None)      # reads are bounded by the worker's deadlines instead
        self.pools.new_connections += 1
        return conn, False

    # -- the exchange ---------------------------------------------------------------------------

    def forward(self, client, msg, ctx, keep_alive):
        """Proxy ``msg``; return (status, body bytes sent, target url, client keep-alive)."""
        route = ctx.route
        upstream = route.upstream
        tried = []
        replayable = msg.complete and ctx.method in IDEMPOTENT and not msg.upgrade
        body_held = msg.take_body() if msg.complete else None
        attempts_left = self.retries
        fresh = False
        while True:
            target = self.pick(upstream, tried)
            pool = self.pools.get(target, upstream)
            try:
                conn, reused = self.checkout(pool, target, fresh)
            except UpstreamConnectError as exc:
                tried.append(target)
                if attempts_left > 0 and len(tried) < len(upstream.targets):
                    attempts_left -= 1
                    log.warning("route %s: %s; retrying on another target", route.id, exc.reason)
                    continue
                raise
            exchange = Exchange(conn)
            try:
                result = self.exchange(client, msg, ctx, exchange, target, body_held, keep_alive)
            except _StaleConnection:
                pool._put_conn(None)
                conn.close()
                if reused and replayable and not fresh:
                    fresh = True        # the pool may hold more dead ones: open a new one
                    continue
                raise UpstreamError(f"{target.url} closed the connection before answering")
            except BaseException:
                conn.close()
                pool._put_conn(None)
                raise
            status, sent, client_keep, upstream_keep = result
            if upstream_keep:
                pool._put_conn(conn)
            else:
                conn.close()
                pool._put_conn(None)
            return status, sent, target.url, client_keep

    def exchange(self, client, msg, ctx, ex, target, body_held, keep_alive):
        route = ctx.route
        head = self.request_head(msg, ctx, target)
        if body_held is not None:
            head = b"".join([head, *encode_chunks(body_held, msg.chunked, last=True)]) \
                if body_held or msg.chunked else head
            self.send(ex, head, route.read_timeout, stale_ok=True)
        else:
            self.send(ex, head, route.read_timeout, stale_ok=True)
            self.stream_request_body(client, msg, ex, route)
        self.read_head(ex, route.read_timeout)
        if msg.upgrade and ex.status == 101:
            return self.tunnel(client, msg, ctx, ex)
        return self.relay_response(client, msg, ctx, ex, route, keep_alive)

    def request_head(self, msg, ctx, target):
        route = ctx.route
        path = ctx.path
        strip = route.strip_prefix
        if strip and path.startswith(strip):
            path = path[len(strip):] or "/"
            if path[0] != "/":
                path = "/" + path
        if ctx.query:
            path = path + "?" + ctx.query
        upstream = route.upstream
        hmap = msg.header_map
        host_header = ctx.vars["host_header"]
        if upstream.pass_host == "node":
            host = target.authority.encode("latin-1")
        elif upstream.pass_host == "rewrite":
            host = upstream.upstream_host.encode("latin-1")
        else:
            host = host_header
        xff = hmap.get(b"x-forwarded-for")
        client_ip = ctx.client_ip.encode("latin-1")
        via = hmap.get(b"via")
        lines = [b"%s %s HTTP/1.1" % (ctx.method.encode("ascii"), path.encode("latin-1")),
                 b"Host: " + host]
        lines.extend([b"%s: %s" % kv for kv in ctx.headers])
        lines.append(b"X-Forwarded-For: " + (xff + b", " + client_ip if xff else client_ip))
        lines.append(b"X-Forwarded-Proto: " + ctx.scheme.encode("ascii"))
        lines.append(b"X-Forwarded-Host: " + host_header)
        lines.append(b"X-Request-ID: " + ctx.request_id.encode("latin-1"))
        lines.append(b"Via: " + (via + b", " + VIA if via else VIA))
        if msg.chunked:
            lines.append(b"Transfer-Encoding: chunked")
        elif msg.content_length is not None:
            lines.append(b"Content-Length: %d" % msg.content_length)
        if msg.upgrade:
            lines.append(b"Connection: Upgrade")
            lines.append(b"Upgrade: " + msg.header_map.get(b"upgrade", b""))
        lines.append(b"\r\n")
        return b"\r\n".join(lines)

    def send(self, ex, data, timeout, stale_ok=False):
        sock, deadlines = ex.sock, self.deadlines
        deadlines.arm(ex, timeout)
        try:
            sent = sock.send(data)
            if sent < len(data):
                view = memoryview(data)
                while sent < len(data):
                    sent += sock.send(view[sent:])
        except OSError as exc:
            if ex.timed_out:
                raise UpstreamTimeout("upstream did not accept the request in time") from None
            if stale_ok:
                raise _StaleConnection() from None
            raise UpstreamError(f"upstream connection failed while sending: {exc}") from None
        finally:
            deadlines.disarm(ex)

    def stream_request_body(self, client, msg, ex, route):
        """Forward the body as it arrives: one client read in memory at a time."""
        limit = route.max_body_size
        if msg.header_map.get(b"expect", b"").lower() == b"100-continue" and msg.version == "1.1":
            client.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        while True:
            chunks = msg.take_body()
            if limit and msg.body_size > limit:
                raise PayloadTooLarge(f"body is over the route's limit of {limit} bytes")
            if chunks or msg.complete:
                data = b"".join(encode_chunks(chunks, msg.chunked, last=msg.complete))
                if data:
                    self.send(ex, data, route.read_timeout)
            if msg.complete:
                return
            client.read_body(msg, route.read_timeout)

    def recv(self, ex, timeout, buf):
        deadlines = self.deadlines
        deadlines.arm(ex, timeout)
        try:
            return ex.sock.recv_into(buf)
        except OSError as exc:
            if ex.timed_out:
                raise UpstreamTimeout(f"upstream did not answer within {timeout:g}s") from None
            if not ex.got_bytes:
                raise _StaleConnection() from None
            raise UpstreamError(f"upstream connection failed: {exc}") from None
        finally:
            deadlines.disarm(ex)

    def feed(self, ex, view):
        try:
            ex.parser.feed_data(view)
        except httptools.HttpParserUpgrade:
            pass        # 101: the rest belongs to the tunnel
        except httptools.HttpParserError as exc:
            raise UpstreamError(f"upstream sent an invalid response: {exc}") from None

    def read_head(self, ex, timeout):
        buf = self.worker.upstream_buf
        view = self.worker.upstream_view
        while True:
            n = self.recv(ex, timeout, buf)
            if n == 0:
                if not ex.got_bytes:
                    raise _StaleConnection()
                raise UpstreamError("upstream closed the connection mid-response")
            ex.got_bytes = True
            self.feed(ex, view[:n])
            if ex.head_done:
                if 100 <= ex.status < 200 and ex.status != 101:
                    continue    # 100 Continue, 103 Early Hints: the real answer follows
                return

    def response_head(self, msg, ctx, ex, keep_alive):
        """Build the client's response head; return (bytes, chunked_out, keep_alive)."""
        status = ex.status
        head = ResponseHead(status, ex.headers)
        chain = ctx.route.chain
        if chain.response_steps:
            chain.run_response(ctx, head)
        lines = [b"HTTP/1.1 %d %s" % (status, ex.reason or REASONS.get(status, b"Unknown"))]
        lines.extend([b"%s: %s" % kv for kv in head.headers])
        chunked_out = False
        no_body = msg.method == "HEAD" or status in NO_BODY_STATUSES or status < 200
        if ex.content_length is not None and status not in NO_BODY_STATUSES:
            lines.append(b"Content-Length: " + ex.content_length)
        elif not no_body:
            if msg.version == "1.1":
                lines.append(b"Transfer-Encoding: chunked")
                chunked_out = True
            else:
                keep_alive = False      # HTTP/1.0: the end of the body is the end of the stream
        lines.append(b"X-Request-ID: " + ctx.request_id.encode("latin-1"))
        lines.append(b"Via: " + (ex.via + b", " + VIA if ex.via else VIA))
        if status == 101:
            lines.append(b"Connection: Upgrade")
        else:
            lines.append(b"Connection: keep-alive" if keep_alive else b"Connection: close")
        lines.append(b"\r\n")
        return b"\r\n".join(lines), chunked_out, keep_alive, no_body

    def relay_response(self, client, msg, ctx, ex, route, keep_alive):
        head, chunked_out, keep_alive, no_body = self.response_head(msg, ctx, ex, keep_alive)
        if no_body:
            upstream_keep = ex.keep_alive and not ex.chunks and msg.complete
            client.write(head)
            return [ex.status, 0, keep_alive, upstream_keep]
        buf, view = self.worker.upstream_buf, self.worker.upstream_view
        sent = 0
        started = False
        close_delimited = ex.content_length is None and not ex.chunked
        try:
            while True:
                chunks = ex.chunks
                ex.chunks = []
                size = sum(map(len, chunks))
                body = b"".join(encode_chunks(chunks, chunked_out, last=ex.complete))
                client.write(head + body if not started else body)
                started = True
                sent += size
                if ex.complete:
                    break
                n = self.recv(ex, route.read_timeout, buf)
                if n == 0:
                    if close_delimited:
                        if chunked_out:
                            client.write(b"0\r\n\r\n")
                        return [ex.status, sent, keep_alive, False]
                    raise UpstreamError("upstream closed the connection mid-body")
                self.feed(ex, view[:n])
        except (HTTPError, _StaleConnection) as exc:
            if not isinstance(exc, HTTPError):
                exc = UpstreamError("upstream connection failed mid-body")
            if started:
                exc.response_started = True
            raise exc from None
        return [ex.status, sent, keep_alive, ex.keep_alive and msg.complete]

    def tunnel(self, client, msg, ctx, ex):
        """101 Switching Protocols: relay raw bytes both ways until either side closes."""
        head, _, _, _ = self.response_head(msg, ctx, ex, False)
        client.write(head + b"".join(ex.chunks))
        upstream_sock, client_sock = ex.sock, client.sock

        def pump(src, dst):
            buf = bytearray(RECV_SIZE)
            try:
                while True:
                    n = src.recv_into(buf)
                    if not n:
                        break
                    dst.sendall(memoryview(buf)[:n])
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(2)
                    except OSError:
                        pass

        if msg.upgrade_tail:
            upstream_sock.sendall(msg.upgrade_tail)
        down = gevent.spawn(pump, upstream_sock, client_sock)
        pump(client_sock, upstream_sock)
        down.join()
        return [101, 0, False, False]


def encode_chunks(chunks, chunked, last):
    """Frame body pieces for the next hop: as-is, or as chunked with the final 0-chunk."""
    if not chunked:
        return chunks
    out = []
    for chunk in chunks:
        if chunk:
            out.append(b"%x\r\n" % len(chunk))
            out.append(chunk)
            out.append(b"\r\n")
    if last:
        out.append(b"0\r\n\r\n")
    return out
