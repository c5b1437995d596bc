"""Review of 6e8e962 and f2ac682 (helper r18), against a real etcd and a real gateway.

- With more keys of another tool under the prefix than status.json lists (UNREAD_SHOWN),
  sorted by name, a key of the gateway's own kinds that sorts after them (`routes/team/x`
  after `billing/...`) was left out of status.json's `unread` and of the sync log's named
  lines: `routes status` exited 0, its route answering 404 without a word.
- json_slip hinted a comment or a trailing comma for a raw control character inside a
  string (a newline pasted into a value, before `//` or `,}`): json refuses the newline, and
  the hint sent the operator looking for a comment that is not there.
"""
import json

import pytest

from gwserver.sync.watcher import UNREAD_SHOWN

from ..conftest import wait_until
from ..etcd_sync import PREFIX, gwcli, status_json, synced_gateway

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    yield from synced_gateway(tmp_path_factory.mktemp("r18"))


def test_a_misplaced_route_key_is_named_among_many_keys_of_another_tool(setup):
    """A prefix shared with another tool (docs/etcd.md allows a team's keys under it):
    UNREAD_SHOWN + 1 of its keys sort before `routes/`. The route put under an id holding
    a "/" is still named, in status.json, the log and `routes status` (exit 1)."""
    _, etcd, gw, _ = setup
    client = etcd.client()
    foreign = [(f"{PREFIX}/billing/k{i:04d}", "x") for i in range(UNREAD_SHOWN + 1)]
    mistaken = f"{PREFIX}/routes/team/orders"
    client.txn_put([*foreign, (mistaken, json.dumps({"paths": ["/orders"],
                                                      "upstream": "users"}))])
    try:
        wait_until(lambda: status_json(gw).get("unread_total") == len(foreign) + 1,
                   timeout=10)
        state = status_json(gw)
        assert len(state["unread"]) == UNREAD_SHOWN
        assert "routes/team/orders" in state["unread"], sorted(state["unread"])[-3:]
        assert gw.request("GET", "/orders")[0].status == 404
        run = gwcli(gw.conf_path, "routes", "status")
        assert run.returncode == 1, run
        assert "problem: 1 key(s) of the gateway's kinds under /gw/ not read by it: " \
            "routes/team/orders" in run.stderr, run.stderr
        # the log names the gateway's own key among the first UNREAD_LOGGED, not a count
        assert f"etcd key {mistaken} is not read" in gw.log()
        # named: the route key and billing's first; the rest counted
        assert f"{len(foreign) - 1} more keys under /gw/" in gw.log()
    finally:
        for key, _ in [*foreign, (mistaken, None)]:
            client.delete(key)
    wait_until(lambda: not status_json(gw).get("unread_total"), timeout=10)


@pytest.mark.parametrize("text", [
    '{"id": "cc", "paths": ["/cc"], "upstream": "users", "note": "a\n// b"}',
    '{"id": "cc", "paths": ["/cc"], "upstream": "users", "note": "a,\t}"}',
])
def test_a_control_character_in_a_string_gets_no_comment_or_comma_hint(setup, text):
    """A raw newline or tab inside a string is what json refuses (an invalid control
    character): no hint of a comment or a trailing comma that the file does not have."""
    _, _, gw, _ = setup
    run = gwcli(gw.conf_path, "routes", "put", "-", stdin=text)
    assert run.returncode == 2 and "invalid JSON: Invalid control character" in run.stderr, run
    assert "comma" not in run.stderr and "comment" not in run.stderr, run.stderr



def test_a_tools_key_put_again_and_again_is_logged_once(setup):
    """Another tool's lock key under a shared prefix, put and deleted in turn: each put was
    a new unread key, and a warning line, for as long as the tool ran. One key of a kind the
    gateway does not read is logged once for the process's life; status.json still lists
    it while it is there."""
    _, etcd, gw, _ = setup
    client = etcd.client()
    key = f"{PREFIX}/locks/leader"
    for _ in range(3):
        client.put(key, "held")
        wait_until(lambda: "locks/leader" in (status_json(gw).get("unread") or {}), timeout=10)
        client.delete(key)
        wait_until(lambda: "locks/leader" not in (status_json(gw).get("unread") or {}),
                   timeout=10)
    assert gw.log().count(f"etcd key {key} is not read") == 1, gw.log()[-2000:]
    assert "the other keys of locks/ are not logged" in gw.log()
