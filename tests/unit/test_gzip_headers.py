"""gzip's reading of list-valued response fields and of a 304's validator (the attack pass of
2026-12-05, helper h1; tests/integration/test_tunnel_attack_dec05c.py runs them for real)."""
import pytest

from gwserver.core.context import ResponseHead
from gwserver.plugins import gzip

CONF = gzip.prepare(gzip.SCHEMA.validate({}))


class Ctx:
    method = "GET"

    def __init__(self, **headers):
        self.headers = {name.replace("_", "-"): value for name, value in headers.items()}

    def header(self, name):
        return self.headers.get(name)

    sent_header = header        # no plugin edits the request here


def head_of(status, *lines):
    return ResponseHead(status, block=b"".join(line + b"\r\n" for line in lines))


def test_header_list_joins_every_line_and_header_keeps_the_last():
    head = head_of(200, b"Vary: Cookie", b"Content-Type: text/html", b"vary: Origin")
    assert head.header_list("Vary") == "Cookie, Origin"
    assert head.header("vary") == "Origin"
    assert head.header_list("etag") is None


@pytest.mark.parametrize("lines, names", [
    ((), {"accept-encoding"}),
    ((b"Vary: Cookie", b"Vary: Origin"), {"cookie", "origin", "accept-encoding"}),
    ((b"Vary: X-Accept-Encoding-Hint",), {"x-accept-encoding-hint", "accept-encoding"}),
    ((b"Vary: accept-encoding, Cookie",), {"accept-encoding", "cookie"}),
    ((b"Vary: Cookie", b"Vary: *"), {"cookie", "*"}),
])
def test_vary_keeps_every_name_the_upstream_gave(lines, names):
    head = head_of(200, b"Content-Type: application/json", *lines)
    gzip.response(CONF, Ctx(), head)
    got = {name.strip().lower() for name in head.header_list("vary").split(",")}
    assert got == names


def test_no_transform_on_any_cache_control_line_leaves_the_answer_alone():
    head = head_of(200, b"Content-Type: application/json", b"Cache-Control: no-transform",
                   b"Cache-Control: max-age=60")
    gzip.response(CONF, Ctx(accept_encoding="gzip"), head)
    assert head.header("content-encoding") is None and head.body_filters is None


def test_a_304_to_the_weakened_tag_says_it_weak():
    for asked, etag in [
            ('W/"v1"', 'W/"v1"'),               # the weak tag this plugin gave: weak again
            ('"v0", W/"v1"', 'W/"v1"'),
            ('"v1"', '"v1"'),                   # a client holding the plain bytes: as it is
            ('W/"v12"', '"v1"'),
            (None, '"v1"')]:
        head = head_of(304, b'ETag: "v1"')
        gzip.response(CONF, Ctx(if_none_match=asked, accept_encoding="gzip") if asked else
                      Ctx(accept_encoding="gzip"), head)
        assert head.header("etag") == etag, asked
    # a client that does not take gzip gets the plain bytes: their strong tag, as its 200
    for accept in (None, "identity", "gzip;q=0"):
        head = head_of(304, b'ETag: "v1"')
        ctx = Ctx(if_none_match='"v1", W/"v1"', **({"accept_encoding": accept} if accept
                                                   else {}))
        gzip.response(CONF, ctx, head)
        assert head.header("etag") == '"v1"', accept
