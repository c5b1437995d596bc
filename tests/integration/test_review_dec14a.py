"""Review r14 of eb9f1fd, 09c8d3e, 0b818c6, 9d6740b and 85ffb2b, against real gateways,
etcd and upstreams on loopback.

1. (9d6740b) An adaptive limit's rate gauge joined the BY_ROUTE families, whose series of
   route "none" (requests no route took) are always kept. A route may be named "none"
   (core.routes.ROUTE_ID): removed through etcd, its gwserver_rate_limit_effective_rate
   stayed on /metrics for the worker's life, as every removed route's did before dec08h
   (the gauge has no series of no route: "none" there is always a route's). Since 45fe6e1 a
   route may not be named "none" (its id was the label of requests no route took): the
   test now holds that such a route in etcd is refused by name and leaves no gauge of
   route="none", while its neighbour is served and reported.

Checked, no defect: 09c8d3e's finish() against 09c8d3e^ (h2proxy.py swapped in, one
gateway, h2c scripted upstream): 140 exchanges (HTTP/1.1, HTTP/1.0 and HTTP/2 clients;
gRPC-Web binary and text, native gRPC with and without grpc-timeout, plain answers with and
without TE: trailers, content-length, trailers; a stall between messages past the read
timeout and the deadline) byte for byte the same but for trace ids. eb9f1fd: ten requests
(half with 21 KiB heads) on a connection closed without SETTINGS all get 502s (the reopened
connection shared), nine waiters on a connection of 1 stream that fails after SETTINGS go to
the next connection and get 200s; in_root agrees with the kernel for all 4,205 of 60,000
random paths (absolute, relative and chained links, loops, '..' past the root, a link to /)
the kernel opens. 0b818c6: test_attack_dec12a (a 101, 17 interim heads, 64 KiB of them, the
HTTP/2 health probe) passes.
"""
from ..conftest import wait_until
from .test_attack_dec08h import series
from .test_etcd import all_workers_at, etcd_conf, put
from .test_review_dec15a import etcd_rejected


def test_an_adaptive_route_named_none_in_etcd_is_refused_and_leaves_no_gauge(launcher,
                                                                             tmp_path):
    etcd = launcher.etcd()
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], workers=1))
    client = etcd.client()
    put(client, "upstreams", "up", {"targets": [{"url": "http://127.0.0.1:9"}]})
    plugins = {"rate_limit": {"rate": 10, "burst": 1000, "key": "route",
                              "adaptive": {"floor": 4, "ceiling": 15}}}
    put(client, "routes", "none", {"paths": ["/none"], "upstream": "up", "plugins": plugins})
    put(client, "routes", "kept", {"paths": ["/kept"], "upstream": "up", "plugins": plugins})
    wait_until(lambda: all_workers_at(gw, client.revision()))
    assert gw.request("GET", "/none")[0].status == 404      # refused: no route took it
    assert gw.request("GET", "/kept")[0].status == 502
    assert etcd_rejected(gw)["routes/none"].startswith("route none: id: "), etcd_rejected(gw)
    # before 45fe6e1 the route served, and its gauge stayed after its removal (dec14a)
    assert set(series(gw, "gwserver_rate_limit_effective_rate")) == {'route="kept"'}
