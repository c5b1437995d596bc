"""A rollout's steps, gates and transitions with a fake clock (core.rollout), and split under
a rollout: the schema, weights, stickiness across steps."""
import uuid
from collections import Counter

import pytest

from gwserver.core import rollout as core
from gwserver.core.context import RequestContext
from gwserver.core.routes import Upstream
from gwserver.errors import ConfigError
from gwserver.plugins import split

GATES = [{"kind": "success_rate", "min": 99.0}, {"kind": "latency", "max": 0.5},
         {"kind": "baseline", "max_excess": 1.0}]


def rollout(**extra):
    conf = split.SCHEMA.validate({"upstreams": [{"upstream": "v1", "weight": 9},
                                                {"upstream": "v2", "weight": 1,
                                                 "group": "canary"}],
                                  "rollout": {"steps": [5, 25, 50, 100], "interval": "10s",
                                              "min_requests": 20, "gates": GATES, **extra}})
    return split.prepare(conf)["rollout"]


def window(requests, failures=0, seconds=0.01):
    buckets = [0] * (len(core.LATENCY_BOUNDS) + 1)
    buckets[core.bucket_of(seconds)] = requests
    return core.Window(requests, failures, tuple(buckets))


HEALTHY = window(100)


def test_schema_fills_defaults_and_reads_durations():
    conf = split.SCHEMA.validate({"upstreams": [{"upstream": "v1", "weight": 1}],
                                  "rollout": {"interval": "5m"}})["rollout"]
    assert conf["interval"] == 300.0 and conf["steps"] == [5, 25, 50, 100]
    assert conf["on_failure"] == "rollback" and conf["min_requests"] == 100
    assert conf["failure_statuses"] == [500, 502, 503, 504]


@pytest.mark.parametrize("extra, problem", [
    ({"group": "nope"}, "'nope' is not a group"),
    ({"steps": [50, 25]}, "must grow step by step"),
    # rounded to no share of the hash space: "running" at a step that sent nobody
    ({"steps": [0.001, 50]}, "rollout.steps: 0.001 is below 0.01, the finest share"),
    ({"gates": [{"kind": "latency"}]}, "a latency gate needs max"),
    ({"gates": [{"kind": "success_rate"}]}, "a success_rate gate needs min"),
    ({"interval": "soon"}, "must be seconds"),
    # NaN passed "<= 0" (every comparison is false of it) and held no step at all; inf and
    # "1e400 s" written out held a step for ever; 10**400 raised OverflowError: "could not be
    # checked", no field named
    ({"interval": float("nan")}, "plugins.split: rollout.interval: must be seconds"),
    ({"interval": float("inf")}, "plugins.split: rollout.interval: must be seconds"),
    ({"interval": "9" * 400 + "s"}, "plugins.split: rollout.interval: must be seconds"),
    ({"interval": 10 ** 400}, "plugins.split: rollout.interval: must be seconds"),
])
def test_bad_rollouts_are_named(extra, problem):
    from gwserver.core.chain import build_chain
    from gwserver.plugins import load_registry
    conf = {"upstreams": [{"upstream": "v1", "weight": 9},
                          {"upstream": "v2", "weight": 1, "group": "canary"}],
            "rollout": extra}
    with pytest.raises(ConfigError) as caught:
        build_chain("route r", {"split": conf}, None, load_registry())
    assert problem in str(caught.value)


def test_healthy_canary_walks_every_step_then_owns_the_route():
    conf = rollout()
    state = core.start(conf, "r1", now=0.0)
    seen = [(state.status, state.weight)]
    now = 0.0
    while state.status == core.RUNNING:
        now += 5
        state, verdicts = core.decide(conf, state, HEALTHY, HEALTHY, now)
        seen.append((state.status, state.weight))
    assert [w for _, w in seen if _ == core.RUNNING] == [5, 5, 25, 25, 50, 50]
    assert seen[-1] == (core.DONE, 100.0) and now == 30
    assert [h["event"] for h in state.history] == ["start", "advance", "advance", "finish"]
    assert all(v.ok for v in verdicts)


@pytest.mark.parametrize("gates, canary, baseline, failed_gate", [
    (GATES, window(100, failures=5), HEALTHY, "success_rate"),
    (GATES, window(100, seconds=0.9), HEALTHY, "latency_p99"),
    (GATES[2:], window(1000, failures=50), window(1000, failures=30), "baseline_error_rate"),
])
def test_a_failed_gate_rolls_back_at_once(gates, canary, baseline, failed_gate):
    conf = rollout(gates=gates)
    state = core.start(conf, "r1", now=0.0)
    state, verdicts = core.decide(conf, state, canary, baseline, 1.0)    # before the interval
    assert state.status == core.ROLLED_BACK and state.weight == 0
    assert [v.gate for v in verdicts if v.ok is False][0] == failed_gate
    assert state.history[-1]["reason"].startswith(f"gate {failed_gate} failed at 5%")


def test_baseline_gate_allows_a_canary_as_bad_as_the_baseline():
    conf = rollout(gates=GATES[2:])
    state = core.start(conf, "r1", 0.0)
    state, verdicts = core.decide(conf, state, window(1000, failures=50),
                                  window(1000, failures=45), 1.0)
    assert state.status == core.RUNNING and verdicts[0].ok and verdicts[0].value == 0.5


def test_on_failure_pause_holds_the_weight():
    conf = rollout(on_failure="pause")
    state = core.start(conf, "r1", 0.0)
    state, _ = core.decide(conf, state, window(50, failures=10), HEALTHY, 1.0)
    assert (state.status, state.weight) == (core.PAUSED, 5.0)


def test_no_promotion_on_silence():
    conf = rollout()
    state = core.start(conf, "r1", 0.0)
    for now, canary in ((100.0, core.Window()), (200.0, window(19))):
        state, verdicts = core.decide(conf, state, canary, HEALTHY, now)
        assert state.step == 0 and state.status == core.RUNNING
        assert all(v.ok is None for v in verdicts)


def test_few_failures_before_min_requests_do_not_fail():
    conf = rollout()
    state = core.start(conf, "r1", 0.0)
    state, _ = core.decide(conf, state, window(10, failures=10), HEALTHY, 1.0)
    assert state.status == core.RUNNING


@pytest.mark.parametrize("status, command, expected, weight", [
    (core.RUNNING, "pause", core.PAUSED, 25.0),
    (core.PAUSED, "resume", core.RUNNING, 25.0),
    (core.ROLLED_BACK, "resume", core.RUNNING, 5.0),      # starts over
    (core.RUNNING, "promote", core.DONE, 100.0),
    (core.PAUSED, "abort", core.ABORTED, 0.0),
    (core.DONE, "abort", core.ABORTED, 0.0),
])
def test_commands(status, command, expected, weight):
    state = core.State("r1", status, 1, (5, 25, 50, 100), 3, 0.0)
    new = core.command(state, command, 10.0)
    assert (new.status, new.weight, new.epoch, new.since) == (expected, weight, 4, 10.0)
    assert new.history[-1]["event"] == command


@pytest.mark.parametrize("status, command", [(core.RUNNING, "resume"),
                                             (core.PAUSED, "pause"), (core.DONE, "promote")])
def test_commands_a_status_refuses(status, command):
    with pytest.raises(core.TransitionError):
        core.command(core.State("r1", status, 1, (5, 100), 3, 0.0), command, 1.0)


def test_state_survives_json():
    state = core.command(core.start(rollout(), "r1", 1.0), "pause", 2.0, "look first")
    assert core.State.from_json(state.to_json()) == state


def test_percentile_interpolates_like_histogram_quantile():
    w = window(90, seconds=0.01) + window(10, seconds=0.9)
    assert w.percentile(50) <= 0.01 and 0.75 < w.percentile(99) <= 1.0


@pytest.mark.parametrize("percent, expected", [
    (5, [("v1", 6650), ("v3", 2850), ("canary", 500)]),
    (100, [("v1", 0), ("v3", 0), ("canary", 10000)]),
    (0, [("v1", 7000), ("v3", 3000), ("canary", 0)]),
])
def test_weights_put_the_canary_last(percent, expected):
    assert core.weights(["v1", "canary", "v3"], [70, 5, 30], "canary", percent) == expected


def test_sticky_clients_stay_on_the_canary_while_it_grows():
    conf = split.link(split.prepare(split.SCHEMA.validate({
        "upstreams": [{"upstream": "v1", "weight": 9}, {"upstream": "v2", "weight": 1,
                                                        "group": "canary"}],
        "rollout": {}})), lambda ref, where: Upstream(ref, ()))
    keys = [f"client-{i}" for i in range(3000)]        # fixed: the figures cannot flake
    before = set()
    for percent in (5, 25, 50, 100):
        on = {k for k in keys if split.place_in_rollout(conf, percent, k)[0] == "canary"}
        assert before <= on
        assert abs(len(on) / len(keys) - percent / 100) < 0.03
        before = on


def test_ab_arms_keep_their_keys_while_the_canary_grows():
    """Two baseline groups 2:1 beside a canary: a key moves only from its arm to the canary,
    never between arms, and the arms share what is left 2:1 at every step."""
    conf = split.link(split.prepare(split.SCHEMA.validate({
        "upstreams": [{"upstream": "a", "weight": 2}, {"upstream": "b", "weight": 1},
                      {"upstream": "c", "weight": 5, "group": "canary"}],
        "rollout": {}})), lambda ref, where: Upstream(ref, ()))
    keys = [f"client-{i}" for i in range(6000)]        # fixed: the figures cannot flake
    first = {k: split.place_in_rollout(conf, 0, k)[0] for k in keys}
    assert set(first.values()) == {"a", "b"}
    for percent in (10, 30, 60, 90):
        now = {k: split.place_in_rollout(conf, percent, k)[0] for k in keys}
        moved = {k for k in keys if now[k] != first[k]}
        assert all(now[k] == "canary" for k in moved)
        arms = Counter(now.values())
        assert abs(arms["canary"] / len(keys) - percent / 100) < 0.03
        assert abs(arms["a"] / (arms["a"] + arms["b"]) - 2 / 3) < 0.04


def test_rolled_back_canary_gets_nobody_even_by_rule():
    conf = split.link(split.prepare(split.SCHEMA.validate({
        "upstreams": [{"upstream": "v1", "weight": 9}, {"upstream": "v2", "weight": 1,
                                                        "group": "canary"}],
        "rules": [{"header": {"X-Beta": "1"}, "upstream": "canary"}],
        "rollout": {}})), lambda ref, where: Upstream(ref, ()))

    class View:
        def __init__(self, weight):
            self.weight = weight

        def current(self, route_id, ident):
            return {"weight": self.weight, "window": "w"}
    from gwserver.services import Services
    for weight, expected in ((0.0, "v1"), (50.0, "canary")):
        ctx = RequestContext("10.0.0.1", "http", Services(rollouts=View(weight)))
        ctx.headers.append((b"X-Beta", b"1"))
        ctx.header_map[b"x-beta"] = b"1"
        assert split.access(conf, ctx) is None
        assert ctx.vars["split_group"] == expected


def test_a_latency_gate_is_judged_on_the_answers_slower_than_its_bound():
    """A bound between two histogram edges (0.25 between 0.2 and 0.3): interpolated in that
    bucket, 40 answers of 0.21 s made a p90 of 0.29 s, and a canary under its bound failed.
    Counted against the bound itself, it holds; and 5 of 40 over it (12.5%) fail p90."""
    conf = rollout(gates=[{"kind": "latency", "percentile": 90, "max": 0.25}])
    bounds = (0.25,)

    def measured(times):
        buckets = [0] * (len(core.LATENCY_BOUNDS) + 1)
        for t in times:
            buckets[core.bucket_of(t)] += 1
        return core.Window(len(times), 0, tuple(buckets),
                           tuple((b, sum(t > b for t in times)) for b in bounds))
    fast = measured([0.21] * 40)
    [verdict] = core.evaluate(conf, fast, HEALTHY)
    assert verdict.ok is True and verdict.value > 0.25, verdict     # the estimate says over
    [verdict] = core.evaluate(conf, measured([0.21] * 35 + [0.28] * 5), HEALTHY)
    assert verdict.ok is False and "12.5% of answers slower" in verdict.reason, verdict
    # summed over workers and hosts, and through the files and stores they travel in
    assert core.Window.from_list((fast + fast).to_list()).share_slower(0.25) == 0.0
    assert (fast + core.Window.from_list([1, 0, [0], [[0.25, 1]]])).slower == ((0.25, 1),)
    # counts of a window from before the gate was counted: the estimate, as before
    assert core.Window(40, 0, fast.buckets).share_slower(0.25) is None


def test_baseline_groups_all_of_weight_0_share_evenly_in_weights_and_placement():
    """The rollouts helper's reported weights and split's placement read one rule: baseline
    groups whose configured weights are all 0 share what the canary leaves evenly."""
    assert core.weights(["a", "b", "c"], [0, 0, 5], "c", 10) == \
        [("a", 4500), ("b", 4500), ("c", 1000)]
    conf = split.link(split.prepare(split.SCHEMA.validate({
        "upstreams": [{"upstream": "a", "weight": 0}, {"upstream": "b", "weight": 0},
                      {"upstream": "c", "weight": 5, "group": "canary"}],
        "rollout": {}})), lambda ref, where: Upstream(ref, ()))
    placed = Counter(split.place_in_rollout(conf, 10, str(uuid.uuid4()))[0]
                     for _ in range(4000))
    assert abs(placed["a"] - placed["b"]) < 400 and abs(placed["canary"] / 4000 - 0.1) < 0.03


def test_a_step_is_held_its_interval_on_the_deciders_own_clock_too():
    """A step whose ``since`` was written by a clock 10 minutes behind (an operator's host
    resuming it) is not promoted until the decider has itself seen it for ``interval``; one
    written by a clock ahead is not held for longer."""
    conf = rollout()
    state = core.start(conf, "r1", now=0.0)
    held, _ = core.decide(conf, state, HEALTHY, HEALTHY, 600.0, seen_for=2.0)
    assert held is state
    moved, _ = core.decide(conf, state, HEALTHY, HEALTHY, 600.0, seen_for=10.0)
    assert (moved.step, moved.weight) == (1, 25.0)
    # a writer 10 minutes ahead: its step is not held 10 minutes more
    ahead, _ = core.decide(conf, state, HEALTHY, HEALTHY, -600.0, seen_for=10.0)
    assert (ahead.step, ahead.weight) == (1, 25.0)
    # and a failed gate still ends the step at once, however short the decider saw it
    failed, _ = core.decide(conf, state, window(100, failures=50), HEALTHY, 1.0, seen_for=0.0)
    assert failed.status == core.ROLLED_BACK


def test_a_bound_only_some_counts_measured_is_not_counted_in_their_sum():
    """Counts from a host (or a replaced worker) whose gates had other bounds never measured
    answers against this one: summed, its count over every answer understated the share."""
    fresh = core.Window(2, 0, window(2, seconds=0.5).buckets, ((0.25, 2),))
    old = core.Window(40, 0, window(40, seconds=0.5).buckets, ((1.0, 0),))
    both = fresh + old
    assert both.requests == 42 and both.share_slower(0.25) is None
    verdict, = core.evaluate(rollout(gates=[{"kind": "latency", "percentile": 90,
                                              "max": 0.25}]), both, HEALTHY)
    assert verdict.ok is False, verdict         # judged on the histogram: p90 ~0.7 s
    # counted on both sides, or added to an empty window, it is kept
    assert (fresh + fresh).share_slower(0.25) == 1.0
    assert (core.Window() + fresh).slower == fresh.slower == (fresh + core.Window()).slower


def test_a_group_only_claim_rules_reach_is_no_baseline_of_a_rollout():
    """Baseline groups that all weigh 0 share the rest 1 each, but for one only claim or
    consumer rules lead to (a staff-only backend): it stays at 0, and a rollout with no
    other baseline is refused."""
    from gwserver.core.chain import build_chain
    from gwserver.plugins import load_registry
    staff = {"claim": None, "cookie": None, "query": None,
             "header": {"X-Consumer-ID": "partner"}, "upstream": "staff"}
    assert core.weights(["v1", "staff", "canary"], [0, 0, 1], "canary", 10,
                        {"staff": (staff,)}) == [("v1", 9000), ("staff", 0), ("canary", 1000)]
    conf = {"upstreams": [{"upstream": "staff", "weight": 0},
                          {"upstream": "v2", "weight": 1, "group": "canary"}],
            "rules": [{"header": {"X-Consumer-ID": "partner"}, "upstream": "staff"}],
            "rollout": {}}
    with pytest.raises(ConfigError) as caught:
        build_chain("route r", {"split": conf}, None, load_registry())
    assert "a rollout needs a baseline group anyone may get" in str(caught.value)
