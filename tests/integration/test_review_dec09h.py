"""Review dec09h of ca7c4ca (TLS files: workers and helpers take the master's word), against
real gateways, etcd, Redis and upstreams on loopback. Each test was seen failing before its
fix."""
import os
import subprocess
import threading
import time

import pytest

from ..conftest import free_port, gateway_conf, wait_until
from .test_etcd import UP, all_workers_at, etcd_conf, put, serves
from .test_review_dec08g import tls_upstream_and_bundle
from .test_review_dec08q import etcd_tls_route


# -- 1. a tls file replaced by a FIFO after the master checked it -----------------------------

@pytest.mark.parametrize("protocol", ["http1", "h2"])
def test_a_ca_file_replaced_by_a_fifo_is_a_502_and_the_worker_serves_the_rest(
        launcher, upstream, tmp_path, protocol):
    """A worker opens an upstream's ca_file at each new connection (OpenSSL, which neither
    knows gevent nor refuses a FIFO): one replaced by a FIFO after the master checked it
    made the first such connection block the whole worker in open()/read(), every client of
    it stalled (other routes too) until something wrote to the FIFO. The connection path
    refuses a file that is not a regular one before OpenSSL opens it: a 502 naming it."""
    up, bundle, good = tls_upstream_and_bundle(launcher, tmp_path)
    gw = launcher.gateway(gateway_conf([
        {"id": "s", "paths": ["/s/*rest"], "strip_prefix": "/s",
         "upstream": {"targets": [{"url": up.url}], "protocol": protocol,
                      "tls": {"ca_file": str(bundle)}}},
        {"id": "p", "paths": ["/p/*rest"], "strip_prefix": "/p",
         "upstream": {"targets": [{"url": upstream.url}]}}], workers=1))
    assert serves(gw, "/p/echo") == 200
    bundle.unlink()
    os.mkfifo(bundle)                       # (or a symlink to /dev/zero: no regular file)
    answers = {}

    def tls_request():
        try:
            answers["s"] = gw.request("GET", "/s/echo", timeout=6)
        except OSError as exc:
            answers["s"] = exc
    thread = threading.Thread(target=tls_request, daemon=True)
    thread.start()
    time.sleep(0.5)                         # the TLS request is in the worker (or done)
    try:
        started = time.monotonic()
        response, _ = gw.request("GET", "/p/echo", timeout=4)
        assert response.status == 200 and time.monotonic() - started < 2
        thread.join(6)
        response, body = answers["s"]
        assert response.status == 502, (response.status, body[:300])
        assert f"tls.ca_file: {bundle} is not a regular file" in gw.log(), gw.log()[-2500:]
    finally:
        # unblock a worker stuck on the FIFO (before the fix), so the gateway can stop
        fd = os.open(bundle, os.O_RDWR | os.O_NONBLOCK)
        os.close(fd)
        bundle.unlink()
    bundle.write_bytes(good)
    if protocol == "http1":             # (the upstream speaks HTTP/1.1 only)
        assert serves(gw, "/s/echo") == 200, gw.log()[-2500:]


# -- 2. secret files read by helpers at each restart ---------------------------------------------

def test_a_health_checker_restarted_while_the_redis_password_file_is_empty_runs(
        launcher, upstream, tmp_path):
    """Helpers read [redis]/[etcd]/[admin]'s secret files at each restart (parse_conf): a
    health checker, which never talks to Redis, restarted while [redis] password_file was
    empty (a credential being rotated) died at each restart, and no target was checked."""
    port = free_port()
    directory = tmp_path / "redis-auth"
    directory.mkdir()
    launcher._redis_server(port, directory, "--requirepass", "r3dis-pw")
    secret = tmp_path / "redis-password"
    secret.write_text("r3dis-pw\n")
    gw = launcher.gateway(gateway_conf([
        {"id": "h", "paths": ["/h/*rest"], "strip_prefix": "/h",
         "upstream": {"targets": [{"url": upstream.url}],
                      "health_check": {"interval": 0.1, "path": "/echo"}}}],
        workers=1, redis={"url": f"redis://127.0.0.1:{port}/0", "password_file": str(secret)}))
    first = wait_until(lambda: gw.helper_pid("health"), timeout=5)
    secret.write_text("")                   # caught mid-rotation
    os.kill(first, 9)
    again = wait_until(lambda: gw.helper_pid("health") not in (None, first) and
                       gw.helper_pid("health"), timeout=5)
    time.sleep(2)                           # (a dying one is restarted within ~1 s)
    assert gw.helper_pid("health") == again, gw.log()[-2500:]
    assert "password_file" not in gw.log(), gw.log()[-2500:]


def test_a_sync_process_restarted_while_the_etcd_password_file_is_empty_retries(
        launcher, upstream, tmp_path):
    """config-sync read [etcd] password_file as it started: restarted while it was empty, it
    died at each restart (no etcd change applied). It reads it when it authenticates, and a
    call that fails on it is retried, as any failed call to etcd: put right, changes apply."""
    etcd = launcher.etcd()
    env = {**os.environ, "ETCDCTL_API": "3"}
    for args in (["user", "add", "root:s3cret"], ["auth", "enable"]):
        subprocess.run(["etcdctl", "--endpoints", etcd.url, *args], env=env, check=True,
                       capture_output=True)
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
    secret.write_text("")
    os.kill(first, 9)
    again = wait_until(lambda: gw.helper_pid("config-sync") not in (None, first) and
                       gw.helper_pid("config-sync"), timeout=5)
    revision = put(client, "routes", "b", {"paths": ["/b"], "upstream": "up"})
    time.sleep(2)
    assert gw.helper_pid("config-sync") == again, gw.log()[-2500:]
    assert serves(gw, "/a") == 200          # what it served goes on
    assert f"etcd.password_file: {secret} is empty" in gw.log(), gw.log()[-2500:]
    secret.write_text("s3cret\n")           # put right: the next call authenticates
    wait_until(lambda: all_workers_at(gw, revision), timeout=6)
    assert serves(gw, "/b") == 200
    assert gw.helper_pid("config-sync") == again, gw.log()[-2500:]


# -- 3. an item refused over a tls file that keeps changing --------------------------------------

def test_an_item_refused_over_a_file_that_keeps_changing_publishes_no_empty_generations(
        launcher, tmp_path):
    """config-sync puts an item refused over its tls files again when one of them changes:
    one rewritten every 100 ms (a log-like file, a bundle a timer rewrites) and still bad
    made it publish a generation of no change at each quiet turn (watch_idle_timeout), every
    worker applying it. Refused again alike, nothing is published; put right, it serves."""
    etcd = launcher.etcd()
    gw, up, bundle, good, revision = etcd_tls_route(launcher, etcd, tmp_path, spoiled=True)
    bundle.write_bytes(b"junk\n")           # refused again, for another reason
    wait_until(lambda: "is not PEM" in gw.log(), timeout=4)
    before = len(gw.log())
    stop = time.monotonic() + 4.2           # two quiet turns at least (2 s here)
    written = 0
    while time.monotonic() < stop:
        bundle.write_bytes(b"junk %d\n" % written)
        written += 1
        time.sleep(0.1)
    said = gw.log()[before:]
    assert "published generation" not in said, said[-2500:]
    assert "applied in" not in said, said[-2500:]
    bundle.write_bytes(good)
    wait_until(lambda: serves(gw, "/t/echo") == 200, timeout=5)
