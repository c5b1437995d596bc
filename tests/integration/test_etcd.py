"""Routes and upstreams from a real etcd (Debian's etcd-server), changed live (issue 3)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from gwserver.sync.shm import TablePublisher, read_json, worker_board

from ..conftest import TcpRelay, free_port, gateway_conf, route, wait_until

PREFIX = "/gw"


def etcd_conf(tmp_path, endpoints, routes=(), workers=2, **etcd):
    runtime = tmp_path / f"run-{len(os.listdir(tmp_path))}"
    return gateway_conf(list(routes), workers=workers, etcd={
        "endpoints": endpoints, "prefix": PREFIX, "runtime_dir": str(runtime),
        "snapshot_path": str(tmp_path / "state" / "snapshot.json"),
        "watch_idle_timeout": 2.0, "backoff_max": 0.5, "timeout": 1.0, **etcd})


def put(client, kind, item_id, value):
    data = value if isinstance(value, bytes) else json.dumps(value).encode()
    return client.put(f"{PREFIX}/{kind}/{item_id}", data)


def runtime_of(gw):
    import tomllib
    return tomllib.loads(gw.conf_path.read_text())["etcd"]["runtime_dir"]


def all_workers_at(gw, revision):
    """True once every live worker has applied a table of at least this etcd revision."""
    board = worker_board(runtime_of(gw))
    # Children not titled "worker" yet (just forked) are not known to be workers: with none
    # known, "all of them are at the revision" would hold of nothing.
    workers = [pid for pid in gw.worker_pids() if _is_worker(pid)]
    return bool(workers) and all(pid in board and (board[pid]["revision"] or 0) >= revision
                                 for pid in workers)


def _is_worker(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"worker" in f.read()
    except OSError:
        return False


def status_of(gw):
    return read_json(os.path.join(runtime_of(gw), "status.json"))


def serves(gw, path):
    return gw.request("GET", path)[0].status


UP = lambda upstream: {"targets": [{"url": upstream.url}]}  # noqa: E731


def serving(launcher, tmp_path, endpoint, client, upstream, route_id, path, **conf):
    """A gateway following etcd at ``endpoint``, serving one route (to ``upstream``)."""
    gw = launcher.gateway(etcd_conf(tmp_path, [endpoint], **conf))
    put(client, "upstreams", "up", UP(upstream))
    revision = put(client, "routes", route_id, {"paths": [path], "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, revision))
    return gw


def reboot(gw, conf):
    """Stop the gateway (it writes its snapshot on exit) and empty its runtime_dir, as a
    reboot empties /dev/shm: the next start has only the snapshot and etcd."""
    os.kill(gw.pid, signal.SIGTERM)
    gw.proc.wait(15)
    shutil.rmtree(conf["etcd"]["runtime_dir"])


def start_while_etcd_hangs(launcher, conf, member):
    """A gateway started while ``member`` is stopped, returned once it serves the snapshot
    (etcd answers again from then on)."""
    member.proc.send_signal(signal.SIGSTOP)
    try:
        gw = launcher.gateway(conf)
        wait_until(lambda: "serving snapshot" in gw.log(), timeout=15)
    finally:
        member.proc.send_signal(signal.SIGCONT)
    return gw


@pytest.fixture
def etcd(launcher):
    return launcher.etcd()


def test_put_update_delete_reach_every_worker(launcher, etcd, upstream, tmp_path):
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], workers=3))
    client = etcd.client()
    put(client, "upstreams", "up", UP(upstream))
    revision = put(client, "routes", "r1", {"paths": ["/one"], "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, revision))
    assert all(serves(gw, "/one") == 200 for _ in range(6))
    revision = put(client, "routes", "r1", {"paths": ["/uno"], "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, revision))
    assert serves(gw, "/one") == 404 and serves(gw, "/uno") == 200
    client.delete(f"{PREFIX}/routes/r1")
    revision = client.revision()
    wait_until(lambda: all_workers_at(gw, revision))
    assert serves(gw, "/uno") == 404
    # with etcd the health checker and the rollouts helper always run: any upstream may ask
    # for checks, any route for a rollout, later
    assert cmdline_roles(gw) == {"gwserver: config-sync": 1, "gwserver: health": 1,
                                 "gwserver: rollouts": 1, "gwserver: worker": 3}


def cmdline_roles(gw):
    roles = {}
    for pid in gw.worker_pids():
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            title = f.read().replace(b"\0", b" ").strip().decode()
        roles[title] = roles.get(title, 0) + 1
    return roles


def test_bad_values_are_rejected_alone_and_shown_in_status(launcher, etcd, upstream, tmp_path):
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url]))
    client = etcd.client()
    put(client, "upstreams", "up", UP(upstream))
    put(client, "routes", "good", {"paths": ["/good"], "upstream": "up"})
    put(client, "routes", "badjson", b"{not json")
    put(client, "routes", "badschema", {"paths": ["/x"], "upstream": "up", "colour": "red"})
    put(client, "routes", "badplugin", {"paths": ["/p"], "upstream": "up",
                                        "plugins": {"nope": {}}})
    revision = put(client, "upstreams", "badup", {"targets": [{"url": "ftp://x"}]})
    wait_until(lambda: all_workers_at(gw, revision))
    assert serves(gw, "/good") == 200
    rejected = status_of(gw)["rejected"]
    assert set(rejected) == {"routes/badjson", "routes/badschema", "routes/badplugin",
                             "upstreams/badup"}
    assert "invalid JSON" in rejected["routes/badjson"]
    assert "colour: unknown key" in rejected["routes/badschema"]
    assert "plugins.nope: unknown plugin" in rejected["routes/badplugin"]
    out = subprocess.run([sys.executable, "-m", "gwserver", "routes", "-c", str(gw.conf_path),
                          "status"], capture_output=True, text=True)
    assert out.returncode == 1 and "4 rejected item(s)" in out.stdout   # rejections: exit 1
    assert "routes/badjson: invalid JSON" in out.stdout
    assert "rejected /gw/routes/badjson: invalid JSON" in gw.log()
    metrics = open(os.path.join(runtime_of(gw), "metrics.prom")).read()
    assert 'gwserver_config_rejected_items{kind="routes"} 3.0' in metrics
    assert 'gwserver_config_rejected_items{kind="upstreams"} 1.0' in metrics
    assert "gwserver_config_etcd_connected 1.0" in metrics
    assert "gwserver_config_rejections_total 4.0" in metrics


def test_values_no_check_foresaw_neither_stop_the_sync_nor_later_changes(launcher, etcd,
                                                                          upstream, tmp_path):
    """Nesting past the JSON parser's recursion, an unclosed IPv6 bracket, an integer too
    large for a float: each crashed the sync process, which crash-looped on it, so no later
    change applied and the status blamed etcd."""
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url]))
    client = etcd.client()
    put(client, "upstreams", "up", UP(upstream))
    first = wait_until(lambda: (status_of(gw) or {}).get("pid"))
    put(client, "routes", "deep", b"[" * 100000 + b"]" * 100000)
    put(client, "upstreams", "bracket", {"targets": [{"url": "http://[::1:8080"}]})
    put(client, "routes", "huge", {"paths": ["/h"], "upstream": "up",
                                   "plugins": {"rate_limit": {"rate": 10 ** 400}}})
    revision = put(client, "routes", "good", {"paths": ["/good"], "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, revision))
    assert serves(gw, "/good") == 200
    rejected = status_of(gw)["rejected"]
    assert "nested too deep" in rejected["routes/deep"]
    assert "is not a URL" in rejected["upstreams/bracket"]
    assert "of a sensible size" in rejected["routes/huge"]
    assert sync_pid(gw) == first and "restarting it" not in gw.log()


def test_a_key_that_is_not_utf8_is_rejected_alone(launcher, etcd, upstream, tmp_path):
    """etcd keys are bytes: one under the prefix that is not UTF-8 (etcdctl put $'...\\xff')
    killed the sync process at every full load, so the master restarted it into the same
    crash and no later change applied; `routes list` died on it too."""
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url]))
    client = etcd.client()
    put(client, "upstreams", "up", UP(upstream))
    first = wait_until(lambda: (status_of(gw) or {}).get("pid"))
    client.put(f"{PREFIX}/routes/bad-\xff".encode("latin-1"),
               json.dumps({"paths": ["/bad"], "upstream": "up"}).encode())
    revision = put(client, "routes", "good", {"paths": ["/good"], "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, revision))
    assert serves(gw, "/good") == 200
    os.kill(sync_pid(gw), signal.SIGTERM)       # a restart reloads all: the key is read again
    wait_until(lambda: (status_of(gw) or {}).get("pid") not in (None, first))
    revision = put(client, "routes", "later", {"paths": ["/later"], "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, revision))
    assert serves(gw, "/later") == 200 and serves(gw, "/good") == 200
    rejected = status_of(gw)["rejected"]
    assert list(rejected) == ["routes/bad-\\xff"], rejected
    assert "bad-\\xff" in rejected["routes/bad-\\xff"]
    listed = cli(gw, "routes", "list")
    assert listed.returncode == 0 and "bad-\\xff\trevision" in listed.stdout, listed.stderr


def test_a_path_moved_between_routes_in_one_transaction_is_served_by_every_worker(
        launcher, etcd, upstream, tmp_path):
    """z leaves /p/:id and c takes /p/:name in one transaction. The workers applied the
    published change in another order than etcd's, met their own old z, and kept the old c
    for good without a word; a transaction in the other order left c refused forever."""
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], workers=2))
    client = etcd.client()
    put(client, "upstreams", "up", UP(upstream))
    put(client, "routes", "c", {"paths": ["/c/:name"], "upstream": "up"})
    revision = put(client, "routes", "z", {"paths": ["/p/:id"], "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, revision))
    def move(*routes):
        revision = client.txn_put([
            (f"{PREFIX}/routes/{route_id}",
             json.dumps({"paths": [path], "upstream": "up"}).encode())
            for route_id, path in routes])
        wait_until(lambda: all_workers_at(gw, revision))

    def answers(*paths):
        return [{serves(gw, path) for _ in range(8)} for path in paths]

    move(("z", "/q/:id"), ("c", "/p/:name"))          # the one leaving goes first
    assert answers("/p/x", "/q/x", "/c/x") == [{200}, {200}, {404}]
    assert status_of(gw)["rejected"] == {}
    move(("z", "/p/:id"), ("c", "/c/:name"))          # the one taking goes first
    assert answers("/p/x", "/q/x", "/c/x") == [{200}, {404}, {200}]
    assert status_of(gw)["rejected"] == {}


def test_a_route_waits_for_an_upstream_defined_later(launcher, etcd, upstream, tmp_path):
    """Waiting, a route holds its paths (503 after its own plugins): they used to fall
    through to a broader route, so a public catch-all served a route that has key_auth."""
    from gwserver.plugins.key_auth import hash_key
    conf = etcd_conf(tmp_path, [etcd.url], [route("public", ["/*rest"], upstream.url)])
    conf["consumers"] = {"ann": {"credentials": {"key_auth": {"key_hash": hash_key("ann-key")}}}}
    gw = launcher.gateway(conf)
    client = etcd.client()
    revision = put(client, "routes", "early", {"paths": ["/private/*rest"], "upstream": "late",
                                               "plugins": {"key_auth": {}}})
    wait_until(lambda: all_workers_at(gw, revision))
    assert serves(gw, "/private/data") == 401               # not the catch-all's 200
    resp, body = gw.request("GET", "/private/data", headers={"X-API-Key": "ann-key"})
    assert resp.status == 503 and b"upstream late is not defined" in body
    assert "starts working when it arrives" in status_of(gw)["rejected"]["routes/early"]
    revision = put(client, "upstreams", "late", UP(upstream))
    wait_until(lambda: all_workers_at(gw, revision))
    assert gw.request("GET", "/private/data", headers={"X-API-Key": "ann-key"})[0].status == 200
    assert serves(gw, "/private/data") == 401
    assert status_of(gw)["rejected"] == {}
    client.delete(f"{PREFIX}/upstreams/late")               # every host: 503 until it is back
    revision = client.revision()
    wait_until(lambda: all_workers_at(gw, revision))
    assert gw.request("GET", "/private/data", headers={"X-API-Key": "ann-key"})[0].status == 503
    assert serves(gw, "/private/data") == 401


def test_a_refused_new_route_holds_its_paths_on_every_worker(launcher, etcd, upstream,
                                                             tmp_path):
    """A new route refused for a misspelt key_auth option used to be left out: its paths
    fell through to the public catch-all, which answered 200 with no key at all."""
    from gwserver.plugins.key_auth import hash_key
    conf = etcd_conf(tmp_path, [etcd.url], [route("public", ["/*rest"], upstream.url)])
    conf["consumers"] = {"ann": {"credentials": {"key_auth": {"key_hash": hash_key("ann-key")}}}}
    gw = launcher.gateway(conf)
    client = etcd.client()
    put(client, "upstreams", "up", UP(upstream))
    revision = put(client, "routes", "private", {"paths": ["/private/*rest"], "upstream": "up",
                                                 "plugins": {"key_auth": {"hedaer": "X-Key"}}})
    wait_until(lambda: all_workers_at(gw, revision))
    answers = [gw.request("GET", "/private/data") for _ in range(20)]
    assert {resp.status for resp, _ in answers} == {503}                # not the catch-all's 200
    assert b"route private is not available" in answers[0][1]
    assert serves(gw, "/elsewhere") == 200
    reason = status_of(gw)["rejected"]["routes/private"]
    assert "hedaer: unknown key" in reason and "answer 503 until a valid version" in reason
    # A worker started now (a full table, not a change) holds the fence too.
    workers = [pid for pid in gw.worker_pids() if _is_worker(pid)]
    os.kill(workers[0], signal.SIGKILL)
    wait_until(lambda: workers[0] not in gw.worker_pids() and all_workers_at(gw, revision)
               and len([pid for pid in gw.worker_pids() if _is_worker(pid)]) == 2)
    assert {serves(gw, "/private/data") for _ in range(20)} == {503}
    # Fixed: the route itself; then deleted: the catch-all has the paths again.
    revision = put(client, "routes", "private", {"paths": ["/private/*rest"], "upstream": "up",
                                                 "plugins": {"key_auth": {}}})
    wait_until(lambda: all_workers_at(gw, revision))
    assert {serves(gw, "/private/data") for _ in range(10)} == {401}
    assert gw.request("GET", "/private/data",
                      headers={"X-API-Key": "ann-key"})[0].status == 200
    assert status_of(gw)["rejected"] == {}
    put(client, "routes", "private", {"paths": ["/private/*rest"], "upstream": "up",
                                      "plugins": {"key_auth": {"hedaer": "X-Key"}}})
    client.delete(f"{PREFIX}/routes/private")
    revision = client.revision()
    wait_until(lambda: all_workers_at(gw, revision))
    assert {serves(gw, "/private/data") for _ in range(10)} == {200}


def test_a_fence_outlives_unrelated_changes_and_a_sync_restart(launcher, etcd, upstream,
                                                               tmp_path):
    """An unrelated upstream put, or a restarted sync process reading etcd in key order, used
    to drop a fence that a refused route conflicted with: /secret answered 200 again."""
    conf = etcd_conf(tmp_path, [etcd.url], [route("public", ["/*rest"], upstream.url)])
    gw = launcher.gateway(conf)
    client = etcd.client()
    put(client, "upstreams", "up", UP(upstream))
    put(client, "routes", "private", {"paths": ["/a/:x", "/secret/*rest"], "upstream": "up",
                                      "plugins": {"key_auth": {"hedaer": "X-Key"}}})
    revision = put(client, "routes", "api", {"paths": ["/a/:y"], "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, revision))
    assert {serves(gw, "/secret/k") for _ in range(10)} == {503}
    revision = put(client, "upstreams", "other", UP(upstream))
    wait_until(lambda: all_workers_at(gw, revision))
    assert {serves(gw, "/secret/k") for _ in range(10)} == {503}
    first = sync_pid(gw)
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: (status_of(gw) or {}).get("pid") not in (None, first) and
               status_of(gw).get("connected"))
    revision = put(client, "upstreams", "third", UP(upstream))
    wait_until(lambda: all_workers_at(gw, revision))
    assert {serves(gw, "/secret/k") for _ in range(10)} == {503}


def test_etcd_down_keeps_the_table_and_a_restart_resumes(launcher, upstream, tmp_path):
    member = launcher.etcd()
    gw = serving(launcher, tmp_path, member.url, member.client(), upstream, "r", "/r")
    member.stop()
    wait_until(lambda: (status_of(gw) or {}).get("connected") is False)    # may be unwritten yet
    assert all(serves(gw, "/r") == 200 for _ in range(5))
    again = launcher.etcd(data_dir=member.data_dir, ports=(member.client_port,
                                                            member.peer_port))
    revision = put(again.client(), "routes", "r2", {"paths": ["/r2"], "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, revision), timeout=20)
    assert serves(gw, "/r2") == 200 and serves(gw, "/r") == 200
    assert "etcd unreachable" in gw.log() and status_of(gw)["connected"] is True


def sync_pid(gw):
    return status_of(gw)["pid"]


@pytest.fixture
def relay_to(request):
    relays = []

    def make(member):
        relay = TcpRelay(member.client_port)
        relays.append(relay)
        return relay
    yield make
    for relay in relays:
        relay.close()


def test_partition_then_compaction_forces_a_full_reload(launcher, etcd, upstream, tmp_path,
                                                        relay_to):
    """Cut the gateway off etcd, change and compact etcd meanwhile, heal the partition."""
    relay = relay_to(etcd)
    client = etcd.client()
    gw = serving(launcher, tmp_path, relay.url, client, upstream, "old", "/old")
    relay.cut()
    wait_until(lambda: (status_of(gw) or {}).get("connected") is False)    # may be unwritten yet
    client.delete(f"{PREFIX}/routes/old")
    put(client, "routes", "new", {"paths": ["/new"], "upstream": "up"})
    revision = put(client, "routes", "newer", {"paths": ["/newer"], "upstream": "up"})
    client.compact(revision)
    assert serves(gw, "/old") == 200                  # partitioned: the last good table serves
    relay.restore()
    wait_until(lambda: all_workers_at(gw, revision), timeout=25)
    assert serves(gw, "/old") == 404 and serves(gw, "/new") == 200 and serves(gw, "/newer") == 200
    assert "revision compacted" in gw.log() and "reloading everything" in gw.log()


def test_etcd_wiped_revision_backwards_forces_a_full_reload(launcher, upstream, tmp_path):
    member = launcher.etcd()
    gw = launcher.gateway(etcd_conf(tmp_path, [member.url]))
    client = member.client()
    put(client, "upstreams", "up", UP(upstream))
    for i in range(10):
        revision = put(client, "routes", f"r{i}", {"paths": [f"/r{i}"], "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, revision))
    member.stop()
    wiped = launcher.etcd(ports=(member.client_port, member.peer_port),
                          data_dir=tmp_path / "fresh-etcd")
    fresh = wiped.client()
    put(fresh, "upstreams", "up", UP(upstream))
    put(fresh, "routes", "only", {"paths": ["/only"], "upstream": "up"})
    wait_until(lambda: serves(gw, "/only") == 200 and serves(gw, "/r0") == 404, timeout=25)
    assert "went backwards" in gw.log()


def test_three_member_cluster_survives_losing_the_connected_member(launcher, upstream, tmp_path):
    members = launcher.etcd_cluster(3)
    gw = launcher.gateway(etcd_conf(tmp_path, [m.url for m in members]))
    client = members[0].client()
    put(client, "upstreams", "up", UP(upstream))
    revision = put(client, "routes", "a", {"paths": ["/a"], "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, revision))
    connected = status_of(gw)["endpoint"]
    victim = next(m for m in members if m.url == connected)
    victim.stop()
    survivor = next(m for m in members if m is not victim)
    revision = put(survivor.client(), "routes", "b", {"paths": ["/b"], "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, revision), timeout=25)
    assert serves(gw, "/a") == 200 and serves(gw, "/b") == 200
    assert status_of(gw)["endpoint"] != connected


def test_no_etcd_and_no_snapshot_at_start_is_not_ready_and_says_so(launcher, upstream,
                                                                      tmp_path):
    """It answered /-/ready 200 with the static routes alone, and logged nothing: a load
    balancer sent it traffic for routes it did not have."""
    ports = (free_port(), free_port())
    gw = launcher.gateway(etcd_conf(tmp_path, [f"http://127.0.0.1:{ports[0]}"],
                                    [route("static", ["/static"], upstream.url)]))
    assert serves(gw, "/static") == 200
    wait_until(lambda: "no snapshot either" in gw.log())
    assert gw.admin_get("/-/ready")[0] == 503
    etcd = launcher.etcd(ports=ports)                   # etcd comes up: the first table
    client = etcd.client()
    put(client, "upstreams", "up", UP(upstream))
    revision = put(client, "routes", "r", {"paths": ["/r"], "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, revision), timeout=20)
    assert serves(gw, "/r") == 200
    wait_until(lambda: gw.admin_get("/-/ready")[0] == 200)


def restarted_onto_another_prefix(launcher, etcd, upstream, tmp_path):
    """A gateway that served /tenant-a/ (route /a-only), stopped, and started again on the
    same runtime_dir with prefix /tenant-b/ while etcd is unreachable: -> (the new gateway,
    the runtime_dir)."""
    runtime = tmp_path / "run"

    def conf(prefix, endpoint):
        return gateway_conf([], workers=1, etcd={
            "endpoints": [endpoint], "prefix": prefix, "runtime_dir": str(runtime),
            "snapshot_path": str(tmp_path / f"snap{prefix.replace('/', '_')}.json"),
            "watch_idle_timeout": 2.0, "backoff_max": 0.5, "timeout": 1.0})
    client = etcd.client()
    client.put("/tenant-a/upstreams/up", json.dumps(UP(upstream)).encode())
    client.put("/tenant-a/routes/a", json.dumps({"paths": ["/a-only"], "upstream": "up"}).encode())
    first = launcher.gateway(conf("/tenant-a", etcd.url))
    wait_until(lambda: serves(first, "/a-only") == 200)
    first.proc.send_signal(signal.SIGTERM)
    first.proc.wait(15)
    second = launcher.gateway(conf("/tenant-b", f"http://127.0.0.1:{free_port()}"))
    wait_until(lambda: "no snapshot either" in second.log())
    return second, runtime


def test_a_table_of_another_prefix_left_in_runtime_dir_is_not_served(launcher, etcd,
                                                                       upstream, tmp_path):
    """A gateway restarted onto another prefix (same runtime_dir) while etcd was down served
    the other prefix's routes from runtime_dir, and said it was ready."""
    second, _ = restarted_onto_another_prefix(launcher, etcd, upstream, tmp_path)
    assert serves(second, "/a-only") == 404
    assert second.admin_get("/-/ready")[0] == 503


def test_cold_start_from_snapshot_with_etcd_down(launcher, upstream, tmp_path):
    member = launcher.etcd()
    conf = etcd_conf(tmp_path, [member.url])
    gw = launcher.gateway(conf)
    client = member.client()
    put(client, "upstreams", "up", UP(upstream))
    revision = put(client, "routes", "kept", {"paths": ["/kept"], "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, revision))
    os.kill(gw.pid, signal.SIGTERM)
    gw.proc.wait(15)
    member.stop()
    conf["etcd"]["runtime_dir"] += "-second"          # nothing published in this one yet
    started = time.monotonic()
    second = launcher.gateway(conf)
    wait_until(lambda: serves(second, "/kept") == 200, timeout=10)
    assert time.monotonic() - started < 10
    wait_until(lambda: "serving snapshot" in second.log())


def test_a_stuck_sync_helper_is_killed_and_restarted(launcher, etcd, upstream, tmp_path):
    """A helper stuck in a call that never returns keeps its pid: the master noticed only an
    exit, so the route table stayed stale for good. Stopped (SIGSTOP: a hung call, as the
    master sees it), config-sync is killed once it is server.helper_timeout past the sign of
    life it promised (its quiet turn here: a 2 s watch, 8 etcd timeouts of 1 s, 2 s more;
    it promised 30 s more, to compile, on every turn), and restarted; what etcd got meanwhile
    reaches the workers. The helpers that beat (health, promising 6 s) are left alone all
    along."""
    client = etcd.client()
    conf = etcd_conf(tmp_path, [etcd.url])
    conf["server"]["helper_timeout"] = 1.0
    gw = launcher.gateway(conf)
    put(client, "upstreams", "up", UP(upstream))
    revision = put(client, "routes", "r", {"paths": ["/r"], "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, revision))
    first = sync_pid(gw)
    os.kill(first, signal.SIGSTOP)
    stopped = time.monotonic()
    revision = put(client, "routes", "late", {"paths": ["/late"], "upstream": "up"})
    time.sleep(3)
    assert serves(gw, "/late") == 404           # stuck: nothing new is published
    assert "is stuck" not in gw.log()           # silent, but within its promise
    wait_until(lambda: f"config-sync (pid {first}) is stuck" in gw.log(), timeout=30)
    noticed = time.monotonic() - stopped
    wait_until(lambda: all_workers_at(gw, revision), timeout=20)
    assert serves(gw, "/late") == 200 and sync_pid(gw) != first
    log = gw.log()
    assert f"config-sync (pid {first}) was killed by signal 9; restarting it" in log
    assert log.count("is stuck") == 1, log      # health beat all along: left alone
    assert noticed < 2 + 8 + 2 + 1 + 1 + 6, noticed       # the promise, the timeout, slack


def test_sync_helper_is_restarted_and_kept_across_sighup(launcher, etcd, upstream, tmp_path):
    client = etcd.client()
    gw = serving(launcher, tmp_path, etcd.url, client, upstream, "r", "/r")
    first = sync_pid(gw)
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: (status_of(gw) or {}).get("pid") not in (None, first))
    assert "config-sync (pid %d) was killed by signal 9; restarting it" % first in gw.log()
    second = sync_pid(gw)
    workers = set(p for p in gw.worker_pids() if _is_worker(p))
    os.kill(gw.pid, signal.SIGHUP)
    wait_until(lambda: not workers & set(gw.worker_pids()))
    assert sync_pid(gw) == second and second in gw.worker_pids()
    assert serves(gw, "/r") == 200                     # new workers start with the table
    revision = put(client, "routes", "r2", {"paths": ["/r2"], "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, revision))
    assert serves(gw, "/r2") == 200


def test_a_restarted_sync_takes_up_what_the_workers_serve_not_an_older_snapshot(
        launcher, etcd, upstream, tmp_path):
    """Killed right after a change (before the snapshot caught up) with etcd hung, the sync
    process came back with the older snapshot and published it: workers lost the change
    until etcd answered again."""
    client = etcd.client()
    gw = serving(launcher, tmp_path, etcd.url, client, upstream, "r1", "/r1")
    time.sleep(TablePublisher.MAX_STALE + 1)            # the snapshot holds r1 now
    first = sync_pid(gw)
    revision = put(client, "routes", "r2", {"paths": ["/r2"], "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, revision), interval=0.01)
    etcd.proc.send_signal(signal.SIGSTOP)               # etcd hangs from here on
    try:
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: (status_of(gw) or {}).get("pid") not in (None, first), timeout=20)
        time.sleep(1.0)
        assert [serves(gw, "/r2") for _ in range(6)] == [200] * 6
        assert "taking up the table the workers serve" in gw.log()
    finally:
        etcd.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: (status_of(gw) or {}).get("connected"), timeout=30)
    assert serves(gw, "/r2") == 200 and serves(gw, "/r1") == 200


def test_static_routes_serve_beside_etcd_routes(launcher, etcd, upstream, tmp_path):
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url],
                                    routes=[route("static", ["/static"], upstream.url)]))
    client = etcd.client()
    put(client, "upstreams", "up", UP(upstream))
    revision = put(client, "routes", "static", {"paths": ["/takeover"], "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, revision))
    assert serves(gw, "/static") == 200 and serves(gw, "/takeover") == 404
    assert "taken by a static route" in status_of(gw)["rejected"]["routes/static"]


def cli(gw, *args, stdin=None):
    return subprocess.run([sys.executable, "-m", "gwserver", *args[:1], "-c", str(gw.conf_path),
                           *args[1:]], capture_output=True, text=True, input=stdin)


def test_cli_validate_put_get_list_delete(launcher, etcd, upstream, tmp_path):
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url]))
    upstream_doc = json.dumps({"id": "up", **UP(upstream)})
    assert cli(gw, "upstreams", "put", "-", stdin=upstream_doc).returncode == 0
    bad = json.dumps([{"id": "x", "paths": ["nope"], "upstream": "up"},
                      {"id": "y", "paths": ["/y"], "upstream": "up", "methods": ["get"]}])
    for action in ("validate", "put"):
        run = cli(gw, "routes", action, "-", stdin=bad)
        assert run.returncode == 2
        assert 'route x: paths[0] must start with /, got "nope"' in run.stderr
        assert "route y: methods[0]: must be one of \"GET\"" in run.stderr
    assert etcd.client().get(f"{PREFIX}/routes/x") is None        # put refused it
    good = json.dumps({"id": "c", "paths": ["/c/:id"], "upstream": "up"})
    assert cli(gw, "routes", "validate", "-", stdin=good).returncode == 0
    run = cli(gw, "routes", "put", "-", stdin=good)
    assert run.returncode == 0 and "put /gw/routes/c" in run.stdout
    conflict = json.dumps({"id": "d", "paths": ["/c/:other/x"], "upstream": "up"})
    run = cli(gw, "routes", "put", "-", stdin=conflict)
    assert run.returncode == 2 and "conflicts with :id of route c" in run.stderr
    assert json.loads(cli(gw, "routes", "get", "c").stdout)["paths"] == ["/c/:id"]
    assert "c\trevision" in cli(gw, "routes", "list").stdout
    wait_until(lambda: serves(gw, "/c/1") == 200)
    assert cli(gw, "routes", "delete", "c").returncode == 0
    assert cli(gw, "routes", "get", "c").returncode == 2
    wait_until(lambda: serves(gw, "/c/1") == 404)


@pytest.mark.parametrize("password_in", ["conf", "file"])
def test_etcd_with_authentication(launcher, etcd, upstream, tmp_path, password_in):
    """The password in the conf file, or in a file of its own (a systemd credential)."""
    ctl = ["etcdctl", "--endpoints", etcd.url]
    env = {**os.environ, "ETCDCTL_API": "3"}
    for args in (["user", "add", "root:s3cret"], ["auth", "enable"]):
        subprocess.run(ctl + args, env=env, check=True, capture_output=True)
    from gwserver.sync.etcd import EtcdClient
    client = EtcdClient([etcd.url], username="root", password="s3cret")
    put(client, "upstreams", "up", UP(upstream))
    secret = tmp_path / "etcd-password"
    secret.write_text("s3cret\n")
    password = {"password": "s3cret"} if password_in == "conf" else \
        {"password_file": str(secret)}
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], username="root", **password))
    revision = put(client, "routes", "secured", {"paths": ["/secured"], "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, revision))
    assert serves(gw, "/secured") == 200


@pytest.mark.parametrize("taken, taking", [("/orders", "/orders"),
                                            ("/files/a+b", "/files/a%2Bb")], ids=["alike", "%2B"])
def test_a_route_written_straight_to_etcd_that_takes_a_path_is_said_in_the_journal(
        launcher, etcd, upstream, tmp_path, taken, taking):
    """`routes put` notes a route that takes another's path by a higher priority; written
    with etcdctl the takeover was silent (the last note's open item). The sync process now
    says it once, as docs/etcd.md quotes it. "/files/a+b" and "/files/a%2Bb" are one path
    to the router: the sync process looked only at paths written alike (a review of
    2da5bb1)."""
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], []))
    client = etcd.client()
    revision = put(client, "routes", "other", {"paths": ["/other"], "upstream": UP(upstream)})
    wait_until(lambda: all_workers_at(gw, revision))        # the rest come by the watch
    put(client, "routes", "orders-v1", {"paths": [taken], "upstream": UP(upstream)})
    revision = put(client, "routes", "orders-v2", {"paths": [taking], "priority": 5,
                                                   "upstream": UP(upstream)})
    wait_until(lambda: all_workers_at(gw, revision))
    said = f'route orders-v1: paths "{taken}" is never served by it: route orders-v2 has the ' \
           'same path and conditions and wins (a higher priority)'
    wait_until(lambda: said in gw.log(), timeout=5)
    assert gw.log().count(" keys from etcd cluster ") == 1     # one full load, before them
    revision = put(client, "routes", "third", {"paths": ["/third"], "upstream": UP(upstream)})
    wait_until(lambda: all_workers_at(gw, revision))
    time.sleep(0.5)
    assert gw.log().count(said) == 1            # once, not again at each change
