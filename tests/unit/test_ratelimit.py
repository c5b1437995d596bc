"""Rate-limit arithmetic with a controlled clock."""
import pytest

from gwserver.core.ratelimit import sliding_window, token_bucket


def run(algorithm, times, **kw):
    state, allowed = None, []
    for now in times:
        if algorithm == "token_bucket":
            decision, state = token_bucket(state, now=now, **kw)
        else:
            decision, state = sliding_window(state, now=now, **kw)
        allowed.append(decision.allowed)
    return allowed, decision


@pytest.mark.parametrize("times, burst, expected", [
    ([0, 0, 0, 0], 0, [True, False, False, False]),            # burst 0: one at a time
    ([0, 0.1, 0.2, 0.3], 0, [True, True, True, True]),         # 10/s, spaced 100 ms: all pass
    ([0, 0.05, 0.1], 0, [True, False, True]),
    ([0] * 6, 5, [True] * 5 + [False]),                        # burst 5
])
def test_token_bucket(times, burst, expected):
    allowed, _ = run("token_bucket", times, rate=10, per=1, burst=burst)
    assert allowed == expected


def test_token_bucket_headers():
    _, decision = run("token_bucket", [0, 0, 0], rate=10, per=1, burst=2)
    assert (decision.allowed, decision.limit, decision.remaining) == (False, 10, 0)
    assert decision.retry_after == pytest.approx(0.1)
    assert decision.reset == pytest.approx(0.2)


def test_token_bucket_rate_over_time():
    """200/s offered 1,000/s for 10 s (t = 0 .. 9.999) admits the ideal 2,000."""
    times = [i / 1000 for i in range(10_000)]
    allowed, _ = run("token_bucket", times, rate=200, per=1, burst=0)
    assert sum(allowed) == 2000


@pytest.mark.parametrize("times, expected", [
    ([0, 1, 2, 3], [True, True, True, False]),                 # 3 per 10 s
    ([0, 1, 2, 10.5, 10.6], [True, True, True, False, False]), # previous window still weighs
    ([0, 1, 2, 19.9], [True, True, True, True]),               # almost slid out
    ([0, 1, 2, 25], [True, True, True, True]),                 # two windows later: empty
])
def test_sliding_window(times, expected):
    allowed, _ = run("sliding_window", times, rate=3, per=10)
    assert allowed == expected


def test_sliding_window_rate_over_time():
    times = [i / 1000 for i in range(10_000)]
    allowed, _ = run("sliding_window", times, rate=200, per=1)
    assert 1990 <= sum(allowed) <= 2010


def test_burst_absorbs_random_arrival_gaps():
    """Why burst matters: with random (Poisson) arrivals at 5x the rate, a burst-0 bucket
    (one token) throws away the refill of every gap longer than 1/rate and admits ~17% less
    than the rate; a small burst, or the sliding window, admits the rate."""
    import random
    rng = random.Random(1)
    times, t = [], 0.0
    while t < 10:
        times.append(t)
        t += rng.expovariate(1000)
    strict, _ = run("token_bucket", times, rate=200, per=1, burst=0)
    with_burst, _ = run("token_bucket", times, rate=200, per=1, burst=10)
    window, _ = run("sliding_window", times, rate=200, per=1)
    assert sum(strict) < 0.9 * 2000
    assert 2000 <= sum(with_burst) <= 2010
    assert 1960 <= sum(window) <= 2010
