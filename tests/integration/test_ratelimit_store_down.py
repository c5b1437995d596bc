"""RateLimit-* headers while Redis is down: they report a count only when one was made
(Redis, or the per-host limiter under on_store_error = "local"); "allow" and "deny" count
nothing and send none, rather than a Remaining the gateway made up."""
import http.client

import pytest

from ..conftest import gateway_conf, route, stop_process

HOUR = 3600.0
NAMES = ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset")


def answers(gw, n):
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    out = []
    for _ in range(n):
        conn.request("GET", "/lim")
        resp = conn.getresponse()
        resp.read()
        limit, remaining, reset = (resp.getheader(name) for name in NAMES)
        out.append((resp.status, (limit, remaining, reset and "set")))
    conn.close()
    return out


@pytest.mark.parametrize("mode, down", [
    ("allow", [(200, (None, None, None))] * 4),
    ("deny", [(503, (None, None, None))] * 4),
    ("local", [(200, ("3", "2", "set")), (200, ("3", "1", "set")), (200, ("3", "0", "set")),
               (429, ("3", "0", "set"))]),          # the per-host count, from 3 again
])
def test_ratelimit_headers_with_redis_stopped(launcher, upstream, mode, down):
    redis = launcher.redis()
    limit = {"rate": 3, "per": HOUR, "burst": 3, "key": "route", "on_store_error": mode}
    gw = launcher.gateway(gateway_conf([route("lim", ["/lim"], upstream.url,
                                              plugins={"rate_limit": limit})],
                                       redis={"url": redis.url, "timeout": 0.05}))
    assert answers(gw, 1) == [(200, ("3", "2", "set"))]        # Redis counts while it is up
    stop_process(redis)
    assert answers(gw, 4) == down
    assert "redis unreachable" in gw.log()
