"""Review of 2026-12-05 (f, a helper's): a second look at the day's later changes (health and
discovery, open items, pools, the first review's fixes, consumers, limits), attacked through
real gateways and loopback upstreams. Each numbered defect is shown by a test that failed
before its fix.

1. With ``block_when_full``, a target whose pool is full is skipped without waiting "while
   another target is left" (the pools pass). "Left" counted every target of the upstream,
   the ones health checks had taken out too: with the only healthy target's pool full and
   the other target down, the request skipped the healthy one, found every target avoided,
   and the balancer's plain choice among all of them sent it to the target health checks
   had taken out (here: its 500). Before the pools pass it waited for the healthy target's
   connection and was served. A full pool is skipped now only when a target the request
   could go to is left (not tried, not down, not refusing connections, weight above 0).
2. The limits pass keeps a ``claim:NAME`` value in a limit's key only when it is "plain"
   (letters, digits, ``_.@+=-``), and hashes any other. The subjects of the most common
   identity provider are not: Auth0's ``sub`` is ``auth0|5f7c...`` (``google-oauth2|1234``
   for its social logins). Every such client's bucket moved to a new key at the deploy:
   a client the limit had emptied (a daily quota, ``per = 86400``) got its whole capacity
   again, and neither the docs nor the upgrade notes said so (the sliding windows that start
   over once, by the same pass, were not said in the docs either). ``|`` (and ``/``), which
   neither spell a key part nor choose a Cluster slot, are plain now, so such keys stay where
   they were; the upgrade notes name the state that starts over once.
"""
import threading
import time

from ..conftest import gateway_conf, wait_until
from .test_attack_pass_dec03d import ScriptedHttp1, exchange
from .test_health import target_health
from .test_limits_attack_dec05e import answer, claim_limited, cli, redis_now
from .test_traffic import token

DOWN = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\ndown"


class BrokenHttp1(ScriptedHttp1):
    """An upstream that answers 500 to everything: its health checks fail."""

    def __init__(self):
        super().__init__({})

    def answer(self, head, count):
        self.lines.append(head.split(b"\r\n")[0])
        return DOWN


# -- 1. a full pool skipped to a target health checks took out --------------------------------

def test_a_full_pool_waits_when_the_other_target_is_down(launcher):
    up = ScriptedHttp1({b"/slow": lambda n: (time.sleep(1.0), b"HTTP/1.1 200 OK\r\n"
                                             b"Content-Length: 4\r\n\r\nslow")[1]})
    down = BrokenHttp1()
    check = {"interval": 0.2, "timeout": 0.3, "healthy_threshold": 2,
             "unhealthy_threshold": 2, "max_interval": 1.0, "path": "/check"}
    try:
        gw = launcher.gateway(gateway_conf(
            [{"id": "r", "paths": ["/*rest"], "upstream": "pool"}], workers=1,
            upstreams={"pool": {"targets": [{"url": up.url}, {"url": down.url}],
                                "pool_size": 1, "block_when_full": True,
                                "health_check": check}},
            upstream_defaults={"pool_timeout": 3.0}))
        wait_until(lambda: target_health(gw) == {up.url: "healthy", down.url: "unhealthy"},
                   timeout=10)
        for _ in range(4):          # the balancer's plain choice alternates: 4 rounds
            held = threading.Thread(target=exchange, args=(
                gw.port, b"GET /slow HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"))
            slow_before = up.lines.count(b"GET /slow HTTP/1.1")
            held.start()            # the healthy target's only connection is busy for 1 s
            wait_until(lambda: up.lines.count(b"GET /slow HTTP/1.1") == slow_before + 1)
            answer = exchange(gw.port, b"GET /ok HTTP/1.1\r\nHost: h\r\n"
                                       b"Connection: close\r\n\r\n")
            held.join()
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
            assert answer.endswith(b"\r\n\r\nok")
        assert b"GET /ok HTTP/1.1" not in down.lines
    finally:
        up.close()
        down.close()


# -- 2. an identity provider's subjects moved to new keys at the deploy ------------------------

def test_an_auth0_subject_keeps_its_bucket_across_the_deploy(launcher, upstream, tmp_path):
    redis, private, gw = claim_limited(launcher, upstream, tmp_path, 5, 86400, "deny")
    for subject in ("auth0|5f7c8ec7c33c6c004bbafe82", "google-oauth2|104528313279145"):
        # The bucket as the release before wrote it: this client spent its day's quota
        key = f"gw:rl:lim:claim:{subject}"
        cli(redis.port, "HSET", key, "t", "0", "ts", f"{redis_now(redis.port):.6f}")
        cli(redis.port, "PEXPIRE", key, "600000")
        bearer = {"Authorization": f"Bearer {token(private, name=subject)}"}
        status, headers, _ = answer(gw, "/lim", bearer)
        assert status == 429, (subject, status)
        assert int(headers["Retry-After"]) > 3600
    assert sorted(cli(redis.port, "--scan", "--pattern", "gw:rl:*").split()) == [
        "gw:rl:lim:claim:auth0|5f7c8ec7c33c6c004bbafe82",
        "gw:rl:lim:claim:google-oauth2|104528313279145"]
