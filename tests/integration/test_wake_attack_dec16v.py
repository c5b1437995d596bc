"""Attack (helper a44): the early-answer wake (3c6135d, ReadableWake).

A streamed body's wait on its client also watches the upstream's socket, until it wakes
once per request. The one wake was spent on whatever made that socket readable first,
answer or not: an interim head (a 103 Early Hints). The upstream's 413 that followed while
the client paused (or waited after the gateway's 100 Continue) was then held until
client_body_timeout and lost for the gateway's own 408, as before 3c6135d (HTTP/1.1 and
h2c alike). Now a wake that brought no answer keeps watching, within what is left of that
same client_body_timeout (a CRLF each second cannot hold a silent client's upload longer).
"""
import socket
import time

import h2.events
import pytest

from ..conftest import gateway_conf, route
from ..h2client import RawH2
from ..pki import CA

BIG = 2 << 20           # over request_buffer_size (streamed) and the 413 paths' 1 MiB


def read_answer_head(sock):
    answer = b""
    while b"\r\n\r\n" not in answer and (piece := sock.recv(65536)):
        answer += piece
    return answer


def upstream_route(launcher, tmp_path, tls):
    if not tls:
        return route("raw", ["/*rest"], launcher.raw_upstream().url)
    cert, key, _ = CA(tmp_path).issue("upstream")
    raw = launcher.raw_upstream("tls_raw_upstream.py", cert, key)
    return {"id": "raw", "paths": ["/*rest"], "upstream": {
        "targets": [{"url": f"https://127.0.0.1:{raw.port}"}], "tls": {"verify": False}}}


@pytest.mark.parametrize("tls", [False, True])
def test_an_early_answer_after_a_no_answer_wake_reaches_a_waiting_client(launcher, tmp_path,
                                                                          tls):
    """The client sends Expect: 100-continue, gets the gateway's 100 Continue and sends
    nothing yet. Plain: /later-hint-413 sends a 103 0.2 s after the head, its 413 0.3 s
    later: before, the wake was spent on the 103, and after client_body_timeout (3 s) the
    gateway's own 408; now the 413 at once. TLS: /late-413's session tickets, sent as its
    handshake ends, are most often read before the first wait begins; under load they
    came after it and took the wake (before: the 408 in 1 run of 2 with -n 2, none of 4
    alone)."""
    gw = launcher.gateway(gateway_conf([upstream_route(launcher, tmp_path, tls)],
                                       server={"client_body_timeout": 3.0}))
    path = b"/late-413" if tls else b"/later-hint-413"
    with socket.create_connection(("127.0.0.1", gw.port), timeout=6) as sock:
        sock.sendall(b"POST %s HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n"
                     b"Expect: 100-continue\r\n\r\n" % (path, BIG))
        started = time.monotonic()
        answer = read_answer_head(sock)
        while answer.startswith(b"HTTP/1.1 1"):
            answer = answer.partition(b"\r\n\r\n")[2]
            if b"\r\n\r\n" not in answer:
                answer += read_answer_head(sock)
        took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 413") and took < 1.5, (answer[:60], took)


def test_an_early_answer_after_an_interim_head_reaches_a_paused_h2c_client(launcher):
    """An h2c client sends 16 KiB of a 2 MiB body and pauses; /hint-late-413 sends a 103
    at once, its 413 0.3 s later. Before: a 408 (a reset) after client_body_timeout (3 s).
    Now the 413 at once."""
    raw = launcher.raw_upstream()
    gw = launcher.gateway(gateway_conf([route("raw", ["/*rest"], raw.url)],
                                       server={"client_body_timeout": 3.0},
                                       http2={"h2c": True}))
    client = RawH2(gw.port, timeout=6)
    try:
        started = time.monotonic()
        sid = client.request("/hint-late-413", "POST", [("content-length", str(BIG))],
                             body=b"x" * 16384, end=False)
        client.pump(lambda c: any(isinstance(e, (h2.events.ResponseReceived,
                                                 h2.events.StreamReset)) and
                                  e.stream_id == sid for e in c.events), timeout=5)
        took = time.monotonic() - started
        status = next((dict(e.headers)[b":status"] for e in client.events
                       if isinstance(e, h2.events.ResponseReceived) and e.stream_id == sid),
                      None)
    finally:
        client.close()
    assert status == b"413" and took < 1.5, (status, took)


def test_a_silent_client_is_still_cut_at_client_body_timeout_by_an_upstream_crlf_each_tick(
        launcher):
    """(Held before and after.) /crlf-413 sends a CRLF every 0.1 s (40 of them), its 413
    after ~4 s; the client waits after 100 Continue and sends nothing. The wakes keep
    watching within one client_body_timeout (1.5 s): the gateway's 408 by then, not held
    for each CRLF's fresh wait."""
    raw = launcher.raw_upstream()
    gw = launcher.gateway(gateway_conf([route("raw", ["/*rest"], raw.url)],
                                       server={"client_body_timeout": 1.5}))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=6) as sock:
        sock.sendall(b"POST /crlf-413 HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n"
                     b"Expect: 100-continue\r\n\r\n" % BIG)
        started = time.monotonic()
        answer = read_answer_head(sock)
        if answer.startswith(b"HTTP/1.1 100"):
            answer = answer.partition(b"\r\n\r\n")[2]
            if b"\r\n\r\n" not in answer:
                answer += read_answer_head(sock)
        took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408") and 1.2 < took < 2.5, (answer[:60], took)
