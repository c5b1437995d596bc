"""A review of what the merges of 9c7519f..bff7bbf left behind (twelve helpers' diffs applied
with ``git apply --3way``), against real gateways, upstreams and etcd. Each test failed on
89e96da.

1. ``gwserver consumers put`` of a list in which two consumers trade their API keys (alice
   takes bob's ``key_hash``, bob alice's, as ``consumers get`` prints them):
   f3632b5 taught the table to put such consumers in together (the gateway applies the
   CLI's one etcd transaction so), but the CLI still judged each item as it was put, and
   the first of the pair was refused for the key its partner still held: exit 2, nothing
   written, where docs/consumers.md says a trade in one transaction goes in (``validate``
   alike). The items are judged once all of them are in.
2. A ``redis+sentinel://`` or ``redis+cluster://`` URL whose password holds a "?" and one of
   redis-py's option names (``:Tr0ub4dor@horse?db=0@h1:26379,h2:26379/m``, or one that
   starts ``?db=``): the gateway's own parser takes the user part to the last "@"
   (f3632b5, docs/ratelimit.md: "--dump and log texts mask all of it"), but the masks
   took 6cb7882's query of redis-py options (with 8751222's test that hosts end the part
   before it, which ":" or "horse" passed) for the URL's, and ``check --dump``, the admin
   views and log texts showed the password from that "?" on: whole, for one that starts
   with it. A multi-host URL has no such query: its user part is masked to its last "@".
"""
import json
import subprocess
import sys

import pytest

from gwserver.plugins.key_auth import hash_key

from ..conftest import gateway_conf, route, to_toml, wait_until
from .test_attack_pass_dec04e import gwcli
from .test_auth_edges import get, upstream_saw
from .test_etcd import etcd_conf

KEY_A, KEY_B = "ak_live_merge_alice_00000001", "ak_live_merge_bob_0000000002"


# -- 1. consumers put: a list that trades keys ----------------------------------------------

def test_consumers_put_takes_a_list_whose_consumers_trade_their_keys(launcher, upstream,
                                                                       tmp_path):
    etcd = launcher.etcd()
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], [route(
        "k", ["/k/*rest"], upstream.url, plugins={"key_auth": {"cache_seconds": 0}})],
        workers=1))

    hashes = {KEY_A: hash_key(KEY_A), KEY_B: hash_key(KEY_B)}

    def consumers(*pairs):
        # as `consumers get` prints them: the stored hash, to edit and put back
        return json.dumps([{"id": cid, "credentials": {"key_auth": {"key_hash": hashes[key]}}}
                           for cid, key in pairs])

    def put_consumers(*pairs):
        return gwcli(gw, "consumers", "put", "-", stdin=consumers(*pairs))

    def served_as(key):
        status, body = get(gw.port, "/k/echo", {"X-API-Key": key})
        return upstream_saw(body)["x-consumer-id"] if status == 200 else status

    said = put_consumers(("alice", KEY_A), ("bob", KEY_B))
    assert said.returncode == 0, said
    wait_until(lambda: (served_as(KEY_A), served_as(KEY_B)) == ("alice", "bob"))
    said = gwcli(gw, "consumers", "validate", "-", stdin=consumers(("alice", KEY_B),
                                                                   ("bob", KEY_A)))
    assert said.returncode == 0 and "same credential" not in said.stderr, said
    said = put_consumers(("alice", KEY_B), ("bob", KEY_A))
    assert said.returncode == 0 and "same credential" not in said.stderr, said
    wait_until(lambda: (served_as(KEY_A), served_as(KEY_B)) == ("bob", "alice"), timeout=10)
    # a key another consumer keeps is still refused, in a list or alone
    said = put_consumers(("carol", KEY_A))
    assert said.returncode == 2 and "consumer carol" in said.stderr, said


# -- 2. a multi-host redis URL's password with a "?" ----------------------------------------

@pytest.mark.parametrize("password", ["Tr0ub4dor@horse?db=0", "?db=1Battery9staple"])
@pytest.mark.parametrize("hosts", ["redis+sentinel://:{}@127.0.0.1:26379,127.0.0.1:26380/m",
                                   "redis+cluster://:{}@127.0.0.1:7000,127.0.0.1:7001"])
def test_a_multi_host_redis_urls_password_never_shows_for_a_query_in_it(tmp_path, hosts,
                                                                           password):
    url = hosts.format(password)
    path = tmp_path / "gw.toml"
    path.write_text(to_toml(gateway_conf([], redis={"url": url})))
    run = subprocess.run([sys.executable, "-m", "gwserver", "check", "-c", str(path), "--dump"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run         # the gateway reads it: its password works
    shown = run.stdout + run.stderr
    assert "***@127.0.0.1:" in shown, shown
    for piece in ("Tr0ub4dor", "horse", "db=0", "1Battery9staple"):
        assert piece not in shown, (piece, shown)
