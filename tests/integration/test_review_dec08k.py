"""Review dec08k of d32a7cf, 20250ea and f917e29, against real gateways, upstreams and
helpers on loopback. Each test was seen failing before its fix."""
import json
import os
import signal
import time

from ..conftest import check_conf, gateway_conf, route, wait_until
from ..pki import CA
from .test_review_dec08g import tls_upstream_and_bundle

FAST_CHECK = {"interval": 0.1, "timeout": 0.5, "healthy_threshold": 2,
              "unhealthy_threshold": 2, "max_interval": 0.3, "path": "/echo"}


def target_health(gw):
    view = json.loads(gw.admin_get("/admin/upstreams")[1])
    return {t["url"]: t["health"] for t in view["upstreams"]["pool"]["targets"]}


# -- 1. a helper restarted while a rediss:// URL's CA file is being rewritten ---------------------

def test_a_helper_restarted_while_a_rediss_ca_file_is_rewritten_runs(launcher, upstream,
                                                                     tmp_path):
    """d32a7cf loads a rediss:// URL's ssl_ca_certs in every parse of the conf: the helpers
    parse the master's applied copy at each start, so a health checker (or config-sync: the
    same start_helper) restarted (killed, stuck) while the file was caught half-written by
    `cp` died at boot, and again at each restart: no target checked (no etcd change
    applied). Only check and the master load those files; helpers take what it accepted."""
    ca = CA(tmp_path)
    bundle = tmp_path / "redis-ca.pem"
    bundle.write_bytes(ca.cert_path.read_bytes())
    gw = launcher.gateway(gateway_conf(
        [{"id": "r", "paths": ["/r/*rest"], "strip_prefix": "/r", "upstream": "pool"}],
        redis={"url": f"rediss://127.0.0.1:9/0?ssl_ca_certs={bundle}"},
        upstreams={"pool": {"targets": [{"url": upstream.url}],
                            "health_check": FAST_CHECK}}))
    first = wait_until(lambda: gw.helper_pid("health"), timeout=5)
    bundle.write_bytes(b"")             # caught between cp's truncate and its write
    os.kill(first, signal.SIGKILL)
    again = wait_until(lambda: gw.helper_pid("health") not in (None, first) and
                       gw.helper_pid("health"), timeout=3)
    time.sleep(1.0)
    assert gw.helper_pid("health") == again, gw.log()[-2500:]
    assert "ssl_ca_certs" not in gw.log(), gw.log()[-2500:]
    assert wait_until(lambda: target_health(gw)[upstream.url] == "healthy", timeout=3)


# -- 2. an orphan moving its metrics leaves its siblings' directory alone --------------------------

def metrics_dir_of(pid):
    """The directory of the metric files ``pid`` has mapped (prometheus_client's)."""
    with open(f"/proc/{pid}/maps") as f:
        return next(os.path.dirname(line.split()[-1]) for line in f
                    if line.rstrip().endswith(f"_{pid}.db"))


def test_an_orphan_moving_its_metrics_leaves_the_dead_masters_directory_to_its_siblings(
        launcher, upstream, tmp_path):
    """A master killed -9: each orphaned worker, once it notices, moves its metrics to a
    directory of its own (worker.metrics_of_its_own). f917e29 made that move remove the
    directories of dead pids first (processes.own_dir), the dead master's shared one among
    them: the first orphan to notice removed it under its siblings, which still wrote there
    until they noticed too (each metric file they opened meanwhile a FileNotFoundError).
    Only a master's start removes dead ones' directories."""
    gw = launcher.gateway(gateway_conf([{"id": "r", "paths": ["/*any"],
                                         "upstream": {"targets": [{"url": upstream.url}]}}],
                                       workers=2, server={"graceful_timeout": 0.5}),
                          env={"RUNTIME_DIRECTORY": str(tmp_path)})    # (no other master's)
    assert gw.request("GET", "/echo")[0].status == 200
    first, second = wait_until(lambda: len(gw.serving_worker_pids()) == 2 and
                               sorted(gw.serving_worker_pids()), timeout=5)
    shared = metrics_dir_of(first)
    assert shared.startswith(f"{tmp_path}/gwserver-metrics-{gw.pid}-"), shared
    os.kill(second, signal.SIGSTOP)         # it has not noticed yet
    try:
        os.kill(gw.pid, signal.SIGKILL)
        gw.proc.wait(5)
        wait_until(lambda: f"[{first}] [WARNING] gwserver.worker: the master (pid {gw.pid}) "
                           f"died" in gw.log(), timeout=3)
        time.sleep(0.3)             # (it moves its metrics right after saying so)
        assert os.path.isdir(shared), "the dead master's directory went under its orphans"
        assert any(str(second) in name for name in os.listdir(shared)), os.listdir(shared)
    finally:
        os.kill(second, signal.SIGKILL)
        os.kill(second, signal.SIGCONT)
        wait_until(lambda: not os.path.exists(f"/proc/{second}"), timeout=5)


# -- 3. a rediss:// URL's encrypted client key with its ssl_password --------------------------------

def test_check_takes_a_rediss_client_key_its_ssl_password_opens(tmp_path):
    """redis-py loads a rediss:// URL's ssl_keyfile with its ssl_password (an encrypted
    key, as many a managed Redis hands out). d32a7cf's check loaded the pair with no
    passphrase: such a URL, good for redis-py, was refused by `check`, at start and at
    reload ("... make no client certificate ([SSL] PEM lib ...)"). A wrong password is
    still refused: redis-py fails every connect on it."""
    from cryptography.hazmat.primitives import serialization
    ca = CA(tmp_path)
    cert, key, _ = ca.issue("gateway", client=True)
    encrypted = tmp_path / "client-encrypted.key"
    encrypted.write_bytes(serialization.load_pem_private_key(key.read_bytes(), None)
                          .private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.BestAvailableEncryption(b"s3cret")))
    url = (f"rediss://127.0.0.1:9/0?ssl_ca_certs={ca.cert_path}&ssl_certfile={cert}&"
           f"ssl_keyfile={encrypted}&ssl_password=")
    said = {}
    for password in ("s3cret", "wrong"):
        said[password] = check_conf(tmp_path, gateway_conf(
            [route("r", ["/*rest"], "http://127.0.0.1:9")],
            redis={"url": url + password}))
    assert said["s3cret"][0] == 0, said["s3cret"][1]
    assert said["wrong"][0] == 2 and "make no client certificate" in said["wrong"][1], \
        said["wrong"][1]


# -- 4. the gateway's own tls files spoilt: the active checker takes no target out --------------

def test_a_checker_restarted_while_an_upstreams_ca_file_is_bad_takes_no_target_out(
        launcher, tmp_path):
    """d32a7cf: an upstream's tls files spoilt under a running gateway are the gateway's
    fault, no target's (passive checks and breakers no longer count them). A health checker
    (re)started meanwhile (killed, stuck, OOM) has no context read before to fall back on,
    and booked the file as every target's failed check: all taken out ("is now UNHEALTHY
    ([X509: NO_CERTIFICATE_OR_CRL_FOUND] ..."), the upstream in panic mode, and back only
    healthy_threshold checks after the file was put right. Now no verdict while the files
    cannot be loaded, said once."""
    up, bundle, good = tls_upstream_and_bundle(launcher, tmp_path)
    gw = launcher.gateway(gateway_conf(
        [{"id": "r", "paths": ["/r/*rest"], "strip_prefix": "/r", "upstream": "pool"}],
        upstreams={"pool": {"targets": [{"url": up.url}], "tls": {"ca_file": str(bundle)},
                            "health_check": FAST_CHECK}}))
    first = wait_until(lambda: gw.helper_pid("health"), timeout=5)
    bundle.write_text("not a certificate\n")
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: gw.helper_pid("health") not in (None, first), timeout=3)
    wait_until(lambda: "the upstream's tls files cannot be loaded" in gw.log() or
               "UNHEALTHY" in gw.log(), timeout=3)
    time.sleep(0.5)         # (unhealthy_threshold checks, and more)
    assert "UNHEALTHY" not in gw.log(), gw.log()[-2500:]
    assert target_health(gw)[up.url] == "healthy"
    bundle.write_bytes(good)
    assert gw.request("GET", "/r/echo")[0].status == 200
