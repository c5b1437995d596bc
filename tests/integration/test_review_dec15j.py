"""Review of this session's newest commits (helper r25).

6358ad8 closes a websocket on a rollout's canary when that rollout is rolled back or
aborted, matched by the rollout's id: in etcd mode a route put again with new steps begins
a new rollout (a new id), and when that one was aborted a websocket the rollout before had
placed on the canary went on talking to it.

0bbd2d3 told a conf file's [routes.api] (routes by name) to write [[routes]] blocks. The
commoner slip, one route written under [routes] (one bracket pair short), was told that
"[routes."id"] makes a table of routes by name", a line the operator never wrote; an empty
[routes] still got the bare "must be a list, got {}".
"""
import json
import subprocess
import sys
import time

import pytest

from ..conftest import ROOT, stop_process, wait_until
from ..h2client import RawH2
from .test_h2_finish_dec15g import reported, reporting_gateway

FIX = 'routes: must be a list: write each route as a [[routes]] block with its id inside'


def check(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(text)
    done = subprocess.run([sys.executable, "-m", "gwserver", "check", "-c", str(path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=30)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("text", [
    '[upstreams.api]\ntargets = [{url = "http://127.0.0.1:9"}]\n'
    '[routes]\nid = "api"\npaths = ["/api"]\nupstream = "api"\n',
    '[routes]\n',
], ids=["one-route-under-[routes]", "empty-[routes]"])
def test_a_single_bracket_routes_table_is_told_its_fix(tmp_path, text):
    code, said = check(tmp_path, text)
    assert code == 2
    assert FIX in said and "[routes] (single brackets) makes one table" in said, said
    assert '[routes."id"]' not in said


def test_routes_by_name_still_told_so(tmp_path):
    code, said = check(tmp_path, '[routes.api]\npaths = ["/api"]\n[routes.web]\npaths = ["/"]\n')
    assert code == 2 and FIX in said and '[routes."api"] makes a table of routes by name' in said


@pytest.fixture
def never_finishing_gw(launcher, tmp_path):
    return reporting_gateway(launcher, tmp_path, 60.0, {"stuck": "/echo"},
                             server={"graceful_timeout": 1.0})


def test_a_drain_cuts_h2_finishes_that_never_end_at_graceful_timeout(never_finishing_gw):
    """75ae2a0 holds a closed HTTP/2 connection's slot while its streams finish: finishes
    that never end (three connections) are cut at graceful_timeout, each logged once.
    (Held as it was: it passed before this review's fixes.)"""
    gw, reports = never_finishing_gw
    for _ in range(3):          # three connections, each closed under a stuck finish
        client = RawH2(gw.port)
        try:
            sid = client.request("/echo")
            assert client.response(sid)[0] == 200
        finally:
            client.close()
    time.sleep(0.3)
    started = time.monotonic()
    assert stop_process(gw.proc, timeout=10) == 0
    assert time.monotonic() - started < 4.0         # graceful_timeout 1 s, then the cut
    lines = [line for line in gw.access_lines() if line.get("route") == "stuck"]
    assert [line["status"] for line in lines] == [200] * 3, lines
    assert reported(reports, "stuck") == []


def test_a_canary_websocket_is_closed_when_the_rollout_that_replaced_its_own_is_aborted(
        launcher, tmp_path):
    """etcd mode: a websocket the weights placed on the canary under rollout A (50 %); the
    route is put again with new steps, rollout B (its own id), whose weights still place
    that key on the canary; B is aborted: the canary gets nobody, yet the websocket, tagged
    with A's id, went on talking to it."""
    from ..etcd_sync import gwcli
    from .test_rollout_attack_dec05 import canary_keys
    from .test_rollout_attack_dec15i import abort, echoed, websocket_on_canary
    from .test_rollouts import rollout_conf, rollout_of
    etcd, redis = launcher.etcd(), launcher.redis()
    v1, v2 = launcher.upstream("v1"), launcher.upstream("v2")
    conf = rollout_conf(tmp_path, v1, v2, etcd, redis, workers=1, steps=[50, 100],
                        interval=600)
    shop = conf["routes"][0]
    conf["routes"] = []
    gw = launcher.gateway(conf)

    def put(steps):
        item = json.loads(json.dumps(shop))
        item["plugins"]["split"]["rollout"]["steps"] = steps
        done = gwcli(gw.conf_path, "routes", "put", "-", stdin=json.dumps(item))
        assert done.returncode == 0, done.stderr
    put([50, 100])
    wait_until(lambda: rollout_of(gw).get("status") == "running", timeout=15)
    first = rollout_of(gw)["id"]
    key = canary_keys(1, 50)[0]

    sock, head = websocket_on_canary(gw, v2, key)
    try:
        assert head.startswith(b"HTTP/1.1 101"), head
        assert echoed(sock, b"before") == b"before"
        put([60, 100])          # rollout B: the key is on its canary too
        wait_until(lambda: rollout_of(gw).get("status") == "running" and
                   rollout_of(gw).get("weights", {}).get("canary") == 60.0, timeout=15)
        assert rollout_of(gw)["id"] != first           # a new rollout
        abort(gw, "canary is broken")
        resp, _ = gw.request("GET", "/shop/echo", headers={"X-User": key})
        assert resp.getheader("X-Upstream") == "v1"
        canary_before = v2.stats()["requests"]
        assert echoed(sock, b"after abort") == b"", \
            "the aborted canary still serves a websocket placed on it by the rollout before"
        assert v2.stats()["requests"] == canary_before
    finally:
        sock.close()
    assert "closed: the rollout of its canary was rolled back or aborted" in gw.log()
