"""The table knows where it came from: etcd's cluster_id with the revision; a full load makes it
exactly what etcd holds, by value; one instance per runtime dir and snapshot (issue 17, 2-3)."""
import json
import os
import signal
import subprocess
import sys
import tomllib

import pytest

from gwserver.sync.shm import read_json

from ..conftest import TcpRelay, stop_process, to_toml, wait_until
from .test_etcd import PREFIX, UP, all_workers_at, etcd_conf, put, status_of


def upstream_of(gw, path):
    """The name of the upstream that answered ``path``, or the status if not 200."""
    resp, _ = gw.request("GET", path)
    return resp.getheader("X-Upstream") if resp.status == 200 else resp.status


def inline(upstream, path):
    return {"paths": [path], "upstream": UP(upstream)}


def stop_gateway(gw):
    os.kill(gw.pid, signal.SIGTERM)
    gw.proc.wait(20)


def check(tmp_path, conf):
    path = tmp_path / "check.toml"
    path.write_text(to_toml(conf))
    return subprocess.run([sys.executable, "-m", "gwserver", "check", "-c", str(path)],
                          capture_output=True, text=True, timeout=60).stdout


@pytest.fixture
def relays():
    made = []
    yield lambda member: made.append(TcpRelay(member.client_port)) or made[-1]
    for relay in made:
        relay.close()


def test_a_route_from_another_cluster_is_replaced_by_its_value(launcher, tmp_path):
    """Issue 17's report: cluster 1's r0 (revision 2) -> X left its snapshot and runtime
    table on the host; cluster 2's r0, also at revision 2, -> Y must be what is served."""
    x, y = launcher.upstream("x"), launcher.upstream("y")
    one = launcher.etcd("one")
    assert put(one.client(), "routes", "r0", inline(x, "/echo/r0")) == 2
    one_id = one.client().identity()[0]
    conf = etcd_conf(tmp_path, [one.url])
    first = launcher.gateway(conf)
    wait_until(lambda: upstream_of(first, "/echo/r0") == "x")
    wait_until(lambda: (read_json(conf["etcd"]["snapshot_path"]) or {}).get("cluster_id")
               == one_id)
    stop_gateway(first)
    one.stop()
    stop_process(x.proc)                                # X is dead: serving it means 502

    two = launcher.etcd("two")
    assert put(two.client(), "routes", "r0", inline(y, "/echo/r0")) == 2
    two_id = two.client().identity()[0]
    assert two_id != one_id
    conf["etcd"]["endpoints"] = [two.url]               # same runtime_dir, same snapshot
    assert f"belongs to etcd cluster {one_id}" in check(tmp_path, conf)
    second = launcher.gateway(conf)
    wait_until(lambda: upstream_of(second, "/echo/r0") == "y")
    assert [upstream_of(second, "/echo/r0") for _ in range(10)] == ["y"] * 10
    assert status_of(second)["cluster_id"] == two_id
    snapshot = wait_until(lambda: (s := read_json(conf["etcd"]["snapshot_path"])) and
                          s.get("cluster_id") == two_id and s)
    assert y.url in json.dumps(snapshot["table"]) and x.url not in json.dumps(snapshot["table"])
    assert f"came from etcd cluster {one_id}; etcd is cluster {two_id}" in second.log()
    assert "warning" not in check(tmp_path, conf)


def test_check_warns_of_a_snapshot_of_another_prefix(launcher, etcd_member, tmp_path):
    conf = etcd_conf(tmp_path, [etcd_member.url])
    path = conf["etcd"]["snapshot_path"]
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        json.dump({"generation": 1, "revision": 5, "prefix": "/other/", "cluster_id": "1",
                   "table": {"routes": {}, "upstreams": {}}}, f)
    out = check(tmp_path, conf)
    assert f"holds etcd prefix /other/, not {PREFIX}/" in out
    assert "belongs to etcd cluster 1;" in out


@pytest.fixture
def etcd_member(launcher):
    return launcher.etcd()


def backup(member, path):
    subprocess.run(["etcdctl", "--endpoints", member.url, "snapshot", "save", str(path)],
                   check=True, capture_output=True, timeout=60,
                   env={**os.environ, "ETCDCTL_API": "3"})


def restore(launcher, member, backup_path, data_dir):
    """Stop ``member``, restore ``backup_path`` into ``data_dir`` as the same member (same
    name, peer URL and token: the same cluster_id) and start it on the same ports."""
    member.stop()
    peer = f"http://127.0.0.1:{member.peer_port}"
    subprocess.run(["etcdctl", "snapshot", "restore", str(backup_path), "--data-dir",
                    str(data_dir), "--name", member.name, "--initial-cluster",
                    f"{member.name}={peer}", "--initial-advertise-peer-urls", peer,
                    "--initial-cluster-token", "gwtest"],
                   check=True, capture_output=True, timeout=60,
                   env={**os.environ, "ETCDCTL_API": "3"})
    return launcher.etcd(member.name, data_dir=data_dir,
                         ports=(member.client_port, member.peer_port))


def serves(gw, *paths):
    return {path: upstream_of(gw, path) for path in paths}


def test_an_etcd_restored_from_an_earlier_backup_lower_then_equal_revision(
        launcher, upstream, etcd_member, tmp_path, relays):
    member, relay = etcd_member, relays(etcd_member)
    client = member.client()
    put(client, "upstreams", "up", UP(upstream))
    put(client, "routes", "one", {"paths": ["/echo/one"], "upstream": "up"})
    put(client, "routes", "two", {"paths": ["/echo/two"], "upstream": "up"})
    backup(member, tmp_path / "backup.db")
    at_backup = client.revision()
    put(client, "routes", "one", {"paths": ["/echo/one-changed"], "upstream": "up"})
    put(client, "routes", "three", {"paths": ["/echo/three"], "upstream": "up"})
    client.delete(f"{PREFIX}/routes/two")
    gw = launcher.gateway(etcd_conf(tmp_path, [relay.url]))
    wait_until(lambda: all_workers_at(gw, client.revision()))
    paths = ("/echo/one", "/echo/one-changed", "/echo/two", "/echo/three", "/echo/four")
    assert serves(gw, *paths) == dict(zip(paths, [404, "main", 404, "main", 404]))
    cluster_id = status_of(gw)["cluster_id"]

    # lower: the backup's revision is below the gateway's
    member = restore(launcher, member, tmp_path / "backup.db", tmp_path / "restored-1")
    client = member.client()
    assert client.identity() == (cluster_id, at_backup)
    wait_until(lambda: serves(gw, *paths) == dict(zip(paths, ["main", 404, "main", 404, 404])),
               timeout=25)
    assert "went backwards" in gw.log()

    # equal: follow two more changes, then restore again behind the gateway's back and
    # write it back up to the very revision the gateway has, with other values
    put(client, "routes", "one", {"paths": ["/echo/one-changed"], "upstream": "up"})
    followed = put(client, "routes", "three", {"paths": ["/echo/three"], "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, followed))
    relay.cut()
    wait_until(lambda: status_of(gw)["connected"] is False)
    member = restore(launcher, member, tmp_path / "backup.db", tmp_path / "restored-2")
    client = member.client()
    put(client, "routes", "two", {"paths": ["/echo/two"], "upstream": "up"})
    assert put(client, "routes", "four", {"paths": ["/echo/four"], "upstream": "up"}) == followed
    assert client.identity() == (cluster_id, followed)
    relay.restore()
    wait_until(lambda: serves(gw, *paths) == dict(zip(paths, ["main", 404, "main", 404,
                                                              "main"])), timeout=25)
    assert "the connection to etcd was lost" in gw.log()
    assert status_of(gw)["revision"] == followed


def test_an_etcd_wiped_and_refilled_to_an_equal_revision(launcher, upstream, etcd_member,
                                                         tmp_path, relays):
    member, relay = etcd_member, relays(etcd_member)
    client = member.client()
    put(client, "upstreams", "up", UP(upstream))
    put(client, "routes", "a", {"paths": ["/echo/a"], "upstream": "up"})
    revision = put(client, "routes", "b", {"paths": ["/echo/b"], "upstream": "up"})
    gw = launcher.gateway(etcd_conf(tmp_path, [relay.url]))
    wait_until(lambda: all_workers_at(gw, revision))
    relay.cut()
    wait_until(lambda: status_of(gw)["connected"] is False)
    member.stop()
    wiped = launcher.etcd(member.name, ports=(member.client_port, member.peer_port),
                          data_dir=tmp_path / "wiped")
    fresh = wiped.client()
    put(fresh, "upstreams", "up", UP(upstream))
    put(fresh, "routes", "a", {"paths": ["/echo/a-new"], "upstream": "up"})
    assert put(fresh, "routes", "c", {"paths": ["/echo/c"], "upstream": "up"}) == revision
    relay.restore()
    paths = ("/echo/a", "/echo/a-new", "/echo/b", "/echo/c")
    wait_until(lambda: serves(gw, *paths) == dict(zip(paths, [404, "main", 404, "main"])),
               timeout=25)
    assert "the connection to etcd was lost" in gw.log()


def test_a_second_instance_on_the_same_runtime_dir_or_snapshot_refuses_to_start(
        launcher, upstream, etcd_member, tmp_path):
    conf = etcd_conf(tmp_path, [etcd_member.url], routes=[
        {"id": "s", "paths": ["/echo/s"], "upstream": UP(upstream)}])
    first = launcher.gateway(conf)
    second = launcher.gateway(conf, wait=False)
    assert second.proc.wait(30) == 2
    assert f"is in use by another gwserver (pid {first.pid}); give each instance its own: set " \
           f"[etcd] runtime_dir" in second.log()
    own_runtime = {**conf, "etcd": {**conf["etcd"], "runtime_dir": str(tmp_path / "own-run")}}
    third = launcher.gateway(own_runtime, wait=False)
    assert third.proc.wait(30) == 2
    assert f"(pid {first.pid}); give each instance its own: set [etcd] snapshot_path" \
        in third.log()
    own_both = {**conf, "etcd": {**own_runtime["etcd"],
                                 "snapshot_path": str(tmp_path / "own" / "snapshot.json")}}
    fourth = launcher.gateway(own_both)
    assert upstream_of(fourth, "/echo/s") == "main" and upstream_of(first, "/echo/s") == "main"
    assert first.proc.poll() is None and fourth.proc.poll() is None


def test_a_reload_onto_another_instances_runtime_dir_is_refused(launcher, upstream,
                                                                etcd_member, tmp_path):
    conf = etcd_conf(tmp_path, [etcd_member.url], routes=[
        {"id": "s", "paths": ["/echo/s"], "upstream": UP(upstream)}])
    first = launcher.gateway(conf)
    other = {**conf, "etcd": {**conf["etcd"], "runtime_dir": str(tmp_path / "other-run"),
                              "snapshot_path": str(tmp_path / "other" / "snapshot.json")}}
    second = launcher.gateway(other)
    moved = tomllib.loads(second.conf_path.read_text())
    moved["etcd"]["runtime_dir"] = conf["etcd"]["runtime_dir"]
    second.conf_path.write_text(to_toml(moved))
    os.kill(second.pid, signal.SIGHUP)
    wait_until(lambda: f"reload refused: {conf['etcd']['runtime_dir']} is in use by another "
                       f"gwserver (pid {first.pid})" in second.log())
    assert upstream_of(second, "/echo/s") == "main" and second.proc.poll() is None
