"""(Attack pass dec05y, 2.) Which Retry-After values ask for a wait (proxy.asks_to_wait): any
but 0 did, so a date gone by, "-1" or a value that is none stopped a retry the policy asks
for; the first of two fields was the only one read."""
import time
from email.utils import formatdate

import pytest

from gwserver.upstream.proxy import asks_to_wait


def date(offset):
    return formatdate(time.time() + offset, usegmt=True).encode()


# A date is made when the test runs, by its offset from now: made at collection, each xdist
# worker named the test by another second, and pytest-xdist refused the whole run.
IN_AN_HOUR, AN_HOUR_AGO = pytest.param(3600, id="a date in an hour"), \
    pytest.param(-3600, id="a date an hour ago")


def value_of(value):
    return date(value) if isinstance(value, int) else value


@pytest.mark.parametrize("value", [b"30", b" 1 ", b"007", b"0.5", b"9" * 400, IN_AN_HOUR])
def test_a_wait_is_asked(value):
    assert asks_to_wait([(b"Retry-After", value_of(value))])


@pytest.mark.parametrize("value", [b"0", b" 0 ", b"00", b"", b"-1", b"soon", b"nan",
                                   AN_HOUR_AGO, b"Sat, 01 Jan 2000 00:00:00 GMT",
                                   b"Mon, 99 Foo 2026 99:99:99 GMT"])
def test_no_wait_is_asked(value):
    assert not asks_to_wait([(b"retry-after", value_of(value))])


def test_two_fields_either_asking_is_asking():
    assert asks_to_wait([(b"retry-after", b"0"), (b"retry-after", b"30")])
    assert not asks_to_wait([(b"retry-after", b"0"), (b"retry-after", b"junk")])


def test_a_date_is_read_against_the_answers_date():
    # the upstream's clock is a day behind the host's: its "in a minute" is still a wait
    behind = [(b"date", date(-86400)), (b"retry-after", date(-86400 + 60))]
    assert asks_to_wait(behind)
    ahead = [(b"date", date(86400)), (b"retry-after", date(60))]     # a day ahead: gone by
    assert not asks_to_wait(ahead)
