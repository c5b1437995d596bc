"""Attack pass of 2026-12-05 (a helper's): what an operator reads (access log, error log,
metrics, admin) and what hostile input can do to it. Each test runs real processes on loopback
and failed on the code it was written against (6b3a482); fixed with them:
1. common format: a client's quote split the quoted fields after the head (common_escape);
2. admin token: a locked-out address's guesses were answered at once (now paused too);
3. HTTP/2 pacing lines were throttled per client address (one kind now);
4. admin.bind = "localhost:PORT" matched no listener: the admin port served traffic and the
   admin token went upstream; 5. admin.bind = "unix:PATH" killed every worker at boot
   (both: the admin listener is found by its resolved address or its path);
6. an empty X-Request-ID left the request with no id (a client's id is kept only when it is
   1-200 visible characters but a quote or backslash);
7. a password in an etcd endpoint was shown at /admin/config and in the log (refused now)."""
import http.client
import re
import socket
import subprocess
import sys
import time

import h2.config
import h2.connection

from ..conftest import free_port, gateway_conf, route, to_toml, wait_until

TOKEN = "h4-admin-token-0123456789abcdef0123456789"


def raw_get(port, path=b"/x", headers=b"", source=None, timeout=10):
    """One HTTP/1.1 request, Connection: close; -> the whole answer (bytes)."""
    sock = socket.socket()
    sock.settimeout(timeout)
    if source:
        sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    with sock:
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: h\r\n%sConnection: close\r\n\r\n"
                     % (path, headers))
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            data += chunk
        return data


def status_of(answer):
    return int(answer.split(b" ", 2)[1])


def admin_get(port, path, token=None, timeout=10):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body


# -- 1. Common Log Format: a quote inside a quoted field -------------------------------------

def test_common_format_fields_after_the_head_cannot_be_split_by_a_clients_quote(
        launcher, upstream):
    """The CLF head writes a quote in the target as \\x22 (nginx's convention), precisely so
    that a client cannot end the quoted field and write fields of its own. The fields after
    the head (default: route, request_id, duration_ms, trace_id, error) are JSON-escaped
    instead: a quote becomes \\", which ends the field for every parser that reads the line
    the nginx way (`"[^"]*"`). X-Request-ID is the client's own and a default field."""
    gw = launcher.gateway(gateway_conf([route("users", ["/*rest"], upstream.url)],
                                       log={"access_format": "common"}))
    forged = b'x" 0.100 "0af7651916cd43dd8448eb211c80319c" "forged-error'
    assert status_of(raw_get(gw.port, b"/probe", b"X-Request-ID: %s\r\n" % forged)) == 200
    line = wait_until(lambda: next((l for l in gw.log().splitlines()
                                    if '"GET /probe HTTP/1.1"' in l), None))
    fields = re.findall(r'"([^"]*)"', line)
    # the head, route, request_id and trace_id (tracing is on by default): 4 quoted fields
    assert len(fields) == 4, (line, fields)
    assert '\\"' not in line, line


# -- 2. The admin token's lockout: guesses go faster once locked out ----------------------------

def test_a_locked_out_address_gets_no_faster_and_no_more_verdicts_on_its_guesses(
        launcher, upstream):
    """docs/security.md: "Each wrong token costs its sender 0.25 s; after 5 in a minute from
    one address, that address's wrong tokens get 429", and admin.py: "a guesser gets a handful
    of tries a minute". But the right token always passes (a test holds that), and the 429
    branch returns before the pause: once locked out, an address has its guesses judged with
    no pause at all, a 429 for a wrong one and a 200 for the right one. The lockout makes
    guessing faster, and leaves the number of guesses a minute unbounded."""
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)],
                                       admin={"token": TOKEN}))
    for i in range(5):
        assert admin_get(gw.admin_port, "/admin/routes", f"guess-{i}")[0] == 401
    started = time.monotonic()
    statuses = [admin_get(gw.admin_port, "/admin/routes", f"guess-more-{i}")[0]
                for i in range(40)]
    elapsed = time.monotonic() - started
    assert statuses == [429] * 40
    # still within the lockout minute, the right guess is judged and accepted
    assert admin_get(gw.admin_port, "/admin/routes", TOKEN)[0] == 200
    # each wrong token costs its sender 0.25 s (docs/security.md): 40 cost at least 10 s
    assert elapsed >= 40 * 0.25, f"40 wrong guesses while locked out took {elapsed:.2f} s"


# -- 3. A throttled log kind keyed on the client's address --------------------------------------

def pace_from(port, source, frames):
    """An h2c connection from ``source`` that opens a POST and sends ``frames`` one-byte DATA
    frames in one write (each under SMALL_DATA, none ending the stream): the connection is
    paced. -> the socket (kept open by the caller)."""
    sock = socket.socket()
    sock.settimeout(5)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                header_encoding=None))
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/up"),
                            (b":authority", b"h")])
    for _ in range(frames):
        conn.send_data(sid, b"x")
    sock.sendall(conn.data_to_send())
    return sock


def test_pacing_lines_are_one_a_second_whatever_the_clients_address(launcher, upstream):
    """core/throttledlog.py: "Kinds are fixed names, or names and a route id and an error,
    never a client's address: the state stays small whoever connects"; docs/security.md:
    lines a client can cause are written "at most once a second per kind and per worker ...
    A flood cannot fill the disk or bury other lines". The HTTP/2 pacing line's kind is
    ("h2 paced", client_ip): every address writes its own line each second, and each is a
    throttle entry kept for a minute. A client holding many addresses (an IPv6 /64) writes as
    many lines a second as it has addresses; here, 40 loopback addresses."""
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)], http2={
        "h2c": True, "max_empty_frames_per_second": 20}))
    socks = []
    try:
        started = time.monotonic()
        for i in range(40):
            socks.append(pace_from(gw.port, f"127.0.0.{10 + i}", 60))
        time.sleep(1.5)
        seconds = time.monotonic() - started
    finally:
        for sock in socks:
            sock.close()
    lines = [line for line in gw.log().splitlines() if "paced (read again" in line]
    sources = {re.search(r"connection from (\S+):", line).group(1) for line in lines}
    # one kind, one line a second (and at most one more that counts the rest, at the flush):
    # before, a line per address (40); a loaded host may take more than a second to send
    assert len(lines) <= int(seconds) + 2, (len(lines), seconds, sorted(sources)[:5])


# -- 4. The admin listener named by a host name, or a Unix socket -------------------------------

def test_an_admin_bind_named_by_host_name_serves_the_admin_views(launcher, upstream):
    """worker.py tells the admin listener from the others by comparing ("localhost", port),
    the bind's text, with getsockname()'s ("127.0.0.1", port): net/addresses.py says of that
    very comparison "Compared as text, "localhost:8443" would match no listener", and uses
    the resolved addresses for TLS and PROXY listeners, but not for admin. `gwserver check`
    accepts admin.bind = "localhost:PORT" (and calls it loopback); the worker then serves the
    admin port as a traffic port: /-/ready, /metrics and /admin/* go to the routes (here a
    catch-all upstream), and the admin token guards nothing."""
    port = free_port()
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)],
                                       admin={"bind": f"localhost:{port}", "token": TOKEN}))
    wait_until(lambda: _answers(port))
    # a scraper's request, with the admin token: the token must never leave the gateway
    status, body = admin_get(port, "/metrics", TOKEN)
    assert TOKEN.encode() not in body, body[:700]
    assert status == 200 and b"gwserver_" in body, body[:300]
    status, body = admin_get(port, "/-/ready")
    assert status == 200 and b'"ready"' in body, body[:300]
    status, body = admin_get(port, "/admin/routes")
    assert status == 401, (status, body[:300])


def _answers(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_an_admin_bind_on_a_unix_socket_does_not_stop_every_worker(launcher, upstream,
                                                                     tmp_path):
    """admin.bind takes "unix:PATH" (bind_address, and _loopback_only says a Unix socket is
    local), but Worker.admin_address() does bind.rpartition(":") and int() of the path:
    ValueError in every worker's serve(), before any listener is served."""
    path = tmp_path / "admin.sock"
    port = free_port()
    conf = gateway_conf([route("r", ["/*rest"], upstream.url)],
                        server={"bind": [f"127.0.0.1:{port}"],
                                "state_dir": str(tmp_path / "state")},
                        admin={"bind": f"unix:{path}", "token": TOKEN})
    conf_path = tmp_path / "gw-unix-admin.toml"
    conf_path.write_text(to_toml(conf))
    log_path = tmp_path / "gw-unix-admin.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gwserver", "run", "-c", str(conf_path)],
                                stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
                                start_new_session=True)
    launcher.started.append(proc)       # stopped by pid in the launcher's teardown
    served = False
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not served:
        served = _answers_http(port)
        time.sleep(0.2)
    log = log_path.read_text(errors="replace")
    assert "invalid literal for int()" not in log, log[-1500:]
    assert served, log[-1500:]


def _answers_http(port):
    try:
        return status_of(raw_get(port, b"/x", timeout=2)) == 200
    except (OSError, IndexError, ValueError):
        return False


# -- 5. An empty X-Request-ID ---------------------------------------------------------------------

def test_an_empty_x_request_id_still_gives_the_request_an_id(launcher):
    """README: "X-Request-ID kept or generated and returned"; docs/operations.md: the client's
    502 "carries the same id (X-Request-ID and request_id in the body)" that the error log
    names. A client that sends an empty X-Request-ID is kept as "": its access line says
    request_id null, the error log says "request : bad_gateway", the 502 carries no id
    (neither header nor body), and the upstream gets an empty X-Request-ID. An operator
    handed that answer has nothing to find it by."""
    dead = free_port()          # nothing listens: a 502
    gw = launcher.gateway(gateway_conf([route("dead", ["/*rest"], f"http://127.0.0.1:{dead}")]))
    answer = raw_get(gw.port, b"/gone", b"X-Request-ID:\r\n")
    assert status_of(answer) == 502
    head, _, body = answer.partition(b"\r\n\r\n")
    line = wait_until(lambda: next((l for l in gw.access_lines() if l.get("path") == "/gone"),
                                   None))
    assert line["request_id"], line
    assert re.search(rb"(?im)^x-request-id: *\S", head), head
    assert b'"request_id"' in body, body


# -- 6. /admin/config and a password in an etcd endpoint URL -----------------------------------

def test_a_password_in_an_etcd_endpoint_is_refused_and_never_shown(tmp_path):
    """etcd.endpoints took any http(s) URL, userinfo included: /admin/config returned it as
    written (the one view not passed through redact()) and the sync process logged it when
    etcd was unreachable. etcd takes no credentials from a URL (its auth is etcd.username and
    password_file), so such an endpoint is refused, by check and at start, never quoted."""
    conf = gateway_conf([route("r", ["/*rest"], "http://127.0.0.1:9")], etcd={
        "endpoints": ["http://gw:hunter2-etcd-pw@127.0.0.1:2379"],
        "runtime_dir": str(tmp_path / "run")})
    path = tmp_path / "gw.toml"
    path.write_text(to_toml(conf))
    for action in ("check", "run"):
        said = subprocess.run([sys.executable, "-m", "gwserver", action, "-c", str(path)],
                              capture_output=True, text=True, timeout=60)
        assert said.returncode == 2, said
        assert "etcd.endpoints[0]: must not hold a user or password" in said.stderr, said
        assert "hunter2" not in said.stdout + said.stderr
