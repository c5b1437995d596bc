"""Client identity behind trusted proxies (2026-12-09, a1).

1. A trusted proxy's X-Forwarded-For (or Forwarded for=) whose hop, where a trusted proxy
   wrote the client, does not parse as an address ("unknown", a host name, "1.2.3.4:bad", a
   scope id) ended the walk at the last trusted address: the client was taken for the proxy,
   past an ip_restriction allow-list naming it. The client is "unknown" now (on no
   allow-list, served where none applies); garbage left of an untrusted address is never
   reached and stays harmless.
2. A client's Connection naming a header the gateway takes from a trusted (or identity)
   proxy as the proxy's own words (X-Forwarded-Prefix, -Port, X-Forwarded-User ...), passed
   on by that proxy, dropped the proxy's header.
3. An IPv4 client a NAT64 translator names as 64:ff9b::a.b.c.d got past an IPv4 deny rule
   of ip_restriction (and was refused by an IPv4 allow rule naming it).
"""
from ..conftest import gateway_conf, route, wait_until
from ..h2client import RawH2
from .test_attack_pass_dec03 import raw_request

ALLOW_PROXY = {"ip_restriction": {"allow": ["127.0.0.1/32"]}}


def get(port, path, *headers):
    head = b"".join(h + b"\r\n" for h in headers)
    return raw_request(port, b"GET " + path + b" HTTP/1.1\r\nHost: a\r\n" + head +
                       b"Connection: close\r\n\r\n")


def status(answer):
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else answer[:80]


def clients_of(gw, path, count):
    """The access log's client of the ``count`` requests to ``path`` (lines are batched)."""
    return wait_until(lambda: len(lines := [line["client"] for line in gw.access_lines()
                                            if line["path"] == path]) == count and lines, 5)


def two_routes(launcher, h1_up, **server):
    """/p allows the proxy's address alone; /open allows all."""
    return launcher.gateway(gateway_conf([
        route("internal", ["/p"], h1_up.url, plugins=ALLOW_PROXY),
        route("open", ["/open"], h1_up.url)],
        server={"trusted_proxies": ["127.0.0.1/32"], **server}, http2={"h2c": True}))


def test_garbage_where_a_trusted_proxy_named_the_client_is_unknown_not_the_proxy(launcher,
                                                                                  h1_up):
    gw = two_routes(launcher, h1_up)
    assert status(get(gw.port, b"/p")) == 200            # the proxy itself: allowed
    client = RawH2(gw.port)                               # over HTTP/2 alike
    try:
        sid = client.request("/p", headers=[("x-forwarded-for", "unknown")])
        assert client.response(sid)[0] == 403                # before: 200
    finally:
        client.close()
    for xff in (b"unknown", b"gw-internal.example", b"1.2.3.4:bad", b"[::1]x",
                b"fe80::1%eth0", b"203.0.113.7, unknown, 127.0.0.1"):
        answer = get(gw.port, b"/p", b"X-Forwarded-For: " + xff)
        assert status(answer) == 403, (xff, answer[:300])    # before: 200, as the proxy
        # served where no allow-list applies: not a 400 for every client of such a proxy
        assert status(get(gw.port, b"/open", b"X-Forwarded-For: " + xff)) == 200, xff
    assert clients_of(gw, "/open", 6) == ["unknown"] * 6
    # garbage left of an untrusted address: the walk stopped there, the client is refused
    for xff in (b"unknown, 203.0.113.7", b"1.2.3.4:bad, 203.0.113.7, 127.0.0.1",
                b"203.0.113.7,, 127.0.0.1,"):                   # empty elements skipped
        assert status(get(gw.port, b"/p", b"X-Forwarded-For: " + xff)) == 403, xff
    # a port is no garbage
    ported = b"X-Forwarded-For: [127.0.0.1]:80, 127.0.0.1:5678"
    assert status(get(gw.port, b"/p", ported)) == 200
    assert status(get(gw.port, b"/p", b"X-Forwarded-For: 203.0.113.7:5678")) == 403


def test_forwarded_for_unknown_from_a_trusted_proxy_is_unknown_not_the_proxy(launcher,
                                                                            h1_up):
    gw = two_routes(launcher, h1_up, real_ip_header="Forwarded")
    for fwd in (b"for=unknown", b'for="_hidden"', b'for="1.2.3.4:bad"', b'for=""',
                b"proto=https", b"for=203.0.113.7, for=unknown;proto=https"):
        answer = get(gw.port, b"/p", b"Forwarded: " + fwd)
        assert status(answer) == 403, (fwd, answer[:300])    # before: 200, as the proxy
        assert status(get(gw.port, b"/open", b"Forwarded: " + fwd)) == 200, fwd
    assert clients_of(gw, "/open", 6) == ["unknown"] * 6
    assert status(get(gw.port, b"/p", b"Forwarded: for=unknown, for=203.0.113.7")) == 403
    assert status(get(gw.port, b"/p", b'Forwarded: for="127.0.0.1:_x"')) == 200


PROXY_WORDS = [(b"X-Forwarded-Prefix", b"/app"), (b"X-Forwarded-Port", b"8443"),
               (b"X-Forwarded-Scheme", b"https"), (b"X-Forwarded-Ssl", b"on"),
               (b"X-Forwarded-Server", b"edge.example"), (b"X-Script-Name", b"/app"),
               (b"X-Original-Host", b"shop.example"),
               (b"X-Forwarded-Proto", b"https"), (b"X-Forwarded-Host", b"shop.example"),
               (b"X-Forwarded-User", b"alice"), (b"X-Auth-Request-Email", b"a@example.com"),
               (b"X-SSL-Client-Verify", b"SUCCESS")]


def test_a_clients_connection_cannot_drop_what_a_trusted_proxy_says(launcher, h1_up):
    gw = launcher.gateway(gateway_conf([route("all", ["/p"], h1_up.url)],
                                       server={"trusted_proxies": ["127.0.0.1/32"],
                                               "identity_proxies": ["127.0.0.1/32"]}))
    names = b", ".join(name for name, _ in PROXY_WORDS)
    answer = get(gw.port, b"/p", b"X-Forwarded-For: 198.51.100.9",
                 *(name + b": " + value for name, value in PROXY_WORDS),
                 b"X-Other: x", b"Connection: " + names + b", X-Other")
    assert status(answer) == 200, answer[:300]
    for name, value in PROXY_WORDS:       # before: -Prefix, -User ... dropped
        assert h1_up.header(-1, name.decode()) == [value.decode()], (name, h1_up.heads[-1])
    assert h1_up.header(-1, "X-Other") == [], h1_up.heads[-1]    # hop-by-hop still


def test_identity_headers_of_a_mere_trusted_proxy_stay_dropped(launcher, h1_up):
    gw = launcher.gateway(gateway_conf([route("all", ["/p"], h1_up.url)],
                                       server={"trusted_proxies": ["127.0.0.1/32"]}))
    answer = get(gw.port, b"/p", b"X-Forwarded-User: admin", b"X-Forwarded-Prefix: /app",
                 b"Connection: X-Forwarded-User, X-Forwarded-Prefix")
    assert status(answer) == 200, answer[:300]
    assert h1_up.header(-1, "X-Forwarded-User") == [], h1_up.heads[-1]
    assert h1_up.header(-1, "X-Forwarded-Prefix") == ["/app"], h1_up.heads[-1]   # before: []


def test_ipv4_rules_match_a_nat64_translated_client(launcher, h1_up):
    routes = [route("deny", ["/deny"], h1_up.url,
                    plugins={"ip_restriction": {"deny": ["203.0.113.0/24"]}}),
              route("allow", ["/allow"], h1_up.url,
                    plugins={"ip_restriction": {"allow": ["8.8.4.0/24", "10.0.0.0/8"]}}),
              route("v6", ["/v6"], h1_up.url,
                    plugins={"ip_restriction": {"deny": ["64:ff9b::/96"]}})]
    gw = launcher.gateway(gateway_conf(routes, server={"trusted_proxies": ["127.0.0.1/32"]}))

    def via(path, client):
        return status(get(gw.port, path, b"X-Forwarded-For: " + client))

    assert via(b"/deny", b"203.0.113.7") == 403
    assert via(b"/deny", b"64:ff9b::cb00:7107") == 403        # before: 200, past the rule
    assert via(b"/deny", b"64:ff9b::203.0.113.9") == 403
    assert via(b"/deny", b"64:ff9b::808:404") == 200
    assert via(b"/allow", b"64:ff9b::808:404") == 200         # before: 403
    assert via(b"/allow", b"8.8.4.4") == 200
    # RFC 6052 3.1: the well-known prefix never carries a private IPv4 address; no
    # translator wrote this one, so an allow rule for 10/8 does not admit it
    assert via(b"/allow", b"64:ff9b::a00:1") == 403
    assert via(b"/allow", b"10.0.0.1") == 200
    assert via(b"/v6", b"64:ff9b::cb00:7107") == 403          # an IPv6 rule still matches
    assert via(b"/v6", b"203.0.113.7") == 200
