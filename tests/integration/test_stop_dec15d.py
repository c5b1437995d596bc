"""The master's stop waits on its workers' exits (SIGCHLD), not gunicorn's 0.1 s poll, and
leaves without the interpreter's teardown (cli.exit_at_once): what a stop must keep, kept.
"""
import glob
import os
import signal
import threading
import time

from tests.conftest import gateway_conf, route, wait_until


def test_a_stopped_master_says_its_last_line_and_leaves_nothing_behind(launcher, upstream):
    """SIGTERM to the master alone (systemd's KillMode=mixed): exit status 0, gunicorn's
    last line written (a log flushed by the interpreter's teardown would be lost without
    it), the master's own metrics directory and its copy of the applied conf removed."""
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)]))
    assert gw.request("GET", "/x")[0].status == 200
    metrics = glob.glob(f"/dev/shm/gwserver-metrics-{gw.pid}-*") + \
        glob.glob(f"/run/gwserver-metrics-{gw.pid}-*")
    state_dir = gw.conf["server"]["state_dir"]
    assert metrics and os.path.exists(os.path.join(state_dir, "conf.applied.toml"))
    os.kill(gw.pid, signal.SIGTERM)
    assert gw.proc.wait(10) == 0
    log = gw.log()
    assert log.rstrip().endswith("Shutting down: Master"), log[-2000:]
    assert "Traceback" not in log, log[-3000:]
    assert not any(os.path.exists(path) for path in metrics), metrics
    assert not os.path.exists(os.path.join(state_dir, "conf.applied.toml"))


def test_sigint_during_a_drain_makes_the_stop_quick(launcher, upstream):
    """A request 6 s long is in flight when SIGTERM comes (graceful_timeout 10 s): the
    master waits for it; a SIGINT then (a second Ctrl-C) makes it a quick stop, which cuts
    the request and ends within gunicorn's 2 s, not at the drain's end."""
    gw = launcher.gateway(gateway_conf([route("slow", ["/slow/:s"], upstream.url)],
                                       server={"graceful_timeout": 10.0}))
    result = {}

    def slow_request():
        try:
            result["status"] = gw.request("GET", "/slow/6")[0].status
        except Exception as exc:        # cut: what the client gets of a quick stop
            result["error"] = exc

    thread = threading.Thread(target=slow_request)
    thread.start()
    assert wait_until(lambda: upstream.stats()["requests"] >= 1, timeout=5)
    os.kill(gw.pid, signal.SIGTERM)
    time.sleep(0.5)
    assert gw.proc.poll() is None       # draining the request
    asked = time.monotonic()
    os.kill(gw.pid, signal.SIGINT)
    assert gw.proc.wait(10) == 0
    assert time.monotonic() - asked < 3.5, time.monotonic() - asked
    thread.join(10)
    assert "status" not in result, result
    assert "quick shutdown requested" in gw.log().lower(), gw.log()[-2000:]
