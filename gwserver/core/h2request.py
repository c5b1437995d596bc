"""An HTTP/2 request head checked as RFC 9113 says, before it becomes a RequestContext; and the
gRPC answers the gateway makes itself.

Rules (RFC 9113 8.2, 8.3; what is not here is left to the HTTP/1.1 rules every request goes
through: limits, underscores, forwarded headers, path and Host made canonical):

- Field names are lower case tokens; values hold no NUL, CR or LF and no leading or trailing
  space or tab (8.2.1).
- Pseudo-header fields come first, each once, and only ``:method``, ``:scheme``, ``:path`` and
  ``:authority`` (``:protocol``, extended CONNECT, is not offered: no SETTINGS for it).
- ``:method``, ``:scheme`` and ``:path`` are present (CONNECT, which has none of the last two,
  is not served); ``:path`` starts with ``/`` (or is ``*`` for OPTIONS); ``:scheme`` is a
  URI scheme (RFC 3986 3.1; nginx and nghttp2 refuse any other value as malformed too), and
  one other than http or https is a 400, as an absolute-form target of another scheme is on
  HTTP/1.1. Whatever it says, the request's scheme is the connection's (X-Forwarded-Proto,
  redirects, plugins), as nginx's $scheme is: a client's word is not what it connected by.
- Connection-specific fields (``Connection``, ``Keep-Alive``, ``Proxy-Connection``,
  ``Transfer-Encoding``, ``Upgrade``) and a ``TE`` other than ``trailers`` make it malformed.
- ``Host`` and ``:authority``, when both are sent, name the same thing (8.3.1).
- Trailers hold no pseudo-header field and keep the rules of the head's fields (8.1).

A malformed request is a stream error of type PROTOCOL_ERROR (8.1.1): ``Malformed``.
Pure: no sockets, no h2 types.
"""
import re

from ..errors import BadRequest, UpstreamTimeout
from .headers import TOKEN_LOWER_CHARS, VALUE_CHARS

CONNECTION_SPECIFIC = frozenset([b"connection", b"keep-alive", b"proxy-connection",
                                 b"transfer-encoding", b"upgrade"])
REQUEST_PSEUDO = frozenset([b":method", b":scheme", b":path", b":authority"])
# One C-level search per field: a name byte that is not a lower-case token character, a value
# with a control character but tab (RFC 9113 8.2.1 requires NUL, CR and LF; the rest are what
# llhttp refuses on HTTP/1.1, so a request is not served on one protocol and refused on the
# other) or white space at an end.
_BAD_NAME = re.compile(f"[^{TOKEN_LOWER_CHARS}]".encode()).search
_TOKEN = re.compile(f"[{TOKEN_LOWER_CHARS}A-Z]+".encode()).fullmatch
_BAD_VALUE = re.compile(f"[^{VALUE_CHARS}]|\\A[ \t]|[ \t]\\Z".encode("latin-1")).search
# What llhttp parses on HTTP/1.1 (case-sensitive; its RTSP and PRI methods aside): other
# methods and path bytes are a 400 there, so they are here (tests/unit/test_h2request.py holds
# the two to the same answers). A raw byte over 0x7f in a path would skip the UTF-8 checks of
# core.target (they look at escapes) and reach an upstream that may decode it leniently.
HTTP_METHODS = frozenset(
    b"DELETE GET HEAD POST PUT CONNECT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND PROPPATCH "
    b"SEARCH UNLOCK BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY "
    b"SUBSCRIBE UNSUBSCRIBE PATCH PURGE MKCALENDAR LINK UNLINK SOURCE QUERY".split())
_BAD_PATH_BYTE = re.compile(b"[^\x21-\x7e]").search
_URI_SCHEME = re.compile(rb"[A-Za-z][A-Za-z0-9+.-]*").fullmatch     # RFC 3986 3.1
WEB_SCHEMES = frozenset([b"http", b"https"])


class Malformed(Exception):
    """The request breaks RFC 9113 8.x: reset the stream with PROTOCOL_ERROR."""


def split_request(headers):
    """``headers``: the decoded (name, value) bytes pairs of a HEADERS block ->
    (pseudo dict, regular list). Raises Malformed."""
    pseudo, regular = {}, []
    for name, value in headers:
        if name[:1] == b":":
            if regular:
                raise Malformed(f"pseudo-header {name!r} after a regular field")
            if name not in REQUEST_PSEUDO:
                raise Malformed(f"unknown request pseudo-header {name!r}")
            if name in pseudo:
                raise Malformed(f"pseudo-header {name!r} sent twice")
            pseudo[name] = value
            continue
        if not name or _BAD_NAME(name):
            raise Malformed(f"invalid field name {name[:40]!r} (RFC 9113 8.2.1)")
        if name in CONNECTION_SPECIFIC:
            raise Malformed(f"connection-specific field {name.decode('latin-1')!r}")
        if name == b"te" and value.strip().lower() != b"trailers":
            raise Malformed("TE other than \"trailers\"")
        regular.append((name, value))
    for name, value in headers:
        if _BAD_VALUE(value):
            raise Malformed(f"invalid value of {name[:40]!r} (RFC 9113 8.2.1)")
    method = pseudo.get(b":method")
    if method is None:
        raise Malformed("no :method")
    # The method and path become an HTTP/1.1 request line upstream: a space in either would
    # let a client write a line of its own ("GET /admin /public"), which llhttp refuses on
    # HTTP/1.1 (RFC 9110 9.1: a method is a token).
    if not _TOKEN(method):
        raise Malformed(f"invalid :method {method[:40]!r}")
    if method.upper() == b"CONNECT":
        raise Malformed("CONNECT is not served")

    path = pseudo.get(b":path")
    scheme = pseudo.get(b":scheme")
    if scheme is None or not path:
        raise Malformed("no :scheme or :path")
    if scheme not in WEB_SCHEMES and not _URI_SCHEME(scheme):
        # ("javascript" is a scheme, "" and "ht tp" are not: check_method_and_path's 400)
        raise Malformed(f"invalid :scheme {scheme[:40]!r} (RFC 3986 3.1)")
    if b" " in path or b"\t" in path:
        raise Malformed(":path with white space")
    if path[:1] != b"/" and not (path == b"*" and method == b"OPTIONS"):
        raise Malformed(":path must start with /")

    authority = pseudo.get(b":authority")
    hosts = [value for name, value in regular if name == b"host"]
    if authority is not None and any(host != authority for host in hosts):
        raise Malformed(":authority and Host disagree (RFC 9113 8.3.1)")
    return pseudo, regular


def check_trailers(fields):
    """A request's trailers (RFC 9113 8.1): regular fields only, held to the head's rules
    (8.2.1, 8.2.2). Raises Malformed. They are never forwarded, yet a stream that breaks the
    protocol is reset (8.1.1), as it would be for the same fields in its head."""
    for name, value in fields:
        if name[:1] == b":":
            raise Malformed(f"pseudo-header {name[:40]!r} in trailers (RFC 9113 8.1)")
        if not name or _BAD_NAME(name):
            raise Malformed(f"invalid trailer field name {name[:40]!r} (RFC 9113 8.2.1)")
        if name in CONNECTION_SPECIFIC or name == b"te" and \
                value.strip().lower() != b"trailers":
            raise Malformed(f"connection-specific trailer field {name.decode('latin-1')!r}")
        if _BAD_VALUE(value):
            raise Malformed(f"invalid value of trailer {name[:40]!r} (RFC 9113 8.2.1)")


def check_method_and_path(method, path, scheme=b"http"):
    """BadRequest for a method, a path byte or a scheme that HTTP/1.1 answers with a 400
    (the request is well-formed HTTP/2, so it is answered, not reset). A scheme is
    case-insensitive (RFC 3986 3.1); HTTP/1.1 refuses an absolute-form target of any
    other ("request target must be a path or an absolute http URL")."""
    if scheme not in WEB_SCHEMES and scheme.lower() not in WEB_SCHEMES:
        raise BadRequest(f":scheme {scheme[:40].decode('latin-1')!r} is not served here: "
                         f"http or https")
    if method not in HTTP_METHODS:
        raise BadRequest(f"unknown method {method[:40].decode('latin-1')!r}")
    if _BAD_PATH_BYTE(path):
        raise BadRequest("a control, space or non-ASCII byte in the path (percent-encode it)")


# HTTP status of an answer the gateway made -> gRPC status code (grpc/doc/http-grpc-status-
# mapping.md, with 429 as RESOURCE_EXHAUSTED: it is a limit, and clients back off on it).
GRPC_CODES = {400: 13, 401: 16, 403: 7, 404: 12, 405: 12, 408: 4, 413: 8, 429: 8, 431: 8,
              500: 13, 501: 12, 502: 14, 503: 14, 504: 14}
DEADLINE_EXCEEDED = 4
GRPC_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def grpc_code(status, error=None, deadline_hit=False):
    """The gRPC status of a gateway-made answer with HTTP ``status``."""
    if deadline_hit and isinstance(error, UpstreamTimeout):
        return DEADLINE_EXCEEDED
    return GRPC_CODES.get(status, 2)        # 2: UNKNOWN


def grpc_status_fields(reply, error=None, deadline_hit=False):
    """The ``grpc-status`` and ``grpc-message`` of an answer the gateway made itself (a
    Reply) to a gRPC call, native or gRPC-Web: one mapping for both."""
    payload = reply.payload     # a plugin's Reply.json may hold any JSON (a list): its body
    message = isinstance(payload, dict) and payload.get("message") or \
        reply.body.decode("utf-8", "replace")
    return [(b"grpc-status", b"%d" % grpc_code(reply.status, error, deadline_hit)),
            (b"grpc-message", grpc_message(str(message)))]


def grpc_timeout(value):
    """``grpc-timeout`` (e.g. ``200m``, at most 8 digits and a unit) -> seconds, or None."""
    if not value or len(value) > 9 or value[-1:] not in GRPC_TIMEOUT_UNITS or \
            not value[:-1].isdigit():
        return None
    return int(value[:-1]) * GRPC_TIMEOUT_UNITS[value[-1:]]


def grpc_timeout_value(seconds):
    """Seconds -> a ``grpc-timeout`` value in milliseconds (at least 1, at most 8 digits)."""
    return b"%dm" % min(99_999_999, max(1, int(seconds * 1000)))


# A gateway's own grpc-message, encoded, is cut at this many bytes: gRPC clients take 8 KiB
# of metadata by default (grpc-core's soft limit), and a longer one (a fault abort's body, a
# plugin's page) failed the call on the client's side, RESOURCE_EXHAUSTED, not its status.
GRPC_MESSAGE_BYTES = 4096


def grpc_message(text):
    """``grpc-message`` percent-encoding (gRPC over HTTP2: %-encode outside 0x20-0x7E, and %),
    at most GRPC_MESSAGE_BYTES, cut between characters."""
    out, size = [], 0
    for c in text:
        piece = c if " " <= c <= "~" and c != "%" else "".join(f"%{b:02X}" for b in c.encode())
        size += len(piece)
        if size > GRPC_MESSAGE_BYTES:
            break
        out.append(piece)
    return "".join(out).encode("ascii")


def is_grpc(content_type):
    """A native gRPC request (application/grpc, +proto, ...; not gRPC-Web)."""
    return content_type is not None and content_type[:16].lower() == b"application/grpc" and \
        content_type[16:17] in (b"", b"+", b";")
