"""The client side of HTTP/1.1: read requests with httptools (llhttp, strict), answer them.

One ``ClientConnection`` per accepted socket runs ``serve()``: read a request head, route it, run
the access phase of its plugin chain, hand it to the proxy, repeat while keep-alive holds.

Rules this file enforces (RFC 9112 and what gunicorn's parser rejects):
- llhttp in strict mode rejects bad header names, CTLs, obs-fold, Content-Length together with
  Transfer-Encoding, duplicate or bad Content-Length, bad chunk sizes. We add: exactly one Host in
  HTTP/1.1 (at most one in 1.0, absolute-form included), only HTTP/1.0 and 1.1, limits on the
  request line, the number and size of header fields and the whole head (trailers included), and
  a path and Host made canonical (core.target) for routing, plugins and the upstream alike.
- A rejected request is answered 400 (or 408/413/431/501) with ``Connection: close`` and never
  forwarded.
- Hop-by-hop headers (RFC 9110 7.6.1, and those named in Connection) are filtered while parsing,
  so the proxy step never sees them.
"""
import base64
import collections
import logging
import re
import socket
import time
from functools import partial

import httptools
from gevent import GreenletExit

from ..core import grpcweb
from ..core.chain import route_claims
from ..core.context import Reply, RequestContext
from ..core.h2request import grpc_status_fields
from ..core.headers import (CLIENT_NAMING, CONSUMER_SET, IDENTITY_SET, MAX_CONTENT_LENGTH,
                            NO_BODY_STATUSES, NOT_FORWARDED, PROXY_SET, REASONS,
                            RESET_CONTENT, STEERING_SET, UNTRUSTED_UNSEEN, X_FORWARDED_MORE)
from ..core.realip import connection_scheme
from ..core.target import normalise_host, normalise_path
from ..core.throttledlog import throttled_log
from ..core.tracing import extract as extract_trace, response_line
from ..net.deadlines import WriteDeadline
from ..net.proxy_protocol import is_proxy_header, proxy_header_refused
from ..net.sockets import (PlainSocket, ReadableWake, Woken, has_unread_input, linger,
                           peer_address, peer_closed, recv_when_readable, send_all,
                           unsent_bytes)
from ..errors import (BadRequest, HeadersTooLarge, HTTPError, InternalError, PayloadTooLarge,
                      RequestTimeout, Unimplemented, WorkerStopped)
from .waiting import handshake_just_ended

log = logging.getLogger("gwserver.http")

MAX_HEAD_BYTES = 64 * 1024     # whole head; nginx allows 4 x 8 KiB by default
SLOW_BODY_GRACE = 5.0          # seconds of waiting for a body before its rate counts
# Requests a connection may have parsed and waiting (the one being served included). llhttp
# parses a whole read at once: 64 KiB of 26-byte pipelined requests were 2,500 queued
# contexts, ~1 KiB each, held while the client read nothing. Past this the parse stops, and
# the connection closes after the last answer it holds (Connection: close; RFC 9112 9.3.2:
# a pipelining client retries what was not answered).
MAX_PIPELINED = 32
# The 400 for an HTTP/2 preface where h2c is off (the client's and the access log's reason)
H2C_OFF = ("HTTP/2 with prior knowledge (h2c) is not served on this listener: speak "
           "HTTP/1.1 here, or HTTP/2 over TLS")
# ... and on a TLS listener, where "or HTTP/2 over TLS" was the client's own attempt: there
# HTTP/2 is spoken once ALPN chose h2 (RFC 9113 3.3), or never where tls.alpn offers no h2
H2_NOT_NEGOTIATED = ("HTTP/2 over TLS is spoken once the handshake's ALPN has chosen h2 "
                     "(RFC 9113 3.3), and this one did not: offer h2 by ALPN, or speak "
                     "HTTP/1.1")
H2_NOT_OFFERED = ("HTTP/2 is not served on this TLS listener (tls.alpn offers no h2): speak "
                  "HTTP/1.1")
# A client's X-Request-ID is kept when it is 1-200 visible ASCII characters but the quote and
# the backslash (a UUID, hex, base64 all are); else, an empty one too, the gateway makes its own.
CLIENT_REQUEST_ID = re.compile(rb'[!#-\[\]-~]{1,200}')



PROTOCOLS = {"1.1": "HTTP/1.1", "1.0": "HTTP/1.0"}      # the metric label of each version
METHOD_NAMES = {name.encode(): name for name in (         # the usual ones, decoded once
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")}
# Single bytes looked for on every header and path by value: `b"_" in name` makes CPython 3.11
# try the needle as an integer first, raise and clear a TypeError, and only then search
# (~240 ns against ~20 ns for `UNDERSCORE in name`).
UNDERSCORE, HASH = ord("_"), ord("#")
# The request headers on_header does more with than pass on: one set lookup for the others.
# None has an underscore, so looking them up first decides the same as the underscore rule
# first (tests/unit/test_request_headers.py).
_LOOKED_AT = NOT_FORWARDED | PROXY_SET


class PipelineFull(Exception):
    """Raised from the parser's callback: a read held more than MAX_PIPELINED requests."""


class ClientGone(Exception):
    """The client closed or reset its connection; there is nobody left to answer."""


def vouch_forwarded(req):
    """A trusted proxy's headers that say how the client reached it, held to what each
    means. Kept as sent, "evil.example/x?", "a@evil" or "javascript" reached the upstream
    (which builds its links and redirects from them) and route conditions, whenever the
    proxy passed a client's copy through unread. X-Forwarded-Host and -Proto (or what its
    Forwarded said of them), which the gateway writes itself: a Host as ``normalise_host``
    takes it, http or https; the last of a list is the nearest proxy's, as the
    X-Forwarded-For walk reads it, and a value that is neither is dropped, so the gateway's
    own view (the client's Host, the connection's scheme) goes upstream, as for an untrusted
    peer. The others pass through, each as PASSED_THROUGH checks it, or not at all."""
    hmap = req.header_map
    # (the gateway writes these two from header_map: edited there)
    for name, vouched in ((b"x-forwarded-proto", _scheme), (b"x-forwarded-host", _host)):
        value = hmap.get(name)
        if value is not None:
            value = vouched(value)
            if value is None:
                del hmap[name]
            else:
                hmap[name] = value
    for name in PASSED_THROUGH.keys() & hmap.keys():     # (edited where they stand)
        spelling, vouched = PASSED_THROUGH[name]
        value = vouched(hmap[name])
        if value is None:
            req.remove_header(name)
        else:
            req.set_header(spelling, value)
    # the gateway's reading of its proxy's words is the request as it came: sent_header gives
    # what no plugin has edited yet, not what the proxy passed before this check
    req.sent_values = None


def _last(value):
    return value.rpartition(b",")[2].strip()


def _scheme(value):
    value = _last(value).lower()
    return value if value == b"http" or value == b"https" else None


def _host(value):
    try:
        name, port = normalise_host(_last(value))
    except BadRequest:
        return None
    return name + b":" + port if port else name


def _hosts(value):
    # a list, each a Host: Apache's mod_proxy appends its name to X-Forwarded-Server
    hosts = [_host(element) for element in value.split(b",")]
    return None if None in hosts else b", ".join(hosts)


def _port(value):
    value = _last(value)
    return value if value.isdigit() and len(value) <= 5 and 0 < int(value) < 65536 else None


def _on_off(value):
    value = _last(value).lower()
    return value if value == b"on" or value == b"off" else None


def _protocol(value):
    # X-Forwarded-Protocol: "ssl" is what gunicorn's secure_scheme_headers look for
    value = _last(value).lower()
    return value if value in (b"http", b"https", b"ssl") else None


def _prefix(value):
    # Each element of a list: frameworks read one as a list (werkzeug's ProxyFix takes the
    # last, Spring joins them), and "/,//evil.example" was "//evil.example" to both.
    return value if all(FORWARDED_PREFIX.fullmatch(element.strip())
                        for element in value.split(b",")) else None


# A trusted proxy's headers that pass through (the gateway writes none of them): name ->
# (its spelling, the check that gives the value to send or None to drop it). Frameworks
# build links from them (Rack's X-Forwarded-Scheme and -Ssl, Spring's -Prefix and -Port,
# IIS ARR's X-Original-Host).
PASSED_THROUGH = {
    b"x-forwarded-port": (b"X-Forwarded-Port", _port),
    b"x-forwarded-prefix": (b"X-Forwarded-Prefix", _prefix),
    b"x-forwarded-scheme": (b"X-Forwarded-Scheme", _scheme),
    b"x-forwarded-ssl": (b"X-Forwarded-Ssl", _on_off),
    b"front-end-https": (b"Front-End-Https", _on_off),
    b"x-forwarded-server": (b"X-Forwarded-Server", _hosts),
    b"x-host": (b"X-Host", _host),
    b"x-original-host": (b"X-Original-Host", _host),
    # Tornado's and the Flask ReverseProxied recipe's spellings, gunicorn's
    b"x-scheme": (b"X-Scheme", _scheme),
    b"x-script-name": (b"X-Script-Name", _prefix),
    b"x-forwarded-protocol": (b"X-Forwarded-Protocol", _protocol),
}
# The trusted proxies' headers vouch_forwarded holds to rules, and those that name the
# client (core.headers.CLIENT_NAMING).
VOUCHED = frozenset([b"x-forwarded-host", b"x-forwarded-proto", *PASSED_THROUGH,
                     *CLIENT_NAMING])
# A path prefix (Spring's ForwardedHeaderFilter, Traefik, werkzeug's ProxyFix x_prefix build
# links from it): "/" and visible characters but a backslash, never "//" first (a link to
# another host; browsers read "/\\" as "//").
FORWARDED_PREFIX = re.compile(rb"(?!//)/[\x21-\x5b\x5d-\x7e]*")


class ClientConnection:
    """Serves one client socket until it closes, errs, or keep-alive ends."""

    def __init__(self, runtime, sock, addr, scheme="http"):
        self.runtime = runtime
        self.settings = runtime.conf.server
        self.sock = sock
        if sock.family != socket.AF_UNIX:
            # A streamed response is several writes; Nagle would hold the last one back for a
            # delayed ACK (40 ms). nginx sets tcp_nodelay on keep-alive connections too.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client_ip = peer_address(addr)
        self.over_tls = scheme == "https"       # the gateway's own TLS listener
        self.scheme = connection_scheme(addr, scheme)
        self.proxy_refused = proxy_header_refused(addr)    # a PROXY header's 400 (feed)
        self.buf = runtime.client_buf       # the worker's one client read buffer
        self.view = runtime.client_view
        self.queue = collections.deque()
        self.parser = httptools.HttpRequestParser(self)
        self.head_size = self.head_fields = 0     # of the head being parsed (exact)
        self.unparsed = 0           # bytes fed since the last complete head (httptools buffers)
        self.upgraded = False
        self.timed_out = False
        self.requests = 0
        self.limits = (self.settings["limit_request_line"], self.settings["limit_request_fields"],
                       self.settings["limit_request_field_size"])
        _, self.fields_limit, self.field_limit = self.limits    # (on_header reads them)
        self.current = None             # the request being parsed: the last in queue
        self.keepalive_enabled = self.settings["keepalive"] > 0
        self.underscores = self.settings["headers_with_underscores"]
        self.path_rules = runtime.services.path_rules
        self.trusted_peer, self.trusted_x_forwarded = \
            runtime.trusted_proxies.trusts_peer(addr, self.client_ip)
        self.identity_peer = runtime.identity_proxies.trusts_peer(addr, self.client_ip)[0]
        self.body_timeout = self.settings["client_body_timeout"]
        self.answer_timeout = False     # a late head or body gets a 408 before the close
        self.timeout_reason = "client sent nothing in time"
        # The current request's body as the client sends it: bytes read, and seconds the
        # gateway waited for them (not for the upstream), since read_body began to wait.
        self.body_read, self.body_waited, self.wait_started = 0, 0.0, 0.0
        self.head_read = 0              # bytes of a slow head read since it began (head_readers)
        self.raw_body_left = 0          # body bytes the parser will not read (check_upgrade);
        self.raw_chunked = None         # -1 and this decoder for a chunked one
        self.last_host = self.last_host_parts = None
        self.writing = WriteDeadline(self.expire)
        # What the current request's answer put on the wire, set as the relays write
        # (write_head, then body_sent): the status of its head (0: none yet) and the body
        # bytes after it. Once a head is out, nothing but its body may follow (no error page,
        # no 100 Continue, no 408), whatever goes wrong; a failure can only cut the answer,
        # and the log says what the client got.
        self.head_status = self.body_sent = 0

    # -- parser callbacks (called inside feed_data) ------------------------------------------

    def on_message_begin(self):
        if len(self.queue) >= MAX_PIPELINED:
            raise PipelineFull()
        self.current = RequestContext(self.client_ip, self.scheme, self.runtime.services,
                                      self)
        self.queue.append(self.current)
        self.head_size = self.head_fields = 0

    def on_url(self, url):
        req = self.current
        req.url += url
        if len(req.url) > self.limits[0]:
            raise HeadersTooLarge(f"request line longer than {self.limits[0]} bytes")

    def on_header(self, name, value):
        """One header field, or one trailer field after the body: both count against the
        limits (fields, field size, the whole head); trailers are never forwarded."""
        size = len(name) + len(value) + 2
        self.head_fields += 1
        self.head_size += size + 2
        if size > self.field_limit or self.head_fields > self.fields_limit or \
                self.head_size > MAX_HEAD_BYTES:
            self.too_large(name, size)
        req = self.current
        if req.head_done:
            return                      # a trailer
        # llhttp keeps white space after a value; RFC 9110 5.5 says it is no part of it, and
        # upstreams strip it: kept, "KEY " would be another value than "KEY" to every plugin
        # (a limit keyed on the header counted each spelling in a bucket of its own).
        value = value.rstrip(b" \t")
        lname = name.lower()
        if lname in _LOOKED_AT:         # (none of these names holds an underscore)
            if lname in NOT_FORWARDED:
                if lname == b"host":
                    req.host_count += 1
                elif lname == b"connection":
                    tokens = [t.strip().lower() for t in value.split(b",")]
                    req.connection_tokens = (req.connection_tokens or []) + tokens
                elif lname in CONSUMER_SET or (lname in UNTRUSTED_UNSEEN and
                                               not self.trusted_x_forwarded):
                    return      # only an auth plugin (or a trusted proxy) says these
            elif lname in IDENTITY_SET:
                # Who the user is: an authenticating proxy's word alone. A balancer trusted
                # for the client's address may pass a client's X-Forwarded-User through.
                if not self.identity_peer:
                    return
                # kept for route conditions and plugins too (header_map, below), as before
                req.headers.append((name, value))
            elif not self.trusted_peer or lname in STEERING_SET:
                # PROXY_SET: only a trusted proxy may say these; STEERING_SET: nobody (another
                # path or method than the one routed and judged)
                return
            elif (lname == b"forwarded") if self.trusted_x_forwarded else \
                    (lname in X_FORWARDED_MORE):
                # A trusted proxy speaks X-Forwarded-* or Forwarded (real_ip_header), and may
                # pass the other through unread: the client's words, which frameworks that
                # read them (Spring, werkzeug's ProxyFix) would take over the proxy's.
                return
            else:
                req.headers.append((name, value))
        elif UNDERSCORE in lname and (self.underscores != "allow" or
                                      lname.replace(b"_", b"-") in _LOOKED_AT):
            # X_User_Id reaches a CGI/WSGI upstream as HTTP_X_USER_ID, the same variable as
            # X-User-Id, past every rule that strips the dashed spelling (nginx and Envoy
            # drop such headers by default too). With "allow", the spellings of the headers
            # the gateway rules on are dropped still: X_Forwarded_User was HTTP_X_FORWARDED_USER
            # from any client, past identity_proxies (X_Consumer_ID, X_Real_IP alike).
            if self.underscores == "reject":
                raise BadRequest(f"header name with an underscore: {name[:40]!r}")
            return
        else:
            req.headers.append((name, value))
        hmap = req.header_map
        if lname in hmap:
            if lname == b"cookie":
                self.join_cookie(req, value)
            else:
                hmap[lname] += b", " + value
                # (a route's headers condition tells copies from a list: refuse_listed)
                req.repeated = (req.repeated or frozenset()) | {lname}
        else:
            hmap[lname] = value

    def join_cookie(self, req, value):
        """A second Cookie field (RFC 6265 5.4: a client sends one) joins the first with "; ",
        as HTTP/2's cookie crumbs are joined (RFC 9113 8.2.3): the upstream gets one field
        either way, and plugins and limits see what it gets. Joined with ", " the value split
        into cookies as "a=1, b=2", and kept as two fields a limit on it was a 400 over
        HTTP/1.1 for what HTTP/2 served. The joined field is held to the field size limit,
        and trimmed (an empty field left "a=1; "), as HTTP/2's is: it is one line upstream."""
        joined = (req.header_map[b"cookie"] + b"; " + value).rstrip(b" ")
        if len(joined) + 8 > self.field_limit:
            self.too_large(b"Cookie", len(joined) + 8)
        req.header_map[b"cookie"] = joined
        req.headers.pop()                       # this copy: on_header just appended it
        req.headers = [(k, joined) if k.lower() == b"cookie" else (k, v)
                       for k, v in req.headers]

    def too_large(self, name, size):
        """Which limit a header field broke (checked all at once above, the common case)."""
        fields_limit, field_limit = self.fields_limit, self.field_limit
        if size > field_limit:
            raise HeadersTooLarge(f"header field {name[:40]!r} longer than {field_limit} bytes")
        if self.head_fields > fields_limit:
            raise HeadersTooLarge(f"more than {fields_limit} header fields (trailers included)")
        raise HeadersTooLarge(f"request head over {MAX_HEAD_BYTES} bytes (trailers included)")

    def on_headers_complete(self):
        req = self.queue[-1]
        parser = self.parser
        self.unparsed = 0
        method = parser.get_method()
        req.method = METHOD_NAMES.get(method) or method.decode("ascii")
        if method == b"CONNECT":
            # llhttp ends a CONNECT at its head and hands the rest over as a tunnel: a body
            # it announced would never be read, and the gateway is no forward proxy.
            raise Unimplemented("CONNECT is not supported")
        req.version = version = parser.get_http_version()
        req.keep_alive = parser.should_keep_alive()
        hmap = req.header_map
        cl = hmap.get(b"content-length")
        if cl is not None:
            req.content_length = int(cl)        # llhttp already rejected a bad one
            if req.content_length > MAX_CONTENT_LENGTH:
                raise BadRequest("Content-Length over 2^63 - 1")
        te = hmap.get(b"transfer-encoding")
        req.chunked = te is not None
        if te is not None:
            if version == "1.0":
                # RFC 9112 6.1: faulty framing (an HTTP/1.0 hop in front would not have
                # decoded it); nginx answers 400 too.
                raise BadRequest("Transfer-Encoding in an HTTP/1.0 request")
            if te.strip().lower() != b"chunked":
                # llhttp frames "gzip, chunked" as chunked; forwarding it as chunked alone
                # would lose the gzip coding (RFC 9112 6.1: 501 for codings we do not do).
                raise Unimplemented(f"transfer coding {te[:40]!r} is not supported")
        if req.connection_tokens:               # RFC 9110 7.6.1: drop what Connection names
            named = set(req.connection_tokens) - {b"close", b"keep-alive", b"upgrade"}
            if self.trusted_peer:
                # Never the header a trusted proxy names the client in: a client's
                # "Connection: Forwarded" passed through by it dropped the proxy's Forwarded,
                # and the client was the proxy, past allow-lists of its internal address (its
                # X-Forwarded-For, which the gateway writes anew, was never dropped so).
                named.discard(self.runtime.trusted_proxies.header)
                # Nor those it names the client in besides (CLIENT_NAMING): an nginx that
                # writes X-Real-IP alone lost it to a client's "Connection: X-Real-IP", and
                # the upstream that reads it took its own peer, the gateway, for the client.
                named.difference_update(CLIENT_NAMING)
                # Nor any other it says as its own words (VOUCHED: X-Forwarded-Prefix, -Port,
                # -Scheme, X-Original-Host ...): a client's "Connection: X-Forwarded-Prefix"
                # dropped its proxy's "/app", and the upstream built links without it.
                named.difference_update(VOUCHED)
            if self.identity_peer:
                # Nor who the user is, as an authenticating proxy says it: a client's
                # "Connection: X-Forwarded-User" served the upstream a request with no user.
                named.difference_update(IDENTITY_SET)
            if named:
                kept = [(k, v) for k, v in req.headers if k.lower() not in named]
                if len(kept) != len(req.headers):
                    # What goes no further is no value of the request to plugins either: a
                    # limit keyed on it counted a bucket of the client's choosing while the
                    # upstream served the request as one without it.
                    for name in named & {k.lower() for k, _ in req.headers}:
                        del hmap[name]
                    req.headers = kept
        if b"upgrade" in hmap:
            # After the drop: a handshake whose Connection names Sec-WebSocket-Key has none
            # left to send (a 101 to it was a KeyError, a 500, where this is a 400).
            self.check_upgrade(req, hmap)
        req.head_done = True
        if version != "1.1" and version != "1.0":
            raise BadRequest(f"unsupported HTTP version {version}")
        self.check_target(req, hmap)

    def check_upgrade(self, req, hmap):
        """WebSocket is the one upgrade we relay: h2c (with HTTP2-Settings) and the rest are
        hop-by-hop and dropped, so the request is served as plain HTTP/1.1.

        llhttp ends an upgrade request at its head: a body is not parsed. An h2c request's
        body (``curl --http2 -d`` or ``-T -`` on an http:// URL) is read raw
        (``take_raw_body``): exactly Content-Length bytes, or decoded by a second parser when
        chunked; the connection ends after it. A websocket request with a body is refused:
        forwarded without it, an upstream told Content-Length: N would take the next N bytes
        on its connection (another client's request) as this body."""
        if not self.parser.should_upgrade():
            return
        if hmap[b"upgrade"].strip().lower() != b"websocket":
            if req.chunked:
                self.raw_chunked = RawChunkedBody(self)
            req.connection_tokens = [t for t in req.connection_tokens or () if t != b"upgrade"]
            req.headers = [(k, v) for k, v in req.headers if k.lower() != b"http2-settings"]
            req.upgrade = req.keep_alive = False     # the parser is past this connection
            self.raw_body_left = -1 if req.chunked else req.content_length or 0
            return
        if req.chunked or req.content_length:
            raise BadRequest("an upgrade request must not carry a body")
        if not hmap.get(b"sec-websocket-key"):
            raise BadRequest("a websocket upgrade needs Sec-WebSocket-Key (RFC 6455 4.1)")
        req.upgrade = True

    def check_target(self, req, hmap):
        """Split the request target; make path and Host canonical (core.target)."""
        url = req.url
        host = hmap.get(b"host")
        if req.host_count > 1:
            raise BadRequest("more than one Host header")
        if host is None and req.version == "1.1":
            raise BadRequest("missing Host header")     # RFC 9112 3.2, absolute-form too
        if url[:1] != b"/":
            lower = url[:8].lower()
            if not (lower.startswith(b"http://") or lower.startswith(b"https://")):
                raise BadRequest("request target must be a path or an absolute http URL")
            start = url.index(b"//") + 2
            end = min((i for i in (url.find(b"/", start), url.find(b"?", start)) if i >= 0),
                      default=len(url))
            host, url = url[start:end], url[end:]          # 3.2.2: the URI's host wins
            if url[:1] != b"/":
                url = b"/" + url
        if host is None:
            req.host, req.host_header = "", None        # HTTP/1.0: the upstream's own name
        elif host == self.last_host:                    # keep-alive clients repeat their Host
            req.host, req.host_header = self.last_host_parts
        else:
            name, port = normalise_host(host)
            req.host, req.host_header = self.last_host_parts = \
                name.decode("latin-1"), name + b":" + port if port else name
            self.last_host = host
        if HASH in url:
            # The fragment is the client's alone (RFC 9110 4.2.4), after the path or the
            # query: kept in the query, "?user=alice#1" was another key to a limit on `user`
            # than the "alice" an upstream that drops it reads; "/a#x?y=1" has no query.
            url = url.partition(b"#")[0]
        path, _, query = url.partition(b"?")
        # Three arguments, not *self.path_rules: a call that unpacks a tuple is one the
        # interpreter does not inline (~900 instructions more a request).
        escaped_slashes, merge_slashes, path_parameters = self.path_rules
        req.path = normalise_path(path, escaped_slashes, merge_slashes,
                                  path_parameters).decode("latin-1")
        req.query = query.decode("latin-1")
        # Set once the target is known, before the walk's 400: read_head hands a gRPC-Web
        # call's 400 to handle() (its gRPC status, by its route) only then. Unset, handle()
        # raised AttributeError there, and the call got a bare close.
        request_id = hmap.get(b"x-request-id")
        if request_id is None or not CLIENT_REQUEST_ID.fullmatch(request_id):
            req.request_id = self.runtime.next_request_id()
        else:
            req.request_id = request_id.decode("latin-1")
        if self.trusted_peer:
            proxies = self.runtime.trusted_proxies
            req.peer_ip = self.client_ip
            named = hmap.get(proxies.header)
            req.client_ip = proxies.client_of(self.client_ip, named)
            if not proxies.speak_x_forwarded:
                self.from_forwarded(req, hmap, named, proxies)
            if not hmap.keys().isdisjoint(VOUCHED):
                vouch_forwarded(req)
                if named is not None or not proxies.speak_x_forwarded:
                    # (a proxy that names no client in X-Forwarded-For, an nginx set to
                    # write X-Real-IP alone, says who it is there: kept as it said)
                    for name in CLIENT_NAMING.keys() & hmap.keys():
                        req.set_header(CLIENT_NAMING[name], req.client_ip.encode("ascii"))

    @staticmethod
    def from_forwarded(req, hmap, named, proxies):
        """Behind a trusted proxy that writes Forwarded: what X-Forwarded-* would say, from
        its Forwarded (a client's X-Forwarded-* were not kept: see on_header). Its X-Real-IP
        and the like are made to say the client Forwarded named, as behind one that writes
        X-Forwarded-For (CLIENT_NAMING, in check_target)."""
        if named:
            proto, host = proxies.forwarded_scheme_and_host(named)
            if proto:
                hmap[b"x-forwarded-proto"] = proto
            if host:
                hmap[b"x-forwarded-host"] = host

    def on_body(self, body):
        self.unparsed = 0
        self.queue[-1].add_body(body)

    def on_message_complete(self):
        self.queue[-1].complete = not self.raw_body_left

    # -- socket I/O -------------------------------------------------------------------------

    def expire(self):
        """Deadline passed (idle keep-alive, slow head or body, stalled send): close, so waits
        end. A client that is in the middle of sending a head or body is told 408 first, as
        far as the socket takes it without waiting (the ticker must never block)."""
        self.timed_out = True
        if self.answer_timeout and not self.head_status:
            try:
                if type(self.sock) is PlainSocket:
                    self.sock._sock.send(self.timeout_answer(), socket.MSG_DONTWAIT)
                elif hasattr(self.sock, "send_now") and not unsent_bytes(self.sock):
                    # TLS too, as one record (HTTP/2's GOAWAY goes so): a stalled gRPC-Web
                    # upload, a browser's, got a bare close over https, with no status
                    self.sock.send_now(self.timeout_answer())
            except (OSError, ValueError):
                pass
        self.sock.close()

    def timeout_answer(self):
        """The 408 expire() sends. A gRPC-Web call whose body stalls gets its gRPC status
        (DEADLINE_EXCEEDED), as answer() gives every other answer of the gateway's: the JSON
        page was read by its client library as frames with no status."""
        req = self.queue[0] if self.queue else None
        mode = grpc_web_call(req) if req is not None and req.head_done else None
        if mode is None:
            return TIMEOUT_ANSWER
        content_type = req.header_map[b"content-type"]
        try:
            reply = error_reply(RequestTimeout("the request was not received in time"),
                                req.request_id)
            reply.with_error_shape(req.request_id)
            if req.route is not None and req.route.chain.reply_steps:
                # grpc_web's and cors' CORS headers; not a third-party hook, which may wait
                # (I/O): this is the ticker, and every deadline of the worker waited with it
                req.route.chain.run_reply(req, reply, shipped_only=True)
            return render_reply(grpc_web_reply(req, reply, mode, content_type), False,
                                req.request_id)
        except Exception:       # (never in the ticker's way: the plain 408 then)
            log.exception("the gRPC-Web answer of a timed-out request")
            return TIMEOUT_ANSWER

    def recv(self, wait_first=False):
        """Read once into the buffer and feed the parser; return bytes read (0 on EOF)."""
        try:
            n = recv_when_readable(self.sock, self.buf) if wait_first else \
                self.sock.recv_into(self.buf)
        except (OSError, ValueError) as exc:
            # ValueError: a TLS socket its deadline closed as its wait ended with data
            # (gevent's read looks again and finds it closed), as Proxy.recv_feed's
            if self.timed_out:
                raise RequestTimeout(self.timeout_reason) from None
            raise ClientGone(str(exc)) from None
        if n and not self.upgraded:
            self.feed(n)
        elif n and self.raw_body_left:
            self.take_raw_body(self.view[:n])
        return n

    def take_raw_body(self, data):
        """Body bytes of an h2c request that the parser left unread (check_upgrade): up to
        its Content-Length, or to its last chunk; what follows is dropped, as the connection
        ends after it."""
        if self.raw_chunked is not None:
            if self.raw_chunked.feed(data):
                self.raw_body_left = 0
                self.queue[-1].complete = True
            return
        piece = bytes(data[:self.raw_body_left])
        self.raw_body_left -= len(piece)
        if piece:
            self.on_body(piece)
        if not self.raw_body_left:
            self.queue[-1].complete = True

    def feed(self, n):
        self.count_unparsed(n)
        try:
            self.parser.feed_data(self.view[:n])
        except httptools.HttpParserUpgrade as exc:
            self.upgraded = True
            if self.raw_body_left:
                self.take_raw_body(self.view[exc.args[0]:n])
            else:
                self.queue[-1].upgrade_tail = bytes(self.view[exc.args[0]:n])
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, HTTPError):
                raise cause from None
            if isinstance(cause, PipelineFull):
                # Every request queued is whole (another began after it); the last one's
                # answer ends the connection, and the rest of the read is never parsed.
                self.queue[-1].keep_alive = False
                return
            raise BadRequest(f"malformed request: {exc}") from None
        except httptools.HttpParserError as exc:
            last = self.queue[-1] if self.queue else None
            if last is not None and last.complete and not last.keep_alive:
                # Bytes after a request that closes the connection: llhttp refuses them, but
                # that request stands (RFC 9112 9.6: the client must not send more); the
                # rest is never read as a request.
                return
            if "PRI/Upgrade" in str(exc):
                # llhttp's words for the HTTP/2 preface ("Pause on PRI/Upgrade") named
                # nothing an operator could look up: curl --http2-prior-knowledge on a port
                # without h2c (docs/http2.md)
                raise BadRequest(self.h2_preface_refused()) from None
            if not self.requests and self.unparsed == n and \
                    not (self.queue and self.queue[0].complete) and \
                    is_proxy_header(bytes(self.view[:12])):
                # The connection's first bytes (nothing fed before this read): a later read
                # is a request's, whatever it starts with (a head in two reads, the second
                # "PROXY ...", was named a balancer's header, and the setting with it).
                # Told apart here, on the error, not by a flag set on every read.
                raise BadRequest(self.proxy_refused) from None
            raise BadRequest(f"malformed request: {exc}") from None

    def count_unparsed(self, n):
        """httptools holds a header (or a trailer) until it is complete: bound what it may
        hold, from the first read of the connection on (the callbacks count the exact head).
        ``unparsed`` is what was fed since the last head or body bytes came out of it."""
        self.unparsed += n
        if self.unparsed > MAX_HEAD_BYTES + self.limits[0]:
            if not (self.queue and self.queue[-1].head_done):
                raise HeadersTooLarge("request head too large")
            # After the head, only chunk framing and trailers come out as nothing: one
            # unfinished trailer line would otherwise grow without end inside feed_data.
            raise HeadersTooLarge("request trailers too large")

    def write(self, data):
        """Send all of ``data``; a stalled client is cut off by the send deadline."""
        try:
            send_all(self.sock, data, self.runtime.deadlines, self.writing,
                     self.runtime.send_timeout)
        except OSError as exc:
            raise ClientGone(str(exc)) from None

    def write_head(self, status, data):
        """Write an answer's head, with what of its body is ready: from here on a failure can
        only cut the answer (handle() writes no error page after it)."""
        self.head_status = status
        self.write(data)

    def read_body(self, watch=None, timeout=None):
        """Read more of the current request's body within client_body_timeout (or what is
        left of it: ``timeout``); raise RequestTimeout when it stalls, ClientGone on EOF
        mid-body. ``watch``: a socket (the upstream's) whose turning readable ends the wait:
        True then, nothing read."""
        wake = None if watch is None else ReadableWake(watch)   # (the recv is its one wait)
        runtime = self.runtime
        runtime.deadlines.arm(self, self.body_timeout if timeout is None else timeout)
        self.answer_timeout = True
        # While it waits, the connection may be closed for a new client if it is the slowest
        # (server.min_body_rate): a body trickled in a byte at a time never trips the
        # timeout between reads, and enough of them held every slot.
        runtime.body_readers[self] = None
        self.wait_started = started = time.monotonic()
        n = 0
        try:
            n = self.recv()
        except Woken:
            return True
        except HTTPError as exc:
            # The body came whole and bytes after it broke: this request is served, then the
            # 400 (read_head). Raised here, the whole request was answered the 400 with
            # keep-alive, and the next one, whose own body or head broke, was served.
            if not self.defer_malformed(exc):
                raise
            return False
        finally:
            if wake is not None:
                wake.stop()
            runtime.deadlines.disarm(self)
            runtime.body_readers.pop(self, None)   # (or closed as the slowest)
            self.answer_timeout = False
            self.body_waited += time.monotonic() - started
            self.body_read += n
        if n == 0:
            raise ClientGone("client closed mid-body")
        return False

    def may_close_idle(self):
        """Runtime.close_oldest_idle: an idle HTTP/1.1 client sends nothing, so what is still
        queued for it goes out before the FIN. Not before its first request while its TLS
        handshake has just ended: that request is on its way; nor once it has come, unread
        (its reader has not run since): the close would reset a client that did no wrong,
        where a keep-alive one's client may send again (RFC 9112 9.3.1)."""
        return bool(self.requests) or not (handshake_just_ended(self.sock) or
                                           has_unread_input(self.sock))

    def reclaim(self):
        """Runtime.close_oldest_idle: this idle connection's slot is wanted now."""
        self.expire()

    def body_rate(self, now):
        """Bytes a second of the current body while the gateway waited for it (read_body),
        or None before 5 s of waiting (a slow start is not yet a slow client)."""
        waited = self.body_waited + (now - self.wait_started)
        return self.body_read / waited if waited >= SLOW_BODY_GRACE else None

    def buffer_body(self, req, max_body_size):
        """Read a small body whole before the upstream is contacted (nginx's
        proxy_request_buffering, up to request_buffer_size): a slow client then holds a
        gateway buffer, not an upstream connection, and the body can be replayed."""
        limit = self.settings["request_buffer_size"]
        if max_body_size and req.content_length is not None and \
                req.content_length > max_body_size:
            # before any 100 Continue: a limit only the access phase set (grpc_web's) was
            # answered 100 Continue and read first (the route's is refused in handle)
            raise PayloadTooLarge(f"body is over the route's limit of {max_body_size} bytes")
        if req.content_length is not None and req.content_length > limit:
            return
        self.send_continue(req)
        while True:
            # measured before a read too: what came with the head may be over a limit only
            # the access phase set (grpc_web's), and the client may send nothing more
            if max_body_size and req.body_size > max_body_size:
                raise PayloadTooLarge(f"body is over the route's limit of {max_body_size} bytes")
            if req.complete or req.body_size > limit:
                return
            self.read_body()

    def send_continue(self, req):
        """Answer ``Expect: 100-continue`` once, when the body is first wanted."""
        if req.version == "1.1" and not req.complete and not self.head_status and \
                req.header_map.pop(b"expect", b"").lower() == b"100-continue":
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    # -- the request loop ----------------------------------------------------------------------

    def serve(self, counted=False):
        """Serve the connection's requests, then close it. ``counted``: its slot was taken
        already (client.waiting), and is given back here all the same."""
        if not counted:
            self.runtime.client_opened()
        try:
            # Not `while runtime.alive`: a connection whose last answer promised keep-alive must
            # read one more request (answered with Connection: close) or reach its keep-alive
            # timeout; closing it now would reset a client that is sending at this instant.
            while True:
                req = self.read_head()
                if req is None:
                    return
                if not self.handle(req):
                    return
                self.queue.popleft()
                if not self.queue:
                    # An idle connection holds no request (its headers, a body a plugin
                    # answered): neither its parser's nor this loop's (read_head waits).
                    self.current = req = None
        except ClientGone:
            pass
        finally:
            if self.malformed_after is not None:
                # An answer before the bad bytes ended the connection (a 5xx, a draining
                # worker, the client gone): they get no 400, but their access line all the same
                self.runtime.log_rejected(*self.take_malformed())
            self.runtime.deadlines.disarm(self)
            try:
                self.close()        # may linger: the connection holds its slot until closed
            finally:
                self.runtime.client_closed()

    def close(self):
        """Close; after an early answer, drain what the client is still sending first.

        Closing a socket with unread input makes the kernel send RST, and the client may then
        lose the response we just wrote (a 413 in the middle of an upload, say). Like nginx's
        lingering_close: shut our side, read and discard for a short while, then close.
        """
        if not self.timed_out and (self.queue and not self.queue[0].complete or
                                   has_unread_input(self.sock)):
            # an answer before the whole body, or bytes after the last request we serve
            # (pipelined after a Connection: close, or after an h2c upgrade's body)
            linger(self.sock, self.buf, self.runtime.deadlines, self)
        self.sock.close()

    def read_head(self):
        """Return the next request whose head is complete, or None when the client is done.

        While the connection waits for a new request with nothing received it is idle: when
        the worker runs out of connection slots, the oldest idle one is closed first (nginx
        reuses idle keep-alive connections the same way), so idle clients cannot lock others
        out. Once a head has begun it has header_timeout to complete, or gets a 408.
        """
        if self.malformed_after is not None and not (self.queue and self.queue[0].head_done):
            # The requests that came whole before the malformed bytes are served: now their 400
            client, exc = self.take_malformed()
            self.reject(exc, client)
            return None
        deadlines, server = self.runtime.deadlines, self.settings
        idle = self.runtime.idle_clients
        waiting_first_byte, slow = True, False
        try:
            while not (self.queue and self.queue[0].head_done):
                if waiting_first_byte and not self.queue:
                    deadlines.arm(self, server["keepalive"] if self.requests
                                  else server["header_timeout"])
                    idle[self] = None
                elif waiting_first_byte:    # a pipelined head begun in an earlier read
                    deadlines.arm(self, server["header_timeout"])
                    waiting_first_byte, slow = False, True
                    self.runtime.head_readers[self] = time.monotonic()
                    self.head_read = 0
                try:
                    # After an answer on a keep-alive connection the next request cannot be
                    # here yet (pipelined ones are already parsed): park before reading.
                    n = self.recv(wait_first=self.requests > 0 and not self.queue)
                except RequestTimeout:
                    if not self.queue:      # an idle keep-alive connection ran out: not an error
                        return None
                    raise
                finally:
                    idle.pop(self, None)
                if n == 0:
                    return None
                if not waiting_first_byte:      # a slow head's: its rate (close_slowest_head)
                    self.head_read += n
                elif self.queue and self.queue[0].head_done:
                    break       # the head came whole with its first bytes: no wait to bound
                elif self.queue:
                    deadlines.arm(self, server["header_timeout"])
                    waiting_first_byte = False
                    self.answer_timeout = True
                    self.runtime.head_readers[self] = time.monotonic()
                    self.head_read, slow = n, True
        except HTTPError as exc:
            if self.defer_malformed(exc):
                return self.queue[0]
            req = self.queue[0] if self.queue else None
            if not self.timed_out and req is not None and req.head_done and \
                    req.request_id is not None and not req.complete and grpc_web_call(req):
                # A gRPC-Web call's body malformed in the read that brought its head (a
                # bad chunk, trailers too large): answered by handle(), as when it comes in
                # a later read, with its gRPC status; reject() wrote the JSON page.
                self.body_error = exc
                return req
            self.reject(exc)
            return None
        finally:
            deadlines.disarm(self)
            self.answer_timeout = False
            if slow:
                self.runtime.head_readers.pop(self, None)   # (or closed as the slowest)
        return self.queue[0]

    def h2_preface_refused(self):
        """Why an HTTP/2 preface gets a 400 here (feed)."""
        if not self.over_tls:
            return H2C_OFF
        return H2_NOT_NEGOTIATED if "h2" in self.runtime.conf.tls["alpn"] else H2_NOT_OFFERED

    def defer_malformed(self, exc):
        """Malformed bytes after whole requests (pipelined in their read): those are served
        first, then the 400, as nginx orders them (read_head). Answered at once, the 400 was
        the connection's one answer, and the requests before it were lost unlogged. What the
        bytes began (a head, a body that broke) is no request. False: the error is the
        first request's own."""
        if self.timed_out or not (self.queue and self.queue[0].complete):
            return False
        client = self.rejected_client()
        while not self.queue[-1].complete:
            self.queue.pop()
        self.malformed_after = (client, exc)
        return True

    def take_malformed(self):
        """(client, error) that defer_malformed kept, taken: answered or logged once."""
        deferred, self.malformed_after = self.malformed_after, None
        return deferred

    def reject(self, exc, client=None):
        """Answer a request we could not even parse, then the connection closes."""
        self.runtime.log_rejected(client or self.rejected_client(), exc)
        if self.timed_out:
            return                          # closed already (expire() sent the 408)
        try:
            self.write(render_error(exc, keep_alive=False, request_id=None))
        except ClientGone:
            pass

    def rejected_client(self):
        """Who a refused request's access line names: the client a trusted proxy named once
        the request's head was read (a bad chunk in the packet of the head), else the peer.
        The peer alone named the proxy: one client's malformed requests were the balancer's
        to whoever reads the log (fail2ban on 400s banned it, every client with it)."""
        req = self.current
        return self.client_ip if req is None else req.client_ip

    def handle(self, req):
        """Serve one request; return True if the connection may carry another."""
        runtime = self.runtime
        self.requests += 1
        self.body_read, self.body_waited = 0, 0.0
        req.started = start = time.monotonic()
        status, sent = 0, 0
        runtime.in_flight += 1
        reader = runtime.table_reader
        if reader is not None and reader.due(start):    # etcd mode only
            runtime.refresh_table()
        # and runtime.alive, when the answer is written. After an upgrade request the parser
        # reads no more of this connection: an answer that is not a 101 ends it.
        keep_alive = req.keep_alive and self.keepalive_enabled and not self.upgraded
        if runtime.tracing:
            req.trace = extract_trace(req.header_map, runtime.trace_ids)
        try:
            router = runtime.router
            req.route, req.params = route, _ = router.match(
                req.method, req.host, req.path, req.header_map,
                partial(route_claims, req) if router.claim_routes else None, req.repeated)
            if self.body_error is not None:         # (read_head: a gRPC-Web call's)
                exc, self.body_error = self.body_error, None
                raise exc
            limit = route.max_body_size
            if limit and (size := max(req.content_length or 0, req.body_size)) > limit:
                # body_size: a chunked body that came whole with its head is never read
                # again (buffer_body, the streamed send), so this is its one check
                raise PayloadTooLarge(f"body of {size} bytes or more is over the route's "
                                      f"limit of {limit}")
            chain = route.chain
            reply = chain.run_access(req) if chain.access_steps else None
            if reply is None and not req.complete:
                # a gRPC-Web call's own limit too: else a chunked body past it and within
                # request_buffer_size had its 413 only once the client ended the body
                self.buffer_body(req, grpcweb.body_limit(limit, req.var("grpc_web")))
            if reply is None:
                if limit and req.body_size > limit:
                    # It came while a plugin waited (an HTTP/2 connection reads its streams'
                    # bodies in its own greenlet), whole: nothing else would measure it.
                    raise PayloadTooLarge(f"body is over the route's limit of {limit} bytes")
                status, sent, keep_alive = runtime.proxy.forward(self, req, keep_alive)
            else:
                keep_alive = keep_alive and req.complete and runtime.alive
                status, sent = self.answer(req, reply, keep_alive)
        except ClientGone:
            # It left mid-body: logged with what it got (HTTP/2: nothing, if the head was
            # still held)
            if self.head_status and not self.take_back_head():
                status, sent = self.head_status, self.body_sent
            raise
        except GreenletExit:
            # The worker stopping killed it (its drain ran out, or a SIGQUIT): logged as the
            # client got it and why, not as a status 0 of 0 bytes, or not at all
            req.error = WorkerStopped(runtime.cut_because or "the worker stopped")
            if self.head_status and not self.take_back_head():
                req.cut = True
                status, sent = self.head_status, self.body_sent
            raise
        except Exception as exc:
            if not isinstance(exc, HTTPError):
                route_id = req.route.id if req.route else None
                throttled_log.log(log, logging.ERROR, ("unhandled", route_id),
                                  "route %s: request %s: unhandled error", route_id,
                                  req.request_id, exc_info=exc)
                exc = InternalError("internal error; see the gateway's log")
            req.error = exc
            req.cut = self.head_status != 0 and not self.take_back_head()
            status = exc.status
            if exc.status >= 500 and req.route is not None:
                reason = exc.reason
                if req.target and req.target not in reason:
                    # "did not answer within 1s": of which target? One slow target of three
                    # is found by this, as a refused one is by its "cannot connect to".
                    reason = f"{reason} (target {req.target})"
                throttled_log.log(log, logging.WARNING, ("answer", req.route.id, exc.error),
                                  "route %s: request %s: %s: %s", req.route.id,
                                  req.request_id, exc.error, reason)
            keep_alive = keep_alive and req.complete and exc.status < 500 and \
                not self.timed_out and runtime.alive
            if req.cut:
                # The head is out: all we can do is cut the body. The log and metrics say
                # what the client got (that status, those bytes); `error` says why it ended.
                status, sent = self.head_status, self.body_sent
                keep_alive = False
            elif not self.timed_out:
                status, sent = self.answer(req, error_reply(exc, req.request_id), keep_alive)
        finally:
            runtime.in_flight -= 1
            upstream = req.target       # the target last tried, answered or failed
            killed = None
            if req.route is not None and req.route.chain.finish_steps_of(req):
                try:
                    req.route.chain.run_finish(req, status)
                except GreenletExit as exc:     # it landed in a plugin's finish
                    killed = exc                # ends the greenlet once the request is logged
            if runtime.access.enabled:
                runtime.access.request(req, status, sent, upstream, start)
            if runtime.span_exporter is not None and req.trace is not None:
                runtime.export_span(req, status, upstream, start)
            if runtime.metrics is not None:
                runtime.metrics.observe(req.route.id if req.route else None, req.method, status,
                                       time.monotonic() - start, req.upstream_seconds,
                                       req.var("protocol") or PROTOCOLS.get(req.version,
                                                                            "HTTP/1.1"))
                consumer = req.consumer
                if consumer is not None:
                    runtime.metrics.count_consumer(consumer.id, status)
                error = req.error
                if req.cut:
                    runtime.metrics.count_answer(req.route.id if req.route else None,
                                                 error.status, "cut")
                elif error is not None or req.ended_by is not None:
                    runtime.metrics.count_answer(req.route.id if req.route else None, status,
                                                 req.ended_by or "gateway")
            if killed is not None:
                raise killed
        # Cleared after the answer, not before the next: the next head's wait (read_head)
        # may answer 408 again.
        self.head_status = self.body_sent = 0
        if self.upgraded:
            return False
        # At max_requests the worker starts draining. This answer went out promising
        # keep-alive: the connection gets one more request (answered Connection: close) or its
        # keep-alive timeout, as serve() says, rather than a close under the client's feet.
        runtime.request_done()
        return keep_alive

    hung_up = False         # Runtime.find_hangups saw this client end its connection
    body_error = None       # an error of the body read with its head (read_head), for handle
    malformed_after = None  # (client, error) of bytes after whole requests (defer_malformed)

    def watch_hangup(self, waiting):
        """A streamed answer is about to wait on its upstream: should the client hang up
        meanwhile, the worker's tick calls ``waiting.expire()`` (which ends that wait) and
        the relay then raises ClientGone (``raise_if_hung_up``), so its upstream is let go.
        True: the relay must call ``unwatch_hangup`` when it ends."""
        self.runtime.streaming[self] = waiting
        return True

    def unwatch_hangup(self):
        self.runtime.streaming.pop(self, None)

    def raise_if_hung_up(self):
        """In a relay's failure: ClientGone if it came from the client's hang-up (not the
        upstream's failure, for no passive check or breaker to count)."""
        if self.hung_up:
            raise ClientGone("client closed its connection while the answer streamed")

    def raise_if_gone(self):
        """Before another try: ClientGone if the client has ended its connection (its FIN
        or reset, as find_hangups sees it): nothing watches a retry's backoff, and the try
        went to the upstream for nobody. One getsockopt, on retries only."""
        if self.hung_up or peer_closed(self.sock):
            self.hung_up = True
            raise ClientGone("client closed its connection before a retry")

    def take_back_head(self):
        """After a failure that followed the head: can the head be taken back, because the
        client has none of it yet? HTTP/1.1 writes a head as it is given: never."""
        return False

    speaks_h2 = False       # (H2Stream: a native gRPC call can come only over HTTP/2)
    holds_head = False      # HTTP/2 holds a head for its body's first byte (h2server),
    head_hold = 0.0         # ... for at most this many seconds (release_head)

    def answer(self, req, reply, keep_alive):
        """Write a reply the gateway made itself (a plugin's, or an error), after the route's
        plugins with a ``reply`` hook saw its head; return (status, body bytes)."""
        reply.with_error_shape(req.request_id)
        route = req.route
        if route is not None and route.chain.reply_steps:
            route.chain.run_reply(req, reply)
        return self.send_reply(req, reply, keep_alive)

    def send_reply(self, req, reply, keep_alive):
        """answer()'s writing half: ``reply`` as the hooks left it; -> (status, body bytes)."""
        status = reply.status
        if status >= 400:
            # A gRPC-Web client library reads a gRPC status, not an error page (as Envoy
            # answers gRPC calls locally); logged with the HTTP status, as native gRPC is.
            mode = grpc_web_call(req)
            if mode is not None:
                reply = grpc_web_reply(req, reply, mode, req.header_map[b"content-type"])
        head_only = req.method == "HEAD" or reply.status in NO_BODY_STATUSES or \
            reply.status == RESET_CONTENT      # (render_reply sends it none)
        trace_line = response_line(req.trace, self.runtime.trace_response_header)
        if trace_line:
            # One trace id, the gateway's: a plugin's Reply (or a reply hook) naming the
            # header went out beside it, two trace ids, the first one wrong.
            trace_name = self.runtime.trace_response_header.lower()
            reply.headers = [(name, value) for name, value in reply.headers if (
                name.encode("latin-1") if isinstance(name, str) else name).lower() != trace_name]
        self.write(render_reply(reply, keep_alive, req.request_id, head_only, trace_line))
        return status, 0 if head_only else len(reply.body)


class RawChunkedBody:
    """Decodes the chunked body of an h2c upgrade request, which the connection's parser
    leaves unread: a second llhttp parser, told the head it needs, decodes it as strictly as
    the first would have; trailer bytes count against the head limits, as on_header counts
    them."""

    HEAD = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"

    def __init__(self, connection):
        self.connection = connection
        self.done = self.head_fed = False
        self.parser = httptools.HttpRequestParser(self)
        self.parser.feed_data(self.HEAD)
        self.head_fed = True

    def on_header(self, name, value):
        if self.head_fed and not self.done:
            self.connection.on_header(name, value)      # a trailer: counted, not kept

    def on_body(self, body):
        if not self.done:
            self.connection.on_body(body)

    def on_message_complete(self):
        self.done = True

    def feed(self, data):
        """Decode ``data``; True once the last chunk is in (what follows it is dropped)."""
        self.connection.count_unparsed(len(data))
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, HTTPError):
                raise exc.__context__ from None
            raise BadRequest(f"malformed chunked body: {exc}") from None
        except httptools.HttpParserError as exc:
            if not self.done:           # bytes after the body are not read as anything
                raise BadRequest(f"malformed chunked body: {exc}") from None
        return self.done


def render_reply(reply, keep_alive, request_id, head_only=False, extra=b""):
    """Bytes of a reply the gateway writes itself (``extra``: whole header lines to add).
    A 204 or 304 goes without its body and without Content-Length (RFC 9110 8.6), a 205 with
    an empty one (Content-Length: 0), whatever body the plugin gave it."""
    body = b"" if reply.status == RESET_CONTENT else reply.body
    lines = [b"HTTP/1.1 %d %s" % (reply.status, REASONS.get(reply.status, b"Unknown"))]
    for name, value in reply.headers:
        lines.append(b"%s: %s" % (name.encode("latin-1") if isinstance(name, str) else name,
                                  value.encode("latin-1") if isinstance(value, str) else value))
    if request_id:
        lines.append(b"X-Request-ID: " + request_id.encode("latin-1"))
    bodiless = reply.status in NO_BODY_STATUSES
    if not bodiless:
        lines.append(b"Content-Length: %d" % len(body))
    lines.append(b"Connection: keep-alive" if keep_alive else b"Connection: close")
    head = b"\r\n".join(lines) + b"\r\n" + extra + b"\r\n"
    return head if head_only or bodiless else head + body


def error_reply(exc, request_id):
    """The one JSON shape of every error the gateway answers: error, status, message and
    request_id (when the request got that far)."""
    payload = {"error": exc.error, "status": exc.status, "message": exc.message}
    if request_id:
        payload["request_id"] = request_id
    return Reply.json(exc.status, payload, exc.headers)


def grpc_web_call(req):
    """The gRPC-Web mode of ``req`` if it is a gRPC-Web call, else None. A call is a POST: a
    GET's 429 (404, 503) as a 200 was stored by a cache in front, which keeps a GET's 200
    and no 429, and served to every client."""
    if req.method != "POST":
        return None
    content_type = req.header_map.get(b"content-type")
    return grpcweb.mode_of(content_type) if content_type else None


def grpc_web_reply(req, reply, mode, content_type):
    """The gateway's own ``reply`` (a 401, a 429, a 502, no route) to a gRPC-Web call, as a
    trailers-only gRPC-Web answer: 200, no message, the trailer frame with the gRPC status
    its HTTP status maps to (as for native gRPC calls) and its message; its other headers
    (the CORS ones a reply hook added, Retry-After) kept."""
    body = grpcweb.trailer_frame(grpc_status_fields(reply, req.error,
                                                    req.var("grpc_deadline_hit")))
    headers = [(name, value) for name, value in reply.headers
               if (name.lower() if isinstance(name, str) else name.decode("latin-1").lower())
               not in ("content-type", "content-length")]
    headers.append(("Content-Type", grpcweb.client_content_type(
        mode, content_type.decode("latin-1"), "")))
    return Reply(200, base64.b64encode(body) if mode == "text" else body, headers)


def render_error(exc, keep_alive, request_id, head_only=False):
    return render_reply(error_reply(exc, request_id), keep_alive, request_id, head_only)



TIMEOUT_ANSWER = render_error(RequestTimeout("the request was not received in time"),
                              keep_alive=False, request_id=None)
