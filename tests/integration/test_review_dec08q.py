"""Review dec08q of b011f8e, 6cc0d7f, ced6ee3 and c095015, against real gateways, etcd,
upstreams and helpers on loopback. Each test was seen failing before its fix."""
import os
import signal
import time

import pytest

from ..conftest import check_conf, wait_until
from ..pki import CA
from .test_etcd import all_workers_at, etcd_conf, put, serves, status_of
from .test_review_dec08g import tls_upstream_and_bundle


@pytest.fixture
def etcd(launcher):
    return launcher.etcd()


# -- 1. config-sync restarted while an etcd upstream's ca_file is bad -----------------------

def etcd_tls_route(launcher, etcd, tmp_path, spoiled=False):
    """A gateway in etcd mode whose route /t/* goes to a TLS upstream "tu" whose ca_file is
    a bundle a test may spoil (``spoiled``: empty before the upstream is put); -> (gw, up,
    bundle path, its good bytes, the route's revision), every worker at it."""
    up, bundle, good = tls_upstream_and_bundle(launcher, tmp_path)
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], workers=1))
    if spoiled:
        bundle.write_bytes(b"")
    client = etcd.client()
    put(client, "upstreams", "tu", {"targets": [{"url": up.url}],
                                    "tls": {"ca_file": str(bundle)}})
    revision = put(client, "routes", "t", {"paths": ["/t/*rest"], "strip_prefix": "/t",
                                           "upstream": "tu"})
    wait_until(lambda: all_workers_at(gw, revision), timeout=4)
    return gw, up, bundle, good, revision


def test_a_sync_process_restarted_while_an_etcd_upstreams_ca_file_is_bad_keeps_it(
        launcher, etcd, tmp_path):
    """ced6ee3 let config-sync boot past the conf's own tls files, not past those of the
    table it takes up from runtime_dir (what it accepted before it was restarted): an etcd
    upstream whose ca_file was caught half-written by `cp` was refused at the take-up, its
    route served a stand-in (503), and so on for good once the file was put right (etcd's
    unchanged value is not tried again). Taken up as accepted, it serves as a static one
    does: each new connection fails on the file while it is bad, then all work again."""
    gw, up, bundle, good, revision = etcd_tls_route(launcher, etcd, tmp_path)
    assert serves(gw, "/t/echo") == 200
    first = wait_until(lambda: (status_of(gw) or {}).get("pid"), timeout=3)
    bundle.write_bytes(b"")             # caught between cp's truncate and its write
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: (status_of(gw) or {}).get("pid") not in (None, first) and
               (status_of(gw) or {}).get("connected"), timeout=5)
    time.sleep(0.3)                     # (the workers read the generation it published)
    # kept (a 502 on a new connection, which loads the file; a pooled one still works),
    # never the stand-in's 503; and said: etcd's value is refused, the one taken up serves
    assert serves(gw, "/t/echo") in (200, 502), gw.log()[-2500:]
    assert "is empty (the previous version keeps serving)" in gw.log(), gw.log()[-2500:]
    bundle.write_bytes(good)            # cp done
    assert serves(gw, "/t/echo") == 200, gw.log()[-2500:]



# -- 2. a global split's inline upstream, with every route in etcd ---------------------------

def test_check_loads_a_global_splits_inline_tls_files_with_no_static_route(tmp_path):
    """[plugins] split's inline upstreams were linked (their tls files loaded) only with a
    route's chain: with every route in etcd, `check` (start, reload) said ok to an empty
    ca_file there, and config-sync then refused every route from etcd on it ("upstream
    e.plugins.split.upstreams[1]: tls.ca_file: ... is empty", a 404)."""
    bundle = tmp_path / "g-ca.pem"
    bundle.write_bytes(b"")
    conf = etcd_conf(tmp_path, ["http://127.0.0.1:9"], workers=1)     # (check calls no etcd)
    conf["upstreams"] = {"main": {"targets": [{"url": "http://127.0.0.1:9"}]}}
    conf["plugins"] = {"split": {"upstreams": [
        {"upstream": "main", "weight": 100},
        {"upstream": {"targets": [{"url": "https://127.0.0.1:9"}],
                      "tls": {"ca_file": str(bundle)}}, "weight": 0, "group": "g"}]}}
    code, said = check_conf(tmp_path, conf)
    assert code != 0, said
    assert f"upstream global.plugins.split.upstreams[1]: tls.ca_file: {bundle} is empty" in \
        said, said
    bundle.write_bytes(CA(tmp_path).cert_path.read_bytes())
    code, said = check_conf(tmp_path, conf)
    assert code == 0, said
