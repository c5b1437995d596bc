"""The Lua scripts the Redis store runs (EVALSHA), one per kind of decision.

Each touches one key (so it runs unchanged on a Redis Cluster), takes Redis' clock (TIME), and
lets its key expire. Each mirrors a pure Python function the per-host store runs and the tests
hold both to: core.ratelimit.token_bucket / sliding_window / adapt, core.breaker.step.
"""

# Both scripts decide N requests for one key in one call. The ARGV after the limits holds the
# age in microseconds of each request (oldest first, space-separated: one argument, not N for
# redis-py to encode one by one), measured by the worker since it queued it; each
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
-- written on a clock ahead of this one (TIME stepped back, a promoted replica's clock behind
-- its master's): refill from now on; kept, the bucket refilled nothing until the clock
-- caught up with it, and a client it had limited was refused for as long as the step
if last > now then last = now end
local flags, left = {}, {}
for age in string.gmatch(ARGV[4], '%d+') do
  local at = now - tonumber(age) / 1000000
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
for age in string.gmatch(ARGV[3], '%d+') do
  local at = now - tonumber(age) / 1000000
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


# The breaker's state machine (core/breaker.py, line for line) on one JSON value per breaker.
# ARGV: error_rate, window, min_requests, open_for, max_open_for, half_open_probes,
# admissions, then (epoch, ok, failed, unused, id) quintuples (id: a probe's, "" for none;
# an epoch keeps its verdicts' ids in ``seen``, and its given-back probes' while it holds
# fewer than 64 (core.breaker.SEEN); a copy counts nothing). Returns state, epoch, admitted,
# seconds until an open breaker probes again, and the states entered.
BREAKER_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local error_rate, window, min_requests = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local open_for, max_open_for, allowed = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local admissions = tonumber(ARGV[7])
local raw = redis.call('GET', KEYS[1])
local s
if raw then s = cjson.decode(raw) else
  s = {state = 'closed', epoch = 0, trips = 0, ['until'] = 0, probes = 0, probe_ok = 0}
end
local seen = {}
for _, v in ipairs(s.seen or {}) do seen[#seen + 1] = v end
local buckets = {}
local transitions = {}
local function enter(new)
  s.state = new
  s.epoch = s.epoch + 1
  buckets = {}
  s.probes = 0
  s.probe_ok = 0
  seen = {}
  transitions[#transitions + 1] = new
end
local function trip()
  s.trips = s.trips + 1
  enter('open')
  s['until'] = now + math.min(open_for * 2 ^ (s.trips - 1), max_open_for)
end
-- A state written on a clock ahead of this one (TIME stepped back, a promoted replica's
-- clock behind its master's) waits no longer than any state this script writes: an open
-- breaker's 'until' an hour ahead refused every request for the hour.
local longest = math.max(window, open_for, max_open_for)
if (tonumber(s['until']) or 0) > now + longest then s['until'] = now + longest end
local current = math.floor(now / (window / 10))
for _, b in ipairs(s.buckets or {}) do
  if b[1] > current - 10 and b[1] <= current then buckets[#buckets + 1] = b end
end
local i = 8
while i + 4 <= #ARGV do
  local epoch, ok, failed = tonumber(ARGV[i]), tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local unused, id = tonumber(ARGV[i + 3]), ARGV[i + 4]
  i = i + 5
  local copy = false                    -- a probe's outcome counted already
  if epoch == s.epoch and id ~= '' then
    for _, v in ipairs(seen) do
      if v == id then copy = true end
    end
    if not copy and (ok > 0 or failed > 0 or #seen < 64) then
      seen[#seen + 1] = id
    end
  end
  if epoch == s.epoch and not copy and unused > 0 and s.state == 'half_open' then
    s.probes = math.max(0, s.probes - unused)
  end
  if epoch == s.epoch and not copy then
    if s.state == 'closed' then
      local last = buckets[#buckets]
      if last and last[1] == current then
        last[2] = last[2] + ok
        last[3] = last[3] + failed
      else
        buckets[#buckets + 1] = {current, ok, failed}
      end
      local total, failures = 0, 0
      for _, b in ipairs(buckets) do
        total = total + b[2] + b[3]
        failures = failures + b[3]
      end
      if total >= min_requests and failures / total >= error_rate then trip() end
    elseif s.state == 'half_open' then
      if failed > 0 then trip() else
        s.probe_ok = s.probe_ok + ok
        if s.probe_ok >= allowed then
          s.trips = 0
          enter('closed')
        end
      end
    end
  end
end
local probe_timeout = math.max(window, open_for)
if (s.state == 'open' or s.state == 'half_open') and now >= s['until'] then
  enter('half_open')
  s['until'] = now + probe_timeout
end
local admitted = 0
if s.state == 'closed' then
  admitted = admissions
elseif s.state == 'half_open' then
  admitted = math.max(0, math.min(admissions, allowed - s.probes))
  s.probes = s.probes + admitted
end
s.buckets = buckets
s.seen = seen
redis.call('SET', KEYS[1], cjson.encode(s), 'PX',
           math.ceil((math.max(window, max_open_for) * 2 + 60) * 1000))
local wait = 0
if s.state == 'open' then wait = s['until'] - now end
return {s.state, s.epoch, admitted, string.format('%.6f', wait), transitions}
"""


# An adaptive limit's effective rate (core/ratelimit.adapt, line for line), one hash per limit.
# ARGV: start rate, floor, ceiling, window, raise_above, lower_below, step_up, step_down, ok,
# failed. Returns the effective rate.
ADAPTIVE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local floor, ceiling, window = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'rate', 'since', 'ok', 'failed')
local rate = math.min(ceiling, math.max(floor, tonumber(state[1]) or tonumber(ARGV[1])))
local since = tonumber(state[2]) or now
if since > now then since = now end     -- a clock ahead of this one: the window starts now
local ok = (tonumber(state[3]) or 0) + tonumber(ARGV[9])
local failed = (tonumber(state[4]) or 0) + tonumber(ARGV[10])
if now - since >= window then
  local total = ok + failed
  if total > 0 then
    local success = ok / total
    if success >= tonumber(ARGV[5]) then
      rate = math.min(ceiling, rate * (1 + tonumber(ARGV[7])))
    elseif success < tonumber(ARGV[6]) then
      rate = math.max(floor, rate * (1 - tonumber(ARGV[8])))
    end
  end
  since, ok, failed = now, 0, 0
end
redis.call('HSET', KEYS[1], 'rate', string.format('%.17g', rate), 'since',
           string.format('%.6f', since), 'ok', ok, 'failed', failed)
redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000) * 10 + 60000)
return string.format('%.17g', rate)
"""


# limit_conn: the leases of one key, a sorted set of lease ids scored by their expiry (ms on
# Redis' clock). One call releases some leases and claims others, in that order: expired
# leases (a worker that died mid-request never releases) are dropped first, then each claim
# is admitted while fewer than ``limit`` are held. ARGV: limit, lease ms, the number of
# releases, the released ids, then the claimed ids. Returns {admitted flags}, leases held.
# The key lives as long as its last lease.
LIMIT_CONN_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit, ttl, releases = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 4, 3 + releases do redis.call('ZREM', KEYS[1], ARGV[i]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZCARD', KEYS[1])
local flags = {}
for i = 4 + releases, #ARGV do
  if held < limit then
    redis.call('ZADD', KEYS[1], now + ttl, ARGV[i])
    held = held + 1
    flags[#flags + 1] = 1
  else
    flags[#flags + 1] = 0
  end
end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] then redis.call('PEXPIREAT', KEYS[1], math.ceil(tonumber(last[2])) + 1000) end
return {flags, held}
"""


# A breaker's state and Redis' clock, from the node that holds it (the admin view: an open
# breaker's time to its probe is counted on the clock its "until" was written on).
BREAKER_VIEW_LUA = """
return {redis.call('GET', KEYS[1]), redis.call('TIME')}
"""
