"""``ip_restriction``: allow and deny lists of CIDRs (IPv4 and IPv6) on the client address.

    plugins.ip_restriction = {allow = ["10.0.0.0/8", "2001:db8::/32"], deny = ["10.6.6.0/24"]}

The address is ``ctx.client_ip``: the peer, or what a peer in ``[server] trusted_proxies``
named (docs/security.md), never a header a client could write itself. An IPv4 address a
dual-stack socket reports as ``::ffff:a.b.c.d`` is matched as ``a.b.c.d``, and a rule written
that way (``::ffff:10.0.0.0/104``) is matched as the IPv4 range it names (``10.0.0.0/8``).
An IPv4 client a NAT64 translator names as ``64:ff9b::a.b.c.d`` (RFC 6052) is matched by
IPv4 deny rules as ``a.b.c.d``, by IPv4 allow rules so only when ``a.b.c.d`` is global (RFC
6052 3.1: the well-known prefix never carries a private one; docs/security.md). Deny wins;
with an allow list, an address must be in it. Refused: 403 (``status`` to change it).
"""
import ipaddress

from ..core.context import Reply
from ..core.realip import NAT64, network_of
from ..core.schema import Field, Invalid, Schema, integer, list_of, show

NAME = "ip_restriction"
PRIORITY = 1200         # first of all: a refused address gets no CORS answer, no auth check
CACHE = 4096            # decisions remembered per route and worker (addresses seen)


def cidr(value):
    try:
        ipaddress.ip_network(value, strict=False)
    except (TypeError, ValueError):
        raise Invalid(f"must be an IPv4 or IPv6 address or CIDR, got {show(value)}") from None
    return value


SCHEMA = Schema(
    Field("allow", list_of(cidr), list, "CIDRs allowed (empty: every address not denied)"),
    Field("deny", list_of(cidr), list, "CIDRs refused (wins over allow)"),
    Field("status", integer(400, 599, "a 4xx or 5xx status"), 403, "status of a refusal"),
)


def prepare(conf):
    if not conf["allow"] and not conf["deny"]:
        raise ValueError("set allow, deny or both")
    return {**conf, "decisions": {},
            # (a deny rule spelt ::ffff:10.0.0.0/104 matched nothing: addresses are IPv4)
            "allow": tuple(network_of(c) for c in conf["allow"]),
            "deny": tuple(network_of(c) for c in conf["deny"])}


def permitted(conf, address):
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False            # not an address (a unix socket peer): not on any allow list
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    translated = nat64_client(ip)
    names = (ip,) if translated is None else (ip, translated)
    if any(name in net for net in conf["deny"] for name in names):
        return False
    if translated is not None and not translated.is_global:
        names = (ip,)   # RFC 6052 3.1: no translator writes a private one; IPv6 rules alone
    return not conf["allow"] or any(name in net for net in conf["allow"] for name in names)


def nat64_client(ip):
    """The IPv4 client a NAT64 / SIIT-DC translator names as 64:ff9b::a.b.c.d, else None:
    an IPv4 deny rule let that client in through the translator (rate limits already count
    it by its IPv4 address, realip.ipv6_network)."""
    if ip.version == 6 and ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def access(conf, ctx):
    decisions = conf["decisions"]
    address = ctx.client_ip
    ok = decisions.get(address)
    if ok is None:
        if len(decisions) >= CACHE:
            decisions.clear()
        ok = decisions[address] = permitted(conf, address)
    if ok:
        return None
    return Reply.json(conf["status"], {"error": "address_refused",
                                       "message": "your address may not use this route"})
