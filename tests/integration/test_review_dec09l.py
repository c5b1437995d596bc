"""Review dec09l of 52ead3a and 768b0a4 (helpers' secrets, the etcd password read at each
authentication, publishing only what a retry accepted, who checks files), against real
gateways, etcd and upstreams on loopback. Each test was seen failing before its fix."""
import os
import signal
import subprocess
import sys
import time

import pytest

from ..conftest import wait_until
from .test_etcd import all_workers_at, etcd_conf, put, serves
from .test_review_dec08g import tls_upstream_and_bundle


@pytest.fixture
def etcd(launcher):
    return launcher.etcd()


def etcdctl(etcd, *args, stdin=None):
    return subprocess.run(["etcdctl", "--endpoints", etcd.url, *args], input=stdin, text=True,
                          env={**os.environ, "ETCDCTL_API": "3"}, check=True,
                          capture_output=True)


# -- 1. an item a retry accepts while it waits for an upstream id --------------------------------

def test_a_route_put_right_by_its_file_while_it_waits_for_an_upstream_is_published(
        launcher, etcd, tmp_path):
    """52ead3a published a retried item only when it left the rejected list; a route accepted
    while it names an upstream id not there yet is served (503 for that one) and stays on
    that list, so once its tls file was put right config-sync never published it: its fence
    answered 503 for good (until some other etcd change came), though it could serve."""
    up, bundle, good = tls_upstream_and_bundle(launcher, tmp_path)
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], workers=1))
    bundle.write_bytes(b"")                 # caught mid-`cp`: refused over its file
    inline = {"targets": [{"url": up.url}], "tls": {"ca_file": str(bundle)}}
    revision = put(etcd.client(), "routes", "w", {
        "paths": ["/w/*rest"], "strip_prefix": "/w", "upstream": inline,
        "plugins": {"split": {"upstreams": [{"upstream": "later", "weight": 0},
                                            {"upstream": inline, "weight": 1,
                                             "group": "canary"}]}}})
    wait_until(lambda: all_workers_at(gw, revision), timeout=4)
    assert serves(gw, "/w/echo") == 503     # (its fence: refused)
    bundle.write_bytes(good)                # put right: retried at the next quiet turn
    wait_until(lambda: 'unknown upstream id "later"' in gw.log(), timeout=5)
    wait_until(lambda: serves(gw, "/w/echo") == 200, timeout=3)


# -- 2. a long-running `gwserver register` across a password rotation ----------------------------

def test_register_outlives_a_rotation_of_the_etcd_password_file(
        launcher, etcd, upstream, tmp_path):
    """The CLI's parse of the conf reads [etcd] password_file, and its EtcdClient then never
    read the file again (52ead3a reads it at each authentication only when no password was
    given): a `gwserver register` running while the password was rotated (in etcd, then in
    the file) authenticated with the old one for good, `credentials refused; retrying` every
    ttl/3, and its instance left the service when the lease ran out."""
    etcdctl(etcd, "user", "add", "root:s3cret")
    etcdctl(etcd, "auth", "enable")
    secret = tmp_path / "etcd-password"
    secret.write_text("s3cret\n")
    conf_path = tmp_path / "register.toml"
    conf_path.write_text(f'[etcd]\nendpoints = ["{etcd.url}"]\nprefix = "/gw"\nusername = '
                         f'"root"\npassword_file = "{secret}"\nruntime_dir = '
                         f'"{tmp_path / "run"}"\ntimeout = 1.0\n')
    proc = subprocess.Popen([sys.executable, "-m", "gwserver", "register", "-c",
                             str(conf_path), "--service", "orders", "--url", upstream.url,
                             "--instance", "i1", "--ttl", "2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    launcher.started.append(proc)
    assert "registered" in proc.stdout.readline()
    etcdctl(etcd, "--user", "root:s3cret", "user", "passwd", "root", "--interactive=false",
            stdin="n3w\n")
    secret.write_text("n3w\n")
    time.sleep(4)                           # twice the ttl: keepalives every 0.67 s
    from gwserver.sync.etcd import EtcdClient
    held = EtcdClient([etcd.url], username="root", password="n3w").range_prefix(
        "/gw/services/")[1]
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=5)
    assert [key for key, _, _ in held] == ["/gw/services/orders/i1"], err[-1500:]
    assert "credentials refused" not in err, err[-1500:]
    assert "deregistered /gw/services/orders/i1" in out


# -- 3. a rediss:// URL's ssl_ca_certs replaced by a FIFO ----------------------------------------

def test_a_redis_ca_file_replaced_by_a_fifo_stalls_no_worker(launcher, upstream, tmp_path):
    """52ead3a made an upstream's tls file that is no regular file a 502 (OpenSSL's blocking
    open of a FIFO hung the whole worker); a rediss:// URL's ssl_ca_certs is opened alike by
    each new connection to Redis, in the worker: replaced by a FIFO after the check, the
    worker's next reconnect (Redis closed its connection) hung it, every route with it. Now
    that connection fails, naming the file, and on_store_error decides."""
    import threading

    from ..conftest import free_port, gateway_conf, route
    from ..pki import CA
    ca = CA(tmp_path)
    cert, key, _ = ca.issue("redis")
    port, tls_port = free_port(), free_port()
    directory = tmp_path / "redis-tls"
    directory.mkdir()
    launcher._redis_server(port, directory, "--tls-port", str(tls_port), "--tls-cert-file",
                           str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file",
                           str(ca.cert_path), "--tls-auth-clients", "no")
    bundle = tmp_path / "redis-ca.pem"
    good = ca.cert_path.read_bytes()
    bundle.write_bytes(good)
    gw = launcher.gateway(gateway_conf([
        route("lim", ["/lim"], upstream.url, plugins={"rate_limit": {
            "rate": 1000, "per": 3600, "burst": 1000, "key": "route",
            "on_store_error": "deny"}}),
        route("p", ["/p"], upstream.url)],
        workers=1, redis={"url": f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={bundle}",
                          "timeout": 0.5}))
    assert serves(gw, "/lim") == 200
    bundle.unlink()
    os.mkfifo(bundle)
    subprocess.run(["redis-cli", "-p", str(port), "client", "kill", "type", "normal"],
                   check=True, capture_output=True)
    answers = {}

    def limited():
        try:
            answers["lim"] = gw.request("GET", "/lim", timeout=5)[0].status
        except OSError as exc:
            answers["lim"] = exc
    thread = threading.Thread(target=limited, daemon=True)
    thread.start()
    time.sleep(0.5)                         # the limited request is in the worker (or done)
    try:
        started = time.monotonic()
        try:
            other = gw.request("GET", "/p", timeout=3)[0].status
        except OSError as exc:
            other = exc
        elapsed = time.monotonic() - started
        thread.join(6)
    finally:
        # unblock a worker stuck on the FIFO (before the fix), so the gateway can stop
        fd = os.open(bundle, os.O_RDWR | os.O_NONBLOCK)
        os.close(fd)
        bundle.unlink()
    assert other == 200 and elapsed < 2, (other, elapsed)
    assert answers["lim"] == 503, answers   # (on_store_error = "deny")
    assert f"redis.url: ssl_ca_certs: {bundle} is not a regular file" in gw.log(), \
        gw.log()[-2500:]
    bundle.write_bytes(good)                # put right: Redis decides again
    wait_until(lambda: serves(gw, "/lim") == 200, timeout=6)


# -- 4. an unreadable [etcd] password_file, said as what it is -----------------------------------

def test_an_unreadable_etcd_password_file_is_not_said_as_etcd_unreachable(
        launcher, etcd, upstream, tmp_path):
    """52ead3a reads [etcd] password_file as config-sync authenticates; one it cannot read
    (being rotated: empty) failed the call before etcd was asked, and was said as `etcd
    unreachable: etcd.password_file: ... is empty` (routes status: `etcd is unreachable from
    the gateway`), the wording that sent operators looking for a network problem."""
    from .test_etcd import UP, status_of
    etcdctl(etcd, "user", "add", "root:s3cret")
    etcdctl(etcd, "auth", "enable")
    from gwserver.sync.etcd import EtcdClient
    client = EtcdClient([etcd.url], username="root", password="s3cret")
    put(client, "upstreams", "up", UP(upstream))
    secret = tmp_path / "etcd-password"
    secret.write_text("s3cret\n")
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], workers=1, username="root",
                                    password_file=str(secret)))
    revision = put(client, "routes", "a", {"paths": ["/a"], "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, revision), timeout=5)
    first = wait_until(lambda: gw.helper_pid("config-sync"), timeout=5)
    secret.write_text("")                   # caught mid-rotation
    os.kill(first, 9)                       # restarted: it authenticates again
    said = f"etcd.password_file: {secret} is empty"
    wait_until(lambda: said in gw.log(), timeout=6)
    line = next(line for line in gw.log().splitlines() if said in line)
    assert "etcd unreachable" not in line, line
    assert f"cannot authenticate to etcd: {said}" in line, line
    status = wait_until(lambda: (lambda s: s and s.get("password_unreadable") and s)(
        status_of(gw)), timeout=4)
    assert status["error"] == said and not status["auth_failed"], status
    assert serves(gw, "/a") == 200          # what it served goes on
    secret.write_text("s3cret\n")
    wait_until(lambda: (status_of(gw) or {}).get("connected"), timeout=6)
