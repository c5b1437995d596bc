"""Attack pass of 2026-12-16 (a helper's) on "upstream plugins follow the split's choice"
(core.chain.Follow), against real gateways and upstreams on 127.0.0.1. Each test failed
before its fix:

- /admin/breakers left out the breaker of a split's upstream that sets none of its own,
  which the route's upstream's config (scope upstream) keys on that upstream: its clients
  got 503 "breaker upstream:v3 is open" and the view listed no such breaker;
- /admin/upstreams/ID answered 404 "no upstream 'v2' in this worker's table" for an
  upstream only a split sends to (the canary), though /admin/upstreams lists it;
- /admin/routes/ID and /admin/upstreams/ID showed an upstream object's breaker with
  "scope": "route", while it runs (and /admin/breakers shows it) with "scope": "upstream";
- a third-party upstream plugin whose ``phases(conf)`` leaves its response phase out for
  one config (docs/plugins.md: "the others are left out of the route's chain, not called")
  had it called with that config, on the requests the split sent to that config's
  upstream, when the other upstream's config runs it: the plugin's 500 on every one.
"""
import json

from ..conftest import gateway_conf, installed_plugin
from .test_rollouts import control


def three_group_conf(v1, v2, v3):
    """Route shop on v1 with a split to v2 (canary) and v3 (third), weights 0 for both: a
    request reaches them by X-AB-Group. v1 and v2 set breakers of their own, v3 none."""
    breaker = {"min_requests": 3, "open_for": 30}
    choices = [{"upstream": "v1", "weight": 1},
               {"upstream": "v2", "weight": 0, "group": "canary"},
               {"upstream": "v3", "weight": 0, "group": "third"}]
    return gateway_conf(
        [{"id": "shop", "paths": ["/shop/*rest"], "strip_prefix": "/shop", "upstream": "v1",
          "plugins": {"split": {"upstreams": choices}}}],
        upstreams={"v1": {"targets": [{"url": v1.url}], "plugins": {"breaker": breaker}},
                   "v2": {"targets": [{"url": v2.url}],
                          "plugins": {"breaker": {**breaker, "min_requests": 4}}},
                   "v3": {"targets": [{"url": v3.url}]}})


def statuses(gw, group, count):
    return [gw.request("GET", "/shop/echo", headers={"X-AB-Group": group})[0].status
            for _ in range(count)]


def admin_json(gw, path):
    status, body = gw.admin_get(path)
    assert status == 200, (path, status, body)
    return json.loads(body)


def test_admin_breakers_shows_the_breaker_of_a_split_upstream_without_its_own(
        launcher, tmp_path):
    """v3 sets no breaker: the route's upstream's (scope upstream) guards it, keyed on v3.
    Opened, its clients got 503 naming "upstream:v3", which /admin/breakers did not list."""
    v1, v2, v3 = (launcher.upstream(name) for name in ("v1", "v2", "v3"))
    gw = launcher.gateway(three_group_conf(v1, v2, v3))
    control(v3, fail=1.0)
    assert statuses(gw, "third", 5) == [500] * 3 + [503] * 2
    resp, body = gw.request("GET", "/shop/echo", headers={"X-AB-Group": "third"})
    assert json.loads(body)["message"].startswith("breaker upstream:v3 is open"), body
    breakers = admin_json(gw, "/admin/breakers")["breakers"]
    assert sorted(breakers) == ["upstream:v1", "upstream:v2", "upstream:v3"], breakers
    assert breakers["upstream:v3"]["state"] == "open", breakers["upstream:v3"]
    assert breakers["upstream:v3"]["routes"] == ["shop"]
    assert breakers["upstream:v3"]["config"]["min_requests"] == 3       # v1's
    assert breakers["upstream:v2"]["config"]["min_requests"] == 4       # its own
    assert breakers["upstream:v1"]["state"] == "closed"


def test_admin_upstream_view_of_an_upstream_only_a_split_sends_to(launcher, tmp_path):
    """/admin/upstreams lists v2 and v3 (the split's), /admin/upstreams/v2 was a 404; and
    the routes it names are those that send to it, the split's too."""
    v1, v2, v3 = (launcher.upstream(name) for name in ("v1", "v2", "v3"))
    gw = launcher.gateway(three_group_conf(v1, v2, v3))
    listed = admin_json(gw, "/admin/upstreams")["upstreams"]
    assert listed["v2"]["routes"] == ["shop"], listed
    for upstream_id, url in (("v2", v2.url), ("v3", v3.url), ("v1", v1.url)):
        view = admin_json(gw, f"/admin/upstreams/{upstream_id}")
        assert view["id"] == upstream_id and view["routes"] == ["shop"], view
        assert [t["url"] for t in view["targets"]] == [url], view
    view = admin_json(gw, "/admin/upstreams/v2")
    assert [(p["name"], p["config"]["min_requests"]) for p in view["plugins"]] == \
        [("breaker", 4)], view


def test_admin_shows_an_upstream_objects_breaker_with_the_scope_it_runs_with(
        launcher, tmp_path):
    """An upstream object's breaker is keyed on the upstream ("scope" set to "upstream",
    docs/breaker.md), as /admin/breakers says; the route and upstream views showed the
    config as written, "scope": "route", both for the route's own upstream's and for the
    canary's, shown under the route since core.chain.Follow."""
    v1, v2, v3 = (launcher.upstream(name) for name in ("v1", "v2", "v3"))
    gw = launcher.gateway(three_group_conf(v1, v2, v3))
    route = admin_json(gw, "/admin/routes/shop")
    shown = [(p.get("upstream"), p["config"]["min_requests"], p["config"]["scope"])
             for p in route["plugins"] if p["name"] == "breaker"]
    assert shown == [(None, 3, "upstream"), ("v2", 4, "upstream")], shown
    assert [p["config"]["scope"] for p in route["upstream"]["plugins"]] == ["upstream"]
    view = admin_json(gw, "/admin/upstreams/v1")
    assert [p["config"]["scope"] for p in view["plugins"]] == ["upstream"], view
    breakers = admin_json(gw, "/admin/breakers")["breakers"]
    assert breakers["upstream:v1"]["config"]["scope"] == "upstream"


STAMP = """
    from gwserver.core.schema import Field, Schema, one_of

    NAME, PRIORITY, UPSTREAM_PLUGIN = "stamp", 100, True
    SCHEMA = Schema(
        Field("scope", one_of("route", "upstream"), "route", "keyed per route or upstream"),
        Field("header", one_of("X-Stamp"), None, "the answer header it sets, if any"))


    def phases(conf):
        return {"access", "response"} if conf["header"] else {"access"}


    def access(conf, ctx):
        return None


    def response(conf, ctx, head):
        if not conf["header"]:
            raise RuntimeError("response called for a config whose phases() leave it out")
        head.append_header(conf["header"], "stamped")
"""


def test_a_followed_plugins_phases_hold_for_each_upstreams_config(launcher, tmp_path):
    """v1 (the route's) sets stamp without a header, phases() {"access"}; v2 (the canary)
    with one, phases() {"access", "response"}. The route's Follow ran response for every
    request, v1's config too: a 500 for each request the split sent to v1."""
    env = installed_plugin(tmp_path, "gwstamp", STAMP, "stamp = gwstamp\n")
    v1, v2 = launcher.upstream("v1"), launcher.upstream("v2")
    choices = [{"upstream": "v1", "weight": 1},
               {"upstream": "v2", "weight": 0, "group": "canary"}]
    conf = gateway_conf(
        [{"id": "shop", "paths": ["/shop/*rest"], "strip_prefix": "/shop", "upstream": "v1",
          "plugins": {"split": {"upstreams": choices}}}],
        upstreams={"v1": {"targets": [{"url": v1.url}], "plugins": {"stamp": True}},
                   "v2": {"targets": [{"url": v2.url}],
                          "plugins": {"stamp": {"header": "X-Stamp"}}}})
    gw = launcher.gateway(conf, env=env)
    resp, body = gw.request("GET", "/shop/echo", headers={"X-AB-Group": "canary"})
    assert (resp.status, resp.getheader("X-Stamp")) == (200, "stamped"), body
    resp, body = gw.request("GET", "/shop/echo")
    assert (resp.status, resp.getheader("X-Stamp")) == (200, None), body
    assert resp.getheader("X-Upstream") == "v1"
    assert "response called for a config" not in gw.log()
