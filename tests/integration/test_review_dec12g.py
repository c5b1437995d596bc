"""Review, as an attacker, of the session's smaller commits (pass r7, 2026-12-07).

1. 653fa1d named a PROXY header on a listener not in ``proxy_protocol`` by the first bytes
   of the read that failed to parse, not of the connection: a request head that came in
   two reads, the second starting ``PROXY ``, was refused as a balancer's PROXY header
   ("name the listener in server.proxy_protocol ..."), 400 and log line alike. Any client
   could so have its malformed requests logged as a misconfigured balancer, the setting
   named, where they were a client's bad header. Only the connection's first bytes count
   now (client/http1.py, feed).
2. On a listener in ``proxy_protocol``, a second PROXY header after the one the listener
   took (a balancer passing on the header of the one in front of it: HAProxy in TCP mode
   with send-proxy and no accept-proxy, behind an NLB that sends one) was refused as one
   "on a listener that does not take one: name the listener in server.proxy_protocol",
   the setting that named it already, on plain and TLS listeners alike. It is named a
   second header now (net/proxy_protocol.py, proxy_header_refused).
(Real gateways, raw sockets on 127.0.0.1.)
"""
import socket
import time

from ..conftest import free_port, gateway_conf, route, wait_until
from ..pki import CA
from .test_edge_attack_dec05c import read_to_close
from .test_proxy_off_dec12d import REQUEST, SAID, V1

TWICE = "a second PROXY protocol header"


def test_a_later_read_that_starts_with_proxy_is_no_proxy_header(launcher, upstream):
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)]))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: gw\r\n")
        time.sleep(0.3)             # the gateway has read and parsed the first part
        sock.sendall(b"PROXY TCP4 203.0.113.7 127.0.0.1 56324 8080\r\n\r\n")
        answer = read_to_close(sock)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    # before: {"message":"a PROXY protocol header, on a listener that does not take one: ..."}
    assert SAID.encode() not in answer and b"malformed request" in answer, answer
    assert wait_until(lambda: "malformed request" in gw.log(), timeout=5), gw.log()[-2000:]
    assert SAID not in gw.log(), gw.log()[-2000:]



def test_a_second_proxy_header_is_not_told_to_name_the_listener_it_names(launcher, upstream):
    """A balancer that passes on the header of the one in front (HAProxy in TCP mode with
    send-proxy but no accept-proxy, behind an NLB that sends one): the listener takes one,
    and the second was refused with "on a listener that does not take one: name the
    listener in server.proxy_protocol", the setting that already names it."""
    behind = free_port()
    gw = launcher.gateway(gateway_conf(
        [route("r", ["/*rest"], upstream.url)],
        server={"trusted_proxies": ["127.0.0.1/32"], "proxy_protocol": [f"127.0.0.1:{behind}"]}),
        extra_binds=[f"127.0.0.1:{behind}"])
    with socket.create_connection(("127.0.0.1", behind), timeout=5) as sock:
        sock.sendall(V1 + V1.replace(b"203.0.113.7", b"198.51.100.9") + REQUEST)
        answer = read_to_close(sock)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    # before: {"message":"a PROXY protocol header, on a listener that does not take one: ..."}
    assert SAID.encode() not in answer, answer
    assert TWICE.encode() in answer, answer
    assert wait_until(lambda: TWICE in gw.log(), timeout=5), gw.log()[-2000:]



def test_a_second_proxy_header_on_a_tls_listener_is_named_so(launcher, upstream, tmp_path):
    ca = CA(tmp_path)
    cert, key, _ = ca.issue("site")
    port = free_port()
    gw = launcher.gateway(gateway_conf(
        [route("r", ["/*rest"], upstream.url)], workers=1,
        tls={"bind": [f"127.0.0.1:{port}"],
             "certificates": [{"cert": str(cert), "key": str(key)}]},
        server={"trusted_proxies": ["127.0.0.1/32"], "proxy_protocol": [f"127.0.0.1:{port}"]}))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(V1 + V1.replace(b"203.0.113.7", b"198.51.100.9"))
        assert read_to_close(sock) in (b"", b"<reset>")
    # before: "TLS handshake with 203.0.113.7 failed: [Errno 71] TLS: a PROXY protocol
    # header, on a listener that does not take one: name the listener in ..."
    line = f"TLS handshake with 203.0.113.7 failed: [Errno 71] TLS: {TWICE}"
    wait_until(lambda: "TLS handshake with" in gw.log(), timeout=5)
    assert line in gw.log(), gw.log()[-2000:]
    assert SAID not in gw.log()
