"""Review r13 of e48bcb0 and 514bc6c, against real gateways, the real CLI and h2c upstreams
on loopback.

1. (e48bcb0) A new HTTP/2 connection's first request whose head is over 16 KiB waits for
   the upstream's SETTINGS (its header list size). An upstream that closes the connection
   without any (an HTTP/1-only server named h2c, a proxy that drops it) ended it with no
   stream open: nothing woke the waiting request, which sat pool_timeout (5 s) and was a
   503 "sent no HTTP/2 SETTINGS", where a small head got its 502 at once.
2. (e48bcb0) The 503 of a request that waited for a stream of an upstream whose SETTINGS
   say MAX_CONCURRENT_STREAMS 0 was logged as "sent no HTTP/2 SETTINGS".
3. (e48bcb0) `reload` compares through /proc/PID/root, but past it the kernel takes a
   symlink's absolute target in the caller's root: a master's conf named through one was
   compared with the shell's file of that name.

Checked, no defect: MessageEdges.feed (514bc6c) against 8c32239's per-byte one on streams of
0-300-byte messages split at every one and two positions, into 1-byte chunks and 20,000
random splits, as bytes, bytearray and memoryview: the same state after every chunk. Big
heads queued on one new connection all wake once its SETTINGS come (gevent's Event wakes
every waiter, a clear() after it notwithstanding: checked alone, not here); SETTINGS without
MAX_HEADER_LIST_SIZE count no head; a gRPC call's deadline bounds the wait; the health probe
has its own HTTP/2 exchange (small heads, not this path).
"""
import subprocess
import sys
import time

import h2.settings
import pytest

from ..conftest import gateway_conf, stop_process
from ..h2_upstreams import H2cUpstream
from .test_attack_pass_dec04b import get, h2_gateway, h2_scripts, status_of  # noqa: F401
from .test_h2_upstream_fields import answer_to
from .test_review_dec13i import gwserver, master_conf, serves, start_master


class NoSettingsUpstream(H2cUpstream):
    """Takes the connection, reads the client's preface and closes it: never a SETTINGS."""

    def __init__(self):
        self.connections = 0
        super().__init__()

    def connection(self, sock):
        self.connections += 1
        with sock:
            sock.settimeout(5)
            try:
                sock.recv(65536)
            except OSError:
                pass


def test_a_big_head_waiting_for_settings_fails_when_the_connection_closes(launcher):
    upstream = NoSettingsUpstream()
    try:
        gw = launcher.gateway(gateway_conf(
            [{"id": "h2", "paths": ["/h/*rest"], "upstream": {
                "targets": [{"url": f"http://127.0.0.1:{upstream.port}"}], "protocol": "h2"}}]))
        small = answer_to(gw.port, b"GET /h/a HTTP/1.1\r\nHost: gw\r\nConnection: close"
                                   b"\r\n\r\n")
        assert small.startswith(b"HTTP/1.1 502"), small[:300]
        # 30 fields of 700 bytes: about 22 KiB as RFC 9113 counts a head, over 16 KiB
        fields = b"".join(b"X-F-%02d: %s\r\n" % (i, b"v" * 700) for i in range(30))
        began = time.monotonic()
        big = answer_to(gw.port, b"GET /h/big HTTP/1.1\r\nHost: gw\r\n%sConnection: close"
                                 b"\r\n\r\n" % fields)
        took = time.monotonic() - began
        # before: a 503 after pool_timeout (5 s), "sent no HTTP/2 SETTINGS"
        assert big.startswith(b"HTTP/1.1 502"), (took, big[:300])
        assert took < 2.5, (took, big[:300])
    finally:
        upstream.close()


def test_no_concurrent_streams_is_not_told_as_no_settings(launcher, h2_scripts):
    """The upstream's SETTINGS lower MAX_CONCURRENT_STREAMS to 0 (RFC 9113 allows it: no
    new stream for now): a request waits pool_timeout for a stream, then is a 503, whose
    log said the upstream "sent no HTTP/2 SETTINGS in 0.5 s (a request head of 0 bytes
    waits for its header list size)": it had sent them, and the head had no limit to wait
    for."""
    def lower(link, conn, sid):
        with link.lock:
            conn.send_headers(sid, [(b":status", b"200"), (b"content-length", b"2")])
            conn.send_data(sid, b"ok", end_stream=True)
            conn.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 0})
            link.send()
    up = h2_scripts({b"/lower": lower})
    gw = h2_gateway(launcher, up, upstream_defaults={"pool_timeout": 0.5})
    answer, _ = get(gw.port, b"/lower")
    assert status_of(answer) == 200, answer[:300]
    answer, took = get(gw.port, b"/ok")
    assert status_of(answer) == 503 and took < 3, (took, answer[:300])
    assert up.connections == 1
    log = gw.log()
    assert "has no free HTTP/2 stream (it allows 0 at once)" in log, log[-2000:]
    # before: "... sent no HTTP/2 SETTINGS in 0.5 s (a request head of 0 bytes waits ...)"
    assert "sent no HTTP/2 SETTINGS" not in log, log[-2000:]


def test_reload_of_a_master_whose_conf_is_an_absolute_symlink_in_its_namespace(launcher,
                                                                               upstream):
    """`gwserver run -c link.toml`, link.toml an absolute symlink to view.toml, in a mount
    namespace where view.toml is served.toml bound over it. Through /proc/PID/root the
    kernel takes a symlink's absolute target in the caller's root, not the master's: the
    comparison found the host's view.toml. `reload -c served.toml` (the master's file) was
    refused, and `reload -c view.toml` (a copy no process reads) said `reload complete`."""
    if subprocess.run(["unshare", "-Urm", "true"], capture_output=True).returncode:
        pytest.skip("no user and mount namespaces here (unshare -Urm)")
    tmp = launcher.tmp_dir
    text, port = master_conf(launcher, upstream)
    served, view, link = tmp / "served.toml", tmp / "view.toml", tmp / "link.toml"
    served.write_text(text)
    view.write_text("# the host's own copy: the master never reads it\n")
    link.symlink_to(view)       # absolute
    proc, log_path = start_master(
        launcher, f'exec unshare -Urm --propagation private sh -c \'mount --bind "{served}" '
                  f'"{view}" && exec "{sys.executable}" -m gwserver run -c "{link}"\'', port)
    try:
        view.write_text(view.read_text() + "# an edit\n")
        run = gwserver("reload", "-c", str(view), "--pid", str(proc.pid), "--timeout", "5")
        # before: exit 0, "reload complete: generation 2" of an edit no process read
        assert run.returncode == 1 and "nothing was signalled" in run.stderr, run
        served.write_text(served.read_text().replace('"/a"', '"/b"'))
        run = gwserver("reload", "-c", str(served), "--pid", str(proc.pid), "--timeout", "20")
        assert run.returncode == 0, (run, log_path.read_text()[-1500:])
        assert serves(port, b"/b")
    finally:
        assert stop_process(proc) == 0, log_path.read_text()[-1500:]
