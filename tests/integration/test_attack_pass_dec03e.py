"""Attack pass (Dec 03, reloads and restarts that keep the truth), against real processes.
Each defect below is shown by a test that failed on 9af5f3a and passes with its fix.

1. The route table's generation counter (``runtime_dir/generation``) truncated while the
   gateway runs (by hand, a cleanup script): every worker had it mmap'd and died of SIGBUS
   on its next request (the request cut unanswered), the sync process too at its next
   publication, and the workers started in their place could not map it and served the
   conf file's routes alone (404 for every etcd route) until the sync process came back.
2. The health checker killed (-9, a crash, the OOM killer) and restarted by the master began
   with every target healthy: a target it had judged down took traffic again until it failed
   unhealthy_threshold more checks (15 s with the defaults).
3. The per-host rate-limit table (``state_dir/limits``, mmap'd by every worker) truncated
   while the gateway runs: every worker died of SIGBUS at its next limited request.
4. A helper the master had just started (a restart of a killed one) when the master was
   killed -9 outlived it for good: PR_SET_PDEATHSIG came after its imports, too late. A
   leaked checker or sync process then wrote the host state beside the next master's own.
5. A reload while the health checker (or ocsp, rollouts) was still starting: the master
   forwards SIGHUP to it, and before its handler was set SIGHUP's default action killed it;
   it came back only after the restart back-off.
6. A reload onto a ``worker_tmp_dir`` the master cannot create files in (not the service
   user's; /proc here) passed the check (it is a directory), then gunicorn's spawn raised in
   the master's main loop and the master exited 255: every listener gone.
7. A reload that moves ``[etcd] runtime_dir``: the new workers listened at once, with no
   table yet (the new sync process had not published there), and the old ones were let go:
   about a second of 404 for every etcd route.
8. A sync process killed mid-write leaves ``changes/N.json.PID.tmp``, read as generation N
   when a damaged counter is rewritten (file-level: tests/unit/test_shm.py,
   test_a_change_file_left_half_written_is_no_generation).
9. fork() refused on a reload (systemd's TasksMax reached; a pids cgroup here): gunicorn's
   main loop exits the master on any exception, so the master exited 255 with every worker.

Held (kept: nothing else covers them): ten SIGHUPs in a second under wrk load (no failed
request, one generation and the same health checker after); a chunked upload trickled across
a reload (answered whole by the draining worker); the sync process killed -9 twice in a stream
of 60 etcd changes (every worker serves all of them, no generation goes back).
"""
import collections
import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from gwserver.sync.shm import worker_board

from ..conftest import free_port, gateway_conf, read_response, route, to_toml, wait_until
from .test_etcd import (_is_worker, all_workers_at, put, runtime_of, serves, serving,
                        status_of)
from .test_health import target_health
from .test_lifecycle import wrk


def worker_pids(gw):
    return sorted(p for p in gw.worker_pids() if _is_worker(p))


# -- 1. a truncated generation counter --------------------------------------------------------

def test_a_truncated_generation_counter_kills_no_worker_and_drops_no_route(
        launcher, upstream, tmp_path):
    member = launcher.etcd()
    client = member.client()
    gw = serving(launcher, tmp_path, member.url, client, upstream, "r", "/r")
    workers = worker_pids(gw)
    sync = [p for p in gw.worker_pids() if p not in workers]
    counter = os.path.join(runtime_of(gw), "generation")
    os.truncate(counter, 0)
    assert [serves(gw, "/r") for _ in range(6)] == [200] * 6
    assert worker_pids(gw) == workers                 # none died
    os.kill(workers[0], signal.SIGKILL)                 # its replacement starts meanwhile
    wait_until(lambda: len(worker_pids(gw)) == 2 and workers[0] not in worker_pids(gw))
    wait_until(lambda: all_workers_at(gw, 1))
    assert [serves(gw, "/r") for _ in range(6)] == [200] * 6
    revision = put(client, "routes", "r2", {"paths": ["/r2"], "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, revision))
    assert serves(gw, "/r2") == 200 and os.path.getsize(counter) == 8
    assert all(p in gw.worker_pids() for p in sync)    # the helpers lived through it too
    assert "is damaged (not 8 bytes)" in gw.log() and "signal 7" not in gw.log()


# -- 2. health verdicts across a restart of the health helper ---------------------------------

SLOW_TO_JUDGE = {"interval": 0.5, "timeout": 0.3, "healthy_threshold": 2,
                 "unhealthy_threshold": 3, "max_interval": 1.0, "path": "/echo"}


def test_a_restarted_health_checker_does_not_bring_a_dead_target_back(launcher):
    a = launcher.upstream("a")
    dead = f"http://127.0.0.1:{free_port()}"            # nothing listens there
    gw = launcher.gateway(gateway_conf(
        [{"id": "r", "paths": ["/r/*rest"], "strip_prefix": "/r", "upstream": "pool"}],
        upstreams={"pool": {"targets": [{"url": a.url}, {"url": dead}],
                            "health_check": SLOW_TO_JUDGE}}))
    wait_until(lambda: target_health(gw) == {a.url: "healthy", dead: "unhealthy"}, timeout=10)
    first = gw.helper_pid("health")
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: gw.helper_pid("health") not in (None, first), timeout=10)
    seen = set()
    until = time.monotonic() + 2.0      # longer than three failed probes take
    while time.monotonic() < until:
        seen.add(target_health(gw)[dead])
        time.sleep(0.02)
    assert seen == {"unhealthy"}
    assert "health (pid %d) was killed by signal 9; restarting it" % first in gw.log()



# -- 3. a truncated per-host rate-limit table ----------------------------------------------------

def test_a_truncated_per_host_limit_table_kills_no_worker(launcher, upstream):
    gw = launcher.gateway(gateway_conf([route("lim", ["/lim"], upstream.url, plugins={
        "rate_limit": {"rate": 3, "per": 3600, "burst": 3, "key": "route"}})]))
    assert [serves(gw, "/lim") for _ in range(2)] == [200, 200]
    workers = worker_pids(gw)
    os.truncate(os.path.join(gw.conf["server"]["state_dir"], "limits"), 0)
    # the table's keys start over (the cut part held them): three more, then the limit
    assert [serves(gw, "/lim") for _ in range(4)] == [200, 200, 200, 429]
    assert worker_pids(gw) == workers
    assert "was cut short" in gw.log()


# -- 4. a helper started just before the master is killed ------------------------------------

def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_helper_started_as_the_master_is_killed_does_not_outlive_it(launcher, upstream):
    """The master restarts a killed health checker and is killed -9 itself while the new one
    is still importing (before its PR_SET_PDEATHSIG): that helper ran on for good."""
    gw = launcher.gateway(gateway_conf(
        [{"id": "r", "paths": ["/r"], "upstream": "pool"}],
        upstreams={"pool": {"targets": [{"url": upstream.url}], "health_check": SLOW_TO_JUDGE}}))
    wait_until(lambda: gw.helper_pid("health") is not None)
    first = gw.helper_pid("health")
    os.kill(first, signal.SIGKILL)
    killed = f"health (pid {first}) was killed"
    wait_until(lambda: "started health (pid" in gw.log().partition(killed)[2], interval=0.002)
    os.kill(gw.pid, signal.SIGKILL)                     # while the new one is starting up
    second = int(gw.log().rsplit("started health (pid ", 1)[1].split(")")[0])
    gw.proc.wait(10)
    try:
        wait_until(lambda: not _alive(second), timeout=10)
        assert f"its master (pid {gw.pid}) is gone" in gw.log()
    finally:
        if _alive(second):
            os.kill(second, signal.SIGKILL)


# -- 5. a reload while a helper is still starting ---------------------------------------------

def test_a_reload_while_a_helper_starts_does_not_kill_it(launcher, upstream):
    """The master forwards SIGHUP to the health checker on every reload; a checker it had
    just started, held before its handler was in place (SIGSTOP here, a slow start on a
    busy host), died of it (SIGHUP's default action) and was restarted only after a back-off,
    its verdicts forgotten."""
    gw = launcher.gateway(gateway_conf(
        [{"id": "r", "paths": ["/r"], "upstream": "pool"}],
        upstreams={"pool": {"targets": [{"url": upstream.url}], "health_check": SLOW_TO_JUDGE}}))
    wait_until(lambda: gw.helper_pid("health") is not None)
    first = gw.helper_pid("health")
    os.kill(first, signal.SIGKILL)
    killed = f"health (pid {first}) was killed"
    wait_until(lambda: "started health (pid" in gw.log().partition(killed)[2], interval=0.002)
    second = int(gw.log().rsplit("started health (pid ", 1)[1].split(")")[0])
    os.kill(second, signal.SIGSTOP)
    try:
        os.kill(gw.pid, signal.SIGHUP)
        wait_until(lambda: "reload complete" in gw.log())
    finally:
        os.kill(second, signal.SIGCONT)
    wait_until(lambda: "health: targets re-read" in gw.log(), timeout=10)
    assert gw.helper_pid("health") == second and _alive(second)
    assert f"health (pid {second}) was killed" not in gw.log()


# -- held ----------------------------------------------------------------------------------------

def test_held_a_sighup_storm_under_load_drops_nothing_and_leaks_nothing(launcher, upstream):
    """Ten SIGHUPs within a second while wrk keeps 20 keep-alive connections busy: no failed
    request; the master applies what gunicorn queued (it keeps at most 5 signals), ends with
    one generation of workers and one health checker (the same one), and says so."""
    gw = launcher.gateway(gateway_conf(
        [route("e", ["/echo"], upstream.url, prefix=True)], workers=2, server={"keepalive": 2.0},
        upstreams={"pool": {"targets": [{"url": upstream.url}], "health_check": SLOW_TO_JUDGE}}))
    checker = gw.helper_pid("health")

    def storm():
        time.sleep(1.0)
        for _ in range(10):
            os.kill(gw.pid, signal.SIGHUP)
            time.sleep(0.1)
    thread = threading.Thread(target=storm)
    thread.start()
    requests, failures, out = wrk(f"{gw.url}/echo/load", seconds=8, connections=20)
    thread.join()
    assert requests > 500 and failures == 0, out

    def settled():
        """Two workers and the checker, the same for a second: on a busy host the master
        may still be applying a queued SIGHUP when wrk ends (a CI run saw two new children
        not yet renamed to workers)."""
        children = sorted(gw.worker_pids())
        time.sleep(1.0)
        return (len(children) == 3 and sorted(gw.worker_pids()) == children
                and len(worker_pids(gw)) == 2)
    wait_until(settled, timeout=30)
    applied = gw.log().count("reload complete")
    assert 1 <= applied <= 10 and "reload refused" not in gw.log()
    assert f"generation {applied + 1}," in gw.log()
    assert gw.helper_pid("health") == checker and "was killed" not in gw.log()


# -- 6. a reload onto a worker_tmp_dir the master cannot create files in ---------------------

def test_a_reload_onto_an_unwritable_worker_tmp_dir_is_refused_not_fatal(launcher, upstream):
    """worker_tmp_dir names a directory where no file can be created (/proc here; under
    systemd's User=gwserver, any directory that user cannot write): it passed the check (a
    directory), gunicorn's spawn raised in the master's main loop, and the master exited 255,
    taking every listener with it. Expected: the reload refused, the old workers serving."""
    gw = launcher.gateway(gateway_conf([route("e", ["/e"], upstream.url)]))
    conf = json.loads(json.dumps(gw.conf))
    conf["server"]["worker_tmp_dir"] = "/proc"
    gw.conf_path.write_text(to_toml(conf))
    os.kill(gw.pid, signal.SIGHUP)
    wait_until(lambda: "reload refused" in gw.log() or gw.proc.poll() is not None)
    assert gw.proc.poll() is None
    assert "server.worker_tmp_dir: cannot create the workers' heartbeat files in /proc" \
        in gw.log()
    assert serves(gw, "/e") == 200


def test_held_a_slow_upload_that_straddles_a_reload_is_answered_whole(launcher, upstream):
    """A chunked upload trickled over ~2.5 s on a keep-alive connection; SIGHUP half a second
    in. The old worker drains: the upload reaches the upstream whole and is answered (with
    Connection: close), and the old worker is gone after."""
    import hashlib
    import socket
    gw = launcher.gateway(gateway_conf([route("u", ["/upload"], upstream.url)]))
    old = worker_pids(gw)
    piece, digest = os.urandom(65536), hashlib.sha256()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(10):
            if i == 2:
                os.kill(gw.pid, signal.SIGHUP)
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            digest.update(piece)
            time.sleep(0.25)
        sock.sendall(b"0\r\n\r\n")
        head, body = read_response(sock)
    assert head.startswith(b"HTTP/1.1 200"), head
    assert json.loads(body) == {"size": 10 * 65536, "sha256": digest.hexdigest()}
    assert b"connection: close" in head.lower()
    wait_until(lambda: not set(old) & set(gw.worker_pids()))
    assert "reload complete" in gw.log()


def test_held_the_sync_process_killed_mid_publication_loses_no_change(launcher, upstream,
                                                                     tmp_path):
    """60 routes put one by one while the sync process is killed -9 twice in the middle of
    the stream of publications: every worker ends up serving all of them, no generation
    goes back, no worker or helper dies but the killed ones."""
    member = launcher.etcd()
    client = member.client()
    gw = serving(launcher, tmp_path, member.url, client, upstream, "r", "/r")
    workers = worker_pids(gw)
    generations, killed = [], [None]
    for i in range(60):
        revision = put(client, "routes", f"m{i}", {"paths": [f"/m{i}"], "upstream": "up"})
        if i in (20, 40):
            sync = wait_until(lambda: (status_of(gw) or {}).get("pid") not in killed and
                              status_of(gw)["pid"])
            os.kill(sync, signal.SIGKILL)
            killed.append(sync)
        generations.append((status_of(gw) or {}).get("generation") or 0)
    wait_until(lambda: all_workers_at(gw, revision), timeout=30)
    assert all(serves(gw, f"/m{i}") == 200 for i in range(60))
    assert worker_pids(gw) == workers
    assert gw.log().count("was killed by signal 9; restarting it") == 2
    board = [entry["generation"] for entry in worker_board(runtime_of(gw)).values()]
    assert min(board) >= max(generations)


# -- 7. a reload that moves [etcd] runtime_dir ---------------------------------------------------

def test_a_reload_that_moves_the_runtime_dir_serves_the_etcd_routes_throughout(
        launcher, upstream, tmp_path):
    """The new workers listened at once and the old ones were let go, while the new sync
    process (a changed [etcd] section) had not published in the new runtime_dir yet: about
    a second of 404 for every etcd route (~1,000 answers here)."""
    member = launcher.etcd()
    client = member.client()
    gw = serving(launcher, tmp_path, member.url, client, upstream, "r", "/r")
    conf = json.loads(json.dumps(gw.conf))
    conf["etcd"]["runtime_dir"] += "-moved"
    gw.conf_path.write_text(to_toml(conf))
    seen, stop = collections.Counter(), threading.Event()

    def load():
        deadline = time.monotonic() + 20        # bounded, whatever happens
        while not stop.is_set() and time.monotonic() < deadline:
            seen[serves(gw, "/r")] += 1
            time.sleep(0.002)
    thread = threading.Thread(target=load)
    thread.start()
    try:
        time.sleep(0.3)
        os.kill(gw.pid, signal.SIGHUP)
        wait_until(lambda: "reload complete" in gw.log())
        time.sleep(1.5)
    finally:
        stop.set()
        thread.join()
    assert set(seen) == {200}, seen
    assert sum(seen.values()) > 100


# -- 9. fork() refused (systemd's TasksMax) on a reload ---------------------------------------

PIDS_CGROUP = "/sys/fs/cgroup/pids"


@pytest.fixture
def pids_cgroup():
    """A pids cgroup (v1, as on this host) to cap the tasks of a gateway; emptied and removed
    whatever happens."""
    if not os.access(PIDS_CGROUP, os.W_OK):
        pytest.skip("needs a writable cgroup v1 pids hierarchy (root)")
    group = os.path.join(PIDS_CGROUP, f"gwtest-{os.getpid()}-{time.monotonic_ns()}")
    os.mkdir(group)
    try:
        yield group
    finally:
        with open(os.path.join(group, "pids.max"), "w") as f:
            f.write("max")
        # The gateway still runs (the launcher stops it after this teardown): a worker it
        # forks between the listing and the rmdir joins the group, and the rmdir says EBUSY.
        # So the group is emptied until it stays empty.
        for _ in range(100):
            with open(os.path.join(group, "cgroup.procs")) as f:
                pids = f.read().split()
            for pid in pids:
                try:
                    with open(os.path.join(PIDS_CGROUP, "cgroup.procs"), "w") as f:
                        f.write(pid)
                except OSError:
                    pass                # gone meanwhile
            try:
                os.rmdir(group)
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
                time.sleep(0.05)
        else:
            os.rmdir(group)             # still busy after 5 s: say so


def cap_tasks(gw, group):
    """The gateway's processes into pids cgroup ``group``, capped at what they run now: no
    process of theirs can fork (systemd's TasksMax reached). ``uncap_tasks`` lifts it."""
    for pid in [gw.pid] + gw.worker_pids():
        with open(os.path.join(group, "cgroup.procs"), "w") as f:
            f.write(str(pid))
    with open(os.path.join(group, "pids.current")) as f:
        current = int(f.read())
    # Below what they run: a thread of theirs that ends (an idle pool thread) frees a task,
    # and the master's next try of fork() succeeded while a test still counted on the cap.
    with open(os.path.join(group, "pids.max"), "w") as f:
        f.write(str(max(1, current - 8)))


def uncap_tasks(group):
    with open(os.path.join(group, "pids.max"), "w") as f:
        f.write("max")


def test_a_reload_that_cannot_fork_keeps_the_master_and_its_workers(launcher, upstream,
                                                                     pids_cgroup):
    """The gateway's tasks capped at what it runs (systemd's TasksMax reached): on SIGHUP
    gunicorn's fork() raised EAGAIN in the master's main loop, which exits the master on any
    exception: exit 255, every worker stopped, the listeners gone. Expected: the master says
    so and serves on with the workers it has; once the cap is lifted the reload completes."""
    gw = launcher.gateway(gateway_conf([route("e", ["/e"], upstream.url)]))
    old = worker_pids(gw)
    assert [serves(gw, "/e") for _ in range(5)] == [200] * 5     # its threads started
    cap_tasks(gw, pids_cgroup)
    # gwserver reload (not in the cgroup) sends the SIGHUP and reads the verdict.
    cli = subprocess.run([sys.executable, "-m", "gwserver", "reload", "-c", str(gw.conf_path),
                          "--timeout", "5"], capture_output=True, text=True, timeout=40)
    wait_until(lambda: "cannot start a worker" in gw.log() or gw.proc.poll() is not None)
    time.sleep(1.5)                                     # a few more tries meanwhile
    assert gw.proc.poll() is None
    assert [serves(gw, "/e") for _ in range(5)] == [200] * 5
    assert worker_pids(gw) == old                       # the old worker serves on
    # Not "reload complete" while the old configuration is what serves (both said it).
    assert "reload complete" not in gw.log()
    assert "reload applied as generation 2, but 1 of 1 new workers could not start" in gw.log()
    assert cli.returncode == 1 and "reload complete" not in cli.stdout, cli
    assert "reload applied as generation 2, but 1 new workers could not start" in cli.stderr
    uncap_tasks(pids_cgroup)
    wait_until(lambda: worker_pids(gw) and not set(old) & set(worker_pids(gw)), timeout=20)
    assert serves(gw, "/e") == 200
    assert "reload complete: generation 2, 1 workers, 1 routes (its workers could start " \
        "only now)" in gw.log()
    status = json.loads((gw.conf_path.parent / f"state-{gw.port}" / "master.json").read_text())
    assert status["workers_not_started"] == 0 and status["generation"] == 2


def test_gwserver_reload_waits_for_new_workers_that_start_late(launcher, upstream,
                                                               pids_cgroup):
    """A reload applied whose new workers serve only later (fork refused for a while, or
    slow to start: the master stops waiting after max(10 s, timeout)) is a reload that
    completes: `gwserver reload` exited 1 at the first verdict, and systemd reported the
    reload failed although the new configuration was serving moments later. It waits, as
    long as its --timeout allows, for the master to say the workers serve."""
    gw = launcher.gateway(gateway_conf([route("e", ["/e"], upstream.url)]))
    old = worker_pids(gw)
    cap_tasks(gw, pids_cgroup)
    cli = subprocess.Popen([sys.executable, "-m", "gwserver", "reload", "-c",
                            str(gw.conf_path), "--timeout", "30"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: "new workers could not start" in gw.log())
        time.sleep(1.0)
        assert cli.poll() is None               # no verdict yet: the workers are missing
        uncap_tasks(pids_cgroup)
        out, err = cli.communicate(timeout=30)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert cli.returncode == 0, (out, err)
    assert out.strip() == "reload complete: generation 2", (out, err)
    wait_until(lambda: worker_pids(gw) and not set(old) & set(worker_pids(gw)), timeout=20)
    assert serves(gw, "/e") == 200
