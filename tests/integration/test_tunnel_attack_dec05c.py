"""WebSocket tunnels and the gzip plugin, attacked through real gateways and upstreams (the
attack pass of 2026-12-05, helper h1, on 5bc977c). Each test failed on that commit.

1. gzip read a list-valued response header from its last line only. An upstream that wrote
   ``Vary: Cookie`` and ``Vary: Origin`` on two lines (Django's patch_vary_headers on top of
   a framework's own, or two middlewares) had both replaced by ``Vary: Origin,
   Accept-Encoding``: a shared cache then served one user's cookie-personalised answer to
   every other user.
2. The same for ``Cache-Control``: ``no-transform`` on any line but the last
   (``Cache-Control: no-transform`` then ``Cache-Control: max-age=60``) was not seen, and
   the answer the upstream forbade to transform was compressed.
3. gzip turned a strong ``ETag: "v1"`` into ``W/"v1"`` on the compressed 200 but left the
   upstream's 304 to ``If-None-Match: W/"v1"`` saying ``ETag: "v1"``: a cache that refreshes
   its stored headers from the 304 (RFC 9111 4.3.4) then held the gzip bytes under the
   upstream's strong validator of the plain bytes, and an ``If-Range`` with it got a 206 of
   plain bytes to splice into gzip ones. RFC 9110 15.4.5: a 304 carries the ETag the 200
   would have.
4. Each websocket tunnel held two 64 KiB buffers of its own for as long as it was open, idle
   or not: 150 KiB a tunnel (measured), 150 MB a worker at the default worker_connections,
   for a client that opened tunnels and sent a ping a minute. docs/architecture.md: an idle
   connection holds no buffer.
5. A websocket handshake that went out on a pooled keep-alive connection the upstream was
   closing at that moment (its keep-alive timeout: the race every proxy meets) was a 502,
   where any other GET is sent again on a fresh connection: the dead-connection retry
   left out upgrades, though nothing of the tunnel (the client's first frames included) has
   gone anywhere before a 101.
6. A handshake whose ``Connection`` named ``Sec-WebSocket-Key`` (``Connection: Upgrade,
   Sec-WebSocket-Key``) passed the check that a websocket upgrade has a key, which ran
   before the fields Connection names were dropped; the upstream got no key, and its 101
   made the gateway's accept check raise KeyError: a 500 and a logged traceback for any
   client that asked. (A route whose headers plugin removes the key did the same.)
7. Tunnels hold two descriptors each: a worker that ran out of them (worker_connections
   raised for websockets past LimitNOFILE / 2) took its own EMFILE on an upstream connect
   for the target's failure. "cannot connect to <target>: too many open files": the host's
   workers skipped the healthy target for 1 s, passive checks counted it towards ejection,
   the request was retried on the next target (which failed the same way), and the client
   got a 502 blaming the upstream.
8. A breaker on a websocket route recorded a request's verdict in finish, which comes when
   the tunnel closes. Half-open, its one probe was a handshake whose websocket stayed open:
   no verdict, and every other handshake got 503 circuit_open for as long as the probe's
   tunnel lived; the probe granted again after max(window, open_for) was another websocket.
   A route whose clients hold their websockets for an hour was down for good after one trip.
"""
import gzip as gzlib
import json
import os
import socket
import subprocess
import threading
import time

import pytest

from ..conftest import (WEBSOCKET_HANDSHAKE, gateway_conf, open_websocket, recv_until, route,
                        wait_until)
from .test_attack_pass_dec03 import RecordingHttp1, raw_request
from .test_attack_pass_dec03d import OK, ScriptedHttp1

DOC = json.dumps({"items": [{"id": i, "name": f"item {i}"} for i in range(70)]}).encode()


class HeadedHttp1(RecordingHttp1):
    """A loopback upstream answering ``answers[path](head)`` (bytes), where ``head`` is the
    request head as it came; ``answers`` maps request paths."""

    def __init__(self, answers):
        self.answers = answers
        super().__init__()

    def answer(self, head, count):
        return self.answers[head.split(b" ")[1]](head)


def json_answer(*lines, status=b"200 OK", body=DOC):
    return b"HTTP/1.1 %s\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n%s" \
        % (status, b"".join(line + b"\r\n" for line in lines), len(body), body)


def split_answer(answer):
    """(status, [(lower name, value)], body) of a whole HTTP/1.1 answer (chunked decoded)."""
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    fields = [(name.strip().lower(), value.strip()) for name, _, value in
              (line.partition(b":") for line in lines[1:])]
    if (b"transfer-encoding", b"chunked") in fields:
        out = b""
        while True:
            size_line, _, body = body.partition(b"\r\n")
            size = int(size_line, 16)
            if not size:
                break
            out, body = out + body[:size], body[size + 2:]
        body = out
    return int(lines[0].split()[1]), fields, body


def values(fields, name):
    return [value for key, value in fields if key == name]


def get(port, path, *lines):
    request = b"GET %s HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n%s\r\n" % (
        path, b"".join(line + b"\r\n" for line in lines))
    return split_answer(raw_request(port, request))


GZIP = b"Accept-Encoding: gzip"


@pytest.fixture
def gz(launcher):
    up = HeadedHttp1({
        b"/vary": lambda head: json_answer(b"Vary: Cookie", b"Vary: Origin"),
        b"/nt": lambda head: json_answer(b"Cache-Control: no-transform",
                                         b"Cache-Control: max-age=60"),
        b"/etag": lambda head: json_answer(b'ETag: "v1"', status=b"304 Not Modified", body=b"")
        if b"\r\nif-none-match:" in head.lower() else json_answer(b'ETag: "v1"'),
    })
    gw = launcher.gateway(gateway_conf([route("gz", ["/*rest"], up.url,
                                              plugins={"gzip": {}})]))
    yield gw
    up.close()


# -- 1. Vary on two lines ---------------------------------------------------------------------

def test_a_vary_written_on_two_lines_keeps_every_name(gz):
    for accept in ((), (GZIP,)):
        status, fields, body = get(gz.port, b"/vary", *accept)
        assert status == 200, fields
        named = {name.strip().lower() for value in values(fields, b"vary")
                 for name in value.split(b",")}
        assert named == {b"cookie", b"origin", b"accept-encoding"}, fields
        assert (gzlib.decompress(body) if accept else body) == DOC


# -- 2. no-transform on a Cache-Control line that is not the last ----------------------------

def test_no_transform_on_any_cache_control_line_is_honoured(gz):
    status, fields, body = get(gz.port, b"/nt", GZIP)
    assert status == 200 and not values(fields, b"content-encoding"), fields
    assert body == DOC
    assert values(fields, b"cache-control") == [b"no-transform", b"max-age=60"]


# -- 3. a 304 says the ETag the compressed 200 said -------------------------------------------

def test_a_304_to_the_weakened_etag_carries_it_weak(gz):
    status, fields, body = get(gz.port, b"/etag", GZIP)
    assert status == 200 and values(fields, b"etag") == [b'W/"v1"'] and \
        gzlib.decompress(body) == DOC
    status, fields, body = get(gz.port, b"/etag", GZIP, b'If-None-Match: W/"v1"')
    assert status == 304 and values(fields, b"etag") == [b'W/"v1"'], fields
    # a client that holds the plain bytes under the strong tag is told the strong tag
    status, fields, _ = get(gz.port, b"/etag", b'If-None-Match: "v1"')
    assert status == 304 and values(fields, b"etag") == [b'"v1"'], fields


# -- 4. an idle tunnel holds no buffer ---------------------------------------------------------

def worker_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1])


def open_echoed(port, message):
    """A websocket tunnel through the gateway to the echo upstream, ``message`` echoed."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(WEBSOCKET_HANDSHAKE + message)
    got = recv_until(sock, message)
    assert got.startswith(b"HTTP/1.1 101 "), got[:200]
    return sock


def echo_intact(sock, results):
    """Send 1 MiB of random bytes through an echo tunnel while reading; results[sock]: the
    same bytes came back."""
    data = os.urandom(1 << 20)
    sender = threading.Thread(target=sock.sendall, args=(data,))
    sender.start()
    got = bytearray()
    try:
        while len(got) < len(data):
            piece = sock.recv(1 << 20)
            if not piece:
                break
            got += piece
    finally:
        sender.join(30)
    results[sock] = bytes(got) == data


def test_idle_websocket_tunnels_hold_no_read_buffers(launcher, upstream):
    gw = launcher.gateway(gateway_conf([route("ws", ["/ws"], upstream.url)]))
    pid = gw.worker_pids()[0]
    for sock in [open_echoed(gw.port, b"warm") for _ in range(20)]:
        sock.close()
    time.sleep(0.5)
    before, count = worker_rss_kib(pid), 200
    socks = [open_echoed(gw.port, b"m%d" % i) for i in range(count)]
    try:
        time.sleep(0.5)
        grown = worker_rss_kib(pid) - before
        # a greenlet and two sockets (~22 KiB seen); two buffers of their own were 150 KiB
        assert grown < count * 64, f"{grown / count:.0f} KiB a tunnel"
        for i, sock in enumerate(socks):       # and every tunnel still carries both ways
            sock.sendall(b"again%d." % i)
            got = b""
            while not got.endswith(b"again%d." % i):
                got += sock.recv(65536)
        # The worker's one buffer serves every pump: busy tunnels side by side stay intact.
        results = {}
        threads = [threading.Thread(target=echo_intact, args=(sock, results))
                   for sock in socks[:8]]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert list(results.values()) == [True] * 8, results
    finally:
        for sock in socks:
            sock.close()


# -- 5. a handshake on a connection the upstream was closing is sent again --------------------

ACCEPTED = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\nhello")


def test_a_handshake_on_a_pooled_connection_the_upstream_closed_is_sent_again(launcher):
    """The upstream answers /ok keep-alive, then closes that connection on the next request
    unanswered (its idle timeout, as the handshake arrived); on a fresh one it accepts."""
    up = ScriptedHttp1({b"/ok": lambda n: OK, b"/ws": lambda n: None if n > 1 else ACCEPTED})
    try:
        gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], up.url)]))
        assert raw_request(gw.port, b"GET /ok HTTP/1.1\r\nHost: h\r\nConnection: close"
                           b"\r\n\r\n").endswith(b"\r\n\r\nok")
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
            sock.sendall(WEBSOCKET_HANDSHAKE)
            got = recv_until(sock, b"hello")
        assert got.startswith(b"HTTP/1.1 101 "), got[:300]
        assert up.lines == [b"GET /ok HTTP/1.1", b"GET /ws HTTP/1.1", b"GET /ws HTTP/1.1"]
    finally:
        up.close()


# -- 6. a handshake whose Connection names its own key -----------------------------------------

HANDSHAKE = (b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: %s\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def test_a_handshake_that_names_its_key_in_connection_is_a_400(launcher, upstream):
    gw = launcher.gateway(gateway_conf([route("ws", ["/ws"], upstream.url)]))
    before = upstream.stats()["requests"]
    answer = raw_request(gw.port, HANDSHAKE % b"Upgrade, Sec-WebSocket-Key")
    assert answer.startswith(b"HTTP/1.1 400 ") and b"Sec-WebSocket-Key" in answer, answer
    assert upstream.stats()["requests"] == before            # never forwarded
    assert "unhandled error" not in gw.log()
    # the handshake with another field named still opens its tunnel
    answer = raw_request(gw.port, HANDSHAKE % b"Upgrade, X-Hop" + b"ping", timeout=2)
    assert answer.startswith(b"HTTP/1.1 101 ") and answer.endswith(b"ping"), answer


def test_a_handshake_whose_key_a_plugin_removed_gets_no_tunnel_and_no_500(launcher, upstream):
    gw = launcher.gateway(gateway_conf([route("ws", ["/ws"], upstream.url, plugins={
        "headers": {"request": {"remove": ["Sec-WebSocket-Key"]}}})]))
    answer = raw_request(gw.port, HANDSHAKE % b"Upgrade")
    assert answer.startswith(b"HTTP/1.1 502 "), answer
    log = gw.log()
    assert "unhandled error" not in log and "without its Sec-WebSocket-Key" in log, log[-2000:]


# -- 7. a worker out of file descriptors blames no target -------------------------------------

def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_worker_out_of_file_descriptors_blames_no_target(launcher):
    ups = [launcher.upstream("a"), launcher.upstream("b")]
    gw = launcher.gateway(gateway_conf([{
        "id": "ws", "paths": ["/ws", "/echo"], "upstream": {
            "targets": [{"url": up.url} for up in ups], "passive": {}}}]))
    pid = gw.worker_pids()[0]
    for sock in [open_echoed(gw.port, b"warm") for _ in range(4)]:     # both targets once
        sock.close()
    time.sleep(0.5)
    fds, count = open_fds(pid), 5
    victim = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    wait_until(lambda: open_fds(pid) == fds + 1)            # accepted: its descriptor is held
    # room for the victim and `count` tunnels (two each), none for the victim's connect
    subprocess.run(["prlimit", "--pid", str(pid), f"--nofile={fds + 1 + 2 * count}"], check=True)
    tunnels = [open_echoed(gw.port, b"t%d" % i) for i in range(count)]
    try:
        victim.sendall(b"GET /echo HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        answer = b""
        while piece := victim.recv(65536):
            answer += piece
        assert answer.startswith(b"HTTP/1.1 503 "), answer
    finally:
        victim.close()
        for sock in tunnels:
            sock.close()
    time.sleep(0.3)
    log = gw.log()
    assert "open-file limit" in log and "cannot connect to" not in log, log[-2000:]
    assert "retrying" not in log


# -- 8. a breaker's half-open probe that is a websocket -----------------------------------------

def get_status(port, path):
    return raw_request(port, b"GET %s HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
                       % path)[9:12]


def test_a_websocket_probe_closes_a_half_open_breaker_at_its_handshake(launcher, upstream):
    gw = launcher.gateway(gateway_conf([route("ws", ["/*rest"], upstream.url, plugins={
        "breaker": {"min_requests": 2, "window": 10, "open_for": 1, "max_open_for": 1}})]))
    assert [get_status(gw.port, b"/status/503") for _ in range(2)] == [b"503"] * 2
    assert b"circuit_open" in raw_request(gw.port, b"GET /echo HTTP/1.1\r\nHost: h\r\n"
                                          b"Connection: close\r\n\r\n")      # open
    time.sleep(1.3)                                                             # half-open
    probe, head, _ = open_websocket(gw.port)
    try:
        assert head.startswith(b"HTTP/1.1 101 "), head
        for _ in range(3):          # the probe's tunnel is open: the breaker is closed
            sock, head, _ = open_websocket(gw.port)
            sock.close()
            assert head.startswith(b"HTTP/1.1 101 "), head
        assert get_status(gw.port, b"/echo") == b"200"
    finally:
        probe.close()
