"""A Redis Sentinel that names no master, said in words (found 2026-12-07, an open item).

redis-py's MasterNotFoundError carries the repr of each sentinel's client, pool options and
all, some 1,500 bytes per sentinel: ``gwserver rollouts`` printed 4 KB of it for three
sentinels, and the worker's log line, cut at 200 characters, named no sentinel and no cause
("No master found for 'mymaster' : <redis.client.Redis(<redis.connection.ConnectionPool(...").
Both now say which sentinel failed and why, or that the sentinels answered without the master.
The first two tests failed before; the last one's line was short already ("No master found for
'not-monitored'") and failed on the new words alone: it pins them.
"""
import subprocess
import sys

from ..conftest import ROOT, free_port, gateway_conf, route, to_toml, wait_until
from .test_auth_edges import get


def sentinel_conf(upstream, url):
    return gateway_conf([route("lim", ["/lim"], upstream.url, plugins={"rate_limit": {
        "rate": 1000, "per": 3600, "burst": 1000, "key": "route",
        "on_store_error": "allow"}})], redis={"url": url})


def test_rollouts_cli_names_each_dead_sentinel_in_a_line(upstream, tmp_path):
    ports = [free_port() for _ in range(3)]
    url = "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in ports) + "/mymaster"
    conf = sentinel_conf(upstream, url)
    conf["server"]["state_dir"] = str(tmp_path / "state")
    path = tmp_path / "gw.toml"
    path.write_text(to_toml(conf))
    done = subprocess.run([sys.executable, "-m", "gwserver", "rollouts", "status", "lim",
                           "-c", str(path)], capture_output=True, text=True, timeout=60,
                          cwd=ROOT)
    assert done.returncode == 2, done
    said = done.stderr
    # before: 4,000-odd characters of "<redis.client.Redis(<redis.connection.ConnectionPool..."
    assert len(said) < 400 and "<redis" not in said, said
    assert "no master for 'mymaster'" in said, said
    for port in ports:
        assert f"sentinel 127.0.0.1:{port}: connection refused" in said, said


def test_the_workers_log_says_which_sentinel_failed_and_why(launcher, upstream):
    port = free_port()
    gw = launcher.gateway(sentinel_conf(upstream, f"redis+sentinel://127.0.0.1:{port}/mymaster"))
    assert get(gw.port, "/lim")[0] == 200         # on_store_error = "allow"
    wait_until(lambda: "redis unreachable" in gw.log(), timeout=10)
    line = next(line for line in gw.log().splitlines() if "redis unreachable" in line)
    # before: "redis unreachable (No master found for 'mymaster' : <redis.client.Redis(<redis.co"
    assert f"no master for 'mymaster': sentinel 127.0.0.1:{port}: connection refused" in line, \
        line


def test_a_sentinel_that_does_not_know_the_master_says_so(launcher, upstream):
    _, _, sentinel = launcher.redis_sentinel()
    gw = launcher.gateway(sentinel_conf(
        upstream, f"redis+sentinel://127.0.0.1:{sentinel.port}/not-monitored"))
    assert get(gw.port, "/lim")[0] == 200
    wait_until(lambda: "redis unreachable" in gw.log(), timeout=10)
    line = next(line for line in gw.log().splitlines() if "redis unreachable" in line)
    assert "no sentinel names a healthy master for 'not-monitored'" in line, line
