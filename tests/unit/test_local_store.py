"""The per-host store with real files: what its per-worker memo of keys and slots must not
change (one count per key across workers, another key's state never overwritten), the
failed-check budgets' give-back, and the caches of unknown credentials (issue 14)."""
import subprocess
import sys

import pytest

from gwserver.core.consumers import Directory, compile_consumer
from gwserver.plugins import load_registry
from gwserver.plugins.authlib import UnknownCache
from gwserver.plugins.key_auth import hash_key
from gwserver.state.store import LocalStore

HOUR = 3600.0

WORKER = """
import sys
from gwserver.state.store import LocalStore
store = LocalStore(sys.argv[1])
sys.stdin.readline()                    # all workers start together
allowed = sum(store.decide("token_bucket", f"r:route:{i % 3}", 300, 3600, 300).allowed
              for i in range(600))
print(allowed)
"""


def test_workers_deciding_the_same_keys_at_once_admit_exactly_the_limit(tmp_path):
    """Three processes, 600 decisions each over three keys of 300/hour: 900 admitted, exactly."""
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    counts = [int(proc.communicate(timeout=60)[0]) for proc in procs]
    assert sum(counts) == 900


class Tiny(LocalStore):
    SLOTS = 8           # the whole table is one probe run: a ninth key evicts the oldest
    PROBES = 8


def test_a_key_whose_slot_another_worker_reused_never_overwrites_that_keys_state(tmp_path):
    first, second = Tiny(str(tmp_path)), Tiny(str(tmp_path))        # two workers
    assert first.decide("token_bucket", "a", 2, HOUR, 2).allowed     # first remembers a's slot
    for i in range(7):
        second.decide("token_bucket", f"k{i}", 2, HOUR, 2)         # the table is full
    assert second.decide("token_bucket", "z", 2, HOUR, 2).remaining == 1   # z evicts a
    first.decide("token_bucket", "a", 2, HOUR, 2)      # the remembered slot is z's now
    # z's count went on: one left, then none
    assert [first.decide("token_bucket", "z", 2, HOUR, 2).allowed for _ in range(2)] == \
        [True, False]


def test_a_budget_unit_given_back_is_free_again_and_nothing_is_given_back_twice(tmp_path):
    store = LocalStore(str(tmp_path))
    store.give_back("b", 60)                # nothing taken: never a negative count
    take = [store.decide("sliding_window", "b", 2, 60, 0).allowed for _ in range(3)]
    assert take == [True, True, False]
    store.give_back("b", 60)
    assert [store.decide("sliding_window", "b", 2, 60, 0).allowed for _ in range(2)] == \
        [True, False]
    other = LocalStore(str(tmp_path))       # another worker gives back: the same count
    other.give_back("b", 60)
    assert store.decide("sliding_window", "b", 2, 60, 0).allowed


def test_unknown_credentials_are_bounded_and_forgotten_on_a_new_generation():
    cache = UnknownCache(60, 100)
    for i in range(10_000):                 # a flood of random keys
        cache.remember(b"k%d" % i, 1)
    assert len(cache.items) == 100
    assert cache.known_unknown(b"k9999", 1) and not cache.known_unknown(b"k0", 1)
    assert not cache.known_unknown(b"k9999", 2)      # the consumer table changed
    assert cache.items == {}


def test_unknown_credentials_expire():
    cache = UnknownCache(0.0, 10)           # 0 s: never remembered
    cache.remember(b"k", 1)
    assert not cache.known_unknown(b"k", 1)


@pytest.mark.parametrize("change", ["add", "replace", "remove"])
def test_every_change_of_the_directory_is_a_new_generation_and_a_new_scan(change):
    registry = load_registry()
    directory = Directory(registry)

    def consumer(cid, key):
        return compile_consumer(cid, {"credentials": {"key_auth": {"key_hash": hash_key(key)}}},
                                registry)
    directory.add(consumer("a", "ak_a"))
    before, scan = directory.generation, directory.credentials("key_auth")
    assert directory.credentials("key_auth") is scan          # once per generation
    if change == "add":
        directory.add(consumer("b", "ak_b"))
    elif change == "replace":
        directory.add(consumer("a", "ak_a2"))
    else:
        directory.remove("a")
    assert directory.generation > before
    assert directory.credentials("key_auth") != scan
