"""A worker that cannot open the state_dir's per-host table keeps one of its own in a private
directory; those of workers killed before their atexit ran are removed by the next one."""
import os
import tempfile

from gwserver.server.runtime import PRIVATE_STORE, open_local_store


def test_a_private_store_is_made_and_dead_workers_stores_are_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = tmp_path / f"{PRIVATE_STORE}999999999-abcd"      # no such pid
    dead.mkdir()
    (dead / "table").write_bytes(b"x" * 4096)
    alive = tmp_path / f"{PRIVATE_STORE}{os.getppid()}-efgh"  # a running process's
    alive.mkdir()
    other = tmp_path / "gwserver-worker-notapid"
    other.mkdir()
    unusable = tmp_path / "a-file"
    unusable.write_text("")                 # a state_dir that is a file: LocalStore fails
    store = open_local_store(str(unusable / "state"))
    assert store is not None
    mine = f"{PRIVATE_STORE}{os.getpid()}-"
    made = [p.name for p in tmp_path.iterdir() if p.name.startswith(mine)]
    assert len(made) == 1
    assert not dead.exists() and alive.exists() and other.exists()


def foreign_state_dir(tmp_path, monkeypatch):
    """The default state_dir's last resort under /tmp, made first by another user."""
    from gwserver import settings
    base = tmp_path / "gwserver-0"
    monkeypatch.setattr(settings, "shared_tmp_base", lambda: str(base))
    base.mkdir()
    os.chown(base, 65534, 65534)        # nobody's (the tests run as root)
    (base / "state").mkdir()
    os.chown(base / "state", 65534, 65534)
    return base / "state"


def test_a_worker_keeps_out_of_a_state_dir_another_user_made(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    state_dir = foreign_state_dir(tmp_path, monkeypatch)
    open_local_store(str(state_dir))
    assert os.listdir(state_dir) == []                  # nothing of ours written there
    assert [p.name[:len(PRIVATE_STORE)] for p in (tmp_path / "tmp").iterdir()] == \
        [PRIVATE_STORE]


def test_the_master_does_not_make_its_state_dir_again_in_another_users(tmp_path, monkeypatch,
                                                                       caplog):
    from types import SimpleNamespace
    from gwserver.server.app import GatewayArbiter
    state_dir = foreign_state_dir(tmp_path, monkeypatch)
    written = []
    master = SimpleNamespace(
        app=SimpleNamespace(conf=SimpleNamespace(server={"state_dir": str(state_dir)})),
        reloads=SimpleNamespace(rewrite=lambda: written.append("master.json")),
        state_dir_failure=None)
    GatewayArbiter.ensure_state_dir(master)
    GatewayArbiter.ensure_state_dir(master)            # said once, not every turn
    assert os.listdir(state_dir) == [] and written == []
    said = [r.getMessage() for r in caplog.records if "state_dir" in r.getMessage()]
    assert len(said) == 1 and "belongs to uid 65534" in said[0], said


def test_an_unexpected_error_in_a_reload_is_a_failed_reload_not_a_dead_master(caplog):
    """gunicorn's main loop ends the master on any exception of handle_hup: an error no check
    foresaw is logged, told to systemd, and recorded as the reload's failed verdict."""
    from types import SimpleNamespace
    from gwserver.server.app import GatewayArbiter
    recorded, told = [], []

    def boom():
        raise TypeError("string indices must be integers")
    master = SimpleNamespace(
        reload_on_hup=boom, notify=told.append, app=SimpleNamespace(conf="the running conf"),
        reloads=SimpleNamespace(record=lambda *args: recorded.append(args)))
    GatewayArbiter.handle_hup(master)
    assert recorded == [(False, "the running conf",
                         "unexpected error: TypeError('string indices must be integers')")]
    assert told and "reload failed" in told[0]
    assert any("reload failed: an unexpected error" in r.getMessage() for r in caplog.records)


def test_a_stop_signal_ends_the_wait_for_replacement_workers():
    """A SIGTERM that came while a reload waits for its new workers to serve (up to
    max(10 s, timeout)) is handled once the wait ends: waited out, the stop came 10 s later,
    and with graceful_timeout past systemd's TimeoutStopSec (a SIGKILL mid-drain)."""
    import queue
    import signal
    import time
    from types import SimpleNamespace
    from gwserver.server.app import GatewayArbiter
    master = SimpleNamespace(
        cfg=SimpleNamespace(timeout=30), num_workers=1, stop_asked=False,
        WORKERS={1: SimpleNamespace(age=1)}, serving=lambda worker: False,
        reap_workers=lambda: None)
    arbiter = GatewayArbiter.__new__(GatewayArbiter)
    arbiter.SIG_QUEUE = queue.SimpleQueue()
    arbiter.signal(signal.SIGHUP, None)
    assert not arbiter.stop_asked
    arbiter.signal(signal.SIGTERM, None)            # noted, and queued as gunicorn does
    assert arbiter.stop_asked and arbiter.SIG_QUEUE.qsize() == 2
    master.stop_asked = True
    started = time.monotonic()
    GatewayArbiter.wait_for_replacements(master)
    assert time.monotonic() - started < 1.0
