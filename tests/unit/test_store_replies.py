"""RedisStore's handling of replies without a Redis: what goes again after NOSCRIPT."""
import redis

from gwserver.state.store import RedisStore


def test_after_noscript_only_the_calls_that_did_not_run_go_again():
    """A pipeline where one script was missing (a master after a failover: scripts are not
    replicated; a Redis whose scripts were flushed as another gateway loaded one again): the
    calls that ran are not sent again, or their hits would count twice."""
    store = RedisStore.__new__(RedisStore)
    store.noscript = redis.exceptions.NoScriptError
    sent, loaded = [], []

    def pipeline(calls, late=None):
        sent.append([key for _, key, _ in calls])
        return [redis.exceptions.NoScriptError("NOSCRIPT") if key == "br" and len(sent) == 1
                else f"ran {key}" for _, key, _ in calls]
    store._pipeline, store._load_scripts = pipeline, lambda: loaded.append(True)
    groups = [(("rl", "token_bucket", "rl", 10, 1.0, 0), [(None, None, 0.0)]),
              (("br", "br", ()), [("admit", None, 0.0)])]
    assert store._execute(groups) == ["ran rl", "ran br"]
    assert sent == [["rl", "br"], ["br"]] and loaded == [True]


def test_decisions_that_timed_out_while_queued_are_not_sent():
    """Decisions queued behind a slow round trip (or a worker kept busy by a burst) time out
    and fall back per host; they were then sent to Redis all the same and counted in both
    stores. The deadline marks the queue, and the batcher leaves out every call nobody waits
    for (a call of the round trip in flight, timed out too, was counted already: nothing can
    take it back). The end-to-end burst (tests/integration/test_limits_attack_dec05e.py) could
    not tell the two apart on a loaded machine, whose in-flight calls timed out as well."""
    import time
    from types import SimpleNamespace
    from gevent.event import AsyncResult
    store = RedisStore.__new__(RedisStore)
    store.timeout, store.queue_has_gone = 0.05, False
    store.deadline_timer = SimpleNamespace(close=lambda: None)
    store._redis_slow = lambda now: False
    old, fresh = time.monotonic() - 1.0, time.monotonic() + 60.0
    late, waiting = AsyncResult(), AsyncResult()
    release = (("rl", "release"), ("release", "lease"), None, 0.0)  # owed: nobody waits
    store.in_flight = [(("rl",), ("a",), AsyncResult(), old)]       # sent: counted already
    store.queue = [(("rl",), ("b",), late, old), (("rl",), ("c",), waiting, fresh), release]
    store._watch = lambda at: None
    store._expire()
    assert late.ready() and not waiting.ready() and store.queue_has_gone
    assert store._unsent(store.queue) == [store.queue[1], release]
    assert not store.queue_has_gone
