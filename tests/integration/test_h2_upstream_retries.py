"""A route's retry policy on HTTP/2 upstreams (issue 13: one upstream path). Only connect
failures were retried there: an answer in the policy's statuses, a reset stream and a try
past per_try_timeout reached the client, where an HTTP/1.1 upstream's were retried."""
import socket
import time
from types import SimpleNamespace

import pytest

from ..conftest import free_port, gateway_conf, wait_until
from ..h2_upstreams import ScriptedH2Upstream
from ..h2client import RawH2


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


def gateway(launcher, targets, retry=None, **sections):
    route = {"id": "r", "paths": ["/*rest"], "upstream": {
        "targets": [{"url": f"http://127.0.0.1:{t.port}"} for t in targets], "protocol": "h2"}}
    if retry is not None:
        route["retry"] = retry
    return launcher.gateway(gateway_conf([route], log={
        "access_fields": ["time", "status", "upstream", "attempts"]}, **sections))


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


def test_a_stream_refused_twice_goes_to_another_target(launcher, upstreams):
    """Refused twice on the same connection was a 502 though another target was healthy;
    a refused stream was never processed: any method goes elsewhere, as after a failed
    connect (the default policy)."""
    refusing, good = upstreams("refusing", "refuse"), upstreams("good", "ok")
    gw = gateway(launcher, [refusing, good])
    assert answers(gw, 6, "POST", b"x" * 100) == [(200, b"good got 100")] * 6
    assert refusing.requests >= 3


def test_a_reset_while_a_held_body_is_sent_is_retried(launcher, upstreams):
    """A body that does not fit the upstream's window is still going out when the reset
    comes: that was a 502 the policy's reset did not cover."""
    broken = upstreams("broken", "reset-at-head", window=1000, ack=False)
    good = upstreams("good", "ok")
    gw = gateway(launcher, [broken, good], {"on": ["reset"], "methods": ["POST"]})
    answers(gw, 4)                          # connections open, their SETTINGS known
    assert answers(gw, 6, "POST", b"x" * 5000) == [(200, b"good got 5000")] * 6
    assert broken.requests >= 3


def test_an_early_answer_to_a_held_body_reaches_the_client(launcher, upstreams):
    """RFC 9113 8.1: an answer, then a reset, before the body was all sent. The answer was
    thrown away for a 502."""
    gw = gateway(launcher, [upstreams("early", "early-413", window=1000, ack=False)])
    answers(gw, 2)
    assert answers(gw, 3, "POST", b"x" * 5000) == [(413, b"too big!")] * 3


def test_per_try_timeout_does_not_cut_a_streamed_upload(launcher, upstreams):
    """A streamed body is never retried: a client pausing longer than per_try_timeout got a
    504 mid-upload (an HTTP/1.1 upstream's head wait starts once the body is sent)."""
    gw = gateway(launcher, [upstreams("good", "ok")], {"per_try_timeout": 0.5})
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        first = b"a" * 70000                # over request_buffer_size: streamed
        sock.sendall(b"POST /up HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n"
                     b"Connection: close\r\n\r\n%x\r\n%s\r\n" % (len(first), first))
        time.sleep(1.5)
        sock.sendall(b"5\r\nhello\r\n0\r\n\r\n")
        got = b""
        while piece := sock.recv(65536):
            got += piece
    assert got.startswith(b"HTTP/1.1 200") and got.endswith(b"good got 70005"), got[:300]


def test_a_204_never_carries_a_content_length(launcher, upstreams):
    """RFC 9110 8.6: an upstream's content-length on a 204 went on to HTTP/2 clients, which
    refuse the stream (PROTOCOL_ERROR), from HTTP/1.1 and HTTP/2 upstreams alike."""
    raw = launcher.raw_upstream()
    h2 = upstreams("h2", "204-length")
    gw = launcher.gateway(gateway_conf([
        {"id": "h1", "paths": ["/h1/*rest"], "strip_prefix": "/h1",
         "upstream": {"targets": [{"url": f"http://127.0.0.1:{raw.port}"}]}},
        {"id": "h2", "paths": ["/h2/*rest"], "strip_prefix": "/h2",
         "upstream": {"targets": [{"url": f"http://127.0.0.1:{h2.port}"}], "protocol": "h2"}}],
        http2={"h2c": True}))
    client = RawH2(gw.port)
    try:
        for path in ("/h1/204-length", "/h2/none"):
            status, headers, body, _ = client.response(client.request(path))
            assert (status, "content-length" in headers, body) == (204, False, b""), path
    finally:
        client.close()
    for path in ("/h1/204-length", "/h2/none"):
        resp, body = gw.request("GET", path)
        assert (resp.status, resp.getheader("Content-Length"), body) == (204, None, b"")


def test_a_retried_call_tells_the_upstream_the_time_left(launcher, upstreams):
    """The retry re-sent the client's whole grpc-timeout: the second upstream worked to a
    deadline the client had already partly spent."""
    slow_fail = upstreams("bad", "500")
    good = upstreams("good", "ok")
    gw = gateway(launcher, [slow_fail, good],
                 {"on": ["500"], "methods": ["POST"], "backoff": 0.5})
    for _ in range(4):
        resp, body = gw.request("POST", "/call", body=b"m", headers={"grpc-timeout": "5S"})
        assert (resp.status, body) == (200, b"good got 1")
    first = [h[b"grpc-timeout"] for h in slow_fail.heads]
    retried = [h[b"grpc-timeout"] for h in good.heads]
    assert first and set(first) == {b"5S"}            # a first try passes it on as it came
    # a retry after a 500 and a backoff of at least 0.25 s: what is left, in milliseconds
    assert len(retried) == 4 and all(v.endswith(b"m") and 1 <= int(v[:-1]) <= 4750
                                     for v in retried if v != b"5S"), retried
    assert any(v != b"5S" for v in retried)


def test_a_target_that_refused_is_back_once_a_connect_gets_through(launcher, upstreams):
    """The host's workers skip a target that refused a connection for a second, then one
    request probes it. On HTTP/2 upstreams a probe that got through never ended the skip:
    a restarted target got one request a second, for good."""
    good, port = upstreams("good", "ok"), free_port()
    gw = gateway(launcher, [good, SimpleNamespace(port=port)])      # nothing listens there
    assert answers(gw, 4) == [(200, b"good got 0")] * 4                 # refused, retried
    back = upstreams("back", "ok", port=port)
    time.sleep(1.5)                                     # past the skip: the next one probes
    got = answers(gw, 40)
    assert {status for status, _ in got} == {200} and back.requests >= 10, back.requests
    # its connections are counted as an HTTP/1.1 target's are
    metrics = gw.admin_get("/metrics")[1].decode()
    for target in (good, back):
        assert f'gwserver_upstream_connections_opened_total{{target="http://127.0.0.1:' \
               f'{target.port}"}}' in metrics
