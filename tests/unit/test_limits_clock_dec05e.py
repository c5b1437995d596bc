"""States written on a clock ahead of the one reading them (a clock stepped back, another
host's): the per-host machines wait no longer than any state they write themselves, as the
Redis scripts do (tests/integration/test_limits_attack_dec05e.py)."""
from gwserver.core import ratelimit
from gwserver.core.breaker import HALF_OPEN, OPEN, initial_state, step

CONF = {"error_rate": 0.5, "window": 10.0, "min_requests": 4, "open_for": 5.0,
        "max_open_for": 12.0, "half_open_probes": 1}
NOW = 1_800_000_000.0


def test_an_open_breaker_from_a_clock_an_hour_ahead_waits_at_most_its_longest_open():
    state = {**initial_state(), "state": OPEN, "epoch": 1, "trips": 1, "until": NOW + 3600}
    state, admitted, _ = step(state, CONF, NOW, (), 1)
    assert (state["state"], admitted) == (OPEN, 0) and state["until"] <= NOW + 12.0
    state, admitted, transitions = step(state, CONF, NOW + 12.0, (), 1)
    assert (state["state"], admitted, transitions) == (HALF_OPEN, 1, [HALF_OPEN])


def test_answers_counted_in_future_buckets_leave_the_window():
    future = int((NOW + 3600) / 1.0)
    state = {**initial_state(), "buckets": [[future, 0, 3]]}
    state, _, _ = step(state, CONF, NOW, [(0, 0, 1)], 1)
    # one failure of one answer now: below min_requests, closed (the 3 "ahead" are gone)
    assert state["state"] == "closed" and sum(b[2] for b in state["buckets"]) == 1


def test_an_adaptive_window_begun_on_a_clock_ahead_ends_on_time():
    conf = {"rate": 100, "adaptive": {"floor": 10, "ceiling": 1000, "window": 10.0,
                                      "raise_above": 0.95, "lower_below": 0.7,
                                      "step_up": 0.2, "step_down": 0.2}}
    state = {"rate": 100, "since": NOW + 3600, "ok": 0, "failed": 0}
    state = ratelimit.adapt(state, conf, NOW, 0, 5)
    state = ratelimit.adapt(state, conf, NOW + 10.0, 0, 5)
    assert state["rate"] == 80


def test_a_decision_that_waited_for_the_lock_past_a_window_edge_resets_nothing(tmp_path,
                                                                              monkeypatch):
    """Two workers of a host (two stores on one state_dir) at a window's edge: worker A read
    the clock just before the edge, then waited for the table's lock while worker B, past
    the edge, decided. A then took B's newer window for one long past and reset the key,
    the full window's count with it: 3 a minute became 3 more at every edge."""
    from gwserver.state import store as store_module
    a, b = (store_module.LocalStore(str(tmp_path)) for _ in range(2))
    edge = 1_800_000_000.0 - 1_800_000_000.0 % 60 + 60     # a whole minute
    clock = [edge - 30]
    monkeypatch.setattr(store_module.time, "time", lambda: clock[0])
    args = ("sliding_window", "login:ip:192.0.2.7", 3, 60, 0)
    assert [a.decide(*args).allowed for _ in range(4)] == [True, True, True, False]
    take_lock = a._locked

    def behind_b_past_the_edge():
        clock[0] = edge + 0.001
        assert not b.decide(*args).allowed      # the window before still weighs in full
        take_lock()
    clock[0] = edge - 0.001
    monkeypatch.setattr(a, "_locked", behind_b_past_the_edge)
    assert not a.decide(*args).allowed
    monkeypatch.setattr(a, "_locked", take_lock)
    clock[0] = edge + 0.002
    assert not b.decide(*args).allowed
