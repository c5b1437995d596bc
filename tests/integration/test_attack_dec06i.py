"""Attack pass of 2026-12-06 (i): reloads and restarts that keep the truth. The etcd sync
process and the table it publishes to the workers, across SIGHUP reloads, sync restarts and
etcd trouble, against real processes (Debian's etcd-server on loopback, gateways from
``launcher``)."""
import json
import os
import shutil
import signal
import threading
import time

import pytest

from gwserver.sync.shm import read_json, worker_board

from ..conftest import route, to_toml, wait_until
from .test_etcd import (PREFIX, UP, _is_worker, all_workers_at, etcd_conf, put, runtime_of,
                        serves, status_of)
from .test_etcd_attack_dec05k import member_serving


@pytest.fixture
def etcd(launcher):
    return launcher.etcd()


def hup(gw, conf):
    """Write ``conf`` and SIGHUP the master; -> once its verdict is in the log."""
    gw.conf_path.write_text(to_toml(conf))
    before = gw.log().count("reload complete") + gw.log().count("reload refused")
    os.kill(gw.pid, signal.SIGHUP)
    wait_until(lambda: gw.log().count("reload complete") + gw.log().count("reload refused")
               > before, timeout=20)
    assert "reload refused" not in gw.log(), gw.log()[-2000:]
    gw.conf = conf


class Hammer:
    """A client thread asking ``path`` over and over (a connection each), noting every
    answer's status (or the error) until stopped."""

    def __init__(self, gw, path):
        self.gw, self.path, self.answers = gw, path, []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stopping.is_set():
            try:
                self.answers.append(serves(self.gw, self.path))
            except OSError as exc:
                self.answers.append(repr(exc))
            time.sleep(0.01)

    def stop(self):
        self.stopping.set()
        self.thread.join(10)
        return self.answers


# -- a reload that starts the sync process again ---------------------------------------------


def test_a_route_moved_from_the_conf_file_into_etcd_answers_through_the_reload(
        launcher, etcd, tmp_path):
    """docs/etcd.md: to move a route from the conf file into etcd, put it in etcd (refused
    meanwhile: the static one serves), then remove it from the conf file and reload; the
    reload starts the sync process again before the new workers, "and the etcd item serves".
    The new workers listened with the table the previous sync process had published (the
    etcd route refused in it), and the old workers were let go: /moved was a 404 until the
    new sync process published, a second or so later."""
    one, two = launcher.upstream("one"), launcher.upstream("two")
    conf = etcd_conf(tmp_path, [etcd.url], routes=[route("moved", ["/moved"], one.url)])
    gw = launcher.gateway(conf)
    client = etcd.client()
    put(client, "upstreams", "up", UP(two))
    revision = put(client, "routes", "moved", {"paths": ["/moved"], "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, revision))
    assert "taken by a static route" in status_of(gw)["rejected"]["routes/moved"]
    assert serves(gw, "/moved") == 200

    hammer = Hammer(gw, "/moved")
    time.sleep(0.3)
    conf = json.loads(json.dumps(gw.conf))
    conf["routes"] = []
    hup(gw, conf)
    time.sleep(2.0)
    answers = hammer.stop()
    assert answers and set(answers) == {200}, (
        f"/moved through the reload that handed it to etcd: {answers}")
    assert gw.request("GET", "/moved")[0].getheader("X-Upstream") == "two"


# -- a sync process killed mid-publication ---------------------------------------------------


def test_a_change_file_a_killed_sync_process_left_past_the_counter_is_never_applied(
        launcher, etcd, tmp_path):
    """A sync process writes changes/N.json, then moves the counter to N. Killed between the
    two (the OOM killer, the master's SIGKILL of a stuck one, a reload's SIGTERM whose
    handler ran right there), it leaves a change file no worker ever applied. Its successor
    took up the counter (N - 1) and published N whole (table.json: no change file): every
    worker at N - 1 then read the dead process's N.json as the step to N and served what
    it said, for good: here a route deleted from etcd answered again."""
    up = launcher.upstream("one")
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url]))
    runtime = runtime_of(gw)
    client = etcd.client()
    put(client, "upstreams", "up", UP(up))
    wait_until(lambda: (status_of(gw) or {}).get("connected"))
    revision = put(client, "routes", "ghost", {"paths": ["/ghost"], "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, revision))
    put_ghost = json.loads(open(os.path.join(runtime, "changes",
                                             f"{status_of(gw)['generation']}.json")).read())
    assert put_ghost["routes"].get("ghost"), put_ghost
    client.delete(f"{PREFIX}/routes/ghost")
    revision = client.revision()
    wait_until(lambda: all_workers_at(gw, revision))
    assert serves(gw, "/ghost") == 404

    sync = gw.helper_pid("config-sync")
    os.kill(sync, signal.SIGKILL)
    wait_until(lambda: not os.path.exists(f"/proc/{sync}/status") or
               "zombie" in open(f"/proc/{sync}/status").read())
    published = read_counter(runtime)
    # What the killed process was writing: the put of "ghost" again, numbered past the
    # counter (its own bytes, renumbered).
    stray = {**put_ghost, "generation": published + 1}
    with open(os.path.join(runtime, "changes", f"{published + 1}.json"), "w") as f:
        json.dump(stray, f)
    wait_until(lambda: gw.helper_pid("config-sync") not in (None, sync), timeout=10)
    wait_until(lambda: read_counter(runtime) > published and (status_of(gw) or {}).get(
        "connected") and all_at_generation(gw, read_counter(runtime)), timeout=10)
    answers = [serves(gw, "/ghost") for _ in range(6)]
    assert answers == [404] * 6, (
        f"/ghost, deleted from etcd, after the sync process's successor published: {answers}")


def read_counter(runtime):
    with open(os.path.join(runtime, "generation"), "rb") as f:
        return int.from_bytes(f.read(8), "little")


def all_at_generation(gw, generation):
    board = worker_board(runtime_of(gw))
    workers = [pid for pid in gw.worker_pids() if _is_worker(pid)]
    return bool(workers) and all(board.get(pid, {}).get("generation", 0) >= generation
                                 for pid in workers)


# -- runtime_dir removed under the gateway ---------------------------------------------------


def test_a_worker_started_after_runtime_dir_was_removed_serves_the_etcd_routes(
        launcher, etcd, tmp_path):
    """A tmp cleaner removes runtime_dir while etcd is quiet; then a worker dies (or a reload
    starts new ones). The sync process made the directory again only at its next write
    there: an etcd change, or its status after a quiet watch (watch_idle_timeout, 15 s by
    default). The new worker found no table, waited its 5 s, then listened with the conf
    file's routes alone: every etcd route a 404 until then, though the sync process held
    the table all along. The base writer, which looks at runtime_dir once a second, makes
    it again now."""
    up = launcher.upstream("one")
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], workers=1, watch_idle_timeout=60.0))
    client = etcd.client()
    put(client, "upstreams", "up", UP(up))
    revision = put(client, "routes", "r", {"paths": ["/r"], "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, revision))
    assert serves(gw, "/r") == 200
    time.sleep(0.5)
    # (the base writer may make it again while rmtree works: "Directory not empty")
    shutil.rmtree(runtime_of(gw), ignore_errors=True)
    time.sleep(1.5)
    worker = next(pid for pid in gw.worker_pids() if _is_worker(pid))
    os.kill(worker, signal.SIGKILL)
    wait_until(lambda: [pid for pid in gw.worker_pids() if _is_worker(pid)
                        and pid != worker], timeout=10)
    started = time.monotonic()
    answer = serves(gw, "/r")
    assert answer == 200, (f"/r from the worker started after runtime_dir was removed: "
                           f"{answer}, {time.monotonic() - started:.1f}s after it was asked")
    assert all(serves(gw, "/r") == 200 for _ in range(4))


# -- a hostile etcd endpoint -----------------------------------------------------------------


def test_a_member_answering_deeply_nested_json_is_passed_over_not_a_crash_loop(
        launcher, etcd, tmp_path):
    """An endpoint in the list that answers every call with JSON nested 100,000 deep (a
    broken proxy, a hostile host: 200 KB) is one that does not answer as etcd does, and the
    next member is asked (docs/etcd.md). json's RecursionError was no ValueError: it left
    the sync process, which died at each start on the first endpoint, the master restarting
    it with a growing backoff, and the healthy member after it was never asked."""
    up = launcher.upstream("one")
    client = etcd.client()
    put(client, "upstreams", "up", UP(up))
    revision = put(client, "routes", "r", {"paths": ["/r"], "upstream": "up"})
    with member_serving(200, b"[" * 100_000) as hostile:
        gw = launcher.gateway(etcd_conf(tmp_path, [hostile, etcd.url], workers=1))
        sync = wait_until(lambda: gw.helper_pid("config-sync"))
        try:
            wait_until(lambda: all_workers_at(gw, revision), timeout=8)
        except AssertionError:
            pass
        assert serves(gw, "/r") == 200, gw.log()[-3000:]
        assert gw.helper_pid("config-sync") == sync and "RecursionError" not in gw.log(), \
            gw.log()[-3000:]


# -- the rollouts helper across a reload -----------------------------------------------------


def test_the_rollouts_helper_follows_a_reload_that_moves_redis(launcher, tmp_path):
    """docs/rollouts.md: the rollouts helper is "kept across reloads (SIGHUP makes it re-read
    the conf)". It re-read the routes, but kept the Redis client (and the etcd one) it made
    at its start: a reload onto another Redis (a migration, a failover by DNS name ... by
    URL) left it asking the old one for good. Once that was gone, every tick failed
    (`rollouts: ... trying again every 0.5s`), and no rollout step moved again until the
    helper happened to restart; the workers counted into the new Redis meanwhile."""
    from .test_rollouts import rollout_conf
    old, new = launcher.redis(), launcher.redis()
    v1, v2 = launcher.upstream("v1"), launcher.upstream("v2")
    gw = launcher.gateway(rollout_conf(tmp_path, v1, v2, redis=old, workers=1))
    state_dir = gw.conf["server"]["state_dir"]

    def updated():
        status = read_json(os.path.join(state_dir, "rollouts-status.json")) or {}
        return status.get("updated") if status.get("routes", {}).get("shop") else None
    wait_until(updated, timeout=10)

    conf = json.loads(json.dumps(gw.conf))
    conf["redis"]["url"] = new.url
    hup(gw, conf)
    wait_until(lambda: "rollouts: routes re-read" in gw.log(), timeout=10)
    old.terminate()
    old.wait(10)
    time.sleep(1.0)
    since = time.time()
    ticked = _eventually(lambda: (updated() or 0) > since + 0.5, 6)
    assert ticked, ("the rollouts helper stopped ticking after the reload moved [redis]: "
                    + "\n".join(line for line in gw.log().splitlines()
                                if "rollouts" in line)[-1500:])


def _eventually(predicate, timeout):
    try:
        return wait_until(predicate, timeout=timeout)
    except AssertionError:
        return False
