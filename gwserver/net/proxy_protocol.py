"""The PROXY protocol (HAProxy's; v1 text and v2 binary): a TCP load balancer in front of the
gateway (HAProxy in TCP mode, AWS NLB, ...) names the client's address in a header before the
connection's first byte, as nginx's ``listen ... proxy_protocol`` reads it.

Exactly the header is consumed, never a byte past it: what follows is a TLS ClientHello, an
HTTP/2 preface or a request, read by whoever serves the connection next. A v1 line is found
with MSG_PEEK, so its end is seen before it is taken. Only peers in ``trusted_proxies`` may
speak it (the worker checks): anyone else could name any address.

    PROXY TCP4 203.0.113.7 192.0.2.1 56324 443\\r\\n             (v1, at most 107 bytes)
    \\r\\n\\r\\n\\0\\r\\nQUIT\\n + version/command, family, length, addresses, TLVs    (v2)
"""
import ipaddress
import socket

from ..core.realip import ProxiedAddress

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107                # the longest v1 line, CRLF included (the spec's figure)
V2_COMMANDS = {0x20: "LOCAL", 0x21: "PROXY"}
V2_ADDRESSES = {0x11: (4, 12), 0x21: (16, 36)}     # TCP over IPv4 / IPv6: (address size, bytes)
PP2_TYPE_SSL = 0x20         # a TLV: how the client connected to the balancer
PP2_CLIENT_SSL = 0x01       # ... its first byte's bit: over TLS


# What a connection's first bytes get on a listener not in server.proxy_protocol when they are
# a PROXY header: a balancer set to send one there. Its every request was a 400 logged as
# "Invalid method encountered" (plain) or an answer to "use https://" (TLS): nothing named it.
PROXY_OFF = ("a PROXY protocol header, on a listener that does not take one: name the "
             "listener in server.proxy_protocol (and the balancer in trusted_proxies), or "
             "have the balancer send none")
# ... and when the listener took one already: a balancer passed on the header of the one in
# front of it (HAProxy in TCP mode with send-proxy, no accept-proxy, behind an NLB that sends
# one). Told PROXY_OFF, the operator was sent to the setting that already names the listener.
PROXY_TWICE = ("a second PROXY protocol header, after the one this listener takes: a balancer "
               "passed on the header of the one in front of it; have it read that one "
               "(HAProxy's accept-proxy), or have only one of them send a header")


def is_proxy_header(first):
    """Do the connection's first bytes ``first`` start a PROXY header (v1 or v2)?"""
    return first.startswith(b"PROXY ") or first.startswith(V2_SIGNATURE)


def proxy_header_refused(addr):
    """Why a PROXY header among the first bytes a connection from ``addr`` serves is
    refused: the listener takes none, or took one already (``addr`` a ProxiedAddress)."""
    return PROXY_TWICE if type(addr) is ProxiedAddress else PROXY_OFF


class ProxyHeaderError(Exception):
    """A connection on a PROXY listener that does not start with a valid header."""


class ProxyHeaderNotStarted(ProxyHeaderError):
    """Closed before its first byte: a balancer's TCP health check, most likely."""


def parse_v1(line):
    """b"PROXY TCP4 src dst sport dport\\r\\n" -> (src, sport); None for ``PROXY UNKNOWN``
    (the balancer's own connection, a health check: the peer is the client)."""
    if not line.endswith(b"\r\n") or line.find(b"\r\n") != len(line) - 2:
        raise ProxyHeaderError("a v1 header is one line ending in CRLF")
    parts = line[:-2].decode("ascii", "replace").split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return None
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError(f"not a v1 header: {line[:60]!r}")
    version = 4 if parts[1] == "TCP4" else 6
    try:
        if "%" in parts[2] + parts[3]:      # a scope id: text nobody should log or forward
            raise ValueError
        source, dest = ipaddress.ip_address(parts[2]), ipaddress.ip_address(parts[3])
    except ValueError:
        raise ProxyHeaderError(f"v1 addresses are not IP addresses: {line[:60]!r}") from None
    if source.version != version or dest.version != version:
        raise ProxyHeaderError(f"v1 addresses are not {parts[1]}: {line[:60]!r}")
    source = getattr(source, "ipv4_mapped", None) or source     # one spelling per client
    ports = parts[4:6]
    if not all(p.isdigit() and len(p) <= 5 and int(p) < 65536 and
               (p == "0" or not p.startswith("0")) for p in ports):
        raise ProxyHeaderError(f"v1 ports are not ports: {line[:60]!r}")
    return str(source), int(ports[0])


def parse_v2(head, body):
    """The 4 bytes after the signature and the ``length`` bytes after them -> (src, sport);
    None for a LOCAL command or an address family other than TCP over IP."""
    command = V2_COMMANDS.get(head[0])
    if command is None:
        raise ProxyHeaderError(f"v2 version/command byte {head[0]:#04x} is not 0x20 or 0x21")
    if command == "LOCAL":
        return None
    family = head[1]
    if family not in V2_ADDRESSES:
        if family >> 4 in (0, 3) and family & 0x0F in (0, 1):   # UNSPEC, or a unix socket
            return None
        raise ProxyHeaderError(f"v2 family/protocol byte {family:#04x} is not TCP")
    size, needed = V2_ADDRESSES[family]
    if len(body) < needed:
        raise ProxyHeaderError(f"v2 addresses need {needed} bytes, the header holds "
                               f"{len(body)}")
    source = ipaddress.ip_address(body[:size])
    port = int.from_bytes(body[2 * size:2 * size + 2], "big")
    return str(getattr(source, "ipv4_mapped", None) or source), port


def client_used_tls(head, body):
    """Does a v2 header's PP2_TYPE_SSL TLV say the client connected to the balancer over TLS
    (HAProxy's send-proxy-v2-ssl)? A balancer that terminates TLS and passes plain TCP on
    named no scheme: the connection was served as http://, and http_to_https redirected a
    client that had come over https to https again, without end."""
    if V2_COMMANDS.get(head[0]) != "PROXY" or head[1] not in V2_ADDRESSES:
        return False
    at = V2_ADDRESSES[head[1]][1]
    while at < len(body):
        if at + 3 > len(body):
            raise ProxyHeaderError("a v2 TLV is cut short by the header's length")
        kind, size = body[at], int.from_bytes(body[at + 1:at + 3], "big")
        value = body[at + 3:at + 3 + size]
        if len(value) != size:
            raise ProxyHeaderError(f"v2 TLV {kind:#04x} of {size} bytes overruns the header")
        if kind == PP2_TYPE_SSL:
            return bool(value[:1]) and bool(value[0] & PP2_CLIENT_SSL)
        at += 3 + size
    return False


def read_exactly(sock, size):
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ProxyHeaderError("the connection closed inside the PROXY header")
        data += chunk
    return data


def read_proxy_header(sock, peer):
    """Take the PROXY header off ``sock`` -> a ProxiedAddress: the client it names, else the
    balancer's ``peer`` (LOCAL, UNKNOWN); its ``tls``, whether the client came over TLS. Raises ProxyHeaderError; the caller bounds the
    time."""
    client, tls = _read_header(sock)
    address = ProxiedAddress(client if client is not None else peer[:2])
    address.tls = tls
    return address


def _read_header(sock):
    """-> (the client's (ip, port) or None, whether it came to the balancer over TLS)."""
    first = sock.recv(12)       # the v2 signature; the shortest v1 line is 15 bytes
    if not first:
        raise ProxyHeaderNotStarted("the connection closed before its first byte")
    start = first + read_exactly(sock, 12 - len(first))
    if start == V2_SIGNATURE:
        head = read_exactly(sock, 4)
        body = read_exactly(sock, int.from_bytes(head[2:4], "big"))
        return parse_v2(head, body), client_used_tls(head, body)
    if not start.startswith(b"PROXY "):
        raise ProxyHeaderError("the connection does not start with a PROXY protocol header")
    line = start
    while not line.endswith(b"\r\n"):
        if b"\r\n" in line or len(line) >= V1_MAX:
            raise ProxyHeaderError(f"not a v1 header: {line[:60]!r}")
        peeked = sock.recv(V1_MAX - len(line), socket.MSG_PEEK)
        if not peeked:
            raise ProxyHeaderError("the connection closed inside the PROXY header")
        end = (line[-1:] + peeked).find(b"\r\n")     # a CR may end what was taken
        line += read_exactly(sock, end + 1 if end >= 0 else len(peeked))
    return parse_v1(line), False
