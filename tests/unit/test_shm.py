"""The table publisher (config-sync side) and reader (worker and health-helper side) over real
files in a temp dir, and the health helper following them: no sockets, no etcd."""
import json
import os
import subprocess
import time

import pytest

from gwserver.sync.shm import CHANGES, TablePublisher, TableReader

UP = {"targets": [{"url": "http://127.0.0.1:9"}]}


def item(version, spec):
    return [version, json.dumps(spec)]


@pytest.fixture(autouse=True)
def publishers_closed(monkeypatch):
    """Every publisher a test makes is closed after it: its base writer thread otherwise
    outlived the test, and wrote (and logged) into the test's removed temp dir later."""
    made, init = [], TablePublisher.__init__

    def recording_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(self)
    monkeypatch.setattr(TablePublisher, "__init__", recording_init)
    yield
    for publisher in made:
        publisher.close()


def test_close_ends_the_base_writer_and_nothing_is_written_after_it(tmp_path, publisher):
    publisher.publish(None, 1, full=True)
    publisher.publish({}, 2)                    # a base pending for the writer thread
    started = time.monotonic()
    publisher.close()
    assert not publisher.writer.is_alive() and time.monotonic() - started < 2.0
    (tmp_path / "table.json").unlink()          # the writer's 1 s check would write it again
    time.sleep(publisher.BASE_CHECK + 0.5)
    assert not (tmp_path / "table.json").exists()


@pytest.fixture
def table():
    return {"routes": {}, "upstreams": {}}


@pytest.fixture
def publisher(tmp_path, table):
    return TablePublisher(str(tmp_path), lambda: table)


def test_reader_sees_nothing_until_something_is_published(tmp_path):
    reader = TableReader(str(tmp_path / "empty"))
    assert reader.changed() is False


def test_first_full_then_deltas_and_the_generation_advances(tmp_path, publisher, table):
    table["upstreams"]["up"] = item(1, UP)
    assert publisher.publish(None, 1, full=True) == 1
    reader = TableReader(str(tmp_path))
    assert reader.changed()
    steps, generation = reader.updates()
    assert [kind for kind, _ in steps] == ["full"] and generation == 1
    assert steps[0][1]["table"]["upstreams"] == {"up": item(1, UP)}
    reader.generation = generation
    assert not reader.changed()                 # nothing new: nothing to read
    publisher.publish({"routes": {"r": item(2, {"paths": ["/r"], "upstream": "up"})}}, 2)
    publisher.publish({"routes": {"r": None}}, 3)
    assert reader.changed()
    steps, generation = reader.updates()
    assert [(kind, doc["generation"]) for kind, doc in steps] == [("delta", 2), ("delta", 3)]
    assert generation == 3 and steps[1][1]["routes"] == {"r": None}


def test_a_reader_behind_the_kept_changes_gets_the_whole_table(tmp_path, publisher, table):
    table["upstreams"]["up"] = item(1, UP)
    publisher.publish(None, 1, full=True)
    for revision in range(2, 6):
        publisher.publish({"upstreams": {"up": item(revision, UP)}}, revision)
    table["upstreams"]["up"] = item(5, UP)
    publisher.flush()                           # the base the background thread would write
    os.unlink(tmp_path / CHANGES / "3.json")    # pruned, as KEEP_CHANGES does
    reader = TableReader(str(tmp_path))
    reader.generation = 2
    assert reader.changed()                     # (opens the counter updates() reads)
    steps, generation = reader.updates()
    assert [kind for kind, _ in steps] == ["full"] and generation == 5


def test_a_new_publisher_continues_the_numbering(tmp_path, publisher):
    publisher.publish(None, 1, full=True)
    publisher.publish({}, 2)
    again = TablePublisher(str(tmp_path), lambda: {"routes": {}, "upstreams": {}})
    assert again.publish({}, 3) == 3


@pytest.mark.parametrize("damage", [b"", b"\x00" * 3, b"\x00" * 64])
def test_a_damaged_generation_file_is_rewritten_at_the_newest_generation(tmp_path, publisher,
                                                                          damage):
    """Truncated by another process, it crash-looped a new sync process (mmap past the end
    of the file) for as long as it stayed so."""
    publisher.publish(None, 1, full=True)
    publisher.publish({}, 2)
    publisher.publish({}, 3)
    inode = (tmp_path / "generation").stat().st_ino
    (tmp_path / "generation").write_bytes(damage)
    again = TablePublisher(str(tmp_path), lambda: {"routes": {}, "upstreams": {}})
    assert again.generation == 3                # workers never see the numbering go back
    assert again.publish({}, 4) == 4
    # rewritten in place: running workers map this file and never open it again
    assert (tmp_path / "generation").stat().st_ino == inode


def test_a_change_file_left_half_written_is_no_generation(tmp_path, publisher):
    """A sync process killed mid-write leaves changes/N.json.PID.tmp: taken for generation N,
    a damaged counter was rewritten past every published file, and workers re-read the
    files on every request until the next publication."""
    publisher.publish(None, 1, full=True)
    publisher.publish({}, 2)
    (tmp_path / CHANGES / "9.json.4242.tmp").write_bytes(b'{"generation": 9')
    (tmp_path / "generation").write_bytes(b"")
    again = TablePublisher(str(tmp_path), lambda: {"routes": {}, "upstreams": {}})
    assert again.generation == 2


def test_what_a_killed_sync_process_was_writing_is_removed_at_the_next_start(tmp_path,
                                                                            publisher):
    """Its NAME.PID.tmp files stayed forever (nothing else removes them); a live process's
    write in progress, and files of other names, are left alone."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    snapshot_dir = tmp_path / "var"
    snapshot_dir.mkdir()
    stale = [tmp_path / CHANGES / f"9.json.{dead.pid}.tmp", tmp_path / f"table.json.{dead.pid}.tmp",
             snapshot_dir / f"snapshot.json.{dead.pid}.tmp"]
    kept = [tmp_path / CHANGES / f"9.json.{os.getpid()}.tmp",
            snapshot_dir / f"other.json.{dead.pid}.tmp", snapshot_dir / "notes.tmp"]
    for path in stale + kept:
        path.write_bytes(b'{"generation": 9')
    TablePublisher(str(tmp_path), lambda: {"routes": {}, "upstreams": {}},
                   snapshot_path=str(snapshot_dir / "snapshot.json"))
    assert [p.exists() for p in stale] == [False] * 3
    assert [p.exists() for p in kept] == [True] * 3


def test_a_reader_takes_the_newest_files_while_the_counter_is_cut_short(tmp_path, publisher,
                                                                        table):
    table["upstreams"]["up"] = item(1, UP)
    publisher.publish(None, 1, full=True)
    publisher.publish({"upstreams": {"up": item(2, UP)}}, 2)
    (tmp_path / "generation").write_bytes(b"")
    reader = TableReader(str(tmp_path))
    assert reader.changed()                     # a reader with nothing yet
    steps, generation = reader.updates()
    assert [kind for kind, _ in steps] == ["full", "delta"] and generation == 2
    reader.generation = generation
    assert not reader.changed()
    assert publisher.publish({}, 3) == 3        # the publication writes it whole again
    assert reader.changed() and reader.updates()[1] == 3


def test_health_checker_follows_the_table_and_stops_re_reading_it(tmp_path, publisher, table):
    """Checker.follow applied updates but never advanced its reader: every 0.2 s after the
    first change it parsed the whole published table again."""
    from gwserver.helpers.health import Checker
    from gwserver.settings import parse_conf
    conf = parse_conf({"etcd": {"endpoints": ["http://127.0.0.1:2379"],
                                "runtime_dir": str(tmp_path)}})
    table["upstreams"]["up"] = item(1, UP)
    publisher.publish(None, 1, full=True)
    checker = Checker(conf, str(tmp_path / "state"))
    assert "up" in checker.table.upstreams
    assert checker.reader.generation == 1 and not checker.reader.changed()
    publisher.publish({"routes": {"r": item(2, {"paths": ["/r"], "upstream": "up"})}}, 2)
    checker.follow()
    assert "r" in checker.table.router.routes
    assert checker.reader.generation == 2 and not checker.reader.changed()
    assert not os.path.exists(tmp_path / "workers" / str(os.getpid()))   # not a worker


def test_health_metrics_are_written_by_prometheus_client_with_labels_escaped(tmp_path):
    """health.prom was written by hand, label values unescaped."""
    from prometheus_client.parser import text_string_to_metric_families
    from gwserver.helpers.health import METRICS_FILE, Checker
    checker = Checker.__new__(Checker)          # only the counts and the state dir matter here
    checker.state_dir = str(tmp_path)
    odd = 'http://h:80/a"b\\c\nd'
    checker.counts = {(f"pool|{odd}", "failure"): 3, ("pool|http://h:81", "success"): 7}
    checker.write_metrics()
    text = (tmp_path / METRICS_FILE).read_text()
    samples = {(s.labels["upstream"], s.labels["target"], s.labels["result"]): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples == {("pool", odd, "failure"): 3, ("pool", "http://h:81", "success"): 7}
    assert 'gwserver_health_checks_total{result="success",target="http://h:81",upstream="pool"}' \
        ' 7.0' in text


def test_the_base_writer_outlives_a_failed_write(tmp_path, publisher, table, caplog):
    """A base that cannot be written (here: a directory in the way; on a host: a full disk) is
    logged and written once it can be: the background writer does not die of it."""
    import time
    publisher.BASE_INTERVAL, publisher.MAX_STALE = 0.05, 0.2
    publisher.publish(None, 1, full=True)
    (tmp_path / "table.json").unlink()
    (tmp_path / "table.json").mkdir()
    table["upstreams"]["up"] = item(2, UP)
    publisher.publish({"upstreams": {"up": item(2, UP)}}, 2)
    deadline = time.monotonic() + 10
    while "cannot write the table base" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "cannot write the table base" in caplog.text
    while not publisher.dirty.is_set() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert publisher.dirty.is_set()             # still pending, so an exit's flush writes it
    (tmp_path / "table.json").rmdir()
    publisher.flush()
    assert (tmp_path / "table.json").is_file()
    base = json.loads((tmp_path / "table.json").read_text())
    assert base["generation"] == 2 and base["table"]["upstreams"] == {"up": item(2, UP)}


def test_the_base_writer_outlives_a_bug_and_writes_the_base_on_its_next_try(tmp_path, caplog):
    """Only an OSError was caught: anything else (a bug in building the table) ended the
    thread, and table.json and the snapshot went stale for good while the sync process beat
    on. It is logged with its traceback and tried again."""
    import time

    class Quick(TablePublisher):
        BASE_INTERVAL, MAX_STALE = 0.05, 0.2
    table, calls = {"routes": {}, "upstreams": {}}, []

    def full_table():
        calls.append(1)
        if len(calls) == 2:                 # the first background write
            raise RuntimeError("a bug")
        return table
    publisher = Quick(str(tmp_path), full_table)
    publisher.publish(None, 1, full=True)
    table["upstreams"]["up"] = item(2, UP)
    publisher.publish({"upstreams": {"up": item(2, UP)}}, 2)
    deadline = time.monotonic() + 10
    while json.loads((tmp_path / "table.json").read_text())["generation"] != 2:
        assert time.monotonic() < deadline, "the base was never written again"
        time.sleep(0.05)
    assert "writing the table base" in caplog.text and "RuntimeError: a bug" in caplog.text
    assert publisher.writer.is_alive() and len(calls) >= 3     # (a slow host: one more)


def test_a_killed_sync_process_s_leftovers_are_only_its_own_names_in_runtime_dir(tmp_path):
    """runtime_dir may be shared (/dev/shm, /run): a NAME.PID.tmp of another program there,
    whose pid is not alive here (another pid namespace's live writer), is not ours to remove."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    ours = [tmp_path / f"{name}.{dead.pid}.tmp" for name in ("table.json", "status.json",
                                                             "generation")]
    theirs = [tmp_path / f"app-cache.json.{dead.pid}.tmp", tmp_path / f"x.{dead.pid}.tmp"]
    for path in ours + theirs:
        path.write_bytes(b"{}")
    TablePublisher(str(tmp_path), lambda: {"routes": {}, "upstreams": {}})
    assert [p.exists() for p in ours] == [False] * 3
    assert [p.exists() for p in theirs] == [True] * 2


def test_only_the_snapshot_s_own_leftovers_are_removed_beside_it(tmp_path):
    """The snapshot's directory may hold another instance's snapshot ("snap.b", its writer
    perhaps alive in another pid namespace): its NAME.PID.tmp is not the snapshot's."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    runtime, var = tmp_path / "run", tmp_path / "var"
    var.mkdir()
    ours, theirs = var / f"snap.{dead.pid}.tmp", var / f"snap.b.{dead.pid}.tmp"
    for path in (ours, theirs):
        path.write_bytes(b"{}")
    TablePublisher(str(runtime), lambda: {"routes": {}, "upstreams": {}},
                   snapshot_path=str(var / "snap"))
    assert (ours.exists(), theirs.exists()) == (False, True)


def test_a_health_check_that_died_is_started_again(tmp_path, monkeypatch, caplog):
    """A target's check greenlet that died (an exception outside the probe) froze the
    target's last verdict for good: the checker's next turn starts it again, and says so."""
    import gevent
    from gwserver.helpers.health import Checker, target_key
    from gwserver.settings import parse_conf
    runs = []

    def watch(self, key, *args):
        runs.append(key)
        if len(runs) == 1:
            raise RuntimeError("a check that broke")
        gevent.sleep(60)
    monkeypatch.setattr(Checker, "watch", watch)
    conf = parse_conf({"upstreams": {"u": {"targets": [{"url": "http://127.0.0.1:9"}],
                                           "health_check": {"path": "/"}}}})
    checker = Checker(conf, str(tmp_path))
    key = target_key("u", "http://127.0.0.1:9")
    try:
        gevent.sleep(0.01)
        assert runs == [key] and checker.greenlets[key][0].dead
        checker.follow()
        gevent.sleep(0.01)
        assert runs == [key, key] and not checker.greenlets[key][0].dead
        assert "the check of target u|http://127.0.0.1:9 stopped (RuntimeError(" in caplog.text
        assert key in checker.states
    finally:
        for greenlet, *_ in checker.greenlets.values():
            greenlet.kill()


def test_a_target_taken_up_as_down_says_why_once_its_checks_fail(tmp_path, monkeypatch):
    """A checker the master restarted takes up the targets its predecessor judged down,
    without their reason; health.json was written again only when a verdict changed, so
    /admin/upstreams said such a target was unhealthy, for no reason, for as long as it
    stayed down. A failing probe's reason is written when it differs from the one written."""
    import json

    import gevent
    from gwserver.helpers import health
    from gwserver.helpers.health import HEALTH_FILE, Checker, target_key
    from gwserver.settings import parse_conf
    key = target_key("u", "http://127.0.0.1:9")
    (tmp_path / HEALTH_FILE).write_text(json.dumps(
        {"master": os.getppid(), "targets": {key: {"healthy": False, "since": 1.0}}}))
    errors = iter(["connect: refused", "connect: refused", "status 503"])
    monkeypatch.setattr(health, "probe", lambda *args: (False, next(errors, "status 503")))
    monkeypatch.setattr(health.random, "uniform", lambda low, high: 0.0 if low == 0 else 1.0)
    conf = parse_conf({"upstreams": {"u": {"targets": [{"url": "http://127.0.0.1:9"}],
                                           "health_check": {"path": "/", "interval": 0.05,
                                                            "max_interval": 0.05}}}})
    checker = Checker(conf, str(tmp_path))

    def written():
        return json.loads((tmp_path / HEALTH_FILE).read_text())["targets"][key]
    try:
        assert written()["healthy"] is False and written()["last_error"] == ""
        gevent.sleep(0.02)
        assert written().items() >= {"healthy": False, "last_error": "connect: refused"}.items()
        gevent.sleep(0.15)
        assert written()["last_error"] == "status 503"
    finally:
        for greenlet, *_ in checker.greenlets.values():
            greenlet.kill()


def test_a_reader_with_a_table_keeps_it_over_a_snapshot_published_in_a_wiped_dir(tmp_path,
                                                                                 table):
    """A sync process restarted on a wiped runtime_dir publishes its snapshot (numbered from
    1 again) until etcd answers: a reader that serves a table keeps it, one with none takes
    the snapshot, and both take the whole table that follows (attack pass dec05n)."""
    table["upstreams"]["up"] = item(7, UP)
    first = TablePublisher(str(tmp_path / "run"), lambda: table)
    for revision in range(1, 4):
        first.publish(None, revision, full=True)
    serving, helper = TableReader(str(tmp_path / "run")), TableReader(str(tmp_path / "run"))
    for reader in (serving, helper):
        assert reader.changed()
    serving.record(serving.updates()[1], 3, 0)             # a worker: on the board
    helper.generation = helper.updates()[1]                 # a helper: not
    first.close()
    os.rename(tmp_path / "run", tmp_path / "wiped")
    snapshot = {"routes": {}, "upstreams": {"up": item(5, UP)}}
    again = TablePublisher(str(tmp_path / "run"), lambda: snapshot,
                           source={"prefix": "/gw/", "snapshot": True})
    assert again.publish(None, 0, full=True) == 1
    for reader in (serving, helper):
        reader.reopen_if_replaced()
        assert reader.changed()
        assert reader.updates() == ([], 1) and reader.generation == 1   # kept its table
        assert not reader.changed()                                     # and reads no more
    board = json.loads((tmp_path / "run" / "workers" / str(os.getpid())).read_text())
    assert board == {"generation": 1, "revision": 3, "routes": 0, "refused": 0}
    starting = TableReader(str(tmp_path / "run"))
    assert starting.changed()
    steps, generation = starting.updates()
    assert [kind for kind, _ in steps] == ["full"] and generation == 1
    again.source = {"prefix": "/gw/"}           # etcd answered: its table, whole
    again.publish(None, 9, full=True)
    for reader in (serving, helper, starting):
        reader.generation = generation
        assert reader.changed()
        steps, _ = reader.updates()
        assert [(kind, doc["revision"]) for kind, doc in steps] == [("full", 9)]


@pytest.mark.parametrize("published_after", [0, 1])
def test_a_reader_takes_the_whole_table_of_a_replaced_counter_whatever_its_number(
        tmp_path, table, published_after):
    """A worker that lagged at generation 1 of a sync process killed with its runtime_dir
    removed: the next sync process numbers from 1 again, and the worker at the old 1 took the
    new 1 for the table it had (a CI run's 404s for etcd routes, for good), or applied the new
    2, a delta, onto its old table. Once the counter is replaced, its whole table first."""
    table["upstreams"]["up"] = item(7, UP)
    first = TablePublisher(str(tmp_path / "run"), lambda: table)
    first.publish(None, 1, full=True)
    reader = TableReader(str(tmp_path / "run"))
    assert reader.changed()
    reader.record(reader.updates()[1], 1, 0)
    for revision in range(2, 7):                # published while the reader did not look
        first.publish({"upstreams": {"up": item(revision + 7, UP)}}, revision)
    first.close()
    os.rename(tmp_path / "run", tmp_path / "wiped")
    whole = {"routes": {}, "upstreams": {"up": item(20, UP)}}
    again = TablePublisher(str(tmp_path / "run"), lambda: whole)
    assert again.publish(None, 9, full=True) == 1
    for revision in range(10, 10 + published_after):
        again.publish({"upstreams": {"up": item(revision + 20, UP)}}, revision)
    reader.reopen_if_replaced()
    assert reader.changed()
    steps, generation = reader.updates()
    assert [(kind, doc["revision"]) for kind, doc in steps][:1] == [("full", 9)]
    assert generation == 1 + published_after
    reader.record(generation, 9, 0)
    assert not reader.changed()
