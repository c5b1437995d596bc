"""Circuit breakers through real gateways and a real redis-server (and per host)."""
import http.client
import json
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from gwserver.state.store import LocalStore, RedisStore

from ..conftest import gateway_conf, route, wait_until

FAST = {"error_rate": 0.5, "window": 5.0, "min_requests": 4, "open_for": 0.4,
        "max_open_for": 1.0, "half_open_probes": 2}


def check_store_follows_the_state_machine(store):
    """The same table for Redis (Lua, Redis' clock) and per host (core.breaker in Python)."""
    key, conf = "route:r", FAST

    def admit(n):
        verdicts = [store.breaker_admit(key, conf) for _ in range(n)]
        return sum(v.admitted for v in verdicts), verdicts[-1].state, verdicts[-1].epoch

    def record(epoch, ok=0, failed=0, unused=0):
        for outcome in [True] * ok + [False] * failed + [None] * unused:
            store.breaker_record(key, conf, epoch, outcome)

    admitted, state, epoch = admit(1)
    assert (admitted, state) == (1, "closed")
    record(epoch, ok=2, failed=1)
    assert admit(1)[:2] == (1, "closed")                 # 1 of 3 failed, below min_requests
    record(epoch, failed=2)                              # 3 of 5 failed
    assert admit(3)[:2] == (0, "open")
    time.sleep(0.45)
    admitted, state, probe_epoch = admit(3)
    assert (admitted, state) == (2, "half_open")         # exactly the probes, not 3
    record(epoch, ok=5)                                  # stale answers change nothing
    assert admit(1)[:2] == (0, "half_open")
    record(probe_epoch, ok=1, failed=1)                  # a failed probe: open, for 0.8 s
    assert admit(1)[:2] == (0, "open")
    time.sleep(0.45)
    assert admit(1)[:2] == (0, "open")
    time.sleep(0.4)
    admitted, state, probe_epoch = admit(2)
    assert (admitted, state) == (2, "half_open")
    record(probe_epoch, unused=1)                        # no verdict: the probe is given back
    assert admit(3)[:2] == (1, "half_open")              # ...and granted again at once
    record(probe_epoch, ok=2, unused=3)                  # more given back than granted: none
    assert admit(5)[:2] == (5, "closed")
    saved = store.breaker_state(key)
    assert (saved["state"], saved["trips"]) == ("closed", 0)


def test_redis_breaker_follows_the_state_machine(launcher):
    redis = launcher.redis()
    check_store_follows_the_state_machine(RedisStore(redis.url, timeout=1.0))


def test_per_host_breaker_follows_the_state_machine(tmp_path):
    check_store_follows_the_state_machine(LocalStore(str(tmp_path)))


def get(gw, path, headers=None, settle=0.05):
    """One request on a new connection (any worker may take it). A worker reports an outcome
    to the store after answering, within a round trip: ``settle`` lets it land so that the
    next request, on whichever worker, is decided with it."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    time.sleep(settle)
    return resp.status, resp.getheader("Retry-After"), body


def guarded(upstream, rid="br", **conf):
    return route(rid, [f"/{rid}/*rest"], upstream.url, strip_prefix=f"/{rid}",
                 plugins={"breaker": {**FAST, **conf}})


# Upstream answers in -> statuses the client sees (503 from the breaker is "B").
@pytest.mark.parametrize("upstream_statuses, client_sees", [
    ([500, 500, 500, 500, 200, 200], [500, 500, 500, 500, "B", "B"]),
    ([500, 200, 500, 200, 200, 200], [500, 200, 500, 200, "B", "B"]),     # 50% of 4
    ([500, 200, 200, 200, 500, 200], [500, 200, 200, 200, 500, 200]),     # 25%, 40%, 33%
    ([404, 404, 404, 404, 200], [404, 404, 404, 404, 200]),               # 4xx are not failures
    ([503, 503, 429, 503, 200], [503, 503, 429, 503, "B"]),               # 3 of 4 failed
])
def test_statuses_in_statuses_out(launcher, upstream, upstream_statuses, client_sees):
    redis = launcher.redis()
    gw = launcher.gateway(gateway_conf([guarded(upstream)], workers=2,
                                       redis={"url": redis.url}))
    seen = []
    for code in upstream_statuses:
        status, _, body = get(gw, f"/br/status/{code}")
        if status == 503 and b"circuit_open" in body:
            seen.append("B")
        else:
            seen.append(status)
    assert seen == client_sees


def test_open_breaker_fails_fast_then_probes_and_closes(launcher, upstream):
    redis = launcher.redis()
    gw = launcher.gateway(gateway_conf([guarded(upstream, half_open_probes=1)], workers=2,
                                       redis={"url": redis.url}))
    for _ in range(4):
        get(gw, "/br/status/502")
    before = upstream.stats()["requests"]
    status, retry_after, body = get(gw, "/br/echo")
    answer = json.loads(body)
    assert status == 503 and retry_after == "1"
    assert answer["error"] == "circuit_open" and answer["breaker"] == "route:br"
    assert upstream.stats()["requests"] == before       # the upstream was not called
    time.sleep(0.45)
    assert get(gw, "/br/echo")[0] == 200                # the probe
    assert [get(gw, "/br/echo")[0] for _ in range(5)] == [200] * 5


@pytest.mark.parametrize("store", ["redis", "per host"])
def test_only_the_upstream_decides_a_half_open_breaker(launcher, upstream, store):
    """A 413 the gateway made itself (a chunked body over max_body_size, read after the
    breaker admitted the request) closed a half-open breaker on a dead upstream; a probe
    whose client hung up kept the breaker half-open, refusing everyone, for probe_timeout."""
    import socket
    redis = {"redis": {"url": launcher.redis().url}} if store == "redis" else {}
    dead = route("dead", ["/dead"], "http://127.0.0.1:9", max_body_size=10,
                 plugins={"breaker": {**FAST, "half_open_probes": 1}})
    gw = launcher.gateway(gateway_conf([dead, guarded(upstream, half_open_probes=1)],
                                       **redis))

    def refused(path):
        status, _, body = get(gw, path)
        return status == 503 and b"circuit_open" in body

    assert [get(gw, "/dead")[0] for _ in range(4)] == [502] * 4
    assert refused("/dead")
    time.sleep(0.45)                                    # half-open: one probe
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(b"POST /dead HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
        time.sleep(0.2)             # admitted as the probe; the body comes later, too large
        sock.sendall(b"40\r\n" + b"x" * 64 + b"\r\n0\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 413")
    time.sleep(0.05)
    assert get(gw, "/dead")[0] == 502                   # the real probe: still dead
    assert refused("/dead")                             # open again, not closed by a 413

    for _ in range(4):
        get(gw, "/br/status/502")
    assert refused("/br/echo")
    time.sleep(0.45)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(b"POST /br/echo HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n")
        time.sleep(0.3)             # takes the probe, then leaves before its body is sent
    time.sleep(0.2)
    assert get(gw, "/br/echo")[0] == 200                # the probe was given back
    assert [get(gw, "/br/echo")[0] for _ in range(3)] == [200] * 3


def test_http2_streams_reset_while_probing_do_not_multiply_the_probes(launcher, upstream):
    """A probe whose stream was reset after it went upstream was given back while the
    upstream still worked on it: a client resetting its streams sent any number of probes
    through a half-open breaker at once (12 where half_open_probes = 1)."""
    from ..h2client import RawH2
    gw = launcher.gateway(gateway_conf([guarded(upstream, half_open_probes=1)],
                                       http2={"h2c": True}))
    for _ in range(4):
        get(gw, "/br/status/502")
    time.sleep(0.45)                                    # half-open: one probe
    before = upstream.stats()["requests"]
    client = RawH2(gw.port)
    for _ in range(8):
        stream = client.request("/br/slow/3")
        time.sleep(0.2)                                 # forwarded by now, if admitted
        client.conn.reset_stream(stream, 8)
        client.flush()
    client.sock.close()
    time.sleep(0.3)
    assert upstream.stats()["requests"] - before == 1


def test_connect_errors_and_timeouts_always_count(launcher, upstream):
    dead = route("dead", ["/dead"], "http://127.0.0.1:9", plugins={"breaker": {
        **FAST, "failure_statuses": []}})
    slow = route("slow", ["/slow/*s"], upstream.url, timeouts={"read": 0.2},
                 plugins={"breaker": {**FAST, "failure_statuses": []}})
    gw = launcher.gateway(gateway_conf([dead, slow]))          # per-host state
    assert [get(gw, "/dead")[0] for _ in range(5)][:4] == [502] * 4
    status, _, body = get(gw, "/dead")
    assert status == 503 and b"route:dead" in body
    assert [get(gw, "/slow/1")[0] for _ in range(4)] == [504] * 4
    assert b"circuit_open" in get(gw, "/slow/1")[2]


def test_two_gateways_share_one_breaker_and_probe_once(launcher, upstream):
    redis = launcher.redis()
    conf = gateway_conf([guarded(upstream, half_open_probes=1, open_for=0.6)], workers=2,
                        redis={"url": redis.url})
    first, second = launcher.gateway(conf), launcher.gateway(conf)
    for gw in (first, second, first, second):
        get(gw, "/br/status/500")
    assert b"circuit_open" in get(second, "/br/echo")[2]
    assert b"circuit_open" in get(first, "/br/echo")[2]
    time.sleep(0.65)
    before = upstream.stats()["requests"]
    with ThreadPoolExecutor(4) as pool:     # at once, two on each gateway
        answers = list(pool.map(lambda gw: get(gw, "/br/slow/0.5"), [first, second] * 2))
    # one probe cluster-wide; the other gateway's request is refused while it is out
    assert sorted(a[0] for a in answers) == [200, 503, 503, 503]
    assert upstream.stats()["requests"] == before + 1


def test_breaker_on_an_upstream_is_shared_by_its_routes(launcher, upstream):
    conf = gateway_conf([{"id": p, "paths": [f"/{p}/*r"], "upstream": "shared",
                          "strip_prefix": f"/{p}"} for p in ("a", "b")],
                        upstreams={"shared": {"targets": [{"url": upstream.url}],
                                              "plugins": {"breaker": FAST}}})
    gw = launcher.gateway(conf)
    for prefix in ("a", "b", "a", "b"):
        get(gw, f"/{prefix}/status/500")
    status, _, body = get(gw, "/b/echo")
    assert status == 503 and json.loads(body)["breaker"] == "upstream:shared"
    assert b"upstream:shared" in get(gw, "/a/echo")[2]


def test_redis_down_falls_back_to_per_host_breaker(launcher, upstream):
    redis = launcher.redis()
    gw = launcher.gateway(gateway_conf([guarded(upstream), guarded(upstream, "open",
                                                                   on_store_error="allow")],
                                       workers=1, redis={"url": redis.url}))
    assert get(gw, "/br/echo")[0] == 200
    redis.kill()
    redis.wait()
    started = time.monotonic()
    codes = [get(gw, "/br/status/500")[0] for _ in range(5)]
    assert codes[:4] == [500] * 4 and codes[4] == 503     # the per-host breaker opened
    assert [get(gw, "/open/status/500")[0] for _ in range(6)] == [500] * 6    # allow: unguarded
    assert time.monotonic() - started < 3                   # never stalled on the dead Redis
    wait_until(lambda: b"gwserver_redis_up 0.0" in gw.admin_get("/metrics")[1], timeout=5)
    assert "redis unreachable (connection refused)" in gw.log()


def test_admin_view_and_metrics_show_breakers(launcher, upstream):
    redis = launcher.redis()
    # open_for long enough that a loaded host's admin request still finds it open
    gw = launcher.gateway(gateway_conf([guarded(upstream, open_for=5.0, max_open_for=10.0)],
                                       workers=2,
                                       redis={"url": redis.url}))
    for _ in range(3):
        get(gw, "/br/status/500")
    tripping = time.monotonic()         # the fourth failure trips it
    get(gw, "/br/status/500")
    view = json.loads(gw.admin_get("/admin/breakers")[1])
    entry = view["breakers"]["route:br"]
    assert entry["state"] == "open" and entry["routes"] == ["br"] and entry["trips"] == 1
    assert entry["config"]["min_requests"] == 4
    assert 5.0 - (time.monotonic() - tripping) - 0.001 <= entry["half_open_in"] <= 5.0

    def scraped():
        text = gw.admin_get("/metrics")[1].decode()
        return 'gwserver_breaker_state{breaker="route:br"} 1.0' in text and \
            'gwserver_breaker_transitions_total{breaker="route:br",state="open"} 1.0' in text \
            and "gwserver_redis_up 1.0" in text
    wait_until(scraped, timeout=5)
    check = subprocess.run(["promtool", "check", "metrics"], capture_output=True, text=True,
                           input=gw.admin_get("/metrics")[1].decode())
    assert check.returncode == 0, check.stdout + check.stderr


# -- a stalled upload holds no half-open probe ---------------------------------------------

def test_a_stalled_upload_holds_no_half_open_probe(launcher):
    """A half-open breaker grants half_open_probes requests; one that then waited for its
    client's body held the probe until client_body_timeout (a 408, the probe handed back)
    while every other request got 503, and a client that kept one stalled upload going held
    a recovered upstream's breaker half-open for as long as it liked. A request's body
    (up to request_buffer_size) is now read before the breaker admits it: the stalled
    upload waits with no probe, and the next request takes it and closes the breaker."""
    from .test_rollouts import control
    upstream = launcher.upstream("u")
    gw = launcher.gateway(gateway_conf([guarded(upstream, half_open_probes=1)],
                                       server={"client_body_timeout": 4.0}))
    control(upstream, fail=1.0)
    statuses = [get(gw, "/br/echo")[0] for _ in range(6)]
    assert statuses[-1] == 503 and 500 in statuses, statuses        # open
    control(upstream, fail=0)
    time.sleep(FAST["open_for"] + 0.2)                              # half-open now
    stalled = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    try:
        stalled.sendall(b"POST /br/upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 1000\r\n"
                        b"\r\n" + b"x" * 10)
        time.sleep(0.3)                 # its head is in: it would have taken the probe
        assert get(gw, "/br/echo")[0] == 200                        # the probe: closed
        assert [get(gw, "/br/echo")[0] for _ in range(3)] == [200] * 3
        stalled.sendall(b"x" * 990)     # its body came whole: served, as any other
        answer = stalled.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    finally:
        stalled.close()


def test_a_stalled_http2_upload_holds_no_half_open_probe(launcher):
    """The same over h2c: the stream's body is waited for before the probe is asked for."""
    from ..h2client import RawH2
    from .test_rollouts import control
    upstream = launcher.upstream("u")
    gw = launcher.gateway(gateway_conf([guarded(upstream, half_open_probes=1)],
                                       http2={"h2c": True},
                                       server={"client_body_timeout": 4.0}))
    control(upstream, fail=1.0)
    statuses = [get(gw, "/br/echo")[0] for _ in range(6)]
    assert statuses[-1] == 503 and 500 in statuses, statuses
    control(upstream, fail=0)
    time.sleep(FAST["open_for"] + 0.2)
    client = RawH2(gw.port)
    try:
        stream = client.request("/br/upload", "POST", [("content-length", "1000")], end=False)
        client.conn.send_data(stream, b"x" * 10)
        client.flush()
        time.sleep(0.3)
        assert get(gw, "/br/echo")[0] == 200
        assert [get(gw, "/br/echo")[0] for _ in range(3)] == [200] * 3
        client.conn.send_data(stream, b"x" * 990, end_stream=True)
        client.flush()
        answer = client.response(stream, timeout=5)
        assert answer is not None and answer[0] == 200, answer
    finally:
        client.close()
