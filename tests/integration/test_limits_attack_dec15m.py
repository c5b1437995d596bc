"""Attack pass (Dec 15, helper a27): getting past the limits as a hostile client.

Every test starts a real gateway (the launcher fixture) with its limits in a real
redis-server, and talks to it over loopback with raw HTTP/1.1; the upstream is the recording
one of tests/integration/conftest.py (h1_up), on 127.0.0.1.

1. A limit keyed on ``header:Authorization`` counted each base64 spelling of one Basic
   credential apart. Base64's last character carries bits no byte holds (2 bits before
   "=", 4 before "=="), and decoders ignore them: basic_auth's (b64decode, validate=True),
   Go's StdEncoding, Python's. ``user:pas`` is ``dXNlcjpwYXM=``, ``...YXN=``, ``...YXO=`` and
   ``...YXP=``: one user and password, four buckets (sixteen for a "==" credential). The key
   now holds the credentials as decoded and encoded again, as basic_auth reads them.
2. With ``server.headers_with_underscores = "allow"``, a limit keyed on ``header:X-Api-Key``
   took no notice of ``X_Api_Key``, which a CGI/WSGI upstream reads as HTTP_X_API_KEY, the
   same variable: a key sent so was served past its spent hour, counted in the one bucket of
   requests without the header, and spent that bucket for every such client. It is now a
   copy of the header (alone: the header's value; beside it: a 400, as two copies are).
"""
import base64

import pytest

from ..conftest import gateway_conf, route
from gwserver.plugins.basic_auth import hash_password
from .test_attack_pass_dec03 import raw_request

ONE_AN_HOUR = {"rate": 1, "per": 3600, "burst": 1}


def status(gw, path, fields):
    answer = raw_request(gw.port, b"GET %s HTTP/1.1\r\nHost: api.test\r\n%s"
                         b"Connection: close\r\n\r\n" % (path, fields))
    return int(answer.split(b" ", 2)[1])


@pytest.fixture
def basic_gw(launcher, h1_up):
    redis = launcher.redis()
    limit = {"rate_limit": {**ONE_AN_HOUR, "key": "header:Authorization"}}
    return launcher.gateway(gateway_conf([
        # the gateway checks the password, and passes it on (the upstream reads it too)
        route("gb", ["/gb"], h1_up.url, plugins={
            "basic_auth": {"hide_credentials": False}, **limit}),
        # the upstream checks it: the limit keys on what the upstream will read
        route("ub", ["/ub"], h1_up.url, plugins=limit),
    ], redis={"url": redis.url}, consumers={"ops": {"credentials": {
        "basic_auth": {"username": "ops", "password_hash": hash_password("pas", 4)}}}}))


def spellings(credentials):
    """Every base64 spelling of ``credentials`` that a decoder reads back as them."""
    canonical = base64.b64encode(credentials)
    pad = canonical.count(b"=")
    if not pad:
        return [canonical]
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet.index(canonical[-pad - 1:-pad])
    free = 1 << (2 * pad)          # the bits of the last character no byte holds
    return [canonical[:-pad - 1] + alphabet[last + i:last + i + 1] + b"=" * pad
            for i in range(free)]


@pytest.mark.parametrize("path", [b"/gb", b"/ub"])
def test_base64_spellings_of_one_basic_credential_are_one_bucket(basic_gw, h1_up, path):
    """ops:pas (seven bytes: "==") has sixteen base64 spellings; each was a fresh request an
    hour."""
    forms = spellings(b"ops:pas")
    assert len(forms) == 16 and {base64.b64decode(f, validate=True) for f in forms} == \
        {b"ops:pas"}
    got = [status(basic_gw, path, b"Authorization: Basic %s\r\n" % f) for f in forms]
    assert got == [200] + [429] * 15
    assert len(h1_up.heads) == 1


def test_held_another_credential_is_another_bucket(basic_gw, h1_up):
    """Held: the key still tells credentials apart, and keeps a malformed one as sent."""
    assert status(basic_gw, b"/ub", b"Authorization: Basic %s\r\n"
                  % base64.b64encode(b"ops:pas")) == 200
    assert status(basic_gw, b"/ub", b"Authorization: Basic %s\r\n"
                  % base64.b64encode(b"ops:pat")) == 200
    assert status(basic_gw, b"/ub", b"Authorization: Basic not*base64\r\n") == 200
    assert status(basic_gw, b"/ub", b"Authorization: Basic not*base64\r\n") == 429


# -- 2. an underscore spelling of the header a limit keys on ------------------------------------

@pytest.fixture
def underscore_gw(launcher, h1_up):
    redis = launcher.redis()
    return launcher.gateway(gateway_conf([
        route("k", ["/k"], h1_up.url,
              plugins={"rate_limit": {**ONE_AN_HOUR, "key": "header:X-Api-Key"}}),
    ], redis={"url": redis.url}, server={"headers_with_underscores": "allow"}))


def test_underscore_spelling_of_the_keyed_header_is_that_header(underscore_gw, h1_up):
    """With headers_with_underscores = "allow", X_Api_Key reaches a CGI/WSGI upstream as
    HTTP_X_API_KEY, the variable X-Api-Key is: K1's hour was spent, and X_Api_Key: K1 was
    served again (counted in the one bucket of requests without the header); with
    X-Api-Key as well, the upstream read one of two keys the limit never chose between."""
    assert status(underscore_gw, b"/k", b"X-Api-Key: K1\r\n") == 200
    assert status(underscore_gw, b"/k", b"X_Api_Key: K1\r\n") == 429
    assert status(underscore_gw, b"/k", b"X-Api-Key: K2\r\nX_API_KEY: K1\r\n") == 400
    assert len(h1_up.heads) == 1


def test_underscore_spelling_spends_not_the_bucket_of_requests_without_it(underscore_gw,
                                                                          h1_up):
    """A key sent only as X_Api_Key was counted in the one bucket of requests without the
    header, which a client then spent for everyone (here: Other: 1, a 429). It is K3's."""
    assert status(underscore_gw, b"/k", b"X_Api_Key: K3\r\n") == 200
    assert status(underscore_gw, b"/k", b"Other: 1\r\n") == 200
    assert status(underscore_gw, b"/k", b"X-Api-Key: K3\r\n") == 429
