"""Review dec10s (of 87a772d, per-host state files removed when their route is gone), by
attack, against real gateways, etcd and upstreams on loopback. Each test was seen failing
before its fix."""
import os
import shutil
import socket
import time

import pytest

from ..conftest import gateway_conf, wait_until
from .test_attack_dec09p import breaker_routes, delete_routes
from .test_attack_dec10b import state_file
from .test_etcd import UP, all_workers_at, etcd_conf, put


@pytest.fixture
def etcd(launcher):
    return launcher.etcd()


def read_response(sock):
    """One whole response of Content-Length (its head and body) from ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")[1:]
                      if line.lower().startswith(b"content-length:")))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, data
        body += chunk
    return head


def test_the_states_directory_removed_is_made_again_and_breakers_still_guard(launcher,
                                                                             upstream):
    """states/ removed under running workers (a cleaner, ``rm -r``): each worker now opens
    a breaker's file again when it finds its own removed, and the directory was not made
    again: every breaker of the host let requests through unguarded (an upstream failing
    every request kept being called) until the gateway restarted. Before 87a772d each
    worker went on with the file it had open. The directory is made again."""
    breaker = {"breaker": {"min_requests": 2, "error_rate": 0.5, "open_for": 30.0,
                           "max_open_for": 30.0}}
    gw = launcher.gateway(gateway_conf(
        [{"id": "b", "paths": ["/b/*rest"], "strip_prefix": "/b", "upstream": "up",
          "plugins": breaker}], upstreams={"up": {"targets": [{"url": upstream.url}]}}))
    assert gw.request("GET", "/b/echo")[0].status == 200
    states = os.path.join(gw.conf["server"]["state_dir"], "states")
    assert os.listdir(states)
    os.rename(states, states + ".gone")     # (at once: the last answer may still write it)
    shutil.rmtree(states + ".gone")
    statuses = [gw.request("GET", "/b/status/500")[0].status for _ in range(3)]
    # before the fix: [500, 500, 500], "passes unguarded" logged, and so on for good. The
    # first answer's success may land in the new file (written as the directory went), and
    # then the breaker opens one failure sooner: it guards either way.
    assert statuses in ([500, 500, 503], [500, 503, 503]), statuses
    assert "unguarded" not in gw.log()
    assert os.path.exists(state_file(gw, "br:route:b"))


def test_a_request_of_a_route_gone_leaves_no_breaker_file_open_for_good(launcher, etcd,
                                                                        upstream, tmp_path):
    """A request admitted by a route's breaker that ends after the route left the table
    (through etcd) and after its worker swept states/: its outcome opened the file again,
    and the worker kept it open and locked for good (nothing swept again until the next
    table change), so the file stayed for good and every other worker listed states/ every
    3 s trying to remove it. It is let go and removed at the next sweep."""
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], workers=1))
    client = etcd.client()
    put(client, "upstreams", "up", UP(upstream))
    revision = breaker_routes(client, "s", 1)
    wait_until(lambda: all_workers_at(gw, revision))
    path = state_file(gw, "br:route:s0")
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        # admitted (its file opened), then its body stalls
        sock.sendall(b"POST /s0 HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\nabcd")
        wait_until(lambda: os.path.exists(path), timeout=5)
        revision = delete_routes(client, "s")
        wait_until(lambda: all_workers_at(gw, revision))
        wait_until(lambda: not os.path.exists(path), timeout=5)     # let go, removed
        time.sleep(3.3)         # and the worker's sweep after the change done
        sock.sendall(b"efgh")
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        # the next request of the connection: the first one's outcome is recorded by then
        sock.sendall(b"GET /elsewhere HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 404")
    # its outcome was recorded in a new file; before the fix: open in the worker, and
    # there, for good
    wait_until(lambda: not os.path.exists(path), timeout=5)


def test_a_consumers_own_breaker_file_goes_with_the_consumer(launcher, etcd, upstream,
                                                             tmp_path):
    """A consumer's own breaker (``br:route:R:consumer=C``) belongs to its route: a consumer
    removed through etcd (consumers made and removed per tenant, per API key) left its file
    open in every worker, and in states/, for the route's life: one descriptor per consumer
    ever gone, toward EMFILE, the growth 87a772d ended for routes. It goes with its
    consumer; the route's own breaker stays."""
    from gwserver.plugins.key_auth import hash_key
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], workers=1))
    client = etcd.client()
    put(client, "upstreams", "up", UP(upstream))
    put(client, "routes", "api", {"paths": ["/api/*rest"], "strip_prefix": "/api",
                                  "upstream": "up", "plugins": {"key_auth": {},
                                                                "breaker": {}}})
    key = "ak_tenant_000000000000000001"
    revision = put(client, "consumers", "tenant", {
        "credentials": {"key_auth": {"key_hash": hash_key(key)}},
        "plugins": {"breaker": {"min_requests": 50}}})
    wait_until(lambda: all_workers_at(gw, revision))
    assert gw.request("GET", "/api/echo", headers={"X-API-Key": key})[0].status == 200
    own = state_file(gw, "br:route:api:consumer=tenant")
    assert os.path.exists(own)
    client.delete("/gw/consumers/tenant")
    wait_until(lambda: gw.request("GET", "/api/echo",
                                  headers={"X-API-Key": key})[0].status == 401, timeout=10)
    # before the fix: there (and open in the worker) for good
    wait_until(lambda: not os.path.exists(own), timeout=5)
    assert gw.request("GET", "/api/echo", headers={"X-API-Key": key})[0].status == 401
