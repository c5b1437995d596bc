"""Target health, pure: the active checker's state machine with backoff, passive ejection, and
which targets a request may use (with panic mode). The clock and randomness are injected.

Active (one checker process per host, helpers/health.py):
    healthy --(unhealthy_threshold failures in a row)--> unhealthy
    unhealthy --(healthy_threshold successes in a row)--> healthy
A healthy target is probed every ``interval``. An unhealthy one is probed with exponential
backoff: interval x 2^(failures - threshold), capped at ``max_interval``, each delay with
+-``jitter`` so that many gateways do not probe a dead fleet in step.

Passive (every worker): ``consecutive_failures`` in a row (connect errors, timeouts, the listed
statuses) eject a target for ``eject_for`` x 2^(ejections-1), capped at ``max_eject_for``; the
ejection count decays once a target has stayed in for ``max_eject_for``. An ejection that would
take more than ``max_ejected_percent`` of an upstream's targets out is not made.
"""
import math
from dataclasses import dataclass, field


@dataclass
class ActiveState:
    healthy: bool = True
    successes: int = 0          # in a row
    failures: int = 0           # in a row
    next_at: float = 0.0
    last_error: str = ""
    since: float = 0.0          # when the current state began
    checks: int = 0

    def record(self, conf, ok, now, jitter_factor=1.0, error=""):
        """Count one probe; return True if the state changed. ``jitter_factor`` is drawn by
        the caller from [1 - jitter, 1 + jitter]."""
        self.checks += 1
        changed = False
        if ok:
            self.successes, self.failures, self.last_error = self.successes + 1, 0, ""
            if not self.healthy and self.successes >= conf["healthy_threshold"]:
                self.healthy, self.since, changed = True, now, True
        else:
            self.failures, self.successes, self.last_error = self.failures + 1, 0, error
            if self.healthy and self.failures >= conf["unhealthy_threshold"]:
                self.healthy, self.since, changed = False, now, True
        self.next_at = now + probe_delay(conf, self) * jitter_factor
        return changed


def probe_delay(conf, state):
    if state.healthy or state.successes:        # recovering: probe at the normal pace
        return conf["interval"]
    beyond = max(0, state.failures - conf["unhealthy_threshold"])
    return min(conf["interval"] * 2 ** beyond, conf["max_interval"])


def within_probe_budget(checks, budget):
    """Health confs stretched so that, healthy, the targets' probes add up to at most
    ``budget`` a second: ``checks`` is {key: health conf}. Every interval (and max_interval,
    never under it) is multiplied by one factor, so each target keeps its share. Returns
    (the confs, the factor; 1.0 when within budget and the confs unchanged)."""
    demand = sum(1.0 / conf["interval"] for conf in checks.values())
    if demand <= budget:
        return checks, 1.0
    stretch = demand / budget
    return {key: {**conf, "interval": conf["interval"] * stretch,
                  "max_interval": max(conf["max_interval"], conf["interval"] * stretch)}
            for key, conf in checks.items()}, stretch


def probes_while_dead(conf, seconds, jitter_factors=None):
    """How many probes a target that dies at t=0 and stays dead gets within ``seconds``
    (the schedule ActiveState follows; ``jitter_factors`` yields the factors used)."""
    state, now, count = ActiveState(), 0.0, 0
    while now <= seconds:
        count += 1
        state.record(conf, False, now, next(jitter_factors) if jitter_factors else 1.0)
        now = state.next_at
    return count


@dataclass
class Ejections:
    """A host's passive ejections: key -> [until, count, last_change] (wall clock)."""
    entries: dict = field(default_factory=dict)

    def ejected(self, key, now):
        entry = self.entries.get(key)
        return entry is not None and entry[0] > now

    def eject(self, key, conf, now, ejected_in_upstream, targets_in_upstream):
        """Eject ``key`` unless the max_ejected_percent guard forbids it; return seconds or 0."""
        if (ejected_in_upstream + 1) * 100 > conf["max_ejected_percent"] * targets_in_upstream:
            return 0.0
        until, count, last = self.entries.get(key, (0.0, 0, 0.0))
        if now - max(until, last) > conf["max_eject_for"]:
            count = 0                           # it behaved for a long while: start over
        count += 1
        seconds = min(conf["eject_for"] * 2 ** (count - 1), conf["max_eject_for"])
        self.entries[key] = [now + seconds, count, now]
        return seconds


def usable(targets, down, panic_threshold):
    """The targets a request may go to: those not ``down``, unless fewer than
    ``panic_threshold`` (a share) of them are up, or none is: then all of them (panic mode, as
    Envoy does it: spreading load over a sick fleet beats failing every request).
    Returns (avoid set, panicking)."""
    if not down:
        return frozenset(), False
    up = sum(1 for t in targets if t not in down)
    if up == 0 or up < panic_threshold * len(targets):
        return frozenset(), True
    return down, False


SEEN_AFTER = 2.0    # seconds of a worker's traffic after which the others have published theirs


class RetryBudget:
    """Retries allowed as a share of recent traffic (Envoy's retry budget, Finagle's
    RetryBudget): within the last ``window`` seconds, retries may be at most ``percent`` % of
    requests, plus ``min_per_second`` x window so that a quiet upstream can still retry. When
    a fleet fails, retries stop multiplying the load instead of tripling it."""

    __slots__ = ("percent", "floor", "window", "buckets", "peers", "unbooked", "workers",
                 "unseen", "told")

    def __init__(self, percent, min_per_second, window=10, workers=1):
        self.percent, self.floor, self.window = percent, min_per_second * window, window
        self.buckets = {}           # whole second -> [requests, retries]
        self.peers = (0, 0)         # the host's other workers' (requests, retries), ~1 s old
        self.unbooked = 0           # requests counted since the last totals()
        self.workers = workers      # the host's workers sharing the budget
        self.unseen = 0             # retries spent since the last publish (peers know none)
        self.told = 0               # its requests in the window at its last publish

    def _bucket(self, now):
        second = int(now)
        bucket = self.buckets.get(second)
        if bucket is None:
            for old in [s for s in self.buckets if s <= second - self.window]:
                del self.buckets[old]
            bucket = self.buckets[second] = [0, 0]
        return bucket

    def request(self):
        """Count one request. It is booked into a second's bucket by the next ``totals``
        (each publish, once a second, and each retry asks): a request pays one addition."""
        self.unbooked += 1

    def totals(self, now):
        """This worker's [requests, retries] within the window."""
        self._bucket(now)[0] += self.unbooked
        self.unbooked = 0
        return [sum(b[0] for b in self.buckets.values()), sum(b[1] for b in self.buckets.values())]

    def published(self, now):
        """``totals`` for the host's other workers: from now on they know this worker's
        retries, and it may spend another share of what is left (try_retry)."""
        self.unseen = 0
        totals = self.totals(now)
        self.told = totals[0]
        return totals

    def try_retry(self, now):
        """Spend one retry if the budget allows (this worker's traffic and retries plus the
        host's other workers'); return whether it did. Between two publishes a worker spends
        at most its share of what was left (rounded up): the others see its retries only
        then, and each spending all of it made a host of N workers retry N times the
        budget at once (a dead upstream's every window)."""
        own, retries = self.totals(now)
        requests = own + self.peers[0]
        retries += self.peers[1]
        left = self.floor + requests * self.percent / 100 - retries
        if left < 1:
            return False
        # Its share by traffic, but never under an even share of the floor still left: a
        # worker with a small part of the traffic could retry once a publish only, and a
        # refused target's retries, one a second, were denied with the floor untouched.
        whole = left + self.unseen
        mine = max(whole * self.share(own, now), min(whole, self.floor) / self.workers)
        if self.unseen >= math.ceil(mine):
            return False
        self._bucket(now)[1] += 1
        self.unseen += 1
        return True

    def refund(self, now):
        """Give back a retry ``try_retry(now)`` spent and no try used (its client left
        in the backoff)."""
        bucket = self.buckets.get(int(now))
        if bucket is not None and bucket[1]:
            bucket[1] -= 1
        if self.unseen:
            self.unseen -= 1

    def share(self, own, now):
        """This worker's part of what is left: its part of the host's recent requests to
        the upstream, once the others had a chance to tell theirs (they publish once a
        second: 2 s into its traffic); 1/N before (at a start, or traffic after a quiet
        while, every worker could be spending). 1/N for good starved a worker with all the
        traffic (a single HTTP/2 connection's): with 16 workers it got under half the
        retries of 20 % failing. The others' counts are up to a second old: against its own
        as it told them then too, a burst is no larger part (each worker of a host that had
        a trickle took nearly all of what was left in a burst's first second, N times the
        budget). Any count of theirs was taken for all of it: in a fresh host's burst the
        others' first publishes (a request each) made nearly all of it the own of each
        worker that published after them (4 workers: up to 3 times the budget). A worker
        whose traffic is new among others that told theirs takes its part, no larger than
        theirs until it told its own (they count none of its requests); with nothing told
        on either side, 1/N (its traffic's 2 s are whole seconds, a second and a bit: one
        whose next publish came late took 0, and alone on a host, only the floor)."""
        peers, told = self.peers[0], self.told
        if told and own and self.traffic_since(now) <= now - SEEN_AFTER:
            return min(own / (own + peers), told / (told + peers))
        if peers and not told:
            return min(own, peers) / (own + peers)
        return 1 / self.workers

    def traffic_since(self, now):
        """The first second of the window in which this worker had requests booked."""
        return min((s for s, (requests, _) in self.buckets.items() if requests), default=now)
