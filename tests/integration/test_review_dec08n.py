"""Review dec08n of ea4e430, 75a5d50 and 44c6ed5, against real gateways, etcd, upstreams
and helpers on loopback. Each test was seen failing before its fix."""
import json
import os
import signal
import time

import pytest

from ..conftest import free_port, wait_until
from ..pki import CA
from .test_etcd import UP, all_workers_at, etcd_conf, put, serves, status_of


@pytest.fixture
def etcd(launcher):
    return launcher.etcd()


# -- 1. config-sync restarted while a static upstream's ca_file is bad -----------------------

def test_a_sync_process_restarted_while_a_static_upstreams_ca_file_is_bad_runs(
        launcher, etcd, upstream, tmp_path):
    """44c6ed5 let every helper but config-sync boot past the conf's tls files (the master
    checked them): config-sync parsed the master's copy loading its static upstreams' files,
    and one restarted (killed, stuck, a reload's new [etcd]) while a ca_file was bad (`cp`
    half-way) died at every restart: no etcd change applied until the file was fixed. It
    loads the files of what etcd sends, not the conf's."""
    ca = CA(tmp_path)
    cert, key, _ = ca.issue("upstream")
    up = launcher.upstream("tls", tls=(str(cert), str(key)))
    bundle = tmp_path / "upstream-ca.pem"
    bundle.write_bytes(ca.cert_path.read_bytes())
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], routes=[
        {"id": "s", "paths": ["/s/*rest"], "strip_prefix": "/s",
         "upstream": {"targets": [{"url": up.url}], "tls": {"ca_file": str(bundle)}}}],
        workers=1))
    first = wait_until(lambda: gw.helper_pid("config-sync"), timeout=5)
    bundle.write_bytes(b"")             # caught between cp's truncate and its write
    os.kill(first, signal.SIGKILL)
    again = wait_until(lambda: gw.helper_pid("config-sync") not in (None, first) and
                       gw.helper_pid("config-sync"), timeout=5)
    # it runs on, and applies what etcd says (it died before: no route from etcd served)
    put(etcd.client(), "upstreams", "up", UP(upstream))
    revision = put(etcd.client(), "routes", "e", {"paths": ["/e/*rest"], "strip_prefix": "/e",
                                                  "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, revision), timeout=4)
    assert serves(gw, "/e/echo") == 200
    assert gw.helper_pid("config-sync") == again, gw.log()[-2500:]
    assert "ca_file" not in gw.log(), gw.log()[-2500:]
    # what etcd sends naming that file is still loaded, and refused
    revision = put(etcd.client(), "upstreams", "bad",
                   {"targets": [{"url": up.url}], "tls": {"ca_file": str(bundle)}})
    wait_until(lambda: all_workers_at(gw, revision), timeout=4)
    assert f"rejected /gw/upstreams/bad: upstream bad: tls.ca_file: {bundle} is empty" in \
        gw.log(), gw.log()[-2500:]


# -- 2. helpers restarted while [etcd]'s ca_file is bad ------------------------------------

def test_a_health_checker_restarted_while_the_etcd_ca_file_is_bad_runs(launcher, etcd,
                                                                      upstream, tmp_path):
    """44c6ed5 let the helpers boot past a rediss:// URL's tls files (the master checked
    them), not past [etcd]'s: a health checker (or rollouts, ocsp, config-sync) restarted
    while etcd's ca_file was caught half-written by `cp` died at every restart ("etcd.ca_file:
    ... is empty"), no target checked, though it never talks to etcd."""
    ca = CA(tmp_path)
    bundle = tmp_path / "etcd-ca.pem"
    bundle.write_bytes(ca.cert_path.read_bytes())
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], routes=[
        {"id": "s", "paths": ["/s/*rest"], "strip_prefix": "/s",
         "upstream": {"targets": [{"url": upstream.url}],
                      "health_check": {"interval": 0.1, "path": "/echo"}}}],
        workers=1, ca_file=str(bundle)))
    first = wait_until(lambda: gw.helper_pid("health"), timeout=5)
    bundle.write_bytes(b"")             # caught between cp's truncate and its write
    os.kill(first, signal.SIGKILL)
    again = wait_until(lambda: gw.helper_pid("health") not in (None, first) and
                       gw.helper_pid("health"), timeout=4)
    verdicts = os.path.join(gw.conf["server"]["state_dir"], "health.json")
    # the new checker runs, and publishes its verdicts
    wait_until(lambda: os.path.exists(verdicts) and
               json.loads(open(verdicts).read()).get("pid") == again, timeout=3)
    assert "etcd.ca_file" not in gw.log(), gw.log()[-2500:]


# -- 3. [etcd]'s ca_file gone under a running sync process --------------------------------

def test_a_sync_process_whose_etcd_ca_file_is_gone_retries_not_dies(launcher, tmp_path):
    """With the helpers booting past [etcd]'s files (the master checked them), a call to
    etcd that cannot load them must fail as a call, retried: requests raises a bare OSError
    ("Could not find a suitable TLS CA certificate bundle") for a ca_file gone a moment
    (`rm` then `cp`, a rotation tool), no RequestException, and it left the sync process
    with a traceback, restarted and dying again at each call until the file was back."""
    ca = CA(tmp_path)
    bundle = tmp_path / "etcd-ca.pem"
    bundle.write_bytes(ca.cert_path.read_bytes())
    gw = launcher.gateway(etcd_conf(tmp_path, [f"https://127.0.0.1:{free_port()}"],
                                    workers=1, ca_file=str(bundle)))
    first = wait_until(lambda: gw.helper_pid("config-sync"), timeout=5)
    bundle.unlink()
    # (backoff_max 0.5 s: a few calls to etcd, each failing on it, said in status.json)
    wait_until(lambda: "Could not find a suitable TLS CA certificate bundle" in
               str((status_of(gw) or {}).get("error")), timeout=3)
    time.sleep(0.5)
    assert gw.helper_pid("config-sync") == first, gw.log()[-2500:]
    assert "Traceback" not in gw.log(), gw.log()[-2500:]
