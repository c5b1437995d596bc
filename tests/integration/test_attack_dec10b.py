"""Attack dec10b: state that grows without bound in a long-running gateway (routes, upstreams
and targets that come and go through etcd), against real gateways, etcd and upstreams on
loopback. Each test was seen failing before its fix."""
import fcntl
import os

import pytest

from ..conftest import wait_until
from .test_attack_dec09p import breaker_routes, delete_routes
from .test_etcd import UP, all_workers_at, etcd_conf, put

ROUTES = 120


@pytest.fixture
def etcd(launcher):
    return launcher.etcd()


def state_files(gw):
    directory = os.path.join(gw.conf["server"]["state_dir"], "states")
    return set(os.listdir(directory)) if os.path.isdir(directory) else set()


def state_file(gw, name):
    from gwserver.state.store import state_file_name
    return os.path.join(gw.conf["server"]["state_dir"], "states", state_file_name(name))


def test_breaker_files_of_routes_gone_through_etcd_are_removed_unless_in_use(
        launcher, etcd, upstream, tmp_path):
    """Without [redis] each breaker keeps its state in a file of state_dir/states/. Routes
    created and removed through etcd (a preview environment per pull request) each left
    their file there for good: ROUTES routes, ROUTES files, for months. The last worker to let
    one go removes it; one another process still has open (a worker whose table has not
    changed yet, one draining after a reload) stays; a route that comes back starts over."""
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], workers=2))
    client = etcd.client()
    put(client, "upstreams", "up", UP(upstream))
    revision = breaker_routes(client, "keep", 1)
    wait_until(lambda: all_workers_at(gw, revision))
    for _ in range(4):
        assert gw.request("GET", "/keep0")[0].status == 200
    kept = state_file(gw, "br:route:keep0")
    assert os.path.exists(kept)

    revision = breaker_routes(client, "pr", ROUTES)
    wait_until(lambda: all_workers_at(gw, revision))
    for i in range(ROUTES):
        assert gw.request("GET", f"/pr{i}")[0].status == 200
    assert len(state_files(gw)) >= ROUTES + 1

    # another process has one of them open (as a worker of the table before does): it stays
    held = os.open(state_file(gw, "br:route:pr7"), os.O_RDWR)
    try:
        fcntl.lockf(held, fcntl.LOCK_SH)
        revision = delete_routes(client, "pr")
        wait_until(lambda: all_workers_at(gw, revision))
        for _ in range(4):
            assert gw.request("GET", "/keep0")[0].status == 200     # ticks: tables pruned
        # before the fix: ROUTES + 1 files, for good
        wait_until(lambda: len(state_files(gw)) <= 2, timeout=5)
        assert os.path.exists(kept) and os.path.exists(state_file(gw, "br:route:pr7"))
    finally:
        os.close(held)

    # a route that comes back has a breaker again (a new file)
    revision = breaker_routes(client, "pr", 1)
    wait_until(lambda: all_workers_at(gw, revision))
    for _ in range(4):
        assert gw.request("GET", "/pr0")[0].status == 200
    assert os.path.exists(state_file(gw, "br:route:pr0"))
    assert gw.request("GET", "/keep0")[0].status == 200


def test_a_reload_that_removes_a_route_leaves_no_breaker_file(launcher, upstream):
    """A reload that removes a route with a breaker: the worker that held its file exited
    with it, the new ones never opened it, and nobody removed it (one more file for good per
    route removed so, or per worker replaced after its route left). A worker sweeps the
    files of routes not in its table that no process has open; those of its table stay."""
    from ..conftest import gateway_conf
    from .test_rollout_attack_dec05 import reload
    breaker = {"breaker": {}}
    gw = launcher.gateway(gateway_conf(
        [{"id": "gone", "paths": ["/gone"], "upstream": "up", "plugins": breaker},
         {"id": "stays", "paths": ["/stays"], "upstream": "up", "plugins": breaker}],
        upstreams={"up": {"targets": [{"url": upstream.url}]}}))
    for path in ("/gone", "/stays", "/gone", "/stays"):
        assert gw.request("GET", path)[0].status == 200
    gone, stays = state_file(gw, "br:route:gone"), state_file(gw, "br:route:stays")
    assert os.path.exists(gone) and os.path.exists(stays)
    reload(gw, lambda conf: conf["routes"].pop(0))
    assert gw.request("GET", "/gone")[0].status == 404
    # before the fix: there for good
    wait_until(lambda: not os.path.exists(gone), timeout=8)
    assert os.path.exists(stays) and gw.request("GET", "/stays")[0].status == 200


def test_a_breaker_file_removed_by_hand_is_made_again_and_shared(launcher, etcd, upstream,
                                                                 tmp_path):
    """A breaker's file removed under running workers (a tmp cleaner, an operator's rm): each
    worker went on writing the unlinked file it had open, a worker started later made a new
    one, and the workers no longer shared the breaker (nor could anyone see its state). The
    file is made again at its next use."""
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], workers=1))
    client = etcd.client()
    put(client, "upstreams", "up", UP(upstream))
    revision = breaker_routes(client, "b", 1)
    wait_until(lambda: all_workers_at(gw, revision))
    assert gw.request("GET", "/b0")[0].status == 200
    path = state_file(gw, "br:route:b0")
    assert os.path.exists(path)
    os.unlink(path)
    assert gw.request("GET", "/b0")[0].status == 200
    assert os.path.exists(path)         # before the fix: gone for the worker's life
    assert os.path.getsize(path) > 0    # the breaker's state, written there


def test_the_next_rollout_of_a_route_is_logged_from_its_start(launcher, tmp_path):
    """The rollouts helper remembered, per route, the epoch of the last transition it logged,
    and logged only later epochs. Each rollout (and each run of one) starts at epoch 1 again:
    the next rollout of a route (a new canary version, other steps) was not logged at all
    until it passed the last one's epoch, its rollback included. It is logged from its start."""
    from .test_rollout_attack_dec05 import reload
    from .test_rollouts import cli, rollout_conf, rollout_of
    v1, v2 = launcher.upstream("v1"), launcher.upstream("v2")
    gw = launcher.gateway(rollout_conf(tmp_path, v1, v2, workers=1, interval=30))
    wait_until(lambda: rollout_of(gw).get("step") == 0, timeout=20)
    wait_until(lambda: "rollout shop: running at step 1 of 4" in gw.log(), timeout=5)
    assert cli(gw, "promote", "shop").returncode == 0
    wait_until(lambda: "rollout shop: promote to step 4" in gw.log(), timeout=5)
    first_id = rollout_of(gw)["id"]

    def other_steps(conf):
        conf["routes"][0]["plugins"]["split"]["rollout"]["steps"] = [10, 50, 100]
    reload(gw, other_steps)
    wait_until(lambda: rollout_of(gw).get("id") not in (None, first_id), timeout=10)
    # before the fix: nothing of the new rollout in the log (epochs 1 and 2, not past 2)
    wait_until(lambda: "rollout shop: running at step 1 of 3" in gw.log(), timeout=5)
    assert cli(gw, "promote", "shop").returncode == 0
    wait_until(lambda: "rollout shop: promote to step 3" in gw.log(), timeout=5)


def test_a_target_that_comes_back_starts_its_passive_count_over(launcher, etcd, tmp_path):
    """Passive checks count each target's failures in a row, per worker, until a success or
    an ejection. A target removed mid-count (an instance that failed as it went away) kept
    its count for the worker's life, one entry per instance ever gone; and a new instance at
    the same address (a pod's IP:port reused) inherited it: ejected at its first failure,
    with consecutive_failures = 2. Counts of targets that left the table are dropped."""
    a, b = launcher.upstream("a"), launcher.upstream("b")
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], workers=1))
    client = etcd.client()
    passive = {"consecutive_failures": 2, "max_ejected_percent": 100, "eject_for": 30}
    put(client, "upstreams", "up", {"targets": [{"url": a.url}], "passive": passive})
    revision = put(client, "routes", "p", {"paths": ["/p/*rest"], "strip_prefix": "/p",
                                           "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, revision))
    assert gw.request("GET", "/p/status/503")[0].status == 503      # a's first failure

    revision = put(client, "upstreams", "up", {"targets": [{"url": b.url}], "passive": passive})
    wait_until(lambda: all_workers_at(gw, revision))
    wait_until(lambda: gw.request("GET", "/p/echo")[0].status == 200 and
               f"closed the pools of 1 removed targets: {a.url}" in gw.log(), timeout=5)
    revision = put(client, "upstreams", "up", {"targets": [{"url": a.url}], "passive": passive})
    wait_until(lambda: all_workers_at(gw, revision))

    assert gw.request("GET", "/p/status/503")[0].status == 503      # its first failure again
    assert gw.request("GET", "/elsewhere")[0].status == 404     # (no target: counts nothing)
    assert "ejected" not in gw.log()        # before the fix: ejected at that first failure
    assert gw.request("GET", "/p/status/503")[0].status == 503      # two in a row: ejected
    wait_until(lambda: f"ejected {a.url} for 30s after 2 failures in a row" in gw.log(),
               timeout=5)
