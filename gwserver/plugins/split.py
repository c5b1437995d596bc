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
"""
import hashlib
import random

from ..core.schema import (Field, Schema, header_name, integer, list_of, map_of, request_key,
                           string)

NAME = "split"
PRIORITY = 720          # after rate_limit (800); before breaker (700), which may key on it

HASH_SPACE = 1 << 64


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
    Field("claim", CONDITIONS, None, "verified JWT claim -> value"),
    Field("query", CONDITIONS, None, "query parameter -> value"),
    Field("upstream", string(r"[A-Za-z0-9_.:-]{1,128}", "a group name"),
          doc="the group (of `upstreams`) these requests go to"),
)

SCHEMA = Schema(
    Field("upstreams", list_of(CHOICE, min_items=1), doc="the groups and their weights"),
    Field("rules", list_of(RULE), list, "evaluated in order before the weights"),
    Field("key", request_key, "header:X-Trace-ID", "what the sticky choice hashes"),
    Field("group_header", header_name, "X-AB-Group", "header carrying the chosen group"),
    Field("env_header", header_name, "X-Env", "environment header, kept or set"),
    Field("env", string(r"[!-~]+", "a value"), None, "X-Env value set when absent"),
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
    kind, _, name = conf["key"].partition(":")
    return {**conf, "groups": groups, "key_kind": kind,
            "key_name": name.lower().encode("latin-1") if kind == "header" else name,
            "group_header_b": conf["group_header"].lower().encode("latin-1"),
            "env_header_b": conf["env_header"].lower().encode("latin-1")}


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
    return {**conf, "choices": tuple(choices), "total": total,
            "by_group": {group: upstream for group, upstream, _ in choices}}


def pick(choices, total, point):
    """The choice whose cumulative-weight range holds ``point`` in [0, total)."""
    for group, upstream, upper in choices:
        if point < upper:
            return group, upstream
    return choices[-1][:2]


def hash_point(key, total):
    digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") * total // HASH_SPACE


def _rule_holds(rule, ctx):
    for kind in ("header", "cookie", "claim", "query"):
        for name, wanted in (rule[kind] or {}).items():
            if ctx.value_of(kind, name) != wanted:
                return False
    return True


def access(conf, ctx):
    group = None
    incoming = ctx.header_map.get(conf["group_header_b"])
    if incoming is not None:
        name = incoming.decode("latin-1")
        if name in conf["by_group"]:
            group = name
    if group is None:
        for rule in conf["rules"]:
            if _rule_holds(rule, ctx):
                group = rule["upstream"]
                break
    if group is None:
        key = ctx.value_of(conf["key_kind"], conf["key_name"])
        point = hash_point(key, conf["total"]) if key else random.randrange(conf["total"])
        group, ctx.upstream = pick(conf["choices"], conf["total"], point)
    else:
        ctx.upstream = conf["by_group"][group]
    ctx.vars["split_group"] = group
    ctx.set_header(conf["group_header"], group)
    if conf["env"] and conf["env_header_b"] not in ctx.header_map:
        ctx.set_header(conf["env_header"], conf["env"])
    return None
