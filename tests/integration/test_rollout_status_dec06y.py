"""A rollout's gates judged the status the client got: with `rewrite` mapping the upstream's
500 to another status (a friendly 200 page, a 429), a canary failing every request was
counted as healthy and promoted (breaker and adaptive limits had the same defect, fixed in
82da5fb). The gates judge the upstream's own status now."""
from ..conftest import wait_until
from .test_rollouts import Load, control, rollout_conf, rollout_of


def test_a_canarys_failures_count_whatever_rewrite_makes_of_their_status(launcher, tmp_path):
    redis, v1, v2 = launcher.redis(), launcher.upstream("v1"), launcher.upstream("v2")
    control(v2, fail=1.0)               # every answer of the canary is a 500
    conf = rollout_conf(tmp_path, v1, v2, redis=redis, min_requests=10)
    conf["routes"][0]["plugins"]["rewrite"] = {"response_status": {"500": 200}}
    gw = launcher.gateway(conf)
    load = Load([gw], pause=0.002)
    try:
        # before: every gate held, and the broken canary walked to 100 %
        entry = wait_until(lambda: (lambda e: e.get("status") in ("rolled_back", "done") and
                                    e)(rollout_of(gw)), timeout=30)
    finally:
        load.stop()
    assert entry["status"] == "rolled_back", entry
    assert entry["history"][-1]["reason"].startswith("gate success_rate failed"), entry
