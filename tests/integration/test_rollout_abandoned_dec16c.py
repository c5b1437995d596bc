"""A canary that answers nobody, whose clients give up before the gateway's read_timeout:
every such request ended with the client gone, which a rollout's gates did not count, so the
step held the canary's share of users for good (no promotion on silence, and no rollback).
split's ``rollout.abandoned_after`` counts a request whose client left after the upstream
had it that long as the group's failure; one that left sooner still says nothing."""
import http.client
import threading
import time

import h2.events

from ..conftest import wait_until
from ..h2client import RawH2
from .test_rollout_attack_dec05 import canary_keys
from .test_rollouts import control, rollout_conf, rollout_of


def hung_canary(launcher, tmp_path, abandoned_after):
    v1, v2 = launcher.upstream("v1"), launcher.upstream("v2")
    control(v2, delay=20)           # the canary takes every request and answers none
    conf = rollout_conf(tmp_path, v1, v2, workers=1, steps=[50, 100], interval=600,
                        min_requests=4, gates=[{"kind": "success_rate", "min": 95}],
                        **({"abandoned_after": abandoned_after} if abandoned_after else {}))
    conf["http2"] = {"h2c": True}
    gw = launcher.gateway(conf)
    wait_until(lambda: rollout_of(gw).get("status") == "running", timeout=10)
    return gw


def impatient(gw, keys, patience):
    """Each key's GET /shop/echo from a client that leaves after ``patience`` seconds."""
    def ask(key):
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=patience)
        try:
            conn.request("GET", "/shop/echo", headers={"X-User": key})
            conn.getresponse().read()
        except OSError:
            pass
        finally:
            conn.close()
    threads = [threading.Thread(target=ask, args=(key,)) for key in keys]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(patience + 5)


def test_clients_that_give_up_on_a_hung_canary_roll_it_back(launcher, tmp_path):
    gw = hung_canary(launcher, tmp_path, abandoned_after=0.5)
    impatient(gw, canary_keys(6, 50), patience=1.0)
    wait_until(lambda: rollout_of(gw).get("status") == "rolled_back", timeout=10)
    entry = rollout_of(gw)
    assert entry["history"][-1]["reason"].startswith("gate success_rate failed"), entry
    # and the users are off it: a key that was the canary's now gets the baseline's answer
    key = canary_keys(1, 50)[0]
    resp, body = gw.request("GET", "/shop/echo", headers={"X-User": key}, timeout=5)
    assert resp.status == 200 and b'"v1"' in body, (resp.status, body[:80])


def test_an_http2_client_that_resets_its_stream_counts_alike(launcher, tmp_path):
    gw = hung_canary(launcher, tmp_path, abandoned_after=0.5)
    client = RawH2(gw.port)
    try:
        streams = [client.request("/shop/echo", headers=[("x-user", key)])
                   for key in canary_keys(5, 50)]
        client.pump(lambda c: False, timeout=1.0)       # the canary holds them
        for sid in streams:
            client.conn.reset_stream(sid)
        client.flush()
        wait_until(lambda: rollout_of(gw).get("status") == "rolled_back", timeout=10)
        assert not [e for e in client.events if isinstance(e, h2.events.ResponseReceived)]
    finally:
        client.sock.close()


def test_clients_that_leave_sooner_than_abandoned_after_are_not_counted(launcher, tmp_path):
    """A client's own short patience is no failure of the canary's: a client must not be
    able to fail a healthy canary's gates by hanging up on it."""
    gw = hung_canary(launcher, tmp_path, abandoned_after=3)
    impatient(gw, canary_keys(6, 50), patience=0.5)
    wait_until(lambda: rollout_of(gw).get("canary") is not None, timeout=5)
    time.sleep(1.5)         # the helper's ticks (0.5 s) sum what the workers counted
    entry = rollout_of(gw)
    assert entry["status"] == "running" and entry["canary"]["requests"] == 0, entry


def test_without_abandoned_after_nothing_is_counted_as_before(launcher, tmp_path):
    gw = hung_canary(launcher, tmp_path, abandoned_after=None)
    impatient(gw, canary_keys(6, 50), patience=1.0)
    time.sleep(1.5)
    entry = rollout_of(gw)
    assert entry["status"] == "running" and entry["canary"]["requests"] == 0, entry
