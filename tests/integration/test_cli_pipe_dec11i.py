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


def test_usr2_is_refused_with_a_line_that_says_what_to_do(launcher, upstream):
    """gunicorn's binary upgrade re-exec'd `python .../gwserver/__main__.py` (an ImportError
    traceback in the log under `python -m gwserver`); any new master would meet the old
    one's instance lock. The master now says so and serves on, its workers untouched."""
    import signal

    from ..conftest import gateway_conf, route, wait_until
    gw = launcher.gateway(gateway_conf([route("e", ["/echo"], upstream.url)]))
    before = set(gw.worker_pids())
    os.kill(gw.pid, signal.SIGUSR2)
    wait_until(lambda: "SIGUSR2 (gunicorn's binary upgrade) is not supported" in gw.log(),
               timeout=10)
    resp, _ = gw.request("GET", "/echo")
    assert resp.status == 200
    assert set(gw.worker_pids()) == before and gw.proc.poll() is None
    assert "Traceback" not in gw.log() and "ImportError" not in gw.log(), gw.log()[-2000:]
