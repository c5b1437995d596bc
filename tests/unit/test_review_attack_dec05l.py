"""Review of 6cb7882's redis URL reading (helper h10, 2026-12-05); failed on 3a11804.

3. A password holding "?" and then one of redis-py's option names and "=" (``:pw?db=1``,
   ``default:Zx9?client_name=q``) had that "?" taken for the start of an options query
   (split_options_query), whose "@" then ended no user part: the URL was shown whole,
   password and all, by mask_url, mask_userinfo and the schema's quoting of a refused value
   (``check``, the log, /admin/config's rejected items), where 6cb7882's parent masked it.
   A "?" is now an options query's only when what comes before it ends in hosts and ports
   (redis-py reads "pw" and "Zx9" as ports, and refuses them).
"""
import pytest

from gwserver.core.schema import show
from gwserver.redact import mask_url, mask_userinfo, split_options_query

SECRET = "Zx9s3cr3t"


@pytest.mark.parametrize("url, shown", [
    (f"redis://:{SECRET}?db=1@10.0.0.7/0", "redis://***@10.0.0.7/0"),
    (f"redis://default:{SECRET}?client_name=q@redis.internal:6379/0",
     "redis://***@redis.internal:6379/0"),
    (f"rediss://:{SECRET}?timeout=5@[fd00::7]:6380/0", "rediss://***@[fd00::7]:6380/0"),
    (f"unix://:{SECRET}?db=1@/run/redis.sock", "unix://***@/run/redis.sock"),
])
def test_a_password_holding_a_question_mark_and_an_option_is_masked(url, shown):
    assert mask_url(url) == shown
    assert mask_userinfo(f"cannot connect to {url}: refused") == \
        f"cannot connect to {shown}: refused"
    assert SECRET not in show(url)


@pytest.mark.parametrize("url", [
    "rediss://10.0.0.7:6380?ssl_ca_certs=/run/credentials/gw@main.service/ca.pem",
    "rediss://[::1]:6380?ssl_ca_certs=/run/credentials/gw@main.service/ca.pem",
    "redis+sentinel://h1:26379,h2:26379/m?client_name=gw@host1",
])
def test_an_options_query_after_hosts_is_still_one(url):
    head, _, query = url.partition("?")
    assert split_options_query(url) == (head, "?" + query)
    assert mask_url(url) == url
