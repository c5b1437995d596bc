"""Attack pass (Dec 11, h5): the less-trodden plugins and request bodies. A hostile client
tried $variables in redirect Locations and rewritten paths and headers (open redirects,
header injection, dot segments and escaped slashes past a prefix), gzip's edges (encoded
answers, HEAD, 204/304/206, q=0, ETags), request bodies (max_body_size with chunked bodies,
Expect: 100-continue before a refusal, h2 DATA past content-length) and fault's header
match. Two defects, each shown by a test that failed before its fix:

1. A ``redirect`` whose ``uri`` names ``$host`` answered an HTTP/1.0 request that names no
   host with a 500 ``redirect_failed`` and an ERROR line blaming the route's uri: any client
   could ask for gateway 5xx (counted in the metrics, alerting the operator) and error lines,
   where ``http_to_https`` answers the same request 400 ``no_host``.
2. A gateway answer of 205 (fault's ``abort.status = 205``; limit_conn's ``status = 205``
   is written by the same render_reply) went with a body, the JSON page or the configured
   text, over HTTP/1.1 and HTTP/2: RFC 9110 15.3.6 says Reset Content has none (rewrite and
   gzip already keep it so), and a client resetting its form read the page as content.

Every test starts a real gateway on 127.0.0.1 with a real upstream.
"""
import json

from ..conftest import gateway_conf, route
from ..h2client import RawH2


def split(answer):
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), head.decode("latin-1"), body


def test_a_host_redirect_of_a_request_without_host_is_the_clients_400_not_a_500(
        launcher, upstream):
    gw = launcher.gateway(gateway_conf([
        route("moved", ["/docs/v1/*rest"], upstream.url,
              plugins={"redirect": {"uri": "https://$host/docs/v2/$param_rest",
                                    "append_query": True}}),
        route("tls", ["/tls/*rest"], upstream.url, plugins={"redirect": {"http_to_https": True}})]))
    # with a Host, the Location names it
    status, head, _ = split(gw.raw(b"GET /docs/v1/a?b=1 HTTP/1.0\r\nHost: api.example\r\n\r\n"))
    assert status == 301 and "\r\nLocation: https://api.example/docs/v2/a?b=1\r\n" in head
    # HTTP/1.0 lets a client name no host: its request, not the route's uri, is at fault
    status, head, body = split(gw.raw(b"GET /docs/v1/a HTTP/1.0\r\n\r\n"))
    assert (status, json.loads(body)["error"]) == (400, "no_host"), (status, body)  # was 500
    # as http_to_https has always answered it
    status, _, body = split(gw.raw(b"GET /tls/a HTTP/1.0\r\n\r\n"))
    assert (status, json.loads(body)["error"]) == (400, "no_host")
    assert "redirect refused" not in gw.log()           # was an ERROR line blaming the uri


def test_a_205_the_gateway_answers_has_no_content(launcher, upstream):
    gw = launcher.gateway(gateway_conf([
        route("page", ["/page"], upstream.url, plugins={"fault": {"abort": {"status": 205}}}),
        route("text", ["/text"], upstream.url,
              plugins={"fault": {"abort": {"status": 205, "body": "reset!"}}})],
        http2={"h2c": True}))
    for path in (b"/page", b"/text"):
        # two on one connection: the second is read as a request, not as the first's body
        answer = gw.raw(b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % path +
                        b"GET %s HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" % path)
        first, _, second = answer.partition(b"\r\n\r\n")
        assert first.startswith(b"HTTP/1.1 205 ") and b"\r\nContent-Length: 0\r\n" in first, \
            answer                                                 # was the page's length
        assert second.startswith(b"HTTP/1.1 205 "), answer          # was the page
    client = RawH2(gw.port)
    try:
        for path in ("/page", "/text"):
            status, headers, body, _ = client.response(client.request(path))
            assert (status, body, headers.get("content-length")) == (205, b"", "0"), \
                (path, status, body)
    finally:
        client.close()
