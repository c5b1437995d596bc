"""A third-party plugin author's first day (dec14d), against real gateways and `gwserver check`:
plugins installed as docs/plugins.md says (a package and its dist-info on the path), then the
contract broken as a careless author would.

1. ``ctx.remove_header`` took any name: a plugin that removed X-Forwarded-Proto (or Via) of a
   trusted proxy's request sent the upstream the gateway's own ``http`` (and a Via chain
   without the proxy's hop), where ``set_header`` and the ``headers`` plugin refuse such
   names. It now raises ValueError as ``set_header`` does: a 500 naming the plugin.
2. Plugins of equal PRIORITY ran in the order a route's config happened to list them: the
   same two plugins ran one way on one route and the other way on the next. Ties now run in
   NAME order, on every route.
3. A route naming a plugin by its entry point's name, where the plugin's NAME differs, got
   "unknown plugin (available: ...)" and nothing said why. It is now told the NAME to use.
4. A ``prepare`` that forgot to return the conf made the route's conf None: `check` passed,
   and every request was a 500. It is now a config error naming the plugin.
5. A ``phases(conf)`` that named a phase the plugin does not define left the plugin out of
   the route's chain without a word (a signature check that never ran). Now a config error.
6. A nested ``Schema`` table with a default of ``dict`` came out ``{}`` on a route that left
   it out, its own fields' defaults unfilled: ``conf["opts"]["ttl"]`` was a KeyError (a 500)
   on every such request, while a route writing ``opts = {}`` got ``ttl`` = 30.
7. A ``needs`` that returned names, not (plugin, setting) pairs, was "a value could not be
   checked: ValueError: too many values to unpack", naming neither the route nor the plugin.
8. A ``warnings`` hook that said nothing when all was well (None) was "the plugin's
   warnings() failed: TypeError" on every check of a good config; one that returned its
   warning as a text was printed one character per line.
9. A plugin's ``sys.exit()`` at request time (argparse's on a value it refuses) ended the
   whole worker: the client got no answer, nor did anyone else the worker served. Now a 500
   naming the plugin; the worker lives.
10. An ``async def response`` was taken, and did nothing (a coroutine never awaited), on
    every request, without a word. Async hooks are refused at load.
11. A ``prepare`` that called sys.exit() (argparse's) on a route's conf, added by a reload:
    the master's check of the file exited, and the gateway with it (every worker drained
    and left). Now the reload is refused naming the route and plugin; it serves on. A
    module that exits when imported (argparse on `gwserver run`'s argv) is left out, named.
12. An auth plugin's ``prepare_credential`` that raised (a KeyError) made the whole conf "a
    value could not be checked: KeyError: 'tokn'", naming neither consumer nor plugin.
"""
import json
import os
import signal

import pytest

from ..conftest import check_conf, gateway_conf, installed_plugin, route, to_toml, wait_until

TIE = '''
from gwserver.core.schema import Schema

NAME = "tie"
PRIORITY = 1000            # the same as the built-in headers plugin
SCHEMA = Schema()


def access(conf, ctx):
    ctx.set_header("X-Saw-Env", ctx.header("X-Env") or "none")
'''

DROPPER = '''
from gwserver.core.schema import Field, Schema, string

NAME = "dropper"
PRIORITY = 500
SCHEMA = Schema(Field("header", string(), "X-Forwarded-Proto", "header to remove"))


def access(conf, ctx):
    ctx.remove_header(conf["header"])
'''

NESTED = '''
from gwserver.core.schema import Field, Schema, integer

NAME = "nested"
PRIORITY = 500
SCHEMA = Schema(
    Field("opts", Schema(Field("ttl", integer(1, 100), 30, "seconds")), dict, "options"),
)


def access(conf, ctx):
    ctx.set_header("X-Ttl", str(conf["opts"]["ttl"]))
'''

RENAMED = '''
from gwserver.core.schema import Schema

NAME = "renamed_inside"
PRIORITY = 10
SCHEMA = Schema()


def access(conf, ctx):
    pass
'''

NO_RETURN = '''
from gwserver.core.schema import Field, Schema, string

NAME = "noret"
PRIORITY = 10
SCHEMA = Schema(Field("secret", string(), "s", "key"))


def prepare(conf):
    conf["key"] = conf["secret"].encode()      # and no return


def access(conf, ctx):
    ctx.set_header("X-Key-Length", str(len(conf["key"])))
'''

LOST_PHASE = '''
from gwserver.core.schema import Schema

NAME = "lostphase"
PRIORITY = 10
SCHEMA = Schema()


def phases(conf):
    return {"response"}          # a response phase it never wrote


def access(conf, ctx):
    pass
'''

NEEDY = '''
from gwserver.core.schema import Schema

NAME = "needy"
PRIORITY = 10
SCHEMA = Schema()


def needs(conf):
    return ["jwt"]               # names, not (plugin, setting) pairs


def access(conf, ctx):
    pass
'''

CHATTY = '''
from gwserver.core.schema import Field, Schema, boolean

NAME = "chatty"
PRIORITY = 10
SCHEMA = Schema(Field("odd", boolean, False, "a config worth a warning"))


def warnings(conf):
    if conf["odd"]:
        return "odd is set"      # one warning, as a text; None when all is well


def access(conf, ctx):
    pass
'''

QUITTER = '''
import argparse

from gwserver.core.schema import Schema

NAME = "quitter"
PRIORITY = 10
SCHEMA = Schema()
_PARSER = argparse.ArgumentParser(prog="quitter", add_help=False)
_PARSER.add_argument("--n", type=int)


def access(conf, ctx):
    _PARSER.parse_args(["--n", ctx.header("X-N") or "1"])     # sys.exit(2) on "x"
'''

ASYNC = '''
from gwserver.core.schema import Schema

NAME = "asyncy"
PRIORITY = 10
SCHEMA = Schema()


async def response(conf, ctx, head):
    head.append_header("X-Async", "yes")
'''

PREPARE_EXIT = '''
import argparse

from gwserver.core.schema import Field, Schema, string

NAME = "prepexit"
PRIORITY = 10
SCHEMA = Schema(Field("mode", string(), "fast", "fast or slow"))
_PARSER = argparse.ArgumentParser(prog="prepexit", add_help=False)
_PARSER.add_argument("mode", choices=["fast", "slow"])


def prepare(conf):
    _PARSER.parse_args([conf["mode"]])      # sys.exit(2) on any other mode
    return conf


def access(conf, ctx):
    pass
'''

MY_AUTH = '''
from gwserver.core.schema import Field, Schema, string

NAME = "myauth"
PRIORITY = 945
IDENTIFIES_CONSUMER = True
SCHEMA = Schema()
CREDENTIAL = Schema(Field("token", string(), None, "the consumer's token"))


def prepare_credential(cred):
    return {**cred, "digest": cred["tokn"]}      # a typo: KeyError


def credential_lookup(cred):
    return cred["digest"]


def access(conf, ctx):
    pass
'''

MODULES = {"myauth": MY_AUTH, "prepexit": PREPARE_EXIT, "tie": TIE, "dropper": DROPPER,
           "nested": NESTED, "renamed": RENAMED, "noret": NO_RETURN, "lostphase": LOST_PHASE,
           "needy": NEEDY, "chatty": CHATTY, "quitter": QUITTER, "asyncy": ASYNC}


@pytest.fixture(scope="module")
def site_env(tmp_path_factory):
    """The plugins above as one installed package, each module under its entry point."""
    base = tmp_path_factory.mktemp("author")
    env = installed_plugin(base, "gwauthor", "", "".join(
        f"{'sigcheck' if name == 'renamed' else name} = gwauthor.{name}\n" for name in MODULES))
    for name, source in MODULES.items():
        (base / "site" / "gwauthor" / f"{name}.py").write_text(source)
    return env


@pytest.fixture(scope="module")
def gw(module_launcher, site_env):
    echo = module_launcher.upstream("echo")
    routes = [
        route("tie-first", ["/echo/tie-first"], echo.url,
              plugins={"tie": True, "headers": {"request": {"set": {"X-Env": "prod"}}}}),
        route("headers-first", ["/echo/headers-first"], echo.url,
              plugins={"headers": {"request": {"set": {"X-Env": "prod"}}}, "tie": True}),
        route("drop-proto", ["/echo/drop-proto"], echo.url, plugins={"dropper": True}),
        route("drop-via", ["/echo/drop-via"], echo.url,
              plugins={"dropper": {"header": "Via"}}),
        route("nested-left-out", ["/echo/nested"], echo.url, plugins={"nested": True}),
        route("quitter", ["/echo/quitter"], echo.url, plugins={"quitter": True}),
        route("good", ["/echo/good"], echo.url),
    ]
    return module_launcher.gateway(gateway_conf(routes, server={
        "trusted_proxies": ["127.0.0.1/32"]}), env=site_env)


def upstream_headers(gw, path, headers=None):
    resp, body = gw.request("GET", path, headers=headers)
    assert resp.status == 200, (resp.status, body)
    return {name.lower(): value for name, value in json.loads(body)["headers"]}


@pytest.mark.parametrize("path,name", [("/echo/drop-proto", "X-Forwarded-Proto"),
                                       ("/echo/drop-via", "Via")])
def test_a_plugin_cannot_remove_a_header_the_gateway_writes(gw, path, name):
    # a trusted proxy in front says the client came over TLS, through its own hop
    resp, _ = gw.request("GET", path, headers={"X-Forwarded-Proto": "https",
                                               "Via": "1.1 edge-lb"})
    assert resp.status == 500
    assert f"{name.encode()!r} is written by the gateway itself; a plugin cannot remove it" \
        in gw.log()
    assert "raised by plugin dropper in its access phase" in gw.log()
    # the other routes of the worker are served as before
    assert upstream_headers(gw, "/echo/good", {"X-Forwarded-Proto": "https"})[
        "x-forwarded-proto"] == "https"


def test_plugins_of_equal_priority_run_in_one_order_on_every_route(gw):
    saw = [upstream_headers(gw, path)["x-saw-env"]
           for path in ("/echo/tie-first", "/echo/headers-first")]
    assert saw == ["prod", "prod"]      # headers before tie (NAME order), on both routes


def test_a_nested_tables_defaults_are_filled_when_a_route_leaves_it_out(gw):
    assert upstream_headers(gw, "/echo/nested")["x-ttl"] == "30"


@pytest.fixture
def check(tmp_path, site_env, monkeypatch):
    """`gwserver check` of a route naming ``plugins``, with the plugins installed."""
    monkeypatch.setenv("PYTHONPATH", site_env["PYTHONPATH"])

    def run(plugins, **sections):
        return check_conf(tmp_path, gateway_conf([
            route("r1", ["/x"], "http://127.0.0.1:9", plugins=plugins)], **sections))
    return run


def test_a_route_naming_the_entry_point_not_the_name_is_told_the_name(check):
    code, out = check({"sigcheck": True})
    assert code == 2, out
    assert "plugins.sigcheck: unknown plugin" in out
    assert "its NAME is renamed_inside" in out, out
    assert "Traceback" not in out
    code, out = check({"renamed_inside": True})
    assert code == 0, out


def test_a_prepare_that_returns_nothing_refuses_the_route(check):
    code, out = check({"noret": True})
    assert code == 2, out
    assert "route r1: plugins.noret: the plugin's prepare() returned None" in out, out
    assert "Traceback" not in out


def test_phases_naming_a_phase_the_plugin_lacks_refuses_the_route(check):
    code, out = check({"lostphase": True})
    assert code == 2, out
    assert "route r1: plugins.lostphase: the plugin's phases() names response, which it " \
           "does not define" in out, out
    assert "Traceback" not in out


def test_a_plugins_sys_exit_is_a_500_and_the_worker_lives(gw):
    workers = gw.worker_pids()
    assert upstream_headers(gw, "/echo/quitter", {"X-N": "2"})
    resp, body = gw.request("GET", "/echo/quitter", headers={"X-N": "x"})
    assert resp.status == 500 and b"internal_error" in body
    assert "plugin quitter called sys.exit(2) in its access phase" in gw.log()
    assert "raised by plugin quitter in its access phase" in gw.log()
    assert upstream_headers(gw, "/echo/good")
    assert gw.worker_pids() == workers


def test_needs_that_returns_names_is_refused_naming_the_plugin(check):
    code, out = check({"needy": True})
    assert code == 2, out
    assert "route r1: plugins.needy: the plugin's needs() failed: ValueError(" in out, out
    assert "could not be checked" not in out


@pytest.mark.parametrize("odd,said", [(False, []),
                                      (True, ["route r1: plugins.chatty: odd is set"])])
def test_warnings_none_is_none_and_a_text_is_one_warning(check, odd, said):
    code, out = check({"chatty": {"odd": odd}})
    assert code == 0, out
    assert [line.partition("warning: ")[2] for line in out.splitlines()
            if "warning: " in line] == said, out


def test_an_async_phase_is_refused_at_load_not_skipped_on_every_request(check):
    code, out = check({"asyncy": True})
    assert code == 2, out
    assert "plugins.asyncy: unknown plugin (installed, but its entry point asyncy " \
           "(gwauthor.asyncy) not loaded: plugin asyncy: response must be a plain function, " \
           "not an async or generator one" in out, out


def test_a_reload_whose_plugin_exits_in_prepare_is_refused_and_serving_goes_on(launcher,
                                                                               site_env):
    echo = launcher.upstream("echo")
    gw = launcher.gateway(gateway_conf([route("good", ["/echo/good"], echo.url)]),
                          env=site_env)
    conf = dict(gw.conf, routes=[*gw.conf["routes"], route(
        "fussy", ["/echo/fussy"], echo.url, plugins={"prepexit": {"mode": "medium"}})])
    gw.conf_path.write_text(to_toml(conf))
    os.kill(gw.pid, signal.SIGHUP)
    wait_until(lambda: "is invalid; still serving" in gw.log() or gw.proc.poll() is not None,
               timeout=15)
    assert gw.proc.poll() is None, gw.log()[-2000:]
    assert "reload refused: route fussy: plugins.prepexit: the plugin's prepare() failed: " \
           "SystemExit(2)" in gw.log()
    assert upstream_headers(gw, "/echo/good")


def test_a_plugin_module_that_exits_when_imported_is_left_out_named(tmp_path, monkeypatch):
    env = installed_plugin(tmp_path, "gwargv", """
        import argparse
        from gwserver.core.schema import Schema

        NAME, PRIORITY, SCHEMA = "argvy", 10, Schema()
        ARGS = argparse.ArgumentParser(prog="argvy").parse_args()   # the gateway's argv


        def access(conf, ctx):
            pass
        """, "argvy = gwargv\n")
    monkeypatch.setenv("PYTHONPATH", env["PYTHONPATH"])
    code, out = check_conf(tmp_path, gateway_conf([
        route("r1", ["/x"], "http://127.0.0.1:9", plugins={"argvy": True}),
        route("r2", ["/y"], "http://127.0.0.1:9")]))
    assert code == 2, out
    assert "route r1: plugins.argvy: unknown plugin (installed, but its entry point argvy " \
           "(gwargv) not loaded: SystemExit(2))" in out, out


def test_a_credential_hook_that_raises_names_the_consumer_and_plugin(check):
    code, out = check({"myauth": True},
                      consumers={"alice": {"credentials": {"myauth": {"token": "abc"}}}})
    assert code == 2, out
    assert "consumer alice: credentials.myauth: the plugin's prepare_credential() failed: " \
           "KeyError('tokn')" in out, out
    assert "could not be checked" not in out
