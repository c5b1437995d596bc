"""Rate-limit arithmetic, pure: state in, decision and new state out, the clock injected.

The same two algorithms run in Redis as Lua (state/lua.py, called by state/store.py) on Redis'
clock, and here for the per-host store shared by a host's workers.

token bucket    capacity = max(burst, 1) tokens, refilled at rate/per tokens a second; a request
                takes one. ``burst = 0`` therefore means "no burst": requests are spaced.
sliding window  at most ``rate`` requests in any ``per`` seconds, estimated from the current
                and previous fixed windows (the previous one weighted by how much of it still
                overlaps the sliding window), as Cloudflare describes it.
"""
import math
from functools import lru_cache
from typing import NamedTuple

EPSILON = 1e-9      # 0.1 s x 10/s is 0.9999999999999999 tokens in floating point


class Decision(NamedTuple):
    """One answer of a limiter (immutable; a NamedTuple, not a frozen dataclass: one is made
    per limited request, and the tuple is built in a third of the time)."""
    allowed: bool
    limit: int          # RateLimit-Limit: requests per window
    remaining: int      # RateLimit-Remaining
    reset: float        # RateLimit-Reset: seconds until the quota is whole again
    retry_after: float  # seconds until a request would be allowed (0 when allowed)


MAX_QUOTA_WINDOWS = 1000   # windows a quota that is not whole in one may be stated over


# Asked on every answer of a limit whose rate is not whole, 429s included: a rate no few
# windows make whole (0.999, 0.7071) searched all 1000, 0.2 ms each time. A route's rate
# (an adaptive one's moves once a window) is searched once.
@lru_cache(maxsize=256)
def quota(rate, per):
    """RateLimit-Limit and the window (RateLimit-Policy's ``w``) of ``rate`` requests per
    ``per`` seconds when ``rate`` is not whole: the IETF draft's limit is a whole number of
    requests in a whole number of seconds, and ``int(rate)`` said 0 for 0.5 a second. ->
    (requests, seconds) over the fewest windows in which both are whole (0.5 per 1 s: 1 in
    2 s; 2.5 per 1 s: 5 in 2 s), else the fewest that hold a whole request, the requests
    rounded down and the seconds up (never more than the rate lets through)."""
    for windows in range(1, MAX_QUOTA_WINDOWS + 1):
        requests, seconds = rate * windows, per * windows
        if abs(requests - round(requests)) < 1e-6 and abs(seconds - round(seconds)) < 1e-6 \
                and round(requests) >= 1 and round(seconds) >= 1:
            return round(requests), round(seconds)
    windows = max(1, math.ceil(1 / rate), math.ceil(1 / per))
    return max(1, math.floor(rate * windows + EPSILON)), math.ceil(per * windows - EPSILON)


def token_bucket(state, rate, per, burst, now):
    """state = (tokens, last) or None; return (Decision, new state)."""
    # Comparisons, not min()/max(): every request of a limited route runs this (40% less).
    refill = rate / per
    capacity = burst if burst > 1 else 1
    if state is None:
        tokens = capacity
    else:
        tokens, last = state
        if now > last:              # a clock that stepped back refills nothing
            tokens += (now - last) * refill
        if tokens > capacity:       # also after burst was lowered
            tokens = capacity
    allowed = tokens >= 1.0 - EPSILON
    if allowed:
        tokens = tokens - 1.0 if tokens > 1.0 else 0.0
    return bucket_decision(allowed, tokens, rate, capacity, refill), (tokens, now)


def bucket_decision(allowed, tokens, rate, capacity, refill):
    return Decision(allowed, int(rate), int(tokens), (capacity - tokens) / refill,
                    0.0 if allowed else max(0.0, 1.0 - tokens) / refill)


def sliding_window(state, rate, per, now):
    """state = (window index, count in it, count in the previous one) or None."""
    index = math.floor(now / per)
    if state is None:
        current, previous = 0, 0
    else:
        last_index, current, previous = state
        if index == last_index + 1:
            previous, current = current, 0
        elif index != last_index:
            previous, current = 0, 0
    into = now - index * per
    return window_decision(rate, per, current, previous, into, index)


def window_decision(rate, per, current, previous, into, index):
    weight = (per - into) / per
    estimate = previous * weight + current
    allowed = estimate + 1 <= rate + EPSILON
    retry = 0.0 if allowed else window_retry(rate, per, current, previous, into)
    if allowed:
        current += 1
        estimate += 1
    # whole again once every counted request has slid out: this window's take a whole window
    # more, the previous window's are gone at the end of this one
    reset = 2 * per - into if current else per - into
    decision = Decision(allowed=allowed, limit=int(rate),
                        remaining=max(0, int(rate - estimate)), reset=reset, retry_after=retry)
    return decision, (index, current, previous)


def window_retry(rate, per, current, previous, into):
    """Seconds from ``into`` until one more request fits, nothing else arriving meanwhile.

    In this window, at t: previous * (per - t) / per + current + 1 <= rate. When no t < per
    will do (this window is full), in the next one, t' into it: current * (per - t') / per + 1
    <= rate. Counting from the next window's start alone (``per - into``) answered too early
    whenever this window was full: the retry at Retry-After was refused again.
    """
    room = rate - 1 - current
    if room >= -EPSILON and (previous == 0 or room >= previous - EPSILON):
        return 0.0
    if room >= -EPSILON:
        return max(0.0, per * (1 - room / previous) - into)
    if current == 0:        # rate < 1: never
        return math.inf
    return per - into + per * min(1.0, max(0.0, 1 - (rate - 1) / current))


def adaptive_start(conf):
    """The first effective rate of an adaptive limit: ``rate``, kept within floor..ceiling."""
    return within(conf["adaptive"], conf["rate"])


def within(adaptive, rate):
    """``rate`` kept within an adaptive limit's floor..ceiling."""
    return min(adaptive["ceiling"], max(adaptive["floor"], rate))


def adaptive_rate(known, conf):
    """The effective rate of an adaptive limit given the one a store last knew (None: none
    yet), within floor..ceiling as they are now."""
    return adaptive_start(conf) if not known else within(conf["adaptive"], known)


def adapt(state, conf, now, ok, failed):
    """Move an adaptive limit's effective rate with the upstream's success rate.

    state = {"rate", "since", "ok", "failed"} or None. Answers are counted per ``window``;
    once a window is over, at least ``raise_above`` successful raises the rate by ``step_up``,
    below ``lower_below`` lowers it by ``step_down``, always within floor..ceiling. Returns the
    new state (the rate every worker and host then uses).
    """
    adaptive = conf["adaptive"]
    if state is None:
        state = {"rate": adaptive_start(conf), "since": now, "ok": 0, "failed": 0}
    # within floor..ceiling as they are now: a reload may have moved them past the stored rate
    # since: a window begun on a clock ahead of ``now`` (one stepped back) begins now, or the
    # rate stood still for as long as the step
    state = dict(state, rate=within(adaptive, state["rate"]), ok=state["ok"] + ok,
                 failed=state["failed"] + failed, since=min(state["since"], now))
    if now - state["since"] >= adaptive["window"]:
        total = state["ok"] + state["failed"]
        if total:
            success = state["ok"] / total
            if success >= adaptive["raise_above"]:
                state["rate"] = min(adaptive["ceiling"], state["rate"] * (1 + adaptive["step_up"]))
            elif success < adaptive["lower_below"]:
                state["rate"] = max(adaptive["floor"],
                                    state["rate"] * (1 - adaptive["step_down"]))
        state.update(since=now, ok=0, failed=0)
    return state
