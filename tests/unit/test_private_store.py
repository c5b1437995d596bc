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
