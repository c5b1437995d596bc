r"""Review of 48d274a/b0a9b14 (a retired unix: listener's file unlinked) and 5abf565
(split_runs), Dec 11.

- A reload that names a unix: listener's file by another path (/var/run -> /run, a symlinked
  folder) binds a fresh listener there (gunicorn removes the old socket file first), then
  retires the old one: its unlink removed the fresh listener's file, and every connect to
  the new listener failed (ENOENT) until the next start. And a reload that retired a unix
  socket systemd passed in (socket activation) unlinked the socket unit's file: gunicorn
  leaves it under systemd.
- A run the next part cannot continue (``(.*)-(\d+)\.html``, an SEO slug's id) splits a
  near miss one way per dash, linear, yet check warned of it as ~n^2.
- Bounded runs (``.{0,1000}``) split a near miss every way as unbounded ones do, within their
  bound: three took minutes on a 3 KB path, and check said nothing."""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from ..conftest import (Gateway, check_conf, free_port, route as make_route, to_toml,
                        wait_until)
from .test_reload_listeners import reload
from .test_unix_peers_dec06y import conf_with, unix_get


def test_a_reload_that_names_a_unix_socket_file_anew_leaves_the_fresh_file(launcher, upstream):
    folder = tempfile.mkdtemp(prefix="gw-r3-")      # short: a unix path holds 107 bytes
    try:
        real = os.path.join(folder, "real")
        os.mkdir(real)
        os.symlink(real, os.path.join(folder, "link"))
        old, new = os.path.join(real, "gw.sock"), os.path.join(folder, "link", "gw.sock")
        gw = launcher.gateway(conf_with(upstream, ["unix:"]), extra_binds=[f"unix:{old}"])
        assert unix_get(old, b"X-Forwarded-For: 203.0.113.7\r\n")[0] == 200

        def rename(conf):
            conf["server"]["bind"] = [f"unix:{new}" if b == f"unix:{old}" else b
                                      for b in conf["server"]["bind"]]
        reload(gw, rename)
        assert "closing listener unix:" in gw.log(), gw.log()[-2000:]
        assert os.path.exists(new), "the fresh listener's socket file was unlinked"
        assert unix_get(new, b"X-Forwarded-For: 203.0.113.7\r\n")[0] == 200
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_reload_that_drops_a_unix_socket_from_systemd_leaves_its_file(launcher, upstream):
    """Socket activation: the file is the socket unit's (gunicorn never unlinks under
    systemd). Unlinked by the reload, the unit's socket took no connect until restarted."""
    folder = tempfile.mkdtemp(prefix="gw-r3-")
    unit = socket.socket(socket.AF_UNIX)
    try:
        path = os.path.join(folder, "gw.sock")
        unit.bind(path)
        unit.listen(16)
        conf = conf_with(upstream, ["unix:"])
        conf["server"].update(bind=[f"unix:{path}"], state_dir=f"{folder}/state")
        conf["admin"] = {"bind": f"127.0.0.1:{free_port()}"}
        conf_path = launcher.tmp_dir / "systemd.toml"
        conf_path.write_text(to_toml(conf))
        log_path = launcher.tmp_dir / "systemd.log"
        with open(log_path, "wb") as log:
            # as systemd starts a service: its socket as fd 3, LISTEN_PID the service's pid
            proc = subprocess.Popen(
                ["bash", "-c", 'exec 3<&"$UNIT_FD"; LISTEN_PID=$$ LISTEN_FDS=1 exec "$@"', "sh",
                 sys.executable, "-m", "gwserver", "run", "-c", str(conf_path)],
                env={**os.environ, "UNIT_FD": str(unit.fileno())}, pass_fds=[unit.fileno()],
                stdout=log, stderr=subprocess.STDOUT, cwd=launcher.tmp_dir,
                start_new_session=True)
        launcher.started.append(proc)
        gw = Gateway(proc, None, conf_path, log_path)
        gw.conf = conf

        def served():
            try:
                return unix_get(path, b"X-Forwarded-For: 203.0.113.7\r\n")[0] == 200
            except OSError:
                return False
        wait_until(served, timeout=20)
        port = free_port()

        def to_tcp(conf):
            conf["server"]["bind"] = [f"127.0.0.1:{port}"]
        reload(gw, to_tcp)
        assert "closing listener unix:" in gw.log(), gw.log()[-2000:]
        assert os.path.exists(path), "the socket unit's file was unlinked by the reload"
    finally:
        unit.close()
        shutil.rmtree(folder, ignore_errors=True)


BOUNDED = r"^/a/(.{0,1000})-(.{0,1000})-(.{0,1000})\.json$"


def test_check_warns_of_bounded_runs_that_split_a_near_miss_every_way(upstream, tmp_path):
    import re
    started = time.monotonic()
    re.search(BOUNDED, "/a/" + "-" * 400)       # a near miss of 400 bytes
    assert time.monotonic() - started > 0.02    # (3 KB: 400x as long, ~minutes)
    route = make_route("r", ["/a"], upstream.url, prefix=True,
                       plugins={"rewrite": {"path": {"match": BOUNDED, "replace": "/x"}}})
    code, out = check_conf(tmp_path, {"server": {"bind": ["127.0.0.1:8080"]},
                                      "routes": [route]})
    assert code == 0, out
    assert "has 3 runs in a row that can take the same characters" in out, out
    # a short bound costs nothing: not warned of
    route["plugins"]["rewrite"]["path"]["match"] = r"^/([a-z]{2})-([a-z]{0,8})/(.*)\.json$"
    code, out = check_conf(tmp_path, {"server": {"bind": ["127.0.0.1:8080"]},
                                      "routes": [route]})
    assert code == 0 and "runs in a row" not in out, out


SLUG = r"^/product/(.*)-(\d+)\.html$"     # an SEO slug's id: "/product/blue-shoe-123.html"


def test_check_does_not_warn_of_a_slug_whose_runs_cannot_overlap(upstream, tmp_path):
    """The digits after each dash are a stretch of their own: a near miss is tried one way
    per dash, linear, yet check warned of "2 runs ... 0.3 s for 8 KB"."""
    import re
    for near_miss in ("-1" * 4000, "-" + "1" * 8000, "-" * 8000, "1-" * 4000):
        started = time.monotonic()
        assert re.search(SLUG, "/product/" + near_miss) is None
        assert time.monotonic() - started < 0.05, near_miss[:8]
    route = make_route("r", ["/product"], upstream.url, prefix=True,
                       plugins={"rewrite": {"path": {"match": SLUG, "replace": "/p/$2"}}})
    code, out = check_conf(tmp_path, {"server": {"bind": ["127.0.0.1:8080"]},
                                      "routes": [route]})
    assert code == 0 and "runs in a row" not in out, out
