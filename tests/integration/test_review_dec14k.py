"""Review of 75ef719 (helper r19), against a real etcd and a real gateway.

- One key of each kind the gateway does not read is logged (logged_kinds), but the keys of
  one such kind put in the same change took the UNREAD_LOGGED places first and were then
  skipped: a tool writing 20 keys `billing/...` with a route under a misspelt kind
  (`route/orders`) in one transaction had one line logged, for billing/, and the misspelt
  route was never named (its kind only counted, then never logged: the route a 404).
- Tried and holding: the config-sync process restarted by the master logs such a kind again
  (once per process); a misspelt kind put right and misspelt again with another id is
  still listed by `routes status`; a kind holding control characters or non-UTF-8 bytes,
  or longer than SHOWN_KEY, writes one escaped log line.
"""
import json
import os
import signal

import pytest

from gwserver.sync.watcher import UNREAD_LOGGED

from ..conftest import wait_until
from ..etcd_sync import PREFIX, routes_status, settle, synced_gateway

ROUTE = json.dumps({"paths": ["/orders"], "upstream": "users"})

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    for launcher, etcd, gw, _ in synced_gateway(tmp_path_factory.mktemp("r19")):
        yield launcher, etcd, gw


def test_a_misspelt_kind_put_with_many_keys_of_another_kind_is_named(setup):
    """UNREAD_LOGGED * 2 keys of a tool's kind and a route under a misspelt kind, in one
    transaction: each kind's first key is named, the misspelt route's too."""
    _, etcd, gw = setup
    client = etcd.client()
    foreign = [(f"{PREFIX}/billing/k{i:02d}", "x") for i in range(UNREAD_LOGGED * 2)]
    misspelt = f"{PREFIX}/route/orders"
    client.txn_put([*foreign, (misspelt, ROUTE)])
    try:
        settle(gw, len(foreign) + 1)
        log = gw.log()
        assert log.count(f"etcd key {PREFIX}/billing/") == 1, log[-3000:]
        assert f"etcd key {misspelt} is not read" in log, log[-3000:]
        # a slip of "routes": named each time it is put, as the gateway's own kinds are
        assert "the other keys of route/ are not logged" not in log
        assert "the other keys of billing/ are not logged" in log
        assert f"{UNREAD_LOGGED * 2 - 1} more keys under /gw/" in log     # unnamed billing
    finally:
        for key, _ in [*foreign, (misspelt, None)]:
            client.delete(key)
    settle(gw, 0)


def test_a_kind_is_logged_again_by_a_restarted_sync_and_always_listed(setup):
    """A misspelt kind put right and misspelt again (another id) is not logged again by
    the same process (by design) but `routes status` lists it; the sync process the
    master restarts logs it again. Control characters, non-UTF-8 bytes and a kind longer
    than SHOWN_KEY stay on one escaped line."""
    _, etcd, gw = setup
    client = etcd.client()
    first, again = f"{PREFIX}/typo/a", f"{PREFIX}/typo/b"
    forged = f"{PREFIX}/x\nWARNING forged\x1b[2J/k".encode() + b"\xff"
    long_kind = f"{PREFIX}/{'k' * 600}/id"
    client.put(first, ROUTE)
    settle(gw, 1)
    client.delete(first)
    settle(gw, 0)
    client.put(again, ROUTE)
    client.put(forged, "x")
    client.put(long_kind, "x")
    try:
        settle(gw, 3)
        run = routes_status(gw)
        assert "typo/b" in run.stdout + run.stderr, run
        log = gw.log()
        assert f"etcd key {first} is not read" in log
        assert f"etcd key {again} is not read" not in log
        assert "\nWARNING forged" not in log and "\x1b" not in log
        assert "x\\x0aWARNING forged\\x1b[2J/k\\xff is not read" in log, log[-3000:]
        assert "the other keys of x\\x0aWARNING forged\\x1b[2J/ are not logged" in log
        assert f"the other keys of {'k' * 256}... (600 characters, sha1 " in log
        old = gw.helper_pid("config-sync")
        os.kill(old, signal.SIGKILL)
        wait_until(lambda: gw.helper_pid("config-sync") not in (None, old), timeout=20)
        wait_until(lambda: f"etcd key {again} is not read" in gw.log(), timeout=20)
        assert gw.log().count("x\\x0aWARNING forged") >= 2
    finally:
        for key in (again, forged, long_kind):
            client.delete(key)
    settle(gw, 0)
