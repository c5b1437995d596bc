"""The edges' own names for the client's address (Fly.io's Fly-Client-IP, DigitalOcean's
DO-Connecting-IP, Azure Front Door's X-Azure-ClientIP and X-Azure-SocketIP, Envoy's
X-Envoy-External-Address, Google's X-ProxyUser-IP) went upstream as any client sent them: an
app moved from behind that edge reads its own header for the client, so a client's
"Fly-Client-IP: 10.0.0.1" was an internal address to its allow-list. Now they are a
proxy's word alone, as X-Client-IP and True-Client-IP are (docs/security.md): dropped from
anyone else, and behind a trusted proxy that names a client made to say that client.
(Real gateways, a recording upstream on 127.0.0.1, HTTP/1.1 and h2c clients.)"""
from ..conftest import gateway_conf, route
from ..h2client import RawH2
from .test_attack_pass_dec03 import raw_request

EDGE_NAMES = ("Fly-Client-IP", "DO-Connecting-IP", "X-Azure-ClientIP", "X-Azure-SocketIP",
              "X-Envoy-External-Address", "X-ProxyUser-IP")
FORGED = b"".join(b"%s: 10.0.0.1\r\n" % name.encode() for name in EDGE_NAMES)


def test_a_clients_edge_address_headers_never_reach_the_upstream(launcher, h1_up):
    gw = launcher.gateway(gateway_conf([route("all", ["/p"], h1_up.url)], http2={"h2c": True}))
    answer = raw_request(gw.port, b"GET /p HTTP/1.1\r\nHost: a\r\n%sConnection: close\r\n\r\n"
                         % FORGED)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    for name in EDGE_NAMES:     # before: each went up as "10.0.0.1"
        assert h1_up.header(-1, name) == [], (name, h1_up.heads[-1])
    client = RawH2(gw.port)
    try:
        sid = client.request("/p", authority="a",
                             headers=[(name.lower(), "10.0.0.1") for name in EDGE_NAMES])
        assert client.response(sid)[0] == 200
    finally:
        client.close()
    for name in EDGE_NAMES:
        assert h1_up.header(-1, name) == [], (name, h1_up.heads[-1])


def test_behind_a_trusted_proxy_they_say_the_client_the_walk_found(launcher, h1_up):
    gw = launcher.gateway(gateway_conf([route("all", ["/p"], h1_up.url)],
                                       server={"trusted_proxies": ["127.0.0.1/32"]}))
    # a balancer trusted for X-Forwarded-For that writes none of them passes the client's on
    answer = raw_request(gw.port, b"GET /p HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: "
                                  b"203.0.113.7\r\n%sConnection: close\r\n\r\n" % FORGED)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    for name in EDGE_NAMES:     # before: "10.0.0.1", the client's own word
        assert h1_up.header(-1, name) == ["203.0.113.7"], (name, h1_up.heads[-1])
