"""Attack pass dec06w on the plugins that parse bodies or match client addresses (grpc_web,
gzip, ip_restriction, acl, basic_auth).

Defects found and fixed, each pinned below (each test seen failing before its fix):

1. ip_restriction matches an IPv4 client (a dual-stack listener's ``::ffff:a.b.c.d`` too) as
   ``a.b.c.d``, but a rule written in the IPv4-mapped spelling (``::ffff:127.0.0.0/104``)
   stayed an IPv6 range: it matched nothing. A deny rule spelt that way let in every client
   it named; an allow rule refused them. Such a rule is now the IPv4 range it names.
2. The same for ``server.trusted_proxies``: a proxy listed as ``::ffff:127.0.0.1`` was never
   trusted, so the clients it named were taken for the proxy itself. `gwserver check` warns of
   ``::ffff:0:0/96`` in identity_proxies (every IPv4 client) as it does of ``0.0.0.0/0``.
3. gzip left 204, 206 and 304 alone but compressed a 205 Reset Content, which RFC 9110 15.3.6
   says carries no content: its empty (chunked) body went out as 20 bytes of gzip, with
   Content-Encoding: gzip.
4. A chunked gRPC-Web body past grpc_web.max_body_size, but within request_buffer_size, had no
   413 until the client ended it: the body was buffered against the route's limit alone (and
   what came with the head was measured only after the next read). A client that sent 1 KiB
   over the limit and then waited held its connection until the body timeout. Now 413 at once.
"""
import socket
import subprocess
import sys
import threading
import time

import pytest

from ..conftest import gateway_conf, route, to_toml
from .test_attack_pass_dec04b import h2_gateway, h2_scripts  # noqa: F401 (fixture)


def test_an_ipv4_mapped_rule_matches_the_ipv4_clients_it_names(launcher, upstream):
    target = {"targets": [{"url": upstream.url}]}
    gw = launcher.gateway(gateway_conf([
        {"id": "deny", "paths": ["/deny"], "upstream": target,
         "plugins": {"ip_restriction": {"deny": ["::ffff:127.0.0.0/104"]}}},
        {"id": "allow", "paths": ["/allow"], "upstream": target,
         "plugins": {"ip_restriction": {"allow": ["::ffff:127.0.0.1"]}}},
        {"id": "other", "paths": ["/other"], "upstream": target,
         "plugins": {"ip_restriction": {"deny": ["::ffff:10.0.0.0/104"]}}}]))
    resp, body = gw.request("GET", "/deny")
    assert resp.status == 403, body             # was 200: the deny rule matched nothing
    resp, body = gw.request("GET", "/allow")
    assert resp.status == 200, body             # was 403
    resp, body = gw.request("GET", "/other")
    assert resp.status == 200, body             # 127.0.0.1 is not in 10.0.0.0/8


def test_a_trusted_proxy_written_ipv4_mapped_names_its_clients(launcher, upstream):
    gw = launcher.gateway(gateway_conf(
        [{"id": "r", "paths": ["/*rest"], "upstream": {"targets": [{"url": upstream.url}]},
          "plugins": {"ip_restriction": {"allow": ["10.0.0.0/8"]}}}],
        server={"trusted_proxies": ["::ffff:127.0.0.1/128"]}))
    resp, body = gw.request("GET", "/x", headers={"X-Forwarded-For": "10.1.2.3"})
    assert resp.status == 200, body             # was 403: the proxy was taken for the client
    resp, body = gw.request("GET", "/x")
    assert resp.status == 403, body


def test_check_warns_of_every_ipv4_client_spelt_ipv4_mapped_in_identity_proxies(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text(to_toml(gateway_conf([route("r", ["/*rest"], "http://127.0.0.1:9")],
                                         server={"identity_proxies": ["::ffff:0:0/96"]})))
    run = subprocess.run([sys.executable, "-m", "gwserver", "check", "-c", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "identity_proxies holds ::ffff:0:0/96" in run.stdout + run.stderr, run.stdout


@pytest.fixture
def h1_script():
    """An HTTP/1.1 upstream on loopback (a thread of this process) that answers every request
    on a connection with ``answer`` bytes as they are, then closes."""
    listener = socket.create_server(("127.0.0.1", 0))
    state = {"answer": b""}

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                head = b""
                try:
                    while b"\r\n\r\n" not in head and (piece := conn.recv(65536)):
                        head += piece
                    conn.sendall(state["answer"])
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{listener.getsockname()[1]}"
    yield state
    listener.shutdown(socket.SHUT_RDWR)     # wakes accept()
    listener.close()
    thread.join(5)


def fetch(port, request):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        out = b""
        while piece := sock.recv(65536):
            out += piece
    return out


def test_a_205_gets_no_gzip_body(launcher, h1_script):
    h1_script["answer"] = (b"HTTP/1.1 205 Reset Content\r\nContent-Type: text/plain\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], h1_script["url"],
                                              plugins={"gzip": {"types": ["text/*"]}})]))
    answer = fetch(gw.port, b"GET /form HTTP/1.1\r\nHost: gw\r\nAccept-Encoding: gzip\r\n"
                            b"Connection: close\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 205 "), answer[:300]
    assert b"content-encoding" not in head.lower(), answer[:300]   # was: gzip
    assert body in (b"", b"0\r\n\r\n"), answer[:300]                # was: 20 bytes of gzip


@pytest.mark.parametrize("pause", [0, 0.3])
def test_a_chunked_grpc_web_body_past_its_limit_is_a_413_at_once(launcher, h2_scripts, pause):
    gw = h2_gateway(launcher, h2_scripts({}), {"plugins": {"grpc_web": {"max_body_size": 1000}}})
    with socket.create_connection(("127.0.0.1", gw.port), timeout=3) as sock:
        head = (b"POST /p.S/M HTTP/1.1\r\nHost: gw\r\nContent-Type: application/grpc-web\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")
        body = b"7d0\r\n" + b"\0" * 2000 + b"\r\n"       # 2000 bytes, and the body goes on
        if pause:
            sock.sendall(head)
            time.sleep(pause)
            sock.sendall(body)
        else:
            sock.sendall(head + body)
        started = time.monotonic()
        try:
            answer = sock.recv(4096)
        except TimeoutError:
            answer = b"(nothing in 3 s)"     # was: waited for the body's end
    # the 413 a gRPC-Web client reads: grpc-status 8 (test_fix_dec07b)
    assert answer.startswith(b"HTTP/1.1 200 ") and b"grpc-status:8" in answer, answer[:200]
    assert time.monotonic() - started < 2
