"""Attack pass on rate limits and breakers (Dec 5, e): Redis state under failure and abuse
(clocks, client-chosen key values), against real redis-servers and gateways.

1. A Redis whose clock stepped back (NTP stepping the clock of the host, or a Sentinel
   failover to a replica whose clock is behind its master's): token-bucket states carry the
   time of their last refill on the old clock, and the script refilled a bucket only once
   Redis' TIME passed it. A client the limit had emptied and that kept asking (each call
   renews the key's expiry) was refused (429) for as long as the step, an hour for an hour,
   each 429 with a `Retry-After: 1` that lied every time. The per-host limiter (Python)
   already refilled from its new "now".
2. The same for breakers: an open breaker's `until`, an hour ahead of Redis' clock, kept it
   open (503 circuit_open for every request, `Retry-After: 3600`) for the hour, with
   `open_for = 0.4`; buckets of answers "in the future" counted in every window until then.
   Now no state waits longer than any state the script writes (max of window, open_for and
   max_open_for); the per-host machine (core.breaker, the same table) the same.
3. A JWT claim a limit is keyed on (`claim:NAME`) carrying a lone UTF-16 surrogate
   (`"\\ud800"`, which JSON and PyJWT accept; a JavaScript IdP copies one from a user's
   display name): the key could not be encoded, so the worker's whole coalesced pipeline
   failed ("redis batch failed" with a traceback), every other client's decision in it fell
   back to on_store_error (with "deny": their 503s), and the request itself, decided per
   host, was a 500. Claims with `{...}` (a Redis Cluster hash tag: the client chose the slot
   of its key) or `:` (a value spelling another limit's key, `ROUTE:claim:VALUE`) went into
   key names as they were too: now a claim is verbatim only when it is short and of plain
   characters, and hashed, marked apart, otherwise.
4. A Redis that requires a password the gateway was not given (requirepass set on a running
   Redis, or a url without one): every decision fell back, as it should, but the one log
   line said "redis unreachable (HELLO must be called with the client already authenticated,
   otherwise the HELLO AUTH <user> <pass> option can be used ...)": an operator read that
   Redis was down, and nothing named the password. Now it says Redis refused the
   credentials and requires a password, and where to give it.
5. Two limits of the two algorithms on one key: a route's token bucket keyed on `ip` and a
   consumer's own sliding window keyed on `ip` (docs/consumers.md: it replaces the route's
   for that consumer's requests), or any two such limits on `route`. Both counted under
   the one key `ROUTE:ip:ADDRESS`. Per host, each read the other's slot as its own state: a
   window index read as tokens fills the bucket, a bucket read as a window is a window
   long past, so the consumer's 2-an-hour limit was reset by any request of another
   identity from the same address: a client holding two API keys had no limit at all. In
   Redis, each token-bucket call set the shared hash's expiry to its own (a second or two),
   and the window's counts were gone after it. Now the two algorithms never share a key
   (Redis: `{key_prefix}rw:` for windows; per host: digests of their own).
6. A half-open breaker's probe granted to a request that no longer waited for it: an
   HTTP/2 client resets its stream while the admission is on its way to Redis (or the
   decision timed out and fell back, the answer coming just after). Redis counted the probe
   as taken, the worker dropped the verdict, and the breaker stayed half-open with no probe
   left for max(window, open_for): every request of every worker and host a 503 though the
   upstream was well. A client doing that at each half-open kept a recovered upstream
   behind an open breaker for good. Now a probe granted to no waiting request is given back
   with the next round trip, as one that never went upstream is.
7. Per host, at a window's edge (tests/unit/test_limits_clock_dec05e.py): a worker read the
   clock, then waited for the table's lock behind a worker already past the edge, and took
   the newer window for one long past: the key's counts were reset, the full window's count
   with it (a burst from many workers at each edge got a fresh window, and an auth failure
   budget with it). The clock is now read under the lock.
8. A client's burst (thousands of HTTP/2 streams) keeps a worker busy past the decision
   timeout: the decisions still queued fall back on their own (on_store_error "local":
   decided per host), as designed, and were then sent to Redis all the same and counted
   there too: every request of the burst that fell back spent its tokens in both stores
   (448 of 3,000 in one run). Calls nobody waits for any more are now left out of the
   pipeline (a killed request's too: a breaker probe granted to it was lost, as in 6).
   Tested in tests/unit/test_store_replies.py: the burst that showed it here failed CI on a
   loaded machine, where the calls in flight timed out as well and were counted in both
   stores, as they must be (they had reached Redis).
"""
import http.client
import json

import pytest
import subprocess
import time

from gwserver.plugins.key_auth import hash_key

from ..conftest import TcpRelay, free_port, gateway_conf, route, wait_until
from .test_traffic import rsa_pair, token


def answer(gw, path, headers=None, timeout=10):
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, dict(resp.getheaders()), body
    finally:
        conn.close()


def cli(port, *args):
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True,
                          text=True, timeout=20).stdout.strip()


def redis_now(port):
    seconds, micros = cli(port, "TIME").split()
    return int(seconds) + int(micros) / 1e6


# -- 1. a token bucket written on a clock ahead of Redis' ---------------------------------------

def test_a_bucket_from_a_clock_ahead_refills_once_redis_time_is_behind_it(launcher, upstream):
    """The bucket of the route was emptied on a clock an hour ahead of Redis' own (written
    by a master whose clock was ahead, then promoted replica's TIME; or Redis' host stepped
    back by NTP). Every request was a 429 for the hour, each saying Retry-After: 1."""
    redis = launcher.redis()
    gw = launcher.gateway(gateway_conf([route("lim", ["/lim"], upstream.url, plugins={
        "rate_limit": {"rate": 5, "per": 1, "burst": 1, "key": "route",
                       "on_store_error": "deny"}})], redis={"url": redis.url, "timeout": 0.5}))
    assert answer(gw, "/lim")[0] == 200
    ahead = redis_now(redis.port) + 3600
    cli(redis.port, "HSET", "gw:rl:lim:route:", "t", "0", "ts", f"{ahead:.6f}")
    status, headers, _ = answer(gw, "/lim")
    assert status == 429 and headers["Retry-After"] == "1"
    # A client that keeps asking (which keeps the key from expiring) every 0.3 s: 1.5 tokens
    # come back between two requests, so each is served
    statuses = []
    for _ in range(5):
        time.sleep(0.3)
        statuses.append(answer(gw, "/lim")[0])
    assert statuses == [200] * 5
    # ...and its clock is Redis' own from then on: no second refill from the future
    assert float(cli(redis.port, "HGET", "gw:rl:lim:route:", "ts")) < ahead - 3000


# -- 2. a breaker opened on a clock ahead of Redis' ---------------------------------------------

FAST = {"error_rate": 0.5, "window": 2.0, "min_requests": 4, "open_for": 0.4,
        "max_open_for": 1.0, "half_open_probes": 1}


def test_a_breaker_opened_on_a_clock_ahead_probes_within_its_longest_wait(launcher, upstream):
    """The route's breaker state says open until an hour ahead of Redis' clock (written on a
    clock ahead, as above): 503 circuit_open with Retry-After: 3600 for the hour, though no
    state this config writes waits more than 2 s."""
    redis = launcher.redis()
    gw = launcher.gateway(gateway_conf([route("br", ["/br"], upstream.url, plugins={
        "breaker": FAST})], redis={"url": redis.url, "timeout": 0.5}))
    assert answer(gw, "/br")[0] == 200
    now = redis_now(redis.port)
    state = {"state": "open", "epoch": 1, "trips": 1, "until": now + 3600, "probes": 0,
             "probe_ok": 0, "buckets": [[int((now + 3600) / 0.2), 0, 9]]}
    cli(redis.port, "SET", "gw:br:route:br", json.dumps(state), "PX", "600000")
    status, headers, _ = answer(gw, "/br")
    assert status == 503 and int(headers["Retry-After"]) <= 2
    # half-open within the longest wait (2 s): the probe goes through and closes it
    wait_until(lambda: answer(gw, "/br")[0] == 200, timeout=4, interval=0.2)
    time.sleep(0.1)
    assert [answer(gw, "/br")[0] for _ in range(3)] == [200] * 3
    stored = json.loads(cli(redis.port, "GET", "gw:br:route:br"))
    assert stored["state"] == "closed"
    assert not stored["buckets"] or all(b[0] <= int(now / 0.2) + 100 for b in stored["buckets"])


# -- 3. claim values that cannot, or must not, stand in a key name ------------------------------

def claim_limited(launcher, upstream, tmp_path, rate, per, on_store_error):
    """(redis, the RSA private key its tokens are signed with, a gateway whose /lim takes
    ``rate`` requests a ``per`` seconds per JWT ``name`` claim, in that Redis)."""
    redis = launcher.redis()
    private, public = rsa_pair()
    pem = tmp_path / "jwt.pem"
    pem.write_bytes(public)
    gw = launcher.gateway(gateway_conf([route("lim", ["/lim"], upstream.url, plugins={
        "jwt": {"public_key_file": str(pem), "audience": "orders"},
        "rate_limit": {"rate": rate, "per": per, "burst": rate, "key": "claim:name",
                       "on_store_error": on_store_error}})],
        redis={"url": redis.url, "timeout": 0.5}))
    return redis, private, gw


def test_claim_values_of_any_spelling_are_limited_in_redis(launcher, upstream, tmp_path):
    """Tokens whose `name` claim is a lone surrogate, a hash tag or a colon-spelt key: the
    surrogate failed the worker's pipeline (a 500 for it, on_store_error for every request in
    the same batch); the others went into key names as they were."""
    redis, private, gw = claim_limited(launcher, upstream, tmp_path, 2, 3600, "local")
    names = ["\ud800", "{same-slot}", "x:claim:y", "plain.user@example.com", 7]
    for name in names:
        bearer = {"Authorization": f"Bearer {token(private, name=name)}"}
        assert [answer(gw, "/lim", bearer)[0] for _ in range(3)] == [200, 200, 429], name
    keys = sorted(cli(redis.port, "--scan", "--pattern", "gw:rl:*").split())
    assert len(keys) == len(names)
    assert "gw:rl:lim:claim:plain.user@example.com" in keys and "gw:rl:lim:claim:7" in keys
    hashed = [k for k in keys if k.startswith("gw:rl:lim:claim:#")]
    assert len(hashed) == 3
    assert not any(c in k.partition("claim:")[2] for k in keys for c in "{}:")
    assert "redis batch failed" not in gw.log()


# -- 4. a Redis that wants a password -----------------------------------------------------------

def test_a_redis_that_wants_a_password_is_named_in_the_log(launcher, upstream):
    port = free_port()
    directory = launcher.tmp_dir / f"redis-{port}"
    directory.mkdir()
    launcher._redis_server(port, directory, "--requirepass", "s3cret")
    gw = launcher.gateway(gateway_conf([route("lim", ["/lim"], upstream.url, plugins={
        "rate_limit": {"rate": 2, "per": 3600, "burst": 2, "key": "route"}})],
        redis={"url": f"redis://127.0.0.1:{port}/0", "timeout": 0.5}))
    # on_store_error "local": served and limited per host meanwhile
    assert [answer(gw, "/lim")[0] for _ in range(3)] == [200, 200, 429]
    wait_until(lambda: "redis unreachable" in gw.log(), timeout=5)
    line = next(li for li in gw.log().splitlines() if "redis unreachable" in li)
    assert "requires a password" in line and "password_file" in line
    assert "s3cret" not in gw.log()


# -- 5. a token bucket and a sliding window on one key ------------------------------------------

KEYS = {"alice": "ak_5e1f0c7d9b3a2468", "bob": "ak_80c4d2e6f1a3b579"}


@pytest.mark.parametrize("store", ["per host", "redis"])
def test_a_bucket_never_resets_a_window_on_the_same_key(launcher, upstream, store):
    """Alice's own limit: a sliding window of 2 an hour on her address. Bob (the route's
    token bucket, 1000 a second, on the same address) is the same client's second key."""
    sections = {"redis": {"url": launcher.redis().url, "timeout": 0.5}} \
        if store == "redis" else {}
    consumers = {
        "alice": {"credentials": {"key_auth": {"key_hash": hash_key(KEYS["alice"])}},
                  "plugins": {"rate_limit": {"algorithm": "sliding_window", "rate": 2,
                                             "per": 3600, "key": "ip"}}},
        "bob": {"credentials": {"key_auth": {"key_hash": hash_key(KEYS["bob"])}}}}
    gw = launcher.gateway(gateway_conf([route("mix", ["/mix"], upstream.url, plugins={
        "key_auth": {}, "rate_limit": {"rate": 1000, "per": 1, "burst": 1000, "key": "ip"}})],
        consumers=consumers, **sections))
    alice, bob = ({"X-API-Key": KEYS[name]} for name in ("alice", "bob"))
    assert [answer(gw, "/mix", alice)[0] for _ in range(3)] == [200, 200, 429]
    for _ in range(3):
        assert answer(gw, "/mix", bob)[0] == 200
        if store == "redis":
            time.sleep(2.1)     # the bucket's expiry, set on the shared hash, runs out
        assert answer(gw, "/mix", alice)[0] == 429


# -- 6. a probe granted to a request that is gone -----------------------------------------------

class SlowReplies(TcpRelay):
    """A relay to Redis whose replies take ``delay`` seconds."""
    delay = 0.0

    def forward(self, data, dst, to_client):
        if to_client and self.delay:
            time.sleep(self.delay)
        dst.sendall(data)


def test_a_probe_granted_to_a_reset_stream_is_given_back(launcher, upstream):
    from ..h2client import RawH2
    redis = launcher.redis()
    relay = SlowReplies(redis.port)
    conf = {**FAST, "window": 5.0}          # a lost probe: granted again after 5 s
    gw = launcher.gateway(gateway_conf([route("br", ["/br/*rest"], upstream.url,
                                              strip_prefix="/br", plugins={"breaker": conf})],
                                       http2={"h2c": True},
                                       redis={"url": f"redis://127.0.0.1:{relay.port}/0",
                                              "timeout": 1.0}))
    try:
        for _ in range(4):
            assert answer(gw, "/br/status/502")[0] == 502
        time.sleep(0.05)
        assert answer(gw, "/br/echo")[0] == 503
        time.sleep(0.5)                     # due half-open: the next admission is the probe
        relay.delay = 0.4
        client = RawH2(gw.port)
        stream = client.request("/br/echo")
        time.sleep(0.15)                    # its admission is on its way to Redis
        client.conn.reset_stream(stream, 8)
        client.flush()
        time.sleep(0.5)                     # Redis' answer (the probe) came for nobody
        relay.delay = 0.0
        client.sock.close()
        time.sleep(0.1)
        assert answer(gw, "/br/echo")[0] == 200     # the probe, given back, goes to this one
        time.sleep(0.1)
        assert [answer(gw, "/br/echo")[0] for _ in range(3)] == [200] * 3
    finally:
        relay.close()
