"""A new operator's first day (pass o1): the README's and docs/operations.md's commands, run with
the mistakes a newcomer makes, against real gateways and the real CLI.

- `gwserver reload -c COPY` beside a master started on another file: it signalled the master,
  which read its own file again, and said `reload complete` (exit 0) of an edit no process read.
- `gwserver demo-upstream` on a port already taken: a traceback, which `scripts/demo` scrolled
  away under the gateway's start (every request then a 502).
- A key written above its section's header or under the wrong one: `unknown key` and the list of
  the section's keys, never where it belongs; the same line in a refused reload.
- `gwserver check gwserver.toml` (the file without -c): `unrecognized arguments`, no more.
- `gwserver reload` of a stopped gateway: "process N ... is no gwserver master ... (give --pid)".
- A conf saved with a UTF-8 byte order mark: "Invalid statement (at line 1, column 1)".
"""
import os
import signal
import socket
import subprocess
import sys

from ..conftest import free_port, gateway_conf, route, stop_process, wait_until


def gwserver(*args, **kwargs):
    kwargs.setdefault("timeout", 60)
    return subprocess.run([sys.executable, "-m", "gwserver", *args], capture_output=True,
                          text=True, **kwargs)


def test_reload_of_another_copy_of_the_conf_signals_nothing_and_names_the_masters_file(
        launcher, upstream, tmp_path):
    gw = launcher.gateway(gateway_conf([route("a", ["/a"], upstream.url)]))
    copy = tmp_path / "edited.toml"
    copy.write_text(gw.conf_path.read_text().replace('"/a"', '"/b"'))
    run = gwserver("reload", "-c", str(copy))
    assert run.returncode == 1, run
    assert f"the master reloads {gw.conf_path}, not {copy}" in run.stderr, run.stderr
    assert "nothing was signalled" in run.stderr
    assert "reload complete" not in run.stdout
    assert gw.request("GET", "/b")[0].status == 404         # the copy serves nowhere
    assert "Handling signal: hup" not in gw.log()
    # The master's own file, by another spelling of its path (a symlink), is that file.
    link = tmp_path / "link.toml"
    link.symlink_to(gw.conf_path)
    run = gwserver("reload", "-c", str(link))
    assert run.returncode == 0 and "reload complete: generation 2" in run.stdout, run
    assert gw.request("GET", "/a")[0].status == 200


def test_demo_upstream_on_a_taken_port_says_so_without_a_traceback(tmp_path):
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        run = gwserver("demo-upstream", "--port", str(port), timeout=15)
    assert run.returncode == 1, run
    assert "Traceback" not in run.stderr, run.stderr
    assert f"demo-upstream: cannot listen on 127.0.0.1:{port}: Address already in use" \
        in run.stderr, run.stderr


def test_a_key_in_the_wrong_section_is_named_with_the_section_it_belongs_to(launcher,
                                                                           upstream):
    gw = launcher.gateway(gateway_conf([route("a", ["/a"], upstream.url)]))
    good = gw.conf_path.read_text()
    # `workers` above every header, and an upstream timeout under [server].
    gw.conf_path.write_text("workers = 2\n" + good.replace("[server]\n",
                                                           "[server]\nread_timeout = 3\n", 1))
    check = gwserver("check", "-c", str(gw.conf_path))
    assert check.returncode == 2, check
    assert "workers: unknown key (known: server, " in check.stderr
    assert "; it is a setting of [server]\n" in check.stderr, check.stderr
    assert "server.read_timeout: unknown key" in check.stderr
    assert "; it is a setting of [upstream_defaults]\n" in check.stderr, check.stderr
    # The edit, then a reload: refused, the log says why and where the key goes, and the
    # previous configuration serves on.
    run = gwserver("reload", "-c", str(gw.conf_path))
    assert run.returncode == 1, run
    assert "it is a setting of [upstream_defaults]" in run.stderr, run.stderr
    wait_until(lambda: "reload refused: server.read_timeout: unknown key" in gw.log(),
               timeout=5)
    assert "it is a setting of [upstream_defaults]" in gw.log()
    assert gw.request("GET", "/a")[0].status == 200


def test_a_conf_file_given_without_c_is_told_to_come_as_the_option(tmp_path):
    """`gwserver check gwserver.toml` (promtool's and haproxy's spelling) is refused, as
    before, and now says how the file is given; a first `-c` taken, a stray word is not."""
    conf = tmp_path / "gw.toml"
    conf.write_text('[server]\nbind = ["127.0.0.1:1"]\n')
    for command in ("check", "run", "reload"):
        run = gwserver(command, str(conf), timeout=15)
        assert run.returncode == 2, run
        assert f"unrecognized arguments: {conf} (the conf file is an option: -c {conf})" \
            in run.stderr, run.stderr
    run = gwserver("check", "-c", str(conf), "extra", timeout=15)
    assert run.returncode == 2 and "unrecognized arguments: extra\n" in run.stderr, run.stderr
    # the default path given with -c is given all the same (r11: it was told "-c extra")
    for given in (["-c", "/etc/gwserver/gwserver.toml"], ["--conf=/etc/gwserver/gwserver.toml"]):
        run = gwserver("check", *given, "extra", timeout=15)
        assert run.returncode == 2 and "unrecognized arguments: extra\n" in run.stderr, \
            run.stderr


def test_reload_of_a_stopped_gateway_says_it_is_not_running(launcher, upstream):
    """A stopped master leaves its master.json: `gwserver reload` then said `process N ...
    is no gwserver master (it holds no instance lock that names it) ... (give --pid)`, of a
    process that did not exist, and sent the newcomer looking for a pid."""
    gw = launcher.gateway(gateway_conf([route("a", ["/a"], upstream.url)]))
    assert stop_process(gw.proc) == 0
    run = gwserver("reload", "-c", str(gw.conf_path), timeout=15)
    assert run.returncode == 1, run
    assert f"no running master found: master {gw.pid}, which master.json in " in run.stderr, \
        run.stderr
    assert f"has exited (the gateway is not running: start it with gwserver run -c " \
           f"{gw.conf_path}); nothing was signalled" in run.stderr, run.stderr


def test_a_conf_saved_with_a_byte_order_mark_is_named_so(launcher, upstream):
    """Saved as "UTF-8 with BOM" (Notepad's, some editors'): TOML refuses it, and `check` and
    the master's log said `Invalid statement (at line 1, column 1)` of a line that reads as
    right. A SIGHUP with such a file keeps the previous configuration serving."""
    gw = launcher.gateway(gateway_conf([route("a", ["/a"], upstream.url)]))
    good = gw.conf_path.read_text()
    gw.conf_path.write_bytes(b"\xef\xbb\xbf" + good.replace('"/a"', '"/b"').encode())
    said = "not valid TOML: it begins with a UTF-8 byte order mark (an editor's \"UTF-8 " \
           "with BOM\"): save it as plain UTF-8"
    check = gwserver("check", "-c", str(gw.conf_path), timeout=15)
    assert check.returncode == 2 and said in check.stderr, check.stderr
    os.kill(gw.pid, signal.SIGHUP)
    wait_until(lambda: "reload refused: " in gw.log(), timeout=5)
    assert f"reload refused: {gw.conf_path}: {said}" in gw.log(), gw.log()[-1500:]
    assert gw.request("GET", "/a")[0].status == 200
    assert gw.request("GET", "/b")[0].status == 404
