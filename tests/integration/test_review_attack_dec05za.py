"""Review of 4a96e1e (etcd sync: a quiet prefix keeps its position; identity() read within the
prefix) and of 5f4a26f (slot reclaim: an HTTP/1.1 first request come but unread is not
closed over), as an attacker (helper u10). Each test failed on 9a2da0c.

1. Slowloris against worker_connections. worker_connections plain clients that each sent
   one byte of a request head (``G``) and stalled were neither idle (their head had begun)
   nor body readers (``min_body_rate``): every slot was held for ``header_timeout`` (10 s),
   and again at each reconnect, while newcomers waited in the listen queue, told nothing,
   and ``/-/healthz`` answered from another worker. Not a regression of 5f4a26f: 4a96e1e
   locked the newcomer out just as long (3.6 s of a 4 s header_timeout, on both). With
   every slot taken and none idle, the connection whose head has been coming longest, for
   a second or more, now gets a 408 and is closed (server/runtime.py close_oldest_head), a
   head begun behind a pipelined request too; a slow head is never cut while there is room.
"""
import socket
import time

import pytest

from ..conftest import gateway_conf, read_response, route
from .test_http2_hardening import first_served


def stalled_heads(port, count, first=b"G"):
    """``count`` connections that sent ``first`` of a request head, then nothing."""
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(first)
        socks.append(sock)
    return socks


PIPELINED = b"GET /x HTTP/1.1\r\nHost: h\r\n\r\nG"        # answered, then a head begun


@pytest.mark.parametrize("first", [b"G", PIPELINED], ids=["first", "pipelined"])
def test_heads_stalled_in_every_slot_give_way_to_a_newcomer(launcher, upstream, first):
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)],
                                       server={"worker_connections": 10}))
    # While there is room a head that trickles keeps header_timeout whole
    slow = stalled_heads(gw.port, 1)[0]
    try:
        time.sleep(1.5)                     # past the grace of a slow head
        slow.sendall(b"ET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        head = read_response(slow)[0]
        assert head.startswith(b"HTTP/1.1 200"), head
    finally:
        slow.close()
    socks = stalled_heads(gw.port, 12, first)
    try:
        time.sleep(0.3)
        served = first_served(gw.port, 5)
        # header_timeout is 10 s: before, no newcomer got an answer within 5 s
        assert served is not None and served < 3, f"no client served for {served} s"
        if first == PIPELINED:
            return
        socks[0].settimeout(2)
        got = socks[0].recv(65536)          # the oldest stalled head: told why, then closed
        assert got.startswith(b"HTTP/1.1 408"), got
    finally:
        for sock in socks:
            sock.close()
