"""Attack pass 3 (Dec 03) on the shared-state plugins and identity: defects shown by tests that
failed on c8937ea and pass with the fixes that followed.

Every test starts real processes (a gateway from the launcher fixture, a real redis-server
where the limit is shared) and talks to them over loopback; the upstream is an in-process
socket server on 127.0.0.1 that records the request heads it got
(tests/integration/test_attack_pass_dec03.RecordingHttp1), closed in teardown.

1. A limit keyed on ``header:NAME`` counts every spelling of one value apart: HTTP/1.1 field
   values kept their trailing white space (llhttp passes it on), which RFC 9110 5.5 says is
   no part of the value and every upstream strips, so ``X-Api-Key: KEY``, ``KEY `` and
   ``KEY\\t`` were three buckets for one key: a client with one key got a fresh bucket per
   request, as many as the field's size allows.
2. The same limit with the header sent twice (``KEY`` then anything) counted the joined
   ``KEY, junk``: a new bucket per second copy, while an upstream that reads the first copy
   (Go's Header.Get, Java's getHeader, nginx's $http_) served it as ``KEY``; limit_conn, which
   keys its slots the same way, gave a new slot per second copy.
3. key_auth's and basic_auth's failure budgets (``max_failures`` per client address) keyed an
   IPv6 client by its full address: a client holding a /64 (any VPS) took a fresh budget for
   each guess, so the bound on bcrypt checks and full key look-ups did not hold for it
   (rate_limit counts such a client by its /64 for this very reason).
4. An adaptive rate_limit counted answers the gateway made itself as the upstream's
   successes: a client whose uploads stall (408 after client_body_timeout, nothing reached
   the upstream) held the route's effective rate up, and raised it to its ceiling, while the
   upstream failed every request.
5. (A review of the fixes, on e4ea61d.) A limit keyed on ``header:NAME`` counted a header the
   client named in ``Connection``: the gateway drops such a header on the way upstream (RFC
   9110 7.6.1), so the upstream served a request without it (the one bucket of such
   requests), while the limit counted it in a bucket of the client's choosing.
"""
import base64
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from gwserver.plugins.basic_auth import hash_password
from gwserver.plugins.key_auth import hash_key

from ..conftest import gateway_conf, route
from .test_attack_pass_dec03 import raw_request

KEY = b"ak_attack_pass_c_0123456789"


@pytest.fixture
def limited_gw(launcher, h1_up):
    redis = launcher.redis()
    return launcher.gateway(gateway_conf([
        route("k", ["/k"], h1_up.url, plugins={"rate_limit": {
            "rate": 1, "per": 3600, "burst": 1, "key": "header:X-Api-Key"}}),
        route("c", ["/c"], h1_up.url, plugins={"limit_conn": {
            "limit": 1, "key": "header:X-Api-Key"}}),
    ], redis={"url": redis.url}))


def _status(gw, fields, path=b"/k"):
    answer = raw_request(gw.port, b"GET %s HTTP/1.1\r\nHost: api.test\r\n%s"
                         b"Connection: close\r\n\r\n" % (path, fields))
    return int(answer.split(b" ", 2)[1])


# -- 1. trailing white space: one key, many buckets -------------------------------------------

def test_trailing_white_space_is_no_new_bucket(limited_gw, h1_up):
    """The bucket of KEY holds one request an hour; its spellings with white space after the
    value (which the upstream reads as KEY) are that bucket's too: 429, never forwarded."""
    assert _status(limited_gw, b"X-Api-Key: " + KEY + b"\r\n") == 200
    spellings = [b" ", b"  ", b"\t", b" \t ", b" " * 200]
    answers = [_status(limited_gw, b"X-Api-Key: " + KEY + tail + b"\r\n") for tail in spellings]
    assert answers == [429] * len(spellings)
    assert len(h1_up.heads) == 1


def test_held_leading_white_space_is_no_new_bucket(limited_gw, h1_up):
    """Held: white space before the value was always taken off (llhttp does)."""
    assert _status(limited_gw, b"X-Api-Key: " + KEY + b"\r\n") == 200
    assert _status(limited_gw, b"X-Api-Key: \t  " + KEY + b"\r\n") == 429
    assert len(h1_up.heads) == 1


def test_the_upstream_gets_the_value_without_trailing_white_space(limited_gw, h1_up):
    """What was counted is what is forwarded: the value, not its padding."""
    assert _status(limited_gw, b"X-Api-Key: " + KEY + b" \t \r\n") == 200
    assert b"X-Api-Key: " + KEY + b"\r\n" in h1_up.heads[-1] + b"\r\n"


# -- 2. the key header twice: a new bucket per second copy ------------------------------------

@pytest.mark.parametrize("copies", [
    [KEY, b"junk-1"],           # an upstream that reads the first copy serves KEY
    [b"junk-2", KEY],           # one that reads the last (PHP) serves KEY
    [KEY, KEY],                 # either serves KEY; joined, "KEY, KEY" was a bucket of its own
])
def test_the_key_header_twice_is_refused_not_a_new_bucket(limited_gw, h1_up, copies):
    """KEY's bucket is spent; a request carrying the header twice is refused (400) and never
    reaches the upstream, whatever the copies say."""
    assert _status(limited_gw, b"X-Api-Key: " + KEY + b"\r\n") == 200
    fields = b"".join(b"X-Api-Key: %s\r\n" % copy for copy in copies)
    answer = raw_request(limited_gw.port, b"GET /k HTTP/1.1\r\nHost: api.test\r\n%s"
                         b"Connection: close\r\n\r\n" % fields)
    assert answer.startswith(b"HTTP/1.1 400 ") and b"more than once" in answer, answer[:300]
    assert len(h1_up.heads) == 1


def test_the_key_header_twice_is_refused_by_limit_conn_too(limited_gw, h1_up):
    """limit_conn keys its slots as rate_limit keys its buckets: the same 400."""
    assert _status(limited_gw, b"X-Api-Key: " + KEY + b"\r\n", b"/c") == 200
    assert _status(limited_gw, b"X-Api-Key: " + KEY + b"\r\nX-Api-Key: x\r\n", b"/c") == 400
    assert len(h1_up.heads) == 1


def test_held_one_copy_with_a_comma_is_one_value(limited_gw, h1_up):
    """Held: a single field whose value holds a comma is one value, its own bucket (an
    upstream reads it whole too, and no key of ours holds one)."""
    assert _status(limited_gw, b"X-Api-Key: " + KEY + b"\r\n") == 200
    assert _status(limited_gw, b"X-Api-Key: " + KEY + b", x\r\n") == 200
    assert _status(limited_gw, b"X-Api-Key: " + KEY + b", x\r\n") == 429


# -- 3. failure budgets: an IPv6 client spreads its guesses over its /64 ----------------------

@pytest.fixture
def auth_gw(launcher, h1_up):
    # The gateway trusts 127.0.0.1 to name the client, as a load balancer in front would:
    # X-Forwarded-For says which IPv6 address of one /64 each guess came from.
    return launcher.gateway(gateway_conf([
        route("b", ["/b"], h1_up.url, plugins={"basic_auth": {
            "max_failures": 2, "max_failures_per_user": 0}}),
        route("k", ["/k"], h1_up.url, plugins={"key_auth": {"max_failures": 2}}),
    ], server={"trusted_proxies": ["127.0.0.1/32"]}, consumers={
        "ops": {"credentials": {
            "basic_auth": {"username": "ops", "password_hash": hash_password("right", 4)},
            "key_auth": {"key_hash": hash_key(KEY.decode())}}}}))


def _from(gw, address, path, field):
    answer = raw_request(gw.port, b"GET %s HTTP/1.1\r\nHost: api.test\r\nX-Forwarded-For: %s"
                         b"\r\n%s\r\nConnection: close\r\n\r\n" % (path, address, field))
    return int(answer.split(b" ", 2)[1])


@pytest.mark.parametrize("path, guess", [
    (b"/b", lambda i: b"Authorization: Basic " + base64.b64encode(b"user%d:wrong" % i)),
    (b"/k", lambda i: b"X-API-Key: ak_guess_%d" % i),
])
def test_failure_budgets_count_an_ipv6_client_by_its_network(auth_gw, path, guess):
    """max_failures = 2 per address: a client holding 2001:db8:1:2::/64 (any VPS does) that
    takes a new address of it for each guess is still one client, as rate_limit counts it
    (ipv6_prefix 64): its third guess is refused without a bcrypt check or a look-up."""
    answers = [_from(auth_gw, b"2001:db8:1:2::%x" % (i + 1), path, guess(i)) for i in range(6)]
    assert answers == [401, 401, 429, 429, 429, 429]


def test_held_other_networks_have_budgets_of_their_own(auth_gw):
    """Held: another /64, and an IPv4 client, are other clients."""
    bad = b"Authorization: Basic " + base64.b64encode(b"user:wrong")
    assert [_from(auth_gw, b"2001:db8:1:2::1", b"/b", bad) for _ in range(3)] == [401, 401, 429]
    assert _from(auth_gw, b"2001:db8:1:3::1", b"/b", bad) == 401
    assert _from(auth_gw, b"192.0.2.7", b"/b", bad) == 401


# -- 4. adaptive limits: answers the gateway made itself count as the upstream's ---------------

def _limit_of(answer):
    for line in answer.split(b"\r\n\r\n")[0].split(b"\r\n"):
        if line.lower().startswith(b"ratelimit-limit:"):
            return int(line.partition(b":")[2])
    return None


def test_stalled_uploads_do_not_hold_up_an_adaptive_limit(launcher):
    """The upstream fails every request; a client sends, each window, 60 uploads that stall
    (the gateway answers 408 after client_body_timeout, nothing reached the upstream) beside
    3 requests the upstream fails. Only the upstream's answers move the effective rate
    (docs/ratelimit.md): it goes down from 100, never up."""
    up = launcher.upstream()
    limit = {"rate": 100, "per": 1, "burst": 100, "key": "route",
             "adaptive": {"floor": 5, "ceiling": 400, "window": 1}}
    gw = launcher.gateway(gateway_conf([route("a", ["/*rest"], up.url,
                                              plugins={"rate_limit": limit})],
                                       server={"client_body_timeout": 0.5}))
    stalled = (b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n"
               b"Connection: close\r\n\r\nxxxxx")
    failing = b"GET /status/500 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    seen = []
    with ThreadPoolExecutor(60) as pool:
        for _ in range(4):
            started = time.monotonic()
            stalls = list(pool.map(lambda _: raw_request(gw.port, stalled), range(60)))
            assert all(answer.startswith(b"HTTP/1.1 408 ") for answer in stalls)
            seen += [_limit_of(raw_request(gw.port, failing)) for _ in range(3)]
            time.sleep(max(0.0, 1.1 - (time.monotonic() - started)))
    seen.append(_limit_of(raw_request(gw.port, failing)))
    assert seen[-1] < 100 and max(seen) == 100, seen


# -- 5. a key header the client names in Connection ------------------------------------------

def test_a_key_header_named_in_connection_is_no_bucket_of_its_own(limited_gw, h1_up):
    """The bucket of requests without X-Api-Key holds one an hour. One whose X-Api-Key the
    client names in Connection reaches the upstream without it, as a request without the
    header: it is that bucket's (429), not a bucket per value."""
    assert _status(limited_gw, b"") == 200
    answers = [_status(limited_gw, b"X-Api-Key: fresh-%d\r\nConnection: X-Api-Key\r\n" % i)
               for i in range(3)]
    assert answers == [429, 429, 429]
    assert len(h1_up.heads) == 1


def test_held_a_key_header_not_named_in_connection_is_its_own_bucket(limited_gw, h1_up):
    """Held: naming another header in Connection changes nothing for the key."""
    assert _status(limited_gw, b"") == 200
    assert _status(limited_gw, b"X-Api-Key: k1\r\nConnection: X-Other\r\n") == 200
    assert _status(limited_gw, b"X-Api-Key: k1\r\n") == 429
    assert b"x-api-key: k1" in h1_up.heads[-1].lower()
