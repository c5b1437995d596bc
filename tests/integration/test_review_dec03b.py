"""Review of the Dec 03 commits (9af5f3a..5c5464f), second pass: what a third-party plugin can
still get past the head check of 235c277. Each defect is shown by a test that failed on
5c5464f and passes with its fix.

The tests start real processes (a gateway from the launcher fixture, with a plugin package
installed on its PYTHONPATH as an entry point, and the tests/upstream.py echo upstream) and
talk to them over loopback with raw bytes; the fixtures stop what they start.

1. ``head.status``: a third-party response hook could set any status. One that changes the
   framing the gateway derived from the upstream's status (200 -> 204, 304 or a 1xx) sent
   the upstream's body after a head that says there is none: a client (or a proxy in front
   sharing the connection) reads that body as the next answer. It is now a 500 naming the
   plugin, as built-in rewrite refuses such a change; 200 -> 201 still passes.
2. The ``reply`` hook (docs/plugins.md: it edits the head of an answer the gateway writes
   itself "as ``response`` does") was not checked at all: a value from the query with CR LF
   in it set the client's cookie, a Content-Length beside the gateway's framed the body
   twice. A third-party reply hook whose head breaks the rules now counts as one that
   raised: logged naming the plugin, and the answer goes out without the hooks' edits.

3. ``head.body_filters``: the Content-Length check of 235c277 was skipped whenever the list
   was not None, so a hook that set it to ``[]`` (no filter: the gateway then relays the
   upstream's framing) could send any Content-Length: Content-Length: 1 before a body of
   hundreds of bytes, the rest read as the next answer. An empty list is no filter now.

Shown by unit tests (pure logic): a plugin that only says it is built in (``__name__``
"gwserver.plugins.x") was exempt from the check (tests/unit/test_chain.py); the check split
every answer's head that a hook only appended to (test_chain.py); one plugin under two entry
point names was refused as "ambiguous" (test_plugin_loading.py); a WINDOW_UPDATE inside a
header block, or with its reserved bit set, was taken for a stream's increment of 0
(test_h2_upstream_frames.py).

Held: a good header a reply hook adds still reaches the client (the check refuses only what
breaks the rules). The joined Cookie field of d2bfa7f (with a real redis-server holding a
``header:Cookie`` limit and an in-process recording upstream): two Cookie fields named in
``Connection`` reach neither the upstream nor the limit (they count as absent); an HTTP/1.0
client's two fields are one joined field upstream, in the first one's place among the
others; a second Cookie field still counts against ``limit_request_fields`` (431).
"""

import pytest

from ..conftest import gateway_conf, installed_plugin, route
from .test_attack_pass_dec03 import raw_request

PLUGIN = '''
import urllib.parse

from gwserver.core.context import Reply
from gwserver.core.schema import Schema


class status_editor:
    """/se/nobody: 204; /se/interim: 100; /se/unchanged: 304; /se/created: 201;
    /se/nofilter: an empty list of body filters, and Content-Length: 1.
    /se/deny is refused, and the reply hook then adds X-Why from the decoded query."""
    NAME, PRIORITY, SCHEMA = "status_editor", 1, Schema()

    @staticmethod
    def access(conf, ctx):
        return Reply.json(403, {"error": "no"}) if ctx.path.endswith("/deny") else None

    @staticmethod
    def response(conf, ctx, head):
        statuses = {"nobody": 204, "interim": 100, "unchanged": 304, "created": 201}
        what = ctx.path.rsplit("/", 1)[-1]
        head.status = statuses.get(what, head.status)
        if what == "nofilter":      # "a filter" that filters nothing, and a new length
            head.body_filters = []
            head.headers[:] = [(k, v) for k, v in head.headers
                               if k.lower() != b"content-length"] + [(b"Content-Length", b"1")]

    @staticmethod
    def reply(conf, ctx, head):
        why = urllib.parse.unquote(ctx.query or "fine").encode("latin-1")
        if why == b"length":
            head.headers.append((b"Content-Length", b"0"))
        else:
            head.headers.append((b"X-Why", why))
'''


def install_plugin(tmp_path):
    return installed_plugin(tmp_path, "gwreview", PLUGIN,
                            "status_editor = gwreview:status_editor\n")


@pytest.fixture
def se_gw(start_gateway, upstream, tmp_path):
    return start_gateway(gateway_conf([route("se", ["/se/*rest"], upstream.url,
                                             strip_prefix="/se",
                                             plugins={"status_editor": {}})]),
                         env=install_plugin(tmp_path))


def get(gw, target):
    return raw_request(gw.port, b"GET %s HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
                       % target)


@pytest.mark.parametrize("what", [b"nobody", b"interim", b"unchanged"])
def test_a_status_that_changes_the_framing_is_a_500(se_gw, what):
    answer = get(se_gw, b"/se/" + what)
    assert answer.startswith(b"HTTP/1.1 500 "), answer[:300]
    assert "plugin status_editor: " in se_gw.log()
    assert get(se_gw, b"/se/created").startswith(b"HTTP/1.1 201 ")


@pytest.mark.parametrize("query", [b"%0d%0aSet-Cookie:%20session=attacker", b"length"])
def test_a_reply_hook_is_held_to_the_rules_of_a_response_hook(se_gw, query):
    answer = get(se_gw, b"/se/deny?" + query)
    head = answer.split(b"\r\n\r\n", 1)[0]
    assert head.startswith(b"HTTP/1.1 403 "), answer[:300]
    assert b"session=attacker" not in head and head.lower().count(b"content-length") == 1
    assert b"X-Why" not in head
    assert "plugin status_editor failed in reply" in se_gw.log()


def test_held_a_good_header_from_a_reply_hook_reaches_the_client(se_gw):
    answer = get(se_gw, b"/se/deny")
    assert answer.startswith(b"HTTP/1.1 403 ") and b"\r\nX-Why: fine\r\n" in answer


@pytest.fixture
def cookie_gw(launcher, h1_up):
    redis = launcher.redis()
    limit = {"rate": 1, "per": 3600, "burst": 1, "key": "header:Cookie"}
    return launcher.gateway(gateway_conf(
        [route("ck", ["/ck/*rest"], h1_up.url, plugins={"rate_limit": limit})],
        redis={"url": redis.url}, server={"limit_request_fields": 10}))


def status_of(gw, head):
    return int(raw_request(gw.port, head).split(b" ", 2)[1])


def test_held_cookie_fields_named_in_connection_count_as_absent(cookie_gw, h1_up):
    assert status_of(cookie_gw, b"GET /ck/1 HTTP/1.1\r\nHost: h\r\nCookie: a=1\r\n"
                                b"Cookie: b=2\r\nConnection: close, Cookie\r\n\r\n") == 200
    assert h1_up.header(-1, "Cookie") == []
    # the bucket of requests without a cookie is spent: a request with none is the same one
    assert status_of(cookie_gw, b"GET /ck/2 HTTP/1.1\r\nHost: h\r\n"
                                b"Connection: close\r\n\r\n") == 429


def test_held_an_http10_clients_two_cookie_fields_are_one_in_the_first_ones_place(
        cookie_gw, h1_up):
    assert status_of(cookie_gw, b"GET /ck/3 HTTP/1.0\r\nHost: h\r\nCookie: a=1\r\n"
                                b"X-Between: yes\r\nCookie: b=2\r\n\r\n") == 200
    lines = h1_up.heads[-1].split(b"\r\n")
    assert [l for l in lines if l.lower().startswith(b"cookie")] == [b"Cookie: a=1; b=2"]
    assert lines.index(b"Cookie: a=1; b=2") < lines.index(b"X-Between: yes")
    assert status_of(cookie_gw, b"GET /ck/4 HTTP/1.1\r\nHost: h\r\nCookie: b=2; a=1\r\n"
                                b"Connection: close\r\n\r\n") == 429


def test_held_each_cookie_field_counts_against_the_field_count(cookie_gw, h1_up):
    fields = b"".join(b"Cookie: c%d=1\r\n" % i for i in range(10))
    assert status_of(cookie_gw, b"GET /ck/5 HTTP/1.1\r\nHost: h\r\n%s"
                                b"Connection: close\r\n\r\n" % fields) == 431
    assert not h1_up.heads


def test_an_empty_list_of_body_filters_is_no_licence_to_change_the_length(se_gw):
    answer = get(se_gw, b"/se/nofilter")
    assert answer.startswith(b"HTTP/1.1 500 "), answer[:300]
    assert "it changed the answer's Content-Length" in se_gw.log()
