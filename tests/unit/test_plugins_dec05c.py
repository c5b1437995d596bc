"""The pure parts of the 2026-12-05 (h5) attack pass on the request-shaping plugins
(tests/integration/test_plugins_attack_dec05c.py has the defects through real processes):
which cors configs are refused, which origins a pattern lets in, where the router sends a
CORS preflight, what rewrite's response_body drops, which redirect configs are refused and
how key_auth keeps a key it never looked at out of the access log."""
import pytest

from gwserver.core.chain import build_chain
from gwserver.core.context import RequestContext, ResponseHead
from gwserver.errors import ConfigError, MethodNotAllowed
from gwserver.plugins import cors, key_auth, load_registry, rewrite
from .helpers import router_for

CORS = {"allow_origins": ["https://app.example"]}


def chain_conf(plugins):
    (plugin, conf), = build_chain("route r", plugins, None, load_registry()).steps
    return conf


@pytest.mark.parametrize("conf, problem", [
    ({"allow_origins": ["null"], "allow_credentials": True}, "any site can send Origin: null"),
    ({"allow_origin_patterns": [".*"], "allow_credentials": True}, "matches any origin"),
    ({"allow_origin_patterns": ["https://.*"], "allow_credentials": True},
     "matches any origin (https://attacker.invalid too)"),
    ({"allow_origin_patterns": ["http://[^/]+"], "allow_credentials": True},
     "matches any origin (http://attacker.invalid too)"),
])
def test_origins_any_site_can_send_are_refused_with_credentials(conf, problem):
    with pytest.raises(ConfigError) as exc:
        build_chain("route r", {"cors": conf}, None, load_registry())
    assert "route r: plugins.cors:" in str(exc.value) and problem in str(exc.value)


def test_the_null_origin_is_allowed_by_name_only():
    """... and what names its sites, or asks for no credentials, is taken."""
    for conf, origin, expected in [
            ({"allow_origin_patterns": [".*"]}, "null", False),
            ({"allow_origin_patterns": [".*"]}, "https://a.example", True),
            ({"allow_origins": ["null"]}, "null", True),
            ({"allow_origins": ["*"]}, "null", True),
            ({"allow_origin_patterns": [r"https://([a-z0-9-]+\.)*example\.com"],
              "allow_credentials": True}, "https://eu.example.com", True)]:
        assert cors.allowed(chain_conf({"cors": conf}), origin) is expected, (conf, origin)


def head_of(pairs, status=200):
    return ResponseHead(status, [(k.encode(), v.encode()) for k, v in pairs])


def ctx_with(headers=(), method="GET"):
    ctx = RequestContext("203.0.113.7", "http")
    ctx.method = method
    for name, value in headers:
        ctx.headers.append((name.encode(), value.encode()))
        ctx.header_map[name.lower().encode()] = value.encode()
    return ctx


def test_an_upstreams_cors_headers_are_dropped_and_public_routes_say_star_to_all():
    conf = chain_conf({"cors": CORS})
    head = head_of([("Access-Control-Allow-Credentials", "true"),
                    ("access-control-allow-origin", "https://evil.example"), ("X-A", "1")])
    ctx = ctx_with([("Origin", "https://app.example")])
    assert cors.access(conf, ctx) is None
    cors.response(conf, ctx, head)
    assert head.headers == [(b"X-A", b"1"), (b"Access-Control-Allow-Origin",
                                            b"https://app.example"), (b"Vary", b"Origin")]
    public = chain_conf({"cors": {"allow_origins": ["*"]}})
    head = head_of([])
    cors.response(public, ctx_with(), head)
    assert head.headers == [(b"Access-Control-Allow-Origin", b"*")]


ROUTES = [
    {"id": "api", "paths": ["/api/*rest"], "methods": ["GET", "POST"],
     "plugins": {"cors": dict(CORS)}},
    {"id": "api-other", "paths": ["/api/*rest"]},
    {"id": "post", "paths": ["/post"], "methods": ["POST"], "plugins": {"cors": dict(CORS)}},
    {"id": "plain", "paths": ["/plain"], "methods": ["POST"]},
]
PREFLIGHT = {b"origin": b"https://app.example", b"access-control-request-method": b"POST"}


def test_a_preflight_goes_to_the_route_its_method_would_take_when_that_answers_it():
    router = router_for([dict(r) for r in ROUTES])
    for path, headers, expected in [
            ("/api/x", PREFLIGHT, "api"),
            ("/post", PREFLIGHT, "post"),
            ("/api/x", {**PREFLIGHT, b"access-control-request-method": b"DELETE"},
             "api-other"),
            ("/api/x", {b"origin": b"https://app.example"}, "api-other"),     # no preflight
            ("/post", {b"access-control-request-method": b"POST"}, None),      # no Origin
            ("/plain", PREFLIGHT, None)]:                                       # no cors there
        for _ in range(2):          # a preflight's match is never remembered for the next
            if expected is None:
                with pytest.raises(MethodNotAllowed):
                    router.match("OPTIONS", "x", path, headers)
            else:
                assert router.match("OPTIONS", "x", path, headers)[0].id == expected, path
    assert router.match("OPTIONS", "x", "/api/x", {})[0].id == "api-other"


def test_a_replaced_body_drops_what_the_upstream_said_of_its_own():
    conf = chain_conf({"rewrite": {"response_body": "gone",
                                   "response_headers": {"set": {"ETag": "\"mine\""}}}})
    head = head_of([("Content-Encoding", "gzip"), ("ETag", "\"up\""), ("Digest", "sha-256=x"),
                    ("Content-Type", "text/html")], status=404)
    rewrite.response(conf, ctx_with(), head)
    assert head.headers == [(b"Content-Type", b"text/html"), (b"ETag", b"\"mine\"")]
    kept = head_of([("Content-Encoding", "gzip")], status=304)         # no body replaced
    rewrite.response(conf, ctx_with(), kept)
    assert kept.headers == [(b"Content-Encoding", b"gzip"), (b"ETag", b"\"mine\"")]


def test_an_https_redirect_naming_two_ports_is_refused():
    with pytest.raises(ConfigError, match="names a port and https_port 8443 another"):
        build_chain("route r", {"redirect": {"http_to_https": True, "host": "a.example:8443",
                                             "https_port": 8443}}, None, load_registry())
    assert chain_conf({"redirect": {"http_to_https": True, "host": "a.example:8443"}})


def test_key_auth_takes_a_key_out_of_the_query_in_finish_when_it_did_not_run():
    conf = chain_conf({"key_auth": {"query": "apikey"}})
    assert key_auth.phases(conf) == {"access", "finish"}
    ctx = ctx_with()
    ctx.query = "a=1&ApiKey=k1;api%6Bey=k2&b=2"
    key_auth.finish(conf, ctx, 301)
    assert ctx.query == "a=1&b=2"
    assert key_auth.phases(chain_conf({"key_auth": {}})) == {"access"}
    assert key_auth.phases(chain_conf({"key_auth": {"query": "apikey",
                                                    "hide_credentials": False}})) == {"access"}
