"""The review of f3632b5 and 4d496a6 as an attacker (helper h7), pure code: each test failed
on 4d496a6 (tests/integration/test_review_attack_dec05j.py has the rest).

- A Redis password holding "@" and then "/", "?" or "#" ("ab@cd/ef"): refused in a single-host
  URL (redis-py reads host "cd", password "ab"), and masked whole in a multi-host one (the
  gateway's parser takes the user part to the last "@"), in values and in texts alike.
- RateLimit headers of a rate no few windows make whole (0.999 a second, or an adaptive rate
  under 1): each answer, each 429 of a flood too, searched 1000 windows for its quota.
"""
import time

import pytest

SECRET = "hunter3-tail"


@pytest.mark.parametrize("url", [
    f"redis+sentinel://:ab@{SECRET}/x@127.0.0.1:26379,127.0.0.1:26380/m",
    f"redis+cluster://u:ab@{SECRET}?x@127.0.0.1:7000,127.0.0.1:7001",
    f"redis://:ab@{SECRET}#x@127.0.0.1:6379/0",
])
def test_a_password_with_an_at_sign_before_a_slash_is_masked_whole(url):
    from gwserver.redact import mask_url, mask_userinfo, redact
    for shown in (redact(url, "url"), mask_url(url), mask_userinfo(f"cannot connect: {url}: x")):
        assert SECRET not in shown and "127.0.0.1" in shown, shown


@pytest.mark.parametrize("url", [f"redis://:ab@{SECRET}/x@127.0.0.1:6379/0",
                                 f"rediss://u:ab@{SECRET}?x@127.0.0.1:6379"])
def test_a_single_host_url_redis_py_reads_another_host_from_is_refused(url):
    from gwserver.core.schema import Invalid
    from gwserver.redact import redact
    from gwserver.settings import redis_url
    with pytest.raises(Invalid) as caught:
        redis_url(url)
    assert "percent-encoded" in str(caught.value) and SECRET not in str(caught.value)
    # what needs no refusal or more masking has none
    assert redis_url("redis://alice:pw@127.0.0.1:6379/0") == "redis://alice:pw@127.0.0.1:6379/0"
    assert redact("redis+sentinel://alice:pw@a:26379,b:26379/m", "url") == \
        "redis+sentinel://alice:***@a:26379,b:26379/m"


@pytest.mark.parametrize("rate", [0.999, 0.7071])
def test_ratelimit_headers_of_a_rate_no_few_windows_make_whole_are_cheap(rate):
    from gwserver.core.ratelimit import Decision
    from gwserver.plugins.rate_limit import _lines
    decision = Decision(True, rate, 0, 1.0, 0.0)
    first = _lines(decision, 1.0)
    started = time.perf_counter()
    for _ in range(2000):
        assert _lines(decision, 1.0) == first
    # 2000 x 0.2 ms (0.4 s) before; a few ms now
    assert time.perf_counter() - started < 0.1
