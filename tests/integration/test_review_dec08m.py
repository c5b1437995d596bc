"""Review of 86567d6 (metrics say what is served) and 04442f8 (an own_dir's owner holds a
flock on it), Dec 08, helper w12: each test failed on 04442f8 and passes with its fix.

1. The master's metrics directory, removed under the running gateway (a tmp cleaner, a
   hand) and made again by the master before its next worker (ensure_metrics_dir), was made
   without the lock own_dir holds on the first one: a gateway in another PID namespace
   sharing the directory's parent (a container sharing /dev/shm), where the master's pid
   names no process, took it for a dead master's and removed it again; the workers' next
   metric files failed. The master holds the lock on the directory made again too.
2. A reload that moved [server] state_dir to a directory a gateway with a rollout used
   before, the new conf having none, left that gateway's rollouts.prom there on every
   worker's /metrics for good (forget_rollouts only cleared the old state_dir): its
   ``gwserver_rollout_rolled_back`` 1 kept GwserverRolloutRolledBack firing. So did the
   health checker's verdicts there (health.json), a conf with no checks: a target judged
   down stayed out of rotation for good, with no checker to lift it.
"""
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from ..conftest import gateway_conf, route, to_toml, wait_until
from .test_fix_dec08l import can_unshare


def remove_dead_in_a_new_pid_namespace(parent, prefix):
    """processes.remove_dead_dirs(parent, prefix), run in a PID namespace of its own."""
    code = ("import sys; from gwserver.processes import remove_dead_dirs; "
            "remove_dead_dirs(sys.argv[1], sys.argv[2])")
    subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", code,
                    str(parent), prefix], check=True, timeout=30, capture_output=True)


@pytest.mark.skipif(not can_unshare(), reason="needs PID namespaces (root)")
def test_a_metrics_dir_made_again_is_kept_by_a_gateway_in_another_pid_namespace(
        launcher, upstream, tmp_path):
    run = tmp_path / "run"          # the unit's RuntimeDirectory: the metrics dir goes there
    run.mkdir()
    gw = launcher.gateway(gateway_conf([route("r", ["/r"], upstream.url)]),
                          env={"RUNTIME_DIRECTORY": str(run)})
    (own,) = [p for p in run.iterdir() if p.name.startswith(f"gwserver-metrics-{gw.pid}-")]
    shutil.rmtree(own)                              # a tmp cleaner
    (worker,) = gw.serving_worker_pids()
    os.kill(worker, signal.SIGKILL)                 # its replacement: the master makes it again
    wait_until(lambda: own.is_dir() and gw.serving_worker_pids() not in ([], [worker]),
               timeout=10)
    remove_dead_in_a_new_pid_namespace(run, "gwserver-metrics-")
    # before: removed, no lock held on the directory made again
    assert own.is_dir()
    assert gw.request("GET", "/r")[0].status == 200
    assert b"gwserver_requests_total" in gw.admin_get("/metrics")[1]


STALE_ROLLOUT = ('# TYPE gwserver_rollout_rolled_back gauge\n'
                 'gwserver_rollout_rolled_back{route="shop"} 1.0\n')


def test_a_reload_moving_state_dir_serves_no_stale_rollout_gauges_there(launcher, upstream,
                                                                       tmp_path):
    old_state = tmp_path / "state-b"        # a gateway with a rollout used it before
    old_state.mkdir(mode=0o700)
    (old_state / "rollouts.prom").write_text(STALE_ROLLOUT)
    conf = gateway_conf([route("r", ["/r"], upstream.url)])
    conf["server"]["state_dir"] = str(tmp_path / "state-a")
    gw = launcher.gateway(conf)
    assert b"gwserver_rollout_rolled_back" not in gw.admin_get("/metrics")[1]
    before = set(gw.serving_worker_pids())
    conf = gw.conf                                  # with the ports the launcher chose
    conf["server"]["state_dir"] = str(old_state)    # no rollout in this conf either
    gw.conf_path.write_text(to_toml(conf))
    os.kill(gw.pid, signal.SIGHUP)
    wait_until(lambda: "reload complete" in gw.log(), timeout=10)
    # only the new workers serve (and /metrics), with the new state_dir
    wait_until(lambda: set(gw.serving_worker_pids()) - before and
               not set(gw.serving_worker_pids()) & before, timeout=10)
    assert gw.helper_pids("rollouts") == []
    # before: the stale rolled_back 1 on /metrics for good
    assert b"gwserver_rollout_rolled_back" not in gw.admin_get("/metrics")[1]


def test_a_reload_moving_state_dir_keeps_no_stale_health_verdicts_there(launcher, tmp_path):
    """The same for the health checker's verdicts (health.json): a reload moving state_dir
    to where a checker judged a target down, the new conf checking nothing, kept that
    target out of rotation for good (no checker to lift it), every request on the other."""
    one, two = launcher.upstream("one"), launcher.upstream("two")
    old_state = tmp_path / "state-b"
    old_state.mkdir(mode=0o700)
    (old_state / "health.json").write_text(json.dumps(
        {"targets": {f"up|{one.url}": {"healthy": False}}}))
    conf = gateway_conf([{"id": "r", "paths": ["/r"], "upstream": "up"}],
                        upstreams={"up": {"targets": [{"url": one.url}, {"url": two.url}]}})
    conf["server"]["state_dir"] = str(tmp_path / "state-a")
    gw = launcher.gateway(conf)
    before = set(gw.serving_worker_pids())
    conf = gw.conf
    conf["server"]["state_dir"] = str(old_state)
    gw.conf_path.write_text(to_toml(conf))
    os.kill(gw.pid, signal.SIGHUP)
    wait_until(lambda: "reload complete" in gw.log(), timeout=10)
    wait_until(lambda: set(gw.serving_worker_pids()) - before and
               not set(gw.serving_worker_pids()) & before, timeout=10)
    served = one.stats()["requests"]
    for _ in range(6):
        assert gw.request("GET", "/r")[0].status == 200
    # before: none, the stale verdict held one out for good
    assert one.stats()["requests"] > served
