"""One upstream path (issue 13): an HTTP/2 upstream receives what an HTTP/1.1 upstream receives
for the same request, and the client gets the same answer head from both."""
import pytest

from gwserver.plugins.key_auth import hash_key

from ..conftest import gateway_conf, wait_until

KEY = "ak_equivalence_0123456789"

ECHO = ('location / {{ add_header Via "1.1 origin"; return 200 "xff=$http_x_forwarded_for|'
        'xfh=$http_x_forwarded_host|xfp=$http_x_forwarded_proto|via=$http_via|'
        'rid=$http_x_request_id|tp=$http_traceparent|ts=$http_tracestate|host=$host|'
        'conn=$http_connection|custom=$http_x_custom|uri=$request_uri|'
        'cid=$http_x_consumer_id|cgroups=$http_x_consumer_groups|key=$http_x_api_key|'
        'cl=$http_content_length"; }} location /s204 {{ return 204; }} '
        'location /s304 {{ return 304; }}')


@pytest.fixture(scope="module")
def both(module_launcher):
    h1 = module_launcher.nginx("echo-h1", "listen 127.0.0.1:{port}; " + ECHO)
    h2 = module_launcher.nginx("echo-h2", "listen 127.0.0.1:{port} http2; " + ECHO)
    plugins = {"fault": {"delay": {"seconds": 0.001}}, "key_auth": {}}

    def upstream(port, protocol):
        return {"targets": [{"url": f"http://127.0.0.1:{port}"}], "protocol": protocol}

    return module_launcher.gateway(gateway_conf([
        {"id": "h1", "paths": ["/h1/*rest"], "strip_prefix": "/h1",
         "upstream": upstream(h1, "http1"), "plugins": plugins},
        {"id": "h2", "paths": ["/h2/*rest"], "strip_prefix": "/h2",
         "upstream": upstream(h2, "h2"), "plugins": plugins}],
        consumers={"billing": {"groups": ["internal", "partners"], "credentials": {
            "key_auth": {"key_hash": hash_key(KEY)}}}},
        server={"via": "edge-7"}))        # a pseudonym (test_proxy sees the default name)


def seen(gw, proto):
    headers = {"Via": "1.0 edge", "X-Custom": "kept", "X-Forwarded-For": "6.6.6.6",
               "X-Request-ID": "req-42", "X-API-Key": KEY,
               "X-Consumer-ID": "admin", "X-Consumer-Groups": "admins",     # forged
               "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    resp, body = gw.request("GET", f"/{proto}/a/b?q=1", headers=headers)
    assert resp.status == 200, body
    values = dict(part.split("=", 1) for part in body.decode().split("|"))
    head = {k.lower(): v for k, v in resp.getheaders()
            if k.lower() in ("via", "x-request-id", "content-type")}
    return values, head


def test_h1_and_h2_upstreams_receive_the_same_request_and_answer_the_same_head(both):
    h1, h1_head = seen(both, "h1")
    h2, h2_head = seen(both, "h2")
    assert h1.pop("tp")[:36] == h2.pop("tp")[:36]     # same trace id; the span id is per request
    assert h1 == h2
    assert h1["via"] == "1.0 edge, 1.1 edge-7"            # the client's Via chain, extended
    assert h1["xff"] == "127.0.0.1" and h1["xfh"] == f"127.0.0.1:{both.port}"
    assert "gwfault=delay" in h1["ts"]                     # the fault is told upstream
    assert h1["rid"] == "req-42" and h1["custom"] == "kept" and h1["uri"] == "/a/b?q=1"
    # the consumer key_auth identified, never the client's forgery, and the key hidden
    assert (h1["cid"], h1["cgroups"], h1["key"]) == ("billing", "internal,partners", "")
    # Via names the protocol each hop received (RFC 9110 7.6.3): the answer came over
    # HTTP/1.1 from one upstream, over HTTP/2 from the other.
    assert h1_head.pop("via") == "1.1 origin, 1.1 edge-7"
    assert h2_head.pop("via") == "1.1 origin, 2 edge-7"
    assert h1_head == h2_head


def test_a_request_body_is_announced_alike(both):
    """An HTTP/2 upstream was never told the body's length (an HTTP/1.1 upstream was)."""
    for proto in ("h1", "h2"):
        resp, body = both.request("POST", f"/{proto}/a", body=b"x" * 17,
                                  headers={"X-API-Key": KEY})
        values = dict(part.split("=", 1) for part in body.decode().split("|"))
        assert (resp.status, values["cl"]) == (200, "17"), proto


def test_an_answer_is_framed_alike(both):
    """An HTTP/2 upstream's answers lost their Content-Length (a HEAD could not tell the
    size), and its 204, 304 and HEAD answers went out with Transfer-Encoding: chunked (RFC
    9112 6.1: never on a 204)."""
    framing = {}
    for proto in ("h1", "h2"):
        for method, path in (("GET", "/a"), ("HEAD", "/a"), ("GET", "/s204"),
                             ("GET", "/s304")):
            resp, body = both.request(method, f"/{proto}{path}", headers={"X-API-Key": KEY})
            length = resp.getheader("Content-Length")
            framing[proto, method, path] = (resp.status, resp.getheader("Transfer-Encoding"),
                                            length is not None)
            if method == "GET" and path == "/a":
                assert length == str(len(body)), proto
    for method, path in (("GET", "/a"), ("HEAD", "/a"), ("GET", "/s204"), ("GET", "/s304")):
        assert framing["h1", method, path] == framing["h2", method, path], (method, path)
    assert framing["h2", "GET", "/a"] == (200, None, True)
    assert framing["h2", "HEAD", "/a"] == (200, None, True)
    assert framing["h2", "GET", "/s204"][:2] == (204, None)


@pytest.fixture(scope="module")
def rewritten(module_launcher):
    """A route of each protocol whose rewrite maps the upstream's 404 to 410 with a body."""
    gone = 'default_type text/plain; location / {{ return 404 "upstream body"; }}'
    h1 = module_launcher.nginx("gone-h1", "listen 127.0.0.1:{port}; " + gone)
    h2 = module_launcher.nginx("gone-h2", "listen 127.0.0.1:{port} http2; " + gone)
    rewrite = {"response_status": {"404": 410}, "response_body": "no more at $path",
               "response_headers": {"set": {"X-Rewritten": "yes"}}}
    return module_launcher.gateway(gateway_conf([
        {"id": proto, "paths": [f"/{proto}/*rest"], "strip_prefix": f"/{proto}",
         "upstream": {"targets": [{"url": f"http://127.0.0.1:{port}"}], "protocol": protocol},
         "plugins": {"rewrite": rewrite}}
        for proto, port, protocol in (("h1", h1, "http1"), ("h2", h2, "h2"))],
        log={"access_fields": ["time", "route", "status", "upstream_status"]}))


def test_a_response_rewrite_holds_whichever_protocol_the_upstream_speaks(rewritten):
    """An HTTP/2 upstream's answer kept its own status and body: the response phase's status
    and body filters were dropped on that path."""
    for proto in ("h1", "h2"):
        resp, body = rewritten.request("GET", f"/{proto}/old")
        assert (resp.status, body, resp.getheader("X-Rewritten")) == \
            (410, f"no more at /{proto}/old".encode(), "yes"), proto
    # The access log tells both: what the client got, and what the upstream said.
    lines = wait_until(lambda: len(rewritten.access_lines()) >= 2 and rewritten.access_lines())
    # A HEAD is told the status, not the length of the upstream's body the GET does not get.
    for proto in ("h1", "h2"):
        resp, body = rewritten.request("HEAD", f"/{proto}/old")
        assert (resp.status, resp.getheader("Content-Length"), body) == (410, None, b""), proto
    assert sorted((l["route"], l["status"], l["upstream_status"]) for l in lines) == \
        [("h1", 410, 404), ("h2", 410, 404)]
