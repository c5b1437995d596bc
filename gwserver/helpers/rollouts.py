"""Rollouts on one host: the ``gwserver: rollouts`` helper, and what workers read and write.

Files in the host's state directory (GWSERVER_LOCAL_STATE):

    rollouts.json          by the helper, replaced whole when a step changes: route ->
                           {id, window, weight, status, group}; workers stat it every
                           0.25 s at most
    rollout-obs/PID.json   by each worker, twice a second while it has new counts: its
                           answers per route, window and group (core.rollout.Window lists)
    rollouts-status.json   by the helper every tick: state, weights, gate verdicts, history,
                           for /admin/rollouts and ``gwserver rollouts``
    rollouts.prom          by the helper: gwserver_rollout_* gauges for /metrics

The helper, every TICK: follows the route table (etcd mode, as the health checker does),
sums the workers' files into this host's totals and stores them (rollout_store), takes or
keeps the writer's lock, and for each route with a rollout reads the shared state, sums every
host's totals for the current window and asks core.rollout.decide. Only the lock holder
stores a transition, and then only by compare-and-swap; every host writes what it reads for
its workers, so a host that joins mid-rollout serves the current step from its first tick.
"""
import json
import logging
import os
import signal
import time

from ..core import rollout as core
from ..core.throttledlog import throttled_log
from ..errors import describe
from .helper import no_beat
from ..processes import pid_alive
from ..sync.shm import atomic_write, file_stamp, read_json

log = logging.getLogger("gwserver.rollouts")

STEP_FILE = "rollouts.json"
STATUS_FILE = "rollouts-status.json"
OBS_DIR = "rollout-obs"
# When this host's helper first saw each route's current step (Controller.first_seen), on
# the system's monotonic clock: kept across the helper's restarts within one boot.
SEEN_FILE = "rollouts-seen.json"
BOOT_ID = "/proc/sys/kernel/random/boot_id"
METRICS_FILE = "rollouts.prom"
TICK = 0.5


# -- worker side ------------------------------------------------------------------------------

class RolloutView:
    """A worker's view of the current steps, and its counts of answers per group."""

    CHECK_EVERY = 0.25
    FLUSH_EVERY = 0.5

    def __init__(self, state_dir):
        self.path = os.path.join(state_dir, STEP_FILE)
        self.obs_dir = os.path.join(state_dir, OBS_DIR)
        self.entries, self.stamp, self.checked = {}, None, 0.0
        self.generation = 0     # +1 each time the steps are read again (the worker's tunnels)
        self.counts = {}        # (route, window) -> {group: [requests, failures, buckets]}
        self.flusher = None

    def refresh(self):
        """Read the steps again if the file changed (one ``stat`` per CHECK_EVERY at most)."""
        now = time.monotonic()
        if now - self.checked >= self.CHECK_EVERY:
            self.checked = now
            stamp = file_stamp(self.path)
            if stamp != self.stamp:
                self.stamp = stamp
                self.entries = (read_json(self.path) or {}).get("routes", {})
                self.generation += 1

    def current(self, route_id, ident):
        """{"weight", "window", ...} of the route's rollout, or None if the helper has not
        started this one (``ident``) yet."""
        self.refresh()
        entry = self.entries.get(route_id)
        return entry if entry is not None and entry.get("id") == ident else None

    def canary_shut(self, route_id, group):
        """Is the route's rollout of ``group`` rolled back or aborted now (its canary gets
        nobody)? Its current one, whichever placed a websocket on the canary: a route put
        again with new steps begins a new rollout (its own id), and a websocket the one before
        had placed there talked on to the canary when the new one was aborted. Of that group
        only: a new rollout of another group left this one a baseline group, still served.
        (The steps as last read: the caller refreshes.)"""
        entry = self.entries.get(route_id)
        return entry is not None and entry.get("group", group) == group and \
            not entry.get("weight")

    def record(self, route_id, window, group, failed, seconds, bounds=()):
        """One answer of ``group``; ``bounds``: the rollout's latency gates' maxes, each
        counted exactly (core.rollout.Window.slower)."""
        groups = self.counts.get((route_id, window))
        if groups is None:
            groups = self.counts[(route_id, window)] = {}
        counts = groups.get(group)
        if counts is None:
            counts = groups[group] = [0, 0, [0] * (len(core.LATENCY_BOUNDS) + 1),
                                      [[bound, 0] for bound in bounds]]
        counts[0] += 1
        counts[1] += bool(failed)
        counts[2][core.bucket_of(seconds)] += 1
        for pair in counts[3]:
            if seconds > pair[0]:
                pair[1] += 1
        if self.flusher is None:
            import gevent
            self.flusher = gevent.spawn(self._flush_loop)

    def _flush_loop(self):
        import gevent
        os.makedirs(self.obs_dir, exist_ok=True)
        path, written = os.path.join(self.obs_dir, f"{os.getpid()}.json"), None
        while True:
            gevent.sleep(self.FLUSH_EVERY)
            windows = {route: entry["window"] for route, entry in self.entries.items()}
            for key in [k for k in self.counts if windows.get(k[0]) != k[1]]:
                del self.counts[key]        # a past step's stragglers
            data = json.dumps([[route, window, groups] for (route, window), groups
                               in self.counts.items()]).encode()
            if data != written:
                try:
                    try:
                        atomic_write(path, data)
                    except FileNotFoundError:   # removed under us: the gates would be blind
                        os.makedirs(self.obs_dir, exist_ok=True)
                        atomic_write(path, data)
                    written = data
                except OSError as exc:
                    throttled_log.log(log, logging.WARNING, "rollout obs",
                                      "cannot write %s: %s", path, exc)


def host_totals(state_dir, current=frozenset()):
    """The workers' counts summed: {(route, window): {group: Window}}. Files of workers that
    are gone stay (their answers count) while one of their windows is ``current``, and a
    minute more: a reload's or recycle's replaced workers took their counts with them, and
    the step forgot its failures. ``current`` None (a helper's first tick, which knows no
    window yet) deletes none: a helper restarted after a reload deleted them all."""
    directory = os.path.join(state_dir, OBS_DIR)
    totals = {}
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return totals
    for name in names:
        path = os.path.join(directory, name)
        data = read_json(path) if name.endswith(".json") else None
        if data is None:
            continue
        if current is not None and not _alive(name[:-5]) and \
                time.time() - os.path.getmtime(path) > 60 and \
                not any(window in current for _, window, _ in data):
            os.unlink(path)
            continue
        for route, window, groups in data:
            into = totals.setdefault((route, window), {})
            for group, counts in groups.items():
                into[group] = into.get(group, core.Window()) + core.Window.from_list(counts)
    return totals


def _alive(pid):
    try:
        return pid_alive(int(pid))
    except ValueError:
        return False


def boot_id():
    try:
        with open(BOOT_ID) as f:
            return f.read().strip() or None
    except OSError:
        return None


def load_seen(state_dir):
    """{route: (window, monotonic)} as save_seen kept it, if written in this boot (the
    monotonic clock starts over at each): a step is held on this host's own clock, and a
    restart of its helper did not stop that clock."""
    data = read_json(os.path.join(state_dir, SEEN_FILE))
    boot, now = boot_id(), time.monotonic()
    if not isinstance(data, dict) or boot is None or data.get("boot") != boot:
        return {}
    seen = {}
    for route, entry in (data.get("routes") or {}).items():
        try:
            window, mono = entry
            mono = float(mono)
        except (TypeError, ValueError):
            continue
        if isinstance(window, str) and mono <= now:
            seen[route] = (window, mono)
    return seen


def save_seen(state_dir, seen):
    boot = boot_id()
    if boot is None:
        return
    try:
        atomic_write(os.path.join(state_dir, SEEN_FILE), json.dumps(
            {"boot": boot, "routes": {r: list(entry) for r, entry in seen.items()}}).encode())
    except OSError as exc:
        throttled_log.log(log, logging.WARNING, "rollout seen", "cannot write %s: %s",
                          SEEN_FILE, exc)


def host_id(state_dir):
    """A random name for this gateway, kept in its state directory across restarts."""
    path = os.path.join(state_dir, "host-id")
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        ident = f"{os.uname().nodename}-{os.urandom(4).hex()}"
        atomic_write(path, ident.encode())
        return ident


# -- the helper -------------------------------------------------------------------------------

def rollouts_in(router):
    """{route id: linked plugin conf} of the routes with a rollout: a step whose config
    carries ``rollout`` and ``rollout_id`` (the split plugin's, see split.link)."""
    return {route.id: conf for route in router.routes.values()
            for _, conf in route.chain.steps
            if isinstance(conf, dict) and conf.get("rollout_id") is not None}


def store_inputs(conf):
    """What rollout_store.for_conf makes the state and counts' backends of."""
    return (json.dumps(conf.etcd, sort_keys=True, default=str),
            json.dumps(conf.redis, sort_keys=True, default=str), conf.server["state_dir"])


class Controller:
    beat = staticmethod(no_beat)        # the helper's Heartbeat.beat, set by run()

    def __init__(self, conf, state_dir, backends=None):
        from ..state import rollout_store
        self.state_dir = state_dir
        self.host = host_id(state_dir)
        self.state, self.measurements = backends or rollout_store.for_conf(conf)
        # What those were made from (None: given, a test's): a reload that changes it gets
        # new ones (load)
        self.stores_of = None if backends else store_inputs(conf)
        self.pushed = {}        # (route, window) -> what this host last stored
        self.seen = {}          # route -> (id, run, epoch) last logged
        self.windows = None     # the windows the last tick judged (host_totals); None: none yet
        # route -> (window, monotonic time this host first saw it): read back, so that a
        # restarted helper (killed, hung, the gateway restarted) does not hold every running
        # step its whole interval again, from zero
        self.first_seen = load_seen(state_dir)
        self.seen_saved = dict(self.first_seen)
        self.leader = False
        self.reader = None
        self.load(conf)

    def load(self, conf):
        from ..core.table import LiveTable
        from ..plugins import load_registry
        from ..sync.shm import TableReader, etcd_prefix
        self.conf = conf
        self.table = LiveTable.for_conf(conf, load_registry())
        reader = TableReader(conf.etcd["runtime_dir"], etcd_prefix(conf)) if conf.etcd else None
        if self.reader is not None:
            self.reader.close()     # or a counter descriptor kept for good at each reload
        self.reader = reader
        inputs = store_inputs(conf)
        if self.stores_of is not None and inputs != self.stores_of:
            # A reload onto another Redis or etcd (a migration, new credentials, another
            # prefix): the clients made at the start asked the old ones for good, every
            # tick failed once they were gone, and no step moved again while the workers
            # counted into the new Redis.
            from ..state import rollout_store
            old = {getattr(backend, "client", None)
                   for backend in (self.state, self.measurements)}
            self.state, self.measurements = rollout_store.for_conf(conf)
            self.stores_of = inputs
            self.pushed, self.leader = {}, False     # nothing stored there by us yet
            for client in old:
                close = getattr(client, "close", None)      # (a Redis client's pool)
                if close is not None:
                    try:
                        close()
                    except Exception:       # noqa: BLE001 - an old client, gone or not
                        pass
            log.info("rollouts: state and counts kept in the reloaded [redis] / [etcd] "
                     "from now on")

    def follow(self):
        if self.reader is not None:
            self.reader.reopen_if_replaced()    # a runtime_dir removed and made again
        if self.reader is not None and self.reader.changed():
            steps, generation = self.reader.updates()
            self.table.apply_steps(steps)
            self.reader.generation = generation

    def tick(self, now=None, mono=None):
        now = time.time() if now is None else now
        mono = time.monotonic() if mono is None else mono
        self.follow()
        rollouts = rollouts_in(self.table.router)
        self.first_seen = {r: seen for r, seen in self.first_seen.items() if r in rollouts}
        # of routes that left (etcd churn): dropped, else one entry each stayed for good
        self.seen = {r: seen for r, seen in self.seen.items() if r in rollouts}
        self.pushed = {k: v for k, v in self.pushed.items() if k[0] in rollouts}
        totals = host_totals(self.state_dir, self.windows)
        self.leader = bool(rollouts) and self.state.lead(self.host)
        steps, status = {}, {}
        for route_id, conf in sorted(rollouts.items()):
            self.beat(30.0)             # a route's step: etcd and Redis calls, each timed
            state = self.step(route_id, conf, totals, (now, mono), status)
            if state is not None:
                steps[route_id] = {"id": state.id, "window": state.window_key,
                                   "weight": state.weight, "status": state.status,
                                   "group": conf["rollout"]["group"]}
        self.windows = frozenset(entry["window"] for entry in steps.values())
        data = json.dumps({"routes": steps}, sort_keys=True).encode()
        if (read_json(os.path.join(self.state_dir, STEP_FILE)) or {}).get("routes") != steps:
            atomic_write(os.path.join(self.state_dir, STEP_FILE), data)
        atomic_write(os.path.join(self.state_dir, STATUS_FILE), json.dumps(
            {"host": self.host, "leader": self.leader, "updated": round(now, 3),
             "routes": status}).encode())
        write_metrics(self.state_dir, status)
        if self.first_seen != self.seen_saved:          # a step began, or a route left
            save_seen(self.state_dir, self.first_seen)
            self.seen_saved = dict(self.first_seen)

    def stored_state(self, route_id, raw):
        """The route's stored State, or None: none stored, or a damaged one, which the writer
        replaces by starting the rollout again (compare-and-swap on the damaged value),
        rather than stop every tick at it."""
        if not raw:
            return None
        try:
            return core.load_state(raw)
        except core.DamagedState as exc:
            log.warning("rollouts: route %s: its stored state is damaged (%s); %s", route_id,
                        exc, "starting the rollout again" if self.leader else
                        "the writer starts it again")
            return None

    def seen_for(self, route_id, window, mono):
        """Seconds this helper has seen ``window`` of the route, on its own clock."""
        seen = self.first_seen.get(route_id)
        if seen is None or seen[0] != window:
            seen = self.first_seen[route_id] = (window, mono)
        return mono - seen[1]

    def step(self, route_id, conf, totals, clocks, status):
        (now, mono), rollout = clocks, conf["rollout"]
        raw = self.state.load(route_id)
        state = self.stored_state(route_id, raw)
        if state is None or state.id != conf["rollout_id"]:
            if not self.leader:
                return None         # the writer starts it; workers send nobody there yet
            new = core.start(rollout, conf["rollout_id"], now)
            if not self.state.swap(route_id, raw, new.to_json().encode()):
                return None
            raw, state = new.to_json().encode(), new
            self.first_seen[route_id] = (state.window_key, mono)
        self.log_transitions(route_id, state)
        window = state.window_key
        mine = {g: w.to_list() for g, w in totals.get((route_id, window), {}).items()}
        if mine and self.pushed.get((route_id, window)) != mine:
            self.measurements.put(route_id, window, self.host, mine)
            self.pushed = {k: v for k, v in self.pushed.items() if k[0] != route_id}
            self.pushed[(route_id, window)] = mine
        groups = {}
        for host in self.measurements.get(route_id, window):
            for group, counts in host.items():
                groups[group] = groups.get(group, core.Window()) + core.Window.from_list(counts)
        canary = groups.get(rollout["group"], core.Window())
        baseline = sum((w for g, w in groups.items() if g != rollout["group"]), core.Window())
        new, verdicts = core.decide(rollout, state, canary, baseline, now,
                                    self.seen_for(route_id, window, mono))
        if new is not state and self.leader:
            if self.state.swap(route_id, raw, new.to_json().encode()):
                state = new
                self.first_seen[route_id] = (state.window_key, mono)   # seen as it began
                self.log_transitions(route_id, state)
        shares = core.weights(conf["groups"], [c["weight"] for c in conf["upstreams"]],
                              rollout["group"], state.weight, conf["claim_gated"])
        status[route_id] = {
            **json.loads(state.to_json()), "group": rollout["group"],
            "weights": {g: w * 100 / core.SCALE for g, w in shares},
            "step_of": len(state.steps), "interval": rollout["interval"],
            "min_requests": rollout["min_requests"], "on_failure": rollout["on_failure"],
            # on this helper's clock, as decide holds the step on it (since: the writer's)
            "window_age": round(self.seen_for(route_id, state.window_key, mono), 3),
            # a step that ended on its gates shows what they measured then
            "gates": [v.as_dict() for v in verdicts] if state.status == core.RUNNING else
            state.history[-1].get("gates", [v.as_dict() for v in verdicts]),
            "canary": {"requests": canary.requests, "failures": canary.failures},
            "baseline": {"requests": baseline.requests, "failures": baseline.failures}}
        return state

    def log_transitions(self, route_id, state):
        """One line per transition this host sees (every host logs a rollback)."""
        last = self.seen.get(route_id)
        self.seen[route_id] = (state.id, state.run, state.epoch)
        # Another rollout of the route (or another run of it) starts at epoch 1 again: by the
        # epoch alone, the earlier one's last hid its transitions (a rollback's included)
        if last is None or last[:2] != (state.id, state.run):
            log.info("rollout %s: %s at step %d of %d, canary %g%%", route_id, state.status,
                     state.step + 1, len(state.steps), state.weight)
            return
        for entry in state.history:
            if entry["epoch"] > last[2]:
                level = logging.ERROR if entry["event"] in ("rollback", "abort") else \
                    logging.WARNING if entry["event"] == "pause" else logging.INFO
                log.log(level, "rollout %s: %s to step %d, canary %g%%: %s", route_id,
                        entry["event"], entry["step"], entry["weight"], entry["reason"])


class _Gauges:
    def __init__(self, status):
        self.status = status

    def collect(self):
        from ..server import metrics
        step, weight = (metrics.family(metrics.ROLLOUT_STEP),
                        metrics.family(metrics.ROLLOUT_WEIGHT))
        gate, rolled = (metrics.family(metrics.ROLLOUT_GATE),
                        metrics.family(metrics.ROLLOUT_ROLLED_BACK))
        for route, entry in sorted(self.status.items()):
            off = entry["status"] in (core.ROLLED_BACK, core.ABORTED)
            step.add_metric([route], 0 if off else entry["step"] + 1)
            weight.add_metric([route], entry["weight"])
            rolled.add_metric([route], 1 if entry["status"] == core.ROLLED_BACK else 0)
            for verdict in entry["gates"]:
                gate.add_metric([route, verdict["gate"]], {True: 1, False: 0, None: -1}[
                    verdict["ok"]])
        yield from (step, weight, gate, rolled)


def write_metrics(state_dir, status):
    from prometheus_client import CollectorRegistry, write_to_textfile
    registry = CollectorRegistry()
    registry.register(_Gauges(status))
    write_to_textfile(os.path.join(state_dir, METRICS_FILE), registry)


def run(conf_path):
    from ..errors import ConfigError
    from .helper import applied_conf, handlers_in_place, heartbeat, start_helper
    conf, state_dir = start_helper(conf_path, "rollouts", state_dir_needed=True,
                                   secrets=("redis",))     # (its counts are in Redis)
    controller = Controller(conf, state_dir)
    beat = controller.beat = heartbeat("rollouts").beat
    flags = set()
    signal.signal(signal.SIGHUP, lambda *_: flags.add("reload"))
    signal.signal(signal.SIGTERM, lambda *_: flags.add("stop"))
    handlers_in_place()
    failing = None          # what the last tick failed of: said once, and when it is over
    while "stop" not in flags:
        beat(TICK + 30.0)   # a tick: its routes beat too (Controller.beat)
        if "reload" in flags:
            flags.discard("reload")
            try:
                controller.load(applied_conf(conf_path))
                log.info("rollouts: routes re-read from %s", conf_path)
            except ConfigError as exc:
                log.error("rollouts: keeping the previous routes: %s", exc)
        try:
            controller.tick()
        except Exception as exc:        # etcd or Redis away: try again next tick
            # once per cause, not every tick: a Redis outage was a line each 0.5 s
            cause = describe(exc)
            if cause != failing:
                failing = cause
                log.warning("rollouts: %s; trying again every %gs (said once)", failing, TICK)
        else:
            if failing is not None:
                log.warning("rollouts: working again (%s is over)", failing)
                failing = None
        time.sleep(TICK)


def read_status(state_dir):
    """rollouts-status.json, with RFC 3339 times (what /admin/rollouts and the CLI show)."""
    from ..server.app import rfc3339
    status = (read_json(os.path.join(state_dir, STATUS_FILE)) if state_dir else None) or {}
    status.setdefault("routes", {})
    if status.get("updated"):
        status["updated"] = rfc3339(status["updated"])
    for entry in status["routes"].values():
        entry["since"] = rfc3339(entry["since"])
        for item in entry["history"]:
            item["at"] = rfc3339(item["at"])
    return status
