"""Review r11 of d8d7984, b2b4618, fcceab8, 9715c9e and aaf1b32, against real gateways, the
real CLI and h2c upstreams on loopback.

1. (d8d7984) `gwserver reload -c FILE --pid PID` refuses when FILE is not the master's conf,
   compared with os.path.samefile against the path master.json names. That path is the
   master's: in its mount namespace (a systemd unit with BindReadOnlyPaths=, a container),
   where the same name may be another file than in the operator's shell. The refusal said
   "the master reloads VIEW, not FILE" of the very file the master would have read again.
   And master.json named the master's path as os.path.abspath made it, which takes a ".."
   off as text: `-c current/../gw.toml`, current a symlink, named a copy beside it.
2. (aaf1b32) A request head over an HTTP/2 upstream's SETTINGS_MAX_HEADER_LIST_SIZE is
   answered 431 and not sent, once the upstream's SETTINGS came. A new connection sends its
   first request before them (h2 knows no limit yet): the head went out, the upstream ended
   the connection, and the client got a 502, counted as the target's failure.

Checked, no defect: reload -c through a symlink, a relative path from another directory, a
conf renamed over by an editor, the systemd unit's ExecReload (--pid $MAINPID); b2b4618's
resumption (test_tls_tickets.py and test_tls_attack_dec13d.py pass: TLS 1.3 tickets across
workers, reloads and hosts) and a first entry with no DNS name answering unknown names;
fcceab8/9715c9e's series for a split's upstream (retries), a conf-file consumer, limits and
route "none"; a 431 to a gRPC call (RESOURCE_EXHAUSTED by GRPC_CODES) and to an HTTP/1.1
client with a body unread (Connection: close).
"""
import subprocess
import sys

import pytest

from ..conftest import free_port, gateway_conf, stop_process, to_toml, wait_for_port
from .test_h2_upstream_fields import answer_to
from .test_review_dec13f import HeldUpstream, big_head


def gwserver(*args):
    return subprocess.run([sys.executable, "-m", "gwserver", *args], capture_output=True,
                          text=True, timeout=60)


def master_conf(launcher, upstream):
    """A gateway's conf (route /a) on free ports, as the Launcher writes one; -> (conf, port)."""
    port = free_port()
    conf = gateway_conf([{"id": "a", "paths": ["/a"], "upstream": {
        "targets": [{"url": upstream.url}]}}])
    conf["server"]["bind"] = [f"127.0.0.1:{port}"]
    conf["server"]["state_dir"] = str(launcher.tmp_dir / f"state-{port}")
    conf["admin"] = {"bind": f"127.0.0.1:{free_port()}"}
    return to_toml(conf), port


def start_master(launcher, command, port):
    """``command`` (a shell line that execs `gwserver run`) in the launcher's directory, in
    its own session, stopped by the launcher as its gateways are; -> (process, log path)."""
    log_path = launcher.tmp_dir / f"master-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(["sh", "-c", command], stdout=log, stderr=subprocess.STDOUT,
                                cwd=launcher.tmp_dir, start_new_session=True)
    launcher.started.append(proc)
    wait_for_port(port, proc=proc, log_path=log_path)
    return proc, log_path


def serves(port, path):
    return answer_to(port, b"GET %s HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
                     % path).startswith(b"HTTP/1.1 200")


def test_reload_of_the_file_a_master_in_its_own_mount_namespace_reads(launcher, upstream):
    """The master runs in a mount namespace of its own where view.toml is served.toml,
    bound over it (systemd's BindReadOnlyPaths=served.toml:view.toml); in the operator's
    shell view.toml is another file. `reload -c served.toml --pid PID` names the file the
    master reads again: it must be signalled, and the edit applied."""
    if subprocess.run(["unshare", "-Urm", "true"], capture_output=True).returncode:
        pytest.skip("no user and mount namespaces here (unshare -Urm)")
    tmp = launcher.tmp_dir
    text, port = master_conf(launcher, upstream)
    served, view = tmp / "served.toml", tmp / "view.toml"
    served.write_text(text)
    view.write_text("# the host's own copy: the master never reads it\n")
    proc, log_path = start_master(
        launcher, f'exec unshare -Urm --propagation private sh -c \'mount --bind "{served}" '
                  f'"{view}" && exec "{sys.executable}" -m gwserver run -c "{view}"\'', port)
    try:
        assert not serves(port, b"/b")
        served.write_text(served.read_text().replace('"/a"', '"/b"'))
        run = gwserver("reload", "-c", str(served), "--pid", str(proc.pid), "--timeout", "20")
        # before: "the master reloads .../view.toml, not .../served.toml ... nothing was
        # signalled", exit 1
        assert run.returncode == 0, (run, log_path.read_text()[-1500:])
        assert "reload complete: generation 2" in run.stdout, run
        assert serves(port, b"/b")
        # The host's copy is not the master's file, though its name is: refused, nothing
        # signalled (before: signalled, and `reload complete` of an edit no process read).
        view.write_text(view.read_text() + "# an edit\n")
        run = gwserver("reload", "-c", str(view), "--pid", str(proc.pid), "--timeout", "5")
        assert run.returncode == 1 and "nothing was signalled" in run.stderr, run
        assert "in the master's mount namespace" in run.stderr, run.stderr
    finally:
        assert stop_process(proc) == 0, log_path.read_text()[-1500:]


def test_reload_of_a_conf_named_through_a_symlink_and_dotdot(launcher, upstream):
    """`gwserver run -c current/../gw.toml`, current a symlink to releases/7: the master
    reads releases/gw.toml (the kernel takes .. after the link), but master.json named
    ./gw.toml (os.path.abspath takes .. off as text), another copy. So `reload -c
    releases/gw.toml` was refused, and `reload -c gw.toml`, the copy, said `reload
    complete` of an edit no process read."""
    tmp = launcher.tmp_dir
    text, port = master_conf(launcher, upstream)
    (tmp / "releases" / "7").mkdir(parents=True)
    (tmp / "current").symlink_to(tmp / "releases" / "7")
    real, copy = tmp / "releases" / "gw.toml", tmp / "gw.toml"
    real.write_text(text)
    copy.write_text(text)
    proc, log_path = start_master(
        launcher, f'exec "{sys.executable}" -m gwserver run -c current/../gw.toml', port)
    try:
        real.write_text(text.replace('"/a"', '"/b"'))
        run = gwserver("reload", "-c", str(real), "--timeout", "20")
        # before: "the master reloads .../gw.toml, not .../releases/gw.toml", exit 1
        assert run.returncode == 0 and "reload complete: generation 2" in run.stdout, run
        assert serves(port, b"/b")
        copy.write_text(text.replace('"/a"', '"/c"'))
        run = gwserver("reload", "-c", str(copy), "--timeout", "5")
        # before: signalled, `reload complete: generation 3`, and /c served nowhere
        assert run.returncode == 1 and "nothing was signalled" in run.stderr, run
    finally:
        assert stop_process(proc) == 0, log_path.read_text()[-1500:]


def test_a_big_request_head_as_a_new_connections_first_request_is_a_431(launcher):
    """The first request of a new HTTP/2 connection goes out before the upstream's SETTINGS
    (no limit known then): a head over its SETTINGS_MAX_HEADER_LIST_SIZE reached h2's server,
    which ended the connection: a 502, booked as the target's failure."""
    upstream = HeldUpstream()
    try:
        gw = launcher.gateway(gateway_conf(
            [{"id": "h2", "paths": ["/h/*rest"], "upstream": {
                "targets": [{"url": f"http://127.0.0.1:{upstream.port}"}], "protocol": "h2"}}]))
        big = answer_to(gw.port, b"GET /h/big HTTP/1.1\r\nHost: gw\r\n%sConnection: close"
                                 b"\r\n\r\n" % big_head())
        # before: 502 (the upstream ended the connection)
        assert big.startswith(b"HTTP/1.1 431"), big[:300]
        assert answer_to(gw.port, b"GET /h/a HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
                         ).startswith(b"HTTP/1.1 200")
        assert upstream.connections == 1        # the same connection serves on
    finally:
        upstream.close()
