"""gRPC-Web <-> gRPC framing, pure (what Envoy's grpc_web filter does).

Both carry the same length-prefixed messages (1 flag byte, 4-byte big-endian length, the
message). gRPC sends its status in HTTP/2 trailers; gRPC-Web, which browsers cannot read
trailers from, sends them as one last frame with flag 0x80 whose payload is the trailers as
HTTP/1 header lines. ``application/grpc-web-text`` base64-encodes the whole stream.
https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-WEB.md
"""
import base64
import struct

GRPC_WEB_TYPES = ("application/grpc-web", "application/grpc-web+proto",
                  "application/grpc-web-text", "application/grpc-web-text+proto")
TRAILER_FLAG = 0x80


def mode_of(content_type):
    """"binary", "text" or None for a request's Content-Type (bytes or str)."""
    if isinstance(content_type, bytes):
        content_type = content_type.decode("latin-1")
    base = content_type.split(";")[0].strip().lower()
    if base not in GRPC_WEB_TYPES:
        return None
    return "text" if base.startswith("application/grpc-web-text") else "binary"


def body_limit(route_limit, grpc):
    """The bytes a request body may hold: the route's ``max_body_size`` (0: none) and, for a
    call the grpc_web plugin marked (``grpc``: its ``(mode, type, max_body_size)``), that
    plugin's own, the smaller."""
    if not grpc:
        return route_limit
    return min(route_limit, grpc[2]) if route_limit else grpc[2]


def upstream_content_type(content_type):
    """application/grpc-web[-text][+proto] -> application/grpc[+proto]."""
    base = content_type.split(";")[0].strip().lower()
    return "application/grpc+proto" if base.endswith("+proto") else "application/grpc"


def client_content_type(mode, request_type, upstream_type):
    """The answer's type: grpc-web or grpc-web-text, with +proto when the client's request or
    the upstream's answer named it (clients match on what they sent)."""
    proto = request_type.split(";")[0].strip().lower().endswith("+proto") or \
        upstream_type.endswith("+proto")
    suffix = "+proto" if proto else ""
    return ("application/grpc-web-text" if mode == "text" else "application/grpc-web") + suffix


# What Envoy's grpc_web filter keeps of an answer that is no gRPC one, as its grpc-message
PAGE_BYTES = 16384


def is_grpc_answer(fields):
    """Whether an upstream's head (lower-case (name, value) pairs) answers a gRPC call as
    gRPC does: an application/grpc[+format] type, or a trailers-only answer (its
    grpc-status in the head). A gRPC type is gRPC whatever the HTTP status: its trailers
    carry the grpc-status, which gRPC says must be used (the HTTP status is mapped only for
    answers without one); taken for a page, a 503's grpc-status 8 was replaced by 14, and
    its messages by their bytes as grpc-message."""
    content_type = b""
    for name, value in fields:
        if name == b"grpc-status":
            return True
        if name == b"content-type":
            content_type = value
    base = content_type.split(b";")[0].strip().lower()
    return base == b"application/grpc" or base.startswith(b"application/grpc+")


def page_trailers(code, page):
    """The trailers a gRPC-Web client gets for an answer that is no gRPC one (a proxy's HTML
    502 page): gRPC status ``code`` (what its HTTP status maps to), and ``page`` (its first
    PAGE_BYTES) percent-encoded as grpc-message (gRPC's encoding: bytes outside 0x20-0x7e,
    and %; byte by byte, as the page's bytes may be in any charset)."""
    message = b"".join(bytes([c]) if 0x20 <= c <= 0x7e and c != 0x25 else b"%%%02X" % c
                       for c in page[:PAGE_BYTES])
    return [(b"grpc-status", b"%d" % code), (b"grpc-message", message)]


def web_trailers(trailers, code):
    """An upstream's gRPC trailers as a gRPC-Web client must read them. grpc-message is
    percent-encoded where it came raw (gRPC's encoding, bytes outside 0x20-0x7e; a ``%`` is
    left, as an encoded message has them): raw UTF-8 went into the frame as it came. A
    grpc-status is a number: without one (no trailers, a trailers-only head without it) or
    with one that is not, a gRPC client derives ``code`` (the HTTP status's, UNKNOWN for a
    200: grpc/doc/http-grpc-status-mapping.md), and so it is told here; the frame had no
    status, or "abc", to read."""
    out, status, message = [], None, False
    for name, value in trailers:
        name = name.lower()
        if name == b"grpc-status":
            if status is None:
                status = value if value.isdigit() else b""
            continue
        if name == b"grpc-message":
            message = True
            value = b"".join(bytes([c]) if 0x20 <= c <= 0x7e else b"%%%02X" % c for c in value)
        out.append((name, value))
    if not status:
        if not message:
            out.append((b"grpc-message", b"the upstream's answer had no grpc-status" if status
                        is None else b"the upstream's grpc-status is not a number"))
        status = b"%d" % code
    return [(b"grpc-status", status)] + out


def trailer_frame(trailers):
    """[(name, value)] -> the gRPC-Web trailer frame."""
    block = b"".join(b"%s:%s\r\n" % (name.lower(), value) for name, value in trailers)
    return bytes([TRAILER_FLAG]) + len(block).to_bytes(4, "big") + block


def decode_text_body(body):
    """A grpc-web-text request body: base64, possibly several padded pieces back to back,
    line breaks ignored. Anything else outside the alphabet is a ValueError, as Envoy's 400:
    decoded leniently (b64decode drops it) a space, "!!!!" or the url-safe "-_" were left
    out and the upstream was sent other bytes than the client encoded."""
    out, rest = [], body.replace(b"\r", b"").replace(b"\n", b"")
    while rest:
        end = rest.find(b"=")
        if end < 0:
            out.append(base64.b64decode(rest, validate=True))
            break
        end += 1
        while end < len(rest) and rest[end:end + 1] == b"=":
            end += 1
        out.append(base64.b64decode(rest[:end], validate=True))
        rest = rest[end:]
    return b"".join(out)


# A message's length, after its flag byte
_LENGTH = struct.Struct(">xI").unpack_from


class MessageEdges:
    """Follows the length-prefixed messages of an answer as its bytes go by: ``at_edge``
    whether they end between two messages, where a trailer frame can still follow."""

    def __init__(self):
        self.prefix = b""       # the next message's prefix, while it is incomplete
        self.left = 0           # bytes of the current message still to come

    def feed(self, data):
        # Runs on every chunk of a streaming answer: one step a message, from prefix to
        # prefix (stepping through each prefix's bytes cost a stream of 100-byte messages
        # more of the worker than the rest of its relay).
        at, end = self.left, len(data)      # ``at``: where the next prefix begins
        if self.prefix:
            at = 5 - len(self.prefix)
            self.prefix += data[:at]
            if len(self.prefix) < 5:
                return
            at += _LENGTH(self.prefix)[0]
        while at + 5 <= end:
            at += 5 + _LENGTH(data, at)[0]
        self.left = at - end if at > end else 0
        self.prefix = bytes(data[at:]) if at < end else b""

    @property
    def at_edge(self):
        return not self.left and not self.prefix


class TextEncoder:
    """Streams base64 without padding in the middle: encodes whole 3-byte groups as they
    come, and the remainder (padded) at the end."""

    def __init__(self):
        self.carry = b""

    def feed(self, data):
        data = self.carry + data
        cut = len(data) - len(data) % 3
        self.carry = data[cut:]
        return base64.b64encode(data[:cut])

    def finish(self):
        out, self.carry = base64.b64encode(self.carry), b""
        return out
