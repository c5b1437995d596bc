"""The circuit breaker's state machine, pure: no clock, no I/O.

    closed ──(error rate >= threshold over the window, with >= min_requests)──> open
    open ──(open_for elapsed)──> half_open
    half_open ──(half_open_probes probes succeeded)──> closed
    half_open ──(a probe failed)──> open, for longer (open_for x 2^(trips-1), <= max_open_for)

A request the upstream never answered or failed (the gateway answered it itself, or its
client left) is no verdict: its admission is given back, so a half-open breaker's probe goes to
another request instead of waiting out ``probe_timeout``.

Every state change starts a new *epoch*. A request remembers the epoch it was admitted in and
its outcome counts only in that epoch: answers of requests let through before the breaker
opened do not decide the half-open verdict, and only probes do. If the probes of a half-open
epoch never report (their worker died), a new set is granted after ``probe_timeout``.

``step()`` takes the state, the outcomes to record and the number of requests asking to pass,
and returns the new state, how many may pass and the transitions. The per-host store runs it
in Python; ``state.store.BREAKER_LUA`` is the same function for Redis (tests hold both to the
same tables).
"""
import math

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATE_CODES = {CLOSED: 0, OPEN: 1, HALF_OPEN: 2}
BUCKETS = 10        # the rolling window is kept as this many buckets


SEEN = 64           # given-back probes' ids an epoch remembers (a copy comes within seconds)


def initial_state():
    return {"state": CLOSED, "epoch": 0, "trips": 0, "until": 0.0, "probes": 0, "probe_ok": 0,
            "buckets": [], "seen": []}


def open_seconds(conf, trips):
    # The exponent is capped as Lua's float 2^n is (inf past 1023, then max_open_for): as an
    # int, 2 ** 1024 overflowed converting to float, and the 1025th trip in a row (17 h of a
    # dead upstream at max_open_for = 60) raised, leaving the per-host breaker half-open.
    return min(conf["open_for"] * 2.0 ** min(trips - 1, 1023), conf["max_open_for"])


def probe_timeout(conf):
    return max(conf["window"], conf["open_for"])


def step(state, conf, now, outcomes=(), admissions=0):
    """Record ``outcomes`` [(epoch, ok, failed[, unused[, id]]), ...], then admit up to
    ``admissions``. ``unused``: admissions that say nothing of the upstream (the gateway
    answered itself, the client left): a half-open epoch grants those probes again at once.
    ``id`` (a probe's, "" for none): an outcome whose id the epoch has seen is a copy (sent
    again after a batch that timed out but ran) and counts nothing.

    Returns (state, admitted, transitions); ``state`` is a new dict, transitions are the
    states entered, in order.
    """
    state = dict(state, buckets=[list(b) for b in state["buckets"]],
                 seen=list(state.get("seen") or []))
    transitions = []

    def enter(new_state):
        state["state"] = new_state
        state["epoch"] += 1
        state["buckets"] = []
        state["probes"] = state["probe_ok"] = 0
        state["seen"] = []
        transitions.append(new_state)

    def trip():
        state["trips"] += 1
        enter(OPEN)
        state["until"] = now + open_seconds(conf, state["trips"])

    # A state written on a clock ahead of ``now`` (one stepped back, another host's) waits no
    # longer than any state step writes: an open breaker's "until" an hour ahead refused
    # every request for the hour.
    longest = max(conf["window"], conf["open_for"], conf["max_open_for"])
    if state["until"] > now + longest:
        state["until"] = now + longest
    width = conf["window"] / BUCKETS
    current = math.floor(now / width)
    state["buckets"] = [b for b in state["buckets"] if current - BUCKETS < b[0] <= current]
    for epoch, ok, failed, *unused in outcomes:
        if epoch != state["epoch"]:
            continue                        # an answer from before the last state change
        ident = unused[1] if len(unused) > 1 else ""
        if ident:
            if ident in state["seen"]:
                continue                    # counted already
            # A verdict's id is kept for the epoch (half_open_probes of them at most: the
            # epoch ends then); a given-back probe's while there is room. Any client makes
            # those (an upload's probe is given back), and 64 of them pushed a verdict's id
            # out: its copy counted again, and one success closed a breaker of 2 probes.
            if ok or failed or len(state["seen"]) < SEEN:
                state["seen"] = state["seen"] + [ident]
        if unused and state["state"] == HALF_OPEN:
            state["probes"] = max(0, state["probes"] - unused[0])
        if state["state"] == CLOSED:
            if state["buckets"] and state["buckets"][-1][0] == current:
                state["buckets"][-1][1] += ok
                state["buckets"][-1][2] += failed
            else:
                state["buckets"].append([current, ok, failed])
            total = sum(b[1] + b[2] for b in state["buckets"])
            failures = sum(b[2] for b in state["buckets"])
            # the share itself, not error_rate * total: 0.28 * 25 is 7.000000000000001 in
            # floating point, and 7 failures of 25 did not open a breaker of 0.28
            if total >= conf["min_requests"] and failures / total >= conf["error_rate"]:
                trip()
        elif state["state"] == HALF_OPEN:
            if failed:
                trip()
            else:
                state["probe_ok"] += ok
                if state["probe_ok"] >= conf["half_open_probes"]:
                    state["trips"] = 0
                    enter(CLOSED)
    if state["state"] == OPEN and now >= state["until"]:
        enter(HALF_OPEN)
        state["until"] = now + probe_timeout(conf)
    elif state["state"] == HALF_OPEN and now >= state["until"]:
        enter(HALF_OPEN)                    # probes lost: grant a new set
        state["until"] = now + probe_timeout(conf)
    if state["state"] == CLOSED:
        admitted = admissions
    elif state["state"] == OPEN:
        admitted = 0
    else:
        admitted = max(0, min(admissions, conf["half_open_probes"] - state["probes"]))
        state["probes"] += admitted
    return state, admitted, transitions


def retry_after(state, now):
    """Seconds until an open breaker lets a probe through (0 when not open)."""
    return max(0.0, state["until"] - now) if state["state"] == OPEN else 0.0
