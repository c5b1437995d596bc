"""Clients speaking HTTP/2 (issue 19): h2c with prior knowledge and h2 over TLS by ALPN, served
through the one request path; real clients (curl) first, a hand-driven h2 client for what curl
will not send."""
import json
import re
import socket
import subprocess

import h2.errors
import pytest

from ..conftest import free_port, gateway_conf, route, wait_until
from ..h2client import RawH2
from ..pki import CA


def curl(*args, timeout=20):
    out = subprocess.run(["curl", "-sS", "--max-time", str(timeout), *args],
                         capture_output=True, timeout=timeout + 5)
    return out


@pytest.fixture
def h2c_gw(launcher, upstream):
    return launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)],
                                         http2={"h2c": True}))


def test_h2c_prior_knowledge_through_the_one_path(h2c_gw, tmp_path):
    out = curl("--http2-prior-knowledge", "-H", "X-Real-IP: 6.6.6.6", "-H", "Cookie: a=1",
               "-H", "Cookie: b=2", "-w", "\n%{http_version}", f"{h2c_gw.url}//echo?x=1")
    body, _, version = out.stdout.rpartition(b"\n")
    assert version == b"2", out
    echo = json.loads(body)
    headers = {k.lower(): v for k, v in echo["headers"]}
    assert echo["path"] == "/echo?x=1" and echo["version"] == "HTTP/1.1"     # merged slashes
    assert headers["x-forwarded-for"] == "127.0.0.1" and "x-real-ip" not in headers
    assert headers["host"] == f"127.0.0.1:{h2c_gw.port}" and headers["cookie"] == "a=1; b=2"
    assert headers["via"] == "2 gwserver"       # the protocol this hop received (RFC 9110)
    (tmp_path / "body").write_bytes(b"x" * 300_000)
    out = curl("--http2-prior-knowledge", "--data-binary", f"@{tmp_path / 'body'}",
               f"{h2c_gw.url}/upload")
    assert json.loads(out.stdout)["size"] == 300_000
    out = curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
               f"{h2c_gw.url}/bytes/1000000?chunked=1")
    assert out.stdout == b"200 1000000"
    out = curl("--http2-prior-knowledge", "-I", f"{h2c_gw.url}/bytes/10")
    assert out.stdout.startswith(b"HTTP/2 200") and b"content-length: 10" in out.stdout
    assert b"connection:" not in out.stdout.lower()
    out = curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code}",
               f"{h2c_gw.url}/a/%2e%2e/admin")
    assert out.stdout == b"400"                             # dot segments, as on HTTP/1.1
    # HTTP/1.1 is still served on an h2c listener.
    out = curl("-w", "\n%{http_version}", f"{h2c_gw.url}/echo")
    assert out.stdout.endswith(b"\n1.1")
    # (a stream's line is written once its answer is out: curl may have it first)
    lines = wait_until(lambda: [line for line in h2c_gw.access_lines()
                                if line.get("path") == "//echo"], timeout=5)
    assert lines[0]["protocol"] == "HTTP/2" and lines[0]["status"] == 200


def test_h2c_is_off_by_default(launcher, upstream):
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)]))
    out = curl("--http2-prior-knowledge", "-o", "/dev/null", f"{gw.url}/echo", timeout=5)
    assert out.returncode != 0                      # the preface is a malformed HTTP/1.1 line
    assert b"HTTP/1.1 400" in gw.raw(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")


def test_h2_over_tls_by_alpn_and_configurable(launcher, upstream, tmp_path):
    ca = CA(tmp_path)
    cert, key, _ = ca.issue("site")
    ports = []
    for alpn in (None, ["http/1.1"]):
        port = free_port()
        tls = {"bind": [f"127.0.0.1:{port}"], "certificates": [{"cert": str(cert),
                                                                 "key": str(key)}]}
        if alpn:
            tls["alpn"] = alpn
        launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)], tls=tls))
        ports.append(port)
    versions = []
    for port in ports:
        out = curl("--http2", "--cacert", str(ca.cert_path), "-w", "\n%{http_version}",
                   f"https://localhost:{port}/echo", "--resolve", f"localhost:{port}:127.0.0.1")
        body, _, version = out.stdout.rpartition(b"\n")
        versions.append(version)
        headers = {k.lower(): v for k, v in json.loads(body)["headers"]}
        assert headers["x-forwarded-proto"] == "https"
    assert versions == [b"2", b"1.1"]


@pytest.mark.parametrize("headers, authority", [
    ([("host", "other.test")], "localhost"),            # :authority and Host disagree
    ([("connection", "keep-alive")], "localhost"),      # connection-specific
    ([("transfer-encoding", "chunked")], "localhost"),
    ([("te", "gzip")], "localhost"),
    ([("X-Upper", "1")], "localhost"),                  # upper case name
])
def test_malformed_requests_are_reset_with_protocol_error(h2c_gw, headers, authority):
    client = RawH2(h2c_gw.port, validate=False)
    sid = client.request("/echo", headers=headers, authority=authority)
    assert client.response(sid) is None
    assert client.reset_code(sid) == h2.errors.ErrorCodes.PROTOCOL_ERROR
    ok = client.request("/echo")                        # the connection goes on
    assert client.response(ok)[0] == 200
    client.close()


@pytest.mark.parametrize("method, path", [
    ("GET /admin/secret", "/echo"),          # would reach the upstream as "GET /admin/secret
    ("GET\t/admin/secret", "/echo"),         #   /echo HTTP/1.1", routed by the gateway as /echo
    ("GET", "/echo /admin/secret"),
    ("connect", "/echo"),
])
def test_a_method_or_path_that_would_rewrite_the_request_line_is_reset(h2c_gw, method, path):
    """The method and path of an HTTP/2 request become an HTTP/1.1 request line upstream."""
    client = RawH2(h2c_gw.port, validate=False)
    sid = client.request(path, method=method)
    assert client.response(sid) is None
    assert client.reset_code(sid) == h2.errors.ErrorCodes.PROTOCOL_ERROR
    ok = client.request("/echo")
    status, _, body = client.response(ok)[:3]
    assert status == 200 and json.loads(body)["path"] == "/echo"
    client.close()


def test_limits_are_the_http1_limits(launcher, upstream):
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)], http2={
        "h2c": True}, server={"limit_request_fields": 20, "limit_request_field_size": 200}))
    client = RawH2(gw.port)
    many = client.request("/echo", headers=[(f"x-h{i}", "v") for i in range(30)])
    big = client.request("/echo", headers=[("x-big", "v" * 400)])
    assert client.response(many)[0] == 431 and client.response(big)[0] == 431
    client.close()


def test_the_protocol_is_a_metric_label(launcher, upstream):
    gw = launcher.gateway(gateway_conf([route("echo", ["/*rest"], upstream.url)],
                                       http2={"h2c": True}))
    out = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "-o", "/dev/null", "-w",
                          "%{http_version}", f"{gw.url}/echo"], capture_output=True, text=True)
    assert out.stdout == "2"
    assert gw.request("GET", "/echo")[0].status == 200

    def counted():
        status, body = gw.admin_get("/metrics")
        return status == 200 and all(re.search(
            rb'gwserver_requests_total\{[^}]*protocol="%s"[^}]*\} [1-9]' % p, body)
            for p in (b"HTTP/2", b"HTTP/1.1"))
    assert wait_until(counted, timeout=10)


@pytest.mark.parametrize("header", [b"X-A: a\x0bb", b"X-A: a\x7f", b"X(A): 1"])
def test_a_field_http1_refuses_is_refused_on_h2c_too(h2c_gw, upstream, header):
    """What llhttp refuses from an HTTP/1.1 client (a control character in a value, a name that
    is not a token) is a malformed HTTP/2 request too: never forwarded on either protocol."""
    with socket.create_connection(("127.0.0.1", h2c_gw.port), timeout=10) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: gw\r\n" + header +
                     b"\r\nConnection: close\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 400")
    out = curl("--http2-prior-knowledge", "-H", header.decode("latin-1"), f"{h2c_gw.url}/echo")
    assert out.returncode != 0 and b"echo" not in out.stdout, out    # the stream is reset
    assert b"HTTP/2 stream" in out.stderr or b"PROTOCOL_ERROR" in out.stderr, out
