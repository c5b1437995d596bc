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

import pytest

from ..conftest import gateway_conf, route
from ..pki import CA
from .test_upload_attack_dec16s import final_answer, h2c_answer_to_a_paused_upload

BIG = 2 << 20           # over request_buffer_size (streamed) and the 413 paths' 1 MiB


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
        answer = final_answer(sock)
        took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 413") and took < 1.5, (answer[:60], took)


def test_an_early_answer_after_an_interim_head_reaches_a_paused_h2c_client(launcher):
    """An h2c client sends 16 KiB of a 2 MiB body and pauses; /hint-late-413 sends a 103
    at once, its 413 0.3 s later. Before: a 408 (a reset) after client_body_timeout (3 s).
    Now the 413 at once."""
    status, took = h2c_answer_to_a_paused_upload(launcher, "/hint-late-413")
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
        answer = final_answer(sock)
        took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408") and 1.2 < took < 2.5, (answer[:60], took)
