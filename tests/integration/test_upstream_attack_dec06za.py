"""Attack pass dec06za: a buggy or hostile HTTP/1.1 upstream (exact bytes from a scripted
loopback upstream, against a real gateway).

Defects found and fixed, each pinned below (each test seen failing before its fix):

1. ``upstream_defaults.max_response_head`` let a head 1 or 2 bytes over it through when the
   head came in one read (its blank line was not counted), and refused the same head when its
   last bytes came in a read of their own: the limit depended on how the bytes were split.
2. A response ``Content-Length`` over 2^63 - 1 (llhttp takes up to 2^64 - 1, 20 digits) was
   relayed: an HTTP/2 client (curl/nghttp2) reset the stream while the access log said 200,
   and clients that stop at 63 bits (Go, nginx) could not read the answer. The gateway
   refuses such a request (a 400); such an answer is a 502 now, as nginx and Go make it.
   An HTTP/2 upstream's content-length (h2 takes any number) was relayed the same way.
3. The active health check read answers within 64 KiB whatever max_response_head said: with
   the limit raised, a target whose answers the proxy served was taken out ("answer head
   over 65536 bytes"), and with it lowered, a target the proxy answered 502 for passed.

Held (tried against a real gateway and already handled, so no test here): CL with TE, two
Content-Lengths, "+5", "5, 5", chunk sizes with 0x or 17 hex digits, obs-fold, bare CR, NUL,
a space before the colon, HTTP/2.0, statuses 099 and 600 (502, connection closed); chunk
sizes with leading zeros or extensions, trailers, "HTTP/1.1 200" without a reason (relayed);
bytes after a body, after a 204 or a 304, a HEAD answered with a body (never reused as the
next answer); 1xx floods (capped by the head limit), split 1xx, an unasked 101 (502); an
early 413 to a 10 MiB upload whose upstream then closes at once (a reset: the 413 still
reaches the client, streamed and held bodies alike).
"""
import http.client
import socket

import h2.events
import pytest

from ..conftest import gateway_conf, route, wait_until
from ..h2_upstreams import EventH2cUpstream
from .test_attack_pass_dec03d import ScriptedHttp1, exchange
from .test_health import FAST_CHECK, target_view

ACCESS = {"access_fields": ["status", "upstream_status", "error", "path"]}


def get(port, path):
    return exchange(port, b"GET %s HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n" % path)


def head_of(size, interim=b""):
    """A 200 answer whose head (``interim`` heads and the blank line included) is ``size``
    bytes, its body "ok"."""
    head = interim + b"HTTP/1.1 200 OK\r\nX-Pad: \r\nContent-Length: 2\r\n\r\n"
    head = head.replace(b"X-Pad: ", b"X-Pad: " + b"p" * (size - len(head)))
    assert len(head) == size
    return head + b"ok"


@pytest.fixture
def scripted():
    ups = []

    def make(script):
        up = ScriptedHttp1({path: (lambda answer: lambda n: answer)(answer)
                            for path, answer in script.items()})
        ups.append(up)
        return up
    yield make
    for up in ups:
        up.close()


# -- 1. max_response_head counts the whole head -----------------------------------------------

def test_a_response_head_one_byte_over_max_response_head_is_a_502(launcher, scripted):
    hint = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
    up = scripted({b"/1024": head_of(1024), b"/1025": head_of(1025), b"/1026": head_of(1026),
                   b"/hint-1024": head_of(1024, hint), b"/hint-1025": head_of(1025, hint)})
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], up.url)], log=ACCESS,
                                       upstream_defaults={"max_response_head": 1024}))
    statuses = {path: get(gw.port, path).split(b" ", 2)[1]
                for path in (b"/1024", b"/1025", b"/1026", b"/hint-1024", b"/hint-1025")}
    # was: 200 for /1025, /1026 and /hint-1025 (a head of 1027 bytes was the first refused)
    assert statuses == {b"/1024": b"200", b"/1025": b"502", b"/1026": b"502",
                        b"/hint-1024": b"200", b"/hint-1025": b"502"}, statuses
    assert "upstream response head over 1024 bytes" in gw.log()


# -- 2. a Content-Length over 2^63 - 1 -----------------------------------------------------------

@pytest.mark.parametrize("length", [b"9223372036854775808", b"18446744073709551615",
                                    b"000" + b"18446744073709551615"])
def test_a_response_content_length_over_2_63_minus_1_is_a_502(launcher, scripted, length):
    up = scripted({b"/big": b"HTTP/1.1 200 OK\r\nContent-Length: %s\r\n\r\nhello" % length,
                   b"/max": b"HTTP/1.1 200 OK\r\nContent-Length: 9223372036854775807\r\n\r\n"
                            b"hello",
                   b"/zeros": b"HTTP/1.1 200 OK\r\nContent-Length: %s5\r\n\r\nhello"
                              % (b"0" * 5000)})
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], up.url, timeouts={"read": 1})],
                                       log=ACCESS))
    answer = get(gw.port, b"/big")
    # was: "HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615 ...", then a cut body
    assert answer.startswith(b"HTTP/1.1 502 "), answer[:300]
    assert length not in answer
    assert "over 2^63 - 1" in gw.log()
    # 2^63 - 1 itself is taken (nginx and Go stop there too), and so are zeros before a
    # small length, however many (Python's int() refuses over 4300 digits)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(b"GET /max HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head and (piece := sock.recv(65536)):
            head += piece
    assert head.startswith(b"HTTP/1.1 200 ") and \
        b"Content-Length: 9223372036854775807\r\n" in head, head[:300]
    answer = get(gw.port, b"/zeros")
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"\r\n\r\nhello"), \
        answer[:300]


class HugeLengthH2(EventH2cUpstream):
    """An h2c upstream answering 200 with content-length 2^64 - 1 and 5 bytes of body."""

    def on_event(self, conn, sock, event):
        if isinstance(event, h2.events.RequestReceived):
            conn.send_headers(event.stream_id, [(b":status", b"200"),
                                                (b"content-length", b"18446744073709551615")])
            conn.send_data(event.stream_id, b"hello")


def test_an_h2_upstreams_content_length_over_2_63_minus_1_is_a_502(launcher):
    up = HugeLengthH2()
    try:
        gw = launcher.gateway(gateway_conf([{
            "id": "r", "paths": ["/*rest"], "timeouts": {"read": 1},
            "upstream": {"targets": [{"url": f"http://127.0.0.1:{up.port}"}],
                         "protocol": "h2"}}], log=ACCESS))
        answer = get(gw.port, b"/big")
        # was: 200 with content-length: 18446744073709551615, cut after the read timeout
        assert answer.startswith(b"HTTP/1.1 502 "), answer[:300]
        assert "over 2^63 - 1" in gw.log()
    finally:
        up.close()


# -- 3. the active check holds answers to the proxy's head limit ---------------------------------

def big_head(size):
    """A 200 whose head is about ``size`` bytes, in lines of 100."""
    return b"HTTP/1.1 200 OK\r\n" + (b"X-Big: " + b"b" * 91 + b"\r\n") * (size // 100) + \
        b"Content-Length: 2\r\n\r\nok"


def test_the_health_check_reads_heads_within_max_response_head(launcher, scripted):
    up = scripted({b"/70k": big_head(70_000), b"/200k": big_head(200_000)})
    checked = {"targets": [{"url": up.url}]}
    gw = launcher.gateway(gateway_conf(
        [{"id": "a", "paths": ["/70k"], "upstream": "a"},
         {"id": "b", "paths": ["/200k"], "upstream": "b"}],
        upstream_defaults={"max_response_head": 131072},
        upstreams={"a": {**checked, "health_check": {**FAST_CHECK, "path": "/70k"}},
                   "b": {**checked, "health_check": {**FAST_CHECK, "path": "/200k"}}}))
    assert get(gw.port, b"/70k").startswith(b"HTTP/1.1 200 ")      # the proxy serves it
    # b's head is over the limit: its check fails, and says the limit (was: 65536)
    wait_until(lambda: target_view(gw, up.url, "b")["health"] == "unhealthy", timeout=10)
    assert target_view(gw, up.url, "b")["last_error"] == "answer head over 131072 bytes"
    # a's check ran as long: it passes (was: unhealthy, "answer head over 65536 bytes")
    assert target_view(gw, up.url, "a")["health"] == "healthy", target_view(gw, up.url, "a")


class OddLengthH2(EventH2cUpstream):
    """An h2c upstream answering 200 with a content-length Python's int() reads: "1_0"."""

    def on_event(self, conn, sock, event):
        if isinstance(event, h2.events.RequestReceived):
            conn.send_headers(event.stream_id, [(b":status", b"200"),
                                                (b"content-length", b"1_0")], end_stream=True)


def test_an_h2_upstreams_content_length_of_other_than_digits_is_a_502(launcher):
    """(the review of this pass) h2 takes a content-length int() reads: a HEAD's answer went
    to an HTTP/1.1 client as "Content-Length: 1_0", which no HTTP/1.1 parser takes."""
    up = OddLengthH2()
    try:
        gw = launcher.gateway(gateway_conf([{
            "id": "r", "paths": ["/*rest"], "timeouts": {"read": 1},
            "upstream": {"targets": [{"url": f"http://127.0.0.1:{up.port}"}],
                         "protocol": "h2"}}], log=ACCESS))
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
        conn.request("HEAD", "/odd")
        resp = conn.getresponse()
        conn.close()
        assert resp.status == 502 and resp.getheader("Content-Length") != "1_0", \
            (resp.status, resp.getheaders())
    finally:
        up.close()
