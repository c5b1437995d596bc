"""Review of 0640cb3 (Dec 09 k: per-host limit_conn leases named by pid and start; SIGHUP and
SIGUSR1 held while the master starts), against real processes. Each test failed on 0640cb3.

1. The upgrade that brings PID@START leases: a container of the previous release killed (-9,
   or the end of `docker stop`'s grace) while a request held a per-host limit_conn slot, and
   the new release's container started on the same state_dir. The dead run's lease, written
   as PID.TAG.N (no start: the previous release's format), named a pid the new container's
   worker got again: pid_alive said yes, and with no start to compare the slot stayed taken
   for lease_seconds (300 s): a route of limit 1 refused everyone, the very case 0640cb3
   fixed, on the day of its own deployment. A lease with no start is now judged by when it
   was written: a process that started after it cannot hold it.

Held (no defect): SigBlk of master, workers and every helper (config-sync, health, rollouts)
empty after start, after a reload and after a USR2 (no new master: not supported); SIGHUP and
SIGUSR1 alternated every 3 ms for 3 s from the master's first held moment (one reload a
second, the master serving); process_start of a process whose comm is "a) R 1 2 3 ) 9"
(rpartition finds the right field); an old-release lease of a live holder still counts.

Not fixed (reproduced): a master killed -9 in one PID namespace whose orphan worker drains
a held request while a gateway in another namespace starts on the same state_dir: the new
worker with the orphan's pid (another start) drops the orphan's live lease, limit 1 lets a
second request in (before 0640cb3 the coincidence of pids kept it, by accident).
"""
import json
import os
import signal
import socket
import time

import pytest

from ..conftest import free_port, gateway_conf, route, wait_until
from .test_attack_dec09d import gateway_in_pid_namespace, unshare_works, workers_in_namespace


def as_previous_release(state_dir, pid):
    """Rewrite the per-host leases in ``state_dir`` as the release before 0640cb3 wrote them:
    PID.TAG.N, the worker named by its pid (``pid``) alone. -> how many were rewritten."""
    rewritten = 0
    conns = os.path.join(state_dir, "conns")
    for name in os.listdir(conns):
        path = os.path.join(conns, name)
        if not os.path.isfile(path):
            continue                        # (holders/: this release's lease owners)
        with open(path) as f:
            raw = f.read()
        if not raw:
            continue
        table = json.loads(raw)
        for key, leases in table.items():
            table[key] = {f"{pid}.{lease.rpartition('.')[0].partition('-')[2]}."
                          f"{lease.rpartition('.')[2]}": expiry
                          for lease, expiry in leases.items()}
            rewritten += len(leases)
        with open(path, "w") as f:
            f.write(json.dumps(table, separators=(",", ":")))
    return rewritten


@pytest.mark.skipif(not unshare_works(), reason="needs unshare --pid (CAP_SYS_ADMIN)")
def test_an_upgrade_frees_the_slots_the_previous_releases_killed_container_held(
        upstream, tmp_path):
    port = free_port()
    state_dir = str(tmp_path / "state")
    conf = gateway_conf([route("r", ["/*rest"], upstream.url, plugins={
        "limit_conn": {"limit": 1, "key": "route", "scope": "host"}})], workers=1)
    conf["server"].update(bind=[f"127.0.0.1:{port}"], state_dir=state_dir)
    conf["admin"] = {"bind": f"127.0.0.1:{free_port()}"}

    def status():
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /echo HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            return int(sock.recv(64).split()[1])

    runs = []
    try:
        runs.append(gateway_in_pid_namespace(tmp_path, conf, "previous"))
        wait_until(lambda: workers_in_namespace(runs[0]) and status() == 200)
        first_workers = workers_in_namespace(runs[0])
        held = socket.create_connection(("127.0.0.1", port), timeout=10)
        held.sendall(b"GET /slow/30 HTTP/1.1\r\nHost: h\r\n\r\n")
        wait_until(lambda: status() == 503)         # its slot is taken
        # The lease as the previous release wrote it (its worker's pid alone)
        assert as_previous_release(state_dir, first_workers[0]) == 1
        # A live holder's old lease still counts: no more than `limit` let in
        assert [status() for _ in range(3)] == [503] * 3
        os.killpg(runs[0].pid, signal.SIGKILL)      # the container's end: every process -9
        runs[0].wait(10)
        held.close()
        time.sleep(1.0)     # a container runtime's restart, a deployment's: never at once
        runs.append(gateway_in_pid_namespace(tmp_path, conf, "upgraded"))
        wait_until(lambda: workers_in_namespace(runs[1]))
        # (the premise: the new worker has the pid the killed one had)
        assert workers_in_namespace(runs[1]) == first_workers
        # before: 503, 503, 503 (for lease_seconds, 300 s), nothing in flight. (A pause
        # between: each answer's release follows its last byte, and a request sent at once
        # after it may come first on limit 1.)
        assert [status() for _ in range(3) if time.sleep(0.3) is None] == [200] * 3
    finally:
        for run in runs:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
                run.wait(10)
