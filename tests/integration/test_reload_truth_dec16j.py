"""Attack pass of 2026-12-16 (helper a34) on reloads and restarts that keep the truth for
this session's features: an etcd upstream put refused as unfit across a sync process's
restart, a start with etcd down and a fresh start; a breaker on a split's canary upstream
across a fresh start and a sync restart. One defect (its test failed before the fix): a
gateway started afresh while etcd held the unfit upstream fenced the route with a 503."""
import json
import os
import signal
import shutil
import time

from ..conftest import stop_process, wait_until
from ..etcd_sync import status_json
from .test_follow_live_dec16d import etcd_gateway, grpc_web_split, put, split_to, statuses
from .test_rollouts import control


def refused_unfit(launcher, tmp_path):
    """Route rpc (grpc_web) splits to g1 and g2, both h2; g2 then put without protocol h2,
    refused as unfit. -> (etcd, gateway)."""
    etcd, gw, v2 = grpc_web_split(launcher, tmp_path)
    put(etcd, "upstreams", "g2", {"targets": [{"url": v2.url}]})
    wait_until(lambda: "upstreams/g2" in status_json(gw).get("rejected", {}), timeout=5)
    return etcd, gw


def serves_rpc_as_before(gw, refused=("upstreams/g2",)):
    """Route rpc serves (its last good version), with g2's h2 version; ``refused`` only."""
    resp, body = gw.request("GET", "/rpc/x")
    assert b"configuration was refused" not in body, (resp.status, body)
    assert json.loads(gw.admin_get("/admin/upstreams/g2")[1])["protocol"] == "h2"
    rejected = status_json(gw)["rejected"]
    assert sorted(rejected) == sorted(refused), rejected


def test_a_sync_restart_keeps_an_unfit_upstream_refused(launcher, tmp_path):
    """The sync process killed and restarted by the master loads etcd afresh: g2's refused
    version and route rpc. The route must keep serving, g2 stay refused, by name."""
    etcd, gw = refused_unfit(launcher, tmp_path)
    serves_rpc_as_before(gw)
    sync = gw.helper_pid("config-sync")
    os.kill(sync, signal.SIGKILL)
    wait_until(lambda: gw.helper_pid("config-sync") not in (None, sync), timeout=10)
    wait_until(lambda: "upstreams/g2" in status_json(gw).get("rejected", {}) or
               "routes/rpc" in status_json(gw).get("rejected", {}), timeout=10)
    time.sleep(0.5)         # (the worker reads the generation)
    serves_rpc_as_before(gw)


def restarted(launcher, gw, tmp_path):
    """The gateway stopped and started afresh on its conf (a reboot: runtime_dir gone)."""
    stop_process(gw.proc)
    shutil.rmtree(tmp_path / "run", ignore_errors=True)
    return launcher.gateway(gw.conf)


def test_a_fresh_start_keeps_an_unfit_upstream_refused(launcher, tmp_path):
    """The gateway restarted afresh while etcd holds g2's refused version: the load put g2
    first (no route yet to refuse it), then route rpc, refused, and fenced: a 503 "its
    configuration was refused" for every request, and g2's refused version served, where
    the snapshot held the good one and every host that saw g2's put come served rpc."""
    etcd, gw = refused_unfit(launcher, tmp_path)
    time.sleep(1.5)         # (the snapshot is written once publications pause)
    gw = restarted(launcher, gw, tmp_path)
    wait_until(lambda: status_json(gw).get("rejected"), timeout=10)
    time.sleep(0.5)
    serves_rpc_as_before(gw)


def test_a_start_with_etcd_down_serves_the_snapshot_then_keeps_the_refusal(launcher,
                                                                             tmp_path):
    """The snapshot serves while etcd is down; etcd back, its load keeps g2 refused."""
    etcd, gw = refused_unfit(launcher, tmp_path)
    time.sleep(1.5)
    stop_process(gw.proc)
    shutil.rmtree(tmp_path / "run", ignore_errors=True)
    etcd.stop()
    gw = launcher.gateway(gw.conf)
    resp, body = gw.request("GET", "/rpc/x")
    assert b"configuration was refused" not in body, (resp.status, body)
    assert json.loads(gw.admin_get("/admin/upstreams/g2")[1])["protocol"] == "h2"
    launcher.etcd(data_dir=etcd.data_dir, ports=(etcd.client_port, etcd.peer_port))
    wait_until(lambda: status_json(gw).get("rejected"), timeout=10)
    time.sleep(0.5)
    serves_rpc_as_before(gw)


def test_a_canarys_breaker_guards_after_a_fresh_start_and_a_sync_restart(launcher, tmp_path):
    """A breaker on the canary's upstream object in etcd: after the gateway's fresh start
    (the table loaded anew) and the sync process's restart (the table taken up), each
    worker compiles the split route with it and it guards the canary's requests."""
    etcd, gw = etcd_gateway(launcher, tmp_path)
    v1, v2 = launcher.upstream("v1"), launcher.upstream("v2")
    put(etcd, "upstreams", "v1", {"targets": [{"url": v1.url}]})
    put(etcd, "upstreams", "v2", {"targets": [{"url": v2.url}], "plugins": {
        "breaker": {"min_requests": 3, "open_for": 30}}})
    put(etcd, "routes", "shop", split_to("shop", "v1", "v2"))
    wait_until(lambda: statuses(gw, "v1", 1) == [200], timeout=5)  # (v2's window empty)
    time.sleep(1.5)         # (the snapshot is written once publications pause)
    gw.conf["server"]["workers"] = 2
    gw = restarted(launcher, gw, tmp_path)
    wait_until(lambda: statuses(gw, "v1", 1) == [200], timeout=10)
    sync = gw.helper_pid("config-sync")
    os.kill(sync, signal.SIGKILL)
    wait_until(lambda: gw.helper_pid("config-sync") not in (None, sync), timeout=10)
    gw.every_worker_says("/admin/breakers", lambda view: "upstream:v2" in view["breakers"])
    control(v2, fail=1.0)
    assert statuses(gw, "v2", 5) == [500] * 3 + [503] * 2
    assert statuses(gw, "v1", 2) == [200] * 2
