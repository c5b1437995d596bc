"""The admin API, metrics, access log, tracing and forwarded headers, attacked through real
gateways and upstreams (the attack pass of 2026-12-05, helper h4). Each test failed before
its fix.

1. A target written with a password (``http://:pw@host``: an empty user name, which the
   check for a user name let through) was taken, and its password shown in /admin/routes,
   /admin/upstreams, the access log's ``upstream`` and /metrics' ``target`` labels; one with
   a user (``http://user:pw@host``) was refused with the URL, password and all, quoted in
   `gwserver check`, the log and (from etcd) /admin/config's rejected items.
2. Access log: a User-Agent (or Referer) holding bytes 0x80-0xff was written as their
   code points in UTF-8, C1 controls included: ``\\x9b`` is a terminal's CSI (``tail -f``
   of the log ran the client's escape sequence) and ``\\x85`` (NEL) ends a line for
   readers that split on Unicode line breaks (Python's ``splitlines``), so one request
   became two lines, the second of the client's making. The common format now escapes
   them as nginx does (``\\x9B``), json as ``\\u009b``.
3. Metrics: the gauges "as this host last saw it" (target up, breaker state, adaptive rate)
   were kept by dead workers' files for good: a target taken out of the conf while it was
   down went on saying ``gwserver_upstream_target_up 0`` (GwserverUpstreamTargetDown fired
   for ever), and each reload left one more file per worker that every scrape read.
4. Admin listener: a request with ``Upgrade: websocket`` (to a probe: no token needed) was
   answered ``Connection: keep-alive``, but its parser had handed the connection over to a
   tunnel that is never opened: the requests after it went unanswered, and the connection
   was never closed while its client kept sending (past keepalive and header_timeout), one
   slot of the admin listener held per connection for as long as a client liked.
5. Tracing: ``otlp_endpoint = "https://user:password@collector"`` (the OTLP exporter sends
   it as Basic auth, as Grafana Cloud's collector asks) was logged whole by every worker at
   start: "exporting spans to https://user:password@...".
6. A value refused for another reason was quoted with the password of a URL in it
   (``redis+sentinel://:pw@a:26379,b/m``, a node without its port: "needs host:port for
   every node, got "b" in "redis+sentinel://:pw@..."") in `check`, the log and, for what
   comes from etcd, /admin/config's rejected items.
7. Behind a trusted proxy that speaks X-Forwarded-For (the default ``real_ip_header``), a
   client's own ``Forwarded: for=10.0.0.1;host=admin.internal;proto=https``, which such a
   proxy passes through unread (nginx does unless told otherwise), reached the
   upstream as it was: frameworks that prefer Forwarded to X-Forwarded-* (Spring's
   ForwardedHeaderFilter, Quarkus) took the client, host and scheme the client chose,
   while the gateway's limits and allow-lists had keyed on the client X-Forwarded-For named
   and the upstream's X-Forwarded-For said so too. The converse (a client's X-Forwarded-*
   behind a proxy that writes Forwarded) was already treated as the client's.
8. ... but only for X-Forwarded-For, -Proto and -Host: behind a trusted proxy that writes
   Forwarded, a client's X-Forwarded-Prefix, -Port, -Scheme, -Ssl and -Server reached the
   upstream (werkzeug's ProxyFix and Spring read the prefix and port: links and redirects
   under a path of the client's choosing), though docs/security.md says a client's
   X-Forwarded-* are then "not kept, not forwarded".
9. A secret written where it does not fit its setting was quoted back: ``admin.token =
   "correct horse battery staple"`` (spaces) got "must be printable ASCII without spaces, got
   "correct horse battery staple"" in `check` and in the master's log when a reload was
   refused; so did an etcd password or a jwt secret written as a number (a jwt plugin's
   config in etcd: in /admin/config's rejected items). admin.token_file's was not quoted.
"""
import json
import os
import signal
import socket
import subprocess
import sys

from ..conftest import free_port, gateway_conf, route, to_toml, wait_until
from .test_admin import sample

TOKEN = "admin-token-for-the-h4-pass-0123"


def admin_get(port, path, token=TOKEN):
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body


def raw_request(port, head):
    """Send ``head`` (bytes) on a new connection; the answer's bytes until the close."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


# -- 1. a target's password ------------------------------------------------------------------

PASSWORD = "tgt-s3cret-pw-9f8e"


def check(tmp_path, conf):
    path = tmp_path / "gw.toml"
    path.write_text(to_toml(conf))
    run = subprocess.run([sys.executable, "-m", "gwserver", "check", "-c", str(path)],
                         capture_output=True, text=True, timeout=60)
    return run.returncode, run.stdout + run.stderr


def test_a_target_with_a_password_is_refused_without_quoting_it(tmp_path):
    for url in (f"http://:{PASSWORD}@127.0.0.1:9", f"http://svc:{PASSWORD}@127.0.0.1:9",
                f"https://{PASSWORD}@127.0.0.1:9"):
        code, out = check(tmp_path, gateway_conf([route("r", ["/*rest"], url)]))
        assert code == 2 and "targets[0].url" in out and "password" in out, (url, out)
        assert PASSWORD not in out, out


def test_a_target_with_a_password_never_reaches_the_admin_views(launcher, upstream, tmp_path):
    from .test_etcd import etcd_conf, put
    etcd = launcher.etcd()
    conf = etcd_conf(tmp_path, [etcd.url], [route("ok", ["/ok"], upstream.url)], workers=1)
    conf["admin"] = {"token": TOKEN}
    gw = launcher.gateway(conf)
    put(etcd.client(), "routes", "leaky", {"paths": ["/leaky"], "upstream": {
        "targets": [{"url": f"http://:{PASSWORD}@127.0.0.1:{upstream.port}"}]}})
    put(etcd.client(), "routes", "leaky2", {"paths": ["/leaky2"], "upstream": {
        "targets": [{"url": f"http://u:{PASSWORD}@127.0.0.1:{upstream.port}"}]}})
    wait_until(lambda: b"leaky2" in admin_get(gw.admin_port, "/admin/config")[1] and
               b"leaky" in admin_get(gw.admin_port, "/admin/routes")[1] +
               admin_get(gw.admin_port, "/admin/config")[1].replace(b"leaky2", b""),
               timeout=15)
    gw.request("GET", "/leaky")
    for path in ("/admin/config", "/admin/routes", "/admin/upstreams", "/metrics"):
        status, body = admin_get(gw.admin_port, path)
        assert status == 200 and PASSWORD.encode() not in body, (path, body[-3000:])
    wait_until(lambda: "leaky2" in gw.log(), timeout=10)
    assert PASSWORD not in gw.log()


# -- 2. C1 controls in the access log ---------------------------------------------------------

# CSI + "31m" (red), then NEL and what would read as a line of its own
HOSTILE_AGENT = b'curl\x9b31m]0;x\x85{"time":"forged","status":200}\xff'


def log_bytes(gw):
    with open(gw.log_path, "rb") as f:
        return f.read()


def test_c1_controls_in_a_header_are_escaped_in_the_common_log(launcher, upstream):
    gw = launcher.gateway(gateway_conf([route("echo", ["/echo"], upstream.url)], log={
        "access_format": "common", "access_fields": ["route", "user_agent", "referer"]}))
    answer = raw_request(gw.port, b"GET /echo HTTP/1.1\r\nHost: h\r\nUser-Agent: " +
                         HOSTILE_AGENT + b"\r\nReferer: /r\xc2\x85\r\n"
                         b"Connection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    line = wait_until(lambda: [l for l in log_bytes(gw).split(b"\n") if b'"echo"' in l])[0]
    for raw in (b"\xc2\x9b", b"\xc2\x85", b"\xc3\xbf", b"\xc3\x82"):
        assert raw not in line, line
    # nginx's spelling: every byte over 0x7e as \xHH, so the line shows what was sent
    assert b'"curl\\x9B31m]0;x\\x85{\\x22time\\x22:\\x22forged\\x22' in line, line
    assert b'"/r\\xC2\\x85"' in line, line


def test_c1_controls_in_a_header_are_escaped_in_the_json_log(launcher, upstream):
    gw = launcher.gateway(gateway_conf([route("echo", ["/echo"], upstream.url)], log={
        "access_fields": ["time", "route", "status", "user_agent"]}))
    answer = raw_request(gw.port, b"GET /echo HTTP/1.1\r\nHost: h\r\nUser-Agent: " +
                         HOSTILE_AGENT + b"\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    wait_until(lambda: b'"echo"' in log_bytes(gw))
    data = log_bytes(gw)
    assert b"\xc2\x9b" not in data and b"\xc2\x85" not in data, data[-500:]
    # one line, whichever line breaks its reader knows, and the value as it was sent
    lines = [l for l in data.decode("utf-8").splitlines() if '"echo"' in l or "forged" in l]
    assert len(lines) == 1, lines
    assert json.loads(lines[0])["user_agent"] == \
        HOSTILE_AGENT.decode("latin-1")


# -- 3. gauges of dead workers ----------------------------------------------------------------

def scrape(gw):
    status, body = admin_get(gw.admin_port, "/metrics")
    assert status == 200, body
    return body.decode()


def test_a_target_taken_out_while_down_is_not_reported_down_for_ever(launcher, upstream,
                                                                        tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    metrics_dir = tmp_path / "metrics"

    def conf(targets):
        return gateway_conf([route("r", ["/*rest"], None)], workers=2, upstreams={"u": {
            "targets": [{"url": url} for url in targets],
            "passive": {"consecutive_failures": 1, "eject_for": 3600}}},
            admin={"token": TOKEN, "metrics_dir": str(metrics_dir)})

    first = conf([upstream.url, dead])
    first["routes"][0]["upstream"] = "u"
    gw = launcher.gateway(first)
    for _ in range(6):          # new connections: both workers try (and eject) the dead one
        gw.request("GET", "/x")
    wait_until(lambda: sample(scrape(gw), "gwserver_upstream_target_up", target=dead) == 0)
    second = conf([upstream.url])
    second["routes"][0]["upstream"] = "u"
    second["server"]["bind"], second["server"]["state_dir"] = \
        gw.conf["server"]["bind"], gw.conf["server"]["state_dir"]
    second["admin"]["bind"] = gw.conf["admin"]["bind"]
    for _ in range(3):
        gw.conf_path.write_text(to_toml(second))
        before = set(gw.worker_pids())
        os.kill(gw.pid, signal.SIGHUP)
        wait_until(lambda: not before & set(gw.worker_pids()))
    wait_until(lambda: sample(scrape(gw), "gwserver_upstream_target_up",
                              target=upstream.url) == 1)
    text = scrape(gw)
    assert sample(text, "gwserver_upstream_target_up", target=dead) is None, text
    # only the live workers' files, plus the archives of counters and histograms
    per_pid = [f for f in os.listdir(metrics_dir) if not f.endswith("_archive.db")]
    assert len(per_pid) <= 2 * 5, sorted(per_pid)


# -- 4. an upgrade request to the admin listener ----------------------------------------------

def test_an_upgrade_request_to_the_admin_listener_ends_its_connection(launcher, upstream):
    import time
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)],
                                       admin={"token": TOKEN},
                                       server={"keepalive": 1, "header_timeout": 1}))
    with socket.create_connection(("127.0.0.1", gw.admin_port), timeout=5) as sock:
        sock.sendall(b"GET /-/healthz HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     b"Sec-WebSocket-Version: 13\r\n\r\n")
        sock.settimeout(0.2)
        received, closed = b"", False
        deadline = time.monotonic() + 6        # keepalive and header_timeout: 1 s
        while time.monotonic() < deadline and not closed:
            try:
                sock.sendall(b"GET /-/healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                chunk = sock.recv(65536)
                closed = not chunk
                received += chunk
            except socket.timeout:
                pass
            except OSError:
                closed = True
    assert received.startswith(b"HTTP/1.1 200"), received[:300]
    # no promise of a next answer it cannot give, and no connection kept for ever
    head = received.partition(b"\r\n\r\n")[0]
    assert b"Connection: close" in head, received[:300]
    assert closed, received[-300:]


# -- 5. an OTLP endpoint's password in the log -------------------------------------------------

def test_an_otlp_endpoints_password_is_used_but_never_logged(launcher, upstream):
    import base64
    from .test_traffic import otlp_collector
    seen = []
    collector = otlp_collector(lambda headers, body: seen.append(headers.get("Authorization")))
    try:
        gw = launcher.gateway(gateway_conf([route("t", ["/*rest"], upstream.url)], tracing={
            "otlp_endpoint": f"http://tenant-7:{PASSWORD}@127.0.0.1:{collector.server_port}"}))
        assert gw.request("GET", "/echo")[0].status == 200
        wait_until(lambda: seen, timeout=10)
    finally:
        collector.shutdown()
    assert seen[0] == "Basic " + base64.b64encode(f"tenant-7:{PASSWORD}".encode()).decode()
    assert "exporting spans to http://***@127.0.0.1" in gw.log(), gw.log()[-2000:]
    assert PASSWORD not in gw.log()


# -- 6. a URL's password quoted in an error -------------------------------------------------------

def test_a_refused_url_is_quoted_without_its_password(tmp_path):
    for redis_url in (f"redis+sentinel://:{PASSWORD}@127.0.0.1:26379,127.0.0.2/mymaster",
                      f"redis+sentinel://:{PASSWORD}@127.0.0.1:26379"):
        code, out = check(tmp_path, gateway_conf([route("r", ["/*rest"], "http://127.0.0.1:9")],
                                                 redis={"url": redis_url}))
        assert code == 2 and "redis.url" in out and "***@127.0.0.1" in out, out
        assert PASSWORD not in out, out


# -- 7. a client's Forwarded behind a proxy that writes X-Forwarded-For ------------------------

def test_behind_an_x_forwarded_for_proxy_a_clients_forwarded_header_is_its_own(launcher,
                                                                                upstream):
    def tagged(name, **extra):
        return route(name, [f"/{name}/*rest" if name == "internal" else "/*rest"],
                     upstream.url, plugins={"headers": {"request": {"set": {"X-Route": name}}}},
                     **extra)
    gw = launcher.gateway(gateway_conf([
        tagged("internal", priority=10, headers={"Forwarded": "for=10.0.0.1"}), tagged("any")],
        server={"trusted_proxies": ["127.0.0.1/32"]}))
    forged = {"X-Forwarded-For": "192.0.2.7", "X-Forwarded-Proto": "http",
              "Forwarded": "for=10.0.0.1;host=admin.internal;proto=https"}
    resp, body = gw.request("GET", "/echo", headers=forged)
    assert resp.status == 200, body
    seen = {name.lower(): value for name, value in json.loads(body)["headers"]}
    assert seen["x-forwarded-for"] == "192.0.2.7, 127.0.0.1"
    assert "forwarded" not in seen, seen
    # nor does it match a route's condition on it
    resp, body = gw.request("GET", "/internal/x", headers={**forged,
                                                           "Forwarded": "for=10.0.0.1"})
    seen = {name.lower(): value for name, value in json.loads(body)["headers"]}
    assert resp.status == 200 and seen["x-route"] == "any", seen


# -- 8. the other X-Forwarded-* behind a proxy that writes Forwarded --------------------------

def test_behind_a_forwarded_proxy_no_x_forwarded_header_of_the_client_passes(launcher,
                                                                              upstream):
    gw = launcher.gateway(gateway_conf([route("any", ["/*rest"], upstream.url)], server={
        "trusted_proxies": ["127.0.0.1/32"], "real_ip_header": "Forwarded"}))
    forged = {"X-Forwarded-Prefix": "/admin", "X-Forwarded-Port": "8443",
              "X-Forwarded-Scheme": "https", "X-Forwarded-Ssl": "on",
              "X-Forwarded-Server": "admin.internal", "X-Forwarded-For": "6.6.6.6",
              "Forwarded": "for=203.0.113.7;proto=http", "X-Real-IP": "203.0.113.7"}
    resp, body = gw.request("GET", "/echo", headers=forged)
    assert resp.status == 200, body
    seen = {name.lower(): value for name, value in json.loads(body)["headers"]}
    assert seen["x-forwarded-for"] == "203.0.113.7, 127.0.0.1", seen
    assert seen["x-forwarded-proto"] == "http", seen
    leaked = {name for name in seen if name.startswith("x-forwarded-")} - {
        "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}
    assert not leaked, {name: seen[name] for name in leaked}
    assert seen["x-real-ip"] == "203.0.113.7"       # what else the proxy says still passes


# -- 9. a secret that does not fit its setting ---------------------------------------------------

def test_a_secret_that_does_not_fit_its_setting_is_not_quoted(tmp_path):
    conf = gateway_conf([route("r", ["/*rest"], "http://127.0.0.1:9", plugins={"jwt": {
        "algorithms": ["HS256"], "secret": 73194682550917346}})],
        admin={"token": "correct horse battery staple"},
        etcd={"endpoints": ["http://127.0.0.1:2379"], "password": 5524981237})
    code, out = check(tmp_path, conf)
    for where in ("admin.token", "etcd.password", "jwt: secret"):
        assert where in out, (where, out)
    assert code == 2 and "not shown" in out, out
    for secret in ("correct horse", "73194682550917346", "5524981237"):
        assert secret not in out, (secret, out)
