"""Attack pass of 2026-12-04 (fourth): the plugins, by a second pair of eyes: consumers, auth,
acl, rewrite, jwt, and what the gateway says about its config.

Each test starts real processes (gateways from the launcher fixtures, `gwserver check` as a
subprocess) and talks to them over loopback; the upstreams are the recording ones of
tests/integration/conftest.py, closed in teardown. Four were defects, fixed with them: a
consumer's own acl replaced the route's (now refused: ROUTE_ONLY), one API key hashed for two
consumers was served as the first one's, a refused header value was quoted in the reason
(a credential, often), and vendors' credential headers were shown at /admin/routes.
"""
import base64
import json
import subprocess
import sys
import time

import pytest

from gwserver.plugins.key_auth import hash_key

from ..conftest import gateway_conf, route, to_toml, wait_until

KEYS = {"alice": "ak_live_alice_7f3b0c9e2d41a8f6", "bob": "ak_live_bob_19d4e6b8c0a2f375",
        "mallory": "ak_live_mallory_0000c0ffee42"}
HS_SECRET = "s" * 48
ADMIN_TOKEN = "adm_" + "9" * 40


def _b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs_token(claims, secret=HS_SECRET, alg="HS256", header=None):
    import jwt as pyjwt
    return pyjwt.encode(claims, secret, algorithm=alg, headers=header)


def request(gw, path, headers=None, method="GET"):
    resp, body = gw.request(method, path, headers=headers or {})
    return resp.status, body


# -- 1. a consumer's own plugins and the route's policy -----------------------------------------

@pytest.fixture(scope="module")
def consumer_gw(module_launcher):
    from .test_attack_pass_dec03 import RecordingHttp1
    up = RecordingHttp1()
    consumers = {
        "alice": {"groups": ["partners"],
                  "credentials": {"key_auth": {"key_hash": hash_key(KEYS["alice"])}}},
        # mallory's consumer object carries plugins of her own, as a team's template would
        # (a per-consumer rewrite that tags her requests, an allow list of her addresses)
        "mallory": {"groups": ["partners"],
                    "credentials": {"key_auth": {"key_hash": hash_key(KEYS["mallory"])}},
                    "plugins": {"ip_restriction": {"allow": ["127.0.0.0/8", "::1/128"]},
                                "rewrite": {"request_headers": {"set": {"X-Tier": "gold"}}}}},
    }
    gw = module_launcher.gateway(gateway_conf([
        # the route's owner denies mallory by id
        route("deny-mallory", ["/deny/*rest"], up.url, plugins={
            "key_auth": {}, "acl": {"allow_groups": ["partners"],
                                    "deny_consumers": ["mallory"]}}),
        # the route's owner strips an internal header and confines the path upstream
        route("sanitised", ["/san/*rest"], up.url, plugins={
            "key_auth": {},
            "rewrite": {"path": {"match": "^/san/(.*)$", "replace": "/public/$1"},
                        "request_headers": {"remove": ["X-Internal-Debug"]}}}),
        # the route refuses loopback clients before anyone is identified
        route("no-loopback", ["/nolo/*rest"], up.url, plugins={
            "key_auth": {}, "ip_restriction": {"deny": ["127.0.0.0/8", "::1/128"]}}),
        # admin view: an upstream credential under a header name redact() does not know
        route("creds", ["/creds/*rest"], up.url, plugins={
            "headers": {"request": {"set": {"X-Auth-Key": "cf_global_KEY_5ecr3tvalue",
                                            "Ocp-Apim-Subscription-Key": "apim_5ecr3tvalue"}}}}),
    ], workers=1, consumers=consumers, admin={"token": ADMIN_TOKEN}))
    gw.up = up
    yield gw
    up.close()


def test_a_consumers_own_acl_cannot_lift_the_routes_deny(consumer_gw, launcher, h1_up):
    """Routes say who may call (docs/consumers.md). A consumer's own plugins replace the
    route's configs of them, so an acl on mallory's consumer object (one left from another
    route) replaced the route's deny_consumers naming her: 200. A consumer may not carry an
    acl now; the route's deny stands."""
    status, _ = request(consumer_gw, "/deny/x", {"X-API-Key": KEYS["alice"]})
    assert status == 200                                    # control: alice passes
    before = len(consumer_gw.up.heads)
    status, body = request(consumer_gw, "/deny/x", {"X-API-Key": KEYS["mallory"]})
    assert status == 403, f"mallory, denied by the route's acl, got {status} {body[:200]!r}"
    assert len(consumer_gw.up.heads) == before
    conf = gateway_conf([route("r", ["/r/*rest"], h1_up.url, plugins={
        "key_auth": {}, "acl": {"deny_consumers": ["mallory"]}})], consumers={
        "mallory": {"credentials": {"key_auth": {"key_hash": hash_key(KEYS["mallory"])}},
                    "plugins": {"acl": {"allow_groups": ["partners"]}}}})
    path = launcher.tmp_dir / "consumer-acl.toml"
    path.write_text(to_toml(conf))
    check = subprocess.run([sys.executable, "-m", "gwserver", "check", "-c", str(path)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode != 0
    assert "consumer mallory: plugins.acl: only a route can set it" in check.stdout + \
        check.stderr, check.stdout + check.stderr


def test_held_a_consumers_own_ip_restriction_cannot_lift_the_routes(consumer_gw):
    """The route's ip_restriction (priority 1200) runs before key_auth identifies anyone:
    mallory's own allow list cannot undo its deny."""
    before = len(consumer_gw.up.heads)
    status, _ = request(consumer_gw, "/nolo/x", {"X-API-Key": KEYS["mallory"]})
    assert status == 403 and len(consumer_gw.up.heads) == before


def test_admin_route_view_masks_upstream_credentials_set_by_headers(consumer_gw):
    """docs: admin views mask "a header that carries" a credential. X-Auth-Key (Cloudflare's
    API key header) and Ocp-Apim-Subscription-Key (Azure APIM's) are such headers."""
    status, body = consumer_gw.admin_get("/admin/routes/creds", ADMIN_TOKEN)
    assert status == 200
    assert b"cf_global_KEY_5ecr3tvalue" not in body and b"apim_5ecr3tvalue" not in body, \
        body.decode()[:600]


# -- 2. one API key, two consumers ---------------------------------------------------------------

def test_two_consumers_cannot_share_one_api_key(launcher, h1_up):
    """docs/consumers.md: two consumers cannot share a credential. Each key_hash has its own
    salt, so the same key hashed twice gives two key_hash strings no index can match: the
    gateway served the key as alice's, and bob's calls were authorised, limited and billed as
    hers. The comparison finds both now: the key is refused, and the log names both."""
    shared = "ak_live_shared_5d0e1f2a3b4c"
    gw = launcher.gateway(gateway_conf(
        [route("k", ["/k/*rest"], h1_up.url, plugins={"key_auth": {}})],
        consumers={"alice": {"credentials": {"key_auth": {"key_hash": hash_key(shared)}}},
                   "bob": {"credentials": {"key_auth": {"key_hash": hash_key(shared)}}},
                   "carol": {"credentials": {"key_auth": {"key_hash": hash_key(KEYS["bob"])}}}}))
    for _ in range(2):
        status, _ = request(gw, "/k/x", {"X-API-Key": shared})
        assert status == 401
    assert h1_up.heads == []
    wait_until(lambda: "consumers alice and bob have the same API key" in gw.log(), 10)
    status, _ = request(gw, "/k/x", {"X-API-Key": KEYS["bob"]})
    assert status == 200                                    # another key: carol's, served


# -- 3. secrets in what the gateway says about a refused config ----------------------------------

SECRET = "sk_live_TOPSECRET_8c1f"


@pytest.mark.parametrize("plugins", [
    # a secret read from a file with its newline (a header value cannot hold it)
    {"headers": {"request": {"set": {"Authorization": f"Bearer {SECRET}\n"}}}},
    # a secret with a "$" in it, which rewrite reads as a variable
    {"rewrite": {"request_headers": {"set": {"Authorization": f"Bearer {SECRET}$x9"}}}},
], ids=["headers-newline", "rewrite-dollar"])
def test_a_refused_config_never_quotes_an_upstream_credential(launcher, h1_up, plugins):
    """chain.build_chain: "The config is echoed to logs and `check`: never with its
    secrets." The reason a config is refused for goes to `gwserver check`, the log, and
    etcd's rejected items (/admin/config)."""
    conf = gateway_conf([route("r", ["/r/*rest"], h1_up.url, plugins=plugins)])
    path = launcher.tmp_dir / "secret.toml"
    path.write_text(to_toml(conf))
    check = subprocess.run([sys.executable, "-m", "gwserver", "check", "-c", str(path)],
                           capture_output=True, text=True, timeout=60)
    said = check.stdout + check.stderr
    assert check.returncode != 0, said                      # refused, as it should be
    assert SECRET not in said, f"gwserver check quoted the credential: {said.strip()[-400:]}"
    gw = launcher.gateway(conf, wait=False)
    wait_until(lambda: gw.proc.poll() is not None, timeout=30)
    assert SECRET not in gw.log(), "the gateway's log quoted the credential"


# -- 4. jwt: what a token can and cannot do ------------------------------------------------------

@pytest.fixture(scope="module")
def jwt_gw(module_launcher, tmp_path_factory):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from .test_attack_pass_dec03 import RecordingHttp1
    up = RecordingHttp1()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    gw = module_launcher.gateway(gateway_conf([
        route("rs", ["/rs/*rest"], up.url, plugins={"jwt": {
            "algorithms": ["RS256"], "public_key": pem.decode(),
            "forward_claims": {"sub": "X-User-Id"}}}),
        route("aud-a", ["/a/*rest"], up.url, plugins={"jwt": {
            "algorithms": ["HS256"], "secret": HS_SECRET, "audience": "a",
            "forward_claims": {"sub": "X-User-Id", "role": "X-Role"}}}),
        route("aud-b", ["/b/*rest"], up.url, plugins={"jwt": {
            "algorithms": ["HS256"], "secret": HS_SECRET, "audience": "b",
            "required_scopes": ["orders:write"]}}),
    ], workers=1))
    gw.up, gw.pem, gw.private = up, pem, key
    yield gw
    up.close()


def test_jwt_alg_none_and_hmac_with_the_public_key_are_refused(jwt_gw):
    now = int(time.time())
    claims = {"sub": "admin", "exp": now + 300}
    payload = _b64(json.dumps(claims).encode())
    none_token = _b64(b'{"alg":"none","typ":"JWT"}') + "." + payload + "."
    import hashlib
    import hmac
    signing = _b64(b'{"alg":"HS256","typ":"JWT"}') + "." + payload
    confused = signing + "." + _b64(hmac.new(jwt_gw.pem, signing.encode(),
                                             hashlib.sha256).digest())
    before = len(jwt_gw.up.heads)
    for token in (none_token, confused):
        status, _ = request(jwt_gw, "/rs/x", {"Authorization": f"Bearer {token}"})
        assert status == 401
    assert len(jwt_gw.up.heads) == before
    import jwt as pyjwt
    good = pyjwt.encode(claims, jwt_gw.private, algorithm="RS256")
    status, _ = request(jwt_gw, "/rs/x", {"Authorization": f"Bearer {good}"})
    assert status == 200 and jwt_gw.up.header(len(jwt_gw.up.heads) - 1, "X-User-Id") == ["admin"]


def test_a_forwarded_claims_header_is_the_gateways_whatever_the_client_sent(jwt_gw):
    """The token has sub but no role: the client's own X-Role (any case, twice) and
    X-User-Id never reach the upstream; a claim value that would break a header is not
    forwarded, and the client's copy is gone all the same."""
    now = int(time.time())
    token = hs_token({"sub": "alice", "aud": "a", "exp": now + 300})
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", jwt_gw.port, timeout=10)
    conn.putrequest("GET", "/a/x")
    for name, value in (("Authorization", f"Bearer {token}"), ("x-role", "admin"),
                        ("X-ROLE", "root"), ("X-User-ID", "bob"), ("x-user-id", "carol")):
        conn.putheader(name, value)
    conn.endheaders()
    resp = conn.getresponse()
    resp.read()
    conn.close()
    assert resp.status == 200
    i = len(jwt_gw.up.heads) - 1
    assert jwt_gw.up.header(i, "X-User-Id") == ["alice"]
    assert jwt_gw.up.header(i, "X-Role") == []
    bad = hs_token({"sub": "alice\r\nX-Role: admin", "aud": "a", "exp": now + 300})
    status, _ = request(jwt_gw, "/a/x", {"Authorization": f"Bearer {bad}", "X-User-Id": "bob"})
    assert status == 200
    i = len(jwt_gw.up.heads) - 1
    assert jwt_gw.up.header(i, "X-User-Id") == [] and jwt_gw.up.header(i, "X-Role") == []


def test_a_token_cached_by_one_route_is_not_good_on_a_route_with_another_audience(jwt_gw):
    now = int(time.time())
    token = hs_token({"sub": "alice", "aud": "a", "exp": now + 300, "scope": "orders:write"})
    assert request(jwt_gw, "/a/x", {"Authorization": f"Bearer {token}"})[0] == 200
    before = len(jwt_gw.up.heads)
    assert request(jwt_gw, "/b/x", {"Authorization": f"Bearer {token}"})[0] == 401
    narrow = hs_token({"sub": "alice", "aud": "b", "exp": now + 300, "scope": "orders:read"})
    assert request(jwt_gw, "/b/x", {"Authorization": f"Bearer {narrow}"})[0] == 403
    # two Authorization fields are one unusable value, not the first or the last token
    good = hs_token({"sub": "alice", "aud": "b", "exp": now + 300, "scope": "orders:write"})
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", jwt_gw.port, timeout=10)
    conn.putrequest("GET", "/b/x")
    conn.putheader("Authorization", f"Bearer {good}")
    conn.putheader("Authorization", "Bearer junk")
    conn.endheaders()
    resp = conn.getresponse()
    resp.read()
    conn.close()
    assert resp.status == 401
    assert len(jwt_gw.up.heads) == before
