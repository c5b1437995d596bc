"""Review of d8deeb2 (slot limit: a slow request head gives way to a newcomer) and of 39e1acc
(etcd sync: a rejected key logged as one line), as an attacker (helper u11). Each test failed
on 4006db6.

1. A legitimate large head cut for a slowloris. With every slot taken and none idle,
   d8deeb2 closed the connection whose head had been coming *longest*, whatever its pace:
   a client sending a 4 KB head (cookies) steadily at ~2 KB a second over a slow link got a
   408 one second in, while nine connections that had sent one byte each, begun after it,
   kept their slots. The body check picks the slowest under ``min_body_rate``; the head
   check now does the same (server/runtime.py close_slowest_head; read_head counts the
   bytes of a head that did not come whole in one read, off the one-read path).
"""
import socket
import time

from ..conftest import gateway_conf, read_response, route
from .test_review_attack_dec05za import stalled_heads


def test_a_steady_large_head_is_not_cut_for_byte_a_second_heads(launcher, upstream):
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)],
                                       server={"worker_connections": 10}))
    head = b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n" + \
        b"".join(b"X-Pad-%02d: %s\r\n" % (i, b"a" * 88) for i in range(40)) + b"\r\n"
    legit = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    socks = []
    try:
        legit.sendall(head[:100])
        time.sleep(0.05)
        socks = stalled_heads(gw.port, 9)       # every slot taken, none idle
        # ~2 KB a second, over 2 s: twice min_body_rate, past the 1 s grace of a slow head
        for at in range(100, len(head), 100):
            time.sleep(0.05)
            try:
                legit.sendall(head[at:at + 100])
            except OSError:         # cut: its 408 is read below
                break
        got = read_response(legit)[0]
        # before: "HTTP/1.1 408" (or a reset) one second in, the oldest head being its
        assert got.startswith(b"HTTP/1.1 200"), got
        socks[0].settimeout(2)
        assert socks[0].recv(65536).startswith(b"HTTP/1.1 408")    # a byte a second: cut
    finally:
        legit.close()
        for sock in socks:
            sock.close()
