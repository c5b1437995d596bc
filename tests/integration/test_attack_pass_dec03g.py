"""Attack pass (Dec 03, g): the ``cookie:NAME`` limit key (fca2a1b), upstream 1xx heads
(1bbe816), remove_stale_tmp (9162942) and reload verdicts (705b796, 668e27e). Each defect is
shown by a test that failed on fca2a1b and passes with its fix.

Every test starts real processes (a gateway from the launcher fixture with h2c on) and talks
to it over loopback; the upstream is the in-process recording server of the attack modules.

1. ``cookie:NAME`` counted the value as spelt after splitting at ";", but upstreams decode
   it: PHP, Node's cookie package and Rack percent-decode (``session=%61bc`` is ``abc``),
   PHP also the name (``s%65ssion=abc`` is the cookie ``session``, and PHP reads the first
   copy), Python's SimpleCookie, Django and Werkzeug unescape a quoted value
   (``"\\141bc"``), and SimpleCookie also ends a cookie at white space and reads the last
   copy (``session=junk; x=1 session=abc`` is ``abc``; so is ``session=abc "junk``). Each
   was a fresh bucket per request for one session. The value is now read as the most
   decoding of them reads it, and a header where they would read different values is a 400.

Held: white space, tabs and quotes around the value, a ``$Version`` pair, junk cookies
beside it, two Cookie lines over HTTP/1.1 and HTTP/2 crumbs (one bucket each); the cookie
twice alike; an empty value; ``=`` inside the value; non-ASCII bytes; a Cookie line over
limit_request_field_size (431, no worker error).
"""
import pytest

from ..conftest import gateway_conf, route
from .test_attack_pass_dec03f import h1, h2

ONE_AN_HOUR = {"rate": 1, "per": 3600, "burst": 1}


@pytest.fixture
def gw(launcher, h1_up):
    return launcher.gateway(gateway_conf([
        route("sk", ["/sk"], h1_up.url,
              plugins={"rate_limit": {**ONE_AN_HOUR, "key": "cookie:session"}}),
        route("lc", ["/lc"], h1_up.url,
              plugins={"limit_conn": {"limit": 5, "key": "cookie:session"}}),
    ], http2={"h2c": True}))


# -- 1. spellings of one session cookie ----------------------------------------------------

@pytest.mark.parametrize("fields", [
    b"Cookie: session=%61bc\r\n",                       # PHP, Node, Rack: abc
    b"Cookie: session=ab%63\r\n",
    b'Cookie: session="\\141bc"\r\n',                   # SimpleCookie, Django, Werkzeug: abc
    b'Cookie: session="a\\bc"\r\n',
    b"Cookie: s%65ssion=abc; session=x1\r\n",           # PHP: the first, named session
    b"Cookie: session=x2; x=1 session=abc\r\n",         # SimpleCookie: the last
    b"Cookie: session=x3 session=abc\r\n",
    b'Cookie: session=abc "x4\r\n',                     # SimpleCookie: abc
    b"Cookie: session=abc,x5=1\r\n",                    # RFC 2965 parsers: abc
])
def test_a_spelling_of_the_session_an_upstream_reads_as_it_is_no_fresh_bucket(gw, fields):
    """Once session=abc has spent its one request an hour, a spelling an upstream reads as
    abc is counted in its bucket (429) or refused (400), never a fresh bucket."""
    assert h1(gw, b"/sk", b"Cookie: session=abc\r\n") == 200
    assert h1(gw, b"/sk", fields) in (400, 429), fields


def test_held_plain_spellings_are_one_bucket_and_other_sessions_another(gw):
    assert h1(gw, b"/sk", b"Cookie: session=abc\r\n") == 200
    for fields in [b"Cookie: \t session = abc \t; x=1\r\n", b'Cookie: session="abc"\r\n',
                   b"Cookie: $Version=1; session=abc; $Path=/\r\n",
                   b"Cookie: session=abc; session=abc\r\n",
                   b"Cookie: a=1\r\nCookie: session=abc\r\n"]:
        assert h1(gw, b"/sk", fields) == 429, fields
    assert h2(gw, "/sk", [("cookie", "x=1"), ("cookie", "session=abc")]) == 429
    for value in [b"", b"a=b", b"\xc3\xa9t\xc3\xa9", b"Z" * 3000]:
        assert h1(gw, b"/sk", b"Cookie: session=%s\r\n" % value) == 200, value
    assert h1(gw, b"/sk", b"Cookie: session=" + b"Y" * 20000 + b"\r\n") == 431


def test_a_hostile_cookie_is_a_clean_400_for_limit_conn_too(gw):
    """limit_conn reads the key the same way: refused spellings are 400s, not 500s."""
    assert h1(gw, b"/lc", b"Cookie: session=abc\r\n") == 200
    assert h1(gw, b"/lc", b"Cookie: session=x3 session=abc\r\n") == 400
    assert h2(gw, "/lc", [("cookie", "session=x"), ("cookie", "y=1 session=abc")]) == 400
