"""Review of e67e110 and ee26c2c (r16), against real gateways.

1. e67e110 turned a SystemExit raised in a plugin's phase into a 500 (PluginExit) naming the
   plugin. But a worker's own stop is a SystemExit too: the master stops a worker that sent
   no heartbeat for server.timeout with SIGABRT, and gunicorn's handler calls sys.exit(1)
   in whatever greenlet runs: the one stuck in the plugin. That exit was caught as the
   plugin's: the client got a 500, the log blamed the plugin for a sys.exit(1) it never
   called, and the stuck worker did not exit at once as the abort means (it drained on).
   The worker's own exit now goes through (the requests it held are cut, as the master's
   log line says); a plugin's own sys.exit() is still a 500.
"""
import socket
import time

import pytest

from ..conftest import gateway_conf, installed_plugin, route, wait_until

SPINNER = '''
import time

from gwserver.core.schema import Schema

NAME = "spinner"
PRIORITY = 10
SCHEMA = Schema()


def _spin(ctx):
    if ctx.header("X-Spin") is None:
        return
    end = time.monotonic() + 8        # stuck, never yielding to gevent: no heartbeat
    while time.monotonic() < end:
        pass


def access(conf, ctx):
    if ctx.header("X-Spin") == "access":
        _spin(ctx)


def finish(conf, ctx, status):
    if ctx.header("X-Spin") == "finish":
        _spin(ctx)
'''


@pytest.fixture(scope="module")
def site_env(tmp_path_factory):
    return installed_plugin(tmp_path_factory.mktemp("r16"), "gwreview16", SPINNER,
                            "spinner = gwreview16\n")


def raw_answer(port, data, timeout=15):
    """What the gateway sent back until it closed (b"" for a cut connection)."""
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        try:
            while True:
                piece = sock.recv(65536)
                if not piece:
                    break
                got += piece
        except ConnectionResetError:
            pass
    return got


@pytest.mark.parametrize("phase", ["access", "finish"])
def test_a_worker_aborted_for_its_silence_is_no_plugins_sys_exit(launcher, site_env, phase):
    echo = launcher.upstream("echo")
    gw = launcher.gateway(gateway_conf(
        [route("spin", ["/echo/spin"], echo.url, plugins={"spinner": True})],
        server={"timeout": 1}), env=site_env)
    workers = gw.worker_pids()
    started = time.monotonic()
    got = raw_answer(gw.port, b"GET /echo/spin HTTP/1.1\r\nHost: h\r\nConnection: close\r\n"
                              b"X-Spin: " + phase.encode() + b"\r\n\r\n")
    wait_until(lambda: "sent no heartbeat" in gw.log(), timeout=10)
    wait_until(lambda: set(gw.worker_pids()) - set(workers), timeout=10)
    log = gw.log()
    # the master's abort is the worker's exit, not the plugin's sys.exit(1)
    assert "called sys.exit(1)" not in log, log[-3000:]
    assert f"plugin spinner failed in {phase}" not in log, log[-3000:]
    if phase == "access":
        assert not got.startswith(b"HTTP/1.1 500"), got     # cut, as the master's log says
    assert time.monotonic() - started < 8       # ended by the abort, not the plugin's loop
    resp, _ = gw.request("GET", "/echo/spin")   # the new worker serves
    assert resp.status == 200
