"""Consumers and the auth, acl, ip_restriction and cors plugins through a real gateway, with
the inputs an attacker would try (issue 14)."""
import base64
import json
import re
import subprocess
import sys
import time

import pytest

from gwserver.plugins.basic_auth import hash_password
from gwserver.plugins.key_auth import hash_key

from ..conftest import gateway_conf, route, to_toml, wait_until
from .test_etcd import etcd_conf

KEYS = {"alice": "ak_7f3b0c9e2d41a8f6", "bob": "ak_19d4e6b8c0a2f375", "mallory": "ak_0000suspended"}
PASSWORD = "correct horse battery staple"


def consumers(rate_for_alice=None):
    out = {
        "alice": {"groups": ["partners"], "credentials": {
            "key_auth": {"key_hash": hash_key(KEYS["alice"])},
            "basic_auth": {"username": "alice", "password_hash": hash_password(PASSWORD, 4)}}},
        "bob": {"groups": ["internal", "partners"],
                "credentials": {"key_auth": {"key_hash": hash_key(KEYS["bob"])}}},
        "mallory": {"groups": ["partners"],
                    "credentials": {"key_auth": {"key_hash": hash_key(KEYS["mallory"])}}},
    }
    if rate_for_alice:
        out["alice"]["plugins"] = {"rate_limit": {"rate": rate_for_alice, "per": 3600,
                                                  "burst": rate_for_alice, "key": "consumer"}}
    return out


def echoed(body):
    """The headers and path the upstream saw: {lower name: [values]}, path."""
    data = json.loads(body)
    headers = {}
    for name, value in data["headers"]:
        headers.setdefault(name.lower(), []).append(value)
    return headers, data["path"]


@pytest.fixture(scope="module")
def gw(module_launcher):
    up = module_launcher.upstream()
    plugins_key = {"key_auth": {"query": "apikey"}}
    return module_launcher.gateway(gateway_conf([
        route("key", ["/key/*rest"], up.url, strip_prefix="/key", plugins=plugins_key),
        route("header-only", ["/hdr/*rest"], up.url, strip_prefix="/hdr",
              plugins={"key_auth": {}}),
        route("basic", ["/basic/*rest"], up.url, strip_prefix="/basic",
              plugins={"basic_auth": {"realm": "orders"}}),
        route("acl", ["/acl/*rest"], up.url, strip_prefix="/acl",
              plugins={"key_auth": {}, "acl": {"allow_groups": ["partners"],
                                               "deny_consumers": ["mallory"]}}),
        route("internal", ["/internal/*rest"], up.url, strip_prefix="/internal",
              plugins={"key_auth": {}, "acl": {"allow_groups": ["internal"]}}),
        route("acl-only", ["/acl-only/*rest"], up.url, plugins={"acl": {"allow_consumers":
                                                                        ["alice"]}}),
        route("limited", ["/limited/*rest"], up.url, strip_prefix="/limited",
              plugins={"key_auth": {}, "rate_limit": {"rate": 100, "per": 3600, "burst": 100,
                                                      "key": "consumer"}}),
        route("denied-lo", ["/deny/*rest"], up.url,
              plugins={"ip_restriction": {"deny": ["127.0.0.0/8", "::1/128"]}}),
        route("allow-10", ["/allow10/*rest"], up.url,
              plugins={"ip_restriction": {"allow": ["10.0.0.0/8"]}}),
        route("cors", ["/cors/*rest"], up.url, strip_prefix="/cors", plugins={"cors": {
            "allow_origins": ["https://app.example.com"],
            "allow_origin_patterns": [r"https://[a-z0-9-]+\.tenant\.example\.com"],
            "allow_methods": ["GET", "POST"], "allow_headers": ["X-API-Key", "Content-Type"],
            "expose_headers": ["X-Request-Id"], "allow_credentials": True, "max_age": 120},
            "key_auth": {}}),
    ], workers=2, consumers=consumers(rate_for_alice=3)))


def get(gw, path, headers=None, method="GET"):
    return gw.request(method, path, headers=headers or {})


# -- key_auth --------------------------------------------------------------------------------

def test_a_good_key_names_the_consumer_to_the_upstream_and_is_not_forwarded(gw):
    resp, body = get(gw, "/key/echo", {"X-API-Key": KEYS["bob"],
                                       "X-Consumer-ID": "admin", "X-Consumer-Groups": "root"})
    assert resp.status == 200
    headers, _ = echoed(body)
    assert headers["x-consumer-id"] == ["bob"]                  # the client's copy is gone
    assert headers["x-consumer-groups"] == ["internal,partners"]
    assert "x-api-key" not in headers


def test_a_key_in_the_query_parameter_is_taken_and_removed_from_the_upstream_query(gw):
    resp, body = get(gw, f"/key/echo?a=1&apikey={KEYS['alice']}&b=2")
    assert resp.status == 200
    headers, path = echoed(body)
    assert headers["x-consumer-id"] == ["alice"]
    assert path == "/echo?a=1&b=2"


@pytest.mark.parametrize("path, headers, error", [
    ("/key/echo", {}, "missing_key"),
    ("/key/echo", {"X-API-Key": "ak_wrong"}, "invalid_key"),
    ("/key/echo", {"X-API-Key": KEYS["bob"] + "x"}, "invalid_key"),          # a longer key
    ("/key/echo", {"X-API-Key": KEYS["bob"][:-1]}, "invalid_key"),           # a prefix
    ("/key/echo", {"X-API-Key": "x" * 5000}, "invalid_key"),
    ("/key/echo", {"Authorization": f"Bearer {KEYS['bob']}"}, "missing_key"),   # wrong place
    (f"/hdr/echo?apikey={KEYS['bob']}", {}, "missing_key"),   # the query is not a place here
    ("/key/echo", {"X-API-Key": "sha256$00$00", "X-Consumer-ID": "bob"}, "invalid_key"),
])
def test_no_key_or_a_bad_one_is_401_and_never_reaches_the_upstream(gw, path, headers, error):
    resp, body = get(gw, path, headers)
    assert resp.status == 401 and json.loads(body)["error"] == error
    assert resp.getheader("WWW-Authenticate").startswith("ApiKey")


def test_keys_never_appear_in_the_access_log(gw):
    get(gw, f"/key/echo?apikey={KEYS['alice']}")
    get(gw, "/key/echo", {"X-API-Key": KEYS["bob"]})
    wait_until(lambda: "/key/echo" in gw.log(), timeout=5)
    time.sleep(0.2)
    assert not any(key in gw.log() for key in KEYS.values())


# -- basic_auth ------------------------------------------------------------------------------

def basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_basic_credentials_name_the_consumer_and_authorization_is_not_forwarded(gw):
    for _ in range(3):          # the first pays bcrypt, the others hit the worker's cache
        resp, body = get(gw, "/basic/echo", {"Authorization": basic("alice", PASSWORD)})
        assert resp.status == 200
        headers, _ = echoed(body)
        assert headers["x-consumer-id"] == ["alice"] and "authorization" not in headers


@pytest.mark.parametrize("authorization", [
    None,
    basic("alice", "wrong"),
    basic("alice", PASSWORD + " "),
    basic("nobody", PASSWORD),
    basic("alice", "x" * 100),                      # past bcrypt's 72 bytes
    "Basic",
    "Basic !!!notbase64!!!",
    "Basic " + base64.b64encode(b"no-colon-at-all").decode(),
    "Basic " + base64.b64encode(b":" + PASSWORD.encode()).decode(),   # no user
    "Basic " + base64.b64encode(b"alice\x00:" + PASSWORD.encode()).decode(),
    "Bearer " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode(),
    "Basic " + "A" * 6000,
])
def test_missing_or_malformed_or_wrong_basic_credentials_get_401_with_a_challenge(
        gw, authorization):
    resp, body = get(gw, "/basic/echo", {"Authorization": authorization} if authorization
                     else {})
    assert resp.status == 401, body
    assert resp.getheader("WWW-Authenticate") == 'Basic realm="orders", charset="UTF-8"'


# -- acl -------------------------------------------------------------------------------------

@pytest.mark.parametrize("path, consumer, status", [
    ("/acl/echo", "alice", 200),
    ("/acl/echo", "bob", 200),
    ("/acl/echo", "mallory", 403),          # in partners, but denied by id: deny wins
    ("/internal/echo", "alice", 403),
    ("/internal/echo", "bob", 200),
    ("/acl/echo", None, 401),
    ("/acl-only/echo", None, 401),          # acl without an auth plugin: nobody is identified
])
def test_acl_allows_and_denies_by_consumer_and_group(gw, path, consumer, status):
    headers = {"X-API-Key": KEYS[consumer]} if consumer else {"X-Consumer-ID": "alice"}
    assert get(gw, path, headers)[0].status == status


# -- rate_limit by consumer ------------------------------------------------------------------

def test_a_consumers_own_rate_limit_replaces_the_routes_and_counts_per_consumer(gw):
    alice = [get(gw, "/limited/echo", {"X-API-Key": KEYS["alice"]})[0] for _ in range(5)]
    assert [r.status for r in alice] == [200, 200, 200, 429, 429]
    assert alice[0].getheader("RateLimit-Limit") == "3"          # hers, not the route's 100
    bob = [get(gw, "/limited/echo", {"X-API-Key": KEYS["bob"]})[0] for _ in range(5)]
    assert [r.status for r in bob] == [200] * 5
    assert bob[0].getheader("RateLimit-Limit") == "100"


# -- ip_restriction --------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [
    {}, {"X-Forwarded-For": "10.1.2.3"}, {"X-Real-IP": "10.1.2.3"},
    {"Forwarded": "for=10.1.2.3"}, {"X-Forwarded-For": "10.1.2.3, 10.9.9.9"}])
def test_ip_restriction_uses_the_peer_address_not_headers_from_an_untrusted_peer(gw, headers):
    assert get(gw, "/deny/echo", headers)[0].status == 403
    assert get(gw, "/allow10/echo", headers)[0].status == 403


def test_a_trusted_proxy_may_name_the_client_ip_restriction_checks(launcher, upstream):
    gw = launcher.gateway(gateway_conf([
        route("allow-10", ["/allow10/*rest"], upstream.url,
              plugins={"ip_restriction": {"allow": ["10.0.0.0/8"], "deny": ["10.6.6.0/24"]}})],
        server={"trusted_proxies": ["127.0.0.1/32"]}))
    assert get(gw, "/allow10/echo", {"X-Forwarded-For": "10.1.2.3"})[0].status == 200
    assert get(gw, "/allow10/echo", {"X-Forwarded-For": "10.6.6.6"})[0].status == 403
    # the client prepends an allowed address; the proxy appended the real one
    assert get(gw, "/allow10/echo", {"X-Forwarded-For": "10.1.2.3, 192.0.2.7"})[0].status == 403
    assert get(gw, "/allow10/echo")[0].status == 403      # the proxy itself is not allowed


# -- cors ------------------------------------------------------------------------------------

def preflight(gw, origin, method="POST", headers="x-api-key"):
    return get(gw, "/cors/echo", {"Origin": origin, "Access-Control-Request-Method": method,
                                  "Access-Control-Request-Headers": headers}, method="OPTIONS")


@pytest.mark.parametrize("origin", ["https://app.example.com", "https://eu.tenant.example.com"])
def test_a_preflight_from_an_allowed_origin_is_answered_at_the_gateway(gw, origin):
    resp, _ = preflight(gw, origin)
    assert resp.status == 204                  # no key needed: preflights carry none
    assert resp.getheader("Access-Control-Allow-Origin") == origin
    assert resp.getheader("Access-Control-Allow-Credentials") == "true"
    assert resp.getheader("Access-Control-Allow-Methods") == "GET, POST"
    assert resp.getheader("Access-Control-Max-Age") == "120"
    assert "Origin" in resp.getheader("Vary")


@pytest.mark.parametrize("origin, method, headers", [
    ("https://app.example.com.evil.net", "POST", "x-api-key"),   # an allowed one as prefix
    ("https://evil.net/https://app.example.com", "POST", "x-api-key"),
    ("https://app.example.co", "POST", "x-api-key"),
    ("http://app.example.com", "POST", "x-api-key"),             # another scheme
    ("https://x.tenant.example.com.evil.net", "POST", "x-api-key"),  # pattern as a prefix
    ("https://evil.net#.tenant.example.com", "POST", "x-api-key"),
    ("null", "POST", "x-api-key"),
    ("https://app.example.com", "DELETE", "x-api-key"),
    ("https://app.example.com", "POST", "x-api-key, x-admin"),
])
def test_preflights_that_are_not_allowed_get_403_and_no_cors_headers(gw, origin, method,
                                                                      headers):
    resp, _ = preflight(gw, origin, method, headers)
    assert resp.status == 403 and resp.getheader("Access-Control-Allow-Origin") is None


def test_answers_carry_cors_headers_for_allowed_origins_only_and_always_vary(gw):
    ok, _ = get(gw, "/cors/echo", {"Origin": "https://app.example.com",
                                   "X-API-Key": KEYS["bob"]})
    assert ok.status == 200
    assert ok.getheader("Access-Control-Allow-Origin") == "https://app.example.com"
    assert ok.getheader("Access-Control-Expose-Headers") == "X-Request-Id"
    bad, _ = get(gw, "/cors/echo", {"Origin": "https://app.example.com.evil.net",
                                    "X-API-Key": KEYS["bob"]})
    assert bad.status == 200 and bad.getheader("Access-Control-Allow-Origin") is None
    assert "Origin" in ok.getheader("Vary") and "Origin" in bad.getheader("Vary")


# -- etcd: live consumers and the CLI --------------------------------------------------------

def cli(conf_path, *args, stdin=None):
    return subprocess.run([sys.executable, "-m", "gwserver", args[0], "-c", str(conf_path),
                           *args[1:]], capture_output=True, text=True, input=stdin, timeout=60)


def test_consumers_from_etcd_are_live_and_the_cli_never_stores_a_clear_key(launcher, upstream,
                                                                           tmp_path):
    etcd = launcher.etcd()
    conf = etcd_conf(tmp_path, [etcd.url], [route(
        "key", ["/key/*rest"], upstream.url, strip_prefix="/key",
        plugins={"key_auth": {}, "acl": {"allow_groups": ["partners"]}})], workers=2)
    gw = launcher.gateway(conf)
    conf_path = tmp_path / "cli.toml"
    conf_path.write_text(to_toml({k: v for k, v in conf.items() if k != "routes"}))
    key = "ak_live_5e1d9c"
    assert get(gw, "/key/echo", {"X-API-Key": key})[0].status == 401
    run = cli(conf_path, "consumers", "put", "-", stdin=json.dumps({
        "id": "carol", "groups": ["partners"], "credentials": {"key_auth": {"key": key}}}))
    assert run.returncode == 0, run.stderr
    stored = etcd.client().get("/gw/consumers/carol").decode()
    assert key not in stored and "key_hash" in stored
    wait_until(lambda: all(get(gw, "/key/echo", {"X-API-Key": key})[0].status == 200
                           for _ in range(4)), timeout=10)
    listed = cli(conf_path, "consumers", "list")
    assert "carol" in listed.stdout and "ok" in listed.stdout and "sha256" not in listed.stdout
    bad = cli(conf_path, "consumers", "put", "-", stdin=json.dumps({
        "id": "dave", "credentials": {"key_auth": {"key_hash": "plain-key"}}}))
    assert bad.returncode == 2 and "plain-key" not in bad.stderr and "key_hash" in bad.stderr
    assert cli(conf_path, "consumers", "delete", "carol").returncode == 0
    wait_until(lambda: all(get(gw, "/key/echo", {"X-API-Key": key})[0].status == 401
                           for _ in range(4)), timeout=10)
    assert key not in gw.log()


def test_a_refusal_the_gateway_writes_carries_cors_headers_too(gw):
    """A 401 from key_auth on a cors route: without the headers a browser could not read why."""
    resp, body = get(gw, "/cors/echo", {"Origin": "https://app.example.com"})
    assert resp.status == 401 and b"request_id" in body
    assert resp.getheader("Access-Control-Allow-Origin") == "https://app.example.com"
    assert "Origin" in resp.getheader("Vary")


def test_the_consumer_is_in_the_access_log_and_a_metric(gw):
    resp, _ = get(gw, "/hdr/echo", {"X-API-Key": KEYS["bob"]})
    assert resp.status == 200
    line = wait_until(lambda: [l for l in gw.access_lines() if l.get("consumer") == "bob" and
                               l["route"] == "header-only"])[-1]
    assert line["status"] == 200

    def counted():
        status, body = gw.admin_get("/metrics")
        return status == 200 and re.search(
            rb'gwserver_consumer_requests_total\{code="2xx",consumer="bob"\} [1-9]', body)
    assert wait_until(counted, timeout=10)
