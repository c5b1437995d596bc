"""Authentication and consumers, attacked through real gateways and upstreams (the attack
pass of 2026-12-05, helper h1, on a736bbe). Each test failed on that commit.

1. key_auth with a ``query`` parameter: a request key_auth itself refused (two keys, the key
   with an address past its failure budget, a wrong key) kept the key in its query, and the
   access log's target (common format, or json with ``query``) wrote it out, for all
   docs/consumers.md's "the gateway never logs a key".
2. A consumer whose credential was written as the secret itself (``credentials.key_auth =
   "ak_live_..."``, ``credentials.basic_auth = "user:password"``) was refused with the
   value quoted back ("must be a table/object, got "ak_live_...""), in `gwserver check`, the
   gateway's log and the etcd sync's rejected items (which /admin/config shows).
3. jwt: a token whose exp PyJWT accepts but no float holds (10^400), or a numeric date
   PyJWT cannot turn into an integer (Infinity, which Python's JSON reads), raised out of the
   plugin: a 500 and a logged traceback on every request that sent it.
4. jwt with ``jwks_file``: a key taken out of the JWKS (a compromised one) kept working for
   tokens the worker had verified with it, until their cache entry ran out (cache_seconds,
   30 s by default): the reload did not forget what the old keys had vouched for.
5. split: a client's X-AB-Group was taken before any rule, so a group that only a ``claim``
   rule leads to (a staff-only backend, weight 0) was anyone's for the asking.
6. jwt with consumer_claim over a JWKS of several partners' keys: partner A signed, with its
   own key, a token naming partner B, and was B to the gateway. Consumers can now be bound
   to their key (credentials.jwt.kid); the test needs that setting, so the old code refuses
   its config rather than serving the attack (which the pass saw: 200 as partner-b).
"""
import json
import subprocess
import sys
import time

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from gwserver.plugins.key_auth import hash_key

from ..conftest import gateway_conf, route, to_toml, wait_until
from .test_auth_edges import get

KEY = "ak_live_alice_0d1e2f3a4b5c6d7e8f"


# -- 1. a key key_auth refused stays in the access log's target -------------------------------

@pytest.mark.parametrize("access", [{"access_format": "common"},
                                    {"access_fields": ["time", "path", "query", "status"]}])
def test_a_key_in_a_refused_requests_query_never_reaches_the_access_log(launcher, upstream,
                                                                          access):
    gw = launcher.gateway(gateway_conf(
        [route("k", ["/k/*rest"], upstream.url,
               plugins={"key_auth": {"query": "apikey", "max_failures": 1}})],
        consumers={"alice": {"credentials": {"key_auth": {"key_hash": hash_key(KEY)}}}},
        log=access))
    assert get(gw.port, f"/k/echo?apikey={KEY}")[0] == 200           # stripped: logged clean
    # the client's own key, and a second one (a stale copy, a library adding its own)
    assert get(gw.port, f"/k/echo?apikey={KEY}&apikey=ak_other_key_1")[0] == 401
    assert get(gw.port, f"/k/echo?a=1&APIKEY={KEY}", {"X-API-Key": "ak_other_key_2"})[0] == 401
    # wrong keys: the first spends the address's budget (1), the second is a 429
    assert get(gw.port, "/k/echo?apikey=ak_wrong_key_3")[0] == 401
    assert get(gw.port, "/k/echo?apikey=ak_wrong_key_4")[0] == 429
    time.sleep(0.3)
    log = gw.log()
    assert log.count("/k/echo") >= 5, log[-2000:]
    for secret in (KEY, "ak_other_key_1", "ak_other_key_2", "ak_wrong_key_3", "ak_wrong_key_4"):
        assert secret not in log, [line for line in log.splitlines() if secret in line]
    assert "a=1" in log             # the rest of the query is still shown


# -- 2. a credential written as the secret itself is quoted back ------------------------------

CLEAR = {"key_auth": "ak_live_written_in_clear_9f8e7d6c",
         "basic_auth": "alice:Tr0ub4dor&3-in-clear"}


@pytest.mark.parametrize("plugin", sorted(CLEAR))
def test_a_credential_given_as_the_secret_itself_is_refused_without_quoting_it(tmp_path,
                                                                                 plugin):
    conf = tmp_path / "gw.toml"
    conf.write_text(to_toml(gateway_conf(
        [route("r", ["/*rest"], "http://127.0.0.1:9", plugins={plugin: {}})],
        consumers={"alice": {"credentials": {plugin: CLEAR[plugin]}}})))
    run = subprocess.run([sys.executable, "-m", "gwserver", "check", "-c", str(conf)],
                         capture_output=True, text=True, timeout=60)
    out = run.stdout + run.stderr
    assert run.returncode != 0 and f"credentials.{plugin}" in out, out
    secret = CLEAR[plugin].rpartition(":")[2]       # the key, or the password
    assert secret not in out, out


def test_a_clear_credential_put_in_etcd_by_hand_is_not_quoted_in_the_log_or_admin(
        launcher, upstream, tmp_path):
    from .test_etcd import etcd_conf, put
    etcd = launcher.etcd()
    conf = etcd_conf(tmp_path, [etcd.url], [route(
        "k", ["/k/*rest"], upstream.url, plugins={"key_auth": {}})], workers=1)
    conf["admin"] = {"token": "admin-token-for-the-test-0123"}
    gw = launcher.gateway(conf)
    put(etcd.client(), "consumers", "carol", {"credentials": {"key_auth": CLEAR["key_auth"]}})

    def status():
        return json.loads(gw.admin_get("/admin/config", "admin-token-for-the-test-0123")[1])
    wait_until(lambda: "consumers/carol" in json.dumps(status()), timeout=15)
    shown = json.dumps(status())
    assert "credentials.key_auth" in shown and CLEAR["key_auth"] not in shown, shown
    wait_until(lambda: "consumers/carol" in gw.log(), timeout=10)
    assert CLEAR["key_auth"] not in gw.log()


# -- 3. a signed token with a numeric date no float holds -------------------------------------

SECRET = "hs256-secret-for-the-overflow-test-0123456789"


def signed(payload):
    """An HS256 token over ``payload`` (bytes, as a signer might write it)."""
    return pyjwt.api_jws.encode(payload, SECRET, "HS256")


def test_a_token_with_an_out_of_range_date_is_no_500(launcher, upstream):
    gw = launcher.gateway(gateway_conf([route("j", ["/j/*rest"], upstream.url, plugins={
        "jwt": {"algorithms": ["HS256"], "secret": SECRET}})]))
    far = signed(b'{"sub":"a","exp":1' + b"0" * 400 + b'}')        # a JSON number, far away
    for _ in range(2):      # the second from the cache, if the first got in
        status, body = get(gw.port, "/j/echo", {"Authorization": f"Bearer {far}"})
        assert status == 200, body
    for claim in ("exp", "nbf", "iat"):
        # not JSON at all, but what Python's reader takes: never a date
        status, body = get(gw.port, "/j/echo", {"Authorization": "Bearer " + signed(
            b'{"sub":"a","exp":4102444800,"%s":Infinity}' % claim.encode()
            if claim != "exp" else b'{"sub":"a","exp":Infinity}')})
        assert status == 401 and b"malformed token" in body, (claim, status, body)
    assert "Traceback" not in gw.log()


# -- 4. a key taken out of the JWKS ------------------------------------------------------------

def test_a_key_taken_out_of_the_jwks_vouches_for_no_token_after_the_reload(launcher, upstream,
                                                                              tmp_path):
    old = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    new = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks = tmp_path / "jwks.json"

    def write_jwks(*pairs):
        jwks.write_text(json.dumps({"keys": [
            {**json.loads(pyjwt.algorithms.RSAAlgorithm.to_jwk(private.public_key())),
             "kid": kid, "use": "sig", "alg": "RS256"} for kid, private in pairs]}))
    write_jwks(("old", old), ("new", new))
    gw = launcher.gateway(gateway_conf([route("j", ["/j/*rest"], upstream.url, plugins={
        "jwt": {"jwks_file": str(jwks)}})]))      # cache_seconds: the default 30
    exp = int(time.time()) + 600
    leaked = pyjwt.encode({"sub": "a", "exp": exp}, old, "RS256", headers={"kid": "old"})
    fresh = pyjwt.encode({"sub": "b", "exp": exp}, new, "RS256", headers={"kid": "new"})
    assert get(gw.port, "/j/echo", {"Authorization": f"Bearer {leaked}"})[0] == 200
    time.sleep(0.05)
    write_jwks(("new", new))                    # "old" is compromised: taken out
    time.sleep(1.2)                             # the file is looked at once a second
    assert get(gw.port, "/j/echo", {"Authorization": f"Bearer {fresh}"})[0] == 200
    status, body = get(gw.port, "/j/echo", {"Authorization": f"Bearer {leaked}"})
    assert status == 401 and b"no key with kid" in body, (status, body)


# -- 5. a group only claim rules lead to, named by the client ---------------------------------

def test_x_ab_group_is_no_way_past_a_split_rule_on_claims(launcher):
    """split's rules send verified staff (tier = staff) to a backend no weight reaches. A
    client's X-AB-Group naming that group was taken before any rule: any holder of any
    token (tier = basic) reached the staff-only backend by asking for it."""
    main, staff = launcher.upstream("main"), launcher.upstream("staff")
    gw = launcher.gateway(gateway_conf([{
        "id": "shop", "paths": ["/shop/*rest"], "upstream": "main", "plugins": {
            "jwt": {"algorithms": ["HS256"], "secret": SECRET},
            "split": {"upstreams": [{"upstream": "main", "weight": 100},
                                    {"upstream": "staff", "weight": 0}],
                      "rules": [{"claim": {"tier": "staff"}, "upstream": "staff"}]}}}],
        upstreams={"main": {"targets": [{"url": main.url}]},
                   "staff": {"targets": [{"url": staff.url}]}}))

    def served_by(tier, headers=None):
        bearer = pyjwt.encode({"sub": "u", "tier": tier, "exp": int(time.time()) + 300},
                              SECRET, "HS256")
        status, body = get(gw.port, "/shop/echo", {"Authorization": f"Bearer {bearer}",
                                                   **(headers or {})})
        assert status == 200, body
        return json.loads(body)["server"]
    assert served_by("staff") == "staff"
    assert served_by("basic") == "main"
    assert served_by("basic", {"X-AB-Group": "staff"}) == "main"
    assert served_by("staff", {"X-AB-Group": "staff"}) == "staff"   # a service down the chain


# -- 6. one partner's key of a shared JWKS signing for another partner -------------------------

def test_a_consumer_bound_to_its_kid_is_named_by_no_other_partners_key(launcher, upstream,
                                                                      tmp_path):
    """consumer_claim = "iss" over a JWKS holding two partners' keys: partner A signed, with
    its own key, a token saying iss = partner B, and was B to the gateway (200, X-Consumer-ID
    partner-b, past an acl that allows only B). A consumer's credentials.jwt.kid binds it to
    its key: such a token is a 401. A consumer without kid still takes any key (as before),
    and `gwserver check` warns about it."""
    keys = {kid: rsa.generate_private_key(public_exponent=65537, key_size=2048)
            for kid in ("partner-a", "partner-b")}
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [
        {**json.loads(pyjwt.algorithms.RSAAlgorithm.to_jwk(private.public_key())),
         "kid": kid, "use": "sig", "alg": "RS256"} for kid, private in keys.items()]}))
    conf = gateway_conf([route("p", ["/p/*rest"], upstream.url, plugins={
        "jwt": {"jwks_file": str(jwks), "consumer_claim": "iss"},
        "acl": {"allow_consumers": ["partner-b"]}})], consumers={
        "partner-a": {"credentials": {"jwt": {"key": "https://a.example", "kid": "partner-a"}}},
        "partner-b": {"credentials": {"jwt": {"key": "https://b.example", "kid": "partner-b"}}},
        "legacy": {"credentials": {"jwt": {"key": "https://legacy.example"}}}})
    gw = launcher.gateway(conf)
    exp = int(time.time()) + 600

    def call(iss, signer):
        token = pyjwt.encode({"iss": iss, "exp": exp}, keys[signer], "RS256",
                             headers={"kid": signer})
        return get(gw.port, "/p/echo", {"Authorization": f"Bearer {token}"})

    status, body = call("https://b.example", "partner-b")
    assert status == 200, body
    status, body = call("https://b.example", "partner-a")      # A signing for B
    assert status == 401 and b"whose key did not sign it" in body, (status, body)
    status, body = call("https://legacy.example", "partner-a")
    assert status == 403, body          # identified (any key), then the acl's refusal
    conf_path = tmp_path / "check.toml"
    conf_path.write_text(to_toml(conf))
    checked = subprocess.run([sys.executable, "-m", "gwserver", "check", "-c", str(conf_path)],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    assert "a token signed by any of them may name any consumer" in \
        checked.stdout + checked.stderr, checked
