"""Review of the newest commits as an attacker, 2026-12-06 (first): 6ee2711 (a replaced
table counter: its whole table first; the health and rollouts helpers follow it), e01e0e5
(EtcdClient.move_on) and 02ee800 (tests' raw_counts and retry_route shared), against real
processes (gateways from ``launcher``, Debian's etcd-server on loopback).

Defects found, fixed with these tests (and tests/unit/test_review_attack_dec06a.py):

1. A table counter overwritten in place with a lower number (a hand, a script: the case
   TablePublisher._check_counter writes back within a second) while the base lagged the
   change files: 6ee2711 took any number below ours for a new numbering, read the older
   base and the change files after it up to that number, and rolled every worker back (a
   route deleted since answered again) until the counter was written back. Before it, and
   now, only a whole table of that very number is taken (TableReader._below_ours). Unit test.
2. Each reload (SIGHUP) made the health and rollouts helpers a new TableReader and never
   closed the old one's counter descriptor: one more held for good at each reload (a host
   reloaded by its config agent every few minutes ran the health helper out of descriptors
   for its probes within days), and a removed runtime_dir's counter kept with it. The sync
   process's look at what the workers serve (load_served) held one more for its whole life.
   TableReader.close(), called where a reader is replaced or done with.
3. A gateway restarted onto another etcd prefix (same runtime_dir) while etcd was down:
   the new sync process did not take up the other prefix's table.json (rightly), but its
   base writer, seeing a base it had not written, wrote its own over it within a second: a
   table empty of etcd items, numbered as the generation the counter held. The workers took
   it, and /-/ready answered 200 for a gateway that never reached etcd (docs/etcd.md: 503
   until etcd answers), a 404 for every etcd route behind a load balancer's back. The same
   empty table went over a damaged base the workers' replacements needed. A sync process
   guards only a base it wrote or took up (TablePublisher._check_base, took_up).
4. Such a base of another prefix was parsed whole by each worker once a millisecond on the
   request path (changed() holds while it is all there is): a second's stall before (3)'s
   fix, for as long as etcd stayed away after it. A refused base is read again only once
   the file changes (TableReader._read_base). Unit test.

Also here, held: the rollouts and health helpers follow a sync process that numbers again
(6ee2711's health test passes on its parent: the helper had not opened the counter yet).
"""
import json
import os
import shutil
import signal
import time

import pytest

from ..conftest import free_port, wait_until
from .test_attack_pass_dec04e import reload_with
from .test_etcd import restarted_onto_another_prefix, runtime_of, serves, serving, status_of


@pytest.fixture
def etcd(launcher):
    return launcher.etcd()


def counter_descriptors(pid, runtime_dir):
    """How many descriptors of process ``pid`` hold a table counter file of runtime_dir
    (the one there now, or one removed from there)."""
    path = os.path.join(runtime_dir, "generation")
    held = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue                    # closed meanwhile
        held += target in (path, f"{path} (deleted)")
    return held


def test_reloads_leave_the_helpers_one_counter_descriptor_each(launcher, etcd, upstream,
                                                               tmp_path):
    """Three reloads of the same conf: the health and rollouts helpers (kept, and sent the
    SIGHUP) held four counter descriptors each, and the sync process two from its start."""
    client = etcd.client()
    gw = serving(launcher, tmp_path, etcd.url, client, upstream, "r", "/r")
    runtime = runtime_of(gw)
    helpers = {role: gw.helper_pid(role) for role in ("health", "rollouts")}
    assert all(helpers.values()), helpers
    sync = status_of(gw)["pid"]
    wait_until(lambda: all(counter_descriptors(pid, runtime) for pid in helpers.values()))
    for _ in range(3):
        reload_with(gw, lambda conf: None)
    for role, pid in helpers.items():
        # re-read after the reload: the helper's log line says it took the SIGHUP
        assert gw.helper_pid(role) == pid, f"{role} was restarted, not reloaded"
    wait_until(lambda: gw.log().count("health: targets re-read") >= 3 and
               gw.log().count("rollouts: routes re-read") >= 3, timeout=15)
    held = {role: counter_descriptors(pid, runtime) for role, pid in helpers.items()}
    held["config-sync"] = counter_descriptors(sync, runtime)
    assert held == {"health": 1, "rollouts": 1, "config-sync": 1}, held
    assert os.kill(sync, 0) is None and status_of(gw)["pid"] == sync
    assert gw.request("GET", "/r")[0].status == 200


def test_a_table_of_another_prefix_is_not_written_over_with_an_empty_one(launcher, etcd,
                                                                        upstream, tmp_path):
    """Defect 3: /tenant-a served, stopped; the gateway restarted on /tenant-b with etcd
    unreachable. /-/ready said 503 at first, then 200 from the second its sync process wrote
    an empty table of /tenant-b over /tenant-a's, for as long as etcd stayed away."""
    second, runtime = restarted_onto_another_prefix(launcher, etcd, upstream, tmp_path)
    answers = []
    for _ in range(16):             # the base writer looks once a second (BASE_CHECK)
        answers.append(second.admin_get("/-/ready")[0])
        time.sleep(0.25)
    assert answers == [503] * 16, answers
    assert json.loads((runtime / "table.json").read_text())["prefix"] == "/tenant-a/"
    assert serves(second, "/a-only") == 404 and "Traceback" not in second.log()


def numbered_again_under(gw, role):
    """Once the ``role`` helper holds the table's counter: runtime_dir removed and the sync
    process killed, so that its successor numbers from 1 in a new counter. -> its pid."""
    wait_until(lambda: gw.helper_pid(role))
    helper = gw.helper_pid(role)
    wait_until(lambda: counter_descriptors(helper, runtime_of(gw)) == 1)    # it follows
    pid = status_of(gw)["pid"]
    shutil.rmtree(runtime_of(gw))
    os.kill(pid, signal.SIGKILL)
    return helper


def test_held_the_rollouts_helper_follows_a_sync_process_that_numbers_again(
        launcher, etcd, upstream, tmp_path):
    """6ee2711 made the rollouts helper re-open a replaced counter, as the health helper,
    with a test for the health helper only. The same restart on a removed runtime_dir: a
    route with a rollout put in etcd after it is seen by the helper (its step is stored and
    shown). On 6ee2711's parent the helper held the removed counter, and /admin/rollouts
    never showed the route."""
    from .test_attack_pass_dec04e import eventually
    from .test_etcd import put
    from .test_rollouts import rollout_of
    client = etcd.client()
    gw = serving(launcher, tmp_path, etcd.url, client, upstream, "r", "/r")
    helper = numbered_again_under(gw, "rollouts")
    canary = launcher.upstream("canary")
    put(client, "upstreams", "v2", {"targets": [{"url": canary.url}]})
    split = {"upstreams": [{"upstream": "up", "weight": 1},
                           {"upstream": "v2", "weight": 1, "group": "canary"}],
             "key": "header:X-User",
             "rollout": {"steps": [10, 50, 100], "interval": 60, "min_requests": 20,
                         "gates": [{"kind": "success_rate", "min": 95}]}}
    put(client, "routes", "shop", {"paths": ["/shop/*rest"], "strip_prefix": "/shop",
                                   "upstream": "up", "plugins": {"split": split}})
    assert eventually(lambda: serves(gw, "/shop/echo") == 200, timeout=20)
    assert eventually(lambda: rollout_of(gw).get("step") == 0, timeout=15), \
        gw.admin_get("/admin/rollouts")
    assert gw.helper_pid("rollouts") == helper


def test_held_the_health_helper_follows_a_sync_process_that_numbers_again(
        launcher, etcd, upstream, tmp_path):
    """6ee2711's own test of this (in test_attack_pass_dec04e, replaced by this one) passed
    on its parent too: it removed runtime_dir once the health helper ran, which is before
    the helper opened the counter (its start is slow), so the helper opened the new counter
    at once. Here the helper holds the old counter first; on 6ee2711's parent a dead target
    put in etcd after the restart was never probed (its health never "unhealthy")."""
    from .test_attack_pass_dec04e import eventually
    from .test_etcd import put
    from .test_health import FAST_CHECK
    client = etcd.client()
    gw = serving(launcher, tmp_path, etcd.url, client, upstream, "r", "/r")
    helper = numbered_again_under(gw, "health")
    dead = f"http://127.0.0.1:{free_port()}"
    put(client, "upstreams", "pool", {"targets": [{"url": upstream.url}, {"url": dead}],
                                      "health_check": FAST_CHECK})
    put(client, "routes", "p", {"paths": ["/p/*rest"], "strip_prefix": "/p", "upstream": "pool"})
    assert eventually(lambda: serves(gw, "/p/echo") in (200, 502), timeout=20)

    def health():
        # (the admin request may land on a worker a tick behind, without "pool" yet)
        view = json.loads(gw.admin_get("/admin/upstreams")[1])
        pool = view["upstreams"].get("pool", {"targets": []})
        return {t["url"]: t["health"] for t in pool["targets"]}
    assert eventually(lambda: health().get(dead) == "unhealthy", timeout=10), health()
    assert gw.helper_pid("health") == helper
