"""A plugin set on an upstream object runs for the requests sent to that upstream, on a route
whose split may send them there (core.chain.Follow). Before, a route ran its own upstream's
plugins whichever upstream the split chose: a breaker set on a canary's own upstream object
guarded nothing."""
from types import SimpleNamespace

import pytest

from gwserver.core.chain import Follow, FollowedConfs, unfollowed
from gwserver.core.schema import Schema
from gwserver.errors import ConfigError
from gwserver.settings import parse_conf

SPLIT = {"key": "header:X-User", "upstreams": [{"upstream": "v1", "weight": 50},
                                                {"upstream": "v2", "weight": 50}]}


def conf_with(v1_plugins=None, v2_plugins=None, route_plugins=None, global_plugins=None):
    def upstream(port, plugins):
        return {"targets": [{"url": f"http://127.0.0.1:{port}"}],
                **({"plugins": plugins} if plugins else {})}
    data = {"upstreams": {"v1": upstream(9, v1_plugins), "v2": upstream(10, v2_plugins)},
            "routes": [{"id": "shop", "paths": ["/shop"], "upstream": "v1",
                        "plugins": {"split": SPLIT, **(route_plugins or {})}}]}
    if global_plugins:
        data["plugins"] = global_plugins
    conf = parse_conf(data)
    route, = conf.router.routes.values()
    return conf, route


def breaker_step(route):
    (step, confs), = [(p, c) for p, c in route.chain.steps if p.NAME == "breaker"]
    return step, confs


def sent_to(route, upstream):
    """A request of ``route`` after its split chose ``upstream`` (None: none chose yet)."""
    return SimpleNamespace(upstream=upstream, route=route)


def test_the_canarys_own_breaker_runs_for_its_requests_and_the_routes_for_the_rest():
    _, route = conf_with(v1_plugins={"breaker": {"min_requests": 100}},
                            v2_plugins={"breaker": {"min_requests": 5}})
    step, confs = breaker_step(route)
    assert isinstance(step, Follow) and step.PRIORITY == 700
    v1, (v2, _) = route.upstream, *confs.by_upstream
    assert (v1.id, v2.id) == ("v1", "v2")
    assert confs.of(v2)["min_requests"] == 5
    assert confs.of(v1)["min_requests"] == 100 and confs.of(None)["min_requests"] == 100
    # each phase hands the plugin the config of the upstream the request goes to
    seen = []
    step_for = Follow(SimpleNamespace(NAME="probe", PRIORITY=1, SCHEMA=Schema(),
                                      access=lambda c, ctx: seen.append(c["n"])))
    probe = FollowedConfs({"n": 1}, [(v2, {"n": 2})])
    step_for.access(probe, sent_to(route, v2))
    step_for.access(probe, sent_to(route, v1))
    step_for.access(probe, sent_to(route, None))
    assert seen == [2, 1, 1]


def test_an_upstream_with_no_breaker_of_its_own_keeps_the_routes():
    """The route's own upstream's breaker guards a split's other upstreams, keyed on the one
    chosen (docs/breaker.md), as before: only an upstream's own config replaces it."""
    _, route = conf_with(v1_plugins={"breaker": {"min_requests": 7}})
    (plugin, conf), = [(p, c) for p, c in route.chain.steps if p.NAME == "breaker"]
    assert not isinstance(plugin, Follow) and conf["min_requests"] == 7


def test_only_the_canary_has_one_the_rest_runs_none():
    _, route = conf_with(v2_plugins={"breaker": {"min_requests": 5}})
    step, confs = breaker_step(route)
    assert confs.default is None
    assert step.access(confs, sent_to(route, route.upstream)) is None     # not run: no config
    assert [(u and u.id, c["min_requests"]) for _, c, u in unfollowed(step, confs)] == \
        [("v2", 5)]


def test_the_routes_own_config_replaces_every_upstreams():
    _, route = conf_with(v2_plugins={"breaker": {"min_requests": 5}},
                         route_plugins={"breaker": {"min_requests": 9}})
    (plugin, conf), = [(p, c) for p, c in route.chain.steps if p.NAME == "breaker"]
    assert not isinstance(plugin, Follow) and conf["min_requests"] == 9


def test_a_global_config_serves_the_upstreams_without_their_own():
    _, route = conf_with(v2_plugins={"breaker": {"min_requests": 5}},
                         global_plugins={"breaker": {"min_requests": 11}})
    step, confs = breaker_step(route)
    assert confs.default["min_requests"] == 11
    assert confs.of(route.upstream)["min_requests"] == 11
    assert [c["min_requests"] for _, c in confs.by_upstream] == [5]


def test_an_upstream_plugin_that_runs_before_the_choice_is_refused(monkeypatch):
    """One with a PRIORITY above split's would see the route's own upstream in its access
    phase and the chosen one at finish: refused, naming both priorities."""
    from gwserver.plugins import breaker
    monkeypatch.setattr(breaker, "PRIORITY", 900)
    with pytest.raises(ConfigError) as caught:
        conf_with(v2_plugins={"breaker": {"min_requests": 5}})
    assert any("upstream v2: plugins.breaker (PRIORITY 900) would run before the route's "
               "plugins choose the upstream (PRIORITY 720)" in p
               for p in caught.value.problems), caught.value.problems


@pytest.mark.parametrize("flag", ["IDENTIFIES_CONSUMER", "ANSWERS_PREFLIGHT"])
def test_an_upstream_plugin_with_a_flag_the_step_would_not_carry_is_refused(monkeypatch,
                                                                            flag):
    """The chain reads these off its steps (the joining of consumers, the preflights the
    router hands it): a Follow step would not say them, and the plugin would never be
    asked."""
    from gwserver.plugins import breaker
    monkeypatch.setattr(breaker, flag, True, raising=False)
    with pytest.raises(ConfigError) as caught:
        conf_with(v2_plugins={"breaker": {"min_requests": 5}})
    assert any(f"upstream v2: plugins.breaker cannot follow the upstream a request is sent "
               f"to (its {flag})" in p for p in caught.value.problems), caught.value.problems
