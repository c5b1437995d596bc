"""Review of 0fa75ba (etcd sync), pure code (the integration tests, with real etcd and
gateways: tests/integration/test_review_attack_dec05w.py).

1. After a quiet watch, a check that finds no key under the prefix changed since our
   revision left the position where it was: a quiet prefix on a busy etcd kept its last
   full load's revision until a compaction passed it (a full reload, on a healthy
   cluster). etcd's revision is the position then.
3. A compaction between changes_since's two reads (at our revision, then at etcd's) came
   out of the second as EtcdRefused: "etcd refused the sync's call", an ERROR and
   NOT CONNECTED. It is Compacted, as from the first.
"""
from types import SimpleNamespace

import pytest

from gwserver.sync.etcd import Compacted, EtcdClient, EtcdRefused
from gwserver.sync.watcher import ConfigSync


def checked(changes):
    """What expect_catch_up reads and sets, after a quiet watch at revision 10."""
    client = SimpleNamespace(changes_since=lambda prefix, revision, current: changes)
    return SimpleNamespace(quiet_watch="http://127.0.0.1:1", revision=10, catch_up=None,
                           prefix="/gw/", client=client)


def test_a_check_that_finds_nothing_changed_moves_the_position_to_etcd_s():
    sync = checked(0)
    ConfigSync.expect_catch_up(sync, 25)
    assert (sync.revision, sync.catch_up) == (25, None)         # 10 before
    sync = checked(2)                   # changes: the position stays, the watch brings them
    ConfigSync.expect_catch_up(sync, 25)
    assert (sync.revision, sync.catch_up) == (10, 25)           # the watch brings them


def test_a_compaction_between_the_two_reads_is_compacted():
    client = EtcdClient(["http://127.0.0.1:9"])
    answers = iter([{"header": {"revision": "25"}, "count": "3"},
                    EtcdRefused("http://127.0.0.1:9/v3/kv/range: HTTP 400 etcdserver: mvcc: "
                                "required revision has been compacted (gRPC code 11)")])

    def call(path, body):
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer
    client._call = call
    with pytest.raises(Compacted):
        client.changes_since("/gw/", 10, 25)
