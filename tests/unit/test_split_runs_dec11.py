"""Runs in a row that can take the same characters, then a part that can fail (Dec 11): re
tries every split of a near miss among them, ~n^k steps (a rewrite's path.match
``^/a/(.*)-(.*)-(.*)\\.json$`` took 1.4 s on 1,000 dashes, minutes on an 8 KB path). Only
nested repeats (exponential) were warned of."""
import pytest

from gwserver.core.schema import split_runs
from gwserver.plugins import load_registry
from gwserver.settings import plugin_warnings


@pytest.mark.parametrize("pattern, searched, runs", [
    (r"^/a/(.*)-(.*)-(.*)\.json$", True, 3),
    (r"^/x/(.+)/(.+)/edit$", True, 2),
    (r"(.*)\.json", True, 2),                   # the search's start positions are a run
    (r"(.*)\.json", False, 1),                  # fullmatch'ed: one way
    # ends with the runs: nothing after them can fail, one split is found
    (r"^/a/(.*)/(.*)$", True, 1),
    (r"^/x/(.+)/(.+)$", True, 1),
    (r"^/api/v1/(.*)$", True, 0),
    (r"/api/(.*)", True, 1),
    # a run that ends at a character it cannot take splits one way
    (r"^/a/([^-]*)-(.*)\.json$", True, 1),
    (r"^/x/([^/]+)/([^/]+)/edit$", True, 1),
    (r"^/users/(\d+)/posts/(\d+)$", True, 1),
    (r"^https://([a-z0-9-]+\.)*example\.com$", False, 0),
    (r"^/(", True, 0),                          # no pattern: its own field refuses it
])
def test_runs_that_split_a_near_miss_every_way_are_counted(pattern, searched, runs):
    assert split_runs(pattern, searched) == runs


@pytest.mark.parametrize("match, warned", [
    (r"^/a/(.*)-(.*)-(.*)\.json$", "3 runs"),
    (r"^/x/(.+)/(.+)/edit$", "2 runs"),
    (r"(.*)\.json", "2 runs in a row that can take the same characters (an unanchored "
                    "search is one)"),
    (r"^/x/([^/]+)/([^/]+)/edit$", None),
    (r"^/api/v1/(.*)$", None),
])
def test_check_warns_of_a_rewrite_whose_near_miss_costs_a_power_of_the_path(match, warned):
    plugins = {"rewrite": {"path": {"match": match, "replace": "/x"}}}
    load_registry()
    found = plugin_warnings("route r: plugins", plugins)
    if warned is None:
        assert found == []
        return
    assert len(found) == 1 and found[0].startswith("route r: plugins.rewrite: path.match"), found
    assert warned in found[0] and "make each run stop at the part after it" in found[0], found
