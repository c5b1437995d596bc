"""RateLimit-* headers while Redis is down: they report a count only when one was made
(Redis, or the per-host limiter under on_store_error = "local"); "allow" and "deny" count
nothing and send none, rather than a Remaining the gateway made up."""
import http.client

import pytest

from ..conftest import TcpRelay, gateway_conf, route, stop_process, wait_until

HOUR = 3600.0
NAMES = ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset")


def answers(gw, n):
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    out = []
    for _ in range(n):
        conn.request("GET", "/lim")
        resp = conn.getresponse()
        resp.read()
        limit, remaining, reset = (resp.getheader(name) for name in NAMES)
        out.append((resp.status, (limit, remaining, reset and "set")))
    conn.close()
    return out


@pytest.mark.parametrize("mode, down", [
    ("allow", [(200, (None, None, None))] * 4),
    ("deny", [(503, (None, None, None))] * 4),
    ("local", [(200, ("3", "2", "set")), (200, ("3", "1", "set")), (200, ("3", "0", "set")),
               (429, ("3", "0", "set"))]),          # the per-host count, from 3 again
])
def test_ratelimit_headers_with_redis_stopped(launcher, upstream, mode, down):
    redis = launcher.redis()
    limit = {"rate": 3, "per": HOUR, "burst": 3, "key": "route", "on_store_error": mode}
    # The launcher's 0.5 s Redis timeout, not production's 50 ms: a loaded CI host once took
    # longer for the first decision (connect, script load) and it fell back to "allow". A
    # stopped Redis refuses at once, whatever the timeout.
    gw = launcher.gateway(gateway_conf([route("lim", ["/lim"], upstream.url,
                                              plugins={"rate_limit": limit})],
                                       redis={"url": redis.url}))
    assert answers(gw, 1) == [(200, ("3", "2", "set"))]        # Redis counts while it is up
    stop_process(redis)
    assert answers(gw, 4) == down
    assert "redis unreachable" in gw.log()


class TricklingRelay(TcpRelay):
    """A relay to Redis whose replies, once ``slow`` is set, go one byte every 20 ms: each
    read is within a 50 ms socket timeout, the whole reply is not."""

    def __init__(self, port):
        import threading
        self.slow = threading.Event()
        super().__init__(port)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def forward(self, data, dst, to_client):
        import time
        if not (to_client and self.slow.is_set()):
            return dst.sendall(data)
        for i in range(len(data)):
            time.sleep(0.02)
            dst.sendall(data[i:i + 1])


def test_a_decision_waits_at_most_the_timeout_for_a_trickling_redis(launcher, upstream):
    """The timeout bounded each socket read, not the decision: replies in pieces under 50 ms
    apart held every limited request for 0.5-2.7 s."""
    import time
    from concurrent.futures import ThreadPoolExecutor
    relay = TricklingRelay(launcher.redis().port)
    try:
        gw = launcher.gateway(gateway_conf([route("lim", ["/lim"], upstream.url, plugins={
            "rate_limit": {"rate": 1000, "burst": 100, "on_store_error": "allow"}})],
            redis={"url": relay.url, "timeout": 0.05}))
        assert answers(gw, 2)[0][0] == 200
        relay.slow.set()

        def timed(_):
            started = time.monotonic()
            status = answers(gw, 1)[0][0]
            return status, time.monotonic() - started
        with ThreadPoolExecutor(5) as pool:
            results = list(pool.map(timed, range(5)))
        assert [status for status, _ in results] == [200] * 5
        assert max(seconds for _, seconds in results) < 0.4, results
    finally:
        relay.close()


@pytest.mark.parametrize("plugins", [
    {"rate_limit": {"rate": 1000, "burst": 100, "key": "route", "on_store_error": "deny"}},
    {"limit_conn": {"limit": 1000, "key": "route", "on_store_error": "deny"}},
])
def test_a_decision_nobody_waits_for_does_not_pause_the_store(launcher, upstream, plugins):
    """An HTTP/2 stream reset kills its greenlet while its decision is in flight. The store's
    one deadline timer then failed that decision, though nobody waited for it, logged "redis
    did not answer" and paused the store: every limited request of the worker got
    on_store_error ("deny": 503) for [redis] pause, though Redis had answered."""
    import time
    from ..h2client import RawH2
    relay = TricklingRelay(launcher.redis().port)
    try:
        gw = launcher.gateway(gateway_conf(
            [route("lim", ["/lim"], upstream.url, plugins=plugins)],
            redis={"url": relay.url, "timeout": 0.05, "pause": 0.3}, http2={"h2c": True}))
        # the first decision connects through the relay and loads the scripts: on a loaded
        # host that can outlast 50 ms, and the store pauses for 0.3 s
        wait_until(lambda: [status for status, _ in answers(gw, 2)] == [200, 200], timeout=20)
        timeouts = gw.log().count("redis did not answer")
        time.sleep(0.3)         # limit_conn's releases have gone: the claim is sent at once
        relay.slow.set()
        client = RawH2(gw.port)
        stream = client.request("/lim")
        client.flush()
        time.sleep(0.01)                 # the decision is on its way to Redis
        client.conn.reset_stream(stream, 8)
        client.flush()
        time.sleep(0.1)
        relay.slow.clear()               # the reply under way still trickles (~1 s)
        time.sleep(2.0)                  # it has come; Redis answers at once again
        client.sock.close()
        assert answers(gw, 1)[0][0] == 200, gw.log()[-1500:]
        assert gw.log().count("redis did not answer") == timeouts   # the store never paused
    finally:
        relay.close()
