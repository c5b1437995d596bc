"""Authentication and consumers, attacked through real gateways and upstreams (the attack
pass of 2026-12-06, helper w6, on 34db644). Each test failed on that commit.

1. jwt with ``jwks_file``: a JWKS emptied (``{"keys": []}``) to revoke its last key, a
   compromised one, was taken for a file that cannot be read: "keeping the previous keys",
   and tokens signed with the revoked key went on being served until a restart.
2. jwt with ``jwks_file``: RFC 7517 4.5 lets keys of different types share a kid (one
   signer's RSA and EC keys, alternatives). The first key under the kid was taken whatever
   its type, and every token signed with the other was refused ("the token's algorithm is
   not accepted", though the route accepts it).
3. jwt with ``jwks_file``: an RSA JWK without "alg" (RFC 7517 4.4: optional; Azure AD's
   have none) was taken by PyJWT for RS256 alone: a route of PS256 (Open Banking's) or RS512
   refused every token its JWKS signed ("the token's algorithm is not accepted").
4. jwt with ``jwks_file``: one malformed entry beside good keys (``{"kty": "oct"}`` without
   "k", an "alg" written as a list) raised past PyJWKSet (a KeyError, a TypeError): every
   request of the route was a 500 with a traceback, from the start (the config check reads
   the file's shape only) or from the moment the entry was added.
5. A boolean claim (``"email_verified": true``) was compared as Python spells it, "True": a
   route's ``claims = {email_verified = "true"}`` or a split rule on it, written as the token
   says it, never matched, and every such token fell through to the next route.
6. jwt: a token whose iat is in the future (past leeway), and without nbf, was refused as
   "not valid yet (nbf)": PyJWT says both alike, and the client was sent after a claim its
   token does not have.
"""
import json
import time

import jwt as pyjwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ..conftest import check_conf, gateway_conf, route, wait_until
from .test_auth_edges import get, upstream_saw


def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk(kid, private):
    """The public JWK of ``private`` (RSA or EC) under ``kid``."""
    algorithm = pyjwt.algorithms.RSAAlgorithm if isinstance(private, rsa.RSAPrivateKey) \
        else pyjwt.algorithms.ECAlgorithm
    return {**json.loads(algorithm.to_jwk(private.public_key())), "kid": kid, "use": "sig"}


def bearer(private, alg, kid, **claims):
    token = pyjwt.encode({"sub": "u", "exp": int(time.time()) + 600, **claims}, private, alg,
                         headers={"kid": kid})
    return {"Authorization": f"Bearer {token}"}


# -- 1. a JWKS emptied to revoke its last key --------------------------------------------------

def test_a_jwks_emptied_to_revoke_its_last_key_vouches_for_no_token(launcher, upstream,
                                                                      tmp_path):
    leaked = rsa_key()
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk("only", leaked)]}))
    gw = launcher.gateway(gateway_conf([route("j", ["/j/*rest"], upstream.url, plugins={
        "jwt": {"jwks_file": str(jwks)}})]))
    token = bearer(leaked, "RS256", "only")
    assert get(gw.port, "/j/echo", token)[0] == 200
    time.sleep(0.05)
    jwks.write_text(json.dumps({"keys": []}))       # "only" is compromised: trust no key
    time.sleep(1.2)                                 # the file is looked at once a second
    for _ in range(2):      # the second after another look at the file
        status, body = get(gw.port, "/j/echo", token)
        assert status == 401 and b"no key with kid" in body, (status, body)
        time.sleep(1.1)
    assert "keeping the previous keys" not in gw.log()
    fresh = rsa_key()       # and a key put back is taken at once
    jwks.write_text(json.dumps({"keys": [jwk("next", fresh)]}))
    wait_until(lambda: get(gw.port, "/j/echo", bearer(fresh, "RS256", "next"))[0] == 200,
               timeout=5)
    assert get(gw.port, "/j/echo", token)[0] == 401


# -- 2. keys of two types under one kid ---------------------------------------------------------

def test_an_ec_key_beside_an_rsa_key_of_the_same_kid_verifies_its_tokens(launcher, upstream,
                                                                        tmp_path):
    signer_rsa, signer_ec = rsa_key(), ec.generate_private_key(ec.SECP256R1())
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk("idp-2026", signer_rsa),
                                         jwk("idp-2026", signer_ec)]}))
    gw = launcher.gateway(gateway_conf([route("j", ["/j/*rest"], upstream.url, plugins={
        "jwt": {"jwks_file": str(jwks), "algorithms": ["RS256", "ES256"],
                "forward_claims": {"sub": "X-User"}}})]))
    for private, alg in ((signer_rsa, "RS256"), (signer_ec, "ES256")):
        status, body = get(gw.port, "/j/echo", bearer(private, alg, "idp-2026", sub=alg))
        assert status == 200, (alg, status, body)
        assert upstream_saw(body)["x-user"] == alg
    # the kid names no key of a third signer: its token is refused as before
    other = ec.generate_private_key(ec.SECP256R1())
    status, body = get(gw.port, "/j/echo", bearer(other, "ES256", "idp-2026"))
    assert status == 401 and b"signature does not verify" in body, (status, body)


# -- 3. an RSA key without "alg" and a route of PS256 or RS512 -----------------------------------

def test_an_rsa_key_without_alg_verifies_each_rsa_algorithm_the_route_accepts(launcher, upstream,
                                                                           tmp_path):
    signer = rsa_key()
    jwks = tmp_path / "jwks.json"
    key = jwk("bank-1", signer)
    assert "alg" not in key
    jwks.write_text(json.dumps({"keys": [key]}))
    gw = launcher.gateway(gateway_conf([
        route("ob", ["/ob/*rest"], upstream.url, plugins={
            "jwt": {"jwks_file": str(jwks), "algorithms": ["PS256", "RS512"]}}),
        route("rs", ["/rs/*rest"], upstream.url, plugins={"jwt": {"jwks_file": str(jwks)}})]))
    for alg in ("PS256", "RS512"):
        status, body = get(gw.port, "/ob/echo", bearer(signer, alg, "bank-1"))
        assert status == 200, (alg, status, body)
    status, body = get(gw.port, "/ob/echo", bearer(signer, "RS256", "bank-1"))
    assert status == 401 and b"algorithm is not accepted" in body, (status, body)
    assert get(gw.port, "/rs/echo", bearer(signer, "RS256", "bank-1"))[0] == 200
    status, body = get(gw.port, "/rs/echo", bearer(signer, "PS256", "bank-1"))
    assert status == 401 and b"algorithm is not accepted" in body, (status, body)


# -- 4. one malformed JWKS entry beside good keys -------------------------------------------------

def test_a_malformed_jwks_entry_is_skipped_not_a_500_for_every_token(launcher, upstream,
                                                                     tmp_path):
    signer = rsa_key()
    good = {**jwk("good", signer), "alg": "RS256"}
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [good, {"kty": "oct", "kid": "no-k"}]}))
    gw = launcher.gateway(gateway_conf([route("j", ["/j/*rest"], upstream.url, plugins={
        "jwt": {"jwks_file": str(jwks)}})]))
    token = bearer(signer, "RS256", "good")
    status, body = get(gw.port, "/j/echo", token)
    assert status == 200, (status, body)
    time.sleep(0.05)
    jwks.write_text(json.dumps({"keys": [{"kty": "RSA", "kid": "bad-alg", "alg": ["RS256"]},
                                         good]}))
    time.sleep(1.2)                             # the file is looked at once a second
    status, body = get(gw.port, "/j/echo", token)
    assert status == 200, (status, body)
    log = gw.log()
    assert "Traceback" not in log
    assert "entry 1 (kid 'no-k') is no key" in log and "entry 0 (kid 'bad-alg')" in log, log


# -- 5. a boolean claim, compared as Python spells it -------------------------------------------

def test_a_boolean_claim_matches_a_condition_written_as_json_spells_it(launcher):
    secret = "hs256-secret-for-the-boolean-test-0123456789"
    verified, other = launcher.upstream("verified"), launcher.upstream("other")
    jwt_conf = {"algorithms": ["HS256"], "secret": secret}
    gw = launcher.gateway(gateway_conf([
        route("v", ["/app/*rest"], verified.url, claims={"email_verified": "true"},
              plugins={"jwt": jwt_conf}),
        route("o", ["/app/*rest"], other.url, plugins={"jwt": jwt_conf}),
        {"id": "s", "paths": ["/split/*rest"], "upstream": "other", "plugins": {
            "jwt": jwt_conf,
            "split": {"upstreams": [{"upstream": "other", "weight": 100},
                                    {"upstream": "verified", "weight": 0}],
                      "rules": [{"claim": {"staff": "true"}, "upstream": "verified"}]}}}],
        upstreams={"verified": {"targets": [{"url": verified.url}]},
                   "other": {"targets": [{"url": other.url}]}}))

    def served_by(path, **claims):
        token = pyjwt.encode({"sub": "u", "exp": int(time.time()) + 600, **claims}, secret,
                             "HS256")
        status, body = get(gw.port, path, {"Authorization": f"Bearer {token}"})
        assert status == 200, body
        return json.loads(body)["server"]
    assert served_by("/app/echo", email_verified=True) == "verified"
    assert served_by("/app/echo", email_verified=False) == "other"
    assert served_by("/app/echo") == "other"
    assert served_by("/split/echo", staff=True) == "verified"
    assert served_by("/split/echo", staff=False) == "other"


# -- 6. an iat in the future, said to be an nbf -------------------------------------------------

def test_a_token_issued_in_the_future_is_refused_for_its_iat_not_an_nbf_it_lacks(launcher,
                                                                               upstream):
    secret = "hs256-secret-for-the-iat-test-0123456789ab"
    gw = launcher.gateway(gateway_conf([route("j", ["/j/*rest"], upstream.url, plugins={
        "jwt": {"algorithms": ["HS256"], "secret": secret, "leeway": 5}})]))
    now = int(time.time())
    token = pyjwt.encode({"sub": "u", "exp": now + 7200, "iat": now + 3600}, secret, "HS256")
    status, body = get(gw.port, "/j/echo", {"Authorization": f"Bearer {token}"})
    assert status == 401 and json.loads(body)["message"] == "the token is not valid yet (iat)", \
        (status, body)
    token = pyjwt.encode({"sub": "u", "exp": now + 7200, "nbf": now + 3600}, secret, "HS256")
    status, body = get(gw.port, "/j/echo", {"Authorization": f"Bearer {token}"})
    assert status == 401 and json.loads(body)["message"] == "the token is not valid yet (nbf)", \
        (status, body)


def test_check_warns_of_a_boolean_claim_written_as_python_spells_it(tmp_path, upstream):
    """Boolean claims are compared as JSON spells them since the auth attack pass (dec06zd);
    a conf written with "True" (which the old comparison matched) now matches no boolean."""
    conf = gateway_conf([{**route("v", ["/v"], upstream.url), "claims": {"email_verified": "True"},
                          "plugins": {"jwt": {"secret": "s" * 40, "algorithms": ["HS256"]}}}])
    code, out = check_conf(tmp_path, conf)
    assert code == 0, out
    assert 'route v: claims.email_verified = "True" matches a text claim "True" only' in out, out
