import logging

from gwserver.core.throttledlog import ThrottledLog


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def lines(caplog):
    return [record.getMessage() for record in caplog.records]


def test_one_line_a_second_per_kind_and_the_next_counts_the_rest(caplog):
    clock = Clock()
    throttled = ThrottledLog(logging.getLogger("t.throttle"), clock=clock)
    with caplog.at_level(logging.INFO, logger="t.throttle"):
        for n in range(5):
            throttled.log(logging.INFO, "refused", "refused %d", n)
        throttled.log(logging.INFO, "handshake", "handshake failed")   # another kind
        clock.now += 0.99
        throttled.log(logging.INFO, "refused", "refused late")
        clock.now += 0.02
        throttled.log(logging.INFO, "refused", "refused %s", "again")
        clock.now += 5
        throttled.log(logging.INFO, "refused", "refused quiet")
    assert lines(caplog) == [
        "refused 0", "handshake failed",
        "refused again (and 5 more like it since the last such line, not logged)",
        "refused quiet"]


def test_a_level_that_is_off_neither_writes_nor_counts(caplog):
    clock = Clock()
    throttled = ThrottledLog(logging.getLogger("t.throttle.off"), clock=clock)
    with caplog.at_level(logging.WARNING, logger="t.throttle.off"):
        for _ in range(3):
            throttled.log(logging.DEBUG, "quiet", "not wanted")
        throttled.log(logging.WARNING, "quiet", "wanted")
    assert lines(caplog) == ["wanted"]
