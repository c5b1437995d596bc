"""Proxying through a real gateway process to real upstream processes on loopback."""
import http.client
import json
import socket
import subprocess
import time

import pytest

from ..conftest import free_port, gateway_conf, open_websocket, route, wait_until


@pytest.fixture(scope="module")
def gw(module_launcher):
    upstream = module_launcher.upstream("main")
    routes = [
        route("echo", ["/echo"], upstream.url, prefix=True),
        route("api", ["/api/:thing"], upstream.url, strip_prefix="/api"),
        route("bytes", ["/bytes/:n"], upstream.url),
        route("upload", ["/upload"], upstream.url, max_body_size=1 << 20),
        route("small-upload", ["/upload-small"], upstream.url, max_body_size=16),
        route("big-upload", ["/upload-big"], upstream.url, strip_prefix="/upload-big",
              max_body_size=0),
        route("slow", ["/slow/:s"], upstream.url, timeouts={"read": 1.0}),
        route("status", ["/status/:code"], upstream.url),
        route("ws", ["/ws"], upstream.url),
        route("gone", ["/close-without-answer"], upstream.url),
        route("only-get", ["/only-get"], upstream.url, methods=["GET"]),
        route("headers", ["/with-headers"], upstream.url, strip_prefix="/with-headers",
              prefix=True,
              plugins={"headers": {"request": {"set": {"X-Env": "prod"}, "remove": ["Cookie"]},
                                   "response": {"set": {"X-Frame-Options": "DENY"},
                                                "remove": ["X-Upstream"]}}}),
        route("dead", ["/dead"], f"http://127.0.0.1:{free_port()}"),
    ]
    gateway = module_launcher.gateway(gateway_conf(routes))
    gateway.upstream = upstream
    return gateway


def echo(gw, path="/echo", method="GET", headers=None, body=None):
    resp, data = gw.request(method, path, body=body, headers=headers)
    assert resp.status == 200, data
    return resp, json.loads(data)


def test_forwarding_headers_are_set_and_request_id_is_returned(gw):
    resp, seen = echo(gw, "/echo/a?x=1&x=2&y=%20z", headers={"X-Forwarded-For": "10.9.9.9",
                                                             "Via": "1.0 edge"})
    headers = dict(seen["headers"])
    assert seen["path"] == "/echo/a?x=1&x=2&y=%20z"                    # query string intact
    # The peer is no trusted proxy: its X-Forwarded-For was a forgery, the chain starts here.
    assert headers["X-Forwarded-For"] == "127.0.0.1"
    assert headers["X-Forwarded-Proto"] == "http"
    assert headers["X-Forwarded-Host"] == f"127.0.0.1:{gw.port}"
    assert headers["Via"] == "1.0 edge, 1.1 gwserver"
    assert headers["Host"] == f"127.0.0.1:{gw.port}"                    # pass_host = pass
    request_id = resp.getheader("X-Request-ID")
    assert request_id and headers["X-Request-ID"] == request_id
    assert resp.getheader("Via") == "1.1 gwserver"


def test_a_client_request_id_is_kept(gw):
    resp, seen = echo(gw, headers={"X-Request-ID": "abc-123"})
    assert resp.getheader("X-Request-ID") == "abc-123"
    assert dict(seen["headers"])["X-Request-ID"] == "abc-123"


def test_hop_by_hop_headers_are_dropped_both_ways(gw):
    raw = (b"GET /echo HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Secret\r\n"
           b"X-Secret: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: x\r\n"
           b"Upgrade-Insecure-Requests: 1\r\nProxy-Authorization: Basic eA==\r\n"
           b"Connection: close\r\n\r\n")
    response = gw.raw(raw)
    head, _, body = response.partition(b"\r\n\r\n")
    names = {k.lower() for k, _ in json.loads(body)["headers"]}
    for dropped in ("connection", "x-secret", "keep-alive", "te", "proxy-connection",
                    "proxy-authorization"):
        assert dropped not in names
    assert "upgrade-insecure-requests" in names                  # end-to-end, kept
    assert b"Keep-Alive: timeout=60" not in head                # upstream's hop header dropped
    assert b"Connection: close" in head


def test_repeated_headers_survive_both_ways(gw):
    raw = (b"GET /echo HTTP/1.1\r\nHost: h\r\nAccept: a\r\nAccept: b\r\nX-Multi: 1\r\n"
           b"X-Multi: 2\r\nConnection: close\r\n\r\n")
    head, _, body = gw.raw(raw).partition(b"\r\n\r\n")
    seen = json.loads(body)["headers"]
    assert [v for k, v in seen if k == "X-Multi"] == ["1", "2"]
    assert head.count(b"Set-Cookie:") == 2                      # never folded into one


def test_strip_prefix_and_params(gw):
    _, seen = echo(gw, "/api/echo")
    assert seen["path"] == "/echo"


def test_headers_plugin_end_to_end(gw):
    resp, seen = echo(gw, "/with-headers/echo", headers={"Cookie": "s=1", "X-Env": "dev"})
    sent = dict(seen["headers"])
    assert sent["X-Env"] == "prod" and "Cookie" not in sent
    assert resp.getheader("X-Frame-Options") == "DENY"
    assert resp.getheader("X-Upstream") is None


@pytest.mark.parametrize("method, path, status, body_key", [
    ("GET", "/nowhere", 404, "route_not_found"),
    ("POST", "/only-get", 405, "method_not_allowed"),
    ("GET", "/dead", 502, "bad_gateway"),
    ("GET", "/slow/3", 504, "gateway_timeout"),
    ("GET", "/close-without-answer", 502, "bad_gateway"),
])
def test_errors_have_json_bodies_and_statuses(gw, method, path, status, body_key):
    resp, data = gw.request(method, path)
    assert resp.status == status
    assert resp.getheader("Content-Type") == "application/json"
    payload = json.loads(data)
    assert payload["error"] == body_key and payload["status"] == status
    if status == 405:
        assert resp.getheader("Allow") == "GET, HEAD"


def test_upstream_statuses_pass_through(gw):
    for code in (201, 404, 500, 503):
        resp, data = gw.request("GET", f"/status/{code}")
        assert (resp.status, data) == (code, b"status body")
    for code in (204, 304):
        resp, data = gw.request("GET", f"/status/{code}")
        assert (resp.status, data) == (code, b"")


def test_head_gets_headers_without_body(gw):
    resp, data = gw.request("HEAD", "/bytes/5000")
    assert resp.status == 200 and data == b""
    assert resp.getheader("Content-Length") == "5000"
    resp, data = gw.request("GET", "/bytes/10")              # and the connection pool is sane
    assert data == b"x" * 10


def test_chunked_response_is_relayed_chunked(gw):
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    conn.request("GET", "/bytes/300000?chunked=1")
    resp = conn.getresponse()
    assert resp.getheader("Transfer-Encoding") == "chunked"
    assert resp.read() == b"x" * 300000


def test_http10_client_gets_close_delimited_body(gw):
    response = gw.raw(b"GET /bytes/70000?chunked=1 HTTP/1.0\r\nHost: h\r\n\r\n", timeout=10)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"Transfer-Encoding" not in head and b"Connection: close" in head
    assert body == b"x" * 70000


def test_chunked_request_body_is_forwarded(gw):
    body = b"".join(b"%x\r\n%s\r\n" % (n, b"y" * n) for n in (5, 70000, 3)) + b"0\r\n\r\n"
    raw = (b"POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
           b"Connection: close\r\n\r\n" + body)
    head, _, data = gw.raw(raw, timeout=10).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert json.loads(data)["size"] == 70008


def test_expect_100_continue(gw):
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"abcd")
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        assert json.loads(resp.read())["size"] == 4


@pytest.mark.parametrize("raw, status", [
    (b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 2000000\r\n\r\n", 413),
])
def test_declared_body_over_limit_is_413_before_forwarding(gw, raw, status):
    before = gw.upstream.stats()["requests"]
    assert gw.raw(raw).startswith(b"HTTP/1.1 %d" % status)
    assert gw.upstream.stats()["requests"] == before


@pytest.mark.parametrize("pipelined", [False, True])
def test_a_chunked_body_over_limit_that_came_with_its_head_is_413(gw, pipelined):
    """A chunked body read whole with its head (one packet, or pipelined behind another
    request) was never measured: it went upstream however far over max_body_size."""
    before = gw.upstream.stats()["requests"]
    body = b"40\r\n" + b"x" * 64 + b"\r\n0\r\n\r\n"
    raw = b"POST /upload-small HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    if pipelined:
        raw = b"GET /upload-small HTTP/1.1\r\nHost: h\r\n\r\n" + raw
    answers = gw.raw(raw, timeout=10)
    assert answers.count(b"HTTP/1.1 413") == 1 and answers.count(b"HTTP/1.1 ") == 1 + pipelined
    assert gw.upstream.stats()["requests"] == before + pipelined


def test_chunked_body_over_limit_is_cut_off_with_413(gw):
    piece = b"z" * 65536
    body = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(20)) + b"0\r\n\r\n"
    raw = b"POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    assert gw.raw(raw, timeout=10).startswith(b"HTTP/1.1 413")


class SharedReader:
    """What http.client.HTTPResponse takes as a socket: one file for every answer, which
    HTTPResponse's close leaves open."""

    def __init__(self, file):
        self.file = file

    def makefile(self, mode):
        return self

    def __getattr__(self, name):
        return getattr(self.file, name)

    def close(self):
        pass


def test_pipelined_requests_are_answered_in_order(gw):
    raw = b"".join(b"GET /echo/%d HTTP/1.1\r\nHost: h\r\n\r\n" % i for i in range(3))
    raw += b"POST /echo/last HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(raw)                     # all four requests in one write
        # One buffered reader for all four answers: they may arrive in one segment, and a
        # reader per answer would swallow the next one's bytes.
        shared = SharedReader(sock.makefile("rb"))
        paths = []
        for _ in range(4):
            resp = http.client.HTTPResponse(shared)
            resp.begin()
            paths.append(json.loads(resp.read())["path"])
    assert paths == ["/echo/0", "/echo/1", "/echo/2", "/echo/last"]


def test_absolute_form_target_uses_its_host(gw):
    raw = (b"GET http://example.org/echo?q=1 HTTP/1.1\r\nHost: ignored\r\n"
           b"Connection: close\r\n\r\n")
    seen = json.loads(gw.raw(raw).partition(b"\r\n\r\n")[2])
    assert seen["path"] == "/echo?q=1" and dict(seen["headers"])["Host"] == "example.org"


def test_keepalive_pools_reuse_upstream_connections(gw):
    """1,000 sequential requests through one worker open only a handful of connections."""
    before = gw.upstream.stats()["connections"]
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    for i in range(1000):
        conn.request("GET", f"/echo/{i}")
        resp = conn.getresponse()
        assert resp.status == 200
        resp.read()
    conn.close()
    opened = gw.upstream.stats()["connections"] - before
    assert opened <= 3, opened


def test_websocket_upgrade_is_tunnelled(gw):
    sock, head, rest = open_websocket(gw.port, b"first-bytes", timeout=5)
    with sock:
        assert head.startswith(b"HTTP/1.1 101")
        assert b"Upgrade: websocket" in head and b"Connection: Upgrade" in head
        received = rest
        while len(received) < len(b"first-bytes"):
            received += sock.recv(4096)
        assert received == b"first-bytes"
        for message in (b"hello", b"\x00\xff binary \r\n\r\n"):
            sock.sendall(message)
            got = b""
            while len(got) < len(message):
                got += sock.recv(4096)
            assert got == message


def test_idle_keepalive_connections_are_closed_after_keepalive_seconds(start_gateway,
                                                                        upstream):
    gw = start_gateway(gateway_conf([route("e", ["/echo"], upstream.url)],
                                    server={"keepalive": 0.5}))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: h\r\n\r\n")
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        assert resp.status == 200 and resp.read()
        started = time.monotonic()
        assert sock.recv(10) == b""                  # closed by the gateway
        assert time.monotonic() - started < 2.0


def test_slow_request_head_is_cut_off(start_gateway, upstream):
    gw = start_gateway(gateway_conf([route("e", ["/echo"], upstream.url)],
                                    server={"header_timeout": 0.5}))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: h\r\n")      # never finishes the head
        started = time.monotonic()
        data = sock.recv(65536)
        assert data.startswith(b"HTTP/1.1 408") or data == b""
        assert time.monotonic() - started < 2.0


def test_access_log_has_one_json_line_per_request(gw):
    gw.request("GET", "/echo/logged", headers={"X-Request-ID": "log-me"})
    gw.request("GET", "/nowhere")
    lines = wait_until(lambda: [l for l in gw.access_lines()
                                if l.get("request_id") == "log-me"] and gw.access_lines())
    line = next(l for l in lines if l.get("request_id") == "log-me")
    assert line["route"] == "echo" and line["status"] == 200
    assert line["upstream"] == gw.upstream.url and line["method"] == "GET"
    assert line["path"] == "/echo/logged" and line["duration_ms"] >= 0
    assert any(l["status"] == 404 and l["route"] is None for l in lines)


def test_https_upstream_over_pooled_tls_connections(launcher, tmp_path):
    """The pooled socket of an https:// target is TLS: the fast send/receive paths must go
    through it, not around it to the TCP socket underneath."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    upstream = launcher.upstream("tls", tls=(str(cert), str(key)))
    gw = launcher.gateway(gateway_conf([route("tls", ["/echo"], upstream.url, prefix=True)]),
                          env={"SSL_CERT_FILE": str(cert)})     # trust the test's own CA
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    for i in range(20):                                         # reuses the TLS connection
        conn.request("POST", f"/echo/{i}", body=b"x" * 5000)
        resp = conn.getresponse()
        body = json.loads(resp.read())
        assert resp.status == 200 and body["path"] == f"/echo/{i}"
        assert body["body_size"] == 5000
    assert upstream.stats()["connections"] <= 2


@pytest.mark.parametrize("method, path, status", [("GET", "/nowhere", 404),
                                                  ("POST", "/only-get", 405)])
def test_the_gateways_own_answers_have_one_shape_and_their_bytes_are_logged(
        gw, method, path, status):
    resp, body = gw.request(method, path, body=b"" if method == "POST" else None)
    payload = json.loads(body)
    assert resp.status == status
    assert list(payload)[:4] == ["error", "status", "message", "request_id"]
    assert payload["request_id"] == resp.getheader("X-Request-ID")
    line = wait_until(lambda: [l for l in gw.access_lines()
                               if l.get("request_id") == payload["request_id"]])[-1]
    assert line["status"] == status and line["bytes"] == len(body)


def test_via_names_the_protocol_each_hop_received(gw):
    """RFC 9110 7.6.3: an HTTP/1.0 request is forwarded with "1.0 gwserver" (the h2c test
    sees "2 gwserver"); the answer, which came over HTTP/1.1, carries "1.1 gwserver"."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(b"GET /echo/v HTTP/1.0\r\nHost: x\r\nVia: 1.1 edge\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"\r\nVia: 1.1 gwserver\r\n" in head
    assert dict(json.loads(body)["headers"])["Via"] == "1.1 edge, 1.0 gwserver"


def test_an_upstream_failure_tells_the_client_nothing_of_the_inside(gw):
    """The 502 body carried the target's address and a Python class name
    (CheapCheckHTTPConnection(host=..., port=...)); the log line had no request id to find
    it by. Now the client gets the request id, and the log the details under it."""
    resp, body = gw.request("GET", "/dead")
    answer = json.loads(body)
    assert resp.status == 502 and answer["request_id"]
    assert "127.0.0.1" not in body.decode() and "Connection" not in body.decode()
    assert "can find why under this request id" in answer["message"]
    # The access log's line of that request says why, whatever the error log's throttle
    # kept (one warning a second per route and error).
    line = wait_until(lambda: [l for l in gw.access_lines()
                               if l.get("request_id") == answer["request_id"]])[-1]
    assert line["error"].startswith("cannot connect to http://127.0.0.1:"), line
    # the OS's reason, not urllib3's wrapper text (which names its connection class)
    assert line["error"].endswith(": connection refused"), line


def test_an_exhausted_pool_tells_the_client_nothing_of_the_inside(launcher, upstream):
    import threading
    gw = launcher.gateway(gateway_conf([{
        "id": "r", "paths": ["/*rest"],
        "upstream": {"targets": [{"url": upstream.url}], "pool_size": 1,
                     "block_when_full": True}}], upstream_defaults={"pool_timeout": 0.2}))
    slow = threading.Thread(target=gw.request, args=("GET", "/slow/1.5"))
    slow.start()
    time.sleep(0.3)
    resp, body = gw.request("GET", "/echo")
    slow.join()
    assert resp.status == 503 and "127.0.0.1" not in body.decode()
    assert json.loads(body)["message"].startswith("no connection to the upstream is free")
    wait_until(lambda: f"{upstream.url} is exhausted" in gw.log())
