"""The one reading of a redis URL (redact.redis_url_parts) that ``gwserver check`` and the
masks share, held to redis-py's own; pure parts of the attack pass of 2026-12-05, helper s1
(tests/integration/test_redis_urls_dec05n.py has the rest). Each failed on bff7bbf.

- ``redis+sentinel://`` and ``redis+cluster://`` URLs: a password percent-encoded, as
  docs/ratelimit.md says a plain URL's must be, went to AUTH still encoded ("p%40ss"): the
  gateway's own parser did not decode it as redis-py decodes a plain URL's.
- The masks in a text: a password of digits and "?option=" before the "@" shown whole
  (":58213" read as a port), and an option's name percent-encoded (``pass%77ord``).
"""
from urllib.parse import urlsplit

import pytest
from redis.connection import parse_url

from gwserver.core.schema import Invalid
from gwserver.redact import mask_url, mask_userinfo, redact
from gwserver.settings import parse_multi_host_url, redis_url

SECRET = "58213"

# URLs the check takes: the gateway's reading is redis-py's, part for part
ACCEPTED = [
    "redis://127.0.0.1:6379/0",
    "redis://localhost",
    f"redis://:{SECRET}@10.0.0.7:6379/2",
    f"redis://alice:{SECRET}@10.0.0.7/3?socket_timeout=1.5&client_name=gw",
    f"redis://:p%40ss%3F{SECRET}@10.0.0.7:6379/0",
    f"redis://:{SECRET}%3Fdb%3D1@10.0.0.7/0",
    f"redis://:hunter@{SECRET}@127.0.0.1:6379/0",
    f"rediss://:{SECRET}@[fd00::7]:6380/0?ssl_cert_reqs=none",
    f"rediss://:{SECRET}@10.0.0.7:6380/0?ssl_ca_certs=/run/credentials/gw@main.service/ca.pem",
    "rediss://10.0.0.7:6380?ssl_ca_certs=/run/credentials/gw@main.service/ca.pem",
    f"redis://:{SECRET}@10.0.0.7:6379/0?client_name=gw@host1",
    f"redis://10.0.0.7:6379/0?db=4&password={SECRET}",
    f"redis://10.0.0.7:6379/0?pass%77ord={SECRET}",
    f"redis://10.0.0.7:6379/0?client_name=a%40b",
    "unix:///run/redis/redis.sock?db=1",
    f"unix://:{SECRET}@/run/redis@main/redis.sock",
    f"unix://alice:{SECRET}@/run/redis.sock",
]


@pytest.mark.parametrize("url", ACCEPTED)
def test_the_gateways_reading_is_redis_pys_on_every_url_the_check_takes(url):
    from gwserver.redact import redis_py_reading, redis_url_parts
    assert redis_url(url) == url
    parts, read = redis_url_parts(url), parse_url(url)
    assert parts == redis_py_reading(url)
    options = parts.options()
    assert read.get("username") == parts.username
    assert read.get("password") == options.get("password", parts.password) or \
        read.get("password") == parts.password
    if parts.scheme == "unix":
        assert read["path"] == parts.path
    else:
        hosts = urlsplit("//" + parts.hosts)
        assert (read.get("host"), read.get("port")) == (hosts.hostname, hosts.port)
        db = options.get("db") or parts.path.strip("/")
        assert read.get("db") == (int(db) if db else None)
    for name, value in options.items():
        if name not in ("db", "password"):
            assert str(read[name]).lower() == value.lower() or read[name] == float(value)
    shown = [redact(url), mask_url(url), mask_userinfo(f"to {url} failed")]
    assert not any(SECRET in text for text in shown), shown


# URLs redis-py reads otherwise than they are written: refused, and masked as written
MISREAD = [
    f"redis://:{SECRET}?client_name=q@10.0.0.7:6379/0",     # port 58213 of localhost
    f"redis://gw:{SECRET}?client_name=q@10.0.0.7:6379/0",   # host "gw", port 58213
    f"redis://tok{SECRET}?client_name=q@10.0.0.7:6379/0",   # host "tok58213"
    f"redis://10.0.0.7:{SECRET}?client_name=q@host1",       # user "10.0.0.7" to whom?
    f"redis://us/er:{SECRET}@10.0.0.7:6379/0",
    f"redis://:ab@{SECRET}/x@10.0.0.7:6379/0",
    f"redis://:x#{SECRET}@10.0.0.7",
]


@pytest.mark.parametrize("url", MISREAD)
def test_a_url_redis_py_misreads_is_refused_and_its_user_part_masked(url):
    from gwserver.redact import redis_py_reading, redis_url_parts
    assert redis_url_parts(url) != redis_py_reading(url)
    with pytest.raises(Invalid) as caught:
        redis_url(url)
    assert "must be percent-encoded" in str(caught.value)
    assert SECRET not in str(caught.value)
    for text in (redact(url), mask_url(url), mask_userinfo(f"cannot read '{url}': x"),
                 mask_userinfo(f"({url})")):
        assert SECRET not in text, text
        assert "***@10.0.0.7" in text or "***@host1" in text, text    # the host still shows


def test_a_multi_host_urls_user_part_is_read_as_redis_py_reads_a_plain_ones():
    from gwserver.state.store import connect
    url = "redis+sentinel://gw:p%40ss%2F1@127.0.0.1:26379,127.0.0.1:26380/mymaster/2"
    master = connect(url, 0.1)                  # no I/O until it is used
    assert master.connection_pool.connection_kwargs["password"] == "p@ss/1"
    assert master.connection_pool.connection_kwargs["db"] == 2
    parsed = parse_multi_host_url(url)
    assert (parsed.password, parsed.nodes, parsed.path) == \
        ("p@ss/1", [("127.0.0.1", 26379), ("127.0.0.1", 26380)], "mymaster/2")
    assert parse_url("redis://gw:p%40ss%2F1@h/0")["password"] == "p@ss/1"
    # unencoded, as docs/ratelimit.md allows in these URLs, it is the same password
    assert parse_multi_host_url("redis+cluster://:p@ss/1@127.0.0.1:7000").password == "p@ss/1"


def test_an_option_name_redis_py_decodes_is_masked_as_decoded():
    for url in (f"redis://h:6379/0?pass%77ord={SECRET}", f"redis://h/0?db=1&%50ASSWORD={SECRET}",
                f"unix:///run/r.sock?pass%77ord={SECRET}&db=1"):
        for text in (redact(url), mask_url(url), mask_userinfo(f"'{url}'")):
            assert SECRET not in text and "=***" in text, text
    assert redact("redis://h:6379/0?client_name=pass%77ord") == \
        "redis://h:6379/0?client_name=pass%77ord"
