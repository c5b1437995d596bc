"""``gwserver rollouts list | status ROUTE | pause | resume | promote | abort ROUTE``.

Reads and changes the shared rollout state where the gateways keep it (etcd, else Redis, else
this host's state directory: state/rollout_store.py), by compare-and-swap, so a command and the
controller never overwrite each other. Gate values come from this host's rollouts helper
(its status file), as /admin/rollouts shows them. Exit status: 0 done, 1 the rollout does not
allow it (e.g. resume a running rollout) or there is no such rollout, 2 a bad conf file or a
store out of reach.
"""
import json
import os
import sys
import time

from .core import rollout as core
from .errors import NO_MASTER, ConfigError, no_master_words
from .terminal import printable

ACTIONS = ("list", "status") + core.COMMANDS


def add_parsers(sub):
    parser = sub.add_parser("rollouts", help="progressive rollouts: list, status, pause, "
                            "resume, promote, abort (docs/rollouts.md)")
    parser.add_argument("action", choices=ACTIONS + ("controller",),
                        help="controller: the helper process the master starts")
    parser.add_argument("route", nargs="?")
    from .cli import conf_option
    conf_option(parser)
    parser.add_argument("--reason", default="", help="recorded in the rollout's history")
    parser.add_argument("--json", action="store_true", help="status as JSON")
    parser.set_defaults(func=main)


def main(args):
    from .settings import load_conf
    if args.action == "controller":
        from .helpers.rollouts import run
        run(args.conf)
        return 0
    try:
        conf = load_conf(args.conf)
    except ConfigError as exc:
        from .cli import report
        return report(args.conf, exc)
    if args.action != "list" and not args.route:
        print(f"gwserver rollouts {args.action}: name the route", file=sys.stderr)
        return 2
    from redis.exceptions import RedisClusterException, RedisError
    from .state.rollout_store import for_conf
    from .helpers.rollouts import read_status
    from .sync.etcd import EtcdError
    state_store, _ = for_conf(conf)
    local = read_status(conf.server["state_dir"])["routes"]
    try:
        if args.action == "list":
            return list_rollouts(state_store, local)
        if args.action == "status":
            return show(args.route, state_store, local, args.json)
        return change(state_store, args.route, args.action, args.reason)
    except BrokenPipeError:
        raise       # our stdout closed (`| head`), not the store: cli.main says nothing
    except (EtcdError, RedisError, RedisClusterException, OSError) as exc:
        # etcd or Redis down, a host whose state_dir was never made: a traceback and exit 1,
        # which says "the rollout does not allow it"; exit 2 and why, as `gwserver routes`
        # (a Redis Cluster's RedisClusterException is no RedisError)
        # (a Sentinel with no master: in words, not 1,500 bytes of client repr per sentinel)
        text = str(exc)
        print(f"error: the rollout state in {where(state_store)} is out of reach: "
              f"{printable(no_master_words(text) if text.startswith(NO_MASTER) else text)}",
              file=sys.stderr)
        return 2


def where(state_store):
    """Where ``state_store`` keeps the rollouts, as the conf names it."""
    from .state.rollout_store import EtcdState, RedisState
    if isinstance(state_store, EtcdState):
        return "etcd"
    if isinstance(state_store, RedisState):
        return "Redis"
    return os.path.dirname(state_store.path)


def list_rollouts(state_store, local):
    """Exit 1 when a stored state is damaged (listed as such; the others as ever)."""
    stored = state_store.load_all()     # before the header: a store out of reach says so alone
    print(f"{'ROUTE':20} {'STATUS':12} {'STEP':>6} {'CANARY':>7}  GATES")
    damaged = []
    for route, raw in sorted(stored.items()):
        try:
            state = core.load_state(raw)
        except core.DamagedState as exc:
            print(f"{printable(route):20} {'DAMAGED':12} {'-':>6} {'-':>7}  -")
            damaged.append(f"route {printable(route)}: {damaged_state(exc)}")
            continue
        gates = ", ".join(f"{printable(g['gate'])}={_verdict(g)}" for g in
                          (local.get(route) or {}).get("gates", ())) or "-"
        print(f"{printable(route):20} {state.status:12} {state.step + 1:>3}/"
              f"{len(state.steps):<2} {state.weight:>6g}%  {gates}")
    for problem in damaged:
        print(problem, file=sys.stderr)
    return 1 if damaged else 0


def damaged_state(exc):
    return (f"its stored rollout state is damaged: {printable(exc)}; the rollouts helper of "
            f"a gateway that rolls it out starts it again from its first step")


def _verdict(gate):
    return {True: "ok", False: "FAIL", None: "waiting"}[gate["ok"]] + \
        (f"({gate['value']})" if gate["value"] is not None else "")


def show(route, state_store, local, as_json):
    raw = state_store.load(route)
    if raw is None:
        print(f"no rollout on route {route!r}", file=sys.stderr)
        return 1
    try:
        state = core.load_state(raw)
    except core.DamagedState as exc:
        print(f"route {printable(route)}: {damaged_state(exc)}", file=sys.stderr)
        return 1
    entry = local.get(route) if (local.get(route) or {}).get("epoch") == state.epoch else None
    if as_json:
        print(json.dumps(entry or json.loads(state.to_json()), indent=2))
        return 0
    print(f"route {printable(route)}: rollout {printable(state.id)} {state.status}, step "
          f"{state.step + 1} of {len(state.steps)} "
          f"({', '.join(f'{s:g}' for s in state.steps)} %), canary {state.weight:g}%")
    if entry is not None:
        print("weights: " + ", ".join(f"{g} {w:g}%" for g, w in entry["weights"].items()))
        print(f"window: {entry['window_age']:.1f}s of {entry['interval']:g}s; canary "
              f"{entry['canary']['requests']} requests, {entry['canary']['failures']} failed; "
              f"baseline {entry['baseline']['requests']}, {entry['baseline']['failures']}")
        for gate in entry["gates"]:
            print(f"gate {printable(gate['gate'])}: {_verdict(gate)} (bound "
                  f"{gate['bound']:g}): {printable(gate['reason'])}")
    print("history:")
    for item in state.history:
        at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(item["at"]))
        print(f"  {at}Z {printable(item['event']):9} step {item['step']} canary "
              f"{item['weight']:g}%: {printable(item['reason'])}")
    return 0


def change(state_store, route, action, reason):
    for _ in range(10):     # the controller may write in between: read again and retry
        raw = state_store.load(route)
        if raw is None:
            print(f"no rollout on route {route!r}", file=sys.stderr)
            return 1
        try:
            new = core.command(core.load_state(raw), action, time.time(), reason)
        except core.DamagedState as exc:
            print(f"route {printable(route)}: {damaged_state(exc)}", file=sys.stderr)
            return 1
        except core.TransitionError as exc:
            print(f"route {route}: {exc}", file=sys.stderr)
            return 1
        if state_store.swap(route, raw, new.to_json().encode()):
            print(f"route {route}: {new.status}, step {new.step + 1} of {len(new.steps)}, "
                  f"canary {new.weight:g}%")
            return 0
        time.sleep(0.1)
    print(f"route {route}: the state kept changing under us; try again", file=sys.stderr)
    return 1
