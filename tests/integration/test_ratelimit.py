"""Rate limiting through real gateways, with state in a real redis-server or per host."""
import http.client
import json
import socket
import time

import pytest

from ..conftest import gateway_conf, route, stop_process, wait_until

HOUR = 3600.0       # windows long enough that refill during a test is negligible: exact counts


def limited(upstream, **limit):
    return route("lim", ["/lim"], upstream.url, plugins={"rate_limit": limit})


def statuses(gw, n, path="/lim", headers=None, new_connection=True):
    out = []
    conn = None
    for _ in range(n):
        if new_connection or conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        resp.read()
        out.append(resp.status)
        if new_connection:
            conn.close()
    return out


@pytest.mark.parametrize("algorithm", ["token_bucket", "sliding_window"])
def test_exact_admission_across_workers_in_redis(launcher, upstream, algorithm):
    redis = launcher.redis()
    conf = gateway_conf([limited(upstream, algorithm=algorithm, rate=5, per=HOUR, burst=5,
                                 key="route")], workers=2, redis={"url": redis.url})
    gw = launcher.gateway(conf)
    codes = statuses(gw, 20)                  # new connection each: both workers answer
    assert codes.count(200) == 5 and codes.count(429) == 15
    assert codes[:5] == [200] * 5


def test_two_gateway_processes_share_one_limit(launcher, upstream):
    redis = launcher.redis()
    conf = gateway_conf([limited(upstream, rate=6, per=HOUR, burst=6, key="route")],
                        workers=2, redis={"url": redis.url})
    first, second = launcher.gateway(conf), launcher.gateway(conf)
    codes = []
    for _ in range(10):
        codes += statuses(first, 1) + statuses(second, 1)
    assert codes.count(200) == 6


def test_429_carries_retry_after_and_ratelimit_headers(launcher, upstream):
    redis = launcher.redis()
    gw = launcher.gateway(gateway_conf([limited(upstream, rate=2, per=60, burst=2,
                                                key="header:X-Api-Key")],
                                       redis={"url": redis.url}))
    resp, _ = gw.request("GET", "/lim", headers={"X-Api-Key": "a"})
    assert resp.status == 200
    assert (resp.getheader("RateLimit-Limit"), resp.getheader("RateLimit-Remaining")) == \
        ("2", "1")
    gw.request("GET", "/lim", headers={"X-Api-Key": "a"})
    resp, body = gw.request("GET", "/lim", headers={"X-Api-Key": "a"})
    assert resp.status == 429 and json.loads(body)["error"] == "too_many_requests"
    assert 1 <= int(resp.getheader("Retry-After")) <= 31
    assert resp.getheader("RateLimit-Remaining") == "0"
    assert int(resp.getheader("RateLimit-Reset")) <= 60
    assert gw.request("GET", "/lim", headers={"X-Api-Key": "b"})[0].status == 200  # own key


def test_embedded_default_limits_per_host_across_workers(launcher, upstream):
    gw = launcher.gateway(gateway_conf([limited(upstream, rate=4, per=HOUR, burst=4,
                                                key="route")], workers=2))
    codes = statuses(gw, 12)
    assert codes.count(200) == 4


@pytest.mark.parametrize("mode, expected", [
    ("allow", [200] * 8),
    ("deny", [503] * 8),
    ("local", [200] * 3 + [429] * 5),          # the per-host limiter takes over
])
def test_redis_down_follows_on_store_error(launcher, upstream, mode, expected):
    redis = launcher.redis()
    gw = launcher.gateway(gateway_conf(
        [limited(upstream, rate=3, per=HOUR, burst=3, key="route", on_store_error=mode)],
        redis={"url": redis.url, "timeout": 0.05}))
    stop_process(redis)
    started = time.monotonic()
    codes = statuses(gw, 8, new_connection=False)
    assert codes == expected
    assert time.monotonic() - started < 3          # fail fast: no multi-second stalls
    assert "redis unreachable" in gw.log()


def test_redis_restarted_is_used_again(launcher, upstream):
    redis = launcher.redis()
    port = redis.port
    gw = launcher.gateway(gateway_conf(
        [limited(upstream, rate=2, per=HOUR, burst=2, key="header:X-Key",
                 on_store_error="allow")],
        redis={"url": redis.url, "pause": 0.2}))
    key = {"X-Key": "a"}
    assert statuses(gw, 3, headers=key) == [200, 200, 429]
    stop_process(redis)
    assert statuses(gw, 2, headers=key) == [200, 200]         # allow while it is down
    launcher.redis(port=port)                                  # empty: the scripts are gone too
    probes = iter(range(10_000))                               # throwaway keys until it answers
    wait_until(lambda: statuses(gw, 1, headers={"X-Key": f"probe{next(probes)}"}) and
               "redis is answering again" in gw.log(), timeout=10)
    assert statuses(gw, 3, headers={"X-Key": "fresh"}) == [200, 200, 429]


def test_a_redis_restarted_between_two_batches_answers_the_next_one(launcher, upstream):
    """The batcher holds its connection while batches follow each other: one that Redis
    closed since the last batch (a restart) is taken again at once, as the pool's checkout
    did, not counted as Redis failing (which pauses the store and denies here)."""
    redis = launcher.redis()
    port = redis.port
    gw = launcher.gateway(gateway_conf(
        [limited(upstream, rate=5, per=HOUR, burst=5, key="route", on_store_error="deny")],
        redis={"url": redis.url, "timeout": 0.5, "pause": 30}))
    assert statuses(gw, 2) == [200, 200]
    started = time.monotonic()
    stop_process(redis)
    launcher.redis(port=port)              # empty: the count and the scripts are gone
    assert time.monotonic() - started < 0.9, "the restart outlasted the held connection"
    resp, _ = gw.request("GET", "/lim")
    assert (resp.status, resp.getheader("RateLimit-Remaining")) == (200, "4")
    assert "redis unreachable" not in gw.log()


@pytest.mark.parametrize("store", ["redis", "per host"])
def test_adaptive_limit_follows_the_upstream_in_every_worker(launcher, upstream, store):
    # a generous Redis timeout: this test is about adapting, not about failing fast on a
    # loaded machine (a timeout pauses Redis for a second and the rate would stand still)
    sections = {"redis": {"url": launcher.redis().url, "timeout": 0.5}} \
        if store == "redis" else {}
    gw = launcher.gateway(gateway_conf([route(
        "ad", ["/ad/*rest"], upstream.url, strip_prefix="/ad", plugins={"rate_limit": {
            "rate": 10, "burst": 1000, "key": "route", "adaptive": {
                "floor": 4, "ceiling": 15, "window": 0.3, "step_up": 0.2, "step_down": 0.5}}})],
        workers=2, **sections))

    def limits_seen(path, until, within):
        """The limits answers carried, until one was ``until`` (or ``within`` s went by): a
        loaded host runs the 0.3 s windows late (a fixed 1.5 s once ended at 5, not 4)."""
        seen, end = [], time.monotonic() + within
        while time.monotonic() < end and until not in seen[-1:]:
            resp, _ = gw.request("GET", path)        # a new connection each: both workers
            seen.append(int(resp.getheader("RateLimit-Limit")))
            time.sleep(0.02)
        return seen

    failing = limits_seen("/ad/status/503", 4, within=10)
    assert failing[0] == 10 and failing[-1] == 4           # halved per window, to the floor
    assert sorted(set(failing), reverse=True) == [10, 5, 4]
    healthy = limits_seen("/ad/echo", 15, within=20)
    assert healthy[-1] == 15                                # +20% per window, to the ceiling
    assert {5, 6, 8, 9, 11, 14} <= set(healthy)             # 4 x 1.2^n, step by step


@pytest.mark.parametrize("store", ["redis", "per host"])
def test_sliding_window_retry_at_retry_after_is_admitted(launcher, upstream, store):
    """2 per 4 s, both taken early in a window, refused 3 s in: the next window still carries
    both at first, so Retry-After is 3 (it said 1, and that retry was refused again). A
    retry one second before Retry-After is refused; the retry at Retry-After is admitted."""
    sections = {"redis": {"url": launcher.redis().url}} if store == "redis" else {}
    per = 4
    gw = launcher.gateway(gateway_conf([limited(upstream, algorithm="sliding_window", rate=2,
                                                per=per, key="route")], **sections))
    time.sleep(per - time.time() % per + 0.1)                # Redis' clock is this host's
    assert statuses(gw, 2, new_connection=False) == [200, 200]
    time.sleep(max(0.0, 3.0 - time.time() % per))
    resp, _ = gw.request("GET", "/lim")
    refused_at = time.monotonic()
    assert resp.status == 429
    retry_after = int(resp.getheader("Retry-After"))
    assert retry_after == 3
    time.sleep(max(0.0, refused_at + retry_after - 1 - time.monotonic()))
    assert gw.request("GET", "/lim")[0].status == 429        # refusals take nothing
    time.sleep(max(0.0, refused_at + retry_after - time.monotonic()))
    assert gw.request("GET", "/lim")[0].status == 200


def connections_to_workers(gw, count, path="/free", within=30.0):
    """Keep-alive connections to ``count`` different workers, told apart by the prefix of
    the X-Request-ID they answer with (a connection stays with the worker that accepted it).
    New connections in a row mostly land on one idle worker, so without this a test "across
    workers" may well be served by one. Tried for a time, not a count: on a loaded machine a
    forked worker can take seconds to boot, and until then the other takes every connection."""
    found, tries = {}, 0
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        tries += 1
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        worker = resp.getheader("X-Request-ID")[:-8]
        if worker in found:
            conn.close()
            if tries % 50 == 0:
                time.sleep(0.1)         # let a booting worker get to its accept
        else:
            found[worker] = conn
            if len(found) == count:
                return list(found.values())
    raise AssertionError(f"only {len(found)} workers took connections in {tries} tries "
                         f"over {within:.0f} s")


@pytest.mark.parametrize("algorithm", ["token_bucket", "sliding_window"])
def test_per_host_limit_is_exact_with_two_workers_deciding_at_once(launcher, upstream,
                                                                   algorithm):
    """Connections held on two different workers, three clients on each sending at once:
    120 requests on a key of 40 an hour admit exactly 40. Each worker remembers where a
    key's slot is; the count is still the host's."""
    from concurrent.futures import ThreadPoolExecutor
    gw = launcher.gateway(gateway_conf([
        limited(upstream, algorithm=algorithm, rate=40, per=HOUR, burst=40, key="route"),
        route("free", ["/free"], upstream.url)], workers=2))
    conns = [conn for _ in range(3) for conn in connections_to_workers(gw, 2)]

    def client(conn):
        out = []
        for _ in range(20):
            conn.request("GET", "/lim")
            resp = conn.getresponse()
            resp.read()
            out.append(resp.status)
        conn.close()
        return out
    with ThreadPoolExecutor(len(conns)) as pool:
        codes = [c for run in pool.map(client, conns) for c in run]
    assert codes.count(200) == 40 and codes.count(429) == 80


def test_the_gateways_ratelimit_headers_replace_the_upstreams_and_keep_the_rest(launcher,
                                                                               upstream):
    """rate_limit adds its RateLimit-* without splitting the upstream's head; when the
    upstream sent RateLimit-* of its own (any case), ours replace them."""
    conf = gateway_conf([route("own", ["/own-ratelimit"], upstream.url, plugins={
        "rate_limit": {"rate": 5, "per": HOUR, "burst": 5, "key": "route"}}),
        limited(upstream, rate=5, per=HOUR, burst=5, key="route")])
    gw = launcher.gateway(conf)
    resp, body = gw.request("GET", "/own-ratelimit")
    assert resp.status == 200 and body == b"counted"
    names = [name.lower() for name, _ in resp.getheaders()]
    assert names.count("ratelimit-limit") == names.count("ratelimit-remaining") == 1
    assert (resp.getheader("RateLimit-Limit"), resp.getheader("RateLimit-Remaining")) == \
        ("5", "4")
    assert resp.headers.get_all("Set-Cookie") == ["a=1", "b=2"]
    resp, _ = gw.request("GET", "/lim")         # an upstream without any: ours, added
    assert resp.status == 200 and resp.getheader("RateLimit-Remaining") == "4"
    assert resp.headers.get_all("Set-Cookie") == ["a=1", "b=2"] and resp.getheader("X-Upstream")


@pytest.mark.parametrize("prefix, expected", [
    (64, [200, 429, 429, 200]),     # the default: one bucket per /64
    (128, [200, 200, 200, 200]),    # each address alone
])
def test_ipv6_clients_are_limited_by_their_network(launcher, upstream, prefix, expected):
    """Whoever holds a /64 has 2**64 addresses: keyed alone, each would be a fresh bucket.
    The clients are named by a trusted proxy (X-Forwarded-For), as behind a load balancer."""
    gw = launcher.gateway(gateway_conf(
        [limited(upstream, rate=1, per=HOUR, burst=1, key="ip", ipv6_prefix=prefix)],
        server={"trusted_proxies": ["127.0.0.1/32"]}))
    clients = ["2001:db8:1:2::1", "2001:db8:1:2:ffff::9", "[2001:db8:1:2::3]:5000",
               "2001:db8:1:3::1"]
    codes = [statuses(gw, 1, headers={"X-Forwarded-For": client})[0] for client in clients]
    assert codes == expected
    # IPv4 clients still count by address
    assert statuses(gw, 1, headers={"X-Forwarded-For": "192.0.2.1"}) == [200]
    assert statuses(gw, 1, headers={"X-Forwarded-For": "192.0.2.2"}) == [200]


def test_a_client_cannot_evict_another_limits_per_host_state(launcher, upstream):
    """The per-host table's slot was an unkeyed hash of the limit key: a client could compute
    header values whose slot is another limit's, and reset a global limit at will."""
    import hashlib
    import itertools
    slots, probes = 65536, 8

    def public_slot(key):       # what an attacker can compute without the host's secret
        return (int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(),
                               "little") or 1) % slots

    target, values = public_slot("api:route:"), []
    for i in itertools.count():
        value = f"k{i}"
        hashed = hashlib.blake2b(value.encode(), digest_size=12).hexdigest()
        if public_slot(f"other:header:{hashed}") == target:
            values.append(value)
            if len(values) == probes:
                break
    gw = launcher.gateway(gateway_conf([
        route("api", ["/api/*rest"], upstream.url, strip_prefix="/api",
              plugins={"rate_limit": {"rate": 2, "per": HOUR, "burst": 2, "key": "route"}}),
        route("other", ["/other/*rest"], upstream.url, strip_prefix="/other",
              plugins={"rate_limit": {"rate": 100, "per": 1, "key": "header:X-Key"}})]))
    assert statuses(gw, 3, "/api/echo") == [200, 200, 429]
    for value in values:
        assert statuses(gw, 1, "/other/echo", headers={"X-Key": value}) == [200]
    assert statuses(gw, 2, "/api/echo") == [429, 429]


def test_an_adaptive_limit_hears_a_websocket_at_its_handshake(launcher, upstream):
    """The tunnel attack pass: an adaptive rate_limit recorded a websocket's answer when its
    tunnel closed (finish), hours later perhaps; it is recorded at the checked 101 now (the
    upgraded hook), as the rate it sets shows while the tunnel is still open."""
    from ..conftest import WEBSOCKET_HANDSHAKE
    gw = launcher.gateway(gateway_conf([route(
        "ws", ["/ws"], upstream.url, plugins={"rate_limit": {
            "rate": 10, "burst": 1000, "key": "route", "adaptive": {
                "floor": 4, "ceiling": 15, "window": 0.3, "step_up": 0.2, "step_down": 0.5}}})]))
    rate_line = 'gwserver_rate_limit_effective_rate{route="ws"}'
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    try:
        sock.sendall(WEBSOCKET_HANDSHAKE)
        assert sock.recv(4096).startswith(b"HTTP/1.1 101 ")
        wait_until(lambda: rate_line in gw.admin_get("/metrics")[1].decode(), timeout=5)
    finally:
        sock.close()
