"""Attack pass 2 (Dec 03, after 4a2908a, fefb92b, d5c2c46, df89217, 0ec6c44): three defects,
shown by tests that failed on d7775f9 and pass with the fixes that followed.

Every test starts real processes (a gateway from the launcher fixture, the ``gwserver`` CLI)
and talks to them over loopback; the upstream is an in-process socket server on 127.0.0.1 that
records the request heads it got (tests/integration/test_attack_pass_dec03.RecordingHttp1),
closed in teardown.

1. key_auth: a second key still reaches a PHP upstream, in spellings of the parameter name PHP
   reads as ``api_key`` and _param_name does not: a leading space (``+api_key``, PHP drops
   leading spaces), a NUL (``api_key%00x``, PHP cuts the name at it) and an unmatched ``[``
   (``api[key``, PHP turns it into ``_``). The request passes as the header's consumer and
   hide_credentials leaves the other key in the query.
2. rewrite: a path the server's own settings accept (escaped_slashes = "keep",
   merge_slashes = false, path_parameters = "keep") is "the template's fault": 500
   rewrite_failed and an ERROR line, on demand, for any anonymous client, on a route whose
   template is fine (``/v2$path``, ``/v2/$1``). Captures spoil a path too (``/svc/v1..``):
   also 500, documented, though they are the request's values as much as $request_id is.
3. ``gwserver reload`` reports success (exit 0) for a reload the master refuses when it cannot
   find the master's verdict: a conf that is not TOML (the most common refused reload) or one
   that names another state_dir, with --pid as the systemd unit runs it.

Held (the tests named test_held_*, passing): the spellings 4a2908a covers; two X-API-Key
headers; every copy of a query key hidden; $request_id values in a path are literal or a 400;
reload verdicts when the state dir is found; HTTP/2 connections lingering after their
keepalive's GOAWAY give their slots to a new client at once, and PINGs or half a HEADERS in the
linger do not extend it, while a request sent in it is REFUSED_STREAM (h2c).
"""
import json
import subprocess
import sys
import time

import pytest

from gwserver.plugins.key_auth import hash_key

from ..conftest import gateway_conf, route, wait_until
from .test_attack_pass_dec03 import raw_request


def request_line(up, index=-1):
    return up.heads[index].split(b"\r\n")[0].decode("latin-1")


# -- 1. key_auth: spellings of the parameter a PHP upstream reads as the key ------------------

ALICE, BOB = "ak_alice_0123456789abcdef", "ak_bob_fedcba9876543210"
CONSUMERS = {"alice": {"credentials": {"key_auth": {"key_hash": hash_key(ALICE)}}},
             "bob": {"credentials": {"key_auth": {"key_hash": hash_key(BOB)}}}}


@pytest.fixture
def key_gw(launcher, h1_up):
    return launcher.gateway(gateway_conf([
        route("k", ["/k/*rest"], h1_up.url, plugins={"key_auth": {"query": "api_key"}}),
    ], consumers=CONSUMERS))


def _two_keys(gw, query):
    return raw_request(gw.port, b"GET /k/orders?%s HTTP/1.1\r\nHost: api.test\r\nX-API-Key: %s"
                       b"\r\nConnection: close\r\n\r\n" % (query, ALICE.encode()))


@pytest.mark.parametrize("query", [
    b"+api_key=" + BOB.encode(),            # PHP: leading spaces of a name are dropped
    b"%20api_key=" + BOB.encode(),
    b"api_key%00x=" + BOB.encode(),          # PHP: strlen() of the decoded name ends at NUL
    b"api[key=" + BOB.encode(),              # PHP: a '[' with no ']' is '_'
])
def test_a_second_key_in_a_name_php_reads_as_the_parameter_is_ambiguous(key_gw, h1_up, query):
    """X-API-Key holds alice's key; the query holds bob's under a name PHP's
    php_register_variable_ex (main/php_variables.c) registers as $_GET['api_key']: leading
    spaces skipped, the name cut at its first NUL (var_len = strlen(var_name)), and a '['
    without a closing ']' made '_'. _param_name decodes, lowers and maps '.' and ' ' to '_',
    but ' api_key' becomes '_api_key', 'api_key\\x00x' stays, 'api[key' stays: no key found.
    The gateway identifies alice, strips only the header, and a PHP upstream reading
    $_GET['api_key'] (or $_REQUEST) gets bob's key: two consumers for one request, which
    4a2908a set out to close ("PHP's '.'/' ' -> '_'" is the same family). Should be 401
    ambiguous_key, or at least the part removed by hide_credentials."""
    answer = _two_keys(key_gw, query)
    status = answer.split(b"\r\n", 1)[0]
    if b" 200 " in status:
        line = request_line(h1_up)
        assert BOB not in line, f"upstream got {line!r} after the gateway identified alice"
    else:
        assert b" 401 " in status and b"ambiguous_key" in answer, answer[:400]


@pytest.mark.parametrize("query", [b"API_KEY=", b"api%5Fkey=", b"api.key=", b"api+key=",
                                   b"x=1;api_key=", b"api_key="])
def test_held_the_spellings_4a2908a_covers_are_ambiguous(key_gw, h1_up, query):
    """Held: case, percent-encoding, PHP's '.' and ' ', a ';' part, the plain name."""
    answer = _two_keys(key_gw, query + BOB.encode())
    assert b" 401 " in answer.split(b"\r\n", 1)[0] and b"ambiguous_key" in answer, answer[:300]
    assert not h1_up.heads


def test_held_two_key_headers_are_one_bad_key_not_two(key_gw, h1_up):
    """Held: X-API-Key twice is joined with ', ' in header_map (on_header), which no key
    matches: 401 invalid_key, nothing proxied."""
    answer = raw_request(key_gw.port, b"GET /k/x HTTP/1.1\r\nHost: a\r\nX-API-Key: %s\r\n"
                         b"X-API-Key: %s\r\nConnection: close\r\n\r\n"
                         % (ALICE.encode(), BOB.encode()))
    assert b" 401 " in answer.split(b"\r\n", 1)[0], answer[:300]
    assert not h1_up.heads


def test_held_a_query_key_alone_is_hidden_in_every_copy(key_gw, h1_up):
    """Held: the key in the query alone, twice the same, in two spellings: both copies go."""
    answer = raw_request(key_gw.port, b"GET /k/x?a=1&api_key=%s&API%%5FKEY=%s&b=2 HTTP/1.1\r\n"
                         b"Host: a\r\nConnection: close\r\n\r\n" % (ALICE.encode(),
                                                                    ALICE.encode()))
    assert b" 200 " in answer.split(b"\r\n", 1)[0], answer[:300]
    assert request_line(h1_up) == "GET /k/x?a=1&b=2 HTTP/1.1"


# -- 2. rewrite: 500 on demand for paths the server's own settings accept --------------------

def _rewrite_gw(launcher, h1_up, server):
    return launcher.gateway(gateway_conf([
        route("p", ["/p/*rest"], h1_up.url, plugins={"rewrite": {
            "path": {"match": "^/p(/.*)$", "replace": "/v2$path"}}}),
        route("c", ["/c/*rest"], h1_up.url, plugins={"rewrite": {
            "path": {"match": "^/c/(.*)$", "replace": "/v2/$1"}}}),
    ], server=server))


@pytest.mark.parametrize("server,path", [
    ({"escaped_slashes": "keep"}, "/a%2Fb"),
    ({"merge_slashes": False}, "/a//b"),
    ({"path_parameters": "keep"}, "/a;v=1/b"),
])
def test_a_path_the_server_accepts_is_not_a_500_through_rewrite(launcher, h1_up, server, path):
    """The server is set to accept (and forward as they are) encoded slashes, repeated
    slashes or ';' parameters: without a rewrite /x/a%2Fb reaches the upstream. With rewrite
    ``/v2$path`` (or ``/v2/$1``), a template with nothing wrong in it, rewrite._canonical
    judges the result by core.target's *strictest* rules (normalise_path's defaults), so
    the request is "not canonical"; and since $path and captures are not among the values
    _expand(values="x") replaces, the template is blamed: 500 rewrite_failed with an ERROR
    line, as often as any anonymous client likes (the route's 5xx rate and alerts at its
    will), for requests the operator chose to serve. fefb92b's rule is that a path only
    the request spoils is a 400; expected: the path forwarded (the server's rules), or 400,
    never 500."""
    gw = _rewrite_gw(launcher, h1_up, server)
    statuses = []
    for prefix in ("/p", "/c"):
        resp, _ = gw.request("GET", prefix + path)
        statuses.append(resp.status)
    assert 500 not in statuses, (statuses, gw.log()[-1500:])
    assert "rewrite made" not in gw.log()


def test_held_without_rewrite_the_server_setting_serves_the_path(launcher, h1_up):
    """The control: escaped_slashes = "keep" forwards /x/a%2Fb as it came."""
    gw = launcher.gateway(gateway_conf([route("x", ["/x/*rest"], h1_up.url)],
                                       server={"escaped_slashes": "keep"}))
    resp, _ = gw.request("GET", "/x/a%2Fb")
    assert resp.status == 200
    assert request_line(h1_up) == "GET /x/a%2Fb HTTP/1.1"


def test_captures_that_spoil_the_path_are_the_clients_fault_not_a_500(launcher, h1_up):
    """Documented as 500, and contrary to fefb92b's own rule: the captures are the request's
    text as much as $request_id is. ``^/svc/v1(.*)$`` -> ``/svc$1`` with strip_prefix /svc
    (test_attack_pass_dec03's route): any anonymous GET /svc/v1../admin is a 500
    rewrite_failed and an ERROR line ("rewrite made ..."), on demand. Expected 400 (the
    request's fault), like an X-Request-ID of '..'."""
    gw = launcher.gateway(gateway_conf([
        route("svc", ["/svc/*rest"], h1_up.url, strip_prefix="/svc", plugins={"rewrite": {
            "path": {"match": "^/svc/v1(.*)$", "replace": "/svc$1"}}})]))
    resp, _ = gw.request("GET", "/svc/v1../admin")
    assert resp.status == 400, (resp.status, gw.log()[-800:])


@pytest.mark.parametrize("request_id", ["..", ".", "%2e%2e", "a?b#c", "%2F", "\x7f", "a\\b"])
def test_held_request_id_values_in_a_path_are_literal_or_a_400(launcher, h1_up, request_id):
    """Held: $request_id is escaped as literal text; what it spoils is a 400, never a 500, and
    what reaches the upstream is printable, without '?', '#', a dot segment or %2F made of a
    slash."""
    gw = launcher.gateway(gateway_conf([route("rid", ["/rid/*rest"], h1_up.url, plugins={
        "rewrite": {"path": {"match": "^/rid/(.*)$", "replace": "/t/$request_id/$1"}}})]))
    resp, _ = gw.request("GET", "/rid/x", headers={"X-Request-ID": request_id})
    assert resp.status in (200, 400), resp.status
    if resp.status == 200:
        target = request_line(h1_up).split(" ")[1]
        assert all(0x21 <= ord(c) <= 0x7E for c in target) and "?" not in target and \
            "#" not in target, target
        assert not {".", ".."} & set(target.split("/")), target


# -- 3. gwserver reload: exit 0 for a refused reload ---------------------------------------

def _reload(gw, *extra, timeout=60):
    return subprocess.run([sys.executable, "-m", "gwserver", "reload", "-c", str(gw.conf_path),
                           "--timeout", "20", *extra], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def reload_gw(launcher, h1_up):
    gw = launcher.gateway(gateway_conf([route("e", ["/e"], h1_up.url)]))
    gw.good = gw.conf_path.read_text()
    assert 'state_dir' in gw.good       # an explicit state_dir, as in most deployments
    return gw


def _refusals(gw):
    return gw.log().count("reload refused")


def test_reload_of_a_conf_that_is_not_toml_is_not_reported_applied(reload_gw):
    """The conf gets a syntax error (an unclosed table header). `gwserver reload -c CONF --pid
    PID` (the unit's ExecReload=) reads server.state_dir from that same file to find
    master.json; it cannot parse it, falls back to default_state_dir(), finds no status of
    PID there, sends the HUP and exits 0 "no verdict to wait for". The master refuses the
    conf and keeps the old one; `systemctl reload` says it succeeded: exactly what 0ec6c44
    set out to stop. Expected: exit 1 (refused), or at least not 0 without a verdict."""
    gw = reload_gw
    before = _refusals(gw)
    gw.conf_path.write_text("[server\n" + gw.good)
    result = _reload(gw, "--pid", str(gw.pid))
    wait_until(lambda: _refusals(gw) > before, timeout=20)      # the master did refuse it
    assert result.returncode != 0, (result.returncode, result.stdout, result.stderr)


def test_reload_of_a_refused_conf_that_names_another_state_dir_is_not_reported_applied(
        reload_gw, tmp_path):
    """The conf names a new state_dir and has a value the master refuses (workers = "two").
    The CLI looks only in the new state_dir and the default one, neither of which holds the
    running master's master.json: exit 0 "no verdict to wait for" while the master logs
    "reload refused" and serves on with the old conf."""
    gw = reload_gw
    before = _refusals(gw)
    bad = json.loads(json.dumps(gw.conf))
    bad["server"]["state_dir"] = str(tmp_path / "moved-state")
    bad["server"]["workers"] = "two"
    from ..conftest import to_toml
    gw.conf_path.write_text(to_toml(bad))
    result = _reload(gw, "--pid", str(gw.pid))
    wait_until(lambda: _refusals(gw) > before, timeout=20)
    assert result.returncode != 0, (result.returncode, result.stdout, result.stderr)


def test_held_reload_verdicts_with_the_state_dir_found(reload_gw):
    """Held: a conf TOML reads but the master refuses (unknown section) -> exit 1 with the
    reason; the good one back -> exit 0."""
    gw = reload_gw
    gw.conf_path.write_text(gw.good + '\n[nonsense]\nx = 1\n')
    refused = _reload(gw, "--pid", str(gw.pid))
    assert refused.returncode == 1, refused
    gw.conf_path.write_text(gw.good)
    applied = _reload(gw, "--pid", str(gw.pid))
    assert applied.returncode == 0, applied
    time.sleep(0.1)
    assert gw.proc.poll() is None


# -- held: HTTP/2 idle close (d5c2c46) ------------------------------------------------------

def _ping():
    from hyperframe.frame import PingFrame
    return PingFrame(0, opaque_data=b"12345678").serialize()


def _headers_frame(sid, path):
    """A whole request's HEADERS frame, made by hand (the client's h2 state machine is closed
    once a GOAWAY came): fields never indexed, so its HPACK table is not touched."""
    import hpack
    from hyperframe.frame import HeadersFrame
    block = hpack.Encoder().encode([hpack.NeverIndexedHeaderTuple(k, v) for k, v in (
        (b":method", b"GET"), (b":scheme", b"http"), (b":path", path),
        (b":authority", b"localhost"))])
    frame = HeadersFrame(sid, data=block)
    frame.flags.add("END_HEADERS")
    frame.flags.add("END_STREAM")
    return frame.serialize()


def _h2_gw(launcher, upstream_url, **server):
    return launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream_url)],
                                         http2={"h2c": True}, server=server))


def test_held_lingering_connections_give_their_slots_to_a_new_client(launcher, h1_up):
    """Held: every slot (4) held by a connection whose keepalive ran out and that lingers
    without closing (GOAWAY received, the client still reading and sending PINGs): a new
    client is served at once, not after the linger; the lingering ones are reclaimed."""
    from ..h2client import RawH2
    gw = _h2_gw(launcher, h1_up.url, worker_connections=4, keepalive=1.0)
    clients = []
    try:
        for _ in range(4):
            client = RawH2(gw.port)
            assert client.response(client.request("/x"))[0] == 200
            clients.append(client)
        for client in clients:
            assert client.pump(lambda c: c.goaway() is not None, timeout=5)
        for client in clients:                  # pings during the linger
            client.send_raw(_ping())
        started = time.monotonic()
        fresh = RawH2(gw.port)
        clients.append(fresh)
        answer = fresh.response(fresh.request("/fresh"), timeout=5)
        assert answer is not None and answer[0] == 200
        assert time.monotonic() - started < 1.0, time.monotonic() - started
    finally:
        for client in clients:
            client.close()


def test_held_a_ping_flood_or_half_headers_in_the_linger_does_not_extend_it(launcher, h1_up):
    """Held: after the keepalive's GOAWAY, PINGs every 50 ms and then half a HEADERS frame do
    not keep the connection past the linger (2 s); a full request sent in the linger is
    REFUSED_STREAM, not lost."""
    from h2.errors import ErrorCodes as E
    from ..h2client import RawH2
    gw = _h2_gw(launcher, h1_up.url, keepalive=1.0)
    client = RawH2(gw.port)
    try:
        assert client.response(client.request("/x"))[0] == 200
        assert client.pump(lambda c: c.goaway() is not None, timeout=5)
        started = time.monotonic()
        client.send_raw(_headers_frame(3, b"/in-linger"))
        client.sock.settimeout(2)
        got = b""
        while b"\x00\x00\x04\x03\x00\x00\x00\x00\x03" not in got:  # RST_STREAM on 3
            got += client.sock.recv(65536)
        assert got.split(b"\x00\x00\x04\x03\x00\x00\x00\x00\x03", 1)[1][:4] == \
            E.REFUSED_STREAM.to_bytes(4, "big")
        while time.monotonic() - started < 1.5:
            client.send_raw(_ping())
            if client.closed:
                break
            time.sleep(0.05)
        block = _headers_frame(5, b"/half")
        client.send_raw(block[:len(block) // 2])
        client.pump(lambda c: c.closed, timeout=6)
        assert client.closed and time.monotonic() - started < 3.5, time.monotonic() - started
    finally:
        client.close()
    assert not any(b"/in-linger" in head or b"/half" in head for head in h1_up.heads)
