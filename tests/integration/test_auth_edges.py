"""Who the gateway lets through, against real gateways and upstreams: found by the eighth
attack pass (helper-27, on 6231b68). Each test failed on that commit."""
import base64
import http.client
import json
import time

import redis as redis_client

from gwserver.plugins.key_auth import hash_key

from ..conftest import free_port, gateway_conf, route

PARTNER_KEY, FRIEND_KEY = "ak_partner_only_from_10_net_1234", "ak_friend_from_anywhere_5678"
ADMIN_TOKEN = "s3cret-admin-token"


def get(port, path, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body


def upstream_saw(body):
    """The lower-case headers the test upstream echoed."""
    return {name.lower(): value for name, value in json.loads(body)["headers"]}


def test_a_consumers_own_plugins_that_rank_above_its_auth_plugin_run(launcher, upstream):
    """A consumer's ip_restriction (1200), headers (1000), cors... sort before key_auth
    (950): the chain went on after key_auth, so they never ran. Partner's key "only from
    10.0.0.0/8" was good from anywhere."""
    gw = launcher.gateway(gateway_conf(
        [route("api", ["/api/*rest"], upstream.url, plugins={"key_auth": {}})],
        consumers={
            "partner": {"credentials": {"key_auth": {"key_hash": hash_key(PARTNER_KEY)}},
                        "plugins": {"ip_restriction": {"allow": ["10.0.0.0/8"]}}},
            "friend": {"credentials": {"key_auth": {"key_hash": hash_key(FRIEND_KEY)}},
                       "plugins": {"headers": {"request": {"set": {"X-Friend": "yes"}}}}}}))
    status, body = get(gw.port, "/api/echo", {"X-API-Key": PARTNER_KEY})
    assert status == 403, body
    status, body = get(gw.port, "/api/echo", {"X-API-Key": FRIEND_KEY})
    assert status == 200
    seen = upstream_saw(body)
    assert seen["x-friend"] == "yes" and seen["x-consumer-id"] == "friend"


def test_an_exact_protected_route_covers_its_path_with_a_trailing_slash(launcher, upstream):
    """/admin (key_auth) beside a public /*rest: nginx and most frameworks serve /admin/ as
    /admin, and it went to the public route."""
    gw = launcher.gateway(gateway_conf([
        route("admin", ["/admin"], upstream.url, plugins={"key_auth": {}}),
        route("public", ["/*rest"], upstream.url)]))
    for path in ("/admin", "/admin/", "/admin/?x=1", "/admin//"):
        assert get(gw.port, path)[0] == 401, path
    assert get(gw.port, "/admin/more")[0] == 200        # a path below it is not the path


def test_client_copies_of_gateway_headers_steer_no_route_and_no_limit(launcher, upstream):
    """X-Consumer-* and (from an untrusted peer) X-Forwarded-* were dropped from what goes
    upstream but kept for route conditions and limit keys: a forged X-Consumer-Groups
    matched a route meant for a group, a new X-Forwarded-For escaped a limit keyed on it."""
    gw = launcher.gateway(gateway_conf([
        route("xff", ["/xff/*rest"], upstream.url, plugins={"rate_limit": {
            "rate": 2, "per": 3600, "burst": 2, "key": "header:X-Forwarded-For"}}),
        route("internal", ["/svc/*rest"], upstream.url, priority=10,
              headers={"X-Consumer-Groups": "internal"}),
        route("public", ["/svc/*rest"], upstream.url, plugins={"key_auth": {}})]))
    codes = [get(gw.port, "/xff/echo", {"X-Forwarded-For": f"10.{i}.0.1"})[0]
             for i in range(5)]
    assert codes == [200, 200, 429, 429, 429]
    assert get(gw.port, "/svc/echo", {"X-Consumer-Groups": "internal"})[0] == 401
    assert get(gw.port, "/svc/echo", {"X-Consumer-ID": "x", "X-Consumer-Groups": "internal"})[0] \
        == 401


def test_wrong_admin_tokens_never_lock_the_right_one_out(launcher, upstream):
    """Five wrong tokens a minute from an address made the right token a 429 too: any local
    process (they all share 127.0.0.1) could keep the metrics scraper out."""
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)],
                                       admin={"token": ADMIN_TOKEN}))
    right = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert get(gw.admin_port, "/metrics", right)[0] == 200
    wrong = [get(gw.admin_port, "/admin/routes", {"Authorization": f"Bearer guess{i}"})[0]
             for i in range(7)]
    assert wrong[:5] == [401] * 5 and wrong[5:] == [429, 429]     # guessing is still slowed
    assert get(gw.admin_port, "/metrics", right)[0] == 200


def test_a_header_limit_key_keeps_no_secret_in_redis(launcher, upstream):
    """header:NAME keys were stored as sent when 64 characters or fewer: an API key sat in
    Redis key names."""
    redis = launcher.redis()
    gw = launcher.gateway(gateway_conf([route("lim", ["/lim"], upstream.url, plugins={
        "rate_limit": {"rate": 5, "per": 3600, "burst": 5, "key": "header:X-Token"}})],
        redis={"url": redis.url}))
    assert get(gw.port, "/lim", {"X-Token": "tok-secret-123"})[0] == 200
    keys = [key.decode() for key in redis_client.Redis.from_url(redis.url).keys("*")]
    assert keys and not any("tok-secret-123" in key for key in keys), keys


# -- the ninth attack pass (helper-28, on 9986e82) ---------------------------------------------

JWT_SECRET = "s3cret-hs256-for-two-identifiers-0123456789"
ALICE_KEY, CAROL_KEY = "ak_alice_own_key_000000000000001", "ak_carol_no_plugins_0000000001"


def token(sub):
    import jwt as pyjwt
    return pyjwt.encode({"sub": sub, "exp": int(time.time()) + 600}, JWT_SECRET, "HS256")


def test_two_credentials_never_give_one_consumers_identity_with_anothers_plugins(
        launcher, upstream):
    """key_auth then jwt on a route: alice's key and bob's token made the request bob's (the
    upstream saw X-Consumer-ID: bob) with alice's plugins, so bob's ip_restriction never ran.
    With an anonymous key_auth, bob's token alone skipped them."""
    jwt_conf = {"algorithms": ["HS256"], "secret": JWT_SECRET, "consumer_claim": "sub"}
    gw = launcher.gateway(gateway_conf([
        route("api", ["/api/*rest"], upstream.url, plugins={"key_auth": {}, "jwt": jwt_conf}),
        route("anon", ["/anon/*rest"], upstream.url, plugins={
            "key_auth": {"anonymous": "anon"}, "jwt": jwt_conf})], consumers={
        "anon": {"plugins": {"headers": {"response": {"set": {"X-Plugins-Of": "anon"}}}}},
        "carol": {"credentials": {"key_auth": {"key_hash": hash_key(CAROL_KEY)}}},
        "alice": {"credentials": {"key_auth": {"key_hash": hash_key(ALICE_KEY)}},
                  "plugins": {"headers": {"response": {"set": {"X-Plugins-Of": "alice"}}}}},
        "bob": {"credentials": {"jwt": {"key": "bob"}},
                "plugins": {"ip_restriction": {"allow": ["10.0.0.0/8"]}}},
        "dave": {"credentials": {"jwt": {"key": "dave"}},
                 "plugins": {"headers": {"request": {"set": {"X-Dave": "ran"}}}}}}))
    bob = {"Authorization": f"Bearer {token('bob')}"}
    for key in (ALICE_KEY, CAROL_KEY):
        assert get(gw.port, "/api/echo", {"X-API-Key": key, **bob})[0] == 401
    assert get(gw.port, "/anon/echo", bob)[0] == 403       # bob's plugins, not anon's
    status, body = get(gw.port, "/anon/echo", {"Authorization": f"Bearer {token('dave')}"})
    assert status == 200
    seen = upstream_saw(body)
    assert seen["x-consumer-id"] == "dave" and seen["x-dave"] == "ran"
    assert get(gw.port, "/anon/echo")[0] == 401     # jwt, which names no anonymous, wants one


def test_behind_a_proxy_that_writes_forwarded_a_clients_x_forwarded_headers_are_not_its(
        launcher, upstream):
    """real_ip_header = "Forwarded": the trusted proxy writes Forwarded and may pass the
    client's X-Forwarded-* through unread. They were believed: the upstream got a forged
    chain, scheme and host, a redirect to https was skipped and a route conditioned on
    X-Forwarded-Host matched. The scheme and host now come from the proxy's Forwarded."""
    gw = launcher.gateway(gateway_conf([
        route("web", ["/web/*rest"], upstream.url, plugins={"redirect": {"http_to_https": True}}),
        route("internal", ["/internal/*rest"], upstream.url, priority=10,
              headers={"X-Forwarded-Host": "admin.internal"}),
        route("any", ["/*rest"], upstream.url)],
        server={"trusted_proxies": ["127.0.0.1/32"], "real_ip_header": "Forwarded"}))
    forged = {"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https",
              "X-Forwarded-Host": "admin.internal", "Forwarded": "for=203.0.113.7;proto=http"}
    status, body = get(gw.port, "/echo", forged)
    seen = upstream_saw(body)
    assert seen["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "http" and seen["x-forwarded-host"] != "admin.internal"
    assert get(gw.port, "/web/x", forged)[0] == 301          # not skipped: the proxy said http
    status, body = get(gw.port, "/internal/x", forged)
    assert status == 200 and json.loads(body)["path"] == "/internal/x"
    assert upstream_saw(body)["x-forwarded-host"] != "admin.internal"
    # what the proxy says in Forwarded is taken: https, and its host
    status, body = get(gw.port, "/echo", {"Forwarded": 'for=203.0.113.7;proto=https;'
                                                       'host="shop.example.com"'})
    seen = upstream_saw(body)
    assert seen["x-forwarded-proto"] == "https" and seen["x-forwarded-host"] == "shop.example.com"
    assert get(gw.port, "/web/x", {"Forwarded": "for=203.0.113.7;proto=https"})[0] == 200


def test_an_ipv4_client_of_a_dual_stack_listener_is_one_address(launcher, upstream):
    """On a [::] listener an IPv4 client's address is ::ffff:a.b.c.d: per-address limits
    counted it apart from the same client on an IPv4 listener, and the upstream got
    X-Forwarded-For: ::ffff:127.0.0.1, which IPv4 allow-lists do not match."""
    dual = free_port()
    gw = launcher.gateway(gateway_conf([route("lim", ["/lim/*rest"], upstream.url, plugins={
        "rate_limit": {"rate": 1, "per": 3600, "burst": 1, "key": "ip"}}),
        route("any", ["/*rest"], upstream.url)]), extra_binds=[f"[::]:{dual}"])
    status, body = get(dual, "/echo")
    assert status == 200 and upstream_saw(body)["x-forwarded-for"] == "127.0.0.1"
    assert get(gw.port, "/lim/x")[0] == 200
    assert get(dual, "/lim/x")[0] == 429                    # the same client, the same bucket


# -- the tenth attack pass (helper-29, on 32efc9c) ---------------------------------------------

def test_an_anonymous_consumers_plugins_leave_nothing_on_the_real_consumers_request(
        launcher, upstream):
    """cors (app.example, with credentials) + key_auth{anonymous} + basic_auth: the anonymous
    consumer (cors for any origin) was joined at key_auth, its cors ran and stayed, and
    bob's authenticated answer allowed evil.example with credentials."""
    from gwserver.plugins.basic_auth import hash_password
    basic = "Basic " + base64.b64encode(b"bob:pw-bob").decode()
    gw = launcher.gateway(gateway_conf([route("r", ["/r/*rest"], upstream.url, plugins={
        "cors": {"allow_origins": ["https://app.example"], "allow_credentials": True},
        "key_auth": {"anonymous": "anon"}, "basic_auth": {"anonymous": "anon"}})], consumers={
        "anon": {"plugins": {"cors": {"allow_origins": ["*"]},
                             "headers": {"request": {"set": {"X-Anon": "yes"}}}}},
        "bob": {"credentials": {"basic_auth": {"username": "bob",
                                               "password_hash": hash_password("pw-bob", 4)}}}}))
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    conn.request("GET", "/r/echo", headers={"Origin": "https://evil.example",
                                            "Authorization": basic})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    assert resp.status == 200
    seen = upstream_saw(body)
    assert seen["x-consumer-id"] == "bob" and "x-anon" not in seen
    assert resp.getheader("Access-Control-Allow-Origin") != "https://evil.example"
    assert resp.getheader("Access-Control-Allow-Credentials") is None
    status, body = get(gw.port, "/r/echo")              # no credential: the anonymous one
    assert status == 200 and upstream_saw(body)["x-anon"] == "yes"


def test_either_credential_routes_take_the_first_one(launcher, upstream):
    """key_auth and basic_auth, each with the anonymous consumer (Kong's "either credential"):
    alice's key alone was a 401 ("credentials name different consumers"), as basic_auth then
    named the anonymous one. Both required (no anonymous) still wants both."""
    from gwserver.plugins.basic_auth import hash_password
    gw = launcher.gateway(gateway_conf([
        route("either", ["/either/*rest"], upstream.url, plugins={
            "key_auth": {"anonymous": "anon"}, "basic_auth": {"anonymous": "anon"}}),
        route("both", ["/both/*rest"], upstream.url, plugins={
            "key_auth": {}, "basic_auth": {}})], consumers={
        "anon": {},
        "alice": {"credentials": {
            "key_auth": {"key_hash": hash_key(ALICE_KEY)},
            "basic_auth": {"username": "alice", "password_hash": hash_password("pw-a", 4)}}}}))
    status, body = get(gw.port, "/either/echo", {"X-API-Key": ALICE_KEY})
    assert status == 200 and upstream_saw(body).get("x-consumer-id") == "alice", body
    status, body = get(gw.port, "/either/echo")
    assert status == 200 and upstream_saw(body)["x-consumer-id"] == "anon"
    assert get(gw.port, "/both/echo", {"X-API-Key": ALICE_KEY})[0] == 401


def test_a_quoted_forwarded_host_cannot_carry_elements_of_its_own(launcher, upstream):
    """A proxy writes Forwarded: for=..;proto=..;host="$http_host" (RFC 7239 quotes it). The
    parser split inside the quotes, so a client's Host of 'good.example,for=10.1.2.3;
    proto=https;host=admin.internal' chose its address, scheme and host."""
    gw = launcher.gateway(gateway_conf([
        route("web", ["/web/*rest"], upstream.url, plugins={"redirect": {"http_to_https": True}}),
        route("ten", ["/ten/*rest"], upstream.url,
              plugins={"ip_restriction": {"allow": ["10.0.0.0/8"]}}),
        route("any", ["/*rest"], upstream.url)],
        server={"trusted_proxies": ["127.0.0.1/32"], "real_ip_header": "Forwarded"}))
    evil = {"Forwarded": 'for=203.0.113.7;proto=http;host="good.example,for=10.1.2.3;'
                         'proto=https;host=admin.internal"'}
    status, body = get(gw.port, "/echo", evil)
    seen = upstream_saw(body)
    assert seen["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "http" and seen["x-forwarded-host"] != "admin.internal"
    assert get(gw.port, "/web/x", evil)[0] == 301
    assert get(gw.port, "/ten/x", evil)[0] == 403
    # a scope id names no client: "unknown", not the proxy (test_fix_dec09a)
    scoped = {"Forwarded": 'for="[fe80::1%0x]"'}
    assert upstream_saw(get(gw.port, "/echo", scoped)[1])["x-forwarded-for"] == \
        "unknown, 127.0.0.1"


# -- the eleventh attack pass (helper-30, on a0ae235) ------------------------------------------

def test_a_client_cannot_spoil_forwarded_into_being_taken_for_the_proxy(launcher, upstream):
    """An unparsable Forwarded made the client the trusted proxy itself, which allow-lists
    of the internal network name. Empty pairs and elements are valid (and were refused);
    a header that does not parse is a 400."""
    gw = launcher.gateway(gateway_conf([
        route("internal", ["/internal/*rest"], upstream.url,
              plugins={"ip_restriction": {"allow": ["127.0.0.1/32"]}}),
        route("any", ["/*rest"], upstream.url)],
        server={"trusted_proxies": ["127.0.0.1/32"], "real_ip_header": "Forwarded"}))
    for value in ("for=1.2.3.4;;by=x, for=203.0.113.7", ",for=1.2.3.4,, for=203.0.113.7"):
        assert get(gw.port, "/internal/x", {"Forwarded": value})[0] == 403, value
        assert upstream_saw(get(gw.port, "/echo", {"Forwarded": value})[1])[
            "x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    for value in ('for="x, for=203.0.113.7', 'for=203.0.113.7;host="a"b"'):
        status, body = get(gw.port, "/internal/x", {"Forwarded": value})
        assert status == 400 and b"Forwarded" in body, (value, body)


def test_a_consumers_cors_that_refuses_an_origin_outweighs_the_routes(launcher, upstream):
    """The route's cors allows any origin; bob's own allows only his portal, with credentials.
    The route's yes (set before bob was known) outlived bob's no, and bob's authenticated
    answer allowed evil.example with credentials."""
    from gwserver.plugins.basic_auth import hash_password
    gw = launcher.gateway(gateway_conf([route("r", ["/r/*rest"], upstream.url, plugins={
        "cors": {"allow_origins": ["*"]}, "basic_auth": {}})], consumers={
        "bob": {"credentials": {"basic_auth": {"username": "bob",
                                               "password_hash": hash_password("pw-bob", 4)}},
                "plugins": {"cors": {"allow_origins": ["https://portal.example"],
                                     "allow_credentials": True}}}}))
    basic = "Basic " + base64.b64encode(b"bob:pw-bob").decode()
    for origin, allowed in (("https://evil.example", None),
                            ("https://portal.example", "https://portal.example")):
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        conn.request("GET", "/r/echo", headers={"Origin": origin, "Authorization": basic})
        resp = conn.getresponse()
        resp.read()
        conn.close()
        assert resp.status == 200
        assert resp.getheader("Access-Control-Allow-Origin") == allowed, origin


def test_basic_auth_with_an_anonymous_consumer_lets_a_bearer_token_reach_jwt(launcher,
                                                                              upstream):
    """basic_auth{anonymous} then jwt: any Authorization that was not Basic was a 401 from
    basic_auth, so a Bearer token never reached jwt. Another scheme is no Basic credential;
    without anonymous it is still a 401."""
    jwt_conf = {"algorithms": ["HS256"], "secret": JWT_SECRET, "consumer_claim": "sub"}
    gw = launcher.gateway(gateway_conf([
        route("either", ["/either/*rest"], upstream.url, plugins={
            "basic_auth": {"anonymous": "anon"}, "jwt": jwt_conf}),
        route("basic", ["/basic/*rest"], upstream.url, plugins={"basic_auth": {}})],
        consumers={"anon": {}, "bob": {"credentials": {"jwt": {"key": "bob"}}}}))
    bearer = {"Authorization": f"Bearer {token('bob')}"}
    status, body = get(gw.port, "/either/echo", bearer)
    assert status == 200 and upstream_saw(body)["x-consumer-id"] == "bob"
    assert get(gw.port, "/basic/echo", bearer)[0] == 401
    assert get(gw.port, "/basic/echo", {"Authorization": "Basic !!!"})[0] == 401
