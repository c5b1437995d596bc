"""A route's retry policy on HTTP/2 upstreams (issue 13: one upstream path). Only connect
failures were retried there: an answer in the policy's statuses, a reset stream and a try
past per_try_timeout reached the client, where an HTTP/1.1 upstream's were retried."""
import threading
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import pytest

from ..conftest import gateway_conf, wait_until
from ..h2_upstreams import H2cUpstream


class ScriptedH2Upstream(H2cUpstream):
    """h2c that treats every request the same way: ``behaviour`` is "ok" (200, the body
    names the upstream and the size of the request body it got), "500", "reset"
    (RST_STREAM INTERNAL_ERROR instead of an answer) or "slow" (200 after ``delay``)."""

    def __init__(self, name, behaviour, delay=3.0):
        self.name, self.behaviour, self.delay = name, behaviour, delay
        self.requests = 0
        super().__init__()

    def connection(self, sock):
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        lock = threading.Lock()
        sizes = {}

        def send():
            sock.sendall(conn.data_to_send())

        def answer(stream_id, status):
            body = b"%s got %d" % (self.name.encode(), sizes.pop(stream_id, 0))
            with lock:
                try:
                    conn.send_headers(stream_id, [(b":status", status),
                                                  (b"content-length", b"%d" % len(body))])
                    conn.send_data(stream_id, body, end_stream=True)
                    send()
                except (h2.exceptions.ProtocolError, OSError):
                    pass

        with sock:
            with lock:
                send()
            try:
                while data := sock.recv(65536):
                    with lock:
                        events = conn.receive_data(data)
                        send()
                    for event in events:
                        if isinstance(event, h2.events.DataReceived):
                            sizes[event.stream_id] = sizes.get(event.stream_id, 0) + \
                                len(event.data)
                            with lock:
                                conn.acknowledge_received_data(event.flow_controlled_length,
                                                               event.stream_id)
                                send()
                        if not isinstance(event, h2.events.StreamEnded):
                            continue        # act once the whole request is in
                        self.requests += 1
                        if self.behaviour == "500":
                            answer(event.stream_id, b"500")
                        elif self.behaviour == "reset":
                            with lock:
                                conn.reset_stream(event.stream_id,
                                                  h2.errors.ErrorCodes.INTERNAL_ERROR)
                                send()
                        elif self.behaviour == "slow":
                            threading.Timer(self.delay, answer,
                                            (event.stream_id, b"200")).start()
                        else:
                            answer(event.stream_id, b"200")
            except (h2.exceptions.ProtocolError, OSError):
                pass


@pytest.fixture
def upstreams():
    started = []

    def start(name, behaviour, **kwargs):
        upstream = ScriptedH2Upstream(name, behaviour, **kwargs)
        started.append(upstream)
        return upstream
    yield start
    for upstream in started:
        upstream.close()


def gateway(launcher, targets, retry=None):
    route = {"id": "r", "paths": ["/*rest"], "upstream": {
        "targets": [{"url": f"http://127.0.0.1:{t.port}"} for t in targets], "protocol": "h2"}}
    if retry is not None:
        route["retry"] = retry
    return launcher.gateway(gateway_conf([route], log={
        "access_fields": ["time", "status", "upstream", "attempts"]}))


def answers(gw, n, method="GET", body=None):
    out = []
    for _ in range(n):
        resp, got = gw.request(method, "/call", body=body)
        out.append((resp.status, got))
    return out


def test_an_answer_in_the_policy_goes_to_another_target(launcher, upstreams):
    bad, good = upstreams("bad", "500"), upstreams("good", "ok")
    gw = gateway(launcher, [bad, good], {"on": ["500"], "attempts": 1})
    assert answers(gw, 12) == [(200, b"good got 0")] * 12
    assert bad.requests >= 3                # it was tried; its 500s never came out
    lines = wait_until(lambda: [l for l in gw.access_lines() if l.get("attempts") == 2])
    assert lines[0]["status"] == 200 and lines[0]["upstream"].endswith(f":{good.port}")
    assert "answered 500; retrying on another target" in gw.log()


def test_a_held_post_is_replayed_only_when_the_policy_names_post(launcher, upstreams):
    bad, good = upstreams("bad", "500"), upstreams("good", "ok")
    replayed = gateway(launcher, [bad, good], {"on": ["500"], "methods": ["POST"]})
    assert answers(replayed, 8, "POST", b"x" * 5000) == [(200, b"good got 5000")] * 8
    kept = gateway(launcher, [bad, good], {"on": ["500"]})     # POST: the upstream may act
    assert (500, b"bad got 5000") in answers(kept, 8, "POST", b"x" * 5000)
    plain = gateway(launcher, [bad, good])                     # the default: connects only
    assert (500, b"bad got 0") in answers(plain, 8)


def test_a_reset_stream_is_retried_when_the_policy_says_reset(launcher, upstreams):
    broken, good = upstreams("broken", "reset"), upstreams("good", "ok")
    gw = gateway(launcher, [broken, good], {"on": ["reset"]})
    assert answers(gw, 10) == [(200, b"good got 0")] * 10
    assert broken.requests >= 3
    plain = gateway(launcher, [broken, good])
    assert 502 in [status for status, _ in answers(plain, 8)]


def test_per_try_timeout_bounds_each_try_and_the_next_goes_elsewhere(launcher, upstreams):
    slow, good = upstreams("slow", "slow", delay=3.0), upstreams("good", "ok")
    gw = gateway(launcher, [slow, good], {"on": ["timeout"], "per_try_timeout": 0.3})
    for _ in range(6):
        started = time.monotonic()
        assert answers(gw, 1) == [(200, b"good got 0")]
        assert time.monotonic() - started < 2.0
    assert slow.requests >= 2
    plain = gateway(launcher, [slow, good], {"per_try_timeout": 0.3})
    assert 504 in [status for status, _ in answers(plain, 6)]
