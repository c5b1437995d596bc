"""The plugins that rewrite what goes up or comes back (rewrite, redirect, cors, gzip,
$variables), attacked through real gateways and upstreams (the attack pass of 2026-12-14,
helper a3). Each test failed on the commit the pass started from.

1. cors and a route that also edits its answers' headers (``headers``' or ``rewrite``'s
   ``response`` ``set``/``remove`` of Vary, as an API negotiating its language does): their
   response phases ran after cors' and replaced its ``Vary: Origin``. An answer that depends
   on the Origin (app.example's, with its Access-Control-Allow-Origin; a refused origin's,
   without) said ``Vary: Accept-Language`` or no Vary at all, and a shared cache handed the
   one to the other: app.example's fetches failed after anyone's request, and an allowed
   origin's answer went to every other.
2. cors on a route whose ``headers`` (or ``rewrite``) removes Origin from what goes upstream
   (Spring and Django refuse a cross-origin request they were not set up for: the gateway
   does CORS for them): the gateway's own answers (key_auth's 401, rate_limit's 429) were
   judged by the edited request, found no Origin, and went out without
   Access-Control-Allow-Origin, which a browser's page cannot read; a consumer's own cors
   (run after the auth plugin, so after the edit) never allowed anything.
3. gzip on a route that asks its upstream for plain answers (``Accept-Encoding`` removed or
   set to ``identity``, nginx's ``proxy_set_header Accept-Encoding ""``, so the gateway
   compresses): gzip judged the edited header and compressed nothing, for any client.
"""
import gzip
import http.client

from gwserver.plugins.key_auth import hash_key

from ..conftest import gateway_conf, route
from ..h2client import RawH2

APP = "https://app.example"
KEY = "ak_a3_partner_key_0123456789"


def call(gw, method, path, headers=None):
    """-> (status, {lower-case name: [values]}, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    fields = {}
    for name, value in resp.getheaders():
        fields.setdefault(name.lower(), []).append(value)
    return resp.status, fields, body


def h2_call(gw, path, headers):
    """The same request from an HTTP/2 client (h2c) -> (status, headers, body)."""
    client = RawH2(gw.port)
    try:
        answer = client.response(client.request(path, headers=list(headers.items())))
    finally:
        client.close()
    assert answer is not None, path
    return answer[:3]


def vary_names(fields):
    return {name.strip().lower() for value in fields.get("vary", [])
            for name in value.split(",") if name.strip()}


# -- 1. a header edit after cors replaced its Vary: Origin --------------------------------------

def test_a_vary_set_or_removed_by_a_header_edit_keeps_cors_origin(launcher, h1_up):
    h1_up.answer = lambda head, count: (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                                        b"Vary: User-Agent\r\nContent-Length: 2\r\n\r\nok")
    cors = {"allow_origins": [APP]}
    gw = launcher.gateway(gateway_conf([
        route("hdr", ["/hdr/*rest"], h1_up.url, plugins={
            "cors": cors, "headers": {"response": {"set": {"Vary": "Accept-Language"}}}}),
        route("rw", ["/rw/*rest"], h1_up.url, plugins={
            "cors": cors, "rewrite": {"response_headers": {"remove": ["Vary"]}}}),
        route("rwset", ["/rwset/*rest"], h1_up.url, plugins={
            "cors": cors, "rewrite": {"response_headers": {"set": {"Vary": "Accept"}}}})]))
    for path, kept in (("/hdr/x", {"accept-language"}), ("/rw/x", set()),
                       ("/rwset/x", {"accept"})):
        for origin in (APP, "https://evil.example", None):
            status, fields, _ = call(gw, "GET", path, {"Origin": origin} if origin else {})
            assert status == 200
            # the operator's edit stands, and the gateway's own Origin beside it
            assert vary_names(fields) == kept | {"origin"}, (path, origin, fields)
            allowed = fields.get("access-control-allow-origin")
            assert allowed == ([APP] if origin == APP else None), (path, origin, fields)


# -- 2. the gateway's own answers judged by an Origin removed for the upstream ----------------

def test_an_origin_removed_for_the_upstream_still_gets_cors_on_the_gateways_answers(launcher,
                                                                                   h1_up):
    cors = {"allow_origins": [APP]}
    no_origin = {"request": {"remove": ["Origin"]}}
    gw = launcher.gateway(gateway_conf([
        route("api", ["/api/*rest"], h1_up.url, plugins={
            "cors": cors, "headers": no_origin, "key_auth": {},
            "rate_limit": {"rate": 1, "burst": 1, "key": "consumer"}}),
        route("own", ["/own/*rest"], h1_up.url, plugins={
            "rewrite": {"request_headers": {"remove": ["Origin"]}}, "key_auth": {}})],
        consumers={"p": {"credentials": {"key_auth": {"key_hash": hash_key(KEY)}},
                         "plugins": {"cors": cors}}}, http2={"h2c": True}))
    status, fields, _ = call(gw, "GET", "/api/x", {"Origin": APP})
    assert status == 401 and fields.get("access-control-allow-origin") == [APP], fields
    status, fields, _ = h2_call(gw, "/api/x", {"origin": APP})
    assert status == 401 and fields.get("access-control-allow-origin") == APP, fields
    statuses = []
    for _ in range(3):
        status, fields, _ = call(gw, "GET", "/api/x", {"Origin": APP, "X-API-Key": KEY})
        statuses.append(status)
        assert fields.get("access-control-allow-origin") == [APP], (status, fields)
    assert statuses[0] == 200 and 429 in statuses, statuses
    # the consumer's own cors (the route has none) judges the Origin the client sent
    status, fields, _ = call(gw, "GET", "/own/x", {"Origin": APP, "X-API-Key": KEY})
    assert status == 200 and fields.get("access-control-allow-origin") == [APP], fields
    status, fields, _ = call(gw, "GET", "/own/x", {"Origin": "https://evil.example",
                                                   "X-API-Key": KEY})
    assert status == 200 and "access-control-allow-origin" not in fields, fields
    # and the upstream got no Origin, as configured
    assert all(b"\norigin:" not in head.lower() for head in h1_up.heads), h1_up.heads


# -- 3. gzip judged the Accept-Encoding sent upstream, not the client's ------------------------

TEXT = b"compress me " * 400


def test_gzip_compresses_for_the_client_when_the_upstream_is_asked_for_plain(launcher, h1_up):
    h1_up.answer = lambda head, count: (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                                        b"ETag: \"v1\"\r\nContent-Length: %d\r\n\r\n"
                                        % len(TEXT)) + TEXT
    gw = launcher.gateway(gateway_conf([
        route("h", ["/h/*rest"], h1_up.url, plugins={
            "gzip": {}, "headers": {"request": {"remove": ["Accept-Encoding"]}}}),
        route("r", ["/r/*rest"], h1_up.url, plugins={
            "gzip": {}, "rewrite": {"request_headers": {"set": {"Accept-Encoding": "identity"}}}})],
        http2={"h2c": True}))
    for path in ("/h/x", "/r/x"):
        status, fields, body = call(gw, "GET", path, {"Accept-Encoding": "gzip"})
        assert status == 200 and fields.get("content-encoding") == ["gzip"], (path, fields)
        assert gzip.decompress(body) == TEXT and fields["etag"] == ['W/"v1"']
        # a client that does not take gzip still gets the plain bytes
        status, fields, body = call(gw, "GET", path, {"Accept-Encoding": "identity"})
        assert (status, body) == (200, TEXT) and "content-encoding" not in fields
    status, fields, body = h2_call(gw, "/h/x", {"accept-encoding": "gzip"})
    assert status == 200 and fields.get("content-encoding") == "gzip", fields
    assert gzip.decompress(body) == TEXT
    # what the upstream was sent is what the config says
    sent = [line for head in h1_up.heads for line in head.lower().split(b"\r\n")
            if line.startswith(b"accept-encoding:")]
    assert sent == [b"accept-encoding: identity"] * 2, sent
