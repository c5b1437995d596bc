"""Review of five commits (Dec 11 s): 510d953 (unix listeners 0660), cb51eec (reload puts the
previous conf back), 24f339c (pipelined requests before malformed bytes are served, then the
400), f53d6b5 (redirect no_host; the gateway's own 205), 8699c0a (HTTP/2 drain: FIN, read on).

Defects found (each test failed before its fix):

1. (A hole 24f339c left, older than it.) The requests before malformed bytes were served
   first only when the bytes came in the read that brought those requests' heads. A request
   whose body ended in a later read (read_body: buffered, or streamed to the upstream) with
   malformed bytes after it was answered the next request's 400 with keep-alive, and that
   next request, whose own head or chunked body broke, was served: its head (and a chunk)
   forwarded to the upstream.
2. 24f339c's deferred 400 was never logged when the answer before it ended the connection
   (a 5xx, a draining worker, the client gone): the malformed request, logged before,
   left no trace.
3. 8699c0a's FIN after a draining HTTP/2 connection's last answer made any frame the gateway
   writes afterwards fail: a PING from a client still reading that answer (grpc-go's BDP
   pings, a keepalive ping) was answered into the shut socket, the write failed, the
   connection closed, and the client's next WINDOW_UPDATE met the closed socket: the kernel's
   reset threw the answer's tail away, as before 8699c0a.
"""
import socket
import time

import pytest

from ..conftest import free_port, gateway_conf, route, wait_until
from .test_drill_dec11d import SlowReader, download_across_a_reload
from .test_pipeline_dec11g import read_all, statuses


@pytest.mark.parametrize("body_size", [5, 4096])      # buffered; streamed to the upstream
@pytest.mark.parametrize("bad", [
    # a head that breaks once it is whole (check_target: two Hosts)
    b"GET /smuggled HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    # a head that is fine and a chunked body that breaks after a first chunk
    b"POST /smuggled HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"800\r\n" + b"x" * 2048 + b"\r\nzz\r\n",
], ids=["two-hosts", "bad-chunk"])
def test_a_body_that_ends_before_malformed_bytes_is_served_and_they_are_not(
        launcher, h1_up, body_size, bad):
    """The request's body comes in a read after its head, with the malformed bytes after it:
    the request is served, then the 400; what the bytes began never reaches the upstream."""
    gw = launcher.gateway(gateway_conf([route("e", ["/*rest"], h1_up.url)],
                                       server={"request_buffer_size": 1024}))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=4) as sock:
        sock.sendall(b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % body_size)
        time.sleep(0.2)     # (the head is read alone: the body comes in a later read)
        sock.sendall(b"b" * body_size + bad)
        data = read_all(sock)
    assert statuses(data) == [200, 400], data[:800]
    assert [head.split(b"\r\n")[0] for head in h1_up.heads] == [b"POST /a HTTP/1.1"]
    wait_until(lambda: '"status":400,"rejected"' in gw.log(), timeout=5)


def test_malformed_bytes_after_an_answer_that_closes_are_still_logged(launcher, h1_up):
    """A 502 ends the connection: the bytes after its request get no 400, but their line."""
    dead = f"http://127.0.0.1:{free_port()}"
    gw = launcher.gateway(gateway_conf([route("d", ["/dead"], dead),
                                        route("e", ["/*rest"], h1_up.url)]))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=4) as sock:
        sock.sendall(b"GET /dead HTTP/1.1\r\nHost: h\r\n\r\nGET\x01 / HTTP/1.1\r\nHost: h\r\n\r\n")
        data = read_all(sock)
    assert statuses(data) == [502], data[:800]
    wait_until(lambda: '"path":"/dead"' in gw.log(), timeout=5)
    wait_until(lambda: '"status":400,"rejected":"malformed request' in gw.log(), timeout=3)


PING = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + b"bdp-ping"


class PingingSlowReader(SlowReader):
    """A slow reader that sends a PING every 32 reads, as grpc-go's BDP estimator does while
    it reads DATA (and keepalive pings go)."""

    reads = 0

    def recv(self, size):
        self.reads += 1
        if self.reads % 32 == 0:
            try:
                self.sock.sendall(PING)
            except OSError:
                pass
        return super().recv(size)


@pytest.mark.parametrize("tls", [False, True])
def test_a_ping_while_a_drained_answer_is_read_does_not_cut_its_tail(launcher, upstream,
                                                                     tmp_path, tls):
    download_across_a_reload(launcher, upstream, tmp_path, tls, 6_000_000, PingingSlowReader)
