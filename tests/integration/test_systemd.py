"""systemd integration: sd_notify states as a real notify socket receives them, the unit file."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..conftest import gateway_conf, route

ROOT = Path(__file__).resolve().parents[2]


class NotifySocket:
    """What systemd listens on for a Type=notify service: a Unix datagram socket."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)

    def recv(self, size):
        return self.sock.recv(size)


@pytest.fixture
def notify_socket(tmp_path):
    listener = NotifySocket(str(tmp_path / "notify.sock"))
    yield listener
    listener.sock.close()


def messages(sock, until, timeout=20):
    got = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
        if until(got):
            return got
    raise AssertionError(f"notifications so far: {got}")


def test_ready_reloading_stopping(launcher, upstream, notify_socket):
    conf = gateway_conf([route("e", ["/echo"], upstream.url)], workers=2)
    gw = launcher.gateway(conf, env={"NOTIFY_SOCKET": notify_socket.path}, wait=False)
    got = messages(notify_socket, lambda m: any("READY=1" in x for x in m))
    # READY=1 means serving: the first notification is READY, and requests are answered now.
    assert got[0].startswith("READY=1") and "serving with 2 workers" in got[0]
    assert gw.request("GET", "/echo")[0].status == 200
    os.kill(gw.pid, signal.SIGHUP)
    got = messages(notify_socket, lambda m: any("READY=1" in x for x in m))
    assert got[0].startswith("RELOADING=1") and "MONOTONIC_USEC=" in got[0]
    assert "reloaded" in got[-1]
    os.kill(gw.pid, signal.SIGTERM)
    got = messages(notify_socket, lambda m: any("STOPPING=1" in x for x in m))
    assert gw.proc.wait(20) == 0


def test_bad_reload_only_updates_status(launcher, upstream, notify_socket):
    gw = launcher.gateway(gateway_conf([route("e", ["/echo"], upstream.url)]),
                          env={"NOTIFY_SOCKET": notify_socket.path}, wait=False)
    messages(notify_socket, lambda m: any("READY=1" in x for x in m))
    gw.conf_path.write_text("[server]\nworkers = 0\n")
    os.kill(gw.pid, signal.SIGHUP)
    got = messages(notify_socket, lambda m: any("reload refused" in x for x in m))
    assert not any("RELOADING=1" in x for x in got)


def verify_unit(text, path):
    """systemd-analyze verify on a copy of a unit at ``path``. The unit runs as its own
    user; verify needs one that exists here."""
    path.write_text(text.replace("User=gwserver", "User=root")
                    .replace("Group=gwserver", "Group=root"))
    verify = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                            text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def reload_lines(unit):
    return [line.partition("=")[2] for line in unit.splitlines()
            if line.startswith("ExecReload=")]


def test_the_unit_reloads_through_the_masters_verdict():
    """`systemctl reload` ran only `kill -HUP`: it succeeded on a conf the master refuses.
    ExecReload= is `gwserver reload`, which waits for the master's verdict; the conf path is
    one Environment= variable that every Exec line uses (a drop-in changes it once)."""
    unit = (ROOT / "systemd" / "gwserver.service").read_text()
    assert "Environment=GWSERVER_CONF=/etc/gwserver/gwserver.toml" in unit.splitlines()
    execs = [line for line in unit.splitlines() if line.startswith("Exec")]
    assert execs == [
        "ExecStartPre=/opt/gwserver/bin/gwserver check -c ${GWSERVER_CONF}",
        "ExecStart=/opt/gwserver/bin/gwserver run -c ${GWSERVER_CONF}",
        "ExecReload=/opt/gwserver/bin/gwserver reload -c ${GWSERVER_CONF} --pid $MAINPID"]


def test_gwserver_reload_says_the_masters_verdict(launcher, upstream):
    """What ExecReload= runs, against a real master: a refused conf exits 1 and says why,
    an applied one exits 0 with its generation; without --pid it finds the master through
    master.json."""
    gw = launcher.gateway(gateway_conf([route("e", ["/echo"], upstream.url)]))
    good = gw.conf_path.read_text()

    def reload(*extra):
        return subprocess.run([sys.executable, "-m", "gwserver", "reload", "-c",
                               str(gw.conf_path), *extra], capture_output=True, text=True,
                              timeout=90)
    gw.conf_path.write_text(good.replace('"workers" = 1', '"workers" = "two"'))
    assert '"two"' in gw.conf_path.read_text()
    refused = reload("--pid", str(gw.pid))
    assert refused.returncode == 1, refused
    assert 'reload refused: invalid configuration: server.workers: must be a positive ' \
           'integer or "auto", got "two"' in refused.stderr, refused.stderr
    gw.conf_path.write_text(good)
    applied = reload("--pid", str(gw.pid))
    assert applied.returncode == 0 and "reload complete: generation 2" in applied.stdout, \
        applied
    again = reload()                                    # the master found by master.json
    assert again.returncode == 0 and "reload complete: generation 3" in again.stdout, again
    assert gw.proc.poll() is None
    missing = subprocess.run([sys.executable, "-m", "gwserver", "reload", "-c",
                              str(gw.conf_path), "--pid", "999999999"], capture_output=True,
                             text=True, timeout=30)
    assert missing.returncode == 1 and "no process 999999999" in missing.stderr


def test_installer_is_idempotent_and_the_unit_verifies(tmp_path):
    """scripts/install into temp paths, twice, the first time over a venv of the old layout
    (the venv was the prefix itself); systemd-analyze verify on the unit it wrote. Each run
    is a release of its own; old ones go unless a process runs from them."""
    # The prefix is reached through a symlink (as when /opt is one): /proc/PID/maps names
    # the real path, and a release in use must still be seen as such.
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    prefix, confdir, unitdir = tmp_path / "link" / "opt", tmp_path / "etc", tmp_path / "units"
    subprocess.run(["python3", "-m", "venv", "--without-pip", str(prefix)], check=True)
    args = [str(ROOT / "scripts" / "install"), "--prefix", str(prefix), "--confdir",
            str(confdir), "--unitdir", str(unitdir), "--no-user", "--no-systemctl"]
    first = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    assert (prefix / "bin.before-releases" / "python").exists()      # the old venv, aside
    (first_release,) = os.listdir(prefix / "releases")
    (confdir / "gwserver.toml").write_text((confdir / "gwserver.toml").read_text() +
                                           "\n# operator's edit\n")
    # Older releases: the one a process still has a file of mapped is kept, as are the
    # three newest complete ones; the rest go, and a failed one (no .installed) counts for
    # nothing.
    releases = prefix / "releases"
    for age, name in [(1, "0.0.9-a"), (2, "0.0.9-b"), (3, "0.0.9-c"), (4, "0.0.9-d"),
                      (0.5, "0.0.9-failed")]:
        (releases / name).mkdir()
        (releases / name / "lib.so").write_bytes(b"\0" * 4096)
        if name != "0.0.9-failed":
            (releases / name / ".installed").touch()
        os.utime(releases / name, (time.time() - 3600 * age,) * 2)
    holder = subprocess.Popen(["python3", "-c", (
        "import mmap, sys, time; f = open(sys.argv[1], 'rb'); "
        "m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ); print(1, flush=True); "
        "time.sleep(120)"), str(releases / "0.0.9-c" / "lib.so")], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"1\n"
        second = subprocess.run(args, capture_output=True, text=True, timeout=600)
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode == 0, second.stdout + second.stderr
    assert "kept release 0.0.9-c: a process still runs from it" in second.stdout
    kept = set(os.listdir(releases))
    (second_release,) = kept - {first_release, "0.0.9-a", "0.0.9-c"}
    assert os.readlink(prefix / "current") == f"releases/{second_release}"
    assert os.readlink(prefix / "bin") == "current/bin"
    # Going back, as docs/operations.md ("Upgrade") says, less sudo and the restart.
    ops = (ROOT / "docs" / "operations.md").read_text()
    rollback = re.search(r"```sh\n(ls -t /opt/gwserver/releases.*?)```", ops, re.S).group(1)
    rollback = re.sub(r"releases/0\.1\.0-\S+", f"releases/{first_release}", rollback.replace(
        "sudo ", "").replace(" && systemctl restart gwserver", "").replace("/opt/gwserver",
                                                                           str(prefix)))
    subprocess.run(["bash", "-euc", rollback], check=True, capture_output=True)
    assert os.readlink(prefix / "current") == f"releases/{first_release}"
    version = subprocess.run([str(prefix / "bin" / "gwserver"), "--version"],
                             capture_output=True, text=True)
    assert version.returncode == 0 and first_release in os.path.realpath(
        prefix / "bin" / "gwserver")
    assert "# operator's edit" in (confdir / "gwserver.toml").read_text()   # never overwritten
    unit = unitdir / "gwserver.service"
    text = unit.read_text()
    real_prefix = os.path.realpath(prefix)
    assert f"Environment=GWSERVER_CONF={confdir}/gwserver.toml" in text
    assert f"ExecStart={real_prefix}/bin/gwserver run -c ${{GWSERVER_CONF}}" in text
    assert "Type=notify" in text
    assert reload_lines(text) == [f"{real_prefix}/bin/gwserver reload -c ${{GWSERVER_CONF}} "
                                  f"--pid $MAINPID"]
    verify_unit(text, tmp_path / "gwserver.service")
    # The template of further instances: its own conf file and directories, nothing else.
    template = (unitdir / "gwserver@.service").read_text()
    assert f"Environment=GWSERVER_CONF={confdir}/%i.toml" in template
    for directory in ("RuntimeDirectory", "StateDirectory", "LogsDirectory"):
        assert f"\n{directory}=gwserver-%i\n" in template
    changed = [line for line in template.splitlines() if line not in text.splitlines()]
    assert len(changed) == 6, changed
    verify_unit(template, tmp_path / "gwserver@b.service")
    check = subprocess.run([str(prefix / "bin" / "gwserver"), "check", "-c",
                            str(confdir / "gwserver.toml")], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    # An install that fails (here: a requirement pip cannot find) leaves no release behind
    # and current where it was.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "*.egg-info",
                                                                 "build", "__pycache__"))
    setup = source / "setup.cfg"
    setup.write_text(setup.read_text().replace("    bcrypt>=4.1\n", "    bcrypt>=4.1\n"
                                                "    gwserver-no-such-requirement>=1\n"))
    before = set(os.listdir(releases))
    failed = subprocess.run([str(source / "scripts" / "install"), *args[1:]],
                            capture_output=True, text=True, timeout=600)
    assert failed.returncode != 0 and "pip could not install" in failed.stderr, failed.stderr
    assert set(os.listdir(releases)) == before
    assert os.readlink(prefix / "current") == f"releases/{first_release}"
    # A conf directory that cannot be made (a file is in the way): the same, and the paths
    # given are the caller's (relative to its directory, not to the source tree).
    (tmp_path / "blocked").write_text("")
    relative = [str(ROOT / "scripts" / "install"), "--prefix", os.path.relpath(prefix, tmp_path),
                "--confdir", "blocked", "--unitdir", "units", "--no-user", "--no-systemctl"]
    failed = subprocess.run(relative, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert failed.returncode != 0
    assert set(os.listdir(releases)) == before
    assert os.readlink(prefix / "current") == f"releases/{first_release}"
    assert not (ROOT / "blocked").exists() and not (ROOT / "link").exists()


def test_gwserver_reload_signals_no_process_a_stale_master_json_names(tmp_path):
    """A master.json left by a master that has gone (or written by someone else) may name a
    pid another process has now: a SIGHUP would kill most processes. Without --pid the
    named process must run gwserver."""
    state = tmp_path / "state"
    state.mkdir()
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        (state / "master.json").write_text(json.dumps({
            "pid": bystander.pid, "generation": 1, "reload_attempts": 0,
            "last_reload_attempt": "2026-01-01T00:00:00.000Z",
            "last_reload_successful": True}))
        conf = tmp_path / "gw.toml"
        conf.write_text(f'[server]\nstate_dir = "{state}"\n')
        run = subprocess.run([sys.executable, "-m", "gwserver", "reload", "-c", str(conf)],
                             capture_output=True, text=True, timeout=30)
        assert run.returncode == 1 and "is no gwserver master" in run.stderr, run
        time.sleep(0.2)
        assert bystander.poll() is None             # not signalled
    finally:
        bystander.kill()
        bystander.wait()
