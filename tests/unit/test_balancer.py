import collections

import pytest

from gwserver.core.balancer import SmoothWeighted
from gwserver.core.routes import Target


def targets(*weights):
    return [Target(f"http://h{i}:80", "http", f"h{i}", 80, w) for i, w in enumerate(weights)]


def test_smooth_order_matches_nginx():
    a, b, c = targets(5, 1, 1)
    balancer = SmoothWeighted([a, b, c])
    order = [balancer.pick().host for _ in range(7)]
    assert order == ["h0", "h0", "h1", "h0", "h2", "h0", "h0"]


@pytest.mark.parametrize("weights", [(1, 1), (3, 1), (1, 2, 7), (10, 0, 5)])
def test_distribution_follows_weights_exactly_per_cycle(weights):
    balancer = SmoothWeighted(targets(*weights))
    total = sum(weights)
    counts = collections.Counter(balancer.pick().host for _ in range(total * 100))
    assert counts == {f"h{i}": w * 100 for i, w in enumerate(weights) if w}


def test_avoid_skips_tried_or_down_targets():
    ts = targets(1, 1, 1)
    balancer = SmoothWeighted(ts)
    for _ in range(10):
        assert balancer.pick(avoid={ts[0], ts[1]}) is ts[2]
    assert balancer.pick(avoid=set(ts)) in ts      # nothing left: still answers
