"""Attack pass of 2026-12-15 (a helper's) on the self-driving canaries, against real gateways
and upstreams on 127.0.0.1. Each test failed before its fix: a websocket the weights had put
on the canary went on talking to it after an abort or a rollback; a split naming an upstream
with a breaker on it was refused ("unhashable type: 'dict'").

A breaker set on the canary's own upstream object did not guard the split's requests to it
(xfail until 2026-12-16's core.chain.Follow)."""
import json
import socket
import time

from ..conftest import check_conf, wait_until
from .test_attack_dec10c import handshake
from .test_rollout_attack_dec05 import canary_keys
from .test_rollouts import cli, control, rollout_conf, rollout_of


def canary_websocket(gw, key):
    """A websocket on /shop/ws whose X-User ``key`` the weights place on the canary ->
    (socket, the answer's head)."""
    return handshake(gw.port, b"/shop/ws", b"X-User: %s\r\n" % key.encode())


def websocket_on_canary(gw, canary, key):
    """canary_websocket, again until the canary upstream took it (a worker that had not read
    the step yet gave it to the baseline) -> (socket, the answer's head)."""
    def on_canary():
        before = canary.stats()["requests"]
        sock, head = canary_websocket(gw, key)
        if canary.stats()["requests"] > before:
            return sock, head
        sock.close()
        return None
    return wait_until(on_canary, timeout=10)


def abort(gw, reason):
    """`rollouts abort shop`, and every worker has read the step (within 0.25 s)."""
    done = cli(gw, "abort", "shop", "--reason", reason)
    assert done.returncode == 0, done.stderr
    wait_until(lambda: rollout_of(gw).get("status") == "aborted", timeout=5)
    time.sleep(1.0)


def echoed(sock, data):
    """``data`` sent on the tunnel -> what came back within 2 s (b"": it was closed)."""
    try:
        sock.sendall(data)
        got = b""
        deadline = time.monotonic() + 2.0
        while len(got) < len(data) and time.monotonic() < deadline:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            piece = sock.recv(4096)
            if not piece:
                return got
            got += piece
        return got
    except (socket.timeout, OSError):
        return b""


def test_an_aborted_canary_keeps_no_websocket(launcher, tmp_path):
    """`rollouts abort` says the canary gets nobody; a websocket the weights had placed on it
    went on talking to it (every message to the aborted canary) until its client left."""
    v1, v2 = launcher.upstream("v1"), launcher.upstream("v2")
    # a long interval: the rollout stays at its first step (50 %) while the test runs
    gw = launcher.gateway(rollout_conf(tmp_path, v1, v2, workers=1, steps=[50, 100],
                                       interval=600))
    wait_until(lambda: rollout_of(gw).get("status") == "running", timeout=10)
    key = canary_keys(1, 50)[0]

    sock, head = websocket_on_canary(gw, v2, key)
    try:
        assert head.startswith(b"HTTP/1.1 101"), head
        assert echoed(sock, b"before") == b"before"
        abort(gw, "canary is broken")
        resp, _ = gw.request("GET", "/shop/echo", headers={"X-User": key})
        assert resp.getheader("X-Upstream") == "v1"
        canary_before = v2.stats()["requests"]
        assert echoed(sock, b"after abort") == b"", \
            "the aborted canary still serves a websocket the weights had placed on it"
        assert v2.stats()["requests"] == canary_before
    finally:
        sock.close()
    assert "closed: the rollout of its canary was rolled back or aborted" in gw.log()



def test_a_rollout_may_split_to_an_upstream_with_a_breaker(launcher, tmp_path):
    """A breaker set on an upstream object (docs/breaker.md: "once for every route that uses
    an upstream") beside a split naming that upstream: the conf was refused, "a value could
    not be checked: TypeError: unhashable type: 'dict'" (an Upstream holding its plugins'
    dict configs was hashed), so a canary could not be guarded so at all."""
    v1, v2 = launcher.upstream("v1"), launcher.upstream("v2")
    conf = rollout_conf(tmp_path, v1, v2, workers=1, steps=[50, 100], interval=600,
                        min_requests=10)
    conf["upstreams"]["v1"]["plugins"] = {"breaker": {"min_requests": 5, "open_for": 30}}
    code, out = check_conf(tmp_path, conf)
    assert code == 0, out
    control(v2, fail=1.0)
    gw = launcher.gateway(conf)
    wait_until(lambda: rollout_of(gw).get("status") == "running", timeout=10)
    keys, seen = canary_keys(5, 50), []

    def rolled_back():
        resp, body = gw.request("GET", "/shop/echo", headers={"X-User": keys[len(seen) % 5]})
        seen.append((resp.status, body[:40]))
        return rollout_of(gw).get("status") == "rolled_back"
    # the canary's 500s, then its breaker's refusals (scope upstream, keyed on the upstream
    # the split chose): both the canary's failures
    wait_until(rolled_back, timeout=15, interval=0.02)
    assert any(status == 503 and b"circuit_open" in body for status, body in seen), seen
    assert rollout_of(gw)["history"][-1]["reason"].startswith("gate success_rate failed")


def test_a_breaker_on_the_canarys_own_upstream_guards_it(launcher, tmp_path):
    """It did not: a route ran its own upstream's plugins, whichever upstream the split
    chose (fixed by core.chain.Follow). The baseline's requests run no breaker (v1 has
    none), and /admin shows the canary's under its own key and upstream."""
    v1, v2 = launcher.upstream("v1"), launcher.upstream("v2")
    conf = rollout_conf(tmp_path, v1, v2, workers=1, steps=[50, 100], interval=600)
    conf["upstreams"]["v2"]["plugins"] = {"breaker": {"min_requests": 5, "open_for": 30}}
    control(v2, fail=1.0)
    gw = launcher.gateway(conf)
    wait_until(lambda: rollout_of(gw).get("status") == "running", timeout=10)
    statuses = [gw.request("GET", "/shop/echo", headers={"X-AB-Group": "canary"})[0].status
                for _ in range(20)]
    assert 503 in statuses, statuses      # 20 answers of 500: its breaker never opened
    assert statuses[:5] == [500] * 5 and set(statuses[5:]) == {503}, statuses
    assert gw.request("GET", "/shop/echo", headers={"X-AB-Group": "v1"})[0].status == 200
    status, body = gw.admin_get("/admin/breakers")
    breakers = json.loads(body)["breakers"]
    assert list(breakers) == ["upstream:v2"], breakers
    assert breakers["upstream:v2"]["state"] == "open" and \
        breakers["upstream:v2"]["routes"] == ["shop"], breakers
    status, body = gw.admin_get("/admin/routes/shop")
    shown = [p for p in json.loads(body)["plugins"] if p["name"] == "breaker"]
    assert [(p.get("upstream"), p["config"]["min_requests"]) for p in shown] == [("v2", 5)]
