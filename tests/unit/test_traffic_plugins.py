"""redirect, rewrite and limit_conn without sockets: what their configs refuse at compile time,
the Locations and paths they build, and the per-host lease store (real files, real pids)."""
import os
import subprocess
import sys

import pytest

from gwserver.core.chain import build_chain
from gwserver.core.context import RequestContext, ResponseHead
from gwserver.state.store import LocalStore
from gwserver.errors import ConfigError
from gwserver.plugins import load_registry
from gwserver.plugins.variables import compile_template, path_escape, uri_escape


class _Route:
    id = "r"
    strip_prefix = None


def ctx_for(path="/a", query="", host="api.example.com", scheme="http", params=None,
            headers=()):
    ctx = RequestContext("203.0.113.7", scheme)
    ctx.method, ctx.path, ctx.query, ctx.host = "GET", path, query, host
    ctx.host_header = host.encode()
    ctx.request_id, ctx.route, ctx.params = "rid-1", _Route(), params or {}
    for name, value in headers:         # as the request reader fills them
        name, value = name.encode("latin-1"), value.encode("latin-1")
        ctx.headers.append((name, value))
        ctx.header_map[name.lower()] = value
    return ctx


def step(plugins):
    (plugin, conf), = build_chain("route r", plugins, None, load_registry()).steps
    return plugin, conf


@pytest.mark.parametrize("plugins, problem", [
    ({"redirect": {}}, "exactly one of"),
    ({"redirect": {"http_to_https": True, "uri": "/x"}}, "exactly one of"),
    ({"redirect": {"uri": "//evil.example/x"}}, "scheme-relative"),
    ({"redirect": {"uri": "/\\evil.example"}}, "scheme-relative"),
    ({"redirect": {"uri": "evil.example/x"}}, "must start with"),
    ({"redirect": {"uri": "javascript:alert(1)"}}, "must start with"),
    ({"redirect": {"uri": "$query"}}, "must start with"),
    ({"redirect": {"uri": "https://a.example$param_x"}}, "$param_x stands where"),
    ({"redirect": {"uri": "https://$param_x/"}}, "$param_x stands where"),
    ({"redirect": {"uri": "https://$host.evil.example/"}}, "host part"),
    ({"redirect": {"uri": "https://a.example@evil.example/"}}, "host part"),
    ({"redirect": {"uri": "https://$host/\r\nX: y"}}, "CR, LF"),
    ({"rewrite": {"request_headers": {"set": {"X-A": "a\x0bb"}}}}, "control characters"),
    ({"rewrite": {"response_headers": {"add": {"X-A": "\u20ac"}}}}, "latin-1"),
    ({"redirect": {"uri": "/x/$nope"}}, "unknown variable at offset 3: a variable"),
    ({"redirect": {"uri": "/x/$clinet_ip"}},
     "unknown variable at offset 3: $clinet_ip (did you mean $client_ip?)"),
    ({"redirect": {"uri": "/x/$1"}}, "captures exist only"),
    ({"redirect": {"http_to_https": True, "status": 200}}, "must be one of"),
    ({"rewrite": {"path": {"match": "(", "replace": "/x"}}}, "not a regular expression"),
    ({"rewrite": {"path": {"match": "^/a/(.*)$", "replace": "/b/$2"}}}, "has 1 group"),
    # searched in the canonical path, which never holds these escapes (an attack pass: the
    # rewrite was left undone without a word)
    ({"rewrite": {"path": {"match": "^/rw/%7eops/(.*)$", "replace": "/x/$1"}}},
     'path.match holds %7e, which the canonical path it is searched in never does: '
     'write "\\\\~"'),
    ({"rewrite": {"path": {"match": "^/a%28b", "replace": "/x"}}}, 'write "\\\\("'),  # a group
    # outside a character class an escape is one, whatever comes before the class
    ({"rewrite": {"path": {"match": "^/[a-z]+/%7e", "replace": "/x"}}}, 'write "\\\\~"'),
    ({"rewrite": {"path": {"match": "^/a\\[%7e", "replace": "/x"}}}, 'write "\\\\~"'),
    ({"rewrite": {"path": {"match": "^/a", "replace": "/v1/x%3abatch"}}},
     'path.replace holds %3a, which a canonical path spells ":"'),
    ({"rewrite": {"path": {"match": "^/v1/x%3Abatch", "replace": "/x"}}}, 'write ":"'),
    ({"rewrite": {"path": {"match": "^/caf%c3%a9", "replace": "/x"}}}, 'write "%C3"'),
    ({"rewrite": {"path": {"match": "^/a", "replace": "/b/../c"}}}, "canonical"),
    ({"rewrite": {"path": {"match": "^/a(.*)", "replace": "/b//$1"}}}, "canonical"),
    ({"rewrite": {"path": {"match": "^/a", "replace": "b"}}}, "canonical"),
    ({"rewrite": {"path": {"match": "^/a", "replace": "/b/%2e%2e/c"}}}, "canonical"),
    ({"rewrite": {"path": {"match": "^/a", "replace": "/b%2Fc"}}}, "canonical"),
    ({"rewrite": {"path": {"match": "^/a", "replace": "/b;x"}}}, "canonical"),
    ({"rewrite": {"path": {"match": "^/a", "replace": "/b?x=1"}}}, "cannot hold ?"),
    ({"rewrite": {"request_headers": {"set": {"Host": "x"}}}}, "written by the gateway"),
    ({"rewrite": {"request_headers": {"remove": ["X-Forwarded-For"]}}}, "written by the gateway"),
    ({"rewrite": {"response_headers": {"set": {"Content-Length": "1"}}}}, "written by the gateway"),
    ({"rewrite": {"request_headers": {"add": {"X-A": "$cookie"}}}}, "unknown variable"),
    ({"rewrite": {"response_status": {"200": 204}}}, "framed differently"),
    ({"rewrite": {"response_status": {"abc": 500}}}, "is not a status"),
    ({"limit_conn": {}}, "limit: is required"),
    ({"limit_conn": {"limit": 0}}, "limit: must be"),
    ({"limit_conn": {"limit": 1, "key": "claim:sub"}}, "header:NAME"),
])
def test_configs_that_could_be_steered_or_are_not_canonical_are_refused(plugins, problem):
    with pytest.raises(ConfigError) as exc:
        build_chain("route r", plugins, None, load_registry())
    assert problem in str(exc.value)


SECRET = "sk_live_TOPSECRET_8c1f"


@pytest.mark.parametrize("plugins, problem", [
    # a secret read from a file with its newline: a header value cannot hold it
    ({"headers": {"request": {"set": {"Authorization": f"Bearer {SECRET}\n"}}}},
     "'\\n' at offset 29"),
    # a secret with a "$" in it, which rewrite reads as a variable
    ({"rewrite": {"request_headers": {"set": {"Authorization": f"Bearer {SECRET}$x9"}}}},
     "unknown variable at offset 29: a variable"),
    ({"rewrite": {"request_headers": {"set": {"Authorization": f"Bearer $x9{SECRET}"}}}},
     "unknown variable at offset 7: a variable"),
    # a "$" before lower-case letters: a piece of the secret, no near miss of a variable
    ({"rewrite": {"request_headers": {"set": {"Authorization": f"Bearer ab$topsecret-{SECRET}"}}}},
     "unknown variable at offset 9: a variable"),
    # a "$" and a digit: a regex capture, which a header value cannot use
    ({"rewrite": {"request_headers": {"set": {"X-Partner": f"ab$1{SECRET}"}}}},
     "$1 at offset 2: regex captures"),
    # under a name no rule takes for a credential's, in the echo of the config too
    ({"rewrite": {"request_headers": {"set": {"X-Partner": f"{SECRET}$x9"}}}},
     "unknown variable at offset 22: a variable"),
])
def test_a_refused_header_value_is_never_quoted(plugins, problem):
    """The reason a config is refused goes to `gwserver check`, the log and /admin/config
    (an etcd item's): a header value the config sets is often the upstream's credential."""
    with pytest.raises(ConfigError) as exc:
        build_chain("route r", plugins, None, load_registry())
    assert problem in str(exc.value) and SECRET not in str(exc.value), str(exc.value)
    assert "TOPSECRET" not in str(exc.value).upper()


@pytest.mark.parametrize("match", ["^/a/([^%2f]+)$", "^/a/[]%2f]+$", "^/a/[\\]%7e]$",
                                   "^/a/[%]+$"])
def test_a_character_class_holding_percent_and_hex_is_no_escape(match):
    """[^%2f] is "none of %, 2, f": no spelling of an escape the canonical path lacks."""
    chain = build_chain("route r", {"rewrite": {"path": {"match": match, "replace": "/x"}}},
                        None, load_registry())
    assert chain.steps[0][0].NAME == "rewrite"


@pytest.mark.parametrize("plugins, where", [
    ({"rewrite": {"path": {"match": "a{4294967296}", "replace": "/x"}}},
     "route r: plugins.rewrite: path.match is not a regular expression"),
    ({"rewrite": {"path": {"match": "(" * 5000 + ")" * 5000, "replace": "/x"}}},
     "route r: plugins.rewrite: path.match is not a regular expression: groups nested too"),
    ({"cors": {"allow_origin_patterns": ["a{4294967296}"]}},
     "route r: plugins.cors: allow_origin_patterns[0]: must be a regular expression"),
    ({"cors": {"allow_origin_patterns": ["(" * 5000 + ")" * 5000]}},
     "route r: plugins.cors: allow_origin_patterns[0]: must be a regular expression (groups"),
])
def test_regexes_that_re_cannot_compile_are_config_errors_naming_the_field(plugins, where):
    """re.compile refuses a repeat count past 2**32 - 1 with OverflowError and groups nested
    past the recursion limit with RecursionError, not re.error: they escaped the checks, so
    `gwserver check` said only "a value could not be checked" (no route, no field, and no
    other problem of the file) and etcd's rejection named no field either."""
    with pytest.raises(ConfigError) as exc:
        build_chain("route r", plugins, None, load_registry())
    assert where in str(exc.value)


@pytest.mark.parametrize("plugins, warned", [
    ({"rewrite": {"path": {"match": "^/r/(a+)+$", "replace": "/x"}}},
     ["route r: plugins.rewrite: path.match \"^/r/(a+)+$\" repeats a part of varying length"]),
    ({"rewrite": {"path": {"match": "^/r/(\\w+-?)*$", "replace": "/x"}}},
     ["route r: plugins.rewrite: path.match"]),
    ({"cors": {"allow_origin_patterns": ["https://x\\.example", "https://(\\w+\\.?)+\\.com"]}},
     ["route r: plugins.cors: allow_origin_patterns[1]"]),
    ({"rewrite": {"path": {"match": "^/api/v1/(.*)$", "replace": "/v2/$1"}}}, []),
    ({"rewrite": {"path": {"match": "^/r((?:/[^/]+)++)$", "replace": "/x$1"}}}, []),
    ({"cors": {"allow_origin_patterns": ["https://.*\\.example\\.com"]}}, []),
    # a part ended (or begun) by a character its repeat cannot match splits one way: the
    # usual any-subdomain pattern and a run of path segments were warned of, falsely
    ({"cors": {"allow_origin_patterns": ["^https://([a-z0-9-]+\\.)*example\\.com$"]}}, []),
    ({"rewrite": {"path": {"match": "^/r((?:/[^/]+)+)$", "replace": "/x$1"}}}, []),
    ({"rewrite": {"path": {"match": "^/(?:\\w+/)*index$", "replace": "/x"}}}, []),
    # ... but not when the repeat can match that character too
    ({"cors": {"allow_origin_patterns": ["^https://([\\w.-]+\\.)*example\\.com$"]}},
     ["route r: plugins.cors: allow_origin_patterns[0]"]),
    ({"rewrite": {"path": {"match": "^/r((?:/.+)+)$", "replace": "/x$1"}}},
     ["route r: plugins.rewrite: path.match"]),
])
def test_a_regex_that_backtracks_exponentially_is_warned_of(plugins, warned):
    """A rewrite's path.match is searched in the client's path, a cors pattern matched
    against its Origin: with a repeat of a varying part, 34 characters held a worker past
    server.timeout (the master killed it, and every request it was serving). Valid, so a
    warning from `gwserver check`, `routes put` and at start, naming where it is."""
    from gwserver.settings import plugin_warnings
    build_chain("route r", plugins, None, load_registry())      # valid
    found = plugin_warnings("route r: plugins", plugins)
    assert len(found) == len(warned), found
    for line, start in zip(found, warned):
        assert line.startswith(start) and "possessive" in line, line


@pytest.mark.parametrize("conf, ctx, location", [
    ({"http_to_https": True}, ctx_for("/a/b", "x=1"), "https://api.example.com/a/b?x=1"),
    ({"http_to_https": True, "https_port": 8443}, ctx_for("/a"), "https://api.example.com:8443/a"),
    ({"http_to_https": True, "host": "fixed.example"}, ctx_for("/a", host="evil.example"),
     "https://fixed.example/a"),
    ({"http_to_https": True}, ctx_for("/a%0D%0Ab", "q=\r\n"), "https://api.example.com/a%0D%0Ab?q=%0D%0A"),
    ({"uri": "/n/$param_rest"}, ctx_for(params={"rest": "//evil.example/x"}), "/n///evil.example/x"),
    ({"uri": "/$param_rest"}, ctx_for(params={"rest": "//evil.example/x"}), "/evil.example/x"),
    ({"uri": "/$param_rest"}, ctx_for(params={"rest": "\\evil.example"}), "/%5Cevil.example"),
    ({"uri": "$path"}, ctx_for("//evil.example"), "/evil.example"),
    ({"uri": "https://$host:8443$path", "append_query": True}, ctx_for("/p", "a=1"),
     "https://api.example.com:8443/p?a=1"),
    ({"uri": "/x?from=$client_ip", "append_query": True}, ctx_for("/p", "a=1"),
     "/x?from=203.0.113.7&a=1"),
])
def test_locations(conf, ctx, location):
    plugin, prepared = step({"redirect": conf})
    reply = plugin.access(prepared, ctx)
    assert dict(reply.headers)["Location"] == location


def test_https_requests_and_trusted_proxies_saying_https_are_not_redirected():
    plugin, conf = step({"redirect": {"http_to_https": True}})
    assert plugin.access(conf, ctx_for(scheme="https")) is None
    forwarded = ctx_for(headers=[("X-Forwarded-Proto", "https")])
    assert plugin.access(conf, forwarded).status == 301         # not from a trusted proxy
    forwarded.peer_ip = "10.0.0.1"
    assert plugin.access(conf, forwarded) is None


def test_an_http10_request_without_host_gets_400_not_a_hostless_location():
    plugin, conf = step({"redirect": {"http_to_https": True}})
    assert plugin.access(conf, ctx_for(host="")).status == 400


@pytest.mark.parametrize("path, new", [
    ("/api/v1/orders", "/v2/orders"),
    ("/api/v1/", "/v2/"),
    ("/other", "/other"),                       # no match: unchanged
])
def test_path_rewrites(path, new):
    plugin, conf = step({"rewrite": {"path": {"match": "^/api/v1/(.*)$", "replace": "/v2/$1"}}})
    ctx = ctx_for(path)
    assert plugin.access(conf, ctx) is None and ctx.path == new


@pytest.mark.parametrize("path", ["/d/", "/d/-"])
def test_captures_that_make_a_path_that_is_not_canonical_get_400(path):
    """The request's path made it (the replacement's own text is checked at compile time):
    the client's error, not a 500 any anonymous client could ask for."""
    plugin, conf = step({"rewrite": {"path": {"match": "^/d/([a-z]*)-?([a-z]*)$",
                                              "replace": "/x/.$1$2./y/$1/z"}}})
    ctx = ctx_for(path)
    assert plugin.access(conf, ctx).status == 400 and ctx.path == path


@pytest.mark.parametrize("rules, path", [
    (("keep", True, "reject"), "/p/a%2Fb"),     # escaped_slashes = "keep"
    (("reject", False, "reject"), "/p/a//b"),   # merge_slashes = false
    (("reject", True, "keep"), "/p/a;v=1/b"),   # path_parameters = "keep"
])
def test_a_path_the_server_takes_is_rewritten_by_its_rules(rules, path):
    """A rewrite judged its result by the strictest rules: with escaped_slashes = "keep"
    (say) a path the gateway forwards as it is became a 500 once rewritten."""
    from gwserver.services import Services
    plugin, conf = step({"rewrite": {"path": {"match": "^/p/(.*)$", "replace": "/v2/$1"}}})
    ctx = ctx_for(path)
    ctx.services = Services(path_rules=rules)
    assert plugin.access(conf, ctx) is None and ctx.path == "/v2/" + path[3:]
    ctx = ctx_for(path)                 # the strictest rules (the default): refused, 400
    assert plugin.access(conf, ctx).status == 400


@pytest.mark.parametrize("request_id, path", [
    ("a /admin", "/t/a%20/admin/x"),        # no four-word request line upstream
    ("a\tb?c#d", "/t/a%09b%3Fc%23d/x"),
    ("\xc3\xa9", "/t/%C3%A9/x"),            # UTF-8 read as latin-1: its bytes, encoded
    ("%41%2F", "/t/%2541%252F/x"),           # literal text: its % is not an escape
])
def test_variables_in_a_rewritten_path_are_percent_encoded(request_id, path):
    plugin, conf = step({"rewrite": {"path": {"match": "^/rid/(.*)$",
                                              "replace": "/t/$request_id/$1"}}})
    ctx = ctx_for("/rid/x")
    ctx.request_id = request_id
    assert plugin.access(conf, ctx) is None and ctx.path == path


@pytest.mark.parametrize("request_id", ["..", "a/../b", "\xe9", ""])  # "\xe9": not UTF-8
def test_request_values_that_make_a_path_that_is_not_canonical_get_400(request_id):
    """The client's values at fault (an empty one makes //): its error, not the gateway's."""
    plugin, conf = step({"rewrite": {"path": {"match": "^/rid/(.*)$",
                                              "replace": "/t/$request_id/$1"}}})
    ctx = ctx_for("/rid/x")
    ctx.request_id = request_id
    assert plugin.access(conf, ctx).status == 400 and ctx.path == "/rid/x"


@pytest.mark.parametrize("replace, path", [
    ("/v2$path/$param_id", "/v2/p/a%20b/c:d"),
    # a capture before them: each part's kind is its own (a capture once shifted $path onto
    # the next name, and $path was encoded as a value: /v2/a%20b/p/a%2520b/c:d)
    ("/v2/$1$path/$param_id", "/v2/a%20b/p/a%20b/c:d"),
    # ...and a value after them went in raw: a space in the request line
    ("/v2/$1$path/$request_id", "/v2/a%20b/p/a%20b/r%20id"),
])
def test_path_variables_are_path_text_not_values(replace, path):
    plugin, conf = step({"rewrite": {"path": {"match": "^/p/(.*)$", "replace": replace}}})
    ctx = ctx_for("/p/a%20b", params={"id": "c:d"})
    ctx.request_id = "r id"
    assert plugin.access(conf, ctx) is None and ctx.path == path


def test_header_edits_with_variables_and_an_empty_set_removes_the_clients_copy():
    plugin, conf = step({"rewrite": {"request_headers": {
        "set": {"X-Consumer": "$consumer", "X-Who": "$client_ip/$param_id/$request_id"},
        "add": {"X-Tag": "a$$b", "X-Empty": "$consumer"}, "remove": ["Cookie"]}}})
    ctx = ctx_for(params={"id": "42"}, headers=[("X-Consumer", "admin"), ("Cookie", "s=1")])
    assert plugin.access(conf, ctx) is None
    assert ctx.header("X-Consumer") is None and ctx.header("Cookie") is None
    assert ctx.header("X-Who") == "203.0.113.7/42/rid-1"
    assert ctx.header("X-Tag") == "a$b" and ctx.header("X-Empty") is None


def test_a_variable_holding_cr_or_lf_is_refused_not_written_into_a_header():
    plugin, conf = step({"rewrite": {"request_headers": {"set": {"X-Id": "$request_id"}}}})
    ctx = ctx_for()
    ctx.request_id = "x\r\nX-Admin: 1"
    assert plugin.access(conf, ctx).status == 400
    assert ctx.header("X-Id") is None and ctx.header("X-Admin") is None


def test_response_edits_and_status_map():
    plugin, conf = step({"rewrite": {"response_headers": {"set": {"X-R": "$request_id"},
                                                          "remove": ["Server"]},
                                     "response_status": {"404": 410}}})
    head = ResponseHead(404, [(b"Server", b"x"), (b"Content-Type", b"text/plain")])
    plugin.response(conf, ctx_for(), head)
    assert head.status == 410
    assert head.headers == [(b"Content-Type", b"text/plain"), (b"X-R", b"rid-1")]


@pytest.mark.parametrize("text, value", [
    ("plain", "plain"), ("$$5", "$5"), ("${host}x", "api.example.comx"),
    ("$path?$query", "/a?b=1"), ("$param_missing", ""),
])
def test_templates(text, value):
    assert compile_template(text).expand(ctx_for("/a", "b=1")) == value


def test_uri_escape_keeps_escapes_and_encodes_what_could_split_or_redirect():
    assert uri_escape("/a%2Fb c\r\n\\\"<>\xe9") == "/a%2Fb%20c%0D%0A%5C%22%3C%3E%E9"


# -- per-host leases -------------------------------------------------------------------------

def test_per_host_leases_are_shared_released_and_expire(tmp_path):
    one, two = LocalStore(str(tmp_path)), LocalStore(str(tmp_path))      # two workers
    first = one.conn_claim("k", 2, 60)
    second = two.conn_claim("k", 2, 60)
    assert first.lease and second.lease and second.held == 2
    assert one.conn_claim("k", 2, 60).lease is None
    assert one.conn_claim("other", 2, 60).lease is not None            # keys are apart
    two.conn_release("k", 2, 60, second.lease)
    assert one.conn_claim("k", 2, 60).lease is not None
    short = one.conn_claim("e", 1, 0.05)
    assert short.lease and one.conn_claim("e", 1, 0.05).lease is None
    import time
    time.sleep(0.1)
    assert one.conn_claim("e", 1, 0.05).lease is not None              # expired, dropped


def test_a_lease_of_a_process_that_is_gone_is_dropped_when_the_slots_are_full(tmp_path):
    code = ("import sys; from gwserver.state.store import LocalStore; "
            "print(LocalStore(sys.argv[1]).conn_claim('k', 1, 300).lease)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                         text=True, check=True, cwd=os.getcwd())
    assert out.stdout.strip()                                          # it held the slot
    assert LocalStore(str(tmp_path)).conn_claim("k", 1, 300).lease is not None


def test_acl_remembers_a_verdict_per_consumer_version_never_across_versions():
    """A consumer moved out of an allowed group is refused on its next request: the new
    version is a new Consumer, and verdicts are remembered per object."""
    from gwserver.core.consumers import compile_consumer
    plugin, conf = step({"acl": {"allow_groups": ["partners"]}})
    registry = load_registry()
    ctx = ctx_for()
    ctx.consumer = compile_consumer("acme", {"groups": ["partners"]}, registry)
    assert plugin.access(conf, ctx) is None
    assert plugin.access(conf, ctx) is None             # remembered
    ctx.consumer = compile_consumer("acme", {"groups": ["former"]}, registry)
    assert plugin.access(conf, ctx).status == 403


def test_path_escape_keeps_separators_and_encodes_the_rest():
    assert path_escape("/a%2Fb c?d#e\r\n\\\"<>\xe9;=@") == \
        "/a%252Fb%20c%3Fd%23e%0D%0A%5C%22%3C%3E%E9;=@"
