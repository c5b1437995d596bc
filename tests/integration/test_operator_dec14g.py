"""A new operator follows docs/etcd.md and docs/routes.md with etcdctl and `gwserver routes`
against a real etcd and a real gateway syncing from it (pass o2).

- `routes status` run with a conf file of another prefix than the gateway's (a copy kept
  for the CLI, edited apart) printed the gateway's state as this conf file's, exit 0, while
  every `routes put` with it went where the gateway never reads.
- A key under the prefix that the gateway does not read (`/gw/route/x`, a kind misspelt;
  `/gw/routes/` with no id; `/gw/routes/team/orders`, an id with a `/`) was ignored without a
  word: the route answered 404, `routes status` said nothing of it, exit 0, and `routes
  list` listed the empty id as `ok`.
- JSON with a trailing comma or a comment (what a hand-written route file often has) was
  refused as `Expecting property name enclosed in double quotes` or `Expecting value`,
  which names neither; so did the gateway's rejection of such a value put with etcdctl.
"""
import json

import pytest

from ..conftest import to_toml, wait_until
from ..etcd_sync import PREFIX, gwcli, status_json, synced_gateway


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    yield from synced_gateway(tmp_path_factory.mktemp("o2"))


def served(gw, path):
    return gw.request("GET", path)[0].status


def test_status_with_a_conf_of_another_prefix_says_so(setup):
    """docs/etcd.md: `status` exits 0 only when all is well for this conf file. With
    `prefix = "/gwx"` in the CLI's copy, the gateway (prefix /gw) never reads what `put`
    writes: `status` now names both prefixes and exits 1."""
    _, etcd, gw, tmp = setup
    other = tmp / "cli-other-prefix.toml"
    other.write_text(to_toml({"etcd": {**gw.conf["etcd"], "prefix": "/gwx"}}))
    wait_until(lambda: gwcli(gw.conf_path, "routes", "status").returncode == 0, timeout=10)
    run = gwcli(other, "routes", "status")
    assert run.returncode == 1, run
    assert "problem: the gateway in " in run.stderr and "syncs etcd prefix /gw/, and " \
        f"{other} names /gwx/" in run.stderr, run.stderr
    assert gwcli(gw.conf_path, "routes", "status").returncode == 0
    put = gwcli(other, "routes", "put", "-",
                stdin=json.dumps({"id": "p", "paths": ["/p"], "upstream": "users"}))
    assert put.returncode == 0 and "put /gwx/routes/p" in put.stdout, put
    assert "warning: the gateway in " in put.stdout and "names /gwx/" in put.stdout


def test_keys_under_the_prefix_the_gateway_does_not_read_are_named(setup):
    """A route put with etcdctl under a misspelt kind, an empty id or an id holding `/`:
    the gateway serves none of them (docs/etcd.md: ids are one segment), and now says
    so: its log, status.json's `unread`, `routes status` (exit 1) and `routes list`."""
    _, etcd, gw, _ = setup
    client = etcd.client()
    value = json.dumps({"paths": ["/orders"], "upstream": "users"})
    keys = [f"{PREFIX}/route/orders", f"{PREFIX}/routes/", f"{PREFIX}/routes/team/orders"]
    for key in keys:
        client.put(key, value)
    try:
        wait_until(lambda: len(status_json(gw).get("unread") or {}) == 3, timeout=10)
        assert served(gw, "/orders") == 404
        unread = status_json(gw)["unread"]
        assert "not a key the gateway reads" in unread["route/orders"]
        assert "PREFIX/routes/ID" in unread["route/orders"]
        assert "an id is one segment" in unread["routes/team/orders"]
        assert "an id is one segment" in unread["routes/"]
        assert status_json(gw)["rejected"] == {}        # no item: nothing to reject
        run = gwcli(gw.conf_path, "routes", "status")
        assert run.returncode == 1, run
        assert "3 key(s) under /gw/ not read" in run.stdout, run.stdout
        # (route/orders, a slip of routes/, is one too; a kind no slip of the gateway's
        # may be a team's own keys: listed, no problem)
        assert "problem: 3 key(s) of the gateway's kinds under /gw/ not read by it: " \
            "route/orders, routes/, routes/team/orders" in run.stderr, run.stderr
        assert f"rejected {PREFIX}/route/orders" not in gw.log()
        assert f"etcd key {PREFIX}/route/orders is not read" in gw.log()
        listed = gwcli(gw.conf_path, "routes", "list")
        assert listed.returncode == 0, listed
        empty = [line for line in listed.stdout.splitlines() if line.startswith("\t")
                 and "revision" in line]
        assert empty and "\tIGNORED\t" in empty[0], listed.stdout
        assert "ok" not in empty[0].split("\t")
    finally:
        for key in keys:
            client.delete(key)
    wait_until(lambda: not status_json(gw).get("unread"), timeout=10)
    assert gwcli(gw.conf_path, "routes", "status").returncode == 0


@pytest.mark.parametrize("text, says", [
    ('{"id": "tc", "paths": ["/tc"], "upstream": "users",}', "JSON allows no trailing comma"),
    ('{"id": "tc", "paths": ["/tc",], "upstream": "users"}', "JSON allows no trailing comma"),
    ('// the orders route\n{"id": "tc", "paths": ["/tc"], "upstream": "users"}',
     "JSON has no comments"),
    ('{"id": "tc", "paths": ["/tc"], # why\n "upstream": "users"}', "JSON has no comments"),
])
def test_json_with_a_trailing_comma_or_a_comment_is_named(setup, text, says):
    """`routes put -` of a hand-written file, and the same value put with etcdctl: the
    refusal names the slip, in the CLI's error and in the gateway's rejection."""
    _, etcd, gw, _ = setup
    run = gwcli(gw.conf_path, "routes", "put", "-", stdin=text)
    assert run.returncode == 2 and "stdin: invalid JSON" in run.stderr, run
    assert says in run.stderr, run.stderr
    client = etcd.client()
    client.put(f"{PREFIX}/routes/tc", text)
    try:
        wait_until(lambda: "routes/tc" in status_json(gw)["rejected"], timeout=10)
        assert says in status_json(gw)["rejected"]["routes/tc"]
    finally:
        client.delete(f"{PREFIX}/routes/tc")
    wait_until(lambda: "routes/tc" not in status_json(gw)["rejected"], timeout=10)


def test_json_errors_that_are_no_comma_or_comment_say_no_such_hint(setup):
    """The hint is for those two slips alone: a quote missing is told as json tells it."""
    _, _, gw, _ = setup
    run = gwcli(gw.conf_path, "routes", "put", "-", stdin='{"id": "q", "paths": [/q"]}')
    assert run.returncode == 2 and "invalid JSON: Expecting value" in run.stderr, run
    assert "comma" not in run.stderr and "comment" not in run.stderr
