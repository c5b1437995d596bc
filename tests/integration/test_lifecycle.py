"""The master and its workers: titles, SIGTERM, SIGHUP reloads, respawn, entry-point plugins."""
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib

import pytest

from ..conftest import (free_port, gateway_conf, installed_plugin, read_response, route, to_toml,
                        wait_until)
from .test_attack_pass_dec03 import raw_request


def cmdline(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").strip().decode()


def test_process_titles_show_roles(start_gateway, upstream):
    gw = start_gateway(gateway_conf([route("e", ["/echo"], upstream.url)], workers=2))
    assert cmdline(gw.pid) == "gwserver: master"
    workers = gw.worker_pids()
    assert len(workers) == 2
    assert all(cmdline(pid) == "gwserver: worker" for pid in workers)


def test_sigterm_finishes_in_flight_requests_then_exits_zero(start_gateway, upstream):
    gw = start_gateway(gateway_conf([route("slow", ["/slow/:s"], upstream.url)]))
    result = {}

    def slow_request():
        resp, data = gw.request("GET", "/slow/1.5")
        result["status"], result["body"] = resp.status, data

    thread = threading.Thread(target=slow_request)
    thread.start()
    time.sleep(0.5)                       # the request is in flight upstream
    os.kill(gw.pid, signal.SIGTERM)
    thread.join(10)
    assert result == {"status": 200, "body": b"slow done"}
    assert gw.proc.wait(10) == 0
    with socket.socket() as sock:         # the listener is gone
        assert sock.connect_ex(("127.0.0.1", gw.port)) != 0


def test_sighup_applies_a_new_conf_and_drains_old_workers(start_gateway, start_upstream):
    old_up, new_up = start_upstream("old"), start_upstream("new")
    conf = gateway_conf([route("e", ["/echo"], old_up.url),
                         route("slow", ["/slow/:s"], old_up.url)], workers=2)
    gw = start_gateway(conf)
    old_workers = set(gw.worker_pids())
    result = {}

    def slow_request():                   # in flight on an old worker during the reload
        resp, data = gw.request("GET", "/slow/1.5")
        result["status"], result["body"] = resp.status, data

    conf = tomllib.loads(gw.conf_path.read_text())       # as launched: same listeners
    conf["routes"] = [route("e", ["/echo"], new_up.url, prefix=True),
                      route("added", ["/added"], new_up.url)]
    conf["server"]["workers"] = 3
    gw.conf_path.write_text(to_toml(conf))
    thread = threading.Thread(target=slow_request)
    thread.start()
    time.sleep(0.3)
    os.kill(gw.pid, signal.SIGHUP)
    wait_until(lambda: len(gw.worker_pids()) == 3 and not old_workers & set(gw.worker_pids()))
    thread.join(10)
    assert result == {"status": 200, "body": b"slow done"}
    resp, data = gw.request("GET", "/added")
    assert resp.status == 200 and json.loads(data)["server"] == "new"
    assert gw.proc.poll() is None


def test_sighup_with_a_bad_conf_keeps_serving_the_old_one(start_gateway, upstream):
    gw = start_gateway(gateway_conf([route("e", ["/echo"], upstream.url)], workers=1))
    workers = gw.worker_pids()
    gw.conf_path.write_text('[server]\nworkers = "two"\n')
    os.kill(gw.pid, signal.SIGHUP)
    wait_until(lambda: "reload refused" in gw.log())
    assert 'server.workers: must be a positive integer or "auto", got "two"' in gw.log()
    time.sleep(0.5)
    assert gw.proc.poll() is None and gw.worker_pids() == workers
    assert gw.request("GET", "/echo")[0].status == 200


def test_sighup_to_a_worker_does_not_kill_it(start_gateway, upstream):
    """`systemctl kill -s HUP` signals the whole cgroup; only the master may act on it."""
    gw = start_gateway(gateway_conf([route("e", ["/echo"], upstream.url)]))
    worker = gw.worker_pids()[0]
    os.kill(worker, signal.SIGHUP)
    time.sleep(0.5)
    assert gw.worker_pids() == [worker]
    assert gw.request("GET", "/echo")[0].status == 200


def test_a_killed_worker_is_replaced(start_gateway, upstream):
    gw = start_gateway(gateway_conf([route("e", ["/echo"], upstream.url)], workers=2))
    victim = gw.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(gw.worker_pids()) == 2 and victim not in gw.worker_pids())
    assert gw.request("GET", "/echo")[0].status == 200


def test_run_refuses_a_bad_conf_before_starting(start_gateway, upstream):
    conf = gateway_conf([route("e", ["/echo"], upstream.url)], server={"backlog": 0})
    gw = start_gateway(conf, wait=False)
    assert gw.proc.wait(15) == 2
    assert "server.backlog: must be a positive integer between 1 and 2147483647, got 0" in gw.log()


PLUGIN = '''
from gwserver.core.context import Reply
from gwserver.core.schema import Field, Schema, integer

NAME = "teapot"
PRIORITY = 500
SCHEMA = Schema(Field("status", integer(100, 599, "a status"), 418, "status to answer with"))


def access(conf, ctx):
    return Reply.json(conf["status"], {"plugin": NAME, "path": ctx.path})


class boom:
    NAME, PRIORITY, SCHEMA = "boom", 1, Schema()

    @staticmethod
    def access(conf, ctx):
        raise RuntimeError("plugin bug")


class boom_late:
    NAME, PRIORITY, SCHEMA = "boom_late", 1, Schema()

    @staticmethod
    def response(conf, ctx, head):
        raise KeyError("x-missing")


class wrong_reply:
    NAME, PRIORITY, SCHEMA = "wrong_reply", 1, Schema()

    @staticmethod
    def access(conf, ctx):
        return {"status": 403, "error": "no"}       # meant Reply.json(403, {...})


class odd_reply:
    NAME, PRIORITY, SCHEMA = "odd_reply", 1, Schema()

    @staticmethod
    def access(conf, ctx):
        if ctx.path == "/odd/status":
            return Reply.json(42, {"error": "no"})
        if ctx.path == "/odd/header":     # a value taken from the client, unchecked
            return Reply(302, b"", [("Location", "/x\\r\\nSet-Cookie: owned=1")])
        if ctx.path == "/odd/framing":    # beside the gateway's own: two framings
            return Reply(200, b"ok", [("Content-Length", "0")])
        return Reply(403, "a str, not bytes")


class claims_boom:
    NAME, PRIORITY, SCHEMA = "claims_boom", 1, Schema()

    @staticmethod
    def access(conf, ctx):
        return None

    @staticmethod
    def claims(conf, ctx, route_id):
        raise RuntimeError("claims bug")


class reply_boom:
    NAME, PRIORITY, SCHEMA = "reply_boom", 1, Schema()

    @staticmethod
    def access(conf, ctx):
        return Reply.json(403, {"error": "denied"}) if ctx.path == "/rb/deny" else None

    @staticmethod
    def reply(conf, ctx, head):
        head.set_header("X-Half", "edited")
        raise RuntimeError("reply hook bug")


class clash:
    NAME, PRIORITY = "acl", 1
    SCHEMA = Schema(Field("allow_groups", lambda v: v, None, "any"))

    @staticmethod
    def access(conf, ctx):
        return None


class head_editor:
    """Edits the answer's head in place, past set_header: /he/split puts the query, decoded,
    in a Location (a client's CR LF adds a header); /he/te adds a Transfer-Encoding;
    /he/length changes the Content-Length; /he/fine adds a good header."""
    NAME, PRIORITY, SCHEMA = "head_editor", 1, Schema()

    @staticmethod
    def response(conf, ctx, head):
        import urllib.parse
        what = ctx.path.rsplit("/", 1)[-1]
        if what == "split":
            location = urllib.parse.unquote(ctx.query).encode("latin-1")
            head.headers.append((b"Location", location))
        elif what == "te":
            head.headers.append((b"Transfer-Encoding", b"chunked"))
        elif what == "length":
            head.headers[:] = [(k, v) for k, v in head.headers
                               if k.lower() != b"content-length"] + [(b"Content-Length", b"1")]
        else:
            head.headers.append((b"X-Edited", b"yes"))


class smuggler:
    NAME, PRIORITY, SCHEMA = "smuggler", 1, Schema()

    @staticmethod
    def access(conf, ctx):
        ctx.set_header("Content-Length", "0")       # a second framing header upstream
'''


def install_plugin_package(tmp_path, entry_points):
    """An installed distribution with `gwserver.plugins` entry points, on a PYTHONPATH dir."""
    return installed_plugin(tmp_path, "gwteapot", PLUGIN, entry_points)


def test_third_party_plugin_from_an_entry_point(start_gateway, upstream, tmp_path):
    env = install_plugin_package(tmp_path, "teapot = gwteapot\n")
    routes = [route("tea", ["/tea"], upstream.url, plugins={"teapot": {}}),
              route("plain", ["/echo"], upstream.url)]
    gw = start_gateway(gateway_conf(routes), env=env)
    before = upstream.stats()["requests"]
    resp, data = gw.request("GET", "/tea")
    assert resp.status == 418 and json.loads(data) == {"plugin": "teapot", "path": "/tea"}
    assert upstream.stats()["requests"] == before            # the chain ended the request
    assert gw.request("GET", "/echo")[0].status == 200
    line = wait_until(lambda: [l for l in gw.access_lines() if l.get("path") == "/tea"])[0]
    assert line["ended_by"] == "teapot" and line["status"] == 418


def test_a_route_naming_a_plugin_name_two_plugins_claim_is_refused(upstream, tmp_path):
    """An installed plugin named ``acl`` was left out with a log line, and ``check`` passed a
    route whose ``plugins.acl`` then ran the built-in with the settings meant for the other
    (the same keys could mean another rule); the route is refused now, naming both."""
    env = install_plugin_package(tmp_path, "myacl = gwteapot:clash\n")
    routes = [route("guarded", ["/g"], upstream.url,
                    plugins={"acl": {"allow_groups": ["staff"]}}),
              route("plain", ["/echo"], upstream.url)]
    conf = tmp_path / "gw.toml"
    conf.write_text(to_toml(gateway_conf(routes)))
    out = subprocess.run([sys.executable, "-m", "gwserver", "check", "-c", str(conf)],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, **env})
    assert out.returncode == 2, out.stdout + out.stderr
    assert ("route guarded: plugins.acl: ambiguous: a built-in plugin and gwteapot:clash "
            "(entry point myacl) are both named acl: give the installed one another NAME") \
        in out.stdout + out.stderr
    assert "route plain" not in out.stdout + out.stderr


def test_a_plugin_that_raises_gets_500_and_the_worker_lives(start_gateway, upstream, tmp_path):
    env = install_plugin_package(tmp_path, "boom = gwteapot:boom\n")
    gw = start_gateway(gateway_conf([route("buggy", ["/buggy"], upstream.url,
                                           plugins={"boom": {}}),
                                     route("plain", ["/echo"], upstream.url)]), env=env)
    workers = gw.worker_pids()
    resp, data = gw.request("GET", "/buggy")
    assert resp.status == 500 and json.loads(data)["error"] == "internal_error"
    assert gw.request("GET", "/echo")[0].status == 200
    assert gw.worker_pids() == workers
    assert "RuntimeError: plugin bug" in gw.log()


def test_the_log_of_a_plugin_that_raises_names_the_plugin_and_phase(start_gateway, upstream,
                                                                    tmp_path):
    """The log said "route buggy: request ...: unhandled error" and a traceback whose frames
    are the core's until the last: which of the route's plugins failed, and in which phase,
    was for the reader to work out from a file path. The client still gets a bare 500."""
    env = install_plugin_package(tmp_path, "boom = gwteapot:boom\n"
                                           "boom_late = gwteapot:boom_late\n")
    gw = start_gateway(gateway_conf([route("early", ["/early"], upstream.url,
                                           plugins={"boom": {}}),
                                     route("late", ["/late"], upstream.url,
                                           plugins={"boom_late": {}})]), env=env)
    workers = gw.worker_pids()
    for path in ("/early", "/late"):
        resp, data = gw.request("GET", path)
        assert resp.status == 500 and json.loads(data)["error"] == "internal_error"
        assert b"boom" not in data and b"plugin bug" not in data and b"x-missing" not in data
    log = gw.log()
    assert "raised by plugin boom in its access phase" in log
    assert "raised by plugin boom_late in its response phase" in log
    assert gw.worker_pids() == workers


def test_the_log_of_a_claims_hook_that_raises_names_the_plugin(start_gateway, upstream,
                                                               tmp_path):
    """A claims hook runs while routing, before the route is known: the log said "route
    None: ... unhandled error", and only the last frame's file told whose hook it was."""
    env = install_plugin_package(tmp_path, "claims_boom = gwteapot:claims_boom\n")
    gw = start_gateway(gateway_conf([route("cl", ["/cl"], upstream.url, claims={"sub": "x"},
                                           plugins={"claims_boom": {}})]), env=env)
    resp, data = gw.request("GET", "/cl")
    assert resp.status == 500 and b"claims bug" not in data
    assert "raised by plugin claims_boom in its claims hook" in gw.log()


def test_a_plugin_that_returns_what_is_not_a_reply_is_named_in_the_log(start_gateway,
                                                                        upstream, tmp_path):
    """An access phase returning a dict ended the request with a 500 whose only log line was
    "AttributeError: 'dict' object has no attribute 'with_error_shape'" in http1.answer:
    neither the plugin nor the rule it broke. The client learns nothing of either."""
    env = install_plugin_package(tmp_path, "wrong_reply = gwteapot:wrong_reply\n")
    gw = start_gateway(gateway_conf([route("odd", ["/odd"], upstream.url,
                                           plugins={"wrong_reply": {}}),
                                     route("plain", ["/echo"], upstream.url)]), env=env)
    workers = gw.worker_pids()
    resp, data = gw.request("GET", "/odd")
    assert resp.status == 500 and json.loads(data)["error"] == "internal_error"
    assert b"wrong_reply" not in data and b"Traceback" not in data
    assert "plugin wrong_reply: access must return a Reply or None, got dict" in gw.log()
    assert "with_error_shape" not in gw.log()
    assert gw.request("GET", "/echo")[0].status == 200 and gw.worker_pids() == workers


def test_a_reply_with_an_impossible_status_or_a_text_body_is_a_500(start_gateway, upstream,
                                                                    tmp_path):
    """Reply.json(42, ...) went out as "HTTP/1.1 42 Unknown" (no client reads that as an
    answer) and reset the stream on HTTP/2; Reply(403, "text") failed in http1 with "can't
    concat str to bytes", naming no plugin; a header value with CR LF split the answer. Each is
    the plugin's bug: a 500, named."""
    env = install_plugin_package(tmp_path, "odd_reply = gwteapot:odd_reply\n")
    gw = start_gateway(gateway_conf([      # two routes: the log of each is throttled apart
        route("status", ["/odd/status"], upstream.url, plugins={"odd_reply": {}}),
        route("body", ["/odd/body"], upstream.url, plugins={"odd_reply": {}}),
        route("header", ["/odd/header"], upstream.url, plugins={"odd_reply": {}}),
        route("framing", ["/odd/framing"], upstream.url, plugins={"odd_reply": {}})]), env=env)
    for path in ("/odd/status", "/odd/body", "/odd/header", "/odd/framing"):
        resp, data = gw.request("GET", path)
        assert resp.status == 500 and json.loads(data)["error"] == "internal_error"
    log = gw.log()
    assert "plugin odd_reply: its Reply's status must be an integer from 200 to 599 (a final " \
        "answer), got 42" in log
    assert "plugin odd_reply: its Reply's body must be bytes, got str" in log
    # written as given, the CR LF would have split the answer: a Set-Cookie of the client's
    assert "plugin odd_reply: its Reply's header 'Location' is no field HTTP allows" in log
    assert "plugin odd_reply: its Reply sets Content-Length, which the gateway writes" in log


def test_a_reply_hook_that_raises_still_lets_the_answer_out(start_gateway, upstream,
                                                             tmp_path):
    """A reply hook runs as the gateway writes its own answer; one that raised made the error
    path run it again for the 500, which raised again: the client got no answer at all (the
    connection closed, the access log said 500 of 0 bytes). The answer now goes out as the
    gateway wrote it, without the hooks' edits, and the log names the plugin."""
    env = install_plugin_package(tmp_path, "reply_boom = gwteapot:reply_boom\n")
    gw = start_gateway(gateway_conf([route("rb", ["/rb/*rest"], upstream.url,
                                           plugins={"reply_boom": {}})]), env=env)
    workers = gw.worker_pids()
    resp, data = gw.request("GET", "/rb/deny")
    assert resp.status == 403 and json.loads(data)["error"] == "denied"
    assert resp.getheader("X-Half") is None
    assert "route rb: plugin reply_boom failed in reply" in gw.log()
    assert gw.request("GET", "/rb/pass")[0].status == 200 and gw.worker_pids() == workers


def test_a_plugin_cannot_set_a_header_the_gateway_writes(start_gateway, upstream, tmp_path):
    """A third-party plugin that sets Content-Length (a desync on a keep-alive upstream
    connection) gets a ValueError: the request is answered 500, nothing reaches the
    upstream, the worker lives."""
    env = install_plugin_package(tmp_path, "smuggler = gwteapot:smuggler\n")
    gw = start_gateway(gateway_conf([route("bad", ["/echo"], upstream.url,
                                           plugins={"smuggler": {}}),
                                     route("plain", ["/plain/*rest"], upstream.url,
                                           strip_prefix="/plain")]), env=env)
    before = upstream.stats()["requests"]
    resp, data = gw.request("POST", "/echo", body=b"hello")
    assert resp.status == 500 and json.loads(data)["error"] == "internal_error"
    assert upstream.stats()["requests"] == before
    assert "written by the gateway itself; a plugin cannot set it" in gw.log()
    assert gw.request("GET", "/plain/echo")[0].status == 200


@pytest.mark.parametrize("what, reason", [
    ("split", "is no field HTTP allows"),
    ("te", "which the gateway writes itself"),
    ("length", "it changed the answer's Content-Length")])
def test_a_plugin_editing_the_answers_head_in_place_is_held_to_its_rules(
        start_gateway, upstream, tmp_path, what, reason):
    """``head.headers`` is a list a response hook may edit in place, where set_header's checks
    do not reach: a Location taken from the query with CR LF in it set the client's cookie,
    a Transfer-Encoding beside the gateway's framing or a changed Content-Length framed the
    body apart from what was sent. Such an answer is now a 500 naming the plugin."""
    env = install_plugin_package(tmp_path, "head_editor = gwteapot:head_editor\n")
    gw = start_gateway(gateway_conf([route("he", ["/he/*rest"], upstream.url,
                                           strip_prefix="/he",
                                           plugins={"head_editor": {}})]), env=env)
    answer = raw_request(gw.port, b"GET /he/%s?%%0d%%0aSet-Cookie:%%20session=attacker "
                                  b"HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
                                  % what.encode())
    assert answer.startswith(b"HTTP/1.1 500 "), answer[:300]
    assert b"session=attacker" not in answer and b"Transfer-Encoding: chunked\r\nTrans" \
        not in answer
    assert "plugin head_editor: " in gw.log() and reason in gw.log()
    resp, _ = gw.request("GET", "/he/fine")
    assert resp.status == 200 and resp.getheader("X-Edited") == "yes"


def wrk(url, seconds, connections):
    """Run wrk against loopback for a bounded time; return (requests, failures, raw output)."""
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", url],
                         capture_output=True, text=True, timeout=seconds + 30).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    failures = (sum(map(int, errors.groups())) if errors else 0) + \
        (int(non_2xx.group(1)) if non_2xx else 0)
    return requests, failures, out


def test_reloads_under_load_drop_no_request(start_gateway, upstream):
    """wrk keeps 20 keep-alive connections busy while the master gets SIGHUP three times."""
    conf = gateway_conf([route("e", ["/echo"], upstream.url, prefix=True)], workers=2,
                        server={"keepalive": 2.0})
    gw = start_gateway(conf)
    reloaded = []

    def send_hups():
        for _ in range(3):
            time.sleep(1.5)
            before = set(gw.worker_pids())
            os.kill(gw.pid, signal.SIGHUP)
            reloaded.append(before)

    hups = threading.Thread(target=send_hups)
    hups.start()
    requests, failures, out = wrk(f"{gw.url}/echo/load", seconds=6, connections=20)
    hups.join()
    assert len(reloaded) == 3
    assert requests > 500, out
    assert failures == 0, out
    assert not reloaded[0] & set(gw.worker_pids())        # the first generation is gone


def test_websocket_and_long_download_on_old_workers_survive_a_reload(start_gateway, upstream):
    gw = start_gateway(gateway_conf([route("ws", ["/ws"], upstream.url),
                                     route("bytes", ["/bytes/:n"], upstream.url)],
                                    server={"graceful_timeout": 20.0}))
    old_workers = set(gw.worker_pids())
    ws = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    ws.sendall(b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += ws.recv(4096)
    assert head.startswith(b"HTTP/1.1 101")
    download = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    size = 200 * (1 << 20)
    download.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n" % size)
    received = len(download.recv(1 << 16))           # started, then read slowly
    os.kill(gw.pid, signal.SIGHUP)
    wait_until(lambda: len(set(gw.worker_pids()) - old_workers) >= 1)
    time.sleep(1.0)                                   # the old worker is draining now
    assert old_workers & set(gw.worker_pids()), "old worker must wait for its connections"
    ws.sendall(b"still there?")
    echoed = b""
    while len(echoed) < 12:
        echoed += ws.recv(4096)
    assert echoed == b"still there?"
    buf = bytearray(1 << 20)
    while n := download.recv_into(buf):
        received += n
    assert received > size and received - size < 1024
    ws.close()
    download.close()
    wait_until(lambda: not old_workers & set(gw.worker_pids()), timeout=25)


def test_the_master_keeps_supervising_while_old_workers_drain(start_gateway, upstream):
    """A reload returns once the new workers serve: while an old worker drains a long
    download, a new worker that dies is replaced and requests keep being answered (the
    master used to wait out the drain, up to graceful_timeout, doing nothing else)."""
    gw = start_gateway(gateway_conf([route("e", ["/echo"], upstream.url),
                                     route("bytes", ["/bytes/:n"], upstream.url)],
                                    workers=1, server={"graceful_timeout": 20.0}))
    old = set(gw.worker_pids())
    download = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    download.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
                     % (200 << 20))
    download.recv(1 << 16)                            # started, then not read: it drains
    try:
        os.kill(gw.pid, signal.SIGHUP)
        wait_until(lambda: "reload complete" in gw.log())
        new = set(gw.worker_pids()) - old
        assert len(new) == 1 and old & set(gw.worker_pids())      # the old one drains
        os.kill(new.pop(), signal.SIGKILL)
        killed = time.monotonic()
        wait_until(lambda: gw.request("GET", "/echo")[0].status == 200, timeout=10)
        assert time.monotonic() - killed < 8          # not after the 20 s drain
        assert old & set(gw.worker_pids())            # still draining the download
    finally:
        download.close()


def _start_download(gw):
    download = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    download.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
                     % (200 << 20))
    assert download.recv(1 << 16).startswith(b"HTTP/1.1 200")     # then not read: it drains
    return download


def _read_to_end(sock, limit):
    """Bytes read until EOF, reset or ``limit``."""
    received, buf = 0, bytearray(1 << 20)
    try:
        while received < limit and (n := sock.recv_into(buf)):
            received += n
    except OSError:
        pass
    return received


def test_reloads_past_max_draining_generations_stop_the_oldest(start_gateway, upstream):
    """Reloads faster than old workers drain must not pile up processes: past
    max_draining_generations the oldest draining generation stops at once (its download is
    cut) while the next one keeps draining its own."""
    gw = start_gateway(gateway_conf([route("bytes", ["/bytes/:n"], upstream.url)], workers=1,
                                    server={"graceful_timeout": 30.0,
                                            "max_draining_generations": 1}))
    (first,) = gw.worker_pids()
    first_download = _start_download(gw)
    second_download = None
    try:
        os.kill(gw.pid, signal.SIGHUP)
        wait_until(lambda: gw.log().count("reload complete") == 1)
        time.sleep(0.5)
        (second,) = set(gw.worker_pids()) - {first}
        assert first in gw.worker_pids()                  # one generation drains: allowed
        second_download = _start_download(gw)             # served by the second generation
        os.kill(gw.pid, signal.SIGHUP)
        wait_until(lambda: gw.log().count("reload complete") == 2)
        wait_until(lambda: first not in gw.worker_pids(), timeout=10)
        assert second in gw.worker_pids()                 # still draining its download
        assert re.search(r"2 generations of workers are draining \(server\.max_draining_"
                         r"generations = 1\): stopping generation 1 \(1 workers, pids "
                         rf"{first}\) now", gw.log())
        assert _read_to_end(first_download, 200 << 20) < 200 << 20      # cut short
        second_download.settimeout(2)
        assert len(second_download.recv(1 << 16)) > 0   # the younger drain goes on
        assert second in gw.worker_pids() and gw.proc.poll() is None
    finally:
        first_download.close()
        if second_download is not None:
            second_download.close()


def test_ttou_is_no_reload_and_cuts_no_draining_generation(start_gateway, upstream):
    """A worker TTOU stops belongs to the current generation: it drains, and is not counted
    against max_draining_generations (which would cut an older generation's download)."""
    gw = start_gateway(gateway_conf([route("bytes", ["/bytes/:n"], upstream.url)], workers=2,
                                    server={"graceful_timeout": 30.0,
                                            "max_draining_generations": 1}))
    first = set(gw.worker_pids())
    download = _start_download(gw)
    try:
        os.kill(gw.pid, signal.SIGHUP)
        wait_until(lambda: gw.log().count("reload complete") == 1)
        time.sleep(1.0)
        assert first & set(gw.worker_pids())              # draining the download
        os.kill(gw.pid, signal.SIGTTOU)
        wait_until(lambda: "Handling signal: ttou" in gw.log())
        time.sleep(2.0)
        assert "generations of workers are draining" not in gw.log()
        assert first & set(gw.worker_pids())
        download.settimeout(2)
        assert len(download.recv(1 << 16)) > 0
    finally:
        download.close()


def test_a_replacement_that_dies_on_boot_leaves_no_old_worker_serving(start_gateway,
                                                                      upstream):
    """A reload's new worker killed before it serves: another takes its place, and every
    worker of the old configuration stops (one used to stay, serving the old routes)."""
    gw = start_gateway(gateway_conf([route("e", ["/echo"], upstream.url)], workers=2,
                                    server={"graceful_timeout": 2.0}))
    first = set(gw.worker_pids())
    os.kill(gw.pid, signal.SIGHUP)
    wait_until(lambda: len(set(gw.worker_pids()) - first) >= 1, interval=0.005)
    os.kill(min(set(gw.worker_pids()) - first), signal.SIGKILL)
    wait_until(lambda: "reload complete" in gw.log())
    wait_until(lambda: not first & set(gw.worker_pids()), timeout=10)
    wait_until(lambda: len(gw.worker_pids()) == 2)
    assert gw.request("GET", "/echo")[0].status == 200


def test_a_worker_retiring_on_max_requests_is_replaced_while_it_drains(start_gateway,
                                                                       upstream):
    """max_requests: the worker drains what it holds (a download here) for up to
    graceful_timeout. Its replacement must not wait for that: with one worker, nothing was
    served for all of it (21 s)."""
    gw = start_gateway(gateway_conf([route("r", ["/*rest"], upstream.url)], workers=1,
                                    server={"graceful_timeout": 20.0, "max_requests": 3}))
    (first,) = gw.worker_pids()
    download = _start_download(gw)          # held, not read: not done, not counted yet
    try:
        for _ in range(3):
            assert gw.request("GET", "/echo")[0].status == 200
        wait_until(lambda: "worker retiring" in gw.log(), timeout=5)
        started = time.monotonic()
        assert gw.request("GET", "/echo", timeout=25)[0].status == 200
        assert time.monotonic() - started < 3
        assert "is draining on its own (max_requests): its replacement starts now" in gw.log()
        assert first in gw.worker_pids()    # still draining the download
    finally:
        download.close()


def _keepalive_requests(gw, n):
    """Up to ``n`` requests on one connection (one worker), until it says close."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    answers = []
    try:
        for _ in range(n):
            conn.request("GET", "/echo")
            resp = conn.getresponse()
            resp.read()
            answers.append((resp.status, resp.getheader("Connection", "").lower()))
            if answers[-1][1] == "close":
                break
    finally:
        conn.close()
    return answers


def test_one_worker_retiring_on_max_requests_stops_no_other_worker(start_gateway, upstream):
    """Only the retiring worker is replaced: gunicorn's count (every worker, draining ones
    too) had the serving workers older than it stopped with it."""
    gw = start_gateway(gateway_conf([route("e", ["/*rest"], upstream.url)], workers=3,
                                    server={"graceful_timeout": 5.0, "max_requests": 20}))
    wait_until(lambda: gw.log().count("Booting worker") == 3)
    for _ in range(4):
        _keepalive_requests(gw, 20)
        time.sleep(2.0)
    log = gw.log()
    retired = len(set(re.findall(r"\[(\d+)\] \[INFO\] gwserver.worker: max_requests", log)))
    assert retired >= 1
    assert log.count("Booting worker") - 3 == retired, log[-3000:]


def test_retiring_workers_that_hold_connections_do_not_pile_up(start_gateway, upstream):
    """A client holding a download on each worker while it spends max_requests: at most
    `workers` retirees drain at once (each replaced at once), the oldest past that stops."""
    gw = start_gateway(gateway_conf([route("r", ["/*rest"], upstream.url)], workers=2,
                                    server={"graceful_timeout": 30.0, "max_requests": 4}))
    held, most = [], 0
    try:
        for _ in range(10):
            held.append(_start_download(gw))
            for _ in range(4):
                gw.request("GET", "/echo", timeout=10)
            time.sleep(0.3)
            most = max(most, len(gw.worker_pids()))
            # Both workers can retire in one burst: for a moment the two oldest retirees
            # (told to quit) have not exited yet. Then no more than serving + retirees are
            # left, however many downloads are held (12 processes for 2 workers before).
            wait_until(lambda: len(gw.worker_pids()) <= 2 * 2, timeout=5.0)
        assert most <= 3 * 2, most
        assert "workers are draining after max_requests" in gw.log()
        assert gw.request("GET", "/echo")[0].status == 200
    finally:
        for download in held:
            download.close()


def test_the_answer_that_reaches_max_requests_keeps_its_keep_alive_promise(start_gateway,
                                                                           upstream):
    """It went out saying keep-alive: the connection takes one more request (answered
    Connection: close), instead of closing under the client."""
    gw = start_gateway(gateway_conf([route("e", ["/*rest"], upstream.url)], workers=1,
                                    server={"graceful_timeout": 5.0, "max_requests": 3}))
    answers = _keepalive_requests(gw, 5)
    assert answers == [(200, "keep-alive")] * 3 + [(200, "close")], answers


def test_ttin_ttou_and_quit(start_gateway, upstream):
    gw = start_gateway(gateway_conf([route("e", ["/echo"], upstream.url)], workers=2))
    os.kill(gw.pid, signal.SIGTTIN)
    wait_until(lambda: len(gw.worker_pids()) == 3)
    os.kill(gw.pid, signal.SIGTTOU)
    wait_until(lambda: len(gw.worker_pids()) == 2)
    assert gw.request("GET", "/echo")[0].status == 200
    started = time.monotonic()
    os.kill(gw.pid, signal.SIGQUIT)
    gw.proc.wait(15)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("sig", [signal.SIGQUIT, signal.SIGINT])
def test_a_worker_told_to_quit_says_so_in_the_answers_it_still_gives(launcher, upstream, sig):
    """SIGQUIT/SIGINT make a worker exit ~0.1 s later (gunicorn): answers it gives meanwhile
    close their connection and /-/ready says draining, as after SIGTERM."""
    from .test_reload_listeners import workers
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)], workers=1))
    admin = socket.create_connection(("127.0.0.1", gw.admin_port), timeout=5)
    client = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    for sock, path in ((admin, b"/-/ready"), (client, b"/echo")):   # held keep-alive
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path)
        assert read_response(sock)[0].startswith(b"HTTP/1.1 200")
    (pid,) = workers(gw)
    os.kill(pid, sig)
    time.sleep(0.03)        # the handler has run; the exit comes 0.1 s after it
    admin.sendall(b"GET /-/ready HTTP/1.1\r\nHost: x\r\n\r\n")
    client.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    ready, echoed = read_response(admin)[0], read_response(client)[0]
    assert ready.startswith(b"HTTP/1.1 503") and b"Connection: close" in ready
    assert echoed.startswith(b"HTTP/1.1 200") and b"Connection: close" in echoed
    admin.close()
    client.close()


def test_a_booting_worker_is_titled_starting_until_it_accepts(launcher, tmp_path, upstream):
    """In etcd mode a worker waits up to TABLE_WAIT (5 s) for the sync process's first table
    before it listens; with etcd unreachable and no snapshot it waits until the sync process
    says so. Meanwhile `ps` shows it as starting, so neither an operator nor a test takes a
    worker that accepts nothing for a serving one."""
    conf = gateway_conf([route("e", ["/echo"], upstream.url)])
    conf["etcd"] = {"endpoints": [f"http://127.0.0.1:{free_port()}"],
                    "runtime_dir": str(tmp_path / "run")}      # nobody listens there
    gw = launcher.gateway(conf, wait=False)
    titles = set()

    def serving():
        for pid in gw.worker_pids():
            try:
                titles.add(cmdline(pid))
            except FileNotFoundError:
                pass
        return gw.serving_worker_pids()

    wait_until(serving, timeout=30)
    assert "gwserver: worker (starting)" in titles
    resp, _ = gw.request("GET", "/echo")
    assert resp.status == 200
