"""Attack pass (Dec 5, n): the etcd sync (gwserver/sync/: etcd.py, watcher.py, shm.py), its
open items, against real etcd, real gateways and stand-in "etcd members" that misbehave.

1. An endpoint (a broken proxy in front of etcd, a hostile host in the endpoint list)
   answers a call with a body that never ends. ``read_whole`` had no bound: its deadline
   grows by a second per 256 KiB that comes, so over loopback a body streamed at full speed
   bought itself hours, and the sync process held all of it (twice: the buffer, then its
   copy) until the OOM killer came; a body declared gigabytes long was read the same way.
   An answer now has a cap (``MAX_ANSWER``, 256 MiB: 60,000 routes are 20 to 50 MiB),
   checked on the declared length and as it comes; past it, that endpoint failed (``an
   answer went past 268435456 bytes``), said in the log with the endpoint, and the next
   member is asked.
2. The sync process dies (the OOM killer of 1, say) right after a route is deleted, before
   its base writer rewrote the snapshot (it writes once publications pause, and not at all
   on a full disk), and runtime_dir is wiped meanwhile (a tmp cleaner), with etcd not
   answering. The sync process the master starts again found nothing in runtime_dir and
   published its snapshot: the running workers, which served the table without the route,
   took it, and the deleted route answered 200 again for as long as etcd did not answer.
   A snapshot is now published marked as one, and a worker (or helper) that serves a table
   already keeps it (``keeping the table served here``); one that has none takes it.
3. A gateway starts while etcd answers, slowly (a loaded member, a WAN link): its snapshot
   still holds a route deleted while it was stopped. The snapshot was published before
   etcd was asked, the workers listened with it, and the deleted route answered 200 until
   the range came. With nothing served in runtime_dir the sync process now asks etcd first
   (for up to 2 s: within the 5 s a worker waits for a first table) and serves the
   snapshot only if etcd does not answer in time.
4. A watch that hangs after its first message (a member cut off from its cluster, a proxy
   that holds streams): the member sends the head and the "created" message, then nothing.
   The watch was resumed as a quiet one every ``watch_idle_timeout``, on the same member;
   each resumed watch hung alike and its catch-up never came: a route put or deleted
   meanwhile never reached the workers, and nothing was said. Worse, the "created"
   message's header revision (etcd's, when the watch was made) was taken as the watch's
   position, so the next watch started past the changes it had withheld: lost for good,
   even once the member recovered. Now "created" moves nothing; after a silent watch the
   sync process asks etcd (two reads of keys and counts, no values) whether keys under
   the prefix changed meanwhile; if so the resumed watch must bring them at once, in its
   catch-up, or it is said (``the watch at URL withheld changes etcd made under PREFIX``,
   in the log and as ``watch_withheld`` in status.json), the table loaded by value, and
   the next member asked. A watch that hangs before its first message was handled
   already (``no whole message within ... of its start``, a full load).
5. Whoever may write under the prefix writes a key of a megabyte (etcd takes keys up to its
   request limit, 1.5 MiB), or a route of 50,000 bad paths (430 KB). Each rejection was
   quoted whole, its id in every problem: the key made status.json 4 MB (in /dev/shm, and
   rewritten at every change and every ``watch_idle_timeout``), the route 2.8 MB, and a log
   line of as many; ``routes status`` printed it all. The log and status.json now show a
   key past 512 characters, and a reason past 4,096, as their start, their length and a
   digest (a long id shortened wherever its reason quotes it, so what is wrong still
   shows); ``routes validate`` still says every problem.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from ..conftest import TcpRelay, wait_until
from .test_attack_pass_dec04 import peak_memory_mib
from .test_etcd import (PREFIX, UP, all_workers_at, etcd_conf, put, runtime_of, serves,
                        status_of)


@pytest.fixture
def etcd(launcher):
    return launcher.etcd()


# -- 1. an endless answer grew the sync process until the OOM killer -----------------------------

class EndlessAnswer:
    """A stand-in etcd member that answers every call 200, etcd's JSON begun and never
    ended: chunked (``declared`` None), or with a Content-Length of ``declared`` bytes. It
    sends at most ``most`` bytes a connection (the test's own bound), then closes."""

    def __init__(self, declared=None, most=1 << 30):
        self.declared, self.most, self.calls, self.sent = declared, most, 0, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn):
        with conn:
            try:
                conn.settimeout(10)
                request = b""
                while b"\r\n\r\n" not in request:
                    piece = conn.recv(65536)
                    if not piece:
                        return
                    request += piece
                self.calls += 1
                framing = b"Transfer-Encoding: chunked" if self.declared is None else \
                    b"Content-Length: %d" % self.declared
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" +
                             framing + b"\r\n\r\n")
                piece = b'{"header":{},"kvs":[' + b" " * ((1 << 20) - 20)
                if self.declared is None:
                    piece = b"%x\r\n%s\r\n" % (len(piece), piece)
                sent = 0
                while sent < self.most:
                    conn.sendall(piece)
                    sent += len(piece)
                    self.sent += len(piece)
            except OSError:
                pass            # the client gave up on it: what a capped read does

    def close(self):
        self.listener.close()


@pytest.mark.parametrize("declared", [None, 1 << 40], ids=["chunked", "declared"])
def test_an_endless_answer_is_cut_at_the_cap_and_the_next_member_asked(
        launcher, etcd, upstream, tmp_path, declared):
    endless = EndlessAnswer(declared)
    try:
        client = etcd.client()
        put(client, "upstreams", "up", UP(upstream))
        revision = put(client, "routes", "orders", {"paths": ["/orders"], "upstream": "up"})
        gw = launcher.gateway(etcd_conf(tmp_path, [endless.url, etcd.url], workers=1))
        assert wait_until(lambda: all_workers_at(gw, revision), timeout=30), gw.log()[-2000:]
        assert serves(gw, "/orders") == 200
        sync = gw.helper_pid("config-sync")
        assert peak_memory_mib(sync) < 700, peak_memory_mib(sync)   # all it was sent, before
        said = f"etcd endpoint {endless.url}: an answer went past 268435456 bytes"
        assert said in gw.log(), gw.log()[-2000:]
        assert endless.sent < ((300 if declared is None else 64) << 20), endless.sent
        assert "Traceback" not in gw.log(), gw.log()[-2000:]
    finally:
        endless.close()


# -- 2. and 3. a snapshot older than etcd served before etcd, or over a newer table -------------

def statuses_for(gw, path, seconds):
    """The statuses of GETs of ``path`` one after another for ``seconds`` (connection errors
    while the gateway is not listening yet are skipped)."""
    seen, until = [], time.monotonic() + seconds
    while time.monotonic() < until:
        try:
            seen.append(gw.request("GET", path, timeout=5)[0].status)
        except OSError:
            time.sleep(0.01)
    return seen


def kept_and_gone(gw, etcd, upstream):
    """Routes "kept" and "gone" in etcd, served by every worker; -> the etcd client."""
    client = etcd.client()
    put(client, "upstreams", "up", UP(upstream))
    put(client, "routes", "kept", {"paths": ["/kept"], "upstream": "up"})
    revision = put(client, "routes", "gone", {"paths": ["/gone"], "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, revision))
    return client


def test_a_sync_restarted_on_a_wiped_runtime_dir_does_not_bring_a_deleted_route_back(
        launcher, etcd, upstream, tmp_path):
    conf = etcd_conf(tmp_path, [etcd.url], workers=2)
    gw = launcher.gateway(conf)
    client = kept_and_gone(gw, etcd, upstream)
    snapshot = conf["etcd"]["snapshot_path"]
    wait_until(lambda: b"/gone" in open(snapshot, "rb").read(), timeout=10)
    lagging = open(snapshot, "rb").read()           # the snapshot before the delete
    client.delete(f"{PREFIX}/routes/gone")
    revision = client.revision()
    wait_until(lambda: all_workers_at(gw, revision), interval=0.01)
    assert serves(gw, "/gone") == 404
    first = gw.helper_pid("config-sync")
    os.kill(first, signal.SIGSTOP)
    # Killed before its base writer caught up (it writes once publications pause): the
    # snapshot on disk still holds the route; etcd hangs; runtime_dir is wiped (a tmp
    # cleaner) before the master starts the sync process again.
    with open(snapshot, "wb") as f:
        f.write(lagging)
    etcd.proc.send_signal(signal.SIGSTOP)
    try:
        shutil.rmtree(runtime_of(gw))
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: gw.helper_pid("config-sync") not in (None, first), timeout=20)
        wait_until(lambda: "serving snapshot" in gw.log(), timeout=10)
        seen = statuses_for(gw, "/gone", 3.0)
        assert seen and set(seen) == {404}, seen       # 200: the deleted route was back
        assert serves(gw, "/kept") == 200
        assert all_workers_at(gw, revision)     # each says on the board what it kept
    finally:
        etcd.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: (status_of(gw) or {}).get("connected"), timeout=30)
    assert set(statuses_for(gw, "/gone", 0.5)) == {404} and serves(gw, "/kept") == 200


class SlowAnswers(TcpRelay):
    """A relay to an etcd member whose answers come ``delay`` seconds late (a loaded member,
    a WAN link): each piece of an answer is held that long."""

    def __init__(self, target_port, delay):
        self.delay = delay
        super().__init__(target_port)

    def forward(self, data, dst, to_client):
        if to_client:
            time.sleep(self.delay)
        dst.sendall(data)


def test_a_start_while_etcd_answers_does_not_serve_the_snapshots_deleted_route(
        launcher, etcd, upstream, tmp_path):
    """Stopped, the gateway's snapshot holds route "gone"; it is deleted meanwhile; the
    gateway starts while etcd answers, slowly (0.6 s). The snapshot was published first
    and the workers listened with it: "gone" answered 200 until the range came."""
    conf = etcd_conf(tmp_path, [etcd.url], workers=1)
    gw = launcher.gateway(conf)
    client = kept_and_gone(gw, etcd, upstream)
    os.kill(gw.pid, signal.SIGTERM)
    gw.proc.wait(15)
    assert b"/gone" in open(conf["etcd"]["snapshot_path"], "rb").read()
    client.delete(f"{PREFIX}/routes/gone")
    slow = SlowAnswers(etcd.client_port, 0.6)
    try:
        conf["etcd"]["endpoints"] = [slow.url]
        conf["etcd"]["runtime_dir"] += "-second"
        second = launcher.gateway(conf)
        seen = statuses_for(second, "/gone", 3.0)
        assert seen and set(seen) == {404}, seen        # 200s first: the snapshot's route
        assert serves(second, "/kept") == 200
    finally:
        slow.close()


# -- 4. a watch that hangs after its first message withheld every change for good ---------------

class HangingWatch(TcpRelay):
    """A relay to an etcd member whose watches hang after their first message (the
    "created" one): nothing more comes, the connection held open; every other call is
    passed on whole. A member cut off from its cluster, or a proxy that holds streams."""

    def __init__(self, target_port):
        self.watching, self.hung = set(), set()
        super().__init__(target_port)

    def forward(self, data, dst, to_client):
        if not to_client:
            if b"/v3/watch" in data:
                with self.lock:         # the client socket of this upstream one
                    self.watching.add(self.conns[self.conns.index(dst) - 1])
            return dst.sendall(data)
        if dst in self.hung:
            return                      # swallowed: the watch hangs
        if dst in self.watching and b'"created":true' in data:
            self.hung.add(dst)
        dst.sendall(data)


@pytest.mark.parametrize("members", [1, 2], ids=["one member", "then a good one"])
def test_changes_made_while_the_watch_hangs_reach_the_workers(launcher, etcd, upstream,
                                                               tmp_path, members):
    hanging = HangingWatch(etcd.client_port)
    try:
        client = etcd.client()
        put(client, "upstreams", "up", UP(upstream))
        revision = put(client, "routes", "old", {"paths": ["/old"], "upstream": "up"})
        endpoints = [hanging.url, etcd.url][:members]
        gw = launcher.gateway(etcd_conf(tmp_path, endpoints, workers=1,
                                        watch_idle_timeout=2.0))
        wait_until(lambda: all_workers_at(gw, revision), timeout=10)
        time.sleep(1.0)                         # the watch is made, and hangs
        put(client, "routes", "late", {"paths": ["/late"], "upstream": "up"})
        client.delete(f"{PREFIX}/routes/old")
        revision = client.revision()
        # Never before: each watch resumed hung alike, and its catch-up never came.
        assert wait_until(lambda: all_workers_at(gw, revision), timeout=12), gw.log()[-3000:]
        assert serves(gw, "/late") == 200 and serves(gw, "/old") == 404
        log = gw.log()
        said = f"the watch at {hanging.url} withheld changes etcd made under {PREFIX}/"
        assert said in log, log[-3000:]
        assert "Traceback" not in log, log[-3000:]
        withheld = status_of(gw)["watch_withheld"]
        assert withheld["endpoint"] == hanging.url and said in withheld["reason"]
        if members == 2:                        # watched on the good member from then on
            time.sleep(0.5)
            revision = put(client, "routes", "now", {"paths": ["/now"], "upstream": "up"})
            assert wait_until(lambda: all_workers_at(gw, revision), timeout=1.5)
    finally:
        hanging.close()


# -- 5. a key of a megabyte, a value of many bad paths: quoted whole in status.json and the log --

def test_a_huge_key_or_reason_is_shown_shortened_in_status_and_the_log(launcher, etcd,
                                                                       upstream, tmp_path):
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], workers=1))
    client = etcd.client()
    put(client, "upstreams", "up", UP(upstream))
    put(client, "routes", "k" * 1_000_000, {})                 # rejected: an id past 128
    put(client, "routes", "many", {"paths": [f"bad{i}" for i in range(50_000)],
                                   "upstream": "up"})          # 430 KB: a 2.8 MB reason
    revision = put(client, "routes", "good", {"paths": ["/good"], "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, revision), timeout=30)
    assert serves(gw, "/good") == 200
    status_path = os.path.join(runtime_of(gw), "status.json")
    assert os.path.getsize(status_path) < 20_000, os.path.getsize(status_path)   # 7 MB
    assert max(map(len, gw.log().splitlines())) < 20_000                        # 3 MB
    rejected = status_of(gw)["rejected"]
    (key, reason), = [(k, v) for k, v in rejected.items() if k.startswith("routes/kkk")]
    assert "(1000007 characters, sha1 " in key, key[:400]
    assert reason.count("(1000000 characters, sha1 ") == 3 and len(reason) < 2000, reason
    assert "paths: is required" in reason and "upstream: is required" in reason, reason
    many = rejected["routes/many"]
    assert many.startswith('route many: paths[0] must start with /, got "bad0"; ') and \
        " characters, sha1 " in many and len(many) < 5000, many[-300:]
    run = subprocess.run([sys.executable, "-m", "gwserver", "routes", "-c", str(gw.conf_path),
                          "status"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and len(run.stdout) < 20_000, run.stdout[-400:]
    assert "2 rejected item(s)" in run.stdout
