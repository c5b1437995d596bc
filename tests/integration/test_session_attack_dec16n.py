"""Attack pass of 2026-12-16 (helper a37) on this session's changes, with real gateways,
etcd and upstreams on 127.0.0.1.

One defect, its test failed before the fix: with upstream g2 refused by the gateway as unfit
for route rpc and a refused update of rpc in etcd too (rpc serves its last good version, g2
its previous one), `gwserver routes validate` of rpc's fix said "error" (unfit for g2) where
the gateway takes it: the CLI put the gateway's version of g2 back (keep_unfit), but not
rpc's, so etcd's g2 went in again with no route there to refuse it.
Guards, no defect found: a sync-process restart and `upstreams put` of a fixed g2 with both
refusals in etcd; a fresh start with several refusals of routes and upstreams at once
(keep_last_good's two passes); upstream_ms over HTTP/2 of a stream refused and sent on to
another target (from the stream's open: that target's time alone)."""
import json
import os
import signal
import time

from ..etcd_sync import PREFIX, gwcli, status_json
from ..conftest import gateway_conf, wait_until
from ..h2_upstreams import ScriptedH2Upstream
from .test_follow_live_dec16d import put, split_to
from .test_reload_cli_dec16l import cli_takes_rpc_and_refuses_g2
from .test_reload_truth_dec16j import refused_unfit, restarted, serves_rpc_as_before

RPC = {"id": "rpc", **split_to("rpc", "g1", "g2", grpc_web=True)}


def test_validate_agrees_with_the_gateway_when_the_route_update_was_refused_too(
        launcher, tmp_path):
    """g2 refused as unfit for rpc, then rpc's update refused (a misspelt field): the gateway
    serves rpc's last good version with g2's previous one. The fix of rpc must validate ok
    and be taken; g2 as etcd holds it must still be an error."""
    etcd, gw = both_refused(launcher, tmp_path)
    cli_takes_rpc_and_refuses_g2(etcd, gw)
    out = gwcli(gw.conf_path, "routes", "put", "-", stdin=json.dumps(RPC))
    assert out.returncode == 0, (out.stdout, out.stderr)
    wait_until(lambda: "routes/rpc" not in status_json(gw).get("rejected", {}), timeout=5)
    time.sleep(0.3)         # (the worker reads the generation)
    serves_rpc_as_before(gw)


def both_refused(launcher, tmp_path):
    """g2 refused as unfit for rpc, then rpc's own update refused (a misspelt field)."""
    etcd, gw = refused_unfit(launcher, tmp_path)
    put(etcd, "routes", "rpc", {**split_to("rpc", "g1", "g2", grpc_web=True), "bogus": 1})
    wait_until(lambda: "routes/rpc" in status_json(gw).get("rejected", {}), timeout=5)
    return etcd, gw


def serves_rpc_last_good(gw):
    serves_rpc_as_before(gw, refused=("routes/rpc", "upstreams/g2"))


def test_a_sync_restart_with_both_refused_keeps_the_route_serving(launcher, tmp_path):
    """The sync process killed and restarted by the master loads etcd afresh while it holds
    both refusals: rpc's last good version must serve on with g2's."""
    etcd, gw = both_refused(launcher, tmp_path)
    serves_rpc_last_good(gw)
    sync = gw.helper_pid("config-sync")
    os.kill(sync, signal.SIGKILL)
    wait_until(lambda: gw.helper_pid("config-sync") not in (None, sync), timeout=10)
    wait_until(lambda: status_json(gw).get("pid") not in (None, sync), timeout=10)
    time.sleep(0.5)         # (the worker reads the generation)
    serves_rpc_last_good(gw)


def test_a_fixed_g2_put_is_taken_with_both_refused(launcher, tmp_path):
    """`upstreams put` of g2 fixed (h2 kept, its target's weight changed) must be accepted by
    the CLI and the gateway alike; rpc's bad update stays refused."""
    etcd, gw = both_refused(launcher, tmp_path)
    g2 = json.loads(etcd.client().get(f"{PREFIX}/upstreams/g2"))
    fixed = {"id": "g2", **g2, "protocol": "h2"}
    out = gwcli(gw.conf_path, "upstreams", "put", "-", stdin=json.dumps(fixed))
    assert out.returncode == 0, (out.stdout, out.stderr)
    wait_until(lambda: "upstreams/g2" not in status_json(gw).get("rejected", {}), timeout=5)
    time.sleep(0.3)
    resp, body = gw.request("GET", "/rpc/x")
    assert b"configuration was refused" not in body, (resp.status, body)
    assert sorted(status_json(gw)["rejected"]) == ["routes/rpc"]


def test_a_fresh_start_with_several_refusals_of_each_kind(launcher, tmp_path):
    """etcd holds g1 and g2 both refused as unfit for rpc, rpc's own bad update, and a bad
    update of route other and of its upstream g3 (their own faults): a gateway started
    afresh must serve every last good version (rpc over h2, other through g3), and name
    the five refusals, as the host that saw them come does."""
    etcd, gw = refused_unfit(launcher, tmp_path)
    v3 = launcher.upstream("v3")
    put(etcd, "upstreams", "g3", {"targets": [{"url": v3.url}]})
    put(etcd, "routes", "other", {"paths": ["/other/*rest"], "upstream": "g3"})
    wait_until(lambda: gw.admin_get("/admin/routes/other")[0] == 200, timeout=5)
    put(etcd, "upstreams", "g1", {"targets": json.loads(
        etcd.client().get(f"{PREFIX}/upstreams/g1"))["targets"]})
    put(etcd, "routes", "rpc", {**split_to("rpc", "g1", "g2", grpc_web=True), "bogus": 1})
    put(etcd, "upstreams", "g3", {"targets": "nowhere"})
    put(etcd, "routes", "other", {"paths": ["/other/*rest"], "upstream": "g3", "bogus": 1})
    refusals = ["routes/other", "routes/rpc", "upstreams/g1", "upstreams/g2", "upstreams/g3"]
    wait_until(lambda: sorted(status_json(gw).get("rejected", {})) == refusals, timeout=5)
    time.sleep(1.5)         # (the snapshot is written once publications pause)
    gw = restarted(launcher, gw, tmp_path)
    wait_until(lambda: sorted(status_json(gw).get("rejected", {})) == refusals, timeout=10)
    time.sleep(0.5)
    resp, body = gw.request("GET", "/rpc/x")
    assert b"configuration was refused" not in body, (resp.status, body)
    for upstream_id in ("g1", "g2"):
        assert json.loads(gw.admin_get(f"/admin/upstreams/{upstream_id}")[1])["protocol"] \
            == "h2", upstream_id
    resp, body = gw.request("GET", "/other/echo")
    assert resp.status == 200, (resp.status, body)


def test_upstream_ms_of_a_refused_stream_retried_on_another_target(launcher):
    """Over HTTP/2 upstream_ms starts at the stream's open (this session): a try refused
    (REFUSED_STREAM, on the connection and again on a new one) and sent on to the other
    target counts that target's time alone, never negative nor the client's."""
    refusing = ScriptedH2Upstream("no", "refuse")
    slow = ScriptedH2Upstream("up", "slow", delay=0.4)
    try:
        gw = launcher.gateway(gateway_conf([
            {"id": "h2", "paths": ["/*rest"], "upstream": {
                "targets": [{"url": f"http://127.0.0.1:{refusing.port}"},
                            {"url": f"http://127.0.0.1:{slow.port}"}],
                "protocol": "h2", "retry": {"on": ["connect"], "attempts": 2}}}]))
        for n in range(4):
            resp, body = gw.request("GET", f"/q{n}", timeout=5)
            assert resp.status == 200 and body == b"up got 0", (resp.status, body)
        assert refusing.requests >= 1
        wait_until(lambda: len(gw.access_lines()) >= 4, timeout=5)
        for line in gw.access_lines():
            assert 350 < line["upstream_ms"] < 800 and line["upstream_ms"] <= \
                line["duration_ms"], line
    finally:
        refusing.close()
        slow.close()
