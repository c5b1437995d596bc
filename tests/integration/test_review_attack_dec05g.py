"""Attack pass (Dec 05 g, a review of the day's last commits: 08b6a32, 320912e, 20a41f1,
c677803), against real processes. Each defect below is shown by a test that failed on the
code before its fix and passes with it.

1. A [redis] url whose password holds a "/" (base64's), a "?" or a "#", not percent-encoded:
   the new check (c677803: the url read as redis-py reads it) refused it rightly, but in
   redis-py's own words, "Port could not be cast to integer value as 's3cr3t'": the piece
   of the password before the "/" (all of it, for one with a trailing "/") in the master's
   log, in master.json and in `gwserver reload`'s answer, where every other check masks a
   URL's user part. Now a piece of the user part is masked, and the refusal says what to
   do (percent-encode it).
2. A restart of the rollouts helper (killed, hung and restarted by the master, the gateway
   restarted) held every running step its whole interval again, from the restart: 20a41f1
   holds a step on how long the helper itself has seen it, and a new helper had seen
   nothing. Steps of an hour, and a helper restarted more often than that (a deploy, a
   config tool restarting the service), never promoted. The time this host first saw each
   step is kept in the state_dir, on the system's monotonic clock (within one boot): a
   restarted helper goes on counting from there.

Held up: two `gwserver reload`s 0.3 s apart and a bare SIGHUP (merged by RELOAD_SPACING),
each answered with its own verdict in 1.5 s; a stop (SIGTERM) with a download past a 1 s
graceful_timeout took 2.3 s, the cut download logged with its status, bytes and why;
GreenletExit re-raised wherever the day's commits catch it (an HTTP/2 stream's StreamKilled
still meets ClientGone first); the breaker's refusal counted for the group split chose (split
runs before breaker); forget_gone keeps counts with requests in flight; the HTTP/2 connect
timeout of a split's upstream is the one HTTP/1.1 uses; redis-py's from_url reads a plain
URL with the very parse_url the check now calls (nothing it accepts is refused).
"""
import json
import os
import signal
import subprocess
import sys
import time

from ..conftest import gateway_conf, route, to_toml, wait_until
from .test_rollout_attack_dec05f import shop_conf, split_conf
from .test_rollouts import Load, rollout_of


# -- 1. a redis url's password in the refusal ----------------------------------------------------

def test_a_redis_url_with_an_unencoded_slash_in_its_password_is_refused_without_it(
        start_gateway, upstream):
    """`gwserver reload` of a conf whose [redis] url has a password with a "/": refused (no
    worker could read it), and neither the log, master.json nor the CLI's answer holds the
    password or a piece of it."""
    gw = start_gateway(gateway_conf([route("e", ["/echo"], upstream.url)]))
    secret = "Zm9vYmFyc2VjcmV0"
    edited = json.loads(json.dumps(gw.conf))
    edited["redis"] = {"url": f"redis://:{secret}/x@127.0.0.1:6379/0"}
    gw.conf_path.write_text(to_toml(edited))
    answer = subprocess.run([sys.executable, "-m", "gwserver", "reload", "-c",
                             str(gw.conf_path), "--timeout", "20"], capture_output=True,
                            text=True, timeout=60)
    assert answer.returncode == 1, answer
    wait_until(lambda: "reload refused" in gw.log())
    status = open(os.path.join(gw.conf["server"]["state_dir"], "master.json")).read()
    for where, text in (("log", gw.log()), ("master.json", status),
                        ("gwserver reload", answer.stdout + answer.stderr)):
        assert secret not in text, where
    assert "redis.url: redis-py cannot read this URL: Port could not be cast to integer " \
           "value as '***'; a user or password holding \"/\", \"?\" or \"#\" must be " \
           "percent-encoded (%2F, %3F, %23)" in gw.log()
    assert gw.request("GET", "/echo")[0].status == 200      # the old workers serve on


# -- 2. a restarted rollouts helper holds every step its interval again ----------------------------

def test_a_restarted_rollouts_helper_goes_on_holding_the_step_from_its_start(launcher):
    """Interval 6 s, traffic enough for the gates. 3 s into the first step the helper is
    killed -9; the master starts another a second or so later. The step is promoted about
    6 s after it began, not 6 s after the new helper first saw it (10 s and more)."""
    v1, v2 = launcher.upstream("v1"), launcher.upstream("v2")
    interval = 6.0
    gw = launcher.gateway(shop_conf(v1, v2, {"split": split_conf(interval=interval,
                                                                 min_requests=5)}))
    load = Load([gw], clients=100, pause=0.01)     # the canary's 10 %: its 5 in a second
    try:
        wait_until(lambda: rollout_of(gw).get("step") == 0, timeout=20, interval=0.05)
        began = time.monotonic()
        time.sleep(3.0)
        helper = gw.helper_pid("rollouts")
        os.kill(helper, signal.SIGKILL)
        wait_until(lambda: gw.helper_pid("rollouts") not in (None, helper), timeout=20)
        wait_until(lambda: rollout_of(gw).get("step", 0) >= 1, timeout=30, interval=0.05)
        took = time.monotonic() - began
    finally:
        load.stop()
    assert took < interval + 2.5, took
