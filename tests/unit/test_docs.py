"""Every example in README.md and docs/*.md runs: TOML through the checks `gwserver check` runs
(settings.parse_conf, after tomllib), route and upstream JSON through the checks `gwserver
routes put` runs, and the cheap CLI lines (`gwserver check`, `gwserver settings`) as written.

How a ```toml block is checked is said by an HTML comment on the line before it (nothing
there: a whole conf file):

    <!-- example: conf -->      a whole conf file (the default)
    <!-- example: route -->     the inside of one [[routes]] table; the test adds
                                `[[routes]]`, and id, paths and upstream when absent
    <!-- example: toml -->      TOML that is not a gwserver conf (e.g. a pyproject.toml):
                                parsed only

A ```python block that defines a plugin (`NAME = `) is loaded as a module and must keep the
plugin contract (chain.check_plugin) and compile on a route with its required settings given.

Upstream ids an example uses without defining are added as one-target upstreams. Files under
/etc/gwserver/ that an example names are made in a temp dir (real PEM keys and certificates
from tests/pki.py) and the paths rewritten, so `cannot read` is a real error, not noise.
"""
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?:<!-- example: (?P<kind>[a-z]+) -->\n)?```(?P<lang>\w*)\n(?P<body>.*?)```",
                   re.S)
KINDS = ("conf", "route", "toml", "plugin")


def blocks(lang):
    out = []
    for path in DOCS:
        text = path.read_text()
        for m in BLOCK.finditer(text):
            if m["lang"] == lang:
                line = text[:m.start("lang")].count("\n") + 1
                out.append(pytest.param(m["kind"] or "conf", m["body"],
                                        id=f"{path.relative_to(ROOT)}:{line}"))
    return out


@pytest.fixture(scope="module")
def etc(tmp_path_factory):
    """Stand-ins for the /etc/gwserver/ files the docs name, made on first use."""
    from tests.pki import CA
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    base = tmp_path_factory.mktemp("etc-gwserver")
    ca = CA(base)

    def make(path):
        target = base / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            return target
        stem, suffix = target.stem, target.suffix
        if stem == "jwt":           # a JWT verification key
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            target.write_bytes(key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        elif stem.endswith("-ca") or stem == "ca":
            target.write_bytes(ca.cert_path.read_bytes())
        elif suffix in (".pem", ".key"):
            cert, key, _ = ca.issue(stem.replace("/", "-"), hosts=("api.example.com",),
                                    client=stem.endswith("client"))
            target.with_suffix(".pem").write_bytes(cert.read_bytes())
            target.with_suffix(".key").write_bytes(key.read_bytes())
        elif target.parent.name == "secrets":       # token_file, password_file
            target.write_text("example-secret\n")
        else:
            target.write_text("")
        return target
    return make


def localise(text, etc):
    """Rewrite /etc/gwserver/... paths (other than the conf file) into made files."""
    def swap(m):
        return str(etc(m[1]))
    return re.sub(r"/etc/gwserver/([\w./-]+\.(?:pem|key|json|crt)|secrets/[\w.-]+)", swap,
                  text)


def upstream_ids(data):
    """Upstream ids routes refer to: a route's own and its split groups'."""
    ids = set()
    for route in data.get("routes", []):
        if isinstance(route.get("upstream"), str):
            ids.add(route["upstream"])
        split = (route.get("plugins") or {}).get("split") or {}
        ids.update(c["upstream"] for c in split.get("upstreams", [])
                   if isinstance(c.get("upstream"), str))
    return ids


def as_conf(kind, body):
    if kind == "route":
        data = tomllib.loads(body)
        route = {"id": "example", "paths": ["/example"], "upstream": "example", **data}
        return {"routes": [route]}
    return tomllib.loads(body)


def check_conf(data):
    from gwserver.settings import parse_conf
    upstreams = data.setdefault("upstreams", {})
    for missing in upstream_ids(data) - set(upstreams):
        upstreams[missing] = {"targets": [{"url": "http://127.0.0.1:9"}]}
    if not upstreams:
        del data["upstreams"]
    conf = parse_conf(data)
    from gwserver.client.tls import server_tls
    server_tls(conf)        # the certificate files an example names are checked too
    return conf


def test_every_block_is_marked_with_a_known_kind():
    marks = re.findall(r"<!-- example: ([a-z]+) -->\n(.{0,8})", "\n".join(
        p.read_text() for p in DOCS))
    assert marks, "the convention is used"
    for kind, after in marks:
        assert kind in KINDS and after.startswith("```"), (kind, after)


def plugin_examples():
    return [param for param in blocks("python") if "\nNAME = " in "\n" + param.values[1]]


def test_plugin_examples_are_found():
    assert len(plugin_examples()) >= 2


@pytest.mark.parametrize("kind, body", plugin_examples())
def test_plugin_examples_keep_the_contract_and_compile(kind, body):
    import types
    from gwserver.core.chain import build_chain, check_plugin
    plugin = types.ModuleType("docs_example")
    exec(compile(body, "docs_example", "exec"), plugin.__dict__)
    check_plugin(plugin)
    conf = {name: "example" for name, field in plugin.SCHEMA.fields.items() if field.required}
    chain = build_chain("route example", {plugin.NAME: conf}, {}, {plugin.NAME: plugin})
    assert chain.names == (plugin.NAME,)


@pytest.mark.parametrize("kind, body", blocks("toml"))
def test_toml_examples_pass_check(kind, body, etc):
    if kind == "toml":
        assert tomllib.loads(body)
        return
    conf = check_conf(as_conf(kind, localise(body, etc)))
    assert conf.router is not None


def test_the_ocsp_example_warns_with_a_certificate_that_names_no_responder(etc):
    """tls.md's listener example staples OCSP; with certificates of a private CA (no AIA, as
    the ones made here) the helper could never fetch anything: `check` says so."""
    body = next(p.values[1] for p in blocks("toml") if "ocsp_stapling = true" in p.values[1])
    conf = check_conf(as_conf("conf", localise(body, etc)))
    from gwserver.client.tls import server_tls
    assert [w for w in server_tls(conf).warnings
            if w.startswith("tls.ocsp_stapling:") and "names no OCSP responder" in w]


# JSON bodies given to `gwserver routes|upstreams|consumers put -` (and service instances to
# etcdctl)
PUT = re.compile(r"gwserver (routes|upstreams|consumers)\b[^\n|]*\bput -\s*<<<\s*'([^']*)'"
                 r"|echo '([^']*)'\s*\|\s*gwserver (routes|upstreams|consumers)\b[^\n]*\bput -"
                 r"|etcdctl put \S+/services/\S+ '([^']*)'")


def json_examples():
    out = []
    for path in DOCS:
        text = path.read_text()
        for m in PUT.finditer(text):
            kind = m[1] or m[4] or "services"
            body = m[2] or m[3] or m[5]
            line = text[:m.start()].count("\n") + 1
            out.append(pytest.param(kind, body, id=f"{path.relative_to(ROOT)}:{line}"))
    return out


def test_json_examples_are_found():
    assert {p.values[0] for p in json_examples()} == {"routes", "upstreams", "consumers",
                                                      "services"}


@pytest.mark.parametrize("kind, body", json_examples())
def test_json_examples_pass_routes_put_checks(kind, body):
    """What `gwserver routes|upstreams|consumers put` checks before writing, against an
    empty table with [etcd] (a route whose upstream is not there yet is accepted with a
    note, as put does; a consumer's clear key is sealed first, as put does)."""
    from gwserver import routes_cli
    from gwserver.core.table import LiveTable
    from gwserver.plugins import load_registry
    from gwserver.settings import parse_conf
    data = json.loads(body)
    if kind == "services":
        from gwserver.core.routes import TARGET
        TARGET.validate({"weight": 1, **data}, "instance")
        return
    conf = parse_conf({"etcd": {"endpoints": ["http://127.0.0.1:2379"]}})
    items = [(data["id"], data if kind == "routes" else
              {k: v for k, v in data.items() if k != "id"})]
    if kind == "consumers":
        items = [(item_id, routes_cli.seal(item, item_id)) for item_id, item in items]
    table = LiveTable.for_conf(conf, load_registry())
    problems, _ = routes_cli.check(kind, items, table)
    assert problems == []


def cli_examples():
    """`gwserver check`, `gwserver settings` and `gwserver --version` lines of ```sh blocks;
    an installed path (/opt/gwserver/bin, /etc/gwserver/gwserver.toml: the shipped conf, see
    scripts/install) runs from this checkout."""
    out = []
    for path in DOCS:
        text = path.read_text()
        for m in BLOCK.finditer(text):
            if m["lang"] != "sh":
                continue
            for line in m["body"].splitlines():
                command = line.split("#", 1)[0].strip()
                if re.search(r"gwserver (check|settings)\b|gwserver --version$", command):
                    out.append(pytest.param(command, id=f"{path.relative_to(ROOT)}: {command}"))
    return out


def test_cli_examples_are_found():
    assert len(cli_examples()) >= 3


@pytest.mark.parametrize("command", cli_examples())
def test_cli_examples_run(command):
    argv = shlex.split(command)
    argv[0] = str(ROOT / ".venv" / "bin" / "gwserver")
    argv = [str(ROOT / "conf" / "gwserver.toml") if a == "/etc/gwserver/gwserver.toml" else a
            for a in argv]
    run = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    if argv[1] == "check" and "--dump" in argv:
        assert tomllib.loads(run.stdout)["server"]["workers"]     # the effective conf, TOML
    elif argv[1] == "check":
        assert ": ok (" in run.stdout
    elif argv[1] == "--version":
        from gwserver import __version__
        assert run.stdout == f"gwserver {__version__}\n"
    else:
        assert tomllib.loads(run.stdout)


def test_no_doc_or_code_cites_files_the_repository_does_not_hold():
    cited = []
    for path in [*DOCS, *ROOT.glob("gwserver/**/*.py"), *ROOT.glob("scripts/*"),
                 *ROOT.glob("tests/**/*.py"), ROOT / "setup.cfg", *ROOT.glob("conf/*")]:
        if path == Path(__file__) or not path.is_file():     # scripts/__pycache__, say
            continue
        relative = str(path.relative_to(ROOT))
        text = path.read_text(errors="replace")
        cited += [f"{relative}: {m}" for m in re.findall(r"PERF_NOTES|\.\./shared", text)]
    assert cited == []


def test_the_metrics_table_is_generated_from_the_definitions():
    """docs/operations.md's metrics table was hand-written and drifted (no `protocol` label,
    no gwserver_config_master_generation): it is now server/metrics.py's CATALOG."""
    from gwserver.server import metrics
    text = metrics.DOC.read_text()
    assert metrics.render_table() in text, \
        f"docs/operations.md's metrics table is stale: run `{metrics.COMMAND}`"
    # Every metric is declared there: no other module names one of its own.
    stray = []
    for path in ROOT.glob("gwserver/**/*.py"):
        if path.name != "metrics.py" or path.parent.name != "server":
            stray += [f"{path.relative_to(ROOT)}: {m}" for m in
                      re.findall(r"""["']gwserver_[a-z_]+["']""", path.read_text())]
    assert stray == []


def test_the_workers_export_what_the_metrics_table_says(tmp_path):
    """The workers' metrics as a scrape shows them: names, types and labels of the table."""
    script = (
        "import json, os, sys\n"
        "os.environ['PROMETHEUS_MULTIPROC_DIR'] = sys.argv[1]\n"
        "from gwserver.server import metrics\n"
        "from prometheus_client.parser import text_string_to_metric_families\n"
        "w = metrics.WorkerMetrics()\n"
        "w.redis_up.set(1); w.in_flight.set(0); w.generation.set(1)\n"
        "w.observe('r', 'GET', 200, 0.01, 0.005)\n"
        "w.count_answer('r', 502, 'gateway'); w.count_consumer('c', 200)\n"
        "w.count_limit('r', 'allowed'); w.count_fault('r', 'delay')\n"
        "w.effective_rate('r', 5.0); w.breaker_transition('b', 'open')\n"
        "w.count_retry('u', 'retried'); w.count_ejection('u', 't')\n"
        "w.count_http2_close('rapid_reset')\n"
        "w.connections_opened.labels('t').inc(); w.pool_idle.labels('t').set(1)\n"
        "w.target_up.labels('u', 't').set(1); w.flush()\n"
        "out = {}\n"
        "for f in text_string_to_metric_families(metrics.render().decode()):\n"
        "    for s in f.samples:\n"
        "        if s.name in (f.name, f.name + '_total', f.name + '_bucket'):\n"
        "            out[f.name] = [f.type, sorted(set(s.labels) - {'le', 'pid'})]\n"
        "print(json.dumps(out))\n")
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    from gwserver.server import metrics
    expected = {m.name: [m.kind, sorted(name for name, _ in m.labels)]
                for m in metrics.CATALOG if not m.source}
    assert json.loads(run.stdout) == expected


def test_the_per_host_limit_table_is_the_size_the_docs_say():
    """docs/ratelimit.md said the per-host table of 65,536 keys was 2 MiB, operations.md 2.5
    MiB: a slot gained its last use (40 bytes, the LRU's), and one page kept the old figure.
    A state_dir sized by it would refuse the start."""
    from gwserver.state.store import LocalStore
    size = LocalStore.table_bytes()
    said = f"{size / (1 << 20):g} MiB"
    ratelimit = (ROOT / "docs" / "ratelimit.md").read_text()
    operations = (ROOT / "docs" / "operations.md").read_text()
    assert f"the per-host table holds {LocalStore.SLOTS:,} keys ({said})" in ratelimit
    assert f"The per-host rate-limit table ({said})" in operations


def test_where_the_trace_id_is_in_the_default_common_line():
    """docs/traffic.md said every access-log line ends with the trace id in the common format;
    the default common fields end with `error` (a `-` on most lines), so a parser that took
    the last field for the trace id read `-`. What the page lists is the default."""
    from gwserver.core.accesslog import DEFAULT_COMMON_FIELDS
    traffic = " ".join((ROOT / "docs" / "traffic.md").read_text().split())
    listed = re.search(r"the common format after its head, `([a-z_, ]+)`", traffic)
    assert listed, "traffic.md names the common format's default fields"
    assert tuple(listed[1].split(", ")) == DEFAULT_COMMON_FIELDS
    assert "ends with it (common format)" not in traffic
    operations = " ".join((ROOT / "docs" / "operations.md").read_text().split())
    assert f"(default `{', '.join(DEFAULT_COMMON_FIELDS)}`)" in operations


def test_the_architecture_page_runs_the_built_in_plugins_in_their_real_order():
    """docs/architecture.md listed the access phases' order by hand as `... key_auth/
    basic_auth/jwt, acl, ip_restriction, rate_limit 800 ...`: ip_restriction (1200) runs
    first of all, before auth, so a denied address gets its 403 before any 401, and no
    credential check (bcrypt, a key look-up) is spent on it. The list is every built-in,
    with its PRIORITY, in the order the chain runs them."""
    from gwserver.plugins import BUILTIN, load_registry
    text = " ".join((ROOT / "docs" / "architecture.md").read_text().split())
    listed = re.search(r"plugins by PRIORITY; a Reply ends it \(([^)]*)\)", text)
    assert listed, "architecture.md names the order of the access phases"
    pairs = [tuple(item.rsplit(" ", 1)) for item in listed[1].split(", ")]
    registry = load_registry()
    builtins = sorted((p for p in registry.values() if p.__name__ in BUILTIN),
                      key=lambda p: (-p.PRIORITY, p.NAME))
    assert pairs == [(p.NAME, str(p.PRIORITY)) for p in builtins]


def test_the_retries_setting_does_not_say_connect_retries_are_for_idempotent_requests():
    """`gwserver settings` and the shipped conf/gwserver.toml said of
    upstream_defaults.retries "retries on another target after a connect failure
    (idempotent-safe only)": a failed connect is retried for any method (nothing was sent;
    README, docs/health.md, the runbook, and tests/integration/test_incident_drill.py's POST),
    and `retries` is the default of every retry policy's attempts, not of connects alone.
    An operator weighing duplicate writes read the opposite of what the gateway does."""
    from gwserver.settings import UPSTREAM_DEFAULTS, reference_toml
    doc = UPSTREAM_DEFAULTS.fields["retries"].doc
    assert "idempotent" not in doc and "for any method" in doc and "attempts" in doc
    shipped = (ROOT / "conf" / "gwserver.toml").read_text()
    assert f"# {doc}\nretries = 1\n" in shipped and reference_toml() in shipped
