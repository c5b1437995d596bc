"""Review of the session 02ee800..1d24a58 for regressions (helper v3, 2026-12-06). Every test
starts real gateways (the launcher fixture) and talks to them over loopback; every wait is
bounded. Each test failed on 1d24a58.

1. 73b633c (the router parses a route's paths once, at its check, and keeps them in
   Router._placed for the add and the removal) kept every path's parsed segments, a list of
   (kind, text) tuples with a string each, for the route's whole life, in every worker: a
   table of 15,000 paths of 7 segments (300 routes of 50 paths, REST resources under one
   prefix) grew a worker by 27 MB where it grew it by 14 MB before, the router alone 7 MB
   -> 19.6 MB. Only the removal needed them (check and add share one parse); it splits the
   paths again (router._segments: no checks, a route in the router passed them), and the
   memory is what it was.
"""
import time

from ..conftest import gateway_conf, route, wait_until

PATHS_PER_ROUTE, ROUTES = 50, 300


def worker_rss_mb(gw):
    """The resident size of the gateway's worker (workers = 1), in MiB, once it is ready."""
    wait_until(lambda: gw.admin_get("/-/ready")[0] == 200, timeout=30)
    time.sleep(0.5)
    for pid in gw.worker_pids():
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"worker" not in f.read():
                continue
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    raise AssertionError("no worker")


def deep_paths_table(url):
    return [{"id": f"r{i}", "paths": [f"/api/v1/org/team/service/resource/item{i}-{j}"
                                      for j in range(PATHS_PER_ROUTE)],
             "upstream": {"targets": [{"url": url}]}} for i in range(ROUTES)]


def test_a_table_of_many_paths_keeps_no_parsed_copy_of_them(launcher, upstream):
    small = launcher.gateway(gateway_conf([route("r", ["/x"], upstream.url)]))
    big = launcher.gateway(gateway_conf(deep_paths_table(upstream.url)))
    grown = worker_rss_mb(big) - worker_rss_mb(small)
    paths = PATHS_PER_ROUTE * ROUTES
    # ~14 MB for the table (~1 KB a path); 27 MB with the parsed paths kept
    assert grown < 20, f"{paths} paths grew the worker by {grown:.1f} MB"
    resp, _ = big.request("GET", "/api/v1/org/team/service/resource/item7-42")
    assert resp.status == 200
