"""Attack pass dec08d: TLS at the client edge and to upstreams, against real gateways,
upstreams and `openssl`/Python ssl clients on loopback. Each test was seen failing before
its fix: the first bytes of a ClientHello in every slot locked a TLS listener's newcomers out
for tls.handshake_timeout (client.waiting.HandshakeWait); a tls.ca_file with no certificate
in it passed `check`, a start and a reload, and made each request of its routes a 500
(files.client_tls_problem, and the 502s of upstream.proxy and upstream.h2client), and
[etcd]'s made every call to etcd fail; and a client's own "X-SSL-Client-Verify: SUCCESS"
(and the other headers TLS terminators pass a verified client certificate on in) reached
upstreams over a listener that asks for no certificate (core.headers.IDENTITY_SET).
"""
import json
import os
import signal
import socket
import ssl
import time

from ..conftest import check_conf, free_port, gateway_conf, route, wait_until
from ..h2client import RawH2
from ..pki import CA
from .test_http2_hardening import first_served


# -- 1. a handshake begun, then stalled, in every slot -------------------------------------------

def test_stalled_handshakes_in_every_slot_give_way_to_a_new_client(launcher, upstream,
                                                                  tmp_path):
    """Twelve connections each send a TLS record header (a ClientHello begun) and stop. The
    first byte made them no idle connection, and a handshake was no request head: all 10
    slots stayed theirs for tls.handshake_timeout (10 s), newcomers unanswered, and again at
    each reconnect. Now the oldest stalled handshake gives way, as a slow head does."""
    cert, key, _ = CA(tmp_path).issue("localhost")
    port = free_port()
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)],
                                       server={"worker_connections": 10},
                                       tls={"bind": [f"127.0.0.1:{port}"], "certificates": [
                                           {"cert": str(cert), "key": str(key)}]}))
    socks = []
    try:
        for _ in range(12):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"\x16\x03\x01\x02\x00")       # a handshake record of 512 bytes...
            socks.append(sock)                          # ... of which none comes
        time.sleep(0.3)
        served = first_served(port, 2.5, tls=True)
        assert served is not None, "no new client served while the handshakes stalled"
        assert "its TLS handshake still incomplete after" in gw.log(), gw.log()[-2000:]
    finally:
        for sock in socks:
            sock.close()


# -- 2. an upstream's tls.ca_file that holds no certificate ---------------------------------------

def tls_routes(up_url, ca_file, **names):
    """One route /NAME/* per NAME=protocol, to ``up_url`` verified against ``ca_file``."""
    return [{**route(name, [f"/{name}/*r"], up_url, strip_prefix=f"/{name}"),
             "upstream": {"targets": [{"url": up_url}], "protocol": protocol,
                          "tls": {"ca_file": str(ca_file)}}} for name, protocol in names.items()]


def test_check_names_an_upstream_ca_file_or_client_key_it_cannot_load(tmp_path):
    """`check` said ok of a ca_file that is text, empty, a private key or DER, and of a
    client certificate whose key is another's: each request of those routes then failed."""
    ca = CA(tmp_path)
    cert, key, leaf = ca.issue("gateway", client=True)
    other_key = ca.issue("other")[1]
    files = {"text": b"not a certificate\n", "empty": b"", "key": key.read_bytes()}
    from cryptography.hazmat.primitives.serialization import Encoding
    files["der"] = leaf.public_bytes(Encoding.DER)
    routes = []
    for name, data in files.items():
        (tmp_path / f"{name}.pem").write_bytes(data)
        routes += tls_routes("https://127.0.0.1:9", tmp_path / f"{name}.pem", **{name: "http1"})
    routes += tls_routes("https://127.0.0.1:9", ca.cert_path, mismatch="http1")
    routes[-1]["upstream"]["tls"].update(cert_file=str(cert), key_file=str(other_key))
    code, said = check_conf(tmp_path, gateway_conf(routes))
    assert code == 2, said
    assert f"route text: upstream: tls.ca_file: {tmp_path}/text.pem is not PEM" in said, said
    assert f"route empty: upstream: tls.ca_file: {tmp_path}/empty.pem is empty" in said, said
    assert f"route key: upstream: tls.ca_file: {tmp_path}/key.pem holds no CA certificate" \
        in said, said
    assert f"route der: upstream: tls.ca_file: {tmp_path}/der.pem is not PEM (DER?" in said
    assert f"route mismatch: upstream: tls.cert_file: {cert} and tls.key_file: {other_key} " \
           f"make no client certificate" in said, said


def test_check_names_an_etcd_ca_file_it_cannot_load(tmp_path):
    """[etcd]'s ca_file, the same: `check` said ok of a text file, then every call of the
    sync process to etcd failed on it."""
    (tmp_path / "etcd-ca.pem").write_text("not a certificate\n")
    code, said = check_conf(tmp_path, gateway_conf(
        [route("r", ["/*rest"], "http://127.0.0.1:9")], etcd={
            "endpoints": ["https://127.0.0.1:9"], "ca_file": str(tmp_path / "etcd-ca.pem"),
            "runtime_dir": str(tmp_path / "run"),
            "snapshot_path": str(tmp_path / "snapshot.json")}))
    assert code == 2 and f"etcd.ca_file: {tmp_path}/etcd-ca.pem is not PEM" in said, said


def test_a_ca_file_spoilt_under_a_running_gateway_is_a_502_and_its_reload_refused(launcher,
                                                                                   tmp_path):
    """The ca_file passed the check at start, then was overwritten with text: each request
    of its routes was a 500 "internal error" (urllib3 wraps OpenSSL's refusal in an error of
    its own; the HTTP/2 client built its context outside its connect's error handling), a
    traceback logged per request, and a SIGHUP took the file. Now: a 502 that names the
    file's failure, and the reload is refused."""
    ca = CA(tmp_path)
    cert, key, _ = ca.issue("upstream")
    up = launcher.upstream("tls", tls=(str(cert), str(key)))
    bundle = tmp_path / "upstream-ca.pem"
    bundle.write_bytes(ca.cert_path.read_bytes())
    gw = launcher.gateway(gateway_conf(tls_routes(up.url, bundle, h1="http1", h2="h2")))
    bundle.write_text("not a certificate\n")
    for name in ("h1", "h2"):
        assert gw.request("GET", f"/{name}/echo")[0].status == 502, gw.log()[-3000:]
    assert "Traceback" not in gw.log() and "tls files cannot be loaded" in gw.log()
    os.kill(gw.pid, signal.SIGHUP)
    assert wait_until(lambda: "reload refused" in gw.log(), timeout=5)
    assert f"tls.ca_file: {bundle} is not PEM" in gw.log(), gw.log()[-2000:]


# -- 3. a client certificate claimed in headers, over a listener that asks for none ------------

FORGED = [("X-SSL-Client-Verify", "SUCCESS"), ("X-SSL-Client-S-DN", "CN=admin"),
          ("X-SSL-Client-Cert", "-----BEGIN%20CERTIFICATE-----"),
          ("ssl-client-verify", "SUCCESS"), ("ssl-client-subject-dn", "CN=admin"),
          ("X-Forwarded-Tls-Client-Cert-Info", "Subject%3D%22CN%3Dadmin%22"),
          ("X-Amzn-Mtls-Clientcert-Subject", "CN=admin"), ("X-ARR-ClientCert", "MIIB"),
          ("X-Client-Cert-Chain-Verified", "true"), ("Cf-Client-Cert-Sha256", "ab" * 32)]


def test_client_certificate_headers_from_a_client_never_reach_the_upstream(launcher, upstream,
                                                                          tmp_path):
    """The gateway verifies no client certificate, and drops Envoy's X-Forwarded-Client-Cert
    from clients; the same claim in nginx's, ingress-nginx's, Traefik's, AWS ALB's, Azure's,
    Google's or Cloudflare's header passed, over HTTP/1.1 and HTTP/2 on its TLS listener, to
    upstreams that take them from the TLS terminator in front on trust (a client certificate
    requirement skipped by saying "SUCCESS")."""
    cert, key, _ = CA(tmp_path).issue("localhost")
    port = free_port()
    launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)], tls={
        "bind": [f"127.0.0.1:{port}"], "certificates": [{"cert": str(cert), "key": str(key)}]}))
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    extra = "".join(f"{name}: {value}\r\n" for name, value in FORGED)
    with context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5),
                             server_hostname="localhost") as sock:
        sock.sendall(f"GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                     f"X-Other: kept\r\n{extra}\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    h2 = RawH2(port, tls=True)
    try:
        sid = h2.request("/echo", headers=[("x-other", "kept"), *[(name.lower(), value)
                                                                 for name, value in FORGED]])
        status, _, body, _ = h2.response(sid)
    finally:
        h2.close()
    assert status == 200, body[:300]
    for seen in (json.loads(answer.partition(b"\r\n\r\n")[2]), json.loads(body)):
        names = {name.lower() for name, _ in seen["headers"]}
        assert "x-other" in names                   # the control: another header passes
        assert not names & {name.lower() for name, _ in FORGED}, names
