"""Attack (helper a38): the HTTP/1.1 upstream head deadline.

1. An answer head the upstream began while the gateway was still sending the body (an early
   413, the upstream no longer reading) was read a byte at a time, each read renewing the
   read timeout: the head deadline read_head keeps did not hold there, and a head dripped a
   byte every read_timeout - 1 ms held the request and its connection for as long as the
   upstream liked. And while such a send waited, anything the upstream sent renewed its
   deadline (blank lines before a head, interim heads without end), not the first 16 whole
   interim heads alone.
2. Controls that held: a head split across many reads within the bound is served; a streamed
   upload slower than read_timeout, answered once it is in, is served (the deadline starts
   when the body is out).
"""
import socket
import threading
import time

from ..conftest import gateway_conf, read_response, route
from .test_edge_security import answer_to_upload


# -- 1. an early answer's head, dripped while the body was going out -----------------------------

def test_an_early_answers_head_dripped_during_the_upload_is_bounded(launcher):
    """/drip-413 stops reading a 64 MiB upload and drips the first 40 bytes of its 413's head
    a byte every 0.1 s (~4 s). Before: answered() read the head with a read timeout (1 s)
    per byte, and the 413 came after ~4 s. Now the head comes whole within the read timeout
    of its first byte, or the request is a 504, as read_head's heads."""
    raw = launcher.raw_upstream()
    gw = launcher.gateway(gateway_conf([route("raw", ["/*rest"], raw.url,
                                              timeouts={"read": 1.0})]))
    answer, took = answer_to_upload(gw.port, b"/drip-413")
    assert answer.startswith(b"HTTP/1.1 504") and took < 3.0, (answer[:100], took)
    assert "did not send its whole head within 1s" in gw.log()
    # an early answer that comes whole is still relayed as it is
    answer, took = answer_to_upload(gw.port, b"/early-413")
    assert answer.startswith(b"HTTP/1.1 413") and took < 3.0, (answer[:100], took)


# -- 2. controls ---------------------------------------------------------------------------------

def test_a_head_split_across_many_reads_within_the_bound_is_served(launcher):
    """/drip-head's head comes in ~30 writes over ~3 s: within a 5 s read timeout, a 200."""
    raw = launcher.raw_upstream()
    gw = launcher.gateway(gateway_conf([route("raw", ["/*rest"], raw.url,
                                              timeouts={"read": 5.0})]))
    started = time.monotonic()
    resp, body = gw.request("GET", "/drip-head")
    assert (resp.status, body) == (200, b"ok") and time.monotonic() - started < 4.5


def test_a_streamed_upload_slower_than_the_read_timeout_is_served(launcher):
    """A 200 KB upload (over request_buffer_size: streamed) sent in 4 pieces over ~1.5 s, a
    read timeout of 0.5 s, and per_try_timeout set and unset: the upstream answers once the
    body is in; the head's deadline starts when the gateway sent it, so both are 200s."""
    raw = launcher.raw_upstream()
    gw = launcher.gateway(gateway_conf([
        route("plain", ["/plain/*rest"], raw.url, timeouts={"read": 0.5}),
        route("per-try", ["/per-try/*rest"], raw.url, timeouts={"read": 0.5},
              retry={"per_try_timeout": 0.5})]))
    piece = b"p" * 50_000

    def upload(path):
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
            sock.sendall(b"POST %s HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n"
                         % (path, 4 * len(piece)))
            for _ in range(4):
                sock.sendall(piece)
                time.sleep(0.4)
            head, body = read_response(sock)
            return head.split(b" ")[1], body

    results = {}
    threads = [threading.Thread(target=lambda p=p: results.update({p: upload(p)}))
               for p in (b"/plain/ok", b"/per-try/ok")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == {b"/plain/ok": (b"200", b"ok"), b"/per-try/ok": (b"200", b"ok")}, results


# -- 1b. what renewed an upload's send deadline --------------------------------------------------

def test_blank_lines_or_endless_interim_heads_during_an_upload_are_bounded(launcher):
    """The upstream stops reading a 64 MiB upload and sends 40 blank lines (/crlf-413) or 40
    103 Early Hints heads (/hints-413), one every 0.1 s, then its 413. Before: whatever it
    sent while the send waited renewed the send's read timeout (0.5 s), blank lines too, and
    the 413 came after ~4 s: either held the upload and its connection for as long as the
    upstream liked. Now only a whole interim head renews it, the first 16 (read_head's and
    HTTP/2's bound): a 504 within the read timeout, or of the 16th head."""
    raw = launcher.raw_upstream()
    gw = launcher.gateway(gateway_conf([route("raw", ["/*rest"], raw.url,
                                              timeouts={"read": 0.5})]))
    crlf, crlf_took = answer_to_upload(gw.port, b"/crlf-413")
    hints, hints_took = answer_to_upload(gw.port, b"/hints-413")
    assert crlf.startswith(b"HTTP/1.1 504") and crlf_took < 1.5, (crlf[:60], crlf_took)
    assert hints.startswith(b"HTTP/1.1 504") and hints_took < 3.2, (hints[:60], hints_took)
