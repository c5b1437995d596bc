"""Incident drills: what an operator meets when things break, against real processes.

Defects found (each test below failed before its fix):

1. ``gwserver reload -c CONF`` (no --pid) on a conf with a TOML syntax error said
   ``no running master found`` while the master served on: the conf could not name its
   state_dir, so master.json was looked for in the default one. It now says the file is
   not TOML, that nothing was signalled, and to fix it or give --pid.
2. ``gwserver run`` with a ``[server] state_dir`` that cannot be created (a file in its
   place, a parent that is not there) died with a Python traceback; it now names the
   setting and the reason and exits 2, as a reload onto such a state_dir already did;
   ``gwserver check`` (the unit's ExecStartPre=) said only "ok" and now warns of it.
3. The access log on a full disk: lines were dropped silently (no log line, no metric).
   The first failed write is logged once, the lines lost are counted in
   ``gwserver_access_log_lines_lost_total``, and the recovery is logged with the count.
4. etcd going down mid-traffic was logged as ``watch failed: {'grpc_code': 14, ...}``, a
   Python dict; it now says the endpoint, etcd's message and its code.
5. ``gwserver routes status`` with etcd down since the start and no snapshot printed
   ``etcd revision None`` and "it serves its last good table": there is none, the workers
   serve the conf file's routes only and /-/ready is 503. It now says that.
6. conf/alerts.yml's GwserverReloadRefused told the operator that `systemctl reload` cannot
   fail; it runs `gwserver reload`, which exits 1 with the reason (doc fix).
7. One slow target of three: its 504s were logged as ``upstream did not answer within
   0.5s``, naming no target (a refused one's 502 names it). The line now ends with
   ``(target URL)``; the client's body still names none.
8. A worker hitting its timeout: gunicorn's ``WORKER TIMEOUT (pid:N)`` was followed by
   ``was sent SIGKILL! Perhaps out of memory?`` (the master's own kill, not memory), with
   no line saying what to do and no metric. Worse, a worker hung before its first
   heartbeat was never stopped at all: gunicorn compares its monotonic clock with the
   heartbeat file's creation mtime (wall clock). Now the master starts each worker's clock
   at fork, says what a timeout means, and counts ``gwserver_worker_timeouts_total``.
9. ``gwserver reload -c A.conf`` (no --pid) read master.json in A's state_dir and in the
   default one, and signalled whichever master had more reload attempts: with instance B
   in the default state_dir, it reloaded B and printed B's "reload complete". It now reads
   the conf's own state_dir only (the default one when the conf names none); with a conf
   that is not TOML it signals nothing and says why (see 1).
10. The runbook's upstream outage said "Idempotent requests that fail to connect are
    retried once on another target": any method is (nothing was sent), and the host then
    skips the target for 1 s. Doc fix.
11. The state dir full under traffic (a small tmpfs filled): a passive ejection that could
    not be written turned the request's 502 (or its retry's 200) into a 500 with a
    traceback; the health checker died on writing health.json and was restarted in a
    loop, a traceback each time; every worker logged ``cannot publish`` once a second.
    Now the target stays in rotation (said, throttled), the checker keeps checking and
    says it once, and the share says it once per worker and when it recovers.
12. Per-host rate limits with the state dir full: the table was a sparse file, so the
    first write to a new key's page was a SIGBUS: every request with a new key dropped
    its connection and killed its worker. And with no room for the table at start, every
    worker died at boot in a loop (a traceback each) while the master never exited. The
    master now allocates the table whole at start, and refuses a state_dir without room.
13. A per-host breaker (no Redis) whose state file could not be written (state dir full)
    failed every request on its route with a 500 and a traceback; it now lets them
    through unguarded, as on_store_error = "allow" does, and says so once a second.
14. The same for limit_conn per host (every request a 500) and adaptive per-host rates
    (a traceback a second from the finish phase): limit_conn now follows on_store_error
    ("local", which is what failed, as "allow"), the adaptive rate stands still, each
    said once a second at most.

What held (drilled by hand, no change needed): every target of a route refused: 502 JSON
with a request id and no address, one throttled log line per second naming route, request
and target, ``gateway_answers_total{status="502",source="gateway"}``; one slow or 503
target of three: 504 for the slow one's requests until health checks or passive ejection
took it out (``upstream_target_up`` 0, ``/admin/upstreams`` says why); Redis down at start
and mid-traffic: ``redis unreachable`` once per worker, ``redis is answering again``,
``gwserver_redis_up`` 0/1, ``local_*`` decisions; an invalid route put in etcd: rejected
alone, fenced 503, ``routes status`` exit 1 naming it; a conf refused on reload (with
--pid): exit 1 with the reason, ``gwserver_config_last_reload_successful 0``; a port in
use at start: 5 tries, then ``cannot listen on the server address ...``, exit 1; a worker
that stops heartbeating: killed after ``server.timeout`` and replaced.
"""
import os
import re
import subprocess
import sys
import time

import pytest

from ..conftest import gateway_conf, route, wait_until
from .test_alerts import firing


def gwserver(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "gwserver", *args], capture_output=True,
                          text=True, timeout=90, **kwargs)


def error_lines(gw):
    return [line for line in gw.log().splitlines() if not line.startswith('{"time"')]


# -- 1. reload without --pid on a conf that is not TOML -------------------------------------

def test_reload_of_a_conf_that_is_not_toml_does_not_say_no_master_runs(launcher, upstream):
    gw = launcher.gateway(gateway_conf([route("r", ["/echo"], upstream.url)]))
    good = gw.conf_path.read_text()
    gw.conf_path.write_text(good + "\n[server\n")
    run = gwserver("reload", "-c", str(gw.conf_path))
    assert run.returncode == 1, run
    assert "no running master" not in run.stderr, run.stderr
    assert "not valid TOML" in run.stderr and "nothing was signalled" in run.stderr, run.stderr
    assert "Handling signal: hup" not in gw.log()
    gw.conf_path.write_text(good)                  # fixed: found through master.json again
    run = gwserver("reload", "-c", str(gw.conf_path))
    assert run.returncode == 0 and "reload complete: generation 2" in run.stdout, run


# -- 2. a state_dir that cannot be created -------------------------------------------------

@pytest.mark.parametrize("where", ["file", "missing-parent"])
def test_a_state_dir_that_cannot_be_created_is_named_without_a_traceback(launcher, upstream,
                                                                         tmp_path, where):
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("")
    state_dir = in_the_way if where == "file" else in_the_way / "state"
    gw = launcher.gateway(gateway_conf([route("r", ["/echo"], upstream.url)],
                                       server={"state_dir": str(state_dir)}), wait=False)
    assert gw.proc.wait(30) == 2
    log = gw.log()
    assert "Traceback" not in log, log
    assert f"cannot start: [server] state_dir {state_dir}: cannot create it:" in log, log
    check = gwserver("check", "-c", str(gw.conf_path))      # ExecStartPre= said nothing
    assert f"warning: [server] state_dir {state_dir}: cannot be created on this host: " \
        f"{in_the_way} is not a directory; gwserver run refuses to start" in check.stdout, check


# -- 3. the access log on a full disk ------------------------------------------------------

@pytest.fixture
def small_tmpfs(tmp_path):
    mount = tmp_path / "small-disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def lost_lines(gw):
    text = gw.admin_get("/metrics")[1].decode()
    found = re.search(r"^gwserver_access_log_lines_lost_total (\S+)$", text, re.M)
    return float(found.group(1)) if found else None


def test_a_full_disk_for_the_access_log_is_logged_once_and_counted(launcher, upstream,
                                                                    small_tmpfs, tmp_path):
    path = small_tmpfs / "access.log"
    gw = launcher.gateway(gateway_conf([route("r", ["/echo"], upstream.url)],
                                       log={"access_log_path": str(path)}))
    assert gw.request("GET", "/echo")[0].status == 200
    before = gw.admin_get("/metrics")[1].decode()
    assert not firing(tmp_path, before, "GwserverAccessLogLinesLost", before=before)
    for _ in range(500):                            # ~500 bytes a line: well past 64 KiB
        assert gw.request("GET", "/echo")[0].status == 200      # requests are not affected
    wait_until(lambda: (lost_lines(gw) or 0) > 0, timeout=5)
    assert firing(tmp_path, gw.admin_get("/metrics")[1].decode(), "GwserverAccessLogLinesLost",
                  before=before)
    failures = [line for line in error_lines(gw) if "cannot write the access log" in line]
    assert len(failures) == 1, failures
    assert f"cannot write the access log {path}: No space left on device" in failures[0]
    path.write_bytes(b"")                            # space again (O_APPEND: at the end)
    assert gw.request("GET", "/echo")[0].status == 200
    wait_until(lambda: "is written again" in gw.log(), timeout=5)
    assert re.search(rf"the access log {re.escape(str(path))} is written again; \d+ lines "
                     r"were lost", gw.log())
    wait_until(lambda: b'"path":"/echo"' in path.read_bytes(), timeout=5)


# -- 4, 5. etcd down at start, then going down mid-traffic ---------------------------------

def test_etcd_down_at_start_then_mid_traffic_is_said_plainly(launcher, upstream, tmp_path):
    from ..conftest import free_port
    ports = (free_port(), free_port())
    conf = gateway_conf([route("static", ["/static"], upstream.url)], etcd={
        "endpoints": [f"http://127.0.0.1:{ports[0]}"], "prefix": "/drill",
        "runtime_dir": str(tmp_path / "run"), "snapshot_path": str(tmp_path / "snap.json"),
        "timeout": 1.0, "backoff_max": 1.0})
    gw = launcher.gateway(conf)
    wait_until(lambda: "no snapshot either" in gw.log())
    assert gw.request("GET", "/static")[0].status == 200
    assert gw.admin_get("/-/ready")[0] == 503
    run = gwserver("routes", "-c", str(gw.conf_path), "status")
    assert run.returncode == 1, run
    assert "etcd revision -" in run.stdout and "None" not in run.stdout, run.stdout
    assert "last good table" not in run.stderr, run.stderr        # there is none
    assert "it serves the conf file's static routes only, and /-/ready answers 503" \
        in run.stderr, run.stderr

    etcd = launcher.etcd(ports=ports)
    wait_until(lambda: gw.admin_get("/-/ready")[0] == 200, timeout=20)
    assert gwserver("routes", "-c", str(gw.conf_path), "status").returncode == 0
    etcd.stop()
    wait_until(lambda: "serving the last good table" in gw.log(), timeout=20)
    assert gw.request("GET", "/static")[0].status == 200
    time.sleep(3)                                   # a few retries (backoff_max 1 s)
    lost = [line for line in error_lines(gw) if "etcd unreachable" in line]
    assert len(lost) == 2, lost                    # once at start, once now: not per retry
    assert "{'" not in lost[1] and "grpc_code" not in lost[1], lost[1]
    run = gwserver("routes", "-c", str(gw.conf_path), "status")
    assert run.returncode == 1 and "it serves its last good table" in run.stderr, run


# -- 6. a conf refused on reload: what the alert tells the operator ------------------------

def test_the_reload_alert_says_what_systemctl_reload_did(launcher, upstream):
    """conf/alerts.yml told whoever got GwserverReloadRefused that `systemctl reload` cannot
    fail; it runs `gwserver reload` (ExecReload=), which exits 1 on a refused conf."""
    from ..conftest import ROOT
    gw = launcher.gateway(gateway_conf([route("r", ["/echo"], upstream.url)]))
    gw.conf_path.write_text(gw.conf_path.read_text().replace('"workers" = 1',
                                                             '"workers" = "two"'))
    run = gwserver("reload", "-c", str(gw.conf_path), "--pid", str(gw.pid))
    assert run.returncode == 1 and "reload refused: invalid configuration" in run.stderr, run
    assert "ExecReload=/opt/gwserver/bin/gwserver reload" in \
        (ROOT / "systemd" / "gwserver.service").read_text()
    rules = (ROOT / "conf" / "alerts.yml").read_text()
    text = rules.split("alert: GwserverReloadRefused", 1)[1].split("- alert:", 1)[0]
    assert "cannot fail" not in text, text
    assert "`systemctl reload` (gwserver reload) failed" in text, text


# -- 7. one slow target of three -----------------------------------------------------------

def test_a_timeout_names_the_slow_target_in_the_log_not_to_the_client(launcher):
    fast = [launcher.upstream("a"), launcher.upstream("b")]
    slow = launcher.upstream("slow", delay=2)
    gw = launcher.gateway(gateway_conf(
        [{"id": "three", "paths": ["/echo"], "upstream": "pool", "timeouts": {"read": 0.5}}],
        upstreams={"pool": {"targets": [{"url": u.url} for u in (*fast, slow)]}}))
    statuses = []
    for _ in range(3):                              # round robin: one of them is the slow one
        resp, body = gw.request("GET", "/echo")
        statuses.append(resp.status)
        if resp.status == 504:
            assert str(slow.port) not in body.decode() and b"gateway_timeout" in body, body
    assert sorted(statuses) == [200, 200, 504], statuses
    lines = [line for line in error_lines(gw) if "gateway_timeout" in line]
    assert len(lines) == 1, lines
    assert lines[0].endswith(f"upstream did not answer within 0.5s (target {slow.url})"), lines


# -- 8. a worker hitting its timeout -------------------------------------------------------

def test_a_worker_that_hangs_is_said_to_have_timed_out_and_counted(launcher, upstream,
                                                                   tmp_path):
    import signal
    gw = launcher.gateway(gateway_conf([route("r", ["/*p"], upstream.url)],
                                       server={"timeout": 2}))
    wait_until(lambda: "ready: 1 workers serving" in gw.log())
    before = gw.admin_get("/metrics")[1].decode()
    assert not firing(tmp_path, before, "GwserverWorkerTimedOut", before=before)
    hung = gw.worker_pids()[0]
    os.kill(hung, signal.SIGSTOP)            # stuck mid-life: no heartbeat, SIGABRT pending
    wait_until(lambda: f"was sent SIGKILL after its WORKER TIMEOUT" in gw.log(), timeout=15)
    log = gw.log()
    assert f"WORKER TIMEOUT (pid:{hung})" in log
    assert f"worker {hung} sent no heartbeat for 2s (server.timeout): something blocked it" \
        in log, log
    assert "Perhaps out of memory" not in log, log          # the master killed it, not OOM

    # A replacement that hangs before its first heartbeat is found silent too: gunicorn
    # compared its monotonic clock with the file's wall-clock mtime, and never stopped it.
    replacement = wait_until(lambda: [p for p in gw.worker_pids() if p != hung],
                             interval=0.005)[0]
    os.kill(replacement, signal.SIGSTOP)
    wait_until(lambda: f"WORKER TIMEOUT (pid:{replacement})" in gw.log(), timeout=15)
    wait_until(lambda: [p for p in gw.worker_pids() if p not in (hung, replacement)],
               timeout=15)
    assert gw.request("GET", "/echo")[0].status == 200
    wait_until(lambda: b"gwserver_worker_timeouts_total 2.0" in gw.admin_get("/metrics")[1],
               timeout=5)
    assert firing(tmp_path, gw.admin_get("/metrics")[1].decode(), "GwserverWorkerTimedOut",
                  before=before)


# -- 9. reload without --pid, two instances on the host ------------------------------------

def test_reload_signals_the_master_of_its_conf_not_the_default_state_dirs(launcher, upstream,
                                                                          tmp_path):
    """Instance B keeps its state in the default state_dir (here $RUNTIME_DIRECTORY/state),
    instance A names its own. `gwserver reload -c A.conf` read both master.json files and
    took the one with more reload attempts: B's, whose master it signalled."""
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    env = {**os.environ, "RUNTIME_DIRECTORY": str(runtime)}
    b = launcher.gateway(gateway_conf([route("b", ["/b"], upstream.url)],
                                      server={"state_dir": str(runtime / "state")}))
    a = launcher.gateway(gateway_conf([route("a", ["/a"], upstream.url)]))
    assert gwserver("reload", "-c", str(b.conf_path), env=env).returncode == 0   # B: 1 attempt
    run = gwserver("reload", "-c", str(a.conf_path), env=env)
    assert run.returncode == 0 and "reload complete: generation 2" in run.stdout, run
    assert "reload complete: generation 2" in a.log()
    assert "reload complete: generation 3" not in b.log()


# -- 10. one target of two refuses: what the runbook says of retries -----------------------

def test_a_refused_connection_is_retried_elsewhere_whatever_the_method(launcher, upstream):
    """The runbook said "Idempotent requests that fail to connect are retried": a POST is
    too (nothing was sent), which an operator weighing duplicate writes needs to know."""
    from ..conftest import ROOT, free_port
    dead = f"http://127.0.0.1:{free_port()}"
    gw = launcher.gateway(gateway_conf(
        [{"id": "two", "paths": ["/echo"], "upstream": "pool"}],
        upstreams={"pool": {"targets": [{"url": dead}, {"url": upstream.url}]}}))
    for _ in range(2):                              # round robin: the first tries the dead one
        resp, body = gw.request("POST", "/echo", body=b"once")
        assert resp.status == 200 and b'"method": "POST"' in body, body
    assert upstream.stats()["requests"] == 2        # each POST reached it once
    wait_until(lambda: b'gwserver_upstream_retries_total{outcome="retried",upstream="pool"} 1.0'
               in gw.admin_get("/metrics")[1], timeout=5)
    runbook = (ROOT / "docs" / "operations.md").read_text().split("## Runbook", 1)[1]
    assert "Idempotent requests that fail to connect" not in runbook
    assert "retried once on another target,\nwhatever its method" in runbook


# -- 11. the state dir fills up under traffic ----------------------------------------------

def test_a_full_state_dir_fails_no_request_and_floods_no_log(launcher, tmp_path):
    from ..conftest import free_port, stop_process
    mount = tmp_path / "state-disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        live, checked = launcher.upstream("live"), launcher.upstream("checked")
        dead = f"http://127.0.0.1:{free_port()}"
        gw = launcher.gateway(gateway_conf(
            [{"id": "p", "paths": ["/echo"], "upstream": "passive"},
             {"id": "h", "paths": ["/h"], "upstream": "checked"}], workers=2,
            server={"state_dir": str(mount / "state")},
            upstreams={"passive": {"targets": [{"url": dead}, {"url": live.url}],
                                   "passive": {"consecutive_failures": 1}},
                       "checked": {"targets": [{"url": checked.url}], "health_check": {
                           "interval": 0.3, "timeout": 0.3, "unhealthy_threshold": 1}}}))
        wait_until(lambda: "ready: 2 workers serving" in gw.log())
        wait_until(lambda: (mount / "state" / "health.json").exists())
        subprocess.run(["dd", "if=/dev/zero", f"of={mount}/fill", "bs=64k", "count=100"],
                       capture_output=True)
        assert os.statvfs(mount).f_bavail == 0
        before = len(gw.log())
        stop_process(checked.proc)                  # a verdict the checker must write
        statuses = [gw.request("GET", "/echo")[0].status for _ in range(20)]
        assert 500 not in statuses and set(statuses) <= {200, 502}, statuses
        wait_until(lambda: "is now UNHEALTHY" in gw.log()[before:])
        time.sleep(3)
        after = gw.log()[before:]
        assert "Traceback" not in after, after
        assert not re.search(r"health \(pid \d+\) exited", after), after
        assert after.count("cannot write health.json") == 1, after
        assert after.count("cannot publish to") <= 2, after         # once per worker
        assert "cannot eject" in after and "it stays in rotation" in after, after
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


# -- 12. per-host rate limits on a full state dir ------------------------------------------

@pytest.fixture
def state_tmpfs(tmp_path):
    mounts = []

    def mount(size):
        path = tmp_path / f"state-{size}"
        path.mkdir()
        made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                               str(path)], capture_output=True, text=True)
        if made.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
        mounts.append(path)
        return path
    yield mount
    for path in mounts:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_per_host_limits_on_a_full_state_dir_kill_no_worker(launcher, upstream, state_tmpfs):
    """The table was a sparse file: on a full tmpfs, the first write to a new key's page
    was a SIGBUS, every request with a new key a dead worker and a dropped connection."""
    disk = state_tmpfs("4m")
    gw = launcher.gateway(gateway_conf(
        [route("r", ["/echo"], upstream.url, plugins={"rate_limit": {
            "rate": 100, "burst": 10, "key": "header:X-Key"}})],
        server={"state_dir": str(disk / "state")}))
    wait_until(lambda: "ready: 1 workers serving" in gw.log())
    subprocess.run(["dd", "if=/dev/zero", f"of={disk}/fill", "bs=64k", "count=100"],
                   capture_output=True)
    assert os.statvfs(disk).f_bavail == 0
    workers = gw.worker_pids()
    for i in range(100):                            # 100 keys: slots on many pages
        assert gw.request("GET", "/echo", headers={"X-Key": f"client-{i}"})[0].status == 200
    assert gw.worker_pids() == workers
    assert "SIGBUS" not in gw.log()


def test_a_state_dir_without_room_for_the_limit_table_refuses_the_start(launcher, upstream,
                                                                        state_tmpfs):
    disk = state_tmpfs("1m")                        # the table is 2.5 MiB
    gw = launcher.gateway(gateway_conf([route("r", ["/echo"], upstream.url)],
                                       server={"state_dir": str(disk / "state")}), wait=False)
    assert gw.proc.wait(30) == 2
    log = gw.log()
    assert f"cannot start: [server] state_dir {disk / 'state'}: cannot make the per-host " \
        "limit table there: No space left on device" in log, log
    assert "Traceback" not in log


def test_a_per_host_breaker_on_a_full_state_dir_lets_requests_through(launcher, upstream,
                                                                       state_tmpfs):
    """Its state file could not be written: every request on the route was a 500 with a
    traceback, though the upstream was fine."""
    disk = state_tmpfs("4m")
    gw = launcher.gateway(gateway_conf(
        [route("guarded", ["/echo"], upstream.url, plugins={"breaker": {}})],
        server={"state_dir": str(disk / "state")}))
    wait_until(lambda: "ready: 1 workers serving" in gw.log())
    subprocess.run(["dd", "if=/dev/zero", f"of={disk}/fill", "bs=64k", "count=100"],
                   capture_output=True)
    assert os.statvfs(disk).f_bavail == 0
    assert [gw.request("GET", "/echo")[0].status for _ in range(10)] == [200] * 10
    log = gw.log()
    assert "Traceback" not in log, log
    assert log.count("breaker route:guarded: its per-host state cannot be written (No space "
                     "left on device): requests pass unguarded") == 1, log


def test_per_host_conn_limits_and_adaptive_rates_on_a_full_state_dir(launcher, upstream,
                                                                      state_tmpfs):
    """limit_conn's lease file could not be written: every request on its route was a 500;
    an adaptive limit logged a traceback each second for the rate it could not record."""
    disk = state_tmpfs("4m")
    gw = launcher.gateway(gateway_conf(
        [route("conns", ["/conns"], upstream.url, plugins={"limit_conn": {"limit": 5}}),
         route("adapt", ["/adapt"], upstream.url, plugins={"rate_limit": {
             "rate": 100, "burst": 50, "key": "route",
             "adaptive": {"floor": 10, "ceiling": 200, "window": 0.5}}})],
        server={"state_dir": str(disk / "state")}))
    wait_until(lambda: "ready: 1 workers serving" in gw.log())
    subprocess.run(["dd", "if=/dev/zero", f"of={disk}/fill", "bs=64k", "count=100"],
                   capture_output=True)
    assert os.statvfs(disk).f_bavail == 0
    for path in ("/conns", "/adapt"):
        assert [gw.request("GET", path)[0].status for _ in range(10)] == [200] * 10
    time.sleep(1.2)                                  # the throttled log's second is over
    log = gw.log()
    assert "Traceback" not in log, log
    assert "route conns: limit_conn's per-host state cannot be written (No space left on " \
        "device)" in log, log
    assert "route adapt: the adaptive rate cannot be recorded (No space left on device)" \
        in log, log
    assert b'outcome="store_error_allowed",route="conns"' in gw.admin_get("/metrics")[1]
