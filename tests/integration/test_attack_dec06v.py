"""Review of the forwarded-header commits (attack pass dec06v): other spellings of the
headers a proxy in front says.

The gateway drops X-Forwarded-Scheme, -Ssl, -Prefix and the like from anyone but a trusted
proxy, and holds a trusted proxy's to rules (docs/security.md), because upstreams build links
from them. Three spellings that upstreams read the same way passed from anyone as sent:

- X-Scheme: Tornado's ``xheaders=True`` reads it before X-Forwarded-Proto, as does the Flask
  ``ReverseProxied`` recipe; ingress-nginx writes it.
- X-Script-Name: the ``ReverseProxied`` recipe makes it SCRIPT_NAME, the prefix of every link
  ``url_for`` builds: ``//evil.example`` there is a link to another host, as
  X-Forwarded-Prefix's was (test_forwarded_dec06r.py).
- X-Forwarded-Protocol: gunicorn's default ``secure_scheme_headers`` (value ``ssl``), and
  Django set-ups whose SECURE_PROXY_SSL_HEADER names it.
"""
from ..conftest import gateway_conf, route
from ..h2client import RawH2
from .test_attack_pass_dec03 import raw_request

TRUSTED = {"trusted_proxies": ["127.0.0.1/32"]}
NAMES = ["X-Scheme", "X-Script-Name", "X-Forwarded-Protocol"]


def ask(port, values):
    extra = b"".join(b"%s: %s\r\n" % (name.encode(), value.encode())
                     for name, value in zip(NAMES, values))
    answer = raw_request(port, b"GET /p HTTP/1.1\r\nHost: good.example\r\n" + extra +
                         b"Connection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]


def arrived(up):
    return [(up.header(-1, name) or [None])[-1] for name in NAMES]


def test_a_clients_x_scheme_script_name_and_forwarded_protocol_are_dropped(launcher, h1_up):
    gw = launcher.gateway(gateway_conf([route("all", ["/p"], h1_up.url)],
                                       http2={"h2c": True}))
    ask(gw.port, ["https", "//evil.example", "ssl"])
    assert arrived(h1_up) == [None] * 3, h1_up.heads[-1]
    client = RawH2(gw.port)                     # an HTTP/2 client alike
    try:
        sid = client.request("/p", authority="good.example",
                             headers=[("x-scheme", "https"), ("x-script-name", "//evil.example"),
                                      ("x-forwarded-protocol", "ssl")])
        assert client.response(sid)[0] == 200
    finally:
        client.close()
    assert arrived(h1_up) == [None] * 3, h1_up.heads[-1]


def test_a_trusted_proxys_x_scheme_script_name_and_forwarded_protocol_are_held_to_rules(
        launcher, h1_up):
    gw = launcher.gateway(gateway_conf([route("all", ["/p"], h1_up.url)], server=TRUSTED))
    cases = [  # values sent, in NAMES' order -> what the upstream gets (None: dropped)
        (["HTTPS", "/shop", "ssl"], ["https", "/shop", "ssl"]),
        (["http", "/a/b", "https"], ["http", "/a/b", "https"]),
        (["javascript", "//evil.example", "evil"], [None] * 3),
        (["https", "/,//evil.example", "ssl x"], ["https", None, None]),
    ]
    for sent, want in cases:
        ask(gw.port, sent)
        assert arrived(h1_up) == want, (sent, h1_up.heads[-1])


def test_behind_a_proxy_that_speaks_forwarded_a_clients_forwarded_protocol_is_dropped(
        launcher, h1_up):
    """Such a proxy may pass a client's X-Forwarded-* through unread: -Protocol is one of
    them, as -Scheme and -Ssl are; X-Scheme and X-Script-Name, -Scheme's and -Prefix's other
    spellings, too (test_attack_dec06x.py)."""
    gw = launcher.gateway(gateway_conf([route("all", ["/p"], h1_up.url)],
                                       server={**TRUSTED, "real_ip_header": "Forwarded"}))
    ask(gw.port, ["https", "/shop", "ssl"])
    assert arrived(h1_up) == [None] * 3, h1_up.heads[-1]
    ask(gw.port, ["javascript", "//evil.example", "https"])
    assert arrived(h1_up) == [None] * 3, h1_up.heads[-1]
