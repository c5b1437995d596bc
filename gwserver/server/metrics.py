"""Prometheus metrics, aggregated over all workers with prometheus-client's multiprocess mode.

- ``prepare(dir)`` runs in the master before anything imports prometheus_client (the library
  reads ``PROMETHEUS_MULTIPROC_DIR`` at import), and removes an earlier run's files there.
- ``WorkerMetrics`` lives in a worker: it counts in plain Python per request and pushes the
  deltas into the multiprocess values once a second.
- ``retire(pid)`` runs in the master when a worker exits: live gauges of the pid are removed,
  and its counters and histograms are added into one archive file per type and deleted. Without
  that, files of dead workers pile up with every reload and every scrape reads them all.
- ``render()`` is what ``/metrics`` on the admin listener serves.

Labels are bounded: route ids (never raw paths), a fixed set of methods, status classes, and
configured targets (the series by target of targets no longer in the table are not shown:
a service's instances come and go).
"""
import argparse
import os
import re
import sys
from bisect import bisect_left
from pathlib import Path
from typing import NamedTuple

from ..core.breaker import STATE_CODES
from ..core.routes import NO_ROUTE
from ..processes import own_dir, remove_dead_dirs

ENV = "PROMETHEUS_MULTIPROC_DIR"
METHODS = frozenset(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0)


class Metric(NamedTuple):
    """One metric as exported: the definitions below make it, and the table in
    docs/operations.md is generated from them (``python -m gwserver.server.metrics --write``;
    tests/unit/test_docs.py fails when the two drift)."""
    name: str                   # as declared: a counter's samples add _total
    kind: str                   # counter, gauge, histogram
    help: str
    labels: tuple = ()          # (label, what its values are, or "")
    mode: str = ""              # a workers' gauge: prometheus-client's multiprocess_mode
    source: str = ""            # not the workers: the process that exports it

    @property
    def exported(self):
        return self.name + "_total" if self.kind == "counter" else self.name


# Gauges of what a worker last saw (a breaker's state, a target up or down): the most recent
# value of the live workers. Not "mostrecent": a dead worker's file, and so its values, stayed
# for good (prometheus-client removes only live* gauges of a dead pid), so a target taken out
# of the table while down was reported down until the master restarted, and every reload
# left one file more per worker for each scrape to read.
LAST_SEEN = "livemostrecent"
ROUTE = ("route", f"route id, `{NO_ROUTE}` for no match (no route may be named so)")
ROUTE_ID = ("route", "route id")
TARGET = ("target", "target URL")
UPSTREAM = ("upstream", "upstream id")
MASTER, SYNC = "the master (`master.prom`)", "the config-sync process (etcd mode)"
HEALTH, ROLLOUTS = "the health process", "the rollouts process"

REQUESTS = Metric("gwserver_requests", "counter", "Requests answered, by route, method, "
                  "status class and the client's protocol (HTTP/1.1, HTTP/1.0, HTTP/2)",
                  (ROUTE, ("method", "7 + `OTHER`"), ("status", "`2xx`..."),
                   ("protocol", "`HTTP/1.1`, `HTTP/1.0`, `HTTP/2`")))
GATEWAY_ANSWERS = Metric(
    "gwserver_gateway_answers", "counter", "Answers the gateway made itself, not the upstream: "
    "by route, exact status, and source (the plugin that answered, or gateway for the "
    "gateway's own errors: 404, 413, 502, 503, 504...)",
    (ROUTE, ("status", "exact: `502`, `503`, `504`, `429`..."),
     ("source", "the plugin that answered, `gateway` for its own errors, or `cut` for an "
                "answer cut after its head went out: `status` is then the error that cut it, "
                "while `requests_total` counts the status the client got")))
DURATION = Metric("gwserver_request_duration_seconds", "histogram", "Time from a complete "
                  "request head to the end of the answer", (ROUTE,))
UPSTREAM_DURATION = Metric("gwserver_upstream_duration_seconds", "histogram", "Time from "
                           "sending to an upstream to its response head", (ROUTE,))
IN_FLIGHT = Metric("gwserver_requests_in_flight", "gauge", "Requests being served",
                   mode="livesum")
CONNECTIONS_OPENED = Metric("gwserver_upstream_connections_opened", "counter", "New upstream "
                            "connections (keep-alive pools missed)", (TARGET,))
POOL_IDLE = Metric("gwserver_upstream_pool_idle_connections", "gauge", "Idle keep-alive "
                   "connections held, by target (all its pools, and an HTTP/2 upstream's "
                   "connection without a stream; a target removed from the table is no "
                   "longer reported)", (TARGET,), mode="livesum")
GENERATION = Metric("gwserver_route_table_generation", "gauge", "Route table generation "
                    "each worker serves", mode="liveall")
LIMITS = Metric("gwserver_rate_limit_decisions", "counter", "Rate-limit decisions by route "
                "and outcome", (ROUTE, ("outcome", "")))
RATES = Metric("gwserver_rate_limit_effective_rate", "gauge", "Adaptive limits: the rate in "
               "force, as this host last heard it", (ROUTE_ID,), mode=LAST_SEEN)
BREAKER = Metric("gwserver_breaker_state", "gauge", "Circuit breaker state as this host last "
                 "saw it: 0 closed, 1 open, 2 half-open", (("breaker", ""),), mode=LAST_SEEN)
BREAKER_TRANSITIONS = Metric("gwserver_breaker_transitions", "counter", "Breaker state "
                             "changes, by breaker and state entered",
                             (("breaker", ""), ("state", "the state entered")))
FAULTS = Metric("gwserver_faults_injected", "counter", "Faults injected by the fault plugin, "
                "by route and kind (delay, abort)", (ROUTE, ("kind", "`delay`, `abort`")))
CONSUMER_REQUESTS = Metric("gwserver_consumer_requests", "counter", "Requests by the consumer "
                           "an auth plugin identified and status class (series bounded by "
                           "the number of consumers)",
                           (("consumer", "consumer id"), ("code", "`2xx`...")))
# (not only retries made: those the budget or the policy's timeout denied count too)
RETRIES = Metric("gwserver_upstream_retries", "counter", "Retries the policy asked for, by "
                 "upstream and outcome: retried (made, on another target when one is left), "
                 "budget_exhausted or timed_out (not made: the retry budget was spent, the "
                 "policy's timeout had passed)",
                 (UPSTREAM, ("outcome", "`retried`, `budget_exhausted`, `timed_out`")))
EJECTIONS = Metric("gwserver_upstream_ejections", "counter", "Targets ejected by passive "
                   "checks in this worker", (UPSTREAM, TARGET))
TARGET_UP = Metric("gwserver_upstream_target_up", "gauge", "1 when a checked or ejectable "
                   "target may take traffic, 0 when it is down (active or passive)",
                   (UPSTREAM, TARGET), mode=LAST_SEEN)
REDIS_UP = Metric("gwserver_redis_up", "gauge", "1 when Redis answered this worker's last "
                  "round trip (a Cluster: each master asked since it failed), 0 while limits "
                  "and breakers fall back (on_store_error); absent without [redis]",
                  mode="livemin")
RELOAD_SUCCESSFUL = Metric("gwserver_config_last_reload_successful", "gauge", "1 if the last "
                           "configuration reload (or the start) was applied, 0 if refused",
                           source=MASTER)
RELOAD_SUCCESS_TIME = Metric("gwserver_config_last_reload_success_timestamp_seconds", "gauge",
                             "Unix time of the last applied reload (or of the start)",
                             source=MASTER)
MASTER_GENERATION = Metric("gwserver_config_master_generation", "gauge", "Configuration "
                           "generation of the master: 1 at start, +1 per applied reload",
                           source=MASTER)
WORKER_TIMEOUTS = Metric("gwserver_worker_timeouts", "counter", "Workers the master stopped "
                         "because they sent no heartbeat for server.timeout seconds (blocked)",
                         source=MASTER)
SYNC_METRICS = (
    Metric("gwserver_config_generation", "gauge", "Route table generation published to "
           "workers", source=SYNC),
    Metric("gwserver_config_etcd_revision", "gauge", "etcd revision of the published table",
           source=SYNC),
    Metric("gwserver_config_etcd_connected", "gauge", "1 while the sync process has a live "
           "etcd watch", source=SYNC),
    Metric("gwserver_config_last_sync_timestamp_seconds", "gauge", "Unix time of the last "
           "successful etcd read or watch event", source=SYNC),
    Metric("gwserver_config_routes", "gauge", "Routes from etcd being served", source=SYNC),
    Metric("gwserver_config_upstreams", "gauge", "Upstreams from etcd being served",
           source=SYNC),
)
SYNC_REJECTED = Metric("gwserver_config_rejected_items", "gauge", "etcd items rejected, by "
                       "kind (not the routes waiting for their upstream: `routes status` "
                       "lists those apart, no problem)",
                       (("kind", "`routes`, `upstreams`, `consumers`"),), source=SYNC)
SYNC_REJECTIONS = Metric("gwserver_config_rejections", "counter", "Rejections logged since "
                         "the sync process started", source=SYNC)
HEALTH_CHECKS = Metric("gwserver_health_checks", "counter", "Active health checks by target "
                       "and result", (("result", ""), TARGET, UPSTREAM), source=HEALTH)
ROLLOUT_STEP = Metric("gwserver_rollout_step", "gauge", "Step of each route's rollout (1 = "
                      "first); 0 while rolled back or aborted", (ROUTE_ID,), source=ROLLOUTS)
ROLLOUT_WEIGHT = Metric("gwserver_rollout_canary_weight_percent", "gauge", "Share of the "
                        "route's traffic the canary group gets now", (ROUTE_ID,), source=ROLLOUTS)
ROLLOUT_GATE = Metric("gwserver_rollout_gate_ok", "gauge", "1 when the gate holds on this "
                      "step's window, 0 when it fails, -1 before min_requests",
                      (ROUTE_ID, ("gate", "")), source=ROLLOUTS)
ROLLOUT_ROLLED_BACK = Metric("gwserver_rollout_rolled_back", "gauge", "1 while the route's "
                             "rollout is rolled back by a failed gate", (ROUTE_ID,),
                             source=ROLLOUTS)

ACCESS_LOG_LOST = Metric("gwserver_access_log_lines_lost", "counter", "Access lines a worker "
                         "could not write (a full disk, an I/O error) and dropped")
HTTP2_CLOSED = Metric(
    "gwserver_http2_connections_closed", "counter", "HTTP/2 client connections the gateway "
    "closed with an error (GOAWAY), by reason: a flood guard's, or a protocol error h2 found "
    "(the frame or state error; its code is in the GOAWAY, the log says which)",
    (("reason", "`rapid_reset`, `malformed` (streams reset as malformed), `refused` (streams "
                "refused), `control_frames`, `empty_frames`, `header_block` (an HPACK bomb, a "
                "block too large), `protocol_error`"),))
CATALOG = (REQUESTS, GATEWAY_ANSWERS, DURATION, UPSTREAM_DURATION, IN_FLIGHT,
           CONNECTIONS_OPENED, POOL_IDLE, GENERATION, LIMITS, RATES, BREAKER,
           BREAKER_TRANSITIONS, REDIS_UP, TARGET_UP, EJECTIONS, RETRIES, FAULTS,
           CONSUMER_REQUESTS, HTTP2_CLOSED, ACCESS_LOG_LOST, RELOAD_SUCCESSFUL, RELOAD_SUCCESS_TIME,
           MASTER_GENERATION, WORKER_TIMEOUTS,
           *SYNC_METRICS, SYNC_REJECTED, SYNC_REJECTIONS, HEALTH_CHECKS, ROLLOUT_STEP,
           ROLLOUT_WEIGHT, ROLLOUT_GATE, ROLLOUT_ROLLED_BACK)

MODES = {"livesum": "sum of live workers", "livemin": "min over live workers",
         "liveall": "one per worker, label `pid`",
         LAST_SEEN: "most recent of live workers"}


def make(metric, **kwargs):
    """The prometheus-client object of a metric of CATALOG (a worker's, or one in the sync
    process's own registry: ``registry=``)."""
    import prometheus_client
    cls = {"counter": prometheus_client.Counter, "gauge": prometheus_client.Gauge,
           "histogram": prometheus_client.Histogram}[metric.kind]
    if metric.mode:
        kwargs["multiprocess_mode"] = metric.mode
    return cls(metric.name, metric.help, [name for name, _ in metric.labels], **kwargs)


def family(metric, **kwargs):
    """A metric of CATALOG as a prometheus-client metric family, for the collectors of the
    processes that are not workers (the master, the health and rollouts helpers): its
    labels from the catalog, or one ``value=`` for a metric without any."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    cls = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily}[metric.kind]
    if metric.labels:
        kwargs["labels"] = [name for name, _ in metric.labels]
    return cls(metric.name, metric.help, **kwargs)


DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
COMMAND = "python -m gwserver.server.metrics --write"
BEGIN = f"<!-- metrics: generated by `{COMMAND}`; do not edit -->"
END = "<!-- end of metrics -->"


def render_table():
    """The metrics table of docs/operations.md, markers included."""
    lines = [BEGIN, "| metric | type | labels | meaning |", "|---|---|---|---|"]
    for m in CATALOG:
        kind = m.kind + (f" ({MODES[m.mode]})" if m.mode else "") + \
            (f", from {m.source}" if m.source else "")
        labels = ", ".join(f"`{name}`" + (f" ({note})" if note else "")
                           for name, note in m.labels)
        lines.append(f"| `{m.exported}` | {kind} | {labels} | {m.help} |")
    return "\n".join([*lines, END])


def write_table(text):
    """``text`` (docs/operations.md) with its metrics table regenerated."""
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{DOC}: no metrics markers")
    return pattern.sub(lambda _: render_table(), text, count=1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"rewrite the table in {DOC}")
    args = parser.parse_args(argv)
    if args.write:
        DOC.write_text(write_table(DOC.read_text()))
    else:
        sys.stdout.write(render_table() + "\n")
    return 0


PRIVATE_PREFIX = "gwserver-metrics-"


def private_dir(base):
    """Master: a fresh metrics directory of its own in ``base`` (None: tempfile's default),
    named by its pid, after removing those of masters no longer running: a killed master
    cannot remove its own, and a runtime directory kept across restarts
    (RuntimeDirectoryPreserve=restart) would pile them up in memory, one per crash."""
    return own_dir(PRIVATE_PREFIX, base)


# prometheus_client's multiprocess files (counter_PID.db, gauge_livesum_PID.db, ...) and the
# archives retire() folds them into: all that prepare() removes of an earlier run
OWN_FILE = re.compile(r"(counter|histogram|summary|gauge_[a-z]+)_([0-9]+|archive)\.db")


def prepare(directory):
    """Master, before prometheus_client is imported anywhere: a multiprocess dir without the
    files of an earlier run. Only those go: an [admin] metrics_dir is the operator's to name,
    and the whole directory was removed, whatever it held (metrics_dir = "/dev/shm", the
    tmpfs the settings advise, took every other program's files there with it). Raises
    OSError when it cannot be made."""
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):
        if OWN_FILE.fullmatch(name):
            os.unlink(os.path.join(directory, name))
    # A worker orphaned by a master killed -9 moves its metrics to a private directory
    # beside this one (worker.metrics_of_its_own), removed at its exit; killed -9 too, it
    # left that directory behind for good: removed here once its pid is gone.
    remove_dead_dirs(os.path.dirname(os.path.abspath(directory)), PRIVATE_PREFIX)
    os.environ[ENV] = directory


def retire(pid):
    """Master, when a worker exits: fold its values into the archive, drop its files."""
    directory = os.environ.get(ENV)
    if not directory:
        return
    from prometheus_client import multiprocess
    from prometheus_client.mmap_dict import MmapedDict
    multiprocess.mark_process_dead(pid, directory)
    for kind in ("counter", "histogram"):
        path = os.path.join(directory, f"{kind}_{pid}.db")
        if not os.path.exists(path):
            continue
        archive = MmapedDict(os.path.join(directory, f"{kind}_archive.db"))
        try:
            for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(path):
                current, _ = archive.read_value(key)
                archive.write_value(key, current + value, timestamp)
        finally:
            archive.close()
        os.remove(path)


class _CurrentOnly:
    """The workers' metrics, the gauges of what a worker last saw only for what the table
    served now holds. prometheus-client cannot delete a series from a live worker's file: a
    target taken out through etcd (no restart) was reported as its worker last saw it, down
    for good if it left while down, until that worker exited; so was the breaker of a route
    or upstream taken out while open (GwserverBreakerOpen fired for good), and the adaptive
    rate of a route taken out. So were the series of every target that ever served (its
    connections opened, its idle pool at 0, its ejections): a service's instances come and
    go, each a new URL, and /metrics grew by a few series per instance that ever came."""

    def __init__(self, collector, targets, owners, urls=None, consumers=None):
        self.collector, self.targets, self.owners, self.urls = collector, targets, owners, urls
        self.consumers = consumers

    def collect(self):
        for family in self.collector.collect():
            if family.name in BY_TARGET_URL and self.urls is not None:
                family.samples = [sample for sample in family.samples
                                  if sample.labels.get("target") in self.urls]
            elif family.name == TARGET_UP.name and self.targets is not None:
                family.samples = [sample for sample in family.samples if (
                    sample.labels.get("upstream"), sample.labels.get("target")) in self.targets]
            elif family.name == BREAKER.name and self.owners is not None:
                family.samples = [sample for sample in family.samples
                                  if breaker_owner(sample.labels.get("breaker", ""))
                                  in self.owners]
            elif family.name in BY_ROUTE and self.owners is not None:
                # (no route may be named NO_ROUTE: its series are no route's)
                family.samples = [sample for sample in family.samples
                                  if sample.labels.get("route") == NO_ROUTE or
                                  ("route", sample.labels.get("route")) in self.owners]
            elif family.name == RETRIES.name and self.owners is not None:
                family.samples = [sample for sample in family.samples
                                  if ("upstream", sample.labels.get("upstream")) in self.owners]
            elif family.name == CONSUMER_REQUESTS.name and self.consumers is not None:
                family.samples = [sample for sample in family.samples
                                  if sample.labels.get("consumer") in self.consumers]
            yield family


# the workers' series by target URL, shown for the targets of the table only (_CurrentOnly)
BY_TARGET_URL = frozenset((CONNECTIONS_OPENED.name, POOL_IDLE.name, EJECTIONS.name))
# ... and by route, for the routes of the table and "none" only (retries by upstream and
# consumers' requests alike): routes made and removed through etcd (a preview environment's,
# a tenant's) each left a histogram and counters for the life of the master (a worker's
# file is folded into the archives at its exit)
# (an adaptive limit's rate gauge too, for the routes of the table only)
BY_ROUTE = frozenset(metric.name for metric in (REQUESTS, GATEWAY_ANSWERS, DURATION,
                                                UPSTREAM_DURATION, LIMITS, FAULTS, RATES))


def breaker_owner(key):
    """("route", id) or ("upstream", id) of a breaker key (plugins/breaker.breaker_key:
    ``route:ID``, ``upstream:ID``, either with ``:consumer=ID``; ids hold no "=")."""
    kind, _, rest = key.partition(":")
    return kind, rest.partition(":consumer=")[0]


def render(extra_files=(), targets=None, owners=None, urls=None, consumers=None):
    """The aggregate of every worker, in Prometheus text format, plus text files appended.
    ``targets``: the (upstream id, target URL) pairs whose up gauges are current (all, when
    None); ``owners``: the ("route", id) and ("upstream", id) pairs of the table, whose
    breakers' state and adaptive rate gauges are current (all, when None); ``urls``: the
    target URLs of the table, whose connection, pool and ejection series are shown (all,
    when None); ``consumers``: the consumer ids of the table, whose series are shown (all,
    when None). The series by route and upstream follow ``owners``."""
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess
    registry = CollectorRegistry()
    collector = multiprocess.MultiProcessCollector(None)
    registry.register(collector if targets is None and owners is None and urls is None and
                      consumers is None else
                      _CurrentOnly(collector, targets, owners, urls, consumers))
    parts = [generate_latest(registry)]
    for path in extra_files:
        try:
            with open(path, "rb") as f:
                parts.append(f.read())
        except OSError:
            pass
    return b"".join(parts)


class _Series:
    """One (route, method label, status class, protocol) in this worker, counted in plain
    Python."""

    __slots__ = ("count", "buckets", "total", "up_buckets", "up_total", "pushed", "children")

    def __init__(self, children):
        self.count = 0
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.up_buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = self.up_total = 0.0
        self.pushed = (0, [0] * len(self.buckets), 0.0, [0] * len(self.buckets), 0.0)
        self.children = children


class WorkerMetrics:
    """Per-worker metrics: counted in plain Python per request, pushed into prometheus-client's
    multiprocess values once a second (``flush``), before a scrape, and at exit.

    A multiprocess observation takes a (gevent-patched) lock and writes an mmap: ~15 us each
    here, and a request makes three; measured, that was 25% of a worker's throughput. Counting
    in Python costs a dict lookup and a bisect. A scrape can be up to a second behind.
    """

    def __init__(self):
        self.requests = make(REQUESTS)
        self.duration = make(DURATION, buckets=LATENCY_BUCKETS)
        self.upstream_duration = make(UPSTREAM_DURATION, buckets=LATENCY_BUCKETS)
        self.in_flight = make(IN_FLIGHT)
        self.connections_opened = make(CONNECTIONS_OPENED)
        self.pool_idle = make(POOL_IDLE)
        self.generation = make(GENERATION)
        self.limits = make(LIMITS)
        self.breaker = make(BREAKER)
        self.breaker_transitions = make(BREAKER_TRANSITIONS)
        self.faults = make(FAULTS)
        self.consumer_requests = make(CONSUMER_REQUESTS)
        self.gateway_answers = make(GATEWAY_ANSWERS)
        self.access_log_lost = make(ACCESS_LOG_LOST)
        self.http2_closed = make(HTTP2_CLOSED)
        self._series = {}
        self._answers = {}          # (route, status, source) -> [counted, pushed]
        self._consumers = {}        # (consumer, code class) -> [counted, pushed]
        self._limits = {}           # (route, outcome) -> [counted, pushed]
        self._faults = {}           # (route, kind) -> [counted, pushed]
        self.retries = make(RETRIES)
        self.ejections = make(EJECTIONS)
        self.target_up = make(TARGET_UP)
        self.rates = make(RATES)
        self._breakers = {}         # breaker key -> [state seen, state pushed]
        self._rates = {}            # route -> [rate seen, rate pushed]
        self._redis_up = None

    @property
    def redis_up(self):
        """Made on first use: a gauge without labels is written as 0 the moment it exists, and
        a gateway without [redis] must not export it at all (its HELP and the
        GwserverRedisUnreachable alert in conf/alerts.yml count on that)."""
        if self._redis_up is None:
            self._redis_up = make(REDIS_UP)
        return self._redis_up

    def effective_rate(self, route_id, rate):
        entry = self._rates.get(route_id)
        if entry is None:
            self._rates[route_id] = [rate, None]
        else:
            entry[0] = rate

    def breaker_state(self, key, state):
        entry = self._breakers.get(key)
        if entry is None:
            self._breakers[key] = [state, None]
        else:
            entry[0] = state

    def breaker_transition(self, key, state):
        self.breaker_transitions.labels(key, state).inc()
        self.breaker_state(key, state)

    def count_limit(self, route_id, outcome):
        _count(self._limits, (route_id, outcome))

    def count_fault(self, route_id, kind):
        _count(self._faults, (route_id, kind))

    def count_answer(self, route_id, status, source):
        """An answer the gateway made itself (an error, or a plugin's reply such as a 429):
        the series that tells a 503 of the breaker from an upstream's own 503."""
        _count(self._answers, (route_id or NO_ROUTE, str(status), source))

    def count_consumer(self, consumer_id, status):
        _count(self._consumers, (consumer_id, f"{status // 100}xx"))

    def count_retry(self, upstream_id, outcome):
        self.retries.labels(upstream_id, outcome).inc()

    def count_http2_close(self, reason):
        """An HTTP/2 client connection closed with an error (rare: pushed at once)."""
        self.http2_closed.labels(reason).inc()

    def count_ejection(self, upstream_id, target):
        self.ejections.labels(upstream_id, target).inc()

    def observe(self, route_id, method, status, seconds, upstream_seconds, protocol="HTTP/1.1"):
        # Keyed by the label, not the raw method: by the method, the 27 other methods llhttp
        # parses made 27 series more per route, status class and protocol, all of them
        # `OTHER`, kept and walked by every flush for the worker's life.
        if method not in METHODS:
            method = "OTHER"
        key = (route_id, method, status // 100, protocol)
        series = self._series.get(key)
        if series is None:
            route = route_id or NO_ROUTE
            series = self._series[key] = _Series((
                self.requests.labels(route, method, f"{status // 100}xx", protocol),
                self.duration.labels(route), self.upstream_duration.labels(route)))
        series.count += 1
        series.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        series.total += seconds
        if upstream_seconds is not None:
            series.up_buckets[bisect_left(LATENCY_BUCKETS, upstream_seconds)] += 1
            series.up_total += upstream_seconds

    def flush(self):
        """Push what was counted since the last flush into the shared multiprocess files."""
        for route_id, entry in self._rates.items():
            if entry[0] != entry[1]:
                self.rates.labels(route_id).set(entry[0])
                entry[1] = entry[0]
        for key, entry in self._breakers.items():
            if entry[0] != entry[1]:
                self.breaker.labels(key).set(STATE_CODES[entry[0]])
                entry[1] = entry[0]
        for counter, counts in ((self.limits, self._limits), (self.faults, self._faults),
                                (self.consumer_requests, self._consumers),
                                (self.gateway_answers, self._answers)):
            for labels, entry in counts.items():
                if entry[0] != entry[1]:
                    counter.labels(*labels).inc(entry[0] - entry[1])
                    entry[1] = entry[0]
        for series in self._series.values():
            count, buckets, total, up_buckets, up_total = series.pushed
            if series.count == count:
                continue
            counter, duration, upstream = series.children
            counter.inc(series.count - count)
            _push_histogram(duration, series.buckets, buckets, series.total - total)
            _push_histogram(upstream, series.up_buckets, up_buckets, series.up_total - up_total)
            series.pushed = (series.count, list(series.buckets), series.total,
                             list(series.up_buckets), series.up_total)


def _count(counts, labels):
    entry = counts.get(labels)
    if entry is None:
        entry = counts[labels] = [0, 0]
    entry[0] += 1


def _push_histogram(child, now, before, added_sum):
    """Add bucket deltas to a histogram child. prometheus-client keeps per-bucket (not
    cumulative) values in ``_buckets`` and the sum in ``_sum``; its collector accumulates."""
    for i, (a, b) in enumerate(zip(now, before)):
        if a != b:
            child._buckets[i].inc(a - b)
    if added_sum:
        child._sum.inc(added_sum)


if __name__ == "__main__":
    sys.exit(main())
