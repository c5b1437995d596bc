"""The plugin contract: schemas fill defaults, order follows PRIORITY, a reply ends the chain."""
import re
import types

import pytest

from gwserver.core.chain import Chain, build_chain, check_plugin
from gwserver.core.context import Reply, RequestContext, ResponseHead
from gwserver.core.schema import Field, Schema, integer, list_of, one_of
from gwserver.errors import ConfigError
from gwserver.plugins import headers, load_registry


def plugin(name, priority, reply_status=None, log=None):
    def access(conf, ctx):
        log.append(name)
        return Reply(reply_status) if reply_status else None
    return types.SimpleNamespace(NAME=name, PRIORITY=priority, access=access,
                                 SCHEMA=Schema(Field("n", integer(0), 7, "a number")))


def ctx():
    return RequestContext("127.0.0.1", "http")


def test_plugins_run_by_priority_and_a_reply_ends_the_chain():
    log = []
    registry = {p.NAME: p for p in (plugin("low", 1, log=log), plugin("high", 100, log=log),
                                    plugin("stop", 50, reply_status=429, log=log))}
    chain = build_chain("route r", {"low": {}, "stop": {}, "high": {}}, {}, registry)
    assert chain.names == ("high", "stop", "low")
    request = ctx()
    assert chain.run_access(request).status == 429
    assert log == ["high", "stop"]
    assert request.ended_by == "stop"


def test_schema_fills_defaults_and_names_bad_fields():
    registry = {"p": plugin("p", 1, log=[])}
    chain = build_chain("route r", {"p": {}}, {}, registry)
    assert chain.access_steps[0][1] == {"n": 7}
    with pytest.raises(ConfigError) as info:
        build_chain("route r", {"p": {"n": -1}}, {}, registry)
    assert info.value.problems == ["route r: plugins.p: n: must be a non-negative integer, "
                                   "got -1"]


def test_route_config_replaces_global_and_false_switches_it_off():
    registry = {"p": plugin("p", 1, log=[])}
    assert build_chain("r", {"p": {"n": 3}}, {"p": {"n": 1}}, registry).access_steps[0][1] == \
        {"n": 3}
    assert build_chain("r", {"p": False}, {"p": {}}, registry).names == ()
    assert build_chain("r", {}, {"p": {}}, registry).names == ("p",)


def test_contract_is_checked():
    with pytest.raises(TypeError, match="lacks SCHEMA"):
        check_plugin(types.SimpleNamespace(NAME="x", PRIORITY=1, access=lambda c, r: None))
    with pytest.raises(TypeError, match="defines no phase"):
        check_plugin(types.SimpleNamespace(NAME="x", PRIORITY=1, SCHEMA=Schema()))


def test_builtin_registry_has_headers():
    assert load_registry()["headers"] is headers


def test_headers_plugin_edits_request_and_response():
    conf = headers.prepare(headers.SCHEMA.validate(
        {"request": {"set": {"X-Env": "prod"}, "remove": ["Cookie"]},
         "response": {"set": {"Cache-Control": "no-store"}, "remove": ["Server"]}}))
    # an absent table has its own fields' defaults, as one written {} has (dec14d)
    assert headers.SCHEMA.validate({}) == headers.SCHEMA.validate(
        {"request": {}, "response": {}}) == {"request": {"set": {}, "remove": []},
                                             "response": {"set": {}, "remove": []}}
    request = ctx()
    request.headers = [(b"Cookie", b"a=1"), (b"X-Env", b"dev"), (b"Accept", b"*/*")]
    request.header_map = {b"cookie": b"a=1", b"x-env": b"dev", b"accept": b"*/*"}
    headers.access(conf, request)
    assert request.headers == [(b"Accept", b"*/*"), (b"X-Env", b"prod")]
    assert request.header("x-env") == "prod" and request.header("cookie") is None
    head = ResponseHead(200, [(b"Server", b"nginx"), (b"Content-Type", b"text/plain")])
    headers.response(conf, request, head)
    assert head.headers == [(b"Content-Type", b"text/plain"), (b"Cache-Control", b"no-store")]


def test_a_plugin_may_be_any_object_even_an_unhashable_one():
    log = []
    identifying = plugin("who", 10, log=log)       # a SimpleNamespace: it has no hash
    identifying.IDENTIFIES_CONSUMER = True
    chain = build_chain("route r", {"who": {}}, {}, {"who": identifying})
    assert chain.identifies
    assert chain.run_access(ctx()) is None and log == ["who"]


def test_empty_chain_is_shared_and_inert():
    assert Chain().run_access(ctx()) is None


def test_a_config_leaves_out_the_phases_it_does_not_need():
    """phases(conf): a step is not called to do nothing, and a phase the config needs still
    runs; a name that is not a phase is a config error, not a crash."""
    registry = load_registry()
    request_only = build_chain("r", {"headers": {"request": {"set": {"X-A": "1"}}}}, {}, registry)
    assert request_only.names == ("headers",) and request_only.access_steps
    assert request_only.response_steps == ()
    both = build_chain("r", {"headers": {"request": {"set": {"X-A": "1"}},
                                         "response": {"remove": ["Server"]}}}, {}, registry)
    assert both.access_steps and both.response_steps
    fixed = build_chain("r", {"rate_limit": {"rate": 5}}, {}, registry)
    assert fixed.access_steps and fixed.response_steps and fixed.finish_steps == ()
    adaptive = build_chain("r", {"rate_limit": {"rate": 5, "adaptive": {
        "floor": 1, "ceiling": 10}}}, {}, registry)
    assert adaptive.finish_steps
    rewrite_path = build_chain("r", {"rewrite": {"host": "a.example"}}, {}, registry)
    assert rewrite_path.access_steps and rewrite_path.response_steps == ()
    assert build_chain("r", {"rewrite": {"response_status": {"404": 200}}}, {},
                       registry).response_steps


@pytest.mark.parametrize("phases, problem", [
    (lambda conf: {"access", "teardown"}, "the plugin's phases() names what is not a phase: "
                                          "'teardown'"),
    (lambda conf: conf["missing"], "the plugin's phases() failed: KeyError('missing')"),
    (lambda conf: None, "the plugin's phases() must return a set of phase names, got None"),
])
def test_a_broken_phases_hook_is_a_config_error_naming_the_route(phases, problem):
    """A third-party phases() that names no phase, raises or returns nonsense: the route is
    refused with the reason (etcd sync keeps the good routes), nothing crashes."""
    odd = plugin("odd", 1, log=[])
    odd.phases = phases
    with pytest.raises(ConfigError) as info:
        build_chain("route r", {"odd": {}}, {}, {"odd": odd})
    assert info.value.problems == [f"route r: plugins.odd: {problem}"]


@pytest.mark.parametrize("name, conf", [
    ("headers", {"request": {"set": {"Content-Length": "5"}}}),
    ("headers", {"request": {"set": {"transfer-encoding": "chunked"}}}),
    ("headers", {"request": {"set": {"Host": "internal.example"}}}),
    ("headers", {"request": {"remove": ["X-Forwarded-For"]}}),
    ("headers", {"request": {"set": {"X-Consumer-ID": "admin"}}}),
    ("headers", {"response": {"set": {"Content-Length": "0"}}}),
    ("headers", {"response": {"remove": ["X-Request-ID"]}}),
    ("rewrite", {"request_headers": {"add": {"Connection": "close"}}}),
])
def test_a_plugin_may_not_edit_what_the_gateway_writes(name, conf):
    """A second Content-Length or Host upstream is a desync, a Transfer-Encoding a smuggled
    request, an X-Consumer-ID a forged identity: refused when the route is compiled."""
    with pytest.raises(ConfigError) as info:
        build_chain("route r", {name: conf}, {}, load_registry())
    assert "is written by the gateway itself and cannot be edited here" in \
        info.value.problems[0]


class _Plugin:
    """A third-party plugin for contract checks: each test breaks one thing."""
    from gwserver.core.schema import Schema as _Schema
    NAME, PRIORITY, SCHEMA = "third_party", 10, _Schema()

    @staticmethod
    def access(conf, ctx):
        return None


@pytest.mark.parametrize("attr, value, message", [
    ("NAME", "Bad-Name", "NAME must be lower-case"),
    ("PRIORITY", "high", "PRIORITY must be an integer"),
    ("SCHEMA", {"rate": 1}, "SCHEMA must be a gwserver.core.schema.Schema"),
    ("access", None, "defines no phase"),
    ("claims", "not a function", "claims must be a function"),
    ("phases", {"access"}, "phases must be a function"),
    ("UPSTREAM_PLUGIN", "yes", "UPSTREAM_PLUGIN must be True or False"),
    ("UPSTREAM_PROTOCOL", "h3", "UPSTREAM_PROTOCOL must be one of"),
    ("link", lambda conf, resolve: conf, "link and upstream_refs go together"),
    ("admin_view", lambda uses, services: {}, "admin_view needs ADMIN_VIEW"),
])
def test_a_plugin_that_breaks_the_contract_is_refused_with_the_reason(attr, value, message):
    from gwserver.core.chain import check_plugin
    plugin = type("Broken", (_Plugin,), {attr: staticmethod(value) if callable(value) else value})
    with pytest.raises(TypeError, match=message):
        check_plugin(plugin)



def test_a_bad_plugin_config_is_named_without_its_secrets():
    from gwserver.settings import parse_conf
    with pytest.raises(ConfigError) as info:
        parse_conf({"routes": [{"id": "r", "paths": ["/r"], "upstream": {
            "targets": [{"url": "http://127.0.0.1:9"}]}, "plugins": {"jwt": {
                "secret": "hunter2-very-secret", "algorithms": ["RS256"]}}}]})
    text = "; ".join(info.value.problems)
    assert "plugins.jwt" in text and "hunter2" not in text and "***" in text


def test_the_builtin_plugins_keep_the_contract_and_core_names_none():
    import pathlib
    from gwserver.core.chain import check_plugin
    from gwserver.plugins import load_registry
    registry = load_registry()
    for plugin in registry.values():
        check_plugin(plugin)
    root = pathlib.Path(__file__).resolve().parents[2] / "gwserver"
    io_packages = ("server", "client", "upstream", "state", "sync", "helpers", "net")
    paths = [*(root / "core").glob("*.py")]
    for package in io_packages:
        paths += (root / package).glob("*.py")
    assert len(paths) > 30
    for path in (root / "core").glob("*.py"):       # imports point down: core loads no plugin
        assert "from ..plugins" not in path.read_text(), path
    for path in paths:
        text = path.read_text()
        for name in registry:
            assert f"plugins.{name}" not in text.replace("plugins.{", ""), (path, name)


def test_a_response_head_is_split_only_when_a_plugin_reads_it():
    from gwserver.core.context import ResponseHead, parse_block
    block = b"Server: up\r\nRateLimit-Limit: 99\r\nX-A: 1\r\n"
    head = ResponseHead(200, block=block)
    head.append_header(b"X-Added", b"yes")
    assert head._headers is None                            # appending splits nothing
    assert head.block() == block + b"X-Added: yes\r\n"
    assert head.has_header_prefix(b"ratelimit-") and head.has_header_prefix(b"server")
    assert not head.has_header_prefix(b"x-b") and head._headers is None
    assert not ResponseHead(200, block=b"X-Limit: ratelimit-1\r\n").has_header_prefix(
        b"ratelimit-")                                      # a value is not a name
    assert head.header("x-a") == "1"                        # reading splits, keeps the added
    assert head.headers == parse_block(block) + [(b"X-Added", b"yes")]
    head.remove_header("ratelimit-limit")
    head.append_header("X-Last", "1")
    assert head.block() == b"Server: up\r\nX-A: 1\r\nX-Added: yes\r\nX-Last: 1\r\n"
    head.headers = [(b"Only", b"this")]
    assert head.block() == b"Only: this\r\n" and head.has_header_prefix(b"only")
    head.append_lines(b"A: 1\r\nB: 2\r\n")                # split: added as pairs
    assert head.headers[-2:] == [(b"A", b"1"), (b"B", b"2")]
    fresh = ResponseHead(200, block=b"Server: up\r\n")
    fresh.append_lines(b"RateLimit-Limit: 5\r\n")           # unsplit: added to the block
    assert fresh._headers is None and fresh.has_header_prefix(b"ratelimit-")
    assert fresh.block() == b"Server: up\r\nRateLimit-Limit: 5\r\n"
    fresh.append_header("X-Tab", b"a\tb \xe9\x85")          # tab, obs-text: allowed
    fresh.append_header("X-Empty", "")
    assert fresh.block().endswith(b"X-Tab: a\tb \xe9\x85\r\nX-Empty: \r\n")


@pytest.mark.parametrize("lines", [
    b"", b"X-A: 1", b"X-A: 1\n", b"X-A: 1\r\n\r\n", b"X-A: 1\r\n\r\nbody",
    b"X-A: 1\rX-B: 2\r\n", b"X-A: 1\nX-B: 2\r\n", b"X-A: 1\0\r\n", b" folded\r\n",
    b"X-A: 1\r\n\tfolded\r\n", b": no name\r\n", b"no colon\r\n",
    b"X-A: 1\r\nX-B: 2", b"X-A: 1\x0b\r\n", b"X-A: \x01\r\n", b"X-A: 1\x7f\r\n",
    b"X-A: 1\x0c\r\n", b"X A: 1\r\n",
])
def test_a_plugin_cannot_split_or_end_the_clients_head(lines):
    from gwserver.core.context import ResponseHead
    for head in (ResponseHead(200, block=b"Server: up\r\n"),
                 ResponseHead(200, headers=[(b"Server", b"up")])):
        with pytest.raises(ValueError):
            head.append_lines(lines)
        assert head.block() == b"Server: up\r\n"          # nothing half-added


@pytest.mark.parametrize("name,value", [
    (b"X-A\r\nX-B", b"1"), (b"X-A: 1\r\nX-B", b"2"), (b"X A", b"1"), (b"", b"1"),
    (b"X-A", b"1\r\nSet-Cookie: a=b"), (b"X-A", b"1\n"), (b"X-A", b"1\0"),
    ("X-\u00e9", "1"), (b"X-A", b"1\x0b"), (b"X-A", b"\x1f"), (b"X-A", b"\x7f"),
    ("X-A", "\u20ac"), (b"X-A:", b"1"),
])
def test_append_header_refuses_a_name_or_value_that_would_add_a_line(name, value):
    # (or that llhttp, the HTTP/2 framer and most clients, would refuse: controls, DEL)
    from gwserver.core.context import ResponseHead
    head = ResponseHead(200, block=b"Server: up\r\n")
    with pytest.raises(ValueError):
        head.append_header(name, value)
    assert head.block() == b"Server: up\r\n"


@pytest.mark.parametrize("name, conf, where", [
    ("jwt", {"secret": "s" * 32, "forward_claims": {"sub": "Content-Length"}},
     "forward_claims.sub"),
    ("jwt", {"secret": "s" * 32, "forward_claims": {"sub": "X-Consumer-ID"}},
     "forward_claims.sub"),
    ("split", {"upstreams": [{"upstream": "v1", "weight": 1}], "group_header": "Host"},
     "group_header"),
    ("split", {"upstreams": [{"upstream": "v1", "weight": 1}], "env_header": "Transfer-Encoding"},
     "env_header"),
])
def test_a_header_a_plugin_sets_from_a_claim_or_a_choice_is_never_the_gateways(name, conf,
                                                                               where):
    """jwt's forward_claims and split's headers name request headers the plugin sets: a
    claim's value (a client's e-mail, say) as Content-Length would desync the upstream."""
    with pytest.raises(ConfigError) as info:
        load_registry()[name].SCHEMA.validate(conf, f"route r: plugins.{name}")
    assert info.value.problems == [
        f"route r: plugins.{name}: {where}: {conf_name(conf, where)} is written by the gateway "
        f"itself (Host, framing, hop-by-hop, X-Forwarded-*, Via, X-Request-ID, X-Consumer-*) "
        f"and cannot be set here"]


def conf_name(conf, where):
    value = conf
    for part in where.split("."):
        value = value[part]
    return value


def _third_party(**attrs):
    """A third-party plugin module as an author writes one: functions defined in it."""
    module = types.ModuleType("third_party_plugin")
    module.NAME, module.PRIORITY, module.SCHEMA = "third_party", 10, Schema()
    for name, value in attrs.items():
        if callable(value):
            value.__module__ = module.__name__
        setattr(module, name, value)
    return module


@pytest.mark.parametrize("attrs, message", [
    ({"access": lambda ctx: None},
     "plugin third_party: access must take 2 arguments (conf, ctx), it takes (ctx)"),
    ({"access": lambda conf, ctx, extra: None},
     "plugin third_party: access must take 2 arguments (conf, ctx), it takes "
     "(conf, ctx, extra)"),
    ({"finish": lambda conf, ctx: None},
     "plugin third_party: finish must take 3 arguments (conf, ctx, status), it takes "
     "(conf, ctx)"),
    ({"access": lambda conf, ctx: None, "prepare": lambda: {}},
     "plugin third_party: prepare must take 1 argument (conf), it takes ()"),
])
def test_a_phase_or_hook_with_the_wrong_signature_is_refused_at_load(attrs, message):
    """A phase that cannot take what the chain passes would be a TypeError on every request
    that runs it: refused when the plugin is loaded instead, naming the phase."""
    with pytest.raises(TypeError, match=re.escape(message)):
        check_plugin(_third_party(**attrs))


def test_defaults_optional_and_star_args_fit_a_phase():
    check_plugin(_third_party(access=lambda conf, ctx, extra=None: None,
                              finish=lambda *args: None, response=lambda conf, *rest: None))


def test_a_misspelt_phase_or_hook_is_refused_at_load():
    """`acess` beside a real `finish` was left unused without a word: an allow-list plugin
    with it misspelt lets everyone through."""
    def acess(conf, ctx):
        return Reply(403)
    with pytest.raises(TypeError, match=re.escape(
            "plugin third_party: acess is not a phase or hook; did you mean access? (a helper "
            "of that name: start it with _)")):
        check_plugin(_third_party(acess=acess, finish=lambda conf, ctx, status: None))
    with pytest.raises(TypeError, match="did you mean access"):     # not "defines no phase"
        check_plugin(_third_party(acess=acess))
    # a helper whose name is near a hook the plugin also defines is a helper (split's
    # upstream_ref beside upstream_refs), and a leading _ marks any helper as one
    check_plugin(_third_party(access=lambda conf, ctx: None, acces=lambda: None,
                              _finsh=lambda: None))


def test_a_helper_named_near_a_hook_it_does_not_take_the_arguments_of_loads():
    """difflib finds `respond` (a Reply-building helper) within 0.8 of `response`, `warning`
    of `warnings` and `replay` of `reply`: a plugin with such helpers was refused at load and
    every route naming it failed its config check. A misspelt hook is written to take the
    hook's arguments; these take others."""
    def respond(status, body):
        return Reply(status, body=body)

    def warning(message):
        return message

    def replay(ctx):
        return ctx

    plugin = _third_party(access=lambda conf, ctx: respond(403, b"no"), respond=respond,
                          warning=warning, replay=replay)
    check_plugin(plugin)


@pytest.mark.parametrize("field, message", [
    (Field("status", integer(100, 599, "a status"), 42, "status"),
     "plugin third_party: SCHEMA: the default of status fails its own check: must be a "
     "status between 100 and 599, got 42"),
    (Field("inner", Schema(Field("n", integer(1), 0, "n")), dict, "nested"),
     "plugin third_party: SCHEMA: the default of inner.n fails its own check: must be a "
     "positive integer, got 0"),
])
def test_a_schema_default_that_fails_its_own_check_is_refused_at_load(field, message):
    """A default the schema itself refuses reached the plugin unchecked, on every route that
    leaves the setting out (a status of 42 in a Reply)."""
    plugin = _third_party(access=lambda conf, ctx: None)
    plugin.SCHEMA = Schema(field)
    with pytest.raises(TypeError, match=re.escape(message)):
        check_plugin(plugin)


def test_a_default_given_in_the_form_its_check_returns_loads():
    """The default goes to the plugin as written, unchecked, so an author writes it in the form
    the plugin uses, which is what the check returns ("a check returns the value, normalised"):
    bytes for a header name, a frozenset for methods. f6bea5e ran the check on it and refused
    such plugins at load (Invalid, or AttributeError from the check), and with them every route
    naming them. A route could never have written such a value; only one it could is checked."""
    plugin = _third_party(access=lambda conf, ctx: None)
    plugin.SCHEMA = Schema(
        Field("header", lambda value: value.lower().encode("latin-1"), b"x-signature", "h"),
        Field("methods", lambda value: frozenset(list_of(one_of("GET", "POST"))(value)),
              frozenset({"GET"}), "m"))
    check_plugin(plugin)
    assert build_chain("route r", {"third_party": {}}, {}, {"third_party": plugin}).steps[0][1] \
        == {"header": b"x-signature", "methods": frozenset({"GET"})}


def test_a_prepare_or_check_that_raises_is_a_config_error_naming_the_route_and_plugin():
    """A third-party prepare() with a bug (a KeyError) came out of `gwserver check` as
    "gw.toml: a value could not be checked: KeyError: 'secrett'", naming neither the route
    nor the plugin; the same for a field check that raises what is not Invalid."""
    buggy = _third_party(access=lambda conf, ctx: None, prepare=lambda conf: conf["secrett"])
    with pytest.raises(ConfigError) as info:
        build_chain("route r", {"third_party": {}}, {}, {"third_party": buggy})
    assert info.value.problems == ["route r: plugins.third_party: the plugin's prepare() "
                                   "failed: KeyError('secrett')"]
    buggy = _third_party(access=lambda conf, ctx: None)
    buggy.SCHEMA = Schema(Field("n", lambda value: value + 1, 0, "a number"))
    with pytest.raises(ConfigError) as info:
        build_chain("route r", {"third_party": {"n": "x"}}, {}, {"third_party": buggy})
    assert info.value.problems == ["route r: plugins.third_party: the plugin's SCHEMA check "
                                   "failed: TypeError('can only concatenate str (not \"int\") "
                                   "to str')"]


def test_a_needs_hook_that_raises_is_a_config_error_naming_the_route_and_plugin():
    buggy = _third_party(access=lambda conf, ctx: None, needs=lambda conf: conf["nope"])
    with pytest.raises(ConfigError) as info:
        build_chain("route r", {"third_party": {}}, {}, {"third_party": buggy})
    assert info.value.problems == ["route r: plugins.third_party: the plugin's needs() "
                                   "failed: KeyError('nope')"]


def test_a_warnings_hook_that_raises_is_a_warning_naming_the_plugin_not_a_crash():
    """A third-party warnings() with a bug crashed `gwserver check` (and the master's start
    and reload, which ask the same) with a traceback. The config itself is valid: the bug is
    said as a warning, naming where the config is and the plugin."""
    from gwserver.settings import plugin_warnings
    buggy = _third_party(access=lambda conf, ctx: None, warnings=lambda conf: conf["nope"])
    assert plugin_warnings("route r: plugins", {"third_party": {}}, {"third_party": buggy}) == \
        ["route r: plugins.third_party: the plugin's warnings() failed: KeyError('nope')"]


def test_a_plugin_that_lacks_part_of_the_contract_is_named_by_its_name_and_module():
    """"plugin <module 'x.plug' from '/long/path/x/plug.py'> lacks SCHEMA": the NAME routes
    use was left out though the plugin had one."""
    plugin = _third_party(access=lambda conf, ctx: None)
    del plugin.SCHEMA
    with pytest.raises(TypeError, match=re.escape(
            "plugin third_party (third_party_plugin) lacks SCHEMA")):
        check_plugin(plugin)
    del plugin.NAME
    with pytest.raises(TypeError, match=re.escape(
            "plugin third_party_plugin lacks NAME, SCHEMA")):
        check_plugin(plugin)


def test_a_literal_list_default_is_a_fresh_copy_for_each_route():
    """A ``[]`` default was one list for every route: a plugin that appended to its conf in
    ``prepare`` (the docs' pattern for per-route state) added to every other route's."""
    def prepare(conf):
        conf["seen"].append("x")
        return conf
    grower = types.SimpleNamespace(NAME="grower", PRIORITY=1, access=lambda conf, ctx: None,
                                   prepare=prepare,
                                   SCHEMA=Schema(Field("seen", list_of(str), [], "list"),
                                                 Field("tags", lambda v: v, {"a": [1]}, "map")))
    registry = {"grower": grower}
    confs = [build_chain(f"route {n}", {"grower": {}}, {}, registry).steps[0][1]
             for n in "abc"]
    assert [conf["seen"] for conf in confs] == [["x"], ["x"], ["x"]]
    assert confs[0]["tags"] is not confs[1]["tags"]
    assert confs[0]["tags"]["a"] is not confs[1]["tags"]["a"]


@pytest.mark.parametrize("home", ["gwserver.plugins.gzip", "gwserver.plugins.acme"])
def test_a_plugin_named_like_a_built_in_module_is_still_checked(home):
    """Review of 235c277: a plugin was taken for a built-in (its head edits unchecked) when its
    ``__name__`` began with "gwserver.plugins.": any object may say so, and a package may
    put a module there. Only the very modules BUILTIN names are built-ins."""
    def response(conf, ctx, head):
        head.headers.append((b"Location", b"/x\r\nSet-Cookie: session=attacker"))
    plugin = types.SimpleNamespace(__name__=home, NAME="posing", PRIORITY=1, SCHEMA=Schema(),
                                   response=response)
    with pytest.raises(TypeError, match="plugin posing: a response header it set"):
        Chain([(plugin, {})]).run_response(types.SimpleNamespace(chain=None),
                                           ResponseHead(200, [(b"Server", b"up")]))


def test_a_third_party_plugin_that_only_appends_splits_no_head():
    """Review of 235c277: checking a third-party response hook split the upstream's block on
    every answer (to read its Content-Length first, then every field), which append_header
    and append_lines are documented to spare. Only the lines it added are checked now; one
    that adds a field the gateway writes is still refused, split or not."""
    def response(conf, ctx, head):
        head.append_header("X-Added", ctx.value)
    plugin = types.SimpleNamespace(NAME="appender", PRIORITY=1, SCHEMA=Schema(),
                                   response=response)
    block = b"Server: up\r\nContent-Length: 5\r\n"
    head = ResponseHead(200, block=block)
    Chain([(plugin, {})]).run_response(types.SimpleNamespace(chain=None, value="1"), head)
    assert head._headers is None and head.block() == block + b"X-Added: 1\r\n"
    for value in ("a\r\nX: b", "b"):        # refused by append_header, and by the check
        def response(conf, ctx, head, value=value):
            head.append_lines(b"Transfer-Encoding: chunked\r\n") if value == "b" else \
                head.append_header("X-Added", value)
        plugin.response = response
        with pytest.raises((TypeError, ValueError)):
            Chain([(plugin, {})]).run_response(types.SimpleNamespace(chain=None),
                                               ResponseHead(200, block=block))
    def response(conf, ctx, head):
        head.append_lines(b"Content-Length: 7\r\n")
    plugin.response = response
    with pytest.raises(TypeError, match="changed the answer's Content-Length"):
        Chain([(plugin, {})]).run_response(types.SimpleNamespace(chain=None),
                                           ResponseHead(200, block=block))
