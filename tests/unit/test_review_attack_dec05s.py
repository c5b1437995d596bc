"""The pure pieces of the attack pass of 2026-12-05 (helper s10) on 2297c8b; the defects are
told in tests/integration/test_review_attack_dec05s.py. Each failed on 2297c8b.

- A redis URL's ``?password=`` was masked to the first "&name=", any name: the rest of a
  password holding "&4dor=" showed (``password=***&4dor=h0rse99``). Masked to the next of
  redis-py's options, however spelt; another parameter's value is still read for secrets.
"""
import pytest

from gwserver.redact import mask_url, mask_userinfo, redact

SECRET = "h0rse99"


@pytest.mark.parametrize("url, shown", [
    (f"redis://h:6379/0?password=Tr0ub&4dor={SECRET}", "redis://h:6379/0?password=***"),
    (f"redis://h:6379/0?password=Tr0ub&4dor={SECRET}&db=2",
     "redis://h:6379/0?password=***&db=2"),
    (f"unix:///run/r.sock?db=1&password=a&b={SECRET}&DB=3",
     "unix:///run/r.sock?db=1&password=***"),
    (f"redis://h/0?password=a&q={SECRET}&pass%77ord=b&client_name=gw",
     "redis://h/0?password=***&pass%77ord=***&client_name=gw"),
    (f"rediss://h/0?ssl_password=a&x={SECRET}&ssl_cert_reqs=none",
     "rediss://h/0?ssl_password=***&ssl_cert_reqs=none"),
])
def test_a_query_password_is_masked_to_the_next_of_redis_pys_options(url, shown):
    assert redact(url, "url") == shown
    assert mask_url(url) == shown
    assert SECRET not in mask_userinfo(f"redis unreachable ({url})")


def test_another_parameters_value_is_read_again_for_a_secret():
    for url, shown in (
            # a secret's name after another's value, no option of redis-py's: masked, to
            # the next option (the value of a secret redis-py refuses may go on over "&")
            (f"redis://h:6379/0?db=2&token={SECRET}&x=1", "redis://h:6379/0?db=2&token=***"),
            (f"redis://h/0?client_name=a&b&secret={SECRET}",
             "redis://h/0?client_name=a&b&secret=***"),
            # options alone: unchanged
            ("redis://h:6379/0?db=2&client_name=gw", "redis://h:6379/0?db=2&client_name=gw")):
        assert redact(url, "url") == shown
        assert SECRET not in mask_userinfo(f"redis unreachable ({url})")
