"""``split``: weighted canary and A/B routing, sticky by a consistent hash.

    plugins.split = {upstreams = [{upstream = "v1", weight = 90},
                                  {upstream = "v2", weight = 10, group = "canary"}],
                     rules = [{header = {"X-Beta" = "1"}, upstream = "canary"}],
                     key = "header:X-Trace-ID", env = "prod"}

Each entry of ``upstreams`` is a named upstream id (or an inline upstream object) with a
weight and a ``group`` name (default: the upstream id). A request goes to:

1. the group its ``X-AB-Group`` header names, if that is one of ours (a service further down
   the call chain stays in the group it was put in);
2. else the first rule whose conditions all hold (``header``, ``cookie``, ``claim``, ``query``:
   name -> value; ``upstream`` names a group);
3. else a consistent hash of ``key`` (``header:NAME``, ``cookie:NAME``, ``claim:NAME``,
   ``query:NAME`` or ``ip``): the same key lands on the same group in every worker and on every
   host, and changing weights moves only the keys in the share that changed;
4. else (no key) a random group by weight.

The chosen group goes upstream in ``X-AB-Group``; ``X-Env`` is kept, or set to ``env`` when
configured and absent. Weights change through etcd like any route field.

With ``rollout`` (docs/rollouts.md) the canary group's weight is not the configured one but
the current step of a progressive rollout, which the ``gwserver: rollouts`` helper decides
for the whole cluster and writes to a host file; this plugin reads it (one ``stat`` every
0.25 s at most, never a network call) and, in ``finish``, counts each answer of each group
(failed or not, and how long it took) for the rollout's gates. Under a rollout the canary's
hash range is the top of the space and only grows with its weight: a client on the canary
stays there while the rollout advances, and a client off it keeps its baseline group. A
rolled-back or aborted canary gets nobody, not even through rules or X-AB-Group, and the
websockets open on it are closed.
"""
import hashlib
import random

import time

from ..core import rollout as core_rollout
from ..core.headers import CONSUMER_SET
from ..core.schema import (MAX_INTEGER, Field, Invalid, Schema, integer, list_of, map_of, number,
                           one_of, request_header_name, request_key, show, status_code, string)

NAME = "split"
PRIORITY = 720          # after rate_limit (800); before breaker (700), which may key on it

HASH_SPACE = 1 << 64
# The first draw under a rollout (place_in_rollout: the canary or not) hashes the key with
# this salt, a point independent of the second's; the second (which baseline group) is the
# unsalted hash the weights use without a rollout, so configuring one moves nobody's arm
CANARY_SALT = b"gwserver-canary"


def upstream_ref(value):
    if isinstance(value, dict):
        return value        # validated by make_upstream's schema when linked
    return string(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}", "an upstream id or object")(value)


CHOICE = Schema(
    Field("upstream", upstream_ref, doc="an upstream id, or an inline upstream object"),
    Field("weight", integer(0, 1_000_000, "an integer from 0 to 1000000"), doc="share"),
    Field("group", string(r"[A-Za-z0-9_.:-]{1,64}", "a group name"), None,
          "name sent in X-AB-Group (default: the upstream id)"),
)

CONDITIONS = map_of(string(r"[ -~]*", "a printable ASCII value", allow_empty=True),
                    string(r"[!-~]+", "a name"))

RULE = Schema(
    Field("header", CONDITIONS, None, "request header -> value"),
    Field("cookie", CONDITIONS, None, "cookie -> value"),
    Field("claim", CONDITIONS, None, "verified JWT claim -> value (a boolean claim is true "
          "or false, as JSON spells it)"),
    Field("query", CONDITIONS, None, "query parameter -> value"),
    Field("upstream", string(r"[A-Za-z0-9_.:-]{1,128}", "a group name"),
          doc="the group (of `upstreams`) these requests go to"),
)

def duration(value):
    """Seconds: a number, or a string like "30s", "5m", "1h"."""
    # (isascii: isdigit() takes "²", which float() refuses: a raw ValueError, no field named)
    if isinstance(value, str) and value.isascii() and \
            value[:-1].replace(".", "", 1).isdigit() and value[-1:] in "smh":
        value = float(value[:-1]) * {"s": 1, "m": 60, "h": 3600}[value[-1]]
    # NaN fails every comparison, inf holds a step for ever, 10**400 is no float: all refused
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not 0 < value <= MAX_INTEGER:
        raise Invalid(f'must be seconds (a positive number, or "30s", "5m", "1h"), '
                      f"got {show(value)}")
    return float(value)


GATE = Schema(
    Field("kind", one_of("success_rate", "latency", "baseline"), doc="what the gate measures"),
    Field("min", number(0, maximum=100), None, "success_rate: lowest % of answers that succeed"),
    Field("percentile", number(0, exclusive=True, maximum=100), 99.0,
          "latency: which percentile"),
    Field("max", number(0, exclusive=True), None, "latency: its highest value, seconds"),
    Field("max_excess", number(0), None,
          "baseline: canary error rate may exceed the baseline's by this many % points"),
)

ROLLOUT = Schema(
    Field("group", string(r"[A-Za-z0-9_.:-]{1,64}", "a group name"), "canary",
          doc="the group being rolled out"),
    Field("steps", list_of(number(0, exclusive=True, maximum=100), min_items=1),
          lambda: [5.0, 25.0, 50.0, 100.0], "the canary's share (%) at each step"),
    Field("interval", duration, 300.0, "how long each step is held before it may advance"),
    Field("min_requests", integer(1, 10_000_000), 100,
          "canary answers in a step before any gate may pass (or fail)"),
    Field("gates", list_of(GATE), list, "all must hold for a step to advance"),
    Field("failure_statuses", list_of(status_code), lambda: [500, 502, 503, 504],
          "statuses counted as failures (the gateway's own 502 and 504 always are, but "
          "for a gRPC call's own deadline: see abandoned_after)"),
    Field("on_failure", one_of("rollback", "pause"), "rollback",
          "at the first failed gate: weight 0, or hold the weight and wait for an operator"),
    Field("abandoned_after", duration, None,
          "a request whose client left (or whose gRPC grpc-timeout ran out) after the "
          "upstream had it this long without an answer counts as that group's failure "
          "(default: not counted; never set it on long-poll routes)"),
    Field("id", string(r"[A-Za-z0-9_.:-]{1,64}", "a rollout id"), None,
          "names the rollout; a new id starts over (default: derived from the canary's "
          "upstream, an inline one as written, and the steps)"),
)

SCHEMA = Schema(
    Field("upstreams", list_of(CHOICE, min_items=1), doc="the groups and their weights"),
    Field("rules", list_of(RULE), list, "evaluated in order before the weights"),
    Field("key", request_key, "header:X-Trace-ID", "what the sticky choice hashes"),
    Field("group_header", request_header_name, "X-AB-Group",
          "header carrying the chosen group (not one the gateway writes itself)"),
    Field("env_header", request_header_name, "X-Env",
          "environment header, kept or set (not one the gateway writes itself)"),
    Field("env", string(r"[!-~]+", "a value"), None, "X-Env value set when absent"),
    Field("rollout", ROLLOUT, None, "a progressive rollout of one group (docs/rollouts.md)"),
)


def prepare(conf):
    groups = []
    for i, choice in enumerate(conf["upstreams"]):
        group = choice["group"] or (choice["upstream"] if isinstance(choice["upstream"], str)
                                    else None)
        if group is None:
            raise ValueError(f"upstreams[{i}]: an inline upstream needs a group name")
        if group in groups:
            raise ValueError(f"upstreams[{i}]: group {group!r} is used twice")
        groups.append(group)
    if not any(choice["weight"] for choice in conf["upstreams"]):
        raise ValueError("every weight is 0")
    for i, rule in enumerate(conf["rules"]):
        if rule["upstream"] not in groups:
            raise ValueError(f"rules[{i}].upstream: {rule['upstream']!r} is not a group "
                             f"(groups: {', '.join(groups)})")
        if not any(rule[k] for k in ("header", "cookie", "claim", "query")):
            raise ValueError(f"rules[{i}]: a rule needs at least one condition")
    failures, bounds = None, ()
    if conf["rollout"] is not None:
        _check_rollout(conf["rollout"], groups)
        failures = frozenset(conf["rollout"]["failure_statuses"]) | {502, 504}
        bounds = tuple(sorted({float(gate["max"]) for gate in conf["rollout"]["gates"]
                               if gate["kind"] == "latency"}))
    kind, _, name = conf["key"].partition(":")
    # Groups only claim rules, or rules on the consumer's headers, lead to (a staff-only
    # backend: no weight, no rollout reaches it): a client's X-AB-Group names one only when
    # its verified claims or its consumer hold one of those rules, or the header would be a
    # way past them. A group the weights reach is anyone's by the hash already, and a
    # service down the chain keeps its group by the header.
    weighed = {g for g, c in zip(groups, conf["upstreams"]) if c["weight"]}
    if conf["rollout"] is not None:
        weighed.add(conf["rollout"]["group"])
    leading = {}
    for rule in conf["rules"]:
        leading.setdefault(rule["upstream"], []).append(rule)
    claim_gated = {group: tuple(rules) for group, rules in leading.items()
                   if group not in weighed and all(map(_gates, rules))}
    if conf["rollout"] is not None and not any(
            w for _, w in core_rollout.baseline_weights(
                groups, [c["weight"] for c in conf["upstreams"]], conf["rollout"]["group"],
                claim_gated)):
        raise ValueError("rollout: every group beside the canary is reached only by claim or "
                         "consumer rules; a rollout needs a baseline group anyone may get")
    return {**conf, "groups": groups, "rollout_failures": failures, "claim_gated": claim_gated,
            "latency_bounds": bounds, "key_kind": kind,
            "key_name": name.lower().encode("latin-1") if kind == "header" else name,
            "group_header_b": conf["group_header"].lower().encode("latin-1"),
            "env_header_b": conf["env_header"].lower().encode("latin-1")}


def _gates(rule):
    """Whether ``rule`` holds only for callers the gateway vouched for: a claim it verified,
    or the consumer headers an auth plugin wrote (a client's copies never get in). A rule on
    X-Consumer-ID is a partner-only group as much as one on a claim is a staff-only one."""
    return bool(rule["claim"]) or any(name.lower().encode("latin-1") in CONSUMER_SET
                                      for name in rule["header"] or ())


def phases(conf):
    """finish counts answers for a rollout's gates; a fixed split has no use for it."""
    return {"access", "finish"} if conf["rollout"] is not None else {"access"}


def _check_rollout(rollout, groups):
    if rollout["group"] not in groups:
        raise ValueError(f"rollout.group: {rollout['group']!r} is not a group "
                         f"(groups: {', '.join(groups)})")
    if len(groups) < 2:
        raise ValueError("rollout: a rollout needs a baseline group beside the canary")
    steps = rollout["steps"]
    finest = 100.0 / core_rollout.SCALE
    if steps[0] < finest:
        # it rounds to no share of the hash space: "running" at a step that sent nobody,
        # whose gates never saw a request
        raise ValueError(f"rollout.steps: {steps[0]:g} is below {finest:g}, the finest share "
                         f"(%) a canary can get")
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise ValueError(f"rollout.steps: must grow step by step, got {steps}")
    for i, gate in enumerate(rollout["gates"]):
        needed = {"success_rate": "min", "latency": "max", "baseline": "max_excess"}[gate["kind"]]
        if gate[needed] is None:
            raise ValueError(f"rollout.gates[{i}]: a {gate['kind']} gate needs {needed}")


def needs(conf):
    """Claim conditions and a claim key read what the jwt plugin verified."""
    wanted = [("jwt", f"rules[{i}].claim") for i, rule in enumerate(conf["rules"])
              if rule["claim"]]
    if conf["key_kind"] == "claim":
        wanted.append(("jwt", f"key ({conf['key']})"))
    return wanted


def upstream_refs(conf):
    return {c["upstream"] for c in conf.get("upstreams") or ()
            if isinstance(c, dict) and isinstance(c.get("upstream"), str)}


def upstreams(conf):
    """Plugin hook: the upstreams this split may send to (their pools stay open)."""
    return [upstream for _, upstream, _ in conf["choices"]]


def link(conf, resolve):
    """Resolve upstream ids once the table knows them: (group, Upstream, cumulative weight)."""
    choices, total = [], 0
    for i, (group, choice) in enumerate(zip(conf["groups"], conf["upstreams"])):
        total += choice["weight"]
        choices.append((group, resolve(choice["upstream"], f"plugins.split.upstreams[{i}]"),
                        total))
    linked = {**conf, "choices": tuple(choices), "total": total,
              "by_group": {group: upstream for group, upstream, _ in choices}}
    rollout = conf["rollout"]
    if rollout is not None:
        index = conf["groups"].index(rollout["group"])
        # A named upstream by its id; an inline one by what it says (its targets): by its
        # place in the config, pointing it at a new version went on as the done rollout.
        ref = conf["upstreams"][index]["upstream"]
        linked["rollout_id"] = core_rollout.rollout_id(rollout, ref)
        # The baseline groups by their weights (core.rollout.baseline_weights): the second
        # draw of place_in_rollout, which the canary's share does not move.
        arms, upper = [], 0
        for group, weight in core_rollout.baseline_weights(
                conf["groups"], [c["weight"] for c in conf["upstreams"]], rollout["group"],
                conf["claim_gated"]):
            upper += weight
            arms.append((group, linked["by_group"][group], upper))
        linked["baseline_arms"] = (tuple(arms), upper)
    return linked


def place_in_rollout(conf, percent, key):
    """(group, upstream) for a request the weights place while the canary has ``percent``,
    in two draws. First, the canary or not: the canary's range is the top of the key's salted
    hash space and only grows with its share, so a key on the canary stays there while the
    rollout advances. Then, off the canary, which baseline group, by the key's plain hash,
    the one the weights use without a rollout, which the canary's share does not move: an
    A/B test's arms keep every key they had before the rollout and as the canary grows, and
    each gives the canary the same fraction of its keys (one range, shrunk from the top as
    in core.rollout.weights, moved the boundary between two arms at every step)."""
    point = hash_point(key, core_rollout.SCALE, CANARY_SALT) if key else \
        random.randrange(core_rollout.SCALE)
    if point >= core_rollout.SCALE - round(core_rollout.SCALE * percent / 100.0):
        group = conf["rollout"]["group"]
        return group, conf["by_group"][group]
    arms, total = conf["baseline_arms"]
    if len(arms) == 1:
        return arms[0][:2]
    return pick(arms, total, hash_point(key, total) if key else random.randrange(total))


def pick(choices, total, point):
    """The choice whose cumulative-weight range holds ``point`` in [0, total)."""
    for group, upstream, upper in choices:
        if point < upper:
            return group, upstream
    return choices[-1][:2]


def hash_point(key, total, salt=b""):
    """Where ``key`` falls in [0, total): the same in every worker and on every host."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8,
                             salt=salt).digest()
    return int.from_bytes(digest, "big") * total // HASH_SPACE


def _rule_holds(rule, ctx):
    for kind in ("header", "cookie", "claim", "query"):
        for name, wanted in (rule[kind] or {}).items():
            if ctx.value_of(kind, name) != wanted:
                return False
    return True


def access(conf, ctx):
    shut = step = percent = None
    if conf["rollout"] is not None:
        step = ctx.services.rollouts.current(ctx.route.id if ctx.route else "", conf["rollout_id"])
        percent = step["weight"] if step else 0.0     # no word from the controller yet
        if not percent:
            shut = conf["rollout"]["group"]
    group = None
    incoming = ctx.header_map.get(conf["group_header_b"])
    if incoming is not None:
        name = incoming.decode("latin-1")
        gated = conf["claim_gated"].get(name)
        if name in conf["by_group"] and name != shut and (
                gated is None or any(_rule_holds(rule, ctx) for rule in gated)):
            group = name
    if group is None:
        for rule in conf["rules"]:
            if rule["upstream"] != shut and _rule_holds(rule, ctx):
                group = rule["upstream"]
                break
    weighed = group is None
    if weighed:
        key = ctx.value_of(conf["key_kind"], conf["key_name"])
        if percent is not None:
            group, ctx.upstream = place_in_rollout(conf, percent, key)
        else:
            total = conf["total"]
            point = hash_point(key, total) if key else random.randrange(total)
            group, ctx.upstream = pick(conf["choices"], total, point)
    else:
        ctx.upstream = conf["by_group"][group]
    ctx.vars["split_group"] = group
    if percent is not None and group == conf["rollout"]["group"]:
        # however it got there: a websocket on the canary is closed if the rollout is rolled
        # back or aborted (Runtime.end_if_revoked), or it went on talking to it for hours
        ctx.vars["rollout_canary"] = conf["rollout_id"]
    if step is not None and weighed:
        # Only traffic the weights placed judges a step: a group chosen by X-AB-Group or a
        # rule is the client's choice, and a client could steer the gates with it.
        ctx.vars["rollout"] = step["window"]
    ctx.set_header(conf["group_header"], group)
    if conf["env"] and conf["env_header_b"] not in ctx.header_map:
        ctx.set_header(conf["env_header"], conf["env"])
    return None


def finish(conf, ctx, status):
    """Count the answer for the rollout's gates: its group, failed or not, and how long the
    upstream took to answer (request sent to answer head: a slow client's upload or download
    is no latency of the canary's). Only the upstream decides: an answer the gateway made
    itself, or one whose client left or whose gRPC deadline ran out (but after
    ``abandoned_after``), is not counted, but for the refusal of a breaker open on the
    chosen upstream (``upstream_refused``): its failures opened it, and uncounted, a broken
    canary behind one never reached ``min_requests`` and was never rolled back."""
    window = ctx.var("rollout")
    if window is None:
        return
    if status == 0 or ctx.var("grpc_deadline_hit"):
        # The client left, or its gRPC call's grpc-timeout ran out: the client's patience,
        # said in the call (counted as the upstream's failure, a client's 1 ms deadlines
        # rolled a healthy canary back). Uncounted, a canary that answered nobody (hung) was
        # neither promoted nor rolled back while its clients gave up before read_timeout:
        # the step held its share of users for good. Counted once the upstream had the
        # request abandoned_after: a client leaving sooner says nothing of the upstream.
        waited = ctx.var("abandoned_wait")
        limit = conf["rollout"]["abandoned_after"]
        if waited is not None and limit is not None and waited >= limit:
            ctx.services.rollouts.record(ctx.route.id, window, ctx.vars["split_group"], True,
                                         waited, conf["latency_bounds"])
        return
    if ctx.ended_by is not None:
        if ctx.var("upstream_refused") is not None:     # a breaker open on this upstream
            # no answer: slower than any bound (at 0 s it made a latency-only gate hold)
            ctx.services.rollouts.record(ctx.route.id, window, ctx.vars["split_group"], True,
                                         float("inf"), conf["latency_bounds"])
        return
    if ctx.upstream_seconds is None and not ctx.upstream_erred():
        return          # never reached the upstream (a 413, a 408): says nothing of it
    seconds = ctx.upstream_seconds if ctx.upstream_seconds is not None else \
        time.monotonic() - (ctx.started or time.monotonic())     # a connect error: its wait
    ctx.services.rollouts.record(ctx.route.id, window, ctx.vars["split_group"],
                                 ctx.upstream_failed(status, conf["rollout_failures"]), seconds,
                                 conf["latency_bounds"])


def upgraded(conf, ctx):
    """A websocket counts at its handshake (a checked 101): left to finish, it counted when
    its tunnel closed, hours later perhaps, in whatever window was current then."""
    finish(conf, ctx, 101)
    if ctx.var("rollout") is not None:
        del ctx.vars["rollout"]         # counted: finish, at the close, says nothing more


ADMIN_VIEW = "rollouts"


def admin_view(uses, services):
    """Plugin hook for /admin/rollouts: every rollout as this host's rollouts helper last saw
    it (step, weights, each gate's value and verdict, history)."""
    from ..helpers.rollouts import read_status
    status = read_status(getattr(services.local_store, "directory", None))
    rollouts = {}
    for route, conf in uses:
        if conf.get("rollout") is None:
            continue
        entry = status["routes"].get(route.id)
        rollouts[route.id] = entry if entry is not None and entry["id"] == conf["rollout_id"] \
            else {"id": conf["rollout_id"], "status": "not started (no word from the "
                                                        "rollouts helper yet)"}
    return {"host": status.get("host"), "writer": status.get("leader"),
            "updated": status.get("updated"), "rollouts": rollouts}
