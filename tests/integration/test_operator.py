"""What an operator meets (issue 18): the running configuration can be seen (admin item views,
reload status, check --dump), listeners are named, the state directory is the configured one,
the demo upstream answers on demand, and `routes status` tells live from stale."""
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time

from ..conftest import free_port, gateway_conf, route, to_toml, wait_for_port, wait_until

TOKEN = "admin-s3cret"
JWT_SECRET = "jwt-s3cret-value"


def gwserver(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "gwserver", *args], capture_output=True,
                          text=True, timeout=60, **kwargs)


def admin(gw, path):
    status, body = gw.admin_get(path, TOKEN)
    return status, json.loads(body) if body.startswith((b"{", b"[")) else body.decode()


def demo_upstream(launcher):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gwserver", "demo-upstream", "--port",
                             str(port)], stdout=subprocess.DEVNULL, start_new_session=True)
    launcher.started.append(proc)
    wait_for_port(port, proc=proc)
    return f"http://127.0.0.1:{port}"


def test_demo_upstream_answers_any_status_delay_and_size_through_the_gateway(launcher):
    url = demo_upstream(launcher)
    gw = launcher.gateway(gateway_conf([route("demo", ["/*rest"], url)]))
    resp, body = gw.request("GET", "/status/503")
    assert resp.status == 503 and json.loads(body)["status"] == 503
    started = time.monotonic()
    resp, body = gw.request("GET", "/delay/0.3")
    assert resp.status == 200 and time.monotonic() - started >= 0.3
    resp, body = gw.request("GET", "/bytes/100000")
    assert resp.status == 200 and len(body) == 100000
    assert gw.request("GET", "/anything")[0].status == 200


def test_item_views_reload_status_and_named_listeners(launcher, upstream, tmp_path):
    conf = gateway_conf(
        [route("api", ["/api"], upstream.url, prefix=True,
               plugins={"jwt": {"secret": JWT_SECRET, "algorithms": ["HS256"]}}),
         {"id": "named", "paths": ["/named"], "upstream": "pool"}],
        upstreams={"pool": {"targets": [{"url": upstream.url, "weight": 2}]}},
        admin={"token": TOKEN})
    gw = launcher.gateway(conf)
    log = gw.log()
    assert f"server http://127.0.0.1:{gw.port}" in log
    assert f"admin http://127.0.0.1:{gw.admin_port}" in log

    status, view = admin(gw, "/admin/routes/api")
    assert status == 200 and view["source"] == {"from": "conf file",
                                                "path": str(gw.conf_path)}
    jwt = next(p for p in view["plugins"] if p["name"] == "jwt")
    assert jwt["config"]["secret"] == "***" and jwt["config"]["algorithms"]   # defaults shown
    assert JWT_SECRET not in json.dumps(view)
    assert view["upstream"]["targets"][0]["url"] == upstream.url
    status, view = admin(gw, "/admin/upstreams/pool")
    assert status == 200 and view["routes"] == ["named"] and view["targets"][0]["weight"] == 2
    assert admin(gw, "/admin/routes/nope")[0] == 404

    status, config = admin(gw, "/admin/config")
    first = config["reload"]
    assert first["generation"] == 1 and first["last_reload_successful"] is True
    assert first["last_reload_success"].endswith("Z") and "T" in first["last_reload_success"]
    metrics = admin(gw, "/metrics")[1]
    assert "gwserver_config_last_reload_successful 1.0" in metrics
    assert "gwserver_config_last_reload_success_timestamp_seconds" in metrics

    os.kill(gw.pid, signal.SIGHUP)          # same, valid conf: generation 2
    wait_until(lambda: "reload complete: generation 2, 1 workers, 2 routes" in gw.log())
    good = gw.conf_path.read_text()
    gw.conf_path.write_text(good + "\n[log]\nlevel = \"loud\"\n")
    os.kill(gw.pid, signal.SIGHUP)
    wait_until(lambda: "reload refused" in gw.log())
    wait_until(lambda: "gwserver_config_last_reload_successful 0.0" in admin(gw, "/metrics")[1])
    # (master.prom is written, then master.json: read just between, it still said True)
    config = wait_until(lambda: (reload := admin(gw, "/admin/config")[1]["reload"])[
        "last_reload_successful"] is False and reload)
    assert config["generation"] == 2


def test_a_failed_bind_names_the_listener(launcher, upstream):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        conf = gateway_conf([route("e", ["/e"], upstream.url)],
                            admin={"bind": f"127.0.0.1:{port}"})
        gw = launcher.gateway(conf, wait=False)
        assert gw.proc.wait(30) != 0
    assert f"cannot listen on the admin address 127.0.0.1:{port}" in gw.log()


def test_workers_auto_and_the_state_dir(launcher, upstream, tmp_path):
    state = tmp_path / "host-state"
    conf = gateway_conf([route("e", ["/e"], upstream.url)],
                        server={"workers": "auto", "state_dir": str(state)})
    conf["server"]["workers"] = "auto"
    gw = launcher.gateway(conf, wait=False)
    wait_for_port(gw.port, proc=gw.proc)
    cores = len(os.sched_getaffinity(0))
    wait_until(lambda: len(gw.worker_pids()) == cores)
    wait_until(lambda: (state / "master.json").exists())
    assert (state / "gwserver.lock").read_text().strip() == str(gw.pid)
    second = launcher.gateway(gateway_conf([route("e", ["/e"], upstream.url)],
                                           server={"state_dir": str(state)}), wait=False)
    assert second.proc.wait(30) == 2
    assert "in use by another gwserver" in second.log() and "[server] state_dir" in second.log()


def test_check_dump_fills_defaults_and_masks_secrets(tmp_path):
    conf = tmp_path / "gw.toml"
    conf.write_text(f'[admin]\ntoken = "{TOKEN}"\n[redis]\nurl = "redis://:pw123@127.0.0.1:6379/0"\n'
                    f'[etcd]\nendpoints = ["http://127.0.0.1:2379"]\nusername = "gw"\n'
                    f'password = "etcdpw"\nruntime_dir = "{tmp_path}/run"\n'
                    f'snapshot_path = "{tmp_path}/snap.json"\n'
                    f'[plugins.jwt]\nsecret = "{JWT_SECRET}"\nalgorithms = ["HS256"]\n')
    out = gwserver("check", "-c", str(conf), "--dump")
    assert out.returncode == 0, out.stderr
    for secret in (TOKEN, "pw123", "etcdpw", JWT_SECRET):
        assert secret not in out.stdout
    assert 'url = "redis://:***@127.0.0.1:6379/0"' in out.stdout
    assert "worker_connections = 1000" in out.stdout and 'workers = "auto"' in out.stdout
    assert "cache_seconds" in out.stdout                # the jwt plugin's defaults
    dumped = tmp_path / "dumped.toml"
    dumped.write_text(out.stdout)
    assert gwserver("check", "-c", str(dumped)).returncode == 0


def test_check_refuses_a_plugin_that_would_write_a_gateway_header(tmp_path):
    """A second Content-Length or Host upstream is a desync, an X-Consumer-ID from a claim a
    forged identity: `check` (and a reload, and etcd) refuse the route with the reason."""
    conf = tmp_path / "gw.toml"
    conf.write_text('[[routes]]\nid = "r1"\npaths = ["/a"]\n'
                    'upstream = { targets = [{ url = "http://127.0.0.1:9" }] }\n'
                    'plugins.headers = { request = { set = { "Content-Length" = "0" } } }\n'
                    '[[routes]]\nid = "r2"\npaths = ["/b"]\n'
                    'upstream = { targets = [{ url = "http://127.0.0.1:9" }] }\n'
                    f'plugins.jwt = {{ secret = "{JWT_SECRET}", '
                    'forward_claims = { sub = "X-Consumer-ID" } }\n')
    out = gwserver("check", "-c", str(conf))
    assert out.returncode != 0
    assert "route r1: plugins.headers: request: Content-Length is written by the gateway " \
        "itself and cannot be edited here" in out.stderr
    assert "route r2: plugins.jwt: forward_claims.sub: X-Consumer-ID is written by the " \
        "gateway itself" in out.stderr
    assert JWT_SECRET not in out.stderr


def test_version():
    from gwserver import __version__
    out = gwserver("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"gwserver {__version__}"


def test_routes_status_list_delete_and_transactional_put(launcher, upstream, tmp_path):
    from .test_etcd import etcd_conf
    etcd = launcher.etcd()
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], workers=1))
    conf = str(gw.conf_path)
    items = tmp_path / "items.json"
    items.write_text(json.dumps([{"id": "a", "paths": ["/a"], "upstream": "up"},
                                 {"id": "b", "paths": ["/b"], "upstream": "up"}]))
    put = gwserver("routes", "-c", conf, "put", str(items))
    revisions = {line.rpartition("revision ")[2] for line in put.stdout.splitlines()
                 if line.startswith("put ")}
    assert put.returncode == 0 and len(revisions) == 1      # one transaction, one revision
    items.write_text(json.dumps({"id": "up", "targets": [{"url": upstream.url}]}))
    assert gwserver("upstreams", "-c", conf, "put", str(items)).returncode == 0
    wait_until(lambda: gw.request("GET", "/a")[0].status == 200)
    live = gwserver("routes", "-c", conf, "status")
    assert live.returncode == 0 and "connected to" in live.stdout, live

    refused = gwserver("upstreams", "-c", conf, "delete", "up")
    assert refused.returncode == 2 and "still used by route(s) a, b" in refused.stderr
    etcd.client().put("/gw/routes/bad", b'{"paths": ["/x"], "upstream": "up", "colour": 1}')
    listed = gwserver("routes", "-c", conf, "list")
    assert "bad\trevision" in listed.stdout and "\tREJECTED\t" in listed.stdout
    assert "a\trevision" in listed.stdout and "\tok\t" in listed.stdout
    wait_until(lambda: gwserver("routes", "-c", conf, "status").returncode == 1)
    assert "1 item(s) rejected: routes/bad" in gwserver("routes", "-c", conf, "status").stderr
    assert gwserver("upstreams", "-c", conf, "delete", "up", "--force").returncode == 0

    etcd.stop()                             # etcd unreachable: exit 1, said so
    wait_until(lambda: "NOT CONNECTED" in gwserver("routes", "-c", conf, "status").stdout)
    assert gwserver("routes", "-c", conf, "status").returncode == 1
    gw.proc.send_signal(signal.SIGTERM)     # no gateway: the file left behind is stale
    gw.proc.wait(30)
    stale = gwserver("routes", "-c", conf, "status")
    assert stale.returncode == 1 and "STALE: written by pid" in stale.stderr, stale


def test_reloads_with_files_no_check_foresaw_are_refused_and_the_master_lives(launcher,
                                                                                upstream):
    """Each of these killed the master on SIGHUP (exit 255, the gateway gone): bytes that are
    not UTF-8, nesting past the parser's recursion, an unclosed IPv6 bracket in a target URL,
    an integer too large for a float. An empty file moved the listeners to the defaults."""
    gw = launcher.gateway(gateway_conf([route("e", ["/echo"], upstream.url)]))
    good = gw.conf_path.read_bytes()
    bad_files = [
        (good + b"\n# caf\xe9\n", "not UTF-8"),
        (good + b"\n[x]\ny = " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deep"),
        (good.replace(upstream.url.encode(), b"http://[::1:8080"), "is not a URL"),
        (good + b"\n[upstream_defaults]\npool_size = 64\nconnect_timeout = "
         + b"9" * 400 + b"\n", "of a sensible size"),
        (good + b"\n[upstream_defaults]\nconnect_timeout = nan\n", "finite number"),
        (b"\n# nothing\n", "no settings at all"),
    ]
    for number, (text, reason) in enumerate(bad_files, 1):
        gw.conf_path.write_bytes(text)
        os.kill(gw.pid, signal.SIGHUP)
        wait_until(lambda: gw.log().count("still serving the previous configuration") >= number)
        refusals = [line for line in gw.log().splitlines() if "reload refused" in line]
        assert any(reason in line for line in refusals), (reason, refusals[-2:])
        assert gw.proc.poll() is None
        assert gw.request("GET", "/echo")[0].status == 200
    assert "Traceback" not in gw.log()


def test_admin_views_mask_credentials_a_route_sends_or_matches(launcher, upstream):
    """/admin/routes/ID showed a headers plugin's Authorization and a route's match on
    X-Api-Key in clear; only key names such as `secret` were masked."""
    conf = gateway_conf([route("api", ["/api"], upstream.url, headers={"X-Api-Key": "k-123"},
                               plugins={"headers": {"request": {"set": {
                                   "Authorization": "Bearer upstream-secret-1",
                                   "X-Env": "prod"}}}})],
                        admin={"token": TOKEN})
    gw = launcher.gateway(conf)
    status, view = admin(gw, "/admin/routes/api")
    text = json.dumps(view)
    assert status == 200 and "upstream-secret-1" not in text and "k-123" not in text
    assert "prod" in text and "***" in text
    dump = subprocess.run([sys.executable, "-m", "gwserver", "check", "--dump", "-c",
                           str(gw.conf_path)], capture_output=True, text=True)
    assert dump.returncode == 0 and "upstream-secret-1" not in dump.stdout


def test_the_access_log_goes_to_a_file_that_sigusr1_reopens_after_rotation(launcher, upstream,
                                                                           tmp_path):
    """[log] access_log_path: lines of both workers in the file, none on stderr; after a
    logrotate-style rename, SIGUSR1 to the master makes the workers write a new file, and
    no line is lost or split between the two."""
    path = tmp_path / "logs" / "access.log"
    path.parent.mkdir()
    gw = launcher.gateway(gateway_conf([route("echo", ["/echo"], upstream.url)], workers=2,
                                       log={"access_log_path": str(path)}))
    for _ in range(30):
        assert gw.request("GET", "/echo")[0].status == 200
    wait_until(lambda: path.exists() and len(path.read_text().splitlines()) == 30)
    os.rename(path, path.with_suffix(".log.1"))
    os.kill(gw.pid, signal.SIGUSR1)

    def files_open(pid):
        try:
            return {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        except OSError:
            return set()
    # Each worker reopens at its next tick: it then holds the new file, not the rotated one.
    # A worker between closing the rotated file and opening the new one holds neither (a CI
    # run read the list at that instant): both must hold one of them within the wait.
    rotated = str(path.with_suffix(".log.1"))
    writers = wait_until(lambda: len(found := [pid for pid in gw.worker_pids()
                                               if files_open(pid) & {str(path), rotated}]) == 2
                         and found)
    assert len(writers) == 2
    wait_until(lambda: all(files_open(pid) & {str(path), rotated} == {str(path)}
                           for pid in writers))
    for _ in range(20):
        assert gw.request("GET", "/echo")[0].status == 200
    wait_until(lambda: path.exists() and len(path.read_text().splitlines()) == 20)
    rotated = path.with_suffix(".log.1").read_text().splitlines()
    assert len(rotated) == 30
    assert all(json.loads(line)["route"] == "echo" for line in rotated + path.read_text()
               .splitlines())
    assert gw.access_lines() == []                      # none went to stderr
    assert oct(path.stat().st_mode & 0o777) == "0o640"


def test_an_access_log_path_in_a_missing_directory_is_refused_by_name(tmp_path):
    conf = tmp_path / "gw.toml"
    conf.write_text(f'[server]\nbind = ["127.0.0.1:{free_port()}"]\n'
                    f'[log]\naccess_log_path = "{tmp_path}/nowhere/access.log"\n')
    run = gwserver("check", "-c", str(conf))
    assert run.returncode == 2
    assert f"log.access_log_path: the directory {tmp_path}/nowhere does not exist" in run.stderr


def test_a_fifo_in_place_of_the_access_log_never_stops_a_worker(launcher, upstream, tmp_path):
    """Opened without O_NONBLOCK, a FIFO nobody reads held the worker in open() for good;
    now check refuses one, and a reopen onto one is logged and skipped. SIGUSR1 without a
    file logs nothing."""
    fifo = tmp_path / "access.fifo"
    os.mkfifo(fifo)
    conf = tmp_path / "fifo.toml"
    conf.write_text(f'[server]\nbind = ["127.0.0.1:{free_port()}"]\n'
                    f'[log]\naccess_log_path = "{fifo}"\n')
    run = gwserver("check", "-c", str(conf))
    assert run.returncode == 2 and f"{fifo} is not a regular file" in run.stderr
    path = tmp_path / "access.log"
    gw = launcher.gateway(gateway_conf([route("echo", ["/echo"], upstream.url)],
                                       log={"access_log_path": str(path)}))
    assert gw.request("GET", "/echo")[0].status == 200
    path.unlink()
    os.mkfifo(path)
    os.kill(gw.pid, signal.SIGUSR1)
    wait_until(lambda: "cannot open the access log" in gw.log())
    started = time.monotonic()
    assert gw.request("GET", "/echo")[0].status == 200 and time.monotonic() - started < 2
    plain = launcher.gateway(gateway_conf([route("echo", ["/echo"], upstream.url)]))
    os.kill(plain.pid, signal.SIGUSR1)
    time.sleep(0.5)
    assert plain.request("GET", "/echo")[0].status == 200
    assert "cannot open the access log" not in plain.log()


def test_an_upstream_down_does_not_write_a_line_per_request(start_gateway):
    """Every request to a dead upstream is a 502 and a warning: at a client's rate, 2,000
    lines a second from one worker, on top of the access log. One line a second per route
    and error, and the lines account for every request (the tick tells what a burst left
    out once it stops)."""
    dead = free_port()                                   # nothing listens there
    gw = start_gateway(gateway_conf([route("dead", ["/dead"], f"http://127.0.0.1:{dead}")]))
    started = time.monotonic()
    for _ in range(200):
        assert gw.request("GET", "/dead")[0].status == 502
    wait_until(lambda: bad_gateway_lines_told(gw.log())[1] == 200, timeout=5)
    lines, _ = bad_gateway_lines_told(gw.log())
    # at most one a second (a loaded host makes the burst longer), and the last count
    assert 2 <= lines <= time.monotonic() - started + 2, lines


def bad_gateway_lines_told(log):
    """(lines, 502s they account for) of route "dead" in a gateway's log."""
    found = re.findall(r"route dead: request \S+: bad_gateway: .*", log)
    return len(found), len(found) + sum(int(n) for line in found
                                        for n in re.findall(r"and (\d+) more like it", line))


def test_a_worker_told_to_quit_first_tells_what_its_log_throttle_left_out(start_gateway,
                                                                          upstream):
    """SIGQUIT (a quick stop, or the drain limit) ends a worker without its drain: it still
    writes its buffered access lines and the count of the warnings it left out."""
    dead = free_port()
    gw = start_gateway(gateway_conf([route("dead", ["/dead"], f"http://127.0.0.1:{dead}"),
                                     route("slow", ["/slow/:s"], upstream.url)]))
    (worker,) = gw.worker_pids()
    held = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    try:
        held.sendall(b"GET /slow/5 HTTP/1.1\r\nHost: h\r\n\r\n")     # in flight at the quit
        for _ in range(100):
            assert gw.request("GET", "/dead")[0].status == 502
        os.kill(worker, signal.SIGQUIT)
        wait_until(lambda: worker not in gw.worker_pids(), timeout=10)
        wait_until(lambda: bad_gateway_lines_told(gw.log())[1] == 100, timeout=5)
        assert len([line for line in gw.access_lines() if line.get("route") == "dead"]) == 100
    finally:
        held.close()


def test_the_readme_demo_command_serves_from_a_runtime_only_venv(tmp_path):
    """README's first command, `scripts/demo`, in a copy of the tree: its own venv with the
    runtime dependencies only (no test extras to bring a missing one along; gunicorn's
    gevent worker once needed `packaging` that only pytest brought, and every worker of a
    fresh demo failed to boot). Its fixed ports are moved to free ones in the copy."""
    import shutil
    import urllib.request
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    source = tmp_path / "src"
    shutil.copytree(root, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "*.egg-info", "build", "__pycache__", ".pytest_cache"))
    port, admin, demo = free_port(), free_port(), free_port()
    for name in ("conf/gwserver.toml", "scripts/demo"):
        path = source / name
        path.write_text(path.read_text().replace("127.0.0.1:8080", f"127.0.0.1:{port}")
                        .replace("127.0.0.1:9180", f"127.0.0.1:{admin}")
                        .replace("9001", str(demo)))
    (tmp_path / "run").mkdir()
    proc = subprocess.Popen([str(source / "scripts" / "demo")], cwd=source,
                            env={**os.environ, "RUNTIME_DIRECTORY": str(tmp_path / "run")},
                            stdout=open(tmp_path / "demo.log", "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        def hello():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/hello", timeout=2) as r:
                    return r.status
            except OSError:
                assert proc.poll() is None, (tmp_path / "demo.log").read_text()[-3000:]
                return None
        assert wait_until(hello, timeout=300, interval=0.5) == 200
        wait_until(lambda: "ready: 2 workers serving" in (tmp_path / "demo.log").read_text())
        assert "ModuleNotFoundError" not in (tmp_path / "demo.log").read_text()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)


def open_files(pid):
    """Where the descriptors of process ``pid`` lead (" (deleted)" kept)."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass        # closed meanwhile
    return out


def test_heartbeat_and_metrics_files_are_on_tmpfs_not_tmp(launcher, upstream, tmp_path):
    """gunicorn puts a worker's heartbeat file in tempfile's dir (/tmp: on disk on Debian 12,
    and with PrivateTmp=), where its fchmod can block the worker; the private metrics dir
    was made there too. With /dev/shm they are there; server.worker_tmp_dir overrides."""
    if not os.path.isdir("/dev/shm"):
        import pytest
        pytest.skip("no /dev/shm here")
    gw = launcher.gateway(gateway_conf([route("e", ["/echo"], upstream.url)], workers=2))
    assert gw.request("GET", "/echo")[0].status == 200      # a request: metrics files exist

    def files_of_workers():
        files = [f for pid in gw.worker_pids() for f in open_files(pid)]
        return files if any("wgunicorn-" in f for f in files) and \
            any(f.endswith(".db") for f in files) else None
    files = wait_until(files_of_workers)
    heartbeats = [f for f in files if "wgunicorn-" in f]
    assert heartbeats and all(f.startswith("/dev/shm/wgunicorn-") for f in heartbeats), files
    metrics = [f for f in files if f.endswith(".db")]
    # (systemd's runtime directory first, when the tests themselves run under a unit)
    from gwserver.settings import tmpfs_dir
    expected = os.path.join(tmpfs_dir(runtime_first=True), "gwserver-metrics-")
    assert metrics and all(f.startswith(expected) for f in metrics), files
    # The override: gunicorn's worker_tmp_dir, as named.
    own = tmp_path / "beats"
    own.mkdir()
    gw = launcher.gateway(gateway_conf([route("e", ["/echo"], upstream.url)],
                                       server={"worker_tmp_dir": str(own)}))
    files = wait_until(lambda: [f for pid in gw.worker_pids() for f in open_files(pid)
                                if "wgunicorn-" in f])
    assert all(f.startswith(f"{own}/wgunicorn-") for f in files), files


def test_the_master_logs_checks_warnings_at_start_and_on_reload(launcher, upstream):
    """`gwserver check` warned (trusted_proxies) and the running gateway said nothing: the
    master now logs conf_warnings at start and after each reload, as check prints them."""
    from ..conftest import to_toml
    conf = gateway_conf([route("e", ["/echo"], upstream.url)], admin={"token": "t0k3n"})
    gw = launcher.gateway(conf)
    assert "admin.token has 5 characters: use at least 16" in gw.log()
    conf = json.loads(json.dumps(gw.conf))
    conf["admin"]["token"] = "a-token-of-enough-characters"
    conf["routes"][0]["plugins"] = {"jwt": {"algorithms": ["HS256"], "secret": "s" * 20}}
    gw.conf_path.write_text(to_toml(conf))
    os.kill(gw.pid, signal.SIGHUP)
    wait_until(lambda: "reload complete" in gw.log(), timeout=30)
    assert "route e: plugins.jwt: secret is 20 bytes: HS256 needs a key of at least 32 bytes" \
        in gw.log()
    assert "s" * 20 not in gw.log() and "t0k3n" not in gw.log()


def test_a_state_dir_the_conf_names_may_sit_in_another_users_directory(launcher, upstream,
                                                                      tmp_path):
    """02ea224's ownership check first applied to every state_dir, and refused one inside a
    directory nginx had given to its worker user (the benchmark's temp dir): a deliberate
    layout when the conf names it. Only the default's last resort under /tmp is checked."""
    if os.geteuid() != 0:
        import pytest
        pytest.skip("only root can give a directory to another user")
    owned = tmp_path / "theirs"
    owned.mkdir()
    os.chown(owned, 65534, 65534)
    gw = launcher.gateway(gateway_conf([route("e", ["/echo"], upstream.url)],
                                       server={"state_dir": str(owned / "state")}))
    assert gw.request("GET", "/echo")[0].status == 200


def open_files_limit(pid):
    with open(f"/proc/{pid}/limits") as f:
        line = next(line for line in f if line.startswith("Max open files"))
    return int(line.split()[3])         # the soft limit


def test_the_master_raises_its_open_file_limit_and_check_warns_below_what_workers_need(
        launcher, upstream, tmp_path):
    """A proxied client holds two descriptors. A shell's soft limit of 1024 under a far
    higher hard one ran the default 1000 worker_connections out (each request past it a 503,
    once blamed on the upstream): the master raises its soft limit to the hard one, as Go
    and nginx's worker_rlimit_nofile do, and `gwserver check` warns of a hard limit below
    what the workers need."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))     # the gateway inherits it
    try:
        gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)]))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert hard == resource.RLIM_INFINITY or hard > 512
    assert [open_files_limit(pid) for pid in gw.worker_pids()] == [hard]
    assert gw.request("GET", "/echo")[0].status == 200
    path = tmp_path / "gw.toml"
    path.write_text(to_toml(gateway_conf([route("r", ["/*rest"], upstream.url)],
                                         server={"worker_connections": 1000})))
    run = subprocess.run([sys.executable, "-m", "gwserver", "check", "-c", str(path)],
                         capture_output=True, text=True, timeout=60,
                         preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE,
                                                               (1024, 1024)))
    assert run.returncode == 0, run.stderr
    assert "the open-file limit is 1024, under the 2064 a worker needs with every one of " \
           "server.worker_connections = 1000 proxied" in run.stdout + run.stderr
