"""A full load of etcd serves what the hosts that saw the items come serve, whatever the
items' keys: two routes that want one path are settled as they came, not by their ids.

Loaded in etcd's key order, the route whose key sorts first took the path: after a fresh
start (runtime_dir gone, snapshot kept) a route's update that the watching hosts refused,
because a newcomer had taken the path it wanted, went in first and was accepted; the
newcomer was refused in its place (fenced, 503) and the route's last good paths answered
404. A host that joined with no snapshot at all let a newcomer refused everywhere else take
the path of a route that had held it since before the newcomer came, because the route was
updated later (loaded in the order of the items' last changes, it would go in after).
"""
import json
import shutil
import time

from ..conftest import stop_process, wait_until
from ..etcd_sync import status_json
from .test_follow_live_dec16d import put
from .test_late_attack_dec16r import etcd_gateway_at


def served_paths(gw, route_id):
    status, body = gw.admin_get(f"/admin/routes/{route_id}")
    return json.loads(body)["spec"]["paths"] if status == 200 else None


def served_by(gw, path):
    return json.loads(gw.request("GET", path)[1])["server"]


def rejected(gw):
    return sorted(status_json(gw).get("rejected", {}))


def serves_as(gw, observer, expected_rejected):
    """``gw``'s refusals are ``expected_rejected``, as ``observer``'s, once it has a table."""
    wait_until(lambda: status_json(gw).get("rejected"), timeout=10)
    time.sleep(0.5)         # (the worker reads the generation)
    assert rejected(gw) == rejected(observer) == expected_rejected, status_json(gw)


def test_a_refused_update_that_sorts_before_the_newcomer_stays_refused_after_a_fresh_start(
        launcher, tmp_path):
    """Route a serves /a; route zz is put with /n/:name, then a's update to /n/:id, which
    the gateways that see them come refuse (zz holds that position): they serve a at /a and
    zz at /n/*. Gateway g, its snapshot holding both, is restarted afresh: it loaded a's
    update before zz (etcd's key order) and accepted it; zz, put back from the snapshot,
    found its path taken and was fenced (503), /a a 404. Now g serves as o. (The snapshot
    without zz, put while g was down: test_late_attack_dec16r's newcomer test.)"""
    etcd = launcher.etcd()
    up = launcher.upstream("v1")
    observer = etcd_gateway_at(launcher, etcd, tmp_path, "o")
    gw = etcd_gateway_at(launcher, etcd, tmp_path, "g")
    put(etcd, "upstreams", "u", {"targets": [{"url": up.url}]})
    put(etcd, "routes", "a", {"paths": ["/a"], "upstream": "u"})
    put(etcd, "routes", "zz", {"paths": ["/n/:name"], "upstream": "u", "priority": -1})
    put(etcd, "routes", "a", {"paths": ["/n/:id"], "upstream": "u"})
    wait_until(lambda: rejected(gw) == rejected(observer) == ["routes/a"], timeout=5)
    time.sleep(1.5)         # (the snapshot is written once publications pause)
    stop_process(gw.proc)
    shutil.rmtree(tmp_path / "run-g", ignore_errors=True)
    gw = launcher.gateway(gw.conf)
    serves_as(gw, observer, ["routes/a"])
    assert gw.request("GET", "/a")[0].status == 200
    assert gw.request("GET", "/n/x")[0].status == 200
    assert served_paths(gw, "zz") == ["/n/:name"]


def test_a_host_that_joins_with_no_snapshot_leaves_the_path_to_the_route_that_held_it(
        launcher, tmp_path):
    """Route b serves /n/:id. Route aa is put with /n/:name, refused everywhere (b holds that
    position); b is then updated (another upstream, the same path). A gateway that joins
    with nothing served and no snapshot loaded aa first (its key sorts first): aa took
    /n/*, and b was refused in its place (fenced, 503) on that host alone. Loaded in the
    order the items came, b goes in first, as everywhere else."""
    etcd = launcher.etcd()
    v1, v2 = launcher.upstream("v1"), launcher.upstream("v2")
    observer = etcd_gateway_at(launcher, etcd, tmp_path, "o")
    put(etcd, "upstreams", "u", {"targets": [{"url": v1.url}]})
    put(etcd, "upstreams", "w", {"targets": [{"url": v2.url}]})
    put(etcd, "routes", "b", {"paths": ["/n/:id"], "upstream": "u"})
    put(etcd, "routes", "aa", {"paths": ["/n/:name"], "upstream": "u", "priority": -1})
    put(etcd, "routes", "b", {"paths": ["/n/:id"], "upstream": "w"})
    wait_until(lambda: rejected(observer) == ["routes/aa"], timeout=5)
    # (status.json is written before the workers read the generation: every one serves b's
    # update once a few requests in a row do)
    wait_until(lambda: all(served_by(observer, "/n/x") == "v2" for _ in range(4)), timeout=5)
    joined = etcd_gateway_at(launcher, etcd, tmp_path, "j")
    serves_as(joined, observer, ["routes/aa"])
    assert served_by(joined, "/n/x") == "v2"
    assert served_paths(joined, "b") == ["/n/:id"]
