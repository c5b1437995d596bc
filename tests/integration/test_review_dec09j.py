"""Review of 73b763f (Dec 9, j): client identity behind trusted proxies, against real
gateways and upstreams.

1. A gRPC-Web call (HTTP/1.1) refused with a 400 once its target was read (73b763f's for
   a trusted proxy's "unknown"; a Forwarded header that does not parse) is answered by
   handle() with its gRPC status; it read req.request_id, which check_target had not set
   yet: AttributeError, the call got a bare close, no answer, no access line. One refused before its target was parsed (two
   Host fields, "HTTP/2.0") got a bare close too; it gets the JSON 400 any such head gets.
   Over HTTP/2 the same call got its gRPC status without the route's CORS headers.
2. A gwserver names a client of its unix: listener "unix" in the X-Forwarded-For it
   sends; a gwserver behind it that trusts it took that hop for garbage from a trusted
   proxy: every such client was a 400 (nginx's "unix:" was accepted, not the gateway's own
   spelling).
3. Forwarded: for="" from a trusted proxy ended the walk as an element without for= does:
   the client was taken for the proxy, past allow-lists naming it. "unknown" now, as
   for=unknown (and an element without for= where a trusted proxy wrote the client).
"""

from ..conftest import gateway_conf, route, wait_until
from ..h2client import RawH2
from .test_attack_pass_dec03 import raw_request
from .test_unix_peers_dec06y import unix_exchange

ORIGIN = "https://app.test"


def grpc_web_post(port, extra, body=b""):
    return raw_request(port, b"POST /gw.Svc/Get HTTP/1.1\r\nHost: x\r\nContent-Type: "
                       b"application/grpc-web+proto\r\nOrigin: " + ORIGIN.encode() +
                       b"\r\n" + extra + b"Content-Length: 5\r\n\r\n" + body, timeout=3)


def test_a_grpc_web_call_refused_early_gets_its_grpc_status(launcher, h2_up):
    gw = launcher.gateway(gateway_conf([
        {"id": "svc", "paths": ["/gw.Svc/*m"],
         "upstream": {"targets": [{"url": f"http://127.0.0.1:{h2_up.port}"}], "protocol": "h2"},
         "plugins": {"grpc_web": {"allow_origins": [ORIGIN]}}}],
        server={"trusted_proxies": ["127.0.0.1/32"], "real_ip_header": "Forwarded"},
        http2={"h2c": True}))
    for extra in (b'Forwarded: for="203.0.113.7\r\n',
                  b'Forwarded: for=203.0.113.7;host="a\r\n'):
        for body in (b"", b"\x00\x00\x00\x00\x00"):
            answer = grpc_web_post(gw.port, extra, body)
            # before: b"" (the worker's AttributeError closed the connection)
            assert answer.startswith(b"HTTP/1.1 200 "), (extra, body, answer)
            head, _, rest = answer.partition(b"\r\n\r\n")
            assert b"access-control-allow-origin: " + ORIGIN.encode() in head.lower(), answer
            assert b"grpc-status:13" in rest, answer
            assert b"x-request-id: " in head.lower(), answer
    # refused before its target was parsed (two Hosts, "HTTP/2.0" over HTTP/1.1), it cannot
    # be routed: the JSON 400 any head refused so gets (before: a bare close too)
    answer = grpc_web_post(gw.port, b"Host: y\r\n")
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert b"more than one Host header" in answer, answer
    answer = raw_request(gw.port, b"POST /gw.Svc/Get HTTP/2.0\r\nHost: x\r\nContent-Type: "
                         b"application/grpc-web+proto\r\nContent-Length: 5\r\n\r\n", timeout=3)
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert b"unsupported HTTP version 2.0" in answer, answer
    assert "Traceback" not in gw.log(), gw.log()[-3000:]
    assert h2_up.requests == []
    # native gRPC over HTTP/2 was already answered so (H2Stream.open sets request_id)
    client = RawH2(gw.port)
    try:
        sid = client.request("/gw.Svc/Get", method="POST",
                             headers=[("content-type", "application/grpc"), ("te", "trailers"),
                                      ("forwarded", 'for="203.0.113.7')], body=b"\0\0\0\0\0")
        status, headers, _, _ = client.response(sid)
        assert (status, headers.get("grpc-status")) == (200, "13"), headers
    finally:
        client.close()


# -- 2. a gateway behind a gateway's unix: listener -------------------------------------------

def test_a_gateway_behind_a_gateways_unix_listener_is_no_400(launcher, upstream, tmp_path):
    """gwserver names a unix: listener's peer "unix" in the X-Forwarded-For it sends (as it
    names it everywhere); a gwserver behind it that trusts it read that hop as garbage from a
    trusted proxy: every request that came to the first one's unix: listener was a 400."""
    inner = launcher.gateway(gateway_conf(
        [{**route("e", ["/echo"], upstream.url),
          "plugins": {"ip_restriction": {"allow": ["203.0.113.0/24"]}}}],
        server={"trusted_proxies": ["127.0.0.1/32", "unix:"]}))
    edge_route = [route("e", ["/echo"], f"http://127.0.0.1:{inner.port}")]
    trusting, untrusting = tmp_path / "trusting.sock", tmp_path / "untrusting.sock"
    launcher.gateway(gateway_conf(edge_route, server={"trusted_proxies": ["unix:"]}),
                     extra_binds=[f"unix:{trusting}"])
    launcher.gateway(gateway_conf(edge_route), extra_binds=[f"unix:{untrusting}"])
    answer = unix_exchange(trusting, b"X-Forwarded-For: 203.0.113.7\r\n")
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:400]           # before: 400
    assert b"203.0.113.7, unix, 127.0.0.1" in answer, answer           # the chain it saw
    answer = unix_exchange(trusting, b"X-Forwarded-For: 198.51.100.1\r\n")
    assert answer.startswith(b"HTTP/1.1 403 "), answer[:400]           # judged as itself
    # a client of an untrusted unix: listener is "unix" to both: refused, not a 400
    answer = unix_exchange(untrusting, b"X-Forwarded-For: 203.0.113.7\r\n")
    assert answer.startswith(b"HTTP/1.1 403 "), answer[:400]           # before: 400


# -- 3. Forwarded: for="" where a trusted proxy named the client -----------------------------

def get(port, path, *headers):
    head = b"".join(h + b"\r\n" for h in headers)
    return raw_request(port, b"GET " + path + b" HTTP/1.1\r\nHost: a\r\n" + head +
                       b"Connection: close\r\n\r\n", timeout=5)


def test_an_empty_forwarded_for_from_a_trusted_proxy_is_unknown_not_the_proxy(launcher,
                                                                             h1_up):
    """for="" (a proxy set to write for="$http_x_real_ip", that header absent) is no address,
    as for=unknown is: it ended the walk as an element without for= does, and the client was
    taken for the proxy, past an allow-list that names the proxy's own address."""
    gw = launcher.gateway(gateway_conf(
        [route("internal", ["/p"], h1_up.url,
               plugins={"ip_restriction": {"allow": ["127.0.0.1/32"]}})],
        server={"trusted_proxies": ["127.0.0.1/32"], "real_ip_header": "Forwarded"}))
    for fwd in (b'for=""', b'for=203.0.113.7, for="";proto=https'):
        answer = get(gw.port, b"/p", b"Forwarded: " + fwd)
        assert answer.startswith(b"HTTP/1.1 403 "), (fwd, answer)     # before: 200
    # left of an untrusted address it is never read
    assert get(gw.port, b"/p", b'Forwarded: for="", for=203.0.113.7').startswith(
        b"HTTP/1.1 403 ")
    # nor is the proxy the client where its element names none (docs/security.md)
    assert get(gw.port, b"/p", b"Forwarded: proto=https").startswith(b"HTTP/1.1 403 ")


def test_a_grpc_web_call_over_http2_refused_early_keeps_its_cors(launcher, h2_up):
    """Over HTTP/2 the same 400 went out with its gRPC status but none of the route's CORS
    headers (the stream answered it before any route was matched): a browser behind the
    proxy read an opaque network error. HTTP/1.1 gave them (handle() matched the route)."""
    gw = launcher.gateway(gateway_conf([
        {"id": "svc", "paths": ["/gw.Svc/*m"],
         "upstream": {"targets": [{"url": f"http://127.0.0.1:{h2_up.port}"}], "protocol": "h2"},
         "plugins": {"grpc_web": {"allow_origins": [ORIGIN]}}}],
        server={"trusted_proxies": ["127.0.0.1/32"], "real_ip_header": "Forwarded"},
        http2={"h2c": True}))
    client = RawH2(gw.port)
    try:
        sid = client.request("/gw.Svc/Get", method="POST", body=b"\0\0\0\0\0",
                             headers=[("content-type", "application/grpc-web+proto"),
                                      ("origin", ORIGIN), ("forwarded", 'for="203.0.113.7')])
        status, headers, body, _ = client.response(sid)
    finally:
        client.close()
    assert status == 200 and b"grpc-status:13" in body, (status, headers, body)
    assert headers.get("access-control-allow-origin") == ORIGIN, headers     # before: none
    assert h2_up.requests == []
    wait_until(lambda: '"route":"svc"' in gw.log() and '"status":400' in gw.log(), 5)
    assert "Traceback" not in gw.log(), gw.log()[-3000:]        # its access line, by route
