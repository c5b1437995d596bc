"""A review, as an attacker, of the two newest commits of 2026-12-05 (901cc8d joint CORS
preflights on CORS-safelisted headers, 1e1517e hang-ups on HTTP/2 upstreams and redis URLs),
through real gateways and upstreams (helper h8). Each test failed on 1e1517e.

1. 901cc8d counted every CORS-safelisted name (Accept, Accept-Language, Content-Language,
   Content-Type, Range) as announced by every preflight, whatever value a route's condition
   on it wants. A page can send such a header unannounced only with a safelisted value:
   ``Content-Type: application/grpc-web+proto`` (or ``application/json``) makes the browser
   name it in Access-Control-Request-Headers. So a gRPC-Web route on that Content-Type,
   beside the REST route of the same paths, was asked to consent to the REST page's DELETE
   and PUT preflights, which no request of its can follow: its grpc_web allows POST alone
   and refused them (403), and the REST page broke. A condition on a safelisted name now
   counts as announced only for a value the Fetch standard safelists (a route on
   ``Content-Type = "text/plain"`` is still asked).
2. On a path where a route matches on headers or claims, 901cc8d said
   ``Access-Control-Max-Age: 0`` even when that route is the only one there: a gRPC-Web
   route on ``Content-Type = "application/grpc-web+proto"`` alone on its path had its
   browser send a preflight before every call (one more round trip each), though a request
   the cached answer covers can reach that route or none. Such a path keeps the route's own
   max_age.
3. 1e1517e refused (`gwserver check`, a reload) a redis URL with a password and an "@" in
   the value of one of redis-py's query options or in a unix:// socket's path:
   ``rediss://:pw@10.0.0.7:6380/0?ssl_ca_certs=/run/credentials/gwserver@main.service/ca.pem``
   (the directory systemd's LoadCredential= gives a template unit's instance), which redis-py
   reads as written, as "a user part read as a host" (without a password such a URL was
   refused whenever a port came before the "@"); and ``--dump`` and log texts masked it to
   that "@", hiding the host and port (``rediss://***@main.service/ca.pem``). An "@" in a
   query made of redis-py's options, or in a unix:// path, now ends no user part
   (tests/unit/test_review_attack_dec05k.py has more of them).

Held up: a preflight on a path without header or claims routes (Max-Age, Allow-* and Vary
as before); an ``Accept``-versioned API whose versions all run cors (204, Max-Age 0, the
first one's Allow-Methods, each route having refused what it does not allow itself); the
hang-up watch of the h2 head's wait (paired with its unwatch on every exit: the finally of
await_head runs on GreenletExit and on a retry's next target; a 1xx is read inside
``stream.head``); an HTTP/2 client's reset during an h2 upstream's head wait (its stream's
greenlet is killed with StreamKilled, which attempt's ``except BaseException`` answers by
resetting the upstream stream); ``raise_if_gone`` before a retry (outside the try that
counts ``outstanding``); ``quota``'s lru_cache (a tuple of ints, keyed by floats).
"""
from ..conftest import gateway_conf, route
from ..pki import CA
from .test_review_attack_dec05i import PARTNER, header_of, preflight, status_of
from .test_review_attack_dec05j import check_dump

GRPC_WEB = b"application/grpc-web+proto"


def h2_url(up):
    return f"http://127.0.0.1:{up.port}"


def grpc_route(id, paths, h2_url, **extra):
    return {"id": id, "paths": paths,
            "upstream": {"targets": [{"url": h2_url}], "protocol": "h2"},
            "headers": {"Content-Type": GRPC_WEB.decode()},
            "plugins": {"grpc_web": {"allow_origins": [PARTNER.decode()]}}, **extra}


# -- 1. a safelisted name with a value no page sends unannounced ------------------------------

def test_a_grpc_web_route_on_its_content_type_is_not_asked_about_a_rest_pages_delete(
        launcher, h1_up, h2_up):
    origin = [PARTNER.decode()]
    gw = launcher.gateway(gateway_conf([
        grpc_route("grpc", ["/svc/*rest"], h2_url(h2_up)),
        route("rest", ["/svc/*rest"], h1_up.url,
              plugins={"cors": {"allow_origins": origin, "allow_headers": ["*"]}}),
        # a value a page does send unannounced: that route is still asked (901cc8d)
        route("internal", ["/form/*rest"], h1_up.url, headers={"Content-Type": "text/plain"}),
        route("public", ["/form/*rest"], h1_up.url, plugins={"cors": {"allow_origins": origin}}),
    ]))
    # the REST page's fetch(url, {method: "DELETE"}) and a PUT with X-Requested-With: no
    # Content-Type it may send unannounced leads to the gRPC-Web route
    for method, announced in ((b"DELETE", None), (b"PUT", b"x-requested-with")):
        answer = preflight(gw.port, method=method, announced=announced, path=b"/svc/items/1")
        assert status_of(answer) == 204, answer
        assert header_of(answer, b"access-control-allow-origin") == PARTNER
    # the browser's gRPC-Web call announces Content-Type: both routes consent, as before
    answer = preflight(gw.port, method=b"POST", path=b"/svc/items/1",
                       announced=b"content-type,x-grpc-web,x-user-agent")
    assert status_of(answer) == 204, answer
    # a JSON PUT announces Content-Type too: the gRPC-Web route (POST only) refuses it
    answer = preflight(gw.port, method=b"PUT", announced=b"content-type", path=b"/svc/items/1")
    assert status_of(answer) == 403, answer
    answer = preflight(gw.port, path=b"/form/1")
    assert status_of(answer) == 403, answer
    assert not h1_up.heads and not h2_up.requests


# -- 2. a preflight before every call of the only route on its path ---------------------------

def test_the_only_route_on_a_path_keeps_its_preflight_cache(launcher, h1_up, h2_up):
    gw = launcher.gateway(gateway_conf([
        grpc_route("grpc", ["/orders.v1.Orders/*method"], h2_url(h2_up)),
        route("other", ["/api/*rest"], h1_up.url, headers={"X-Tenant": "a"})]))
    answer = preflight(gw.port, method=b"POST", path=b"/orders.v1.Orders/Get",
                       announced=b"content-type,x-grpc-web,x-user-agent")
    assert status_of(answer) == 204, answer
    assert header_of(answer, b"access-control-allow-origin") == PARTNER
    assert header_of(answer, b"access-control-max-age") == b"600", answer
    # another origin's is refused still
    assert status_of(preflight(gw.port, method=b"PUT", path=b"/orders.v1.Orders/Get",
                               announced=b"content-type")) == 403
    assert not h2_up.requests


# -- 3. an "@" in a query option's value ------------------------------------------------------

def test_a_redis_url_with_an_at_sign_in_a_query_option_passes_check_and_shows_its_host(
        tmp_path):
    # (a file check loads: a systemd credentials directory's "@" in a path of the test's)
    ca = tmp_path / "credentials" / "gwserver@main.service" / "redis-ca.pem"
    ca.parent.mkdir(parents=True)
    ca.write_bytes(CA(tmp_path).cert_path.read_bytes())
    for url, shown in (
            (f"rediss://:hunter3-pw@10.0.0.7:6380/0?ssl_ca_certs={ca}",
             f"10.0.0.7:6380/0?ssl_ca_certs={ca}"),
            ("unix://:hunter3-pw@/run/redis@main/redis.sock", "@/run/redis@main/redis.sock")):
        code, out = check_dump(tmp_path, url)
        assert code == 0 and "url = " in out, out
        assert shown in out and "hunter3-pw" not in out, out
