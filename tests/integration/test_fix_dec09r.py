"""Fixes of Dec 9 (r): an inline upstream that names a ``service``.

A route's (or its ``split``'s) inline ``{"service": "orders"}`` was accepted, and answered 503
"no live instance of service orders" for good, instances registered or not: config-sync expands
only named upstreams with the live instances (workers compile inline upstreams from the route's
value, and never see instances). It is refused now, with a reason that says to name an
upstream, in etcd (status, `routes check`) and in the conf file (`gwserver check`).

The same of the conf file's named upstream ``[upstreams.orders] service = "orders"``: with
[etcd], `gwserver check` passed it and it answered 503 for good (config-sync expands upstreams
from etcd only; workers build the conf file's own). Refused now, saying to put it in etcd.
"""
import json

from ..conftest import check_conf, gateway_conf, wait_until
from .test_etcd import PREFIX, all_workers_at, etcd_conf, put, status_of
from .test_health_attack_dec05e import register

INLINE = "an inline upstream cannot follow a service"


def test_a_route_from_etcd_with_an_inline_service_upstream_is_refused(launcher, tmp_path):
    """Before: accepted (nothing in status' rejected), and 503 "no live instance" with an
    instance registered. Now refused with the reason; its paths are fenced (503), and the
    route written with a named upstream of that service serves the instance."""
    orders = launcher.upstream("orders")
    etcd = launcher.etcd()
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url]))
    client = etcd.client()
    register(client, "orders", "i1", orders.url)
    put(client, "upstreams", "orders", {"service": "orders"})
    put(client, "routes", "o", {"paths": ["/o/*rest"], "strip_prefix": "/o",
                                "upstream": {"service": "orders"}})
    revision = put(client, "routes", "s", {"paths": ["/s/*rest"], "upstream": "orders", "plugins": {
        "split": {"upstreams": [{"upstream": {"service": "orders"}, "group": "a",
                                 "weight": 1}]}}})
    wait_until(lambda: all_workers_at(gw, revision))
    rejected = status_of(gw)["rejected"]
    assert INLINE in rejected.get("routes/o", ""), rejected
    assert INLINE in rejected.get("routes/s", ""), rejected
    assert gw.request("GET", "/o/echo")[0].status == 503
    revision = put(client, "routes", "o", {"paths": ["/o/*rest"], "strip_prefix": "/o",
                                           "upstream": "orders"})
    wait_until(lambda: all_workers_at(gw, revision))
    resp, body = gw.request("GET", "/o/echo")
    assert resp.status == 200 and json.loads(body)["server"] == "orders"
    assert "routes/o" not in status_of(gw)["rejected"]


def test_a_static_route_with_an_inline_service_upstream_is_refused_by_check(tmp_path):
    """The conf file's route: before, `gwserver check` passed it and it answered 503 for
    good (its instances never reach a static route's inline upstream), with or without
    [etcd]."""
    inline = {"id": "o", "paths": ["/o/*rest"], "upstream": {"service": "orders"}}
    for conf in (gateway_conf([inline]),
                 gateway_conf([inline], etcd={"endpoints": ["http://127.0.0.1:1"],
                                              "prefix": PREFIX,
                                              "runtime_dir": str(tmp_path / "run")})):
        code, output = check_conf(tmp_path, conf)
        assert code != 0 and INLINE in output, output


def test_a_conf_file_upstream_that_follows_a_service_is_refused_by_check(tmp_path):
    conf = gateway_conf([{"id": "o", "paths": ["/o/*rest"], "upstream": "orders"}],
                        etcd={"endpoints": ["http://127.0.0.1:1"], "prefix": PREFIX,
                              "runtime_dir": str(tmp_path / "run")},
                        upstreams={"orders": {"service": "orders"}})
    code, output = check_conf(tmp_path, conf)
    assert code != 0 and "an upstream in the conf file cannot follow a service" in output, \
        output


def test_a_conf_file_upstream_with_targets_and_a_service_serves_its_targets_with_a_warning(
        tmp_path):
    """With targets beside it, such an upstream served them and ignored its service: refused,
    a gateway that served would not start after an upgrade. It passes, and check says the
    service is ignored."""
    conf = gateway_conf([{"id": "o", "paths": ["/o/*rest"], "upstream": "orders"}],
                        upstreams={"orders": {"service": "orders",
                                              "targets": [{"url": "http://127.0.0.1:9"}]}})
    code, output = check_conf(tmp_path, conf)
    assert code == 0, output
    assert "upstreams.orders.service: ignored" in output, output
