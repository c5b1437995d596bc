"""The operator's command-line tools against hostile or broken state (the attack pass of
2026-12-05, helper h8, on 896d024). Each test runs the real `gwserver` command against real
etcd and gateways on loopback, and failed on that commit.

1. A conf path that is a FIFO (a half-set-up deploy, a hostile `mkfifo` where a file was):
   `gwserver check`, `gwserver reload` and every etcd command (`routes list`) blocked in
   open() until someone wrote the other end, for ever; so did the master's own reload
   (a device such as /dev/zero was read without end, into memory). A ticket key file that is
   a FIFO hung `check` and the reload the same way. Now: regular files only, said at once.
2. `gwserver reload` took for the master any process whose command line holds "gwserver":
   a pid named by a stale master.json, now an editor of /etc/gwserver/gwserver.toml or a
   `tail -f` of its log, got the SIGHUP (most programs die of it); `--pid` was signalled
   whatever it was. And a master whose proc_name is its own ("edge: master") was refused.
   Now the master is the process that holds its instance lock, which names it.
3. `routes list` and `routes status` printed etcd keys, values and rejection reasons as
   they were: an escape sequence in a key someone wrote to etcd rewrote the operator's
   terminal, and a newline in it forged a line ("forged  revision 1  ok"). The same for
   `rollouts list|status` (route names, history reasons). Control characters are escaped.
4. `routes list` printed the first 120 characters of each stored value as it was: a jwt
   secret or an Authorization header that a headers plugin sets, in clear in a listing
   (which `check --dump` and /admin/config mask). Secrets are masked now.
5. One damaged rollout state in the shared store (another writer's value, a half write):
   `gwserver rollouts list` and `status` died with a traceback; and the rollouts
   controller's tick raised at that route, every tick, so no route sorted after it ever
   started, stepped or was rolled back by its gates. Now the tools name the damaged state
   (exit 1) and the controller's writer starts that rollout again.
6. `routes status` on a status file that is not what the sync process writes (`{}`, a
   field of another type, a list; a worker's board entry so) died with a KeyError or
   TypeError traceback, and on a FIFO in its place it blocked for ever. Now it names the
   damaged file or entry.
"""
import json
import os
import subprocess
import sys
import time

import pytest

from ..conftest import ROOT, free_port, gateway_conf, route, to_toml, wait_until
from ..pki import CA
from .test_routes_cli import Conf

PREFIX = "/gw"


def gwserver(*args, stdin=None, timeout=20):
    return subprocess.run([sys.executable, "-m", "gwserver", *args], capture_output=True,
                          text=True, input=stdin, timeout=timeout, cwd=ROOT)


def no_traceback(run):
    assert "Traceback" not in run.stdout + run.stderr, run.stderr


@pytest.fixture
def etcd_conf(launcher, tmp_path):
    etcd = launcher.etcd()
    path = tmp_path / "gw.toml"
    path.write_text(to_toml({"server": {"state_dir": str(tmp_path / "state")},
                             "etcd": {"endpoints": [etcd.url], "prefix": PREFIX,
                                      "runtime_dir": str(tmp_path / "run"), "timeout": 2.0}}))
    return Conf(path, etcd)


# -- 1. a conf path (or a file it names) that is a FIFO ---------------------------------------

@pytest.mark.parametrize("command", [["check"], ["reload"], ["routes", "list"],
                                     ["rollouts", "list"]])
def test_a_conf_path_that_is_a_fifo_is_refused_at_once_not_waited_on(tmp_path, command):
    fifo = tmp_path / "gwserver.toml"
    os.mkfifo(fifo)
    started = time.monotonic()
    run = gwserver(*command, "-c", str(fifo), timeout=15)
    assert time.monotonic() - started < 10
    assert run.returncode in (1, 2), run
    assert "not a regular file" in run.stderr, run.stderr
    no_traceback(run)


def test_a_ticket_key_file_that_is_a_fifo_is_refused_by_check_at_once(tmp_path, upstream):
    ca = CA(tmp_path)
    cert, key, _ = ca.issue("site")
    os.mkfifo(tmp_path / "current.key")
    conf = gateway_conf([route("r", ["/*rest"], upstream.url)],
                        tls={"bind": [f"127.0.0.1:{free_port()}"],
                             "certificates": [{"cert": str(cert), "key": str(key)}],
                             "ticket_key_files": [str(tmp_path / "current.key")]})
    conf["server"]["bind"] = [f"127.0.0.1:{free_port()}"]
    path = tmp_path / "gw.toml"
    path.write_text(to_toml(conf))
    run = gwserver("check", "-c", str(path), timeout=15)
    assert run.returncode == 2, run
    assert f"tls.ticket_key_files[0]: {tmp_path}/current.key: cannot read: not a regular " \
           f"file" in run.stderr, run.stderr


# -- 2. gwserver reload: which process is the master -----------------------------------------

def bystander():
    """A process whose command line names the conf file (an editor, a tail): it dies of a
    SIGHUP, as most programs do."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                             "/etc/gwserver/gwserver.toml"])


def test_reload_never_signals_a_process_that_only_mentions_gwserver(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    proc = bystander()
    try:
        (state / "master.json").write_text(json.dumps({
            "pid": proc.pid, "generation": 1, "reload_attempts": 0,
            "last_reload_attempt": "2026-01-01T00:00:00.000Z",
            "last_reload_successful": True}))
        conf = tmp_path / "gw.toml"
        conf.write_text(f'[server]\nstate_dir = "{state}"\n')
        stale = gwserver("reload", "-c", str(conf), "--timeout", "3")
        assert stale.returncode == 1 and "is no gwserver master" in stale.stderr, stale
        given = gwserver("reload", "-c", str(conf), "--pid", str(proc.pid), "--timeout", "3")
        assert given.returncode == 1 and "is no gwserver master" in given.stderr, given
        assert "nothing was signalled" in given.stderr
        time.sleep(0.3)
        assert proc.poll() is None, "the bystander got the SIGHUP"
    finally:
        proc.kill()
        proc.wait()


def test_reload_finds_a_master_with_a_proc_name_of_its_own(launcher, upstream):
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)],
                                       server={"proc_name": "edge"}))
    for args in ((), ("--pid", str(gw.pid))):
        run = gwserver("reload", "-c", str(gw.conf_path), *args, timeout=60)
        assert run.returncode == 0 and "reload complete: generation" in run.stdout, run
    # A worker holds the lock's descriptor, not its name. One of an older generation may
    # end its drain before the command looks ("no process"): then ask with another.
    for _ in range(10):
        worker = gw.serving_worker_pids()[0]
        run = gwserver("reload", "-c", str(gw.conf_path), "--pid", str(worker),
                       "--timeout", "3")
        if not run.stderr.startswith("no process"):
            break
        time.sleep(0.5)
    assert run.returncode == 1 and "is no gwserver master" in run.stderr, run


# -- 3. control characters from etcd and the store on the operator's terminal ----------------

EVIL_ID = "evil\x1b]0;owned\x07\nforged\trevision 1\tok"


def test_routes_list_escapes_what_etcd_holds(etcd_conf):
    client = etcd_conf.etcd.client()
    client.put(f"{PREFIX}/routes/{EVIL_ID}", b'{"paths": ["/\x1b[2J"]}')
    client.put(f"{PREFIX}/upstreams/u\x9b31m", b'{"targets": "\x1b[31m"}')
    for kind in ("routes", "upstreams"):
        run = gwserver(kind, "list", "-c", os.fspath(etcd_conf))
        assert run.returncode == 0, run
        assert not any(c in run.stdout for c in "\x1b\x07\x9b"), run.stdout
        assert not any(line.startswith("forged") for line in run.stdout.splitlines())
    assert "evil\\x1b]0;owned\\x07\\x0aforged\\x09revision 1\\x09ok\trevision" in \
        gwserver("routes", "list", "-c", os.fspath(etcd_conf)).stdout


def test_routes_status_escapes_what_the_status_file_holds(etcd_conf, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "status.json").write_text(json.dumps({
        "pid": 1, "generation": 3, "revision": 7, "connected": True,
        "endpoint": "http://e\x1b[8m", "last_sync": time.time(), "routes": 1,
        "upstreams": 0, "rejected": {f"routes/{EVIL_ID}": "bad \x1b]8;;http://x\x07link"}}))
    from gwserver.sync.shm import STATUS
    assert STATUS == "status.json"
    run = gwserver("routes", "status", "-c", os.fspath(etcd_conf))
    assert run.returncode == 1, run
    assert run.stdout and not any(c in run.stdout + run.stderr for c in "\x1b\x07"), run
    assert not any(line.startswith("forged") for line in run.stdout.splitlines())


def test_rollouts_list_and_status_escape_route_names_and_reasons(etcd_conf):
    from gwserver.core import rollout as core
    state = core.start({"steps": [10, 50]}, "r1", time.time())
    state = core.command(state, "pause", time.time(), "by \x1b]0;owned\x07 ops")
    client = etcd_conf.etcd.client()
    client.put(f"{PREFIX}/rollouts/state/shop\x1b[2J", state.to_json().encode())
    listed = gwserver("rollouts", "list", "-c", os.fspath(etcd_conf))
    assert listed.returncode == 0 and "shop\\x1b[2J" in listed.stdout, listed
    shown = gwserver("rollouts", "status", "shop\x1b[2J", "-c", os.fspath(etcd_conf))
    assert shown.returncode == 0 and "by \\x1b]0;owned\\x07 ops" in shown.stdout, shown
    for run in (listed, shown):
        assert "\x1b" not in run.stdout + run.stderr


# -- 4. secrets in `routes list` ---------------------------------------------------------------

def test_routes_list_masks_the_secrets_of_stored_routes(etcd_conf):
    secret = "hs256-secret-0123456789abcdef0123456789"
    etcd_conf.etcd.client().put(f"{PREFIX}/routes/j", json.dumps({
        "paths": ["/j"], "upstream": {"targets": [{"url": "http://127.0.0.1:9"}]},
        "plugins": {"jwt": {"secret": secret},
                    "headers": {"request": {"set": {"Authorization": "Bearer tok-42"}}}}},
        sort_keys=True))
    run = gwserver("routes", "list", "-c", os.fspath(etcd_conf))
    assert run.returncode == 0 and "j\trevision" in run.stdout, run
    assert secret[:12] not in run.stdout and "tok-42" not in run.stdout, run.stdout
    assert "***" in run.stdout


# -- 5. a damaged rollout state ----------------------------------------------------------------

@pytest.mark.parametrize("damaged", [b"garbage", b'{"id": "x"}', b"[1, 2]",
                                     b'{"id": "x", "status": "running", "step": 9, '
                                     b'"steps": [10], "epoch": 1, "since": 0, "history": []}'])
def test_rollouts_commands_name_a_damaged_state_and_list_the_others(etcd_conf, damaged):
    from gwserver.core import rollout as core
    client = etcd_conf.etcd.client()
    client.put(f"{PREFIX}/rollouts/state/bad", damaged)
    good = core.start({"steps": [10, 50]}, "r1", time.time())
    client.put(f"{PREFIX}/rollouts/state/good", good.to_json().encode())
    listed = gwserver("rollouts", "list", "-c", os.fspath(etcd_conf))
    no_traceback(listed)
    assert listed.returncode == 1 and "DAMAGED" in listed.stdout, listed
    assert "good" in listed.stdout and "running" in listed.stdout
    assert "route bad: its stored rollout state is damaged" in listed.stderr
    for args in (("status", "bad"), ("pause", "bad")):
        run = gwserver("rollouts", *args, "-c", os.fspath(etcd_conf))
        no_traceback(run)
        assert run.returncode == 1 and "stored rollout state is damaged" in run.stderr, run
    assert client.get(f"{PREFIX}/rollouts/state/bad") == damaged    # not written over


def test_a_damaged_rollout_state_does_not_stop_the_controller_for_the_other_routes(
        launcher, upstream, tmp_path):
    """Route "aaa" (sorted first) has a damaged state; "shop" has none yet. The controller's
    tick stopped at aaa, every tick: shop's rollout never started."""
    etcd = launcher.etcd()
    v2 = launcher.upstream("v2")
    from .test_rollouts import rollout_conf
    conf = rollout_conf(tmp_path, upstream, v2, etcd=etcd, workers=1)
    other = json.loads(json.dumps(conf["routes"][0]))
    other.update(id="aaa", paths=["/aaa/*rest"], strip_prefix="/aaa")
    conf["routes"].insert(0, other)
    client = etcd.client()
    client.put("/gwtest/rollouts/state/aaa", b'{"id": "half a wr')
    gw = launcher.gateway(conf)
    assert wait_until(lambda: client.get("/gwtest/rollouts/state/shop"), timeout=20), \
        gw.log()[-3000:]
    repaired = wait_until(lambda: b'"status"' in (client.get("/gwtest/rollouts/state/aaa")
                                                 or b"") or None, timeout=20)
    assert repaired and "its stored state is damaged" in gw.log()


# -- 6. a damaged sync status ------------------------------------------------------------------

@pytest.mark.parametrize("status", ["{}", '{"generation": "3"}', "[]", "fifo", "worker"])
def test_routes_status_names_a_damaged_status_file_without_a_traceback(etcd_conf, tmp_path,
                                                                       status):
    run_dir = tmp_path / "run"
    (run_dir / "workers").mkdir(parents=True)
    good = {"pid": 1, "generation": 3, "revision": 7, "connected": False, "endpoint": "e",
            "last_sync": None, "routes": 1, "upstreams": 0, "rejected": {}}
    if status == "fifo":
        os.mkfifo(run_dir / "status.json")
    else:
        (run_dir / "status.json").write_text(json.dumps(good) if status == "worker" else status)
    if status == "worker":          # this test's own pid: a live "worker" with a bad entry
        (run_dir / "workers" / str(os.getpid())).write_text('{"generation": "x"}')
    run = gwserver("routes", "status", "-c", os.fspath(etcd_conf), timeout=15)
    no_traceback(run)
    assert run.returncode in (1, 2), run
    assert "damaged" in run.stderr or "no status in" in run.stderr, run.stderr
