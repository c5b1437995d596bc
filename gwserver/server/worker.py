"""The gunicorn worker class: gevent's StreamServer with gwserver's own HTTP/1.1 handler.

gunicorn's ``GeventWorker`` gives us the master protocol (heartbeat, signals, parent watch,
graceful exit); its WSGI handling is replaced by ``ClientConnection`` (httptools parsing, direct
proxying), measured at several times the stock worker's throughput (docs/benchmarks.md). Everything
with I/O (pools, buffers, the deadline ticker) is created in ``run()``, after fork.
"""
import gc
import itertools
import json
import logging
import os
import signal
import socket
import time

import gevent
import gevent.event
from gevent.pool import Pool
from gevent.server import StreamServer
from gunicorn.workers.ggevent import GeventWorker

from .. import proctitle
from ..net.deadlines import Deadlines
from ..client.http1 import ClientConnection
from ..net.sockets import RECV_SIZE

log = logging.getLogger("gwserver.worker")
_escape = json.encoder.encode_basestring      # the C encoder: ~0.2 us a string

ACCESS_FLUSH_LINES = 256
SEND_TIMEOUT = 60.0                            # nginx's send_timeout


def idle_connections(pool):
    """Open connections waiting in a urllib3 pool (its queue is pre-filled with None slots)."""
    return sum(1 for conn in list(pool.pool.queue) if conn is not None) if pool.pool else 0


class GatewayWorker(GeventWorker):

    def init_signals(self):
        super().init_signals()
        # gunicorn resets SIGHUP to its default (terminate) in workers, so `systemctl kill -s HUP`
        # on the whole cgroup would kill them mid-request. Only the master reloads.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        # The master blocked the stop signals across fork (GatewayArbiter.spawn_worker): with
        # our handlers in place, deliver any that arrived meanwhile.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGQUIT,
                                                    signal.SIGINT})

    def handle_exit(self, sig, frame):
        super().handle_exit(sig, frame)
        # Runs in the signal handler: Event.set() only schedules the wake-up, it never switches.
        stopping = getattr(self, "stopping", None)     # None before run() set up the worker
        if stopping is not None:
            stopping.set()

    def load_wsgi(self):
        self.wsgi = None        # not a WSGI server: requests are handled by ClientConnection

    # -- set-up after fork -------------------------------------------------------------------

    def setup_after_fork(self):
        self.conf = self.app.conf
        self.router = self.conf.router
        self.table = self.table_reader = None
        self.pools_checked, self.pools_pruned_at = True, 0.0
        if self.conf.etcd is not None:
            self.follow_published_table()
        self.stopping = gevent.event.Event()
        self.in_flight = 0
        self.open_clients = 0
        self.idle_clients = {}          # ClientConnection -> None, oldest first
        self.admin_auth_failures = {}   # client address -> (wrong tokens, since when)
        from ..core.realip import TrustedProxies
        server = self.conf.server
        self.trusted_proxies = TrustedProxies(server["trusted_proxies"], server["real_ip_header"])
        self.metrics = None
        if self.conf.admin["metrics"] and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from .metrics import WorkerMetrics
            self.metrics = WorkerMetrics()
        self.setup_services()
        self.send_timeout = SEND_TIMEOUT
        self.deadlines = Deadlines(interval=0.05, on_tick=self.on_tick)
        self.client_buf = bytearray(RECV_SIZE)
        self.client_view = memoryview(self.client_buf)
        self.upstream_buf = bytearray(RECV_SIZE)
        self.upstream_view = memoryview(self.upstream_buf)
        from ..upstream.proxy import Proxy    # urllib3 imports ssl: only after gevent patched it
        self.proxy = Proxy(self)
        self.handled = 0
        self.max_requests = self.conf.server["max_requests"] or 0
        self.request_ids = itertools.count(1)
        self.request_id_prefix = os.urandom(6).hex()
        logconf = self.conf.log
        self.access_enabled = logconf["access_log"]
        self.access_json = logconf["access_format"] == "json"
        from ..core.accesslog import compile_fields
        self.access_fields = compile_fields(logconf["access_fields"], logconf["access_format"])
        self.tracing = self.conf.tracing["enabled"]
        self.emit_b3 = self.conf.tracing["b3"]
        self.trace_response_header = self.conf.tracing["response_header"].encode("latin-1")
        self.span_exporter = None
        if self.tracing and self.conf.tracing["otlp_endpoint"]:
            from .otel import SpanExporter
            self.span_exporter = SpanExporter(self.conf.tracing["otlp_endpoint"],
                                              self.conf.tracing["service_name"])
        self._access_lines = []
        self._clock_second = None
        self._clock_text = ""
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
        # Everything built so far lives as long as the worker: move it out of the collector's
        # sight, and collect the young generation less often (each request allocates ~100
        # short-lived objects; the default 700 made gen-0 runs ~4% of a worker's CPU).
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)

    def setup_services(self):
        """Stores and metrics that plugins use (ctx.services), built after fork."""
        from ..services import Services
        from ..state.store import LocalStore, RedisStore
        path = self.conf.server["state_dir"]       # [server] state_dir; the master made it
        local = LocalStore(path)
        redis = self.conf.redis
        from ..helpers.rollouts import RolloutView
        self.services = services = Services(local if redis is None else RedisStore(
            redis["url"], redis["timeout"], redis["pause"], redis["key_prefix"]), local,
            self.metrics, self.table.consumers if self.table is not None else
            self.conf.consumers, RolloutView(path))
        if self.metrics is not None:
            for store in {services.local_store, services.limit_store}:
                store.on_transition = self.metrics.breaker_transition
        from ..helpers.health import HealthView, PassiveTracker
        if self.conf.tls_server is not None:
            self.conf.tls_server.state_dir = path       # OCSP staples from the ocsp helper
        self.health = HealthView(path)
        self.health.refresh()
        self.passive = PassiveTracker(self.health, self.metrics.count_ejection
                                      if self.metrics is not None else None)

    def follow_published_table(self):
        """etcd mode: the table is what the config-sync process publishes (issue 3)."""
        from ..core.table import LiveTable
        from ..plugins import load_registry
        from ..sync.shm import TableReader
        conf = self.conf
        self.table = LiveTable.for_conf(conf, load_registry())
        self.router = self.table.router       # changed in place from now on
        self.table_reader = TableReader(conf.etcd["runtime_dir"])
        if self.table_reader.changed():
            self.refresh_table()

    def refresh_table(self):
        """Apply new generations. Runs between requests and never yields: atomic for them."""
        steps, generation = self.table_reader.updates()
        if not steps:
            return
        started = time.monotonic()
        self.table.apply_steps(steps)
        revision = steps[-1][1]["revision"]
        self.table_reader.record(generation, revision, len(self.router))
        self.pools_checked = False      # targets may be gone: prune their pools (on_tick)
        gc.freeze()         # a large table stays out of every later full collection
        log.info("route table generation %d (etcd revision %s) applied in %.1f ms: %d routes",
                 generation, revision, (time.monotonic() - started) * 1000, len(self.router))

    def on_tick(self):
        """Every 50 ms: flush the access log; an idle worker picks up a new table too; target
        health (active verdicts, passive ejections, ejections expiring) is re-read."""
        self.flush_access_log()
        if self.table_reader is not None and self.table_reader.changed():
            self.refresh_table()
        self.health.refresh()
        if self.conf.tls_server is not None:
            self.conf.tls_server.refresh_staples()
        now = time.monotonic()
        self.proxy.share_tick(now)
        if not self.pools_checked and now - self.pools_pruned_at >= 1.0:
            self.pools_checked, self.pools_pruned_at = True, now
            self.prune_pools()

    def prune_pools(self):
        """Close the keep-alive pools of targets no upstream has any more. Idle connections
        close now; one in use finishes its request, then closes (urllib3 closes what is put
        back into a closed pool): removed targets are drained, not cut."""
        live = {t.key for upstream in self.table.upstreams.values() for t in upstream.targets}
        live.update(t.key for route in self.router.routes.values()
                    for t in route.upstream.targets)
        live.update(t.key for route in self.router.routes.values()
                    for upstream in route.chain.linked_upstreams() for t in upstream.targets)
        closed = self.proxy.pools.prune(live)
        if closed:
            log.info("closed the pools of %d removed targets: %s", len(closed),
                     ", ".join(sorted(closed)))
    def run(self):
        profile_dir = os.environ.get("GWSERVER_PROFILE")
        if not profile_dir:
            return self.serve()
        import cProfile     # opt-in: the benchmark's "where does the time go" (scripts/bench)
        profiler = cProfile.Profile()
        try:
            profiler.runcall(self.serve)
        finally:
            profiler.dump_stats(os.path.join(profile_dir, f"worker-{os.getpid()}.prof"))

    def serve(self):
        self.setup_after_fork()
        proctitle.set_title(self.conf.server["proc_name"], "worker")
        self.deadlines.start()
        servers = []
        admin_address = self.admin_address()
        tls_addresses = self.tls_addresses()
        from ..client.h2server import h2c_addresses
        h2c = h2c_addresses(self.conf)
        for listener in self.sockets:
            listener.setblocking(1)
            address = tuple(listener.getsockname()[:2])
            handle = self.handle_admin if address == admin_address else \
                self.handle_tls_client if address in tls_addresses else \
                self.handle_h2c_client if address in h2c else self.handle_client
            server = StreamServer(listener, spawn=Pool(self.worker_connections), handle=handle)
            if self.cfg.workers > 1:
                server.max_accept = 1   # spread accepts over workers, as gunicorn does
            server.start()
            servers.append(server)
        while self.alive:
            self.notify()
            self.update_gauges()
            self.stopping.wait(1.0)
        self.drain(servers)

    def drain(self, servers):
        """Stop accepting and let every connection finish, within graceful_timeout.

        Idle keep-alive connections are not cut: a client may be sending its next request at
        that very moment, and would see a reset. Each gets one more request, answered with
        ``Connection: close``, or reaches its ordinary keep-alive timeout.
        """
        for server in servers:
            server.close()
        deadline = time.monotonic() + self.cfg.graceful_timeout
        while time.monotonic() < deadline:
            if all(server.pool.free_count() == server.pool.size for server in servers):
                break
            self.notify()
            gevent.sleep(0.05)
        else:
            log.warning("graceful timeout (%ss): cutting off remaining connections",
                        self.cfg.graceful_timeout)
            for server in servers:
                server.stop(timeout=1)
        self.flush_access_log()
        if self.span_exporter is not None:
            self.span_exporter.shutdown()   # send the spans still batched
        self.update_gauges()            # the last counts, before the master archives them
        self.deadlines.stop()
        self.proxy.pools.close()
        self.proxy.share.close()
        self.proxy.h2.pools.close()
        if self.table_reader is not None:
            self.table_reader.forget()

    def admin_address(self):
        bind = self.conf.admin["bind"]
        if not bind:
            return None
        host, _, port = bind.rpartition(":")
        return (host.strip("[]"), int(port))

    def handle_admin(self, sock, addr):
        from .admin import AdminConnection
        try:
            AdminConnection(self, sock, addr).serve()
        except Exception:
            log.exception("unhandled error on the admin listener")
            sock.close()

    def update_gauges(self):
        """Once a second (and before a scrape): gauges that would cost per request."""
        metrics = self.metrics
        if metrics is None:
            return
        metrics.flush()
        metrics.in_flight.set(self.in_flight)
        for pool in self.proxy.pools.pools.values():
            metrics.pool_idle.labels(f"{pool.scheme}://{pool.host}:{pool.port}").set(
                idle_connections(pool))
        if self.table_reader is not None:
            metrics.generation.set(self.table_reader.generation)
        self.update_target_gauges(metrics)
        store = self.services.limit_store
        if store is not self.services.local_store:
            metrics.redis_up.set(1 if store.healthy else 0)

    def update_target_gauges(self, metrics):
        from ..helpers.health import target_key
        watched = {route.upstream.id: route.upstream for route in self.router.routes.values()
                   if route.upstream.health_check or route.upstream.passive}
        down = self.health.down
        for upstream in watched.values():
            for target in upstream.targets:
                metrics.target_up.labels(upstream.id, target.url).set(
                    0 if target_key(upstream.id, target.url) in down else 1)

    def tls_addresses(self):
        out = set()
        for bind in self.conf.tls["bind"] if self.conf.tls else ():
            host, _, port = bind.rpartition(":")
            host = host.strip("[]")
            out.add((host, int(port)))
            if host in ("0.0.0.0", "::", ""):
                out.add(("0.0.0.0" if host != "::" else "::", int(port)))
        return out

    def handle_tls_client(self, sock, addr):
        """TLS listener: handshake (bounded by handshake_timeout), then HTTP/1.1 as usual."""
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)    # before the handshake
        tls = self.conf.tls_server.wrap(sock)
        try:
            with gevent.Timeout(self.conf.tls["handshake_timeout"]):
                tls.do_handshake()
        except (OSError, gevent.Timeout) as exc:
            log.info("TLS handshake with %s failed: %s", addr[0] if addr else "?", exc or
                     "timed out")
            sock.close()
            return
        try:
            if tls.alpn == b"h2":
                from ..client.h2server import H2ServerConnection
                H2ServerConnection(self, tls, addr, scheme="https").serve()
            else:
                ClientConnection(self, tls, addr, scheme="https").serve()
        except Exception:   # a bug in one connection must never take the worker down
            log.exception("unhandled error serving %s", addr)
            sock.close()

    def handle_h2c_client(self, sock, addr):
        """A plain listener with h2c on: the HTTP/2 preface or HTTP/1.1 (client.h2server)."""
        from ..client.h2server import serve_h2c_or_http1
        try:
            serve_h2c_or_http1(self, sock, addr)
        except Exception:   # a bug in one connection must never take the worker down
            log.exception("unhandled error serving %s", addr)
            sock.close()

    def handle_client(self, sock, addr):
        try:
            ClientConnection(self, sock, addr).serve()
        except Exception:   # a bug in one connection must never take the worker down
            log.exception("unhandled error serving %s", addr)
            try:
                sock.close()
            except OSError:
                pass

    def client_opened(self):
        """A client connection took a slot; if that was the last one, close the oldest idle
        keep-alive connection so the next client is accepted (nginx reuses them too)."""
        self.open_clients += 1
        if self.open_clients >= self.worker_connections and self.idle_clients:
            oldest = next(iter(self.idle_clients))
            del self.idle_clients[oldest]
            oldest.expire()

    def client_closed(self):
        self.open_clients -= 1

    # -- per-request helpers -----------------------------------------------------------------

    def retire(self):
        """max_requests reached: finish what is in flight and exit (the master replaces us)."""
        log.info("max_requests (%d) reached: worker retiring", self.max_requests)
        self.alive = False
        self.stopping.set()

    def clock_text(self):
        now = time.time()
        second = int(now)
        if second != self._clock_second:
            self._clock_second = second
            fmt = "%Y-%m-%dT%H:%M:%S" if self.access_json else "%d/%b/%Y:%H:%M:%S"
            self._clock_text = time.strftime(fmt, time.gmtime(second))
        return now, self._clock_text

    def log_access(self, conn, req, status, sent, upstream, start):
        """One access line ([log] access_fields, core.accesslog), buffered: written at most
        50 ms or ACCESS_FLUSH_LINES lines late."""
        elapsed_ms = (time.monotonic() - start) * 1000.0
        now, clock = self.clock_text()
        time_text = f"{clock}.{int((now % 1) * 1000):03d}Z" if self.access_json else \
            f"{clock} +0000"
        line = self.access_fields.line(req, status, sent, upstream, elapsed_ms, time_text)
        lines = self._access_lines
        lines.append(line)
        if len(lines) >= ACCESS_FLUSH_LINES:
            self.flush_access_log()

    def export_span(self, req, status, upstream, start):
        ended_ns = time.time_ns()
        started_ns = ended_ns - int((time.monotonic() - start) * 1e9)
        try:
            self.span_exporter.export(req, status, upstream, started_ns, ended_ns)
        except Exception:           # tracing must never fail a request or the worker
            log.exception("span export failed")

    def log_rejected(self, client_ip, exc):
        if not self.access_enabled:
            return
        now, clock = self.clock_text()
        if self.access_json:
            line = (f'{{"time":"{clock}.{int((now % 1) * 1000):03d}Z","client":"{client_ip}",'
                    f'"status":{exc.status},"rejected":{_escape(exc.reason)}}}\n')
        else:
            line = f'{client_ip} - - [{clock} +0000] "-" {exc.status} 0 "-" - 0\n'
        self._access_lines.append(line)

    def flush_access_log(self):
        """Write buffered access lines in one syscall: at most 50 ms or 256 lines late."""
        lines = self._access_lines
        if lines:
            self._access_lines = []
            data = "".join(lines).encode("utf-8", "replace")
            try:
                while data:
                    data = data[os.write(2, data):]
            except OSError:
                pass
