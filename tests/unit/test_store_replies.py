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

    def pipeline(calls):
        sent.append([key for _, key, _ in calls])
        return [redis.exceptions.NoScriptError("NOSCRIPT") if key == "br" and len(sent) == 1
                else f"ran {key}" for _, key, _ in calls]
    store._pipeline, store._load_scripts = pipeline, lambda: loaded.append(True)
    groups = [(("rl", "token_bucket", "rl", 10, 1.0, 0), [(None, None, 0.0)]),
              (("br", "br", ()), [("admit", None, 0.0)])]
    assert store._execute(groups) == ["ran rl", "ran br"]
    assert sent == [["rl", "br"], ["br"]] and loaded == [True]
