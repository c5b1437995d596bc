"""The breaker's two implementations held to each other: core/breaker.step (Python, per host)
and BREAKER_LUA run by a real redis-server, driven with the same events, step by step.

Redis' clock cannot be set, so the Lua runs with its one ``redis.call('TIME')`` line replaced
by a clock the test sets (a key it passes as KEYS[2]); the rest of the script is the one the
gateway loads, byte for byte (asserted). The states are compared after every step: state,
epoch, trips, probes granted and succeeded, the window's buckets, the ids seen, the admitted
count, the states entered and the time to the next probe.

cjson keeps 14 significant digits: an ``until`` of ~1.8e9 s is stored to 0.1 ms, so the
generated clock never lands within a millisecond of it (an instant on which the two would
decide a hair apart, which no request can tell).

Also: a half-open probe's verdict that Redis answers with an error (OOM) is owed and sent
again, as a failed batch's is (it was dropped).
"""
import json
import random
import subprocess
import time

import gevent
import pytest
import redis as redis_py

from gwserver.core import breaker
from gwserver.state.lua import BREAKER_LUA
from gwserver.state.store import RedisStore, breaker_args, breaker_state_of

TIME_LINES = ("local t = redis.call('TIME')\n"
              "local now = tonumber(t[1]) + tonumber(t[2]) / 1000000\n")
CLOCKED_LUA = BREAKER_LUA.replace(TIME_LINES, "local now = tonumber(redis.call('GET', KEYS[2]))\n")
BASE = 1_790_000_000.25


class Pair:
    """One breaker stepped in Python and in Redis' Lua alike; ``step`` compares them."""

    def __init__(self, client, key, conf, state=None):
        self.client, self.key, self.conf = client, key, conf
        self.sha = client.script_load(CLOCKED_LUA)
        self.state = breaker_state_of(state or {})
        client.delete(key)
        if state is not None:
            client.set(key, json.dumps(state))
        self.now = BASE

    def step(self, outcomes=(), admissions=0, where=""):
        outcomes = [tuple(o) + (0, "")[len(o) - 3:] if len(o) < 5 else tuple(o)
                    for o in outcomes]
        state, admitted, entered = breaker.step(self.state, self.conf, self.now, outcomes,
                                                admissions)
        # per host the state goes through a JSON file between steps (LocalStore)
        self.state = breaker_state_of(json.loads(json.dumps(state)))
        self.client.set("clock", repr(self.now))
        flat = [v for o in outcomes for v in o]
        l_state, l_epoch, l_admitted, l_wait, l_entered = self.client.evalsha(
            self.sha, 2, self.key, "clock", *breaker_args(self.conf), admissions, *flat)
        stored = breaker_state_of(json.loads(self.client.get(self.key)))
        python = self.view(self.state, admitted, entered)
        lua = self.view(stored, int(l_admitted), [e.decode() for e in l_entered])
        assert (l_state.decode(), int(l_epoch)) == (stored["state"], stored["epoch"])
        assert python == lua, f"{where}: {outcomes} admissions {admissions} at {self.now}"
        assert abs(self.state["until"] - stored["until"]) < 1e-3, where
        assert abs(breaker.retry_after(state, self.now) - float(l_wait)) < 1e-3, where
        return admitted, self.state["state"]

    @staticmethod
    def view(state, admitted, entered):
        return {"state": state["state"], "epoch": state["epoch"], "trips": state["trips"],
                "probes": state["probes"], "probe_ok": state["probe_ok"],
                "buckets": [list(b) for b in state["buckets"]], "seen": list(state["seen"]),
                "admitted": admitted, "entered": entered}

    def tick(self, seconds):
        self.now += seconds
        if abs(self.now - self.state["until"]) < 1e-3:   # see the module's docstring
            self.now += 2e-3


@pytest.fixture(scope="module")
def client(module_launcher):
    server = module_launcher.redis()
    assert BREAKER_LUA.count(TIME_LINES) == 1       # the script under test is the gateway's
    yield redis_py.Redis(port=server.port, socket_timeout=10)


def conf_of(**over):
    return {"error_rate": 0.5, "window": 2.0, "min_requests": 2, "open_for": 1.0,
            "max_open_for": 4.0, "half_open_probes": 1, **over}


# -- generated sequences ---------------------------------------------------------------------

def generated_run(client, seed, steps=300):
    rnd = random.Random(seed)
    open_for = rnd.choice([0.5, 1.0, 5.0])
    conf = conf_of(error_rate=rnd.choice([0.2, 0.28, 0.34, 0.5, 1.0]),
                   window=rnd.choice([0.5, 1.0, 5.0, 10.0]),
                   min_requests=rnd.choice([1, 2, 4, 20]), open_for=open_for,
                   max_open_for=open_for * rnd.choice([1, 4, 100]),
                   half_open_probes=rnd.choice([1, 2, 3]))
    pair = Pair(client, f"gen:{seed}", conf)
    epochs, ids, flood = [0], 0, rnd.random() < 0.3
    for i in range(steps):
        if rnd.random() < 0.2:      # the clock steps: a little, or past open_for, the
            # window, max_open_for; now and then back (NTP stepping it, another host's)
            pair.tick(rnd.choice([0.001, 0.1, 0.3, conf["open_for"], conf["window"],
                                  conf["max_open_for"]]) * rnd.choice([0.5, 1, 1.01, 2, 2,
                                                                       -0.5, -30]))
        outcomes = []
        for _ in range(rnd.randint(0, 3)):
            # this epoch's, the one before (a verdict after the breaker re-opened), any older
            epoch = rnd.choice([pair.state["epoch"]] * 2 + [pair.state["epoch"] - 1,
                                                            rnd.choice(epochs)])
            ok, failed, unused = rnd.choice([(1, 0, 0), (0, 1, 0), (0, 0, 1), (2, 1, 0),
                                             (1, 0, 2), (0, 2, 0), (3, 0, 0)])
            ident = ""
            if rnd.random() < 0.4:      # a probe's verdict: new, or one sent again
                ident = f"p{rnd.randint(0, ids)}"
                ids += 1
            outcomes.append((epoch, ok, failed, unused, ident))
        if flood and pair.state["state"] == breaker.HALF_OPEN and rnd.random() < 0.3:
            # given-back probes' ids, up to and past the 64 an epoch keeps
            outcomes += [(pair.state["epoch"], 0, 0, 1, f"g{ids + n}") for n in range(30)]
            ids += 30
        pair.step(outcomes, rnd.choice([0, 0, 1, 1, 2, 5]), where=f"seed {seed} step {i}")
        epochs.append(pair.state["epoch"])
    return pair


def test_generated_sequences_agree(client):
    """Seeded sequences of a few hundred steps: admissions, successes, failures (timeouts
    count as failures), given-back admissions, probe verdicts (some sent twice, some after
    the breaker re-opened), clock steps past open_for / window / max_open_for and back, with
    half_open_probes 1, 2 and 3 (the schema has no consecutive-failure mode: error_rate with
    min_requests = 1 and error_rate = 1.0 are among the generated configs). They agree everywhere (this test is the guard)."""
    started, cycled = time.monotonic(), set()
    for seed in range(24):
        pair = generated_run(client, seed)
        if pair.state["epoch"] > 10:            # the run went round its states
            cycled.add(pair.conf["half_open_probes"])
    assert cycled == {1, 2, 3}
    assert time.monotonic() - started < 30


# -- hand-written edges --------------------------------------------------------------------------

def trip(pair):
    epoch = pair.state["epoch"]
    pair.step([(epoch, 0, 2)], where="trip")
    assert pair.state["state"] == breaker.OPEN


def test_a_verdict_sent_twice_counts_once_in_both(client):
    pair = Pair(client, "twice", conf_of(half_open_probes=2))
    trip(pair)
    pair.tick(1.01)
    assert pair.step(admissions=3) == (2, "half_open")
    epoch = pair.state["epoch"]
    pair.step([(epoch, 1, 0, 0, "p1")])
    assert pair.step([(epoch, 1, 0, 0, "p1")], 1) == (0, "half_open")     # the copy: nothing
    assert pair.state["probe_ok"] == 1
    assert pair.step([(epoch, 1, 0, 0, "p2")], 1) == (1, "closed")


def test_verdicts_after_the_breaker_reopened_count_nothing_in_both(client):
    pair = Pair(client, "late", conf_of(half_open_probes=2, max_open_for=8.0))
    trip(pair)
    pair.tick(1.01)
    pair.step(admissions=2)
    half_open = pair.state["epoch"]
    assert pair.step([(half_open, 0, 1, 0, "p1")], 1) == (0, "open")      # open for 2 s
    # the other probe's success, and the failed one's copy, after it re-opened
    pair.step([(half_open, 1, 0, 0, "p2"), (half_open, 0, 1, 0, "p1")])
    assert pair.state["trips"] == 2
    pair.tick(1.5)
    assert pair.step(admissions=1) == (0, "open")
    pair.tick(0.6)
    assert pair.step(admissions=3) == (2, "half_open")
    again = pair.state["epoch"]
    pair.step([(again, 1, 0, 0, "p3"), (again, 0, 0, 1, "p4")])           # one given back
    assert pair.step(admissions=2) == (1, "half_open")                    # granted again
    pair.step([(again, 1, 0, 0, "p5")])
    assert pair.step(admissions=1) == (1, "closed")
    assert pair.state["trips"] == 0


def test_open_time_doubles_to_its_cap_and_lost_probes_are_granted_again_in_both(client):
    pair = Pair(client, "double", conf_of(half_open_probes=3, window=3.0, max_open_for=4.0))
    for open_for in (1.0, 2.0, 4.0, 4.0):
        trip(pair) if pair.state["state"] == breaker.CLOSED else None
        assert pair.step(admissions=1) == (0, "open")
        pair.tick(open_for - 0.01)
        assert pair.step(admissions=1) == (0, "open")
        pair.tick(0.02)
        assert pair.step(admissions=4) == (3, "half_open")
        pair.tick(3.01)                             # probes never reported: probe_timeout
        assert pair.step(admissions=4) == (3, "half_open")
        pair.step([(pair.state["epoch"], 2, 1, 0, "p")])
    assert pair.state["trips"] == 5


def test_64_given_back_ids_then_a_verdict_and_its_copy_agree(client):
    pair = Pair(client, "seen", conf_of(half_open_probes=2))
    trip(pair)
    pair.tick(1.01)
    pair.step(admissions=2)
    epoch = pair.state["epoch"]
    pair.step([(epoch, 0, 0, 1, f"g{n}") for n in range(70)])
    assert len(pair.state["seen"]) == 64
    pair.step([(epoch, 1, 0, 0, "v1")], 0)
    # the copy counts nothing (both probes were given back: 2 granted anew)
    assert pair.step([(epoch, 1, 0, 0, "v1")], 2) == (2, "half_open")
    assert pair.state["probe_ok"] == 1


def test_a_breaker_past_1024_trips_in_a_row_opens_in_python_as_in_redis(client):
    """A dead upstream: at max_open_for = 60 s, 17 h of failed probes make 1025 trips in a
    row. The Lua opened the breaker for max_open_for; Python raised OverflowError (an int
    2 ** 1024 made a float), the per-host state stayed half-open and every later probe's
    failure raised again."""
    pair = Pair(client, "trips", conf_of(open_for=5.0, max_open_for=60.0, window=10.0),
                state={"state": "half_open", "epoch": 2049, "trips": 1024, "probes": 1,
                       "probe_ok": 0, "until": BASE + 10, "buckets": [], "seen": []})
    assert pair.step([(2049, 0, 1, 0, "p")], 1) == (0, "open")
    assert pair.state["trips"] == 1025
    assert pair.state["until"] == pytest.approx(BASE + 60)
    pair.tick(60.01)
    assert pair.step(admissions=1) == (1, "half_open")


# -- a probe's verdict when Redis answers an error -----------------------------------------------

def cli(port, *args):
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True,
                          text=True, timeout=20).stdout.strip()


def test_a_probe_verdict_redis_refuses_with_an_error_is_sent_again(launcher):
    """Redis answers the call that carries a half-open probe's success with an error (OOM:
    maxmemory with noeviction), then recovers. The verdict was dropped: Redis held the probe
    for max(window, open_for), every request refused though the upstream was well. Now it is
    owed and sent with the next round trip, once."""
    server = launcher.redis()
    store = RedisStore(server.url, timeout=1.0, pause=0.2)
    key, conf = "route:oom", conf_of(window=8.0, open_for=0.3, max_open_for=1.0,
                                    half_open_probes=2)
    verdict = store.breaker_admit(key, conf)
    for _ in range(2):
        store.breaker_record(key, conf, verdict.epoch, False)
    assert store.breaker_admit(key, conf).state == "open"
    gevent.sleep(0.35)
    probes = [store.breaker_admit(key, conf) for _ in range(2)]
    assert [(p.admitted, p.state) for p in probes] == [(True, "half_open")] * 2
    assert cli(server.port, "CONFIG", "SET", "maxmemory-policy", "noeviction") == "OK"
    assert cli(server.port, "CONFIG", "SET", "maxmemory", "1") == "OK"
    store.breaker_record(key, conf, probes[0].epoch, True, probe=True)
    deadline = time.monotonic() + 3
    while not store.refusing and time.monotonic() < deadline:
        gevent.sleep(0.02)          # the batcher runs while this greenlet waits
    assert store.refusing                                   # Redis said OOM to that call
    assert cli(server.port, "CONFIG", "SET", "maxmemory", "0") == "OK"
    gevent.sleep(0.3)
    store.breaker_record(key, conf, probes[1].epoch, True, probe=True)
    deadline = time.monotonic() + 3                         # well within probe_timeout (8 s)
    while store.breaker_admit(key, conf).state != "closed" and time.monotonic() < deadline:
        gevent.sleep(0.05)
    saved = store.breaker_state(key)
    assert (saved["state"], saved["trips"]) == ("closed", 0)
    assert saved["epoch"] == probes[0].epoch + 1            # closed by the two, no more
