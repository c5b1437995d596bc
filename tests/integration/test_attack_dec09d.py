"""Attack pass (Dec 09 d, reloads, restarts and drains that must keep the truth), against real
processes. Each defect below is shown by a test that failed on b1448ca and passes with its fix.

1. A gateway in a container (its own PID namespace) whose processes were all killed (-9, the
   OOM killer, the container's end) while a request held a per-host limit_conn slot, then
   started again on the same state_dir: its new worker got the pid of the previous run's
   (pids in a new namespace come in the same order), the lease of the killed worker counted
   as held by a live process, and the route answered 503 to everyone for lease_seconds (300 s
   by default) though nothing was in flight. Leases now name their worker by pid and start
   time (/proc/PID/stat), so a pid taken again frees the dead worker's slots at the next
   claim that finds them all taken, as docs/plugins.md says.
2. A SIGHUP in the master's first half second (its imports, the conf, the binds: before
   gunicorn's handler was in place), as a tool that renders the conf and reloads the gateway
   as both start sends it, killed the master (SIGHUP's default action): no gateway at all.
   The run command now holds SIGHUP from its first line until the handler is in place, and
   the held signal is a reload then.

Held (no defect): SIGHUP storms (5 in a second) under keep-alive HTTP/1.1 traffic, slow and
streamed answers, slow uploads (chunked, Content-Length, Expect: 100-continue), HTTP/2
clients with several open streams (curl, h2c) and gRPC server-streaming calls; reloads that
change the worker count and move state between per-host and Redis mid-traffic; no old route
answered after `gwserver reload` said complete; config-sync killed -9 three times during
300 route writes, and a reload's new config-sync killed -9 as it started; a refused conf then
every worker and helper killed -9 (the replacements serve the last good conf); conf deleted,
empty, binary, a directory or bad TOML (refused, said in the log); a worker killed -9
holding a per-host limit_conn slot or a breaker's half-open probe (per host and on Redis);
the master killed -9 with a Redis limit_conn slot held.
"""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from ..conftest import ROOT, free_port, gateway_conf, route, to_toml, wait_for_port, wait_until


def unshare_works():
    try:
        return subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"],
                              capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def gateway_in_pid_namespace(tmp_path, conf, name):
    """A gateway whose master is pid 1 of a PID namespace of its own, as in a container;
    killing unshare (SIGKILL to its group) kills every process in it, as a container's end
    does. -> unshare's Popen, once the gateway listens."""
    path = tmp_path / f"{name}.toml"
    path.write_text(to_toml(conf))
    log_path = tmp_path / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child=SIGKILL",
             sys.executable, "-m", "gwserver", "run", "-c", str(path)],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    wait_for_port(int(conf["server"]["bind"][0].rpartition(":")[2]), proc=proc,
                  log_path=log_path)
    return proc


def workers_in_namespace(proc):
    """The pids, inside its namespace, of the workers under unshare ``proc``."""
    found = []
    out = subprocess.run(["pgrep", "-s", str(proc.pid), "-f", "gwserver: worker"],
                         capture_output=True, text=True).stdout
    for pid in map(int, out.split()):
        try:
            with open(f"/proc/{pid}/status") as f:
                found += [int(line.split()[-1]) for line in f if line.startswith("NSpid:")]
        except OSError:
            pass
    return found


@pytest.mark.skipif(not unshare_works(), reason="needs unshare --pid (CAP_SYS_ADMIN)")
def test_a_container_started_again_frees_the_slots_its_killed_run_held(upstream, tmp_path):
    port = free_port()
    conf = gateway_conf([route("r", ["/*rest"], upstream.url, plugins={
        "limit_conn": {"limit": 1, "key": "route", "scope": "host"}})], workers=1)
    conf["server"].update(bind=[f"127.0.0.1:{port}"], state_dir=str(tmp_path / "state"))
    conf["admin"] = {"bind": f"127.0.0.1:{free_port()}"}

    def status():
        # Read to the end: a request holds its slot until its answer is all out, and the
        # next one sent after its first bytes (the upstream's head and body can come in
        # two reads) was refused while the body was still on its way.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /echo HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            answer = b""
            while piece := sock.recv(65536):
                answer += piece
            return int(answer.split()[1])

    runs = []
    try:
        runs.append(gateway_in_pid_namespace(tmp_path, conf, "first"))
        wait_until(lambda: workers_in_namespace(runs[0]) and status() == 200)
        first_workers = workers_in_namespace(runs[0])
        held = socket.create_connection(("127.0.0.1", port), timeout=10)
        held.sendall(b"GET /slow/30 HTTP/1.1\r\nHost: h\r\n\r\n")
        wait_until(lambda: status() == 503)         # its slot is taken
        os.killpg(runs[0].pid, signal.SIGKILL)      # the container's end: every process -9
        runs[0].wait(10)
        held.close()
        runs.append(gateway_in_pid_namespace(tmp_path, conf, "second"))
        wait_until(lambda: workers_in_namespace(runs[1]))
        # (the premise: the new worker has the pid the killed one had)
        assert workers_in_namespace(runs[1]) == first_workers
        # before: 503, 503, 503 (for lease_seconds, 300 s), nothing in flight
        assert [status() for _ in range(3)] == [200] * 3
    finally:
        for run in runs:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
                run.wait(10)


def signal_masks(pid):
    """-> (blocked, caught) signal sets of ``pid``, from /proc/PID/status (empty: gone)."""
    masks = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name in ("SigBlk", "SigCgt"):
                    masks[name] = int(value, 16)
    except OSError:
        return set(), set()
    return tuple({sig for sig in range(1, 65) if masks.get(name, 0) >> (sig - 1) & 1}
                 for name in ("SigBlk", "SigCgt"))


def test_a_sighup_while_the_master_starts_is_a_reload_not_its_end(launcher, upstream):
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)]), wait=False)
    # The master runs (exec'd) but gunicorn's SIGHUP handler is not in yet: the signal goes
    # once the master holds it, or 0.3 s after the exec (its handler comes after 0.5 s).
    wait_until(lambda: b"gwserver" in open(f"/proc/{gw.pid}/cmdline", "rb").read(),
               interval=0.002)
    started = time.monotonic()
    wait_until(lambda: signal.SIGHUP in signal_masks(gw.pid)[0] or
               time.monotonic() - started > 0.3, interval=0.002)
    assert signal.SIGHUP not in signal_masks(gw.pid)[1]     # (the premise: no handler yet)
    os.kill(gw.pid, signal.SIGHUP)
    # before: the master killed by the signal, nothing listening
    wait_until(lambda: "reload complete" in gw.log() or gw.proc.poll() is not None,
               timeout=20)
    assert gw.proc.poll() is None, (gw.proc.returncode, gw.log()[-2000:])
    assert gw.request("GET", "/echo")[0].status == 200
