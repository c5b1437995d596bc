"""An operator reads this session's upgrade notes and checks a conf before the restart.

The [routes.api] slip (0bbd2d3) now names its fix; its neighbours did not:

1. ``[[consumers]]`` blocks with an id inside, as routes are written:
   `gwserver check`, and a refused reload's log (journald), said "consumers: must be a
   table/object, got [...]" and quoted the whole value, a consumer's key among it, where every
   other check of a consumer says "the value is not shown: it may be a secret". Now the
   spelling is named and the value is not shown.
2. ``[[upstreams]]`` blocks: "upstreams: must be a table/object, got [...]", no fix named.
3. ``[routes]`` (one pair of brackets: one route's fields in a single table) was told
   ``[routes."id"] makes a table of routes by name``: a table it never wrote, named after the
   route's id field. It is told to write ``[[routes]]``.
4. A stop's lines docs/operations.md quotes name ``server.graceful_timeout``; with a value of
   a fraction (0.5) the worker drained for gunicorn's whole second it is rounded up to and
   said "graceful timeout (1s)" and "server.graceful_timeout (1s) ran out", a value nobody
   set. It drains for the conf's 0.5 s and says so.
"""
import os
import signal
import subprocess
import sys

from ..conftest import (ROOT, check_conf, gateway_conf, open_websocket, route, to_toml,
                        wait_until)

SECRET = "ak_live_9f3b2c7d1e"


def test_consumers_as_blocks_name_the_spelling_and_never_show_a_key(tmp_path, launcher,
                                                                    upstream):
    consumers = [{"id": "alice", "credentials": {"key_auth": {"key": SECRET}}}]
    routes = [route("r", ["/r"], upstream.url)]
    code, out = check_conf(tmp_path, gateway_conf(routes, consumers=consumers))
    assert code == 2, out
    assert SECRET not in out, out
    assert "[consumers.ID]" in out, out
    # A reload of it is refused, and journald is not handed the key either
    gw = launcher.gateway(gateway_conf(routes))
    conf = {**gw.conf, "consumers": consumers}
    gw.conf_path.write_text(to_toml(conf))
    gw.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "still serving the previous configuration" in gw.log(), timeout=10)
    assert SECRET not in gw.log(), gw.log()[-2000:]
    assert gw.request("GET", "/r")[0].status == 200


def test_upstreams_as_blocks_name_the_spelling(tmp_path, upstream):
    path = tmp_path / "blocks.toml"          # (to_toml writes upstreams as tables only)
    path.write_text(f'[[upstreams]]\nid = "demo"\ntargets = [{{url = "{upstream.url}"}}]\n'
                    f'[[routes]]\nid = "r"\npaths = ["/r"]\nupstream = "demo"\n')
    done = subprocess.run([sys.executable, "-m", "gwserver", "check", "-c", str(path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=30)
    code, out = done.returncode, done.stdout + done.stderr
    assert code == 2, out
    assert "write each upstream as [upstreams.ID]" in out, out


def test_routes_as_one_table_is_told_to_write_two_brackets(tmp_path, upstream):
    conf = gateway_conf(route("r", ["/r"], upstream.url))       # [routes], one route's fields
    code, out = check_conf(tmp_path, conf)
    assert code == 2, out
    assert '[routes."id"]' not in out, out
    assert "[routes] (single brackets) makes one table" in out, out


def test_a_stop_says_the_graceful_timeout_the_conf_set(launcher, upstream):
    gw = launcher.gateway(gateway_conf([route("ws", ["/ws"], upstream.url)],
                                       server={"graceful_timeout": 0.5}))
    ws, head, _ = open_websocket(gw.port)
    try:
        assert head.startswith(b"HTTP/1.1 101"), head
        os.kill(gw.pid, signal.SIGTERM)
        assert gw.proc.wait(10) == 0
    finally:
        ws.close()
    log = gw.log()
    assert "graceful timeout (0.5s): cutting off remaining connections (1)" in log, log[-3000:]
    cut = [line for line in gw.access_lines() if line.get("path") == "/ws"]
    assert cut and cut[-1]["error"] == ("cut: the worker stopped and server.graceful_timeout "
                                        "(0.5s) ran out"), (cut, log[-3000:])
