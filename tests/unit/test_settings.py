"""The conf file: every setting declared once, every problem named by its full path."""
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from gwserver.errors import ConfigError
from gwserver.settings import SECTIONS, load_conf, parse_conf, reference_toml

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "conf" / "gwserver.toml"


def problems_of(doc):
    with pytest.raises(ConfigError) as info:
        parse_conf(doc)
    return info.value.problems


def test_defaults_fill_an_empty_file():
    conf = parse_conf({})
    assert conf.server["workers"] == "auto"
    assert conf.server["bind"] == ["127.0.0.1:8080"]
    assert conf.upstream_defaults["pool_size"] == 64
    assert conf.log["access_format"] == "json"
    assert len(conf.router) == 0


@pytest.mark.parametrize("doc, expected", [
    ({"server": {"workers": "two"}}, 'server.workers: must be a positive integer or \"auto\", got "two"'),
    ({"server": {"workers": 0}}, "server.workers: must be a positive integer or \"auto\", got 0"),
    ({"server": {"workers": True}}, "server.workers: must be a positive integer or \"auto\", got true"),
    ({"server": {"bind": ["localhost"]}}, 'server.bind[0]: must be "host:port"'),
    # str.isdigit() takes "²", which int() refuses: a ValueError, no problem named (a review)
    ({"server": {"bind": ["127.0.0.1:\u00b2"]}}, 'server.bind[0]: must be "host:port"'),
    ({"redis": {"url": "redis+cluster://a:1,b:\u00b2"}},
     'redis.url: needs host:port for every node, got "b:\\u00b2"'),
    ({"server": {"bind": []}}, "server.bind: must have at least 1 item"),
    ({"server": {"keepalive": -1}}, "server.keepalive: must be a number >= 0"),
    ({"server": {"wrokers": 2}}, "server.wrokers: unknown key"),
    # a Via name is one token: a comma would forge another hop, CR LF another header
    ({"server": {"via": "gw, 1.1 trusted"}}, "server.via: must be a token"),
    ({"server": {"via": "gw\r\nX-Admin: 1"}}, "server.via: must be a token"),
    ({"server": {"via": ""}}, "server.via: must be a token"),
    ({"server": {"max_draining_generations": 0}}, "server.max_draining_generations: must be"),
    ({"server": {"workers": 10 ** 20}}, "server.workers: must be at most 1024"),
    ({"server": {"graceful_timeout": float("inf")}},
     "server.graceful_timeout: must be a finite number, got Infinity"),
    ({"server": {"keepalive": float("nan")}}, "server.keepalive: must be a finite number"),
    ({"server": {"keepalive": 10 ** 400}}, "server.keepalive: must be a number >= 0 of a "
                                           "sensible size"),
    ({"server": {"backlog": 10 ** 5000}}, "server.backlog: must be a positive integer between "
                                          "1 and 2147483647, got <int too large to show>"),
    ({"server": {"max_requests": 10 ** 5000}}, "server.max_requests: must be a non-negative "
                                               "integer of a sensible size, got <int too large "
                                               "to show>"),
    # a bounded integer's message names its bound, and gunicorn's 0 ("no limit") is explained
    ({"server": {"limit_request_line": 0}},
     "server.limit_request_line: must be an integer >= 64, got 0 (gunicorn's 0, no limit, "
     "is not taken"),
    ({"server": {"limit_request_field_size": 0}},
     "server.limit_request_field_size: must be an integer >= 64, got 0 (gunicorn's 0"),
    ({"server": {"limit_request_line": 63}},
     "server.limit_request_line: must be an integer >= 64, got 63"),
    ({"upstream_defaults": {"max_response_head": 0}},
     "upstream_defaults.max_response_head: must be an integer >= 1024, got 0"),
    ({"upstream_defaults": {"max_response_head": "big"}},
     'upstream_defaults.max_response_head: must be an integer >= 1024, got "big"'),
    ({"upstream_defaults": {"block_when_full": "yes"}},
     'upstream_defaults.block_when_full: must be true or false, got "yes"'),
    ({"upstream_defaults": {"connect_timeout": 0}},
     "upstream_defaults.connect_timeout: must be a positive number, got 0"),
    ({"log": {"level": "loud"}}, 'log.level: must be one of "debug"'),
    ({"nonsense": {}}, "nonsense: unknown key"),
    ({"plugins": {"headers": {"request": {"set": {"X": 1}}}}},
     "plugins.headers: request.set.X: must be a header value"),
    ({"etcd": {"endpoints": ["http://gw:hunter2@127.0.0.1:2379"]}},
     "etcd.endpoints[0]: must not hold a user or password"),
    # the same listener by another name: the worker compares them resolved, as bound
    ({"server": {"bind": ["127.0.0.1:9301"]}, "admin": {"bind": "localhost:9301"}},
     "admin.bind: localhost:9301 is also in server.bind"),
])
def test_each_bad_key_is_named_with_its_reason(doc, expected):
    problems = problems_of(doc)
    assert any(p.startswith(expected) for p in problems), problems


def test_all_problems_are_reported_at_once():
    problems = problems_of({"server": {"workers": "two", "backlog": -5},
                            "routes": [{"id": "r", "paths": ["x"],
                                        "upstream": {"targets": [{"url": "http://h:1"}]}}]})
    assert len(problems) == 3, problems


def test_shipped_conf_is_valid_and_documents_every_setting():
    conf = load_conf(SHIPPED)
    assert len(conf.router) >= 2
    text = SHIPPED.read_text()
    assert reference_toml() in text, "conf/gwserver.toml is out of step: regenerate with " \
                                     "`gwserver settings`"
    shipped = tomllib.loads(text)
    for section, schema in SECTIONS.items():
        assert set(shipped[section]) == set(schema.fields), section
        for field in schema.fields.values():
            assert field.doc, f"{section}.{field.name} has no doc line"


@pytest.mark.parametrize("content, exit_code, needle", [
    ("[server]\nworkers = 2\n", 0, "ok (0 routes, 2 workers"),
    ('[server]\nworkers = "two"\n', 2, 'server.workers: must be a positive integer or \"auto\", got "two"'),
    ("[server\n", 2, "not valid TOML"),
    # [routes.api], as [upstreams.api] is written: "must be a list, got {...}" named no fix
    ('[routes.api]\npaths = ["/api"]\n', 2, 'routes: must be a list: write each route as a '
     '[[routes]] block with its id inside (id = "..."); [routes."api"] makes a table'),
])
def test_check_command(tmp_path, content, exit_code, needle):
    path = tmp_path / "c.toml"
    path.write_text(content)
    run = subprocess.run([sys.executable, "-m", "gwserver", "check", "-c", str(path)],
                         capture_output=True, text=True)
    assert run.returncode == exit_code
    assert needle in run.stdout + run.stderr


def test_check_names_a_missing_file(tmp_path):
    run = subprocess.run([sys.executable, "-m", "gwserver", "check", "-c",
                          str(tmp_path / "none.toml")], capture_output=True, text=True)
    assert run.returncode == 2 and "cannot read" in run.stderr


def test_alert_rules_pass_promtool():
    run = subprocess.run(["promtool", "check", "rules", str(ROOT / "conf" / "alerts.yml")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS: 11 rules found" in run.stdout


def test_grafana_dashboard_queries_metrics_we_export():
    import json
    dashboard = json.loads((ROOT / "conf" / "grafana-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for name in ("gwserver_requests_total", "gwserver_request_duration_seconds_bucket",
                 "gwserver_upstream_duration_seconds_bucket", "gwserver_requests_in_flight",
                 "gwserver_upstream_connections_opened_total", "gwserver_config_generation",
                 "gwserver_breaker_state", "gwserver_breaker_transitions_total",
                 "gwserver_rate_limit_effective_rate", "gwserver_redis_up",
                 "gwserver_upstream_target_up", "gwserver_upstream_retries_total"):
        assert name in exprs


def test_otlp_endpoint_without_the_otel_extra_is_named(monkeypatch):
    import importlib.util
    from gwserver.errors import ConfigError
    from gwserver.settings import parse_conf
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("opentelemetry") else
                        real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'gwserver\[otel\]'"):
        parse_conf({"tracing": {"otlp_endpoint": "http://127.0.0.1:4318"}})


def test_a_misspelt_method_is_refused_not_left_to_a_broader_route():
    problems = problems_of({"routes": [{"id": "r", "paths": ["/r"], "methods": ["GET", "PSOT"],
                                        "upstream": {"targets": [{"url": "http://h:1"}]}}]})
    assert any("methods[1]: must be one of" in p and '"PSOT"' in p for p in problems), problems


@pytest.mark.parametrize("argv", [["routes", "status", "-c", "CONF"],
                                  ["routes", "-c", "CONF", "status"],
                                  ["upstreams", "list", "-c", "CONF"],
                                  ["rollouts", "list", "-c", "CONF"]])
def test_the_conf_option_goes_before_or_after_the_action(tmp_path, argv):
    missing = str(tmp_path / "nowhere.toml")
    out = subprocess.run([sys.executable, "-m", "gwserver",
                          *[missing if a == "CONF" else a for a in argv]],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and f"{missing}: cannot read" in out.stderr, out.stderr


def test_secret_files_are_read_and_their_problems_named_without_the_secret(tmp_path):
    from gwserver.errors import ConfigError
    from gwserver.settings import parse_conf

    def made(name, data):
        path = tmp_path / name
        path.write_bytes(data)
        return str(path)
    conf = parse_conf({"admin": {"token_file": made("tok", b"t0ken\n")},
                       "etcd": {"password_file": made("etcd", b"pass word\r\n")},
                       "redis": {"url": "redis://127.0.0.1:6379/0",
                                 "password_file": made("redis", b"pw")}})
    assert (conf.admin["token"], conf.etcd["password"], conf.redis["password"]) == \
        ("t0ken", "pass word", "pw")
    os.mkfifo(tmp_path / "fifo")
    for section, problem in [
            ({"admin": {"token_file": made("spaced", b"not a token")}}, "cannot be"),
            ({"admin": {"token": "x", "token_file": made("t2", b"y")}}, "is set too"),
            ({"admin": {"token_file": str(tmp_path / "fifo")}}, "not a regular file"),
            ({"admin": {"token_file": str(tmp_path / "absent")}}, "No such file"),
            ({"admin": {"token_file": made("empty", b"\n")}}, "is empty"),
            ({"admin": {"token_file": made("big", b"a" * 5000)}}, "over 4096 bytes"),
            ({"admin": {"token_file": made("latin", b"\xe9t\xe9")}}, "not UTF-8"),
            ({"redis": {"url": "redis://:inurl@127.0.0.1:6379/0",
                        "password_file": made("r2", b"pw")}}, "url holds a password")]:
        with pytest.raises(ConfigError) as caught:
            parse_conf(section)
        assert problem in str(caught.value) and "not a token" not in str(caught.value)


@pytest.mark.parametrize("section, key", [
    ("admin", "token_file"), ("admin", "metrics_dir"), ("etcd", "password_file"),
    ("etcd", "runtime_dir"), ("etcd", "snapshot_path"), ("etcd", "ca_file"),
    ("redis", "password_file"), ("log", "access_log_path"), ("server", "state_dir"),
    ("server", "worker_tmp_dir"), ("tls", "ticket_key_files"), ("tls", "certificates")])
def test_a_path_with_a_nul_byte_is_named_by_its_setting(tmp_path, section, key):
    """TOML's "\\u0000" puts a NUL in a string, and no system call takes one (ValueError:
    embedded null byte): secret and certificate files made `check` say only "a value could
    not be checked", without the setting or any other problem; the other paths were taken,
    for the gateway to fail on at start."""
    path = "/tmp/x\\u0000y"
    value = f'["{path}"]' if key == "ticket_key_files" else \
        f'[{{cert = "{path}", key = "{path}"}}]' if key == "certificates" else f'"{path}"'
    need = {"etcd": 'endpoints = ["http://127.0.0.1:2379"]\n',
            "redis": 'url = "redis://127.0.0.1:6379/0"\n',
            "tls": 'bind = ["127.0.0.1:8443"]\n' + (
                "" if key == "certificates" else
                'certificates = [{cert = "/tmp/c.pem", key = "/tmp/k.pem"}]\n')}
    conf = tmp_path / "gw.toml"
    conf.write_text(f"[{section}]\n{need.get(section, '')}{key} = {value}\n")
    with pytest.raises(ConfigError) as caught:
        load_conf(str(conf))
    assert f"{section}.{key}" in str(caught.value) and "could not be checked" not in \
        str(caught.value), caught.value.problems


@pytest.mark.parametrize("key", ["header:\u65e5\u672c", "header:X User", "header:X-A\u00e9"])
def test_a_header_to_hash_that_is_no_header_name_is_refused_by_its_setting(tmp_path, key):
    """"header:NAME" took any NAME: one outside latin-1 raised UnicodeEncodeError when the
    upstream was built ("a value could not be checked", no setting, every other problem of
    the file hidden) or the plugin prepared (a codec's words, no field); one with a space or
    an e-acute, never a request header, was taken, and every request then keyed alike (one
    target, one group, one limit for all)."""
    conf = tmp_path / "gw.toml"
    conf.write_text(f'[upstreams.u]\ntargets = [{{url = "http://127.0.0.1:9"}}]\n'
                    f'balance = "consistent_hash"\nhash_key = "{key}"\n'
                    f'[[routes]]\nid = "r"\npaths = "/r"\nupstream = "u"\n'
                    f'[[routes]]\nid = "s"\npaths = ["/s"]\nupstream = "u"\n'
                    f'plugins.split = {{upstreams = [{{upstream = "u", weight = 1}}], '
                    f'key = "{key}"}}\n'
                    f'[[routes]]\nid = "t"\npaths = ["/t"]\nupstream = "u"\n'
                    f'plugins.rate_limit = {{rate = 1, key = "{key}"}}\n'
                    f'plugins.limit_conn = {{limit = 1, key = "{key}"}}\n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_conf(str(conf))
    problems = "\n".join(caught.value.problems)
    assert "upstream u: hash_key: must name an HTTP header" in problems, problems
    assert "route s: plugins.split: key: must name an HTTP header" in problems, problems
    assert "route r: paths: must be a list" in problems, problems
    for plugin in ("rate_limit", "limit_conn"):
        assert f"route t: plugins.{plugin}: key: must name an HTTP header" in problems, problems


def test_the_dump_of_text_with_control_characters_is_toml_that_reads_back():
    """`check --dump` wrote a string as it was between quotes: a rewrite response_body of two
    lines (or a tab, a NUL) made TOML that tomllib refuses, so the effective configuration
    could not be kept as a conf file."""
    from gwserver.settings import dump_toml
    body = "line one\nline two\ttabbed \\ \"quoted\" \x00\x7f\u00e9"
    conf = parse_conf({"upstreams": {"u": {"targets": [{"url": "http://127.0.0.1:9"}]}},
                       "routes": [{"id": "r", "paths": ["/r"], "upstream": "u",
                                   "plugins": {"rewrite": {"response_body": body}}}]})
    dumped = tomllib.loads(dump_toml(conf))
    assert dumped["routes"][0]["plugins"]["rewrite"]["response_body"] == body


@pytest.mark.parametrize("server, problem", [
    ({"proxy_protocol": ["127.0.0.1:8080"]}, "needs server.trusted_proxies"),
    ({"proxy_protocol": ["127.0.0.1:9999"], "trusted_proxies": ["10.0.0.0/8"]},
     '"127.0.0.1:9999" is in neither server.bind nor tls.bind'),
    ({"bind": ["unix:/run/gw.sock"], "proxy_protocol": ["unix:/run/gw.sock"],
      "trusted_proxies": ["10.0.0.0/8"]}, "is a unix socket"),
])
def test_proxy_protocol_listeners_are_listeners_with_a_trusted_balancer(server, problem):
    with pytest.raises(ConfigError, match=problem):
        parse_conf({"server": {"bind": ["127.0.0.1:8080"], **server}})


@pytest.mark.parametrize("bind, entry", [
    ("[::1]:8443", "[0:0::1]:8443"),            # one address, two spellings
    ("127.0.0.1:8443", "localhost:8443"),       # a name, resolved as gunicorn binds it
    ("localhost:8443", "127.0.0.1:8443"),
])
def test_proxy_protocol_names_a_listener_by_the_workers_rule(bind, entry):
    """check compared the text and refused what the worker serves (or the reverse): both
    now apply net.addresses.listener_addresses."""
    from gwserver.net.addresses import listener_addresses
    assert listener_addresses([entry]) & listener_addresses([bind])      # the worker's rule
    conf = parse_conf({"server": {"bind": [bind], "proxy_protocol": [entry],
                                  "trusted_proxies": ["10.0.0.0/8"]}})
    assert conf.server["proxy_protocol"] == [entry]


def _route(rid, paths, **extra):
    return {"id": rid, "paths": paths, "upstream": {"targets": [{"url": "http://10.0.0.1"}]},
            **extra}


def test_a_route_path_no_request_can_reach_is_warned_about():
    """A copied route block: the same path and conditions as another route that wins the
    router's tie (priority, then id) leaves the copy dead on that path; check says so."""
    from gwserver.settings import conf_warnings
    conf = parse_conf({"routes": [
        _route("orders-v1", ["/orders"]), _route("orders-v2", ["/orders", "/x"]),
        _route("x-first", ["/x"], priority=5),
        _route("by-host", ["/orders"], hosts=["a.example"]),        # a condition apart
        _route("by-method", ["/orders"], methods=["POST"]),
        _route("below", ["/orders"], prefix=True),                   # prefix is another match
    ]})
    assert conf_warnings(conf) == [
        'route orders-v2: paths "/orders" is never served by it: route orders-v1 has the same '
        'path and conditions and wins (the same priority and the lower id)',
        'route orders-v2: paths "/x" is never served by it: route x-first has the same path '
        'and conditions and wins (a higher priority)']


def test_unreadable_or_directory_tls_files_are_named_by_their_setting(tmp_path, monkeypatch):
    """A key the service user cannot read was `a value could not be checked: PermissionError`
    with no setting named, and a directory was "does not exist"."""
    from tests.pki import CA
    cert, key, _ = CA(tmp_path).issue("site")
    tls = {"certificates": [{"cert": str(cert), "key": str(key)},
                            {"cert": str(tmp_path), "key": str(key)}]}
    real_open = os.open

    def open_as_another_user(path, flags, *args, **kwargs):   # root reads any file: fake it
        if str(path) == str(key):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)
    monkeypatch.setattr(os, "open", open_as_another_user)
    problems = problems_of({"tls": tls})
    assert f"tls.certificates[0].key: {key} is not readable by this user (uid " \
           f"{os.geteuid()})" in "\n".join(problems), problems
    assert f"tls.certificates[1].cert: {tmp_path} is a directory, not a PEM file" in problems
    assert not any("could not be checked" in p or "does not exist" in p for p in problems)


def test_every_bad_certificate_entry_is_named_in_one_check(tmp_path):
    """Past a file check could not open, it named no other entry's problem (a file that is not
    PEM, a key of another certificate), and past the first bad PEM entry none after it: the
    operator fixed them one `check` at a time."""
    from tests.pki import CA
    ca = CA(tmp_path)
    cert, key, _ = ca.issue("site")
    other_cert, other_key, _ = ca.issue("other")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    tls = {"certificates": [{"cert": str(tmp_path), "key": str(key)},
                            {"cert": str(garbage), "key": str(key)},
                            {"cert": str(cert), "key": str(other_key)},
                            {"cert": str(other_cert), "key": str(other_key)}]}
    problems = problems_of({"tls": tls})
    assert f"tls.certificates[0].cert: {tmp_path} is a directory, not a PEM file" in problems
    assert any(p.startswith(f"tls.certificates[1].cert: {garbage} is not a PEM certificate (")
               for p in problems), problems
    assert any(p.startswith(f"tls.certificates[2].key: {other_key}: does not match the "
                            f"certificate {cert}") for p in problems), problems
    assert len(problems) == 3, problems


JWT_ROUTE = {"id": "r", "paths": ["/x"], "upstream": {"targets": [{"url": "http://h:1"}]}}


@pytest.mark.parametrize("doc, warning", [
    ({"admin": {"bind": "0.0.0.0:9180"}},
     "admin.bind 0.0.0.0:9180 is not a loopback address and admin has no token: anyone who can "
     "reach it reads /metrics and the /admin/ views"),
    ({"admin": {"bind": "[::]:9180"}}, "admin.bind [::]:9180 is not a loopback address"),
    ({"admin": {"token": "t0k3n"}},
     "admin.token has 5 characters: use at least 16 random ones"),
    ({"routes": [{**JWT_ROUTE, "plugins": {"jwt": {"algorithms": ["HS256"],
                                                   "secret": "x" * 31}}}]},
     "route r: plugins.jwt: secret is 31 bytes: HS256 needs a key of at least 32 bytes "
     "(RFC 7518 3.2)"),
    ({"plugins": {"jwt": {"algorithms": ["HS512"], "secret": "x" * 32}}},
     "plugins.jwt: secret is 32 bytes: HS512 needs a key of at least 64 bytes"),
    ({"server": {"identity_proxies": ["10.0.5.10/32", "::/0"]}},
     "server.identity_proxies holds ::/0: any client may say who its user is"),
])
def test_check_warns_of_an_open_admin_listener_and_short_secrets(doc, warning):
    from gwserver.settings import conf_warnings
    warnings = conf_warnings(parse_conf(doc))
    assert any(w.startswith(warning) for w in warnings), warnings
    assert not any("xxxxxxxx" in w or "t0k3n" in w for w in warnings)     # secrets unquoted


@pytest.mark.parametrize("doc", [
    {},                                                     # loopback, no token: fine
    {"admin": {"bind": "0.0.0.0:9180", "token": "t" * 16}},
    {"admin": {"bind": "127.0.0.2:9180"}},
    {"admin": {"bind": "localhost:9180"}},
    {"server": {"identity_proxies": ["10.0.5.10/32"]}},
    {"routes": [{**JWT_ROUTE, "plugins": {"jwt": {"algorithms": ["HS256"],
                                                  "secret": "x" * 32}}}]},
])
def test_no_warning_for_what_is_fine(doc):
    from gwserver.settings import conf_warnings
    assert conf_warnings(parse_conf(doc)) == []


def test_a_short_jwt_secret_file_is_warned_of_without_its_content(tmp_path):
    from gwserver.settings import conf_warnings
    secret = tmp_path / "jwt-secret"
    secret.write_text("tiny-secret\n")
    conf = parse_conf({"routes": [{**JWT_ROUTE, "plugins": {"jwt": {
        "algorithms": ["HS256"], "secret_file": str(secret)}}}]})
    (warning,) = conf_warnings(conf)
    assert warning.startswith("route r: plugins.jwt: secret_file's secret is 11 bytes")
    assert "tiny" not in warning


def test_request_buffer_size_is_bounded():
    """Bodies up to request_buffer_size are held in memory per request: a typo such as
    100000000000 was taken, and a few clients could then fill the host's memory. Up to 1 GiB
    is taken (a conf that buffered 128 MiB to retry large uploads still loads), with a
    warning above 64 MiB."""
    from gwserver.settings import conf_warnings
    assert any(p.startswith("server.request_buffer_size: must be a non-negative integer "
                            "between 0 and 1073741824, got 100000000000")
               for p in problems_of({"server": {"request_buffer_size": 100_000_000_000}}))
    conf = parse_conf({"server": {"request_buffer_size": 128 << 20,
                                  "worker_connections": 1000}})
    assert "server.request_buffer_size is 134217728 bytes: each request body up to that is " \
           "held in memory, so 1000 connections per worker may hold 125 GiB" in \
           conf_warnings(conf)
    assert not any("request_buffer_size" in w for w in conf_warnings(parse_conf({})))


def test_a_strip_prefix_that_cuts_a_path_into_a_dot_segment_is_refused():
    """Every request on such a route would be a 500 (upstream_path will not send it)."""
    problems = problems_of({"routes": [_route("a", ["/svc../x"], strip_prefix="/svc")]})
    assert 'route a: strip_prefix "/svc" cuts paths[0] "/svc../x" into a dot segment ' \
           '(. or ..)' in problems

