"""Review of 5334a9e (helper r26).

1. [upstreams] / [consumers] that are no table were all told "not as a [[consumers]] block":
   `consumers = 5`, `upstreams = "api"`, `upstreams = []` named a line nobody wrote (the very
   slip 5334a9e fixed for [routes]). The blocks are named only when blocks were written.
2. canary_shut now closes a canary websocket whenever the route's current rollout is shut,
   whichever rollout placed it; with no regard to the group. A route put again whose new
   rollout has another canary group ("next"), the old canary group ("canary") kept as a
   baseline group: aborting the new rollout closed a websocket on the old group, which the
   split still sends a share to, with "the rollout of its canary was rolled back or aborted".
"""
import json
import subprocess
import sys

import pytest

from ..conftest import ROOT, wait_until


def check(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(text + '[[routes]]\nid = "r"\npaths = ["/r"]\n'
                           'upstream = {targets = [{url = "http://127.0.0.1:9"}]}\n')
    done = subprocess.run([sys.executable, "-m", "gwserver", "check", "-c", str(path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=30)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("text, said", [
    ('consumers = 5\n', "not as a number"),
    ('consumers = "ak_live_9f3b2c7d1e"\n', "not as a string"),
    ('upstreams = []\n', "not as an empty array"),
])
def test_a_table_by_id_that_is_no_blocks_is_not_told_of_blocks(tmp_path, text, said):
    code, out = check(tmp_path, text)
    assert code == 2, out
    assert said in out and "[[" not in out, out
    assert "ak_live_9f3b2c7d1e" not in out, out


def test_consumers_blocks_still_named(tmp_path):
    code, out = check(tmp_path, '[[consumers]]\nid = "alice"\n')
    assert code == 2 and "not as a [[consumers]] block" in out, out


def test_aborting_a_new_rollout_of_another_group_leaves_a_baseline_websocket_open(
        launcher, tmp_path):
    from ..etcd_sync import gwcli
    from .test_rollout_attack_dec05 import canary_keys
    from .test_rollout_attack_dec15i import abort, echoed, websocket_on_canary
    from .test_rollouts import rollout_conf, rollout_of
    etcd, redis = launcher.etcd(), launcher.redis()
    v1, v2, v3 = launcher.upstream("v1"), launcher.upstream("v2"), launcher.upstream("v3")
    conf = rollout_conf(tmp_path, v1, v2, etcd, redis, workers=1, steps=[50, 100],
                        interval=600)
    conf["upstreams"]["v3"] = {"targets": [{"url": v3.url}]}
    shop = conf["routes"][0]
    conf["routes"] = []
    gw = launcher.gateway(conf)

    def put(item):
        done = gwcli(gw.conf_path, "routes", "put", "-", stdin=json.dumps(item))
        assert done.returncode == 0, done.stderr
    put(shop)
    wait_until(lambda: rollout_of(gw).get("status") == "running", timeout=15)
    key = canary_keys(1, 50)[0]

    sock, head = websocket_on_canary(gw, v2, key)
    try:
        assert head.startswith(b"HTTP/1.1 101"), head
        # Put again: "canary" (v2) is now a baseline group, "next" (v3) is rolled out
        item = json.loads(json.dumps(shop))
        split = item["plugins"]["split"]
        split["upstreams"].append({"upstream": "v3", "weight": 1, "group": "next"})
        split["rollout"]["group"] = "next"
        put(item)
        wait_until(lambda: rollout_of(gw).get("status") == "running" and
                   "next" in rollout_of(gw).get("weights", {}), timeout=15)
        abort(gw, "next is broken")
        assert rollout_of(gw)["weights"]["canary"] > 0        # still a group that serves
        assert echoed(sock, b"after abort") == b"after abort", \
            "a websocket on a baseline group was closed as the rollout of another was aborted"
    finally:
        sock.close()
    assert "closed: the rollout of its canary" not in gw.log()
