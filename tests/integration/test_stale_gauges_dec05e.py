"""Gauges of targets that left the table while the worker that set them lives on.

1. A target removed from an upstream through etcd (or a whole upstream whose routes went)
   stayed in /metrics as long as the worker that had last set its
   ``gwserver_upstream_target_up`` lived: prometheus-client cannot delete a series from a
   live process's file. A target taken out while down went on firing "target down". /metrics
   now shows the gauge for the targets of the table the answering worker serves.
"""
from ..conftest import free_port, wait_until
from .test_admin import sample
from .test_etcd import all_workers_at, etcd, etcd_conf, put  # noqa: F401 (etcd: a fixture)


def scrape(gw):
    status, body = gw.admin_get("/metrics")
    assert status == 200, body
    return body.decode()


def test_a_target_removed_through_etcd_leaves_metrics(launcher, etcd, upstream, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], workers=1))
    client = etcd.client()
    passive = {"consecutive_failures": 1, "eject_for": 3600}
    put(client, "upstreams", "up", {"targets": [{"url": upstream.url}, {"url": dead}],
                                    "passive": passive})
    revision = put(client, "routes", "r", {"paths": ["/*rest"], "upstream": "up"})
    wait_until(lambda: all_workers_at(gw, revision))
    for _ in range(4):
        gw.request("GET", "/x")                         # the dead one is tried and ejected
    wait_until(lambda: sample(scrape(gw), "gwserver_upstream_target_up", target=dead) == 0)
    revision = put(client, "upstreams", "up", {"targets": [{"url": upstream.url}],
                                               "passive": passive})
    wait_until(lambda: all_workers_at(gw, revision))
    worker = gw.worker_pids()
    text = scrape(gw)
    assert sample(text, "gwserver_upstream_target_up", target=upstream.url) == 1, text
    assert sample(text, "gwserver_upstream_target_up", target=dead) is None, text
    assert gw.worker_pids() == worker           # the same live worker: no restart did it
