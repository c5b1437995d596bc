"""A new operator's walk through README.md and docs/ (pass dec07e): the demo, a conf of one's
own, `gwserver check`, reloads by SIGHUP and by `gwserver reload`, routes in a test etcd with
`gwserver routes ...`, the admin endpoints and metrics, and the mistakes an operator makes
(a typo, a bad route, a port in use, a missing certificate, etcd down, Redis down), each
against real processes on loopback. Where the gateway did not do what the page says, or an
error did not name the problem, a test below (each seen failing before its fix).
"""
import json
import subprocess
import sys
from pathlib import Path

from ..conftest import ROOT, gateway_conf, route, to_toml, wait_until
from .test_etcd import all_workers_at, etcd_conf, put, runtime_of


def gw_cli(*args, stdin=None, timeout=30):
    """`gwserver ARGS` of this checkout (the venv's script runs whatever tree it was
    installed from)."""
    return subprocess.run([sys.executable, "-m", "gwserver", *args], input=stdin, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


# -- 1. docs/etcd.md: `validate` of a route whose upstream is not there yet ------------------

def test_validate_and_put_note_a_route_that_waits_for_its_upstream(launcher, tmp_path):
    """docs/etcd.md: "a route whose upstream is not in etcd yet is accepted with a note
    (until the upstream arrives the route answers 503 ...)". `validate` and `put` printed
    `ok` alone: the operator learnt of the 503 only from `routes status` afterwards."""
    etcd = launcher.etcd()
    conf_path = tmp_path / "gw.toml"
    conf_path.write_text(to_toml(etcd_conf(tmp_path, [etcd.url])))
    put(etcd.client(), "upstreams", "users", {"targets": [{"url": "http://127.0.0.1:9"}]})
    items = json.dumps([{"id": "early", "paths": ["/early"], "upstream": "orders"},
                        {"id": "known", "paths": ["/known"], "upstream": "users"}])
    for action in ("validate", "put"):
        done = gw_cli("routes", "-c", str(conf_path), action, "-", stdin=items)
        assert done.returncode == 0, done
        notes = [line for line in done.stdout.splitlines() if line.startswith("note:")]
        assert len(notes) == 1, done.stdout
        assert "route early" in notes[0] and "orders" in notes[0] and "503" in notes[0]


# -- 2. the GwserverConfigRejected alert and a route waiting for its upstream ----------------

def test_a_route_waiting_for_its_upstream_is_not_counted_as_rejected(launcher, tmp_path):
    """docs/etcd.md: routes waiting for their upstream "are listed ... but are no problem"
    (`routes status` exits 0 for them). gwserver_config_rejected_items counted them, so
    GwserverConfigRejected (`sum(gwserver_config_rejected_items) > 0 for 10m`) paged for a
    route put a moment before its upstream, with nothing rejected for `status` to name."""
    etcd = launcher.etcd()
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], workers=1))
    client = etcd.client()
    revision = put(client, "routes", "early", {"paths": ["/early"], "upstream": "orders"})
    wait_until(lambda: all_workers_at(gw, revision))
    assert gw.request("GET", "/early")[0].status == 503
    status = gw_cli("routes", "-c", str(gw.conf_path), "status")
    assert status.returncode == 0 and "1 waiting for their upstream" in status.stdout, status
    prom = Path(runtime_of(gw)) / "metrics.prom"
    wait_until(lambda: "gwserver_config_routes 1.0" in prom.read_text())    # written with it
    assert 'gwserver_config_rejected_items{kind="routes"} 0.0' in prom.read_text()
    # a route etcd holds that the gateway refuses is still counted
    revision = put(client, "routes", "bad", {"paths": ["bad"], "upstream": "orders"})
    wait_until(lambda: 'gwserver_config_rejected_items{kind="routes"} 1.0' in prom.read_text())


# -- 3. README.md's table of sections, against the settings registry -------------------------

def test_the_readmes_section_table_names_every_section_and_setting():
    """README.md's "Configuration" table is where an operator first looks for a setting. It
    had no row for [tracing], [http2], [redis], [tls] or [consumers.ID] (`gwserver check`
    takes them all), and left out nine [server] settings (min_body_rate, send_timeout, the
    path rules...) and five of [upstream_defaults] (the retry budget): one a row names is
    one the registry holds, and every one the registry holds is named."""
    import re
    from gwserver import settings
    text = (ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| `\[{1,2}([a-z0-9_]+)(?:\.ID)?\]{1,2}` \| (.*) \|$", text, re.M))
    assert set(rows) == set(settings.CONF.fields), sorted(rows)
    for name, schema in {**settings.SECTIONS, **settings.OPTIONAL_SECTIONS}.items():
        named = set(re.findall(r"`([a-z0-9]+_[a-z0-9_]+|[a-z0-9]+)`", rows[name]))
        assert set(schema.fields) <= named, (name, set(schema.fields) - named)
        assert {n for n in named if "_" in n} <= set(schema.fields), (name, named)


# -- 4. docs/operations.md's admin table, against the views a gateway serves -----------------

def test_the_admin_table_names_every_view_the_gateway_serves(launcher, upstream):
    """The admin listener's 404 lists its views; docs/operations.md's "Admin endpoints"
    table is the operator's list of them. /admin/rollouts (the split plugin's view, which
    docs/rollouts.md points to) was served but not in the table."""
    import re
    gw = launcher.gateway(gateway_conf([route("r", ["/r"], upstream.url)]))
    status, body = gw.admin_get("/admin/no-such-view")
    assert status == 404
    served = set(json.loads(body)["endpoints"])
    text = (ROOT / "docs" / "operations.md").read_text()
    table = text[text.index("## Admin endpoints"):text.index("## Tuning")]
    documented = set(re.findall(r"^\| `(/[^`]+)` \|", table, re.M))
    assert "/admin/rollouts" in served
    assert served == documented, (served - documented, documented - served)


# -- 5. the journal of a gateway with [redis] ------------------------------------------------

def test_a_gateway_with_redis_starts_its_workers_without_a_monkey_patch_warning(launcher,
                                                                                 upstream):
    """docs/ratelimit.md's [redis] section, as an operator adds it: every worker's start
    (and each reload's) put gevent's four-line MonkeyPatchWarning in the journal ("Monkey-
    patching ssl after ssl has already been imported may lead to errors ... Modules that had
    direct imports (NOT patched): ['redis.asyncio.connection ...']"), which reads as a bug
    of the gateway and cries wolf before a real one. The master's redis-py URL check
    imported redis.asyncio, which workers never use."""
    redis = launcher.redis()
    limited = route("api", ["/api"], upstream.url,
                    plugins={"rate_limit": {"rate": 1, "per": 60, "key": "route"}})
    gw = launcher.gateway(gateway_conf([limited], workers=2, redis={"url": redis.url}))
    assert [gw.request("GET", "/api")[0].status for _ in range(2)] == [200, 429]
    wait_until(lambda: len(gw.serving_worker_pids()) == 2)
    assert "MonkeyPatchWarning" not in gw.log() and "NOT patched" not in gw.log()


# -- 6. docs/tls.md's "Errors that name the problem", for the key ----------------------------

def check_on_a_terminal(conf_path, timeout=10):
    """`gwserver check -c CONF` with a terminal of its own, as an operator runs it ->
    (finished in time, what it printed)."""
    import os
    import pty
    import select
    import time
    pid, fd = pty.fork()
    if pid == 0:        # the child: its controlling terminal is the pty
        os.chdir(ROOT)
        os.execv(sys.executable, [sys.executable, "-m", "gwserver", "check", "-c",
                                  str(conf_path)])
    out, deadline = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([fd], [], [], 0.2)[0]:
                try:
                    piece = os.read(fd, 4096)
                except OSError:         # EIO: the child closed the terminal
                    piece = b""
                if not piece:
                    return True, out.decode(errors="replace")
                out += piece
        return False, out.decode(errors="replace")
    finally:
        os.close(fd)
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)


def test_check_names_an_encrypted_or_swapped_key_and_never_asks_for_a_passphrase(tmp_path):
    """An encrypted listener key made `gwserver check` print "Enter PEM pass phrase:" on
    the operator's terminal and wait there (no file named), and without a terminal (the
    unit's ExecStartPre, the master) say `processing error; problems getting password;
    ...; PEM lib`; cert and key swapped, an empty key or a DER one said `unsupported; PEM
    lib`. An encrypted client key of an upstream (mTLS) passed `check` and failed each
    connection. Each is now named with what to do."""
    from cryptography.hazmat.primitives import serialization
    from tests.pki import CA
    ca = CA(tmp_path)
    cert, key, _ = ca.issue("site")
    private = serialization.load_pem_private_key(key.read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))

    def conf_with(cert_path, key_path):
        path = tmp_path / "gw.toml"
        path.write_text(to_toml(gateway_conf(
            [route("r", ["/r"], "http://127.0.0.1:9")],
            tls={"bind": ["127.0.0.1:1"], "certificates": [{"cert": str(cert_path),
                                                            "key": str(key_path)}]})))
        return path

    finished, said = check_on_a_terminal(conf_with(cert, encrypted))
    assert finished, f"check waited on the terminal: {said!r}"
    assert "pass phrase" not in said.lower(), said
    assert "encrypted private key" in said and "cannot ask for its passphrase" in said
    for cert_path, key_path in ((key, cert), (cert, cert)):     # both swapped, or the key
        swapped = gw_cli("check", "-c", str(conf_with(cert_path, key_path)))
        assert swapped.returncode == 2 and "cert and key swapped" in swapped.stdout + \
            swapped.stderr, swapped
    # an upstream's client key (mTLS), as docs/tls.md's [upstreams.payments.tls]
    path = tmp_path / "up.toml"
    upstream = {"targets": [{"url": "https://127.0.0.1:9"}],
                "tls": {"cert_file": str(cert), "key_file": str(encrypted)}}
    path.write_text(to_toml(gateway_conf([{"id": "p", "paths": ["/p"], "upstream": upstream}])))
    done = gw_cli("check", "-c", str(path))
    assert done.returncode == 2 and "tls.key_file" in done.stdout + done.stderr and \
        "encrypted private key" in done.stdout + done.stderr, done
    # and [etcd]'s client key: every call to etcd failed on it ("no etcd endpoint answered")
    path.write_text(to_toml(etcd_conf(tmp_path, ["https://127.0.0.1:9"], cert_file=str(cert),
                                      key_file=str(encrypted))))
    done = gw_cli("check", "-c", str(path))
    assert done.returncode == 2 and "etcd.key_file" in done.stdout + done.stderr and \
        "encrypted private key" in done.stdout + done.stderr, done


# -- 7. docs/http2.md: `curl --http2-prior-knowledge` where h2c is off -----------------------

def test_an_http2_preface_where_h2c_is_off_is_refused_by_name(launcher, upstream):
    """h2c is off by default (docs/http2.md). An operator's `curl --http2-prior-knowledge`
    on such a port got a 400 whose body and access line said `malformed request: Pause on
    PRI/Upgrade` (llhttp's internal words), naming neither HTTP/2 nor h2c. Still a 400, and
    still closed, but saying what it is."""
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)]))
    answer = gw.raw(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in answer
    body = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert "h2c" in body["message"] and "Pause" not in body["message"], body
    line = wait_until(lambda: [line for line in gw.access_lines() if line.get("rejected")])
    assert "h2c" in line[0]["rejected"], line
    assert gw.request("GET", "/echo")[0].status == 200        # HTTP/1.1 there is served


# -- 8. server.bind: an IPv6 address without its brackets ------------------------------------

def test_an_ipv6_bind_without_brackets_is_refused_by_check_and_by_a_reload(launcher,
                                                                            upstream):
    """`bind = ["::1:8080"]` (the settings say IPv6 as "[::1]:port") passed `gwserver check`
    ("listening on ::1:8080"); `gwserver run` then died in a gunicorn traceback (`'' is not
    a valid port number`), and a reload adding it was refused as `unexpected error:
    RuntimeError(...)` with a traceback in the journal. Now it is a conf error naming the
    setting and the spelling."""
    gw = launcher.gateway(gateway_conf([route("r", ["/r"], upstream.url)]))
    for bad in ("::1:8080", "[::1:8080", "[]:8080"):
        conf = gateway_conf([route("r", ["/r"], upstream.url)], server={"bind": [bad]})
        path = Path(gw.conf_path).with_name("bad.toml")
        path.write_text(to_toml(conf))
        done = gw_cli("check", "-c", str(path))
        assert done.returncode == 2 and "server.bind[0]: an IPv6 address is written in " \
            "brackets" in done.stdout + done.stderr, done
    conf = dict(gw.conf, server={**gw.conf["server"],
                                 "bind": [*gw.conf["server"]["bind"], "::1:18106"]})
    gw.conf_path.write_text(to_toml(conf))
    done = gw_cli("reload", "-c", str(gw.conf_path))
    assert done.returncode == 1 and "server.bind[1]: an IPv6 address is written in " \
        "brackets" in done.stdout + done.stderr, done
    assert "Traceback" not in gw.log()
    assert gw.request("GET", "/r")[0].status == 200



# -- 9. [admin] metrics_dir: "keep it on tmpfs" -----------------------------------------------

def test_a_metrics_dir_the_operator_names_keeps_what_else_it_holds(launcher, upstream,
                                                                   tmp_path):
    """The setting says "keep it on tmpfs"; /dev/shm is where an operator has one. The
    master emptied metrics_dir at start with shutil.rmtree: `metrics_dir = "/dev/shm"`
    removed every other program's files there (here: a stand-in directory). Only the files
    of prometheus_client's multiprocess mode, an earlier run's, are removed now. And a
    metrics_dir that cannot be made was a traceback from `gwserver run` (exit 1, which
    systemd restarts in a loop) after `check` said ok: now check warns and run says why,
    exit 2."""
    shm = tmp_path / "shm"
    shm.mkdir()
    (shm / "PostgreSQL.1804289383").write_text("another program's segment")
    (shm / "counter_4242.db").write_bytes(b"\0" * 16)           # an earlier run's
    gw = launcher.gateway(gateway_conf([route("r", ["/r"], upstream.url)],
                                       admin={"metrics_dir": str(shm)}))
    assert gw.request("GET", "/r")[0].status == 200
    assert (shm / "PostgreSQL.1804289383").read_text() == "another program's segment"
    assert not (shm / "counter_4242.db").exists()
    wait_until(lambda: b'gwserver_requests_total{method="GET",protocol="HTTP/1.1",route="r"'
               in gw.admin_get("/metrics")[1])
    # a metrics_dir that cannot be made
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    path = tmp_path / "bad.toml"
    conf = dict(gw.conf, admin={"bind": "127.0.0.1:9", "metrics_dir": f"{blocker}/m"})
    conf["server"] = {**conf["server"], "state_dir": str(tmp_path / "state-bad")}
    path.write_text(to_toml(conf))
    checked = gw_cli("check", "-c", str(path))
    assert checked.returncode == 0 and "[admin] metrics_dir" in checked.stdout, checked
    ran = gw_cli("run", "-c", str(path))
    assert ran.returncode == 2 and "Traceback" not in ran.stderr, ran
    assert f"cannot start: [admin] metrics_dir {blocker}/m" in ran.stderr, ran


# -- 10. listeners that hold each other's port -------------------------------------------------

def test_check_refuses_listeners_a_wildcard_of_another_holds(tmp_path):
    """`gwserver check` compared listener addresses as text (and as resolved addresses):
    `[server] bind = ["0.0.0.0:8080"]` with `[admin] bind = "127.0.0.1:8080"`, or a TLS
    listener 0.0.0.0:8443 beside a plain 127.0.0.1:8443, or 0.0.0.0:8080 and
    127.0.0.1:8080 in one bind list, passed; `gwserver run` then retried 5 s and failed
    `cannot listen on the admin address 127.0.0.1:8080: Address already in use`, held by
    the gateway itself, an operator looking for another program. The nginx spelling
    `0.0.0.0:8080` beside `[::]:8080` stays good."""
    from tests.pki import CA
    cert, key, _ = CA(tmp_path).issue("site")
    certificates = [{"cert": str(cert), "key": str(key)}]
    r = [route("r", ["/r"], "http://127.0.0.1:9")]
    cases = [
        (gateway_conf(r, server={"bind": ["0.0.0.0:18111"]},
                      admin={"bind": "127.0.0.1:18111"}), "admin.bind: 127.0.0.1:18111"),
        (gateway_conf(r, server={"bind": ["127.0.0.1:18112"]}, admin={"bind": "127.0.0.1:9"},
                      tls={"bind": ["0.0.0.0:18112"], "certificates": certificates}),
         "tls.bind: 0.0.0.0:18112 is also a plain listener"),
        (gateway_conf(r, server={"bind": ["0.0.0.0:18113", "127.0.0.1:18113"]}),
         "server.bind[1]: 127.0.0.1:18113 is already listened on by 0.0.0.0:18113"),
    ]
    path = tmp_path / "gw.toml"
    for conf, problem in cases:
        path.write_text(to_toml(conf))
        done = gw_cli("check", "-c", str(path))
        assert done.returncode == 2 and problem in done.stdout + done.stderr, (problem, done)
    path.write_text(to_toml(gateway_conf(r, server={"bind": ["0.0.0.0:18114", "[::]:18114"]},
                                         admin={"bind": "127.0.0.1:18115"})))
    assert gw_cli("check", "-c", str(path)).returncode == 0
