"""Routes made and removed through etcd (a preview environment's, a tenant's) each left their
series on /metrics for the life of the master: request counts, both latency histograms (16
lines each), gateway answers, by method, status class and protocol. prometheus-client deletes
no series from a worker's file, and a worker's file is folded into the archives at its exit.
/metrics shows the route-labelled series of the table's routes (and route "none") only now, as
it does the target series (test_attack_dec09p); so it does a removed consumer's request
counts (each revoked API customer's stayed) and a removed upstream's retries. (A real
gateway on a real etcd.)"""
from gwserver.plugins.key_auth import hash_key

from ..conftest import free_port, wait_until
from .test_admin import sample
from .test_etcd import PREFIX, all_workers_at, etcd, etcd_conf, put  # noqa: F401 (a fixture)
from .test_stale_gauges_dec05e import scrape


def later_revision(client):
    """A revision after the deletes made so far (a delete answers a count, not one)."""
    return put(client, "routes", "marker", {"paths": ["/marker"], "upstream": {
        "targets": [{"url": "http://127.0.0.1:9"}]}})


def test_a_route_removed_through_etcd_leaves_metrics(launcher, etcd, upstream, tmp_path):
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], workers=1))
    client = etcd.client()
    put(client, "routes", "keep", {"paths": ["/keep"], "upstream": {
        "targets": [{"url": upstream.url}]}})
    revision = put(client, "routes", "preview-1", {"paths": ["/preview/*rest"], "upstream": {
        "targets": [{"url": upstream.url}]}})
    wait_until(lambda: all_workers_at(gw, revision))
    for path in ("/keep", "/preview/a", "/preview/b", "/nowhere"):
        gw.request("GET", path)
    wait_until(lambda: sample(scrape(gw), "gwserver_requests_total", route="preview-1") == 2)
    client.delete(f"{PREFIX}/routes/preview-1")
    revision = later_revision(client)
    wait_until(lambda: all_workers_at(gw, revision))
    worker = gw.worker_pids()
    text = scrape(gw)
    # before: the removed route's counts and histograms were still shown
    for name in ("gwserver_requests_total", "gwserver_request_duration_seconds_count",
                 "gwserver_upstream_duration_seconds_count"):
        assert sample(text, name, route="preview-1") is None, (name, text)
        assert sample(text, name, route="keep") == 1, (name, text)
    assert sample(text, "gwserver_requests_total", route="none", status="4xx") == 1, text
    assert gw.worker_pids() == worker           # the same live worker: no restart did it


def test_a_consumer_and_an_upstream_removed_through_etcd_leave_metrics(launcher, etcd,
                                                                      upstream, tmp_path):
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], workers=1))
    client = etcd.client()
    for name in ("ann", "bob"):
        put(client, "consumers", name, {"credentials": {"key_auth": {
            "key_hash": hash_key(f"{name}-key-0123456789")}}})
    # a dead target first, a live one after it: each request is retried once
    put(client, "upstreams", "flaky", {"targets": [{"url": f"http://127.0.0.1:{free_port()}"},
                                                   {"url": upstream.url}],
                                       "balance": "round_robin"})
    put(client, "routes", "flaky", {"paths": ["/flaky"], "upstream": "flaky"})
    revision = put(client, "routes", "keyed", {"paths": ["/keyed"], "upstream": {
        "targets": [{"url": upstream.url}]}, "plugins": {"key_auth": {}}})
    wait_until(lambda: all_workers_at(gw, revision))
    for name in ("ann", "bob"):
        assert gw.request("GET", "/keyed", headers={
            "X-API-Key": f"{name}-key-0123456789"})[0].status == 200
    for _ in range(4):
        assert gw.request("GET", "/flaky")[0].status == 200
    wait_until(lambda: (text := scrape(gw)) and
               sample(text, "gwserver_consumer_requests_total", consumer="ann") == 1 and
               sample(text, "gwserver_upstream_retries_total", upstream="flaky"))
    client.delete(f"{PREFIX}/consumers/ann")
    client.delete(f"{PREFIX}/routes/flaky")
    client.delete(f"{PREFIX}/upstreams/flaky")
    revision = later_revision(client)
    wait_until(lambda: all_workers_at(gw, revision))
    text = scrape(gw)
    # before: both were still shown
    assert sample(text, "gwserver_consumer_requests_total", consumer="ann") is None, text
    assert sample(text, "gwserver_consumer_requests_total", consumer="bob") == 1, text
    assert sample(text, "gwserver_upstream_retries_total", upstream="flaky") is None, text
