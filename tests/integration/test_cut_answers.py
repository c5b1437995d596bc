"""An answer the upstream cuts after its head went out (a reset, a close short of its
Content-Length): the client gets the head and the bytes that came, then a cut connection (or a
reset stream on HTTP/2); the access log and the metrics say what the client got, as nginx's log
does (status 200, the bytes sent), and `error` says why it ended. The upstream's failure still
counts for the plugins that judge it (breaker, split, adaptive limits: ctx.error is set).
Before, the line said 502 or 504 with 0 bytes, a status the client never saw."""
import http.client
import socket

import pytest

from ..conftest import free_port, gateway_conf, wait_until
from ..h2_upstreams import ScriptedH2Upstream
from ..h2client import RawH2
from .test_admin import sample

FIELDS = ["time", "status", "upstream_status", "bytes", "error", "route"]


@pytest.fixture
def cutting_h2():
    upstream = ScriptedH2Upstream("cut", "cut")
    yield upstream
    upstream.close()


def gateway(launcher, url, protocol="http1"):
    admin = free_port()
    gw = launcher.gateway(gateway_conf(
        [{"id": "cut", "paths": ["/*rest"],
          "upstream": {"targets": [{"url": url}], "protocol": protocol}}],
        log={"access_fields": FIELDS}, admin={"bind": f"127.0.0.1:{admin}"},
        http2={"h2c": True}))
    gw.admin_port = admin
    return gw


def cut_over_http1(gw, path):
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    conn.request("GET", path)
    resp = conn.getresponse()
    assert resp.status == 200
    with pytest.raises(http.client.IncompleteRead) as cut:
        resp.read()
    conn.close()
    return len(cut.value.partial)


def cut_over_http2(gw, path):
    client = RawH2(gw.port)
    try:
        sid = client.request(path)
        client.pump(lambda c: c.reset_code(sid) is not None or c.ended(sid), timeout=10)
        assert client.reset_code(sid) is not None and not client.ended(sid)
        got = [e for e in client.events if getattr(e, "stream_id", None) == sid]
        assert any(type(e).__name__ == "ResponseReceived" for e in got)
        return sum(len(e.data) for e in got if type(e).__name__ == "DataReceived")
    finally:
        client.close()


def logged_and_counted(gw, received):
    line = wait_until(lambda: gw.access_lines() and gw.access_lines()[-1])
    assert line["status"] == 200 and line["upstream_status"] == 200
    assert line["bytes"] == received == 1000
    assert "mid-body" in line["error"] or "reset" in line["error"], line
    metrics = wait_until(lambda: (text := gw.admin_get("/metrics")[1].decode()) and
                         sample(text, "gwserver_gateway_answers_total", route="cut",
                                source="cut") == 1 and text)
    assert sample(metrics, "gwserver_requests_total", route="cut", status="2xx") == 1
    assert sample(metrics, "gwserver_requests_total", route="cut", status="5xx") is None
    assert sample(metrics, "gwserver_gateway_answers_total", route="cut",
                  source="gateway") is None


@pytest.mark.parametrize("client", ["http1", "http2"])
def test_an_http1_upstream_that_closes_mid_body_is_logged_as_the_client_got_it(
        launcher, client):
    raw = launcher.raw_upstream()
    gw = gateway(launcher, f"http://127.0.0.1:{raw.port}")
    received = (cut_over_http1 if client == "http1" else cut_over_http2)(gw, "/reset-mid-body")
    logged_and_counted(gw, received)


@pytest.mark.parametrize("client", ["http1", "http2"])
def test_an_http2_upstream_that_resets_mid_body_is_logged_as_the_client_got_it(
        launcher, cutting_h2, client):
    gw = gateway(launcher, f"http://127.0.0.1:{cutting_h2.port}", protocol="h2")
    received = (cut_over_http1 if client == "http1" else cut_over_http2)(gw, "/call")
    logged_and_counted(gw, received)


SPOILER = '''
from gwserver.core.schema import Schema

NAME, PRIORITY, SCHEMA = "spoiler", 1, Schema()


def response(conf, ctx, head):
    calls = []

    def transform(data, last):          # a plugin bug on the answer's second piece
        if data:
            calls.append(len(data))
        if len(calls) == 2:
            raise RuntimeError("body filter bug")
        return data
    head.filter_body(transform)
'''


@pytest.mark.parametrize("client", ["http1", "http2"])
def test_a_body_filter_that_raises_mid_body_cuts_the_answer_and_writes_no_error_into_it(
        launcher, upstream, tmp_path, client):
    """Before, a plugin's exception after the head was out became a 500 JSON error page
    written after the body bytes already sent: garbage inside the client's answer."""
    site = tmp_path / "site"
    (site / "gwspoiler-1.0.dist-info").mkdir(parents=True)
    (site / "gwspoiler.py").write_text(SPOILER)
    (site / "gwspoiler-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: gwspoiler\nVersion: 1.0\n")
    (site / "gwspoiler-1.0.dist-info" / "entry_points.txt").write_text(
        "[gwserver.plugins]\nspoiler = gwspoiler\n")
    gw = launcher.gateway(gateway_conf(
        [{"id": "cut", "paths": ["/*rest"], "upstream": {"targets": [{"url": upstream.url}]},
          "plugins": {"spoiler": {}}},
         {"id": "plain", "paths": ["/plain/*rest"], "strip_prefix": "/plain",
          "upstream": {"targets": [{"url": upstream.url}]}}],
        log={"access_fields": FIELDS}, http2={"h2c": True}), env={"PYTHONPATH": str(site)})
    workers = gw.worker_pids()
    if client == "http1":
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
            sock.sendall(b"GET /bytes/2000000 HTTP/1.1\r\nHost: x\r\n\r\n")
            got = b""
            while data := sock.recv(65536):
                got += data
        head, _, body = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head.lower()
        assert not body.endswith(b"0\r\n\r\n")      # cut: no last chunk
    else:
        client_conn = RawH2(gw.port)
        sid = client_conn.request("/bytes/2000000")
        client_conn.pump(lambda c: c.reset_code(sid) is not None or c.ended(sid), timeout=10)
        assert client_conn.reset_code(sid) is not None and not client_conn.ended(sid)
        body = b"".join(e.data for e in client_conn.events
                        if type(e).__name__ == "DataReceived" and e.stream_id == sid)
        client_conn.close()
    assert b"internal_error" not in body and body.strip(b"\r\n0123456789abcdef")
    line = wait_until(lambda: gw.access_lines() and gw.access_lines()[-1])
    assert line["status"] == 200 and line["bytes"] > 0
    assert line["error"] == "internal error; see the gateway's log"
    assert "body filter bug" in gw.log()
    assert gw.worker_pids() == workers
    resp, data = gw.request("GET", "/plain/bytes/10")
    assert resp.status == 200 and len(data) == 10
