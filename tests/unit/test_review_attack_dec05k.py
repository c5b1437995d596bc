"""The review of 901cc8d and 1e1517e as an attacker (helper h8), pure code: each test failed
on 1e1517e (tests/integration/test_review_attack_dec05k.py has the rest).

- A redis URL with an "@" in the value of one of redis-py's query options
  (``?ssl_ca_certs=/run/credentials/gwserver@main.service/ca.pem``, the directory systemd's
  LoadCredential= gives a template unit's instance; ``client_name=gw@host1``;
  ``password=p@ss``) or in a unix:// socket's path (``/run/redis@main/redis.sock``) was
  refused by ``check`` when the URL had a password too (1e1517e: "an '@' past the
  authority"; without one, whenever a port came before it), though redis-py reads it as
  written; and ``--dump`` and log texts masked it to that "@", hiding the host and port
  the operator needed to see (``rediss://***@main.service/ca.pem``).
"""
import pytest

SECRET = "hunter3-pw"


@pytest.mark.parametrize("url, shown", [
    (f"rediss://:{SECRET}@10.0.0.7:6380/0?ssl_ca_certs=/run/credentials/gwserver@main.service"
     f"/ca.pem", "10.0.0.7:6380/0?ssl_ca_certs=/run/credentials/gwserver@main.service/ca.pem"),
    ("rediss://10.0.0.7:6380/0?ssl_ca_certs=/run/credentials/gwserver@main.service/ca.pem",
     "10.0.0.7:6380/0?ssl_ca_certs="),
    (f"redis://:{SECRET}@10.0.0.7:6379/0?client_name=gw@host1", "10.0.0.7:6379/0?client_name"),
    (f"redis://10.0.0.7:6379/0?password={SECRET}@x", "10.0.0.7:6379/0?password=***"),
    (f"unix://:{SECRET}@/run/redis@main/redis.sock", "/run/redis@main/redis.sock"),
    (f"unix:///run/redis.sock?password=a:{SECRET}@x", "/run/redis.sock?password=***"),
])
def test_an_at_sign_in_a_query_option_or_a_socket_path_is_no_user_parts_end(url, shown):
    from redis.connection import parse_url
    from gwserver.redact import mask_url, mask_userinfo, redact
    from gwserver.settings import redis_url
    read = parse_url(url)         # redis-py reads it as written
    assert read.get("host") in (None, "10.0.0.7")
    assert (SECRET in url) == (SECRET in (read.get("password") or ""))
    assert redis_url(url) == url
    for text in (redact(url, "url"), mask_url(url), mask_userinfo(f"cannot connect: {url}: x")):
        assert shown in text and SECRET not in text, text


@pytest.mark.parametrize("url", [
    f"redis://:ab@{SECRET}/x@127.0.0.1:6379/0?ssl_ca_certs=/run/gw@main/ca.pem",
    f"redis://:ab@{SECRET}?x@127.0.0.1:6379/0",
    f"unix://us/er:{SECRET}@/tmp/redis.sock",
    f"unix://:ab@{SECRET}/x@/tmp/redis.sock",
])
def test_a_user_part_redis_py_reads_as_a_host_or_path_is_still_refused(url):
    from gwserver.core.schema import Invalid
    from gwserver.redact import mask_url, mask_userinfo, redact
    from gwserver.settings import redis_url
    with pytest.raises(Invalid) as caught:
        redis_url(url)
    assert "percent-encoded" in str(caught.value) and SECRET not in str(caught.value)
    for text in (redact(url, "url"), mask_url(url), mask_userinfo(f"cannot connect: {url}: x")):
        assert SECRET not in text, text
