"""Where rate-limit, adaptive-limit and breaker state lives: Redis (shared by every worker and
host) or this host.

Three kinds of calls: a rate-limit decision and a breaker admission (the request waits for
them), and an outcome report (a breaker's or an adaptive limit's; never waited for, sent with
the next round trip). ``RedisStore`` makes each decision one atomic script call on Redis' clock (EVALSHA, scripts
loaded once and again on NOSCRIPT, one key per decision, keys that expire), and *coalesces*:
every decision a worker's greenlets ask for while a round trip is in flight goes into the next
pipeline, so a worker has at most one round trip in flight (docs/benchmarks.md: one EVALSHA per
request cost 75% of a worker's throughput, one pipeline per loop iteration ~40%). Timeouts are tens of
milliseconds with no retries (redis-py's defaults, 5 s and 10 retries, would stall a worker for
seconds), and after a failure the store is skipped for ``pause`` seconds so a dead Redis costs
nothing per request; callers then apply their ``on_store_error``.

``LocalStore`` keeps the same state for one host in files every worker of the host maps,
guarded by flock: the embedded default (no [redis]) and the ``local`` fallback.

Redis URLs: plain, TLS, unix socket, Sentinel and Cluster (``connect``); every key is one
hash slot, so scripts run on a Cluster unchanged.
"""
import fcntl
import hashlib
import itertools
import json
import logging
import math
import mmap
import os
import socket
import struct
import time
from typing import NamedTuple

import gevent
import gevent.event
from gevent.monkey import get_original

from ..core import breaker, ratelimit
from ..core.throttledlog import throttled_log
from ..errors import StoreError, StoreTimeout, describe
from ..processes import pid_alive, process_age, process_start
from ..settings import parse_multi_host_url
from .lua import (ADAPTIVE_LUA, BREAKER_LUA, BREAKER_VIEW_LUA, LIMIT_CONN_LUA,
                  SLIDING_WINDOW_LUA, TOKEN_BUCKET_LUA)

_select = get_original("select", "select")     # a poll of one socket, never a wait

log = logging.getLogger("gwserver.store")


class ConnClaim(NamedTuple):
    """limit_conn: the lease a claim got (None: refused, every slot taken) and the leases the
    key holds now."""
    lease: str | None
    held: int


class BreakerVerdict(NamedTuple):
    admitted: bool
    state: str
    epoch: int
    retry_after: float      # seconds until an open breaker probes again


def breaker_args(conf):
    return (conf["error_rate"], conf["window"], conf["min_requests"], conf["open_for"],
            conf["max_open_for"], conf["half_open_probes"])


def adaptive_args(conf):
    adaptive = conf["adaptive"]
    return (ratelimit.adaptive_start(conf), adaptive["floor"], adaptive["ceiling"],
            adaptive["window"], adaptive["raise_above"], adaptive["lower_below"],
            adaptive["step_up"], adaptive["step_down"])


def load_breaker_state(raw):
    return breaker_state_of(json.loads(raw))


def breaker_state_of(stored):
    state = {**breaker.initial_state(), **stored}
    for name in ("buckets", "seen"):
        if not isinstance(state[name], list):
            state[name] = []        # cjson writes an empty array as {}
    return state


FAIL_FAST = ("socket_timeout", "socket_connect_timeout", "retry", "health_check_interval")


def connect(url, timeout, password=None):
    """A redis-py client for a plain, Sentinel or Cluster URL, with fail-fast settings.

        redis://[:password@]host:port/db, rediss://..., unix:///path.sock
        redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]
        redis+cluster://[[user]:password@]host:port[,host:port...]

    Timeouts are ``timeout`` seconds and nothing retries on its own: the store pauses and the
    plugins' on_store_error applies instead (redis-py's defaults would stall a worker).
    """
    import redis
    from redis.cluster import ClusterNode, RedisCluster
    from redis.sentinel import Sentinel
    fast = dict(socket_timeout=timeout, socket_connect_timeout=timeout, retry=None,
                health_check_interval=0)
    scheme = url.partition("://")[0]
    if password is not None:                # [redis] password_file (the url holds none)
        fast["password"] = password
    if scheme not in ("redis+sentinel", "redis+cluster"):
        client = redis.Redis.from_url(url, retry_on_timeout=False, max_connections=4, **fast)
        # redis-py lets a URL's own options override its caller's: "?socket_timeout=30" held
        # each batch of every worker 30 s on a hung Redis, where [redis] timeout promised the
        # fallback after 50 ms (`check` says these options are not used)
        kwargs = client.connection_pool.connection_kwargs
        kwargs.update({name: fast[name] for name in FAIL_FAST}, retry_on_timeout=False)
        kwargs.pop("retry_on_error", None)
        if issubclass(client.connection_pool.connection_class, redis.SSLConnection):
            client.connection_pool.connection_class = _regular_files_ssl()
        return client
    parts = parse_multi_host_url(url)
    nodes = parts.nodes
    fast.setdefault("password", parts.password)
    # an ACL user, as a plain URL's is (redis-py's from_url): left out, AUTH went as the
    # default user with that user's password, WRONGPASS, and every decision fell back
    fast["username"] = parts.username
    if scheme == "redis+cluster":
        return LazyCluster(lambda: RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in nodes],
            cluster_error_retry_attempts=1, require_full_coverage=False, **fast))
    service, _, db = parts.path.partition("/")
    sentinel = Sentinel(nodes, sentinel_kwargs=dict(socket_timeout=timeout,
                                                    socket_connect_timeout=timeout),
                        db=int(db or 0), **fast)
    return sentinel.master_for(service, max_connections=4)


_REGULAR_FILES_SSL = None


def _regular_files_ssl():
    """redis-py's TLS connection, refusing (a ConnectionError: on_store_error decides) a tls
    file of the URL that is no regular file before OpenSSL opens it, as each new connection
    does, blocking: a ssl_ca_certs replaced by a FIFO (or a symlink to /dev/zero) since the
    check hung the whole worker at its next reconnect to Redis, every client of it stalled,
    routes without limits too (upstream.proxy stats an upstream's tls files alike)."""
    global _REGULAR_FILES_SSL
    if _REGULAR_FILES_SSL is None:
        import redis

        from ..files import irregular_file

        class RegularFilesSSLConnection(redis.SSLConnection):
            def _connect(self):
                irregular = irregular_file(self.ca_certs, self.certfile, self.keyfile,
                                           "redis.url: ",
                                           ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"))
                if irregular is not None:
                    raise redis.exceptions.ConnectionError(irregular)
                return super()._connect()
        _REGULAR_FILES_SSL = RegularFilesSSLConnection
    return _REGULAR_FILES_SSL


class BatchLost(StoreError):
    """The batcher's connection was lost after a batch was written to it: Redis may have run
    it. Its calls fall back (on_store_error) and are never sent again, and the store does not
    pause: the next batch goes on a new connection, and a Redis really down fails there."""


class NodeUnreachable(StoreError):
    """The reply of each call a Redis Cluster master could not take (down, or skipped for
    ``pause`` after it failed): those calls fall back alone, the other masters' decide."""


class LazyCluster:
    """A RedisCluster made when first used, and made again at each use until one is: its
    constructor asks the nodes for the slot map, and with none reachable (the cluster down
    as the gateway starts) it raised in the worker's boot, so every worker died and was
    started again, and the gateway served nothing, not even routes without limits. Made
    here, the failure is a store error like any other: on_store_error decides, and the store
    asks again after ``pause``."""

    def __init__(self, make):
        self._make, self._client = make, None
        try:
            self._client = make()
        except Exception:       # RedisClusterException and redis' errors: asked at first use
            pass

    def __getattr__(self, name):
        if self._client is None:
            self._client = self._make()
        return getattr(self._client, name)


def _readable(conn):
    """Has Redis closed ``conn`` (or sent what nobody asked for) since its last reply?"""
    sock = getattr(conn, "_sock", None)
    if sock is None:
        return True
    try:
        return bool(_select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


def decisions_from(algorithm, reply, rate, per, burst):
    """The Decisions of one script call, in the order the requests were queued."""
    flags, details = reply
    if algorithm == "token_bucket":
        capacity, refill = max(burst, 1), rate / per
        return [ratelimit.bucket_decision(bool(int(flag)), float(left), rate, capacity, refill)
                for flag, left in zip(flags, details)]
    out = []
    for flag, (current, previous, into, index) in zip(flags, details):
        decision, _ = ratelimit.window_decision(rate, per, int(current), int(previous),
                                                float(into), int(index))
        if decision.allowed != bool(int(flag)):     # the script had the final word
            retry = 0.0 if int(flag) else ratelimit.window_retry(
                rate, per, int(current), int(previous), float(into))
            decision = ratelimit.Decision(bool(int(flag)), decision.limit, decision.remaining,
                                          decision.reset, retry)
        out.append(decision)
    return out


MAX_OWED_RELEASES = 100_000      # limit_conn slots a worker remembers to give back
MAX_OWED_PROBES = 1_000          # half-open probes' outcomes it remembers to send (a few)
HOLD_IDLE_SECONDS = 1.0          # the batcher's connection goes back to the pool after this
LATE_REPLY_SECONDS = 10.0        # how long the replies of a timed-out batch are waited for


class ProbeOutcome(tuple):
    """A half-open probe's outcome, a batch item as any other: owed until Redis takes it."""
    __slots__ = ()


def _admits(spec, items):
    """Whether a batch's group (``spec``, its queued ``items``) asks for breaker admissions."""
    return spec[0] == "br" and any(payload == "admit" for payload, _, _ in items)


class RedisStore:
    """Rate-limit decisions and breaker steps in Redis, coalesced per worker (see above)."""

    cluster = False         # (set by __init__: a Redis Cluster's URL)

    def __init__(self, url, timeout=0.05, pause=1.0, key_prefix="gw:", password=None):
        import hiredis
        import redis
        self.pack_command = hiredis.pack_command    # C; redis-py's packer encodes in Python
        self.redis_errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                             redis.exceptions.ResponseError, redis.exceptions.RedisClusterException,
                             redis.exceptions.InvalidResponse, OSError)
        # (InvalidResponse: what answers is no Redis, a port of another server's, or TLS to
        # a redis:// URL; left out, every batch logged a traceback and the store never paused)
        self.not_redis = redis.exceptions.InvalidResponse
        self.noscript = redis.exceptions.NoScriptError
        self.reply_error = redis.exceptions.ResponseError
        # cluster: MOVED and ASK (MovedError is an AskError), which redis-py gives without
        # their word: "3999 127.0.0.1:6381"
        self.redirect, self.moved = redis.exceptions.AskError, redis.exceptions.MovedError
        self.connection_lost = redis.exceptions.ConnectionError
        self.timed_out = redis.exceptions.TimeoutError
        self.refused_credentials = redis.exceptions.AuthenticationError
        # Replies redis-py raises as ConnectionError though nothing ran (LOADING after a
        # restart, WRONGPASS, max clients): Redis refusing, which pauses the store. Taken
        # for a lost batch, it paused nothing, and each batch made a new connection that
        # Redis refused again.
        self.refusals = tuple(getattr(redis.exceptions, name) for name in (
            "AuthenticationError", "BusyLoadingError", "MaxClientsReachedError")
            if hasattr(redis.exceptions, name))
        self.client = connect(url, timeout, password)
        self.timeout = timeout
        self.cluster = url.startswith("redis+cluster:")
        self.slots_stale = False        # cluster: reload the slot map before the next call
        self.slot_refresh = None        # cluster: the greenlet asking for it (_fresh_slots)
        self.masters_probe = None       # cluster: the greenlet asking failed masters again
        self.nodes_down = {}            # cluster: master name -> until when it is not asked
        self.pause = pause
        self.key_prefix = key_prefix + "rl:"
        # Sliding windows apart from buckets: two limits on one key (a route's token bucket on
        # "ip", a consumer's own sliding window on "ip") shared one hash, and each bucket's
        # short PEXPIRE forgot the window's counts: a client alternating the two had no limit.
        self.window_prefix = key_prefix + "rw:"
        self.breaker_prefix = key_prefix + "br:"
        self.adaptive_prefix = key_prefix + "ad:"
        self.scripts = {"token_bucket": TOKEN_BUCKET_LUA, "sliding_window": SLIDING_WINDOW_LUA,
                        "breaker": BREAKER_LUA, "adaptive": ADAPTIVE_LUA,
                        "limit_conn": LIMIT_CONN_LUA}
        self.conn_prefix = key_prefix + "lc:"
        # lease ids say where they came from (a host and worker to look for in Redis), and a
        # random part: gateways in containers that share the host's name (host networking)
        # each have a PID namespace of their own, so their workers' pids, and so the ids,
        # were the same; one claim took another's lease, one release freed another's slot,
        # and limit_conn let more than ``limit`` in
        self.lease_prefix = f"{socket.gethostname()[:40]}:{os.getpid()}:{os.urandom(4).hex()}:"
        self.lease_numbers = itertools.count()
        # probe verdicts' ids: a random part, as a pid is reused by the next worker
        self.probe_prefix = f"{os.urandom(6).hex()}:"
        self.probe_numbers = itertools.count()
        self.adaptive_rates = {}        # limit key -> the effective rate Redis last answered
        self.shas = {name: hashlib.sha1(body.encode()).hexdigest()
                     for name, body in self.scripts.items()}
        self.conn, self.conn_used_at = None, 0.0     # the batcher's own connection (_pipeline)
        self.late = None                # the greenlet reading a timed-out batch's replies
        self.queue = []
        self.in_flight = []             # the batch of the round trip under way
        self.sent_at = 0.0              # when it went out
        self.deadline_timer = None      # the one timer of every waiting decision (_expire)
        self.queue_has_gone = False     # the queue holds calls nobody waits for (_unsent)
        # limit_conn slots to give back once Redis answers: releases it could not take, and
        # claims that may have landed with nobody left to release them (lease -> spec)
        self.owed_releases = {}
        self.owed_probes = []           # half-open probes' outcomes recorded while paused
        self.wake = gevent.event.Event()
        self.down_until = 0.0
        self.healthy = True
        # Redis answers, but with an error for every call of the last round trip (maxmemory
        # with noeviction: OOM; a key of another type): decisions fall back all the same.
        self.refusing = False
        self.on_transition = None       # callable(key, state), set by the worker for metrics
        self.batcher = gevent.spawn(self._run)

    @property
    def up(self):
        """Does Redis take this worker's decisions (gwserver_redis_up)? In a cluster, not
        while a master failed its last round trip: its keys fall back (NodeUnreachable),
        and the gauge said 1 or 0 by whether the last batch held one of them."""
        return self.healthy and not self.refusing and not self.nodes_down

    # -- the calls plugins make -----------------------------------------------------------------

    def decide(self, algorithm, key, rate, per, burst):
        """One rate-limit decision; raises StoreError if Redis cannot answer in time."""
        prefix = self.key_prefix if algorithm == "token_bucket" else self.window_prefix
        return self._ask(("rl", algorithm, prefix + key, rate, per, burst), None)

    def breaker_admit(self, key, conf):
        """May one request pass breaker ``key``? -> BreakerVerdict; raises StoreError."""
        return self._ask(("br", self.breaker_prefix + key, breaker_args(conf)), "admit")

    def breaker_record(self, key, conf, epoch, ok, probe=False):
        """Count one outcome (``ok`` None: an admission that says nothing of the upstream,
        given back); sent with the next round trip, never waited for. ``probe``: a half-open
        probe's, which is owed while Redis is paused and sent once the pause is over:
        dropped, Redis held the probe for max(window, open_for), and every request of every
        host got 503 circuit_open though the upstream and Redis were well again."""
        spec = ("br", self.breaker_prefix + key, breaker_args(conf))
        item = (spec, (epoch, ok), None, 0.0)
        if probe:
            # Owed again if its batch fails (_abandon); that batch may have run all the same,
            # late (Redis stalled past ``timeout``): the id, which Redis keeps for the
            # half-open epoch, counts it once. Counted twice, one probe's success closed a
            # breaker of half_open_probes = 2.
            ident = f"{self.probe_prefix}{next(self.probe_numbers)}"
            item = ProbeOutcome((spec, (epoch, ok, ident), None, 0.0))
        if time.monotonic() < self.down_until:
            if probe and len(self.owed_probes) < MAX_OWED_PROBES:
                self.owed_probes.append(item)
                self.wake.set()
            return
        self.queue.append(item)
        self.wake.set()

    def adaptive_rate(self, key, conf):
        """The effective rate of an adaptive limit as this worker last heard it."""
        return ratelimit.adaptive_rate(self.adaptive_rates.get(key), conf)

    def adaptive_record(self, key, conf, ok):
        """Count one upstream outcome of an adaptive limit; never waited for."""
        if time.monotonic() < self.down_until:
            return
        self.queue.append((("ad", key, adaptive_args(conf)), ok, None, 0.0))
        self.wake.set()

    def breaker_state(self, key):
        """The stored state of breaker ``key`` (admin view), or None if it has none."""
        raw = self.client.get(self.breaker_prefix + key)
        return None if raw is None else load_breaker_state(raw)

    def breaker_view(self, key):
        """(breaker_state(key), now on the clock its times were written on): Redis' TIME, from
        the node that holds the key. Counted on this host's clock, an open breaker's time to
        its probe was off by the hosts' skew (0 for all of it on a host 30 s ahead)."""
        raw, (seconds, micros) = self.client.eval(BREAKER_VIEW_LUA, 1, self.breaker_prefix + key)
        return (None if raw is None else load_breaker_state(raw)), \
            int(seconds) + int(micros) / 1e6

    def conn_claim(self, key, limit, lease_seconds):
        """limit_conn: take one of ``limit`` slots of ``key`` for at most ``lease_seconds``
        -> ConnClaim; raises StoreError if Redis cannot answer."""
        lease = f"{self.lease_prefix}{next(self.lease_numbers)}"
        spec = ("lc", self.conn_prefix + key, limit, int(lease_seconds * 1000))
        try:
            admitted, held = self._ask(spec, ("claim", lease))
        except StoreTimeout:
            self._forget_claim(spec, lease)     # it may land after the caller fell back
            raise
        except StoreError:
            raise           # not sent (paused), or the batch failed: _failed owes its release
        except BaseException:
            # Killed while Redis decides (an HTTP/2 stream reset, the worker stopping): the
            # slot may be granted with nobody left to give it back for lease_seconds.
            self._forget_claim(spec, lease)
            raise
        return ConnClaim(lease if admitted else None, held)

    def _forget_claim(self, spec, lease):
        """A claim nobody waits for any more: never sent if still queued, else released
        once Redis answers."""
        claim = ("claim", lease)
        queued = [item for item in self.queue if item[1] == claim]
        if queued:
            self.queue.remove(queued[0])
        else:
            self._owe_release(spec, lease)

    def conn_release(self, key, limit, lease_seconds, lease):
        """Give a slot back; sent with the next round trip, never waited for. While Redis is
        paused it is owed, and sent once Redis answers again."""
        spec = ("lc", self.conn_prefix + key, limit, int(lease_seconds * 1000))
        if time.monotonic() < self.down_until:
            self._owe_release(spec, lease)
            return
        self.queue.append((spec, ("release", lease), None, 0.0))
        self.wake.set()

    FLUSH_SECONDS = 1.0     # the longest a stopping worker waits for its last round trips

    def flush(self, seconds=FLUSH_SECONDS):
        """Before the worker exits: what is queued or owed (limit_conn releases, breaker
        outcomes) goes to Redis, waited for at most ``seconds``. The releases of the
        requests a drain cut (graceful_timeout ran out: a websocket, a long download) were
        queued as the worker exited, never sent, and each slot stayed taken in Redis for
        lease_seconds (300 s): with limit = 1, its client was refused by every worker."""
        # at most FLUSH_SECONDS, not the store's timeout when longer: the master's SIGKILL comes
        # WORKER_CUT_SECONDS after graceful_timeout, and a hung Redis with a timeout of a few
        # seconds held the worker past it, before its last access lines were written
        deadline = time.monotonic() + seconds
        while (self.queue or self.in_flight or
               ((self.owed_releases or self.owed_probes) and
                time.monotonic() >= self.down_until)) and \
                time.monotonic() < deadline and not self.batcher.dead:
            self.wake.set()
            gevent.sleep(0.01)

    def _owe_release(self, spec, lease):
        # Bounded: past it, the slots expire after lease_seconds, as before.
        if len(self.owed_releases) < MAX_OWED_RELEASES:
            self.owed_releases[lease] = spec
            # The batcher may be waiting with no timeout (nothing was owed when it began):
            # a claim killed after its answer came would otherwise be released only when the
            # next request wakes it, or never (its lease then holds for lease_seconds).
            self.wake.set()

    def _ask(self, spec, payload):
        now = time.monotonic()
        if now < self.down_until:
            raise StoreError("redis paused after an error")
        waiter = gevent.event.AsyncResult()
        self.queue.append((spec, payload, waiter, now))
        self.wake.set()
        if self.deadline_timer is None:
            self._watch(now + self.timeout)
        try:
            return waiter.get()
        except StoreError:
            raise
        except BaseException:
            # Killed while waiting (an HTTP/2 stream reset): nobody waits for this decision
            # any more, so its deadline must not fail it, log, and pause the store.
            if not waiter.ready():
                waiter.set(None)
                self.queue_has_gone = True
            raise

    # -- deadlines ------------------------------------------------------------------------------

    # The socket timeout bounds each read of a round trip, not the round trip: a Redis that
    # answers a byte at a time would hold every decision for seconds. Each decision is failed
    # ``timeout`` after it was asked by one timer that watches them all, set for the oldest
    # waiting one: a gevent Timeout per decision cost a limited request ~150 bytecodes.

    def _watch(self, at):
        self.deadline_timer = timer = gevent.get_hub().loop.timer(max(0.0, at - time.monotonic()))
        timer.start(self._expire)

    def _expire(self):
        """Fail the decisions asked ``timeout`` ago or more with StoreTimeout; watch on for
        the oldest of the rest."""
        self.deadline_timer.close()
        self.deadline_timer = None
        now, oldest, expired = time.monotonic(), None, False
        for batch in (self.in_flight, self.queue):
            for _, _, waiter, asked_at in batch:
                if waiter is None or waiter.ready():
                    continue
                if now - asked_at >= self.timeout:
                    waiter.set_exception(
                        StoreTimeout(f"redis did not answer within {self.timeout}s"))
                    expired = True
                    self.queue_has_gone |= batch is self.queue
                elif oldest is None or asked_at < oldest:
                    oldest = asked_at
        if expired and self._redis_slow(now):
            if self.healthy:
                log.error("redis did not answer a decision within %.3fs; rate limits and "
                          "breakers fall back to on_store_error for %.1fs at a time until it "
                          "answers", self.timeout, self.pause)
            self.down_until, self.healthy = now + self.pause, False
        elif expired and (self.queue_has_gone or not self.cluster):
            throttled_log.log(log, logging.WARNING, ("queued past timeout",),
                              "decisions waited over %.3fs in this worker before they could be "
                              "sent to redis (a busy worker, or the round trip ahead of them "
                              "slow): they fall back to on_store_error", self.timeout)
        if oldest is not None:
            self._watch(oldest + self.timeout)

    def _redis_slow(self, now):
        """Is Redis late: a round trip out for ``timeout`` or more, its answer not waiting on
        the socket? Decisions that waited as long in the queue, never sent (a client's burst of
        a few thousand requests kept the worker busy), say nothing of Redis: taken for a slow
        Redis, they paused the store, and every limit of the worker fell back to
        on_store_error ("deny": a 503 for every client) for ``pause``, while Redis was idle."""
        if not self.in_flight or now - self.sent_at < self.timeout:
            return False
        if self.cluster:
            # A master late (hung, SIGSTOPped, its host gone): its pipeline times out on its
            # own, and its calls alone fall back (_pipeline). Taken for the store being
            # slow, it paused every master's keys, each time a request came for one of its.
            return False
        sock = getattr(self.conn, "_sock", None)
        if sock is None:
            return True
        try:
            readable, _, _ = _select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return not readable     # the answer came: the loop has not run the batcher yet

    # -- the batcher ----------------------------------------------------------------------------

    def _run(self):
        while True:
            # Owed releases are retried, and a Redis that failed is asked again, after each
            # pause even when no request comes (gwserver_redis_up would otherwise stay 0 in
            # a worker that serves no limited route until one comes).
            self.wake.wait(self.pause if self.owed_releases or self.owed_probes or
                           not self.healthy or self.nodes_down else None)
            self.wake.clear()
            batch, self.queue = self.queue, []
            if self.queue_has_gone:
                batch = self._unsent(batch)
            if not batch and not self.healthy and time.monotonic() >= self.down_until:
                self._probe()
            elif not batch and self.nodes_down and self.masters_probe is None:
                self.masters_probe = gevent.spawn(self._probe_masters)
            if self.owed_releases and time.monotonic() >= self.down_until:
                # Releasing a lease Redis never granted is a no-op (ZREM): safe to repeat.
                batch += [(spec, ("release", lease), None, 0.0)
                          for lease, spec in self.owed_releases.items()]
                self.owed_releases = {}
            if self.owed_probes and time.monotonic() >= self.down_until:
                batch, self.owed_probes = batch + self.owed_probes, []
            if batch:
                self.in_flight, self.sent_at = batch, time.monotonic()
                try:
                    self._round_trip(batch)
                except BaseException as exc:    # never leave a waiter hanging
                    if isinstance(exc, Exception):
                        log.exception("redis batch failed")
                    self._abandon([item for item in batch
                                   if item[2] is None or not item[2].ready()],
                                  StoreError(describe(exc)))
                    if not isinstance(exc, Exception):
                        raise           # the batcher itself was killed (the worker stops)
                finally:
                    self.in_flight = []

    def _unsent(self, batch):
        """``batch`` without the calls nobody waits for: decisions that fell back on their
        own while queued (a busy worker) or whose request was killed. Sent all the same,
        Redis counted them too: a request decided per host spent its tokens in both stores,
        and a breaker probe granted to it was held for probe_timeout."""
        self.queue_has_gone = False
        return [item for item in batch if item[2] is None or not item[2].ready()]

    def _probe(self):
        try:
            self._ping()
        except self.redis_errors as exc:
            self._failed([], exc)
            return
        log.warning("redis is answering again")
        self.healthy = True

    def _probe_masters(self):
        """Cluster: ask the masters that failed, once their ``pause`` is over, whether they
        answer again, requests for their keys or not (gwserver_redis_up is 0 until they
        do). Aside from the batcher: a master that hangs holds this for ``timeout``."""
        try:
            now = time.monotonic()
            for name, until in list(self.nodes_down.items()):
                if until > now:
                    continue
                try:
                    node = self.client.get_node(node_name=name)
                    if node is not None:    # (None: no master now, as the slot map has it)
                        node.redis_connection.ping()
                except self.redis_errors:
                    self._node_failed(name)
                else:
                    self.nodes_down.pop(name, None)
        finally:
            self.masters_probe = None

    def _ping(self):
        """Does Redis answer? A cluster does when one of its masters does: the probe asked
        every master and failed at the first dead one, so a cluster that lost every master
        and got some back stayed paused, pause after pause, while a master was still gone,
        and the living masters' keys fell back with it. A master that does not answer is
        skipped for ``pause``, its calls alone falling back (NodeUnreachable)."""
        if not self.cluster:
            self.client.ping()
            return
        self._fresh_slots()
        failed = None
        for node in self.client.get_primaries():
            try:
                node.redis_connection.ping()
                self.nodes_down.pop(node.name, None)
                return
            except self.redis_errors as exc:
                failed = exc
                self._node_failed(node.name)
        if failed is not None:
            raise failed

    def _round_trip(self, batch):
        # Calls on one key with the same limits -> one script call deciding all of them
        # (docs/benchmarks.md: merging hits on one key was the next step after coalescing).
        groups = {}
        for spec, payload, waiter, queued_at in batch:
            groups.setdefault(spec, []).append((payload, waiter, queued_at))
        if self.cluster:
            self._round_trip_by_master(batch, list(groups.items()))
            return
        try:
            replies = self._execute(list(groups.items()))
        except BatchLost as exc:
            throttled_log.log(log, logging.WARNING, ("batch lost",), "%s", exc)
            self._abandon(batch, exc)
            return
        except self.redis_errors as exc:
            self._failed(batch, exc)
            return
        if not self.healthy:
            log.warning("redis is answering again")
            self.healthy = True
        self._judge_replies(replies)
        self._deliver(groups.items(), replies)

    def _round_trip_by_master(self, batch, groups):
        """Cluster: each master's calls of the batch, all masters at once, their answers given
        to their waiters as each master answers. One master's after the other, and answered
        when the last was, a master that hangs (SIGSTOPped, its host gone) held every
        living master's decision for ``timeout``: they fell back with its own."""
        self._fresh_slots()
        parts = {}
        try:
            for group in groups:
                node = self.client.get_node_from_key(self._key_of(group[0]))
                parts.setdefault(node.name, []).append(group)
        except self.redis_errors as exc:     # no slot map (no node answered yet)
            self._failed(batch, exc)
            return
        parts = list(parts.values())
        if len(parts) == 1:
            replies = self._master_round_trip(parts[0])
        else:
            jobs = [gevent.spawn(self._master_round_trip, part) for part in parts]
            try:
                gevent.joinall(jobs)
            finally:
                gevent.killall(jobs)        # the batcher killed meanwhile (the worker stops)
            replies = [reply for job in jobs for reply in job.get()]
        unreachable = [r for r in replies if isinstance(r, NodeUnreachable)]
        failed = [r.__cause__ for r in unreachable if r.__cause__ is not None]
        if failed and len(unreachable) == len(replies) \
                and self._masters_all_down(time.monotonic()):
            self._failed([], failed[-1])    # no master answers: the store is down, as one
            return                          # Redis is (its calls fell back, each on its own)
        self._judge_replies(replies)

    def _master_round_trip(self, groups):
        """The calls of ``groups`` on the master that owns their slots -> the replies, given
        to the waiters too."""
        try:
            replies = self._execute(groups)
        except self.redis_errors as exc:
            unreachable = NodeUnreachable(f"redis: {describe(exc)}")
            unreachable.__cause__ = exc
            replies = [unreachable] * len(groups)
        if not self.healthy and not all(isinstance(r, NodeUnreachable) for r in replies):
            log.warning("redis is answering again")
            self.healthy = True
        self._deliver(groups, replies)
        return replies

    def _key_of(self, spec):
        """The Redis key a call of ``spec`` runs on: the one place it is derived, for
        _execute's calls and the cluster's choice of master alike."""
        if spec[0] == "rl":
            return spec[2]
        return self.adaptive_prefix + spec[1] if spec[0] == "ad" else spec[1]

    def _deliver(self, groups, replies):
        """Each reply to the waiters of its group (``groups``: [(spec, [(payload, waiter,
        queued at)])])."""
        for (spec, items), reply in zip(groups, replies):
            waiters = [waiter for _, waiter, _ in items if waiter is not None]
            if isinstance(reply, Exception):
                if isinstance(reply, NodeUnreachable) and spec[0] == "lc":
                    for payload, _, _ in items:     # as _abandon: may have run, or not at all
                        self._owe_release(spec, payload[1])
                if spec[0] == "br":
                    self._owe_probes(spec, items)
                for waiter in waiters:
                    waiter.set_exception(StoreError(str(reply)))
                continue
            if spec[0] == "rl":
                _, algorithm, _, rate, per, burst = spec
                for waiter, decision in zip(waiters, decisions_from(algorithm, reply, rate, per,
                                                                     burst)):
                    waiter.set(decision)
            elif spec[0] == "ad":
                self.adaptive_rates[spec[1]] = float(reply)
            elif spec[0] == "lc":
                flags, held = reply         # one flag per claim, in queue order
                for waiter, flag in zip(waiters, flags):
                    waiter.set((bool(int(flag)), int(held)))
            else:
                self._breaker_reply(spec, waiters, reply)

    def _owe_probes(self, spec, items):
        """A breaker call Redis answered with an error (OOM under noeviction, a cluster
        master unreachable): its probes' verdicts are owed, as a failed batch's are. Dropped,
        Redis held the probe for max(window, open_for) once it answered again, every request
        a 503. The script writes last, so an error means it counted nothing; were it to have,
        the verdict's id makes the copy count nothing."""
        for payload, _, _ in items:
            if isinstance(payload, tuple) and len(payload) == 3 and \
                    len(self.owed_probes) < MAX_OWED_PROBES:
                self.owed_probes.append(ProbeOutcome((spec, payload, None, 0.0)))

    def _breaker_reply(self, spec, waiters, reply):
        """A breaker call's reply: the states it entered said, its admissions granted."""
        state, epoch, admitted, wait, transitions = reply
        state = state.decode() if isinstance(state, bytes) else state
        for to in transitions:
            self._transition(spec[1], to.decode() if isinstance(to, bytes) else to)
        self._grant(spec, waiters, int(admitted), BreakerVerdict(False, state, int(epoch),
                                                                 float(wait)))

    def _grant(self, spec, waiters, admitted, verdict):
        """Breaker admissions to the requests still waiting, oldest first; those granted to
        none (the requests timed out and fell back, or were killed) are given back: a
        half-open probe granted to a request no longer there was held for probe_timeout,
        and every request of every worker and host was a 503 meanwhile."""
        for waiter in waiters:
            if not waiter.ready():
                waiter.set(verdict._replace(admitted=admitted > 0))
                admitted -= 1
        if admitted > 0 and verdict.state == "half_open":
            self.queue.extend([(spec, (verdict.epoch, None), None, 0.0)] * admitted)
            self.wake.set()

    def _judge_replies(self, replies):
        """Say when Redis answers calls with errors: each such call falls back to
        on_store_error (a full Redis, OOM, made every request of a "deny" limit a 503), and
        nothing else would tell why."""
        errors = [reply for reply in replies if isinstance(reply, Exception)]
        if not errors:
            if self.refusing:
                self.refusing = False
                throttled_log.log(log, logging.WARNING, ("redis refusing", False),
                                  "redis takes decisions again")
            return
        if len(errors) == len(replies):
            self.refusing = True
        throttled_log.log(log, logging.ERROR, ("redis refusing", True),
                          "redis answered %d of %d calls with an error (%s); rate limits and "
                          "breakers fall back to on_store_error for those", len(errors),
                          len(replies), f"{errors[0].__class__.__name__}: {errors[0]}")

    def _transition(self, key, state):
        log.warning("breaker %s is now %s", key[len(self.breaker_prefix):], state)
        if self.on_transition is not None:
            self.on_transition(key[len(self.breaker_prefix):], state)

    def _execute(self, groups):
        sent_at = time.monotonic()
        calls = []
        for spec, items in groups:
            key = self._key_of(spec)
            if spec[0] == "rl":
                _, algorithm, _, rate, per, burst = spec
                args = (rate, per, max(burst, 1)) if algorithm == "token_bucket" else (rate, per)
                ages = b" ".join([b"%d" % ((sent_at - queued_at) * 1e6)
                                  for _, _, queued_at in items])
                calls.append((algorithm, key, (*args, ages)))
            elif spec[0] == "ad":
                ok = sum(1 for payload, _, _ in items if payload)
                calls.append(("adaptive", key, (*spec[2], ok, len(items) - ok)))
            elif spec[0] == "lc":
                releases = [payload[1] for payload, _, _ in items if payload[0] == "release"]
                claims = [payload[1] for payload, _, _ in items if payload[0] == "claim"]
                calls.append(("limit_conn", key,
                              (spec[2], spec[3], len(releases), *releases, *claims)))
            else:
                conf_args = spec[2]
                admissions, outcomes = 0, {}
                for payload, _, _ in items:
                    if payload == "admit":
                        admissions += 1
                    else:
                        # a probe's verdict alone, with its id ("": none, counted as sent)
                        ident = payload[2] if len(payload) > 2 else ""
                        counts = outcomes.setdefault((payload[0], ident), [0, 0, 0])
                        counts[2 if payload[1] is None else 0 if payload[1] else 1] += 1
                flat = [n for (epoch, ident), counts in outcomes.items()
                        for n in (epoch, *counts, ident)]
                calls.append(("breaker", key, (*conf_args, admissions, *flat)))

        # A half-open probe Redis grants to a request that fell back meanwhile (Redis
        # stalled past ``timeout``: a fork, a SIGSTOP) is given back once the late reply
        # comes (_late_grants): with the connection dropped, it never came, and every
        # request of every worker and host got 503 circuit_open for max(window, open_for).
        admits = any(_admits(spec, items) for spec, items in groups)
        replies = self._pipeline(calls, (lambda late: self._late_grants(groups, late))
                                 if admits else None)
        again = [i for i, reply in enumerate(replies) if isinstance(reply, self.noscript)]
        if again and not self.cluster:      # (a cluster's master by master: _scripts_again)
            # Redis restarted or flushed its scripts (a cluster master after a failover: they
            # are not replicated). Only those calls go again: the others ran, and sent twice
            # they counted their hits twice.
            self._load_scripts()
            for i, reply in zip(again, self._pipeline([calls[i] for i in again])):
                replies[i] = reply
        return replies

    def _late_grants(self, groups, replies):
        """The replies of a batch whose requests fell back before they came: breaker probes
        granted in them are given back (``_grant`` with nobody waiting), and the states they
        entered said."""
        for (spec, items), reply in zip(groups, replies):
            if _admits(spec, items) and not isinstance(reply, Exception):
                self._breaker_reply(spec, [], reply)

    def _load_scripts(self):
        for reply in self._send_and_read([("SCRIPT", "LOAD", body)
                                          for body in self.scripts.values()]):
            if isinstance(reply, Exception):
                raise reply

    def _pipeline(self, calls, late=None):
        if not self.cluster:
            return self._send_and_read([("EVALSHA", self.shas[script], 1, key, *args)
                                        for script, key, args in calls], late)
        # redis-py refuses EVALSHA in cluster pipelines: one plain pipeline per master that
        # owns some of the keys (every call touches one key, so one slot).
        self._fresh_slots()
        by_node = {}
        for i, (script, key, args) in enumerate(calls):
            node = self.client.get_node_from_key(key)
            by_node.setdefault(node.name, (node, []))[1].append(i)
        replies = [None] * len(calls)
        now = time.monotonic()
        for node, indexes in by_node.values():
            if self.nodes_down.get(node.name, 0.0) > now:
                unreachable = NodeUnreachable(f"redis node {node.name} unreachable (asked again "
                                              f"after pause)")
                for i in indexes:
                    replies[i] = unreachable
                continue
            pipe = node.redis_connection.pipeline(transaction=False)
            for i in indexes:
                script, key, args = calls[i]
                pipe.evalsha(self.shas[script], 1, key, *args)
            try:
                executed = pipe.execute(raise_on_error=False)
            except self.redis_errors as exc:
                self._node_failed(node.name, now)
                unreachable = NodeUnreachable(f"redis node {node.name}: {describe(exc)}")
                unreachable.__cause__ = exc
                for i in indexes:
                    replies[i] = unreachable
                continue
            self.nodes_down.pop(node.name, None)
            for i, reply in zip(indexes, executed):
                replies[i] = reply
            self._scripts_again(node, calls, replies, indexes)
        redirected = [i for i, reply in enumerate(replies) if isinstance(reply, self.redirect)]
        if redirected:
            self._follow(calls, replies, redirected)
        return replies

    def _follow(self, calls, replies, redirected):
        """The calls a master answered MOVED (their slot is another master's now: a
        resharding, a failover) or ASK (the slot is moving, their key is there already) go
        once to the master named, as redis-py's own commands do; a MOVED reloads the slot
        map. They did not run where they were sent, so they count once. Taken for errors,
        every decision on a resharded slot fell back to on_store_error, and, its word
        ("MOVED") not in redis-py's exception, the map was never reloaded."""
        targets = {}
        for i in redirected:
            reply = replies[i]
            asking = not isinstance(reply, self.moved)
            self.slots_stale |= not asking
            targets.setdefault((reply.host, reply.port, asking), []).append(i)
        for (host, port, asking), indexes in targets.items():
            node = self.client.get_node(host=host, port=port)
            if node is None:        # a master the map does not know yet: after its reload
                word = "ASK" if asking else "MOVED"
                for i in indexes:
                    replies[i] = self.reply_error(f"{word} {replies[i]}: to an unknown master")
                continue
            word = "ASK" if asking else "MOVED"
            self._send_to(node, calls, replies, indexes, word)
            self._scripts_again(node, calls, replies, indexes, word)

    def _send_to(self, node, calls, replies, indexes, word):
        """The calls ``indexes`` of ``calls`` on master ``node``, their replies put in
        ``replies``. ``word``: "ASK" or "MOVED" when it is the master they were redirected
        to (after ASKING for "ASK"; a redirection again is an error: followed once), None
        when their slot is its by the map (a redirection is followed after: _follow)."""
        asking = word == "ASK"
        pipe = node.redis_connection.pipeline(transaction=False)
        for i in indexes:
            script, key, args = calls[i]
            if asking:
                pipe.execute_command("ASKING")      # for the one command after it
            pipe.evalsha(self.shas[script], 1, key, *args)
        try:
            executed = pipe.execute(raise_on_error=False)
        except self.redis_errors as exc:
            self._node_failed(node.name)
            unreachable = NodeUnreachable(f"redis node {node.name}"
                                          f"{f' ({word})' if word else ''}: {describe(exc)}")
            unreachable.__cause__ = exc
            executed = [unreachable] * (len(indexes) * (1 + asking))
        for i, reply in zip(indexes, executed[asking::1 + asking]):
            replies[i] = reply if word is None or not isinstance(reply, self.redirect) else \
                self.reply_error(f"{word} {reply}: redirected twice")

    def _scripts_again(self, node, calls, replies, indexes, word=None):
        """Cluster: the calls of ``indexes`` that master ``node`` answered NOSCRIPT (a
        failover's promoted replica, a restart, a master a resharding added) go once more
        after the scripts are loaded on it; the others ran and are not sent again. Loaded on
        every master, one after the other, a hung one (SIGSTOPped, its host gone) held this
        master's decisions for ``timeout``: they fell back while it answered at once."""
        missing = [i for i in indexes if isinstance(replies[i], self.noscript)]
        if not missing:
            return
        try:
            for body in self.scripts.values():
                node.redis_connection.script_load(body)
        except self.redis_errors:
            return          # they fall back as NOSCRIPT: loaded again at the next one
        self._send_to(node, calls, replies, missing, word)

    def _node_failed(self, name, now=None):
        """Master ``name`` could not be reached. It may have been replaced (a failover): its
        replica, promoted, sends no MOVED to a client that only asks the dead one, and every
        batch with a key of its slots failed until the gateway restarted; so the slot map is
        asked for again. Its calls alone fall back, and it is not asked for ``pause``: the
        whole batch failing paused the store, and keys on every other master fell back too
        (a cluster without replicas, a master down for good)."""
        self.slots_stale = True
        self.nodes_down[name] = (time.monotonic() if now is None else now) + self.pause

    def _masters_all_down(self, now):
        """Is every master of the cluster not asked for now? A batch that held only keys of
        the dead master's (requests come one batch at a time under load) paused the whole
        store: keys on the healthy masters fell back to on_store_error for ``pause``."""
        return all(self.nodes_down.get(node.name, 0.0) > now
                   for node in self.client.get_primaries())

    def _send_and_read(self, commands, late=None):
        """One pipeline on the batcher's own connection, packed by hiredis and sent and read
        with redis-py's connection calls: a Pipeline object, its pool checkout, the
        checkout's staleness poll and redis-py's packer cost a round trip ~2,700 bytecodes
        (docs/benchmarks.md, nineteenth pass). An error reply stands in the list in its
        place, as Pipeline.execute(raise_on_error=False) returns it. Never sent twice: a
        connection lost once the batch was written may have run it (BatchLost). ``late``:
        called with the replies of a batch that timed out, read aside when they come."""
        packed = b"".join(map(self.pack_command, commands))
        conn = self._connection()
        replies, written = [], False
        try:
            conn.send_packed_command([packed], check_health=False)
            written = True
            for _ in commands:
                try:
                    replies.append(conn.read_response(disconnect_on_error=late is None))
                except self.reply_error as exc:
                    replies.append(exc)
            return replies
        except BaseException as exc:
            if late is not None and written and isinstance(exc, self.timed_out) and \
                    self.late is None:
                # Redis is late, not gone: its replies are read aside, this connection no
                # longer the batcher's, and it goes once they came
                self.conn = None
                self.late = gevent.spawn(self._read_late, conn, len(commands), replies, late)
                raise
            # Whatever came between (a timeout, a reset, a kill) left the replies out of
            # step: the connection goes.
            self._drop(conn)
            if isinstance(exc, self.connection_lost) and not isinstance(exc, self.refusals):
                # Redis may have run the batch before the connection went (CLIENT KILL, a
                # proxy's cut, Redis dying before its write): sent again on a new one, its
                # hits counted twice.
                raise BatchLost(f"redis connection lost during a batch: {describe(exc)}; "
                                f"not sent again, it may have counted") from exc
            raise

    def _read_late(self, conn, count, replies, late):
        """The rest of a timed-out batch's replies, for at most LATE_REPLY_SECONDS; then
        ``late(replies)``, and the connection goes."""
        try:
            with gevent.Timeout(LATE_REPLY_SECONDS):
                # past the store's own timeout (redis-py 5.3's read_response takes none: its
                # socket's, which this connection, dropped after, no longer needs)
                if conn._sock is not None:
                    conn._sock.settimeout(LATE_REPLY_SECONDS)
                while len(replies) < count:
                    try:
                        replies.append(conn.read_response())
                    except self.reply_error as exc:
                        replies.append(exc)
            late(replies)
        except (gevent.Timeout, *self.redis_errors):
            pass                # never came: as before, the probes wait for probe_timeout
        finally:
            self.late = None
            conn.disconnect()
            self.client.connection_pool.release(conn)

    def _drop(self, conn):
        self.conn = None
        conn.disconnect()
        self.client.connection_pool.release(conn)

    def _connection(self):
        """The batcher's connection: held while batches follow each other; given back to
        the pool after HOLD_IDLE_SECONDS without one, whose checkout checks that Redis has
        not closed it meanwhile. A held one is polled before each batch (one poll, no round
        trip): one Redis closed since the last batch (a restart, its idle ``timeout``) is
        replaced before anything is written, as the checkout does."""
        now = time.monotonic()
        conn = self.conn
        if conn is not None:
            if now - self.conn_used_at > HOLD_IDLE_SECONDS:
                self.client.connection_pool.release(conn)
                conn = self.conn = None
            elif _readable(conn):
                self._drop(conn)
                conn = None
        if conn is None:
            conn = self.conn = self.client.connection_pool.get_connection()
        self.conn_used_at = now
        return conn

    def _fresh_slots(self):
        """Cluster: ask the nodes for the slot map again after a master could not be reached,
        or a reply said its slot moved. Asked aside, while the batches go on with the map
        there is: redis-py asks the nodes in a random order, and a hung master asked first
        held the batch for ``timeout``, every living master's decision in it falling back.
        While that fails (every node it asks is dead), the map it has serves, and it is
        asked again next time: a failure here failed the whole batch, keys on healthy
        masters with it."""
        if self.slots_stale and self.slot_refresh is None:
            self.slot_refresh = gevent.spawn(self._refresh_slots)

    def _refresh_slots(self):
        try:
            self.slots_stale = False        # a failure while it asks: asked again after it
            self.client.nodes_manager.initialize()
            masters = {node.name for node in self.client.get_primaries()}
            for name in [name for name in self.nodes_down if name not in masters]:
                del self.nodes_down[name]   # replaced by its replica (a failover), or gone
        except self.redis_errors:
            self.slots_stale = True
        finally:
            self.slot_refresh = None

    def _failed(self, batch, exc):
        self.down_until = time.monotonic() + self.pause
        if self.healthy:
            log.error("redis unreachable (%s); rate limits and breakers fall back to "
                      "on_store_error for %.1fs at a time until it answers",
                      self._failure(exc), self.pause)
            self.healthy = False
        self._abandon(batch, StoreError(f"redis: {self._failure(exc)}"))

    def _failure(self, exc):
        """``exc`` in words; a Redis that wants a password, or another one, says so: its own
        words ("HELLO must be called with the client already authenticated") never did."""
        if isinstance(exc, self.refused_credentials):
            return (f"it refused our credentials: {describe(exc)}; Redis requires a password: "
                    f"give the right one in [redis] url or password_file")
        if isinstance(exc, self.not_redis):
            return (f"what answers there does not speak Redis' protocol ({describe(exc)}): "
                    f"another server's port, or one that wants TLS (rediss://)?")
        return describe(exc)

    def _abandon(self, batch, error):
        """Calls of a round trip that failed: their waiters get ``error``. A limit_conn claim
        may have run in Redis though its answer was lost (a timeout), and its caller falls back
        and never releases it there; a release did not happen: both are owed."""
        for item in batch:
            spec, payload, waiter, _ = item
            if spec[0] == "lc":
                self._owe_release(spec, payload[1])
            elif type(item) is ProbeOutcome and len(self.owed_probes) < MAX_OWED_PROBES:
                # A probe's verdict lost with its batch (Redis still stalled when the pause
                # it was owed through ended) left Redis holding the probe for max(window,
                # open_for), every request a 503. Sent again: a copy of one a timed-out batch
                # ran late counts only while that probe's half-open state lasts (its epoch).
                self.owed_probes.append(item)
            if waiter is not None:
                waiter.set_exception(error)


def _state_owner(name):
    """("route", id) or ("upstream", id) of a LocalStore state file's name: ``br:`` and a
    breaker key (``route:ID`` or ``upstream:ID``), or ``ad:`` and a route id (an adaptive
    limit), either with ``:consumer=ID`` (ids hold no "=")."""
    kind, _, key = name.partition(":")
    owner, rest = ("route", key) if kind == "ad" else key.partition(":")[::2]
    return owner, rest.partition(":consumer=")[0]


def _owner_tag(owner):
    """A state file's name's first part: a hash of its ("route", id) or ("upstream", id)."""
    return hashlib.blake2b(f"{owner[0]}:{owner[1]}".encode(), digest_size=6).hexdigest()


def state_file_name(name):
    """``OWNER-KEY`` in states/: hashes of its route or upstream, and of the state's name;
    the first tells ``LocalStore.sweep_states`` whose it is."""
    return f"{_owner_tag(_state_owner(name))}-" + \
        hashlib.blake2b(name.encode(), digest_size=16).hexdigest()


class LocalStore:
    """Per-host state in files every worker of the host maps, each guarded by flock.

    Rate limits: ``limits``, a fixed open-addressing table mmap'd by every worker: each slot
    holds a key hash, three doubles (token bucket: tokens, last; sliding window: index,
    current, previous) and its last use: 65,536 slots of 40 bytes, 2.5 MiB. When the probe
    run is full the least recently used slot of the run is reused. Its size is checked under
    the lock before each use (``_locked``): the file truncated under the mapping (by hand, a
    cleanup script) was SIGBUS for every worker at its next limited request. Breakers and
    adaptive limits: ``states/``, one small JSON file per key, read and rewritten under the
    file's lock (their state has no fixed size).
    """

    SLOTS = 65536
    PROBES = 8
    SLOT = struct.Struct("<Qdddd")      # key hash, a, b, c, last use

    def __init__(self, directory):
        self.directory = directory
        self.fd = fd = self.open_table(directory)
        self.size = self.table_bytes()     # checked before each use (_locked)
        self.mm = mmap.mmap(fd, self.size)
        # Slots are chosen by a keyed hash: with a public one, a client could compute keys
        # (header values) that land in the probe run of another limit and evict its state.
        self.hash_key = host_secret(os.path.join(directory, "limits.key"))
        self.memo = {}          # token-bucket key -> [digest, slot last found in]
        # Sliding windows (and the auth budgets, sliding windows too) have digests of their
        # own: two limits of the two algorithms on one key (a route's token bucket on "ip", a
        # consumer's sliding window on "ip") read each other's slot as their own state, and
        # each reset the other (a window index read as tokens fills a bucket): no limit.
        self.window_memo = {}
        self.state_dir = os.path.join(directory, "states")      # breakers, adaptive limits
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        self.state_fds = {}
        # the ("route", id) and ("upstream", id) of the table as forget_states last had it
        # (None: not yet), its consumer ids (None: any), and whether a file of none of them
        # was opened since (a request admitted before its route left that ended after: kept
        # open, the file stayed for good): the worker sweeps again (Runtime.on_tick)
        self.owners, self.consumers, self.strays = None, None, False
        self.adaptive_rates = {}
        self.on_transition = None       # callable(key, state), set by the worker for metrics
        self.conn_fds = {}              # limit_conn: bucket -> fd, opened on first use
        self.lease_numbers = itertools.count()
        self.lease_tag = os.urandom(4).hex()   # two stores in one process never share ids
        # The file this store's leases are held by (_holder): its name, path, and the locked
        # descriptor once a claim made it
        self.holder = f"{HOLDER_PREFIX}{self.lease_tag}"
        self.holders = os.path.join(directory, "conns", HOLDERS)
        self.holder_fd = None

    @classmethod
    def open_table(cls, directory):
        """The table's file, its blocks allocated: a sparse file on a full tmpfs (/run) got
        its pages on first write, and a worker writing a new key's slot then died of SIGBUS,
        request after request. The master makes it at start (``prepare``), so a state_dir
        without room is refused there, by name. -> fd"""
        fd = os.open(os.path.join(directory, "limits"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            cls._allocate(fd)
        except OSError:
            os.close(fd)
            raise
        return fd

    @classmethod
    def table_bytes(cls):
        return cls.SLOTS * cls.SLOT.size       # 2.5 MiB (40-byte slots)

    @classmethod
    def _allocate(cls, fd):
        """The table file at its full size, every block allocated (not sparse)."""
        size = cls.table_bytes()
        if os.fstat(fd).st_size < size:
            os.ftruncate(fd, size)
        os.posix_fallocate(fd, 0, size)

    @classmethod
    def prepare(cls, directory):
        """Make the host's per-host files before any worker needs them (OSError if the
        state_dir cannot take them)."""
        os.close(cls.open_table(directory))
        host_secret(os.path.join(directory, "limits.key"))

    # -- breakers and adaptive limits ----------------------------------------------------------

    def breaker_admit(self, key, conf):
        state, admitted, now = self._breaker_step(key, conf, (), 1)
        return BreakerVerdict(admitted == 1, state["state"], state["epoch"],
                              breaker.retry_after(state, now))

    def breaker_record(self, key, conf, epoch, ok, probe=False):
        outcome = (epoch, 0, 0, 1) if ok is None else (epoch, int(ok), int(not ok), 0)
        self._breaker_step(key, conf, [outcome], 0)

    def breaker_state(self, key):
        name = "br:" + key
        stored = self._decode(name, self._read(name))
        return None if stored is None else breaker_state_of(stored)

    def breaker_view(self, key):
        """(breaker_state(key), now on the clock its times were written on: this host's)."""
        return self.breaker_state(key), time.time()

    def adaptive_rate(self, key, conf):
        return ratelimit.adaptive_rate(self.adaptive_rates.get(key), conf)

    def adaptive_record(self, key, conf, ok):
        def update(stored, now):
            state = ratelimit.adapt(stored, conf, now, int(ok), int(not ok))
            return state, state
        self.adaptive_rates[key] = self._update("ad:" + key, update)["rate"]

    # -- small JSON states in files, one per key, read-modify-written under flock -------------

    def _fd(self, name):
        fd = self.state_fds.get(name)
        if fd is None:
            fd = self.state_fds[name] = self._open_state(name)
        return fd

    def _state_path(self, name):
        return os.path.join(self.state_dir, state_file_name(name))

    def _open_state(self, name):
        """A state file opened, and marked in use by this process for as long as it is open:
        a shared record lock (fcntl; independent of the flock that guards each update), which
        ``_remove_state`` of another worker tests before it removes the file. -> fd"""
        path = self._state_path(name)
        if self.owners is not None and not self._current(name):
            self.strays = True      # a request of a route gone: let go at the next sweep
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except FileNotFoundError:
                # states/ itself removed (a cleaner, a hand's rm -r): made again, as a file
                # removed is; else every breaker of the host let requests through
                # unguarded until a restart. (The whole state_dir: the master makes it.)
                if not os.path.isdir(self.directory):
                    raise
                os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.lockf(fd, fcntl.LOCK_SH)  # waits out a removal under way
                if os.fstat(fd).st_nlink:
                    return fd
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)        # removed between the open and the lock: open the new one

    def _state_locked(self, name, how):
        """The state file's fd, under its flock (``how``); opened again if the file was
        removed under this worker (a tmp cleaner, a hand's rm): writing an unlinked file kept
        this worker's state apart from the other workers' (on a new one) until it exited."""
        fd = self._fd(name)
        fcntl.flock(fd, how)
        if not os.fstat(fd).st_nlink:
            os.close(self.state_fds.pop(name))      # its locks with it
            fd = self._fd(name)
            fcntl.flock(fd, how)
        return fd

    def forget_states(self, owners, consumers=None):
        """Close the state files of breakers and adaptive limits whose route or upstream is no
        longer in the table (``owners``: its ("route", id) and ("upstream", id) pairs), or
        whose consumer is not (``consumers``: the ids of the table's, None: any; a consumer's
        own, ``:consumer=ID``, stayed open for its route's life, one per consumer ever gone),
        and remove those no other process has open. Each was kept open for the worker's life:
        routes that come and go through etcd left one descriptor each in every worker, until
        it could accept no client (EMFILE), and one file each in states/ for good. A worker
        still serving one (its table not yet changed, or draining after a reload) keeps it;
        the last one to let it go removes it. One that comes back starts over."""
        self.owners, self.consumers, self.strays = owners, consumers, False
        for name in [name for name in self.state_fds if not self._current(name)]:
            os.close(self.state_fds.pop(name))
            self._remove_state(name)
        for key in [key for key in self.adaptive_rates if not self._current("ad:" + key)]:
            del self.adaptive_rates[key]

    def _current(self, name):
        """Is state ``name`` one of the table forget_states last had (its owners, consumers)?"""
        consumer = name.partition(":consumer=")[2]
        return _state_owner(name) in self.owners and (
            not consumer or self.consumers is None or consumer in self.consumers)

    def sweep_states(self, owners, consumers=None):
        """Remove the state files of routes and upstreams not in the table (``owners``) that
        no process has open: those a worker left as it exited holding them (a reload that
        removed their route, a worker replaced), and those of an older version's names. A
        route of the table keeps its file (a restart keeps its breaker). -> whether none is
        left (one still open elsewhere, a worker draining, is tried again later)."""
        self.forget_states(owners, consumers)   # (its own lock would not keep it out)
        live = {_owner_tag(owner) for owner in owners}
        try:
            names = os.listdir(self.state_dir)
        except OSError:
            return True     # the state_dir gone: nothing to sweep
        left = [name for name in names if name.partition("-")[0] not in live and
                not self._remove_file(os.path.join(self.state_dir, name))]
        return not left

    def _remove_state(self, name):
        self._remove_file(self._state_path(name))

    def _remove_file(self, path):
        """Remove a state file unless another process has it open (its record lock, taken
        in ``_open_state``). Under an exclusive one, nobody can open it meanwhile (they wait in
        ``_open_state``, then see it gone and make a new one). -> whether it is gone."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return True
        except OSError as exc:
            self._cannot_remove(path, exc)
            return False
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # the file it locked is still the one at the path (not one removed and made
            # again by others since it opened it)
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                os.unlink(path)
            return True
        except (BlockingIOError, PermissionError):
            return False        # open in another worker (EAGAIN/EACCES)
        except FileNotFoundError:
            return True
        except OSError as exc:
            self._cannot_remove(path, exc)
            return False
        finally:
            os.close(fd)

    def _cannot_remove(self, path, exc):
        throttled_log.log(log, logging.ERROR, ("remove state",),
                          "cannot remove %s, a per-host state no route uses: %s", path,
                          exc.strerror or exc)

    def _read(self, name):
        fd = self._state_locked(name, fcntl.LOCK_SH)
        try:
            return os.pread(fd, 1 << 16, 0)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _update(self, name, update):
        """Run ``update(stored state or None, now) -> (state to save, result)`` under the
        file's lock.

        A shorter state is written padded with spaces to the old one's length, and only then
        is the file cut to it: a worker killed between the two (the OOM killer, the master's
        SIGKILL) left the new state followed by the old one's tail, which no read could parse,
        and every request through the breaker was a 500 from then on, across restarts."""
        fd = self._state_locked(name, fcntl.LOCK_EX)
        try:
            now = time.time()       # under the lock: the states it writes follow each other
            raw = os.pread(fd, 1 << 16, 0)
            state, result = update(self._decode(name, raw), now)
            data = json.dumps(state, separators=(",", ":")).encode()
            os.pwrite(fd, data.ljust(len(raw)), 0)
            if len(raw) > len(data):
                os.ftruncate(fd, len(data))
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        return result

    def _decode(self, name, raw):
        """A state file's JSON object, or None for none; one that does not parse (torn by a
        crash of an older version, damaged by hand) starts over, and the log says so."""
        if not raw.strip():
            return None
        try:
            stored = json.loads(raw)
        except ValueError:
            stored = None
        if isinstance(stored, dict):
            return stored
        throttled_log.log(log, logging.ERROR, ("damaged state", name),
                          "the per-host state of %s in %s does not parse: it starts over", name,
                          self.state_dir)
        return None

    def _breaker_step(self, key, conf, outcomes, admissions):
        def update(stored, now):
            state = breaker.initial_state() if stored is None else breaker_state_of(stored)
            state, admitted, transitions = breaker.step(state, conf, now, outcomes, admissions)
            return state, (state, admitted, transitions, now)
        state, admitted, transitions, now = self._update("br:" + key, update)
        for to in transitions:
            log.warning("breaker %s is now %s (per-host state)", key, to)
            if self.on_transition is not None:
                self.on_transition(key, to)
        return state, admitted, now

    # -- limit_conn leases ------------------------------------------------------------------------

    CONN_BUCKETS = 64       # files the per-host leases are spread over (bounded, like ``limits``)

    def conn_claim(self, key, limit, lease_seconds):
        """limit_conn per host: take one of ``limit`` slots of ``key`` -> ConnClaim. Leases
        are ``HOLDER.N`` (_holder): expired ones are dropped on every claim, and when every
        slot is taken the leases of workers that are gone (killed mid-request) are dropped
        at once."""
        lease = f"{self._holder()}.{next(self.lease_numbers)}"

        def update(table, now):
            held = table.get(key, {})
            if len(held) >= limit:
                held = _leases_alive(held, now, lease_seconds, self.holders, self.holder)
            admitted = len(held) < limit
            if admitted:
                held[lease] = now + lease_seconds
            table[key] = held
            return ConnClaim(lease if admitted else None, len(held))
        return self._conn_update(key, update)

    def _holder(self):
        """What this store's leases name their worker by: ``lock-TAG``, a file in
        conns/holders/ on which this process holds a shared flock for its life. A claim
        that finds every slot taken tries an exclusive one (_holder_alive): a worker that
        is gone (killed -9) holds none, whatever its pid became since and in whatever PID
        namespace it ran. By pid (and start time), a worker of a container started again
        got the dead run's pids, and a gateway in another PID namespace on the same
        state_dir took live workers there for dead ones (more than ``limit`` let in)."""
        if self.holder_fd is None:
            os.makedirs(self.holders, mode=0o700, exist_ok=True)
            _remove_dead_holders(self.holders)
            self.holder_fd = self._lock_holder()
        else:
            self.keep_holder()
        return self.holder

    def _lock_holder(self):
        """A new holder file of this store's name, locked (shared) -> its fd."""
        # locked under a temporary name, then renamed: never seen unlocked (taken for a
        # dead holder's and removed under it)
        temporary = os.path.join(self.holders, f".{self.holder}")
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            os.rename(temporary, os.path.join(self.holders, self.holder))
        except BaseException:
            os.close(fd)
            raise
        return fd

    def keep_holder(self):
        """The holder file made again under its name if it was removed under this live store
        (a tmp cleaner ages it out: it is never written; a hand's ``rm``): any claim that
        found every slot taken read its missing file as a dead worker's, dropped the leases
        still held and let more than ``limit`` in. Called on every claim and once a second
        by the worker (Runtime.on_tick): the file is back within a second."""
        fd = self.holder_fd
        if fd is None:
            return
        try:
            current, held = os.stat(os.path.join(self.holders, self.holder)), os.fstat(fd)
            if (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
                return
        except FileNotFoundError:
            pass
        if not os.path.isdir(self.directory):
            return      # the whole state_dir removed: the master makes it (the leases are gone)
        os.makedirs(self.holders, mode=0o700, exist_ok=True)
        self.holder_fd = self._lock_holder()
        os.close(fd)

    def conn_release(self, key, limit, lease_seconds, lease):
        def update(table, now):
            table.get(key, {}).pop(lease, None)
        self._conn_update(key, update)

    def _conn_update(self, key, update):
        """Run ``update(table, now)`` on the bucket file of ``key`` under its lock; ``table`` is
        {key: {lease: expiry}} with expired leases already dropped."""
        bucket = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=2).digest(),
                                "little") % self.CONN_BUCKETS
        fds = self.conn_fds
        fd = fds.get(bucket)
        if fd is None:
            directory = os.path.join(self.directory, "conns")
            os.makedirs(directory, mode=0o700, exist_ok=True)
            fd = fds[bucket] = os.open(os.path.join(directory, f"{bucket:02d}"),
                                       os.O_RDWR | os.O_CREAT, 0o600)
        now = time.time()
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            raw = os.pread(fd, os.fstat(fd).st_size, 0)
            try:
                stored = json.loads(raw) if raw else {}
            except ValueError:
                stored = {}         # a torn file (a crash mid-write): leases start over
            table = {}
            for name, leases in stored.items():
                live = {k: v for k, v in leases.items() if v > now}
                if live:
                    table[name] = live
            result = update(table, now)
            data = json.dumps({k: v for k, v in table.items() if v},
                              separators=(",", ":")).encode()
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        return result

    # -- rate limits ----------------------------------------------------------------------------

    DIGESTS = 4096      # key -> digest and slot remembered per worker (a client-chosen key
                        # part is one of many: the memo is dropped whole when full)

    def _memo(self, key, memos=None):
        """[the key's slot digest, the slot this worker last found it in (-1: not yet)];
        ``memos``: self.memo (token buckets) or self.window_memo (the default)."""
        memos = self.window_memo if memos is None else memos
        memo = memos.get(key)
        if memo is None:
            person = b"" if memos is self.memo else b"sliding_window"
            digest = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8,
                                                    key=self.hash_key, person=person).digest(),
                                    "little") or 1
            if len(memos) >= self.DIGESTS:
                memos.clear()
            memo = memos[key] = [digest, -1]
        return memo

    def decide(self, algorithm, key, rate, per, burst):
        memos = self.memo if algorithm == "token_bucket" else self.window_memo
        memo = memos.get(key) or self._memo(key, memos)
        digest, hint = memo
        mm, size = self.mm, self.SLOT.size
        self._locked()
        try:
            # Read under the lock: taken before it, a worker that waited for the lock behind
            # one already past a window's edge decided in the window before, took the newer
            # state for a window long past and reset it, the full window's count with it.
            now = time.time()
            # The slot this worker found the key in last time, if the key is still there
            # (another key may have taken it since: then the probe run is searched again).
            found = self.SLOT.unpack_from(mm, hint * size) if hint >= 0 else None
            if found is not None and found[0] == digest:
                slot, state = hint, found[1:4] if found[1] or found[2] or found[3] else None
            else:
                slot, state = self._find(digest)
                memo[1] = slot
            if algorithm == "token_bucket":
                decision, new = ratelimit.token_bucket(state and state[:2], rate, per, burst,
                                                       now)
                self.SLOT.pack_into(mm, slot * size, digest, new[0], new[1], 0.0, now)
            else:
                decision, new = ratelimit.sliding_window(state, rate, per, now)
                self.SLOT.pack_into(mm, slot * size, digest, float(new[0]), float(new[1]),
                                    float(new[2]), now)
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        return decision

    def give_back(self, key, per):
        """Undo one admission of a ``sliding_window`` limit on ``key`` in this window or the
        one before (basic_auth counts password checks that fail: it takes one before bcrypt
        runs and gives it back when the check succeeded)."""
        digest = self._memo(key)[0]
        index = math.floor(time.time() / per)
        self._locked()
        try:
            slot, state = self._find(digest)
            if state is not None and state[0] in (index, index - 1) and state[1] >= 1:
                _, _, _, _, used = self.SLOT.unpack_from(self.mm, slot * self.SLOT.size)
                self.SLOT.pack_into(self.mm, slot * self.SLOT.size, digest, state[0],
                                    state[1] - 1, state[2], used)
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def _locked(self):
        """Take the table's lock, and give the file back its size if something cut it short
        (the mapping past its end is SIGBUS): the cut slots read as empty, forgotten keys."""
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            if os.fstat(self.fd).st_size < self.size:
                log.error("%s was cut short: the rate limits on this host it held start over",
                          os.path.join(self.directory, "limits"))
                self._allocate(self.fd)
        except BaseException:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            raise

    def _find(self, digest):
        start = digest % self.SLOTS
        oldest, oldest_use = start, float("inf")
        for probe in range(self.PROBES):
            slot = (start + probe) % self.SLOTS
            key, a, b, c, used = self.SLOT.unpack_from(self.mm, slot * self.SLOT.size)
            if key == digest:
                return slot, (a, b, c) if c or a or b else None
            if key == 0:
                return slot, None
            if used < oldest_use:
                oldest, oldest_use = slot, used
        return oldest, None


def host_secret(path, size=16):
    """Random bytes every worker of the host reads from ``path``; the first to come writes
    them (whole, by a link: a reader never sees a half-written file)."""
    try:
        with open(path, "rb") as f:
            secret = f.read()
        if len(secret) == size:
            return secret
    except FileNotFoundError:
        pass
    temp = f"{path}.{os.getpid()}"
    with open(temp, "wb", opener=lambda p, flags: os.open(p, flags, 0o600)) as f:
        f.write(os.urandom(size))
    try:
        os.link(temp, path)
    except FileExistsError:
        pass                    # another worker was first, or a damaged file: theirs wins
    finally:
        os.unlink(temp)
    with open(path, "rb") as f:
        secret = f.read()
    if len(secret) != size:
        raise OSError(f"{path}: damaged ({len(secret)} bytes, not {size}); remove it")
    return secret


HOLDERS = "holders"         # conns/holders/: the files per-host leases are held by
HOLDER_PREFIX = "lock-"


def _holder_alive(directory, name):
    """Does a process still hold holder file ``name`` (LocalStore._holder)? One that cannot
    be opened is gone (removed as dead); one that cannot be tried is taken as held."""
    try:
        fd = os.open(os.path.join(directory, name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:         # held (EWOULDBLOCK); or the filesystem cannot say
        return True
    else:
        try:
            os.unlink(os.path.join(directory, name))
        except OSError:
            pass
        return False
    finally:
        os.close(fd)


def _remove_dead_holders(directory):
    """The holder files of workers that are gone (one per worker that ever claimed a slot:
    they would pile up over restarts). Their leases, if any are left, are dead with them."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if name.startswith(HOLDER_PREFIX):
            _holder_alive(directory, name)


def _leases_alive(leases, now, lease_seconds, holders, own):
    """{lease: expiry} -> those whose worker still runs, each worker looked up once (a slot
    full of one worker's leases is one lock tried, not one per lease). ``holders``: the
    directory of the holder files (_holder_alive); a lease of an older release names its
    worker by pid (and start time: _owner_alive). ``own``: this store's holder, alive
    untested (where flock is emulated with POSIX locks, NFS, a process's second descriptor
    would get the lock its first holds, and this worker's leases were taken for dead)."""
    verdicts = {own: True}
    kept = {}
    for lease, expiry in leases.items():
        owner = lease.partition(".")[0]
        if owner not in verdicts:
            verdicts[owner] = _holder_alive(holders, owner) \
                if owner.startswith(HOLDER_PREFIX) else _owner_alive(owner)
        verdict = verdicts[owner]
        if verdict is True or (verdict is not False and
                               _held_since_before(verdict, now, expiry, lease_seconds)):
            kept[lease] = expiry
    return kept


# Slack for a lease with no start (_held_since_before): a wall clock stepped forward since the
# lease was written makes it look older than it is (the process's age is on the boot clock).
LEASE_AGE_SLACK = 0.5


def _held_since_before(age, now, expiry, lease_seconds):
    """Could a process ``age`` seconds old have written a lease (its pid alone) that expires
    at ``expiry``, written ``lease_seconds`` before that? One younger than the lease got its
    pid after the lease was written: the previous release's leases (PID.TAG.N), named the
    dead worker of a container killed before the upgrade, and the new container's worker
    that got its pid again kept the slot taken for lease_seconds (limit 1: 503 to everyone)."""
    return age + LEASE_AGE_SLACK >= now - (expiry - lease_seconds)


def _owner_alive(owner):
    """Is the worker that holds per-host leases of an older release (``PID@START``, or
    ``PID``) still running?
    -> True, False, or for a lease with no start (``PID``) of a running pid, that process's
    age in seconds (its leases are judged by when they were written: _held_since_before).
    Its pid alone was taken for it by any process that got the pid since: a container started
    again after its processes were killed (-9, the OOM killer) gives its new worker the pid
    of the previous run's, and the slots that run held stayed taken for lease_seconds (a
    route of limit 1 refused everyone for 5 minutes)."""
    pid, _, start = owner.partition("@")
    try:
        if not pid_alive(int(pid)):
            return False
    except ValueError:
        return True
    if not start:
        # written without its start (an older release, /proc unreadable)
        age = process_age(int(pid))
        return True if age is None else age
    now = process_start(int(pid))
    return now is None or str(now) == start
