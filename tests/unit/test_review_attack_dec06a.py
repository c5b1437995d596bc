"""Review attack pass of 2026-12-06 (first), pure code: the table reader (sync/shm.py) over
real files in a temp dir. The defects are listed in
tests/integration/test_review_attack_dec06a.py."""
import json
import os
import struct

from gwserver.sync.shm import TablePublisher, TableReader

UP = {"targets": [{"url": "http://127.0.0.1:9"}]}


def item(version, spec):
    return [version, json.dumps(spec)]


def overwrite_counter(runtime_dir, generation):
    """As a hand or a script does it: in place, the same file (no new counter to re-open)."""
    fd = os.open(os.path.join(runtime_dir, "generation"), os.O_WRONLY)
    try:
        os.pwrite(fd, struct.pack("<Q", generation), 0)
    finally:
        os.close(fd)


def test_a_counter_overwritten_lower_in_place_rolls_no_reader_back(tmp_path):
    """Defect 1. Generation 1 published whole, 2 to 6 as changes (the base, written once
    publications pause, still at 1); a reader at 6. The counter is overwritten in place
    with 3: the reader read the base of 1 and the changes 2 and 3, and served the table of
    generation 3 (upstream "gone", removed at 5, back) until the counter was written back.
    A number below ours in the same counter is only ever a whole table of that number."""
    run = str(tmp_path / "run")
    table = {"routes": {}, "upstreams": {"up": item(1, UP), "gone": item(1, UP)}}
    publisher = TablePublisher(run, lambda: table)
    publisher.publish(None, 1, full=True)
    for revision in range(2, 7):
        publisher.publish({"upstreams": {"up": item(revision, UP)} if revision != 5 else
                           {"gone": None}}, revision)
    publisher.close()                           # no base rewritten: it lags, as under load
    reader = TableReader(run)
    assert reader.changed()
    steps, generation = reader.updates()
    assert generation == 6
    reader.record(generation, 6, 0)
    overwrite_counter(run, 3)
    assert reader.changed()
    assert reader.updates() == ([], 6)
    overwrite_counter(run, 6)                   # what _check_counter writes back
    assert not reader.changed()


def test_a_counter_renumbered_in_place_with_its_whole_table_is_still_taken(tmp_path):
    """What the rule keeps (as before 6ee2711): a counter numbered again in place, below
    ours, with a whole table of that very number published, is followed."""
    run = str(tmp_path / "run")
    table = {"routes": {}, "upstreams": {"up": item(1, UP)}}
    publisher = TablePublisher(run, lambda: table)
    for revision in range(1, 6):
        publisher.publish(None, revision, full=True)
    reader = TableReader(run)
    assert reader.changed()
    reader.record(reader.updates()[1], 5, 0)
    table["upstreams"]["up"] = item(9, UP)
    publisher.close()
    overwrite_counter(run, 0)
    again = TablePublisher(run, lambda: table)      # a counter of 0: numbered from 1 again
    assert again.publish(None, 9, full=True) == 1
    assert reader.changed()
    steps, generation = reader.updates()
    assert [(kind, doc["revision"]) for kind, doc in steps] == [("full", 9)] and generation == 1


def test_a_closed_reader_holds_no_descriptor_and_opens_again_when_asked(tmp_path):
    """Defect 2's TableReader.close(): the counter's descriptor is let go."""
    run = str(tmp_path / "run")
    publisher = TablePublisher(run, lambda: {"routes": {}, "upstreams": {}})
    publisher.publish(None, 1, full=True)
    reader = TableReader(run)
    assert reader.changed()
    held = reader.counter
    reader.close()
    assert reader.counter is None
    try:
        os.fstat(held)
        still_open = True
    except OSError:
        still_open = False
    assert not still_open
    reader.close()                              # twice: nothing to let go
    assert reader.changed() and reader.counter is not None     # opened again
    reader.close()
    publisher.close()


def test_a_table_of_another_prefix_is_read_once_not_at_each_look(tmp_path, monkeypatch):
    """Defect 4. A worker of prefix /b/ over a runtime_dir whose table.json is /a/'s (the
    gateway restarted onto another prefix while etcd was down): changed() holds (the counter
    is not our generation), so each look, once a millisecond on the request path, parsed
    the whole foreign table again. Now a stat, until the file changes."""
    from gwserver.sync import shm
    run = str(tmp_path / "run")
    table = {"routes": {}, "upstreams": {"up": item(1, UP)}}
    publisher = TablePublisher(run, lambda: table, source={"prefix": "/a/"})
    publisher.publish(None, 1, full=True)
    publisher.close()
    reads, read = [], shm.read_published
    monkeypatch.setattr(shm, "read_published",
                        lambda path, full: reads.append(path) or read(path, full))
    reader = TableReader(run, "/b/")
    for _ in range(5):
        assert reader.changed()
        assert reader.updates() == ([], 0)
    assert reads.count(os.path.join(run, "table.json")) == 1
    ours = TablePublisher(run, lambda: table, source={"prefix": "/b/"})
    ours.publish(None, 2, full=True)           # a new file over it (renamed): read again
    ours.close()
    assert reader.changed()
    steps, generation = reader.updates()
    assert [kind for kind, _ in steps] == ["full"] and generation == 2
