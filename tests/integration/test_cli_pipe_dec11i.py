"""A command whose reader leaves (`gwserver settings | head -0`; Dec 11 i) printed two
tracebacks (BrokenPipeError, then the flush at exit) and exited 1, which `gwserver rollouts`
gives a meaning. Now quiet, with the status of a process SIGPIPE ended (141)."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_a_reader_that_leaves_gets_no_traceback():
    proc = subprocess.Popen([sys.executable, "-m", "gwserver", "settings"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()         # the reader leaves before the command writes (it imports first)
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (proc.returncode, err) == (141, b""), (proc.returncode, err[-600:])
