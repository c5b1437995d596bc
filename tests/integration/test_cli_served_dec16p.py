"""`gwserver routes validate` judges what the running gateway refused as the gateway holds
it (routes_cli.keep_served): an etcd upstream update refused over a bad TLS file leaves the
gateway serving the upstream's last good version, and its route with it; judged afresh, the
CLI had no version of that upstream at all, and said of the route unchanged that it waits
for its upstream (503 until it arrives), where the gateway serves it."""
import json

from ..conftest import wait_until
from ..etcd_sync import gwcli
from .test_etcd import etcd, put, serves, status_of  # noqa: F401 (etcd: the fixture)
from .test_review_dec08q import etcd_tls_route

ROUTE = {"id": "t", "paths": ["/t/*rest"], "strip_prefix": "/t", "upstream": "tu"}


def test_validate_of_a_route_whose_upstream_update_was_refused_over_a_file(launcher, etcd,
                                                                          tmp_path):
    gw, up, bundle, good, _ = etcd_tls_route(launcher, etcd, tmp_path)
    empty = tmp_path / "empty.pem"
    empty.write_bytes(b"")
    put(etcd.client(), "upstreams", "tu", {"targets": [{"url": up.url}],
                                           "tls": {"ca_file": str(empty)}})
    wait_until(lambda: "upstreams/tu" in (status_of(gw) or {}).get("rejected", {}), timeout=5)
    assert serves(gw, "/t/echo") == 200         # its last good version serves
    out = gwcli(gw.conf_path, "routes", "validate", "-", stdin=json.dumps(ROUTE))
    assert out.returncode == 0 and "ok: 1 routes valid" in out.stdout, (out.stdout, out.stderr)
    assert "waits" not in out.stdout + out.stderr and "arrives" not in out.stdout + out.stderr, \
        (out.stdout, out.stderr)
