"""Attack pass of 2026-12-05 (a helper's) on traffic splitting and self-driving canaries:
split, the rollouts helper, the rollout state store, against real processes. Each test failed
on 5c17399. Fixed since: a slow or paused upload counted as the canary's latency or failure
(134ba3d); a rollout that begins again judged on an earlier run's counts (5514ee6); an inline
canary pointed at new targets went on as the done rollout (5e11b82); replaced workers' counts
dropped from a current window, a removed obs dir blinding the gates (e8a1a04); the latency
gate judging a percentile interpolated inside a histogram bucket (counted exactly now); with
two baseline groups, A/B arms moving as the canary grew (split.place_in_rollout).

Still open, marked xfail(strict=True) so that a fix flips it: a client that picks its own
keys can dilute a broken canary's failures."""
import json
import os
import select
import signal
import socket
import subprocess
import threading
import time
import tomllib
import uuid
from collections import Counter
from types import SimpleNamespace

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import pytest

from ..conftest import gateway_conf, to_toml, wait_until
from ..h2_upstreams import H2cUpstream
from .test_rollouts import Load, cli, rollout_conf, rollout_of


def canary_keys(count, percent, scale=10_000):
    """X-User values the weights place on the canary (the top of the hash space) at
    ``percent``: what any client can compute, the hash and the scale being public."""
    from gwserver.plugins.split import CANARY_SALT, hash_point
    keys = []
    while len(keys) < count:
        key = uuid.uuid4().hex
        if hash_point(key, scale, CANARY_SALT) >= scale - round(scale * percent / 100):
            keys.append(key)
    return keys


def with_canary_keys(clients, on_canary, percent):
    """``clients`` random keys of which ``on_canary`` are the canary's at ``percent``: 50
    random ones put none there in 1 run of 150 and one in 1 of 30, and a loaded machine
    then sent the canary too few requests for its gates within the test's time."""
    return canary_keys(on_canary, percent) + \
        [uuid.uuid4().hex for _ in range(clients - on_canary)]


def in_threads(target, keys):
    """``target(key, out)`` for each key, each in a thread of its own; -> ``out`` once every
    one has ended."""
    out = []
    threads = [threading.Thread(target=target, args=(key, out)) for key in keys]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return out


def stalled_upload(gw, pause, size=100_000, first=70_000):
    """-> ``target(key, out)`` for in_threads: a streamed upload (over request_buffer_size)
    on /shop/upload with X-User ``key`` that pauses ``pause`` s after ``first`` bytes, then
    sends the rest; ``out`` gets the answer's status line, or the error."""
    def upload(key, out):
        with socket.create_connection(("127.0.0.1", gw.port), timeout=15) as sock:
            sock.sendall(b"POST /shop/upload HTTP/1.1\r\nHost: a\r\nX-User: %s\r\n"
                         b"Content-Length: %d\r\n\r\n" % (key.encode(), size))
            sock.sendall(b"x" * first)
            time.sleep(pause)
            try:
                sock.sendall(b"x" * (size - first))
                out.append(sock.recv(200).split(b"\r\n", 1)[0])
            except OSError as exc:
                out.append(repr(exc))
    return upload


def worker_pids(gw):
    out = subprocess.run(["pgrep", "-P", str(gw.pid), "-f", "gwserver:? worker"],
                         capture_output=True, text=True)
    return {int(p) for p in out.stdout.split()}


def reload(gw, change):
    conf = tomllib.loads(gw.conf_path.read_text())
    change(conf)
    gw.conf_path.write_text(to_toml(conf))
    before = worker_pids(gw)
    os.kill(gw.pid, signal.SIGHUP)
    count = conf["server"].get("workers", 1)
    return wait_until(lambda: (now := worker_pids(gw)) and not now & before and
                      len(now) == count and now, timeout=30)


def server_of(gw, key):
    resp, body = gw.request("GET", "/shop/echo", headers={"X-User": key})
    return json.loads(body)["server"] if resp.status == 200 else resp.status


# -- 1. a slow streamed upload is counted as the canary's latency ----------------------------

def test_slow_streamed_upload_is_not_the_canarys_latency(launcher, tmp_path):
    """Bodies over request_buffer_size (64 KiB) are streamed: attempt() starts the upstream
    clock before the client's body has arrived, so a client that uploads 200 KB slowly, with
    X-User values the weights place on the canary (counted: they are 'weighed'), makes a
    healthy canary's p90 its own upload time, and the latency gate rolls it back."""
    v1, v2 = launcher.upstream("v1"), launcher.upstream("v2")
    gw = launcher.gateway(rollout_conf(tmp_path, v1, v2, workers=1, interval=30,
                                       min_requests=10))
    wait_until(lambda: rollout_of(gw).get("step") == 0, timeout=20)
    size, pieces = 200_000, 8

    def slow_upload(key, out):
        with socket.create_connection(("127.0.0.1", gw.port), timeout=15) as sock:
            sock.sendall(b"POST /shop/upload HTTP/1.1\r\nHost: a\r\nX-User: %s\r\n"
                         b"Content-Length: %d\r\n\r\n" % (key.encode(), size))
            for _ in range(pieces):
                time.sleep(0.08)
                sock.sendall(b"x" * (size // pieces))
            out.append(sock.recv(200).split(b"\r\n", 1)[0])

    out = in_threads(slow_upload, canary_keys(12, 10))
    assert out == [b"HTTP/1.1 200 OK"] * 12, out      # the canary answered every one, at once
    time.sleep(2.0)     # counts reach the helper, which judges the window
    entry = rollout_of(gw)
    gate = next(g for g in entry["gates"] if g["gate"] == "latency_p90")
    assert entry["status"] == "running", entry["history"][-1]["reason"]
    assert gate["value"] is None or gate["value"] < 0.25, gate


# -- 2. an inline canary pointed at a new version keeps the finished rollout -----------------

def test_inline_canary_pointed_at_new_targets_starts_a_new_rollout(launcher, tmp_path):
    """The rollout id is derived from "the upstream it names"; an inline canary is named by
    its position (shop.plugins.split.upstreams[1]), not by what it points at. Pointing it at a
    new version (v3) after v2's rollout finished keeps the old rollout: v3 gets 100 % at once,
    with no step and no gate."""
    v1, v2, v3 = (launcher.upstream(n) for n in ("v1", "v2", "v3"))
    conf = rollout_conf(tmp_path, v1, v2, workers=1, interval=30)
    split = conf["routes"][0]["plugins"]["split"]
    split["upstreams"][1] = {"upstream": {"targets": [{"url": v2.url}]}, "weight": 1,
                             "group": "canary"}
    gw = launcher.gateway(conf)
    wait_until(lambda: rollout_of(gw).get("step") == 0, timeout=20)
    assert cli(gw, "promote", "shop").returncode == 0
    wait_until(lambda: rollout_of(gw).get("status") == "done", timeout=10)
    first_id = rollout_of(gw)["id"]

    def to_v3(c):
        c["routes"][0]["plugins"]["split"]["upstreams"][1]["upstream"] = \
            {"targets": [{"url": v3.url}]}
    reload(gw, to_v3)
    time.sleep(1.5)             # the helper re-read the conf; workers read its step file
    servers = Counter(server_of(gw, uuid.uuid4().hex) for _ in range(60))
    entry = rollout_of(gw)
    # a new canary version begins at the first step (10 %), as docs/rollouts.md says
    assert entry["id"] != first_id and entry["status"] == "running", \
        (entry["id"], entry["status"], servers)
    assert servers["v3"] < 30, servers


# -- 3. keys move between baseline groups while the canary grows -----------------------------

def test_rollout_keeps_ab_groups_sticky_with_two_baseline_groups(launcher, tmp_path):
    """As the canary grows from 10 % to 30 %, no client moves between baseline groups a and b.
    Failed before the fix: one hash range, shrunk from the top, moved the boundary between a
    and b down at each step, and every key in between went from a to b (about 10 % of clients
    flipped A/B arms mid-experiment). Docs: keys move only from the baseline to the canary."""
    a, b, c = (launcher.upstream(n) for n in ("a", "b", "c"))
    split = {"upstreams": [{"upstream": "a", "weight": 1}, {"upstream": "b", "weight": 1},
                           {"upstream": "c", "weight": 1, "group": "canary"}],
             "key": "header:X-User",
             "rollout": {"steps": [10, 30, 60, 100], "interval": 1.0, "min_requests": 20,
                         "gates": [{"kind": "success_rate", "min": 95}]}}
    gw = launcher.gateway(gateway_conf(
        [{"id": "shop", "paths": ["/shop/*rest"], "strip_prefix": "/shop", "upstream": "a",
          "plugins": {"split": split}}], workers=1,
        upstreams={n: {"targets": [{"url": u.url}]} for n, u in
                   (("a", a), ("b", b), ("c", c))}))
    load = Load([gw], clients=200)
    try:
        wait_until(lambda: rollout_of(gw).get("step", 0) >= 2, timeout=40)
    finally:
        load.stop()
    path = {}
    for _, key, status, server in load.seen:
        if status == 200 and (not path.get(key) or path[key][-1] != server):
            path.setdefault(key, []).append(server)
    flipped = {k: p for k, p in path.items() if "a" in p and "b" in p}
    assert not flipped, f"{len(flipped)} of {len(path)} clients moved between a and b: " \
                        f"{list(flipped.values())[:5]}"


# -- 4. a rollout that begins again is judged on an old incarnation's traffic ----------------

def test_reverted_rollout_is_not_promoted_on_old_measurements(launcher, tmp_path):
    """The window key is id:epoch and every rollout starts at epoch 1. A rollout whose id
    comes back (the steps changed and changed back, the canary pointed at v3 and back at v2)
    starts at window id:1 again, where the helper still has the first run's counts: with no
    request at all, its first step passes after the interval (no promotion on silence, and
    a step judged on its own traffic, both broken)."""
    v1, v2 = launcher.upstream("v1"), launcher.upstream("v2")
    gw = launcher.gateway(rollout_conf(tmp_path, v1, v2, workers=1, interval=1.5))
    load = Load([gw], clients=100)
    try:
        wait_until(lambda: rollout_of(gw).get("step") == 1, timeout=30)     # step 1 passed
    finally:
        load.stop()
    first_id = rollout_of(gw)["id"]

    def steps(values):
        def change(c):
            c["routes"][0]["plugins"]["split"]["rollout"]["steps"] = values
        return change
    reload(gw, steps([10, 50, 100]))
    # the helper has started the other rollout (admin_view names the worker's id at once)
    wait_until(lambda: (lambda e: e.get("id") != first_id and e.get("status") == "running")(
        rollout_of(gw)), timeout=10)
    reload(gw, steps([10, 30, 60, 100]))        # back to the first rollout
    entry = wait_until(lambda: (lambda e: e.get("id") == first_id and "history" in e and e)(
        rollout_of(gw)), timeout=10)
    assert entry["status"] == "running" and entry["step"] == 0, entry["history"]
    time.sleep(3.5)             # two intervals, and not one request sent
    entry = rollout_of(gw)
    assert entry["step"] == 0, (entry["canary"], [(h["event"], h["reason"])
                                                  for h in entry["history"]])


def test_removed_state_file_does_not_promote_on_old_measurements(launcher, tmp_path):
    """The same with the host's state file removed (no Redis, no etcd): the rollout starts
    over at window id:1, and the helper's measurements of the first run's step 1 promote it
    with no traffic."""
    v1, v2 = launcher.upstream("v1"), launcher.upstream("v2")
    gw = launcher.gateway(rollout_conf(tmp_path, v1, v2, workers=1, interval=1.5))
    load = Load([gw], clients=100)
    try:
        wait_until(lambda: rollout_of(gw).get("step") == 1, timeout=30)
    finally:
        load.stop()
    state_file = os.path.join(gw.conf["server"]["state_dir"], "rollout-state.json")
    os.unlink(state_file)
    wait_until(lambda: len(rollout_of(gw).get("history", ())) == 1, timeout=10)
    time.sleep(3.5)
    entry = rollout_of(gw)
    assert entry["step"] == 0, (entry["canary"], [(h["event"], h["reason"])
                                                  for h in entry["history"]])


# -- 5. a replaced worker's answers drop out of a window that is still current ---------------

def test_counts_of_replaced_workers_stay_while_their_window_is_current(launcher, tmp_path):
    """host_totals deletes a dead worker's count file once the *file* is a minute old, not
    once its window is (its docstring and docs/rollouts.md: 'until their window is a minute
    stale'). After a reload (every worker replaced), a step's answers from before it vanish
    from the window 60 s later, however long the interval (default 300 s): its failures are
    forgotten and min_requests starts over. The minute is simulated by aging the file's mtime
    by 2 minutes (the window, interval 300 s, is current either way)."""
    v1, v2 = launcher.upstream("v1"), launcher.upstream("v2")
    gw = launcher.gateway(rollout_conf(tmp_path, v1, v2, workers=1, interval=300,
                                       min_requests=1000))
    wait_until(lambda: rollout_of(gw).get("step") == 0, timeout=20)
    window = rollout_of(gw)["epoch"]
    for _ in range(30):
        assert server_of(gw, uuid.uuid4().hex) in ("v1", "v2")
    total = lambda e: e["canary"]["requests"] + e["baseline"]["requests"]   # noqa
    wait_until(lambda: total(rollout_of(gw)) == 30, timeout=10)
    old = worker_pids(gw)
    reload(gw, lambda c: None)
    obs = os.path.join(gw.conf["server"]["state_dir"], "rollout-obs")
    wait_until(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in old), timeout=20)
    aged = time.time() - 120
    for pid in old:
        os.utime(os.path.join(obs, f"{pid}.json"), (aged, aged))
    time.sleep(1.0)
    assert server_of(gw, uuid.uuid4().hex) in ("v1", "v2")    # one more answer, a new worker's
    time.sleep(2.0)
    entry = rollout_of(gw)
    assert entry["epoch"] == window and entry["window_age"] < 300     # the same, current window
    assert total(entry) == 31, (entry["canary"], entry["baseline"])


# -- 6. a client's own easy requests on the canary promote a broken one ----------------------

@pytest.mark.xfail(strict=True,
                   reason="open: with a key a client chooses, it steers which "
                          "requests the gates count")
def test_client_cannot_dilute_a_broken_canarys_failures(launcher, tmp_path):
    """With a client-supplied key (header:X-User, the documented example) a client picks
    keys the weights place on the canary, so its requests are 'weighed' and counted, and
    floods it with requests it knows succeed (here /stats, which the test upstream always
    answers 200). The canary fails every real request (/echo), yet its success rate is the
    client's and it is promoted to 100 %. docs/rollouts.md: 'a client cannot steer the
    gates'."""
    from .test_rollouts import control
    v1, v2 = launcher.upstream("v1"), launcher.upstream("v2")
    control(v2, fail=1.0)           # every /echo on the canary answers 500
    gw = launcher.gateway(rollout_conf(tmp_path, v1, v2, workers=2, interval=1.5))
    wait_until(lambda: rollout_of(gw).get("step") == 0, timeout=20)
    keys = canary_keys(20, 10)
    running = [True]

    def flood():
        import http.client
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
        i = 0
        while running[0]:
            i += 1
            try:
                conn.request("GET", "/shop/stats", headers={"X-User": keys[i % len(keys)]})
                conn.getresponse().read()
            except (OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
    attackers = [threading.Thread(target=flood, daemon=True) for _ in range(4)]
    for thread in attackers:
        thread.start()
    load = Load([gw], clients=50, pause=0.03)        # real users, on /echo
    try:
        wait_until(lambda: rollout_of(gw).get("status") in ("rolled_back", "done") or
                   rollout_of(gw).get("step", 0) >= 2, timeout=30)
    finally:
        load.stop()
        running[0] = False
        for thread in attackers:
            thread.join(10)
    entry = rollout_of(gw)
    real_canary = [s for _, k, s, _ in load.seen if s != 200]
    assert entry["status"] == "rolled_back", \
        (entry["status"], entry["step"], entry["history"][-1]["reason"],
         f"{len(real_canary)} real requests failed")


# -- 7. a client's stalled upload is counted as the canary's failure -------------------------

TIMEOUT_UPSTREAM = r'''
import json, socket, sys, threading
def serve(conn):
    conn.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        piece = conn.recv(65536)
        if not piece:
            return conn.close()
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    conn.settimeout(0.5)            # a body read timeout, as gunicorn's or Node's
    try:
        while len(body) < length:
            piece = conn.recv(65536)
            if not piece:
                return conn.close()
            body += piece
    except socket.timeout:
        return conn.close()         # gives up on a stalled body, no answer
    out = json.dumps({"server": sys.argv[2], "body_size": len(body)}).encode()
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                 % (len(out), out))
    conn.close()
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", int(sys.argv[1])))
sock.listen(128)
print("ready", flush=True)
while True:
    conn, _ = sock.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
'''


def test_stalled_upload_is_not_the_canarys_failure(launcher, tmp_path):
    """A client that stalls its streamed upload (over request_buffer_size) on keys the weights
    place on the canary: the canary, like any server with a body read timeout, gives up and
    closes; the gateway answers 502 (its own), which always counts as a failure. The
    canary's success rate is the client's doing, and it is rolled back."""
    import sys
    from ..conftest import free_port, stop_process, wait_for_port
    script = tmp_path / "timeout_upstream.py"
    script.write_text(TIMEOUT_UPSTREAM)
    procs, ups = [], []
    for name in ("v1", "v2"):
        port = free_port()
        procs.append(subprocess.Popen([sys.executable, str(script), str(port), name],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True))
        wait_for_port(port, proc=procs[-1])
        ups.append(SimpleNamespace(url=f"http://127.0.0.1:{port}", port=port))
    try:
        conf = rollout_conf(tmp_path, *ups, workers=1, interval=30, min_requests=10)
        conf["routes"][0]["plugins"]["split"]["rollout"]["gates"] = \
            [{"kind": "success_rate", "min": 95}]
        gw = launcher.gateway(conf)
        wait_until(lambda: rollout_of(gw).get("step") == 0, timeout=20)
        out = in_threads(stalled_upload(gw, pause=1.2), canary_keys(12, 10))
        time.sleep(2.0)
        entry = rollout_of(gw)
        assert entry["status"] == "running", (entry["history"][-1]["reason"], out[:3])
    finally:
        for proc in procs:
            stop_process(proc)


class BodyTimeoutH2Upstream(H2cUpstream):
    """An h2c upstream with a body read timeout, as gRPC servers and Go's net/http have: a
    request whose body stalls for 1.5 s (over proxy.CLIENT_PAUSE) gets RST_STREAM (CANCEL);
    a whole one gets 200 and the upstream's name."""

    def __init__(self, name):
        self.name = name
        super().__init__()

    def connection(self, sock):
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None))
        conn.initiate_connection()
        last_data = {}                          # open request stream -> when its body moved
        with sock:
            try:
                sock.sendall(conn.data_to_send())
                while True:
                    if select.select([sock], [], [], 0.1)[0]:
                        data = sock.recv(65536)
                        if not data:
                            return
                        for event in conn.receive_data(data):
                            sid = getattr(event, "stream_id", None)
                            if isinstance(event, h2.events.RequestReceived):
                                last_data[sid] = time.monotonic()
                            elif isinstance(event, h2.events.DataReceived):
                                conn.acknowledge_received_data(event.flow_controlled_length,
                                                               sid)
                                last_data[sid] = time.monotonic()
                            elif isinstance(event, h2.events.StreamEnded) and \
                                    last_data.pop(sid, None) is not None:
                                out = json.dumps({"server": self.name}).encode()
                                conn.send_headers(sid, [(b":status", b"200"),
                                                        (b"content-length", b"%d" % len(out))])
                                conn.send_data(sid, out, end_stream=True)
                    now = time.monotonic()
                    for sid, when in list(last_data.items()):
                        if now - when > 1.5:
                            del last_data[sid]
                            conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
                    sock.sendall(conn.data_to_send())
            except (h2.exceptions.ProtocolError, OSError):
                pass


def test_stalled_upload_to_an_http2_canary_is_not_its_failure(launcher, tmp_path):
    """The HTTP/2 upstream half of test_stalled_upload_is_not_the_canarys_failure: canary and
    baseline are h2c upstreams that reset a stream whose body stalls. A client that pauses its
    streamed upload (on canary keys) past CLIENT_PAUSE gets the gateway's 502, but the reset
    is the client's doing, not the canary's failure: the rollout is not rolled back. The
    reset comes while the gateway still waits for the client: the wait counts because closing
    the try ends the sender first. (The HTTP/2 half of 134ba3d, untested until now.)"""
    ups = [BodyTimeoutH2Upstream(name) for name in ("v1", "v2")]
    try:
        conf = rollout_conf(tmp_path, *(SimpleNamespace(url=f"http://127.0.0.1:{u.port}")
                                        for u in ups), workers=1, interval=30, min_requests=10)
        conf["routes"][0]["plugins"]["split"]["rollout"]["gates"] = \
            [{"kind": "success_rate", "min": 95}]
        for name in ("v1", "v2"):
            conf["upstreams"][name]["protocol"] = "h2"
        gw = launcher.gateway(conf)
        wait_until(lambda: rollout_of(gw).get("step") == 0, timeout=20)
        assert server_of(gw, canary_keys(1, 10)[0]) == "v2"     # served over HTTP/2
        out = in_threads(stalled_upload(gw, pause=2.5), canary_keys(12, 10))
        assert out.count(b"HTTP/1.1 502 Bad Gateway") == 12, out
        time.sleep(2.0)
        entry = rollout_of(gw)
        assert entry["status"] == "running", (entry["history"][-1]["reason"], out[:3])
    finally:
        for upstream in ups:
            upstream.close()


# -- 8. the latency gate's percentile is a bucket's guess, not the canary's --------------------

def test_latency_gate_does_not_fail_a_canary_that_is_under_its_bound(launcher, tmp_path):
    """Window.percentile interpolates inside a histogram bucket. A bound between two bucket
    edges (0.25 s: the project's own tests use it; buckets 0.2 and 0.3) is judged on a
    made-up value: a canary whose every answer takes 0.21 s (p90 0.21 s, under the 0.25 s
    bound) is reported at p90 0.29 s and rolled back. Judged here against 0.28 s, still
    under that made-up 0.29: 0.25 left a loaded machine 40 ms over the upstream's delay,
    and the check that the canary is under the bound failed there (2 runs of 10)."""
    from .test_rollouts import control
    v1, v2 = launcher.upstream("v1"), launcher.upstream("v2")
    control(v2, delay=0.21)
    conf = rollout_conf(tmp_path, v1, v2, workers=2, interval=1.5, min_requests=10)
    conf["routes"][0]["plugins"]["split"]["rollout"]["gates"] = \
        [{"kind": "latency", "percentile": 90, "max": 0.28}]
    gw = launcher.gateway(conf)
    wait_until(lambda: rollout_of(gw).get("step") == 0, timeout=20)
    key = canary_keys(1, 10)[0]
    took = []
    for _ in range(5):
        began = time.monotonic()
        assert server_of(gw, key) == "v2"
        took.append(time.monotonic() - began)
    assert max(took) < 0.28, took           # the canary is under the bound, whole requests
    load = Load([gw], pause=0.005, keys=with_canary_keys(50, 5, 10))
    try:
        wait_until(lambda: rollout_of(gw).get("status") == "rolled_back" or
                   rollout_of(gw).get("step", 0) >= 1, timeout=30)
    finally:
        load.stop()
    entry = rollout_of(gw)
    assert entry["status"] != "rolled_back", (took, entry["history"][-1]["reason"])


# -- 9. a removed rollout-obs directory blinds the gates for good -----------------------------

def test_removed_obs_directory_does_not_blind_the_gates(launcher, tmp_path):
    """A worker makes STATE_DIR/rollout-obs once, when its flusher starts; atomic_write does
    not make it again. Removed (a state-dir clean-up), no worker can hand in a count until it
    is replaced: the helper sees no canary answer, so a canary failing every request is never
    rolled back (and each worker logs 'cannot write' twice a second)."""
    import shutil
    from .test_rollouts import control
    v1, v2 = launcher.upstream("v1"), launcher.upstream("v2")
    gw = launcher.gateway(rollout_conf(tmp_path, v1, v2, workers=1, interval=30,
                                       min_requests=10))
    wait_until(lambda: rollout_of(gw).get("step") == 0, timeout=20)
    for _ in range(5):
        server_of(gw, uuid.uuid4().hex)         # the worker's flusher has started
    obs = os.path.join(gw.conf["server"]["state_dir"], "rollout-obs")
    wait_until(lambda: os.path.isdir(obs), timeout=5)
    time.sleep(1.0)
    shutil.rmtree(obs)
    control(v2, fail=1.0)                       # the canary now fails every request
    load = Load([gw], pause=0.005, keys=with_canary_keys(50, 5, 10))
    try:
        try:
            wait_until(lambda: rollout_of(gw).get("status") == "rolled_back", timeout=8)
        except AssertionError:
            pass
    finally:
        load.stop()
    entry = rollout_of(gw)
    failed = sum(1 for _, _, status, _ in load.seen if status == 500)
    spam = gw.log().count("cannot write")
    assert entry["status"] == "rolled_back", \
        (entry["status"], entry["canary"], f"{failed} client requests failed on the canary",
         f"{spam} 'cannot write' lines")


# -- 8. a websocket counted only when its tunnel closed --------------------------------------

def test_a_websocket_counts_for_the_rollout_at_its_handshake(launcher, tmp_path):
    """The tunnel attack pass: split recorded a websocket's answer in finish, which comes
    when the tunnel closes, in whatever window is current then (or none). It is counted at
    its checked 101 now (the upgraded hook), once."""
    from ..conftest import WEBSOCKET_HANDSHAKE
    v1, v2 = launcher.upstream("v1"), launcher.upstream("v2")
    gw = launcher.gateway(rollout_conf(tmp_path, v1, v2, workers=1, interval=300,
                                       min_requests=1000))
    wait_until(lambda: rollout_of(gw).get("step") == 0, timeout=20)
    total = lambda e: e["canary"]["requests"] + e["baseline"]["requests"]   # noqa
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    try:
        sock.sendall(WEBSOCKET_HANDSHAKE.replace(b"GET /ws", b"GET /shop/ws"))
        assert sock.recv(4096).startswith(b"HTTP/1.1 101 ")
        wait_until(lambda: total(rollout_of(gw)) == 1, timeout=10)      # the tunnel is open
    finally:
        sock.close()
    time.sleep(1.5)
    assert total(rollout_of(gw)) == 1                                   # not again at its close
