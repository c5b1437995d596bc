"""(Flaky-test hunt dec06b.) test_retry_tickets_attack_dec05o's bound on a host's retries (4
workers, a budget of 10, at most 24) failed under load: 29 and 26 retries, where the share
each worker spends between two publishes was there to hold it near 10 (9-16 measured when it
was written; a worker spent the whole 10 alone in 6 runs of 16, the others' files showed).

1. A worker that had told the others of no traffic yet (its last publish came before its
   first request) took its part by its requests now against the others' as published: one
   peer's publish of 2 requests made a worker with 20 unpublished ones own 20/22 of what was
   left, and every worker in its place spent nearly all of the host's budget before it
   published once (up to 31 retries for 10 in a simulation of 4 workers). Its part is no
   larger than the others' now until it told its own (a worker whose traffic is new among
   others that told theirs keeps its part: test_retry_budget_dec05y).
2. Any count of the others' was taken for all of their traffic: in a fresh host's burst each
   worker published its first request (a count of 1), then at its next publish a worker told
   67 requests against the others' 3 and took 67/70 of what was left, the whole budget for
   one worker before the others' retries were seen. Its part by traffic waits for 2 s of its
   own traffic now (the others had the time to tell theirs), 1/N before, as the docstring
   said. Measured after: 12-19 retries in 20 runs under load.
"""
import math

from gwserver.core.health import RetryBudget


def test_a_worker_that_told_no_traffic_yet_spends_an_even_share():
    budget = RetryBudget(percent=0, min_per_second=1, workers=4)    # 10 retries a window
    budget.published(10.2)          # its tick's publish, before any request: told 0
    granted = 0
    for i in range(20):
        budget.request()
        if i == 5:
            budget.peers = (2, 0)   # a peer published its first 2 requests, no retry yet
        granted += budget.try_retry(10.5 + i / 100)
    assert granted == math.ceil(10 / 4), granted       # not 9 of the host's 10


def test_held_once_told_a_worker_with_all_the_traffic_spends_all_that_is_left():
    budget = RetryBudget(percent=25, min_per_second=0.1, workers=8)
    for _ in range(100):
        budget.request()
    budget.published(12.0)          # told 100; no peer has traffic
    for _ in range(100):
        budget.request()
    # 2 s into its traffic: all of what is left is its own (1 + 50 retries' worth)
    assert sum(budget.try_retry(14.5 + i / 1000) for i in range(60)) == 51


def test_a_worker_that_told_no_traffic_yet_takes_no_larger_part_than_the_others():
    budget = RetryBudget(percent=50, min_per_second=1, workers=4)
    budget.published(10.2)
    budget.peers = (30, 0)          # theirs, published; none of its 90 below is in it
    for _ in range(90):
        budget.request()
    # 10 + 50 % of 120 = 70 left: 30 of 120 of it at most (18), not 90 of 120 (53)
    assert sum(budget.try_retry(10.5 + i / 1000) for i in range(80)) == 18


def test_the_others_first_publishes_are_not_taken_for_all_their_traffic():
    """(2.) Every worker of 4 published its first request (a count of 1 each), then a
    second's burst; at its next publish a worker told 67 requests against the others' 3 and
    took 67/70 of what was left: with 5 of the host's 10 spent by itself, 7 more for it alone,
    the whole budget for one worker before the others' retries were seen (its traffic is
    under 2 s old: the others have not had the time to tell theirs)."""
    budget = RetryBudget(percent=0, min_per_second=1, workers=4)    # 10 retries a window
    budget.request()
    budget.published(3.45)          # told 1
    budget.peers = (3, 0)           # the others' first publishes: a request each
    first = 0
    for i in range(66):
        budget.request()
        first += budget.try_retry(3.5 + i / 100)
    assert first == 3               # a quarter of 10, rounded up (as before)
    budget.published(4.46)          # told 67
    budget.peers = (5, 0)
    then = sum(budget.try_retry(4.5 + i / 100) for i in range(40) if not budget.request())
    assert then == 2, then          # a quarter of the 7 left, not 7 of 7
