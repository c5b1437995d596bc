"""Choosing a target of an upstream. Pure: no clock, no sockets.

Every balancer answers ``pick(avoid, key=None)``: the next target, skipping those in ``avoid``
(tried already, or down) whenever another one is left. Callers decide what is down and when
to panic (core.health.usable).

round_robin        smooth weighted round robin, as nginx does it (ngx_http_upstream_get_peer):
                   each pick adds every target's weight to its running score, takes the highest
                   and subtracts the total from it. Weights 5:1:1 give a a b a c a a.
least_outstanding  the target with the fewest requests in flight from this worker, relative
                   to its weight; ties take weighted turns (smooth weighted round robin among
                   the tied), so idle traffic follows the weights as Envoy's weighted
                   LEAST_REQUEST does.
consistent_hash    a ring of 160 points per unit of weight (ketama): a key always maps to the
                   same target while it is up, and adding or removing a target moves only the
                   keys that target gains or loses (about 1/n of them). The ring holds at
                   most MAX_RING_POINTS: beyond that the points are shared in proportion
                   to the weights (a weight of 1,000,000 asked for 160 million points, minutes
                   of a worker's CPU and gigabytes at its first request).
"""
import bisect
import hashlib

POLICIES = ("round_robin", "least_outstanding", "consistent_hash")
POINTS_PER_WEIGHT = 160
# The ring's size cap: ~0.15 s to build in a worker (md5 and a sort), a few MB. Weights are
# up to 1,000,000 and anyone who registers a service instance sets its own: 160 points per
# unit of weight, uncapped, once stalled every worker for minutes at its first request to
# the upstream (and again at each change of its targets) and could exhaust the host's memory.
MAX_RING_POINTS = POINTS_PER_WEIGHT * 1024


def ring_sizes(targets):
    """Points on the ring per target: POINTS_PER_WEIGHT per unit of weight, or, when that
    is more than MAX_RING_POINTS in all, each divided by the smallest power of two that
    brings the whole within the cap (each at least one point): still in proportion to the
    weights. A power of two, not total / cap: a factor that follows the total changed every
    target's points whenever one target came, left or changed its weight, and keys moved
    between targets that had not changed; this one changes only when the total doubles
    or halves."""
    sizes = [POINTS_PER_WEIGHT * t.weight for t in targets]
    total, shift = sum(sizes), 0
    while total >> shift > MAX_RING_POINTS:
        shift += 1
    return sizes if not shift else [max(1, size >> shift) for size in sizes]


class SmoothWeighted:
    __slots__ = ("targets", "weights", "scores", "total")

    def __init__(self, targets):
        self.targets = [t for t in targets if t.weight > 0]
        self.weights = [t.weight for t in self.targets]
        self.scores = [0] * len(self.targets)
        self.total = sum(self.weights)

    def pick(self, avoid=(), key=None):
        # As nginx: an avoided (down, tried) target takes no part in the round, so it banks no
        # credit that would send it every request in a row once it is back.
        best, total = -1, 0
        scores, weights = self.scores, self.weights
        for i, target in enumerate(self.targets):
            if target in avoid:
                continue
            scores[i] += weights[i]
            total += weights[i]
            if best < 0 or scores[i] > scores[best]:
                best = i
        if best < 0:        # every target avoided: the plain choice among all of them
            return self.pick()
        scores[best] -= total
        return self.targets[best]


class LeastOutstanding:
    """``outstanding`` maps a target's url -> requests in flight from this worker (HTTP/1.1
    and HTTP/2 exchanges alike); the proxy keeps it. Keyed by url: two upstreams that list
    the same target share its count, which is the load that target really has.

    The load is in-flight / weight, compared exactly (cross-multiplied); targets tied on the
    least load take turns by weight (smooth weighted round robin among them), so an idle or
    lightly used upstream gets the weights' proportions. Scoring ``(in_flight + 1) / weight``
    instead sent every request to the heavier of 2:1 targets while idle (1/2 < 1/1, never a
    tie), though the docs promise weighted turns.
    """

    __slots__ = ("targets", "outstanding", "turns")

    def __init__(self, targets, outstanding):
        self.targets = [t for t in targets if t.weight > 0]
        self.outstanding = outstanding
        self.turns = SmoothWeighted(self.targets)

    def pick(self, avoid=(), key=None):
        outstanding = self.outstanding
        least = None            # (in flight, weight) of the least loaded target
        for target in self.targets:
            if target in avoid:
                continue
            n = outstanding.get(target.url, 0)
            if least is None or n * least[1] < least[0] * target.weight:
                least = (n, target.weight)
        if least is None:       # every target avoided: the plain choice among all of them
            return self.turns.pick()
        n, weight = least
        busier = {t for t in self.targets
                  if t in avoid or outstanding.get(t.url, 0) * weight != n * t.weight}
        return self.turns.pick(busier)


def ring_point(text):
    return int.from_bytes(hashlib.md5(text.encode(), usedforsecurity=False).digest()[:8], "big")


class ConsistentHash:
    __slots__ = ("targets", "points", "owners", "fallback")

    def __init__(self, targets):
        self.targets = [t for t in targets if t.weight > 0]
        ring = sorted((ring_point(f"{t.url}#{i}"), t)
                      for t, size in zip(self.targets, ring_sizes(self.targets))
                      for i in range(size))
        self.points = [point for point, _ in ring]
        self.owners = [target for _, target in ring]
        self.fallback = SmoothWeighted(self.targets)      # requests without a key

    def pick(self, avoid=(), key=None):
        if key is None:
            return self.fallback.pick(avoid)
        start = bisect.bisect(self.points, ring_point(key))
        owners, n = self.owners, len(self.owners)
        for step in range(n):       # walk on past avoided targets, as ketama does
            target = owners[(start + step) % n]
            if target not in avoid:
                return target
        return owners[start % n]


def make_balancer(policy, targets, outstanding):
    if policy == "least_outstanding":
        return LeastOutstanding(targets, outstanding)
    if policy == "consistent_hash":
        return ConsistentHash(targets)
    return SmoothWeighted(targets)
