"""Attack pass (Dec 5, k): routes from etcd, the sync process and the table it publishes.

Defects found (each test below fails on the code before its fix):

1. etcd with auth, and the first endpoint in the list a member that cannot authenticate
   anyone (cut off from its quorum: ``authenticate`` is a raft request, answered 5xx; or a
   load balancer's page). The token was fetched outside the loop over endpoints' handling:
   the failure was raised out of it, the next call started from that endpoint again, and
   the healthy members after it were never asked. The gateway never loaded a route (a 404
   for every etcd route, /-/ready 503) while two of three members served.
2. etcd's auth token expires (a JWT's ttl; a simple token idle past ``--auth-token-ttl``,
   which a quiet watch is). The next call was answered 401 and taken for that endpoint
   failing: with one endpoint (a VIP), every expiry was an outage: ``etcd unreachable`` in
   the log, ``NOT CONNECTED`` in ``routes status``, and a full reload of the table.
3. A gateway that starts from its snapshot while etcd does not answer it (down; or a
   mistyped password, a CA that does not sign etcd's certificate), or whose sync process
   restarts (a reload that changes ``[etcd]``, a crash) and takes up the served table: the
   first failure was said only when no table was served, the next ones only after a
   connection. Nothing was ever logged of why it did not sync, and ``routes status`` said
   ``NOT CONNECTED`` with no reason. Now the first failure after a start is logged, and the
   status names the last error.
4. The runtime_dir full (``/dev/shm`` is shared with every process of the host): the next
   change's file could not be written, and the sync process died of the OSError, a
   traceback; each process the master started in its place died again writing its status,
   with a growing backoff, and a change made meanwhile waited for a restart after the room
   came back. Now the failure is said once, the publication tried again with backoff (the
   whole table, with no gap in the generations), and nothing dies.
"""
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ..conftest import wait_until
from .test_etcd import UP, all_workers_at, etcd_conf, put, serves
from .test_incident_drill import state_tmpfs  # noqa: F401 (a tmpfs mounted and unmounted)


def member_answering(status, message, code):
    """A stand-in etcd member that answers every call ``status`` with the JSON gateway's
    error ``message`` (gRPC ``code``); -> its URL."""
    body = json.dumps({"error": message, "code": code, "message": message}).encode()
    return member_serving(status, body)


@contextlib.contextmanager
def member_serving(status, body):
    """A stand-in etcd member that answers every call ``status`` with ``body`` (as JSON);
    -> its URL."""
    class Answer(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def unavailable_member():
    """A member without its quorum: 503 to every call."""
    with member_answering(503, "etcdserver: request timed out", 14) as url:
        yield url


def enable_auth(etcd):
    """root:s3cret, auth on; -> a client that authenticates."""
    ctl = ["etcdctl", "--endpoints", etcd.url]
    for args in (["user", "add", "root:s3cret"], ["auth", "enable"]):
        subprocess.run(ctl + args, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
                       check=True, capture_output=True)
    return authed(etcd)


def authed(etcd):
    from gwserver.sync.etcd import EtcdClient
    return EtcdClient([etcd.url], username="root", password="s3cret")


def test_a_member_that_cannot_authenticate_does_not_hide_the_healthy_ones(
        launcher, upstream, unavailable_member, tmp_path):
    etcd = launcher.etcd()
    client = enable_auth(etcd)
    put(client, "upstreams", "up", UP(upstream))
    revision = put(client, "routes", "orders", {"paths": ["/orders"], "upstream": "up"})
    gw = launcher.gateway(etcd_conf(tmp_path, [unavailable_member, etcd.url], workers=1,
                                    username="root", password="s3cret"))
    assert wait_until(lambda: all_workers_at(gw, revision), timeout=10), gw.log()[-2000:]
    assert serves(gw, "/orders") == 200
    assert gw.admin_get("/-/ready")[0] == 200


def test_an_expired_auth_token_is_no_outage(launcher, upstream, tmp_path):
    # A simple token lives 1 s unused; the watch is quiet for 2 s (watch_idle_timeout) at a
    # time, so every resumption finds it expired.
    etcd = launcher.etcd(extra=["--auth-token-ttl", "1"])
    client = enable_auth(etcd)
    put(client, "upstreams", "up", UP(upstream))
    revision = put(client, "routes", "orders", {"paths": ["/orders"], "upstream": "up"})
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], workers=1, username="root",
                                    password="s3cret"))
    wait_until(lambda: all_workers_at(gw, revision))
    time.sleep(7.0)                 # three quiet watches, each outliving the token
    revision = put(authed(etcd), "routes", "later", {"paths": ["/later"], "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, revision))
    assert serves(gw, "/later") == 200
    log = gw.log()
    assert "etcd unreachable" not in log, log[-2000:]
    assert log.count(" keys from etcd cluster ") == 1, log[-2000:]     # no reload since


def test_a_start_from_the_snapshot_says_why_etcd_does_not_answer(launcher, upstream, tmp_path):
    member = launcher.etcd()
    conf = etcd_conf(tmp_path, [member.url], workers=1)
    gw = launcher.gateway(conf)
    client = member.client()
    put(client, "upstreams", "up", UP(upstream))
    revision = put(client, "routes", "kept", {"paths": ["/kept"], "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, revision))
    os.kill(gw.pid, signal.SIGTERM)
    gw.proc.wait(15)
    member.stop()
    second = launcher.gateway(conf)
    wait_until(lambda: serves(second, "/kept") == 200, timeout=10)
    assert wait_until(lambda: "etcd unreachable: no etcd endpoint answered" in second.log(),
                      timeout=5), second.log()[-2000:]
    assert second.log().count("etcd unreachable") == 1          # once, not every retry
    run = subprocess.run([sys.executable, "-m", "gwserver", "routes", "-c",
                          str(second.conf_path), "status"], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 1
    assert "etcd is unreachable from the gateway (no etcd endpoint answered: " \
        f"{member.url}: " in run.stderr, run.stderr


def test_a_full_runtime_dir_kills_no_sync_process_and_the_change_follows(
        launcher, upstream, state_tmpfs, tmp_path):
    etcd = launcher.etcd()
    disk = state_tmpfs("1m")              # runtime_dir on /dev/shm, which every process shares
    conf = etcd_conf(tmp_path, [etcd.url], workers=1)
    conf["etcd"]["runtime_dir"] = str(disk / "run")
    gw = launcher.gateway(conf)
    client = etcd.client()
    put(client, "upstreams", "up", UP(upstream))
    revision = put(client, "routes", "a", {"paths": ["/a"], "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, revision))
    sync = gw.helper_pid("config-sync")
    subprocess.run(["dd", "if=/dev/zero", f"of={disk}/fill", "bs=64k", "count=100"],
                   capture_output=True)
    assert os.statvfs(disk).f_bavail == 0
    revision = put(client, "routes", "b", {"paths": ["/b"], "upstream": "up"})
    said = f"cannot publish the table in {disk / 'run'}: [Errno 28] No space left on device"
    assert wait_until(lambda: said in gw.log(), timeout=5), gw.log()[-3000:]
    time.sleep(2.0)                 # retries, with backoff
    assert serves(gw, "/a") == 200 and serves(gw, "/b") == 404      # the last table
    os.unlink(disk / "fill")
    assert wait_until(lambda: all_workers_at(gw, revision), timeout=5), gw.log()[-3000:]
    assert serves(gw, "/b") == 200
    log = gw.log()
    assert gw.helper_pid("config-sync") == sync and "Traceback" not in log, log[-3000:]
    assert log.count("cannot publish the table") == 1, log[-3000:]     # once, not per try
    assert f"writing in {disk / 'run'} works again" in log
