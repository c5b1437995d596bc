"""Attack (helper a40) on the last hour's fixes: the HTTP/1.1 upstream head deadline on the
upload path (7902494).

1. A held body's send is part of the try (Proxy.forward): per_try_timeout bounds the send
   and the head together. But what the upstream said while the send waited was read with
   the route's read timeout (answered() disarmed the try's deadline and bounded a head that
   had begun by timeouts.read alone), and each whole interim head gave the send a new
   per_try_timeout: an upstream that stopped reading a held upload and dripped its answer's
   head (or sent 103s) held the try for up to timeouts.read (or 16 per_try_timeouts), and
   its answer was served long after the try's end, where the try is to be cut at
   per_try_timeout and tried again.
2. A fresh start from the snapshot (bf217e4): the newcomers taken out so that the
   snapshot's good versions go in first retried what waited for their paths or keys, and
   etcd's refused update of a snapshot route took the newcomer's path before the route's
   last good version went in (a regression: it served as the hosts that saw it come before).

Held (no defect): a TLS upstream's head dripped during a streamed upload is bounded by
timeouts.read as a plain one's (tls_answered goes through answered).
"""
import json
import shutil
import time

import pytest

from ..conftest import gateway_conf, route, stop_process, wait_until
from ..etcd_sync import PREFIX, status_json
from ..pki import CA
from .test_follow_live_dec16d import put
from .test_edge_security import answer_to_upload

HELD = 16 << 20        # held whole (request_buffer_size), over the loopback's socket buffers


@pytest.mark.parametrize("path", [b"/drip-413", b"/hints-413"])
def test_per_try_timeout_bounds_what_the_upstream_says_during_a_held_upload(launcher, path):
    """/drip-413 stops reading and drips its 413's head a byte every 0.1 s (~4 s); /hints-413
    sends a 103 every 0.1 s (~4 s), then its 413. per_try_timeout 0.5 s, timeouts.read 5 s,
    no retry. Before: the try's deadline was dropped once the upstream said anything, and
    the 413 came after ~4 s (/drip-413: bounded by timeouts.read) or a 504 after ~2.1 s
    (/hints-413: 16 renewed per_try_timeouts). Now a 504 at the try's end."""
    raw = launcher.raw_upstream()
    gw = launcher.gateway(gateway_conf(
        [route("raw", ["/*rest"], raw.url, timeouts={"read": 5.0},
               retry={"per_try_timeout": 0.5, "attempts": 0})],
        server={"request_buffer_size": 32 << 20}))
    answer, took = answer_to_upload(gw.port, path, size=HELD)
    assert answer.startswith(b"HTTP/1.1 504") and took < 1.5, (answer[:60], took)
    # the head's wait (drip) or the send's (hints: the try's deadline, kept)
    assert ("did not answer within 0.5s (per_try_timeout)" if path == b"/drip-413" else
            "did not accept the request in time") in gw.log()


@pytest.mark.parametrize("held", [False, True])
def test_a_tls_upstreams_dripped_early_head_is_bounded_alike(launcher, tmp_path, held):
    """The same over TLS (tls_send_unless_answered): the TLS upstream stops reading and drips
    its 413's head a record of one byte every 0.1 s (~4 s). Streamed (64 MiB, timeouts.read
    1 s): a 504 within the read timeout of its first byte. Held (16 MiB, per_try_timeout
    0.5 s, timeouts.read 5 s): a 504 at the try's end; before, the 413 after ~4 s."""
    cert, key, _ = CA(tmp_path).issue("upstream")
    raw = launcher.raw_upstream("tls_raw_upstream.py", cert, key)
    extra = {"timeouts": {"read": 5.0}, "retry": {"per_try_timeout": 0.5, "attempts": 0}} \
        if held else {"timeouts": {"read": 1.0}}
    gw = launcher.gateway(gateway_conf([{"id": "raw", "paths": ["/*rest"], "upstream": {
        "targets": [{"url": f"https://127.0.0.1:{raw.port}"}], "tls": {"verify": False}},
        **extra}], server={"request_buffer_size": 32 << 20}))
    answer, took = answer_to_upload(gw.port, b"/drip-413", size=HELD if held else 64 << 20)
    assert answer.startswith(b"HTTP/1.1 504") and took < (1.5 if held else 3.0), \
        (answer[:60], took)


# -- 2. a fresh start from the snapshot, with a newcomer (bf217e4) -------------------------------

def etcd_gateway_at(launcher, etcd, tmp_path, name):
    return launcher.gateway(gateway_conf([], etcd={
        "endpoints": [etcd.url], "prefix": PREFIX,
        "runtime_dir": str(tmp_path / f"run-{name}"),
        "snapshot_path": str(tmp_path / f"snapshot-{name}.json")}))


@pytest.mark.parametrize("newcomer", ["aa", "zz"])
def test_a_newcomer_taken_out_lets_no_refused_update_in_before_the_last_good(launcher,
                                                                             tmp_path,
                                                                             newcomer):
    """Route s serves /a. Gateway g stops (its snapshot holds s); route aa is put with
    /n/:name, then s's update to /n/:id, which the gateway that saw them come (o) refuses (aa
    holds that position): it serves s's last good version at /a. Restarted afresh, g loaded aa (its key first), s's
    update refused for /n; keep_last_good took aa out to put the snapshot's s in first, and
    that removal retried s's refused update (etcd's), which took /n/*: s served there, /a a
    404, aa refused in its place. (Before bf217e4 g served as o.) Now g serves as o. With
    the newcomer named zz (s's key first), g loaded s's update first, in etcd's key order,
    and accepted it, with the same outcome, until 444ff06 (test_load_order_dec16t)."""
    etcd = launcher.etcd()
    up = launcher.upstream("v1")
    observer = etcd_gateway_at(launcher, etcd, tmp_path, "o")
    gw = etcd_gateway_at(launcher, etcd, tmp_path, "g")
    put(etcd, "upstreams", "u", {"targets": [{"url": up.url}]})
    put(etcd, "routes", "s", {"paths": ["/a"], "upstream": "u"})
    wait_until(lambda: gw.request("GET", "/a")[0].status == 200, timeout=5)
    time.sleep(1.5)         # (the snapshot is written once publications pause)
    stop_process(gw.proc)
    put(etcd, "routes", newcomer, {"paths": ["/n/:name"], "upstream": "u", "priority": -1})
    put(etcd, "routes", "s", {"paths": ["/n/:id"], "upstream": "u"})
    wait_until(lambda: sorted(status_json(observer).get("rejected", {})) == ["routes/s"],
               timeout=5)
    assert observer.request("GET", "/a")[0].status == 200
    shutil.rmtree(tmp_path / "run-g", ignore_errors=True)
    gw = launcher.gateway(gw.conf)
    wait_until(lambda: status_json(gw).get("rejected"), timeout=10)
    time.sleep(0.5)         # (the worker reads the generation)
    assert sorted(status_json(gw)["rejected"]) == ["routes/s"], status_json(gw)["rejected"]
    assert gw.request("GET", "/a")[0].status == 200
    assert json.loads(gw.admin_get("/admin/routes/s")[1])["spec"]["paths"] == ["/a"]
    assert gw.request("GET", "/n/x")[0].status == 200       # the newcomer serves
