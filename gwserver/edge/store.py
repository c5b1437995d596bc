"""Where rate-limit state lives: Redis (shared by every worker and host) or this host.

``RedisStore`` makes each decision one atomic script call on Redis' clock (EVALSHA, scripts
loaded once and again on NOSCRIPT, one key per decision, keys that expire), and *coalesces*:
every decision a worker's greenlets ask for while a round trip is in flight goes into the next
pipeline, so a worker has at most one round trip in flight (PERF_NOTES: one EVALSHA per request
cost 75% of a worker's throughput, one pipeline per loop iteration ~40%). Timeouts are tens of
milliseconds with no retries (redis-py's defaults, 5 s and 10 retries, would stall a worker for
seconds), and after a failure the store is skipped for ``pause`` seconds so a dead Redis costs
nothing per request; callers then apply their ``on_store_error``.

``LocalStore`` keeps the same state for one host in an mmap'd file that every worker of the
host maps, guarded by flock: the embedded default (no [redis]) and the ``local`` fallback.
"""
import fcntl
import hashlib
import logging
import mmap
import os
import struct
import time

import gevent
import gevent.event

from ..core import ratelimit
from ..errors import StoreError

log = logging.getLogger("gwserver.store")


# Both scripts decide N requests for one key in one call. ARGV after the limits: the age in
# microseconds of each request (oldest first), measured by the worker since it queued it; each
# is decided at Redis' now - age, one after the other, exactly as N calls at their arrival
# times would (a burst-0 bucket caps its one token between arrivals, so deciding a batch at
# one instant lost 25% of the rate in scripts/bench-ratelimit). Numbers go back formatted with
# full precision: Lua's tostring() keeps 14 digits, 0.1 ms of a Unix time.
TOKEN_BUCKET_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, per, capacity = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local refill = rate / per
local state = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens = tonumber(state[1]) or capacity
local last = tonumber(state[2]) or 0
local flags, left = {}, {}
for i = 4, #ARGV do
  local at = now - tonumber(ARGV[i]) / 1000000
  if last == 0 then last = at end
  if at > last then
    tokens = math.min(capacity, tokens + (at - last) * refill)
    last = at
  end
  if tokens >= 1 - 1e-9 then
    tokens = math.max(0, tokens - 1)
    flags[#flags + 1] = 1
  else
    flags[#flags + 1] = 0
  end
  left[#left + 1] = string.format('%.17g', tokens)
end
redis.call('HSET', KEYS[1], 't', string.format('%.17g', tokens), 'ts', string.format('%.6f', last))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / refill * 1000) + 1000)
return {flags, left}
"""

SLIDING_WINDOW_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, per = tonumber(ARGV[1]), tonumber(ARGV[2])
local counts = {}
local function count(index)
  if counts[index] == nil then
    counts[index] = tonumber(redis.call('HGET', KEYS[1], tostring(index))) or 0
  end
  return counts[index]
end
local flags, info = {}, {}
local added, top = {}, 0
for i = 3, #ARGV do
  local at = now - tonumber(ARGV[i]) / 1000000
  local index = math.floor(at / per)
  if index > top then top = index end
  local into = at - index * per
  local current, previous = count(index), count(index - 1)
  local estimate = previous * (per - into) / per + current
  if estimate + 1 <= rate + 1e-9 then
    counts[index] = current + 1
    added[index] = (added[index] or 0) + 1
    flags[#flags + 1] = 1
  else
    flags[#flags + 1] = 0
  end
  info[#info + 1] = {current, previous, string.format('%.6f', into), index}
end
for index, n in pairs(added) do
  redis.call('HINCRBY', KEYS[1], tostring(index), n)
end
redis.call('HDEL', KEYS[1], tostring(top - 2))
redis.call('PEXPIRE', KEYS[1], math.ceil(per * 2000) + 1000)
return {flags, info}
"""


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
            decision = ratelimit.Decision(bool(int(flag)), decision.limit, decision.remaining,
                                          decision.reset, decision.retry_after or per - float(into))
        out.append(decision)
    return out


class RedisStore:
    def __init__(self, url, timeout=0.05, pause=1.0, key_prefix="gw:rl:"):
        import redis
        self.redis_errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                             redis.exceptions.ResponseError, OSError)
        self.noscript = redis.exceptions.NoScriptError
        self.client = redis.Redis.from_url(url, socket_timeout=timeout,
                                           socket_connect_timeout=timeout, retry=None,
                                           retry_on_timeout=False, health_check_interval=0,
                                           single_connection_client=False,
                                           max_connections=4)
        self.pause = pause
        self.key_prefix = key_prefix
        self.scripts = {"token_bucket": TOKEN_BUCKET_LUA, "sliding_window": SLIDING_WINDOW_LUA}
        self.shas = {name: hashlib.sha1(body.encode()).hexdigest()
                     for name, body in self.scripts.items()}
        self.queue = []
        self.wake = gevent.event.Event()
        self.down_until = 0.0
        self.healthy = True
        self.batcher = gevent.spawn(self._run)

    def decide(self, algorithm, key, rate, per, burst):
        """One decision; raises StoreError if Redis cannot answer in time."""
        if time.monotonic() < self.down_until:
            raise StoreError("redis paused after an error")
        waiter = gevent.event.AsyncResult()
        self.queue.append(((algorithm, self.key_prefix + key, rate, per, burst), waiter,
                           time.monotonic()))
        self.wake.set()
        # No timeout of our own: the Redis socket timeout bounds the round trip, and the batcher
        # answers every waiter, with a result or a StoreError.
        return waiter.get()

    def _run(self):
        while True:
            self.wake.wait()
            self.wake.clear()
            batch, self.queue = self.queue, []
            if batch:
                try:
                    self._round_trip(batch)
                except Exception as exc:        # never leave a waiter hanging
                    log.exception("rate-limit batch failed")
                    for _, waiter, _ in batch:
                        if not waiter.ready():
                            waiter.set_exception(StoreError(str(exc)))

    def _round_trip(self, batch):
        # Same (algorithm, key, limits) -> one script call deciding N requests (PERF_NOTES:
        # merging hits on one key was the next step after coalescing).
        groups = {}
        for spec, waiter, queued_at in batch:
            groups.setdefault(spec, []).append((waiter, queued_at))
        try:
            replies = self._execute(list(groups.items()))
        except self.redis_errors as exc:
            self._failed(batch, exc)
            return
        if not self.healthy:
            log.warning("redis is answering again")
            self.healthy = True
        for ((algorithm, _, rate, per, burst), waiters), reply in zip(groups.items(), replies):
            if isinstance(reply, Exception):
                for waiter, _ in waiters:
                    waiter.set_exception(StoreError(str(reply)))
                continue
            for (waiter, _), decision in zip(waiters, decisions_from(algorithm, reply, rate, per,
                                                                     burst)):
                waiter.set(decision)

    def _execute(self, groups):
        sent_at = time.monotonic()
        ages = {id(waiters): [int((sent_at - queued_at) * 1e6) for _, queued_at in waiters]
                for _, waiters in groups}

        def pipeline():
            pipe = self.client.pipeline(transaction=False)
            for (algorithm, key, rate, per, burst), waiters in groups:
                args = (rate, per, max(burst, 1)) if algorithm == "token_bucket" else (rate, per)
                pipe.evalsha(self.shas[algorithm], 1, key, *args, *ages[id(waiters)])
            return pipe.execute(raise_on_error=False)
        replies = pipeline()
        if any(isinstance(r, self.noscript) for r in replies):
            for body in self.scripts.values():      # Redis restarted or flushed its scripts
                self.client.script_load(body)
            replies = pipeline()
        return replies

    def _failed(self, batch, exc):
        self.down_until = time.monotonic() + self.pause
        if self.healthy:
            log.error("redis unreachable (%s); rate limits fall back to on_store_error for "
                      "%.1fs at a time until it answers", exc.__class__.__name__, self.pause)
            self.healthy = False
        error = StoreError(f"redis: {exc.__class__.__name__}")
        for _, waiter, _ in batch:
            waiter.set_exception(error)


class LocalStore:
    """Per-host state in an mmap'd file every worker of the host maps (guarded by flock).

    A fixed open-addressing table: each slot holds a key hash and three doubles (token bucket:
    tokens, last; sliding window: index, current, previous). 65,536 slots, 2 MiB; when the
    probe run is full the least recently used slot of the run is reused.
    """

    SLOTS = 65536
    PROBES = 8
    SLOT = struct.Struct("<Qdddd")      # key hash, a, b, c, last use

    def __init__(self, path):
        self.path = path
        size = self.SLOTS * self.SLOT.size
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(fd).st_size < size:
            os.ftruncate(fd, size)
        self.fd = fd
        self.mm = mmap.mmap(fd, size)

    def decide(self, algorithm, key, rate, per, burst):
        digest = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
        digest = digest or 1
        now = time.time()
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            slot, state = self._find(digest)
            if algorithm == "token_bucket":
                decision, new = ratelimit.token_bucket(state and state[:2], rate, per, burst,
                                                       now)
                values = (new[0], new[1], 0.0)
            else:
                decision, new = ratelimit.sliding_window(state, rate, per, now)
                values = (float(new[0]), float(new[1]), float(new[2]))
            self.SLOT.pack_into(self.mm, slot * self.SLOT.size, digest, *values, now)
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        return decision

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
