"""Attack pass (Dec 5, b): what comes from etcd, and upstream health and discovery.

Each test starts real processes (etcd, loopback upstreams, the gateway) and states the
behaviour expected of a gateway whose etcd some teams and service instances can write to:
one writer's keys must never break another team's routes or the gateway itself.
"""
import threading
import time

import pytest

from ..conftest import wait_until
from .test_etcd import UP, all_workers_at, etcd_conf, put


@pytest.fixture
def etcd(launcher):
    return launcher.etcd()


def timed_get(gw, path, timeout=10.0, headers=None):
    """-> (status or the exception's name, seconds taken)."""
    started = time.monotonic()
    try:
        resp, _ = gw.request("GET", path, headers=headers, timeout=timeout)
        status = resp.status
    except OSError as exc:
        status = type(exc).__name__
    return status, time.monotonic() - started


def in_background(n, call):
    """Start ``n`` threads running ``call``; -> (threads, the list their results go to)."""
    results = []
    threads = [threading.Thread(target=lambda: results.append(call()), daemon=True)
               for _ in range(n)]
    for thread in threads:
        thread.start()
    return threads, results


def test_a_service_instance_that_points_back_at_the_gateway_does_not_stall_it(
        launcher, etcd, upstream, tmp_path):
    """A registering instance (it may write only PREFIX/services/orders/...) registers the
    gateway's own listener as its URL, by mistake (a service that registers the address it
    was reached at) or on purpose. Every request to the orders route then came back to the
    gateway, which forwarded it again, hop after hop, each holding a connection, until
    worker_connections was full: three such requests stalled every other team's route for
    the upstream read timeout (60 s), and the loop requests ended in 504 after a minute.

    Expected: the request is seen coming back (its Via names this gateway MAX_OWN_HOPS
    times) and answered 508 at once; the other routes never notice."""
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], workers=1))
    client = etcd.client()
    put(client, "upstreams", "up", UP(upstream))
    put(client, "routes", "other-team", {"paths": ["/other"], "upstream": "up"})
    put(client, "upstreams", "orders", {"service": "orders"})
    put(client, "routes", "orders", {"paths": ["/orders"], "upstream": "orders"})
    revision = put(client, "services", "orders/instance-1",
                   {"url": f"http://127.0.0.1:{gw.port}"})
    wait_until(lambda: all_workers_at(gw, revision))
    assert timed_get(gw, "/other")[0] == 200

    threads, loops = in_background(3, lambda: timed_get(gw, "/orders", timeout=15.0))
    time.sleep(1.0)
    status, seconds = timed_get(gw, "/other", timeout=10.0)
    for thread in threads:
        thread.join(20)
    assert status == 200 and seconds < 3.0, \
        f"another team's route during the loop: {status} after {seconds:.1f}s"
    assert [s for s, _ in loops] == [508] * 3, loops
    assert all(seconds < 5.0 for _, seconds in loops), loops


def test_a_huge_weight_on_a_consistent_hash_upstream_stalls_no_worker(
        launcher, etcd, upstream, tmp_path):
    """A registering instance sets its own weight (up to 1,000,000). On a consistent_hash
    upstream the ring had 160 points per unit of weight, built in the worker at the first
    request after each change of the targets: weight 10,000 is 1.6 million md5s and a sort,
    ~5 s in which the worker answered nobody (every team's routes); 1,000,000 is minutes
    and gigabytes, per worker.

    Expected: the ring is capped (its points shared in proportion to the weights), so the
    first request and the other routes are answered at once."""
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], workers=1))
    client = etcd.client()
    put(client, "upstreams", "up", UP(upstream))
    put(client, "routes", "other-team", {"paths": ["/other"], "upstream": "up"})
    put(client, "upstreams", "orders", {"service": "orders", "balance": "consistent_hash",
                                        "hash_key": "header:X-User"})
    put(client, "routes", "orders", {"paths": ["/orders"], "upstream": "orders"})
    put(client, "services", "orders/a", {"url": upstream.url, "weight": 10_000})
    revision = put(client, "services", "orders/b", {"url": "http://127.0.0.1:9", "weight": 1})
    wait_until(lambda: all_workers_at(gw, revision))
    assert timed_get(gw, "/other")[0] == 200

    threads, first = in_background(1, lambda: timed_get(gw, "/orders", timeout=30.0,
                                                        headers={"X-User": "u1"}))
    time.sleep(0.3)
    other = timed_get(gw, "/other", timeout=30.0)
    threads[0].join(35)
    assert other[0] == 200 and other[1] < 1.5, f"another team's route: {other}"
    assert first[0][0] in (200, 502) and first[0][1] < 2.0, f"the first request: {first}"


def servers(gw, path, n=10):
    """The names of the upstreams (tests/upstream.py) that served ``n`` GETs of ``path``."""
    import json
    names = []
    for _ in range(n):
        resp, body = gw.request("GET", path)
        names.append(json.loads(body)["server"] if resp.status == 200 else resp.status)
    return names


def test_a_named_upstream_cannot_take_the_id_of_a_routes_inline_upstream(
        launcher, etcd, tmp_path):
    """Team A's route ``orders`` writes its upstream inline: the gateway calls it
    ``orders.upstream``. Team B, who may write upstreams and routes of its own, names an
    upstream ``orders.upstream`` too (a valid id). Health verdicts, passive ejections, the
    retry budget and the balancer are all keyed by upstream id, so B's upstream shared
    them with A's: one request through B's route, with a passive check that counts 200 as a
    failure, ejected A's target for a minute (A's traffic all went to its other target),
    and the health checker probed B's targets under that id and never A's.

    Expected: the id of an inline upstream is not one a named upstream may take: B's is
    rejected by name (shown in ``routes status``), and A's targets keep serving."""
    a1, a2 = launcher.upstream("a1"), launcher.upstream("a2")
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], workers=1))
    client = etcd.client()
    put(client, "routes", "orders", {"paths": ["/orders"], "upstream": {
        "targets": [{"url": a1.url}, {"url": a2.url}]}})
    put(client, "upstreams", "orders.upstream", {
        "targets": [{"url": a1.url}],
        "passive": {"consecutive_failures": 1, "statuses": [200], "eject_for": 60,
                    "max_ejected_percent": 100}})
    revision = put(client, "routes", "team-b", {"paths": ["/b"], "upstream": "orders.upstream"})
    wait_until(lambda: all_workers_at(gw, revision))
    assert sorted(set(servers(gw, "/orders"))) == ["a1", "a2"]

    gw.request("GET", "/b")         # B's own route, B's own passive check
    time.sleep(0.3)
    assert sorted(set(servers(gw, "/orders"))) == ["a1", "a2"], \
        "team B's upstream ejected a target of team A's route"
    from .test_etcd import status_of
    assert "upstreams/orders.upstream" in status_of(gw)["rejected"]


def test_items_from_etcd_may_not_name_link_local_or_unspecified_targets(
        launcher, etcd, upstream, tmp_path):
    """Whoever may register a service instance (or write one team's upstream or route)
    could name any address as a target, and the gateway connected there for every client
    of the route: 169.254.169.254, the cloud metadata service that hands the gateway
    host's own credentials to whoever asks from that host (nothing documented this), or
    0.0.0.0, which connects to this host's loopback services.

    Expected: such an item is rejected by name in ``routes status`` (the conf file, the
    operator's own, may still name them); the route answers 503 and is never proxied
    there; good items serve on."""
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], workers=1))
    client = etcd.client()
    put(client, "upstreams", "up", UP(upstream))
    put(client, "routes", "good", {"paths": ["/good"], "upstream": "up"})
    put(client, "upstreams", "orders", {"service": "orders"})
    put(client, "routes", "orders", {"paths": ["/orders"], "upstream": "orders"})
    put(client, "services", "orders/meta", {"url": "http://169.254.169.254"})
    put(client, "upstreams", "local", {"targets": [{"url": f"http://0.0.0.0:{upstream.port}"}]})
    put(client, "routes", "local", {"paths": ["/local"], "upstream": "local"})
    put(client, "routes", "inline", {"paths": ["/inline"], "upstream": {
        "targets": [{"url": "http://[::ffff:169.254.169.254]:80"}]}})
    revision = put(client, "routes", "canary", {
        "paths": ["/canary"], "upstream": "up", "plugins": {"split": {"upstreams": [
            {"upstream": "up", "weight": 1, "group": "stable"},
            {"upstream": {"targets": [{"url": "http://169.254.169.254"}]}, "weight": 1000,
             "group": "canary"}]}}})
    wait_until(lambda: all_workers_at(gw, revision))
    from .test_etcd import status_of
    rejected = status_of(gw)["rejected"]
    assert "link-local" in rejected.get("services/orders/meta", ""), rejected
    assert "unspecified" in rejected.get("upstreams/local", ""), rejected
    assert "link-local" in rejected.get("routes/inline", ""), rejected
    assert "link-local" in rejected.get("routes/canary", ""), rejected
    assert [timed_get(gw, p, timeout=5.0)[0] for p in ("/orders", "/local", "/inline",
                                                        "/canary")] == [503] * 4
    assert timed_get(gw, "/good")[0] == 200
