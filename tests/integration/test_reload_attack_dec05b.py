"""Attack pass (Dec 05 b, reloads and restarts that must keep the truth), against real
processes. Each defect below is shown by a test that failed on a736bbe and passes with its fix.

1. Helpers read the conf file from disk at each (re)start: a config-sync (or health, ocsp,
   rollouts) helper restarted between an edit and its reload ran the edit. A refused edit
   killed it at every restart (no etcd change applied); an unapplied one (a new [etcd]
   prefix) synced into the workers' runtime_dir a table they refused. Now they read the
   copy of the conf the master applied (state_dir/conf.applied.toml).
2. `gwserver reload` took the verdict of a reload already under way when it sent its
   SIGHUP (another SIGHUP's, of the file before the edit): "refused" (exit 1) for a reload
   its own signal then applied, or the reverse. Now only a reload begun after its signal.
3. table.json truncated or removed, or the generation counter removed or zeroed, while the
   gateway runs: every worker started after (a reload's) served the conf file's routes
   alone, a 404 for every etcd route, until the next etcd change (counter removed: for
   good). The sync process now writes them back within a second.
4. table.json holding JSON of another shape ({}): every new worker died at boot (a reload
   let the old ones go: no worker at all) and the sync process at each restart.
5. status.json holding JSON of another shape: the master's reload verdict raised in the
   main loop, and the master exited with every worker.
6. A reload that leaves no upstream with health_check stops the checker, and its last
   verdicts (health.json) held for good: a target judged down never came back; a restart
   without checks kept the previous run's verdicts the same way.

Held: a refused etcd update keeps its served version across a reload with etcd down and
back; SIGTERM mid-drain finishes the old worker's download, exits 0, leaves no process;
reloads that restart config-sync under wrk load fail no request; h2c load across reloads
loses no stream the gateway took.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ..conftest import gateway_conf, route, to_toml, wait_until
from .test_etcd import (UP, _is_worker, all_workers_at, etcd_conf, put, runtime_of, serves,
                        serving, status_of)


def worker_pids(gw):
    return sorted(p for p in gw.worker_pids() if _is_worker(p))


def reload_cli(gw, timeout=30):
    return subprocess.run([sys.executable, "-m", "gwserver", "reload", "-c", str(gw.conf_path),
                           "--pid", str(gw.pid), "--timeout", str(timeout)],
                          capture_output=True, text=True, timeout=timeout + 30)


def published_twice(launcher, tmp_path, upstream):
    """A gateway on a fresh etcd serving route r, then r2, applied by every worker and in
    table.json: (gateway, etcd client, revision of r2, the table.json path)."""
    member = launcher.etcd()
    client = member.client()
    gw = serving(launcher, tmp_path, member.url, client, upstream, "r", "/r")
    revision = put(client, "routes", "r2", {"paths": ["/r2"], "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, revision))
    table = os.path.join(runtime_of(gw), "table.json")
    wait_until(lambda: (json.load(open(table)) or {}).get("revision") == revision)
    return gw, client, revision, table


def wait_or_log(gw, predicate, timeout=15.0):
    """wait_until, and the gateway's log's tail in the failure."""
    try:
        return wait_until(predicate, timeout=timeout)
    except AssertionError:
        raise AssertionError(f"condition not met within {timeout}s; log: "
                             f"{gw.log()[-3000:]}") from None


# -- a helper restarted between a conf edit and its reload -------------------------------------

def test_a_sync_helper_restarted_after_a_refused_reload_runs_the_applied_conf(
        launcher, upstream, tmp_path):
    """The conf file is edited into one the master refuses (a reload says so and the
    gateway serves on with the previous one); then the config-sync helper dies (-9, the OOM
    killer). Expected: the master restarts it with the configuration it serves, and etcd
    changes keep reaching the workers. A helper reads the conf file from disk when it
    starts: it died of the refused file at every restart, and no etcd change was applied
    until the file was fixed."""
    member = launcher.etcd()
    client = member.client()
    gw = serving(launcher, tmp_path, member.url, client, upstream, "r", "/r")
    good = gw.conf_path.read_text()
    gw.conf_path.write_text(good.replace('"workers" = 2', '"workers" = "two"'))
    assert good != gw.conf_path.read_text()
    done = reload_cli(gw)
    assert done.returncode == 1 and "reload refused" in done.stderr, done
    first = status_of(gw)["pid"]
    os.kill(first, signal.SIGKILL)
    revision = put(client, "routes", "r2", {"paths": ["/r2"], "upstream": "up"})
    wait_or_log(gw, lambda: all_workers_at(gw, revision), timeout=20)
    assert serves(gw, "/r2") == 200 and serves(gw, "/r") == 200
    copy = os.path.join(gw.conf["server"]["state_dir"], "conf.applied.toml")
    assert os.stat(copy).st_mode & 0o777 == 0o600       # a conf may hold credentials
    assert [n for n in os.listdir(os.path.dirname(copy)) if n.endswith(".tmp")] == []


def test_a_sync_helper_restarted_before_a_reload_runs_the_applied_conf_not_the_edit(
        launcher, upstream, tmp_path):
    """The conf file is edited (a new [etcd] prefix: valid, not reloaded yet), then the
    config-sync helper dies. Expected: the restarted helper follows the prefix the master
    and its workers serve until the reload. It read the edit: it synced the new prefix
    into the runtime_dir the workers read, which they refused (another prefix's table), and
    changes under the served prefix stopped reaching them."""
    member = launcher.etcd()
    client = member.client()
    gw = serving(launcher, tmp_path, member.url, client, upstream, "r", "/r")
    edited = gw.conf_path.read_text().replace('"prefix" = "/gw"', '"prefix" = "/other"')
    assert edited != gw.conf_path.read_text()
    gw.conf_path.write_text(edited)
    first = status_of(gw)["pid"]
    os.kill(first, signal.SIGKILL)
    wait_or_log(gw, lambda: (status_of(gw) or {}).get("pid") not in (None, first))
    revision = put(client, "routes", "r2", {"paths": ["/r2"], "upstream": "up"})
    wait_or_log(gw, lambda: all_workers_at(gw, revision), timeout=20)
    assert serves(gw, "/r2") == 200 and serves(gw, "/r") == 200
    assert status_of(gw)["prefix"] == "/gw/"


# -- gwserver reload and a reload already under way ----------------------------------------------

def test_reload_cli_waits_for_the_verdict_on_its_own_signal_not_one_under_way(launcher,
                                                                              upstream):
    """A reload is under way (a SIGHUP from elsewhere: a deploy script, a second operator)
    of a large conf file with a mistake in it, slow to check, when the file is fixed and
    `gwserver reload` runs. It reported the verdict of the reload under way ("reload
    refused", exit 1: `systemctl reload` failed) for a file it never saw, while its own
    SIGHUP, handled next, applied the fixed one. Expected: the verdict of a reload that
    read the file after its signal: applied, exit 0 (and, the other way round, never the
    success of a reload under way for a file that its own signal then has refused)."""
    import io
    from gwserver.reload_cli import reload
    gw = launcher.gateway(gateway_conf([route("e", ["/e"], upstream.url)], workers=1))
    good = gw.conf_path.read_text()
    conf = json.loads(json.dumps(gw.conf))
    conf["routes"] += [route(f"r{i}", [f"/r{i}"], upstream.url) for i in range(20000)]
    conf["routes"].append(route("bad", ["no-slash"], upstream.url))
    gw.conf_path.write_text(to_toml(conf))
    os.kill(gw.pid, signal.SIGHUP)                  # someone else's reload, of a bad file
    wait_or_log(gw, lambda: "Handling signal: hup" in gw.log(), timeout=10)
    time.sleep(0.2)                                 # it is reading and checking the file
    gw.conf_path.write_text(good)                   # fixed; the operator reloads
    out, err = io.StringIO(), io.StringIO()
    code = reload(str(gw.conf_path), gw.pid, timeout=60, out=out, err=err)
    wait_or_log(gw, lambda: "reload complete" in gw.log(), timeout=60)
    assert gw.log().count("reload refused: ") >= 1      # the one under way was refused
    assert (code, err.getvalue()) == (0, ""), (code, out.getvalue(), err.getvalue())
    assert "reload complete: generation 2" in out.getvalue()


# -- the published table's base damaged ------------------------------------------------------------

@pytest.mark.parametrize("damage", ["truncated", "removed", "counter removed",
                                    "counter zeroed"])
def test_workers_started_after_the_table_base_was_damaged_serve_the_whole_table(
        launcher, upstream, tmp_path, damage):
    """runtime_dir/table.json (the whole table, which a starting worker reads) truncated or
    removed, or the generation counter removed or zeroed, while the gateway runs (a cleanup
    script, a hand, a full disk's half write by
    another tool), then a reload. The running workers read only change files and serve on;
    the reload's new workers found no table, waited 5 s, then served the conf file's routes
    alone (404 for every etcd route), the old workers were let go, and it stayed so until
    an etcd change made the sync process write the base again. Expected: the sync process
    writes back a base that is not what it wrote, and no new worker serves less than the
    published table."""
    gw, client, revision, table = published_twice(launcher, tmp_path, upstream)
    if damage == "truncated":
        os.truncate(table, 0)
    elif damage == "removed":
        os.unlink(table)
    elif damage == "counter removed":
        os.unlink(os.path.join(runtime_of(gw), "generation"))
    else:
        with open(os.path.join(runtime_of(gw), "generation"), "r+b") as f:
            f.write(bytes(8))
    old = worker_pids(gw)
    os.kill(gw.pid, signal.SIGHUP)
    wait_or_log(gw, lambda: "reload complete" in gw.log() and not set(old) & set(gw.worker_pids()),
                timeout=30)
    assert [serves(gw, p) for p in ("/r", "/r2", "/r", "/r2")] == [200] * 4, gw.log()[-3000:]
    assert "no route table from the sync process" not in gw.log()


# -- held ------------------------------------------------------------------------------------------

def test_held_a_refused_update_keeps_its_served_version_across_a_reload_with_etcd_down(
        launcher, upstream, tmp_path):
    """A route served from etcd gets a refused update (its previous version serves on); then
    etcd goes down and a reload changes a static route (config-sync starts again, with etcd
    unreachable), then etcd comes back (a full load by value sees the refused value again).
    The served version is never dropped: no 404 for the route, at any point."""
    member = launcher.etcd()
    client = member.client()
    gw = serving(launcher, tmp_path, member.url, client, upstream, "r", "/r")
    revision = put(client, "routes", "r", {"paths": ["/r"], "upstream": "up",
                                           "plugins": {"no_such_plugin": {}}})
    wait_until(lambda: all_workers_at(gw, revision))
    assert serves(gw, "/r") == 200
    member.proc.send_signal(signal.SIGSTOP)
    try:
        conf = json.loads(json.dumps(gw.conf))
        conf["routes"] = [route("s", ["/s"], upstream.url)]
        gw.conf_path.write_text(to_toml(conf))
        old = worker_pids(gw)
        os.kill(gw.pid, signal.SIGHUP)
        wait_or_log(gw, lambda: "reload complete" in gw.log() and
                    not set(old) & set(gw.worker_pids()), timeout=30)
        assert [serves(gw, p) for p in ("/r", "/s", "/r")] == [200] * 3
    finally:
        member.proc.send_signal(signal.SIGCONT)
    wait_or_log(gw, lambda: (status_of(gw) or {}).get("connected"), timeout=30)
    time.sleep(1.0)
    assert [serves(gw, p) for p in ("/r", "/s", "/r")] == [200] * 3
    assert "routes/r" in status_of(gw)["rejected"]


def _children_of_session(pid):
    """Processes of the gateway's session (the launcher starts each in its own), but it."""
    out = subprocess.run(["pgrep", "-s", str(pid)], capture_output=True, text=True)
    return {int(p) for p in out.stdout.split()} - {pid}


def test_held_sigterm_mid_drain_finishes_the_old_workers_download_and_leaves_nothing(
        launcher, upstream):
    """SIGTERM to the master while a reload's old worker drains a download (and the health
    helper runs): the download is finished, the master exits 0, and no worker, helper or
    copy of the conf is left behind."""
    import socket
    gw = launcher.gateway(gateway_conf(
        [route("bytes", ["/bytes/:n"], upstream.url)], workers=1,
        server={"graceful_timeout": 20.0},
        upstreams={"pool": {"targets": [{"url": upstream.url}],
                            "health_check": {"path": "/", "interval": 1.0}}}))
    wait_until(lambda: gw.helper_pid("health"))
    old = worker_pids(gw)
    download = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    size = 50 * (1 << 20)
    download.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n" % size)
    received = len(download.recv(1 << 16))
    os.kill(gw.pid, signal.SIGHUP)
    wait_or_log(gw, lambda: "reload complete" in gw.log())
    assert set(old) & set(gw.worker_pids())             # draining
    os.kill(gw.pid, signal.SIGTERM)
    time.sleep(0.5)
    buf = bytearray(1 << 20)
    while n := download.recv_into(buf):
        received += n
    download.close()
    assert received > size and received - size < 1024
    assert gw.proc.wait(25) == 0
    wait_until(lambda: not _children_of_session(gw.pid), timeout=5)
    state_dir = gw.conf["server"]["state_dir"]
    assert not [n for n in os.listdir(state_dir) if n.startswith("conf.applied")
                or n.endswith(".beat")], os.listdir(state_dir)


def test_held_reloads_that_restart_config_sync_under_load_fail_no_etcd_request(
        launcher, upstream, tmp_path):
    """wrk keeps 20 keep-alive connections on an etcd route while three reloads each change
    a static route (config-sync starts again before the new workers, which start from the
    table published before): no failed request, no 404."""
    import threading
    from .test_lifecycle import wrk
    member = launcher.etcd()
    client = member.client()
    conf = etcd_conf(tmp_path, [member.url])
    conf["server"]["keepalive"] = 2.0
    gw = launcher.gateway(conf)
    put(client, "upstreams", "up", UP(upstream))
    revision = put(client, "routes", "r", {"paths": ["/r"], "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, revision))
    conf = json.loads(json.dumps(gw.conf))

    def reloads():
        for i in range(3):
            time.sleep(1.5)
            conf["routes"] = [route(f"s{i}", [f"/s{i}"], upstream.url)]
            gw.conf_path.write_text(to_toml(conf))
            os.kill(gw.pid, signal.SIGHUP)
    thread = threading.Thread(target=reloads)
    thread.start()
    requests, failures, out = wrk(f"{gw.url}/r", seconds=7, connections=20)
    thread.join()
    assert requests > 500 and failures == 0, out
    wait_or_log(gw, lambda: gw.log().count("reload complete") == 3, timeout=30)
    assert gw.log().count("started config-sync") == 4


# -- a reload that stops the health checker ------------------------------------------------

def test_a_reload_that_stops_the_health_checker_leaves_no_verdict_in_force(launcher):
    """Target b of upstream pool was judged down by active checks; a reload then takes
    health_check off the upstream (no upstream asks for checks: the health helper stops);
    then b is back. Expected: with nobody checking, no active verdict holds, and b takes traffic
    again. health.json kept the last verdicts, which every worker (the reload's new ones
    too) went on reading: b stayed out of rotation for good, as /admin/upstreams said."""
    from .test_health import FAST_CHECK, pool_conf, served_by, target_health
    from ..conftest import stop_process
    a, b = launcher.upstream("a"), launcher.upstream("b")
    gw = launcher.gateway(pool_conf([a, b], health_check=FAST_CHECK))
    wait_until(lambda: set(target_health(gw).values()) == {"healthy"}, timeout=10)
    stop_process(b.proc)
    wait_until(lambda: target_health(gw)[b.url] == "unhealthy", timeout=10)
    conf = json.loads(json.dumps(gw.conf))
    del conf["upstreams"]["pool"]["health_check"]
    gw.conf_path.write_text(to_toml(conf))
    old = worker_pids(gw)
    os.kill(gw.pid, signal.SIGHUP)
    wait_or_log(gw, lambda: "reload complete" in gw.log() and
                not set(old) & set(gw.worker_pids()) and not gw.helper_pids("health"))
    launcher.upstream("b", port=b.port)             # back, when no one looks any more
    time.sleep(0.5)
    assert target_health(gw)[b.url] != "unhealthy"
    assert set(served_by(gw, 20)) == {"a", "b"}


def test_a_restart_without_health_checks_keeps_no_verdict_of_the_previous_run(launcher,
                                                                             tmp_path):
    """The same: the gateway restarted (its state_dir is kept across restarts) with a conf
    whose upstreams ask for no checks. The previous run's health.json kept b out of
    rotation in the new run, for good."""
    from .test_health import FAST_CHECK, pool_conf, served_by, target_health
    from ..conftest import stop_process
    a, b = launcher.upstream("a"), launcher.upstream("b")
    conf = pool_conf([a, b], health_check=FAST_CHECK)
    conf["server"]["state_dir"] = str(tmp_path / "kept-state")
    gw = launcher.gateway(conf)
    wait_until(lambda: set(target_health(gw).values()) == {"healthy"}, timeout=10)
    stop_process(b.proc)
    wait_until(lambda: target_health(gw)[b.url] == "unhealthy", timeout=10)
    assert stop_process(gw.proc) == 0
    launcher.upstream("b", port=b.port)
    del conf["upstreams"]["pool"]["health_check"]
    gw = launcher.gateway(conf)
    assert not gw.helper_pids("health")
    assert target_health(gw)[b.url] != "unhealthy"
    assert set(served_by(gw, 20)) == {"a", "b"}


# -- a table base that is JSON, but not the sync process's -----------------------------------------

def _damage_base(table):
    with open(table, "w") as f:
        f.write("{}")           # JSON, not a table: another tool's, another release's


def test_a_sync_process_restarted_over_a_base_that_is_not_a_table_keeps_syncing(
        launcher, upstream, tmp_path):
    """table.json holds JSON that is not a published table ({}), and the sync process
    restarts (killed, or a reload that changes [etcd]). It died at start reading it
    (KeyError 'generation' in TableReader.updates), at every restart, for good: no etcd
    change reached the workers. Expected: such a base is no table (as one that is not JSON
    is), the process starts, and changes are served."""
    gw, client, revision, table = published_twice(launcher, tmp_path, upstream)
    _damage_base(table)
    first = status_of(gw)["pid"]
    os.kill(first, signal.SIGKILL)
    revision = put(client, "routes", "r3", {"paths": ["/r3"], "upstream": "up"})
    wait_or_log(gw, lambda: all_workers_at(gw, revision), timeout=20)
    assert [serves(gw, p) for p in ("/r", "/r2", "/r3")] == [200] * 3
    assert "Traceback" not in gw.log()


def test_a_worker_started_over_a_base_that_is_not_a_table_does_not_die(launcher, upstream,
                                                                        tmp_path):
    """The same base, read by a reload's new workers while the sync process is stuck (it
    would write the base again): each died at boot (KeyError), the master took the dead
    replacement for no replacement and let the old workers go, and its next ones died the
    same way: no worker served at all. Expected: a new worker that finds no usable base
    serves on (the conf file's routes, as with no base), and takes the whole table once it
    is written again."""
    gw, client, revision, table = published_twice(launcher, tmp_path, upstream)
    sync = status_of(gw)["pid"]
    os.kill(sync, signal.SIGSTOP)
    try:
        _damage_base(table)
        old = worker_pids(gw)
        os.kill(gw.pid, signal.SIGHUP)
        wait_or_log(gw, lambda: "reload complete" in gw.log() and
                    not set(old) & set(gw.worker_pids()), timeout=30)
        time.sleep(1.0)
        assert serves(gw, "/nothing-here", ) == 404         # a worker answers
        assert "Exception in worker process" not in gw.log(), gw.log()[-3000:]
    finally:
        os.kill(sync, signal.SIGCONT)
    wait_or_log(gw, lambda: all_workers_at(gw, revision), timeout=20)
    assert [serves(gw, p) for p in ("/r", "/r2")] == [200] * 2


# -- status.json that is JSON, but not the sync process's ---------------------------------

def test_a_reload_survives_a_status_file_that_is_not_the_sync_processes(launcher, upstream,
                                                                         tmp_path):
    """runtime_dir/status.json holding JSON of another shape ({"routes": "2"}: by hand, a
    tool, another release) when a reload is applied (the sync process quiet meanwhile: it
    rewrites the file at its next turn). The master counts the routes for its verdict from
    it: TypeError in the main loop, and the master exited 255 with every worker. Expected:
    the reload applied and said so; the master lives."""
    member = launcher.etcd()
    client = member.client()
    gw = serving(launcher, tmp_path, member.url, client, upstream, "r", "/r")
    sync = status_of(gw)["pid"]
    os.kill(sync, signal.SIGSTOP)
    try:
        with open(os.path.join(runtime_of(gw), "status.json"), "w") as f:
            f.write('{"routes": "2", "pid": %d}' % sync)
        done = reload_cli(gw)
        assert gw.proc.poll() is None, gw.log()[-3000:]
        assert done.returncode == 0 and "reload complete" in done.stdout, (done, gw.log()[-3000:])
        assert serves(gw, "/r") == 200
    finally:
        os.kill(sync, signal.SIGCONT)


def test_held_h2c_load_across_reloads_fails_no_stream(launcher, upstream):
    """h2load keeps 10 h2c connections (10 streams each) busy while the master gets three
    SIGHUPs: every stream the gateway took is answered 2xx, and none is lost. h2load counts
    as failed the streams it opened after the old worker's GOAWAY (above its last stream id,
    or refused with REFUSED_STREAM): never processed, which RFC 9113 (6.8, 8.7) lets a
    client send again, as browsers, curl and proxies do, and h2load does not. Those never
    reached the upstream: what it saw is exactly what succeeded."""
    import re
    import threading
    gw = launcher.gateway(gateway_conf([route("e", ["/echo"], upstream.url, prefix=True)],
                                       workers=2, http2={"h2c": True}))

    def hups():
        for _ in range(3):
            time.sleep(1.5)
            os.kill(gw.pid, signal.SIGHUP)
    before = upstream.stats()["requests"]
    thread = threading.Thread(target=hups)
    thread.start()
    out = subprocess.run(["h2load", "-D", "7", "-c", "10", "-m", "10", "-t", "1",
                          f"{gw.url}/echo/h2"], capture_output=True, text=True,
                         timeout=60).stdout
    thread.join()
    done = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                     r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    assert done and codes, out
    reached = upstream.stats()["requests"] - before
    assert int(done.group(3)) > 500 and int(done.group(7)) == 0, out
    assert reached == int(done.group(4)) == int(codes.group(1)), (reached, out)
    assert int(codes.group(3)) == 0 and int(codes.group(4)) == 0, out
    wait_or_log(gw, lambda: gw.log().count("reload complete") == 3, timeout=30)
