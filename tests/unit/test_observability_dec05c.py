"""The pure pieces of the attack pass of 2026-12-05 (helper h4) on the admin API, the access
log and the forwarded headers; tests/integration/test_admin_attack_dec05c.py says what each
attack was. Each test failed before its fix."""
import json

import pytest

from gwserver.core.accesslog import common_escape, compile_fields
from gwserver.core.routes import target_url
from gwserver.core.schema import Invalid, show, string

from .test_request_headers import read, reader


@pytest.mark.parametrize("url", ["http://:pw-1234@127.0.0.1:80", "https://pw-1234@h",
                                 "http://u:pw-1234@[::1]:80", "u:pw-1234@127.0.0.1:80"])
def test_a_target_with_a_user_or_password_is_refused_unquoted(url):
    with pytest.raises(Invalid) as refused:
        target_url(url)
    assert "user or password" in str(refused.value) and "pw-1234" not in str(refused.value)


def test_a_quoted_value_never_shows_a_urls_user_part():
    assert show("redis+sentinel://:pw-1234@a:26379,b/m") == '"redis+sentinel://***@a:26379,b/m"'
    assert show(["x", "https://tok-1234@h/p"]) == '["x", "https://***@h/p"]'
    assert show("http://h/a@b") == '"http://h/a@b"'         # an @ in a path is no user part


def test_a_secret_setting_is_never_quoted():
    from gwserver.core.schema import never_quoted
    check = never_quoted(string(r"[!-~]*", "printable ASCII without spaces"))
    assert check("s3cret") == "s3cret"
    for value, kind in (("correct horse", "string"), (1234567, "number")):
        with pytest.raises(Invalid) as refused:
            check(value)
        assert str(refused.value) == ("must be printable ASCII without spaces, got a "
                                      f"{kind} (not shown: a secret)")


def test_bytes_past_0x7e_are_escaped_in_common_and_json_lines():
    agent = b"a\x9b31m\x85\xff".decode("latin-1")
    assert common_escape(agent) == "a\\x9B31m\\x85\\xFF"
    from gwserver.core.context import RequestContext
    req = RequestContext("10.0.0.1", "http")
    req.url, req.method, req.version = b"/x", "GET", "1.1"
    req.header_map[b"user-agent"] = agent.encode("latin-1")
    line = compile_fields(["user_agent"], "json").line(req, 200, 0, None, 1.0, "t")
    assert line.isascii() and json.loads(line)["user_agent"] == agent
    line = compile_fields(["user_agent"], "common").line(req, 200, 0, None, 1.0, "t")
    assert line.isascii() and '"a\\x9B31m\\x85\\xFF"' in line


@pytest.mark.parametrize("speaks_forwarded", [False, True])
def test_a_trusted_proxy_passes_on_only_the_forwarded_headers_it_speaks(speaks_forwarded):
    headers, hmap = read(reader(trusted_peer=True, trusted_x_forwarded=not speaks_forwarded),
                         (b"Forwarded", b"for=10.0.0.1"), (b"X-Forwarded-Prefix", b"/admin"),
                         (b"X-Forwarded-Port", b"1"), (b"X-Real-IP", b"10.0.0.2"))
    names = {name.lower() for name, _ in headers}
    assert names == ({b"forwarded", b"x-real-ip"} if speaks_forwarded else
                     {b"x-forwarded-prefix", b"x-forwarded-port", b"x-real-ip"})
    assert set(hmap) == names
