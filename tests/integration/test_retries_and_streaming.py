"""Retries that are safe, none that are not; 1 GiB each way with a worker's memory bounded."""
import hashlib
import json
import socket
import threading
import time

import pytest

from ..conftest import free_port, gateway_conf, route


def two_targets(*urls):
    return {"targets": [{"url": url} for url in urls]}


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_connect_failure_is_retried_on_another_target(start_gateway, upstream, method):
    dead = f"http://127.0.0.1:{free_port()}"
    gw = start_gateway(gateway_conf([{"id": "r", "paths": ["/echo"],
                                      "upstream": two_targets(dead, upstream.url)}]))
    statuses = [gw.request(method, "/echo", body=b"x" if method == "POST" else None)[0].status
                for _ in range(10)]
    assert statuses == [200] * 10
    assert "retrying on another target" in gw.log()


def test_no_retry_after_a_non_idempotent_request_reached_an_upstream(start_gateway,
                                                                      start_upstream):
    a, b = start_upstream("a"), start_upstream("b")
    gw = start_gateway(gateway_conf([{"id": "r", "paths": ["/close-without-answer"],
                                      "upstream": two_targets(a.url, b.url)}]))
    for _ in range(4):
        resp, _ = gw.request("POST", "/close-without-answer", body=b"payload")
        assert resp.status == 502
    assert a.stats()["requests"] + b.stats()["requests"] == 4      # each sent exactly once


def worker_rss_kib(gw):
    pid = gw.worker_pids()[0]
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])


class RssSampler(threading.Thread):
    def __init__(self, gw):
        super().__init__(daemon=True)
        self.gw, self.peak, self.running = gw, 0, True

    def run(self):
        while self.running:
            self.peak = max(self.peak, worker_rss_kib(self.gw))
            time.sleep(0.05)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.running = False
        self.join()


GIB = 1 << 30
RSS_BOUND_KIB = 120 * 1024      # a worker idles at ~35 MiB; 1 GiB must not show in it


@pytest.fixture
def streaming_gw(start_gateway, upstream):
    routes = [route("up", ["/upload"], upstream.url), route("down", ["/bytes/:n"], upstream.url)]
    return start_gateway(gateway_conf(routes))


def test_one_gib_upload_streams_with_bounded_memory(streaming_gw):
    gw = streaming_gw
    block = bytes(range(256)) * 4096             # 1 MiB
    digest = hashlib.sha256()
    with RssSampler(gw) as rss, socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n" % GIB)
        for _ in range(GIB // len(block)):
            sock.sendall(block)
            digest.update(block)
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert json.loads(body) == {"size": GIB, "sha256": digest.hexdigest()}
    assert rss.peak < RSS_BOUND_KIB, rss.peak


@pytest.mark.parametrize("chunked", [False, True])
def test_one_gib_download_streams_with_bounded_memory(streaming_gw, chunked):
    gw = streaming_gw
    path = f"/bytes/{GIB}" + ("?chunked=1" if chunked else "")
    received = 0
    with RssSampler(gw) as rss, socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n" % path.encode())
        buf = bytearray(1 << 20)
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        head, _, first = head.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert (b"Transfer-Encoding: chunked" in head) == chunked
        received = len(first)
        while n := sock.recv_into(buf):
            received += n
    overhead = received - GIB                    # chunk framing, when chunked
    assert overhead == 0 if not chunked else 0 < overhead < GIB // 1000
    assert rss.peak < RSS_BOUND_KIB, rss.peak
