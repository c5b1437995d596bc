"""Attack pass of 2026-12-05 (a helper's): retries, timeouts and request bodies on the way to
upstreams, in front of broken or slow upstreams. Tests named test_held_* pin behaviour that was
tried and held; each of the others showed a defect, fixed with it:
- a streamed body refused by one HTTP/2 target went on to the next cut short, with a 200
  (h2proxy: the body so far goes with the retry, or a 502 past REPLAY_LIMIT);
- a POST was sent twice on a dead pooled connection when the policy named POST for a status
  only, and a GET was not retried there when the policy's methods left GET out (proxy: the
  retry on a fresh connection follows idempotence, as docs/health.md says);
- a client pausing its upload to an HTTP/2 upstream got a 504 counted as the upstream's
  timeout, and two of them opened a healthy upstream's breaker (h2client: the read timeout
  does not run while the body waits for the client);
- an early answer to a large held body was lost: a 504 after the read timeout (proxy: past
  ONE_SEND a held body looks for an answer while its send waits).
"""
import json
import socket
import time

import h2.errors
import h2.events
import h2.settings
import pytest

from ..conftest import gateway_conf
from ..h2_upstreams import EventH2cUpstream
from .test_attack_pass_dec03d import OK, ScriptedHttp1 as CountingHttp1, exchange
from .test_attack_pass_dec04b import read_all
from .test_h2_upstream_retries import upstreams  # noqa: F401 (a fixture)


# -- helpers ---------------------------------------------------------------------------------

def status_of(answer):
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else None


class Blackhole:
    """A loopback port whose SYNs are dropped (a full accept queue): a connect to it times
    out, as to a dead host behind a firewall (the commonest outage)."""

    def __init__(self):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.fill = []
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", self.port))
            except BlockingIOError:
                pass
            self.fill.append(s)
        time.sleep(0.2)
        # make sure: a blocking connect now times out
        probe = socket.socket()
        probe.settimeout(0.3)
        try:
            probe.connect(("127.0.0.1", self.port))
            raise AssertionError("the blackhole accepted a connection")
        except socket.timeout:
            pass
        finally:
            probe.close()

    def close(self):
        for s in self.fill:
            s.close()
        self.listener.close()


@pytest.fixture
def blackhole():
    hole = Blackhole()
    yield hole
    hole.close()


def one_route(targets, protocol="http1", **extra):
    upstream = {"targets": [{"url": url} for url in targets]}
    if protocol != "http1":
        upstream["protocol"] = protocol
    upstream.update(extra.pop("upstream_extra", {}))
    return {"id": "r", "paths": ["/*rest"], "upstream": upstream, **extra}


ACCESS = {"access_fields": ["time", "status", "upstream", "attempts", "error", "method",
                            "path"]}


# -- connect timeouts: "no connection could be made" -----------------------------------------

@pytest.mark.parametrize("protocol", ["http1", "h2"])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_held_a_connect_that_times_out_is_retried_on_another_target(launcher, upstream, upstreams,
                                                                    blackhole, protocol, method):
    """A target whose SYNs are dropped: the connect times out, nothing was sent, so the
    request may go to the other target (docs/routes.md: `connect`, no connection could be
    made, retried for any method; the default policy), over HTTP/1.1 and HTTP/2 alike."""
    good = upstream.url if protocol == "http1" else \
        f"http://127.0.0.1:{upstreams('good', 'ok').port}"
    gw = launcher.gateway(gateway_conf(
        [one_route([blackhole.url, good], protocol=protocol, timeouts={"connect": 0.3},
                   retry={"on": ["connect"], "attempts": 1})],
        log=ACCESS, upstream_defaults={"retry_budget_min_per_second": 100}))
    got = [gw.request(method, "/echo", body=b"payload" if method == "POST" else None)[0].status
           for _ in range(6)]
    assert got == [200] * 6, (got, gw.log()[-1500:])


def test_held_connect_timeouts_count_for_passive_ejection(launcher, upstream, blackhole):
    """docs/health.md: passive checks count connect errors and timeouts. A target whose
    connects time out must be ejected after consecutive_failures of them, and then cost
    nothing: here each request that goes to it waits the connect timeout."""
    gw = launcher.gateway(gateway_conf(
        [one_route([blackhole.url, upstream.url], timeouts={"connect": 0.3},
                   upstream_extra={"passive": {"consecutive_failures": 2, "eject_for": 60,
                                               "max_ejected_percent": 50}})],
        log=ACCESS))
    for _ in range(8):
        gw.request("GET", "/echo")
    time.sleep(0.3)         # the workers' tick reads ejections.json
    started = time.monotonic()
    got = [gw.request("GET", "/echo")[0].status for _ in range(6)]
    took = time.monotonic() - started
    assert got == [200] * 6 and took < 1.0, (got, took, gw.log()[-1500:])


# -- a slow client is not the upstream's failure ----------------------------------------------

def slow_chunked_upload(port, path, first=70000, pause=2.0):
    """A chunked upload over request_buffer_size (streamed), paused ``pause`` seconds after
    its first chunk (well within client_body_timeout, 10 s); -> the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(b"POST %s HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n"
                     b"Connection: close\r\n\r\n%x\r\n%s\r\n" % (path, first, b"a" * first))
        time.sleep(pause)
        sock.sendall(b"5\r\nhello\r\n0\r\n\r\n")
        return read_all(sock)


def test_held_a_client_pausing_its_upload_is_waited_for_by_an_http1_upstream(launcher,
                                                                              upstream):
    """HTTP/1.1 upstream, read timeout 1 s, a client pausing 2 s mid-upload: served (the
    head wait starts once the body is sent; the pause is the client's, within
    client_body_timeout)."""
    gw = launcher.gateway(gateway_conf([one_route([upstream.url], timeouts={"read": 1.0})],
                                       log=ACCESS))
    answer = slow_chunked_upload(gw.port, b"/upload")
    assert status_of(answer) == 200 and b'"size": 70005' in answer, answer[:400]


def test_a_client_pausing_its_upload_is_no_upstream_timeout_on_h2(launcher, upstreams):
    """The same upload to an HTTP/2 upstream got a 504 "did not answer within 1s": the
    upstream was waiting for the client's body, yet the gateway blamed it (a timeout, which
    passive checks and breakers count against the upstream). A slow client, within
    client_body_timeout, is served as over HTTP/1.1."""
    good = upstreams("good", "ok")
    gw = launcher.gateway(gateway_conf(
        [one_route([f"http://127.0.0.1:{good.port}"], protocol="h2", timeouts={"read": 1.0})],
        log=ACCESS))
    answer = slow_chunked_upload(gw.port, b"/upload")
    assert status_of(answer) == 200 and answer.endswith(b"good got 70005"), \
        (answer[:400], gw.log()[-1500:])


def test_a_slow_client_cannot_trip_the_breaker_of_a_healthy_h2_upstream(launcher,
                                                                        upstreams):
    """What the 504 above costs: the breaker counts it as the upstream's timeout. Two clients
    pausing their uploads (within client_body_timeout) open the route's breaker, and every
    other client gets 503 circuit_open from a healthy upstream."""
    good = upstreams("good", "ok")
    gw = launcher.gateway(gateway_conf(
        [one_route([f"http://127.0.0.1:{good.port}"], protocol="h2", timeouts={"read": 1.0},
                   plugins={"breaker": {"min_requests": 2, "error_rate": 0.5,
                                        "open_for": 30, "max_open_for": 30}})],
        log=ACCESS))
    for _ in range(2):
        slow_chunked_upload(gw.port, b"/upload")
    resp, body = gw.request("GET", "/call")
    assert resp.status == 200, (resp.status, body)


# -- a pooled connection found dead after the request went out --------------------------------

GET_X = b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
POST_X = b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nConnection: close\r\n\r\ndata"


@pytest.mark.parametrize("request_bytes, sent, status", [(POST_X, 1, b"502"), (GET_X, 2, b"200")])
def test_a_dead_pooled_connection_is_retried_for_idempotent_requests_only(launcher,
                                                                          request_bytes, sent,
                                                                          status):
    """The route lets POST be retried on a 503 only (methods = ["POST"], on = ["503"]). A
    reused keep-alive connection that the upstream closes without a byte once it took the
    request (it crashed mid-work, or timed the connection out as the request came):
    - a POST went again on a fresh connection, so the upstream got it twice: it may have
      acted, and "reset" is not in the policy; it is a 502 now;
    - a GET got a 502 (the retry followed the policy's methods), where docs/health.md says
      "retried once on a fresh connection for idempotent requests, whatever the policy"."""
    up = CountingHttp1({b"/x": lambda n: None if n == 2 else OK})
    try:
        gw = launcher.gateway(gateway_conf(
            [one_route([up.url], retry={"on": ["503"], "methods": ["POST"]})], log=ACCESS))
        assert exchange(gw.port, GET_X).endswith(b"ok")     # a pooled connection
        del up.lines[:]
        answer = exchange(gw.port, request_bytes)
        assert up.lines == [request_bytes.partition(b"\r\n")[0]] * sent, \
            (up.lines, answer[:200])
        assert answer.startswith(b"HTTP/1.1 " + status), answer[:200]
    finally:
        up.close()


# -- an early answer to a held body --------------------------------------------------------

def test_an_early_answer_to_a_large_held_body_reaches_the_client(launcher):
    """server.request_buffer_size raised to 64 MiB (a documented setting): a 40 MiB POST is
    held whole, then sent. The upstream answers 413 as soon as it has the head and stops
    reading (raw_upstream /early-413). A streamed body's send looks for such an answer
    (send_unless_answered) and relays it; the held body's send does not: the send blocks
    until the read timeout (a 504), or until the upstream closes (a 502 "connection failed
    before an answer"), and the upstream's 413 never reaches the client. An HTTP/2
    upstream's early answer to a held body is relayed
    (test_h2_upstream_retries.test_an_early_answer_to_a_held_body_reaches_the_client)."""
    raw = launcher.raw_upstream()
    gw = launcher.gateway(gateway_conf(
        [one_route([f"http://127.0.0.1:{raw.port}"], timeouts={"read": 3.0})],
        server={"request_buffer_size": 64 << 20}, log=ACCESS))
    body = b"x" * (40 << 20)
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=20) as sock:
        sock.sendall(b"POST /early-413 HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n" % len(body) + body)
        answer = read_all(sock)
    took = time.monotonic() - started
    assert status_of(answer) == 413 and answer.endswith(b"too large"), \
        (answer[:300], took, gw.log()[-1200:])
    assert took < 2.5, took


# -- held: replays are byte-exact, mixed protocols fail cleanly ------------------------------

@pytest.mark.parametrize("expect", [False, True])
def test_held_a_chunked_post_is_replayed_byte_exact_after_a_500(launcher, upstream, expect):
    """A chunked POST (held: under request_buffer_size), sent slowly in odd pieces, maybe
    with Expect: 100-continue; the first target answers 500 and the route retries POST on
    500: the second target gets the same bytes (size and sha256)."""
    import hashlib
    import urllib.request
    bad = launcher.upstream("bad")
    urllib.request.urlopen(f"{bad.url}/control?fail=1", timeout=5).read()
    gw = launcher.gateway(gateway_conf(
        [one_route([bad.url, upstream.url], retry={"on": ["500"], "methods": ["POST"],
                                                   "attempts": 1})],
        log=ACCESS, upstream_defaults={"retry_budget_min_per_second": 100}))
    pieces = [bytes(range(256)) * 7, b"\r\n0\r\n", b"z" * 40000, b"\x00" * 3]
    body = b"".join(pieces)
    for _ in range(4):
        with socket.create_connection(("127.0.0.1", gw.port), timeout=15) as sock:
            sock.sendall(b"POST /upload HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n"
                         + (b"Expect: 100-continue\r\n" if expect else b"")
                         + b"Connection: close\r\n\r\n")
            if expect:
                assert sock.recv(100).startswith(b"HTTP/1.1 100 ")
            for piece in pieces:
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                time.sleep(0.05)
            sock.sendall(b"0\r\nX-Trailer: t\r\n\r\n")
            answer = read_all(sock)
        assert status_of(answer) == 200, answer[:300]
        got = json.loads(answer.partition(b"\r\n\r\n")[2])
        assert got == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}


def test_held_an_http1_only_target_in_an_h2_upstream_fails_cleanly(launcher, upstream,
                                                                   upstreams):
    """protocol = "h2" with one target that speaks HTTP/1.1 only, beside an h2 one: GETs are
    retried on the h2 target with reset in the policy; a POST is never sent twice; every
    answer is a 200 or a clean 502, the worker stays up."""
    good = upstreams("good", "ok")
    targets = [upstream.url, f"http://127.0.0.1:{good.port}"]
    gw = launcher.gateway(gateway_conf(
        [one_route(targets, protocol="h2", retry={"on": ["connect", "reset"]})],
        log=ACCESS, upstream_defaults={"retry_budget_min_per_second": 100}))
    pids = gw.worker_pids()
    assert [gw.request("GET", "/x")[0].status for _ in range(6)] == [200] * 6
    posts = [gw.request("POST", "/x", body=b"data")[0].status for _ in range(6)]
    assert set(posts) <= {200, 502}, posts
    assert upstream.stats()["requests"] == 0        # it never took anything as a request
    assert good.requests == 6 + posts.count(200)
    assert gw.worker_pids() == pids


# -- a refused HTTP/2 stream's streamed body, sent on to another target ----------------------

class LateRefusingH2(EventH2cUpstream):
    """h2c with wide windows (1 MiB a stream, 16 MiB the connection) that reads each
    request's body and, once ``after`` bytes of it came, refuses the stream
    (RST_STREAM REFUSED_STREAM: RFC 9113 8.7 lets a server do so until it processes it: a
    server shedding load). ``received`` counts the body bytes it got."""

    def __init__(self, after):
        self.after, self.received, self.refused = after, 0, 0
        self.got = {}
        super().__init__()

    def on_event(self, conn, sock, event):
        if not getattr(conn, "widened", False):
            conn.widened = True
            conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
            conn.increment_flow_control_window(16 << 20)
        if isinstance(event, h2.events.RequestReceived):
            self.got[event.stream_id] = 0
        elif isinstance(event, h2.events.DataReceived):
            conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if event.stream_id in self.got:
                self.got[event.stream_id] += len(event.data)
                self.received += len(event.data)
                if self.got[event.stream_id] >= self.after:
                    del self.got[event.stream_id]
                    self.refused += 1
                    conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
        elif isinstance(event, h2.events.StreamEnded) and event.stream_id in self.got:
            n = self.got.pop(event.stream_id)
            body = b"late got %d" % n
            conn.send_headers(event.stream_id, [(b":status", b"200"),
                                                (b"content-length", b"%d" % len(body))])
            conn.send_data(event.stream_id, body, end_stream=True)


@pytest.mark.parametrize("size", [200_000, 600_000])
def test_a_streamed_body_refused_by_one_h2_target_reaches_the_next_whole_or_not_at_all(
        launcher, upstreams, size):
    """Target A refuses each stream once 100,000 bytes of its body came (REFUSED_STREAM:
    not processed, RFC 9113 8.7), target B is healthy. A chunked POST over
    request_buffer_size streams: the sender greenlet passes the client's pieces to A as they
    come. Refused past REPLAY_LIMIT, the request goes on to B as after a failed connect (the
    default policy), but with only the body the gateway had before the first try: what the
    sender had taken from the client for A is lost. B gets a body cut in the middle and
    answers 200: the client's upload is silently truncated. B must get every byte, or the
    client a 502 (as test_h2_upstream_streams says for a single target)."""
    refusing = LateRefusingH2(after=100_000)
    good = upstreams("good", "ok")
    try:
        gw = launcher.gateway(gateway_conf(
            [one_route([f"http://127.0.0.1:{refusing.port}",
                        f"http://127.0.0.1:{good.port}"], protocol="h2")],
            log=ACCESS, upstream_defaults={"retry_budget_min_per_second": 100}))
        results = []
        piece = b"p" * 20000
        n = size // len(piece)
        for _ in range(4):
            body = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(n)) + \
                b"0\r\n\r\n"
            with socket.create_connection(("127.0.0.1", gw.port), timeout=15) as sock:
                sock.sendall(b"POST /up HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n"
                             b"Connection: close\r\n\r\n" + body)
                answer = read_all(sock)
            results.append((status_of(answer), answer.rpartition(b"\r\n\r\n")[2][-40:]))
        assert refusing.refused >= 1
        expected = b"good got %d" % (n * len(piece))
        assert all(status == 502 or tail == expected for status, tail in results), \
            (results, expected)
    finally:
        refusing.close()
