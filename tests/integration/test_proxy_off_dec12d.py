"""A balancer that sends a PROXY protocol header to a listener not in server.proxy_protocol
(found 2026-12-07, an open item). Each of its connections was refused, and nothing named why:
on a plain listener a 400 logged as "malformed request: Invalid method encountered" (v1) or
"Invalid method" after the v2 signature; on a TLS listener a v1 line was answered "use
https://" (its first byte is a letter) and a v2 one logged in OpenSSL's words. Each now says it is a PROXY header on a listener that does not take one, and names
the setting. (Real gateways, raw sockets on 127.0.0.1.)"""
import socket
import ssl
import struct

import pytest

from ..conftest import gateway_conf, route, wait_until
from ..pki import CA
from .test_edge_attack_dec05c import read_to_close
from .test_tls import tls_gateway, tls_get

V1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 56324 8080\r\n"
V2 = (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + (12).to_bytes(2, "big") +
      bytes([203, 0, 113, 7, 127, 0, 0, 1]) + (56324).to_bytes(2, "big") +
      (8080).to_bytes(2, "big"))
REQUEST = b"GET /echo HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
SAID = "a PROXY protocol header, on a listener that does not take one"


@pytest.mark.parametrize("header", [V1, V2], ids=["v1", "v2"])
def test_a_proxy_header_on_a_plain_listener_is_named(launcher, upstream, header):
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)]))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(header + REQUEST)
        answer = read_to_close(sock)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    # before: {"message":"malformed request: Invalid method encountered"}
    assert SAID.encode() in answer and b"server.proxy_protocol" in answer, answer
    assert wait_until(lambda: SAID in gw.log(), timeout=5), gw.log()[-2000:]
    # a request that merely starts with the word is no PROXY header
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(b"PROXYX / HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert SAID.encode() not in read_to_close(sock)


@pytest.mark.parametrize("header", [V1, V2], ids=["v1", "v2"])
def test_a_proxy_header_on_a_tls_listener_is_named(launcher, upstream, tmp_path, header):
    ca = CA(tmp_path)
    cert, key, _ = ca.issue("site")
    gw = tls_gateway(launcher, upstream, [(cert, key, {})], workers=1)
    with socket.create_connection(("127.0.0.1", gw.tls_port), timeout=5) as sock:
        sock.sendall(header)
        answer = read_to_close(sock)
    # before: v1 was answered "400 ... plain HTTP request was sent to a TLS port"; closed
    # now, with the header unread (a reset)
    assert answer in (b"", b"<reset>"), answer[:200]
    line = f"TLS handshake with 127.0.0.1 failed: [Errno 71] TLS: {SAID}"
    # before: v2 was logged as "... failed: [Errno 71] TLS: wrong version number"
    assert wait_until(lambda: line in gw.log(), timeout=5), gw.log()[-2000:]
    tls_get(gw.tls_port, ca)                    # and TLS clients are still served


# -- a client that closes mid-handshake (the same pass) ------------------------------------

def client_hello():
    """The first flight of a real TLS client, made in memory."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="site")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def test_a_client_that_closes_mid_handshake_is_logged(launcher, upstream, tmp_path):
    """It was served as a connection made (OpenSSL's EOF read as a handshake that ended),
    and closed with no line: a client giving up on the gateway's version or certificate
    was seen nowhere. A connection closed before its first byte (a balancer's TCP health
    check) still makes no line but at debug level."""
    ca = CA(tmp_path)
    cert, key, _ = ca.issue("site")
    gw = tls_gateway(launcher, upstream, [(cert, key, {})], workers=1)
    socket.create_connection(("127.0.0.1", gw.tls_port), timeout=5).close()
    hello = client_hello()
    with socket.create_connection(("127.0.0.1", gw.tls_port), timeout=5) as sock:
        sock.sendall(hello[:len(hello) // 2])
    line = "TLS handshake with 127.0.0.1 failed: [Errno 104] TLS: the client closed the " \
           "connection mid-handshake"
    assert wait_until(lambda: line in gw.log(), timeout=5), gw.log()[-2000:]
    tls_get(gw.tls_port, ca)
    assert "closed before the handshake" not in gw.log()       # (debug level only)


def test_a_client_that_resets_before_its_first_byte_is_not_logged(launcher, upstream, tmp_path):
    """A balancer's TCP check that ends with a reset (SO_LINGER 0), not a FIN, was logged
    at info level, a line per check: "TLS handshake ... failed: [Errno 104] Connection
    reset by peer". It is the same check as a close before the first byte."""
    ca = CA(tmp_path)
    cert, key, _ = ca.issue("site")
    gw = tls_gateway(launcher, upstream, [(cert, key, {})], workers=1)
    for port in (gw.tls_port, gw.tls_port, gw.port):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    tls_get(gw.tls_port, ca)            # served after them: the checks were read
    hello = client_hello()              # and a line still follows a real client's close
    with socket.create_connection(("127.0.0.1", gw.tls_port), timeout=5) as sock:
        sock.sendall(hello[:len(hello) // 2])
    assert wait_until(lambda: "mid-handshake" in gw.log(), timeout=5), gw.log()[-2000:]
    assert "Connection reset by peer" not in gw.log(), gw.log()[-2000:]
