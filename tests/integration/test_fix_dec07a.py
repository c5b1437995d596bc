"""Fixes of reported defects (dec07a), each against real processes:

1. A lock file (state_dir/gwserver.lock) held by another process and naming a pid of 20
   digits made the starting gateway die of an OverflowError (os.kill of a pid no C int
   holds), a traceback, where any other garbage in it is refused with the usual "in use by
   another gwserver" and exit status 2.
2. jwt's ``forward_claims`` sent a boolean claim as Python spells it, ``True``/``False``,
   where the token (JSON) says ``true``/``false``, as the route conditions read it.
3. A third-party plugin's ``finish`` phase that set a field the access log reads to a value
   of another type (ctx.url a str; ctx.attempts a str; ctx.error a str) lost the request's
   access line, with a traceback per request. Such an edit is now put back and named.
4. An upstream streaming a chunk extension (``1;aaaa...``) or trailer fields that never end
   held the request for ever: nothing reached the client, and each read renewed the read
   timeout. Framing without body is now capped at max_response_head: the answer is cut.
"""
import fcntl
import json
import socket
import time

import pytest

from ..conftest import gateway_conf, installed_plugin, route, wait_until

JWT_SECRET = "fix-dec07a-secret-0123456789abcdef0123"

MISTYPED = '''
from gwserver.core.schema import Schema


class mistype:
    """In its finish phase, sets the ctx field ?f= names to a value of the wrong type."""
    NAME, PRIORITY, SCHEMA = "mistype", 500, Schema()

    @staticmethod
    def finish(conf, ctx, status):
        field = ctx.value_of("query", "f")
        if field == "url":
            ctx.url = "/fin/as-text\\u20ac?f=url"
        elif field == "attempts":
            ctx.attempts = "3"
        elif field == "error":
            ctx.error = "oops"
        elif field == "consumer":
            ctx.consumer = "alice"
        elif field == "route":
            ctx.route = "fin"
'''


@pytest.fixture(scope="module")
def echo(module_launcher):
    return module_launcher.upstream("echo")


@pytest.fixture(scope="module")
def mistype_env(tmp_path_factory):
    return installed_plugin(tmp_path_factory.mktemp("site"), "gwmistype", MISTYPED,
                            "mistype = gwmistype:mistype\n")


@pytest.fixture(scope="module")
def gw(module_launcher, echo, mistype_env):
    upstream, env = echo, mistype_env
    raw = module_launcher.raw_upstream()
    jwt = {"jwt": {"algorithms": ["HS256"], "secret": JWT_SECRET,
                   "forward_claims": {"email_verified": "X-Verified", "flags": "X-Flags",
                                      "sub": "X-User"}}}
    conf = gateway_conf([route("jwt", ["/jwt"], upstream.url, plugins=jwt),
                         route("fin", ["/fin/*rest"], upstream.url, plugins={"mistype": {}}),
                         route("raw", ["/endless-ext", "/endless-trailer"], raw.url)],
)
    return module_launcher.gateway(conf, env=env)


# -- 1. a lock file naming a 20-digit pid ------------------------------------------------------

@pytest.mark.parametrize("holder", ["12345678901234567890", "\u00b2", "-1", "not-a-pid"])
def test_a_held_lock_naming_an_impossible_pid_is_refused_as_any_other(launcher, upstream,
                                                                      tmp_path, holder):
    state = tmp_path / "state"
    state.mkdir()
    lock = state / "gwserver.lock"
    lock.write_text(holder + "\n")
    with open(lock, "r+b") as held:             # another process's lock: this test's
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        gw = launcher.gateway(gateway_conf([route("e", ["/e"], upstream.url)],
                                           server={"state_dir": str(state)}), wait=False)
        started = time.monotonic()
        assert gw.proc.wait(15) == 2, gw.log()
    log = gw.log()
    assert "Traceback" not in log and "OverflowError" not in log, log
    assert f"in use by another gwserver (pid {holder})" in log, log
    # no wait for the workers of a dead master: no process has that pid
    assert time.monotonic() - started < 4, log


# -- 2. jwt forward_claims: a boolean as JSON spells it ------------------------------------------

def test_forward_claims_sends_booleans_as_the_token_spells_them(gw):
    import jwt as pyjwt
    token = pyjwt.encode({"sub": "alice", "email_verified": True, "flags": [False, True, 7],
                          "exp": int(time.time()) + 600}, JWT_SECRET, "HS256")
    resp, body = gw.request("GET", "/jwt", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200, body
    sent = {k.lower(): v for k, v in json.loads(body)["headers"]}
    assert (sent["x-user"], sent["x-verified"], sent["x-flags"]) == \
        ("alice", "true", "false true 7"), sent


# -- 3. a finish phase that mistypes what the access log reads -----------------------------------

def test_a_finish_phase_that_mistypes_a_field_loses_no_access_line(gw):
    for field in ("url", "url", "attempts", "error", "consumer", "route", "none"):
        resp, _ = gw.request("GET", f"/fin/x?f={field}")
        assert resp.status == 200
    lines = wait_until(lambda: len(got := [line for line in gw.access_lines()
                                           if line["route"] == "fin"]) >= 7 and got, timeout=5)
    # logged as served: the plugin's edits of another type are put back
    assert [line["path"] for line in lines] == ["/fin/x"] * 7, lines
    assert not any("consumer" in line for line in lines), lines
    assert not any("attempts" in line or "error" in line for line in lines), lines
    log = gw.log()
    assert "could not be rendered" not in log and "Traceback" not in log, log
    # said once per route, plugin and field, naming them, not once per request
    assert log.count("route fin: plugin mistype set ctx.url to a str in finish") == 1, log
    assert "plugin mistype set ctx.attempts to a str" in log, log
    assert "plugin mistype set ctx.error to a str" in log, log
    assert "plugin mistype set ctx.consumer to a str" in log, log
    assert "plugin mistype set ctx.route to a str" in log, log


def test_a_mistyped_field_loses_no_line_of_a_listed_or_common_format(module_launcher, echo,
                                                                     mistype_env):
    # not the default line: each field read on its own, in the request's last step
    gw = module_launcher.gateway(gateway_conf(
        [route("fin", ["/fin/*rest"], echo.url, plugins={"mistype": {}})],
        log={"access_format": "common", "access_fields": ["route", "error", "attempts"]}),
        env=mistype_env)
    for field in ("url", "attempts", "error"):
        resp, _ = gw.request("GET", f"/fin/x?f={field}")
        assert resp.status == 200
    assert gw.request("GET", "/fin/y")[0].status == 200       # the worker serves on
    lines = wait_until(lambda: len(got := [line for line in gw.log().splitlines()
                                           if ' "GET /fin/' in line]) >= 4 and got, timeout=5)
    assert ['"GET /fin/x?f=url HTTP/1.1" 200' in lines[0],
            lines[1].endswith(' "fin" - -'), lines[2].endswith(' "fin" - -'),
            '"GET /fin/y HTTP/1.1" 200' in lines[3]] == [True] * 4, lines
    assert "Traceback" not in gw.log(), gw.log()


# -- 4. endless chunk extensions or trailers ---------------------------------------------------

@pytest.mark.parametrize("path", ["/endless-ext", "/endless-trailer"])
def test_endless_chunk_framing_is_cut_not_held(gw, path):
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=4) as sock:
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % path.encode())
        got = b""
        while piece := sock.recv(65536):        # socket.timeout: held, the defect
            got += piece
    assert got.startswith(b"HTTP/1.1 200 "), got[:300]
    # cut: the chunked answer never ended (no last chunk)
    assert not got.endswith(b"0\r\n\r\n"), got[-100:]
    assert time.monotonic() - started < 3
    assert wait_until(lambda: "chunk framing" in gw.log() and path in json.dumps(
        gw.access_lines()), timeout=3)
    line = [entry for entry in gw.access_lines() if entry["path"] == path][-1]
    assert "chunk" in line["error"], line
