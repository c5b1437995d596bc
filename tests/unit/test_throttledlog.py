import logging
import re

import pytest

from gwserver.core.throttledlog import FORGET_AFTER, ThrottledLog


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def lines(caplog):
    return [record.getMessage() for record in caplog.records]


def told(messages):
    """Events the lines account for: each line, and the ones it says it left out."""
    return len(messages) + sum(int(n) for m in messages
                               for n in re.findall(r"and (\d+) more like it", m))


LOG = logging.getLogger("t.throttle")


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def throttled(clock):
    return ThrottledLog(clock=clock)


def test_one_line_a_second_per_kind_and_the_next_counts_the_rest(caplog, clock, throttled):
    with caplog.at_level(logging.INFO, logger="t.throttle"):
        for n in range(5):
            throttled.log(LOG, logging.INFO, "refused", "refused %d", n)
        throttled.log(LOG, logging.INFO, "handshake", "handshake failed")   # another kind
        clock.now += 0.99
        throttled.log(LOG, logging.INFO, "refused", "refused late")
        clock.now += 0.02
        throttled.log(LOG, logging.INFO, "refused", "refused %s", "again")
        clock.now += 5
        throttled.log(LOG, logging.INFO, "refused", "refused quiet")
    assert lines(caplog) == [
        "refused 0", "handshake failed",
        "refused again (and 5 more like it since the last such line, not logged)",
        "refused quiet"]


def test_a_burst_that_stops_is_told_by_the_next_flush(caplog, clock, throttled):
    """Nothing may be lost when no later line of the kind comes: the tick's flush writes
    the last line left out with the count of the others."""
    with caplog.at_level(logging.INFO, logger="t.throttle"):
        for n in range(300):
            throttled.log(LOG, logging.INFO, ("refused", "r1"), "refused %d", n)
        throttled.flush()                       # within the second: nothing yet
        assert lines(caplog) == ["refused 0"]
        clock.now += 1.0
        throttled.flush()
        throttled.flush()                       # once told, not again
    assert lines(caplog) == [
        "refused 0", "refused 299 (and 298 more like it since the last such line, not logged)"]
    assert told(lines(caplog)) == 300


def test_flush_everything_tells_what_a_worker_about_to_exit_left_out(caplog, clock, throttled):
    with caplog.at_level(logging.INFO, logger="t.throttle"):
        for n in range(3):
            throttled.log(LOG, logging.WARNING, "k", "line %d", n)
        throttled.flush(everything=True)
    assert told(lines(caplog)) == 3 and lines(caplog)[-1].startswith("line 2 (and 1 more")


def test_quiet_kinds_are_forgotten(caplog, clock, throttled):
    for n in range(1000):                       # kinds that come and go (route ids)
        throttled.log(LOG, logging.WARNING, ("route", n), "route %d", n)
    clock.now += FORGET_AFTER + 1
    throttled.flush()
    assert throttled._kinds == {}


def test_the_traceback_of_a_line_left_out_is_kept_for_the_flush(caplog, clock, throttled):
    with caplog.at_level(logging.INFO, logger="t.throttle"):
        for n in range(2):
            try:
                raise ValueError(f"bug {n}")
            except ValueError as exc:
                throttled.log(LOG, logging.ERROR, "bug", "unhandled", exc_info=exc)
        clock.now += 1
        throttled.flush()
    assert [str(r.exc_info[1]) for r in caplog.records] == ["bug 0", "bug 1"]


def test_a_level_that_is_off_neither_writes_nor_counts(caplog, clock, throttled):
    with caplog.at_level(logging.WARNING, logger="t.throttle"):
        for _ in range(3):
            throttled.log(LOG, logging.DEBUG, "quiet", "not wanted")
        throttled.log(LOG, logging.WARNING, "quiet", "wanted")
        clock.now += 2
        throttled.flush()
    assert lines(caplog) == ["wanted"]
