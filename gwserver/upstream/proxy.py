"""The proxy step: forward one request to an upstream target and stream the answer back.

urllib3 owns the keep-alive pools and the connection objects (``HTTPConnectionPool``, its
``_get_conn``/``_put_conn`` with the dropped-connection check, ``HTTPConnection.connect`` with
TLS and socket options). Its per-request path (``urlopen``: http.client's email-parser headers,
retries, response wrappers; ~450 us of CPU here) is not used: we write the request head ourselves
and parse the response with httptools on the pooled connection's socket (~10x cheaper).

Retry rules: a failed *connect* sent nothing, so any request may go to another target. A reused
keep-alive connection that turns out dead (reset or EOF before any response byte) is retried once
on a fresh connection to the same target, but only for idempotent requests whose body we still
hold: nothing is retried after a byte of a non-idempotent request reached an upstream. An answer
that is not HTTP is a 502, never a retry: the request may have been served.

Upstream framing is trusted never (nginx: "upstream sent more data than specified"): bytes after
a complete response, or on an idle pooled connection, close that connection unread; a response
never takes bytes of a second one; the head, 1xx heads included, is capped (max_response_head).
"""
import base64
import errno
import hashlib
import hmac
import logging
import os
import re
import socket
import ssl
import time
from email.utils import mktime_tz, parsedate_tz
from functools import partial
from itertools import count
from random import random

import gevent
import httptools
import urllib3
import urllib3.connection
from urllib3.exceptions import (ConnectTimeoutError, EmptyPoolError, LocationParseError,
                                NewConnectionError, NameResolutionError)
from urllib3.exceptions import SSLError as TLSFilesError
from urllib3.util.ssl_match_hostname import CertificateError

from ..core.balancer import make_balancer
from ..core.h2request import is_grpc
from ..core.health import RetryBudget
from ..core.context import ResponseHead, parse_block
from ..core.headers import (MAX_OWN_HOPS, NO_BODY_STATUSES, REASONS, RESPONSE_SPECIAL,
                            length_over_max, own_hops, via_chain)
from ..core.routes import IDEMPOTENT, no_target_reason, try_policy
from ..core.target import strip_path_prefix
from ..core.throttledlog import throttled_log
from ..core.tracing import REPLACED_HEADERS, is_tracestate_value, response_line
from ..errors import (BadRequest, InternalError, LoopDetected, OutOfFiles,
                      PayloadTooLarge, ProtocolMismatch, ServiceUnavailable, UpstreamBusy,
                      UpstreamConnectError, UpstreamConnectTimeout, UpstreamError,
                      UpstreamTLSFilesError, UpstreamTimeout)
from ..files import client_tls_problem, irregular_file
from ..net.deadlines import WriteDeadline
from ..net.sockets import (CLOSED, OPEN, UNREAD, PlainSocket, failure_reason, handshake_within,
                           idle_state, lookup_hangs, opening_within, out_of_files,
                           readable_within, recv_when_readable, send_all,
                           send_unless_answered, tls_idle_state, tls_read_now,
                           tls_send_unless_answered)
from ..settings import resolve_workers
from ..state.hostshare import PUBLISH_EVERY, HostShare
from .h2client import MAX_INTERIM_HEADS

log = logging.getLogger("gwserver.proxy")

YIELD_EVERY = 16    # body pieces (up to 64 KiB each) relayed before other greenlets get a turn
# A held request (head and body) up to this size goes out in one plain send; a larger one
# looks for an early answer whenever its send must wait (Proxy.attempt). Small: off loopback
# a socket may take no more than ~16 KiB before an upstream that stopped reading blocks it.
ONE_SEND = 16 << 10
CLIENT_PAUSE = 1.0      # seconds a try waited for its client's body, or a write of its answer for
                        # the client to read: past it, an upstream giving up is the client's doing
# After a failed connect this worker skips the target for a second (nginx's fail_timeout with
# max_fails=1, shortened): a dead target then costs one retry per worker per second, not one
# per request, until health checks or ejection take it out.
REFUSED_AVOID = 1.0
IDLE_CHECK_EVERY = 1.0  # seconds between looks for pooled connections idle too long
# A connection whose HEAD answer announced a body goes back to its pool only after this long
# without a byte (Proxy.settle): the body a broken upstream writes after all comes late by a
# delayed ACK (40 ms) under Nagle, and read as the next request's answer it would be that.
HEAD_SETTLE = 0.1
# A streamed request body (one over request_buffer_size) cannot be sent again: a reused
# connection that its upstream closes for idleness as the request goes out (Node's and
# Apache's 5 s keep-alive, gunicorn's 2 s) ends it in a 502 that a held body would have
# been retried from. So it goes out on a connection idle at most this long, else a new one.
STREAMED_REUSE_IDLE = 1.0


class _StaleConnection(Exception):
    """A reused keep-alive connection was dead before the upstream said anything."""


class _StrayBytes(Exception):
    """The upstream sent the start of another message after a complete response."""


class CheapCheckHTTPConnection(urllib3.connection.HTTPConnection):
    """urllib3's connection with a cheaper dropped-connection check, asked on every reuse.

    urllib3 asks ``wait_for_read(sock, 0)``; under gevent that runs gevent's poll emulation with
    a Timeout: 25% of a worker's CPU in a profile here, 65 us per pool get+put. The kernel's
    poll(2) answers the same question in one syscall (``net.sockets.idle_state``). An idle
    connection that has bytes to read holds an answer to no request of ours (an upstream that
    took a request body for a second request, say): it is closed unread, never reused, or the
    next client would read someone else's response.
    """

    @property
    def is_connected(self):
        state = idle_state(self.sock) if type(self.sock) is PlainSocket else \
            tls_idle_state(self.sock)
        if state is UNREAD:
            throttled_log.log(log, logging.WARNING, ("bytes on idle", self.host, self.port),
                              "upstream %s:%s sent bytes on an idle keep-alive connection "
                              "(over TLS, a key update or a late ticket counts too): closed "
                              "unread", self.host, self.port)
        return state is OPEN

    def _new_conn(self):
        # urllib3's lookup and TCP connect, within the connect timeout together (a TLS
        # handshake after them has its own, connect() below): a lookup that hung held the
        # request for as long as resolv.conf lets it, whatever timeouts.connect said.
        try:
            with opening_within(self.timeout, self._dns_host):
                return urllib3.connection.HTTPConnection._new_conn(self)
        except socket.timeout as exc:   # (before urllib3's: waiting on a hung name's lookup)
            raise ConnectTimeoutError(self, str(exc)) from None


class CheapCheckHTTPSConnection(urllib3.connection.HTTPSConnection):
    is_connected = CheapCheckHTTPConnection.is_connected
    _new_conn = CheapCheckHTTPConnection._new_conn

    def connect(self):
        # The connect and the TLS handshake after it within the connect timeout together
        # (the handshake was bounded read by read: net.sockets.handshake_within)
        try:
            with handshake_within(self.timeout):
                super().connect()
        except socket.timeout as exc:   # ours, or one read of the handshake's
            raise ConnectTimeoutError(self, str(exc)) from None


def tls_files(conn):
    """(ca_file, cert_file, key_file) of a urllib3 connection, each None when it has none
    (a plain one has none of them)."""
    return tuple(getattr(conn, name, None) for name in ("ca_certs", "cert_file", "key_file"))


class HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = CheapCheckHTTPConnection


class HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = CheapCheckHTTPSConnection


def pool_key(target, upstream):
    """The pool a target of ``upstream`` uses: upstreams share connections to a target only
    when they agree on the pool's settings (size, blocking, TLS). (The connect timeout is
    the route's, set on each new connection: Proxy.checkout.)"""
    return (target.key, upstream.pool_size, upstream.block_when_full, upstream.tls)


def forget_gone(outstanding, refused, live_urls):
    """Drop the per-URL entries of targets no longer in the table (Proxy.outstanding and
    .refused): with service discovery every instance that ever came kept one of each for
    the worker's life. An entry with requests in flight stays until they end (their
    finally decrements it); a later table change drops it then."""
    for url in [url for url, count in outstanding.items() if count <= 0 and url not in live_urls]:
        del outstanding[url]
    for url in [url for url in refused if url not in live_urls]:
        del refused[url]


class UpstreamPools:
    """One urllib3 pool per (target, pool settings) in this worker; built lazily after fork."""

    def __init__(self):
        self.pools = {}
        self._by_target = {}            # id(target) -> (target, upstream, pool): no hashing

    def get(self, target, upstream):
        entry = self._by_target.get(id(target))
        if entry is not None and entry[0] is target and entry[1] is upstream:
            return entry[2]
        key = pool_key(target, upstream)
        pool = self.pools.get(key)
        if pool is None:
            options = dict(maxsize=upstream.pool_size, block=upstream.block_when_full,
                           timeout=urllib3.Timeout(connect=upstream.connect_timeout, read=None),
                           retries=False)
            if target.scheme == "https":
                options.update(tls_options(upstream.tls))
                pool = HTTPSPool(target.host, target.port, **options)
            else:
                pool = HTTPPool(target.host, target.port, **options)
            # the target as the operator wrote it: the metrics' and admin API's label, as
            # on every other per-target figure ("http://::1:8080" built from the pool's
            # parts named no target, and "http://b:80" was not "http://b")
            pool.gw_url = target.url
            self.pools[key] = pool
        self._by_target[id(target)] = (target, upstream, pool)
        return pool

    def prune(self, upstreams):
        """Close the pools no target of ``upstreams`` (the table's) uses: a removed target's,
        and the old pool of a target whose upstream changed its pool settings (pool_size,
        block_when_full, tls: its idle connections stayed open for the worker's life). The
        targets of upstreams no longer in the table are forgotten too (each change of an
        upstream left its old targets and upstream here for good). Returns (URLs of removed
        targets, URLs of targets whose old pool closed)."""
        live = {}       # pool key -> the URLs of the table's targets that use it
        for upstream in upstreams:
            for target in upstream.targets:
                live.setdefault(pool_key(target, upstream), set()).add(target.url)
        gone = [key for key in self.pools if key not in live]
        for key in gone:
            self.pools.pop(key).close()
        for key, pool in self.pools.items():
            if pool.gw_url not in live[key]:
                # Two spellings of one target ("http://h:P", "http://h:P/") share a pool,
                # labelled by the one that opened it: once that one left the table, the
                # pool's connections were shown under a removed target's URL for good.
                pool.gw_url = min(live[key])
        pairs = {(id(target), id(upstream)) for upstream in upstreams
                 for target in upstream.targets}
        self._by_target = {k: v for k, v in self._by_target.items() if (k, id(v[1])) in pairs}
        targets = {key[0] for key in live}
        urls = {key: f"{key[0][0]}://{key[0][1]}:{key[0][2]}" for key in gone}
        return ({url for key, url in urls.items() if key[0] not in targets},
                {url for key, url in urls.items() if key[0] in targets})

    def close(self):
        for pool in self.pools.values():
            pool.close()
        self.pools.clear()
        self._by_target.clear()


def tls_options(tls):
    """urllib3 pool options for an upstream's ``tls`` (verify by default, system CAs)."""
    if tls is None:
        return {"cert_reqs": "CERT_REQUIRED"}
    verify, ca_file, server_name, cert_file, key_file = tls
    options = {"cert_reqs": "CERT_REQUIRED" if verify else "CERT_NONE", "ca_certs": ca_file,
               "cert_file": cert_file, "key_file": key_file}
    if server_name:
        options["server_hostname"] = server_name
        options["assert_hostname"] = server_name if verify else False
    elif not verify:
        options["assert_hostname"] = False
    return options


# Response header lines the gateway must look at; every other line passes through untouched.
# llhttp (strict) has already rejected CR/LF in values and whitespace before the colon.
# A match runs from the LF that ends the line before to the CR that ends this one: the literal
# LF lets the regex engine jump from line to line instead of trying every byte. The value is
# taken greedily and its trailing whitespace stripped by the caller: a lazy value followed by
# [ \t]* backtracks over a long run of spaces once per byte (quadratic: 32 KB took 1.8 s).
def special_lines(also=()):
    """The regex of the lines above, and of the names in ``also`` (dropped: the gateway writes
    its own, as the trace id's response header)."""
    names = sorted(RESPONSE_SPECIAL | {name.lower() for name in also})
    # The lookahead on the names' first letters is redundant to the match, but lets a line
    # whose name cannot be special fail at its first byte instead of in every alternative
    # (a quarter of the split's time on a typical head).
    firsts = b"".join(sorted({re.escape(name[:1]) for name in names}))
    return re.compile(rb"(\n(?=[" + firsts + rb"])(" +
                      b"|".join(re.escape(name) for name in names) +
                      rb"):[ \t]*([^\r]*)\r)(?=\n)", re.IGNORECASE)


_SPECIAL_LINE = special_lines()


# Connection values that name no other header (the usual "keep-alive" needs no token split)
_PLAIN_CONNECTION = frozenset([b"close", b"keep-alive", b"upgrade"])
# Names a response's Connection may list that are never dropped for it: the answer's framing.
# Dropping Content-Length would send a keep-alive answer with no length to the client.
_NEVER_NAMED = _PLAIN_CONNECTION | {b"content-length"}
_BAD_REASON = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")    # control bytes but tab
_KNOWN_REASONS = frozenset(REASONS.values())     # most answers': no need to search them


def status_line_at(raw, at):
    """Where the status line that follows ``at`` begins: llhttp skips CR and LF before one
    (a stray CRLF after the last answer on a reused connection, or after a 1xx)."""
    while raw[at:at + 1] in (b"\r", b"\n"):
        at += 1
    return at


def head_ended(ex):
    """The answer to a HEAD that announced a body ended at its head (RFC 9110 9.3.2): the
    parser, which does not know the request, still waits for the body. A fresh one takes
    the next answer, and the connection goes back to its pool once it settled."""
    ex.parser = httptools.HttpResponseParser(ex)
    ex.complete = ex.settle = True


class Exchange:
    """The upstream side of one pooled connection; also its response parser's protocol.

    It lives as long as the connection (``conn.gw_exchange``), so a keep-alive connection keeps
    one parser instead of building one per request. llhttp validates the response and decides
    its framing; the head itself is taken as one block of bytes (``split_head``), not header by
    header: per-header callbacks were the largest single cost of a proxied request.
    """

    __slots__ = ("conn", "sock", "parser", "timed_out", "status", "reason", "block",
                 "keep_alive", "head_done", "final", "complete", "chunks", "content_length",
                 "chunked", "got_bytes", "via", "head_raw", "informational", "plain",
                 "request_cut", "started", "version", "client_paused", "idle_since",
                 "settle", "waiting_client")

    def __init__(self, conn):
        self.conn = conn
        self.sock = conn.sock
        self.plain = type(conn.sock) is PlainSocket     # TLS records are no answer to peek at
        self.parser = httptools.HttpResponseParser(self)
        self.timed_out = False
        self.idle_since = 0.0       # back in its pool since (Proxy.release; close_idle)
        self.settle = False         # set by a HEAD's answer, taken by Proxy.release
        # The client of the request whose answer's head it waits for (attempt):
        # Runtime.find_hangups lets the upstream go when that client hangs up meanwhile.
        self.waiting_client = None
        self.begin()

    def begin(self):
        self.got_bytes = False
        self.request_cut = False    # the upstream answered before it had all of the request
        # The client paused its upload over CLIENT_PAUSE in this try: a broken connection is
        # then none of the upstream's to answer for (an upstream may time a slow body out)
        self.client_paused = False
        self.head_raw = b""
        self.informational = 0
        self.reset()

    def reset(self):
        self.status = 0
        self.keep_alive = self.head_done = self.final = self.complete = self.chunked = False
        self.started = False        # a head has begun (not just blank lines before one)
        self.chunks = []
        self.content_length = self.via = None

    def expire(self):
        self.timed_out = True
        self.sock.close()

    # httptools callbacks
    def on_message_begin(self):
        if self.head_done:
            if not self.final:
                self.informational += 1     # the real answer after 100 Continue / 103 hints
                self.reset()
            else:
                raise _StrayBytes()         # a second response: stop parsing, keep the first
        self.started = True

    def on_headers_complete(self):
        # llhttp answers should_keep_alive() = False once the message completed: read it here.
        parser = self.parser
        self.status = status = parser.get_status_code()
        if not 100 <= status <= 599:
            # RFC 9110 15: three digits, 1xx-5xx. HTTP/2 upstreams' are refused by h2, and an
            # HTTP/2 client's stack refuses one too. One under 100 (000, 099) is no interim
            # answer: dropped as one, the response after it would be relayed.
            raise UpstreamError(f"upstream answered status {status}, outside 100-599")
        self.keep_alive = parser.should_keep_alive()
        self.head_done = True
        self.final = status >= 200 or status == 101

    def on_body(self, body):
        if not self.final:
            # llhttp frames a 1xx other than 100-103 by its Content-Length or chunked coding;
            # RFC 9110 15.2 gives a 1xx no body. Taken as framed, the body could hold a head
            # the relay would take for the final one.
            raise UpstreamError(f"upstream sent a body with an interim {self.status} answer")
        self.chunks.append(body)

    def on_message_complete(self):
        self.complete = True

    def interim_heads(self):
        """The interim (1xx) heads of this answer read whole so far."""
        return self.informational + (self.head_done and not self.final)

    @staticmethod
    def check_version(raw, start):
        """"1.1" or "1.0", from the status line at ``start``; else UpstreamError."""
        if raw.startswith(b"HTTP/1.1", start):
            return "1.1"
        if raw.startswith(b"HTTP/1.0", start):
            return "1.0"
        # llhttp takes HTTP/2.0 and HTTP/0.9 status lines too: no HTTP/1.x framing or
        # keep-alive rules hold for them, so no answer of theirs is relayed as one.
        raise UpstreamError("upstream answered in %s, not HTTP/1.x"
                            % raw[start:start + 8].decode("latin-1"))

    def split_head(self, max_head, special_line=_SPECIAL_LINE):
        """Take reason, framing, Via and the forwardable header block from the raw head."""
        raw = self.head_raw
        start = 0 if raw[0] == 72 else status_line_at(raw, 0)      # 72: "H"
        if self.informational:
            for _ in range(self.informational):
                # An interim head is dropped, but one in another protocol is a broken peer.
                self.check_version(raw, start)
                start = status_line_at(raw, raw.index(b"\r\n\r\n", start) + 4)
                if not raw.startswith(b"HTTP/", start):
                    # Bytes between an interim head and the next: a chunked 1xx's last chunk
                    # (no on_body call). The next head must start where the interim one ended.
                    raise UpstreamError("upstream sent a body with an interim (1xx) answer")
        end = raw.index(b"\r\n\r\n", start) + 2
        # The head's size counts its blank line (end + 2), as recv_feed's count of a head
        # still coming does: counted without it, a head 1 or 2 bytes over the limit passed
        # when it came in one read, and was a 502 when its last bytes came in another.
        if end + 2 > max_head:
            raise UpstreamError(f"upstream response head over {max_head} bytes")
        if self.status == 101:
            # What came with the head is the tunnel's: llhttp hands it over (an upgrade) only
            # when the 101 says Connection: Upgrade, and stops with an error without it.
            self.chunks = [raw[end + 2:]]
        line_end = raw.index(b"\r\n", start)
        self.version = self.check_version(raw, start)       # for Via
        reason = raw[start + 13:line_end]           # after "HTTP/1.1 200 "
        # llhttp lets control bytes through in a reason phrase: the status's own phrase then
        self.reason = reason if reason in _KNOWN_REASONS or _BAD_REASON.search(reason) is None \
            else b""
        # From the LF that ends the status line: [text, line, name, value, text, ...], each
        # text from an LF to a CR, so the texts alone join into whole CRLF-ended lines.
        parts = special_line.split(raw[line_end + 1:end])
        if len(parts) == 1:
            self.block = raw[line_end + 2:end]
            self.head_raw = b""
            return
        kept, named, codings = [parts[0]], None, None
        for at in range(1, len(parts), 4):
            name = parts[at + 1].lower()
            if name == b"content-length":
                self.content_length = length = parts[at + 2].rstrip(b" \t")
                if len(length) >= 19 and length_over_max(length):     # (a call saved)
                    raise UpstreamError(f"upstream sent Content-Length "
                                        f"{length[:40].decode('latin-1')}, over 2^63 - 1")
                # Kept: it frames the answer. RFC 9110 8.6: never on a 204 (HTTP/2 clients
                # refuse it).
                if self.status != 204:
                    kept.append(parts[at])
            elif name == b"transfer-encoding":
                # Its lines are one list (RFC 9110 5.3), judged whole below: judged line by
                # line, "chunked" then "identity" was chunked read to the close (llhttp's
                # reading), the chunk framing relayed to the client as the body.
                value = parts[at + 2]
                codings = value if codings is None else codings + b", " + value
            elif name == b"via":
                value = parts[at + 2].rstrip(b" \t")
                if value:   # an empty Via line would add an empty member: "Via: , 1.1 gw"
                    self.via = value if self.via is None else self.via + b", " + value
            elif name == b"connection":
                value = parts[at + 2].rstrip(b" \t").lower()
                if value not in _PLAIN_CONNECTION:
                    tokens = {t.strip() for t in value.split(b",")}
                    named = (named or set()) | (tokens - _NEVER_NAMED)
            elif name == b"upgrade" and self.status == 101:
                kept.append(parts[at])
            kept.append(parts[at + 3])
        if codings is not None:
            self.chunked = response_chunked(codings)
            if self.version == "1.0":
                # RFC 9112 6.1: faulty framing in HTTP/1.0; the connection ends after it
                self.keep_alive = False
        block = b"".join(kept)[1:]
        if named:      # RFC 9110 7.6.1: drop the headers Connection names (rare in responses)
            block = b"".join(line + b"\r\n" for line in block.split(b"\r\n")[:-1]
                             if line.partition(b":")[0].lower() not in named)
        self.block = block
        self.head_raw = b""

    def header_pairs(self):
        return parse_block(self.block)


def asks_to_wait(fields):
    """Does an answer's Retry-After ask for a wait: seconds above 0, or a date still to come
    (by the answer's Date, else this host's clock)? 0, a date gone by, or a value that is
    neither (RFC 9110 5.5: an invalid field may be ignored) asks for none: the retry goes
    ahead as without it. Of two Retry-After fields, either asking is asking."""
    asked, date = [], None
    for name, value in fields:
        name = name.lower()
        if name == b"retry-after":
            asked.append(value.strip(b" \t"))
        elif name == b"date":
            date = value
    return any(wait_asked(value, date) for value in asked)


def wait_asked(value, date):
    """Whether one Retry-After value asks for a wait (asks_to_wait)."""
    if value.isdigit():
        return value.lstrip(b"0") != b""
    try:
        return float(value) > 0     # "1.5" is not RFC 9110's form, but asks for a wait
    except ValueError:
        pass
    until = http_date(value)
    if until is None:
        return False
    now = http_date(date) if date is not None else None
    return until > (time.time() if now is None else now)


def http_date(value):
    """An HTTP-date's seconds since the epoch, or None if it is none."""
    try:
        parsed = parsedate_tz(value.decode("latin-1"))
        return None if parsed is None else mktime_tz(parsed)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def backoff_pause(base, retries_made):
    """Seconds to wait before a retry: ``base`` doubled per retry already made, jittered."""
    return base * 2 ** retries_made * (0.5 + random()) if base else 0.0


def back_off(pause):
    """Wait ``pause`` seconds (backoff_pause) before a retry, if any."""
    if pause:
        gevent.sleep(pause)


def past_retry_timeout(timeout, started, pause=0.0):
    """Would a retry begun ``pause`` seconds from now begin once the policy's ``timeout``
    (seconds since the first try, ``started``) has passed?"""
    return timeout is not None and time.monotonic() + pause - started >= timeout


class Proxy:
    """Per-worker upstream side: balancers, pools, and ``forward()``."""

    def __init__(self, runtime):
        self.runtime = runtime
        defaults = runtime.conf.upstream_defaults
        self.pools = UpstreamPools()
        self.pool_timeout = defaults["pool_timeout"]
        self.keepalive_timeout = defaults["keepalive_timeout"]
        self.idle_checked_at = 0.0
        self.max_head = defaults["max_response_head"]
        # With tracing on, the gateway writes the trace id's response header: an upstream's
        # own would reach the client first, naming a trace the upstream chose.
        tracing = runtime.conf.tracing
        self.special_line = special_lines(
            [tracing["response_header"].encode("latin-1")]
            if tracing["enabled"] and tracing["response_header"] else ())
        self.trace_header = tracing["response_header"].lower().encode("latin-1") \
            if tracing["enabled"] and tracing["response_header"] else None
        self.deadlines = runtime.deadlines
        self.buf = runtime.upstream_buf
        self.view = runtime.upstream_view
        self._balancers = {}
        self._budgets = {}
        self.outstanding = {}           # target url -> requests in flight from this worker
                                        # (a str key: its hash is cached, a Target's is a call)
        self.refused = {}               # target url -> until when this host's workers avoid it
        self.settling = []              # (due, pool, exchange) after a HEAD (settle)
        self.share = HostShare(os.path.join(runtime.conf.server["state_dir"], "share"))
        from .h2proxy import H2Forwarder
        self.h2 = H2Forwarder(self)     # protocol = "h2" upstreams (gRPC, gRPC-Web)
        self.budget_percent = defaults["retry_budget_percent"]
        self.budget_min_per_second = defaults["retry_budget_min_per_second"]
        self.workers = resolve_workers(runtime.conf.server["workers"])     # share the budget

    def close(self):
        """The worker is done: close every pool and the host-share file."""
        self.pools.close()
        self.share.close()
        self.h2.pools.close()

    # -- choosing and connecting -------------------------------------------------------------

    def pick(self, upstream, avoid, req):
        targets = upstream.targets
        entry = self._balancers.get(upstream.id)
        if entry is None or entry[0] is not targets:
            entry = (targets, make_balancer(upstream.balance, targets, self.outstanding))
            self._balancers[upstream.id] = entry
        key = req.value_of(*upstream.hash_key) if upstream.balance == "consistent_hash" \
            else None
        return entry[1].pick(avoid, key)

    def share_tick(self, now):
        """On the worker's tick: publish this worker's counts once a second, take in the
        other workers' counts and refused targets."""
        share = self.share
        if now - share.published_at >= PUBLISH_EVERY:
            share.publish(now, {upstream_id: budget.published(now)
                                for upstream_id, budget in self._budgets.items()})
        counts, refused = share.peers(now)
        for upstream_id, budget in self._budgets.items():
            budget.peers = tuple(counts.get(upstream_id, (0, 0)))
        for url, until in refused.items():
            if until > self.refused.get(url, 0):
                self.refused[url] = until

    def close_idle(self, now):
        """On the worker's tick, once a second: close the pooled connections idle for more
        than keepalive_timeout (HTTP/2 ones too). A firewall or NAT that forgot an idle
        flow drops what is sent on it without a word: the next request on that connection
        waited read_timeout for a 504 (nginx closes upstream keep-alive connections idle
        for its keepalive_timeout, 60 s by default, too)."""
        if now - self.idle_checked_at < IDLE_CHECK_EVERY:
            return
        self.idle_checked_at = now
        before = now - self.keepalive_timeout
        for pool in self.pools.pools.values():
            idle = pool.pool            # urllib3's queue (None once closed); gevent: no lock
            for conn in list(idle.queue) if idle is not None else ():
                ex = getattr(conn, "gw_exchange", None)
                if ex is not None and ex.idle_since < before:
                    conn.gw_exchange = None
                    conn.close()        # the pool's next get reconnects it (is_connected)
        self.h2.pools.close_idle(before)

    def forget_gone_upstreams(self, live_ids):
        """Drop the retry budgets and balancers of upstreams no longer in the table (kept by
        id, as forget_gone's are by URL): every upstream that ever came (etcd churn) kept one
        of each for the worker's life, its budget published in the share file and read by
        every other worker, each second. One with requests in flight keeps its own objects."""
        for kept in (self._budgets, self._balancers):
            for upstream_id in [i for i in kept if i not in live_ids]:
                del kept[upstream_id]

    def budget(self, upstream):
        budget = self._budgets.get(upstream.id)
        if budget is None:
            budget = self._budgets[upstream.id] = RetryBudget(
                self.budget_percent, self.budget_min_per_second, workers=self.workers)
        return budget

    def checkout(self, pool, target, connect_timeout, fresh=False, others=False,
                 streamed=False):
        """Return (exchange, reused) on an open connection; raise an HTTPError if impossible.
        A new connection (TCP and TLS handshake) gets ``connect_timeout``, the route's.
        ``others``: a block_when_full pool that is full does not wait, another target may
        have a free connection (UpstreamBusy at once). ``fresh``: a new connection whatever
        the pool holds; ``streamed``: one idle over STREAMED_REUSE_IDLE is not reused."""
        try:
            conn = pool._get_conn(timeout=0 if others else self.pool_timeout)
        except EmptyPoolError:
            raise UpstreamBusy(f"connection pool for {target.url} is exhausted") from None
        if conn.sock is not None and (fresh or streamed and self.idle_long(conn)):
            conn.close()        # the pool may hold more dead ones: a new connection, same slot
        if conn.sock is not None:
            ex = getattr(conn, "gw_exchange", None)
            if ex is not None and ex.sock is conn.sock:
                ex.begin()
                return ex, True
            ex = conn.gw_exchange = Exchange(conn)
            return ex, True
        # The route's timeouts.connect: the pool's own is its upstream's, and a route's was
        # not used at all (a connect, or a TLS handshake, waited 5 s for a route's 0.5 s).
        conn.timeout = connect_timeout
        # OpenSSL opens the tls files at each new connection, blocking (not gevent's): a
        # FIFO (or /dev/zero) put in place of one since the check hung the whole worker.
        # A stat per file per new connection, never on reuse.
        irregular = irregular_file(*tls_files(conn))
        if irregular is not None:
            pool._put_conn(None)
            raise UpstreamTLSFilesError(f"TLS to {target.url}: the upstream's tls files "
                                        f"cannot be loaded ({irregular})")
        try:
            conn.connect()
        except (NewConnectionError, NameResolutionError, LocationParseError, OSError,
                CertificateError) as exc:
            # NewConnectionError subclasses ConnectTimeoutError in urllib3 2: test it first.
            conn.close()        # (a TCP connection made before a tls file failed stays open)
            pool._put_conn(None)
            if out_of_files(exc):
                # the worker's own limit: taken for the target's, the host's workers skipped
                # it for 1 s and passive checks counted it towards its ejection
                raise OutOfFiles.connecting_to(target.url) from None
            # (tls_files, as above: a comprehension naming `conn` here would make it a closure
            # cell, built on every checkout, ~240 instructions a request)
            files = tls_files(conn)
            if isinstance(exc, ssl.SSLError) and (files[0] or files[1]):
                # A cert_file its key_file no longer matches fails here, not as urllib3's
                # SSLError: the files' fault (client_tls_problem says so), no target's
                problem = client_tls_problem(*files)
                if problem is not None:
                    raise UpstreamTLSFilesError(f"TLS to {target.url}: the upstream's tls "
                                                f"files cannot be loaded ({problem})") from None
            raise UpstreamConnectError(f"cannot connect to {target.url}: "
                                       f"{failure_reason(exc)}") from None
        except ConnectTimeoutError:
            conn.close()        # (a handshake cut by the timeout leaves its TCP connection)
            pool._put_conn(None)
            raise UpstreamConnectTimeout(f"connect to {target.url} timed out") from None
        except TLSFilesError as exc:
            # urllib3 reads the tls files at each connect and wraps OpenSSL's refusal of a
            # ca_file (or an encrypted key_file) in an HTTPError of its own: one replaced
            # since the check made every request a 500, its traceback logged per request.
            # The TCP connection urllib3 made before it read them is closed: left open, the
            # upstream waited on its handshake (a single-threaded one for every other client)
            conn.close()
            pool._put_conn(None)
            # which file, and why: OpenSSL's word ("no such file or directory") names none
            problem = client_tls_problem(*tls_files(conn)) or failure_reason(exc)
            raise UpstreamTLSFilesError(f"TLS to {target.url}: the upstream's tls files "
                                        f"cannot be loaded ({problem})") from None
        except BaseException:
            # Killed while connecting (an HTTP/2 client reset its stream; the worker stops):
            # the slot goes back, or a block_when_full pool would lose it for good.
            conn.close()
            pool._put_conn(None)
            raise
        conn.sock.settimeout(None)      # reads are bounded by the worker's deadlines instead
        metrics = self.runtime.metrics
        if metrics is not None:
            metrics.connections_opened.labels(target.url).inc()
        ex = conn.gw_exchange = Exchange(conn)
        return ex, False

    def idle_long(self, conn):
        """Has this pooled connection been idle over STREAMED_REUSE_IDLE (checkout)?"""
        ex = getattr(conn, "gw_exchange", None)
        return ex is None or self.deadlines.now - ex.idle_since > STREAMED_REUSE_IDLE

    def release(self, pool, ex, reusable):
        conn = ex.conn
        # A request cut short leaves the upstream waiting for the rest of a body: it would
        # read the next request on this connection as that rest (a smuggled request).
        if reusable and not ex.request_cut:
            ex.idle_since = self.deadlines.now      # (the ticker's clock: no call)
            pool._put_conn(conn)
        elif ex.settle and not ex.request_cut and not pool.block:
            # (a blocking pool's requests wait for the slot: it is freed at once)
            ex.settle = False
            self.settling.append((self.deadlines.now + HEAD_SETTLE, pool, ex))
        else:
            ex.settle = False
            conn.gw_exchange = None
            conn.close()
            pool._put_conn(None)

    def settle(self, now):
        """On the worker's tick: connections whose HEAD answer announced a body (its length,
        or chunked) go back to their pools once HEAD_SETTLE passed without a byte on them;
        one with bytes, or closed, is closed. Closed at once, as they were, every HEAD cost
        a connection (a monitor's or a health checker's)."""
        due = [entry for entry in self.settling if entry[0] <= now]
        if not due:
            return
        self.settling = [entry for entry in self.settling if entry[0] > now]
        for _, pool, ex in due:
            conn = ex.conn
            if conn.sock is ex.sock and conn.is_connected:
                ex.idle_since = now
                pool._put_conn(conn)
            else:
                conn.gw_exchange = None
                conn.close()
                pool._put_conn(None)

    # -- the exchange ---------------------------------------------------------------------------

    def forward(self, client, req, keep_alive):
        """Proxy ``req``; return (status, body bytes sent, client keep-alive). The target
        last tried is ``req.target`` (choose).

        Each try goes to a target not tried yet when one is left. A failed connect sent
        nothing, so it is retried for any method; after the request went out, a try is
        retried only as the route's retry policy says (reset, timeout, an answer's status),
        for its methods, with the body held, and never once a byte reached the client."""
        route = req.route
        upstream = req.upstream or route.upstream
        via = req.header_map.get(b"via")
        if via is not None and own_hops(via, self.runtime.via_name) >= MAX_OWN_HOPS:
            raise LoopDetected(f"the request passed through a gateway named "
                               f"{self.runtime.via_name.decode()} {MAX_OWN_HOPS} times already "
                               f"(Via): upstream {upstream.id} leads back to the gateway?")
        if upstream.protocol == "h2":
            if req.upgrade:
                raise ProtocolMismatch(f"upstream {upstream.id} speaks HTTP/2 (protocol = "
                                       f"\"h2\"): an Upgrade request cannot go to it")
            return self.h2.forward(client, req, keep_alive, upstream)
        if client.speaks_h2 and is_grpc(req.header_map.get(b"content-type")):
            raise ProtocolMismatch(f"upstream {upstream.id} speaks HTTP/1.1: a native gRPC "
                                   f"call needs an upstream with protocol = \"h2\"")
        if not upstream.targets:
            raise ServiceUnavailable(no_target_reason(upstream))
        policy, connect_timeout = try_policy(route, upstream)
        body_held = None
        if req.complete:
            body_held, req.body = req.body, []
        replayable = body_held is not None and not req.upgrade and req.method in policy.methods
        attempts_left, tried = policy.attempts, []
        waited = ()         # targets whose answer asked for a wait: no retry goes back to them
        fresh = stale_retried = False
        again = None        # the target a dead reused connection's request goes back to
        now = started = time.monotonic()
        budget = self.budget(upstream)
        budget.request()
        outstanding = self.outstanding
        while True:
            if tried:
                now = time.monotonic()      # a try, a timeout or a backoff took time
                client.raise_if_gone()      # (a backoff's wait is watched by nothing)
            target = self.choose(upstream, tried, req, now, waited) if again is None \
                else again
            again = None
            pool = self.pools.get(target, upstream)
            outstanding[target.url] = outstanding.get(target.url, 0) + 1
            try:
                # A full block_when_full pool waits only when no other target is left: a
                # request that waited pool_timeout for one busy target got a 503 while the
                # others had free connections (nginx's max_conns skips a full server too).
                others = pool.block and self.another_target(upstream, target, tried, now)
                try:
                    ex, reused = self.checkout(pool, target, connect_timeout, fresh, others,
                                               body_held is None)
                    fresh = False
                    if target.url in self.refused:
                        del self.refused[target.url]    # a probe got through: it is back
                except UpstreamBusy:
                    if not others:
                        raise
                    tried.append(target)    # nothing was sent: no retry, no budget spent
                    continue
                except UpstreamConnectError as exc:
                    if self.connect_failed(route, upstream, target, tried, attempts_left,
                                           budget, policy, exc, now, started, client):
                        attempts_left -= 1
                        continue
                    raise
                try:
                    self.attempt(client, req, ex, target, body_held, policy)
                except _StaleConnection:
                    self.release(pool, ex, False)
                    if ex.client_paused:
                        raise client_side(UpstreamError(
                            f"{target.url}: connection failed before an answer, after the "
                            f"client paused its upload")) from None
                    # Retried once on a fresh connection for an idempotent method whatever
                    # the policy, and for no other (the upstream may have acted on it: only
                    # "reset" in the policy lets it go again, below). A websocket handshake
                    # too: nothing of the tunnel (upgrade_tail) goes out before a 101.
                    # Not once the policy's timeout has passed (nginx's
                    # proxy_next_upstream_timeout holds for a cached connection too): a reused
                    # connection the upstream sat on that long and closed unanswered was
                    # tried again, the client's wait doubled past the bound.
                    if reused and not stale_retried and body_held is not None and \
                            req.method in IDEMPOTENT and \
                            not past_retry_timeout(policy.timeout, started):
                        fresh = stale_retried = True    # the pool may hold more dead ones
                        req.attempts -= 1   # a dead connection's: no try reached the upstream
                        # To the same target, as urllib3 retries in the same pool (nginx
                        # moves on to the next peer, not counting the try): the balancer's
                        # next pick went elsewhere, and ``fresh`` closed that target's
                        # healthy pooled connection in place of this pool's dead ones.
                        again = target
                        continue
                    self.book_failure(upstream, target)
                    reason = f"{target.url}: connection failed before an answer"
                    if replayable and self.may_retry(route, upstream, target, tried,
                                                     attempts_left, budget,
                                                     "reset" in policy.events, reason, now,
                                                     policy.backoff, started=started,
                                                     client=client):
                        attempts_left -= 1
                        continue
                    raise UpstreamError(reason) from None
                except UpstreamTimeout as exc:
                    self.release(pool, ex, False)
                    self.book_failure(upstream, target)
                    if replayable and self.may_retry(route, upstream, target, tried,
                                                     attempts_left, budget,
                                                     "timeout" in policy.events, exc.reason,
                                                     now, policy.backoff, started=started,
                                                     client=client):
                        attempts_left -= 1
                        continue
                    raise
                except BaseException as exc:
                    self.release(pool, ex, False)
                    if isinstance(exc, UpstreamError):
                        if ex.client_paused:
                            client_side(exc)
                        else:
                            self.book_failure(upstream, target)
                    raise
                retry = ex.status in policy.statuses and replayable
                if retry and asks_to_wait(ex.header_pairs()):
                    retry, waited = self.wait_elsewhere(upstream, target, tried, now, waited)
                if retry:
                    pause = self.retry_pause(route, upstream, target, tried, attempts_left,
                                             budget, True, f"{target.url} answered {ex.status}",
                                             now, policy.backoff, started=started)
                    if pause is not None:
                        # Nothing of this answer has reached the client: drop it, try again.
                        self.release(pool, ex,
                                     ex.complete and ex.keep_alive and upstream.keepalive)
                        self.book_outcome(upstream, target, ex.status)
                        attempts_left -= 1
                        # After the release: killed in the wait (a client reset its HTTP/2
                        # stream), the request must hold no pool slot.
                        self.retry_after(client, upstream, budget, pause, now)
                        continue
                try:
                    status, sent, client_keep, upstream_keep = self.respond(client, req, ex,
                                                                            keep_alive)
                except BaseException as exc:
                    self.release(pool, ex, False)
                    if isinstance(exc, (UpstreamError, UpstreamTimeout)) and \
                            not exc.client_side:    # (a slow reader's: relay_response)
                        self.book_failure(upstream, target)
                    raise
            finally:
                outstanding[target.url] -= 1
            self.release(pool, ex, upstream_keep and upstream.keepalive)
            self.book_outcome(upstream, target, ex.status)      # what the upstream said
            return status, sent, client_keep

    def book_failure(self, upstream, target, refused=None):
        """A try failed without an answer: passive checks count it; a refused connect also
        makes this host's workers skip the target for REFUSED_AVOID seconds."""
        if upstream.passive is not None:
            self.runtime.passive.observe(upstream, target, False)
        if refused is not None:
            self.refused[target.url] = refused + REFUSED_AVOID
            self.share.refuse(target.url, refused + REFUSED_AVOID, refused)

    def connect_failed(self, route, upstream, target, tried, attempts_left, budget, policy,
                       exc, now, started, client):
        """A connect failed: book it (this host's workers skip the target for a while) and
        say whether the request goes on to another try (for any method: nothing was sent),
        as the policy and the budget allow. Both protocols' loops ask this."""
        # The skip runs from the failure, not from ``now`` (the try's start): a connect that
        # timed out after 1 s left none, and the next request was the host's probe of the
        # dead target, each one after it too.
        self.book_failure(upstream, target, refused=time.monotonic())
        wanted = "connect" in policy.events
        if wanted and isinstance(exc, UpstreamConnectTimeout) and \
                lookup_hangs(target.host) and \
                all(lookup_hangs(t.host) for t in upstream.targets):
            # The name's lookup hangs: a retry to that name waits for the same lookup,
            # within a connect timeout of its own, and the request's 504 came after twice
            # timeouts.connect (the default policy retries a failed connect once). So does
            # one to another name whose lookup hangs too (a nameserver that is gone hangs
            # every name): retried only when some target's lookup does not hang.
            wanted = False
        return self.may_retry(route, upstream, target, tried, attempts_left, budget,
                              wanted, exc.reason, now, started=started, client=client)

    def book_outcome(self, upstream, target, status):
        passive = upstream.passive
        if passive is not None:
            self.runtime.passive.observe(upstream, target, status not in passive["statuses"])

    def may_retry(self, route, upstream, target, tried, attempts_left, budget, wanted, reason,
                  now, backoff=0.0, *, started, client):
        """Whether the next try may go ahead (retry_pause); if so, waits its backoff first
        (``backoff``: a try that follows a reset or a timeout; none after a failed connect)."""
        pause = self.retry_pause(route, upstream, target, tried, attempts_left, budget, wanted,
                                 reason, now, backoff, started=started)
        if pause is None:
            return False
        self.retry_after(client, upstream, budget, pause, now)
        return True

    def retry_after(self, client, upstream, budget, pause, now):
        """Wait a retry's backoff (retry_pause's verdict, taken at ``now``), then count the
        retry as made. Not one whose client left in the wait (an HTTP/1.1 client's hang-up;
        an HTTP/2 client's reset kills the wait): no try went out, so the budget gets its
        retry back (counted as the verdict came, a request given up in its backoff was
        counted ``retried``, and spent a retry no upstream saw)."""
        try:
            back_off(pause)
            client.raise_if_gone()
        except BaseException:
            budget.refund(now)
            raise
        self._count_retry(upstream, "retried")

    def retry_pause(self, route, upstream, target, tried, attempts_left, budget, wanted,
                    reason, now, backoff, *, started):
        """None when the next try may not go ahead, else the seconds to wait before it:
        ``backoff`` doubled per retry already made, jittered. It goes ahead when the policy
        wants it, attempts are left, it would begin (its backoff waited) before the policy's
        ``timeout`` since the first try ``started``, and the upstream's retry budget (shared
        by this host's workers) allows it. Counts and logs the verdict (a go-ahead is counted
        once its backoff is waited: retry_after). Both protocols' loops ask this (an
        answer's retry waits once its connection is released)."""
        retries_made = len(tried)
        tried.append(target)
        if not wanted or attempts_left <= 0:
            return None
        pause = backoff_pause(backoff, retries_made)
        timeout = try_policy(route, upstream)[0].timeout
        if past_retry_timeout(timeout, started, pause):
            # (checked with the backoff waited: it began the retry past the timeout too)
            self._count_retry(upstream, "timed_out")
            when = "has passed" if past_retry_timeout(timeout, started) else \
                f"would pass in the retry's backoff ({pause:.3g}s)"
            throttled_log.log(log, logging.WARNING, ("retry timeout", route.id),
                              "route %s: %s; not retried: the retry timeout (%gs since the "
                              "first try) %s", route.id, reason, timeout, when)
            return None
        if not budget.try_retry(now):
            self._count_retry(upstream, "budget_exhausted")
            throttled_log.log(log, logging.WARNING, ("retry budget spent", route.id),
                              "route %s: %s; not retried: the retry budget of upstream %s "
                              "is spent", route.id, reason, upstream.id)
            return None
        throttled_log.log(log, logging.WARNING, ("retrying", route.id),
                          "route %s: %s; retrying%s", route.id, reason,
                          " on another target" if len(tried) < len(upstream.targets) else "")
        return pause

    def wait_elsewhere(self, upstream, target, tried, now, waited):
        """``target`` answered asking for a wait (Retry-After): (may the request go to another
        target, the targets that asked so far). A retry with no other target left went back
        to it after a backoff of milliseconds: its answer is relayed then, for the client to
        wait as told (RFC 9110 10.2.3). No later retry goes back to it either (choose): after
        another target failed too, the balancer's choice among all was it half the time.
        Both protocols' loops ask this."""
        return self.another_target(upstream, target, tried, now), waited + (target,)

    def another_target(self, upstream, target, tried, now):
        """Is a target other than ``target`` left that choose would go to: not tried, not
        down, not refusing connections lately, weight above 0? Counting every target, a
        request skipped the full pool of the only healthy one, found every target avoided,
        and the balancer's plain choice among all sent it to one health checks took out."""
        if len(upstream.targets) == 1:
            return False
        health = self.runtime.health
        down = health.avoid(upstream)[0] if health.down else ()
        refused = self.refused
        return any(t is not target and t.weight > 0 and t not in tried and t not in down
                   and refused.get(t.url, 0) <= now for t in upstream.targets)

    def choose(self, upstream, tried, req, now, waited=()):
        """The target for the next attempt: not tried yet, not down (unless panicking), not
        refusing connections to this worker lately, then as the upstream's balancer says;
        every target avoided so, one not in ``waited`` (around_waited). The request
        keeps its url (``req.target``): the access log's upstream, failed or not."""
        targets = upstream.targets
        if len(targets) == 1:
            target = targets[0]
        else:
            health = self.runtime.health
            avoid = health.avoid(upstream)[0] if health.down else frozenset()
            if tried:
                avoid = avoid | frozenset(tried)
            if self.refused:
                refused, probe = self.recently_refused(targets, now)
                if probe is not None and probe not in avoid:
                    # This request is the host's one try of a target that refused lately:
                    # it goes there (a balancer's pick could miss it, and the skip would be
                    # re-armed without a try).
                    req.target = probe.url
                    return probe
                avoid = avoid | refused
            if waited or tried:
                # A retry with every target tried or avoided goes to a tried one before one
                # down or refusing (the balancer's plain choice among all of them sent it to
                # one health checks took out, half the time)
                avoid = self.around_waited(upstream, avoid, waited, now)
            target = self.pick(upstream, avoid, req)
        req.target = target.url
        return target

    def around_waited(self, upstream, avoid, waited, now):
        """``choose``'s avoid set for a retry (``waited``: the targets that asked for a
        wait, maybe none): as it is while the balancer has a target outside it (a weight of
        0 is none: counted, the balancer's plain choice among all went back to the one that
        asked); else a tried target again, but none down, refusing connections or in
        ``waited``; else any but those in ``waited``.
        Freeing all but ``waited`` at once sent the retry to a target health checks took
        out while a healthy one, tried, was left."""
        targets = upstream.targets
        health, refused = self.runtime.health, self.refused
        down = health.avoid(upstream)[0] if health.down else frozenset()
        for candidate in (avoid, down.union(waited, (t for t in targets
                                                     if refused.get(t.url, 0) > now)),
                          frozenset(waited)):
            if any(t.weight > 0 and t not in candidate for t in targets):
                return candidate
        return avoid

    def recently_refused(self, targets, now):
        """(targets this host's workers failed to connect to in the last REFUSED_AVOID
        seconds, the one this request is to try again or None). If every target is in the
        first, none is: a request must go somewhere."""
        refused = self.refused
        probe = None
        for target in targets:
            until = refused.get(target.url)
            if until is not None and until <= now:
                # The skip ran out: one request of one worker of the host tries the target
                # again (the claim); everyone else keeps skipping it until that try tells.
                refused[target.url] = now + REFUSED_AVOID
                if probe is None and self.share.claim_probe(target.url, until, REFUSED_AVOID):
                    probe = target
        avoid = frozenset(t for t in targets if t.url in refused and t is not probe)
        return (frozenset() if len(avoid) == len(targets) else avoid), probe

    def _count_retry(self, upstream, outcome):
        metrics = self.runtime.metrics
        if metrics is not None:
            metrics.count_retry(upstream.id, outcome)

    def attempt(self, client, req, ex, target, body_held, policy):
        """One try: send the request (the held body, or the client's as it arrives) and read
        the head of the answer, within the policy's per-try timeout."""
        route = req.route
        started = time.monotonic()
        req.sent = True
        head = self.request_head(req, target)
        if req.content_length is not None and req.complete and \
                req.body_size != req.content_length:
            # The parser ended the message short of its Content-Length (an upgrade does).
            # Sent so, the upstream would take the next request's bytes as the rest.
            raise BadRequest("request body shorter than its Content-Length")
        # Counted as it goes out, not once its head is read: a try that timed out or was
        # reset reached the upstream too (counted after the head, a request retried after a
        # timeout was logged as one try, and one that failed on every try as none).
        req.attempts += 1
        since = None        # when the per_try_timeout began: after the send, by default
        if body_held is not None:
            # A held body's send is part of the try: per_try_timeout bounds it and the head
            # together (an upstream that stopped reading held a 4 MiB PUT's try the read
            # timeout, 60 s for a per_try_timeout of 0.5, before its retry elsewhere).
            if policy.per_try_timeout:
                since = started
            send_timeout = policy.per_try_timeout or route.read_timeout
            if body_held or req.chunked:
                head = b"".join([head, *encode_chunks(body_held, req.chunked, last=True)])
            if len(head) <= ONE_SEND:
                self.send(ex, head, send_timeout, stale_ok=True,
                          setting="per_try_timeout" if policy.per_try_timeout else
                          "timeouts.read")
            elif not self.send_piece(ex, head, route, stale_ok=True, timeout=send_timeout,
                                     per_try_timeout=policy.per_try_timeout, since=since):
                # It answered (a 413) while the send waited, as a streamed body's upstream
                # may: one that answered and stopped reading held a plain send to
                # read_timeout, a 504 in place of its answer.
                ex.request_cut = True
        else:
            self.send(ex, head, route.read_timeout, stale_ok=True)
            waited = client.body_waited
            try:
                self.stream_request_body(client, req, ex, route)
            finally:
                # The upstream's time is not the client's: a slow upload was no latency of
                # the upstream's (a canary's gates, the metrics), nor its pause a failure.
                waited = client.body_waited - waited
                started += waited
                ex.client_paused = waited >= CLIENT_PAUSE
        ex.waiting_client = client      # for the head's wait alone (find_hangups)
        try:
            self.read_head(ex, route.read_timeout, policy.per_try_timeout, since)
        except BaseException as exc:
            if client.hung_up:
                # the client left (an HTTP/2 stream's reset kills its greenlet): how long
                # the upstream had the request, for a rollout's gates (abandoned_after)
                req.vars["abandoned_wait"] = time.monotonic() - started
            if isinstance(exc, Exception):
                # Its hang-up ended the wait (find_hangups): no failure of the upstream's
                # to count, retry or break on.
                client.raise_if_hung_up()
            raise
        finally:
            ex.waiting_client = None
        req.upstream_seconds = time.monotonic() - started

    def respond(self, client, req, ex, keep_alive):
        """Relay the answer whose head ``attempt`` read (or open a websocket tunnel)."""
        if ex.status == 101:
            check_websocket_accept(req, ex)
            req.route.chain.run_upgraded(req)   # (a breaker's verdict: finish waits for the close)
            return self.tunnel(client, req, ex)
        return self.relay_response(client, req, ex, req.route, keep_alive)

    def request_head(self, req, target):
        path = upstream_path(req)
        upstream = req.upstream or req.route.upstream
        hmap = req.header_map
        host = upstream_host(req, target, upstream)
        lines = [b"%s %s HTTP/1.1\r\nHost: %s" % (req.method.encode("ascii"),
                                                 path.encode("latin-1"), host)]
        trace = req.trace
        if trace is not None and not REPLACED_HEADERS.isdisjoint(hmap):
            for name, value in req.headers:
                if name.lower() not in REPLACED_HEADERS:
                    lines.append(name + b": " + value)
        else:
            for name, value in req.headers:
                lines.append(name + b": " + value)
        if trace is not None:
            for name, value in trace_headers(req, self.runtime.emit_b3):
                lines.append(name + b": " + value)
        lines.append(b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\nX-Forwarded-Host: %s\r\n"
                     b"X-Request-ID: %s\r\nVia: %s" % (*forwarded_values(req, host),
                                                        req.request_id.encode("latin-1"),
                                                        via_chain(hmap.get(b"via"),
                                                                  self.runtime.via[
                                                                      client_protocol(req)])))
        if req.chunked:
            lines.append(b"Transfer-Encoding: chunked")
        elif req.content_length is not None:
            lines.append(b"Content-Length: %d" % req.content_length)
        if req.upgrade:
            lines.append(b"Connection: Upgrade\r\nUpgrade: " + hmap.get(b"upgrade", b""))
        lines.append(b"\r\n")
        return b"\r\n".join(lines)

    def send(self, ex, data, timeout, stale_ok=False, setting="timeouts.read"):
        """Send all of ``data`` within ``timeout`` (of ``setting``, for the log)."""
        try:
            send_all(ex.sock, data, self.deadlines, ex, timeout)
        except OSError as exc:
            raise send_failed(ex, exc, stale_ok, timeout, setting) from None

    def send_piece(self, ex, data, route, stale_ok=False, timeout=None, per_try_timeout=None,
                   since=None):
        """One piece of a streamed body; False if the upstream answered instead of taking it
        (one that answered early and stopped reading would hold the send until
        read_timeout: a 504 in place of its 413). ``stale_ok``: as ``send``'s; ``timeout``:
        the route's read timeout unless given; ``per_try_timeout`` from ``since``: the try's
        bound, a held body's (what the upstream says meanwhile renews none of it)."""
        def answered():
            if ex.timed_out:        # the deadline closed the socket: that is what woke the wait
                raise OSError(errno.EBADF, "closed by its deadline")
            if ex.plain:
                return self.answered(ex, route, per_try_timeout=per_try_timeout, since=since)
            return self.tls_answered(ex, route, per_try_timeout, since)

        send = send_unless_answered if ex.plain else tls_send_unless_answered
        timeout = timeout or route.read_timeout
        try:
            return send(ex.sock, data, self.deadlines, ex, timeout, answered)
        except (OSError, ValueError) as exc:    # ValueError: select on a closed socket
            raise send_failed(ex, exc, stale_ok, timeout,
                              "per_try_timeout" if per_try_timeout else "timeouts.read") \
                from None

    def stream_request_body(self, client, req, ex, route):
        """Forward the body as it arrives: one client read in memory at a time.

        An upstream may answer before it has the whole body (an early 413, say). Between
        pieces we look whether it has said anything; if it has, we stop sending and relay its
        answer (the client's connection then closes: the rest of its body is unread)."""
        limit = route.max_body_size
        client.send_continue(req)
        until = None        # when the client's wait that a wake cut short was to end
        for turn in count(1):
            # Read before taking the pieces, once: an HTTP/2 client's body arrives in another
            # greenlet, which may add the last piece and mark the end while a send waits.
            complete = req.complete
            chunks = req.take_body()
            if limit and req.body_size > limit:
                raise PayloadTooLarge(f"body is over the route's limit of {limit} bytes")
            if self.answered_between(ex, route):
                ex.request_cut = True   # the upstream answered (or closed) early
                return
            if chunks or complete:
                data = b"".join(encode_chunks(chunks, req.chunked, last=complete))
                if data and not self.send_piece(ex, data, route):
                    ex.request_cut = True   # it answered while the send waited
                    return
            if complete:
                return
            if turn % YIELD_EVERY == 0:
                gevent.sleep(0)         # a fast uploader must not hold the worker
            # Watching the upstream meanwhile: waiting on the client alone, an early answer
            # (a 413, a 401) to a client that paused its upload, or that waits for one
            # before it sends its body (answered 100 Continue all the same), was held until
            # client_body_timeout and lost for the gateway's 408. A wake may be no answer (an
            # interim head, a CRLF, a TLS session ticket): the next wait on the client ends
            # when the one it cut short would have, not a client_body_timeout later (woken
            # each second by an upstream's CRLF, a silent client's upload was held for good).
            # Watched once only, a 103 or the tickets took the wake and the 413 behind them
            # was lost for the 408 again.
            began = time.monotonic()
            left = None if until is None else max(until - began, 0.001)
            if client.read_body(ex.sock, left):
                until = until or began + client.body_timeout
                if idle_state(ex.sock) is CLOSED:
                    # A close is no answer to relay: the wait on the client goes on to its
                    # next piece or its end, as unwatched, so the pause the close fell in
                    # is measured whole (CLIENT_PAUSE). Cut short here, an upstream's body
                    # read timeout (0.5 s, as gunicorn's or Node's) under a client's 1.2 s
                    # stall was blamed on the upstream: a canary rolled back for it.
                    client.read_body(None, max(until - time.monotonic(), 0.001))
                    until = None
            else:
                until = None

    def answered_between(self, ex, route):
        """Between two pieces of a streamed body: has the upstream answered (or closed)?"""
        if ex.plain:
            return idle_state(ex.sock) is not OPEN and self.answered(ex, route)
        if not ex.sock.pending() and idle_state(ex.sock) is OPEN:
            return False
        return bool(self.tls_answered(ex, route))

    def tls_answered(self, ex, route, per_try_timeout=None, since=None):
        """``answered`` for a TLS upstream whose socket is readable, without waiting for
        data: None if what came held none (a TLS 1.3 session ticket; read, a record with
        data would have waited for the answer the upstream gives only after the body)."""
        try:
            n = tls_read_now(ex.sock, self.buf)
        except OSError as exc:
            raise read_failed(ex, exc, route.read_timeout) from None
        return None if n is None else self.answered(ex, route, n, per_try_timeout, since)

    def answered(self, ex, route, took=None, per_try_timeout=None, since=None):
        """The upstream said something while the body was going out: read it (or take the
        ``took`` bytes already read into the buffer). True if it closed or its head is a
        final answer; False for a whole interim head (103 Early Hints, an unasked 100
        Continue), dropped as read_head drops them while the body goes on, which gives a
        send that waits a timeout of its own, the first MAX_INTERIM_HEADS of them as
        read_head's; None for anything else (blank lines before a head, a 17th interim
        head), which keeps the send's deadline: each renewed it, and an upstream that stopped
        reading held the upload and its connection for as long as it sent a CRLF every
        read_timeout - 1 ms. A head that has begun is read to its end before deciding, whole
        within read_timeout as read_head's are (each byte renewing it, a head dripped a byte
        every read_timeout - 1 ms held them alike): a 100 Continue split across writes is
        not an answer. With a ``per_try_timeout`` (a held body's send is part of the try,
        from ``since``), the head is whole by the try's end and no interim head renews the
        send's wait, as in read_head: read with timeouts.read, a head dripped while the
        try's deadline was off held the try for timeouts.read, not per_try_timeout, and 103s
        gave it 16 per_try_timeouts, where it was to be cut and tried again."""
        read_timeout = route.read_timeout
        deadlines = self.deadlines
        send_until = deadlines.until(ex)        # the waiting send's, which our reads replace
        heads = ex.interim_heads()
        until = since + per_try_timeout if per_try_timeout else \
            time.monotonic() + read_timeout
        if not self.recv_feed(ex, read_timeout, took=took):
            return True                     # closed
        while ex.started and not ex.head_done:
            left = until - time.monotonic()
            if left <= 0:
                raise head_timeout(ex, per_try_timeout, read_timeout)
            try:
                if not self.recv_feed(ex, left, wait_first=True):
                    return True
            except UpstreamTimeout:
                raise head_timeout(ex, per_try_timeout, read_timeout) from None
        if ex.final:
            return True
        if not per_try_timeout and heads < ex.interim_heads() <= MAX_INTERIM_HEADS:
            return False
        if send_until is not None:
            deadlines.arm(ex, send_until - time.monotonic())
        return None

    def recv_feed(self, ex, timeout, wait_first=False, took=None):
        """Read once from the upstream and parse it; return the count of bytes read, 0 on
        EOF. ``took``: the count of bytes a caller already read into the buffer
        (tls_answered), parsed alone."""
        if took is None:
            deadlines = self.deadlines
            deadlines.arm(ex, timeout)
            try:
                n = recv_when_readable(ex.sock, self.buf) if wait_first else \
                    ex.sock.recv_into(self.buf)
            except (OSError, ValueError) as exc:
                # ValueError: a TLS socket its deadline closed as its wait ended with data
                # (gevent's read looks again and finds it closed); a 500 under load
                raise read_failed(ex, exc, timeout) from None
            finally:
                deadlines.disarm(ex)
        else:
            n = took
        if n == 0:
            return 0
        ex.got_bytes = True
        if ex.final:
            data = self.view[:n]
        else:
            data = self.buf[:n]         # a copy: the head is taken apart after parsing
            ex.head_raw += data
        try:
            ex.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass    # 101: what follows belongs to the tunnel (split_head takes it)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, UpstreamError):
                raise cause from None
            if not isinstance(cause, _StrayBytes):
                raise
            throttled_log.log(log, logging.WARNING, ("extra response", ex.conn.host),
                              "upstream %s sent more than one response: the extra bytes are "
                              "discarded and the connection closed", ex.conn.host)
            ex.keep_alive = False
        except httptools.HttpParserError as exc:
            if ex.complete and not ex.final:
                # llhttp ended the connection after an interim head it took as not kept
                # alive (HTTP/1.0's rules; HTTP/2.0's too): no answer can follow it.
                ex.check_version(ex.head_raw, status_line_at(ex.head_raw, 0))
                raise UpstreamError(f"upstream sent more after an interim {ex.status} "
                                    f"answer on a connection it did not keep alive: {exc}")
            if ex.complete:
                # Junk after a complete response (a body after 204, say): serve the response,
                # never reuse the connection. (A 101 without Connection: Upgrade ends here too:
                # what follows it is the tunnel's, no junk.)
                if ex.status != 101:
                    throttled_log.log(log, logging.WARNING,
                                      ("bytes after response", ex.conn.host),
                                      "upstream %s sent bytes after a complete response: %s",
                                      ex.conn.host, exc)
                ex.keep_alive = False
                return n
            # Not HTTP: a 502. Never a retry, even before the head: the upstream read the
            # request and may have acted on it.
            raise UpstreamError(f"upstream sent an invalid response: {exc}") from None
        if not ex.final and len(ex.head_raw) > self.max_head:
            raise UpstreamError(f"upstream response head over {self.max_head} bytes")
        return n

    def read_head(self, ex, read_timeout, per_try_timeout=None, since=None):
        """Read the answer's head. With a retry policy's ``per_try_timeout``, the whole head,
        interim heads included, within it, counted from ``since`` (the try's start, for a
        held body's) or now. Without one, each head (the final one, and each interim one
        before it) whole within ``read_timeout`` from the wait for it, as over HTTP/2: bytes
        of a head renew nothing (a head dripped a byte every read_timeout - 1 ms held the
        request and its connection for as long as the upstream liked), a whole interim head
        does (102 Processing keeps a long request alive), the first MAX_INTERIM_HEADS of them
        (HTTP/2's bound; more, as fast, are dropped as ever): within 17 read timeouts in all."""
        wait_first = True       # the request was just sent: nothing can be here yet
        now = time.monotonic()
        if per_try_timeout:
            until, renewed = (since or now) + per_try_timeout, False
        else:
            until, renewed = now + read_timeout, True
        # (while the loop runs no final head is here: head_done says an interim one is whole)
        heads = ex.informational + ex.head_done
        # After 100 Continue or 103 Early Hints (dropped: the client asked for neither) the
        # real answer follows on the same parser, however the bytes are split. An early
        # answer may be here already (read while the body was being sent).
        while not ex.final:
            if not wait_first:
                now = time.monotonic()
                if renewed and ex.informational + ex.head_done != heads:
                    heads = ex.informational + ex.head_done
                    if heads <= MAX_INTERIM_HEADS:
                        until = now + read_timeout
            if until <= now:
                raise head_timeout(ex, per_try_timeout, read_timeout)
            try:
                if not self.recv_feed(ex, until - now, wait_first):
                    if not ex.got_bytes:
                        raise _StaleConnection()
                    raise UpstreamError("upstream closed the connection mid-response")
            except UpstreamTimeout:
                raise head_timeout(ex, per_try_timeout, read_timeout) from None
            wait_first = False
        ex.split_head(self.max_head, self.special_line)

    def response_head(self, req, ex, keep_alive):
        """Build the client's response head; return (bytes, chunked_out, keep_alive, no_body,
        the status the client gets, body filters or None). Framing follows the upstream's
        status; a response plugin may change the status the client sees (rewrite refuses
        changes that would change the framing: to or from 1xx, 204, 304) and may filter the
        body (gzip), which makes the gateway frame it itself."""
        status = client_status = ex.status
        reason = ex.reason
        block = ex.block
        filters = None
        # Draining: this answer is the last. An early answer (the body not all read): the
        # rest of the body is still coming, so the connection cannot carry another request.
        keep_alive = keep_alive and self.runtime.alive and req.complete
        chain = req.route.chain
        no_body = req.method == "HEAD" or status in NO_BODY_STATUSES or status < 200
        if chain.response_steps_of(req):
            head = ResponseHead(status, block=block)
            chain.run_response(req, head)
            if not no_body:
                filters = head.body_filters
            if filters:
                head.remove_header(b"content-length")
            as_read = head.block_as_read()
            if req.trace is not None and self.trace_header is not None and (
                    as_read is None or as_read is not block and
                    self.trace_header in as_read[len(block):].lower()):
                # A plugin's copy (headers', rewrite's: an edit splits the block, which the
                # upstream's copy had already left; or one appended to the block as read,
                # which only the appended lines can hold: append_header) went out before
                # the gateway's own: two trace ids, the first one wrong.
                head.remove_header(self.trace_header)
            block = head.block()
            if head.status != status:
                client_status, reason = head.status, None   # the new status's own phrase
                req.vars["upstream_status"] = status        # for the access log
        chunked_out = False
        if (ex.content_length is not None and not filters) or no_body:
            framing = b""       # Content-Length passes through in the block
        elif req.version == "1.1":
            framing = b"Transfer-Encoding: chunked\r\n"
            chunked_out = True
        else:
            framing = b""
            keep_alive = False      # HTTP/1.0: the end of the body is the end of the stream
        block += response_line(req.trace, self.runtime.trace_response_header)
        head = proxied_head(client_status, reason, block, framing, req.request_id,
                            via_chain(ex.via, self.runtime.via[ex.version]),
                            b"Upgrade" if status == 101 else b"keep-alive" if keep_alive
                            else b"close")
        return head, chunked_out, keep_alive, no_body, client_status, filters

    def relay_response(self, client, req, ex, route, keep_alive):
        head, chunked_out, keep_alive, no_body, status, filters = self.response_head(
            req, ex, keep_alive)
        if no_body:
            client.write_head(status, head)
            # The parser still expects the body a HEAD response announced: drop the connection
            # unless the message really ended. After a 204 or 304 it is never reused: their
            # end is implied, and an upstream that writes a body anyway (a common bug) would
            # have it read as the next client's answer if the bytes come late.
            if ex.keep_alive and ex.complete and req.complete and \
                    ex.status not in NO_BODY_STATUSES:
                return status, 0, keep_alive, True
            if req.method == "HEAD" and ex.keep_alive and req.complete and ex.final and \
                    not ex.chunks and ex.status not in NO_BODY_STATUSES and \
                    (req.upstream or route.upstream).keepalive:
                head_ended(ex)      # kept once it settled (Proxy.settle)
            return status, 0, keep_alive, False
        if ex.complete:                 # the common case: all of it came in one read
            body = ex.chunks
            if filters:
                body = [filtered(filters, body, True)]
            size = sum(map(len, body)) if len(body) != 1 else len(body[0])
            if chunked_out:
                body = encode_chunks(body, True, True)
            client.write_head(status, b"".join([head, *body]))
            return status, size, keep_alive, ex.keep_alive and req.complete
        sent = 0
        # The longest a write of this answer waited for its client to read: an upstream that
        # gave up on the stalled exchange (its own send timeout, nginx's send_timeout) gave
        # up on the client (slow_reader, in the except clauses below).
        held = 0.0
        close_delimited = ex.content_length is None and not ex.chunked
        hold_until = None
        turn = 0
        framing = 0     # bytes read since the last that carried body (chunked framing)
        try:
            for turn in count(1):
                if turn % YIELD_EVERY == 0:
                    gevent.sleep(0)     # a fast download must not hold the worker
                chunks, ex.chunks = ex.chunks, []
                if filters:
                    chunks = [filtered(filters, chunks, ex.complete)]
                size = sum(map(len, chunks))
                body = encode_chunks(chunks, chunked_out, last=ex.complete)
                writing = time.monotonic()
                if client.head_status:
                    client.write(b"".join(body))
                else:
                    client.write_head(status, b"".join([head, *body]))
                held = max(held, time.monotonic() - writing)
                sent += size
                if ex.complete:
                    break
                if client.holds_head:
                    # An HTTP/2 head waits for its body (a failure before it can still be a
                    # whole 502) only http2.head_hold: an event stream's, held for its body,
                    # came with the first event.
                    hold_until = hold_head(client, partial(readable_within, ex.sock),
                                           hold_until)
                if turn == 1:
                    # The answer waits on its upstream (an event stream's may write rarely):
                    # the client's hang-up must not wait for its next piece to be seen.
                    client.watch_hangup(ex)
                got = self.recv_feed(ex, route.read_timeout)
                if ex.chunks or ex.complete:
                    framing = 0
                elif got:
                    # Chunk framing alone: an extension ("1;aaaa...") or trailer fields that
                    # never end reached the client as nothing, and each read renewed the read
                    # timeout: the request was held for ever. Capped as a head is.
                    framing += got
                    if framing > self.max_head:
                        raise UpstreamError(f"upstream sent over {self.max_head} bytes of "
                                            f"chunk framing (chunk extensions, trailer fields) "
                                            f"without body (max_response_head)")
                if not got:
                    if close_delimited:
                        tail = filtered(filters, [], True) if filters else b""
                        if chunked_out:
                            client.write(b"".join(encode_chunks([tail], True, True)))
                        elif tail:
                            client.write(tail)
                        return status, sent + len(tail), keep_alive, False
                    raise UpstreamError("upstream closed the connection mid-body")
        except _StaleConnection:
            client.body_sent = sent
            raise slow_reader(UpstreamError("upstream connection failed mid-body"),
                              held) from None
        except Exception as exc:
            # what went out before the failure (or the client left)
            client.body_sent = sent
            client.raise_if_hung_up()       # its hang-up ended the wait: no upstream failure
            if isinstance(exc, UpstreamError):
                slow_reader(exc, held)
            raise
        except BaseException:
            client.body_sent = sent         # (the worker's drain ran out: GreenletExit)
            raise
        finally:
            if turn:
                client.unwatch_hangup()
        return status, sent, keep_alive, ex.keep_alive and req.complete

    def tunnel(self, client, req, ex):
        """101 Switching Protocols: relay raw bytes both ways until both sides have closed, or
        nothing moves either way for the route's read timeout (nginx's proxy_read_timeout on a
        websocket): an idle tunnel would hold a connection slot for good. Returns as
        ``forward`` does; the bytes each way are the log's ``bytes`` and ``request_bytes``."""
        # RFC 9110 8.6: no Content-Length in a 1xx. What follows the head is the tunnel's: a
        # client or a proxy in front that framed a body by it took the first frames for one.
        ex.block = without_field(ex.block, b"content-length")
        head = self.response_head(req, ex, False)[0]
        first = b"".join(ex.chunks)
        client.write_head(101, head + first)
        flow = TunnelFlow(ex.sock, client.sock, len(first))
        deadlines, idle = self.runtime.deadlines, req.route.read_timeout
        deadlines.arm(flow, idle)
        try:
            self.runtime.tunnel_opened(flow, req)      # a table revoking its route or key ends it
            if req.upgrade_tail:
                try:
                    ex.sock.sendall(req.upgrade_tail)
                except OSError:
                    return 101, flow.down, False, False     # the upstream left at once
                flow.up = len(req.upgrade_tail)
            # A write waits at most send_timeout for the client to read (as any answer's
            # does), read_timeout for the upstream to: the other way moving kept a stalled
            # write, and the upstream that fed it, waiting for good.
            down = gevent.spawn(self.pump, flow, ex.sock, client.sock, idle,
                                self.runtime.send_timeout, True)
            self.pump(flow, client.sock, ex.sock, idle, idle, False)
            down.join()
        finally:
            self.runtime.tunnels.pop(flow, None)
            deadlines.disarm(flow)
            client.body_sent = flow.down        # (a drain's cut logs what went through)
            req.body_size += flow.up
        return 101, flow.down, False, False

    def pump(self, flow, src, dst, idle, send_limit, downward):
        """One way of a tunnel, until ``src`` ends: its FIN is passed on as one (a half-close,
        RFC 9293 3.6) and the other way goes on; a failure either way ends both."""
        # Into the worker's one upstream buffer, copied out before the send can yield (what
        # came is all that is held): a 64 KiB buffer of each pump's own made every idle
        # tunnel 150 KiB, 150 MB a worker at worker_connections = 1000.
        buf, view, deadlines = self.buf, self.view, self.runtime.deadlines
        writing = WriteDeadline(flow.expire)
        try:
            while True:
                n = src.recv_into(buf)
                if not n:
                    break
                data = view[:n].tobytes()
                deadlines.arm(flow, idle)
                deadlines.arm(writing, send_limit)
                dst.sendall(data)
                deadlines.disarm(writing)
                deadlines.arm(flow, idle)
                if downward:
                    flow.down += n
                else:
                    flow.up += n
        except OSError:
            deadlines.disarm(writing)
            flow.end()
            return
        flow.half_close(dst)


class TunnelFlow:
    """A websocket tunnel: the deadline owner of its idleness (both sockets are closed, which
    ends both pumps, a send blocked on a peer that stopped reading included) and the bytes
    it relayed each way, the 101's first frames included."""

    __slots__ = ("socks", "down", "up", "ended")

    def __init__(self, upstream_sock, client_sock, down):
        self.socks = (upstream_sock, client_sock)
        self.down, self.up, self.ended = down, 0, 0

    def half_close(self, dst):
        """One side ended its sending: ``dst`` is told so (FIN). A TLS socket cannot send a
        FIN without its TLS (Python's shutdown drops it): there, as when both sides have
        ended, the tunnel is over."""
        self.ended += 1
        if self.ended == 2 or type(dst) is not PlainSocket:
            self.end()
            return
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            self.end()

    def end(self):
        """Both ways are over: what is still blocked on either socket wakes up to that."""
        for sock in self.socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def expire(self):
        """Idle too long, or a write waited too long: both sockets are closed."""
        for sock in self.socks:
            sock.close()


def client_side(exc):
    """Mark an upstream error as the client's doing (a paused upload the upstream gave up
    on): no passive check, breaker or canary gate counts it. Returns it."""
    exc.client_side = True
    return exc


def slow_reader(exc, held):
    """An answer broken mid-body after one of its writes waited ``held`` seconds for its
    client to read: past CLIENT_PAUSE, the upstream gave up on a stalled exchange (its own
    send timeout, nginx's send_timeout), the client's doing as a paused upload's is.
    Counted, one client that stopped reading a large answer for a few seconds ejected a
    healthy target and opened its breaker for everyone. Returns ``exc``."""
    return client_side(exc) if held >= CLIENT_PAUSE else exc


def read_failed(ex, exc, timeout):
    """What a read from the upstream that raised ``exc`` becomes: a timeout when its deadline
    closed the socket; before any byte of an answer, a reused connection found dead; else a
    broken connection."""
    if ex.timed_out:
        return UpstreamTimeout(f"upstream did not answer within {timeout:g}s")
    if not ex.got_bytes:
        return _StaleConnection()
    return UpstreamError(f"upstream connection failed: {exc}")


def head_timeout(ex, per_try_timeout, read_timeout):
    """The UpstreamTimeout of a wait for an answer's head that ran out (Proxy.read_head)."""
    if per_try_timeout:
        return UpstreamTimeout(f"upstream did not answer within {per_try_timeout:g}s "
                               f"(per_try_timeout)")
    if ex.started and not ex.head_done:
        return UpstreamTimeout(f"upstream did not send its whole head within "
                               f"{read_timeout:g}s (timeouts.read)")
    if ex.interim_heads() >= MAX_INTERIM_HEADS:
        return UpstreamTimeout(f"upstream did not answer within {read_timeout:g}s of its "
                               f"{MAX_INTERIM_HEADS}th interim (1xx) head")
    return UpstreamTimeout(f"upstream did not answer within {read_timeout:g}s")


def send_failed(ex, exc, stale_ok=False, timeout=None, setting="timeouts.read"):
    """What a send to the upstream that raised ``exc`` becomes: a timeout when its deadline
    (``timeout`` seconds, of ``setting``) closed the socket; with ``stale_ok``, a reused
    connection found dead (retried); else a broken connection."""
    if ex.timed_out:
        # The bound and the setting it came from, as head_timeout's: "in time" alone did
        # not tell a held upload's try cut by per_try_timeout from timeouts.read's wait
        return UpstreamTimeout(f"upstream did not accept the request in time (within "
                               f"{timeout:g}s, {setting})" if timeout else
                               "upstream did not accept the request in time")
    if stale_ok:
        return _StaleConnection()
    return UpstreamError(f"upstream connection failed while sending: {exc}")


def upstream_path(req):
    """The request target sent upstream: the path without the route's strip_prefix (never
    empty, always absolute), and the query."""
    path = req.path
    strip = req.route.strip_prefix
    if strip:
        path = strip_path_prefix(path, strip)
        if path is None:        # a rewrite's path the prefix cuts into a dot segment
            raise InternalError(f"strip_prefix {strip!r} cuts {req.path[:200]!r} into a "
                                f"dot segment")
    return path + "?" + req.query if req.query else path


def upstream_host(req, target, upstream):
    """Host (HTTP/1.1) or :authority (HTTP/2) sent upstream: a plugin's choice (rewrite),
    else per the upstream's pass_host (an HTTP/1.0 request without Host gets the target's
    own name)."""
    if req.upstream_host_header is not None:
        return req.upstream_host_header
    if upstream.pass_host == "pass" and req.host_header is not None:
        return req.host_header
    if upstream.pass_host != "rewrite":
        return target.authority.encode("latin-1")
    return upstream.upstream_host.encode("latin-1")


WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def check_websocket_accept(req, ex):
    """A 101 opens a raw tunnel past every plugin: only for a websocket handshake the upstream
    really completed for this client's key (RFC 6455 4.2.2), never for an endpoint that just
    answers 101 (the client's next bytes would reach it as an unchecked request)."""
    if not req.upgrade:
        raise UpstreamError("upstream switched protocols for a request that did not ask to")
    key = req.header_map.get(b"sec-websocket-key")
    if not key:
        # A plugin took it off (headers: request.remove): no 101 can answer for this client
        raise UpstreamError("upstream switched protocols for a websocket request that went "
                            "without its Sec-WebSocket-Key")
    headers = {name.lower(): value.strip() for name, value in ex.header_pairs()}
    expected = base64.b64encode(hashlib.sha1(key.strip() + WEBSOCKET_GUID).digest())
    if headers.get(b"upgrade", b"").lower() != b"websocket" or \
            not hmac.compare_digest(headers.get(b"sec-websocket-accept", b""), expected):
        raise UpstreamError("upstream answered 101 without completing the websocket "
                            "handshake (Upgrade and Sec-WebSocket-Accept)")


def without_field(block, name):
    """A header block (CRLF-ended lines) without the lines of field ``name`` (lower case)."""
    return b"".join(line + b"\r\n" for line in block.split(b"\r\n")[:-1]
                    if line.partition(b":")[0].strip().lower() != name)


def response_chunked(value):
    """A response's Transfer-Encoding: chunked (True) or read to the close (False, RFC 9112
    6.3). Any other coding would reach the client undecoded and unlabelled: a 502."""
    listed = [c for c in (c.strip().lower() for c in value.split(b",")) if c]
    codings = [c for c in listed if c != b"identity"]
    if not codings:
        return False
    # Chunked must come last (RFC 9112 6.1), and as llhttp reads it: a trailing comma or tab
    # ("chunked,") makes it read the body to the close, chunk framing and all.
    if codings == [b"chunked"] and \
            value.rstrip(b" ").rpartition(b",")[2].lstrip(b" \t").lower() == b"chunked":
        return True
    raise UpstreamError(f"upstream used transfer coding {value[:60]!r}, which the gateway "
                        f"does not decode")


def client_protocol(req):
    """The version of the protocol the client spoke, as Via writes it: "1.0", "1.1" or "2"."""
    return "2" if req.var("protocol") == "HTTP/2" else req.version


def proxied_head(status, reason, block, framing, request_id, via, connection):
    """The head of a relayed answer, whichever protocol the upstream spoke: its status and
    header block, the gateway's framing, X-Request-ID, the Via chain and Connection."""
    return b"HTTP/1.1 %d %s\r\n%s%sX-Request-ID: %s\r\nVia: %s\r\nConnection: %s\r\n\r\n" % (
        status, reason or REASONS.get(status, b"Unknown"), block, framing,
        request_id.encode("latin-1"), via, connection)


def trace_headers(req, emit_b3):
    """traceparent/tracestate (and B3) for the next hop, with ``gwfault=`` in tracestate
    when a fault was injected; HTTP/1.1 and HTTP/2 upstreams alike."""
    fault = req.var("fault")
    if fault and not is_tracestate_value(fault):
        fault = None    # a third-party plugin's (chain._check_request refuses it, a 500)
    return req.trace.upstream_headers(emit_b3, fault and f"gwfault={fault}")


def forwarded_values(req, host):
    """X-Forwarded-For, -Proto and -Host for the next hop, HTTP/1.1 and HTTP/2 alike.

    From a trusted proxy (req.peer_ip set) its chain is extended and what it said of the
    scheme and host is kept; from anyone else such headers were forgeries and are replaced:
    the chain starts at the client the gateway saw. A proxy that writes Forwarded instead
    (real_ip_header) named the client there: the chain starts at that client."""
    hmap = req.header_map
    proto = b"https" if req.scheme == "https" else b"http"
    fhost = req.host_header or host
    if req.peer_ip is None:
        return req.client_ip.encode("latin-1"), proto, fhost
    peer = req.peer_ip.encode("latin-1")
    xff = hmap.get(b"x-forwarded-for")
    if xff is None and req.client_ip != req.peer_ip:
        xff = req.client_ip.encode("latin-1")
    return (xff + b", " + peer if xff else peer, hmap.get(b"x-forwarded-proto") or proto,
            hmap.get(b"x-forwarded-host") or fhost)


def hold_head(client, comes_within, hold_until):
    """An HTTP/2 client's held head waits for the body's first byte at most http2.head_hold
    from its first wait, then goes alone; ``comes_within(seconds)`` waits for more of the
    answer. Measured from the first wait, not per read: bytes that carry no body (a
    chunk-size line sent ahead of its data, an empty DATA frame) ended the wait, and the
    head waited for the body after all. -> when the hold ends."""
    now = time.monotonic()
    if hold_until is None:
        hold_until = now + client.head_hold
    if now >= hold_until or not comes_within(hold_until - now):
        client.release_head()
    return hold_until


def filtered(filters, chunks, last):
    """Body pieces through the response's body filters, as one piece."""
    data = b"".join(chunks)
    for transform in filters:
        data = transform(data, last)
    return data


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
