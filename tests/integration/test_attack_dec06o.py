"""Attack pass of 2026-12-06 (o): the upstream side, as a broken upstream sees it. Each test
runs a real gateway in front of a small loopback upstream (HTTP/1.1 or h2c) that writes exactly
the bytes or frames it scripts, and checks what the client gets, and how fast.
"""
import socket
import time
import urllib.request

from hyperframe.frame import GoAwayFrame

from ..conftest import gateway_conf, wait_until
from .test_attack_pass_dec03 import RecordingHttp1
from .test_attack_pass_dec04b import (get, h2_gateway, h2_scripts,  # noqa: F401 (a fixture)
                                      read_one, status_of)


def goaway(sid, code):
    frame = GoAwayFrame(0)
    frame.last_stream_id, frame.error_code = sid, code
    return frame.serialize()


# -- (a) an HTTP/2 upstream's GOAWAY ------------------------------------------------------------

def test_h2_goaway_with_an_error_ends_the_stream_it_names_at_once(launcher, h2_scripts):
    """GOAWAY(INTERNAL_ERROR) naming the in-flight stream as the last one taken, then nothing
    (the socket left open, as a wedged upstream leaves it): docs/http2.md says a GOAWAY with
    an error code ends the connection's other streams too; RFC 9113 5.4.1 has the upstream
    close the connection after it. The client gets a 502 at once, not a 504 after the read
    timeout; the next request goes on a new connection and is served."""
    def script(link, conn, sid):
        with link.lock:
            link.raw(goaway(sid, 2))        # INTERNAL_ERROR
        time.sleep(8)
    up = h2_scripts({b"/g": script})
    gw = h2_gateway(launcher, up, {"timeouts": {"read": 4.0}})
    answer, took = get(gw.port, b"/g")
    assert status_of(answer) == 502 and took < 2, (answer[:200], took)
    answer, _ = get(gw.port, b"/ok")
    assert status_of(answer) == 200 and up.connections == 2, (answer[:200], up.connections)


# -- (b) a reused HTTP/1.1 connection found dead -----------------------------------------------

class Named(RecordingHttp1):
    """Answers 200 with its name; ``close_second``: closes a connection unanswered when its
    second request comes (a keep-alive timer firing as the request arrives)."""

    def __init__(self, name, close_second=False):
        self.name, self.close_second = name, close_second
        super().__init__()

    def answer(self, head, count):
        if self.close_second and count == 2:
            return None
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(self.name),
                                                                    self.name)


def test_h1_a_reused_connection_found_dead_goes_again_to_the_same_target(launcher):
    """Round robin over a and b, each with a pooled connection. a's closes unanswered as the
    third request (a's turn again) arrives on it: that request goes again on a fresh
    connection to a (urllib3's and nginx's behaviour for a cached connection), not to b,
    whose healthy pooled connection the fresh connection meant for a's pool was closing."""
    a, b = Named(b"a", close_second=True), Named(b"b")
    try:
        gw = launcher.gateway(gateway_conf([{
            "id": "r", "paths": ["/*rest"],
            "upstream": {"targets": [{"url": a.url}, {"url": b.url}]}}]))
        bodies = []
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
            for _ in range(3):
                sock.sendall(b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n")
                head, body = read_one(sock)
                assert head.startswith(b"HTTP/1.1 200"), head
                bodies.append(body)
        assert bodies == [b"a", b"b", b"a"], bodies
        assert (len(a.conns), len(b.conns)) == (2, 1), (len(a.conns), len(b.conns))
    finally:
        a.close()
        b.close()


# -- (c) a retry given up in its backoff ----------------------------------------------------------

def test_a_retry_whose_client_left_in_its_backoff_is_not_counted_as_made(launcher):
    """The answer is a 500 the policy retries after a backoff of over a second; the client
    hangs up during that backoff. No retry is made (the upstream gets one request), so
    gwserver_upstream_retries_total{outcome="retried"} must not count one, nor the budget."""
    bad = launcher.upstream("bad")
    urllib.request.urlopen(f"{bad.url}/control?fail=1", timeout=5).read()
    gw = launcher.gateway(gateway_conf([{
        "id": "r", "paths": ["/*rest"],
        "retry": {"on": ["500"], "attempts": 1, "backoff": 2.0},
        "upstream": {"targets": [{"url": bad.url}]}}]))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        wait_until(lambda: bad.stats()["requests"] == 1, timeout=5)
        time.sleep(0.2)
    time.sleep(3.2)         # the backoff (1 to 3 s) is over: a retry would have gone out
    assert bad.stats()["requests"] == 1
    metrics = gw.admin_get("/metrics")[1].decode()
    assert 'gwserver_upstream_retries_total{outcome="retried",upstream="r.upstream"} 1' \
        not in metrics, [line for line in metrics.splitlines() if "retries_total" in line]
