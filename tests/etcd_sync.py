"""One etcd, one upstream ("users") and one gateway syncing PREFIX, for test files whose tests
share them (each test writes keys of its own), and the reads those tests make of the sync:
status.json and the `gwserver routes` CLI."""
import json
import os
import subprocess
import sys

from .conftest import Launcher, gateway_conf, wait_until

PREFIX = "/gw"


def synced_gateway(tmp):
    """Yield (launcher, etcd, gw, tmp), the upstream "users" put in etcd; stop them after."""
    launcher = Launcher(tmp)
    try:
        etcd = launcher.etcd()
        upstream = launcher.upstream("users")
        gw = launcher.gateway(gateway_conf([], etcd={
            "endpoints": [etcd.url], "prefix": PREFIX, "runtime_dir": str(tmp / "run"),
            "snapshot_path": str(tmp / "snapshot.json")}))
        etcd.client().put(f"{PREFIX}/upstreams/users",
                          json.dumps({"targets": [{"url": upstream.url}]}))
        yield launcher, etcd, gw, tmp
    finally:
        launcher.close()


def gwcli(conf, *args, stdin=None):
    """`gwserver ARGS[0] -c CONF ARGS[1:]`, its output as text."""
    return subprocess.run([sys.executable, "-m", "gwserver", args[0], "-c", str(conf),
                           *args[1:]], capture_output=True, text=True, input=stdin, timeout=30)


def routes_status(gw):
    return gwcli(gw.conf_path, "routes", "status")


def status_json(gw):
    with open(os.path.join(gw.conf["etcd"]["runtime_dir"], "status.json")) as f:
        return json.load(f)


def settle(gw, total):
    """Until status.json counts ``total`` keys no item is read from."""
    wait_until(lambda: status_json(gw).get("unread_total") == total, timeout=10)
