"""TLS termination and the listener edge, attacked through real gateways (the attack pass of
2026-12-05, helper h2, on 5bc977c). Each test failed on that commit.

1. OCSP stapling: the helper took any answer the responder signed. One saying ``unknown``
   (a responder that has not heard of a new certificate yet, or a misconfigured one) replaced
   the last good response and was stapled: a client that checks staples (Firefox) refuses
   the site on it (SEC_ERROR_OCSP_UNKNOWN_CERT). One whose nextUpdate had passed (a stale
   answer from a responder's cache, or one replayed by anyone on its plain-HTTP path)
   replaced the good one too, and the workers, which never staple an expired answer, then
   stapled nothing until the next good one, though the old response was still current; one
   whose thisUpdate was a day ahead was stapled, and clients refuse it as not yet valid.
   Such answers are now refused like a responder that is down: the last good response stays
   stapled (helpers/ocsp.py, _check_current).
2. SNI: the certificate was the first entry whose names fnmatch'ed the requested one, so a
   certificate's ``*.b.test`` (which covers one label) was chosen for ``x.y.b.test`` ahead
   of the entry that named x.y.b.test itself: the client refused the certificate it got.
   And a name with its trailing dot (``A.Test.``, a fully qualified name, which the Host
   header rules read as a.test) matched nothing and got the default certificate, refused
   too. Now an exact name wins, a certificate's own wildcard covers one label, and the name
   is read as Host is (client/tls.py, _pick_by_sni).
3. A plain HTTP request on the TLS port (``curl http://host:443/``, a health check with the
   wrong scheme) was closed with its bytes unread: the client got a reset, or an empty
   reply, and no word of why. It now gets nginx's answer, a 400 in clear that says so,
   and the rest of its request is read and dropped before the close, so the answer is not
   reset away (server/worker.py, answer_plain_http).
4. A PROXY protocol listener waited for the header of a trusted balancer's connection for
   header_timeout, holding a pool slot counted nowhere. An AWS NLB sends the header with the
   client's first bytes, not at its connect, so any client behind it could open
   worker_connections connections, send nothing, and lock every new client out of the
   worker for header_timeout (10 s), and again with each reconnect: the hole the pass of
   2026-12-04 closed for TLS and h2c listeners (test_attack_pass_dec04c), open again
   through proxy_protocol, over plain HTTP and TLS alike. Until its first byte such a
   connection is now an idle one, and gives way (server/worker.py, read_header_when_sent).
"""
import datetime
import http.server
import socket
import ssl
import threading
import time

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from OpenSSL import SSL

from ..conftest import free_port, gateway_conf, route, wait_until
from ..pki import CA
from .test_proxy_protocol import exchange, v1
from .test_tls import ocsp_staple, tls_gateway

DAY = datetime.timedelta(days=1)


# -- 1. OCSP answers that are signed but not good to staple ----------------------------------

class ScriptedResponder:
    """An OCSP responder on loopback (http.server in a thread) that answers every POST with
    a response the CA signs for ``leaf``, as ``mode`` says: "good", "unknown", "expired"
    (nextUpdate yesterday) or "future" (thisUpdate tomorrow); "redirect": a 307 to
    ``location``. ``posts`` counts requests."""

    def __init__(self, ca, leaf):
        self.ca, self.leaf, self.mode, self.posts = ca, leaf, "good", 0
        responder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                responder.posts += 1
                if responder.mode == "redirect":
                    self.send_response(307)
                    self.send_header("Location", responder.location)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = responder.answer()
                self.send_response(200)
                self.send_header("Content-Type", "application/ocsp-response")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self):
        now = datetime.datetime.now(datetime.timezone.utc)
        status = ocsp.OCSPCertStatus.UNKNOWN if self.mode == "unknown" else \
            ocsp.OCSPCertStatus.GOOD
        this, following = {"expired": (now - 3 * DAY, now - DAY),
                           "future": (now + DAY, now + 3 * DAY)}.get(self.mode,
                                                                   (now, now + DAY))
        builder = (ocsp.OCSPResponseBuilder()
                   .add_response(self.leaf, self.ca.cert, hashes.SHA1(), status, this,
                                 following, None, None)
                   .responder_id(ocsp.OCSPResponderEncoding.HASH, self.ca.cert))
        return builder.sign(self.ca.key, hashes.SHA256()).public_bytes(
            serialization.Encoding.DER)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def responder_site(tmp_path):
    ca = CA(tmp_path)
    responder = ScriptedResponder(ca, None)
    yield ca, responder
    responder.close()


def stapling_gateway(launcher, upstream, ca, responder, **tls):
    cert, key, leaf = ca.issue("site", ocsp_url=f"http://127.0.0.1:{responder.port}")
    responder.leaf = leaf
    return tls_gateway(launcher, upstream, [(cert, key, {})], ocsp_stapling=True, **tls), leaf


@pytest.mark.parametrize("mode, named", [
    ("unknown", "status unknown"),
    ("expired", "nextUpdate"),
    ("future", "thisUpdate"),
])
def test_an_ocsp_answer_not_good_to_staple_never_replaces_the_good_one(
        launcher, upstream, responder_site, mode, named):
    ca, responder = responder_site
    gw, leaf = stapling_gateway(launcher, upstream, ca, responder, ocsp_refresh=5)
    staple = wait_until(lambda: ocsp_staple(gw.tls_port, ca), timeout=20)
    good = ocsp.load_der_ocsp_response(staple)
    assert good.certificate_status == ocsp.OCSPCertStatus.GOOD
    assert good.serial_number == leaf.serial_number
    responder.mode = mode
    posts = responder.posts
    wait_until(lambda: responder.posts > posts, timeout=20)    # the next refresh (5 s)
    # the helper has written what it took, and the workers' tick has read it
    for _ in range(3):
        time.sleep(1.0)
        assert ocsp_staple(gw.tls_port, ca) == staple, mode
    line = next(line for line in gw.log().splitlines() if named in line)
    assert "keeping the last response" in line, line


def test_the_ocsp_helper_follows_no_redirect(launcher, upstream, responder_site, tmp_path):
    """The helper POSTed wherever a responder's 3xx pointed (requests follows redirects):
    whoever answers on the responder's plain-HTTP path could send it to an internal
    address. nginx follows none; nor does the helper now, and the log says why."""
    ca, responder = responder_site
    elsewhere = ScriptedResponder(ca, None)
    try:
        responder.mode, responder.location = "redirect", f"http://127.0.0.1:{elsewhere.port}/"
        gw, leaf = stapling_gateway(launcher, upstream, ca, responder, ocsp_refresh=5)
        elsewhere.leaf = leaf
        wait_until(lambda: responder.posts >= 1 and "answered HTTP 307" in gw.log(),
                   timeout=20)
        assert elsewhere.posts == 0
    finally:
        elsewhere.close()


# -- 2. which certificate an SNI name gets ----------------------------------------------------

def served_serial(port, sni):
    """The serial of the certificate served for ``sni`` (bytes, sent as they are: a
    pyOpenSSL client, which neither checks nor rewrites the name)."""
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.setblocking(True)
        conn = SSL.Connection(context, raw)
        conn.set_tlsext_host_name(sni)
        conn.set_connect_state()
        conn.do_handshake()
        serial = conn.get_peer_certificate().get_serial_number()
        conn.shutdown()
    return serial


def test_sni_gets_the_certificate_that_covers_the_name(launcher, upstream, tmp_path):
    ca = CA(tmp_path)
    wild = ca.issue("wild", hosts=("*.b.test",))               # first: the default too
    exact = ca.issue("a", hosts=("a.test",))
    deep = ca.issue("deep", hosts=("x.y.b.test",))
    api = ca.issue("api", hosts=("api.test",))
    gw = tls_gateway(launcher, upstream, [(wild[0], wild[1], {}), (exact[0], exact[1], {}),
                                          (deep[0], deep[1], {}),
                                          (api[0], api[1], {"hosts": ["*.api.test"]})])
    expected = {b"x.y.b.test": deep, b"X.Y.B.Test.": deep, b"a.test": exact,
                b"A.Test.": exact, b"x.b.test": wild, b"X.B.TEST.": wild,
                b"v1.eu.api.test": api,         # a hosts wildcard: any depth, as routes'
                b"other.test": wild}            # nothing covers it: the default
    got = {name: served_serial(gw.tls_port, name) for name in expected}
    assert got == {name: cert[2].serial_number for name, cert in expected.items()}


# -- 3. plain HTTP on the TLS port -------------------------------------------------------------

def read_to_close(sock):
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        data += b"<reset>"
    return data


@pytest.mark.parametrize("request_bytes", [
    b"GET /echo HTTP/1.1\r\nHost: gw\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: gw\r\nContent-Length: 200000\r\n\r\n" + b"x" * 200000,
])
def test_plain_http_on_the_tls_port_gets_a_400_that_says_so(launcher, upstream, tmp_path,
                                                            request_bytes):
    cert, key, _ = CA(tmp_path).issue("site")
    gw = tls_gateway(launcher, upstream, [(cert, key, {})])
    with socket.create_connection(("127.0.0.1", gw.tls_port), timeout=10) as sock:
        sock.sendall(request_bytes)
        answer = read_to_close(sock)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert b"Connection: close" in answer
    assert b"plain HTTP request was sent to a TLS port" in answer.partition(b"\r\n\r\n")[2]
    # and the listener still speaks TLS
    assert served_serial(gw.tls_port, b"localhost")


# -- 4. silence on a PROXY protocol listener ---------------------------------------------------

def served_behind_balancer(port, within, context=None):
    """Seconds until a new client, its PROXY header sent at once (then a TLS handshake with
    ``context``), was served on ``port``, trying for ``within`` s; or None."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as raw:
                raw.sendall(v1("203.0.113.7"))
                sock = context.wrap_socket(raw, server_hostname="localhost") \
                    if context else raw
                if exchange(sock)[0] == 200:
                    return time.monotonic() - started
        except OSError:
            pass
    return None


@pytest.mark.parametrize("tls", [False, True])
def test_silent_connections_on_a_proxy_protocol_listener_give_way(launcher, upstream,
                                                                 tmp_path, tls):
    behind = free_port()
    sections = {"server": {"worker_connections": 10, "trusted_proxies": ["127.0.0.1/32"],
                           "proxy_protocol": [f"127.0.0.1:{behind}"]}}
    context = None
    if tls:
        ca = CA(tmp_path)
        cert, key, _ = ca.issue("localhost")
        sections["tls"] = {"bind": [f"127.0.0.1:{behind}"],
                           "certificates": [{"cert": str(cert), "key": str(key)}]}
        context = ssl.create_default_context(cafile=str(ca.cert_path))
    launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)], **sections),
                     extra_binds=() if tls else [f"127.0.0.1:{behind}"])
    silent = [socket.create_connection(("127.0.0.1", behind), timeout=5) for _ in range(12)]
    try:
        time.sleep(0.5)
        served = served_behind_balancer(behind, 5, context)
        assert served is not None and served < 2, f"no client served for {served} s"
    finally:
        for sock in silent:
            sock.close()


def check_certificate_hosts(tmp_path, *entries):
    """`gwserver check` of a TLS listener whose certificate entries are ``entries``, each
    (the name its certificate is issued for, its hosts or None) -> the finished run."""
    import subprocess
    import sys
    from ..conftest import to_toml
    ca, certificates = CA(tmp_path), []
    for name, hosts in entries:
        cert, key, _ = ca.issue(name)
        certificates.append({"cert": str(cert), "key": str(key),
                             **({"hosts": hosts} if hosts else {})})
    path = tmp_path / "gw.toml"
    path.write_text(to_toml(gateway_conf([route("r", ["/*rest"], "http://127.0.0.1:9")], tls={
        "bind": [f"127.0.0.1:{free_port()}"], "certificates": certificates})))
    run = subprocess.run([sys.executable, "-m", "gwserver", "check", "-c", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return run


def test_check_warns_of_an_address_in_a_certificates_hosts(tmp_path):
    """Clients send no SNI for an IP address (RFC 6066 3): an address in an entry's hosts
    never picks it, and its connections got the first entry's certificate, silently."""
    run = check_certificate_hosts(tmp_path, ("first.example", None),
                                  ("10.0.0.1", ["10.0.0.1", "api.example"]))
    assert "warning: tls.certificates[1].hosts: 10.0.0.1 is an address, and clients send " \
           "no SNI for one" in run.stdout, run.stdout
    assert "api.example is an address" not in run.stdout
