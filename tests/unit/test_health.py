"""Health state machines, panic mode and the retry budget with a controlled clock."""
import pytest

from gwserver.core.health import (ActiveState, Ejections, RetryBudget, probe_delay,
                                  probes_while_dead, usable)

HC = {"interval": 1.0, "max_interval": 60.0, "healthy_threshold": 2, "unhealthy_threshold": 3,
      "jitter": 0.0}


# probe results in -> (healthy after each)
@pytest.mark.parametrize("results, states", [
    ([0, 0, 0], [True, True, False]),                       # 3 failures take it out
    ([0, 0, 1, 0, 0], [True] * 5),                          # not in a row
    ([0, 0, 0, 1, 1], [True, True, False, False, True]),    # 2 successes readmit
    ([0, 0, 0, 1, 0, 1, 1], [True, True, False, False, False, False, True]),
])
def test_thresholds(results, states):
    state = ActiveState()
    seen = []
    for i, ok in enumerate(results):
        state.record(HC, bool(ok), float(i))
        seen.append(state.healthy)
    assert seen == states


def test_a_dead_target_is_probed_with_capped_exponential_backoff():
    state, now, delays = ActiveState(), 0.0, []
    for _ in range(12):
        state.record(HC, False, now)
        delays.append(state.next_at - now)
        now = state.next_at
    assert delays == [1, 1, 1, 2, 4, 8, 16, 32, 60, 60, 60, 60]
    state.record(HC, True, now)                 # the first success: back to the normal pace
    assert state.next_at - now == 1 and probe_delay(HC, state) == 1


def test_probes_in_ten_minutes_of_death():
    assert probes_while_dead(HC, 600) == 17     # 1+1+1+2+4+8+16+32 = 65 s, then every 60 s
    jittered = probes_while_dead({**HC, "jitter": 0.2}, 600, iter([1.2] * 100))
    assert 14 <= jittered <= 17


def test_passive_ejection_grows_and_respects_max_ejected_percent():
    conf = {"eject_for": 10.0, "max_eject_for": 300.0, "max_ejected_percent": 50}
    ejections = Ejections()
    assert ejections.eject("u|a", conf, 0.0, 0, 4) == 10
    assert ejections.ejected("u|a", 5.0) and not ejections.ejected("u|a", 10.5)
    assert ejections.eject("u|a", conf, 11.0, 0, 4) == 20                  # again: doubled
    assert ejections.eject("u|b", conf, 11.0, 1, 4) == 10
    assert ejections.eject("u|c", conf, 11.0, 2, 4) == 0                   # 3 of 4 > 50%
    assert ejections.eject("u|a", conf, 1000.0, 0, 4) == 10                # behaved: reset


@pytest.mark.parametrize("down, threshold, avoid, panic", [
    ((), 0.0, set(), False),
    (("a",), 0.0, {"a"}, False),
    (("a", "b"), 0.0, {"a", "b"}, False),                   # one of three left: use it
    (("a", "b", "c"), 0.0, set(), True),                    # none left: all of them
    (("a", "b"), 0.5, set(), True),                         # 1/3 up < 50%: panic
    (("a",), 0.5, {"a"}, False),                            # 2/3 up
])
def test_usable_and_panic(down, threshold, avoid, panic):
    assert usable(["a", "b", "c"], set(down), threshold) == (avoid, panic)


def test_retry_budget_is_a_share_of_recent_requests():
    budget = RetryBudget(percent=20, min_per_second=0, window=10)
    for _ in range(10):
        budget.request()
    assert [budget.try_retry(0.5) for _ in range(3)] == [True, True, False]   # 20% of 10
    for _ in range(10):
        budget.request()                # booked at 11.0: the first second left the window
    assert [budget.try_retry(11.0) for _ in range(3)] == [True, True, False]
    quiet = RetryBudget(percent=20, min_per_second=0.3, window=10)          # floor: 3
    quiet.request()
    assert [quiet.try_retry(0) for _ in range(5)] == [True, True, True, False, False]


def test_a_workers_retries_between_publishes_are_its_share_of_the_budget():
    """(Attack pass dec05o, 3.) Each of N workers spent the whole budget before the others
    saw its retries (published once a second): N times the budget at once."""
    budget = RetryBudget(percent=0, min_per_second=1, window=10, workers=4)   # floor: 10
    assert [budget.try_retry(0.5) for _ in range(4)] == [True, True, True, False]  # ceil 10/4
    budget.published(1.0)
    budget.peers = (0, 6)               # the others' retries, seen now: 10 - 3 - 6 = 1 left
    assert [budget.try_retry(1.5) for _ in range(2)] == [True, False]
    alone = RetryBudget(percent=0, min_per_second=1, window=10)               # one worker
    assert sum(alone.try_retry(0.5) for _ in range(12)) == 10


def test_a_refunded_retry_is_as_if_never_spent():
    """Proxy.retry_after: a retry whose client left in its backoff gives its slot back."""
    from gwserver.core.health import RetryBudget
    budget = RetryBudget(percent=0, min_per_second=0.2, window=10)     # 2 retries a window
    assert budget.try_retry(100.0) and budget.try_retry(100.2)
    assert not budget.try_retry(100.4)                                 # spent
    budget.refund(100.2)
    assert budget.totals(100.5) == [0, 1]
    assert budget.try_retry(100.6)                                     # its slot again
    assert not budget.try_retry(100.7)
