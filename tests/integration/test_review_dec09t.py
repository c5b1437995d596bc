"""Review dec09t of d58734a (the etcd password read at each authentication, redis-py's TLS
connection stating its files, retry_files taking put's word), against real gateways, etcd
and upstreams on loopback. Each test was seen failing before its fix."""
import pytest

from ..conftest import wait_until
from .test_etcd import all_workers_at, etcd_conf, put, serves, sync_pid
from .test_review_dec08g import tls_upstream_and_bundle


@pytest.fixture
def etcd(launcher):
    return launcher.etcd()


# -- 1. one file put right: an upstream and a route refused over it, retried together ------------

def test_an_upstream_and_a_route_refused_over_one_file_are_both_retried(
        launcher, etcd, tmp_path):
    """retry_files walks a copy of the refusals: the upstream, accepted first, puts again
    every route still rejected (_recompile_users), and the route, accepted there, left the
    refusals; the walk then reached its stale entry and `del` raised KeyError out of the
    sync process's loop (a traceback, the process restarted, the etcd watch lost)."""
    up, bundle, good = tls_upstream_and_bundle(launcher, tmp_path)
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], workers=1))
    bundle.write_bytes(b"")                 # caught mid-`cp`: both refused over it
    tls = {"ca_file": str(bundle)}
    client = etcd.client()
    put(client, "upstreams", "u", {"targets": [{"url": up.url}], "tls": tls})
    put(client, "routes", "a", {"paths": ["/a/*rest"], "strip_prefix": "/a", "upstream": "u"})
    revision = put(client, "routes", "r", {
        "paths": ["/r/*rest"], "strip_prefix": "/r",
        "upstream": {"targets": [{"url": up.url}], "tls": tls}})
    wait_until(lambda: all_workers_at(gw, revision), timeout=4)
    assert serves(gw, "/a/echo") == 503 and serves(gw, "/r/echo") == 503
    pid = sync_pid(gw)
    bundle.write_bytes(good)                # put right: retried at the next quiet turn
    wait_until(lambda: serves(gw, "/r/echo") == 200 and serves(gw, "/a/echo") == 200,
               timeout=6)
    log = gw.log()
    assert "Traceback" not in log, log[log.find("Traceback"):][:2500]
    assert sync_pid(gw) == pid
