"""Open items of [redis] url, each against real Redis servers.

1. ``redis+cluster://gw:pw@n1,n2,n3`` and ``redis+sentinel://gw:pw@s1/master``: the gateway's
   own parser of such URLs kept the password and dropped the user name, so AUTH went as the
   default user: WRONGPASS where that user has a password of its own, and every limit fell
   back to ``on_store_error`` for good (Redis takes any AUTH for a default user without a
   password, so a server set up that way hid the loss). A plain
   ``redis://gw:pw@host`` URL, read by redis-py, always passed the user.
2. ``redis://host/0?socket_timeout=5`` (or ``retry_on_timeout=true``): redis-py lets a URL's
   options override its caller's, so the URL's took the place of the gateway's fail-fast
   ones, and a hung Redis held each decision 5 s where ``[redis] timeout`` promised the
   fallback after it. The gateway's now win, and `check` says the URL's are not used.
3. ``?password=pa+ss``: redis-py reads the "+" as a space, so AUTH failed with no word of
   why; `check` says it now.
"""
import os
import signal
import subprocess
import sys
import time

from ..conftest import gateway_conf, route, to_toml, wait_until


def acl_user(port):
    """User "gw" on the server at ``port``, and a password of its own on the default user
    (with none, Redis takes any AUTH as the default user's, and a lost name went unseen)."""
    for command in (["acl", "setuser", "gw", "on", ">s3cret-acl", "~*", "+@all"],
                    ["config", "set", "requirepass", "default-pw"]):
        subprocess.run(["redis-cli", "-p", str(port), *command], check=True,
                       capture_output=True, timeout=10)


def dbsize(port):
    return int(subprocess.run(["redis-cli", "-p", str(port), "--user", "gw", "--pass",
                               "s3cret-acl", "--no-auth-warning", "dbsize"],
                              capture_output=True, text=True, timeout=10).stdout)


def exact_limit(gw):
    """Five requests on a route limited to three: exact only while Redis decides (the
    fallback, deny, would answer 503 for each)."""
    return [gw.request("GET", "/lim")[0].status for _ in range(5)]


def limited_route(upstream):
    return route("lim", ["/lim"], upstream.url, plugins={"rate_limit": {
        "rate": 3, "per": 3600, "burst": 3, "key": "route", "on_store_error": "deny"}})


def test_a_cluster_url_authenticates_as_its_acl_user(launcher, upstream):
    ports, url = launcher.redis_cluster()
    for port in ports:
        acl_user(port)
    acl_url = url.replace("redis+cluster://", "redis+cluster://gw:s3cret-acl@")
    gw = launcher.gateway(gateway_conf([limited_route(upstream)], workers=1,
                                       redis={"url": acl_url, "timeout": 0.5}))
    assert exact_limit(gw) == [200] * 3 + [429] * 2
    assert sum(dbsize(p) for p in ports) == 1                      # the limit's key: Redis decided
    assert "s3cret-acl" not in gw.log()


def test_a_sentinel_url_authenticates_to_the_master_as_its_acl_user(launcher, upstream):
    master, _, sentinel = launcher.redis_sentinel()
    acl_user(master.port)                       # the Sentinel itself takes no password here
    subprocess.run(["redis-cli", "-p", str(sentinel.port), "sentinel", "set", "gwmaster",
                    "auth-pass", "default-pw"], check=True, capture_output=True, timeout=10)
    url = f"redis+sentinel://gw:s3cret-acl@127.0.0.1:{sentinel.port}/gwmaster"
    gw = launcher.gateway(gateway_conf([limited_route(upstream)], workers=1,
                                       redis={"url": url, "timeout": 0.5}))
    assert exact_limit(gw) == [200] * 3 + [429] * 2
    assert dbsize(master.port) == 1
    assert "s3cret-acl" not in gw.log()


def test_a_urls_own_timeouts_do_not_hold_decisions_on_a_hung_redis(launcher, upstream, tmp_path):
    server = launcher.redis()
    url = f"{server.url}?socket_timeout=5&socket_connect_timeout=5&retry_on_timeout=true"
    conf = gateway_conf([route("lim", ["/lim"], upstream.url, plugins={"rate_limit": {
        "rate": 100, "per": 60, "key": "route", "on_store_error": "allow"}})],
        workers=1, redis={"url": url, "timeout": 0.2, "pause": 30})
    path = tmp_path / "gw.toml"
    path.write_text(to_toml(conf))
    said = subprocess.run([sys.executable, "-m", "gwserver", "check", "-c", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert said.returncode == 0, said.stdout + said.stderr
    assert "redis.url sets socket_timeout, socket_connect_timeout, retry_on_timeout: not " \
        "used, the gateway sets them to fail fast (redis.timeout, 0.2 s" in said.stdout
    gw = launcher.gateway(conf)
    assert gw.request("GET", "/lim")[0].status == 200          # decided by Redis
    os.kill(server.pid, signal.SIGSTOP)
    try:
        began = time.monotonic()
        assert gw.request("GET", "/lim")[0].status == 200      # on_store_error: allow
        waited = time.monotonic() - began
    finally:
        os.kill(server.pid, signal.SIGCONT)
    assert waited < 2.0, f"a hung Redis held the request {waited:.1f} s"
    wait_until(lambda: "redis did not answer a decision within 0.200s" in gw.log(), timeout=5)


def test_check_says_a_plus_in_a_query_password_is_a_space(tmp_path):
    """3. ``?password=a+b`` is password "a b" to redis-py (a form decoder's reading): AUTH
    failed, and nothing said why; `check` now says it, and %2B passes without a word."""
    for password, warned in (("pa+ss", True), ("pa%2Bss", False), ("pa ss", False)):
        conf = gateway_conf([], redis={"url": f"redis://127.0.0.1:6379/0?password={password}"})
        path = tmp_path / "gw.toml"
        path.write_text(to_toml(conf))
        said = subprocess.run([sys.executable, "-m", "gwserver", "check", "-c", str(path)],
                              capture_output=True, text=True, timeout=60)
        assert said.returncode == 0, said.stdout + said.stderr
        assert ("?password= holds a \"+\", which redis-py reads as a space: write it %2B"
                in said.stdout) is warned, said.stdout
        assert "pa+ss" not in said.stdout and "pa%2Bss" not in said.stdout
