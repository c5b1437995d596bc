"""Prometheus metrics, aggregated over all workers with prometheus-client's multiprocess mode.

- ``prepare(dir)`` runs in the master before anything imports prometheus_client (the library
  reads ``PROMETHEUS_MULTIPROC_DIR`` at import), and empties the directory.
- ``WorkerMetrics`` lives in a worker: it counts in plain Python per request and pushes the
  deltas into the multiprocess values once a second.
- ``retire(pid)`` runs in the master when a worker exits: live gauges of the pid are removed,
  and its counters and histograms are added into one archive file per type and deleted. Without
  that, files of dead workers pile up with every reload and every scrape reads them all.
- ``render()`` is what ``/metrics`` on the admin listener serves.

Labels are bounded: route ids (never raw paths), a fixed set of methods, status classes, and
configured targets.
"""
import os
import shutil
from bisect import bisect_left

from ..core.breaker import STATE_CODES

ENV = "PROMETHEUS_MULTIPROC_DIR"
METHODS = frozenset(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0)


def prepare(directory):
    """Master, before prometheus_client is imported anywhere: a clean multiprocess dir."""
    if os.path.isdir(directory):
        shutil.rmtree(directory)
    os.makedirs(directory)
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


def render(extra_files=()):
    """The aggregate of every worker, in Prometheus text format, plus text files appended."""
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    parts = [generate_latest(registry)]
    for path in extra_files:
        try:
            with open(path, "rb") as f:
                parts.append(f.read())
        except OSError:
            pass
    return b"".join(parts)


class _Series:
    """One (route, method, status class) in this worker, counted in plain Python."""

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
        from prometheus_client import Counter, Gauge, Histogram
        self.requests = Counter("gwserver_requests", "Requests answered, by route, method, "
                                "status class and the client's protocol (HTTP/1.1, HTTP/1.0, "
                                "HTTP/2)", ["route", "method", "status", "protocol"])
        self.duration = Histogram("gwserver_request_duration_seconds", "Time from a complete "
                                  "request head to the end of the answer", ["route"],
                                  buckets=LATENCY_BUCKETS)
        self.upstream_duration = Histogram("gwserver_upstream_duration_seconds", "Time from "
                                           "sending to an upstream to its response head",
                                           ["route"], buckets=LATENCY_BUCKETS)
        self.in_flight = Gauge("gwserver_requests_in_flight", "Requests being served",
                               multiprocess_mode="livesum")
        self.connections_opened = Counter("gwserver_upstream_connections_opened", "New upstream "
                                          "connections (keep-alive pools missed)", ["target"])
        self.pool_idle = Gauge("gwserver_upstream_pool_idle_connections", "Idle keep-alive "
                               "connections held, by target", ["target"],
                               multiprocess_mode="livesum")
        self.generation = Gauge("gwserver_route_table_generation", "Route table generation "
                                "each worker serves", multiprocess_mode="liveall")
        self.limits = Counter("gwserver_rate_limit_decisions", "Rate-limit decisions by route "
                              "and outcome", ["route", "outcome"])
        self.breaker = Gauge("gwserver_breaker_state", "Circuit breaker state as this host last "
                             "saw it: 0 closed, 1 open, 2 half-open", ["breaker"],
                             multiprocess_mode="mostrecent")
        self.breaker_transitions = Counter("gwserver_breaker_transitions", "Breaker state "
                                           "changes, by breaker and state entered",
                                           ["breaker", "state"])
        self.faults = Counter("gwserver_faults_injected", "Faults injected by the fault plugin, "
                              "by route and kind (delay, abort)", ["route", "kind"])
        self.consumer_requests = Counter(
            "gwserver_consumer_requests", "Requests by the consumer an auth plugin identified "
            "and status class (series bounded by the number of consumers)",
            ["consumer", "code"])
        self.gateway_answers = Counter(
            "gwserver_gateway_answers", "Answers the gateway made itself, not the upstream: by "
            "route, exact status, and source (the plugin that answered, or gateway for the "
            "gateway's own errors: 404, 413, 502, 503, 504...)", ["route", "status", "source"])
        self._series = {}
        self._answers = {}          # (route, status, source) -> [counted, pushed]
        self._consumers = {}        # (consumer, code class) -> [counted, pushed]
        self._limits = {}           # (route, outcome) -> [counted, pushed]
        self._faults = {}           # (route, kind) -> [counted, pushed]
        self.retries = Counter("gwserver_upstream_retries", "Retries on another target, by "
                               "upstream and outcome (retried, budget_exhausted)",
                               ["upstream", "outcome"])
        self.ejections = Counter("gwserver_upstream_ejections", "Targets ejected by passive "
                                 "checks in this worker", ["upstream", "target"])
        self.target_up = Gauge("gwserver_upstream_target_up", "1 when a checked or ejectable "
                               "target may take traffic, 0 when it is down (active or "
                               "passive)", ["upstream", "target"], multiprocess_mode="mostrecent")
        self.rates = Gauge("gwserver_rate_limit_effective_rate", "Adaptive limits: the rate "
                           "in force, as this host last heard it", ["route"],
                           multiprocess_mode="mostrecent")
        self._breakers = {}         # breaker key -> [state seen, state pushed]
        self._rates = {}            # route -> [rate seen, rate pushed]
        self._redis_up = None

    @property
    def redis_up(self):
        """Made on first use: a gauge without labels is written as 0 the moment it exists, and
        a gateway without [redis] must not export it at all (its HELP and the
        GwserverRedisUnreachable alert in conf/alerts.yml count on that)."""
        if self._redis_up is None:
            from prometheus_client import Gauge
            self._redis_up = Gauge("gwserver_redis_up", "1 when Redis answered this worker's "
                                   "last round trip, 0 while limits and breakers fall back "
                                   "(on_store_error); absent without [redis]",
                                   multiprocess_mode="livemin")
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
        _count(self._answers, (route_id or "none", str(status), source))

    def count_consumer(self, consumer_id, status):
        _count(self._consumers, (consumer_id, f"{status // 100}xx"))

    def count_retry(self, upstream_id, outcome):
        self.retries.labels(upstream_id, outcome).inc()

    def count_ejection(self, upstream_id, target):
        self.ejections.labels(upstream_id, target).inc()

    def observe(self, route_id, method, status, seconds, upstream_seconds, protocol="HTTP/1.1"):
        key = (route_id, method, status // 100, protocol)
        series = self._series.get(key)
        if series is None:
            route = route_id or "none"
            series = self._series[key] = _Series((
                self.requests.labels(route, method if method in METHODS else "OTHER",
                                     f"{status // 100}xx", protocol),
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
