"""Attack pass on rate limits and breakers (Dec 6, z), against a real redis-server and
gateways of two workers.

1. A half-open breaker's probe was judged when its answer was over, body and all: a client
   that read the probe's answer slowly (a large download, an event stream) held the verdict,
   and every other request of every worker and host got 503 circuit_open for
   ``max(window, open_for)``, when the next probe was granted, to be held alike. One slow
   reader kept a recovered upstream shut out for as long as it liked; an event-stream route
   never closed its breaker. A probe is now judged at its answer's head.
2. The breaker judged the status the client got, after ``rewrite``'s ``response_status``:
   an upstream's 503s mapped to 429 (a "slow down" for clients) were counted as successes,
   and the breaker never opened, however long the upstream failed. Adaptive limits
   (``failure_statuses``) judged the same way, and held their rate up. Both judge the
   upstream's own status now.
3. Redis stalled past ``timeout`` (a fork for a save, a SIGSTOP, a hung host) while a
   half-open breaker's admission was on its way: the request fell back to the per-host
   breaker, as it should, and the connection was dropped. Redis then ran the admission and
   granted the probe to nobody, and its reply, which would have given it back, never came:
   every request of every worker and host got 503 circuit_open for ``max(window,
   open_for)`` while the upstream was well. The late replies of a batch holding breaker
   admissions are now read aside, and a probe granted to no waiting request given back.
4. An IPv6-only site behind a NAT64 / SIIT-DC translator sees each IPv4 client as
   64:ff9b::a.b.c.d (RFC 6052's well-known prefix). ``key = "ip"`` counted IPv6 clients by
   their /64, so every IPv4 client of the Internet shared one bucket: one client's burst
   got all of them 429 (and key_auth's and basic_auth's failure budgets, counted the same
   way, locked them all out after one client's guesses). Such an address counts as the
   IPv4 client it names.
5. A breaker opened when ``failures >= error_rate * total``, in floating point: 0.28 * 25 is
   7.000000000000001, so 7 failures of 25 answers, 28%, did not open a breaker of
   ``error_rate = 0.28`` (0.55 of 100, 0.56 of 25 alike). It compares the share itself
   now, in Redis' script and per host.
"""
import http.client
import json
import os
import signal
import socket
import subprocess
import time

import pytest

from ..conftest import gateway_conf, route, wait_until


def status_of(gw, path, headers=None):
    """One GET on a new connection (either worker may take it) -> (status, headers)."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        resp.read()
        return resp.status, dict(resp.getheaders())
    finally:
        conn.close()


def control(upstream, query):
    conn = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=5)
    conn.request("GET", f"/control?{query}")
    conn.getresponse().read()
    conn.close()


def half_open_on_redis(launcher, upstream, workers=1, pause=1.0):
    """A gateway whose breaker on Redis (route "br") opened on the upstream's 500s and is
    half-open at its next admission, the upstream well again. -> (redis, gateway)"""
    redis = launcher.redis()
    gw = launcher.gateway(gateway_conf([route(
        "br", ["/br/*rest"], upstream.url, strip_prefix="/br", plugins={"breaker": {
            "error_rate": 0.5, "window": 6.0, "min_requests": 4, "open_for": 1.0,
            "max_open_for": 2.0, "half_open_probes": 1}})],
        workers=workers, redis={"url": redis.url, "timeout": 0.2, "pause": pause}))
    control(upstream, "fail=1")
    opened = [status_of(gw, "/br/echo")[0] for _ in range(6)]
    assert opened[:4] == [500] * 4 and opened[-1] == 503
    control(upstream, "fail=0")
    time.sleep(1.1)                                     # half-open at the next admission
    return redis, gw


def breaker_record(redis, route_id="br"):
    """The route's breaker record as Redis holds it."""
    raw = subprocess.run(["redis-cli", "-p", str(redis.port), "GET", f"gw:br:route:{route_id}"],
                         capture_output=True, text=True, timeout=10).stdout
    return json.loads(raw)


# -- 1. a half-open probe read slowly ------------------------------------------------------------

def test_a_slow_reader_of_a_probes_answer_does_not_hold_a_half_open_breaker(launcher, upstream):
    """The upstream failed, the breaker opened, the upstream recovered. The probe is a large
    download whose client reads nothing after the head: the upstream's 200 head is the
    verdict, and the next requests are served. Judged at the body's end, every request got
    503 circuit_open for the 5 s of probe_timeout (then the next probe could be held alike)."""
    redis = launcher.redis()
    gw = launcher.gateway(gateway_conf([route(
        "br", ["/br/*rest"], upstream.url, strip_prefix="/br", plugins={"breaker": {
            "error_rate": 0.5, "window": 5.0, "min_requests": 4, "open_for": 0.5,
            "max_open_for": 1.0, "half_open_probes": 1}})],
        workers=2, redis={"url": redis.url}))
    control(upstream, "fail=1")
    opened = [status_of(gw, "/br/echo")[0] for _ in range(6)]
    assert opened[:4] == [500] * 4 and opened[-1] == 503
    control(upstream, "fail=0")
    time.sleep(0.7)                                     # half-open from now on
    probe = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        probe.sendall(b"GET /br/bytes/50000000 HTTP/1.1\r\nHost: x\r\n\r\n")
        head = b""
        while b"\r\n" not in head:
            piece = probe.recv(4096)
            assert piece, head
            head += piece
        assert head.startswith(b"HTTP/1.1 200 ")        # ...and no more of it is read
        seen = []

        def served():
            seen.append(status_of(gw, "/br/echo")[0])
            return seen[-1] == 200
        wait_until(served, timeout=2.5, interval=0.1)
        # closed: every worker serves, while the probe's body is still unread
        assert [status_of(gw, "/br/echo")[0] for _ in range(4)] == [200] * 4
    finally:
        probe.close()


# -- 2. the upstream's status, not a rewritten one -----------------------------------------------

def test_a_breaker_judges_the_upstreams_status_not_the_one_rewrite_gives_the_client(
        launcher, upstream):
    """rewrite maps the upstream's 503 to 429 for clients: the 503s are failures all the
    same, and the breaker opens after min_requests of them (it counted them as successes and
    never opened)."""
    redis = launcher.redis()
    gw = launcher.gateway(gateway_conf([route(
        "br", ["/br/*rest"], upstream.url, strip_prefix="/br", plugins={
            "rewrite": {"response_status": {"503": 429}},
            "breaker": {"error_rate": 0.5, "window": 10.0, "min_requests": 4,
                        "open_for": 10.0, "max_open_for": 10.0}})],
        workers=2, redis={"url": redis.url}))
    seen = []
    for _ in range(8):
        seen.append(status_of(gw, "/br/status/503")[0])
        time.sleep(0.05)                # the outcome reaches Redis before the next admission
    assert seen[:4] == [429] * 4        # the client still gets the mapped status
    assert seen[-1] == 503              # ...and the breaker opened on the upstream's 503s
    status, headers = status_of(gw, "/br/echo")
    assert status == 503 and int(headers["Retry-After"]) >= 1


def test_an_adaptive_limit_judges_the_upstreams_status_not_the_one_rewrite_gives_the_client(
        launcher, upstream):
    """The same for an adaptive limit: the upstream's 503s, mapped to 429, lower the
    effective rate (it was held at the start, every answer counted a success)."""
    redis = launcher.redis()
    gw = launcher.gateway(gateway_conf([route(
        "ad", ["/ad/*rest"], upstream.url, strip_prefix="/ad", plugins={
            "rewrite": {"response_status": {"503": 429}},
            "rate_limit": {"rate": 10, "burst": 1000, "key": "route", "adaptive": {
                "floor": 4, "ceiling": 15, "window": 0.3, "step_down": 0.5}}})],
        workers=2, redis={"url": redis.url, "timeout": 0.5}))
    limits = []

    def lowered():
        status, headers = status_of(gw, "/ad/status/503")
        assert status == 429
        limits.append(int(headers["RateLimit-Limit"]))
        return limits[-1] == 4
    wait_until(lowered, timeout=5, interval=0.02)
    assert limits[0] == 10


# -- 3. a probe Redis granted after its request fell back --------------------------------------

def test_a_probe_granted_during_a_redis_stall_is_given_back_when_redis_answers(
        launcher, upstream):
    """Redis is stopped for 0.3 s as the half-open breaker's admission goes out: the request
    is decided per host (200); Redis, resumed, grants the probe to nobody. Its late reply
    gives it back: once the store's pause is over, requests decided in Redis are served (it
    was 503 circuit_open for the 6 s of probe_timeout)."""
    redis, gw = half_open_on_redis(launcher, upstream, workers=2, pause=0.5)
    os.kill(redis.pid, signal.SIGSTOP)
    try:
        assert status_of(gw, "/br/echo")[0] == 200      # decided per host
    finally:
        time.sleep(0.1)
        os.kill(redis.pid, signal.SIGCONT)

    def stored():
        return breaker_record(redis)
    assert wait_until(lambda: stored()["state"] == "half_open" and stored()["probes"] == 0,
                      timeout=2)
    time.sleep(0.8)                     # the store's pause over: every worker asks Redis
    assert status_of(gw, "/br/echo")[0] == 200          # the probe, granted in Redis
    # Its verdict goes with the worker's next round trip, after the answer: until Redis has
    # it, the other worker's request is refused as the one probe is out (a 503 here once).
    assert wait_until(lambda: stored()["state"] == "closed", timeout=2)
    assert [status_of(gw, "/br/echo")[0] for _ in range(3)] == [200] * 3


# -- 4. IPv4 clients a NAT64 translator names ---------------------------------------------------

def test_ipv4_clients_named_by_a_nat64_translator_have_buckets_of_their_own(launcher, upstream):
    """Two IPv4 clients behind the site's translator (a trusted proxy names them in
    X-Forwarded-For): the first spends its 2 requests, the second is served (it got the
    first's 429: one /64, 64:ff9b::/64, for the whole IPv4 Internet). Spellings of one
    client are still one bucket, and IPv6 clients still count by their /64."""
    redis = launcher.redis()
    gw = launcher.gateway(gateway_conf([route("lim", ["/lim"], upstream.url, plugins={
        "rate_limit": {"rate": 2, "per": 60, "burst": 2, "key": "ip",
                       "on_store_error": "deny"}})],
        workers=2, redis={"url": redis.url}, server={"trusted_proxies": ["127.0.0.1/32"]}))

    def statuses(*clients):
        return [status_of(gw, "/lim", {"X-Forwarded-For": c})[0] for c in clients]
    assert statuses("64:ff9b::c000:201", "64:ff9b::192.0.2.1", "[64:FF9B::C000:0201]:443") \
        == [200, 200, 429]
    assert statuses("64:ff9b::c000:202", "192.0.2.2") == [200, 200]
    assert statuses("2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2::3") == [200, 200, 429]


# -- 5. an error rate reached exactly ------------------------------------------------------------

@pytest.mark.parametrize("store", ["redis", "per host"])
def test_a_breaker_opens_when_the_share_of_failures_is_its_error_rate(launcher, upstream,
                                                                      store):
    """18 answers served, then 7 failed: 7 of 25 is 0.28, the breaker's error_rate, and it
    opens (it stayed closed, 7 < 0.28 * 25 in floating point)."""
    sections = {"redis": {"url": launcher.redis().url}} if store == "redis" else {}
    gw = launcher.gateway(gateway_conf([route(
        "br", ["/br/*rest"], upstream.url, strip_prefix="/br", plugins={"breaker": {
            "error_rate": 0.28, "window": 30.0, "min_requests": 25, "open_for": 30.0,
            "max_open_for": 30.0}})], workers=2, **sections))
    assert [status_of(gw, "/br/echo")[0] for _ in range(18)] == [200] * 18
    failed = []
    for _ in range(7):
        failed.append(status_of(gw, "/br/status/500")[0])
        time.sleep(0.03)                # each outcome lands before the next admission
    assert failed == [500] * 7
    assert wait_until(lambda: status_of(gw, "/br/echo")[0] == 503, timeout=2)
