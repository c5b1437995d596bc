"""Progressive delivery: the steps, gates and transitions of a rollout on a split (issue 16).

Pure: no I/O, no clock of its own. The controller (helpers/rollouts.py) passes the time, the
stored ``State`` and the ``Window`` of each group measured since the step began, and stores
what ``decide`` returns. Rules this module keeps:

- A step is held for ``interval`` seconds; it is left for the next one only when every gate
  holds *and* the canary answered at least ``min_requests`` requests (no promotion on silence).
- A gate that fails, once ``min_requests`` were seen, ends the step at once (it does not wait
  for the interval): ``on_failure`` = "rollback" sets the canary's weight to 0,
  "pause" holds it where it is.
- Passing the last step makes the canary the whole route (weight 100, status "done").
- Observations are per ``epoch`` of a ``run``; every transition starts a new epoch, so a
  step is judged on its own traffic only, and a rollout that begins again a new run.

Transitions are a table (``TRANSITIONS``): an (status, event) pair not in it raises.
"""
import dataclasses
import hashlib
import json
from bisect import bisect_left

RUNNING, PAUSED, ROLLED_BACK, ABORTED, DONE = "running", "paused", "rolled_back", "aborted", \
    "done"

# status -> {event: status entered}
TRANSITIONS = {
    RUNNING: {"advance": RUNNING, "finish": DONE, "rollback": ROLLED_BACK, "pause": PAUSED,
              "promote": DONE, "abort": ABORTED},
    PAUSED: {"resume": RUNNING, "promote": DONE, "abort": ABORTED},
    ROLLED_BACK: {"resume": RUNNING, "promote": DONE, "abort": ABORTED},
    ABORTED: {"resume": RUNNING, "promote": DONE},
    DONE: {"abort": ABORTED},
}
COMMANDS = ("pause", "resume", "promote", "abort")
HISTORY_KEPT = 50

# Upper bounds (seconds) of the latency histogram workers keep per group; finer than the
# /metrics buckets around the 100 ms - 2 s range gates are usually set in.
LATENCY_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
                  1.5, 2.0, 3.0, 5.0, 10.0, 30.0)


class TransitionError(ValueError):
    """An event that the rollout's status does not allow (e.g. resume a running rollout)."""


class DamagedState(ValueError):
    """A stored rollout state that is not one (another writer's value, a half write)."""


# -- measurements ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Window:
    """What one group answered over a window: requests, failures, latency histogram counts,
    and ``slower``: ((bound, answers slower than it), ...) for each latency gate's ``max``,
    so that a gate is judged on a count, not on a percentile interpolated inside the bucket
    its bound falls in (a canary answering in 0.21 s failed max 0.25 at p90 so)."""
    requests: int = 0
    failures: int = 0
    buckets: tuple = (0,) * (len(LATENCY_BOUNDS) + 1)
    slower: tuple = ()

    def __add__(self, other):
        if not other.requests:
            return self
        if not self.requests:
            return other
        # A bound only one side counted (a host or a replaced worker with other gates) is
        # not counted in the sum: its count over both sides' answers understated the share
        # (2 slow of 42, where 40 were never measured against it: a 0.5 s canary held p90
        # <= 0.25). Uncounted, the gate is judged on the histogram.
        theirs = dict(other.slower)
        slower = tuple((bound, count + theirs[bound]) for bound, count in self.slower
                       if bound in theirs)
        return Window(self.requests + other.requests, self.failures + other.failures,
                      tuple(a + b for a, b in zip(self.buckets, other.buckets)), slower)

    def share_slower(self, bound):
        """The share (0-1) of answers slower than ``bound``, or None if it was not counted
        (a window whose workers did not know the gate yet)."""
        for counted, count in self.slower:
            if counted == bound:
                return count / self.requests if self.requests else 0.0
        return None

    @property
    def error_rate(self):
        return self.failures / self.requests if self.requests else 0.0

    def percentile(self, q):
        """The q-th percentile (0-100) in seconds, interpolated in its bucket as Prometheus'
        histogram_quantile does; None without requests."""
        if not self.requests:
            return None
        rank, seen = self.requests * q / 100.0, 0
        for i, count in enumerate(self.buckets):
            if count and seen + count >= rank:
                lower = LATENCY_BOUNDS[i - 1] if i else 0.0
                upper = LATENCY_BOUNDS[i] if i < len(LATENCY_BOUNDS) else LATENCY_BOUNDS[-1] * 2
                return lower + (upper - lower) * (rank - seen) / count
            seen += count
        return LATENCY_BOUNDS[-1]

    def to_list(self):
        return [self.requests, self.failures, list(self.buckets), [list(p) for p in self.slower]]

    @classmethod
    def from_list(cls, data):
        requests, failures, buckets, *rest = data
        buckets = tuple(buckets) + (0,) * (len(LATENCY_BOUNDS) + 1 - len(buckets))
        slower = tuple(sorted((float(b), int(c)) for b, c in rest[0])) if rest else ()
        return cls(requests, failures, buckets[:len(LATENCY_BOUNDS) + 1], slower)


def bucket_of(seconds):
    return bisect_left(LATENCY_BOUNDS, seconds)


# -- gates ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Verdict:
    gate: str           # "success_rate", "latency_p99", "baseline_error_rate"
    value: float        # what was measured (None: nothing to measure yet)
    bound: float
    ok: bool            # None: fewer than min_requests, cannot pass or fail yet
    reason: str

    def as_dict(self):
        return dataclasses.asdict(self)


def evaluate(rollout, canary, baseline):
    """Each gate's Verdict on the canary's and the baseline's windows of this step."""
    enough = canary.requests >= rollout["min_requests"]
    short = f"{canary.requests} of {rollout['min_requests']} requests seen"
    out = []
    for gate in rollout["gates"]:
        kind = gate["kind"]
        if kind == "success_rate":
            value = round(100.0 * (1 - canary.error_rate), 3) if canary.requests else None
            ok = None if not enough else value >= gate["min"]
            out.append(Verdict("success_rate", value, gate["min"], ok, short if ok is None else
                               f"{value}% {'>=' if ok else '<'} {gate['min']}% succeeded "
                               f"({canary.failures} of {canary.requests} failed)"))
        elif kind == "latency":
            name = f"latency_p{gate['percentile']:g}"
            value = canary.percentile(gate["percentile"])
            value = None if value is None else round(value, 4)
            slower = canary.share_slower(gate["max"])
            allowed = (100.0 - gate["percentile"]) / 100.0
            if not enough:
                ok, reason = None, short
            elif slower is not None:        # counted: p-th percentile <= max, exactly
                ok = slower <= allowed + 1e-9
                reason = (f"p{gate['percentile']:g} {'<=' if ok else '>'} {gate['max']}s: "
                          f"{round(100 * slower, 2)}% of answers slower "
                          f"({'<=' if ok else '>'} {round(100 * allowed, 2)}%)")
            else:                           # a window from before the gate was counted
                ok = value <= gate["max"]
                reason = f"p{gate['percentile']:g} {value}s {'<=' if ok else '>'} {gate['max']}s"
            out.append(Verdict(name, value, gate["max"], ok, reason))
        else:       # baseline: canary error rate <= baseline's + max_excess percentage points
            value = round(100.0 * (canary.error_rate - baseline.error_rate), 3) \
                if canary.requests else None
            ok = None if not enough or baseline.requests < rollout["min_requests"] \
                else value <= gate["max_excess"]
            out.append(Verdict("baseline_error_rate", value, gate["max_excess"], ok,
                               (short if not enough else f"baseline: {baseline.requests} of "
                                f"{rollout['min_requests']} requests seen") if ok is None else
                               f"canary errors {100 * canary.error_rate:.2f}% vs baseline "
                               f"{100 * baseline.error_rate:.2f}%: {value:+.2f} points "
                               f"{'<=' if ok else '>'} {gate['max_excess']}"))
    return out


# -- state ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class State:
    id: str                 # fingerprint of what is rolled out (identity)
    status: str
    step: int               # index into steps (the last one reached)
    steps: tuple            # canary percentages, as configured when the rollout began
    epoch: int              # +1 per transition: observations are kept per epoch
    since: float            # when this step (or status) began, Unix time
    history: tuple = ()     # ({"at", "epoch", "event", "step", "weight", "reason"}, ...)
    # This run of the rollout (when it began, hex milliseconds): an id that comes back (steps
    # changed and changed back, a state file removed) starts at epoch 1 again, and its
    # windows must not be the earlier run's, whose counts the helper or Redis still hold.
    run: str = ""

    @property
    def weight(self):
        """The canary's share in percent now."""
        if self.status == DONE:
            return 100.0
        if self.status in (ROLLED_BACK, ABORTED):
            return 0.0
        return float(self.steps[self.step])

    @property
    def window_key(self):
        return f"{self.id}:{self.run}:{self.epoch}" if self.run else f"{self.id}:{self.epoch}"

    def to_json(self):
        return json.dumps({**dataclasses.asdict(self), "weight": self.weight},
                          separators=(",", ":"))

    @classmethod
    def from_json(cls, raw):
        data = json.loads(raw)
        data.pop("weight", None)
        return cls(**{**data, "steps": tuple(data["steps"]), "history": tuple(data["history"])})


def load_state(raw):
    """The State stored as ``raw``, checked field by field, or DamagedState saying what is
    wrong. One damaged value (the store is shared: another team's write, a half write)
    raised out of State.from_json: a traceback for `gwserver rollouts list`, and a
    controller tick that stopped at that route, every tick, so no route after it moved or
    was rolled back by its gates."""
    try:
        state = State.from_json(raw)
        _check_state(state)
    except DamagedState:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        raise DamagedState(f"not a rollout state ({type(exc).__name__}: {exc})"[:200]) \
            from None
    return state


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_state(state):
    if not isinstance(state.id, str) or state.status not in TRANSITIONS:
        raise DamagedState("its id is not text, or its status is none a rollout has")
    if not state.steps or not all(_is_number(s) and 0 <= s <= 100 for s in state.steps):
        raise DamagedState("its steps are not percentages")
    if not isinstance(state.step, int) or not 0 <= state.step < len(state.steps):
        raise DamagedState("its step is not one of its steps")
    if not isinstance(state.epoch, int) or not _is_number(state.since) or \
            not isinstance(state.run, str):
        raise DamagedState("its epoch, since or run is not of its type")
    for item in state.history:
        if not (isinstance(item, dict) and _is_number(item.get("at")) and
                0 <= item["at"] < 1e11 and     # (a date: gmtime overflows past that)
                isinstance(item.get("event"), str) and isinstance(item.get("step"), int) and
                _is_number(item.get("weight")) and isinstance(item.get("reason"), str)):
            raise DamagedState("an entry of its history is not one")


def rollout_id(rollout, canary_ref):
    """What identifies a rollout: its ``id`` if set, else the canary group, the upstream it
    names and the steps. A new canary version (another upstream) is a new rollout."""
    if rollout.get("id"):
        return rollout["id"]
    text = json.dumps([rollout["group"], canary_ref, rollout["steps"]], sort_keys=True,
                      default=str)
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


def start(rollout, ident, now):
    state = State(ident, RUNNING, 0, tuple(rollout["steps"]), 0, now,
                  run=format(int(now * 1000), "x"))
    return _entered(state, "start", now, f"rollout begins at {rollout['steps'][0]:g}%",
                    RUNNING, 0)


def _entered(state, event, now, reason, status, step, verdicts=()):
    new = dataclasses.replace(state, status=status, step=step, epoch=state.epoch + 1,
                              since=now)
    entry = {"at": round(now, 3), "epoch": new.epoch, "event": event, "step": step + 1,
             "weight": new.weight, "reason": reason}
    if verdicts:        # what the gates measured when they decided
        entry["gates"] = [v.as_dict() for v in verdicts]
    return dataclasses.replace(new, history=(state.history + (entry,))[-HISTORY_KEPT:])


def transition(state, event, now, reason, verdicts=()):
    """Apply ``event``; raise TransitionError if the status does not allow it."""
    status = TRANSITIONS[state.status].get(event)
    if status is None:
        allowed = ", ".join(TRANSITIONS[state.status]) or "nothing"
        raise TransitionError(f"cannot {event} a rollout that is {state.status.replace('_', ' ')}"
                              f" (allowed: {allowed})")
    step = state.step
    if event == "advance":
        step += 1
    elif status == DONE:
        step = len(state.steps) - 1     # the last step, whatever it was
    elif event == "resume" and state.status in (ROLLED_BACK, ABORTED):
        step = 0        # a rolled-back canary starts over from the first step
    return _entered(state, event, now, reason, status, step, verdicts)


def decide(rollout, state, canary, baseline, now, seen_for=None):
    """-> (state to store, verdicts). The state is ``state`` itself when nothing changes.
    ``seen_for``: how long the caller has itself seen this step, on its monotonic clock;
    given, the step is held on it, never more than the real time since it began, rather
    than on ``now - since``: ``since`` is the writer's wall clock, and one behind (an
    operator's host resuming, a new writer) promoted a step without its soak, one ahead held
    it for as much longer. Without (tests, a fake clock): ``now - since``."""
    verdicts = evaluate(rollout, canary, baseline)
    if state.status != RUNNING:
        return state, verdicts
    failed = [v for v in verdicts if v.ok is False]
    if failed:
        event = "rollback" if rollout["on_failure"] == "rollback" else "pause"
        reason = f"gate {failed[0].gate} failed at {state.weight:g}%: {failed[0].reason}"
        return transition(state, event, now, reason, verdicts), verdicts
    if (now - state.since if seen_for is None else seen_for) < rollout["interval"]:
        return state, verdicts
    if any(v.ok is None for v in verdicts) or canary.requests < rollout["min_requests"]:
        return state, verdicts          # no promotion on silence: wait for traffic
    held = "; ".join(v.reason for v in verdicts) or "no gates"
    last = state.step + 1 >= len(state.steps) or state.steps[state.step + 1] >= 100
    if last:
        return transition(state, "finish", now, f"all gates held at every step ({held}); "
                                                f"canary is the whole route", verdicts), verdicts
    return transition(state, "advance", now, f"gates held at {state.weight:g}% for "
                                             f"{rollout['interval']:g}s: {held}",
                      verdicts), verdicts


def command(state, name, now, reason=""):
    """An operator's pause / resume / promote / abort."""
    if name not in COMMANDS:
        raise TransitionError(f"unknown command {name!r} (commands: {', '.join(COMMANDS)})")
    return transition(state, name, now, reason or f"{name} by an operator")


# -- weights --------------------------------------------------------------------------------

SCALE = 10_000      # weights in hundredths of a percent: steps like 0.5% are exact


def baseline_weights(groups, configured, canary, closed=()):
    """(group, weight) of the groups beside the canary, by their configured weights, or 1
    each when every one of them is 0: how they share what the canary leaves. ``closed``:
    groups only claim or consumer rules lead to (split's ``claim_gated``), which stay at 0
    (given 1, a partner-only backend got half of every anonymous client's baseline)."""
    others = [(g, w) for g, w in zip(groups, configured) if g != canary]
    return others if any(w for _, w in others) else \
        [(g, 0 if g in closed else 1) for g, _ in others]


def weights(groups, configured, canary, percent, closed=()):
    """Integer weights per group, canary last, as the rollouts helper reports them: the canary
    gets ``percent``, the others share the rest in proportion to their configured weights
    (split.place_in_rollout places requests so)."""
    others = baseline_weights(groups, configured, canary, closed)
    canary_w = round(SCALE * percent / 100.0)
    rest, total_others = SCALE - canary_w, sum(w for _, w in others)
    out, given = [], 0
    for i, (group, w) in enumerate(others):
        share = rest - given if i == len(others) - 1 else rest * w // total_others
        out.append((group, share))
        given += share
    out.append((canary, canary_w))
    return out
