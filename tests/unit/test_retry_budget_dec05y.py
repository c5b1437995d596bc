"""(Attack pass dec05y, 5.) Between publishes a worker's share of the retry budget was 1/N
of what was left, whatever its part of the traffic: a worker with all of it never reached
the budget (16 workers: under half the retries of 20 % failing, within a 20 % budget)."""
from gwserver.core.health import RetryBudget


def run(budget, seconds, per_second=100, failing_every=5, since=0):
    """Requests each second, every ``failing_every``-th asking a retry, a publish at each
    second's end: (retries granted, asked) from second ``since`` on."""
    granted = asked = 0
    for second in range(seconds):
        for i in range(per_second):
            budget.request()
            if i % failing_every == 0:
                ok = budget.try_retry(second + i / per_second)
                if second >= since:
                    asked += 1
                    granted += ok
        budget.published(second + 1)
    return granted, asked


def test_a_worker_with_all_the_traffic_reaches_the_whole_budget():
    granted, asked = run(RetryBudget(percent=20, min_per_second=3, workers=16), 40, since=20)
    assert granted == asked


def test_a_worker_whose_traffic_is_new_spends_a_share_of_n():
    budget = RetryBudget(percent=0, min_per_second=1.6, workers=16)     # 16 in the window
    assert run(budget, 1) == (1, 20)        # the others may be spending as well: 16 / 16
    busy = RetryBudget(percent=0, min_per_second=1.6, workers=16)
    busy.peers = (300, 0)                   # theirs known: 100 of 400 requests are its own
    assert run(busy, 1) == (4, 20)
