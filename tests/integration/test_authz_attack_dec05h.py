"""What the gateway authorises against what the upstream serves, attacked through real gateways
and upstreams (the attack pass of 2026-12-05, helper h4, on e96cb6d). Each test failed on
that commit.

1. Behind a trusted load balancer (``trusted_proxies``), a client's ``X-HTTP-Method-Override:
   DELETE`` on a ``POST``, and its ``X-Original-URL: /admin/...`` on a public path, reached
   the upstream as they came, over HTTP/1.1 and HTTP/2: the gateway routed the POST to a
   public route that takes POST, while a route for DELETE on the same paths asked for a
   key, and an upstream that honours the override (Symfony, Laravel, Express's
   method-override; IIS and Laminas for X-Original-URL) served the DELETE, or /admin, that
   no route's plugins had judged. From an untrusted client they were dropped already; a
   balancer passes a client's copy through unread. They are dropped from everyone now.
2. A CORS preflight was answered by the cors of the route its announced method takes on the
   preflight's own headers, which carry none of those it announces: with ``/api/*rest`` on
   ``X-Tenant = "internal"`` (no cors: no cross-origin page may call it) beside a public
   ``/api/*rest`` whose cors allows a partner's origin and any header, the partner's page
   asked to send a credentialed DELETE with ``X-Tenant``, got 204 from the public route's
   cors, and its DELETE with ``X-Tenant: internal`` (the user's cookie along) was served by
   the internal route's upstream. The routes an announced header may lead to must now all
   consent (each one's cors, on its own terms); one without a cors refuses.
3. (pure code: tests/unit/test_fence_attack_dec05h.py) A refused new route from etcd whose
   ``hosts`` or ``methods`` held one unreadable item was fenced with the other items alone,
   so that item's requests fell through to the public catch-all.

Held up (same answer from the gateway and the upstream, over HTTP/1.1 and h2c): absolute-form
targets against a different Host (the URI's host routed and sent), ``Host: ADMIN.test:80``,
``admin.test.``, two Hosts, ``:authority`` with a different ``host`` (reset), a fragment, obs-fold
and ``X-Env : v`` (400), a listed header condition sent as two HTTP/2 fields (400), ``OPTIONS *``
(400), ``%2f`` through a rewrite's capture (400), HTTP/2 with an h2 upstream after a rewrite
(``:path`` and ``:authority`` as routed), a redirect's ``$query`` and ``append_query`` over
h2c with key_auth's key spelt ``APIKEY``, ``api%6Bey``, ``;apikey``, ``apikey[]``, ``%20apikey``
(all taken out).
"""
import socket

import pytest

from gwserver.plugins.key_auth import hash_key

from ..conftest import gateway_conf, route
from ..h2client import RawH2

KEY = "ak_live_alice_5e6f7a8b9c0d1e2f"
STEERING = ("x-http-method-override", "x-http-method", "x-method-override", "x-original-url",
            "x-rewrite-url")


def raw_request(port, data, timeout=5):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        out = b""
        while True:
            piece = sock.recv(65536)
            if not piece:
                return out
            out += piece


# -- 1. method overrides and X-Original-URL from behind a trusted balancer -------------------

@pytest.mark.parametrize("protocol", ["http/1.1", "h2c"])
def test_a_path_or_method_override_never_reaches_the_upstream_even_via_a_trusted_proxy(
        launcher, h1_up, protocol):
    public = route("api-public", ["/api/*rest"], h1_up.url, methods=["GET", "POST"])
    guarded = route("api-write", ["/api/*rest"], h1_up.url, methods=["DELETE", "PUT"],
                    plugins={"key_auth": {}})
    gw = launcher.gateway(gateway_conf(
        [public, guarded],
        consumers={"alice": {"credentials": {"key_auth": {"key_hash": hash_key(KEY)}}}},
        server={"trusted_proxies": ["127.0.0.1/32"]}, http2={"h2c": True}))
    # what the gateway itself makes of the DELETE: the key is asked for
    assert raw_request(gw.port, b"DELETE /api/users/1 HTTP/1.1\r\nHost: a\r\n"
                       b"Connection: close\r\n\r\n").startswith(b"HTTP/1.1 401")
    overrides = [("X-HTTP-Method-Override", "DELETE"), ("X-HTTP-Method", "DELETE"),
                 ("X-Method-Override", "DELETE"), ("X-Original-URL", "/admin/users/1"),
                 ("X-Rewrite-URL", "/admin/users/1"), ("X-Forwarded-For", "6.6.6.6")]
    if protocol == "h2c":
        client = RawH2(gw.port)
        sid = client.request("/api/users/1", "POST",
                             [(k.lower(), v) for k, v in overrides] +
                             [("content-length", "3")], body=b"x=1")
        status = client.response(sid)[0]
        client.close()
    else:
        lines = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in overrides)
        answer = raw_request(gw.port, b"POST /api/users/1 HTTP/1.1\r\nHost: a\r\n" + lines +
                             b"Content-Length: 3\r\nConnection: close\r\n\r\nx=1")
        status = int(answer.split(b" ", 2)[1])
    assert status == 200
    head = h1_up.heads[-1].decode("latin-1")
    assert head.startswith("POST /api/users/1 ")
    assert [h1_up.header(-1, name) for name in STEERING] == [[]] * len(STEERING), head
    # what a trusted proxy does say still passes: the client it names
    assert h1_up.header(-1, "x-forwarded-for") == ["6.6.6.6, 127.0.0.1"]


# -- 2. a preflight answered by a route its request does not take -----------------------------

PARTNER = b"https://partner.example"


def preflight(port, announced):
    return raw_request(port, b"OPTIONS /api/orders/1 HTTP/1.1\r\nHost: a\r\nOrigin: " +
                       PARTNER + b"\r\nAccess-Control-Request-Method: DELETE\r\n"
                       b"Access-Control-Request-Headers: " + announced +
                       b"\r\nConnection: close\r\n\r\n")


def status_of(answer):
    return int(answer.split(b" ", 2)[1])


def test_a_preflight_needs_the_consent_of_every_route_its_announced_headers_may_take(
        launcher, h1_up):
    public_cors = {"allow_origins": [PARTNER.decode()], "allow_headers": ["*"],
                   "allow_credentials": True}
    internal = route("internal", ["/api/*rest"], h1_up.url, headers={"X-Tenant": "internal"})
    public = route("public", ["/api/*rest"], h1_up.url, plugins={"cors": public_cors})
    gw = launcher.gateway(gateway_conf([internal, public]))
    # a header no route matches on: the public route's cors answers, as before
    answer = preflight(gw.port, b"content-type, x-trace")
    assert status_of(answer) == 204 and b"Access-Control-Allow-Origin: " + PARTNER in answer
    # X-Tenant can take the request to the internal route, which allows no origin at all
    answer = preflight(gw.port, b"content-type, X-Tenant")
    assert status_of(answer) == 403, answer
    assert b"Access-Control-Allow-Origin" not in answer
    assert not any(head.startswith(b"OPTIONS") for head in h1_up.heads)
    # the real request itself is routed as it always was
    answer = raw_request(gw.port, b"DELETE /api/orders/1 HTTP/1.1\r\nHost: a\r\n"
                         b"X-Tenant: internal\r\nConnection: close\r\n\r\n")
    assert status_of(answer) == 200 and h1_up.heads[-1].startswith(b"DELETE /api/orders/1 ")


def test_routes_that_all_allow_the_origin_answer_the_preflight_together(launcher, h1_up):
    """Both routes' cors allow the partner: the preflight is answered (204) whichever route
    X-Tenant leads to; and a route reached by the announced header alone (no route for the
    request without it) answers its own preflights, which went nowhere (404)."""
    both = {"allow_origins": [PARTNER.decode()], "allow_headers": ["x-tenant"]}
    gw = launcher.gateway(gateway_conf([
        route("internal", ["/api/*rest"], h1_up.url, headers={"X-Tenant": "internal"},
              plugins={"cors": {**both, "allow_methods": ["GET", "DELETE"]}}),
        route("public", ["/api/*rest"], h1_up.url, plugins={"cors": both}),
        route("tenant-only", ["/t/*rest"], h1_up.url, headers={"X-Tenant": "internal"},
              plugins={"cors": both})]))
    answer = preflight(gw.port, b"x-tenant")
    assert status_of(answer) == 204, answer
    assert b"Access-Control-Allow-Methods: GET, DELETE\r\n" in answer     # the first route's
    answer = raw_request(gw.port, b"OPTIONS /t/1 HTTP/1.1\r\nHost: a\r\nOrigin: " + PARTNER +
                         b"\r\nAccess-Control-Request-Method: GET\r\n"
                         b"Access-Control-Request-Headers: x-tenant\r\n"
                         b"Connection: close\r\n\r\n")
    assert status_of(answer) == 204, answer


# -- 4. a limit keyed on the credential header an auth plugin removed first ---------------------

def test_a_limit_keyed_on_the_hidden_key_header_is_one_bucket_and_check_says_so(
        launcher, upstream, tmp_path):
    """key_auth removes X-API-Key (hide_credentials, the default) before rate_limit runs, so
    `key = "header:X-API-Key"` counted every client in the one bucket of requests without the
    header: one client spent every other's limit, silently. `gwserver check` (and the log at
    start and reload) now says so and names the key that was meant."""
    import subprocess
    import sys
    from .test_consumers import KEYS, consumers
    from ..conftest import to_toml
    conf = gateway_conf([route("k", ["/k"], upstream.url, plugins={
        "key_auth": {}, "rate_limit": {"rate": 2, "per": 3600, "burst": 2,
                                       "key": "header:X-API-Key"}})], consumers=consumers())
    gw = launcher.gateway(conf)
    alice = [gw.request("GET", "/k", headers={"X-API-Key": KEYS["alice"]})[0].status
             for _ in range(2)]
    bob = gw.request("GET", "/k", headers={"X-API-Key": KEYS["bob"]})[0].status
    assert alice == [200, 200] and bob == 429       # bob pays for alice: why it is warned
    path = tmp_path / "gw.toml"
    path.write_text(to_toml(conf))
    run = subprocess.run([sys.executable, "-m", "gwserver", "check", "-c", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert ('route k: plugins.rate_limit: key "header:X-API-Key" is a header the route\'s '
            'auth plugin removes before rate_limit runs (hide_credentials): every client is '
            'counted in one bucket; use key = "consumer"') in run.stdout + run.stderr
    assert "use key = \"consumer\"" in gw.log()         # said at start too
