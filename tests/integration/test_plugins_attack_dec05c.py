"""The request-shaping plugins (redirect, cors, rewrite, headers, $variables), attacked through
real gateways and upstreams (the attack pass of 2026-12-05, helper h5, on e34a244). Each test
failed on that commit.

1. cors and an upstream that does CORS itself: the gateway set its Access-Control-Allow-Origin
   over the upstream's and left the rest. A route allowing app.example *without* credentials
   answered app.example with the upstream's ``Access-Control-Allow-Credentials: true`` (and
   its ``-Expose-Headers: X-Secret``) beside the gateway's Allow-Origin: credentialed reads
   the config refuses. An origin the config refuses (evil.example) got the upstream's
   reflected Allow-Origin and Allow-Credentials untouched.
2. cors with ``allow_origins = ["*"]`` (no credentials) put ``Access-Control-Allow-Origin: *``
   only on answers to requests with an Origin, and no ``Vary: Origin``: a shared cache that
   stored the answer to a request without one (a crawler, a curl) handed it to every
   browser's cross-origin fetch, which then failed (cache poisoning by anyone).
3. cors took ``allow_origins = ["null"]`` and an ``allow_origin_patterns`` entry matching
   every origin (``.*``) with ``allow_credentials = true``: any site can send ``Origin: null``
   (a sandboxed iframe) or is matched by ``.*``, and was answered with its own origin and
   ``Access-Control-Allow-Credentials: true``: it read the user's answers. A pattern also
   let ``null`` in without credentials.
4. rewrite's ``response_body`` replaced the body of a gzip-encoded upstream answer (a 404 page,
   which most servers compress) and left ``Content-Encoding: gzip`` on the plain text: every
   client failed to decode the answer (curl: "Error while processing content unencoding",
   browsers: ERR_CONTENT_DECODING_FAILED). Its ETag, naming the upstream's bytes, stayed too.
5. A CORS preflight to a route with ``methods`` (GET, POST: what an API lists) was routed as an
   OPTIONS: a 405 without CORS headers, or, beside a catch-all route, the catch-all's upstream
   (no cors at all). Every cross-origin JSON POST or Authorization-bearing fetch of such a
   route failed. A preflight for a method the route refuses (DELETE) was answered 204.
6. redirect ``http_to_https`` took ``host = "a.example:8443"`` with ``https_port = 8443``, and
   answered every request with ``Location: https://a.example:8443:8443/...``.
7. key_auth with ``query = "apikey"`` beside redirect ``http_to_https`` (an API that wants its
   key and https): ``http://.../x?apikey=KEY`` was redirected before key_auth ran, so the key
   stayed in the query the access log wrote out; so it did behind an ip_restriction 403 or a
   body over the route's limit (413, before any plugin): "the gateway never logs a key".
8. cors and an answer that ended the request before cors' access phase ran: a ``redirect``
   (priority 1150, an API moved with 308) or a body over the route's limit (413). The answer
   went out without Access-Control-Allow-Origin: a browser's cross-origin fetch does not
   follow such a redirect (a network error), nor lets the script read the 413. The preflight
   of a non-simple request (a JSON POST) to such a route got the redirect itself, which no
   browser follows: the route's cors never answered it.
9. ``$consumer_groups`` joined the consumer's groups in the order of a frozenset, which is the
   process' string hashing's: another on every host and restart, and not X-Consumer-Groups'
   (``ops,billing`` in one, ``billing,ops`` in the next: an upstream keying a cache or a
   comparison on it saw two values for one consumer).
"""
import gzip
import http.client
import subprocess
import sys

from gwserver.plugins.key_auth import hash_key

from ..conftest import gateway_conf, route, to_toml, wait_until
from .test_auth_edges import upstream_saw

APP = "https://app.example"


def call(gw, method, path, headers=None):
    """-> (status, {lower-case name: [values]}, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    conn.request(method, path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    fields = {}
    for name, value in resp.getheaders():
        fields.setdefault(name.lower(), []).append(value)
    return resp.status, fields, body


def check(tmp_path, routes):
    """`gwserver check` on a conf of ``routes`` -> (exit code, what it said)."""
    conf = tmp_path / "gw.toml"
    conf.write_text(to_toml(gateway_conf(routes)))
    run = subprocess.run([sys.executable, "-m", "gwserver", "check", "-c", str(conf)],
                         capture_output=True, text=True, timeout=60)
    return run.returncode, run.stdout + run.stderr


# -- 1. an upstream's own CORS headers added to the gateway's ---------------------------------

OWN_CORS = (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
            b"Access-Control-Allow-Origin: https://evil.example\r\n"
            b"Access-Control-Allow-Credentials: true\r\n"
            b"Access-Control-Expose-Headers: X-Secret\r\nVary: Accept\r\n\r\nok")


def test_an_upstreams_own_cors_headers_neither_add_to_nor_stand_for_the_routes(launcher,
                                                                              h1_up):
    h1_up.answer = lambda head, count: OWN_CORS
    gw = launcher.gateway(gateway_conf([route("c", ["/c/*rest"], h1_up.url, plugins={
        "cors": {"allow_origins": [APP], "expose_headers": ["X-Request-Id"]}})]))
    status, fields, _ = call(gw, "GET", "/c/x", {"Origin": APP})
    assert status == 200
    assert fields["access-control-allow-origin"] == [APP]
    assert "access-control-allow-credentials" not in fields, fields
    assert fields["access-control-expose-headers"] == ["X-Request-Id"]
    assert fields["vary"] == ["Accept, Origin"]             # the upstream's Vary is kept
    status, fields, _ = call(gw, "GET", "/c/x", {"Origin": "https://evil.example"})
    assert status == 200 and not [n for n in fields if n.startswith("access-control-")], fields


# -- 2. "*" only for requests with an Origin, and no Vary --------------------------------------

def test_a_route_open_to_every_origin_gives_every_answer_the_same_allow_origin(launcher,
                                                                              upstream):
    gw = launcher.gateway(gateway_conf([
        route("pub", ["/pub/*rest"], upstream.url, strip_prefix="/pub",
              plugins={"cors": {"allow_origins": ["*"]}}),
        route("keyed", ["/keyed/*rest"], upstream.url, plugins={
            "cors": {"allow_origins": ["*"]}, "key_auth": {}})]))
    for headers in ({}, {"Origin": "https://x.example"}, {"Origin": "null"}):
        status, fields, _ = call(gw, "GET", "/pub/echo", headers)
        assert status == 200 and fields["access-control-allow-origin"] == ["*"], headers
        assert "access-control-allow-credentials" not in fields
    # an upstream's error, and an answer the gateway writes itself (key_auth's 401)
    status, fields, _ = call(gw, "GET", "/pub/status/404")
    assert status == 404 and fields["access-control-allow-origin"] == ["*"]
    status, fields, _ = call(gw, "GET", "/keyed/echo")
    assert status == 401 and fields["access-control-allow-origin"] == ["*"]


# -- 3. origins any site can send, with credentials --------------------------------------------

def test_origins_any_site_can_send_are_refused_with_credentials(tmp_path, launcher, upstream):
    for cors in ({"allow_origins": ["null"], "allow_credentials": True},
                 {"allow_origin_patterns": [".*"], "allow_credentials": True},
                 {"allow_origin_patterns": ["https?://.+"], "allow_credentials": True}):
        code, said = check(tmp_path, [route("c", ["/c/*rest"], upstream.url,
                                            plugins={"cors": cors})])
        assert code == 2 and "route c: plugins.cors:" in said, (cors, said)
        assert "every site could read" in said or "any site can send" in said, said
    # a pattern (no credentials) never lets the null origin in: only a listed "null" does
    gw = launcher.gateway(gateway_conf([
        route("pat", ["/pat/*rest"], upstream.url, plugins={
            "cors": {"allow_origin_patterns": [r"[a-z]+(://[a-z.]+)?"]}}),
        route("listed", ["/listed/*rest"], upstream.url, plugins={
            "cors": {"allow_origins": ["null"]}})]))
    status, fields, _ = call(gw, "GET", "/pat/echo", {"Origin": "null"})
    assert status == 200 and "access-control-allow-origin" not in fields, fields
    status, fields, _ = call(gw, "GET", "/pat/echo", {"Origin": "https://a.example"})
    assert fields["access-control-allow-origin"] == ["https://a.example"]
    status, fields, _ = call(gw, "GET", "/listed/echo", {"Origin": "null"})
    assert fields["access-control-allow-origin"] == ["null"]


# -- 4. a replaced body keeps the upstream's Content-Encoding ---------------------------------

PAGE = gzip.compress(b"<html>the upstream's own not-found page</html>")
GZIPPED_404 = (b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Encoding: gzip\r\n"
               b"ETag: \"page-v1\"\r\nContent-Length: %d\r\n\r\n" % len(PAGE)) + PAGE


def test_a_replaced_body_goes_out_without_the_upstreams_encoding_and_validators(launcher,
                                                                                h1_up):
    h1_up.answer = lambda head, count: GZIPPED_404
    gw = launcher.gateway(gateway_conf([
        route("gone", ["/gone/*rest"], h1_up.url, plugins={"rewrite": {
            "response_status": {"404": 410}, "response_body": "gone ($request_id)\n",
            "response_body_statuses": [404]}}),
        route("gz", ["/gz/*rest"], h1_up.url, plugins={"rewrite": {
            "response_body": "replaced\n",
            "response_headers": {"set": {"ETag": "\"mine\""}}}})]))
    status, fields, body = call(gw, "GET", "/gone/x", {"Accept-Encoding": "gzip",
                                                       "X-Request-ID": "rid-42"})
    assert (status, body) == (410, b"gone (rid-42)\n")
    assert "content-encoding" not in fields and "etag" not in fields, fields
    status, fields, _ = call(gw, "HEAD", "/gone/x", {"Accept-Encoding": "gzip"})
    assert status == 410 and "content-encoding" not in fields, fields
    # the config's own edits come after: an ETag it sets stays
    status, fields, body = call(gw, "GET", "/gz/x", {"Accept-Encoding": "gzip"})
    assert (status, body) == (404, b"replaced\n") and "content-encoding" not in fields
    assert fields["etag"] == ['"mine"']


# -- 5. a preflight routed as an OPTIONS -------------------------------------------------------

def preflight(gw, path, method, origin=APP):
    return call(gw, "OPTIONS", path, {"Origin": origin, "Access-Control-Request-Method": method,
                                      "Access-Control-Request-Headers": "content-type"})


def test_a_preflight_is_answered_by_the_cors_of_the_route_its_method_would_take(launcher,
                                                                                upstream):
    cors = {"allow_origins": [APP], "allow_headers": ["Content-Type"],
            "allow_credentials": True}
    gw = launcher.gateway(gateway_conf([
        route("api", ["/api/*rest"], upstream.url, methods=["GET", "POST"],
              plugins={"cors": cors, "key_auth": {}}),
        route("api-other", ["/api/*rest"], upstream.url),      # every other method
        route("alone", ["/alone/*rest"], upstream.url, methods=["POST"],
              plugins={"cors": cors}),
        route("plain", ["/plain/*rest"], upstream.url, methods=["POST"]),
        route("opts", ["/opts/*rest"], upstream.url, methods=["GET", "OPTIONS"],
              plugins={"cors": cors})]))
    for path in ("/api/echo", "/alone/echo"):
        status, fields, _ = preflight(gw, path, "POST")
        assert status == 204, (path, status)
        assert fields["access-control-allow-origin"] == [APP]
        assert fields["access-control-allow-credentials"] == ["true"]
        assert fields["access-control-allow-headers"] == ["content-type"]
    assert fields["access-control-allow-methods"] == ["POST"]       # the route's, of cors'
    status, fields, _ = preflight(gw, "/api/echo", "GET")
    assert fields["access-control-allow-methods"] == ["GET, HEAD, POST"]
    # an origin cors refuses, a method the route does not take: 403
    for path, method, origin in (("/api/echo", "POST", "https://evil.example"),
                                 ("/alone/echo", "POST", "https://evil.example"),
                                 ("/opts/echo", "DELETE", APP)):
        status, fields, _ = preflight(gw, path, method, origin)
        assert status == 403 and "access-control-allow-origin" not in fields, path
    status, fields, _ = preflight(gw, "/opts/echo", "GET")
    assert status == 204 and fields["access-control-allow-methods"] == ["GET, HEAD, OPTIONS"]
    # where the announced method goes to a route without cors, an OPTIONS is routed as ever
    status, fields, body = preflight(gw, "/api/echo", "DELETE")
    assert status == 200 and b'"method": "OPTIONS"' in body                 # api-other
    assert preflight(gw, "/plain/echo", "POST")[0] == 405
    assert preflight(gw, "/alone/echo", "DELETE")[0] == 405
    assert call(gw, "OPTIONS", "/alone/echo", {"Origin": APP})[0] == 405    # no preflight
    status, _, body = call(gw, "OPTIONS", "/api/echo", {"Origin": APP})
    assert status == 200 and b'"method": "OPTIONS"' in body                 # api-other
    # and the request the preflight announced is served by the route's cors
    status, fields, _ = call(gw, "POST", "/alone/echo", {"Origin": APP})
    assert status == 200 and fields["access-control-allow-origin"] == [APP]


# -- 6. a Location with two ports --------------------------------------------------------------

def test_an_https_redirect_naming_two_ports_is_refused(tmp_path, launcher, upstream):
    code, said = check(tmp_path, [route("r", ["/r/*rest"], upstream.url, plugins={
        "redirect": {"http_to_https": True, "host": "a.example:8443", "https_port": 8443}})])
    assert code == 2 and "route r: plugins.redirect: host 'a.example:8443' names a port" in said
    gw = launcher.gateway(gateway_conf([
        route("r", ["/r/*rest"], upstream.url, plugins={
            "redirect": {"http_to_https": True, "host": "a.example:8443"}}),
        route("p", ["/p/*rest"], upstream.url, plugins={
            "redirect": {"http_to_https": True, "host": "a.example", "https_port": 8443}})]))
    for path in ("/r/x?q=1", "/p/x?q=1"):
        status, fields, _ = call(gw, "GET", path)
        assert (status, fields["location"]) == (301, [f"https://a.example:8443{path}"])


# -- 7. a key in the query of a request ended before key_auth ran ------------------------------

KEY = "ak_live_h5_6c1d0e9f8a7b"


def test_a_key_in_the_query_of_a_request_ended_before_key_auth_is_never_logged(launcher,
                                                                               upstream):
    auth = {"key_auth": {"query": "apikey"}}
    gw = launcher.gateway(gateway_conf([
        route("https", ["/https/*rest"], upstream.url,
              plugins={"redirect": {"http_to_https": True}, **auth}),
        route("denied", ["/denied/*rest"], upstream.url,
              plugins={"ip_restriction": {"deny": ["127.0.0.0/8"]}, **auth}),
        route("small", ["/small/*rest"], upstream.url, max_body_size=10, plugins=auth)],
        consumers={"alice": {"credentials": {"key_auth": {"key_hash": hash_key(KEY)}}}},
        log={"access_format": "common"}))
    status, fields, _ = call(gw, "GET", f"/https/x?a=1&apikey={KEY}")
    # the client is sent where it asked to go, over https: its own query, key and all
    assert (status, fields["location"]) == (301, [f"https://127.0.0.1/https/x?a=1&apikey={KEY}"])
    assert call(gw, "GET", f"/denied/x?a=2&APIKEY={KEY}")[0] == 403
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    conn.request("POST", f"/small/x?a=3&apikey={KEY}", body=b"x" * 100)
    assert conn.getresponse().status == 413
    conn.close()
    wait_until(lambda: all(f'" {code} ' in gw.log() for code in (301, 403, 413)))
    log = gw.log()
    assert KEY not in log, [line for line in log.splitlines() if KEY in line]
    for target in ("/https/x?a=1 ", "/denied/x?a=2 ", "/small/x?a=3 "):
        assert target in log, target


# -- 8. an answer made before cors ran -------------------------------------------------------

def test_answers_made_before_cors_ran_carry_its_headers_for_an_allowed_origin(launcher,
                                                                              upstream):
    cors = {"allow_origins": [APP], "allow_credentials": True, "allow_headers": ["Content-Type"]}
    gw = launcher.gateway(gateway_conf([
        route("moved", ["/v1/*rest"], upstream.url, max_body_size=10, plugins={
            "redirect": {"uri": "/v2/$param_rest", "status": 308}, "cors": cors})]))
    status, fields, _ = call(gw, "GET", "/v1/items", {"Origin": APP})
    assert (status, fields["location"]) == (308, ["/v2/items"])
    assert fields["access-control-allow-origin"] == [APP]
    assert fields["access-control-allow-credentials"] == ["true"]
    assert "Origin" in fields["vary"][0]
    status, fields, _ = call(gw, "GET", "/v1/items", {"Origin": "https://evil.example"})
    assert status == 308 and "access-control-allow-origin" not in fields
    status, fields, _ = preflight(gw, "/v1/items", "POST")
    assert status == 204 and fields["access-control-allow-origin"] == [APP]
    assert call(gw, "OPTIONS", "/v1/items", {"Origin": APP})[0] == 308      # no preflight
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    conn.request("POST", "/v1/items", body=b"x" * 100, headers={"Origin": APP})
    resp = conn.getresponse()
    resp.read()
    conn.close()
    assert resp.status == 413 and resp.getheader("Access-Control-Allow-Origin") == APP


# -- 9. $consumer_groups in the order of the process' hashing ---------------------------------

def test_consumer_groups_are_said_in_the_consumers_order_on_every_host(launcher, upstream):
    groups = ["ops", "billing", "admins", "eu"]
    gw = launcher.gateway(gateway_conf(
        [route("g", ["/g/*rest"], upstream.url, strip_prefix="/g", plugins={
            "key_auth": {}, "rewrite": {"request_headers": {"set": {
                "X-Groups": "$consumer_groups"}}}})],
        consumers={"alice": {"groups": groups,
                             "credentials": {"key_auth": {"key_hash": hash_key(KEY)}}}}),
        env={"PYTHONHASHSEED": "0"})        # a fixed hashing, whose set order is not ours
    status, _, body = call(gw, "GET", "/g/echo", {"X-API-Key": KEY})
    seen = upstream_saw(body)
    assert status == 200 and seen["x-consumer-groups"] == ",".join(groups)
    assert seen["x-groups"] == ",".join(groups), seen
