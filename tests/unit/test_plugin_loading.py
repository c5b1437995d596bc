"""Third-party plugins by entry point: one that is refused is named, with why, where it is used."""
import types

import pytest

from gwserver import plugins
from gwserver.core.chain import build_chain
from gwserver.core.schema import Schema
from gwserver.errors import ConfigError


class _EntryPoint:
    def __init__(self, name, value, load):
        self.name, self.value, self.load = name, value, load


def _broken():
    raise ModuleNotFoundError("No module named 'teapot_deps'")


@pytest.fixture
def registry(monkeypatch):
    good = types.SimpleNamespace(NAME="good", PRIORITY=1, SCHEMA=Schema(),
                                 access=lambda conf, ctx: None)
    found = [_EntryPoint("teapot", "mypackage.teapot", _broken),
             _EntryPoint("good", "mypackage.good", lambda: good)]
    monkeypatch.setattr(plugins, "entry_points", lambda group: found)
    yield plugins.load_registry(reload=True)
    monkeypatch.undo()
    plugins.load_registry(reload=True)      # the next test gets the installed ones again


def test_a_route_naming_a_plugin_that_failed_to_load_says_why(registry):
    """The route's error said only "unknown plugin (available: ...)" for a plugin that is
    installed: the reason was in a log line the operator may never see beside it."""
    assert "good" in registry and "teapot" not in registry
    with pytest.raises(ConfigError) as info:
        build_chain("route r", {"teapot": {}}, {}, registry)
    assert info.value.problems == [
        "route r: plugins.teapot: unknown plugin (installed, but its entry point teapot "
        "(mypackage.teapot) not loaded: No module named 'teapot_deps')"]


def test_a_name_nobody_installed_still_lists_the_available_ones(registry):
    with pytest.raises(ConfigError, match=r"plugins.nope: unknown plugin \(available: .*good"):
        build_chain("route r", {"nope": {}}, {}, registry)


def test_a_setting_of_another_plugin_named_as_a_plugin_says_where_it_belongs():
    """`plugins.rollout` (split's `rollout` setting, written one level up, a newcomer's slip
    with docs/rollouts.md open) said only "unknown plugin" and the list of plugins."""
    registry = plugins.load_registry()
    with pytest.raises(ConfigError) as info:
        build_chain("route r", {"rollout": {"steps": [10]}}, {}, registry)
    (problem,) = info.value.problems
    assert problem.startswith("route r: plugins.rollout: unknown plugin (available: "), problem
    assert problem.endswith("; it is a setting of plugins.split"), problem
    with pytest.raises(ConfigError) as info:        # no plugin has such a setting: no hint
        build_chain("route r", {"nope": {}}, {}, registry)
    assert "it is a setting of" not in info.value.problems[0]


def test_a_plugin_named_as_a_builtin_is_left_out_and_routes_naming_it_refused(monkeypatch,
                                                                               caplog):
    """"plugin headers from mypackage.headers ignored: the name is taken" did not say by
    what, nor that a route's plugins.headers runs the built-in (whose schema then refuses
    the third-party settings as unknown keys)."""
    mine = types.SimpleNamespace(NAME="headers", PRIORITY=1, SCHEMA=Schema(),
                                 access=lambda conf, ctx: None)
    monkeypatch.setattr(plugins, "entry_points", lambda group: [
        _EntryPoint("myheaders", "mypackage.headers", lambda: mine)])
    try:
        with caplog.at_level("ERROR", logger="gwserver.plugins"):
            registry = plugins.load_registry(reload=True)
    finally:
        monkeypatch.undo()
        plugins.load_registry(reload=True)
    assert registry["headers"] is not mine
    assert ("plugin headers from mypackage.headers (entry point myheaders) ignored: a built-in "
            "plugin is named headers too, and a route naming plugins.headers is refused until "
            "one of them is renamed; give yours another NAME") in caplog.text
    with pytest.raises(ConfigError) as info:
        build_chain("route r", {"headers": {}}, {}, registry)
    assert info.value.problems == [
        "route r: plugins.headers: ambiguous: a built-in plugin and mypackage.headers (entry "
        "point myheaders) are both named headers: give the installed one another NAME"]


def test_one_plugin_under_two_entry_point_names_is_no_ambiguity(monkeypatch):
    """Review of 513aedf: a package that keeps an old entry point name beside a new one for
    the same plugin (or names a built-in module as its own) had every route naming it
    refused as "ambiguous" between the plugin and itself; before, the copy was ignored.
    There is nothing to choose between: the route runs it."""
    tea = types.SimpleNamespace(NAME="teapot", PRIORITY=1, SCHEMA=Schema(),
                                access=lambda conf, ctx: None)
    monkeypatch.setattr(plugins, "entry_points", lambda group: [
        _EntryPoint("teapot", "mypackage:teapot", lambda: tea),
        _EntryPoint("tea", "mypackage:teapot", lambda: tea),
        _EntryPoint("mycors", "gwserver.plugins.cors", lambda: plugins.load_registry()["cors"])])
    try:
        registry = plugins.load_registry(reload=True)
    finally:
        monkeypatch.undo()
        plugins.load_registry(reload=True)
    assert registry["teapot"] is tea and not registry.contested
    chain = build_chain("route r", {"teapot": {}, "cors": {"allow_origins": ["https://a.test"]}},
                        {}, registry)
    assert set(chain.names) == {"teapot", "cors"}
