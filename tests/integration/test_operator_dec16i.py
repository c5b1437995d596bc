"""Operator pass of 2026-12-16 (helper a33) on this session's docs, done as they say with real
gateways, etcd and upstreams on 127.0.0.1: docs/etcd.md's upstream put refused as unfit for a
route using it, seen through the CLIs an operator reads (`gwserver upstreams put`, `routes
status`, `routes list`, `upstreams list`); docs/plugins.md's upstream plugins (refused by the
put that comes second); docs/http2.md's own timeouts below the clients' deadlines; and
docs/breaker.md's "a breaker in the route's own `plugins` replaces every upstream's" across a
SIGHUP reload that takes it off.

Two defects, each test failed before its fix. A third-party UPSTREAM_PLUGIN without a `scope`
field (breaker's) was refused on every upstream object, "plugins.NAME: scope: unknown key
(known: )": the gateway gave every upstream plugin's config scope = "upstream". And with g2
refused by the gateway (put with etcdctl, or any client but ours), `gwserver routes list`
marked route rpc REJECTED, "its paths answer 503 until a valid version arrives", and
`gwserver upstreams list` marked g2 ok: the opposite of what the gateway did and served (list
judged etcd's items afresh, where the refused upstream goes in first and the route cannot
take it)."""
import json
import os
import subprocess
import sys

from ..conftest import (gateway_conf, installed_plugin, stop_process, to_toml,
                        wait_until)
from ..etcd_sync import PREFIX, gwcli, status_json
from .test_attack_pass_dec04e import reload_with
from .test_follow_live_dec16d import grpc_web_split, put, split_to, statuses
from .test_rollouts import control

UNFIT = "upstream g2: a route that uses it cannot take it: route rpc: "


def listed(gw, kind):
    """{id: (mark, reason or None)} as `gwserver KIND list` prints them."""
    out = gwcli(gw.conf_path, kind, "list")
    assert out.returncode == 0, out.stderr
    marks, last = {}, None
    for line in out.stdout.splitlines():
        if line.startswith("\t"):
            marks[last] = (marks[last][0], line[1:])
        else:
            last, _, mark, _ = line.split("\t", 3)
            marks[last] = (mark, None)
    return marks


def test_the_cli_says_what_the_gateway_did_with_an_upstream_unfit_for_a_route(
        launcher, tmp_path):
    """docs/etcd.md: the put is refused naming the route, in the words quoted there, and the
    route serves on with the upstream's previous version."""
    etcd, gw, v2 = grpc_web_split(launcher, tmp_path)
    unfit = {"targets": [{"url": v2.url}]}
    refused = gwcli(gw.conf_path, "upstreams", "put", "-", stdin=json.dumps({"id": "g2",
                                                                             **unfit}))
    assert refused.returncode == 2 and refused.stderr.startswith(f"error: {UNFIT}"), refused
    put(etcd, "upstreams", "g2", unfit)     # as etcdctl would: the gateway refuses it
    wait_until(lambda: status_json(gw).get("rejected"), timeout=5)
    status = gwcli(gw.conf_path, "routes", "status")
    assert f"  upstreams/g2: {UNFIT}" in status.stdout, status.stdout
    assert gw.admin_get("/admin/routes/rpc")[0] == 200
    routes, upstreams = listed(gw, "routes"), listed(gw, "upstreams")
    assert routes == {"rpc": ("ok", None)}, routes
    assert upstreams["g1"] == ("ok", None), upstreams
    assert upstreams["g2"][0] == "REJECTED" and upstreams["g2"][1].startswith(UNFIT), upstreams
    # The route changed so that it takes g2: g2 goes in by itself, and list says so.
    put(etcd, "routes", "rpc", split_to("rpc", "g1", "g2"))
    wait_until(lambda: status_json(gw).get("rejected") == {}, timeout=5)
    assert listed(gw, "upstreams")["g2"] == ("ok", None)
    assert listed(gw, "routes") == {"rpc": ("ok", None)}


def test_a_route_breaker_replaces_the_canarys_own_until_a_reload_takes_it_off(launcher):
    """docs/breaker.md: the route's own breaker (route:shop, min_requests 10) guards the
    canary's requests in place of the canary's own (upstream:v2, min_requests 3); reloaded
    without it (SIGHUP), the canary's own guards them."""
    v1, v2 = launcher.upstream("v1"), launcher.upstream("v2")
    conf = gateway_conf([{"id": "shop", **split_to("shop", "v1", "v2", breaker={
        "min_requests": 10, "open_for": 30})}], upstreams={
        "v1": {"targets": [{"url": v1.url}]},
        "v2": {"targets": [{"url": v2.url}],
               "plugins": {"breaker": {"min_requests": 3, "open_for": 30}}}})
    gw = launcher.gateway(conf)
    control(v2, fail=1.0)
    assert statuses(gw, "v2", 5) == [500] * 5
    breakers = json.loads(gw.admin_get("/admin/breakers")[1])["breakers"]
    assert sorted(breakers) == ["route:shop"], breakers

    def off(conf):
        del conf["routes"][0]["plugins"]["breaker"]
    reload_with(gw, off)
    wait_until(lambda: "route:shop" not in json.loads(gw.admin_get("/admin/breakers")[1])[
        "breakers"], timeout=10)
    assert statuses(gw, "v2", 5) == [500] * 3 + [503] * 2
    assert statuses(gw, "v1", 2) == [200] * 2
    breakers = json.loads(gw.admin_get("/admin/breakers")[1])["breakers"]
    assert breakers["upstream:v2"]["state"] == "open", breakers
    assert breakers["upstream:v2"]["routes"] == ["shop"], breakers



def test_the_gateways_own_timeouts_below_the_clients_deadlines_open_the_breaker(launcher):
    """docs/http2.md: "set the route's timeouts.read (or retry.per_try_timeout) below your
    clients' deadlines" for a hung upstream to trip its breaker; the clients' calls carry
    their deadline (grpc-timeout 3S) as they would."""
    from ..h2_upstreams import ScriptedH2Upstream
    from .test_grpc_deadline_breaker_dec16g import calls
    upstream = ScriptedH2Upstream("u", "slow", delay=20)
    try:
        for bound in ({"timeouts": {"read": 0.3}},
                      {"retry": {"attempts": 1, "per_try_timeout": 0.3}}):
            gw = launcher.gateway(gateway_conf([{
                "id": "rpc", "paths": ["/Svc/*rest"], **bound,
                "upstream": {"targets": [{"url": f"http://127.0.0.1:{upstream.port}"}],
                             "protocol": "h2"},
                "plugins": {"breaker": {"min_requests": 5, "error_rate": 0.5,
                                        "open_for": 30}}}], http2={"h2c": True}))
            calls(gw, 5, timeout="3S", wait=3)
            breaker = json.loads(gw.admin_get("/admin/breakers")[1])["breakers"]["route:rpc"]
            assert breaker["state"] == "open", (bound, breaker)
            answers = calls(gw, 1, timeout="3S")
            assert answers[0][0] == b"503" or answers[0][1] == b"14", (bound, answers)
            stop_process(gw.proc)
    finally:
        upstream.close()


EARLY = '''
from gwserver.core.schema import Schema


class early:
    """An upstream plugin that would run before split chose the upstream."""
    NAME, PRIORITY, SCHEMA, UPSTREAM_PLUGIN = "early", 900, Schema(), True

    @staticmethod
    def access(conf, ctx):
        ctx.set_header("X-Early", "1")
'''


def test_an_upstream_plugin_ranked_above_split_is_refused_by_the_put_that_comes_second(
        launcher, tmp_path):
    """docs/plugins.md: such a plugin on a split's upstream refuses the route, naming it;
    "through etcd, the put that comes second, the route's or the upstream's, is refused",
    and what was there serves on."""
    env = installed_plugin(tmp_path, "gwearly", EARLY, "early = gwearly:early\n")
    etcd = launcher.etcd()
    gw = launcher.gateway(gateway_conf([], etcd={
        "endpoints": [etcd.url], "prefix": PREFIX, "runtime_dir": str(tmp_path / "run"),
        "snapshot_path": str(tmp_path / "snapshot.json")}), env=env)
    v1, v2 = launcher.upstream("v1"), launcher.upstream("v2")
    why = "plugins.early (PRIORITY 900) would run before the route's plugins choose the " \
          "upstream (PRIORITY 720)"
    put(etcd, "upstreams", "v1", {"targets": [{"url": v1.url}]})
    put(etcd, "upstreams", "v2", {"targets": [{"url": v2.url}], "plugins": {"early": {}}})
    put(etcd, "routes", "shop", split_to("shop", "v1", "v2"))      # the route second
    wait_until(lambda: "routes/shop" in status_json(gw).get("rejected", {}), timeout=5)
    assert why in status_json(gw)["rejected"]["routes/shop"], status_json(gw)["rejected"]
    put(etcd, "upstreams", "v2", {"targets": [{"url": v2.url}]})
    wait_until(lambda: statuses(gw, "v2", 1) == [200], timeout=5)
    assert status_json(gw)["rejected"] == {}
    put(etcd, "upstreams", "v2", {"targets": [{"url": v2.url}], "plugins": {"early": {}}})
    wait_until(lambda: "upstreams/v2" in status_json(gw).get("rejected", {}), timeout=5)
    refused = status_json(gw)["rejected"]["upstreams/v2"]
    assert refused.startswith("upstream v2: a route that uses it cannot take it: route shop: ")\
        and why in refused, refused
    assert statuses(gw, "v2", 2) == [200] * 2       # the previous v2 serves on


LATE = EARLY.replace('"early", 900', '"late", 500').replace("early", "late") \
    .replace("X-Early", "X-Late")


def test_a_third_party_upstream_plugin_without_a_scope_may_be_set_on_an_upstream(
        launcher, tmp_path):
    """docs/plugins.md: a plugin that sets UPSTREAM_PLUGIN = True "may then be set on an
    upstream object's plugins". One without a `scope` field (breaker's) was refused on every
    upstream, by `gwserver check` and at start: "upstream v1: plugins.late: scope: unknown
    key (known: )", a key its author never wrote (the gateway gave every upstream plugin
    scope = "upstream")."""
    env = installed_plugin(tmp_path, "gwlate", LATE, "late = gwlate:late\n")
    v1 = launcher.upstream("v1")
    conf = gateway_conf([{"id": "shop", "paths": ["/shop/*rest"], "upstream": "v1"}],
                        upstreams={"v1": {"targets": [{"url": v1.url}],
                                          "plugins": {"late": {}}}})
    path = tmp_path / "check.toml"
    path.write_text(to_toml(conf))
    checked = subprocess.run([sys.executable, "-m", "gwserver", "check", "-c", str(path)],
                             capture_output=True, text=True, timeout=30,
                             env={**os.environ, **env})
    assert checked.returncode == 0, checked.stdout + checked.stderr
    gw = launcher.gateway(conf, env=env)
    resp, body = gw.request("GET", "/shop/echo")
    assert resp.status == 200, body
    assert ["X-Late", "1"] in json.loads(body)["headers"], body
    view = json.loads(gw.admin_get("/admin/upstreams/v1")[1])
    assert [p["config"] for p in view["plugins"] if p["name"] == "late"] == [{}], view
