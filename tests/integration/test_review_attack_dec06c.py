"""The newest commits reviewed as an attacker (the pass of 2026-12-06, helper v3, on 48bb0e7):
412ebca's retry ``timeout`` (the defects below) and 48bb0e7's Route.segments (none found).
Each test failed on 48bb0e7.

1. A retry's backoff was waited after the timeout check: with ``timeout = 0.3`` and
   ``backoff = 1`` (a policy that spares a struggling upstream), a 500 at once was retried
   0.5 to 1.5 s later, past the timeout that says no retry begins after it, and the client
   waited that long for the same 500. The same over HTTP/1.1 and HTTP/2 upstreams, for an
   answer's status and for a try's timeout (per_try_timeout) alike.
2. The retry of a reused keep-alive connection found dead ("whatever the policy") ignored the
   timeout: an upstream that sat on a request on such a connection past the timeout, then
   closed it unanswered, had the request sent again on a fresh connection, and the client
   waited for a second try the policy's timeout had ruled out (nginx's
   proxy_next_upstream_timeout holds for a cached connection too).
"""
import time

import h2.events
import pytest

from ..conftest import gateway_conf
from ..h2_upstreams import EventH2cUpstream
from .test_attack_pass_dec03 import RecordingHttp1

TIMEOUT = 0.3
BACKOFF = 1.0       # jittered x0.5 to x1.5: never under 0.5 s, always past TIMEOUT


def gateway(launcher, url, retry, protocol="http1"):
    return launcher.gateway(gateway_conf([{
        "id": "r", "paths": ["/*rest"], "retry": retry,
        "upstream": {"targets": [{"url": url}], "protocol": protocol}}]))


def warmed(gw):
    """``gw`` once a first request went through (a new worker's first takes ~0.5 s)."""
    gw.request("GET", "/warm")
    return gw


class Failing(RecordingHttp1):
    """An HTTP/1.1 upstream that answers 500 to every request but /warm, after ``delay``
    seconds."""
    delay = 0.0

    def answer(self, head, count):
        if head.startswith(b"GET ") and b"/warm " in head.partition(b"\r\n")[0]:
            return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        time.sleep(self.delay)
        return b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nfail"


@pytest.mark.parametrize("event, delay", [("500", 0.0), ("timeout", 0.25)])
def test_a_backoff_does_not_begin_a_retry_after_the_timeout(launcher, event, delay):
    bad = Failing()
    bad.delay = delay
    try:
        retry = {"on": [event], "attempts": 3, "backoff": BACKOFF, "timeout": TIMEOUT}
        if event == "timeout":
            retry["per_try_timeout"] = 0.1
        gw = warmed(gateway(launcher, bad.url, retry))
        tries = len(bad.heads)
        begun = time.monotonic()
        resp, _ = gw.request("GET", "/any")
        took = time.monotonic() - begun
        assert resp.status == (500 if event == "500" else 504), resp.status
        # one try: a retry after its backoff would have begun 0.5 s or more in
        assert len(bad.heads) - tries == 1, (len(bad.heads) - tries, took)
        assert took < 0.5, took
        assert "not retried: the retry timeout (0.3s since the first try) would pass in " \
               "the retry's backoff" in gw.log()
    finally:
        bad.close()


class FailingH2(EventH2cUpstream):
    """An h2c upstream answering every request 500 at once but /warm; counts them."""
    requests = 0

    def on_event(self, conn, sock, event):
        if isinstance(event, h2.events.RequestReceived):
            FailingH2.requests += 1
            status = b"200" if (b":path", b"/warm") in event.headers else b"500"
            conn.send_headers(event.stream_id, [(b":status", status),
                                                (b"content-length", b"4")])
            conn.send_data(event.stream_id, b"fail", end_stream=True)


def test_a_backoff_does_not_begin_a_retry_after_the_timeout_to_an_h2_upstream(launcher):
    bad = FailingH2()
    try:
        gw = warmed(gateway(launcher, f"http://127.0.0.1:{bad.port}",
                            {"on": ["500"], "attempts": 3, "backoff": BACKOFF,
                             "timeout": TIMEOUT}, "h2"))
        tries = FailingH2.requests
        begun = time.monotonic()
        assert gw.request("GET", "/any")[0].status == 500
        took = time.monotonic() - begun
        assert FailingH2.requests - tries == 1 and took < 0.5, (FailingH2.requests, took)
    finally:
        bad.close()


class SitsOnReused(RecordingHttp1):
    """Answers a connection's first request; on a reused connection it sits SAT seconds on
    the request, then closes the connection unanswered (a crash, say)."""
    SAT = 0.5

    def answer(self, head, count):
        if count == 1:
            return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        time.sleep(self.SAT)
        return None


def test_a_reused_connection_s_retry_is_not_begun_after_the_timeout(launcher):
    up = SitsOnReused()
    try:
        gw = warmed(gateway(launcher, up.url, {"timeout": TIMEOUT}))    # a pooled connection
        assert len(up.heads) == 1
        begun = time.monotonic()
        resp, _ = gw.request("GET", "/second")
        took = time.monotonic() - begun
        # Sent again on a fresh connection after 0.5 s, past the 0.3 s timeout, it was a 200
        # after two tries: the timeout ruled the second out.
        assert resp.status == 502, (resp.status, took)
        assert len(up.heads) == 2, [h.split(b"\r\n")[0] for h in up.heads]
        assert took < 1.0, took
    finally:
        up.close()
