"""Open items the last passes reported and left, confirmed against real gateways, upstreams
and `gwserver check`, and fixed (the attack pass of 2026-12-05, helper h1, on 5f14d21). Each
test failed on that commit.

1. key_auth with ``query = "apikey"`` and a ``redirect`` with ``uri`` and ``append_query``
   (an API moved to another host): redirect runs before key_auth, so
   ``/old/x?a=1&apikey=KEY`` was answered ``Location: https://new.example/x?a=1&apikey=KEY``:
   the key went to the client's history, a Referer and the host the Location names (another
   company's, perhaps). So did ``$query`` in the uri. (The upstream's target was clean: key_auth
   strips the key before proxying, as docs/consumers.md says; the test holds that too. An
   ``http_to_https`` redirect keeps it on purpose: it sends the client back to this gateway,
   over TLS, and test_plugins_attack_dec05c holds that.)
2. A trusted proxy that speaks ``Forwarded`` (``real_ip_header = "Forwarded"``) may pass a
   client's own ``X-Real-IP`` through unread, as it does a client's ``X-Forwarded-*`` (which
   the gateway drops there): ``X-Real-IP: 6.6.6.6`` reached the upstream unchanged, and an
   upstream that reads it (nginx's header) took the client for 6.6.6.6, an allow-list's
   address perhaps; so did a route or a limit on the header. It now says the client that
   Forwarded named (a proxy that writes both says the same; test_admin_attack_dec05c).
   Behind a proxy that writes X-Forwarded-For the proxy's own X-Real-IP still passes
   (test_edge_security), and from an untrusted peer it never did.
3. ``[etcd] ca_file`` naming a FIFO: `gwserver check` said ok, and the config-sync process
   (and every etcd command) would block in its TLS setup. ``cert_file`` naming nothing and
   ``key_file = "/dev/zero"`` passed too, and ``snapshot_path`` naming a FIFO hung `gwserver
   check` itself (it reads the snapshot to warn about it) after it had said ok.
4. An upstream answering a websocket handshake with ``101`` and ``Content-Length: 5``: the
   gateway passed the Content-Length to the client (RFC 9110 8.6: a server MUST NOT send one
   in a 1xx). A client or a proxy in front that frames by it takes the tunnel's first 5 bytes
   (the first websocket frame) for a body.
5. jwt with ``consumer_claim`` on a route verifying with a secret or a PEM key (no
   ``jwks_file``), and a consumer bound to a key by ``credentials.jwt.kid``: every token naming
   the consumer was a 401 saying "names a consumer whose key did not sign it", although the
   route's one key had signed it, and the operator's log said nothing: neither learnt that
   the route has no JWKS for the binding to be checked against.
"""
import json
import os
import socket
import subprocess
import sys
import time

import jwt as pyjwt

from gwserver.plugins.key_auth import hash_key

from ..conftest import (WEBSOCKET_HANDSHAKE, gateway_conf, recv_until, route, to_toml,
                        wait_until)
from .test_attack_pass_dec03d import ScriptedHttp1
from .test_auth_edges import get, upstream_saw
from .test_edge_security import get as raw_get
from .test_edge_security import seen_headers
from .test_plugins_attack_dec05c import call

KEY = "ak_live_h1e_5c0ffee0d15ea5e"


# -- 1. a redirect's appended query carries key_auth's key -------------------------------------

def test_a_redirect_never_carries_key_auths_key_in_its_location(launcher, upstream):
    auth = {"key_auth": {"query": "apikey"}}
    gw = launcher.gateway(gateway_conf([
        route("moved", ["/old/*rest"], upstream.url, plugins={**auth, "redirect": {
            "uri": "https://new.example/$param_rest", "append_query": True, "status": 308}}),
        route("var", ["/var/*rest"], upstream.url, plugins={**auth, "redirect": {
            "uri": "/v2/$param_rest?$query", "status": 302}}),
        route("kept", ["/kept/*rest"], upstream.url, plugins={
            "key_auth": {"query": "apikey", "hide_credentials": False},
            "redirect": {"uri": "/v2/$param_rest", "append_query": True}}),
        route("api", ["/api/*rest"], upstream.url, plugins=auth)],
        consumers={"alice": {"credentials": {"key_auth": {"key_hash": hash_key(KEY)}}}},
        log={"access_format": "common"}))
    status, fields, _ = call(gw, "GET", f"/old/x?a=1&apikey={KEY}&b=2")
    assert (status, fields["location"]) == (308, ["https://new.example/x?a=1&b=2"])
    # every spelling key_auth takes for the parameter, and a query of the key alone
    status, fields, _ = call(gw, "GET", f"/old/y?APIKEY={KEY}&api%6Bey={KEY}")
    assert (status, fields["location"]) == (308, ["https://new.example/y"])
    status, fields, _ = call(gw, "GET", f"/var/z?apikey={KEY}&c=3")
    assert (status, fields["location"]) == (302, ["/v2/z?c=3"])
    # hide_credentials = false: the operator lets the key go on, and so it does
    status, fields, _ = call(gw, "GET", f"/kept/k?apikey={KEY}")
    assert (status, fields["location"]) == (301, [f"/v2/k?apikey={KEY}"])
    # proxied: the upstream's target holds no key either (docs/consumers.md)
    status, body = get(gw.port, f"/api/echo?a=1&apikey={KEY}")
    assert status == 200 and json.loads(body)["path"] == "/api/echo?a=1", body
    wait_until(lambda: gw.log().count("/api/echo") >= 1)
    log = [line for line in gw.log().splitlines() if KEY in line]
    assert log == [line for line in log if "/kept/k" in line], log


# -- 2. X-Real-IP behind a proxy that speaks Forwarded -----------------------------------------

def test_a_clients_x_real_ip_behind_a_forwarded_proxy_says_the_client_forwarded_named(
        launcher, upstream):
    gw = launcher.gateway(gateway_conf(
        [route("limited", ["/limited/*rest"], upstream.url, plugins={"rate_limit": {
            "key": "header:X-Real-IP", "rate": 1, "burst": 2, "per": 60}}),
         route("echo", ["/*rest"], upstream.url)],
        server={"trusted_proxies": ["127.0.0.1/32"], "real_ip_header": "Forwarded"}))
    status, answer = raw_get(gw.port, b"/echo", extra=b"Forwarded: for=10.1.1.1\r\n"
                                                      b"X-Real-IP: 6.6.6.6\r\n")
    assert status == 200, answer
    headers = seen_headers(answer)
    assert headers["x-real-ip"] == "10.1.1.1", headers
    assert headers["x-forwarded-for"] == "10.1.1.1, 127.0.0.1"
    assert wait_until(gw.access_lines)[-1]["client"] == "10.1.1.1"
    # a new X-Real-IP on each request is no new bucket of a limit keyed on it
    statuses = [raw_get(gw.port, b"/limited/x", extra=b"Forwarded: for=10.1.1.2\r\n"
                        b"X-Real-IP: 6.6.6.%d\r\n" % i)[0] for i in range(6)]
    assert statuses.count(429) >= 1, statuses
    # no X-Real-IP came: none is made up
    status, answer = raw_get(gw.port, b"/echo", extra=b"Forwarded: for=10.1.1.3\r\n")
    assert status == 200 and "x-real-ip" not in seen_headers(answer), answer


# -- 3. [etcd] files that are no regular files -------------------------------------------------

def run_check(conf_path, timeout=30):
    try:
        run = subprocess.run([sys.executable, "-m", "gwserver", "check", "-c", str(conf_path)],
                             capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"gwserver check hung: {exc.stdout!r}") from None
    return run.returncode, run.stdout + run.stderr


def test_check_refuses_etcd_files_that_are_no_regular_files(tmp_path):
    os.mkfifo(tmp_path / "ca.fifo")
    os.mkfifo(tmp_path / "snapshot.fifo")
    conf = gateway_conf([route("r", ["/*rest"], "http://127.0.0.1:9")], etcd={
        "endpoints": ["https://127.0.0.1:9"], "ca_file": str(tmp_path / "ca.fifo"),
        "cert_file": str(tmp_path / "missing.pem"), "key_file": "/dev/zero",
        "runtime_dir": str(tmp_path / "run"),
        "snapshot_path": str(tmp_path / "snapshot.fifo")})
    path = tmp_path / "gw.toml"
    path.write_text(to_toml(conf))
    code, out = run_check(path)
    assert code == 2, out
    for problem in (f"etcd.ca_file: {tmp_path}/ca.fifo: cannot read: not a regular file",
                    f"etcd.cert_file: {tmp_path}/missing.pem does not exist",
                    "etcd.key_file: /dev/zero: cannot read: not a regular file",
                    f"etcd.snapshot_path: {tmp_path}/snapshot.fifo is not a regular file"):
        assert problem in out, (problem, out)
    # a key without its certificate was dropped unused
    conf["etcd"] = {"endpoints": ["https://127.0.0.1:9"], "key_file": str(path),
                    "runtime_dir": str(tmp_path / "run"),
                    "snapshot_path": str(tmp_path / "snapshot.json")}
    path.write_text(to_toml(conf))
    code, out = run_check(path)
    assert code == 2 and "etcd.key_file: needs etcd.cert_file" in out, out


# -- 4. a 101's Content-Length -----------------------------------------------------------------

SWITCHED = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nContent-Length: 5\r\n"
            b"\r\nhello")


def test_a_101s_content_length_never_reaches_the_client(launcher):
    up = ScriptedHttp1({b"/ws": lambda n: SWITCHED})
    try:
        gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], up.url)]))
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
            sock.sendall(WEBSOCKET_HANDSHAKE)
            got = recv_until(sock, b"hello")
        head, _, tunnel = got.partition(b"\r\n\r\n")
        fields = [line.partition(b":")[0].lower() for line in head.split(b"\r\n")[1:]]
        assert head.startswith(b"HTTP/1.1 101 ") and b"upgrade" in fields, head
        assert b"content-length" not in fields and tunnel == b"hello", got
    finally:
        up.close()


# -- 5. a consumer bound to a kid on a route without a JWKS ------------------------------------

SECRET = "hs256-secret-for-the-kid-binding-test-0123456789"


def test_a_consumer_bound_to_a_kid_on_a_route_without_a_jwks_is_refused_with_the_reason(
        launcher, upstream):
    gw = launcher.gateway(gateway_conf(
        [route("j", ["/j/*rest"], upstream.url, plugins={"jwt": {
            "algorithms": ["HS256"], "secret": SECRET, "consumer_claim": "iss"}})],
        consumers={"bound": {"credentials": {"jwt": {"key": "https://b.example",
                                                     "kid": "partner-b"}}},
                   "free": {"credentials": {"jwt": {"key": "https://f.example"}}}}))

    def bearer(iss):
        token = pyjwt.encode({"iss": iss, "exp": int(time.time()) + 300}, SECRET, "HS256",
                             headers={"kid": "partner-b"})
        return {"Authorization": f"Bearer {token}"}
    status, body = get(gw.port, "/j/echo", bearer("https://f.example"))
    assert status == 200 and upstream_saw(body)["x-consumer-id"] == "free", body
    status, body = get(gw.port, "/j/echo", bearer("https://b.example"))
    assert status == 401, body
    message = json.loads(body)["message"]
    assert "no JWKS" in message and "did not sign" not in message, message
    line = wait_until(lambda: [line for line in gw.log().splitlines()
                               if "credentials.jwt.kid" in line])
    assert "route j" in line[0] and "consumer bound" in line[0] and "partner-b" in line[0], line
    assert SECRET not in gw.log()


def test_an_http_to_https_redirect_to_another_host_carries_no_key(launcher, upstream):
    """(Found by the review of this pass.) ``http_to_https`` with ``host`` naming another
    host than the request's sent key_auth's query key there: only a redirect to the host
    the client asked for, which takes the key in over TLS, keeps it."""
    auth = {"key_auth": {"query": "apikey"}}
    gw = launcher.gateway(gateway_conf([
        route("elsewhere", ["/elsewhere/*rest"], upstream.url, plugins={
            "redirect": {"http_to_https": True, "host": "other.example"}, **auth}),
        route("same", ["/same/*rest"], upstream.url, plugins={
            "redirect": {"http_to_https": True, "host": "127.0.0.1"}, **auth})],
        consumers={"alice": {"credentials": {"key_auth": {"key_hash": hash_key(KEY)}}}}))
    status, fields, _ = call(gw, "GET", f"/elsewhere/x?a=1&apikey={KEY}")
    assert (status, fields["location"]) == (301, ["https://other.example/elsewhere/x?a=1"])
    status, fields, _ = call(gw, "GET", f"/same/x?a=1&apikey={KEY}")
    assert (status, fields["location"]) == (301, [f"https://127.0.0.1/same/x?a=1&apikey={KEY}"])
