"""Directories a process keeps as its own (processes.own_dir: the master's metrics directory,
an orphaned worker's, a worker's private per-host store) are removed by the next process of
their kind once their owner is gone. Gone was judged by pid alone: a gateway in another PID
namespace (a container sharing /dev/shm with the host or another container), where the
owner's pid is no process, removed a live master's metrics directory, and every worker's
next metric write failed. The owner holds a flock on its directory, which any namespace sees.
"""
import os
import shutil
import subprocess
import sys

import pytest

from gwserver.processes import own_dir

PREFIX = "gwserver-dirtest-"


def remove_dead_in_a_new_pid_namespace(parent):
    """remove_dead_dirs(parent), run by a process in a PID namespace of its own."""
    code = ("import sys; from gwserver.processes import remove_dead_dirs; "
            "remove_dead_dirs(sys.argv[1], sys.argv[2])")
    subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", code,
                    str(parent), PREFIX], check=True, timeout=30, capture_output=True)


def can_unshare():
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "true"],
        capture_output=True).returncode == 0


@pytest.mark.skipif(not can_unshare(), reason="needs PID namespaces (root)")
def test_a_live_owner_in_another_pid_namespace_keeps_its_directory(tmp_path):
    live = own_dir(PREFIX, str(tmp_path))           # this process's: it runs
    made = subprocess.run(
        [sys.executable, "-c", "import sys; from gwserver.processes import own_dir; "
         "print(own_dir(sys.argv[1], sys.argv[2]))", PREFIX, str(tmp_path)],
        check=True, timeout=30, capture_output=True, text=True)
    dead = made.stdout.strip()                      # a process that has exited
    assert os.path.isdir(live) and os.path.isdir(dead)
    remove_dead_in_a_new_pid_namespace(tmp_path)
    assert not os.path.exists(dead)
    # before: removed too, this process's pid being none in that namespace
    assert os.path.isdir(live)
