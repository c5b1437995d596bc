"""An HTTP/2 request answered in full runs its finish hooks to their end whatever its client
does next (a reset of the stream, the connection's close), as an HTTP/1.1 request's do when
its client leaves: a plugin's finish that waits (a report sent somewhere) was cut there.
"""
import os
import socket
import time

import pytest

from ..conftest import gateway_conf, installed_plugin, route, wait_until
from ..h2client import RawH2
from .test_review_dec15a import rst_stream

REPORTING_FINISH = '''
import gevent

from gwserver.core.schema import Field, Schema, number, string

NAME = "reporter"
PRIORITY = 1300
SCHEMA = Schema(Field("seconds", number(0), 0.5, "how long the report takes"),
                Field("path", string(r".+", "a file"), None, "where reports go"))


def access(conf, ctx):
    pass


def finish(conf, ctx, status):
    gevent.sleep(conf["seconds"])       # the report's round trip
    with open(conf["path"], "a") as reports:
        reports.write(f"{ctx.route.id} {status}\\n")
'''


def reporting_gateway(launcher, base, seconds, paths, **sections):
    """An h2c gateway whose routes (``paths``: id -> path, to an echo upstream) run the
    reporter, its finish ``seconds`` long -> (gateway, the reports file)."""
    reports = base / "reports.txt"
    env = installed_plugin(base, "gwreporter", REPORTING_FINISH, "reporter = gwreporter\n")
    echo = launcher.upstream("echo")
    routes = [route(route_id, [path], echo.url, plugins={
        "reporter": {"seconds": seconds, "path": str(reports)}})
        for route_id, path in paths.items()]
    return launcher.gateway(gateway_conf(routes, http2={"h2c": True}, **sections),
                            env=env), reports


@pytest.fixture(scope="module")
def reporting_gw(module_launcher, tmp_path_factory):
    return reporting_gateway(module_launcher, tmp_path_factory.mktemp("reporter"), 0.5,
                             {name: f"/echo/{name}" for name in
                              ("h1-close", "h2-close", "h2-reset")})


def reported(reports, route_id):
    if not os.path.exists(reports):
        return []
    return [line for line in reports.read_text().splitlines() if line.split()[0] == route_id]


@pytest.mark.parametrize("how", ["h1-close", "h2-close", "h2-reset"])
def test_a_request_answered_in_full_finishes_whatever_its_client_does_next(reporting_gw, how):
    gw, reports = reporting_gw
    path = f"/echo/{how}"
    if how == "h1-close":
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    else:
        client = RawH2(gw.port)
        try:
            sid = client.request(path)
            assert client.response(sid)[0] == 200
            time.sleep(0.1)                 # its finish waits on its report now
            if how == "h2-reset":
                client.send_raw(rst_stream(sid))        # CANCEL, after the whole answer
                time.sleep(0.1)
        finally:
            client.close()
    assert wait_until(lambda: reported(reports, how), timeout=5) == [f"{how} 200"]
    # (the access line follows the finish hooks, and is written on the worker's next tick)
    lines = wait_until(lambda: [line for line in gw.access_lines() if line.get("route") == how],
                       timeout=5)
    assert [line["status"] for line in lines] == [200], lines
    assert "plugin reporter failed in finish" not in gw.log()
