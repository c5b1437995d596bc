"""`gwserver routes|upstreams ...` against a real etcd: every mistake is one `error:` line and
exit 2, never a traceback."""
import json
import os
import subprocess
import sys

import pytest

from ..conftest import ROOT, gateway_conf, to_toml

PREFIX = "/gw"


class Conf(os.PathLike):
    """The conf file's path, with the etcd it names."""

    def __init__(self, path, etcd):
        self.path, self.etcd = path, etcd

    def __fspath__(self):
        return str(self.path)


@pytest.fixture
def conf_path(launcher, tmp_path):
    etcd = launcher.etcd()
    path = tmp_path / "gw.toml"
    path.write_text(to_toml({"etcd": {"endpoints": [etcd.url], "prefix": PREFIX,
                                      "runtime_dir": str(tmp_path / "run"), "timeout": 2.0}}))
    return Conf(path, etcd)


def cli(conf_path, *args, stdin=None):
    return subprocess.run([sys.executable, "-m", "gwserver", args[0], "-c", os.fspath(conf_path),
                           *args[1:]], capture_output=True, text=True, input=stdin, timeout=60)


def one_error(run, *fragments):
    assert run.returncode == 2, run
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize("kind", ["routes", "upstreams"])
@pytest.mark.parametrize("stdin, fragment", [
    ('{"id": "a", "paths": ["/a"],', "stdin: invalid JSON: Expecting"),
    ("", "stdin: invalid JSON"),
    ("[1]", 'item 0: needs an "id"'),
])
def test_put_and_validate_with_bad_json_on_stdin(conf_path, kind, stdin, fragment):
    for action in ("put", "validate"):
        one_error(cli(conf_path, kind, action, "-", stdin=stdin), fragment)
    assert conf_path.etcd.client().range_prefix(PREFIX + "/")[1] == []


def test_put_from_a_file_that_is_missing_or_not_json(conf_path, tmp_path):
    one_error(cli(conf_path, "routes", "put", str(tmp_path / "nope.json")), "cannot read")
    bad = tmp_path / "bad.json"
    bad.write_text("{'id': 'a'}")
    one_error(cli(conf_path, "routes", "put", str(bad)), f"{bad}: invalid JSON")


@pytest.mark.parametrize("kind", ["routes", "upstreams"])
def test_get_of_a_stored_value_that_is_not_json(conf_path, kind):
    conf_path.etcd.client().put(f"{PREFIX}/{kind}/hand", b"{paths: /x}")
    one_error(cli(conf_path, kind, "get", "hand"),
              f"{PREFIX}/{kind}/hand: stored value is not valid JSON", "'{paths: /x}'")
    conf_path.etcd.client().put(f"{PREFIX}/{kind}/good", json.dumps({"paths": ["/g"]}))
    run = cli(conf_path, kind, "get", "good")
    assert run.returncode == 0 and json.loads(run.stdout) == {"paths": ["/g"]}


def test_put_warns_of_what_plugins_find_likely_not_meant(conf_path):
    """A plugin's `warnings` hook (a jwt HS256 secret of 20 bytes) is said at `routes put`
    and `validate` as at `gwserver check`: routes put into etcd were never warned about."""
    route = {"id": "j", "paths": ["/j"], "upstream": {"targets": [{"url": "http://h:1"}]},
             "plugins": {"jwt": {"algorithms": ["HS256"], "secret": "s" * 20}}}
    for action in ("validate", "put"):
        run = cli(conf_path, "routes", action, "-", stdin=json.dumps(route))
        assert run.returncode == 0, run
        assert "warning: route j: plugins.jwt: secret is 20 bytes: HS256 needs a key of at " \
               "least 32 bytes" in run.stdout, run.stdout


SECRET = "jwt-secret-of-32-bytes-or-more-0123456789"


def test_get_masks_secrets_unless_asked_and_put_refuses_the_mask(conf_path):
    """`routes get` printed a route as stored, a jwt secret and the Authorization a headers
    plugin sets in clear, where `routes list` masks them: its output goes into tickets. Now
    masked as `list` masks them, with a note; --show-secrets prints them. Put back as shown,
    the route would have verified tokens with the secret "***": `put` refuses the mask."""
    route = {"id": "j", "paths": ["/j"], "upstream": {"targets": [{"url": "http://h:1"}]},
             "plugins": {"jwt": {"algorithms": ["HS256"], "secret": SECRET},
                         "headers": {"request": {"set": {"Authorization": "Bearer up-token"}}}}}
    assert cli(conf_path, "routes", "put", "-", stdin=json.dumps(route)).returncode == 0
    shown = cli(conf_path, "routes", "get", "j")
    assert shown.returncode == 0, shown
    for secret in (SECRET, "up-token"):
        assert secret not in shown.stdout
    item = json.loads(shown.stdout)
    assert item["plugins"]["jwt"]["secret"] == "***"
    assert item["plugins"]["headers"]["request"]["set"]["Authorization"] == "***"
    assert "secrets are shown as ***" in shown.stderr and "--show-secrets" in shown.stderr
    clear = cli(conf_path, "routes", "get", "j", "--show-secrets")
    assert clear.returncode == 0 and clear.stderr == ""
    assert json.loads(clear.stdout) == route
    for action in ("validate", "put"):
        run = cli(conf_path, "routes", action, "-", stdin=shown.stdout)
        assert run.returncode == 2, run
        assert "routes/j: plugins.jwt.secret holds ***, the mask `get` prints" in run.stderr
        assert "routes/j: plugins.headers.request.set.Authorization holds ***" in run.stderr
    assert json.loads(cli(conf_path, "routes", "get", "j", "--show-secrets").stdout)[
        "plugins"]["jwt"]["secret"] == SECRET          # what etcd holds is unchanged


def test_get_of_an_item_without_secrets_prints_it_whole_without_a_note(conf_path):
    route = {"id": "plain", "paths": ["/p"], "upstream": {"targets": [{"url": "http://h:1"}]}}
    assert cli(conf_path, "routes", "put", "-", stdin=json.dumps(route)).returncode == 0
    shown = cli(conf_path, "routes", "get", "plain")
    assert shown.returncode == 0 and shown.stderr == ""
    assert json.loads(shown.stdout) == route



def etcd_md_cli_block():
    """The CLI block of docs/etcd.md, line by line (comments kept: they say what to expect)."""
    text = (ROOT / "docs" / "etcd.md").read_text()
    section = text[text.index("## The CLI"):]
    body = section[section.index("```sh\n") + 6:]
    return body[:body.index("```")].splitlines()


def test_the_cli_block_of_docs_etcd_md_runs_as_it_says(launcher, tmp_path):
    """Every line of docs/etcd.md's CLI block, run in order against a real etcd and a
    gateway syncing from it (for `status`): each exits 0, but the one its comment says is
    refused, which exits 2 naming the route."""
    etcd = launcher.etcd()
    gw = launcher.gateway(gateway_conf([], etcd={
        "endpoints": [etcd.url], "prefix": PREFIX, "runtime_dir": str(tmp_path / "run")}))
    (tmp_path / "conf.toml").write_text(gw.conf_path.read_text())
    (tmp_path / "upstream.json").write_text(json.dumps(
        {"id": "users", "targets": [{"url": "http://127.0.0.1:9"}]}))
    (tmp_path / "routes.json").write_text(json.dumps(
        [{"id": "a", "paths": ["/a"], "upstream": "users"}]))
    env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}"}
    lines = etcd_md_cli_block()
    assert len(lines) >= 10
    for line in lines:
        run = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=60)
        if "refused while routes use it" in line:
            assert run.returncode == 2 and "still used by route(s) a" in run.stderr, (line, run)
        else:
            assert run.returncode == 0, (line, run)
        if line.startswith("gwserver routes -c conf.toml get r "):
            assert json.loads(run.stdout)["paths"] == ["/r"]
        if " status " in line:
            assert "rejected" in run.stdout, run.stdout
    assert etcd.client().range_prefix(PREFIX + "/upstreams/")[1] == []


def test_a_refused_put_says_nothing_of_what_a_written_route_would_do(conf_path):
    """A route `routes put` refuses is not written: its error once ended with the gateway's
    words for such a route in etcd, "(its paths answer 503 until a valid version arrives)",
    which read as if it had been written and fenced."""
    bad = {"id": "a", "paths": ["/a"], "upstream": {"targets": [{"url": "http://127.0.0.1:9"}]},
           "plugins": {"headers": {"hedaer": {}}}}
    for action in ("put", "validate"):
        one_error(cli(conf_path, "routes", action, "-", stdin=json.dumps(bad)), "hedaer")
        assert "503" not in cli(conf_path, "routes", action, "-",
                                stdin=json.dumps(bad)).stderr
    assert conf_path.etcd.client().range_prefix(PREFIX + "/")[1] == []
