"""Attack pass of 2026-12-05 (helper f) on self-driving canaries: split, the rollouts helper,
its CLI, against real processes. Each test failed on 6a6bf16.

1. A broken canary behind a breaker was never rolled back. With `breaker = {scope =
   "upstream"}` beside the split (one breaker per upstream the split chose), a canary that
   fails every request trips its breaker after the breaker's `min_requests` (20 by
   default); from then on the breaker answers the canary's share 503 itself, which split's
   finish did not count (an answer the gateway made). The canary's window stayed under the
   rollout's `min_requests` (100 by default) for ever: no gate could fail, the rollout held
   "running" and its share of clients got 503 until an operator looked. A refusal of an open
   breaker keyed on the canary's upstream is that upstream's failure, and counts as one.
2. A step was promoted without its soak when the step's start was written by a clock that is
   behind. `gwserver rollouts resume` run on an operator's host whose clock is 10 minutes
   behind stored the new step's `since` 10 minutes in the past; the writer judged the
   interval (`now - since`) as long over and promoted the canary as soon as `min_requests`
   answers came, a second after the resume, never holding the step its `interval`. (Any
   writer behind the others did the same when leadership moved.) The controller now also
   times each step on its own monotonic clock from when it first saw that step, and holds
   the step until both say the interval is over.
3. A restarted helper forgot the counts of workers a reload had replaced. Their count files
   stay while their window is current; a helper killed -9 and restarted by the master knew
   no current window at its first tick and deleted every such file over a minute old: the
   step's failures were forgotten. Its first tick deletes none now.
4. A latency gate was judged on counts that never measured its bound. Workers count the
   answers slower than their own gates' bounds only; summed with counts from a host whose
   conf still had the old gate (or a reload's replaced workers), the new bound's count was
   divided by every answer: 2 slow of 42 held p90 <= 0.25 s for a canary answering in
   0.5 s. A bound only some counts measured is not counted in their sum; the gate falls
   back to the histogram, as for a window from before the gate.
5. A rollout sent anonymous clients to a partner-only group. With every baseline weight 0,
   the baseline groups share the rest 1 each, a group only a consumer (or claim) rule leads
   to among them, which split otherwise keeps closed (X-AB-Group cannot name it): half of
   every anonymous client's baseline traffic went there. Such a group stays at 0 now, and a
   rollout with no other baseline is refused.

Pure code, tests/unit/test_rollout.py: steps below 0.01 % rounded to no share of the hash
space, "running" at a step that sent nobody (refused now).

Held up: a canary that hangs while its clients give up (the gateway waits for the answer,
and counts its time); pause and resume from the CLI mid-step (test 2).
"""
import time

from ..conftest import gateway_conf, wait_until
from .test_rollouts import Load, cli, control, rollout_of, STEPS


def split_conf(**rollout):
    return {"upstreams": [{"upstream": "v1", "weight": 1},
                          {"upstream": "v2", "weight": 1, "group": "canary"}],
            "key": "header:X-User",
            "rollout": {"steps": STEPS, "interval": 1.5, "min_requests": 20,
                        "gates": [{"kind": "success_rate", "min": 95}], **rollout}}


def shop_conf(v1, v2, plugins, workers=1, **sections):
    sections.setdefault("upstreams", {"v1": {"targets": [{"url": v1.url}]},
                                      "v2": {"targets": [{"url": v2.url}]}})
    return gateway_conf([{"id": "shop", "paths": ["/shop/*rest"], "strip_prefix": "/shop",
                          "upstream": "v1", "plugins": plugins}], workers=workers, **sections)


# -- 1. a breaker open on the canary hides its failures from the gates ----------------------

def test_broken_canary_behind_a_breaker_is_rolled_back(launcher):
    """The canary answers every /echo 500. Its breaker (scope upstream, min_requests 5)
    opens after 5 of them; the rollout needs 20 canary answers. Before the fix the breaker's
    503s were not counted and the rollout stayed at step 1 while 10 % of the clients got
    503; now the refusals count as the canary's failures and it is rolled back."""
    v1, v2 = launcher.upstream("v1"), launcher.upstream("v2")
    control(v2, fail=1.0)
    breaker = {"scope": "upstream", "min_requests": 5, "error_rate": 0.5, "window": 30,
               "open_for": 30}
    gw = launcher.gateway(shop_conf(v1, v2, {"split": split_conf(interval=30),
                                             "breaker": breaker}))
    wait_until(lambda: rollout_of(gw).get("step") == 0, timeout=20)
    load = Load([gw], clients=100, pause=0.004)
    try:
        wait_until(lambda: rollout_of(gw).get("status") != "running" or
                   load.failed_since(0) > 150, timeout=30)
        time.sleep(2.0)         # counts reach the helper, which judges the window
    finally:
        load.stop()
    entry = rollout_of(gw)
    refused = sum(1 for _, _, status, _ in load.seen if status == 503)
    assert refused >= 10, refused           # the breaker did answer for the canary
    assert entry["status"] == "rolled_back", (entry["status"], entry["canary"])
    assert "success_rate" in entry["history"][-1]["reason"], entry["history"][-1]


# -- 2. a step begun by a clock that is behind is promoted without its soak -----------------

BEHIND = """import sys, time
real = time.time
time.time = lambda: real() - 600        # this host's clock: 10 minutes behind
from gwserver.cli import main
sys.exit(main(sys.argv[1:]))"""


def test_a_resume_from_a_clock_behind_still_holds_the_step_its_interval(launcher, tmp_path):
    """Interval 20 s. An operator pauses the rollout, then resumes it from a host whose
    clock is 10 minutes behind: the resumed step's `since` is 10 minutes old. Before the fix
    the canary was promoted to step 2 as soon as 20 answers came (a second or two); now the
    step is held its 20 s."""
    import subprocess
    import sys
    from ..conftest import ROOT
    v1, v2 = launcher.upstream("v1"), launcher.upstream("v2")
    gw = launcher.gateway(shop_conf(v1, v2, {"split": split_conf(interval=20)}))
    wait_until(lambda: rollout_of(gw).get("step") == 0, timeout=20)
    assert cli(gw, "pause", "shop").returncode == 0
    wait_until(lambda: rollout_of(gw).get("status") == "paused", timeout=10)
    resumed = subprocess.run([sys.executable, "-c", BEHIND, "rollouts", "resume", "shop",
                              "-c", str(gw.conf_path)], capture_output=True, text=True,
                             cwd=ROOT, timeout=30)
    assert resumed.returncode == 0, resumed.stderr
    load = Load([gw], clients=100, pause=0.004)
    try:
        wait_until(lambda: rollout_of(gw).get("canary", {}).get("requests", 0) >= 40,
                   timeout=20)
        time.sleep(2.0)         # a promotion, if any, has been decided by now
    finally:
        load.stop()
    entry = rollout_of(gw)
    assert (entry["status"], entry["step"]) == ("running", 0), entry["history"][-1]



# -- 3. a restarted helper forgets the counts of workers a reload replaced ------------------

def test_a_restarted_helper_keeps_the_counts_of_replaced_workers(launcher, tmp_path):
    """A reload replaced every worker; their count files stay while their window is current
    (host_totals), however old. The helper, killed -9 and restarted by the master, knew no
    current window at its first tick and deleted every such file older than a minute: the
    step's failures were forgotten, and the window started over on the new workers'
    successes. (The minute is simulated by aging the files' mtime.)"""
    import os
    import signal
    from .test_rollout_attack_dec05 import reload, worker_pids
    v1, v2 = launcher.upstream("v1"), launcher.upstream("v2")
    control(v2, fail=1.0)
    gw = launcher.gateway(shop_conf(v1, v2, {"split": split_conf(interval=300,
                                                                 min_requests=1000)}))
    wait_until(lambda: rollout_of(gw).get("step") == 0, timeout=20)
    load = Load([gw], clients=50, pause=0.01)
    wait_until(lambda: rollout_of(gw).get("canary", {}).get("failures", 0) >= 10, timeout=20)
    load.stop()
    time.sleep(1.5)             # the last counts reach the helper
    failed = rollout_of(gw)["canary"]["failures"]
    old = worker_pids(gw)
    reload(gw, lambda c: None)
    wait_until(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in old), timeout=20)
    obs = os.path.join(gw.conf["server"]["state_dir"], "rollout-obs")
    aged = time.time() - 120
    for pid in old:
        os.utime(os.path.join(obs, f"{pid}.json"), (aged, aged))
    helper = gw.helper_pid("rollouts")
    os.kill(helper, signal.SIGKILL)
    wait_until(lambda: gw.helper_pid("rollouts") not in (None, helper), timeout=20)
    time.sleep(2.0)             # its first ticks
    assert all(os.path.exists(os.path.join(obs, f"{pid}.json")) for pid in old)
    entry = rollout_of(gw)
    assert entry["canary"]["failures"] == failed, (entry["canary"], failed)



# -- 4. a latency gate judged on counts that never measured its bound -----------------------

def test_a_latency_gate_is_not_diluted_by_counts_that_did_not_measure_it(launcher):
    """Two gateways share Redis, mid-way through a conf change: the writer (A) has the gate
    p90 <= 0.25 s, B still the old p90 <= 1.0 s (so did a host's replaced workers after a
    reload, whose counts stay in the window). Workers count answers slower than their own
    gates' bounds only. The canary answers in 0.5 s: 2 answers through A (both slower than
    0.25), then 40 through B (which counted slower than 1.0: none). Summed, 2 slow of 42 were
    5 %, and p90 <= 0.25 held for a canary whose every answer took 0.5 s. A bound some counts
    lack is not counted now: the gate is judged on the histogram, as for a window from before
    the gate, and fails."""
    from .test_rollout_attack_dec05 import canary_keys, in_threads

    def gates(limit):
        return [{"kind": "latency", "percentile": 90, "max": limit}]

    def asker(gw):
        def ask(key, out):
            import http.client
            conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
            conn.request("GET", "/shop/echo", headers={"X-User": key})
            out.append(conn.getresponse().status)
            conn.close()
        return ask
    redis = launcher.redis()
    v1, v2 = launcher.upstream("v1"), launcher.upstream("v2")
    control(v2, delay=0.5)
    writer = launcher.gateway(shop_conf(v1, v2, {"split": split_conf(
        interval=300, min_requests=30, gates=gates(0.25))}, redis={"url": redis.url}))
    wait_until(lambda: rollout_of(writer).get("step") == 0, timeout=20)
    other = launcher.gateway(shop_conf(v1, v2, {"split": split_conf(
        interval=300, min_requests=30, gates=gates(1.0))}, redis={"url": redis.url}))
    wait_until(lambda: rollout_of(other).get("step") == 0, timeout=20)
    keys = canary_keys(42, 10)
    assert in_threads(asker(writer), keys[:2]) == [200] * 2
    wait_until(lambda: rollout_of(writer)["canary"]["requests"] == 2, timeout=10)
    assert in_threads(asker(other), keys[2:]) == [200] * 40
    wait_until(lambda: rollout_of(writer)["canary"]["requests"] == 42 or
               rollout_of(writer)["status"] != "running", timeout=10)
    time.sleep(1.0)
    entry = rollout_of(writer)
    assert entry["status"] == "rolled_back", (entry["status"], entry["gates"])
    assert "latency_p90" in entry["history"][-1]["reason"], entry["history"][-1]


# -- 5. a rollout sends anyone to a staff-only group --------------------------------------

def test_a_rollout_sends_nobody_to_a_group_only_a_claim_rule_reaches(launcher):
    """Weights v1 0, staff 0, canary 1; `staff` is reached only by a rule on the consumer's
    id (a partner-only backend, which the client's X-AB-Group cannot name either). Under a
    rollout, baseline groups that all weigh 0 share the rest 1 each, staff among them: half
    of every anonymous client's baseline traffic went to the partner-only backend."""
    v1, v2, staff = (launcher.upstream(n) for n in ("v1", "v2", "staff"))
    split = split_conf(interval=300)
    split["upstreams"] = [{"upstream": "v1", "weight": 0}, {"upstream": "staff", "weight": 0},
                          {"upstream": "v2", "weight": 1, "group": "canary"}]
    split["rules"] = [{"header": {"X-Consumer-ID": "partner"}, "upstream": "staff"}]
    upstreams = {n: {"targets": [{"url": u.url}]} for n, u in
                 (("v1", v1), ("v2", v2), ("staff", staff))}
    gw = launcher.gateway(shop_conf(v1, v2, {"split": split}, upstreams=upstreams))
    wait_until(lambda: rollout_of(gw).get("step") == 0, timeout=20)
    load = Load([gw], clients=100, pause=0.002)
    try:
        wait_until(lambda: len(load.seen) >= 200, timeout=20)
    finally:
        load.stop()
    servers = {server for _, _, _, server in load.seen}
    assert "staff" not in servers and "v1" in servers, servers
    assert rollout_of(gw)["weights"] == {"v1": 90.0, "staff": 0.0, "canary": 10.0}
