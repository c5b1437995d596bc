"""Attack dec09p: per-process state that grows without bound in a long-running worker, against
real gateways, etcd and upstreams on loopback. Each test was seen failing before its fix."""
import os

import pytest

from ..conftest import wait_until
from .test_etcd import PREFIX, UP, all_workers_at, etcd_conf, put

ROUTES = 150


@pytest.fixture
def etcd(launcher):
    return launcher.etcd()


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def breaker_routes(client, prefix, count):
    """``count`` etcd routes with a breaker each (per-host state: no [redis]) -> revision."""
    items = [(f"{PREFIX}/routes/{prefix}{i}",
              f'{{"paths": ["/{prefix}{i}"], "upstream": "up", '
              f'"plugins": {{"breaker": {{}}}}}}'.encode()) for i in range(count)]
    for start in range(0, count, 100):          # etcd takes 128 operations a transaction
        revision = client.txn_put(items[start:start + 100])
    return revision


def delete_routes(client, prefix):
    key = f"{PREFIX}/routes/{prefix}".encode()
    client._call("/v3/kv/deleterange", {"key": _b64(key), "range_end": _b64(key[:-1] + bytes(
        [key[-1] + 1]))})
    return client.revision()


def _b64(data):
    import base64
    return base64.b64encode(data).decode()


def test_routes_with_a_breaker_that_come_and_go_through_etcd_leave_no_open_files(
        launcher, etcd, upstream, tmp_path):
    """Without [redis] a breaker's state is a file under state_dir, and each worker opened
    one descriptor per breaker key and kept it for its life: routes created and removed
    through etcd (a preview environment per pull request, a route per tenant) each left an
    open file in every worker, until the worker ran out of descriptors and could accept no
    client. A worker closes the files of breakers whose route or upstream left the table."""
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], workers=1))
    client = etcd.client()
    put(client, "upstreams", "up", UP(upstream))
    revision = breaker_routes(client, "warm", 1)
    wait_until(lambda: all_workers_at(gw, revision))
    assert gw.request("GET", "/warm0")[0].status == 200
    worker = gw.serving_worker_pids()[0]
    baseline = open_fds(worker)

    for round_ in range(2):
        revision = breaker_routes(client, f"r{round_}x", ROUTES)
        wait_until(lambda: all_workers_at(gw, revision))
        for i in range(ROUTES):
            assert gw.request("GET", f"/r{round_}x{i}")[0].status == 200
        assert open_fds(worker) >= baseline + ROUTES - 5    # each breaker's file is open
        revision = delete_routes(client, f"r{round_}x")
        wait_until(lambda: all_workers_at(gw, revision))
        assert gw.request("GET", "/warm0")[0].status == 200     # a tick, pools pruned
        # (before the fix: ROUTES more each round, for good)
        wait_until(lambda: open_fds(worker) <= baseline + 5, timeout=5)
    assert gw.serving_worker_pids() == [worker]
    assert gw.request("GET", "/warm0")[0].status == 200


# -- 2. target URLs that come and go (service instances): series of targets long gone -------

class ManyPorts:
    """Plain HTTP/1.1 answers (200, keep-alive) on ``count`` loopback ports, one thread: the
    instances of a service, each a target URL of its own."""

    def __init__(self, count):
        import selectors
        import socket
        import threading
        self.selector = selectors.DefaultSelector()
        self.listeners = []
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.listen(16)
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ, None)
            self.listeners.append(sock)
        self.urls = [f"http://127.0.0.1:{s.getsockname()[1]}" for s in self.listeners]
        self.running = True
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        import selectors
        while self.running:
            for key, _ in self.selector.select(0.1):
                sock = key.fileobj
                if key.data is None:                # a listener
                    try:
                        conn, _ = sock.accept()
                    except BlockingIOError:
                        continue
                    conn.setblocking(False)
                    self.selector.register(conn, selectors.EVENT_READ, [b""])
                    continue
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                except ConnectionError:
                    data = b""
                if not data:
                    self.selector.unregister(sock)
                    sock.close()
                    continue
                key.data[0] += data
                while b"\r\n\r\n" in key.data[0]:
                    _, _, key.data[0] = key.data[0].partition(b"\r\n\r\n")
                    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def close(self):
        self.running = False
        self.thread.join(2)
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()


@pytest.fixture
def many_ports():
    ports = ManyPorts(2 * TARGETS)
    yield ports
    ports.close()


TARGETS = 40


def target_series(text, name):
    """The target labels of ``name``'s series in a scrape."""
    import re
    return {m.group(1) for m in re.finditer(
        r'^' + name + r'\{[^}]*target="([^"]*)"', text, re.M)}


def test_targets_that_came_and_went_leave_no_series_on_metrics(launcher, etcd, many_ports,
                                                               tmp_path):
    """Targets churn with a service's instances (every pod a new address): each one ever
    served kept its `gwserver_upstream_connections_opened_total` and
    `gwserver_upstream_pool_idle_connections` series (the latter at 0) on /metrics for the
    worker's life, one more pair per instance that ever came, without bound. /metrics shows
    the series of the targets the table holds now, as it does `target_up`'s."""
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], workers=1))
    client = etcd.client()
    put(client, "routes", "r", {"paths": ["/*rest"], "upstream": "up"})
    worker = None
    for round_ in range(2):
        urls = many_ports.urls[round_ * TARGETS:(round_ + 1) * TARGETS]
        revision = put(client, "upstreams", "up", {"targets": [{"url": u} for u in urls]})
        wait_until(lambda: all_workers_at(gw, revision))
        for _ in range(TARGETS):
            assert gw.request("GET", "/x")[0].status == 200
        worker = worker or gw.serving_worker_pids()
    status, body = gw.admin_get("/metrics")
    assert status == 200, body
    text = body.decode()
    now = set(many_ports.urls[TARGETS:])
    opened = target_series(text, "gwserver_upstream_connections_opened_total")
    idle = target_series(text, "gwserver_upstream_pool_idle_connections")
    assert len(opened & now) >= TARGETS // 2, text          # the targets served now are there
    # (before the fix: the 40 targets of the first round too, for good)
    assert opened <= now, sorted(opened - now)[:5]
    assert idle <= now, sorted(idle - now)[:5]
    assert gw.serving_worker_pids() == worker       # the same worker: no restart did it
