"""A rejected etcd key is one line of the log, whatever it holds.

1. A key under the prefix holding a newline (``/gw/routes/x\\n[...] [INFO] ...``) was logged
   raw in "rejected ...": anyone allowed to write under the prefix (a CI job's credentials)
   could write lines of their choosing into the gateway's log, a fake "reload complete"
   or an "etcd unreachable" that pages an operator. Control characters are escaped now.
"""
from ..conftest import wait_until
from .test_etcd import etcd, etcd_conf, put  # noqa: F401 - etcd: the fixture

FORGED = "[2026-12-05 23:00:00 +0000] [1] [INFO] gwserver.master: reload complete (forged)"


def test_a_rejected_key_with_a_newline_is_one_log_line(launcher, etcd, tmp_path):
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], workers=1))
    put(etcd.client(), "routes", "x\n" + FORGED, {"paths": ["/x"], "upstream": "missing"})
    wait_until(lambda: "rejected /gw/routes/x" in gw.log(), timeout=10)
    lines = gw.log().splitlines()
    assert not any(line.startswith(FORGED) for line in lines), lines[-5:]
    rejected = [line for line in lines if "rejected /gw/routes/x" in line]
    assert rejected and "x\\x0a[2026-12-05" in rejected[0], rejected
