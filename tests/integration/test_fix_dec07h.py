"""A master killed -9 while its worker serves; a config-sync process that takes up the table."""
import fcntl
import http.client
import os
import signal
import socket
import threading
import time

from ..conftest import gateway_conf, route, wait_until


def access_line(gw, path):
    lines = [line for line in gw.access_lines() if line.get("path") == path]
    return lines[-1] if lines else None


def test_a_worker_whose_master_was_killed_9_drains_what_it_serves(launcher, upstream,
                                                                  tmp_path):
    """The master killed -9 (the OOM killer) while its worker served: the worker saw its
    parent gone and exited at once (gunicorn's sys.exit in notify()), a request whose answer
    was a second away cut with no answer and no access line. Now it drains as on a SIGTERM:
    it stops accepting and lets go of the instance lock at once (a new master may start
    there), finishes what it serves within graceful_timeout, and logs what it had to cut."""
    state = tmp_path / "state"
    conf = gateway_conf(
        [route("slow", ["/slow/:s"], upstream.url), route("bytes", ["/bytes/:n"], upstream.url)],
        server={"graceful_timeout": 3.0, "state_dir": str(state)})
    gw = launcher.gateway(conf)
    answers = {}

    def ask(path):
        try:
            answers[path] = gw.request("GET", path, timeout=15)[0].status
        except (OSError, http.client.HTTPException) as exc:
            answers[path] = repr(exc)
    finishes = threading.Thread(target=ask, args=("/slow/2.5",))
    finishes.start()
    download = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    download.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: h\r\n\r\n" % (200 << 20))
    assert download.recv(1 << 16).startswith(b"HTTP/1.1 200")
    try:
        time.sleep(0.3)
        os.kill(gw.pid, signal.SIGKILL)
        gw.proc.wait(5)
        # no longer accepting once it sees its parent gone (a new master may bind the port)
        wait_until(lambda: refused(gw.port), timeout=3)
        fd = os.open(state / "gwserver.lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)      # BlockingIOError if held
        finally:
            os.close(fd)
        # A supervisor starts the gateway again meanwhile: it takes the lock at once, and
        # its start (which removes the metrics directories of dead masters) takes nothing
        # the draining worker still writes in.
        again = launcher.gateway(conf)
        assert again.request("GET", "/slow/0")[0].status == 200
        finishes.join(10)
        assert answers == {"/slow/2.5": 200}, answers
        wait_until(lambda: access_line(gw, "/bytes/209715200"), timeout=6)
    finally:
        download.close()
    assert access_line(gw, "/slow/2.5")["status"] == 200
    assert "unhandled error" not in gw.log(), gw.log()[-3000:]
    cut = access_line(gw, "/bytes/209715200")
    assert cut["status"] == 200 and cut["bytes"] > 0, cut
    assert "the master (pid %d) died: draining" % gw.pid in gw.log()
    assert cut["error"] == ("cut: the master died and server.graceful_timeout (3s) ran "
                            "out"), cut


def refused(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def serving_route_r(launcher, upstream, tmp_path):
    """A gateway (one worker) following a test etcd, serving route r at /r.
    -> (etcd member, conf, gateway, the revision the workers serve)"""
    from .test_etcd import UP, all_workers_at, etcd_conf, put
    member = launcher.etcd()
    client = member.client()
    conf = etcd_conf(tmp_path, [member.url], workers=1)
    gw = launcher.gateway(conf)
    put(client, "upstreams", "up", UP(upstream))
    revision = put(client, "routes", "r", {"paths": ["/r"], "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, revision))
    return member, conf, gw, revision


def test_a_restarted_sync_process_keeps_the_revision_of_the_table_it_took_up(
        launcher, upstream, tmp_path):
    """config-sync killed and restarted by the master while etcd is down takes up the table
    the workers serve (ConfigSync.load_served), and wrote it again as table.json and the
    snapshot with "revision": null: a worker started then said on the board it served no
    revision, and the next start from that snapshot had lost which etcd history it saw."""
    from gwserver.sync.shm import read_json
    from .test_etcd import status_of
    member, conf, gw, revision = serving_route_r(launcher, upstream, tmp_path)
    member.stop()
    first = status_of(gw)["pid"]
    table = os.path.join(conf["etcd"]["runtime_dir"], "table.json")
    before = os.stat(table).st_mtime_ns
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: (status_of(gw) or {}).get("pid") not in (None, first), timeout=10)
    assert "taking up the table the workers serve" in gw.log()
    wait_until(lambda: os.stat(table).st_mtime_ns != before, timeout=5)    # took_up's write
    assert read_json(table)["revision"] == revision
    assert read_json(conf["etcd"]["snapshot_path"])["revision"] == revision
    assert gw.request("GET", "/r")[0].status == 200


def test_a_start_from_the_snapshot_keeps_its_revision(launcher, upstream, tmp_path):
    """A start with etcd down serves the snapshot (ConfigSync.serve_snapshot), published
    with "revision": 0, in table.json and over the snapshot itself: the workers told the
    board revision 0, and the next start had lost which etcd history the snapshot saw."""
    from gwserver.sync.shm import read_json
    member, conf, gw, revision = serving_route_r(launcher, upstream, tmp_path)
    snapshot = conf["etcd"]["snapshot_path"]
    wait_until(lambda: (read_json(snapshot) or {}).get("revision") == revision, timeout=5)
    os.kill(gw.pid, signal.SIGTERM)
    gw.proc.wait(15)
    member.stop()
    conf["etcd"]["runtime_dir"] += "-second"          # nothing published in this one yet
    second = launcher.gateway(conf)
    wait_until(lambda: "serving snapshot" in second.log())
    assert second.request("GET", "/r")[0].status == 200
    table = os.path.join(conf["etcd"]["runtime_dir"], "table.json")
    assert read_json(table)["revision"] == revision
    assert read_json(snapshot)["revision"] == revision
