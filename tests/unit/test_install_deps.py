"""scripts/install-deps with apt-get, dpkg-query and systemctl replaced by stubs on PATH: which
services it stops, and what it says when an install fails."""
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def stub(path, body):
    path.write_text("#!/usr/bin/env bash\n" + textwrap.dedent(body))
    path.chmod(0o755)


def run_install_deps(tmp_path, installed_before, apt_installs, apt_status):
    """``apt_installs``: the packages the stub apt-get sets up before it exits with
    ``apt_status``. Returns (completed process, systemctl calls)."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "install-deps", tmp_path / "scripts" / "install-deps")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    state = tmp_path / "installed"
    state.write_text("".join(f"{pkg}\n" for pkg in installed_before))
    calls = tmp_path / "systemctl-calls"
    stub(bin_dir / "dpkg-query", f"""\
        pkg="${{@: -1}}"
        grep -qx "$pkg" {state} && echo -n "install ok installed"
        """)
    stub(bin_dir / "apt-get", f"""\
        [[ "$1" == update ]] && exit 0
        printf '%s\\n' {' '.join(apt_installs)} >> {state}
        exit {apt_status}
        """)
    stub(bin_dir / "systemctl", f"""\
        echo "$*" >> {calls}
        exit 0
        """)
    done = subprocess.run(["bash", str(tmp_path / "scripts" / "install-deps")],
                          env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
                          capture_output=True, text=True, timeout=60)
    said = calls.read_text().splitlines() if calls.exists() else []
    return done, said


def test_a_failed_install_still_stops_the_services_it_started(tmp_path):
    everything_but_redis = ["python3", "python3-venv", "python3-dev", "gcc", "procps",
                            "ca-certificates", "etcd-server", "etcd-client", "nginx-light",
                            "wrk", "nghttp2-client", "util-linux", "prometheus", "systemd"]
    # nginx-light came, and Debian started it; redis-server did not (a download failed)
    done, calls = run_install_deps(tmp_path, [p for p in everything_but_redis
                                              if p != "nginx-light"],
                                   ["nginx-light"], apt_status=100)
    assert done.returncode == 100
    assert "apt-get could not install: redis-server nginx-light" in done.stderr
    assert "disable --now --quiet nginx" in calls
    # redis-server is not installed: nothing of it to stop; nothing was there before either
    assert not [call for call in calls if "redis" in call or "etcd" in call]


def test_only_the_services_of_packages_installed_now_are_stopped(tmp_path):
    venv = tmp_path / ".venv" / "bin"
    venv.mkdir(parents=True)
    for tool in ("python", "pip", "gwserver"):
        stub(venv / tool, "exit 0\n")
    before = ["python3", "python3-venv", "python3-dev", "gcc", "procps", "ca-certificates",
              "etcd-client", "nginx-light", "wrk", "nghttp2-client", "util-linux",
              "prometheus", "systemd"]
    done, calls = run_install_deps(tmp_path, before, ["redis-server", "etcd-server"],
                                   apt_status=0)
    assert done.returncode == 0, done.stderr
    disabled = sorted(call.split()[-1] for call in calls if call.startswith("disable"))
    assert disabled == ["etcd", "redis-server"]     # nginx and prometheus were there before
