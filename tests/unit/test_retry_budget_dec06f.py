"""(Review attack pass dec06f, on a4e739c.) A worker whose traffic is in a bucket 2 s old
("2 s into its traffic", counted in whole seconds: as little as a second and a bit) but that
told none of it yet (its last publish came just before its first request, and the next came
late: the tick's 50 ms, or a request that held the worker) took its part by traffic as
"no larger than the others'" with the others' at 0: a part of 0. Alone on a host of one
worker (no peer ever publishes), a burst after a quiet while was held to the floor: 10
retries where the budget left 60. With nothing told on either side its part is 1/N, as at
any start (1 with one worker)."""
from gwserver.core.health import RetryBudget


def burst_told_nothing(budget):
    """A quiet while published (told 0) at 5.99, a burst's 100 failing requests booked at
    5.995 (its bucket: second 5), and the next publish late: retries asked at 7.01 on."""
    budget.published(5.99)
    for _ in range(100):
        budget.request()
    budget.totals(5.995)
    return sum(budget.try_retry(7.01 + i / 10_000) for i in range(80))


def test_a_single_worker_that_told_nothing_yet_spends_what_is_left():
    budget = RetryBudget(percent=50, min_per_second=1, workers=1)   # 10 + 50 % of 100
    assert burst_told_nothing(budget) == 60


def test_with_nothing_told_on_either_side_a_worker_spends_an_even_share():
    budget = RetryBudget(percent=50, min_per_second=1, workers=4)
    assert burst_told_nothing(budget) == 15         # a quarter of 60, not of the floor's 10
