"""The pure pieces of the attack pass of 2026-12-05 (helper s7) on 6b404b2 and cbd468d; the
defects are told in tests/integration/test_review_attack_dec05p.py. Each failed on 28b90d4.

- A ``?password=`` of a redis URL was masked to its first "&", "#" or space, and the rest of
  the password showed; ``check`` took a URL whose query password redis-py cuts there.
- ``redis+cluster://...:7001/0`` (its one database) was refused.
"""
import pytest

from gwserver.core.schema import Invalid
from gwserver.redact import mask_url, mask_userinfo, redact
from gwserver.settings import redis_url

SECRET = "Tr0ub4dor"


@pytest.mark.parametrize("url, shown", [
    (f"redis://10.0.0.7:6379/0?password=x&3{SECRET}#h", "redis://10.0.0.7:6379/0?password=***"),
    (f"redis://h:6379/0?password=a {SECRET}&db=2", "redis://h:6379/0?password=***&db=2"),
    (f"unix:///run/r.sock?db=1&password=a#{SECRET}", "unix:///run/r.sock?db=1&password=***"),
    (f"redis://h/0?pass%77ord=&{SECRET}", "redis://h/0?pass%77ord=***"),
])
def test_a_query_password_is_masked_to_the_next_option(url, shown):
    assert redact(url, "url") == shown
    assert mask_url(url) == shown
    if " " not in url:      # (in a text a URL ends at white space)
        assert SECRET not in mask_userinfo(f"redis unreachable ({url})")


def test_the_mask_of_a_query_password_stops_at_the_next_option_and_no_other_url_changes():
    assert redact("redis://h/0?client_name=gw&password=x&db=1", "url") == \
        "redis://h/0?client_name=gw&password=***&db=1"
    # not a redis URL: the value ends at the "&" as before
    assert redact("https://h/x?token=a&b", "url") == "https://h/x?token=***&b"


@pytest.mark.parametrize("url", [
    f"redis://10.0.0.7:6379/0?password={SECRET}&3#horse",
    f"redis://10.0.0.7:6379/0?password={SECRET}&horse",
    f"unix:///run/r.sock?password={SECRET}#horse",
])
def test_a_query_password_redis_py_would_cut_is_refused(url):
    with pytest.raises(Invalid) as refused:
        redis_url(url)
    assert "%26" in str(refused.value) and SECRET not in str(refused.value)


@pytest.mark.parametrize("url", [
    "redis://10.0.0.7:6379/0#main", "redis://10.0.0.7:6379/0?db=1&",
    f"redis://10.0.0.7:6379/0?password={SECRET}%263%23horse",
    "redis+cluster://127.0.0.1:7000,127.0.0.1:7001/0",
    "redis+cluster://127.0.0.1:7000,127.0.0.1:7001/",
])
def test_urls_that_passed_before_still_pass(url):
    assert redis_url(url) == url


def test_a_cluster_url_with_another_db_is_still_refused():
    with pytest.raises(Invalid, match="one database"):
        redis_url("redis+cluster://127.0.0.1:7000,127.0.0.1:7001/1")
