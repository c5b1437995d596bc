"""What the idle-connections gauge and /admin/upstreams call a target (Dec 09, e).

1. ``gwserver_upstream_pool_idle_connections{target}`` and /admin/upstreams'
   ``pools_in_this_worker`` named a target by its pool's parts, ``scheme://host:port``: an
   IPv6 target ``http://[::1]:P`` was ``http://::1:P``, a URL of no target, so the gauge could
   not be joined with ``gwserver_upstream_connections_opened`` or ``target_up``, which say the
   URL as the operator wrote it. They say that URL now.
2. An HTTP/2 upstream's connection was in neither: a worker holding one open to an h2 target
   showed no connection to it at all. It is counted now, idle while it carries no stream.
"""
import json

from ..conftest import gateway_conf, wait_until
from ..h2_upstreams import StreamingH2Upstream
from .test_attack_dec08h import series
from .test_health_attack_dec05e import NGINX_BOTH


def test_an_ipv6_targets_idle_connections_are_labelled_with_its_url(launcher):
    url = f"http://[::1]:{launcher.nginx('v6', NGINX_BOTH)}"
    gw = launcher.gateway(gateway_conf(
        [{"id": "r", "paths": ["/r"], "upstream": {"targets": [{"url": url}]}}], workers=1))
    assert gw.request("GET", "/r")[0].status == 200
    assert series(gw, "gwserver_upstream_pool_idle_connections") == {f'target="{url}"': 1.0}
    assert f'target="{url}"' in series(gw, "gwserver_upstream_connections_opened_total")
    pools = json.loads(gw.admin_get("/admin/upstreams")[1])["pools_in_this_worker"]
    assert list(pools) == [url], pools


def test_an_h2_upstreams_connection_is_shown_idle_between_requests(launcher):
    up = StreamingH2Upstream()
    try:
        url = f"http://127.0.0.1:{up.port}"
        gw = launcher.gateway(gateway_conf(
            [{"id": "h2", "paths": ["/h2"],
              "upstream": {"targets": [{"url": url}], "protocol": "h2"}}], workers=1))
        assert gw.request("GET", "/h2")[0].status == 200
        # (the stream ends as its answer is relayed: the gauge is set once a second)
        wait_until(lambda: series(gw, "gwserver_upstream_pool_idle_connections") ==
                   {f'target="{url}"': 1.0}, timeout=5)
        pools = json.loads(gw.admin_get("/admin/upstreams")[1])["pools_in_this_worker"]
        assert pools == {url: {"idle": 1, "max": 1}}
    finally:
        up.close()
