"""Attack pass (Dec 05 f, reloads and restarts that must keep the truth), against real
processes. Each defect below is shown by a test that failed on 6a6bf16 and passes with its fix.

1. A stop (SIGTERM, systemd's) with a download and a websocket in flight past
   graceful_timeout: gunicorn's master SIGKILLed its workers at graceful_timeout, the very
   moment each worker's own drain ran out and it would have cut its connections itself. The
   kill always came first: the log said nothing of the connections cut (the worker's
   "graceful timeout: cutting off" line never came), and the cut requests left no access
   line at all. Now the master's stop gives the workers 3 s more to cut, log and exit (and
   says so, naming them, if it must still kill one); the cut requests are logged as the
   client got them (the head's status, the bytes sent) with `error` saying the drain ran out,
   where a connection killed by the drain was logged as status 0 of 0 bytes.
2. Ten SIGHUPs in a second (a tool that reloads once per file it changed) while downloads
   begin all along: each signal was a reload of its own, of the same file, each leaving a
   generation of workers draining its downloads; past max_draining_generations (4) the
   oldest generations were stopped at once and their downloads cut, for reloads that changed
   nothing. Now the SIGHUPs of one batch, and those within a second of a reload's start,
   are one reload, a second after the last began: each came before it reads the file.
3. A generation stopped at once past max_draining_generations (SIGQUIT; SIGINT too) cut
   what it held with no access line at all, and no word from the worker: those requests
   were as if never asked. Now the worker kills each connection before its last flush, says
   how many it cut, and each cut request is logged as its client got it, `error` saying why.
4. A reload whose [redis] url has a typo (`redis://127.0.0.1:63x9/0`, a `?socket_timeout=`
   that is not a number) passed `check` and the reload; every new worker died as it started
   (redis-py's URL parser) and the master stopped the old workers for them: no worker left,
   every client timed out. The URL is now read as redis-py reads it, and refused.
5. The private metrics directory removed under a running gateway (a tmp cleaner in
   /dev/shm): every worker started after died at boot (its Prometheus files), a reload's and
   a dead worker's replacement alike, and the master stopped the old workers for them. The
   master now makes it again before it starts a worker, and says so.
6. Behind 4 and 5: the master counted the old workers in place of replacements that died
   before they served, and stopped them (tests/unit/test_reload_signals_dec05f.py). Now the
   previous workers serve on until new ones serve, and the reload says its workers could not
   start.

Held: the master killed -9 mid-download: its workers exit within a second or two ("Parent
changed") and a new master on the same conf, ports and state_dir starts and serves (no
stale lock or socket); reloads with clients streaming keep-alive requests fail none.
"""
import glob
import json
import os
import shutil
import signal
import socket
import time

from ..conftest import gateway_conf, open_websocket, route, to_toml, wait_until

RELOAD_SPACING = 1.0       # gwserver.server.app.RELOAD_SPACING: one reload a second at most


def start_download(gw, size=200 << 20):
    """A download begun (its head and first bytes read), then not read: it cannot end."""
    download = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    download.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n" % size)
    assert download.recv(1 << 16).startswith(b"HTTP/1.1 200")
    return download


def access_line(gw, path):
    lines = [line for line in gw.access_lines() if line.get("path") == path]
    return lines[-1] if lines else None


# -- a stop with connections past graceful_timeout ---------------------------------------------

def test_a_stop_past_graceful_timeout_says_what_it_cut_and_logs_the_cut_requests(
        start_gateway, upstream):
    gw = start_gateway(gateway_conf([route("ws", ["/ws"], upstream.url),
                                     route("bytes", ["/bytes/:n"], upstream.url)],
                                    server={"graceful_timeout": 2.0}))
    ws, head, _ = open_websocket(gw.port)
    assert head.startswith(b"HTTP/1.1 101")
    download = start_download(gw)
    try:
        time.sleep(0.3)
        stopped = time.monotonic()
        os.kill(gw.pid, signal.SIGTERM)
        assert gw.proc.wait(20) == 0
        took = time.monotonic() - stopped
    finally:
        ws.close()
        download.close()
    assert 2.0 <= took < 2.0 + 4.5, took           # graceful_timeout, then the cut
    log = gw.log()
    assert "graceful timeout (2s): cutting off remaining connections (2)" in log, log[-3000:]
    cut = access_line(gw, "/bytes/209715200")
    assert cut is not None, log[-3000:]
    assert cut["status"] == 200 and cut["bytes"] > 0, cut
    assert cut["error"] == "cut: the worker stopped and server.graceful_timeout (2s) ran out"
    tunnel = access_line(gw, "/ws")
    assert tunnel is not None and tunnel["status"] == 101, log[-3000:]
    assert "graceful_timeout" in tunnel["error"]


# -- a SIGHUP storm ------------------------------------------------------------------------------

def read_some(sock, limit, seconds):
    """Bytes read from ``sock`` within ``seconds`` (until ``limit``); -1 if it was cut
    (EOF or reset) first."""
    sock.settimeout(0.5)
    received, buf, deadline = 0, bytearray(1 << 20), time.monotonic() + seconds
    while received < limit and time.monotonic() < deadline:
        try:
            n = sock.recv_into(buf)
        except socket.timeout:
            continue
        except OSError:
            return -1
        if not n:
            return -1
        received += n
    return received


def test_a_sighup_storm_is_one_reload_more_and_cuts_no_download(start_gateway, upstream):
    """Ten SIGHUPs in a second (a tool that reloads once per file it changed) while
    downloads begin all along: each signal was a reload of its own, of the same file, ten
    generations of workers each left draining a download; past max_draining_generations (4)
    the oldest were stopped at once, their downloads cut. The signals that wait together
    for the master are one reload now: each came before that reload reads the file."""
    gw = start_gateway(gateway_conf([route("e", ["/echo"], upstream.url),
                                     route("bytes", ["/bytes/:n"], upstream.url)],
                                    workers=2, server={"graceful_timeout": 30.0}))
    downloads = [start_download(gw)]
    try:
        for _ in range(10):
            os.kill(gw.pid, signal.SIGHUP)
            time.sleep(0.1)
            downloads.append(start_download(gw))
        for _ in range(20):
            downloads.append(start_download(gw))
            time.sleep(0.1)
        wait_until(lambda: "reload complete" in gw.log().rpartition("Handling signal: hup")[2],
                   timeout=30)
        time.sleep(1.0)
        log = gw.log()
        assert "generations of workers are draining" not in log, log[-3000:]
        assert log.count("reload complete") <= 4, log[-3000:]
        got = [read_some(download, 4 << 20, 5.0) for download in downloads]
        cut = [i for i, n in enumerate(got) if n < 4 << 20]
        assert not cut, (got, log[-3000:])
    finally:
        for download in downloads:
            download.close()
    assert len(gw.worker_pids()) >= 2 and gw.request("GET", "/echo")[0].status == 200


# -- a generation stopped past max_draining_generations ----------------------------------------

def test_a_generation_stopped_past_the_draining_limit_logs_what_it_cut(start_gateway, upstream):
    """Reloads past max_draining_generations stop the oldest draining generation at once
    (QUIT): its download was cut with no access line at all, as if never asked for."""
    gw = start_gateway(gateway_conf([route("bytes", ["/bytes/:n"], upstream.url)], workers=1,
                                    server={"graceful_timeout": 30.0,
                                            "max_draining_generations": 1}))
    first = start_download(gw, 100 << 20)
    second = None
    try:
        os.kill(gw.pid, signal.SIGHUP)
        wait_until(lambda: gw.log().count("reload complete") == 1)
        second = start_download(gw, 200 << 20)
        time.sleep(RELOAD_SPACING)
        os.kill(gw.pid, signal.SIGHUP)
        wait_until(lambda: "stopping generation 1" in gw.log())
        # read once it was cut: read from the stop on, the 0.1 s the worker still serves
        # could carry the rest of a download (100 MiB at loopback speed)
        wait_until(lambda: "cutting off remaining connections" in gw.log(), timeout=5)
        assert read_some(first, 100 << 20, 5.0) == -1                  # cut
        cut = wait_until(lambda: access_line(gw, "/bytes/104857600"), timeout=5)
    finally:
        first.close()
        if second is not None:
            second.close()
    assert cut["status"] == 200 and cut["bytes"] > 0, cut
    assert cut["error"] == "cut: the worker stopped at once (SIGQUIT)", cut


# -- a conf that passes check but no worker can start with ---------------------------------------

def serves_throughout(gw, seconds, path="/echo"):
    """Statuses (or errors) of requests, one every 0.2 s for ``seconds``."""
    got, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            got.append(gw.request("GET", path, timeout=3)[0].status)
        except OSError as exc:
            got.append(repr(exc))
        time.sleep(0.2)
    return got


def test_a_redis_url_no_worker_can_read_is_refused_and_the_old_workers_serve(start_gateway,
                                                                            upstream):
    """A typo in [redis] url (a port that is not a number, an option of the wrong type)
    passed `check` and the reload; every new worker died as it started (redis-py's URL
    parser), and the master stopped the old ones for them, turn after turn: no worker was
    left, every client timed out. The URL is now read as the workers read it, and refused."""
    gw = start_gateway(gateway_conf([route("e", ["/echo"], upstream.url)], workers=2))
    edited = json.loads(json.dumps(gw.conf))
    edited["redis"] = {"url": "redis://127.0.0.1:63x9/0"}
    gw.conf_path.write_text(to_toml(edited))
    os.kill(gw.pid, signal.SIGHUP)
    wait_until(lambda: "reload refused" in gw.log())
    assert set(serves_throughout(gw, 3.0)) == {200}
    assert "reload refused: redis.url: redis-py cannot read this URL: Port could not be cast " \
           "to integer value as '63x9'" in gw.log()
    status = json.loads(open(os.path.join(gw.conf["server"]["state_dir"], "master.json")).read())
    assert status["last_reload_successful"] is False
    assert "Exception in worker process" not in gw.log()


def test_a_metrics_dir_removed_under_the_gateway_is_made_again_for_new_workers(
        start_gateway, upstream):
    """The private Prometheus directory in /dev/shm removed under a running gateway (a tmp
    cleaner, a hand): each worker makes its files there as it starts, so every worker
    started after died at boot: a reload's, and the replacement of a worker that died,
    and the master stopped the old workers for them: no worker served at all. The master
    now makes the directory again before it starts a worker, and says so."""
    from gwserver.server.metrics import PRIVATE_PREFIX
    gw = start_gateway(gateway_conf([route("e", ["/echo"], upstream.url)], workers=2))
    wait_until(lambda: "ready: 2 workers serving" in gw.log())
    (metrics_dir,) = glob.glob(f"/dev/shm/{PRIVATE_PREFIX}{gw.pid}-*")
    shutil.rmtree(metrics_dir)
    before = set(gw.worker_pids())
    os.kill(gw.pid, signal.SIGHUP)
    wait_until(lambda: "reload complete" in gw.log() or "reload applied" in gw.log())
    assert set(serves_throughout(gw, 3.0)) == {200}
    assert not before & set(gw.worker_pids())           # the new workers serve
    assert f"the metrics directory {metrics_dir} was removed while the gateway ran: made " \
           "again" in gw.log()
    assert "Exception in worker process" not in gw.log()
