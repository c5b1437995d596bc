"""Attack (helper a32): make the gateway blame a healthy upstream, as a hostile client.

A client that reads a large answer slowly holds the gateway's reads of the upstream: a healthy
upstream with a send timeout shorter than the gateway's (nginx's send_timeout, a worker's own
timeout) gives up on the stalled exchange and closes it mid-body. That close is the client's
doing, as an upstream that gave up on a paused upload is; counted as the upstream's failure, one
slow reader ejected a healthy target (passive checks) and opened its breaker for everyone.
"""
import socket
import time

from ..conftest import free_port, gateway_conf
from ..h2client import RawH2

BIG = 64 << 20      # over what the loopback buffers of both hops hold


def slow_nginx(launcher, tmp_path):
    """An nginx on two ports serving /big (64 MiB) that gives up on a reader stalled for 1 s
    (send_timeout): -> its two base URLs."""
    (tmp_path / "www").mkdir()
    with open(tmp_path / "www" / "big", "wb") as f:
        f.truncate(BIG)
    second = free_port()
    port = launcher.nginx("slow", (
        "listen 127.0.0.1:{port}; listen 127.0.0.1:%d; server_name _; send_timeout 1s; "
        "root %s; location / {{ }}" % (second, tmp_path / "www")))
    return [f"http://127.0.0.1:{port}", f"http://127.0.0.1:{second}"]


def head_of(sock):
    """What ``sock`` received up to the end of an answer's head (and what came with it)."""
    got = b""
    while b"\r\n\r\n" not in got:
        piece = sock.recv(4096)
        assert piece, got
        got += piece
    return got


def read_slowly(port, path, pause):
    """GET ``path``, read its head, read nothing for ``pause`` seconds, then the rest: -> the
    count of body bytes that came."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    try:
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n" % path)
        head, _, body = head_of(sock).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        time.sleep(pause)
        size = len(body)
        while True:
            piece = sock.recv(1 << 16)
            if not piece:
                return size
            size += len(piece)
    finally:
        sock.close()


def get_status(port, path):
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(b"HEAD %s HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n" % path)
        return int(head_of(sock).split(b" ", 2)[1])
    finally:
        sock.close()


def files_route(urls, **upstream):
    """A route to ``urls``: passive checks that eject on one failure, a breaker that opens
    on one."""
    return {"id": "files", "paths": ["/*rest"],
            "upstream": {"targets": [{"url": u} for u in urls], **upstream,
                         "passive": {"consecutive_failures": 1, "eject_for": 30}},
            "plugins": {"breaker": {"error_rate": 0.5, "min_requests": 1, "window": 10,
                                    "open_for": 10}}}


def test_a_slow_reader_does_not_eject_or_break_a_healthy_upstream(launcher, tmp_path):
    """Before: the reader's stall made nginx close at its send_timeout, the gateway booked
    "upstream closed the connection mid-body" on the target: ejected after one such read
    (consecutive_failures = 1) and the breaker open, every other client's request a 503."""
    urls = slow_nginx(launcher, tmp_path)
    gw = launcher.gateway(gateway_conf([files_route(urls)]))
    size = read_slowly(gw.port, b"/big", pause=3.0)
    assert size < BIG, "nginx did not give up on the stalled read: no attack made"
    time.sleep(0.3)     # the outcome is booked as the request ends
    # every other client is still served, by either target, and nothing was ejected
    statuses = [get_status(gw.port, b"/big") for _ in range(4)]
    ejected = [line for line in gw.log().splitlines() if "ejected" in line]
    assert (statuses, ejected) == ([200] * 4, [])


def test_a_slow_reader_does_not_break_a_healthy_h2_upstream(launcher, tmp_path):
    """The same through an HTTP/2 upstream (nginx, h2c): the gateway opens a stream's window
    as its answer is relayed, so a reader that stalls shuts it, and nginx resets the stream
    at its send_timeout. Before: booked as the target's failure (StreamBroken), the breaker
    opened for everyone."""
    (tmp_path / "www").mkdir()
    with open(tmp_path / "www" / "big", "wb") as f:
        f.truncate(BIG)
    port = launcher.nginx("slow-h2", (
        "listen 127.0.0.1:{port} http2; server_name _; send_timeout 1s; "
        "root %s; location / {{ }}" % (tmp_path / "www")))
    gw = launcher.gateway(gateway_conf([files_route([f"http://127.0.0.1:{port}"],
                                                    protocol="h2")]))
    size = read_slowly(gw.port, b"/big", pause=3.0)
    assert size < BIG, "nginx did not give up on the stalled read: no attack made"
    time.sleep(0.3)
    statuses = [get_status(gw.port, b"/big") for _ in range(3)]
    # (one target: passive checks counted it, "not ejecting ...: max_ejected_percent")
    ejecting = [line for line in gw.log().splitlines() if "eject" in line]
    assert (statuses, ejecting) == ([200] * 3, [])


def test_an_h2_client_that_shuts_its_window_does_not_break_a_healthy_upstream(launcher,
                                                                              tmp_path):
    """An HTTP/2 client that stops reading (its stream's window shut) holds the answer's
    writes as an HTTP/1.1 one's full socket does, and nginx (HTTP/1.1) gives up at its
    send_timeout. Before: booked as the target's failure, the breaker open for everyone."""
    urls = slow_nginx(launcher, tmp_path)
    gw = launcher.gateway(gateway_conf([files_route(urls)], http2={"h2c": True}))
    client = RawH2(gw.port)
    try:
        sid = client.request("/big")
        client.pump(lambda c: any(getattr(e, "stream_id", None) == sid for e in c.events))
        time.sleep(3.0)         # reads nothing: the stream's window stays shut
        client.pump(lambda c: c.ended(sid) or c.reset_code(sid) is not None, timeout=10)
        got = sum(len(getattr(e, "data", b"")) for e in client.events
                  if getattr(e, "stream_id", None) == sid)
    finally:
        client.close()
    assert got < BIG, "nginx did not give up on the stalled read: no attack made"
    time.sleep(0.3)
    statuses = [get_status(gw.port, b"/big") for _ in range(4)]
    ejected = [line for line in gw.log().splitlines() if "ejected" in line]
    assert (statuses, ejected) == ([200] * 4, [])
