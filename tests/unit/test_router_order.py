"""The router keeps its match order in two places: ``_walk`` (matching, which binds params and
stops at the first route that takes the request) and ``_in_order`` (every route on a path, for
CORS preflights: core.router._on_path). A preflight judged by a route other than the one its
request reaches would approve what that route never consented to, so the two must agree.

Tables drawn at random (seeded: a failure replays) over a few segments, with static, param
and catch-all positions, exact and prefix routes, methods and hosts, matched against paths
drawn from the same segments: the route ``match`` returns is always the first route
``_on_path`` yields that serves the method, and none when ``_on_path`` yields none that does.
"""
import random

import pytest

from gwserver.errors import MethodNotAllowed, RouteNotFound
from .helpers import compile_routes

SEGMENTS = ["a", "b", "c"]
HOSTS = [None, ["a.example"], ["*.example"]]
METHODS = [None, ["GET"], ["POST"]]


def random_pattern(rng):
    parts = []
    for position in range(rng.randint(0, 3)):
        kind = rng.random()
        if kind < 0.6:
            parts.append(rng.choice(SEGMENTS))
        elif kind < 0.85:
            parts.append(f":p{position}")
        else:
            parts.append("*rest")
            break
    return "/" + "/".join(parts)


def random_table(rng, count):
    specs = []
    for n in range(count):
        spec = {"id": f"r{n}", "paths": [random_pattern(rng)]}
        if spec["paths"][0] != "/" and "*" not in spec["paths"][0] and rng.random() < 0.3:
            spec["prefix"] = True
        if rng.random() < 0.3:
            spec["priority"] = rng.randint(-2, 2)
        for key, choices in (("hosts", HOSTS), ("methods", METHODS)):
            value = rng.choice(choices)
            if value is not None:
                spec[key] = value
        specs.append(spec)
    return specs


def random_path(rng):
    parts = [rng.choice(SEGMENTS + ["x", ""]) for _ in range(rng.randint(0, 4))]
    return "/" + "/".join(parts)


def own_path(spec):
    """A path the route's pattern takes (its params and catch-all filled in)."""
    return "/".join("x" if part.startswith(":") else "x/y" if part.startswith("*") else part
                    for part in spec["paths"][0].split("/")) or "/"


def first_on_path(router, method, host, path):
    for route in router._on_path(path[1:].split("/"), host):
        if route.methods is None or method in route.methods:
            return route
    return None


def routed_in_order(seed):
    """Match a seed's drawn table against its paths; return how many were routed."""
    rng = random.Random(seed)
    specs = random_table(rng, rng.randint(1, 12))
    router, problems = compile_routes(specs)
    assert problems == [], problems
    paths = [random_path(rng) for _ in range(60)] + [own_path(spec) for spec in specs]
    routed = 0
    for path in paths:
        method, host = rng.choice(["GET", "POST"]), rng.choice(["a.example", "b.example", "other"])
        expected = first_on_path(router, method, host, path)
        try:
            route, _ = router.match(method, host, path)
        except (RouteNotFound, MethodNotAllowed):
            route = None
        assert (route and route.id) == (expected and expected.id), \
            (seed, method, host, path, [r.id for r in router._on_path(path[1:].split("/"),
                                                                       host)])
        routed += route is not None
    return routed


@pytest.mark.parametrize("seed", range(200))
def test_match_takes_the_first_route_that_in_order_lists(seed):
    routed_in_order(seed)


def test_the_drawn_tables_route_a_good_share_of_their_paths():
    """Not a check of misses alone: a good share of the drawn requests find a route."""
    routed = sum(routed_in_order(seed) for seed in range(200))
    assert routed > 200 * 60 * 0.2, routed
