"""Review of 85a7a04 and b917515 (Dec 8, j), against real gateways and redis-servers.

1. 85a7a04's flush of a stopping worker's limit_conn releases waited max(1 s, [redis]
   timeout), where its docs promised at most a second: with ``timeout`` of a few seconds and
   a hung Redis, a worker whose drain ran out waited past the master's margin after
   graceful_timeout (WORKER_CUT_SECONDS) and was SIGKILLed before its last log flush: the
   cut requests left no access line (and the master said the worker ran past its time).
   At most a second now, as documented.
2. That flush ran on the drain's path alone. A worker stopped at once (QUIT: a stop, the
   oldest generation of a reload storm, past max_draining_generations) cuts what it holds
   and exits: the cut requests' releases were queued, and sent only if the batcher happened
   to write them before the exit (not when its Redis connection had to be made again: Redis'
   idle ``timeout``, a restart, a proxy's cut), so each slot stayed taken in Redis for lease_seconds (300 s) and,
   with ``limit = 1``, its client was refused by every other worker. Flushed there too now,
   half a second at most (the master's SIGKILL of a quick stop comes at graceful_timeout).
"""
import os
import signal

from ..conftest import open_websocket
from .test_attack_dec08i import one_slot_on_redis, redis_cli


def test_a_hung_redis_holds_a_stopping_worker_a_second_at_most(launcher, upstream):
    redis, gw = one_slot_on_redis(launcher, upstream, workers=1,
                                  server={"graceful_timeout": 1}, redis={"timeout": 3.2})
    sock, head, _ = open_websocket(gw.port)
    os.kill(redis.pid, signal.SIGSTOP)          # hung: the release's round trip never ends
    try:
        assert b" 101 " in head
        gw.proc.send_signal(signal.SIGTERM)     # the drain runs out, and cuts the websocket
        gw.proc.wait(timeout=10)
    finally:
        os.kill(redis.pid, signal.SIGCONT)
        sock.close()
    log = gw.log()
    assert "cutting off remaining connections (1)" in log
    assert "still ran past server.graceful_timeout" not in log, log[-2000:]
    # the cut websocket's access line, flushed before the worker exited
    assert [line for line in gw.access_lines() if line.get("status") == 101], log[-2000:]


def test_a_quick_stop_gives_its_limit_conn_slot_back_in_redis(launcher, upstream):
    redis, gw = one_slot_on_redis(launcher, upstream, workers=1)
    sock, head, _ = open_websocket(gw.port)
    try:
        assert b" 101 " in head
        assert redis_cli(redis, "zcard", "gw:lc:ws:route:") == "1"
        # Redis closed the worker's connections meanwhile (its idle `timeout`, a restart,
        # a proxy): the release's round trip has to connect first
        redis_cli(redis, "client", "kill", "type", "normal")
        gw.proc.send_signal(signal.SIGQUIT)         # a stop at once cuts the open websocket
        gw.proc.wait(timeout=10)
    finally:
        sock.close()
    assert "stopping at once (SIGQUIT): cutting off remaining connections (1)" in gw.log()
    # its slot is free for the next gateway at once, not in lease_seconds
    assert redis_cli(redis, "zcard", "gw:lc:ws:route:") == "0"
