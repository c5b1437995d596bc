"""Prometheus metrics, aggregated over all workers with prometheus-client's multiprocess mode.

- ``prepare(dir)`` runs in the master before anything imports prometheus_client (the library
  reads ``PROMETHEUS_MULTIPROC_DIR`` at import), and empties the directory.
- ``WorkerMetrics`` lives in a worker: labelled children are cached per (route, method,
  status class), so the hot path does a dict lookup and three observations (~2-3 us each in
  multiprocess mode, PERF_NOTES).
- ``retire(pid)`` runs in the master when a worker exits: live gauges of the pid are removed,
  and its counters and histograms are added into one archive file per type and deleted. Without
  that, files of dead workers pile up with every reload and every scrape reads them all.
- ``render()`` is what ``/metrics`` on the admin listener serves.

Labels are bounded: route ids (never raw paths), a fixed set of methods, status classes, and
configured targets.
"""
import glob
import os
import shutil

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


class WorkerMetrics:
    def __init__(self):
        from prometheus_client import Counter, Gauge, Histogram
        self.requests = Counter("gwserver_requests", "Requests answered, by route, method and "
                                "status class", ["route", "method", "status"])
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
        self._children = {}

    def observe(self, route_id, method, status, seconds, upstream_seconds):
        key = (route_id, method, status // 100)
        children = self._children.get(key)
        if children is None:
            route = route_id or "none"
            children = self._children[key] = (
                self.requests.labels(route, method if method in METHODS else "OTHER",
                                     f"{status // 100}xx"),
                self.duration.labels(route), self.upstream_duration.labels(route))
        children[0].inc()
        children[1].observe(seconds)
        if upstream_seconds is not None:
            children[2].observe(upstream_seconds)


def leftover_files(directory):
    """Per-process files present (for tests and the operations doc)."""
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(directory, "*.db")))
