"""A trusted proxy's X-Forwarded-Port, -Prefix and X-Real-IP, held to rules as its -Host and
-Proto are (test_attack_dec06m.py): a load balancer trusted for the client's address passes
a client's copies through unread, and upstreams build links (Spring's ForwardedHeaderFilter,
werkzeug's ProxyFix) and allow-lists from them. Before, ``X-Forwarded-Prefix: //evil.example``
(a link to another host), ``X-Forwarded-Port: 0, x`` and ``X-Real-IP: 6.6.6.6`` went upstream
as sent."""
from ..conftest import gateway_conf, route
from ..h2client import RawH2
from .test_attack_pass_dec03 import raw_request

TRUSTED = {"trusted_proxies": ["127.0.0.1/32"]}


def test_a_trusted_proxys_port_prefix_and_real_ip_are_held_to_rules(launcher, h1_up):
    gw = launcher.gateway(gateway_conf([route("all", ["/p"], h1_up.url)], server=TRUSTED,
                                       http2={"h2c": True}))
    ask = (b"GET /p HTTP/1.1\r\nHost: good.example\r\nX-Forwarded-Port: %s\r\n"
           b"X-Forwarded-Prefix: %s\r\nX-Forwarded-For: 203.0.113.7\r\n"
           b"X-Real-IP: 6.6.6.6\r\nConnection: close\r\n\r\n")
    cases = [  # (X-Forwarded-Port, -Prefix) sent -> what the upstream gets
        ((b"8443", b"/shop"), (["8443"], ["/shop"])),
        ((b"80, 8443", b"/a/b-c_d.e"), (["8443"], ["/a/b-c_d.e"])),
        ((b"0", b"//evil.example"), ([], [])),
        ((b"65536", b"/\\evil.example"), ([], [])),
        ((b"x", b"evil.example"), ([], [])),
        ((b"1e3", b"/a b"), ([], [])),
    ]
    for (port, prefix), want in cases:
        answer = raw_request(gw.port, ask % (port, prefix))
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
        got = (h1_up.header(-1, "X-Forwarded-Port"), h1_up.header(-1, "X-Forwarded-Prefix"))
        assert got == want, (port, prefix, h1_up.heads[-1])
        # the client the X-Forwarded-For walk found, not the one the client named
        assert h1_up.header(-1, "X-Real-IP") == ["203.0.113.7"], h1_up.heads[-1]
    client = RawH2(gw.port)                     # an HTTP/2 client alike
    try:
        sid = client.request("/p", authority="good.example",
                             headers=[("x-forwarded-prefix", "//evil.example"),
                                      ("x-forwarded-for", "203.0.113.9"),
                                      ("x-real-ip", "6.6.6.6")])
        assert client.response(sid)[0] == 200
    finally:
        client.close()
    assert h1_up.header(-1, "X-Forwarded-Prefix") == [], h1_up.heads[-1]
    assert h1_up.header(-1, "X-Real-IP") == ["203.0.113.9"], h1_up.heads[-1]


def test_a_trusted_proxys_scheme_ssl_and_host_spellings_are_held_to_rules(launcher, h1_up):
    """Rack reads X-Forwarded-Scheme and -Ssl, IIS ARR and others X-Original-Host and X-Host,
    to build links: they passed from a trusted proxy as the client sent them."""
    gw = launcher.gateway(gateway_conf([route("all", ["/p"], h1_up.url)], server=TRUSTED))
    names = ["X-Forwarded-Scheme", "X-Forwarded-Ssl", "Front-End-Https", "X-Forwarded-Server",
             "X-Host", "X-Original-Host"]
    cases = [  # values sent, in names' order -> what the upstream gets (None: dropped)
        (["HTTPS", "On", "off", "Edge-1.Example.", "Shop.Example:8443", "a.example"],
         ["https", "on", "off", "edge-1.example", "shop.example:8443", "a.example"]),
        (["javascript", "yes", "1", "a b", "evil.example/x?", "a@evil.example"],
         [None] * 6),
    ]
    for sent, want in cases:
        extra = b"".join(b"%s: %s\r\n" % (name.encode(), value.encode())
                         for name, value in zip(names, sent))
        answer = raw_request(gw.port, b"GET /p HTTP/1.1\r\nHost: good.example\r\n" + extra +
                             b"Connection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
        got = [(h1_up.header(-1, name) or [None])[-1] for name in names]
        assert got == want, (sent, h1_up.heads[-1])


def test_a_trusted_proxy_that_names_the_client_in_x_real_ip_alone_is_kept(launcher, h1_up):
    """An nginx set to write X-Real-IP $remote_addr and no X-Forwarded-For says who the
    client is there: made to say the walk's client (the proxy itself, for want of an
    X-Forwarded-For), the upstream lost it (a review of 51f43d6). An Apache's
    X-Forwarded-Server list passes whole."""
    gw = launcher.gateway(gateway_conf([route("all", ["/p"], h1_up.url)], server=TRUSTED))
    answer = raw_request(gw.port, b"GET /p HTTP/1.1\r\nHost: good.example\r\n"
                                  b"X-Real-IP: 203.0.113.7\r\nTrue-Client-IP: 203.0.113.7\r\n"
                                  b"X-Forwarded-Server: Proxy1.example, proxy2.example\r\n"
                                  b"Connection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert h1_up.header(-1, "X-Real-IP") == ["203.0.113.7"], h1_up.heads[-1]
    assert h1_up.header(-1, "True-Client-IP") == ["203.0.113.7"], h1_up.heads[-1]
    assert h1_up.header(-1, "X-Forwarded-Server") == ["proxy1.example, proxy2.example"]
