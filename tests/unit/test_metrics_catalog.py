"""The master's private metrics directory: named by its pid; those of masters no longer
running go when the next one starts (a killed master cannot remove its own, and under
systemd the runtime directory is kept across restarts)."""
import os
import subprocess
import sys

from gwserver.server.metrics import PRIVATE_PREFIX, private_dir


def test_a_new_master_removes_the_dirs_of_dead_ones_only(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f"{PRIVATE_PREFIX}{dead_pid}-abc"
    live = tmp_path / f"{PRIVATE_PREFIX}{os.getppid()}-def"       # a running process's
    other = tmp_path / "something-else"
    for path in (stale, live, other):
        path.mkdir()
        (path / "counter_1.db").write_bytes(b"x")
    mine = private_dir(str(tmp_path))
    assert os.path.basename(mine).startswith(f"{PRIVATE_PREFIX}{os.getpid()}-")
    assert not stale.exists() and live.exists() and other.exists()
