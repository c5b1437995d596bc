"""Review of this session's newest commits as an attacker (helper v6, 2026-12-06): a4e739c's
retry budget share (RetryBudget.share, the host-share files), 73b633c/48bb0e7's router
(paths kept in Router._placed), 6391446 (HTTP/2 slow heads, an upstream's GOAWAY), 4f322e3.
Unit tests: tests/unit/test_retry_budget_dec06f.py.

1. (a4e739c, unit test.) A worker whose traffic sat in a bucket 2 s old by whole seconds (a
   second and a bit) but that had told none of it yet (its publish came just before the
   burst, the next a little late) took a part of 0 ("no larger than the others'", theirs
   0): a single worker's burst after a quiet while was held to the floor (10 retries where
   60 were left). Nothing told on either side is 1/N now, as at a start.
2. A worker kept a retry budget (and a balancer) for every upstream id it ever served, for
   its life: with upstreams written to etcd and deleted (a deploy's, a tenant's), each
   stayed in the worker's memory and in the share file it rewrites every second, which
   every other worker of the host reads and sums each second. Those of upstreams gone from
   the table are forgotten when the table changes, as forget_gone does for target URLs.
"""
import json
import os
import time
import tomllib

from ..conftest import wait_until
from .test_etcd import UP, all_workers_at, etcd_conf, put, serves

PREFIX = "/gw"


def share_counts(gw):
    """upstream id -> [requests, retries] per live worker's share file."""
    state_dir = tomllib.loads(gw.conf_path.read_text())["server"]["state_dir"]
    directory = os.path.join(state_dir, "share")
    found = {}
    for name in os.listdir(directory):
        if name.endswith(".json") and not name.startswith("probe-"):
            try:
                with open(os.path.join(directory, name)) as f:
                    found[name] = json.load(f).get("counts", {})
            except (OSError, ValueError):
                continue        # replaced meanwhile
    return found


def test_a_deleted_upstreams_budget_is_not_kept_nor_published(launcher, upstream, tmp_path):
    """(2.) Five upstreams, each served once, then deleted from etcd: their budgets left the
    share file (they were in it for the worker's life)."""
    etcd = launcher.etcd()
    client = etcd.client()
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], workers=1))
    put(client, "upstreams", "keep", UP(upstream))
    put(client, "routes", "keep", {"paths": ["/keep"], "upstream": "keep"})
    ids = [f"gone{i}" for i in range(5)]
    for upstream_id in ids:
        put(client, "upstreams", upstream_id, UP(upstream))
        revision = put(client, "routes", upstream_id,
                       {"paths": [f"/{upstream_id}"], "upstream": upstream_id})
    wait_until(lambda: all_workers_at(gw, revision))
    assert all(serves(gw, f"/{upstream_id}") == 200 for upstream_id in ids)
    assert serves(gw, "/keep") == 200
    # published within a second: each served upstream's counts are in the worker's file
    wait_until(lambda: any(set(ids) <= set(counts) for counts in share_counts(gw).values()),
               timeout=10)
    for upstream_id in ids:
        client.delete(f"{PREFIX}/routes/{upstream_id}")
        client.delete(f"{PREFIX}/upstreams/{upstream_id}")
    revision = client.revision()
    wait_until(lambda: all_workers_at(gw, revision))
    assert serves(gw, "/gone0") == 404 and serves(gw, "/keep") == 200
    deadline = time.monotonic() + 10        # a prune (1 s after the change), a publish (1 s)
    while time.monotonic() < deadline:
        files = share_counts(gw)
        if files and not any(set(ids) & set(counts) for counts in files.values()):
            break
        time.sleep(0.2)
    assert files and all("keep" in counts for counts in files.values()), files
    assert not any(set(ids) & set(counts) for counts in files.values()), files
