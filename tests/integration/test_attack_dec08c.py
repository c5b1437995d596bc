"""Attack pass on who the client is: PROXY protocol, a trusted proxy's headers, and what the
upstream is told.

1. Behind a trusted proxy that writes Forwarded (real_ip_header = "Forwarded"), a client's
   ``Connection: Forwarded``, passed through by the proxy, had the gateway drop the proxy's
   Forwarded as hop-by-hop before the walk: the client was the proxy itself, past an
   ip_restriction allow-list of the proxy's internal address, in its limit bucket.
2. ``Client-IP`` (Rails' remote_ip, the PHP snippet that reads HTTP_CLIENT_IP before
   X-Forwarded-For) and ``Fastly-Client-IP`` (request-ip) went upstream as any client sent
   them, while X-Client-IP and its siblings were dropped: ``Client-IP: 6.6.6.6`` was the
   client to such an upstream.
"""
from ..conftest import gateway_conf, route, wait_until
from ..h2client import RawH2
from .test_attack_pass_dec03 import raw_request


# -- 1. Connection names the trusted proxy's Forwarded ------------------------------------------

def test_connection_cannot_drop_the_trusted_proxys_forwarded(launcher, h1_up):
    gw = launcher.gateway(gateway_conf(
        [route("in", ["/in"], h1_up.url,
               plugins={"ip_restriction": {"allow": ["127.0.0.1/32"]}})],
        server={"trusted_proxies": ["127.0.0.1/32"], "real_ip_header": "Forwarded"}))
    for connection in (b"close", b"close, Forwarded", b"FORWARDED, close"):
        answer = raw_request(gw.port, b"GET /in HTTP/1.1\r\nHost: a\r\nForwarded: for="
                             b"203.0.113.7\r\nConnection: %s\r\n\r\n" % connection)
        # the client the proxy named, refused; not the proxy, let in
        assert answer.startswith(b"HTTP/1.1 403 "), (connection, answer[:200])
    assert h1_up.heads == []
    lines = wait_until(lambda: len(gw.access_lines()) >= 3 and gw.access_lines())
    assert [line["client"] for line in lines] == ["203.0.113.7"] * 3


# -- 2. Client-IP and Fastly-Client-IP ------------------------------------------------------------

NAMES = ("Client-IP", "Fastly-Client-IP")


def test_client_ip_spellings_are_a_proxys_word_alone(launcher, h1_up):
    dropped_from_clients_said_by_proxies(launcher, h1_up, NAMES)


def dropped_from_clients_said_by_proxies(launcher, h1_up, names):
    """Headers ``names`` (spellings of the client's address), sent by a client, reach the
    upstream neither over HTTP/1.1 nor HTTP/2; from a trusted proxy (X-Forwarded-For or
    Forwarded) they say the client the walk found."""
    forged = b"".join(b"%s: 6.6.6.6\r\n" % name.encode() for name in names)
    untrusted = launcher.gateway(gateway_conf([route("all", ["/p"], h1_up.url)],
                                              http2={"h2c": True}))
    answer = raw_request(untrusted.port, b"GET /p HTTP/1.1\r\nHost: a\r\n%sConnection: close"
                                         b"\r\n\r\n" % forged)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    for name in names:
        assert h1_up.header(-1, name) == [], (name, h1_up.heads[-1])
    client = RawH2(untrusted.port)              # HTTP/2 alike
    try:
        sid = client.request("/p", authority="a",
                             headers=[(name.lower(), "6.6.6.6") for name in names])
        assert client.response(sid)[0] == 200
    finally:
        client.close()
    for name in names:
        assert h1_up.header(-1, name) == [], (name, h1_up.heads[-1])
    for server, named in (({}, b"X-Forwarded-For: 203.0.113.7"),
                          ({"real_ip_header": "Forwarded"}, b"Forwarded: for=203.0.113.7")):
        trusted = launcher.gateway(gateway_conf(
            [route("all", ["/p"], h1_up.url)],
            server={"trusted_proxies": ["127.0.0.1/32"], **server}))
        answer = raw_request(trusted.port, b"GET /p HTTP/1.1\r\nHost: a\r\n%s\r\n%sConnection: "
                                           b"close\r\n\r\n" % (named, forged))
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
        for name in names:
            assert h1_up.header(-1, name) == ["203.0.113.7"], (name, h1_up.heads[-1])
