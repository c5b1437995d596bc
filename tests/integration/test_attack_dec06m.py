"""Attack pass on every header line the gateway writes from a value a client may choose: the
built-in plugins' (headers, rewrite, cors, jwt, key_auth, redirect, fault, split, grpc_web)
and the core's forwarded headers, both protocols on both sides.

1. A trusted proxy's X-Forwarded-Host and X-Forwarded-Proto went upstream as they came, held
   to nothing: a proxy that passes a client's copy through unread (nginx does unless told) let
   ``X-Forwarded-Host: evil.example/x?`` or ``a@evil.example`` and ``X-Forwarded-Proto:
   javascript`` reach upstreams that build their links, redirects and password-reset mails
   from them, where a ``Host`` so spelt is a 400 and a ``Forwarded`` ``proto=`` other than
   http or https is ignored. Now they are held to a Host's rules (normalised: lower case,
   no trailing dot) and to http/https, the last of a list being the nearest proxy's; a value
   that is neither is replaced by the gateway's own view, as an untrusted peer's is. Both
   client protocols, both upstream protocols, and for route conditions alike.
2. An installed (third-party) plugin's edits were checked in ``ctx.headers`` alone (the
   previous pass), while the core writes the request line from ``ctx.method``, ``ctx.path``
   and ``ctx.query``, the upstream's Host from ``ctx.upstream_host_header`` and X-Request-ID,
   upstream and in the client's answer, from ``ctx.request_id``, each as it is. A plugin
   that put a client's decoded value in any of them let the client write header lines of
   its own upstream, and split the client's answer (``X-Request-ID: a`` then
   ``X-Injected: yes``). Now such a value is a 500 naming the plugin, whose answer carries
   no X-Request-ID of its making; the built-ins' values are not checked (no cost).
3. jwt's ``forward_claims`` forwarded a claim with a space at an end as it was: an
   upstream's parser (and the h2 library, sending to an HTTP/2 upstream) takes the spaces
   off, so a token whose ``sub`` is " admin" (a name its owner chose at the identity
   provider) reached the upstream as ``X-User-Id: admin``. Such a claim now sets no header,
   as one with a control character already did (a client's own copy is removed still).
"""
import time

from ..conftest import gateway_conf, installed_plugin, route
from ..h2client import RawH2
from .test_attack_pass_dec03 import raw_request

TRUSTED = {"trusted_proxies": ["127.0.0.1/32"]}


def _h2_route(h2_up):
    return {"id": "h2", "paths": ["/h2/*rest"],
            "upstream": {"protocol": "h2", "targets": [{"url": f"http://127.0.0.1:{h2_up.port}"}]}}


def test_a_trusted_proxys_forwarded_host_and_proto_are_held_to_a_hosts_rules(launcher, h1_up,
                                                                              h2_up):
    gw = launcher.gateway(gateway_conf([
        _h2_route(h2_up),
        route("evil", ["/cond"], h1_up.url, headers={"X-Forwarded-Host": "evil.example/x"}),
        route("all", ["/p"], h1_up.url)], server=TRUSTED, http2={"h2c": True}))
    ask = (b"GET /p HTTP/1.1\r\nHost: good.example\r\nX-Forwarded-Host: %s\r\n"
           b"X-Forwarded-Proto: %s\r\nConnection: close\r\n\r\n")
    cases = [  # (X-Forwarded-Host, -Proto) sent -> what the upstream gets
        ((b"evil.example/x?y=1", b"javascript"), ("good.example", "http")),
        ((b"a@evil.example", b"https x"), ("good.example", "http")),
        ((b'"><script>', b"ftp"), ("good.example", "http")),
        ((b"a b", b"HTTP"), ("good.example", "http")),
        ((b"Shop.Example.:8443", b"HTTPS"), ("shop.example:8443", "https")),
        ((b"evil.example, shop.example", b"http, https"), ("shop.example", "https")),
    ]
    for (host, proto), (want_host, want_proto) in cases:
        answer = raw_request(gw.port, ask % (host, proto))
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
        sent = (h1_up.header(-1, "X-Forwarded-Host"), h1_up.header(-1, "X-Forwarded-Proto"))
        assert sent == ([want_host], [want_proto]), (host, proto, h1_up.heads[-1])
    # a route condition sees the value the upstream gets, not the one that came
    answer = raw_request(gw.port, b"GET /cond HTTP/1.1\r\nHost: good.example\r\n"
                                  b"X-Forwarded-Host: evil.example/x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 404 "), answer[:300]
    # an HTTP/2 client, to an HTTP/2 upstream
    client = RawH2(gw.port)
    try:
        sid = client.request("/h2/x", authority="good.example",
                             headers=[("x-forwarded-host", "evil.example/x y"),
                                      ("x-forwarded-proto", "gopher")])
        assert client.response(sid)[0] == 200
    finally:
        client.close()
    fields = dict(h2_up.requests[-1])
    assert (fields["x-forwarded-host"], fields["x-forwarded-proto"]) == \
        ("good.example", "http"), h2_up.requests[-1]


# -- 2. a third-party plugin's request line, Host and request id ------------------------------

STEER = '''
from gwserver.core.schema import Schema


class steer:
    """Copies the client's ?v= (decoded) where the path's last segment says, in its access
    phase or (for the request id) its response phase."""
    NAME, PRIORITY, SCHEMA = "steer", 500, Schema()

    @staticmethod
    def access(conf, ctx):
        value = ctx.value_of("query", "v")
        what = ctx.path.rsplit("/", 1)[-1]
        if value is None or what == "late-id":
            return None
        if what == "id":
            ctx.request_id = value
        elif what == "query":
            ctx.query = value
        elif what == "host":
            ctx.upstream_host_header = value.encode("latin-1")
        elif what == "path":
            ctx.path = "/" + value
        elif what == "method":
            ctx.method = value
        return None

    @staticmethod
    def response(conf, ctx, head):
        if ctx.path.endswith("/late-id"):
            ctx.request_id = ctx.value_of("query", "v")
'''


def install_steer(tmp_path):
    return installed_plugin(tmp_path, "gwsteer", STEER, "steer = gwsteer:steer\n")


def test_a_third_party_plugins_request_line_host_and_request_id_cannot_carry_cr_lf(
        launcher, h1_up, tmp_path):
    gw = launcher.gateway(gateway_conf([route("s", ["/*rest"], h1_up.url,
                                              plugins={"steer": {}})]),
                          env=install_steer(tmp_path))
    ask = b"GET /s/%s?v=%s HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    # a value that fits goes through as the plugin set it
    answer = raw_request(gw.port, ask % (b"id", b"my-id-1"))
    assert answer.startswith(b"HTTP/1.1 200 ") and b"\r\nX-Request-ID: my-id-1\r\n" in answer
    assert h1_up.header(-1, "X-Request-ID") == ["my-id-1"], h1_up.heads[-1]
    sent = len(h1_up.heads)
    for what in (b"id", b"query", b"host", b"path", b"method"):
        answer = raw_request(gw.port, ask % (what, b"a%0d%0aX-Injected:%20yes"))
        assert answer.startswith(b"HTTP/1.1 500 "), (what, answer[:400])
        assert b"X-Injected" not in answer.partition(b"\r\n\r\n")[0], (what, answer[:400])
    assert len(h1_up.heads) == sent, h1_up.heads[sent:]     # nothing went upstream
    # set in the response phase, it would split the client's answer
    answer = raw_request(gw.port, ask % (b"late-id", b"a%0d%0aX-Injected:%20yes"))
    assert answer.startswith(b"HTTP/1.1 500 "), answer[:400]
    assert b"X-Injected" not in answer.partition(b"\r\n\r\n")[0], answer[:400]
    # (the log names the plugin: the first of these 500s, a route's are throttled)
    assert "plugin steer: the request id it set" in gw.log()


# -- 3. a JWT claim with a space at an end -----------------------------------------------------

JWT_SECRET = "attack-dec06m-secret-0123456789abcdef"


def test_a_claim_with_a_space_at_an_end_is_not_forwarded_as_another_user(launcher, h1_up,
                                                                          h2_up):
    import jwt as pyjwt
    plugins = {"jwt": {"algorithms": ["HS256"], "secret": JWT_SECRET,
                       "forward_claims": {"sub": "X-User-Id"}}}
    gw = launcher.gateway(gateway_conf([
        {**_h2_route(h2_up), "plugins": plugins},
        route("all", ["/p"], h1_up.url, plugins=plugins)], http2={"h2c": True}))

    def ask(path, sub):
        token = pyjwt.encode({"sub": sub, "exp": int(time.time()) + 600}, JWT_SECRET, "HS256")
        return raw_request(gw.port, b"GET %s HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer %s\r\n"
                                    b"X-User-Id: admin\r\nConnection: close\r\n\r\n"
                           % (path, token.encode()))

    assert ask(b"/p", "alice").startswith(b"HTTP/1.1 200 ")
    assert h1_up.header(-1, "X-User-Id") == ["alice"], h1_up.heads[-1]
    for sub in (" admin", "admin ", "  admin  "):
        # an upstream's parser strips the spaces (h2 strips them as it sends): "admin"
        assert ask(b"/p", sub).startswith(b"HTTP/1.1 200 ")
        assert h1_up.header(-1, "X-User-Id") == [], (sub, h1_up.heads[-1])
        assert ask(b"/h2/p", sub).startswith(b"HTTP/1.1 200 ")
        assert "x-user-id" not in dict(h2_up.requests[-1]), (sub, h2_up.requests[-1])
