"""Docs against code (Dec 09 n): the passages today's commits changed in docs/, held to real
gateways, upstreams and etcd on loopback.

1. docs/tls.md said an upstream's tls file replaced by a bad one since the check "is a 502
   per connection ... until it is put right". True of HTTP/1.1 upstreams (urllib3 loads the
   files at each connect). A worker's HTTP/2 upstream connections build their context from
   the files once and, when a file changes into one that cannot be loaded, keep the context
   read before (upstream.clienttls.client_context, the health checker's rule), logging
   `the ones read before are used until they can`: the requests are served, 200. That is a
   deliberate choice of the code (the last good files serve); the page says so now.
2. docs/security.md said that where a trusted proxy's hop names no address, `unknown` is
   what "the upstream's `X-Forwarded-For` (`unknown, 10.0.0.5`)" says, in either mode. With
   the default `real_ip_header` the proxy's list goes on as it wrote it, then the proxy
   (`gw.example, 127.0.0.1`), as from any trusted proxy (proxy.forwarded_values); only a
   Forwarded proxy's client becomes `unknown` there. The gateway's own view (access log,
   limits, allow-lists) is `unknown` in both. The page says so now.

Checked and held (no test needed here, each already covered or seen holding): the trusted
proxy `unknown` client in both modes, Connection tokens kept from trusted and identity
proxies, NAT64 ip_restriction, SIGHUP and SIGUSR1 held while the master starts (SIGUSR1 was
sent to a master in its first 0.3 s: it lived and served), per-host lease owners by pid and
start, the HTTP/2 connect waiters, timeouts.connect with the TLS handshake.
"""
import time

from ..conftest import ROOT, gateway_conf, route, wait_until
from .test_attack_pass_dec03 import raw_request


def test_an_h2_upstreams_ca_file_spoilt_after_a_connection_keeps_the_files_read_before(
        launcher, tmp_path):
    from ..pki import CA
    ca = CA(tmp_path)
    cert, key, _ = ca.issue("h2site")
    # keepalive_requests 1: nginx ends each HTTP/2 connection after a request (GOAWAY), so
    # each request below opens a new connection, loading the tls files as it does
    port = launcher.nginx("h2tls", (
        f"listen 127.0.0.1:{{port}} ssl http2; ssl_certificate {cert}; "
        f"ssl_certificate_key {key}; keepalive_requests 1; "
        'location /hello {{ return 200 "hi"; }}'))
    bundle = tmp_path / "upstream-ca.pem"
    bundle.write_bytes(ca.cert_path.read_bytes())
    gw = launcher.gateway(gateway_conf([
        {"id": "t", "paths": ["/*r"], "upstream": {
            "targets": [{"url": f"https://127.0.0.1:{port}"}], "protocol": "h2",
            "tls": {"ca_file": str(bundle)}}}]))
    assert gw.request("GET", "/hello")[0].status == 200
    bundle.write_bytes(b"")                 # spoilt since the check (a `cp` half-way)
    time.sleep(0.2)
    statuses = [gw.request("GET", "/hello")[0].status for _ in range(3)]
    assert statuses == [200] * 3, (statuses, gw.log()[-2000:])
    assert "the ones read before are used until they can" in gw.log(), gw.log()[-2000:]
    # what the operator reads: before, only "a 502 per connection"
    tls_md = " ".join((ROOT / "docs" / "tls.md").read_text().split())
    assert "HTTP/2 upstream connections keep the files they loaded before" in tls_md



def test_the_upstreams_x_forwarded_for_behind_a_proxy_that_names_no_client(launcher, h1_up):
    gw = launcher.gateway(gateway_conf([route("all", ["/p"], h1_up.url)],
                                       server={"trusted_proxies": ["127.0.0.1/32"]}))
    fwd = launcher.gateway(gateway_conf([route("all", ["/p"], h1_up.url)],
                                        server={"trusted_proxies": ["127.0.0.1/32"],
                                                "real_ip_header": "Forwarded"}))

    def upstream_xff(port, header):
        raw_request(port, b"GET /p HTTP/1.1\r\nHost: a\r\n" + header +
                    b"\r\nConnection: close\r\n\r\n", timeout=5)
        return h1_up.header(-1, "X-Forwarded-For")

    # the gateway's own view is "unknown" in both modes (its access log says so) ...
    assert upstream_xff(gw.port, b"X-Forwarded-For: gw.example") == ["gw.example, 127.0.0.1"]
    assert upstream_xff(gw.port, b"X-Forwarded-For: unknown") == ["unknown, 127.0.0.1"]
    assert upstream_xff(fwd.port, b"Forwarded: for=_hidden") == ["unknown, 127.0.0.1"]
    wait_until(lambda: gw.log().count('"client":"unknown"') == 2, timeout=5)
    # ... but an X-Forwarded-For proxy's list goes on to the upstream as it wrote it, then
    # the proxy. docs/security.md said the upstream's X-Forwarded-For says "unknown" for
    # every such hop, in either mode (true only of Forwarded, and of a literal "unknown").
    text = " ".join((ROOT / "docs" / "security.md").read_text().split())
    assert "goes on to the upstream as the proxy wrote it" in text
