"""Attack pass (Dec 03, HTTP/1.1 against HTTP/2 clients): the same request sent over either
protocol must be routed, authorised, keyed and forwarded alike, and what the gateway checks
must be what the upstream gets. Each defect is shown by a test that failed on 9af5f3a and
passes with its fix.

Every test starts real processes (a gateway from the launcher fixture with h2c on, a real
redis-server holding the limits) and talks to them over loopback, HTTP/1.1 as raw bytes and
HTTP/2 with tests/h2client.RawH2; the upstreams are in-process socket servers on 127.0.0.1
that record what they got (tests/integration/test_attack_pass_dec03.RecordingHttp1), closed
in teardown.

1. Cookie fields: HTTP/2 joins a client's cookie crumbs with "; " (RFC 9113 8.2.3) while
   HTTP/1.1 kept two Cookie fields apart, joined with ", " for plugins. The same cookies were
   served over HTTP/2 and a 400 over HTTP/1.1 on a route whose limit keys on ``header:Cookie``
   (the "header more than once" rule), and went to different split groups by a ``cookie``
   rule (HTTP/1.1: "a=1, beta=yes" holds no cookie ``beta``). A second Cookie field is now
   joined with "; " into the first, as HTTP/2's crumbs: one field upstream either way, held
   to limit_request_field_size and trimmed as the joined crumbs are (a review of the fix
   found it forwarding a joined line of any size, which HTTP/2 answers with 431, and an
   empty second field as "a=1; ").
2. The same limit counted each spelling of one cookie list in a bucket of its own: crumbs in
   another order, ``a=1;b=2`` against ``a=1; b=2``, an empty crumb. An upstream reads them
   all as the same cookies; a client got a fresh bucket per request. The key is now the
   cookies as an upstream reads them (split at ";", trimmed, no empty ones, sorted).
3. A limit keyed on ``header:Host`` counted the Host as sent: ``T1.Example.com``,
   ``t1.example.com.``, ``:8080`` and an HTTP/2 ``:authority`` in capitals were fresh buckets
   for the host the request was routed by and served as, and an absolute-form request
   (``GET http://t1.example.com/...`` with ``Host: other``), served as t1, counted as
   ``other``. It now counts the host the request is routed by.
4. An HTTP/2 request whose HEADERS carry END_STREAM and a non-zero content-length (RFC 9113
   8.1.1: malformed; an intermediary must not forward it) was sent to an HTTP/2 upstream as
   declared, a body announced that never came; towards an HTTP/1.1 upstream the proxy step
   refused it (400) only after the plugins had run, a limit counting it. It is now reset
   with PROTOCOL_ERROR before anything runs, as a request whose DATA fall short is.
5. A limit keyed on ``header:Authorization`` beside jwt counted each spelling of one token
   apart: the scheme's case (``bearer``, ``BEARER``) and the spaces after it, which jwt (and
   basic_auth, and RFC 9110 11.1/11.4) read as the same credentials. One token got a fresh
   bucket per request. The key is now the scheme in lower case and the trimmed credentials.

Held (test_held_*; nothing else covers them across both protocols): spellings of a
protected path (escapes, ``//``, dot segments, ``;`` parameters, the bare prefix) get the
same answer over both protocols, and the upstream gets the canonical path; a duplicated
X-Api-Key is a 400 for such a limit over HTTP/2 as over HTTP/1.1; ``:authority`` and a
``host`` field that differ (case, trailing dot, port) reset the stream; a client's
X-Consumer-ID and X-Forwarded-For/-Host never reach the upstream (the gateway's own do) and
its Via is extended, over either protocol; content-length: 0 on HEADERS that end the stream
is served; the new keys are no coarser than one session, host or token each.
"""
import time

import jwt as pyjwt
import pytest

from ..conftest import gateway_conf, route
from ..h2client import RawH2
from .test_attack_pass_dec03 import RecordingHttp1, raw_request

ONE_AN_HOUR = {"rate": 1, "per": 3600, "burst": 1}


@pytest.fixture
def canary_up():
    up = RecordingHttp1()
    yield up
    up.close()


@pytest.fixture
def gw(launcher, h1_up, canary_up):
    redis = launcher.redis()
    split = {"upstreams": [{"upstream": "v1", "weight": 100},
                           {"upstream": "v2", "weight": 0, "group": "canary"}],
             "rules": [{"cookie": {"beta": "yes"}, "upstream": "canary"}]}
    return launcher.gateway(gateway_conf([
        route("ck", ["/ck"], h1_up.url,
              plugins={"rate_limit": {**ONE_AN_HOUR, "key": "header:Cookie"}}),
        route("hk", ["/hk"], h1_up.url,
              plugins={"rate_limit": {**ONE_AN_HOUR, "key": "header:Host"}}),
        route("sk", ["/sk"], h1_up.url,
              plugins={"rate_limit": {**ONE_AN_HOUR, "key": "cookie:session"}}),
        route("kk", ["/kk"], h1_up.url,
              plugins={"rate_limit": {**ONE_AN_HOUR, "key": "header:X-Api-Key"}}),
        {"id": "sp", "paths": ["/sp"], "upstream": "v1", "plugins": {"split": split}},
        route("admin", ["/admin/*rest"], h1_up.url, plugins={"key_auth": {}}),
        route("any", ["/*rest"], h1_up.url),
    ], redis={"url": redis.url}, http2={"h2c": True},
        upstreams={"v1": {"targets": [{"url": h1_up.url}]},
                   "v2": {"targets": [{"url": canary_up.url}]}}))


def h1(gw, path, fields, host=b"api.test", target=None):
    """Status of one HTTP/1.1 request with these header lines (bytes, CRLF each)."""
    answer = raw_request(gw.port, b"GET %s HTTP/1.1\r\nHost: %s\r\n%sConnection: close\r\n\r\n"
                         % (target or path, host, fields))
    return int(answer.split(b" ", 2)[1])


def h2(gw, path, fields=(), authority="api.test"):
    """Status of one HTTP/2 request (h2c) with these fields; None if its stream was reset."""
    client = RawH2(gw.port, validate=False)
    try:
        answer = client.response(client.request(path, headers=fields, authority=authority))
        return None if answer is None else answer[0]
    finally:
        client.close()


# -- 1. Cookie: one field upstream, one value to plugins, over both protocols ----------------

def test_two_cookie_fields_are_one_cookie_list_over_http1_as_over_http2(gw, h1_up):
    """The cookie list sid=abc; theme=dark spends its one request an hour whichever way it
    comes: two HTTP/1.1 Cookie fields (was a 400: the header "more than once"), then HTTP/2
    crumbs and one HTTP/1.1 field, both 429. The upstream got one Cookie field."""
    assert h1(gw, b"/ck", b"Cookie: sid=abc\r\nCookie: theme=dark\r\n") == 200
    assert h1_up.header(-1, "Cookie") == ["sid=abc; theme=dark"]
    assert h2(gw, "/ck", [("cookie", "sid=abc"), ("cookie", "theme=dark")]) == 429
    assert h1(gw, b"/ck", b"Cookie: sid=abc; theme=dark\r\n") == 429
    assert len(h1_up.heads) == 1


def test_http2_crumbs_reach_the_upstream_as_http1_fields_do(gw, h1_up):
    """What the upstream gets of the same cookies is the same bytes from either client."""
    assert h2(gw, "/any", [("cookie", "a=1"), ("cookie", "b=2")]) == 200
    assert h1(gw, b"/any", b"Cookie: a=1\r\nCookie: b=2\r\n") == 200
    assert h1_up.header(0, "Cookie") == h1_up.header(1, "Cookie") == ["a=1; b=2"]


def test_an_empty_cookie_field_leaves_no_white_space_at_the_end(cl_gw, h1_up, h2_up):
    """A review of the join: "a=1" then an empty Cookie field went upstream as "a=1; ", white
    space after a value (docs/security.md: taken off as the head is read). Joined and
    trimmed as HTTP/2's crumbs are, both upstreams get "a=1;", as from an HTTP/2 client."""
    fields = b"Cookie: a=1\r\nCookie: \r\n"
    for path in (b"/h1", b"/h2"):
        answer = raw_request(cl_gw.port, b"POST %s HTTP/1.1\r\nHost: api.test\r\n%s"
                             b"Content-Length: 0\r\nConnection: close\r\n\r\n" % (path, fields))
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert b"\r\nCookie: a=1;\r\n" in h1_up.heads[0] + b"\r\n"
    assert ("cookie", "a=1;") in h2_up.requests[0]


def test_a_cookie_rule_routes_http1_fields_as_http2_crumbs(gw, h1_up, canary_up):
    """split's cookie rule beta=yes: HTTP/2 crumbs went to the canary, the same cookies in
    two HTTP/1.1 fields to v1 (their joined "a=1, beta=yes" held no cookie beta)."""
    assert h2(gw, "/sp", [("cookie", "a=1"), ("cookie", "beta=yes")]) == 200
    assert h1(gw, b"/sp", b"Cookie: a=1\r\nCookie: beta=yes\r\n") == 200
    assert len(canary_up.heads) == 2 and not h1_up.heads
    assert [canary_up.header(i, "X-AB-Group") for i in (0, 1)] == [["canary"]] * 2


def test_joined_cookie_fields_are_held_to_the_field_size_limit_as_http2_crumbs_are(gw, h1_up):
    """Two Cookie fields of 4,500 bytes are one 9 KB field upstream, over the 8,190-byte
    limit_request_field_size: 431 over HTTP/1.1 as over HTTP/2 (was forwarded whole)."""
    crumbs = ["a=" + "x" * 4500, "b=" + "y" * 4500]
    assert h2(gw, "/any", [("cookie", c) for c in crumbs]) == 431
    assert h1(gw, b"/any", b"".join(b"Cookie: %s\r\n" % c.encode() for c in crumbs)) == 431
    assert h1(gw, b"/any", b"Cookie: %s\r\n" % crumbs[0].encode()) == 200
    assert len(h1_up.heads) == 1


# -- 2. spellings of one cookie list ----------------------------------------------------------

def test_spellings_of_one_cookie_list_are_one_bucket(gw, h1_up):
    """Once sid=abc; theme=dark has spent its request, no spelling of the same cookies is a
    fresh bucket: order, white space and empty crumbs, over HTTP/1.1 and HTTP/2."""
    assert h1(gw, b"/ck", b"Cookie: sid=abc; theme=dark\r\n") == 200
    h1_spellings = [b"sid=abc;theme=dark", b"theme=dark; sid=abc", b"sid=abc; ; theme=dark",
                    b"sid=abc;  theme=dark;", b";sid=abc; theme=dark"]
    assert [h1(gw, b"/ck", b"Cookie: %s\r\n" % s) for s in h1_spellings] == [429] * 5
    h2_spellings = [[("cookie", "theme=dark"), ("cookie", "sid=abc")],
                    [("cookie", "sid=abc"), ("cookie", ""), ("cookie", "theme=dark")],
                    [("cookie", "sid=abc;theme=dark")]]
    assert [h2(gw, "/ck", s) for s in h2_spellings] == [429] * 3
    assert len(h1_up.heads) == 1


def test_held_other_cookies_are_another_bucket(gw, h1_up):
    """Held: another session's cookies are counted apart (the key is no coarser than that)."""
    assert h1(gw, b"/ck", b"Cookie: sid=abc\r\n") == 200
    assert h2(gw, "/ck", [("cookie", "sid=xyz")]) == 200
    assert h1(gw, b"/ck", b"Cookie: sid=xyz\r\n") == 429


# -- 3. Host: the name routed by, not its spelling --------------------------------------------

def test_spellings_of_one_host_are_one_bucket(gw, h1_up):
    """The host t1.example.com has spent its request; its spellings, which the gateway routes
    and forwards as t1.example.com (the port as given), are that bucket's too."""
    assert h1(gw, b"/hk", b"", host=b"t1.example.com") == 200
    spellings = [b"T1.Example.COM", b"t1.example.com.", b"t1.example.com:8080",
                 b"T1.EXAMPLE.COM.:443"]
    assert [h1(gw, b"/hk", b"", host=s) for s in spellings] == [429] * 4
    assert h2(gw, "/hk", authority="T1.EXAMPLE.com.") == 429
    assert len(h1_up.heads) == 1


def test_an_absolute_form_target_counts_as_the_host_it_is_served_as(gw, h1_up):
    """RFC 9112 3.2.2: the target's host wins over Host; the upstream gets Host:
    t1.example.com, so the request is t1's, whatever Host says."""
    assert h1(gw, b"/hk", b"", host=b"t1.example.com") == 200
    assert h1(gw, b"/hk", b"", host=b"other.example.com",
              target=b"http://t1.example.com/hk") == 429
    assert len(h1_up.heads) == 1


def test_held_another_host_is_another_bucket(gw, h1_up):
    assert h1(gw, b"/hk", b"", host=b"t1.example.com") == 200
    assert h2(gw, "/hk", authority="t2.example.com") == 200
    assert h1(gw, b"/hk", b"", host=b"t2.example.com") == 429


# -- 4. a content-length that the (absent) body never adds up to ------------------------------

@pytest.fixture
def cl_gw(launcher, h1_up, h2_up):
    limit = {"rate_limit": {"rate": 1, "per": 3600, "burst": 1, "key": "route"}}
    return launcher.gateway(gateway_conf([
        route("to-h1", ["/h1"], h1_up.url, plugins=limit),
        {"id": "to-h2", "paths": ["/h2"], "plugins": limit,
         "upstream": {"targets": [{"url": f"http://127.0.0.1:{h2_up.port}"}],
                      "protocol": "h2"}},
    ], http2={"h2c": True}))


@pytest.mark.parametrize("path", ["/h1", "/h2"])
def test_a_content_length_without_its_body_is_malformed_before_any_plugin(cl_gw, h1_up,
                                                                         h2_up, path):
    """HEADERS with END_STREAM and content-length: 5: RFC 9113 8.1.1 makes the request
    malformed, and an intermediary must not forward it. The HTTP/2 upstream was sent it (a
    declared body that never came), the HTTP/1.1 upstream's path refused it with a 400 only
    after the plugins ran (the route's one request an hour was spent on it). Now the stream
    is reset (PROTOCOL_ERROR) and the limit is still there for a real request."""
    client = RawH2(cl_gw.port, validate=False)
    try:
        sid = client.request(path, method="POST", headers=[("content-length", "5")])
        assert client.response(sid) is None
        assert client.reset_code(sid) == 1              # PROTOCOL_ERROR
        ok = client.request(path, method="POST", headers=[("content-length", "5")],
                            body=b"hello")
        assert client.response(ok)[0] == 200
    finally:
        client.close()
    assert len(h1_up.heads) + len(h2_up.requests) == 1


def test_held_content_length_zero_with_end_stream_is_served(cl_gw, h1_up, h2_up):
    """Held: content-length: 0 and no DATA add up."""
    assert h2(cl_gw, "/h2", [("content-length", "0")]) == 200
    assert h2_up.requests and ("content-length", "0") in h2_up.requests[0]


# -- 5. the Authorization scheme's case and the spaces after it -------------------------------

SECRET = "attack-pass-f-secret-0123456789abcdef"


@pytest.fixture
def token_gw(launcher, h1_up):
    redis = launcher.redis()
    return launcher.gateway(gateway_conf([
        route("t", ["/t"], h1_up.url, plugins={
            "jwt": {"algorithms": ["HS256"], "secret": SECRET},
            "rate_limit": {**ONE_AN_HOUR, "key": "header:Authorization"}}),
    ], redis={"url": redis.url}, http2={"h2c": True}))


def test_spellings_of_one_token_are_one_bucket(token_gw, h1_up):
    """The jwt plugin (as RFC 9110 11.1 and 11.4 say) reads "bearer T" and "Bearer   T" as
    "Bearer T": each spelling of the scheme's case and of the spaces after it was a fresh
    bucket of a limit keyed on Authorization for the one token it accepts."""
    token = pyjwt.encode({"sub": "alice", "exp": int(time.time()) + 600}, SECRET, "HS256")
    auth = b"Authorization: %s\r\n"
    assert h1(token_gw, b"/t", auth % (b"Bearer " + token.encode())) == 200
    spellings = [b"bearer ", b"BEARER ", b"Bearer   ", b"Bearer \t ", b"bEaReR  "]
    assert [h1(token_gw, b"/t", auth % (s + token.encode())) for s in spellings] == [429] * 5
    assert h2(token_gw, "/t", [("authorization", "bearer    " + token)]) == 429
    assert len(h1_up.heads) == 1


def test_held_another_token_is_another_bucket(token_gw, h1_up):
    tokens = [pyjwt.encode({"sub": sub, "exp": int(time.time()) + 600}, SECRET, "HS256")
              for sub in ("alice", "bob")]
    assert h1(token_gw, b"/t", b"Authorization: Bearer %s\r\n" % tokens[0].encode()) == 200
    assert h2(token_gw, "/t", [("authorization", "Bearer " + tokens[1])]) == 200


# -- held ---------------------------------------------------------------------------------------

def test_held_a_duplicated_key_header_is_a_400_over_http2_too(gw, h1_up):
    """Held: two x-api-key fields are refused over HTTP/2 as over HTTP/1.1, never a bucket
    of their own ("KEY, junk")."""
    assert h2(gw, "/kk", [("x-api-key", "K1")]) == 200
    assert h2(gw, "/kk", [("x-api-key", "K1"), ("x-api-key", "junk")]) == 400
    assert h1(gw, b"/kk", b"X-Api-Key: K1\r\nX-Api-Key: junk\r\n") == 400
    assert len(h1_up.heads) == 1


@pytest.mark.parametrize("host", ["API.test", "api.test.", "api.test:80", "other.test"])
def test_held_authority_and_a_differing_host_field_reset_the_stream(gw, h1_up, host):
    """Held: RFC 9113 8.3.1; which of the two names the upstream would read is never
    guessed."""
    assert h2(gw, "/any", [("host", host)], authority="api.test") is None
    assert h2(gw, "/any", [("host", "api.test")], authority="api.test") == 200
    assert len(h1_up.heads) == 1


def test_held_forged_gateway_headers_never_reach_the_upstream(gw, h1_up):
    """Held: X-Consumer-ID, X-Forwarded-For/-Host and Via a client wrote are the gateway's
    own by the time the upstream sees them, over HTTP/2 as over HTTP/1.1."""
    forged = [("x-consumer-id", "admin"), ("x-forwarded-for", "10.0.0.1"),
              ("x-forwarded-host", "admin.internal"), ("via", "1.1 trusted")]
    assert h2(gw, "/any", forged) == 200
    lines = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in forged)
    assert h1(gw, b"/any", lines) == 200
    for index, version in ((0, "2"), (1, "1.1")):
        assert h1_up.header(index, "X-Consumer-ID") == []
        assert h1_up.header(index, "X-Forwarded-For") == ["127.0.0.1"]
        assert h1_up.header(index, "X-Forwarded-Host") == ["api.test"]
        assert h1_up.header(index, "Via") == [f"1.1 trusted, {version} gwserver"]


@pytest.mark.parametrize("path, status", [
    ("/%61dmin/x", 401), ("//admin//x", 401), ("/admin", 401), ("/admin/", 401),
    ("/%2561dmin/x", 200), ("/ADMIN/x", 200),          # other paths, as docs/security.md says
    ("/admin;x/y", 400), ("/./admin/x", 400), ("/a/%2e%2e/admin/x", 400), ("/admin%2Fx", 400),
])
def test_held_path_spellings_reach_the_same_route_over_both_protocols(gw, h1_up, path,
                                                                      status):
    """Held: the protected /admin/*rest (key_auth, no key: 401) and the open /*rest answer
    each spelling alike over HTTP/1.1 and HTTP/2; what an open route forwards is the
    canonical path, the same bytes from either client."""
    assert h1(gw, path.encode(), b"") == status
    assert h2(gw, path) == status
    if status == 200:
        lines = [head.split(b"\r\n")[0] for head in h1_up.heads]
        assert len(lines) == 2 and lines[0] == lines[1], lines


def test_a_cookie_key_is_not_escaped_by_junk_cookies_or_spellings(gw):
    """``header:Cookie`` counts every cookie, so a junk one added was a fresh bucket (the
    upstream ignores it); ``cookie:NAME`` counts that cookie alone, over both protocols."""
    assert h1(gw, b"/sk", b"Cookie: session=abc\r\n") == 200
    for fields in [b"Cookie: junk=1; session=abc\r\n", b'Cookie: session="abc"; x=2\r\n',
                   b"Cookie: a=1\r\nCookie: session=abc\r\n"]:
        assert h1(gw, b"/sk", fields) == 429, fields
    assert h2(gw, "/sk", [("cookie", "junk=3"), ("cookie", "session=abc")]) == 429
    assert h1(gw, b"/sk", b"Cookie: session=abc; session=junk\r\n") == 400
    assert h1(gw, b"/sk", b"Cookie: session=other\r\n") == 200
