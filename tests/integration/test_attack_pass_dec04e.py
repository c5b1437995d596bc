"""Attack pass of 2026-12-04 (fifth), operations: an operator's bad day and a hostile or broken
etcd, against real processes (Debian's etcd-server and redis-server on loopback, gateways
from ``launcher``).

Seven were defects, fixed with them: a reload that removed a static route or upstream left
the sync process refusing etcd's of the same id (sync_inputs in server/app.py); a removed
runtime_dir froze every worker's table (sync/shm.py); a removed or read-only state_dir made
every new worker die at boot (ensure_state_dir, open_local_store); `routes put` of one id
twice showed etcd's raw error, and `routes validate` said nothing of a path taken over."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from ..conftest import free_port, gateway_conf, route, stop_process, to_toml, wait_until
from .test_etcd import (PREFIX, UP, _is_worker, all_workers_at, etcd_conf, put, runtime_of,
                        serves, serving, status_of)


@pytest.fixture
def etcd(launcher):
    return launcher.etcd()


def gwcli(gw, *args, stdin=None):
    return subprocess.run([sys.executable, "-m", "gwserver", *args[:1], "-c", str(gw.conf_path),
                           *args[1:]], capture_output=True, text=True, input=stdin, timeout=60)


def reload_with(gw, edit):
    """Rewrite the gateway's conf through ``edit(conf)`` and SIGHUP it; wait for the verdict."""
    conf = json.loads(json.dumps(gw.conf))
    edit(conf)
    gw.conf_path.write_text(to_toml(conf))
    before = gw.log().count("reload complete") + gw.log().count("reload refused")
    os.kill(gw.pid, signal.SIGHUP)
    wait_until(lambda: gw.log().count("reload complete") + gw.log().count("reload refused")
               > before, timeout=20)
    gw.conf = conf
    assert "reload refused" not in gw.log(), gw.log()[-2000:]
    return conf


def upstream_of(gw, path):
    resp, _ = gw.request("GET", path)
    return resp.getheader("X-Upstream") if resp.status == 200 else resp.status


def eventually(predicate, timeout):
    try:
        return wait_until(predicate, timeout=timeout)
    except AssertionError:
        return False


# -- conf file and etcd together, across a reload ------------------------------------------------

def test_a_reload_that_drops_a_static_route_lets_the_etcd_route_of_its_id_serve(
        launcher, etcd, upstream, tmp_path):
    """Migration of a route from the conf file to etcd: while the static route "s" exists, the
    etcd route "s" is refused ("taken by a static route"). The operator removes "s" from the
    conf file and reloads: the etcd route must now serve, not stay refused and 404."""
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url],
                                    routes=[route("s", ["/static"], upstream.url)]))
    client = etcd.client()
    put(client, "upstreams", "up", UP(upstream))
    revision = put(client, "routes", "s", {"paths": ["/takeover"], "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, revision))
    assert serves(gw, "/takeover") == 404
    assert "taken by a static route" in status_of(gw)["rejected"]["routes/s"]

    reload_with(gw, lambda conf: conf.update(routes=[]))
    assert serves(gw, "/static") == 404                     # the conf file no longer has it
    served = eventually(lambda: serves(gw, "/takeover") == 200, timeout=10)
    assert served, (f"after the reload the etcd route 's' is still not served: "
                    f"/takeover -> {serves(gw, '/takeover')}; status rejected: "
                    f"{status_of(gw)['rejected']}")
    assert status_of(gw)["rejected"] == {}


def test_a_reload_that_moves_a_static_upstream_into_etcd_keeps_its_routes_serving(
        launcher, etcd, upstream, tmp_path):
    """Upstream "users" lived in the conf file; etcd routes use it. The operator puts the same
    upstream into etcd (refused while the static one exists), then removes it from the conf
    file and reloads. The routes that use it must keep answering 200 throughout."""
    conf = etcd_conf(tmp_path, [etcd.url])
    conf["upstreams"] = {"users": UP(upstream)}
    gw = launcher.gateway(conf)
    client = etcd.client()
    revision = put(client, "routes", "r", {"paths": ["/r"], "upstream": "users"})
    wait_until(lambda: all_workers_at(gw, revision))
    assert serves(gw, "/r") == 200
    revision = put(client, "upstreams", "users", UP(upstream))
    wait_until(lambda: all_workers_at(gw, revision))
    assert "taken by a static upstream" in status_of(gw)["rejected"]["upstreams/users"]
    assert serves(gw, "/r") == 200

    reload_with(gw, lambda conf: conf.pop("upstreams"))
    time.sleep(1.0)
    answers = [serves(gw, "/r") for _ in range(10)]
    assert answers == [200] * 10, (f"/r after the static upstream moved to etcd: {answers}; "
                                   f"status rejected: {status_of(gw)['rejected']}")


def test_held_a_reload_onto_etcd_endpoints_that_do_not_answer_keeps_the_etcd_routes(
        launcher, etcd, upstream, tmp_path):
    """A typo in [etcd] endpoints, then SIGHUP: the new sync process cannot reach etcd. The
    etcd routes must keep serving, the status must say NOT CONNECTED, and pointing the conf
    back at etcd must resume changes."""
    client = etcd.client()
    gw = serving(launcher, tmp_path, etcd.url, client, upstream, "r", "/r")
    dead = f"http://127.0.0.1:{free_port()}"
    reload_with(gw, lambda conf: conf["etcd"].update(endpoints=[dead]))
    wait_until(lambda: (status_of(gw) or {}).get("connected") is False and
               (status_of(gw) or {}).get("endpoint") == dead, timeout=15)
    assert [serves(gw, "/r") for _ in range(10)] == [200] * 10
    out = gwcli(gw, "routes", "status")
    assert out.returncode == 1 and "NOT CONNECTED" in out.stdout, out
    reload_with(gw, lambda conf: conf["etcd"].update(endpoints=[etcd.url]))
    revision = put(client, "routes", "r2", {"paths": ["/r2"], "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, revision), timeout=20)
    assert serves(gw, "/r2") == 200 and serves(gw, "/r") == 200


# -- a hostile or broken etcd --------------------------------------------------------------------

def test_held_two_hosts_serve_the_same_one_of_two_routes_that_claim_one_path(launcher, etcd,
                                                                              tmp_path):
    """Two etcd routes claim /p: "b" first (served), then "a" (refused: path conflict). A host
    that starts later reads etcd in key order. Every host must serve the same route for /p
    (docs/etcd.md: every host serves what etcd holds, whatever it saw before)."""
    one, two = launcher.upstream("one"), launcher.upstream("two")
    client = etcd.client()
    gw1 = launcher.gateway(etcd_conf(tmp_path, [etcd.url],
                                     snapshot_path=str(tmp_path / "snap1.json")))
    put(client, "upstreams", "one", UP(one))
    put(client, "upstreams", "two", UP(two))
    put(client, "routes", "b", {"paths": ["/p"], "upstream": "one"})
    revision = put(client, "routes", "a", {"paths": ["/p"], "upstream": "two"})
    wait_until(lambda: all_workers_at(gw1, revision))
    gw2 = launcher.gateway(etcd_conf(tmp_path, [etcd.url],
                                     snapshot_path=str(tmp_path / "snap2.json")))
    wait_until(lambda: all_workers_at(gw2, revision))
    first, second = upstream_of(gw1, "/p"), upstream_of(gw2, "/p")
    assert first == second, (
        f"host 1 serves /p from {first!r} (refused: {sorted(status_of(gw1)['rejected'])}), "
        f"host 2 from {second!r} (refused: {sorted(status_of(gw2)['rejected'])})")


def test_a_removed_runtime_dir_does_not_freeze_the_table(launcher, etcd, upstream, tmp_path):
    """A cleanup script (or an operator) removes runtime_dir (/run/gwserver) under a running
    gateway. Served routes must keep serving, and later etcd changes must still reach the
    workers (or at least the failure must be said, and the status must not read healthy)."""
    client = etcd.client()
    gw = serving(launcher, tmp_path, etcd.url, client, upstream, "r", "/r")
    workers = sorted(p for p in gw.worker_pids() if _is_worker(p))
    shutil.rmtree(runtime_of(gw))
    put(client, "routes", "r2", {"paths": ["/r2"], "upstream": "up"})
    assert [serves(gw, "/r") for _ in range(5)] == [200] * 5
    served = eventually(lambda: serves(gw, "/r2") == 200, timeout=15)
    same_workers = sorted(p for p in gw.worker_pids() if _is_worker(p)) == workers
    said = gwcli(gw, "routes", "status")
    crashed = "FileNotFoundError" in gw.log()
    assert served, (f"a route put after runtime_dir was removed is not served 15 s later "
                    f"(/r2 -> {serves(gw, '/r2')}; workers unchanged: {same_workers}; sync "
                    f"process died of FileNotFoundError: {crashed}; `routes status` exit "
                    f"{said.returncode}: {said.stdout!r} {said.stderr!r})")
    assert serves(gw, "/r") == 200
    assert not crashed and "was removed while the gateway ran: made again" in gw.log()


def test_a_runtime_dir_removed_while_etcd_is_quiet_is_made_again(launcher, etcd, upstream,
                                                                   tmp_path):
    """With no change to publish, the first write after the removal was the status, at the
    watch's idle timeout: the sync process died of it and came back numbering from 0 in a
    new counter. Now the status write makes the directory again, numbered on."""
    client = etcd.client()
    gw = serving(launcher, tmp_path, etcd.url, client, upstream, "r", "/r")
    pid = status_of(gw)["pid"]
    shutil.rmtree(runtime_of(gw))
    wait_until(lambda: os.path.exists(os.path.join(runtime_of(gw), "status.json")), 15)
    assert status_of(gw)["pid"] == pid and "Traceback" not in gw.log()
    put(client, "routes", "r2", {"paths": ["/r2"], "upstream": "up"})
    assert eventually(lambda: serves(gw, "/r2") == 200, timeout=15)
    assert serves(gw, "/r") == 200


def test_workers_follow_a_sync_process_that_numbers_from_1_again(launcher, etcd, upstream,
                                                                 tmp_path):
    """A sync process that starts on a removed runtime_dir (it died, or was restarted) makes
    a new counter from 1, below what the workers serve: they took no delta below their own
    generation and served their table for good (the status read "up to date" once the
    numbering passed theirs). They take its whole table now."""
    client = etcd.client()
    gw = serving(launcher, tmp_path, etcd.url, client, upstream, "r", "/r")
    for i in range(5):                      # the workers' generation well above 1
        put(client, "routes", f"x{i}", {"paths": [f"/x{i}"], "upstream": "up"})
    assert eventually(lambda: serves(gw, "/x4") == 200, timeout=15)
    pid = status_of(gw)["pid"]
    shutil.rmtree(runtime_of(gw))
    os.kill(pid, signal.SIGKILL)            # before it notices: its successor starts fresh
    put(client, "routes", "r2", {"paths": ["/r2"], "upstream": "up"})
    assert eventually(lambda: serves(gw, "/r2") == 200, timeout=20), gw.log()[-2000:]
    # Every worker, not the one that answered: with no runtime_dir the new sync process
    # publishes its snapshot first (it may lack /x4: it lags), then etcd's table, and under
    # load a worker could be caught between the two (a CI run's 404 for /x4).
    assert eventually(lambda: all(serves(gw, path) == 200 for _ in range(8)
                                  for path in ("/r", "/r2", "/x4")), timeout=10)


def test_held_keys_outside_the_prefix_or_its_kinds_are_ignored(launcher, etcd, upstream,
                                                               tmp_path):
    """A sibling prefix ("/gwx"), the prefix itself, an empty id, a nested id: none is served
    nor stops good routes."""
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url]))
    client = etcd.client()
    put(client, "upstreams", "up", UP(upstream))
    value = json.dumps({"paths": ["/evil"], "upstream": "up"}).encode()
    for key in ("/gwx/routes/evil", "/gw", "/gw/", "/gw/routes/", "/gw/routes/a/b",
                "/gw/routesx/evil", "/gw//routes/evil"):
        client.put(key, value)
    revision = put(client, "routes", "good", {"paths": ["/good"], "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, revision))
    assert serves(gw, "/good") == 200 and serves(gw, "/evil") == 404
    assert status_of(gw)["rejected"] == {}


def test_held_a_burst_of_puts_converges_without_losing_a_route(launcher, etcd, upstream,
                                                             tmp_path):
    """1,500 puts as fast as one client goes (new routes and one route rewritten over and
    over): every worker converges on etcd's last revision, with the last value of each item,
    the sync process never restarts, and a static route serves throughout."""
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url],
                                    routes=[route("static", ["/static"], upstream.url)]))
    client = etcd.client()
    put(client, "upstreams", "up", UP(upstream))
    first = wait_until(lambda: (status_of(gw) or {}).get("pid"))
    codes = set()
    for i in range(1000):
        put(client, "routes", f"n{i}", {"paths": [f"/n/{i}"], "upstream": "up"})
        if i % 2 == 0:
            put(client, "routes", "hot", {"paths": [f"/hot/{i}"], "upstream": "up"})
        if i % 100 == 0:
            codes.add(serves(gw, "/static"))
    revision = client.revision()
    wait_until(lambda: all_workers_at(gw, revision), timeout=30)
    assert codes == {200}
    assert serves(gw, "/n/0") == 200 and serves(gw, "/n/999") == 200
    assert serves(gw, "/hot/998") == 200 and serves(gw, "/hot/996") == 404
    status = status_of(gw)
    assert status["rejected"] == {} and status["routes"] == 1001
    assert status["pid"] == first and "restarting it" not in gw.log()


def test_held_compaction_under_a_live_watch_loses_no_later_change(launcher, etcd, upstream,
                                                             tmp_path):
    """etcd compacts (its own --auto-compaction, or an operator) while the gateway watches,
    connected: the watch goes on, nothing is reloaded needlessly or lost."""
    client = etcd.client()
    gw = serving(launcher, tmp_path, etcd.url, client, upstream, "r", "/r")
    for i in range(20):
        put(client, "routes", "churn", {"paths": [f"/churn/{i}"], "upstream": "up"})
    client.compact(client.revision())
    revision = put(client, "routes", "after", {"paths": ["/after"], "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, revision), timeout=15)
    assert serves(gw, "/after") == 200 and serves(gw, "/churn/19") == 200
    assert serves(gw, "/churn/18") == 404 and serves(gw, "/r") == 200


# -- the CLI when etcd is not there --------------------------------------------------------------

def test_held_the_cli_with_etcd_down_names_the_problem_without_a_traceback(launcher, etcd,
                                                                       upstream, tmp_path):
    client = etcd.client()
    gw = serving(launcher, tmp_path, etcd.url, client, upstream, "r", "/r")
    etcd.stop()
    item = json.dumps({"id": "x", "paths": ["/x"], "upstream": "up"})
    for args, stdin in ((("routes", "list"), None), (("routes", "get", "r"), None),
                        (("routes", "delete", "r"), None), (("routes", "put", "-"), item),
                        (("upstreams", "delete", "up"), None)):
        out = gwcli(gw, *args, stdin=stdin)
        assert out.returncode == 2, (args, out)
        assert "Traceback" not in out.stderr, (args, out.stderr)
        assert "no etcd endpoint answered" in out.stderr, (args, out.stderr)
    checked = gwcli(gw, "routes", "validate", "-", stdin=item)
    assert checked.returncode == 0 and "etcd not reachable" in checked.stdout, checked
    assert serves(gw, "/r") == 200


def test_cli_put_of_a_list_with_one_id_twice_is_refused_by_name(launcher, etcd, upstream,
                                                                 tmp_path):
    client = etcd.client()
    gw = serving(launcher, tmp_path, etcd.url, client, upstream, "r", "/r")
    items = json.dumps([{"id": "d", "paths": ["/d1"], "upstream": "up"},
                        {"id": "d", "paths": ["/d2"], "upstream": "up"}])
    out = gwcli(gw, "routes", "put", "-", stdin=items)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out
    assert "routes/d" in out.stderr or "route d" in out.stderr or "id d" in out.stderr \
        or '"d"' in out.stderr, out.stderr
    assert "twice" in out.stderr or "duplicate" in out.stderr, out.stderr
    assert client.get(f"{PREFIX}/routes/d") is None


# -- Redis away mid-traffic, and back -------------------------------------------------------------

def test_held_redis_going_away_mid_traffic_and_coming_back(launcher, upstream):
    """A limit of 3 an hour in Redis. Redis stops mid-traffic: with on_store_error = "allow"
    every request is served, none fails, and the log says so once. Redis comes back on its
    port (empty, as after a restart without persistence): the gateway counts in Redis again
    and the limit holds."""
    redis = launcher.redis()
    port = int(redis.url.rsplit(":", 1)[1].split("/")[0])
    limit = {"rate": 3, "per": 3600.0, "burst": 3, "key": "route", "on_store_error": "allow"}
    gw = launcher.gateway(gateway_conf([route("lim", ["/lim"], upstream.url,
                                              plugins={"rate_limit": limit})],
                                       workers=2, redis={"url": redis.url}))
    assert [serves(gw, "/lim") for _ in range(4)] == [200, 200, 200, 429]
    stop_process(redis)
    assert [serves(gw, "/lim") for _ in range(20)] == [200] * 20
    assert gw.log().count("redis unreachable") <= 2         # once per worker at most
    again = launcher.redis(port=port)
    try:
        wait_until(lambda: serves(gw, "/lim") == 429, timeout=15)
        # (the worker's log reaches the file a moment after the answer that followed it)
        wait_until(lambda: "redis is answering again" in gw.log(), timeout=5)
    finally:
        stop_process(again)


# -- more of the operator's bad day -----------------------------------------------------------

def test_cli_validate_warns_that_a_route_takes_a_path_another_etcd_route_serves(
        launcher, etcd, upstream, tmp_path):
    """Route "orders-v1" serves /orders from etcd. `routes validate` / `put` of "orders-a"
    with the same path and conditions says nothing, and the new route silently takes /orders
    over on every host (the lower id wins the tie), with nothing in `routes status` either.
    `gwserver check` warns of exactly this in a conf file (routes.unreachable_paths); the
    etcd CLI should too, naming both routes."""
    client = etcd.client()
    gw = serving(launcher, tmp_path, etcd.url, client, upstream, "orders-v1", "/orders")
    item = json.dumps({"id": "orders-a", "paths": ["/orders"], "upstream": "up"})
    out = gwcli(gw, "routes", "validate", "-", stdin=item)
    assert out.returncode == 0, out
    said = out.stdout + out.stderr
    assert "orders-v1" in said and "never served" in said, (
        f"validate of a route that takes /orders from orders-v1 said only: {said!r}")


def test_held_a_bad_update_of_a_served_route_or_upstream_keeps_the_last_good_one(
        launcher, etcd, upstream, tmp_path):
    """A served route updated with a plugin config its schema refuses, a served upstream
    updated to a target that is no URL, a route updated to a JSON list, an upstream updated to
    an empty value: each keeps its last good version serving, named in the status."""
    client = etcd.client()
    gw = serving(launcher, tmp_path, etcd.url, client, upstream, "r", "/r")
    put(client, "routes", "r", {"paths": ["/r"], "upstream": "up",
                                "plugins": {"rate_limit": {"rate": "lots"}}})
    put(client, "upstreams", "up", {"targets": [{"url": "not a url"}]})
    put(client, "routes", "r2", {"paths": ["/r2"], "upstream": "up"})
    put(client, "routes", "r2", [1, 2, 3])
    put(client, "routes", "m", {"id": "other", "paths": ["/m"], "upstream": "up"})
    revision = client.put(f"{PREFIX}/upstreams/up", b"")
    wait_until(lambda: all_workers_at(gw, revision))
    assert [serves(gw, "/r") for _ in range(6)] == [200] * 6
    assert [serves(gw, "/r2") for _ in range(6)] == [200] * 6
    rejected = status_of(gw)["rejected"]
    assert set(rejected) == {"routes/r", "routes/r2", "routes/m", "upstreams/up"}, rejected
    assert "does not match the key" in rejected["routes/m"]
    assert serves(gw, "/m") == 503                  # a refused new route: fenced
    assert "rate" in rejected["routes/r"] and "invalid JSON" in rejected["upstreams/up"]


def test_held_an_invalid_etcd_section_on_reload_is_refused_and_etcd_routes_serve_on(
        launcher, etcd, upstream, tmp_path):
    """The conf's [etcd] section edited into nonsense (endpoints a string, a negative
    timeout), then SIGHUP: refused naming the field; the sync process is kept; the etcd routes
    serve on and later etcd changes still apply."""
    client = etcd.client()
    gw = serving(launcher, tmp_path, etcd.url, client, upstream, "r", "/r")
    sync = status_of(gw)["pid"]
    conf = json.loads(json.dumps(gw.conf))
    conf["etcd"]["endpoints"] = "127.0.0.1:2379"
    conf["etcd"]["timeout"] = -1
    gw.conf_path.write_text(to_toml(conf))
    os.kill(gw.pid, signal.SIGHUP)
    wait_until(lambda: "reload refused" in gw.log())
    refusal = "\n".join(line for line in gw.log().splitlines() if "reload refused" in line)
    assert "etcd.endpoints: must be a list" in refusal, refusal
    assert "etcd.timeout: must be a positive number" in refusal, refusal
    assert [serves(gw, "/r") for _ in range(6)] == [200] * 6
    revision = put(client, "routes", "r2", {"paths": ["/r2"], "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, revision))
    assert serves(gw, "/r2") == 200 and status_of(gw)["pid"] == sync


def kill_a_worker_and_see_it_replaced(gw):
    """One of two workers dies (the OOM killer, a bug): the others serve on, and its
    replacement comes up, in a few boots at most (not a loop of deaths at boot)."""
    victim = [p for p in gw.worker_pids() if _is_worker(p)][0]
    os.kill(victim, signal.SIGKILL)
    time.sleep(2.0)
    assert [serves(gw, "/e") for _ in range(6)] == [200] * 6
    replaced = eventually(lambda: len([p for p in gw.worker_pids() if _is_worker(p)]) == 2 and
                          all(serves(gw, "/e") == 200 for _ in range(4)), timeout=5)
    boots = gw.log().count("Booting worker")
    assert replaced and boots < 8, (
        f"the worker that replaced a killed one never came up: {boots} worker boots so far; "
        f"{[l for l in gw.log().splitlines() if 'Error' in l][-1:]}")


def removed(path):
    """``rm -rf path`` done once: True, or False if a file was made in it meanwhile (a worker
    writes there; between rmtree's listing and its rmdir: "Directory not empty", once on a
    loaded CI host), to try again."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return True


def test_a_removed_state_dir_leaves_no_worker_unable_to_start(launcher, upstream):
    """The state dir (/run/gwserver/state: master.json, beat files, the per-host limit table)
    removed under a running gateway (an operator clearing "stale" state). A worker that
    replaces a dead one must still start (the master makes the directory again, or the worker
    goes without it); then `gwserver reload --pid MASTER` (the unit's ExecReload) must apply,
    its verdict be found, and the gateway keep serving."""
    gw = launcher.gateway(gateway_conf([route("e", ["/e"], upstream.url)], workers=2))
    wait_until(lambda: len([p for p in gw.worker_pids() if _is_worker(p)]) == 2 and
               all(serves(gw, "/e") == 200 for _ in range(4)))
    state_dir = gw.conf["server"]["state_dir"]
    wait_until(lambda: removed(state_dir), timeout=5)
    # One worker dies: its replacement starts with the state dir gone.
    kill_a_worker_and_see_it_replaced(gw)
    out = subprocess.run([sys.executable, "-m", "gwserver", "reload", "-c", str(gw.conf_path),
                          "--pid", str(gw.pid), "--timeout", "20"],
                         capture_output=True, text=True, timeout=60)
    assert [serves(gw, "/e") for _ in range(6)] == [200] * 6
    assert gw.proc.poll() is None
    assert out.returncode == 0 and "reload complete" in out.stdout, (
        f"exit {out.returncode}: {out.stdout!r} {out.stderr!r}; master log: "
        f"{[line for line in gw.log().splitlines() if 'state' in line or 'reload' in line][-6:]}")


def test_held_a_route_with_a_huge_paths_list_neither_stalls_nor_restarts_the_sync(
        launcher, etcd, upstream, tmp_path):
    """A value near etcd's 1.5 MiB request limit: 40,000 distinct paths in one route. It is
    either served or refused by name; the next good change still applies within seconds and
    the sync process is not killed as stuck."""
    client = etcd.client()
    gw = serving(launcher, tmp_path, etcd.url, client, upstream, "r", "/r")
    first = status_of(gw)["pid"]
    value = json.dumps({"paths": [f"/h/{i:06d}" for i in range(40000)],
                        "upstream": "up"}).encode()
    assert len(value) < 1_400_000
    put(client, "routes", "huge", value)
    revision = put(client, "routes", "after", {"paths": ["/after"], "upstream": "up"})
    start = time.monotonic()
    wait_until(lambda: all_workers_at(gw, revision), timeout=30)
    took = time.monotonic() - start
    assert serves(gw, "/after") == 200 and serves(gw, "/r") == 200
    assert serves(gw, "/h/039999") in (200, 503) or "routes/huge" in status_of(gw)["rejected"]
    assert status_of(gw)["pid"] == first and "stuck" not in gw.log()
    assert took < 15, f"a change after a huge route took {took:.1f} s to reach the workers"


def test_held_a_sighup_storm_that_changes_the_etcd_section_leaves_one_live_sync(
        launcher, etcd, upstream, tmp_path):
    """Eight reloads 0.3 s apart, each changing [etcd] (timeout 1.0 <-> 1.5: a new sync process
    each time), under steady traffic: no request fails, one config-sync process is left,
    connected, and an etcd change made afterwards reaches every worker."""
    import threading
    client = etcd.client()
    gw = serving(launcher, tmp_path, etcd.url, client, upstream, "r", "/r")
    codes, stop = [], threading.Event()

    def traffic():
        while not stop.is_set():
            try:
                codes.append(serves(gw, "/r"))
            except Exception as exc:        # noqa: BLE001 - a failed request is the finding
                codes.append(repr(exc))
    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:
        for i in range(8):
            conf = json.loads(json.dumps(gw.conf))
            conf["etcd"]["timeout"] = 1.5 if i % 2 == 0 else 1.0
            gw.conf_path.write_text(to_toml(conf))
            os.kill(gw.pid, signal.SIGHUP)
            time.sleep(0.3)
        wait_until(lambda: gw.log().count("reload complete") >= 1, timeout=20)
        time.sleep(3.0)
    finally:
        stop.set()
        thread.join(15)
    failed = [c for c in codes if c != 200]
    assert codes and not failed, f"{len(failed)} of {len(codes)} requests failed: {failed[:5]}"
    syncs = wait_until(lambda: len(gw.helper_pids("config-sync")) == 1 and
                       gw.helper_pids("config-sync"), timeout=15)
    wait_until(lambda: (status_of(gw) or {}).get("connected") and
               status_of(gw).get("pid") in syncs, timeout=15)
    revision = put(client, "routes", "r2", {"paths": ["/r2"], "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, revision), timeout=15)
    assert serves(gw, "/r2") == 200


def test_a_reload_that_adds_a_static_route_of_an_etcd_routes_id_says_which_serves(
        launcher, etcd, upstream, tmp_path):
    """The reverse migration: etcd route "s" serves /etcd; a reload adds a static route "s"
    (/static) to the conf file. The static one serves (docs: an etcd item with a static id is
    rejected), and `routes status` must name routes/s as taken by the static route, not pass
    it as served."""
    client = etcd.client()
    gw = serving(launcher, tmp_path, etcd.url, client, upstream, "s", "/etcd")
    reload_with(gw, lambda conf: conf.update(routes=[route("s", ["/static"], upstream.url)]))
    wait_until(lambda: serves(gw, "/static") == 200, timeout=10)
    assert serves(gw, "/etcd") == 404
    said = gwcli(gw, "routes", "status")
    text = said.stdout + said.stderr
    assert said.returncode == 1 and "routes/s" in text and "static" in text, (
        f"`routes status` exit {said.returncode}: {text!r}")


@pytest.fixture
def ro_tmpfs(tmp_path):
    path = tmp_path / "state-disk"
    path.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    yield path
    subprocess.run(["umount", "-l", str(path / "state")], check=False)
    subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_state_dir_made_read_only_leaves_no_worker_unable_to_start(launcher, upstream,
                                                                      ro_tmpfs):
    """The file system under the state dir goes read-only (remounted ro after an I/O error,
    say). Serving workers serve on; a worker that replaces a dead one must still start."""
    gw = launcher.gateway(gateway_conf([route("e", ["/e"], upstream.url)], workers=2,
                                       server={"state_dir": str(ro_tmpfs / "state")}))
    wait_until(lambda: len([p for p in gw.worker_pids() if _is_worker(p)]) == 2 and
               all(serves(gw, "/e") == 200 for _ in range(4)))
    state = str(ro_tmpfs / "state")
    # A read-only bind of the directory on itself: open files go on, new opens see it read-only.
    for cmd in (["mount", "--bind", state, state], ["mount", "-o", "remount,bind,ro", state]):
        made = subprocess.run(cmd, capture_output=True, text=True)
        assert made.returncode == 0, made.stderr
    assert not os.access(state, os.W_OK) or subprocess.run(
        ["touch", f"{state}/probe"]).returncode != 0
    kill_a_worker_and_see_it_replaced(gw)
