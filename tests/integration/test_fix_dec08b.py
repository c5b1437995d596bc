"""Fixes of Dec 8 (b), items the last session left open; each test failed before its fix.

1. A published table written before 81e8b69 (no ``service_targets``), taken up by a sync
   process restarted on new code: a kept service-following upstream lost its static targets.
2. gzip: a 304 to a client that does not take gzip had no ``Vary: Accept-Encoding``.
3. A plugin's ``append_header`` or its own ``Reply`` naming X-Trace-Id went out beside the
   gateway's trace id.
4. A worker orphaned by a master killed -9, with an explicit metrics_dir, killed -9 too: its
   private metrics directory was left behind for good.
"""
import glob
import json
import os
import re
import signal
import socket
import time

import pytest

from ..conftest import gateway_conf, installed_plugin, route, wait_until
from .test_attack_dec07f import ScriptedH2, ScriptedHttp1, h1_answer, h1_get, h2_fields, h2_get
from .test_etcd import PREFIX, all_workers_at, put, reboot, status_of
from .test_fix_dec07b import refused_service_upstream
from .test_health_attack_dec05e import register

GZIP = (b"accept-encoding", b"gzip")
ETAG = (b"etag", b'"v1"')
H1_ANSWERS = {b"/304": h1_answer(304, [ETAG], b""),
              b"/304-vary": h1_answer(304, [ETAG, (b"Vary", b"Origin"),
                                            (b"Vary", b"accept-language")], b""),
              b"/304-star": h1_answer(304, [ETAG, (b"Vary", b"*")], b""),
              b"/304-png": h1_answer(304, [ETAG, (b"Content-Type", b"image/png")], b""),
              b"/json": h1_answer(200, [(b"Content-Type", b"application/json")], b"{}")}
H2_ANSWERS = {b"/304": (304, [ETAG], b""),
              b"/json": (200, [(b"content-type", b"application/json")], b"{}")}

TRACER = '''
from gwserver.core.context import Reply
from gwserver.core.schema import Schema


class tracer:
    """Names the trace id's header itself: appended to answers, and on its own Reply."""
    NAME, PRIORITY, SCHEMA = "tracer", 500, Schema()

    @staticmethod
    def access(conf, ctx):
        if ctx.path.endswith("/own-reply"):
            return Reply(200, b"mine", [("Content-Type", "text/plain"),
                                        ("X-Trace-Id", "from-plugin")])

    @staticmethod
    def response(conf, ctx, head):
        head.append_header("X-Trace-Id", "from-plugin")
'''


@pytest.fixture(scope="module")
def gw(module_launcher):
    h1_up, h2_up = ScriptedHttp1(H1_ANSWERS), ScriptedH2(H2_ANSWERS)
    h2_target = {"targets": [{"url": f"http://127.0.0.1:{h2_up.port}"}], "protocol": "h2"}
    gzip = {"gzip": {"types": ["application/json"]}}
    env = installed_plugin(module_launcher.tmp_dir, "gwtracer", TRACER,
                           "tracer = gwtracer:tracer\n")
    yield module_launcher.gateway(gateway_conf([
        route("h1", ["/h1/*rest"], h1_up.url, strip_prefix="/h1", plugins=gzip),
        {"id": "h2", "paths": ["/h2/*rest"], "strip_prefix": "/h2", "plugins": gzip,
         "upstream": h2_target},
        route("t1", ["/t1/*rest"], h1_up.url, strip_prefix="/t1", plugins={"tracer": {}}),
        {"id": "t2", "paths": ["/t2/*rest"], "strip_prefix": "/t2",
         "plugins": {"tracer": {}}, "upstream": h2_target},
    ], http2={"h2c": True}), env=env)
    h1_up.close()
    h2_up.close()


@pytest.mark.parametrize("side", [b"/h1", b"/h2"])
def test_every_304_says_vary_accept_encoding(gw, side):
    """Its 200 says Vary: Accept-Encoding to every client; the 304 of a client that does not
    take gzip said none (nor did a gzip client's, unless its tag was weakened): a cache
    refreshing its stored answer from it dropped the Vary and mixed the two variants."""
    for fields in ([GZIP], [], [(b"if-none-match", b'W/"v1"')]):
        status, got, _, _ = h1_get(gw, side + b"/304", fields)
        assert status == 304 and got.get(b"vary") == [b"Accept-Encoding"], (fields, got)
        status, h2_got, _, _ = h2_get(gw, side + b"/304", fields)
        assert status == 304 and h2_got.get("vary") == "Accept-Encoding", (fields, h2_got)


def test_a_304s_vary_is_merged_with_the_upstreams(gw):
    _, got, _, _ = h1_get(gw, b"/h1/304-vary")
    assert got[b"vary"] == [b"Origin, accept-language, Accept-Encoding"], got
    _, got, _, _ = h1_get(gw, b"/h1/304-star", [GZIP])
    assert got[b"vary"] == [b"*"], got
    # a 304 that names a type gzip does not compress is not varied by it
    _, got, _, _ = h1_get(gw, b"/h1/304-png")
    assert b"vary" not in got, got


def the_gateways_trace_id(values):
    return len(values) == 1 and re.fullmatch(rb"[0-9a-f]{32}", values[0]) is not None


@pytest.mark.parametrize("paths", [(b"/t1/json", b"/t2/json"), (b"/t1/own-reply",)])
def test_a_plugin_cannot_send_a_second_trace_id(gw, paths):
    """A plugin's append_header on an HTTP/1.1 upstream's answer (an HTTP/2 upstream's
    already lost it) and its own Reply naming X-Trace-Id went out beside the gateway's, to
    both client protocols: two trace ids, the first one wrong."""
    for path in paths:
        status, got, _, _ = h1_get(gw, path)
        assert status == 200 and the_gateways_trace_id(got.get(b"x-trace-id", [])), got
        ids = [v for k, v in h2_fields(gw, path) if k == b"x-trace-id"]
        assert the_gateways_trace_id(ids), (path, ids)


def test_a_new_master_removes_the_metrics_directory_of_an_orphan_killed_9(launcher, upstream,
                                                                          tmp_path):
    """metrics_dir set: a worker orphaned by a master killed -9 keeps its metrics in a
    directory of its own beside it, removed at its exit; killed -9 too, it was left there for
    good, however many starts followed. The next master's start removes it, and only such
    directories of dead pids: another program's file, a live pid's directory stay."""
    metrics_dir = tmp_path / "metrics"
    conf = gateway_conf([route("echo", ["/*any"], upstream.url)],
                        admin={"metrics_dir": str(metrics_dir)})
    gw = launcher.gateway(conf)
    assert gw.request("GET", "/echo")[0].status == 200
    [worker] = gw.serving_worker_pids()
    slow = socket.create_connection(("127.0.0.1", gw.port), timeout=5)     # it drains this
    slow.sendall(b"GET /slow/4 HTTP/1.1\r\nHost: h\r\n\r\n")
    time.sleep(0.2)
    os.kill(gw.pid, signal.SIGKILL)
    gw.proc.wait(5)

    def orphans_dir():
        return [name for name in os.listdir(tmp_path)
                if name.startswith(f"gwserver-metrics-{worker}-")]
    [own] = wait_until(orphans_dir, timeout=5)
    os.kill(worker, signal.SIGKILL)
    slow.close()
    wait_until(lambda: not os.path.exists(f"/proc/{worker}/status") or
               "zombie" in open(f"/proc/{worker}/status").read(), timeout=5)
    live = f"gwserver-metrics-{os.getpid()}-live0000"
    others = ["gwserver-metrics-notes", live]
    for name in others:
        (tmp_path / name).mkdir()
    (tmp_path / "gwserver-metrics-1-file").write_text("not a directory of ours")
    again = launcher.gateway(conf)
    assert again.request("GET", "/echo")[0].status == 200
    names = os.listdir(tmp_path)
    assert own not in names, names                  # before: there for good
    assert set(others) | {"gwserver-metrics-1-file", "metrics"} <= set(names), names


def as_written_before_81e8b69(path):
    """Rewrite a published document (table.json, a change file, a snapshot) without the
    ``service_targets`` tables list since 81e8b69 -> whether it held the list."""
    with open(path) as f:
        document = json.load(f)
    held = document.pop("service_targets", None) is not None
    held = document.get("table", {}).pop("service_targets", None) is not None or held
    with open(path, "w") as f:
        json.dump(document, f)
    return held


def servers(gw, count=8):
    return {json.loads(gw.request("GET", "/o/echo")[1])["server"] for _ in range(count)}


def test_a_table_without_service_targets_taken_up_keeps_the_static_targets(launcher, tmp_path):
    """A hot upgrade: config-sync restarted on new code takes up a table.json written before
    tables listed static targets. Its kept service-following upstream (etcd holds a refused
    update of it) served the live instances alone until it was put again in etcd; it serves
    its static target beside them, and follows its service (i1 gone, i2 new)."""
    static, first, second = (launcher.upstream(name) for name in ("static", "first", "second"))
    _, conf, gw, client = refused_service_upstream(launcher, tmp_path, static, first)
    runtime = conf["etcd"]["runtime_dir"]
    wait_until(lambda: "service_targets" in open(os.path.join(runtime, "table.json")).read())
    sync = status_of(gw)["pid"]
    os.kill(sync, signal.SIGSTOP)           # (no base written again under the edit)
    paths = [os.path.join(runtime, "table.json"),
             *glob.glob(os.path.join(runtime, "changes", "*.json"))]
    assert any([as_written_before_81e8b69(path) for path in paths])
    os.kill(sync, signal.SIGKILL)
    client.delete(f"{PREFIX}/services/orders/i1")
    register(client, "orders", "i2", second.url)
    wait_until(lambda: (status_of(gw) or {}).get("pid") not in (None, sync) and
               status_of(gw).get("connected"), timeout=10)
    assert "taking up the table the workers serve" in gw.log()
    revision = put(client, "routes", "marker", {"paths": ["/marker"], "upstream": "orders"})
    wait_until(lambda: all_workers_at(gw, revision))
    assert servers(gw) == {"static", "second"}      # before: {"second"}


def test_a_snapshot_without_service_targets_keeps_the_static_targets(launcher, tmp_path):
    """The same of a fresh start (runtime_dir gone) from a snapshot written before tables
    listed static targets: the kept upstream served its live instances alone."""
    static, live = launcher.upstream("static"), launcher.upstream("live")
    _, conf, gw, _ = refused_service_upstream(launcher, tmp_path, static, live)
    reboot(gw, conf)
    assert as_written_before_81e8b69(conf["etcd"]["snapshot_path"])
    again = launcher.gateway(conf)
    wait_until(lambda: "loaded" in again.log())
    assert servers(again, 6) == {"static", "live"}  # before: {"live"}
