"""Attack pass h6 on the TLS listener: plain HTTP that OpenSSL does not recognise, client
renegotiation, and reloads with bad certificate or ticket-key files (real gateways, real
TLS clients on 127.0.0.1)."""
import os
import signal
import socket
import ssl
import struct
import time

import pytest
from OpenSSL import SSL

from ..pki import CA
from .test_edge_attack_dec05c import read_to_close
from .test_tls import tls_gateway, tls_get
from .test_tls_tickets import new_key, resumes, start, ticket, ticket_conf


@pytest.fixture
def ca(tmp_path):
    return CA(tmp_path)


# -- plain HTTP on the TLS port, by methods OpenSSL's list leaves out -------------------------

@pytest.mark.parametrize("request_bytes", [
    b"PROPFIND /dav/ HTTP/1.1\r\nHost: gw\r\nDepth: 1\r\n\r\n",     # WebDAV
    b"get /echo HTTP/1.1\r\nHost: gw\r\n\r\n",                      # a hand-typed request
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",                            # h2c prior knowledge
], ids=["propfind", "lowercase", "h2c-preface"])
def test_any_plain_http_on_the_tls_port_gets_the_400_that_says_so(launcher, upstream, ca,
                                                                  request_bytes):
    """docs/tls.md: a plain HTTP request on a TLS listener is answered a 400 in clear, as
    nginx answers any first byte that starts no TLS record. OpenSSL names only the methods of
    its own list (GET, POST, PUT, ...): these were a bare reset."""
    cert, key, _ = ca.issue("site")
    gw = tls_gateway(launcher, upstream, [(cert, key, {})], workers=1)
    with socket.create_connection(("127.0.0.1", gw.tls_port), timeout=5) as sock:
        sock.sendall(request_bytes)
        answer = read_to_close(sock)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert b"plain HTTP request was sent to a TLS port" in answer
    tls_get(gw.tls_port, ca)                    # and TLS clients are still served


# -- handshake abuse that holds -----------------------------------------------------------------

def test_a_client_cannot_renegotiate_tls12(launcher, upstream, ca):
    """Each renegotiation costs the server a full handshake's signature: a client asking for
    them in a loop is a CPU DoS. OpenSSL refuses client renegotiation by default; this
    pins it for the gateway's contexts."""
    cert, key, _ = ca.issue("site")
    gw = tls_gateway(launcher, upstream, [(cert, key, {})], workers=1)
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_max_proto_version(SSL.TLS1_2_VERSION)
    context.load_verify_locations(str(ca.cert_path))
    with socket.create_connection(("127.0.0.1", gw.tls_port), timeout=5) as raw:
        raw.setblocking(True)           # pyOpenSSL wants a blocking socket: bounded so
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 5, 0))
        conn = SSL.Connection(context, raw)
        conn.set_tlsext_host_name(b"localhost")
        conn.set_connect_state()
        conn.do_handshake()
        assert conn.renegotiate()
        with pytest.raises(SSL.Error, match="no renegotiation"):   # the server's alert
            conn.do_handshake()


# -- reloads with bad files keep the old ones serving ---------------------------------------------

def test_a_bad_certificate_or_ticket_key_on_reload_keeps_the_old_ones(launcher, upstream, ca,
                                                                       tmp_path):
    client = ssl.create_default_context(cafile=str(ca.cert_path))
    client.ca = ca
    cert, key, first = ca.issue("site")
    ticket_key = new_key(tmp_path / "ticket.key")
    gw = start(launcher, ticket_conf(upstream, (cert, key), [ticket_key], workers=1))
    session = ticket(gw, client)
    workers = set(gw.worker_pids())
    _, other_key, _ = ca.issue("other")
    good_key = key.read_bytes()
    for break_it in (lambda: key.write_bytes(other_key.read_bytes()),     # not its pair
                     lambda: ticket_key.write_bytes(b"x" * 20)):           # not a key
        break_it()
        refusals = gw.log().count("reload refused")
        os.kill(gw.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while gw.log().count("reload refused") == refusals and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gw.log().count("reload refused") > refusals
        assert set(gw.worker_pids()) == workers
        assert tls_get(gw.tls_port, ca, context=client)[3].serial_number == \
            first.serial_number
        assert resumes(gw, client, session)     # the old ticket key still opens
        key.write_bytes(good_key)


# -- ciphers HTTP/2 prohibits, preferred over its own ---------------------------------------------

def test_a_cipher_order_that_gives_h2_over_a_prohibited_suite_is_warned_of(launcher, upstream,
                                                                           ca):
    """RFC 9113 9.2.2: HTTP/2 over TLS 1.2 MUST NOT use a suite of Appendix A (no ECDHE/DHE,
    or no AEAD). OpenSSL picks the suite by the server's order before ALPN picks h2, so
    ciphers that prefer a CBC suite gave a TLS 1.2 client h2 over it, which Firefox and
    nghttp2 refuse (INADEQUATE_SECURITY), with no word to the operator."""
    cert, key, _ = ca.issue("site")
    gw = tls_gateway(launcher, upstream, [(cert, key, {})], workers=1,
                     ciphers="ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES128-GCM-SHA256")
    client = ssl.create_default_context(cafile=str(ca.cert_path))
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    client.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-SHA")
    client.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", gw.tls_port), timeout=5) as raw:
        with client.wrap_socket(raw, server_hostname="localhost") as sock:
            got = sock.cipher()[0], sock.selected_alpn_protocol()
    assert got == ("ECDHE-ECDSA-AES128-SHA", "h2")        # what the order makes
    assert "tls.ciphers: HTTP/2 prohibits ECDHE-ECDSA-AES128-SHA (RFC 9113 9.2.2)" in gw.log()
