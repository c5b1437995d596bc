"""README's first command, `scripts/demo`, when its demo upstream cannot start (port 9001 taken
by an earlier demo still running): the gateway started anyway in the foreground and answered
every request 502, the demo upstream's one-line error scrolled away above its start.

The script runs in a copy of its tree whose ports are moved to free ones, as
test_operator.py's demo test does; here the copy's `scripts/install-deps` does nothing and its
`.venv/bin/gwserver` runs this interpreter's gwserver (that test covers the install)."""
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from ..conftest import free_port, stop_process

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def demo_tree(tmp_path, port, admin, demo):
    tree = tmp_path / "tree"
    for name in ("scripts/demo", "conf/gwserver.toml"):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        text = open(os.path.join(ROOT, name)).read()
        (tree / name).write_text(text.replace("127.0.0.1:8080", f"127.0.0.1:{port}")
                                 .replace("127.0.0.1:9180", f"127.0.0.1:{admin}")
                                 .replace("9001", str(demo)))
    shutil.copymode(os.path.join(ROOT, "scripts/demo"), tree / "scripts/demo")
    (tree / "scripts/install-deps").write_text("#!/bin/sh\nexit 0\n")
    (tree / ".venv/bin").mkdir(parents=True)
    (tree / ".venv/bin/gwserver").write_text(
        f"#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m gwserver \"$@\"\n")
    for name in ("scripts/install-deps", ".venv/bin/gwserver"):
        os.chmod(tree / name, 0o755)
    return tree


def answers(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.mark.parametrize("taken_by, says", [
    # an earlier demo upstream, still running
    ("listener", "something already listens on 127.0.0.1:{demo}"),
    # bound, not listening (a client's port): nothing answers there, and the demo upstream's
    # bind fails all the same
    ("bound socket", "the demo upstream did not start (its error is above)"),
])
def test_the_demo_starts_no_gateway_when_its_upstream_cannot_listen(tmp_path, taken_by, says):
    port, admin, demo = free_port(), free_port(), free_port()
    tree = demo_tree(tmp_path, port, admin, demo)
    earlier = socket.socket()
    earlier.bind(("127.0.0.1", demo))
    if taken_by == "listener":
        earlier.listen(8)
    (tmp_path / "run").mkdir()
    log = tmp_path / "demo.log"
    proc = subprocess.Popen([str(tree / "scripts/demo")], cwd=tree,
                            env={**os.environ, "RUNTIME_DIRECTORY": str(tmp_path / "run")},
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            assert not answers(port), "the gateway started:\n" + log.read_text()[-2000:]
            time.sleep(0.2)
        assert proc.returncode == 1, log.read_text()[-2000:]
        text = log.read_text()
        assert says.format(demo=demo) in text, text
        assert "the gateway is not started" in text or \
            "the demo upstream and the gateway are not started" in text, text
        assert not answers(port)
    finally:
        earlier.close()
        stop_process(proc)
