"""gRPC-Web from a client built byte by byte, through the gateway, to a real grpcio server
over HTTP/2; and plain HTTP routes over h2 (issue 8)."""
import base64
import http.client
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import free_port, gateway_conf, wait_for_port

GRPC_UPSTREAM = Path(__file__).resolve().parent.parent / "grpc_upstream.py"
ORIGIN = "https://app.test"


def field_string(number, text):
    data = text.encode()
    return bytes([number << 3 | 2, len(data)]) + data


def field_int(number, value):
    out, value = bytes([number << 3]), value
    while True:
        byte = value & 0x7f
        value >>= 7
        out += bytes([byte | (0x80 if value else 0)])
        if not value:
            return out


def frame(message, flag=0):
    return bytes([flag]) + len(message).to_bytes(4, "big") + message


def parse_frames(body):
    """-> ([message bytes], {trailer: value})."""
    messages, trailers = [], {}
    while body:
        flag, length = body[0], int.from_bytes(body[1:5], "big")
        payload, body = body[5:5 + length], body[5 + length:]
        if flag & 0x80:
            for line in payload.decode().split("\r\n"):
                if line:
                    name, _, value = line.partition(":")
                    trailers[name.strip()] = value.strip()
        else:
            messages.append(payload)
    return messages, trailers


def decode_reply(message):
    """EchoReply {1: text, 2: index} from protobuf wire bytes."""
    out, i = {"text": "", "index": 0}, 0
    while i < len(message):
        key = message[i]
        i += 1
        if key == 0x0a:
            length = message[i]
            out["text"] = message[i + 1:i + 1 + length].decode()
            i += 1 + length
        elif key == 0x10:
            value, shift = 0, 0
            while True:
                byte = message[i]
                i += 1
                value |= (byte & 0x7f) << shift
                shift += 7
                if not byte & 0x80:
                    break
            out["index"] = value
    return out


@pytest.fixture
def grpc_server(launcher):
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(GRPC_UPSTREAM), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    launcher.started.append(proc)
    wait_for_port(port, timeout=30, proc=proc)
    proc.port = port
    return proc


@pytest.fixture
def grpc_gw(launcher, grpc_server):
    return launcher.gateway(gateway_conf([{
        "id": "grpc", "paths": ["/gwtest.Echo/*method"], "upstream": {
            "targets": [{"url": f"http://127.0.0.1:{grpc_server.port}"}], "protocol": "h2"},
        "plugins": {"grpc_web": {"allow_origins": [ORIGIN]}}}], workers=2))


def call(gw, method, request, text=False, headers=None):
    body = frame(request)
    content_type = "application/grpc-web-text" if text else "application/grpc-web+proto"
    if text:
        body = base64.b64encode(body)
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=15)
    conn.request("POST", f"/gwtest.Echo/{method}", body=body, headers={
        "Content-Type": content_type, "X-Grpc-Web": "1", "Origin": ORIGIN, **(headers or {})})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    if text:
        data = base64.b64decode(data)
    return resp, parse_frames(data)


def test_unary_binary_and_text(grpc_gw):
    for text in (False, True):
        resp, (messages, trailers) = call(grpc_gw, "Unary", field_string(1, "hello"), text)
        assert resp.status == 200
        assert resp.getheader("Content-Type") == ("application/grpc-web-text" if text else
                                                  "application/grpc-web+proto")
        assert [decode_reply(m)["text"] for m in messages] == ["hello"]
        assert trailers["grpc-status"] == "0"
        assert resp.getheader("Access-Control-Allow-Origin") == ORIGIN
        assert "grpc-status" in resp.getheader("Access-Control-Expose-Headers")


def test_custom_initial_metadata_is_exposed_when_named(launcher, grpc_server):
    """Custom initial metadata reaches a browser as answer headers, which its scripts may
    read only when Access-Control-Expose-Headers names them: expose_headers adds them to the
    gRPC headers exposed by default; a name not listed stays unreadable (not exposed)."""
    gw = launcher.gateway(gateway_conf([{
        "id": "grpc", "paths": ["/gwtest.Echo/*method"], "upstream": {
            "targets": [{"url": f"http://127.0.0.1:{grpc_server.port}"}], "protocol": "h2"},
        "plugins": {"grpc_web": {"allow_origins": [ORIGIN], "expose_headers": ["X-Cost"]}}}]))
    resp, (messages, trailers) = call(gw, "Unary", field_string(1, "metadata"))
    assert resp.status == 200 and trailers["grpc-status"] == "0"
    assert resp.getheader("x-cost") == "7" and resp.getheader("x-shard") == "eu-1"
    exposed = [h.strip().lower() for h in resp.getheader("Access-Control-Expose-Headers")
               .split(",")]
    assert "x-cost" in exposed and "grpc-status" in exposed and "grpc-message" in exposed
    assert "x-shard" not in exposed


def test_server_streaming(grpc_gw):
    resp, (messages, trailers) = call(grpc_gw, "Stream",
                                      field_string(1, "tick") + field_int(2, 25))
    replies = [decode_reply(m) for m in messages]
    assert [r["index"] for r in replies] == list(range(25))
    assert {r["text"] for r in replies} == {"tick"} and trailers["grpc-status"] == "0"


def test_error_status_and_message(grpc_gw):
    resp, (messages, trailers) = call(grpc_gw, "Unary", field_string(1, "fail"))
    assert resp.status == 200 and messages == []
    assert trailers["grpc-status"] == "3" and trailers["grpc-message"] == "asked to fail"


def test_deadline(grpc_gw):
    resp, (messages, trailers) = call(grpc_gw, "Unary",
                                      field_string(1, "slow") + field_int(3, 1000),
                                      headers={"grpc-timeout": "200m"})
    assert messages == [] and trailers["grpc-status"] == "4"          # DEADLINE_EXCEEDED


def test_cors_preflight(grpc_gw):
    conn = http.client.HTTPConnection("127.0.0.1", grpc_gw.port, timeout=10)
    conn.request("OPTIONS", "/gwtest.Echo/Unary", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-grpc-web"})
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 204 and resp.getheader("Access-Control-Allow-Origin") == ORIGIN
    assert "x-grpc-web" in resp.getheader("Access-Control-Allow-Headers")
    conn.request("OPTIONS", "/gwtest.Echo/Unary", headers={
        "Origin": "https://evil.test", "Access-Control-Request-Method": "POST"})
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 403


def test_many_calls_share_one_multiplexed_connection(grpc_gw):
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: call(grpc_gw, "Unary", field_string(1, f"m{i}")),
                                range(40)))
    assert sorted(decode_reply(r[1][0][0])["text"] for r in results) == \
        sorted(f"m{i}" for i in range(40))
    established = subprocess.run(["ss", "-Htn", "state", "established", "dst",
                                  f"127.0.0.1:{grpc_gw_port(grpc_gw)}"],
                                 capture_output=True, text=True).stdout.splitlines()
    assert 1 <= len(established) <= 2            # one connection per worker, not per call


def grpc_gw_port(gw):
    import tomllib
    conf = tomllib.loads(gw.conf_path.read_text())
    return conf["routes"][0]["upstream"]["targets"][0]["url"].rpartition(":")[2]


def test_grpc_web_needs_an_h2_upstream():
    from gwserver.errors import ConfigError
    from gwserver.settings import parse_conf
    with pytest.raises(ConfigError, match='the upstream must speak HTTP/2'):
        parse_conf({"routes": [{"id": "g", "paths": ["/g"], "upstream": {
            "targets": [{"url": "http://127.0.0.1:9"}]}, "plugins": {"grpc_web": {}}}]})


def h2c_nginx(launcher, tmp_path):
    (tmp_path / "big").write_bytes(b"x" * 300_000)
    return launcher.nginx("h2c", (
        f"listen 127.0.0.1:{{port}} http2; root {tmp_path}; location /hello {{{{ "
        'add_header X-Proto $server_protocol; return 200 "hi over h2"; }}'))


def test_h2_upstream_retries_a_refused_connect_and_ejects_the_target(launcher, tmp_path):
    port = h2c_nginx(launcher, tmp_path)
    dead = f"http://127.0.0.1:{free_port()}"
    gw = launcher.gateway(gateway_conf([{"id": "h2", "paths": ["/*rest"], "upstream": {
        "targets": [{"url": dead}, {"url": f"http://127.0.0.1:{port}"}], "protocol": "h2",
        "passive": {"consecutive_failures": 1, "eject_for": 30}}}]))
    assert [gw.request("GET", "/hello")[0].status for _ in range(10)] == [200] * 10
    assert "retrying on another target" in gw.log() and f"ejected {dead}" in gw.log()


def test_plain_http_routes_over_h2(launcher, tmp_path):
    """protocol = "h2" for an ordinary route: nginx speaking cleartext HTTP/2 (prior
    knowledge) answers; status, headers and a large body come back over HTTP/1.1."""
    port = h2c_nginx(launcher, tmp_path)
    gw = launcher.gateway(gateway_conf([{"id": "h2", "paths": ["/*rest"], "upstream": {
        "targets": [{"url": f"http://127.0.0.1:{port}"}], "protocol": "h2"}}]))
    resp, body = gw.request("GET", "/hello")
    assert resp.status == 200 and body == b"hi over h2"
    assert resp.getheader("X-Proto") == "HTTP/2.0"
    resp, body = gw.request("GET", "/big")
    assert resp.status == 200 and len(body) == 300_000      # flow control over many windows
    resp, _ = gw.request("GET", "/missing")
    assert resp.status == 404


def test_h2_over_tls_negotiates_by_alpn_and_honours_upstream_tls(launcher, tmp_path):
    from ..pki import CA
    ca = CA(tmp_path)
    cert, key, _ = ca.issue("h2site")
    port = launcher.nginx("h2tls", (
        f"listen 127.0.0.1:{{port}} ssl http2; ssl_certificate {cert}; "
        f"ssl_certificate_key {key}; location /hello {{{{ add_header X-Proto "
        '$server_protocol; return 200 "hi over h2 and tls"; }}'))
    url = f"https://127.0.0.1:{port}"
    gw = launcher.gateway(gateway_conf([
        {"id": "trusted", "paths": ["/trusted/*r"], "strip_prefix": "/trusted", "upstream": {
            "targets": [{"url": url}], "protocol": "h2", "tls": {"ca_file": str(ca.cert_path)}}},
        {"id": "system", "paths": ["/system/*r"], "strip_prefix": "/system", "upstream": {
            "targets": [{"url": url}], "protocol": "h2"}}]))
    resp, body = gw.request("GET", "/trusted/hello")
    assert resp.status == 200 and body == b"hi over h2 and tls"
    assert resp.getheader("X-Proto") == "HTTP/2.0"
    assert gw.request("GET", "/system/hello")[0].status == 502     # a private CA: refused
    assert "certificate verify failed" in gw.log() or "CERTIFICATE_VERIFY_FAILED" in gw.log()
