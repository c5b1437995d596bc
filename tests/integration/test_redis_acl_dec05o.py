"""A Redis 6 ACL user in a redis+cluster:// or redis+sentinel:// URL (the open item "usernames in
Sentinel and Cluster URLs are ignored").

1. ``redis+cluster://gw:pw@n1,n2,n3`` and ``redis+sentinel://gw:pw@s1/master``: the gateway's
   own parser of such URLs kept the password and dropped the user name, so AUTH went as the
   default user: WRONGPASS where that user has a password of its own, and every limit fell
   back to ``on_store_error`` for good (Redis takes any AUTH for a default user without a
   password, so a server set up that way hid the loss). A plain
   ``redis://gw:pw@host`` URL, read by redis-py, always passed the user.
"""
import subprocess

from ..conftest import gateway_conf, route


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
