"""The master's watch on its helpers' loops (server.app.Helper.check_progress and
GatewayArbiter.manage_helpers) against a real child process: what kills it, and what must
not (a review of the first version killed a healthy config-sync after the whole gateway had
been frozen for 22 s)."""
import os
import sys
import time
from types import SimpleNamespace

import pytest

from gwserver.helpers.helper import Heartbeat, beat_path
from gwserver.server.app import STARTUP_SECONDS, GatewayArbiter, Helper

from ..conftest import wait_until


def sleeper():
    return Helper("probe", [sys.executable, "-c", "import time; time.sleep(60)"])


@pytest.fixture
def helper(tmp_path, monkeypatch):
    monkeypatch.setenv("GWSERVER_LOCAL_STATE", str(tmp_path))
    child = sleeper()
    child.start()
    yield child
    child.stop()


def promise(child, seconds_from_now):
    at = time.monotonic() + seconds_from_now
    os.utime(beat_path(child.state_dir, child.name, child.pid), (at, at))


def killed(child):
    """Killed for its silence, and gone."""
    return child.killed_at is not None and not child.alive()


def test_its_start_promises_a_first_beat(helper):
    path = beat_path(helper.state_dir, helper.name, helper.pid)
    assert helper.watched and os.path.exists(path)
    assert abs(os.stat(path).st_mtime - (time.monotonic() + STARTUP_SECONDS)) < 5
    helper.check_progress(1.0)
    assert helper.killed_at is None and helper.alive()


def test_silence_past_the_promise_and_the_timeout_kills_it(helper):
    promise(helper, -3.0)                     # due 3 s ago
    helper.check_progress(5.0)
    assert helper.killed_at is None           # within helper_timeout
    helper.check_progress(2.0)
    wait_until(lambda: killed(helper), timeout=5)


def test_a_beat_moves_the_promise_on_a_monotonic_clock(helper):
    promise(helper, -30.0)
    beat = Heartbeat(helper.state_dir, helper.name)
    beat.path = beat_path(helper.state_dir, helper.name, helper.pid)     # as the child's
    beat.beat(10.0)
    assert abs(os.stat(beat.path).st_mtime - (time.monotonic() + 11.0)) < 2
    helper.check_progress(1.0)
    assert helper.killed_at is None and helper.alive()


def test_a_removed_beat_file_is_made_again_not_a_kill(helper):
    path = beat_path(helper.state_dir, helper.name, helper.pid)
    os.unlink(path)
    helper.check_progress(3.0)
    assert helper.killed_at is None and helper.watched and os.path.exists(path)
    assert abs(os.stat(path).st_mtime - (time.monotonic() + 3.0)) < 2    # a fresh promise


def test_no_state_dir_means_not_watched(tmp_path, monkeypatch):
    monkeypatch.setenv("GWSERVER_LOCAL_STATE", str(tmp_path / "removed"))
    child = sleeper()
    child.start()
    try:
        assert not child.watched
        child.check_progress(0.0)
        assert child.killed_at is None and child.alive()
    finally:
        child.stop()


def arbiter(child, timeout):
    fake = SimpleNamespace(helpers={"probe": child}, helpers_checked=0.0, master_gaps=(),
                           app=SimpleNamespace(conf=SimpleNamespace(
                               server={"helper_timeout": timeout})))
    fake.excused = lambda since: GatewayArbiter.excused(fake, since)
    return fake


def test_only_the_masters_own_gap_is_excused(helper):
    """The gateway frozen 20 s (the master's checks 20 s apart): a promise that fell due in
    the gap is not held against the helper; silence before the gap still counts."""
    master = arbiter(helper, 5.0)
    GatewayArbiter.manage_helpers(master)
    promise(helper, -17.0)              # due 17 s ago, inside the 20 s the master slept
    master.helpers_checked -= 20.0
    GatewayArbiter.manage_helpers(master)
    assert helper.killed_at is None and len(master.master_gaps) == 1
    promise(helper, -27.0)              # due 7 s before the gap: 7 s silent, timeout 5
    GatewayArbiter.manage_helpers(master)
    wait_until(lambda: killed(helper), timeout=5)


def test_a_shorter_promise_replaces_a_longer_one(tmp_path):
    """A start-up beat promised 60 s; the loop's turn is shorter, and a stop right after must
    be noticed a turn later, not 60 s later (a stopped config-sync was seen 62 s on)."""
    beat = Heartbeat(str(tmp_path), "probe")
    open(beat.path, "w").close()
    beat.beat(60.0)
    beat.beat(10.0)
    assert abs(os.stat(beat.path).st_mtime - (time.monotonic() + 11.0)) < 1
    written = os.stat(beat.path).st_mtime
    beat.beat(10.0)                     # within the second: no write
    assert os.stat(beat.path).st_mtime == written
