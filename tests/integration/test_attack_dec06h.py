"""Attack pass of 2026-12-06 (h, a helper's): the upstream retry machinery, HTTP/1.1 and
HTTP/2 upstreams alike, against real gateways and loopback upstreams that misbehave on
purpose. Each numbered defect is shown by a test that failed before its fix.

1. The access log's ``attempts`` counted a try only once its answer's head was read: a
   request retried after a timeout or a reset was logged as one try (no ``attempts``), one
   whose every try timed out as none.
2. ``per_try_timeout`` did not bound a held body's send: an upstream that stopped reading
   (HTTP/1.1) or opened no window (HTTP/2) held the try the read timeout.
3. An HTTP/2 stream refused after the policy's ``timeout`` had passed was sent again (the
   refused stream's second try), the client's wait doubled past the bound; and that second
   try told the upstream the client's whole ``grpc-timeout``, not the time left.
4. With every healthy target tried, a retry went to the balancer's plain choice among all
   targets: half the time one health checks had taken out.
5. A JSON file in ``<state_dir>/share/`` that was no worker's share raised in every
   worker's tick: idle pooled connections were never closed, pools never pruned.
6. The host's 1 s skip of a target that failed a connect ran from the try's start: after a
   connect timeout of 1 s there was none, and every request became the host's probe of the
   dead target (each waiting its connect timeout).
"""
import socket
import time

import h2.errors
import h2.events
import pytest

from ..conftest import gateway_conf, wait_until
from ..h2_upstreams import EventH2cUpstream, ScriptedH2Upstream
from .test_attack_pass_dec03 import RecordingHttp1
from .test_retry_attack_dec05e import CountingHttp1
from .test_retry_policy import failing, retry_route
from .test_review_attack_dec05z import target_health
from .test_upstream_attack_dec05 import blackhole  # noqa: F401 (a fixture)


class Unanswering(RecordingHttp1):
    """A loopback HTTP/1.1 upstream that reads requests and never answers (counts them)."""

    def __init__(self, read=True):
        self.read, self.requests = read, 0
        super().__init__()

    def serve(self, conn):
        buf = b""
        try:
            while self.read and (data := conn.recv(65536)):
                buf += data
                while b"\r\n\r\n" in buf:
                    _, _, buf = buf.partition(b"\r\n\r\n")
                    self.requests += 1
        except OSError:
            pass

    def close(self):
        self.sock.close()
        for conn in self.conns:
            conn.close()


# -- 1. a try that timed out or was reset is a try in the access log's attempts -------------

def test_a_try_that_timed_out_counts_in_the_access_logs_attempts(launcher, upstream):
    """A request retried after its first try timed out was logged without ``attempts`` (it
    was counted once a head was read): the retry showed nowhere in the access log."""
    silent = Unanswering()
    try:
        gw = launcher.gateway(gateway_conf([retry_route(
            [silent.url, upstream.url], {"on": ["timeout"], "per_try_timeout": 0.3})]))
        for _ in range(4):
            assert gw.request("GET", "/echo")[0].status == 200
        assert 1 <= silent.requests <= 3
        lines = wait_until(lambda: len(gw.access_lines()) >= 4 and gw.access_lines())
        assert sorted(line.get("attempts", 1) for line in lines) == \
            [1] * (4 - silent.requests) + [2] * silent.requests
        # every try timed out: two tries, logged as two
        lone = launcher.gateway(gateway_conf([retry_route(
            [silent.url], {"on": ["timeout"], "per_try_timeout": 0.3})]))
        assert lone.request("GET", "/echo")[0].status == 504
        line = wait_until(lambda: lone.access_lines())[-1]
        assert (line["status"], line.get("attempts")) == (504, 2)
    finally:
        silent.close()


def test_an_h2_try_that_timed_out_counts_in_the_access_logs_attempts(launcher):
    slow = ScriptedH2Upstream("slow", "slow", delay=3.0)
    good = ScriptedH2Upstream("good", "ok")
    try:
        gw = launcher.gateway(gateway_conf([{
            "id": "r", "paths": ["/*rest"],
            "retry": {"on": ["timeout"], "per_try_timeout": 0.3},
            "upstream": {"protocol": "h2", "targets": [
                {"url": f"http://127.0.0.1:{t.port}"} for t in (slow, good)]}}]))
        for _ in range(4):
            assert gw.request("GET", "/call")[0].status == 200
        assert 1 <= slow.requests <= 3
        lines = wait_until(lambda: len(gw.access_lines()) >= 4 and gw.access_lines())
        assert sorted(line.get("attempts", 1) for line in lines) == \
            [1] * (4 - slow.requests) + [2] * slow.requests
    finally:
        slow.close()
        good.close()


# -- 2. per_try_timeout bounds a held body's send too ----------------------------------------

def test_per_try_timeout_bounds_a_held_bodys_send_to_a_stuck_upstream(launcher, upstream):
    stuck = Unanswering(read=False)
    stuck.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        gw = launcher.gateway(gateway_conf([retry_route(
            [stuck.url, upstream.url], {"on": ["timeout"], "per_try_timeout": 0.5},
            timeouts={"read": 6})], server={"request_buffer_size": 4 << 20}))
        body = b"x" * (4 << 20)
        for _ in range(3):
            started = time.monotonic()
            resp, got = gw.request("PUT", "/upload", body=body)
            took = time.monotonic() - started
            assert resp.status == 200 and b'"size": 4194304' in got
            assert took < 3.0
    finally:
        stuck.close()


def test_per_try_timeout_bounds_a_held_bodys_send_to_a_stuck_h2_upstream(launcher):
    """An HTTP/2 upstream that opens no window for a held body held the try the read
    timeout, not per_try_timeout, before its retry elsewhere."""
    stuck = ScriptedH2Upstream("stuck", "ok", window=1000, ack=False)
    good = ScriptedH2Upstream("good", "ok")
    try:
        gw = launcher.gateway(gateway_conf([{
            "id": "r", "paths": ["/*rest"], "timeouts": {"read": 6},
            "retry": {"on": ["timeout"], "per_try_timeout": 0.5},
            "upstream": {"protocol": "h2", "targets": [
                {"url": f"http://127.0.0.1:{t.port}"} for t in (stuck, good)]}}],
            server={"request_buffer_size": 1 << 20}))
        for _ in range(3):
            started = time.monotonic()
            resp, got = gw.request("PUT", "/call", body=b"x" * 100_000)
            took = time.monotonic() - started
            assert (resp.status, got, took < 3.0) == (200, b"good got 100000", True), took
        assert "did not open its HTTP/2 window in 0.5s" in gw.log()   # it was tried
    finally:
        stuck.close()
        good.close()



# -- 3. a stream refused late is not sent again past the retry timeout -----------------------

class LateRefuser(EventH2cUpstream):
    """An h2c upstream that sits on each request for SAT seconds, then refuses its stream
    (RST_STREAM REFUSED_STREAM: "not processed, safe to send again"); counts them."""
    SAT = 0.6

    def __init__(self):
        self.requests = 0
        super().__init__()

    def on_event(self, conn, sock, event):
        if isinstance(event, h2.events.RequestReceived):
            self.requests += 1
            time.sleep(self.SAT)      # (this connection's thread)
            conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)


def test_a_stream_refused_after_the_retry_timeout_is_not_sent_again(launcher):
    """The refused stream's second try (no retry of a failure) was made whatever the
    policy's ``timeout``: an upstream that sat on the request past it and then refused it
    was sent it again, the client's wait doubled past the bound, as a reused HTTP/1.1
    connection's second try was before it was held to the timeout too."""
    refuser = LateRefuser()
    try:
        gw = launcher.gateway(gateway_conf([{
            "id": "r", "paths": ["/*rest"],
            "retry": {"on": ["connect", "reset"], "attempts": 2, "timeout": 0.3},
            "upstream": {"protocol": "h2",
                         "targets": [{"url": f"http://127.0.0.1:{refuser.port}"}]}}]))
        assert gw.request("GET", "/any")[0].status == 502
        assert refuser.requests == 1        # (it was 2: sat on twice, 1.2 s for 0.3)
        assert "not retried: the retry timeout (0.3s since the first try) has passed" in \
            gw.log()
    finally:
        refuser.close()


class RefusesFirst(EventH2cUpstream):
    """An h2c upstream that sits on its first request for SAT seconds and refuses it, then
    answers each request 200 "ok"; keeps each request's grpc-timeout."""
    SAT = 0.6

    def __init__(self):
        self.timeouts = []
        super().__init__()

    def on_event(self, conn, sock, event):
        if isinstance(event, h2.events.RequestReceived):
            self.timeouts.append(dict(event.headers).get(b"grpc-timeout"))
            if len(self.timeouts) == 1:
                time.sleep(self.SAT)
                conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                return
            conn.send_headers(event.stream_id, [(b":status", b"200"),
                                                (b"content-length", b"2")])
            conn.send_data(event.stream_id, b"ok", end_stream=True)


def test_a_refused_streams_second_try_tells_the_upstream_the_time_left(launcher):
    """The refused stream's second try re-sent the client's whole grpc-timeout, after the
    upstream had sat on the first: it worked to a deadline the client had partly spent."""
    refuser = RefusesFirst()
    try:
        gw = launcher.gateway(gateway_conf([{
            "id": "r", "paths": ["/*rest"],
            "upstream": {"protocol": "h2",
                         "targets": [{"url": f"http://127.0.0.1:{refuser.port}"}]}}]))
        resp, body = gw.request("GET", "/any", headers={"grpc-timeout": "5S"})
        assert (resp.status, body) == (200, b"ok")
        first, second = refuser.timeouts
        assert first == b"5S"
        assert second.endswith(b"m") and 1 <= int(second[:-1]) <= 4500, second
    finally:
        refuser.close()



# -- 4. every healthy target tried: a retry goes to a tried one before one down -------------

def test_a_retry_goes_to_a_tried_target_before_one_health_checks_took_out(launcher):
    """With every healthy target tried, the retry went to the balancer's plain choice among
    all of them: half the time a target health checks had taken out (the same rule held
    only for an answer that asked for a wait). It goes to a tried one now."""
    raw = launcher.raw_upstream()           # A: healthy, /retry-after-0 answers 503
    down = failing(launcher)                # D: 500 to everything, its health checks too
    a = f"http://127.0.0.1:{raw.port}"
    gw = launcher.gateway(gateway_conf(
        [{"id": "r", "paths": ["/*rest"], "upstream": "pool",
          "retry": {"on": ["500", "503"], "attempts": 1, "backoff": 0.01}}],
        upstreams={"pool": {
            "targets": [{"url": a}, {"url": down.url}],
            "health_check": {"interval": 0.2, "timeout": 1.5, "healthy_threshold": 1,
                             "unhealthy_threshold": 1, "max_interval": 1.0,
                             "path": "/ok"}}}))
    wait_until(lambda: target_health(gw) == {a: "healthy", down.url: "unhealthy"},
               timeout=15)
    answers = [gw.request("GET", "/retry-after-0")[0].status for _ in range(12)]
    assert answers == [503] * 12            # A, then A again: never D's 500



# -- 5. a share file the workers cannot read stops nothing but itself ----------------------

def test_a_malformed_share_file_does_not_stop_the_workers_tick(launcher, tmp_path):
    """A file in <state_dir>/share/ that is JSON but not a worker's counts (another tool's,
    a gateway of another build sharing the directory) raised in every worker's tick, 20
    times a second: what the tick does after the share (idle pooled connections closed,
    HEAD answers' connections settled, pools of removed targets pruned) stopped, and the
    journal filled with tracebacks. Such a file is skipped now, as one that is not JSON is."""
    up = CountingHttp1()
    state = tmp_path / "state"
    (state / "share").mkdir(parents=True)
    wall = time.time() + 3600      # "fresh" for as long as the test runs
    (state / "share" / "list.json").write_text("[]")
    (state / "share" / "pair.json").write_text(
        '{"wall": %f, "counts": {"r.upstream": [1]}, "refused": []}' % wall)
    try:
        gw = launcher.gateway(gateway_conf(
            [{"id": "r", "paths": ["/*rest"], "upstream": {"targets": [{"url": up.url}]}}],
            server={"state_dir": str(state)}, upstream_defaults={"keepalive_timeout": 0.5}))
        assert gw.request("GET", "/x")[0].status == 200
        assert up.open == 1
        wait_until(lambda: up.open == 0, timeout=4)     # closed once idle past 0.5 s
        assert "worker tick failed" not in gw.log()
    finally:
        up.close()



# -- 6. a connect that timed out skips its target for the second it says -------------------

@pytest.mark.parametrize("protocol", ["http1", "h2"])
def test_a_target_whose_connects_time_out_is_skipped_for_a_second(launcher, upstream,
                                                                  blackhole, protocol):
    """The host's 1 s skip of a target that failed a connect ran from the try's start: a
    connect that timed out after 1 s left no skip at all, and the skip's end made the next
    request the host's probe of the target: without a retry left, every request went to
    the dead target and waited its connect timeout."""
    good = ScriptedH2Upstream("good", "ok") if protocol == "h2" else upstream
    try:
        gw = launcher.gateway(gateway_conf([{
            "id": "r", "paths": ["/*rest"], "timeouts": {"connect": 1.0},
            "retry": {"on": ["connect"], "attempts": 0},
            "upstream": {"protocol": protocol, "targets": [
                {"url": blackhole.url}, {"url": f"http://127.0.0.1:{good.port}"}]}}]))
        statuses, stop = [], time.monotonic() + 3.0
        while time.monotonic() < stop:
            statuses.append(gw.request("GET", "/echo")[0].status)
            time.sleep(0.02)
        # one connect timeout, the skip's second, a probe (its connect timeout): was every one
        assert statuses.count(200) >= 10 and len(statuses) - statuses.count(200) <= 2, statuses
    finally:
        if protocol == "h2":
            good.close()
