"""The pure pieces of the attack pass of 2026-12-05 (helper s13) on bd3aadf; the defects are
told in tests/integration/test_review_attack_dec05v.py. Each failed on bd3aadf.

- A secret's name after a ";" or "?" in an ordinary option's value of a redis URL
  (``?client_name=gw;password=pw``: one option to redis-py) was read as that value and
  shown whole. The value ends at ";name=" or "?name=" too; the rest shows as written.
"""
import pytest

from gwserver.redact import mask_url, mask_userinfo, redact

SECRET = "h0rse99"


@pytest.mark.parametrize("url, shown", [
    (f"redis://h:6379/0?client_name=gw;password={SECRET}",
     "redis://h:6379/0?client_name=gw;password=***"),
    (f"rediss://h/0?db=1&client_name=gw?token={SECRET}&db=2",
     "rediss://h/0?db=1&client_name=gw?token=***&db=2"),
    (f"unix:///run/r.sock?db=1;pass%77ord={SECRET}", "unix:///run/r.sock?db=1;pass%77ord=***"),
    (f"redis+sentinel://h1:26379,h2:26379/m?client_name=a;secret={SECRET}&db=0",
     "redis+sentinel://h1:26379,h2:26379/m?client_name=a;secret=***&db=0"),
])
def test_a_secret_after_a_semicolon_or_question_mark_is_masked(url, shown):
    assert redact(url, "url") == shown
    assert mask_url(url) == shown
    assert SECRET not in mask_userinfo(f"redis unreachable ({url})")
    # ordinary options, ";" and "?" in their values and all, show as written
    for plain in ("redis://h/0?client_name=a;b?c&db=1",
                  "rediss://h/0?ssl_ca_path=/x;y=z/p?q=1&ssl_cert_reqs=none&client_name=gw"):
        assert redact(plain, "url") == plain and mask_url(plain) == plain
