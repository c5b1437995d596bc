"""Where rollouts keep their state and their measurements, for every host of a cluster.

Two roles, each with backends chosen by the conf (``for_conf``):

    state           one JSON document per route (core.rollout.State), changed only by
                    compare-and-swap on the whole previous value, so two writers can never
                    both apply a transition to the same state (no step advanced twice);
                    plus a writer's lock (``lead``) so that normally one host decides.
                    etcd (PREFIX/rollouts/state/ROUTE, the lock a key on a lease), else
                    Redis (KEY_PREFIX ro:state:ROUTE, SET NX PX), else a file on this host.
    measurements    each host's totals per route, window and group, overwritten whole (never
                    incremented, so a retry counts nothing twice); the sum over hosts is the
                    cluster's. Redis (a hash per window, a field per host), else etcd (a key
                    per host on its lease), else this host's own.

The config-sync process ignores keys of other kinds under the etcd prefix (sync.split), so
``PREFIX/rollouts/`` never reaches the route table.
"""
import base64
import fcntl
import json
import os

from ..sync.etcd import _b64

# A key of another type reads as ARGV[3] (WRONG_TYPE), as RedisState.load reads it: a GET of
# it was WRONGTYPE, and the writer could never replace the damaged state (SET replaces any type)
CAS_LUA = """
local kind = redis.call('TYPE', KEYS[1])['ok']
local cur = false
if kind == 'string' then cur = redis.call('GET', KEYS[1])
elseif kind ~= 'none' then cur = ARGV[3] end
if (cur == false and ARGV[1] == '') or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2]) return 1 end
return 0"""
LEAD_LUA = """
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0"""
# What a state key holding another type than a string reads as: no JSON, so DAMAGED
WRONG_TYPE = b"(a Redis value of another type than a string)"
OBS_TTL = 86400         # measurements of a window outlive any sane interval
LEASE_TTL = 5           # seconds a dead writer holds the lock (etcd's minimum is 5 s too)


def _txn(client, compare, success, failure=()):
    body = {"compare": compare, "success": success, "failure": list(failure)}
    data = client._call("/v3/kv/txn", body)
    return bool(data.get("succeeded")), data       # proto3 JSON omits a false "succeeded"


class EtcdState:
    def __init__(self, client, prefix):
        self.client = client
        self.base = prefix.rstrip("/") + "/rollouts/"
        self.lease = None

    def load(self, route):
        return self.client.get(self.base + "state/" + route)

    def load_all(self):
        _, items = self.client.range_prefix(self.base + "state/")
        return {key.rpartition("/")[2]: value for key, value, _ in items}

    def swap(self, route, old, new):
        key = _b64(self.base + "state/" + route)
        compare = {"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": "0"} \
            if old is None else {"key": key, "target": "VALUE", "result": "EQUAL",
                                 "value": _b64(old)}
        return _txn(self.client, [compare], [{"request_put": {"key": key, "value": _b64(new)}}])[0]

    def lead(self, host):
        """Take or keep the writer's lock: a key that lives on this host's lease."""
        if self.lease is not None and not self.client.lease_keepalive(self.lease):
            self.lease = None       # expired (we were away): the key went with it
        if self.lease is None:
            self.lease = self.client.lease_grant(LEASE_TTL)
        key = _b64(self.base + "leader")
        ok, data = _txn(self.client, [{"key": key, "target": "CREATE", "result": "EQUAL",
                                       "create_revision": "0"}],
                        [{"request_put": {"key": key, "value": _b64(host),
                                          "lease": str(self.lease)}}],
                        [{"request_range": {"key": key}}])
        if ok:
            return True
        kvs = data["responses"][0].get("response_range", {}).get("kvs", [])
        return bool(kvs) and base64.b64decode(kvs[0].get("value", "")) == host.encode()


class RedisState:
    def __init__(self, client, key_prefix):
        self.client = client
        self.base = key_prefix + "ro:"

    def load(self, route):
        return self._get(self.base + "state:" + route)

    def load_all(self):
        keys = list(self.client.scan_iter(match=self.base + "state:*"))
        return {k.decode().rpartition("state:")[2]: self._get(k) for k in keys}

    def _get(self, key):
        """The stored value; one of another type (another writer's hash) is no rollout state
        either, and reads as one that is not (core.load_state: DAMAGED). Its WRONGTYPE was
        "the store is out of reach" to `gwserver rollouts`, of a store that answered."""
        from redis.exceptions import ResponseError
        try:
            return self.client.get(key)
        except ResponseError as exc:
            if not str(exc).startswith("WRONGTYPE"):
                raise
            return WRONG_TYPE

    def swap(self, route, old, new):
        return bool(self.client.eval(CAS_LUA, 1, self.base + "state:" + route,
                                     old or b"", new, WRONG_TYPE))

    def lead(self, host):
        return bool(self.client.eval(LEAD_LUA, 1, self.base + "leader", host,
                                     LEASE_TTL * 1000))


class LocalState:
    """One host: a file under flock (the helper and the CLI may both write)."""

    def __init__(self, state_dir):
        self.path = os.path.join(state_dir, "rollout-state.json")

    def _locked(self, update=None):
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                with open(self.path) as f:
                    data = json.load(f)
            except (OSError, ValueError):
                data = {}
            if update is not None and update(data):
                tmp = f"{self.path}.{os.getpid()}.tmp"
                with open(tmp, "w") as f:
                    json.dump(data, f)
                os.replace(tmp, self.path)
                return True
            return data if update is None else False
        finally:
            os.close(fd)

    def load(self, route):
        raw = self._locked().get(route)
        return None if raw is None else raw.encode()

    def load_all(self):
        return {route: raw.encode() for route, raw in self._locked().items()}

    def swap(self, route, old, new):
        def update(data):
            current = data.get(route)
            if (current.encode() if current is not None else None) != old:
                return False
            data[route] = new.decode() if isinstance(new, bytes) else new
            return True
        return self._locked(update)

    def lead(self, host):
        return True         # one helper per host (the instance lock sees to it)


class RedisMeasurements:
    def __init__(self, client, key_prefix):
        self.client = client
        self.base = key_prefix + "ro:obs:"

    def put(self, route, window, host, data):
        key = f"{self.base}{route}:{window}"
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(key, host, json.dumps(data))
        pipe.expire(key, OBS_TTL)
        pipe.execute()

    def get(self, route, window):
        return [json.loads(v) for v in
                self.client.hgetall(f"{self.base}{route}:{window}").values()]


class EtcdMeasurements:
    def __init__(self, client, prefix, state):
        self.client, self.state = client, state     # keys live on the state's lease
        self.base = prefix.rstrip("/") + "/rollouts/obs/"

    def put(self, route, window, host, data):
        self.client.put(f"{self.base}{route}/{window}/{host}", json.dumps(data),
                        lease=self.state.lease)

    def get(self, route, window):
        prefix = f"{self.base}{route}/{window}/"
        return [json.loads(v) for _, v, _ in self.client.range_prefix(prefix)[1]]


class LocalMeasurements:
    def __init__(self):
        self.data = {}

    def put(self, route, window, host, data):
        self.data[(route, window)] = data

    def get(self, route, window):
        found = self.data.get((route, window))
        return [found] if found is not None else []


def for_conf(conf):
    """(state, measurements) backends for a conf: see the module docstring."""
    etcd_state = etcd_client = redis_client = None
    if conf.etcd is not None:
        from ..routes_cli import client_for
        etcd_client = client_for(conf)
        etcd_state = EtcdState(etcd_client, conf.etcd["prefix"])
    if conf.redis is not None:
        from .store import connect
        redis_client = connect(conf.redis["url"], max(conf.redis["timeout"], 1.0),
                               conf.redis.get("password"))
    state = etcd_state or (RedisState(redis_client, conf.redis["key_prefix"]) if redis_client
                           else LocalState(conf.server["state_dir"]))
    if redis_client is not None:
        measurements = RedisMeasurements(redis_client, conf.redis["key_prefix"])
    elif etcd_state is not None:
        measurements = EtcdMeasurements(etcd_client, conf.etcd["prefix"], etcd_state)
    else:
        measurements = LocalMeasurements()
    return state, measurements

