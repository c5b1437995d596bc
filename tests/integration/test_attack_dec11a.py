"""What an operator meets: conf values and command-line tools (Dec 11, a). Each test failed
before its fix.

1. ``server.backlog`` past a C int (2**31: a typo, a zero too many) passed ``gwserver
   check`` ("ok") and then ended the start in a Python traceback (listen()'s OverflowError).
   On SIGHUP the reload failed with "an unexpected error" half applied: the master kept the
   new conf, and the next worker it forked (one replaced after a crash or max_requests)
   served the conf the log said was not taken. ``server.worker_connections`` past a C int
   started a gateway whose every worker died as it booted (gevent's Pool), one a second,
   a traceback each. Both are refused by name now.
2. ``pool_size`` (upstream_defaults or an upstream's own) had no upper bound, and urllib3
   fills a pool with ``pool_size`` placeholders when it makes one: with 20,000,000 the first
   request to a target held its worker (and every client on it) for seconds while it grew by
   hundreds of MB. The value is refused by name now.
3. ``gwserver rollouts`` with its state store out of reach (etcd or Redis down, a host whose
   state_dir was never made) ended in a Python traceback and exit 1, which the tool documents
   as "the rollout does not allow it". It says "error: ..." and exits 2 now, as ``gwserver
   routes`` does.
"""
import copy
import os
import signal
import subprocess
import sys
import time

import pytest

from ..conftest import (ROOT, check_conf, free_port, gateway_conf, listens_on, route,
                        to_toml, wait_until)

C_INT_PAST = 2 ** 31        # listen(2)'s backlog, gevent's Pool size: C ints


@pytest.mark.parametrize("name", ["backlog", "worker_connections"])
def test_check_refuses_a_number_no_c_int_holds(tmp_path, name):
    code, out = check_conf(tmp_path, gateway_conf([], server={name: C_INT_PAST}))
    assert code != 0 and f"server.{name}" in out, out
    assert "Traceback" not in out, out


def test_a_worker_connections_no_worker_can_take_is_refused_at_start(launcher):
    gw = launcher.gateway(gateway_conf([], server={"worker_connections": C_INT_PAST}),
                          wait=False)
    wait_until(lambda: gw.proc.poll() is not None or "Exception in worker process" in gw.log(),
               timeout=15)
    assert "Exception in worker process" not in gw.log(), \
        f"started, and its workers die as they boot: {gw.log()[-1500:]}"
    assert "server.worker_connections" in gw.log(), gw.log()[-2000:]


def test_a_reload_with_a_backlog_listen_cannot_take_changes_nothing(launcher, upstream):
    gw = launcher.gateway(gateway_conf([route("old", ["/old"], upstream.url)]))
    new = copy.deepcopy(gw.conf)
    new["server"]["backlog"] = C_INT_PAST
    new["routes"] = [route("new", ["/new"], upstream.url)]
    gw.conf_path.write_text(to_toml(new))
    os.kill(gw.pid, signal.SIGHUP)
    wait_until(lambda: "reload refused" in gw.log() or "reload failed" in gw.log(), timeout=10)
    # The next worker the master forks (a crash, max_requests) serves what the master runs
    [worker] = gw.serving_worker_pids()
    os.kill(worker, signal.SIGKILL)
    wait_until(lambda: gw.serving_worker_pids() not in ([], [worker]), timeout=10)
    assert gw.request("GET", "/new")[0].status == 404, \
        "a worker forked after the refused reload serves its conf"
    assert gw.request("GET", "/old")[0].status == 200
    log = gw.log()
    assert "server.backlog" in log and "Traceback" not in log, log[-3000:]


def test_a_pool_size_no_worker_can_fill_is_refused(launcher, upstream):
    conf = gateway_conf([route("r", ["/r"], upstream.url)],
                        upstream_defaults={"pool_size": 20_000_000})
    gw = launcher.gateway(conf, wait=False)
    outcome = wait_until(lambda: "exited" if gw.proc.poll() is not None else
                         "serving" if listens_on(gw.pid, gw.port) and gw.serving_worker_pids()
                         else None, timeout=15)
    if outcome == "serving":
        begun = time.monotonic()
        try:
            status = gw.request("GET", "/r", timeout=1.5)[0].status
        except OSError as exc:
            status = exc
        pytest.fail(f"served with pool_size 20,000,000: the first request got {status!r} "
                    f"after {time.monotonic() - begun:.1f}s, its worker filling the pool")
    assert "upstream_defaults.pool_size" in gw.log(), gw.log()[-2000:]


def test_an_upstreams_own_pool_size_is_bounded_too(tmp_path, upstream):
    spec = route("r", ["/r"], upstream.url)
    spec["upstream"]["pool_size"] = 20_000_000
    code, out = check_conf(tmp_path, gateway_conf([spec]))
    assert code != 0 and "pool_size" in out, out


def rollouts_cli(conf_path, *args):
    done = subprocess.run([sys.executable, "-m", "gwserver", "rollouts", *args,
                           "-c", str(conf_path)], capture_output=True, text=True, cwd=ROOT,
                          timeout=30)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("store", ["etcd", "redis", "state_dir"])
def test_rollouts_cli_says_why_when_its_store_is_out_of_reach(tmp_path, store):
    conf = gateway_conf([], server={"bind": ["127.0.0.1:1"],
                                    "state_dir": str(tmp_path / "never-made")})
    gone = free_port()      # nothing listens there: a store that is down
    if store == "etcd":
        conf["etcd"] = {"endpoints": [f"http://127.0.0.1:{gone}"], "timeout": 0.5}
    elif store == "redis":
        conf["redis"] = {"url": f"redis://127.0.0.1:{gone}/0"}
    path = tmp_path / "gw.toml"
    path.write_text(to_toml(conf))
    for args in (["list"], ["status", "shop"], ["abort", "shop"]):
        code, out = rollouts_cli(path, *args)
        assert code == 2 and "Traceback" not in out and out.startswith("error: "), (args, out)
