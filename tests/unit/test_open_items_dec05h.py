"""Pure parts of the open items of the attack pass of 2026-12-05, helper h1 (the integration
tests are tests/integration/test_open_items_dec05h.py). Each failed before the fix.

- A URL's secrets as other readers than RFC 3986 take them: a user part with an unencoded
  "/", "?" or "#" ("redis://us/er:pass@host"), read whole by the gateway's redis+sentinel://
  parser and meant so by whoever wrote it, and a password redis-py takes from the query.
- RateLimit-Limit of a rate that is not whole: a whole quota and the window it is whole in.
- Consumers that trade credentials: each new version wanted what another's served version
  held, all were refused, and nothing tried them again.
"""
import json

import pytest

from gwserver.core.schema import show
from gwserver.redact import mask_url, mask_userinfo, redact

PW = "s3cr3t-pw"


@pytest.mark.parametrize("url", [
    f"redis://us/er:{PW}@h:6379/0", f"redis://us#er:{PW}@h", f"redis://us?er:{PW}@h",
    f"redis://user:pa/{PW}@h", f"redis://:x#{PW}@h", f"unix://us/er:{PW}@/run/r.sock",
    f"redis+sentinel://us/er:{PW}@a:1,b:2/m", f"redis://h:6379/0?db=1&password={PW}",
    f"redis://h/0?auth_token={PW}"])
def test_no_reading_of_a_url_shows_its_password(url):
    for shown in (redact(url), mask_userinfo(f"connect to {url} failed"), mask_url(url),
                  show(url), str(redact({"redis": {"url": url}}))):
        assert PW not in shown, shown


def test_what_holds_no_secret_still_shows():
    assert redact("redis://alice:pw@h:6379/0") == "redis://alice:***@h:6379/0"
    assert redact("http://h/a@b") == "http://h/a@b"
    assert redact("redis://h:6379/0?db=1&socket_timeout=2") == \
        "redis://h:6379/0?db=1&socket_timeout=2"
    assert redact("redis://h:6379/0?password=p&db=1") == "redis://h:6379/0?password=***&db=1"
    assert mask_userinfo("GET /a?password=x") == "GET /a?password=x"    # not a URL


@pytest.mark.parametrize("rate, per, expected", [
    (0.5, 1, (1, 2)), (2.5, 1, (5, 2)), (0.3, 1, (3, 10)), (1.5, 10, (3, 20)),
    (1 / 3, 1, (1, 3)), (0.25, 4, (1, 16)), (0.001, 1, (1, 1000)), (0.7, 0.3, (7, 3))])
def test_a_rate_that_is_not_whole_is_a_whole_quota_over_whole_seconds(rate, per, expected):
    from gwserver.core.ratelimit import quota
    assert quota(rate, per) == expected


def test_a_quota_no_window_makes_whole_never_says_more_than_the_rate():
    import math

    from gwserver.core.ratelimit import quota
    requests, seconds = quota(math.pi / 10, 1)          # no window of 1000 holds it whole
    assert requests >= 1 and requests / seconds <= math.pi / 10


def test_consumers_that_rotate_their_keys_get_them_in_any_order_of_the_puts():
    from gwserver.core.table import LiveTable
    from gwserver.plugins import load_registry
    from gwserver.plugins.key_auth import hash_key
    from gwserver.settings import SERVER, UPSTREAM_DEFAULTS

    def raw(key_hash):
        return json.dumps({"credentials": {"key_auth": {"key_hash": key_hash}}}).encode()
    hashes = [hash_key(f"ak_rotate_{i}_000000000000000{i}") for i in range(4)]
    t = LiveTable(UPSTREAM_DEFAULTS.defaults(), SERVER.defaults(), {}, load_registry())
    for i, name in enumerate("abc"):
        assert t.put_consumer(name, raw(hashes[i]), i + 1)
    assert t.put_consumer("d", raw(hashes[0]), 4) is False     # a's, and a keeps it
    # a takes b's key, b c's, c a's: the first two wait, the third completes the ring
    assert t.put_consumer("a", raw(hashes[1]), 5) is False
    assert t.put_consumer("b", raw(hashes[2]), 6) is False
    assert t.put_consumer("c", raw(hashes[0]), 7)
    held = {name: t.consumers.get(name).credentials["key_auth"]["key_hash"] for name in "abc"}
    assert held == {"a": hashes[1], "b": hashes[2], "c": hashes[0]}
    assert t.consumers.get("d") is None and "consumers/d" in t.rejected
    assert not {"consumers/a", "consumers/b", "consumers/c"} & set(t.rejected)
