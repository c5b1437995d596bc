"""Attack pass of 2026-12-16 (helper a36): reloads, restarts and the CLI tell the truth, with
real gateways, etcd, Redis and upstreams on 127.0.0.1.

Two defects, each test failed before its fix. With g2 refused by the gateway as unfit for
route rpc (docs/etcd.md), `gwserver routes validate` of rpc unchanged said "error" and
`upstreams validate` of g2 as etcd holds it "ok" (the CLI judged etcd's items afresh, g2 in
first); and a gateway started afresh while etcd held both g2's refused put and a refused
update of rpc fenced rpc with a 503 (g2's refused version went in before rpc's last good).
Two guards, no defect found: rollout.abandoned_after added, changed and taken off by SIGHUP
mid-rollout (counts, step and verdict kept), and a breaker's half-open probe in flight
across a SIGHUP (per host and in Redis: no second probe, its verdict closes the breaker)."""
import json
import threading
import time

import pytest

from ..conftest import gateway_conf, wait_until
from ..etcd_sync import PREFIX, gwcli, status_json
from .test_attack_pass_dec04e import reload_with
from .test_breaker import get, guarded
from .test_rollout_abandoned_dec16c import hung_canary, impatient
from .test_rollout_attack_dec05 import canary_keys
from .test_rollouts import rollout_of
from .test_follow_live_dec16d import put, split_to
from .test_reload_truth_dec16j import refused_unfit, restarted, serves_rpc_as_before

UNFIT = "upstream g2: a route that uses it cannot take it: route rpc: "
RPC = {"id": "rpc", **split_to("rpc", "g1", "g2", grpc_web=True)}


def cli_takes_rpc_and_refuses_g2(etcd, gw):
    """`routes validate` of rpc (as RPC) says ok, `upstreams validate` of g2 as etcd holds
    it says error, naming rpc: as the gateway judged them."""
    out = gwcli(gw.conf_path, "routes", "validate", "-", stdin=json.dumps(RPC))
    assert out.returncode == 0 and "ok: 1 routes valid" in out.stdout, (out.stdout, out.stderr)
    g2 = json.loads(etcd.client().get(f"{PREFIX}/upstreams/g2"))
    out = gwcli(gw.conf_path, "upstreams", "validate", "-", stdin=json.dumps({"id": "g2", **g2}))
    assert out.returncode == 2 and UNFIT in out.stderr, (out.stdout, out.stderr)


def test_validate_of_an_unchanged_route_agrees_with_the_gateway(launcher, tmp_path):
    """g2 refused as unfit for route rpc, which serves on with g2's previous version: `routes
    validate` of rpc as it is judged it against etcd's g2 and said "error", where the gateway
    serves it and takes a put of it; `upstreams validate` of g2 as etcd holds it said "ok",
    where the gateway refused it."""
    etcd, gw = refused_unfit(launcher, tmp_path)
    cli_takes_rpc_and_refuses_g2(etcd, gw)
    out = gwcli(gw.conf_path, "routes", "validate", "-", stdin=json.dumps({**RPC, "bogus": 1}))
    assert out.returncode == 2 and "bogus" in out.stderr, (out.stdout, out.stderr)
    out = gwcli(gw.conf_path, "routes", "put", "-", stdin=json.dumps(RPC))
    assert out.returncode == 0, (out.stdout, out.stderr)
    time.sleep(0.5)         # (the gateway takes the put; g2 is tried again, refused again)
    serves_rpc_as_before(gw)


def test_a_fresh_start_serves_a_route_whose_update_and_upstream_were_both_refused(
        launcher, tmp_path):
    """etcd holds g2 refused as unfit for rpc and a refused new version of rpc (a misspelt
    field); the gateway started afresh with its snapshot: rpc's last good version, with g2's
    last good version, must serve, both refusals named, as on the host that saw them come."""
    etcd, gw = refused_unfit(launcher, tmp_path)
    put(etcd, "routes", "rpc", {**split_to("rpc", "g1", "g2", grpc_web=True), "bogus": 1})
    time.sleep(1.5)         # (the snapshot is written once publications pause)
    assert sorted(status_json(gw)["rejected"]) == ["routes/rpc", "upstreams/g2"]
    gw = restarted(launcher, gw, tmp_path)
    time.sleep(1)
    resp, body = gw.request("GET", "/rpc/x")
    assert b"configuration was refused" not in body, (resp.status, body)
    assert json.loads(gw.admin_get("/admin/upstreams/g2")[1])["protocol"] == "h2"
    assert sorted(status_json(gw)["rejected"]) == ["routes/rpc", "upstreams/g2"]


def test_abandoned_after_set_changed_and_taken_off_by_sighup_mid_rollout(launcher, tmp_path):
    """A static route's rollout.abandoned_after added, changed and removed by SIGHUP while its
    canary hangs: each answer is counted by the version served when its client left, in the
    same step's window (abandoned_after is no part of the rollout's id: no restart), and the
    gates decide on those counts."""
    gw = hung_canary(launcher, tmp_path, abandoned_after=None)
    begun = rollout_of(gw)
    impatient(gw, canary_keys(2, 50), patience=0.8)     # not counted: none set

    def rollout(abandoned_after):
        def edit(conf):
            settings = conf["routes"][0]["plugins"]["split"]["rollout"]
            settings.pop("abandoned_after", None)
            if abandoned_after is not None:
                settings["abandoned_after"] = abandoned_after
        reload_with(gw, edit)
    rollout(0.3)
    impatient(gw, canary_keys(2, 50), patience=0.8)     # counted: 2 failures
    wait_until(lambda: (rollout_of(gw).get("canary") or {}).get("requests") == 2, timeout=5)
    rollout(5)
    impatient(gw, canary_keys(2, 50), patience=0.8)     # left sooner than 5 s: not counted
    rollout(None)
    impatient(gw, canary_keys(2, 50), patience=0.8)     # taken off: not counted
    time.sleep(1.2)         # (the helper's ticks sum what the workers counted)
    entry = rollout_of(gw)
    assert entry["status"] == "running" and entry["canary"]["requests"] == 2, entry
    assert (entry["id"], entry["run"], entry["step"]) == \
        (begun["id"], begun["run"], begun["step"]), (begun, entry)
    rollout(0.3)
    impatient(gw, canary_keys(2, 50), patience=0.8)     # 4 of min_requests 4: all failed
    wait_until(lambda: rollout_of(gw).get("status") == "rolled_back", timeout=10)
    assert rollout_of(gw)["run"] == begun["run"]


@pytest.mark.parametrize("store", ["redis", "per host"])
def test_a_half_open_probe_in_flight_across_a_sighup(launcher, upstream, store):
    """The breaker's one probe is on its way (a 3 s answer) when the gateway reloads: the new
    workers must refuse others while it is in flight (no second probe), and its verdict,
    recorded by the old worker as it drains, close the breaker for the new ones."""
    redis = {"redis": {"url": launcher.redis().url}} if store == "redis" else {}
    gw = launcher.gateway(gateway_conf([guarded(upstream, half_open_probes=1)], **redis))
    assert [get(gw, "/br/status/502")[0] for _ in range(4)] == [502] * 4
    time.sleep(0.45)                    # half-open: one probe
    probe, answered = [], time.monotonic() + 3     # (the upstream's answer, at the soonest)
    thread = threading.Thread(target=lambda: probe.append(get(gw, "/br/slow/3")[0]))
    thread.start()
    time.sleep(0.2)
    reload_with(gw, lambda conf: conf["server"].update(workers=2))
    refused = 0
    try:
        while time.monotonic() < answered - 0.2:
            status, _, body = get(gw, "/br/echo")
            assert status == 503 and b"half_open" in body, (status, body, probe)
            refused += 1
    finally:
        thread.join(10)
    assert probe == [200] and refused > 1, (probe, refused)
    time.sleep(0.1)
    assert [get(gw, "/br/echo")[0] for _ in range(4)] == [200] * 4
    view = json.loads(gw.admin_get("/admin/breakers")[1])["breakers"]["route:br"]
    assert view["state"] == "closed", view
