"""Which address is the client: the peer, or what trusted proxies say (nginx's
``set_real_ip_from`` with ``real_ip_recursive on``).

Only a peer in ``trusted_proxies`` may name the client. Its ``X-Forwarded-For`` (or
``Forwarded: for=``) list is walked from the right, skipping addresses that are themselves
trusted proxies; the first one that is not is the client. A client can prepend anything it
likes to the list, which is why the walk starts at the end the proxies wrote.
"""
import functools
import ipaddress
import re

from ..errors import BadRequest


class ProxiedAddress(tuple):
    """The (ip, port) of a connection a PROXY protocol header came on: the client it named,
    or the balancer's own when it named none (UNKNOWN, LOCAL). Never a trusted HTTP proxy,
    whatever ``trusted_proxies`` says: a TCP balancer passes the client's own
    X-Forwarded-For through untouched."""

    tls = False     # the balancer said (v2's SSL TLV) that the client came to it over TLS


def connection_scheme(addr, scheme):
    """A connection's scheme: https when a TLS-terminating balancer said so in its PROXY
    header, else the listener's."""
    return "https" if type(addr) is ProxiedAddress and addr.tls else scheme


_MAPPED = ipaddress.ip_network("::ffff:0:0/96")


def network_of(cidr):
    """A CIDR's network, an IPv4-mapped one (``::ffff:10.0.0.0/104``) as the IPv4 range it
    names (``10.0.0.0/8``): a client's address is matched as IPv4 (``peer_address``), so
    the mapped spelling matched nothing (a deny rule let everyone it named in)."""
    net = ipaddress.ip_network(cidr, strict=False)
    if net.version == 6 and net.prefixlen >= 96 and net.network_address in _MAPPED:
        return ipaddress.ip_network((int(net.network_address) & 0xFFFFFFFF, net.prefixlen - 96))
    return net


UNIX_PEERS = "unix:"    # in trusted_proxies: the peers of unix: listeners (nginx's spelling)
UNKNOWN = "unknown"     # a client a trusted proxy did not name (RFC 7239's word for it)
UNIX_PEER = "unix"      # such a peer's address (net.sockets.peer_address)


class TrustedProxies:
    def __init__(self, cidrs, header="X-Forwarded-For"):
        # A unix socket's peer has no address to match: a proxy on this host in front of a
        # unix: listener could never name its clients, so each was "unix" (refused by every
        # ip_restriction, one count for every limit keyed on the client) unless trusted so.
        self.unix = UNIX_PEERS in cidrs
        self.networks = tuple(network_of(c) for c in cidrs if c != UNIX_PEERS)
        self.header = header.lower().encode("latin-1")
        self._cache = {UNIX_PEER: self.unix}

    def __bool__(self):
        return bool(self.networks) or self.unix

    @property
    def speak_x_forwarded(self):
        """Are a trusted peer's X-Forwarded-* its own words? Not where it writes Forwarded:
        such a proxy may pass a client's X-Forwarded-* through unread."""
        return self.header != b"forwarded"

    def trusts(self, address):
        """Is ``address`` (text) a trusted proxy? Cached: a worker sees few distinct peers."""
        known = self._cache.get(address)
        if known is None:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                return False
            ip = getattr(ip, "ipv4_mapped", None) or ip     # ::ffff:10.0.0.5 on a [::] listener
            if len(self._cache) > 4096:
                self._cache = {UNIX_PEER: self.unix}
            known = self._cache[address] = any(ip in net for net in self.networks)
        return known

    def trusts_peer(self, addr, address):
        """Does the connection from ``addr`` (accept()'s, or a ProxiedAddress), whose text is
        ``address``, speak for its clients? -> (names the client, its X-Forwarded-* too)."""
        trusted = bool(self) and type(addr) is not ProxiedAddress and \
            self.trusts(address)
        return trusted, trusted and self.speak_x_forwarded

    def client_of(self, peer, value):
        """The client's address given the trusted ``peer`` and the header's bytes (or None)."""
        if not value:
            return peer
        if self.header == b"forwarded":
            try:
                hops = _forwarded_for(value)
            except ValueError as exc:
                # Not the peer instead: a client that spoils the header its proxy appends to
                # would be taken for the proxy, which internal allow-lists name.
                raise BadRequest(f"{exc} (from a trusted proxy)") from None
        else:
            # empty elements (",," or a trailing ",": RFC 9110 5.6.1) are skipped, as nginx does
            hops = [hop for hop in (hop.strip().decode("latin-1") for hop in value.split(b","))
                    if hop]
        client = peer
        for hop in reversed(hops):
            address = None if hop is None else _bare_address(hop)
            if address is None:
                # A hop a trusted proxy wrote that names no address: "unknown" (Squid's
                # forwarded_for unknown; nginx's Forwarded recipe for a unix: client), an
                # obfuscated for=_x, a host name, a scope id, a Forwarded element without
                # for=. Not the last trusted address (nginx's choice): that is a proxy, which
                # internal allow-lists name. Nor a 400: every client of such a proxy would be
                # refused. UNKNOWN is on no allow-list and trusted as no proxy; left of an
                # untrusted address the walk never reaches it.
                return UNKNOWN
            client = address
            if not self.trusts(address):
                break
        return client


    def forwarded_scheme_and_host(self, value):
        """RFC 7239 ``proto=`` and ``host=`` of the last element of a Forwarded header (the
        one the trusted peer wrote), as bytes for X-Forwarded-Proto and -Host; None where
        it says none or nothing usable."""
        element = _elements(value)[-1] if value else {}
        proto = element.get("proto", "").lower()
        host = element.get("host", "")
        return (proto.encode() if proto in ("http", "https") else None,
                host.encode("latin-1") if host and _HOST_CHARS.issuperset(host) else None)


_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:[]")


# RFC 7239 4: forwarded-pair = token "=" ( token / quoted-string ), pairs joined by ";",
# elements by ",", optional white space around both.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PAIR = re.compile(r'(%s)=(%s|"(?:[^"\\]|\\.)*")[ \t]*(?=[;,]|$)' % (_TOKEN, _TOKEN))
_ESCAPED = re.compile(r"\\(.)")         # a quoted-pair, in a quoted-string


def _elements(value):
    """RFC 7239: each element's parameters, {lower name: value unquoted}, in order. Empty
    pairs and elements (``;;``, ``,,``: RFC 9110 5.6.1 lets a list have them) are skipped. A
    name given twice in one element makes it {} (as an element without ``for=``): garbage.
    ValueError for a header that does not parse (a quote left open): quoted strings may hold
    "," and ";" (a quoted host=), so no element of it can be told from the next."""
    text, at, out, params, spoiled = value.decode("latin-1"), 0, [], {}, False
    while True:
        while at < len(text) and text[at] in " \t;,":
            if text[at] == "," and (params or spoiled):
                out.append({} if spoiled else params)
                params, spoiled = {}, False
            at += 1
        if at == len(text):
            break
        pair = _PAIR.match(text, at)
        if pair is None:
            raise ValueError(f"unparsable Forwarded header at byte {at}")
        name, param = pair.group(1).lower(), pair.group(2)
        if param.startswith('"'):
            param = _ESCAPED.sub(r"\1", param[1:-1])
        spoiled = spoiled or name in params
        params[name] = param
        at = pair.end(2)
    if params or spoiled or not out:
        out.append({} if spoiled else params)
    return out


def _forwarded_for(value):
    """The ``for=`` of each element, in order; None for an element without one. Either,
    and an empty ``for=""`` (``for="$http_x_real_ip"`` with none), names no client: where
    a trusted proxy wrote it the client is UNKNOWN (an element skipped, a client could
    slip one in before a proxy's element; as the proxy, it passed allow-lists naming it)."""
    return [element.get("for") for element in _elements(value)]


# A port after an address: digits, or RFC 7239's obfuscated "_..." (for="[::1]:_x")
_PORT = re.compile(r"[0-9]{1,5}|_[0-9A-Za-z._-]+")


def _bare_address(hop):
    """``1.2.3.4``, ``1.2.3.4:5678``, ``[::1]:80`` or ``::1`` -> the address text, else None
    (``1.2.3.4:bad`` and ``[::1]x`` too: nginx's parser refuses them). ``unix:``, what nginx
    writes for a client of its unix: listener, is such a peer (UNIX_PEER), as the gateway
    names its own: a 400 for each of those clients would refuse a whole listener. So is
    ``unix``, the gateway's own spelling in the X-Forwarded-For it sends (proxy.py): a
    gwserver behind one answered every client of its unix: listener 400."""
    if hop == "unix:" or hop == UNIX_PEER:
        return UNIX_PEER
    if hop.startswith("["):
        hop, bracket, port = hop[1:].partition("]")
        if not bracket or port and not (port[0] == ":" and _PORT.fullmatch(port[1:])):
            return None
    elif hop.count(":") == 1:
        hop, _, port = hop.partition(":")
        if not _PORT.fullmatch(port):
            return None
    if "%" in hop:
        return None         # a scope id (fe80::1%eth0) names no client beyond this host
    try:
        ip = ipaddress.ip_address(hop)
    except ValueError:
        return None
    return str(getattr(ip, "ipv4_mapped", None) or ip)


# RFC 6052's well-known prefix: a NAT64 / SIIT-DC translator writes each IPv4 client as
# 64:ff9b::a.b.c.d, and nobody holds such addresses by the /64
NAT64 = ipaddress.ip_network("64:ff9b::/96")


@functools.lru_cache(maxsize=4096)
def ipv6_network(address, prefix):
    """``2001:db8:1:2::/64`` for any address of that /64: whoever holds a /64 (one LAN, one
    VPS) has 2**64 addresses to rotate through, each a fresh bucket (rate_limit) or failure
    budget (authlib) if keyed alone. An IPv4 client a translator names in 64:ff9b::/96 is
    its IPv4 address: by the /64, every IPv4 client of an IPv6-only site shared one bucket,
    and one client's burst (or wrong passwords) refused them all."""
    ip = ipaddress.ip_address(address)
    if ip in NAT64:
        return str(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return ipaddress.ip_network((ip, prefix), strict=False).with_prefixlen
