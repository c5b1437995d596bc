r"""Review of 8640ab4 (a retired unix: listener's own file unlinked; split_runs's bounded
runs and narrowing), Dec 11.

- The narrowing of a run's characters to what the parts after it take went on past the
  first part: ``^/(.*)/edit/(.*)/edit/(.*)\.json$``'s first run was narrowed to "/" and then
  cut off by the "e" of "edit", though ``.*`` takes an "e". check counted 1 run, said
  nothing, and a near miss ("/edit/" over and over) took 0.2 s for 2 KB, 2 s for 4 KB,
  ~16 s for 8 KB: cubic, as before the narrowing it was warned of.
- A master's stop left unix: socket files to gunicorn, which unlinks every path it listens
  on by name: a file removed by hand meanwhile ended the stop in a FileNotFoundError (exit
  status 1, the workers never told to stop), and another socket bound at the path since
  was unlinked, though retiring a listener now removes only the file it bound."""
import os
import re
import signal
import socket
import time

import pytest

from gwserver.core.schema import split_runs

from ..conftest import check_conf, route as make_route
from .test_unix_peers_dec06y import conf_with, unix_get

EDIT = r"^/(.*)/edit/(.*)/edit/(.*)\.json$"


def test_check_warns_of_runs_that_cross_a_word_after_them(upstream, tmp_path):
    started = time.monotonic()
    assert re.search(EDIT, "/" + "/edit/" * 340) is None      # a near miss of 2 KB
    assert time.monotonic() - started > 0.05                    # (4 KB: 8x, 8 KB: 64x)
    route = make_route("r", ["/docs"], upstream.url, prefix=True,
                       plugins={"rewrite": {"path": {"match": EDIT, "replace": "/x"}}})
    code, out = check_conf(tmp_path, {"server": {"bind": ["127.0.0.1:8080"]},
                                      "routes": [route]})
    assert code == 0, out
    assert "has 3 runs in a row that can take the same characters" in out, out


@pytest.mark.parametrize("pattern, runs", [
    (EDIT, 3),
    (r"^/api/(.*)-x(.*)-x(.*)\.json$", 3),       # 3 KB of "-x": 7 s
    (r"^/docs/(.*)/edit/(.*)\.json$", 2),
    # the slug 8640ab4 stopped warning of stays unwarned; ten common rewrites too
    (r"^/product/(.*)-(\d+)\.html$", 1),
    (r"^/api/v1/(.*)$", 0),
    (r"^/old/(.*)$", 0),
    (r"^/users/(\d+)/profile$", 1),
    (r"^/static/(.+)\.(css|js)$", 1),
    (r"^/blog/(\d{4})/(\d{2})/(.+)$", 0),
    (r"^/(.*)/$", 1),
    (r"^/v(\d+)/(.*)$", 1),
    (r"^/images/([^/]+)/(.*)\.(png|jpg)$", 1),
    (r"^/(en|fr|de)/(.*)$", 0),
    (r"^/docs/(.*)\.html$", 1),
])
def test_a_run_is_cut_off_only_by_what_it_cannot_take_itself(pattern, runs):
    assert split_runs(pattern, True) == runs


def stop_with_socket_file(launcher, upstream, tmp_path, replace):
    """A gateway on unix:PATH whose file is removed (and, ``replace``, bound by another
    socket) before a TERM: (the master's exit status, its log, whether PATH is there)."""
    path = tmp_path / "gw.sock"
    gw = launcher.gateway(conf_with(upstream, ["unix:"]), extra_binds=[f"unix:{path}"])
    assert unix_get(path, b"X-Forwarded-For: 203.0.113.7\r\n")[0] == 200
    os.unlink(path)
    other = socket.socket(socket.AF_UNIX)
    try:
        if replace:
            other.bind(str(path))
            other.listen(1)
        os.kill(gw.pid, signal.SIGTERM)
        code = gw.proc.wait(timeout=20)
        return code, gw.log(), os.path.exists(path)
    finally:
        other.close()


def test_a_stop_after_the_socket_file_was_removed_by_hand_is_clean(launcher, upstream,
                                                                    tmp_path):
    code, log, _ = stop_with_socket_file(launcher, upstream, tmp_path, replace=False)
    assert "FileNotFoundError" not in log, log[-2000:]
    assert code == 0, log[-2000:]


def test_a_stop_leaves_a_socket_file_bound_since_by_another(launcher, upstream, tmp_path):
    code, log, there = stop_with_socket_file(launcher, upstream, tmp_path, replace=True)
    assert code == 0, log[-2000:]
    assert there, "the stop unlinked another socket's file"
