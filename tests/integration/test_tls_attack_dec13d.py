"""The TLS edge attacked from the client's side (pass t1 of 2026-12-13): real gateways with a
test CA, Python's ssl and pyOpenSSL as the clients.

1. A certificate with no DNS name (an address-only one) listed after the first was indexed
   as ``*``: it took every name no entry named, the default's, and the names of the wildcard
   entries listed after it, whose clients then refused the handshake.
2. An address in ``hosts`` "never picks its entry" (docs/tls.md, and the check's warning says
   so), but a client that sent the address as its SNI name got that entry.
3. A handshake that ran out of tls.handshake_timeout was logged as ``failed: 1.49 seconds``.
4. A TLS 1.2 suite taken out of tls.ciphers by a reload went on serving the sessions made
   with it: OpenSSL resumes a session over its suite whenever the client still offers it,
   and the ticket key outlives the reload.
"""
import os
import signal
import socket
import ssl
import struct
import time

from OpenSSL import SSL

from ..conftest import wait_until
from ..pki import CA
from .test_tls import tls_gateway, tls_get


def served(gw, ca, name):
    """The subject CN of the certificate served for SNI ``name`` (a client that checks it)."""
    peer = tls_get(gw.tls_port, ca, name)[3]
    return peer.subject.rfc4514_string()


def test_a_certificate_naming_no_dns_name_takes_no_other_entrys_names(launcher, upstream,
                                                                        tmp_path):
    ca = CA(tmp_path)
    first = ca.issue("first", hosts=("a.example",), ips=())
    address_only = ca.issue("address-only", hosts=(), ips=("127.0.0.1",))
    wild = ca.issue("wild", hosts=("*.w.example",), ips=())
    gw = tls_gateway(launcher, upstream, [(c, k, {}) for c, k, _ in (first, address_only, wild)],
                     workers=1)
    # The wildcard entry's names are its own, whatever is listed before it
    assert served(gw, ca, "x.w.example") == "CN=wild"
    # and a name no entry names gets the first entry, as for any SNI name unknown
    context = ssl.create_default_context(cafile=str(ca.cert_path))
    context.check_hostname = False
    assert tls_get(gw.tls_port, ca, "other.test", context=context)[3].subject \
        .rfc4514_string() == "CN=first"
    assert "tls.certificates[1].cert: " in gw.log() and "names no DNS name" in gw.log()


def sni_handshake(port, sni):
    """pyOpenSSL, which sends any SNI name (Python's ssl sends none for an address): the
    subject CN of the certificate served."""
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 5, 0))
        conn = SSL.Connection(context, sock)
        conn.set_connect_state()
        conn.set_tlsext_host_name(sni)
        conn.do_handshake()
        return conn.get_peer_certificate().to_cryptography().subject.rfc4514_string()


def test_an_address_sent_as_sni_gets_the_first_entry_as_the_docs_say(launcher, upstream,
                                                                     tmp_path):
    ca = CA(tmp_path)
    first = ca.issue("first", hosts=("a.example",))
    other = ca.issue("other", hosts=("b.example",))
    gw = tls_gateway(launcher, upstream, [(first[0], first[1], {}),
                                          (other[0], other[1], {"hosts": ["127.0.0.1"]})],
                     workers=1)
    assert sni_handshake(gw.tls_port, b"127.0.0.1") == "CN=first"
    assert sni_handshake(gw.tls_port, b"a.example") == "CN=first"      # names still pick
    assert "tls.certificates[1].hosts: 127.0.0.1 is an address" in gw.log()


def client_hello():
    """The first flight of a TLS client, as bytes."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def test_a_handshake_past_handshake_timeout_is_logged_as_one(launcher, upstream, tmp_path):
    ca = CA(tmp_path)
    cert, key, _ = ca.issue("site")
    gw = tls_gateway(launcher, upstream, [(cert, key, {})], workers=1, handshake_timeout=1)
    with socket.create_connection(("127.0.0.1", gw.tls_port), timeout=5) as sock:
        sock.sendall(client_hello()[:40])           # and the rest never comes
        started = time.monotonic()
        assert sock.recv(100) == b""                # closed by the gateway
        assert time.monotonic() - started < 3
    assert wait_until(lambda: "TLS handshake with 127.0.0.1 failed: " in gw.log(), timeout=5)
    line = next(line for line in gw.log().splitlines() if "TLS handshake with" in line)
    assert line.endswith("failed: no handshake within tls.handshake_timeout (1 s)"), line


def get_with_cipher(port, ca, context, session=None):
    """(cipher, session, reused) of a GET over TLS: tls_get's, with the suite it used."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost", session=session) as sock:
            sock.sendall(b"GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            assert data.startswith(b"HTTP/1.1 200"), data[:100]
            return sock.cipher()[0], sock.session, sock.session_reused


def test_a_suite_a_reload_takes_out_serves_no_session_after_it(launcher, upstream, tmp_path):
    ca = CA(tmp_path)
    cert, key, _ = ca.issue("site")
    cbc, gcm = "ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES128-GCM-SHA256"
    gw = tls_gateway(launcher, upstream, [(cert, key, {})], workers=1,
                     ciphers=f"{cbc}:{gcm}", alpn=["http/1.1"])
    client = ssl.create_default_context(cafile=str(ca.cert_path))
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    client.set_ciphers(f"{gcm}:{cbc}")                  # the server's order decides: CBC
    suite, session, _ = get_with_cipher(gw.tls_port, ca, client)
    assert suite == cbc
    assert get_with_cipher(gw.tls_port, ca, client, session)[2]     # resumes meanwhile
    # The operator takes the CBC suite out and reloads
    gw.conf_path.write_text(gw.conf_path.read_text().replace(f"{cbc}:", ""))
    old = set(gw.worker_pids())
    os.kill(gw.pid, signal.SIGHUP)
    assert wait_until(lambda: gw.worker_pids() and old.isdisjoint(gw.worker_pids()),
                      timeout=20)
    suite, _, reused = get_with_cipher(gw.tls_port, ca, client, session)
    assert (suite, reused) == (gcm, False)
