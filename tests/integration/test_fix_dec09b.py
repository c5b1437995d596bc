"""Fix dec09b: TLS files in etcd mode that go bad after the master checked them, against real
gateways, etcd, upstreams and helpers on loopback. Each test was seen failing before its fix."""
import json
import os
import signal
import time

import pytest
from cryptography.hazmat.primitives import serialization

from ..conftest import free_port, wait_until
from ..pki import CA
from .test_etcd import UP, all_workers_at, etcd_conf, put, serves, status_of
from .test_review_dec08g import tls_upstream_and_bundle
from .test_review_dec08q import etcd_tls_route


@pytest.fixture
def etcd(launcher):
    return launcher.etcd()


def tls_route(up, bundle, **tls):
    return {"id": "s", "paths": ["/s/*rest"], "strip_prefix": "/s",
            "upstream": {"targets": [{"url": up.url}],
                         "tls": {"ca_file": str(bundle), **tls}}}


# -- 1. a worker or helper started while an upstream's tls file is gone or encrypted --------

def test_a_worker_started_while_a_static_upstreams_ca_file_is_gone_boots_and_serves(
        launcher, etcd, tmp_path):
    """Workers skipped loading the tls files the master accepted, not checking that they
    exist: one started (max_requests, a crash) between an operator's `rm f` and `cp new f`
    failed to boot on the static route naming it, and gunicorn stopped the gateway with it.
    It boots now, and serves."""
    up, bundle, good = tls_upstream_and_bundle(launcher, tmp_path)
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], routes=[tls_route(up, bundle)],
                                    workers=1))
    assert serves(gw, "/s/echo") == 200
    first = wait_until(lambda: gw.serving_worker_pids(), timeout=5)[0]
    bundle.unlink()                     # `rm f`, the `cp` not done yet
    os.kill(first, signal.SIGKILL)
    # (before the fix: the new one dies at boot, and the master with it)
    deadline = time.monotonic() + 6
    while not [p for p in gw.serving_worker_pids() if p != first]:
        assert time.monotonic() < deadline and gw.proc.poll() is None, gw.log()[-2500:]
        time.sleep(0.05)
    assert gw.proc.poll() is None, gw.log()[-2500:]
    # it serves (a 502 naming the file where a connection loads it, never a dead gateway)
    response, body = gw.request("GET", "/s/echo", timeout=5)
    assert response.status in (200, 502), (response.status, body[:300], gw.log()[-2500:])
    assert "Worker failed to boot" not in gw.log(), gw.log()[-2500:]
    bundle.write_bytes(good)            # cp done
    assert serves(gw, "/s/echo") == 200, gw.log()[-2500:]


def test_a_worker_started_while_an_etcd_upstreams_ca_file_is_gone_answers_502_naming_it(
        launcher, etcd, tmp_path):
    """A worker compiles what config-sync published without loading its files, but checked
    they exist: one started while an etcd upstream's ca_file was gone (`rm f; cp new f`)
    refused that upstream alone, its routes a 503 stand-in there. The request that needs
    the file is a 502 that names it now, and a 200 once it is back."""
    gw, up, bundle, good, revision = etcd_tls_route(launcher, etcd, tmp_path)
    assert serves(gw, "/t/echo") == 200
    first = wait_until(lambda: gw.serving_worker_pids(), timeout=5)[0]
    bundle.unlink()
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: all_workers_at(gw, revision) and
               [p for p in gw.serving_worker_pids() if p != first], timeout=6)
    response, body = gw.request("GET", "/t/echo", timeout=5)
    assert response.status == 502, (response.status, body[:300], gw.log()[-2500:])
    assert f"tls.ca_file: {bundle} cannot be read" in gw.log(), gw.log()[-2500:]
    bundle.write_bytes(good)
    assert serves(gw, "/t/echo") == 200, gw.log()[-2500:]


def test_a_health_checker_restarted_while_an_upstreams_key_file_is_encrypted_runs(
        launcher, etcd, tmp_path):
    """Helpers skipped loading an upstream's tls files, not the encrypted-key check: a
    health checker restarted while the client key was (for a moment, or by mistake) an
    encrypted one died at every restart, and no target was checked."""
    up, bundle, _ = tls_upstream_and_bundle(launcher, tmp_path)
    (tmp_path / "client").mkdir()
    cert, key, _ = CA(tmp_path / "client").issue("client")
    route = tls_route(up, bundle, cert_file=str(cert), key_file=str(key))
    route["upstream"]["health_check"] = {"interval": 0.1, "path": "/echo"}
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], routes=[route], workers=1))
    first = wait_until(lambda: gw.helper_pid("health"), timeout=5)
    plain = serialization.load_pem_private_key(key.read_bytes(), None)
    key.write_bytes(plain.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    os.kill(first, signal.SIGKILL)
    again = wait_until(lambda: gw.helper_pid("health") not in (None, first) and
                       gw.helper_pid("health"), timeout=5)
    verdicts = os.path.join(gw.conf["server"]["state_dir"], "health.json")
    wait_until(lambda: os.path.exists(verdicts) and
               json.loads(open(verdicts).read()).get("pid") == again, timeout=4)
    assert gw.helper_pid("health") == again, gw.log()[-2500:]
    # a request that opens a connection says what is wrong (no prompt, no 500)
    response, body = gw.request("GET", "/s/echo", timeout=5)
    assert response.status in (200, 502), (response.status, body[:300])


# -- 2. a global split's inline upstream whose ca_file goes bad after the start ----------------

def test_a_new_etcd_route_is_not_refused_over_a_global_splits_ca_file(launcher, etcd,
                                                                      upstream, tmp_path):
    """config-sync linked [plugins] split into each route from etcd, loading its inline
    upstream's ca_file again: one gone bad after the master accepted it (`cp` half-way) made
    every new route refused ("upstream e.plugins.split.upstreams[1]: tls.ca_file: ... is
    empty"), a 404. The global plugin's files are the master's, and a request sent there
    fails alone (a 502)."""
    up, bundle, _ = tls_upstream_and_bundle(launcher, tmp_path)
    conf = etcd_conf(tmp_path, [etcd.url], workers=1)
    conf["upstreams"] = {"main": {"targets": [{"url": upstream.url}]}}
    conf["plugins"] = {"split": {"upstreams": [
        {"upstream": "main", "weight": 100},
        {"upstream": {"targets": [{"url": up.url}], "tls": {"ca_file": str(bundle)}},
         "weight": 0, "group": "g"}]}}
    gw = launcher.gateway(conf)
    bundle.write_bytes(b"")             # caught between cp's truncate and its write
    revision = put(etcd.client(), "routes", "e", {"paths": ["/e/*rest"], "strip_prefix": "/e",
                                                  "upstream": "main"})
    wait_until(lambda: all_workers_at(gw, revision), timeout=4)
    assert not (status_of(gw) or {}).get("rejected"), status_of(gw)
    assert serves(gw, "/e/echo") == 200, gw.log()[-2500:]


# -- 3. an item refused over its tls files is tried again once they are put right -------------

def test_an_etcd_upstream_refused_over_its_ca_file_serves_once_the_file_is_put_right(
        launcher, etcd, tmp_path):
    """An etcd upstream refused because its ca_file was bad stayed rejected (its routes 503)
    after the file was put right: nothing in etcd changed, so nothing was tried again until
    someone wrote the item again. config-sync tries it again when one of its files changes,
    and the rejection says so."""
    gw, up, bundle, good, revision = etcd_tls_route(launcher, etcd, tmp_path, spoiled=True)
    reason = (status_of(gw) or {}).get("rejected", {}).get("upstreams/tu", "")
    assert f"tls.ca_file: {bundle} is empty" in reason, status_of(gw)
    assert "tried again when one of those files changes" in reason, reason
    assert serves(gw, "/t/echo") == 503
    bundle.write_bytes(good)            # put right; etcd unchanged
    # (within watch_idle_timeout: 2 s here)
    wait_until(lambda: "upstreams/tu" not in (status_of(gw) or {}).get("rejected", {}),
               timeout=5)
    wait_until(lambda: serves(gw, "/t/echo") == 200, timeout=3)


# -- 4. a helper restarted while the listener's certificate is being replaced -----------------

def test_a_sync_process_restarted_while_the_listener_certificate_is_half_written_runs(
        launcher, etcd, upstream, tmp_path):
    """Helpers parsed the master's copy loading [tls]'s certificate files, which they never
    serve: config-sync restarted while the listener certificate was caught half-written by
    `cp` died at every restart ("tls.certificates[0]..."), and no etcd change applied."""
    cert, key, _ = CA(tmp_path).issue("localhost")
    conf = etcd_conf(tmp_path, [etcd.url], workers=1)
    conf["tls"] = {"bind": [f"127.0.0.1:{free_port()}"],
                   "certificates": [{"cert": str(cert), "key": str(key)}]}
    gw = launcher.gateway(conf)
    first = wait_until(lambda: gw.helper_pid("config-sync"), timeout=5)
    cert.write_bytes(b"")               # caught between cp's truncate and its write
    os.kill(first, signal.SIGKILL)
    again = wait_until(lambda: gw.helper_pid("config-sync") not in (None, first) and
                       gw.helper_pid("config-sync"), timeout=5)
    put(etcd.client(), "upstreams", "up", UP(upstream))
    revision = put(etcd.client(), "routes", "e", {"paths": ["/e/*rest"], "strip_prefix": "/e",
                                                  "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, revision), timeout=4)
    assert serves(gw, "/e/echo") == 200
    assert gw.helper_pid("config-sync") == again, gw.log()[-2500:]
