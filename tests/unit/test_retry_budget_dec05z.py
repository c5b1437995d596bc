"""(Review attack pass dec05z, 3.) The share of the retry budget a worker spends between two
publishes was its requests now against the others' as published, up to a second before: in
the first second of a burst after a trickle (every worker of 4 had one request in the window,
and published it), each worker's 100 new failing requests made its share 101/104 of what
was left, and each spent nearly all of it (49 retries where the host's budget was 51: four
workers, four times the budget, what 680429e's share was there to stop)."""
import math

from gwserver.core.health import RetryBudget


def burst(budget, requests=100):
    """A trickle, published (one request of its own, one of each other worker's), then a
    burst of failing requests within a second, each asking a retry: the retries granted."""
    budget.request()
    budget.published(1.0)
    budget.peers = (3, 0)
    granted = 0
    for i in range(requests):
        budget.request()
        granted += budget.try_retry(5.0 + i / (2 * requests))
    return granted


def test_a_burst_after_a_trickle_spends_a_share_of_the_budget():
    budget = RetryBudget(percent=20, min_per_second=3, workers=4)
    granted = burst(budget)
    host_budget = 30 + 0.2 * 104                # the floor, and 20 % of the host's requests
    assert granted <= math.ceil(host_budget / 4), granted
    # a worker that told the others of all the traffic still has all of what is left
    budget = RetryBudget(percent=20, min_per_second=3, workers=4)
    for _ in range(200):
        budget.request()
    budget.published(1.0)
    budget.peers = (0, 0)
    granted = 0
    for i in range(100):
        budget.request()
        if i % 2:
            granted += budget.try_retry(3.5 + i / 200)
    assert granted == 50        # 30 + 20 % of 300 = 90 left: all its own to spend


def test_a_quiet_workers_retries_keep_an_even_share_of_the_floor():
    """(A full CI run, after 8f14cdb.) A worker with a small part of the traffic (2 of 402
    requests) could retry once between two publishes: a target refusing connections, one
    retry a second, found its second retry denied while the floor (30) was untouched, and
    the client got the 502. An even share of the floor left is each worker's at least."""
    budget = RetryBudget(percent=20, min_per_second=3, workers=4)
    for _ in range(2):
        budget.request()
    budget.published(1.0)
    budget.peers = (400, 0)
    assert [budget.try_retry(1.5 + i / 10) for i in range(3)] == [True] * 3
