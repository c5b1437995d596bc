"""Review of 7f3f620 (pass dec07i): what `gwserver check`, a start and a reload newly refuse,
tried on confs and files an operator already runs. Each test was seen failing on 7f3f620."""
import socket
import subprocess
import sys
from pathlib import Path

from ..conftest import ROOT, free_port, gateway_conf, python_path_with, route, to_toml, \
    wait_until
from .test_etcd import all_workers_at, etcd_conf, put, runtime_of


def gw_cli(*args, env=None, timeout=30):
    import os
    return subprocess.run([sys.executable, "-m", "gwserver", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def get(family, host, port):
    """The status line of GET /echo on host:port."""
    with socket.socket(family) as sock:
        sock.settimeout(5)
        sock.connect((host, port))
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        return sock.recv(64).split(b"\r\n")[0]


# /etc/hosts of a stock Debian or Ubuntu host names ::1 localhost beside 127.0.0.1 (this
# test host's names 127.0.0.1 only): its resolver, in the gateway's and check's processes.
HOSTS = """import socket
_getaddrinfo = socket.getaddrinfo

def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
    found = _getaddrinfo(host, port, family, type, proto, flags)
    name = host.decode() if isinstance(host, bytes) else host
    if name == "localhost" and family in (socket.AF_UNSPEC, socket.AF_INET6):
        found = [(socket.AF_INET6, t, p, "", ("::1", a[1], 0, 0))
                 for (_, t, p, _, a) in found] + found
    return found

socket.getaddrinfo = getaddrinfo
"""


def test_localhost_beside_the_ipv6_loopback_on_one_port_still_starts(launcher, upstream,
                                                                     tmp_path):
    """`bind = ["localhost:8080", "[::1]:8080"]` (local clients of both families; gunicorn's
    socket for a name is IPv4, so localhost is 127.0.0.1 alone) started and served both. On
    a host whose /etc/hosts names ::1 localhost too, 7f3f620 refused it: "server.bind[1]:
    [::1]:8080 is already listened on by localhost:8080", every address the name resolves
    to taken as listened on. localhost beside 127.0.0.1 is the same socket: still refused."""
    site = tmp_path / "hosts"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HOSTS)
    env = python_path_with(site)
    port = free_port()
    launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)]), env=env,
                     extra_binds=(f"localhost:{port}", f"[::1]:{port}"))
    assert get(socket.AF_INET, "127.0.0.1", port).startswith(b"HTTP/1.1 200")
    assert get(socket.AF_INET6, "::1", port).startswith(b"HTTP/1.1 200")
    path = tmp_path / "same.toml"
    path.write_text(to_toml(gateway_conf([route("r", ["/r"], upstream.url)], server={
        "bind": [f"localhost:{port}", f"127.0.0.1:{port}"]})))
    done = gw_cli("check", "-c", str(path), env=env)
    assert done.returncode == 2 and f"127.0.0.1:{port} is already listened on by " \
        f"localhost:{port}" in done.stdout + done.stderr, done


def test_a_bind_in_gunicorns_tcp_spelling_still_starts(launcher, upstream, tmp_path):
    """gunicorn takes "tcp://127.0.0.1:8080" for 127.0.0.1:8080, and such a bind started and
    served. 7f3f620 refused it ("an IPv6 address is written in brackets", of an IPv4
    address): a running gateway's reload, and its next start, failed."""
    port = free_port()
    launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)]),
                     extra_binds=(f"tcp://127.0.0.1:{port}",))
    assert get(socket.AF_INET, "127.0.0.1", port).startswith(b"HTTP/1.1 200")
    path = tmp_path / "bad.toml"
    path.write_text(to_toml(gateway_conf([route("r", ["/r"], upstream.url)],
                                         server={"bind": ["tcp://::1:8080"]})))
    done = gw_cli("check", "-c", str(path))        # still an IPv6 address without brackets
    assert done.returncode == 2 and "brackets" in done.stdout + done.stderr, done


def test_a_combined_pem_whose_key_follows_a_long_chain_passes_check(tmp_path):
    """A combined PEM (certificates, then the key: HAProxy's layout) named as both cert and
    key loaded, whatever its length. 7f3f620 read the key file's first 64 KiB only, and one
    whose key came later was refused by `check` and at start as "holds a certificate, not a
    private key (are cert and key swapped?)", for a listener and an upstream's mTLS alike."""
    from cryptography.hazmat.primitives import serialization
    from tests.pki import CA
    ca = CA(tmp_path)
    cert, key, _ = ca.issue("site")
    combined = tmp_path / "combined.pem"
    chain = cert.read_bytes()
    combined.write_bytes(chain + ca.cert.public_bytes(serialization.Encoding.PEM) * 150 +
                         key.read_bytes())
    assert combined.stat().st_size > 70_000
    path = tmp_path / "gw.toml"
    path.write_text(to_toml(gateway_conf(
        [{"id": "p", "paths": ["/p"], "upstream": {
            "targets": [{"url": "https://127.0.0.1:9"}],
            "tls": {"cert_file": str(combined), "key_file": str(combined)}}}],
        tls={"bind": [f"127.0.0.1:{free_port()}"],
             "certificates": [{"cert": str(combined), "key": str(combined)}]})))
    done = gw_cli("check", "-c", str(path))
    assert done.returncode == 0 and ": ok (" in done.stdout, done


def test_a_waiting_routes_refused_update_is_counted_as_rejected(launcher, tmp_path):
    """A route waiting for its upstream, then a version of it the gateway refuses: `routes
    status` names the refusal ("1 rejected item(s)", exit 1), and the old version serves.
    7f3f620 counted gwserver_config_rejected_items by ``waiting`` alone, which the route
    stays in: 0, and GwserverConfigRejected never fired for it."""
    etcd = launcher.etcd()
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], workers=1))
    client = etcd.client()
    revision = put(client, "routes", "early", {"paths": ["/early"], "upstream": "orders"})
    wait_until(lambda: all_workers_at(gw, revision))
    prom = Path(runtime_of(gw)) / "metrics.prom"
    wait_until(lambda: "gwserver_config_routes 1.0" in prom.read_text())
    assert 'gwserver_config_rejected_items{kind="routes"} 0.0' in prom.read_text()
    put(client, "routes", "early", {"paths": ["early"], "upstream": "orders"})   # no "/"
    wait_until(lambda: 'gwserver_config_rejected_items{kind="routes"} 1.0' in
               prom.read_text(), timeout=5)
    status = gw_cli("routes", "-c", str(gw.conf_path), "status")
    assert status.returncode == 1 and "1 rejected item(s)" in status.stdout, status
    assert gw.request("GET", "/early")[0].status == 503         # the old one, waiting
