"""The TLS listener attacked from the client's side (pass a24 of 2026-12-15): real gateways
with a test CA, Python's ssl as the client, the echo upstream on 127.0.0.1.

1. ALPN with no protocol in common (a client offering only ``imap``, or only ``h2`` to a
   listener that serves HTTP/1.1): the handshake went on with no protocol chosen, where
   RFC 7301 3.2 says the server SHALL refuse it with a no_application_protocol alert, as
   nginx (1.21.4) and Go's crypto/tls do: a TLS connection a client meant for another
   service that shares the certificate (ALPACA) was served HTTP, and an h2-only client got
   a 400 to an HTTP/2 preface it sent in good faith. (A client offering HTTP/1.x, or no
   ALPN, is served HTTP/1.1 as before.)
2. An HTTP/2 preface over a TLS connection whose ALPN chose no h2 was told "h2c is not
   served on this listener: speak HTTP/1.1 here, or HTTP/2 over TLS": over TLS already,
   the client was sent to what it did; it is told to offer h2 by ALPN (RFC 9113 3.3), or,
   where tls.alpn offers no h2, that HTTP/2 is not served there.
3. RFC 9440's Client-Cert and Client-Cert-Chain, the standard headers in which a TLS
   terminator passes the client's certificate on, and HAProxy's X-SSL-Client-SHA1, reached
   the upstream from any client: the gateway asks clients for no certificate.
"""
import json
import socket
import ssl

import pytest

from ..conftest import wait_until
from ..pki import CA
from .test_edge_attack_dec05c import read_to_close
from .test_tls import tls_gateway, tls_get


@pytest.fixture
def ca(tmp_path):
    return CA(tmp_path)


def handshake(port, ca, protocols, name="localhost"):
    """The ALPN protocol a handshake offering ``protocols`` ends with (None: none chosen)."""
    context = ssl.create_default_context(cafile=str(ca.cert_path))
    if protocols:
        context.set_alpn_protocols(protocols)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=name) as sock:
            return sock.selected_alpn_protocol()


def test_a_client_offering_no_protocol_of_tls_alpn_is_refused(launcher, upstream, ca):
    """RFC 7301 3.2: no protocol in common is a fatal no_application_protocol alert."""
    cert, key, _ = ca.issue("site")
    other = ca.issue("other", hosts=("b.test",))
    gw = tls_gateway(launcher, upstream, [(cert, key, {}), (other[0], other[1], {})],
                     workers=1, alpn=["http/1.1"])
    for offered in (["imap"], ["h2"], ["acme-tls/1"]):
        with pytest.raises(ssl.SSLError, match="no application protocol"):
            handshake(gw.tls_port, ca, offered)
    with pytest.raises(ssl.SSLError, match="no application protocol"):
        handshake(gw.tls_port, ca, ["imap"], name="b.test")     # a context SNI moved to
    assert handshake(gw.tls_port, ca, ["http/1.1"], name="b.test") == "http/1.1"
    # what is served is still served: a protocol in common, no ALPN at all, and HTTP/1.x
    # without ALPN to curl --http1.0's lone "http/1.0"
    assert handshake(gw.tls_port, ca, ["h2", "http/1.1"]) == "http/1.1"
    assert handshake(gw.tls_port, ca, None) is None
    assert handshake(gw.tls_port, ca, ["http/1.0"]) is None
    context = ssl.create_default_context(cafile=str(ca.cert_path))
    context.set_alpn_protocols(["http/1.0"])
    assert tls_get(gw.tls_port, ca, context=context)[0].startswith(b"HTTP/1.1 200 ")
    # (the first refusal's line: one a second, logged after the client has its alert)
    assert wait_until(lambda: "TLS: the client offers no protocol of tls.alpn (imap)" in
                      gw.log(), timeout=5)


def test_the_default_alpn_refuses_an_unknown_protocol_too(launcher, upstream, ca):
    cert, key, _ = ca.issue("site")
    gw = tls_gateway(launcher, upstream, [(cert, key, {})], workers=1)
    with pytest.raises(ssl.SSLError, match="no application protocol"):
        handshake(gw.tls_port, ca, ["imap"])
    assert handshake(gw.tls_port, ca, ["h2", "http/1.1"]) == "h2"
    assert handshake(gw.tls_port, ca, ["http/1.1"]) == "http/1.1"


def preface_answer(port, ca, protocols):
    context = ssl.create_default_context(cafile=str(ca.cert_path))
    if protocols:
        context.set_alpn_protocols(protocols)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    assert data.startswith(b"HTTP/1.1 400 "), data[:200]
    return json.loads(data.split(b"\r\n\r\n", 1)[1])["message"]


def test_an_http2_preface_over_tls_without_h2_is_told_to_negotiate_it(launcher, upstream, ca):
    cert, key, _ = ca.issue("site")
    gw = tls_gateway(launcher, upstream, [(cert, key, {})], workers=1)
    for offered in (["http/1.1"], None):
        message = preface_answer(gw.tls_port, ca, offered)
        assert message.startswith("HTTP/2 over TLS is spoken once the handshake's ALPN has "
                                  "chosen h2"), message
        assert "h2c" not in message
    # (plain listeners without h2c keep their own words)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        assert b"HTTP/2 with prior knowledge (h2c) is not served" in read_to_close(sock)
    gw = tls_gateway(launcher, upstream, [(cert, key, {})], workers=1, alpn=["http/1.1"])
    assert preface_answer(gw.tls_port, ca, ["http/1.1"]) == \
        "HTTP/2 is not served on this TLS listener (tls.alpn offers no h2): speak HTTP/1.1"


def test_a_clients_rfc9440_client_cert_never_reaches_the_upstream(launcher, upstream, ca):
    """RFC 9440 4: a TLS terminator MUST remove a client's Client-Cert and Client-Cert-Chain;
    an upstream behind one that reads them took a client's on trust, over the gateway's
    own TLS listener, as X-SSL-Client-Verify once (docs/security.md)."""
    cert, key, _ = ca.issue("site")
    gw = tls_gateway(launcher, upstream, [(cert, key, {})], workers=1)
    forged = {"Client-Cert": ":MIIBqDCCAU6gAwIBAgIBBzAKBggqhkjOPQQDAjA6MRswGQYDVQQKDBJMZXQn:",
              "Client-Cert-Chain": ":MIIB5jCCAYugAwIBAgIBFjAKBggqhkjOPQQDAjBWMQswCQYD:",
              "X-SSL-Client-SHA1": "3c1bf4a2e8d5c6b7a8f9e0d1c2b3a4f5e6d7c8b9"}
    context = ssl.create_default_context(cafile=str(ca.cert_path))
    with socket.create_connection(("127.0.0.1", gw.tls_port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(b"GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n" +
                         b"".join(f"{k}: {v}\r\n".encode() for k, v in forged.items()) +
                         b"\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    assert data.startswith(b"HTTP/1.1 200 "), data[:200]
    sent = {k.lower() for k, _ in json.loads(data.split(b"\r\n\r\n", 1)[1])["headers"]}
    assert not sent & {k.lower() for k in forged}, sent
