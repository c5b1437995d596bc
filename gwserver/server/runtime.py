"""What a request needs in one worker, built once after fork and handed to every connection.

``GatewayWorker`` speaks gunicorn (signals, heartbeat, listeners, drain); the ``Runtime`` holds
the request path's state, and connections, the proxy and the admin views receive it explicitly:

    conf, router, table        the conf file and the route table in use (etcd: a LiveTable that
                               table_reader keeps at the published generation)
    proxy                      the upstream side: pools, balancers, retries (upstream.proxy)
    health, passive            active verdicts and passive ejections, read on the tick
    services                   what plugins may use (ctx.services: stores, metrics, consumers,
                               rollouts)
    metrics                    WorkerMetrics, or None with metrics off
    access                     the access log writer (buffered, flushed on the tick)
    tracing                    trace headers in and out, and the span exporter
    http2_listeners            each HTTP/2 listener's settings ([http2.listeners])
    deadlines, buffers         the ticker, and the one read buffer per side
    in_flight, handled, alive  the counts that drive draining and max_requests

Nothing here is a module global: a test can build two runtimes in one process.
"""
import gc
import itertools
import json
import logging
import os
import random
import time

import gevent.event

from ..core.accesslog import COMMON_HEAD, common_escape, compile_fields
from ..core.realip import TrustedProxies
from ..core.throttledlog import throttled_log
from ..core.tracing import trace_ids
from ..files import open_regular, write_remedy
from ..net.deadlines import Deadlines
from ..net.sockets import RECV_SIZE, peer_closed

log = logging.getLogger("gwserver.worker")
_escape = json.encoder.encode_basestring_ascii    # the C encoder (as core.accesslog)

# Lines rendered and written at once when the tick has not come: a batch keeps the formatting
# code in cache, and a small one keeps the pause it costs one request short (~0.15 ms).
ACCESS_FLUSH_LINES = 64
TICK_SECONDS = 0.05
# Seconds between looks for clients that hung up on a streamed answer (find_hangups): one
# getsockopt per such answer each time
HANGUP_CHECK_EVERY = 1.0
# A request head comes whole at once: one begun this long ago, not whole, and coming slower
# than min_body_rate, is a slow client's, closed when every slot is taken and none is idle
# (Runtime.close_slowest_head)
SLOW_HEAD_GRACE = 1.0
# Seconds between sweeps of the per-host state files no route of the table uses
# (LocalStore.sweep_states): a listing of states/, done only while some are left
STATES_SWEEP_EVERY = 3.0


def serving_streams(conn):
    """Has this head reader, an HTTP/2 connection, streams open (HTTP/1.1 ones have none)?
    Their slot is held as long as they are served, whatever its next header block does, and
    those that wait for their body are judged by close_slowest_body. Taken for a slow head,
    a connection with a long poll in flight and its next request's block stalled a second
    (a slow uplink, a big cookie) was closed, ENHANCE_YOUR_CALM, its streams cut."""
    return getattr(conn, "streams", None)


class AccessLog:
    """Access lines ([log] access_fields, core.accesslog), buffered: written to stderr or
    ``[log] access_log_path`` in one syscall at most 50 ms (the tick) or ACCESS_FLUSH_LINES
    lines late. The file is opened for append by each worker (O_APPEND: lines of several
    workers never interleave within a write) and reopened at the first flush after a SIGUSR1
    (``reopen``), as nginx does for logrotate.

    A request leaves only a tuple of its fields (``AccessFields.capture``); the lines are
    rendered when the buffer is flushed, all in one loop. The same formatting costs about half
    as much there as between a request's other steps, where its code and data have left the
    CPU's caches (docs/benchmarks.md)."""

    def __init__(self, logconf):
        self.enabled = logconf["access_log"]
        self.json = logconf["access_format"] == "json"
        self.fields = compile_fields(logconf["access_fields"], logconf["access_format"])
        self.capture, self.render_line = self.fields.functions()
        self.pending = []           # (time.time(), captured fields), or a line already written
        self._clock_second = self._clock_tick = None
        self._clock_text = self._tick_text = ""
        self.path = logconf["access_log_path"]
        self.fd = 2
        self.reopen_wanted = False
        self.failing = False        # writes fail (a full disk): said once, not every flush
        self.lost = 0               # lines dropped since they began to fail
        self.count_lost = None      # WorkerMetrics' counter of lines dropped, with metrics on
        if self.enabled and self.path:
            self.reopen()

    def reopen(self):
        """Open ``path`` afresh (logrotate moved it); on failure keep writing where we were:
        a log that cannot be opened never stops the requests."""
        self.reopen_wanted = False
        try:        # a FIFO nobody reads would hold open() forever
            fd = open_regular(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        except OSError as exc:
            log.error("cannot open the access log %s: %s; access lines go to %s", self.path,
                      exc.strerror, "stderr" if self.fd == 2 else "the file opened before")
            return
        old, self.fd = self.fd, fd
        if old != 2:
            os.close(old)

    def time_text(self, now):
        """``now`` (time.time()) as the log's format writes it. The text changes once a
        millisecond (JSON) or once a second (Common Log Format): under load most lines share
        the one before's, and the date is formatted once a second."""
        tick = int(now * 1000) if self.json else int(now)
        if tick == self._clock_tick:
            return self._tick_text
        self._clock_tick = tick
        second = tick // 1000 if self.json else tick
        if second != self._clock_second:
            self._clock_second = second
            fmt = "%Y-%m-%dT%H:%M:%S" if self.json else "%d/%b/%Y:%H:%M:%S"
            self._clock_text = time.strftime(fmt, time.gmtime(second))
        self._tick_text = f"{self._clock_text}.{tick % 1000:03d}Z" if self.json else \
            f"{self._clock_text} +0000"
        return self._tick_text

    def request(self, req, status, sent, upstream, start):
        elapsed_ms = (time.monotonic() - start) * 1000.0
        pending = self.pending
        pending.append((time.time(), self.capture(req, status, sent, upstream, elapsed_ms)))
        if len(pending) >= ACCESS_FLUSH_LINES:
            self.flush()

    def rejected(self, client_ip, exc):
        """A request refused before it could be parsed: no route, method or path to log."""
        if not self.enabled:
            return
        time_text = self.time_text(time.time())
        if self.json:
            line = (f'{{"time":"{time_text}","client":"{client_ip}",'
                    f'"status":{exc.status},"rejected":{_escape(exc.reason)}}}\n')
        else:
            # The listed fields after the head, as on every other line, the reason as its
            # `error`: a fixed `"-" - 0` said nothing of why, and a parser of the list read it
            # wrong (the route's place held "-", the request id's a bare -)
            listed = [f'"{common_escape(exc.reason)}"' if name == "error" else "-"
                      for name in self.fields.names if name not in COMMON_HEAD]
            line = " ".join([f'{client_ip} - - [{time_text}] "-" {exc.status} 0',
                             *listed]) + "\n"
        self.pending.append(line)

    def render(self):
        """The buffered lines, in order, as one text; the buffer is emptied. A line that
        cannot be rendered (a bug: the fields are plain values) is left out and logged; the
        others are written."""
        pending, self.pending = self.pending, []
        render, time_text = self.render_line, self.time_text
        lines = []
        for entry in pending:
            try:
                lines.append(entry if type(entry) is str else
                             render(entry[1], time_text(entry[0])))
            except Exception:       # a log must never fail a request or the tick
                log.exception("an access line could not be rendered: left out")
        return "".join(lines)

    def flush(self):
        if self.reopen_wanted and self.enabled and self.path:
            self.reopen()
        if self.pending:
            data = self.render().encode("utf-8", "replace")
            try:
                while data:
                    data = data[os.write(self.fd, data):]
            except OSError as exc:
                self.dropped(data.count(b"\n") or 1, exc)
            else:
                if self.failing:
                    log.warning("the access log %s is written again; %d lines were lost",
                                self.where(), self.lost)
                    self.failing, self.lost = False, 0

    def where(self):
        return self.path if self.fd != 2 else "stderr"

    def dropped(self, lines, exc):
        """A write failed: its lines are lost (a log never stops requests), counted, and the
        first failure in a row is logged, not one a tick."""
        self.lost += lines
        if self.count_lost is not None:
            self.count_lost(lines)
        if not self.failing:
            self.failing = True
            log.error("cannot write the access log %s: %s; access lines are dropped (counted "
                      "in gwserver_access_log_lines_lost_total) until it can be written "
                      "again: %s; requests are not affected", self.where(),
                      exc.strerror, write_remedy(exc))


class Runtime:
    """One worker's request path: see the module docstring for what it holds."""

    def __init__(self, conf, worker_connections, tls_server=None):
        self.conf = conf
        self.tls_server = tls_server            # client.tls.ServerTLS, built in the master
        self.settings = server = conf.server
        self.worker_connections = worker_connections
        self.router = conf.router
        self.table = self.table_reader = None
        self.pools_checked, self.pools_pruned_at = True, 0.0
        # per-host state files of routes gone (sweep_states): first once the table has had
        # time to be read (an etcd one: the shared table), then after each change, and again
        # while a draining worker still holds some
        self.states_swept, self.states_swept_at = False, time.monotonic()
        # websocket tunnel (upstream.proxy.TunnelFlow) -> its request: ended when a table
        # takes away what let it in (end_revoked_tunnels); before the first table is read
        self.tunnels = {}
        self.rollouts_read = 0      # the RolloutView generation the tunnels were checked at
        if conf.etcd is not None:
            self.follow_published_table()
        self.alive = True
        self.stopping = gevent.event.Event()
        # Why the worker kills the connections it still holds, said in their access lines
        # (worker.drain, worker.quit): None while it does not
        self.cut_because = None
        self.in_flight = self.handled = 0
        self.max_requests = server["max_requests"] or 0
        self.open_clients = 0
        self.idle_clients = {}          # connection -> None, oldest first
        self.body_readers = {}          # HTTP/1.1 connection -> None, waiting for body bytes
        self.head_readers = {}          # connection -> when its head began (a head not
        #                                 whole in the read it began in, or an HTTP/2 header
        #                                 block begun; its head_read)
        # HTTP/1.1 connection -> the upstream exchange its streamed answer waits on, whose
        # expire() ends that wait should the client hang up (find_hangups)
        self.streaming = {}
        self.hangups_checked = 0.0
        self.min_body_rate = server["min_body_rate"]
        self.admin_auth_failures = {}   # client address -> (wrong tokens, since when)
        self.trusted_proxies = TrustedProxies(server["trusted_proxies"], server["real_ip_header"])
        self.identity_proxies = TrustedProxies(server["identity_proxies"])
        self.request_ids = itertools.count(1)
        self.request_id_prefix = os.urandom(6).hex()    # unique per worker, with the counter
        self.metrics = None
        self.pool_idle_targets = []     # targets whose idle-pool gauge was last set above 0
        if conf.admin["metrics"] and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from .metrics import WorkerMetrics
            self.metrics = WorkerMetrics()
        self.setup_services()
        self.access = AccessLog(conf.log)
        if self.metrics is not None:
            self.access.count_lost = self.metrics.access_log_lost.inc
        tracing = conf.tracing
        self.tracing = tracing["enabled"]
        self.emit_b3 = tracing["b3"]
        self.trace_ids = trace_ids(random.randbytes)    # random is reseeded in each worker
        self.trace_response_header = tracing["response_header"].encode("latin-1")
        # Via's entry for this hop by the protocol received (RFC 9110 7.6.3): "1.1 name"
        name = conf.server["via"].encode("ascii")
        self.via = {version: version.encode() + b" " + name for version in ("1.0", "1.1", "2")}
        self.via_name = name            # to count this gateway's hops in a received Via
        self.span_exporter = None
        if self.tracing and tracing["otlp_endpoint"]:
            from .otel import SpanExporter
            self.span_exporter = SpanExporter(tracing["otlp_endpoint"], tracing["service_name"])
        from ..client.h2server import ListenerSettings
        self.http2_listeners = ListenerSettings(conf.http2)    # host names resolved once
        self.send_timeout = server["send_timeout"]
        self.deadlines = Deadlines(interval=TICK_SECONDS, on_tick=self.on_tick)
        # One read buffer per side: every read is parsed before the greenlet can yield again,
        # and the parsers copy what they keep, so an idle connection holds no buffer.
        self.client_buf = bytearray(RECV_SIZE)
        self.client_view = memoryview(self.client_buf)
        self.upstream_buf = bytearray(RECV_SIZE)
        self.upstream_view = memoryview(self.upstream_buf)
        from ..upstream.proxy import Proxy    # urllib3 imports ssl: only after gevent patched it
        self.proxy = Proxy(self)
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
        # Everything built so far lives as long as the worker: move it out of the collector's
        # sight, and collect the young generation less often (each request allocates ~100
        # short-lived objects; the default 700 made gen-0 runs ~4% of a worker's CPU).
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)

    def setup_services(self):
        """Stores and metrics that plugins use (ctx.services)."""
        from ..helpers.health import HealthView, PassiveTracker
        from ..helpers.rollouts import RolloutView
        from ..services import Services
        from ..state.store import RedisStore
        conf = self.conf
        path = conf.server["state_dir"]       # [server] state_dir; the master made it
        local = open_local_store(path)
        redis = conf.redis
        limit_store = local if redis is None else RedisStore(
            redis["url"], redis["timeout"], redis["pause"], redis["key_prefix"],
            redis.get("password"))
        consumers = self.table.consumers if self.table is not None else conf.consumers
        server = conf.server
        self.services = services = Services(
            limit_store, local, self.metrics, consumers, RolloutView(path),
            (server["escaped_slashes"], server["merge_slashes"], server["path_parameters"]))
        if self.metrics is not None:
            for store in {services.local_store, services.limit_store}:
                store.on_transition = self.metrics.breaker_transition
        if self.tls_server is not None:
            self.tls_server.state_dir = path       # OCSP staples from the ocsp helper
        self.health = HealthView(path)
        self.health.refresh()
        self.passive = PassiveTracker(self.health, self.metrics.count_ejection
                                      if self.metrics is not None else None)

    # -- the route table ---------------------------------------------------------------------

    def follow_published_table(self):
        """etcd mode: the table is what the config-sync process publishes."""
        from ..core.table import LiveTable
        from ..files import compiles_checked
        from ..plugins import load_registry
        from ..sync.shm import TableReader, etcd_prefix
        conf = self.conf
        compiles_checked()      # (the master and the sync process checked the tls files)
        self.table = LiveTable.for_conf(conf, load_registry())
        self.router = self.table.router       # changed in place from now on
        self.table_reader = TableReader(conf.etcd["runtime_dir"], etcd_prefix(conf))
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
        refused = self.table.refused()
        if refused:
            log.error("route table generation %d: %d published item(s) not applied in this "
                      "worker: %s", generation, len(refused),
                      "; ".join(f"{k}: {v}" for k, v in sorted(refused.items())[:5]))
        self.table_reader.record(generation, revision, len(self.router), len(refused))
        if self.tunnels:
            self.end_revoked_tunnels()
        self.pools_checked = False      # targets may be gone: prune their pools (on_tick)
        gc.freeze()         # a large table stays out of every later full collection
        log.info("route table generation %d (etcd revision %s) applied in %.1f ms: %d routes",
                 generation, revision, (time.monotonic() - started) * 1000, len(self.router))

    def tunnel_opened(self, flow, req):
        """A websocket's tunnel begins (``flow``: upstream.proxy.TunnelFlow); the table may
        have revoked what let it in while its handshake waited for the 101, or a rollout
        rolled back the canary it was sent to."""
        self.tunnels[flow] = req
        self.end_if_revoked(flow, req)

    def end_rolled_back_tunnels(self):
        """A rollout rolled back or aborted (the step file changed): its canary gets nobody,
        and the websockets open on it are closed too, or a client the weights had put there
        talked on to the broken canary for as long as it kept the tunnel open."""
        rollouts = self.services.rollouts
        if rollouts is None:
            return
        rollouts.refresh()
        if rollouts.generation != self.rollouts_read:
            self.rollouts_read = rollouts.generation
            self.end_revoked_tunnels()

    def end_revoked_tunnels(self):
        """A websocket is one request that never ends while bytes move: it was let in once,
        by a route and perhaps a consumer's credential. The route deleted, or the consumer
        deleted or given other credentials (a leaked key revoked), every later request is
        refused; the tunnel is closed now too, or the revoked client talked on for good."""
        for flow, req in list(self.tunnels.items()):
            self.end_if_revoked(flow, req)

    def end_if_revoked(self, flow, req):
        why = (revoked(req, self.router.routes, self.table.consumers)
               if self.table is not None else None) or \
            canary_shut(req, self.services.rollouts)
        if why is not None:
            throttled_log.log(log, logging.INFO, ("tunnel revoked", req.route.id),
                              "route %s: websocket %s closed: %s", req.route.id,
                              req.request_id, why)
            flow.expire()

    def on_tick(self):
        """Every 50 ms: flush the access log; an idle worker picks up a new table too; target
        health (active verdicts, passive ejections, ejections expiring) is re-read."""
        self.access.flush()
        throttled_log.flush()       # what a burst of throttled lines left out
        if self.table_reader is not None:
            self.table_reader.reopen_if_replaced()
            if self.table_reader.changed():
                self.refresh_table()
        self.health.refresh()
        if self.tunnels:
            self.end_rolled_back_tunnels()
        if self.tls_server is not None:
            self.tls_server.refresh_staples()
        now = time.monotonic()
        if self.open_clients >= self.worker_connections and \
                not (self.idle_clients and self.close_oldest_idle()) and \
                not (self.head_readers and self.close_slowest_head(now)) and \
                self.body_readers and self.min_body_rate:
            # (an idle one first, as client_opened does: a connection that went idle
            # after the slots ran out would otherwise turn the body check off)
            self.close_slowest_body(now)
        if now - self.hangups_checked >= HANGUP_CHECK_EVERY:
            self.hangups_checked = now
            self.find_hangups()
            self.keep_holder()
        self.proxy.share_tick(now)
        self.proxy.close_idle(now)
        if self.proxy.settling:
            self.proxy.settle(now)
        if not self.pools_checked and now - self.pools_pruned_at >= 1.0:
            self.pools_checked, self.pools_pruned_at = True, now
            self.prune_pools()
        if (not self.states_swept or self.services.local_store.strays) and \
                now - self.states_swept_at >= STATES_SWEEP_EVERY and \
                (self.table_reader is None or self.table_reader.generation):
            # (with etcd, not before its routes are in: theirs would look gone)
            self.states_swept_at = now
            self.states_swept = self.services.local_store.sweep_states(
                self.breaker_owners(), self.consumer_ids())

    def keep_holder(self):
        """The file this worker's per-host limit_conn leases are held by, made again if it was
        removed (LocalStore.keep_holder): else the leases it holds are taken for a dead
        worker's by the next claim that finds every slot taken."""
        try:
            self.services.local_store.keep_holder()
        except OSError as exc:
            throttled_log.log(log, logging.ERROR, ("holder file",),
                              "cannot make again the holder file of this worker's limit_conn "
                              "leases: %s", exc.strerror or exc)

    def table_upstreams(self):
        """Every upstream of the table served now: its own, the routes' and their plugins'
        (a split's canary)."""
        routes = self.router.routes.values()
        return [*(self.table.upstreams.values() if self.table is not None else ()),
                *(route.upstream for route in routes),
                *(upstream for route in routes for upstream in route.chain.linked_upstreams())]

    def target_urls(self, upstreams=None):
        """The URLs of the targets of the table served now (of ``upstreams``, if given)."""
        return {target.url for upstream in (self.table_upstreams() if upstreams is None
                                            else upstreams) for target in upstream.targets}

    def prune_pools(self):
        """Close the keep-alive pools (and HTTP/2 connections) no upstream uses any more: a
        removed target's, or a target's old pool when its upstream changed the pool's
        settings. Idle connections close now; one in use finishes its request, then closes
        (urllib3 closes what is put back into a closed pool; an HTTP/2 connection drains as
        after a GOAWAY): removed targets are drained, not cut."""
        upstreams = self.table_upstreams()
        from ..upstream.proxy import forget_gone
        forget_gone(self.proxy.outstanding, self.proxy.refused, self.target_urls(upstreams))
        self.proxy.forget_gone_upstreams({upstream.id for upstream in upstreams})
        from ..helpers.health import target_key
        self.passive.forget_gone({target_key(upstream.id, target.url)
                                  for upstream in upstreams for target in upstream.targets})
        # breakers' and adaptive limits' per-host files: one descriptor each, kept open
        self.services.local_store.forget_states(self.breaker_owners(), self.consumer_ids())
        self.states_swept = False       # and the files no worker holds, on the next tick
        removed, replaced = self.proxy.pools.prune(upstreams)
        h2_removed, h2_replaced = self.proxy.h2.pools.prune(upstreams)
        removed, replaced = removed | h2_removed, replaced | h2_replaced
        if removed:
            log.info("closed the pools of %d removed targets: %s", len(removed),
                     ", ".join(sorted(removed)))
        if replaced:
            log.info("closed the old pools of %d targets whose pool settings changed: %s",
                     len(replaced), ", ".join(sorted(replaced)))

    # -- connections and requests ------------------------------------------------------------

    def client_opened(self):
        """A client connection took a slot; if that was the last one, close the oldest idle
        keep-alive connection so the next client is accepted (nginx reuses them too)."""
        self.open_clients += 1
        if self.open_clients >= self.worker_connections and self.idle_clients:
            self.close_oldest_idle()

    def close_oldest_idle(self):
        """Close the oldest idle connection that can go without losing bytes (an HTTP/2 one
        whose last answer is still in the kernel's queue cannot: its client's window updates
        would meet a closed socket, and the reset throws the rest away); -> whether one
        was."""
        for conn in self.idle_clients:
            if conn.may_close_idle():
                del self.idle_clients[conn]
                conn.reclaim()
                return True
        return False

    def client_closed(self):
        self.open_clients -= 1

    def find_hangups(self):
        """A client that hung up on a streamed answer (an event stream, a long download) is
        found when the relay next writes to it: with an upstream that writes rarely (a
        heartbeat every 30 s), that held the upstream's connection or stream, and the
        client's limit_conn slot, for that long after the client left, twice over (a
        write to a closed connection goes through once). nginx's proxy_ignore_client_abort
        off: its upstream is let go when the client's end is seen."""
        gone = [conn for conn in self.streaming if peer_closed(conn.sock)]
        for conn in gone:
            conn.hung_up = True
            self.streaming.pop(conn).expire()
        # Requests still waiting for their upstream's head (a long poll, a slow report):
        # their exchange is armed for the wait. No watch is set up per request for them:
        # the deadlines say who waits. (HTTP/2 clients: their reset ends the stream.)
        deadlines = self.deadlines
        for owner in deadlines.owners():
            conn = getattr(owner, "waiting_client", None)
            if conn is None or conn.speaks_h2 or conn.hung_up or not peer_closed(conn.sock):
                continue
            conn.hung_up = True
            deadlines.disarm(owner)
            owner.expire()

    def close_slowest_head(self, now):
        """Every slot is taken and none is idle: the connection sending its request head
        slowest (HTTP/1.1, or HTTP/2 with a header block begun), begun SLOW_HEAD_GRACE ago
        or more and under min_body_rate (any rate if that is 0), is closed as
        header_timeout closes it (a 408 first, over TLS too; HTTP/2: a GOAWAY that says why; a
        head follows its first byte at once). Sending a byte of a head each, worker_connections
        clients held every slot for header_timeout (10 s), and again at each reconnect,
        while newcomers waited unanswered in the listen queue (slowloris). The slowest, not
        the oldest: a large head (cookies) coming steadily over a slow link is no slowloris,
        and was cut before the byte-a-second heads begun after it. An HTTP/2 connection with
        streams open is not judged (serving_streams). -> whether one was."""
        slowest, slowest_rate = None, self.min_body_rate or float("inf")
        for conn, began in self.head_readers.items():
            if now - began >= SLOW_HEAD_GRACE and not serving_streams(conn) and \
                    (rate := conn.head_read / (now - began)) < slowest_rate:
                slowest, slowest_rate, waited = conn, rate, now - began
        if slowest is None:
            return False
        # A TLS handshake under way is one too, its bytes uncounted (client.waiting)
        what = getattr(slowest, "unfinished", "request head")
        rate = "" if what != "request head" else f", at {slowest_rate:.0f} bytes a second"
        throttled_log.log(log, logging.WARNING, "slow head closed",
                          "worker_connections (%d) reached: closed the connection of %s, "
                          "its %s still incomplete after %.1f s%s", self.worker_connections,
                          slowest.client_ip, what, waited, rate)
        del self.head_readers[slowest]
        slowest.timeout_reason = (f"{what} incomplete after {waited:.1f} s{rate}, while every "
                                  f"connection slot was taken")
        slowest.expire()
        return True

    def close_slowest_body(self, now):
        """Every slot is taken and none is idle: the connection sending its request body
        slowest, if under min_body_rate, is answered 408 and closed; the listener takes the
        next client in its place. Only under that pressure: a slow upload (a log stream
        over chunked POST) is never cut while there is room."""
        slowest, slowest_rate = None, self.min_body_rate
        for conn in self.body_readers:
            rate = conn.body_rate(now)
            if rate is not None and rate < slowest_rate:
                slowest, slowest_rate = conn, rate
        if slowest is None:
            return
        throttled_log.log(log, logging.WARNING, "slow body closed",
                          "worker_connections (%d) reached: closed the connection of %s, "
                          "sending its request body at %.0f bytes a second (min_body_rate "
                          "%d)", self.worker_connections, slowest.client_ip, slowest_rate,
                          self.min_body_rate)
        del self.body_readers[slowest]
        slowest.timeout_reason = (f"request body at {slowest_rate:.0f} bytes a second, under "
                                  f"min_body_rate, while every connection slot was taken")
        slowest.expire()

    def next_request_id(self):
        return f"{self.request_id_prefix}{next(self.request_ids):08x}"

    def request_done(self):
        """Count one answered request; at max_requests the worker stops taking new ones,
        drains what it holds and exits (the master replaces it at once)."""
        self.handled += 1
        if self.max_requests and self.handled >= self.max_requests:
            log.info("max_requests (%d) reached: worker retiring", self.max_requests)
            self.stop()

    def stop(self):
        """Stop taking new requests; the worker drains. Safe in a signal handler: Event.set()
        only schedules the wake-up."""
        self.alive = False
        self.stopping.set()

    def log_rejected(self, client_ip, exc):
        """A request refused before it could be parsed: its access line, and its answer in
        gwserver_gateway_answers_total (route none). Counted nowhere, a flood of malformed
        heads, 431s or 408s to slow ones showed in no metric, only in the access log."""
        self.access.rejected(client_ip, exc)
        if self.metrics is not None:
            self.metrics.count_answer(None, exc.status, "gateway")

    def export_span(self, req, status, upstream, start):
        ended_ns = time.time_ns()
        started_ns = ended_ns - int((time.monotonic() - start) * 1e9)
        try:
            self.span_exporter.export(req, status, upstream, started_ns, ended_ns)
        except Exception:           # tracing must never fail a request or the worker
            log.exception("span export failed")

    # -- gauges ------------------------------------------------------------------------------

    def update_gauges(self):
        """Once a second (and before a scrape): gauges that would cost per request."""
        metrics = self.metrics
        if metrics is None:
            return
        metrics.flush()
        metrics.in_flight.set(self.in_flight)
        # Summed by target: two upstreams with other pool settings (pool_size, tls) keep two
        # pools to one target, and each set the gauge over the other's count. A pool pruned
        # (its target left the table) is set to 0: its connections are closed, and its last
        # count was reported for the worker's life.
        idle = dict.fromkeys(self.pool_idle_targets, 0)
        for target, (count, _) in self.upstream_connections().items():
            idle[target] = count
        for target, count in idle.items():
            metrics.pool_idle.labels(target).set(count)
        self.pool_idle_targets = [target for target, count in idle.items() if count]
        if self.table_reader is not None:
            metrics.generation.set(self.table_reader.generation)
        self.update_target_gauges(metrics)
        store = self.services.limit_store
        if store is not self.services.local_store:
            metrics.redis_up.set(1 if store.up else 0)

    def upstream_connections(self):
        """{target URL: [idle connections, most connections]} of this worker's keep-alive
        pools, summed by target (two upstreams with other pool settings keep two pools to
        one), and of its HTTP/2 connections (one a target, idle without a stream)."""
        by_target = {}
        for pool in self.proxy.pools.pools.values():
            entry = by_target.setdefault(pool.gw_url, [0, 0])
            entry[0] += idle_connections(pool)
            entry[1] += pool.pool.maxsize if pool.pool else 0
        for connection in self.proxy.h2.pools.connections.values():
            entry = by_target.setdefault(connection.target.url, [0, 0])
            entry[0] += connection.usable and not connection.streams
            entry[1] += not connection.closed
        return by_target

    def watched_upstreams(self):
        """The upstreams of the table served now whose targets are checked or ejectable: the
        routes' own and their plugins' (a split's canary)."""
        return {upstream.id: upstream for route in self.router.routes.values()
                for upstream in (route.upstream, *route.chain.linked_upstreams())
                if upstream.health_check or upstream.passive}.values()

    def watched_targets(self):
        """(upstream id, target URL) of every target whose up gauge is current."""
        return {(upstream.id, target.url) for upstream in self.watched_upstreams()
                for target in upstream.targets}

    def breaker_owners(self):
        """("route", id) and ("upstream", id) of the table served now: a breaker's state
        gauge (and a route's adaptive rate) is current only while its route or upstream is
        in it (metrics.render)."""
        routes = self.router.routes.values()
        return {("route", route.id) for route in routes} | \
            {("upstream", upstream.id) for route in routes
             for upstream in (route.upstream, *route.chain.linked_upstreams())}

    def consumer_ids(self):
        """The ids of the table's consumers (None: unknown): a consumer's own breaker and
        adaptive limit are kept while it is in it (LocalStore.forget_states)."""
        directory = self.services.consumers
        return None if directory is None else set(directory.consumers)

    def update_target_gauges(self, metrics):
        from ..helpers.health import target_key
        health = self.health
        for upstream in self.watched_upstreams():
            for target in upstream.targets:
                metrics.target_up.labels(upstream.id, target.url).set(
                    0 if health.is_down(upstream, target_key(upstream.id, target.url)) else 1)

    def flush_logs(self):
        """Before the process ends: the access lines buffered, and what the log throttle
        left out untold."""
        self.access.flush()
        throttled_log.flush(everything=True)

    def send_last_state(self, seconds=None):
        """Before the worker exits, stopped at once or drained: the limit_conn releases of
        the requests it cut, queued as they ended, and probe verdicts, sent to Redis
        (RedisStore.flush, ``seconds`` at most)."""
        store = self.services.limit_store
        if store is self.services.local_store:
            return
        if seconds is None:
            store.flush()
        else:
            store.flush(seconds)

    def close(self):
        """After the drain: the last access lines, spans and gauges; pools and files closed."""
        self.send_last_state()
        self.flush_logs()
        if self.span_exporter is not None:
            self.span_exporter.shutdown()   # send the spans still batched
        self.update_gauges()            # the last counts, before the master archives them
        self.deadlines.stop()
        self.proxy.close()
        if self.table_reader is not None:
            self.table_reader.forget()


def revoked(req, routes, consumers):
    """Why the table no longer lets in what let ``req`` (a websocket) in, or None: its route
    is gone, or its consumer is, or holds other credentials now (the one it came with may
    be the revoked one). A route or consumer changed otherwise (a timeout, its upstream's
    targets) leaves it open."""
    if req.route.id not in routes:
        return "its route was deleted"
    consumer = req.consumer
    if consumer is None:
        return None
    now = consumers.get(consumer.id)
    if now is None:
        return f"consumer {consumer.id} was deleted"
    # The credentials whole, not their lookups: basic_auth's is the user name and jwt's the
    # claim value, so a rotated password or signing key (kid) left the old one's tunnels open.
    if now is not consumer and now.credentials != consumer.credentials:
        return f"consumer {consumer.id}'s credentials changed"
    return None


def canary_shut(req, rollouts):
    """Why ``req`` (a websocket split sent to a rollout's canary) must end, or None: the
    route's rollout is rolled back or aborted now (RolloutView.canary_shut)."""
    if req.var("rollout_canary") is not None and rollouts is not None and \
            rollouts.canary_shut(req.route.id, req.var("split_group")):
        return "the rollout of its canary was rolled back or aborted"
    return None


def idle_connections(pool):
    """Open connections waiting in a urllib3 pool (its queue is pre-filled with None slots)."""
    return sum(1 for conn in list(pool.pool.queue) if conn is not None) if pool.pool else 0


PRIVATE_STORE = "gwserver-worker-"     # + pid + "-" + mkdtemp's letters


def open_local_store(path):
    """The host's per-host store in ``path`` (the state_dir), or, when it cannot be opened
    there (made read-only, removed and not made again), one of this worker's own in a private
    directory, removed when the worker exits: a worker that died at boot over it was
    restarted over and over, and the workers there were not replaced as they retired.
    Per-host limits then hold per worker, as the log says."""
    from ..settings import state_dir_problem
    from ..state.store import LocalStore
    # Judged again here: made again under /tmp by another user after a cleaner removed it,
    # its table would be theirs to write (the master judges it too, in ensure_state_dir).
    problem = state_dir_problem(path)
    if problem is None:
        try:
            return LocalStore(path)
        except OSError as exc:
            problem = exc.strerror or str(exc)
    import atexit
    import shutil
    from ..processes import own_dir
    private = own_dir(PRIVATE_STORE)
    atexit.register(shutil.rmtree, private, ignore_errors=True)
    log.error("cannot open the per-host table in the state_dir %s (%s): this worker keeps "
              "its own until it stops; per-host limits and breaker states are per worker "
              "meanwhile", path, problem)
    return LocalStore(private)
