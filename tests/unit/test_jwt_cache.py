"""The jwt plugin's per-worker cache of verified tokens (in process: no I/O involved)."""
import time

import jwt as pyjwt
import pytest

from gwserver.plugins import jwt as jwt_plugin

SECRET = "s" * 32


def verifier(**conf):
    base = {**jwt_plugin.SCHEMA.validate({"algorithms": ["HS256"], "secret": SECRET}), **conf}
    return jwt_plugin.prepare(base)["verifier"]


@pytest.fixture
def decodes(monkeypatch):
    calls = []
    real = pyjwt.decode

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)
    monkeypatch.setattr(pyjwt, "decode", counting)     # the plugin imports PyJWT lazily
    return calls


def make(exp_in=300, **claims):
    return pyjwt.encode({"sub": "a", "exp": int(time.time()) + exp_in, **claims}, SECRET,
                        algorithm="HS256")


def test_a_hot_token_is_verified_once(decodes):
    check = verifier()
    token = make()
    assert all(check.verify(token)["sub"] == "a" for _ in range(100))
    assert len(decodes) == 1


def test_the_cache_never_outlives_exp_and_can_be_off(decodes):
    check = verifier(leeway=0.0)
    token = make(exp_in=1)
    check.verify(token)
    assert check.cache[token][2] <= time.time() + 1      # (claims, signer, until)
    time.sleep(max(0.0, check.cache[token][2] - time.time()) + 0.05)
    with pytest.raises(jwt_plugin.TokenRejected, match="expired"):
        check.verify(token)                     # re-verified, and now refused
    assert len(decodes) == 2
    off = verifier(cache_seconds=0.0)
    for _ in range(3):
        off.verify(make())
    assert off.cache == {}


def test_the_cache_is_bounded(decodes):
    check = verifier(cache_size=10)
    for i in range(25):
        check.verify(make(n=i))
    assert len(check.cache) == 10


def test_es256_and_hs512_verify_and_wrong_kinds_do_not():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    es = jwt_plugin.prepare(jwt_plugin.SCHEMA.validate(
        {"algorithms": ["ES256"], "public_key": pem}))["verifier"]
    good = pyjwt.encode({"sub": "e", "exp": int(time.time()) + 60}, key, algorithm="ES256")
    assert es.verify(good)["sub"] == "e"
    with pytest.raises(jwt_plugin.TokenRejected, match="algorithm is not accepted"):
        es.verify(make())                                           # an HS256 token
    long_secret = "s" * 64                  # RFC 7518: at least the hash size for HS512
    hs = verifier(algorithms=["HS512"], secret=long_secret)
    token = pyjwt.encode({"sub": "h", "exp": int(time.time()) + 60}, long_secret,
                         algorithm="HS512")
    assert hs.verify(token)["sub"] == "h"
