"""Attack pass of 2026-12-16 (helper a39): does the CLI (`validate`, `put`, `list`, `status`)
tell an operator what the running gateway does with the items it refused? Real etcd, a real
gateway in etcd mode and real upstreams on 127.0.0.1.

The gateway's refusals depend on the order items came in; the CLI loads etcd afresh, in key
order. keep_served put back the served version of a refused route or upstream that was
served before; a refused item never served (a new route whose path another route holds, a
new consumer whose key another holds) went in first when its key sorts first, took what the
gateway's good item holds, and the good item was refused in the CLI's table in its place:
`validate` (and `put`) of an update of that good item said "error", where the gateway takes
it, and of the refused item unchanged "ok", where the gateway refuses it. The gateway itself
did the same at a fresh start from its snapshot (keep_last_good): the route that held the
path was fenced (503) and the consumer's key went to the newcomer.

Tried, no defect: an update of a served route refused for an unknown plugin, a consumer put
with a bad key_hash, an upstream deleted with --force under a route (waiting, 503): list,
status (exit 1 for the refusals, the waiting route counted apart), validate (exit 2, and 0
with a note for the waiting route) agree with the gateway; a stopped gateway's status is
STALE (exit 1) and list/validate judge afresh; a conf file with another runtime_dir: status
exit 2 ("no status"), list and validate judge afresh (docs/etcd.md says so)."""
import json
import time

from gwserver.plugins.key_auth import hash_key

from ..conftest import wait_until
from ..etcd_sync import PREFIX, gwcli, status_json
from .test_follow_live_dec16d import etcd_gateway, put
from .test_reload_truth_dec16j import restarted


def settled(gw, key):
    wait_until(lambda: key in status_json(gw).get("rejected", {}), timeout=5)


def test_a_new_route_refused_for_a_path_the_later_key_holds(launcher, tmp_path):
    """Route zz holds /p/:id; route aa (a key etcd lists before zz's) is put with /p/:name
    and refused (a parameter named otherwise at that position; priority -1, so its fence
    does not win /p/1 from zz). The CLI must judge as the gateway: zz's update is ok (and
    taken when put), aa unchanged an error."""
    etcd, gw = etcd_gateway(launcher, tmp_path)
    up = launcher.upstream("v1")
    put(etcd, "upstreams", "u", {"targets": [{"url": up.url}]})
    put(etcd, "routes", "zz", {"paths": ["/p/:id"], "upstream": "u"})
    wait_until(lambda: gw.admin_get("/admin/routes/zz")[0] == 200, timeout=5)
    aa = {"paths": ["/p/:name"], "upstream": "u", "priority": -1}     # (its fence loses)
    put(etcd, "routes", "aa", aa)
    settled(gw, "routes/aa")
    assert gw.request("GET", "/p/1")[0].status == 200       # zz serves it
    update = {"id": "zz", "paths": ["/p/:id"], "upstream": "u", "timeouts": {"read": 7}}
    out = gwcli(gw.conf_path, "routes", "validate", "-", stdin=json.dumps(update))
    assert out.returncode == 0 and "ok: 1 routes valid" in out.stdout, (out.stdout, out.stderr)
    out = gwcli(gw.conf_path, "routes", "validate", "-", stdin=json.dumps({"id": "aa", **aa}))
    assert out.returncode == 2, (out.stdout, out.stderr)
    out = gwcli(gw.conf_path, "routes", "put", "-", stdin=json.dumps(update))
    assert out.returncode == 0, (out.stdout, out.stderr)
    wait_until(lambda: "read" in json.dumps(json.loads(
        gw.admin_get("/admin/routes/zz")[1])), timeout=5)
    assert sorted(status_json(gw)["rejected"]) == ["routes/aa"]


def test_a_new_consumer_refused_for_a_key_the_later_one_holds(launcher, tmp_path):
    """Consumer zed holds key K; consumer abe (listed before zed) is put with K and refused.
    `consumers validate` and `put` of zed's update (a group added) must be ok, as the
    gateway takes it; abe unchanged an error."""
    etcd, gw = etcd_gateway(launcher, tmp_path)
    zed = {"credentials": {"key_auth": {"key_hash": hash_key("k-zed-1234567890")}}}
    put(etcd, "consumers", "zed", zed)
    wait_until(lambda: status_json(gw).get("consumers") == 1, timeout=5)
    put(etcd, "consumers", "abe", zed)
    settled(gw, "consumers/abe")
    update = {"id": "zed", "groups": ["partners"], **zed}
    out = gwcli(gw.conf_path, "consumers", "validate", "-", stdin=json.dumps(update))
    assert out.returncode == 0 and "ok: 1 consumers valid" in out.stdout, \
        (out.stdout, out.stderr)
    out = gwcli(gw.conf_path, "consumers", "validate", "-", stdin=json.dumps({"id": "abe",
                                                                             **zed}))
    assert out.returncode == 2, (out.stdout, out.stderr)
    out = gwcli(gw.conf_path, "consumers", "put", "-", stdin=json.dumps(update))
    assert out.returncode == 0, (out.stdout, out.stderr)
    wait_until(lambda: json.loads(etcd.client().get(f"{PREFIX}/consumers/zed")).get(
        "groups") == ["partners"], timeout=5)
    assert sorted(status_json(gw)["rejected"]) == ["consumers/abe"]


def cli(gw, *args, stdin=None, conf=None):
    out = gwcli(conf or gw.conf_path, *args, stdin=stdin)
    print("$", *args, "->", out.returncode, "\n", out.stdout, out.stderr)
    return out


def test_a_fresh_start_keeps_the_route_and_consumer_that_held_first(launcher, tmp_path):
    """The gateway behind the CLI: with zz and zed served and aa and abe refused for what
    they hold, a gateway started afresh (a reboot: runtime_dir gone, the snapshot there)
    loaded aa and abe first (their keys sort first): zz was refused and fenced (503 for
    /p/*), and zed's key authenticated as abe, where every host that saw them come serves
    zz and zed. It must serve as before the restart, and the CLI say so."""
    etcd, gw = etcd_gateway(launcher, tmp_path)
    up = launcher.upstream("v1")
    put(etcd, "upstreams", "u", {"targets": [{"url": up.url}]})
    put(etcd, "routes", "zz", {"paths": ["/p/:id"], "upstream": "u"})
    zed = {"groups": ["z"], "credentials": {"key_auth": {"key_hash": hash_key("k-zed-12345")}}}
    put(etcd, "consumers", "zed", zed)
    wait_until(lambda: gw.admin_get("/admin/routes/zz")[0] == 200, timeout=5)
    put(etcd, "routes", "aa", {"paths": ["/p/:name"], "upstream": "u", "priority": -1})
    put(etcd, "consumers", "abe", {**zed, "groups": ["a"]})
    wait_until(lambda: sorted(status_json(gw).get("rejected", {})) == REFUSED, timeout=5)
    time.sleep(1.5)         # (the snapshot is written once publications pause)
    gw = restarted(launcher, gw, tmp_path)
    wait_until(lambda: status_json(gw).get("rejected"), timeout=10)
    time.sleep(0.5)         # (the worker reads the generation)
    assert sorted(status_json(gw)["rejected"]) == REFUSED, status_json(gw)["rejected"]
    assert gw.request("GET", "/p/1")[0].status == 200
    assert json.loads(gw.admin_get("/admin/routes/zz")[1])["spec"]["paths"] == ["/p/:id"]
    out = gwcli(gw.conf_path, "consumers", "validate", "-", stdin=json.dumps(
        {"id": "zed", **zed, "groups": ["z", "y"]}))
    assert out.returncode == 0, (out.stdout, out.stderr)


REFUSED = ["consumers/abe", "routes/aa"]
