"""Per-host limit_conn leases held by a lock, not named by a pid (Dec 09, q).

0640cb3 named a lease's worker by pid and start time, so that a container started again,
whose workers get the dead run's pids, finds the dead run's slots free. A review (r4) showed
the other side: a gateway in another PID namespace on the same state_dir (an orphaned worker
still draining in one container, a new gateway in another) read the live worker's pid as a
process of its own namespace, with another start time, dropped its lease and let a second
request in on ``limit = 1``. A lease names a holder file now, on which its worker holds a
lock while it lives: alive is "locked", in any namespace, whatever the pids.
"""
import signal
import subprocess
import sys
import textwrap

import pytest

from gwserver.state.store import LocalStore

from ..conftest import ROOT, wait_until
from .test_attack_dec09d import unshare_works

HOLD_A_SLOT = textwrap.dedent("""
    import sys, time
    from gwserver.state.store import LocalStore
    claim = LocalStore(sys.argv[1]).conn_claim("route:r", 1, 300)
    print("held" if claim.lease else "refused", flush=True)
    time.sleep(60)
""")


@pytest.mark.skipif(not unshare_works(), reason="needs unshare --pid (root)")
def test_a_slot_held_in_another_pid_namespace_is_kept_while_its_worker_lives(tmp_path):
    directory = str(tmp_path)
    holder = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child=SIGKILL",
         sys.executable, "-c", HOLD_A_SLOT, directory],
        stdout=subprocess.PIPE, cwd=ROOT, start_new_session=True, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        store = LocalStore(directory)
        # the holder is pid 1 of its namespace: here pid 1 is another process, started
        # at another time. Before: its lease was taken for a dead worker's, and dropped.
        assert store.conn_claim("route:r", 1, 300).lease is None
        holder.send_signal(signal.SIGKILL)          # its namespace ends with it
        holder.wait(timeout=10)
        # gone: its slot is free at once, not in lease_seconds
        assert wait_until(lambda: store.conn_claim("route:r", 1, 300).lease, timeout=5)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=10)
