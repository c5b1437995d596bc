"""etcd answering the sync's calls with an error of its own, said as what it is (found on
2026-12-05, on cf6a422, after the wrong-password fix there).

1. With authentication on in etcd and no [etcd] username in the conf, etcd answers every
   range 400 "user name is empty"; a user whose role has no access to the prefix gets 403
   "permission denied". Both were logged as "etcd unreachable: ... HTTP 400 {...}", and
   `routes status` said "etcd is unreachable from the gateway": a network problem to look
   for, where etcd answered at once and said what was wrong. Now "etcd refused the sync's
   call: ..." with what to do about it, `refused` in status.json, "etcd refuses the
   gateway's calls" in `routes status`, and the CLI's error carries the same remedy.
"""
import json
import os
import subprocess
import sys

import pytest

from ..conftest import wait_until
from .test_etcd import etcd_conf, runtime_of
from .test_etcd_attack_dec05k import enable_auth

CASES = {
    "no user": (dict(), "HTTP 400 etcdserver: user name is empty (gRPC code 3)",
                "etcd has authentication enabled: set [etcd] username and password"),
    "no access": (dict(username="reader", password="reader-pw"),
                  "HTTP 403 etcdserver: permission denied (gRPC code 7)",
                  "the etcd user lacks access to the prefix"),
}


def add_user_without_roles(etcd):
    subprocess.run(["etcdctl", "--endpoints", etcd.url, "--user", "root:s3cret", "user", "add",
                    "reader:reader-pw"], env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
                   check=True, capture_output=True)


@pytest.mark.parametrize("case", CASES)
def test_an_etcd_refusal_is_said_as_one_with_what_to_do(launcher, tmp_path, case):
    credentials, said, remedy = CASES[case]
    etcd = launcher.etcd()
    enable_auth(etcd)
    add_user_without_roles(etcd)
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], workers=1, **credentials))
    assert wait_until(lambda: "etcd refused the sync's call" in gw.log(), timeout=10), \
        gw.log()[-2000:]
    line = next(line for line in gw.log().splitlines() if "etcd refused the sync's call" in line)
    assert said in line and remedy in line, line
    assert "etcd unreachable" not in gw.log(), gw.log()[-2000:]
    status_path = os.path.join(runtime_of(gw), "status.json")
    assert wait_until(lambda: json.load(open(status_path)).get("refused"), timeout=5)
    run = subprocess.run([sys.executable, "-m", "gwserver", "routes", "-c", str(gw.conf_path),
                          "status"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert "problem: etcd refuses the gateway's calls (" in run.stderr, run.stderr
    assert "unreachable" not in run.stderr, run.stderr
    listed = subprocess.run([sys.executable, "-m", "gwserver", "routes", "-c",
                             str(gw.conf_path), "list"], capture_output=True, text=True,
                            timeout=60)
    assert listed.returncode == 2 and said in listed.stderr and remedy in listed.stderr, listed
    assert "reader-pw" not in gw.log() + run.stdout + run.stderr + listed.stderr
