"""Review of the Dec 03 fixes: defects shown by tests that failed on e4ea61d.

Every test starts a real gateway (the launcher fixture) with a real redis-server for the shared
limit, and an in-process HTTP/1.1 upstream on 127.0.0.1 that records the heads it got
(tests/integration/test_attack_pass_dec03.RecordingHttp1), closed in teardown.

1. A limit keyed on ``header:NAME`` counted a header the client named in ``Connection``: the
   gateway drops such a header on the way upstream (RFC 9110 7.6.1), so the upstream served
   an anonymous request (which shares the one bucket of requests without the header), while
   the limit counted it in a bucket of the client's choosing, a fresh one per request.
"""
import pytest

from ..conftest import gateway_conf, route
from .test_attack_pass_dec03 import RecordingHttp1, raw_request


@pytest.fixture
def h1_up():
    up = RecordingHttp1()
    yield up
    up.close()


@pytest.fixture
def limited_gw(launcher, h1_up):
    redis = launcher.redis()
    return launcher.gateway(gateway_conf([
        route("k", ["/k"], h1_up.url, plugins={"rate_limit": {
            "rate": 1, "per": 3600, "burst": 1, "key": "header:X-Api-Key"}}),
    ], redis={"url": redis.url}))


def _status(gw, fields):
    answer = raw_request(gw.port, b"GET /k HTTP/1.1\r\nHost: api.test\r\n%s"
                         b"Connection: close\r\n\r\n" % fields)
    return int(answer.split(b" ", 2)[1])


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
