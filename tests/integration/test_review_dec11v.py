r"""Review of c64f6e6 (a master's stop closes its listeners itself; a run splits only at
the part right after it), Dec 11.

- split_runs read a class or a literal by its parse tree alone, which names one case of a
  letter: under re.I (the pattern's ``(?i)`` or a group's ``(?i:...)``) ``[a-z]*`` takes
  "E" too. Narrowed to the "E" right after it, the first run no longer chained on:
  ``(?i)^/(.*)E([a-z]*)E([a-z]*)\.json$`` (cubic: ~1 s on 700 "e") was counted 2, its
  ``(?i:...)`` twin 1 and ``(?i)^/api/([a-z]*)E([a-z]*)\.json$`` (quadratic) 1: no word.
- A pattern was anchored only if it began with ^: ``(?i)^/product/(.*)-(\d+)\.html$`` was
  taken for an unanchored search, one more run, and warned of (2) as its twin is not."""
import re
import time

import pytest

from gwserver.core.schema import split_runs

from ..conftest import check_conf, route as make_route

CUBIC = r"(?i)^/(.*)E([a-z]*)E([a-z]*)\.json$"


def near_miss_seconds(length):
    """The best of three times CUBIC takes to fail on "/" + "e" * length."""
    times = []
    for _ in range(3):
        started = time.perf_counter()
        assert re.search(CUBIC, "/" + "e" * length) is None
        times.append(time.perf_counter() - started)
    return min(times)


def test_check_warns_of_runs_that_take_a_letter_in_either_case(upstream, tmp_path):
    # A near miss twice as long takes ~8 times as long (cubic; 700 bytes: ~1 s): a ratio, not
    # a time, so a faster host shows it too. The best of three runs each, against noise.
    assert near_miss_seconds(400) > 4 * near_miss_seconds(200)
    route = make_route("r", ["/docs"], upstream.url, prefix=True,
                       plugins={"rewrite": {"path": {"match": CUBIC, "replace": "/x"}}})
    code, out = check_conf(tmp_path, {"server": {"bind": ["127.0.0.1:8080"]},
                                      "routes": [route]})
    assert code == 0, out
    assert "has 3 runs in a row that can take the same characters" in out, out


@pytest.mark.parametrize("pattern, runs", [
    (CUBIC, 3),
    (r"^/(?i:(.*)E([a-z]*)E([a-z]*))\.json$", 3),      # a group's flag
    (r"(?i)^/api/([a-z]*)E([a-z]*)\.json$", 2),         # 6 KB of "e": 0.25 s
    (r"(?i)^/(.*)-X([a-z]*)-X([a-z]*)\.json$", 1),      # the letters stop at a dash: linear
    # without re.I, the case still tells them apart
    (r"^/api/([a-z]*)E([a-z]*)\.json$", 1),
    (r"(?i)^/product/(.*)-(\d+)\.html$", 1),
])
def test_a_run_under_ignorecase_takes_both_cases(pattern, runs):
    assert split_runs(pattern, True) == runs
