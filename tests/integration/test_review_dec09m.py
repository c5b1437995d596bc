"""Review of 8199214 and dff191e (Dec 09, m): each test failed before its fix.

1. dff191e: requests waiting for another's HTTP/2 connect to a target take that connect's
   failure. A connect that timed out under a shorter ``timeouts.connect`` (another route's,
   to the same target) was the failure of a waiter whose own timeout had far to run: its 504
   came at the other route's timeout, its target answering well within its own.
"""
import threading
import time

from ..conftest import gateway_conf, python_path_with
from ..h2_upstreams import StreamingH2Upstream
from .test_review_dec09g import SLOW_RESOLVER


def test_a_waiter_is_not_failed_by_the_timeout_of_a_shorter_connect_timeout(launcher, tmp_path):
    """/fast's connect timeout (0.3 s) is shorter than the 0.8 s lookup of its target's name;
    /patient's (3 s) is not. A /patient request arriving while a /fast request connects
    waited for that connect, and took its timeout as its own: a 504 at 0.3 s."""
    (tmp_path / "slow_resolver.py").write_text(SLOW_RESOLVER)
    up = StreamingH2Upstream()
    try:
        url = f"http://up.slow.test:{up.port}"
        upstream = {"targets": [{"url": url}], "protocol": "h2"}
        gw = launcher.gateway(gateway_conf([
            {"id": "fast", "paths": ["/fast"], "timeouts": {"connect": 0.3},
             "retry": {"attempts": 0}, "upstream": upstream},
            {"id": "patient", "paths": ["/patient"], "timeouts": {"connect": 3.0},
             "retry": {"attempts": 0}, "upstream": upstream}], workers=1),
            env={**python_path_with(tmp_path),
                 "GEVENT_RESOLVER": "slow_resolver.SlowResolver"})
        got = {}

        def ask(path):
            begun = time.monotonic()
            resp, body = gw.request("GET", path, timeout=10)
            got[path] = (resp.status, round(time.monotonic() - begun, 2), body[:200])

        fast = threading.Thread(target=ask, args=("/fast",))
        fast.start()
        time.sleep(0.1)                 # /fast's connect is under way
        ask("/patient")
        fast.join(10)
        assert got["/fast"][0] == 504, got
        assert got["/patient"][0] == 200, got       # before: 504 after ~0.3 s
    finally:
        up.close()
