"""The master's watch on its helpers' loops (server.app.Helper.check_progress) against a real
child process: what kills it, and what must not (a review of the first version killed a
healthy config-sync after the whole gateway had been frozen for 22 s)."""
import os
import sys
import time

import pytest

from gwserver.helpers.helper import Heartbeat, beat_path
from gwserver.server.app import Helper, STARTUP_SECONDS

from ..conftest import wait_until


@pytest.fixture
def helper(tmp_path, monkeypatch):
    monkeypatch.setenv("GWSERVER_LOCAL_STATE", str(tmp_path))
    monkeypatch.delenv("GWSERVER_MASTER_PID", raising=False)
    child = Helper("probe", [sys.executable, "-c", "import time; time.sleep(60)"])
    child.start()
    yield child
    child.stop()


def promise(child, seconds_from_now):
    at = time.monotonic() + seconds_from_now
    os.utime(beat_path(child.state_dir, child.name, child.pid), (at, at))


def gone(child):
    return not child.alive()


def test_its_start_promises_a_first_beat(helper):
    path = beat_path(helper.state_dir, helper.name, helper.pid)
    assert helper.watched and os.path.exists(path)
    assert abs(os.stat(path).st_mtime - (time.monotonic() + STARTUP_SECONDS)) < 5
    helper.check_progress(1.0, 0.0)
    assert helper.alive()


def test_silence_past_the_promise_and_the_timeout_kills_it(helper):
    promise(helper, -3.0)                     # due 3 s ago
    helper.check_progress(5.0, 0.0)
    assert helper.alive()                     # within helper_timeout
    helper.check_progress(2.0, 0.0)
    wait_until(lambda: gone(helper), timeout=5)


def test_silence_while_the_master_did_not_run_does_not_count(helper):
    """After a gap in the master's own checks (the gateway frozen, a VM paused) the helpers
    get a full timeout to beat again."""
    promise(helper, -30.0)
    helper.check_progress(2.0, time.monotonic())
    time.sleep(0.5)
    assert helper.alive()


def test_a_beat_moves_the_promise_on_a_monotonic_clock(helper):
    promise(helper, -30.0)
    beat = Heartbeat(helper.state_dir, helper.name)
    beat.path = beat_path(helper.state_dir, helper.name, helper.pid)     # as the child would
    beat.beat(10.0)
    mtime = os.stat(beat.path).st_mtime
    assert abs(mtime - (time.monotonic() + 11.0)) < 2
    helper.check_progress(1.0, 0.0)
    assert helper.alive()


def test_a_missing_beat_file_is_no_reason_to_kill(helper):
    os.unlink(beat_path(helper.state_dir, helper.name, helper.pid))
    helper.check_progress(0.0, 0.0)
    time.sleep(0.3)
    assert helper.alive()


def test_no_state_dir_means_not_watched(tmp_path, monkeypatch):
    monkeypatch.setenv("GWSERVER_LOCAL_STATE", str(tmp_path / "removed"))
    child = Helper("probe", [sys.executable, "-c", "import time; time.sleep(60)"])
    child.start()
    try:
        assert not child.watched
        child.check_progress(0.0, 0.0)
        time.sleep(0.3)
        assert child.alive()
    finally:
        child.stop()
