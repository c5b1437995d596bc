"""A retry policy's ``timeout``: no retry is begun once that many seconds have passed since
the request's first try (nginx's proxy_next_upstream_timeout, APISIX's retry_timeout). Without
it, ``attempts = 5`` of an upstream that answers a retried status slowly held the client for
six slow answers. Over HTTP/1.1 and HTTP/2 upstreams alike, against real processes."""
import time
import urllib.request

import h2.events

from ..conftest import gateway_conf, wait_until
from ..h2_upstreams import EventH2cUpstream

# Each answer's delay: the first try ends before TIMEOUT (0.25 s to spare: with 0.15 the
# first try of the h2 case ended past it on a loaded CI host), the second after (by 2 x SLOW)
SLOW = 0.4
TIMEOUT = 0.65
POLICY = {"on": ["500"], "attempts": 5, "backoff": 0.01}


def slow_failing(launcher):
    """A tests/upstream.py answering every request 500 after SLOW seconds (/control)."""
    bad = launcher.upstream("slow-bad")
    urllib.request.urlopen(f"{bad.url}/control?fail=1&delay={SLOW}", timeout=5).read()
    return bad


def gateway(launcher, url, protocol="http1", **retry):
    return launcher.gateway(gateway_conf([{
        "id": "r", "paths": ["/*rest"], "retry": {**POLICY, **retry},
        "upstream": {"targets": [{"url": url}], "protocol": protocol}}]))


def test_no_retry_begins_after_the_policy_s_timeout(launcher):
    bad = slow_failing(launcher)
    gw = gateway(launcher, bad.url, timeout=TIMEOUT)
    assert gw.request("GET", "/any")[0].status == 500
    # the first try ended at ~0.4 s (< 0.65: retried), the second at ~0.8 s (no third)
    assert bad.stats()["requests"] == 2
    assert f"not retried: the retry timeout ({TIMEOUT}s since the first try) has passed" in gw.log()
    wait_until(lambda: 'gwserver_upstream_retries_total{outcome="timed_out",'
                       'upstream="r.upstream"}' in gw.admin_get("/metrics")[1].decode(),
               timeout=5)
    # without it, every attempt is made
    before = bad.stats()["requests"]
    assert gateway(launcher, bad.url).request("GET", "/any")[0].status == 500
    assert bad.stats()["requests"] - before == 6


class SlowFailingH2(EventH2cUpstream):
    """An h2c upstream answering every request 500 after SLOW seconds; counts them."""
    requests = 0

    def on_event(self, conn, sock, event):
        if isinstance(event, h2.events.RequestReceived):
            SlowFailingH2.requests += 1
            time.sleep(SLOW)      # (this connection's thread: the next try waits its turn)
            conn.send_headers(event.stream_id, [(b":status", b"500"),
                                                (b"content-length", b"4")])
            conn.send_data(event.stream_id, b"fail", end_stream=True)


def test_no_retry_begins_after_the_timeout_to_an_h2_upstream(launcher):
    bad = SlowFailingH2()
    try:
        gw = gateway(launcher, f"http://127.0.0.1:{bad.port}", "h2", timeout=TIMEOUT)
        assert gw.request("GET", "/any")[0].status == 500
        assert SlowFailingH2.requests == 2
        assert f"the retry timeout ({TIMEOUT}s since the first try) has passed" in gw.log()
    finally:
        bad.close()


def test_a_route_s_zero_clears_its_upstream_s_timeouts(launcher):
    """An upstream's retry timeout and per_try_timeout hold for every route on it; a route
    whose calls are slow by design clears them with 0 (nginx's proxy_next_upstream_timeout
    0), where before it could only pick another number (0 was refused)."""
    bad = slow_failing(launcher)
    gw = launcher.gateway(gateway_conf([
        {"id": "bound", "paths": ["/bound"], "upstream": "up"},
        {"id": "free", "paths": ["/free"], "upstream": "up",
         "retry": {"timeout": 0, "per_try_timeout": 0}}],
        upstreams={"up": {"targets": [{"url": bad.url}],
                          "retry": {**POLICY, "attempts": 2, "timeout": TIMEOUT,
                                    "per_try_timeout": 0.2}}}))
    assert gw.request("GET", "/bound")[0].status == 504       # no head within 0.2 s
    before = bad.stats()["requests"]
    assert gw.request("GET", "/free")[0].status == 500        # answered, after 3 tries
    assert bad.stats()["requests"] - before == 3
