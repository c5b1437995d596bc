"""Routes made and removed through etcd (a preview environment's, a tenant's) each left their
series on /metrics for the life of the master: request counts, both latency histograms (16
lines each), gateway answers, by method, status class and protocol. prometheus-client deletes
no series from a worker's file, and a worker's file is folded into the archives at its exit.
/metrics shows the route-labelled series of the table's routes (and route "none") only now, as
it does the target series (test_attack_dec09p). (A real gateway on a real etcd.)"""
from ..conftest import wait_until
from .test_admin import sample
from .test_etcd import PREFIX, all_workers_at, etcd, etcd_conf, put  # noqa: F401 (a fixture)
from .test_stale_gauges_dec05e import scrape


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
    revision = client.delete(f"{PREFIX}/routes/preview-1")
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
