"""PROXY protocol listeners ([server] proxy_protocol): a TCP load balancer names the client,
against a real gateway. The balancer here is the test, on 127.0.0.1."""
import json
import re
import socket
import ssl
import struct
import time

import pytest

from ..conftest import free_port, gateway_conf, read_response, route, wait_until
from ..pki import CA

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v1(client, port=5555):
    family = "TCP6" if ":" in client else "TCP4"
    dest = "::1" if family == "TCP6" else "127.0.0.1"
    return f"PROXY {family} {client} {dest} {port} 443\r\n".encode()


def v2_ipv6(client, port=4000):
    body = socket.inet_pton(socket.AF_INET6, client) + socket.inet_pton(
        socket.AF_INET6, "::1") + struct.pack("!HH", port, 443)
    return V2_SIGNATURE + b"\x21\x21" + struct.pack("!H", len(body)) + body


def exchange(sock, path="/echo", headers=""):
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: gw\r\n{headers}\r\n".encode())
    head, body = read_response(sock)
    return int(head.split(b" ")[1]), body


def forwarded_for(body):
    return dict((k.lower(), v) for k, v in json.loads(body)["headers"])["x-forwarded-for"]


def closed_without_answer(sock):
    sock.settimeout(10)
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


@pytest.fixture
def proxied(launcher, upstream):
    behind = free_port()
    gw = launcher.gateway(gateway_conf(
        [route("echo", ["/echo"], upstream.url),
         route("lim", ["/lim"], upstream.url, plugins={"rate_limit": {
             "rate": 1, "per": 3600, "burst": 1, "key": "ip"}})], workers=2,
        server={"trusted_proxies": ["127.0.0.1/32"], "header_timeout": 1.0,
                "proxy_protocol": [f"127.0.0.1:{behind}"]}),
        extra_binds=[f"127.0.0.1:{behind}"])
    gw.plain, gw.behind = gw.port, behind       # the launcher's own port speaks plain HTTP
    return gw


def test_the_balancer_names_the_client_for_every_request_of_the_connection(proxied):
    with socket.create_connection(("127.0.0.1", proxied.behind)) as sock:
        sock.sendall(v1("203.0.113.7"))
        for _ in range(2):                                  # keep-alive: one header, two asks
            status, body = exchange(sock, headers="X-Forwarded-For: 6.6.6.6\r\n")
            assert status == 200 and forwarded_for(body).endswith("203.0.113.7")
    with socket.create_connection(("127.0.0.1", proxied.behind)) as sock:
        sock.sendall(v2_ipv6("2001:db8::7"))
        assert forwarded_for(exchange(sock)[1]) == "2001:db8::7"
    clients = [line["client"] for line in wait_until(lambda: len(proxied.access_lines()) >= 3
                                                     and proxied.access_lines())]
    # two workers each write their lines at their own tick: the file's order is not the
    # requests' (CI once had the second connection's line first)
    assert sorted(clients) == ["2001:db8::7", "203.0.113.7", "203.0.113.7"]


def test_limits_count_the_client_the_balancer_named(proxied):
    """Behind one balancer every connection comes from its address: keyed on that, one
    client's limit would be everyone's."""
    def ask(client):
        with socket.create_connection(("127.0.0.1", proxied.behind)) as sock:
            sock.sendall(v1(client))
            return exchange(sock, "/lim")[0]
    assert [ask("198.51.100.1"), ask("198.51.100.1"), ask("198.51.100.2")] == [200, 429, 200]


def test_a_connection_without_a_valid_header_is_closed_and_other_listeners_need_none(proxied):
    with socket.create_connection(("127.0.0.1", proxied.plain)) as sock:
        assert exchange(sock)[0] == 200                     # a listener without the protocol
    for opening in (b"GET /echo HTTP/1.1\r\nHost: gw\r\n\r\n",
                    b"PROXY TCP4 203.0.113.7 127.0.0.1 1 2\n\r\n",
                    b"PROXY TCP4 1.2.3.4 127.0.0.1 1 2\r\nGET"[:20]):      # then silence
        with socket.create_connection(("127.0.0.1", proxied.behind)) as sock:
            started = time.monotonic()
            sock.sendall(opening)
            assert closed_without_answer(sock)
            assert time.monotonic() - started < 5          # header_timeout is 1 s
    wait_until(lambda: refusals_told(proxied.log()) == 3)


def refusals_told(log):
    """Refused connections the log tells of: its lines, and those a line says it left out
    (one line a second at most: core/throttledlog.py)."""
    lines = re.findall(r"PROXY protocol connection from \S+ refused: .*", log)
    return len(lines) + sum(int(n) for line in lines
                            for n in re.findall(r"and (\d+) more like it", line))


def test_a_flood_of_refused_connections_writes_a_line_a_second(launcher, upstream):
    """Anyone who can connect can be refused: each refusal a line would let them fill the
    disk. 300 refused in a burst: a few lines, which count the rest."""
    behind = free_port()
    proxied = launcher.gateway(gateway_conf(
        [route("echo", ["/echo"], upstream.url)], workers=1,
        server={"trusted_proxies": ["127.0.0.1/32"], "proxy_protocol": [f"127.0.0.1:{behind}"]}),
        extra_binds=[f"127.0.0.1:{behind}"])
    proxied.behind = behind
    started = time.monotonic()
    for _ in range(300):
        with socket.create_connection(("127.0.0.1", proxied.behind)) as sock:
            sock.sendall(b"GET /echo HTTP/1.1\r\nHost: gw\r\n\r\n")
            assert closed_without_answer(sock)
    # Every refusal is told, also when none follows the burst (the tick flushes the count).
    wait_until(lambda: refusals_told(proxied.log()) == 300, timeout=5)
    lines = proxied.log().count("PROXY protocol connection from 127.0.0.1 refused")
    # at most one a second (a loaded host makes the burst longer), and the last count
    assert 2 <= lines <= time.monotonic() - started + 2, lines


def behind_balancer(launcher, upstream, trusted, host="127.0.0.1"):
    """A gateway with one PROXY listener on ``host``:<port> -> (gateway, port)."""
    behind = free_port()
    return launcher.gateway(gateway_conf(
        [route("echo", ["/echo"], upstream.url)],
        server={"trusted_proxies": [trusted], "proxy_protocol": [f"{host}:{behind}"]}),
        extra_binds=[f"{host}:{behind}"]), behind


def test_only_trusted_peers_may_speak_it(launcher, upstream):
    gw, behind = behind_balancer(launcher, upstream, "10.0.0.0/8")
    with socket.create_connection(("127.0.0.1", behind)) as sock:
        sock.sendall(v1("203.0.113.7") + b"GET /echo HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert closed_without_answer(sock)
    wait_until(lambda: "127.0.0.1 is not in server.trusted_proxies" in gw.log())


def test_the_header_comes_before_the_tls_handshake(launcher, upstream, tmp_path):
    ca = CA(tmp_path)
    cert, key, _ = ca.issue("localhost")
    port = free_port()
    gw = launcher.gateway(gateway_conf(
        [route("echo", ["/echo"], upstream.url)],
        server={"trusted_proxies": ["127.0.0.1/32"], "proxy_protocol": [f"127.0.0.1:{port}"]},
        tls={"bind": [f"127.0.0.1:{port}"], "certificates": [{"cert": str(cert),
                                                              "key": str(key)}]}))
    context = ssl.create_default_context(cafile=str(ca.cert_path))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(v1("203.0.113.9"))
        with context.wrap_socket(raw, server_hostname="localhost") as sock:
            status, body = exchange(sock)
    assert status == 200 and forwarded_for(body) == "203.0.113.9"
    assert gw.proc.poll() is None


def test_a_header_that_names_no_client_leaves_the_balancer_untrusted(proxied):
    """PROXY UNKNOWN (or v2 LOCAL) keeps the balancer's address as the client's; that
    address is in trusted_proxies, and the client's own X-Forwarded-For, passed through by
    a TCP balancer, used to name the client: a fresh limit bucket per forged address."""
    def ask(path, forged):
        with socket.create_connection(("127.0.0.1", proxied.behind)) as sock:
            sock.sendall(b"PROXY UNKNOWN\r\n")
            return exchange(sock, path, headers=f"X-Forwarded-For: {forged}\r\n")
    assert [ask("/lim", f"6.6.6.{i}")[0] for i in range(3)] == [200, 429, 429]
    assert forwarded_for(ask("/echo", "6.6.6.9")[1]) == "127.0.0.1"


def test_a_proxy_listener_named_by_host_name_is_one(launcher, upstream):
    """"localhost:P" was compared as text with the listener's 127.0.0.1: the listener then
    served plain HTTP to anyone, naming clients by their own X-Forwarded-For."""
    gw, behind = behind_balancer(launcher, upstream, "127.0.0.1/32", host="localhost")
    with socket.create_connection(("127.0.0.1", behind)) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: gw\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n")
        assert closed_without_answer(sock)
    with socket.create_connection(("127.0.0.1", behind)) as sock:
        sock.sendall(v1("203.0.113.5"))
        assert forwarded_for(exchange(sock)[1]) == "203.0.113.5"
    assert gw.proc.poll() is None


def test_check_warns_when_anyone_may_name_a_client(tmp_path):
    import subprocess
    import sys
    conf = tmp_path / "gw.toml"
    conf.write_text('[server]\nbind = ["127.0.0.1:8081"]\nproxy_protocol = ["127.0.0.1:8081"]\n'
                    'trusted_proxies = ["10.0.0.0/8", "0.0.0.0/0"]\n')
    run = subprocess.run([sys.executable, "-m", "gwserver", "check", "-c", str(conf)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0
    assert "warning: server.trusted_proxies holds 0.0.0.0/0: anyone who can reach" in run.stdout
