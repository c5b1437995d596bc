"""A review of the day's changes (5f14d21..1b8dbb1), attacked through real gateways and
upstreams (the review pass of 2026-12-05, helper h5). Each test failed on 1b8dbb1.

1. refuse_listed (c2d58ab) made a 400 of every failed ``headers`` condition whose header held
   the value in a comma list, lists a client writes itself included: a route on
   ``Accept = "application/vnd.gw.v2+json"`` beside a catch-all answered a client sending
   ``Accept: application/vnd.gw.v2+json, application/json`` (one field, as browsers and
   HTTP libraries write it) 400, where it had gone to the catch-all, whose upstream reads the
   same one line. Copies are now told from a list: the reader notes the fields that came
   more than once (RequestContext.repeated), and a field of the client-written lists
   (Accept, Accept-Encoding, Accept-Language, Cache-Control, ...) that came once is routed
   as before; twice, it is still a 400 (core/router.py, CLIENT_LISTS).
2. The same check skipped conditions whose value holds a comma: ``X-Tags = "a, b"`` and
   ``X-Tags: a, b`` then ``X-Tags: c`` missed the guarded route and went to the broader
   one, whose upstream read the first copy, ``a, b``. Copies holding the value are a 400
   too.
3. identity_proxies (03619e5) kept an authenticating proxy's X-Forwarded-User and the like
   for the upstream only: they no longer reached header_map, so a route ``headers``
   condition on ``X-Forwarded-Groups`` (or a plugin reading the header: a limit keyed on
   it, a log field) saw nothing, even from the proxy named in identity_proxies; before, from
   a trusted proxy, they did. Nor could a plugin edit them: set_header and remove_header
   trust header_map to know the names a request has, so rewrite's ``remove`` left the
   proxy's X-Forwarded-Email in place and its ``set`` sent a second X-Forwarded-User beside
   the proxy's. They are kept for both again (client/http1.py, on_header).
4. With ``headers_with_underscores = "allow"``, ``X_Forwarded_User: admin`` from any client
   reached the upstream, which a CGI or WSGI server reads as ``HTTP_X_FORWARDED_USER``, the
   variable of the header identity_proxies keeps to the authenticating proxy (and
   ``X_Consumer_ID``, an auth plugin's, ``X_Real_IP``, a trusted proxy's, alike). The
   underscore spellings of the headers the gateway rules on are dropped whatever the
   setting; other names with ``_`` are forwarded as "allow" says (client/http1.py).
5. client_context is built again when its files change (7330550), and a build that failed
   raised: an upstream's CA file rewritten in place (truncated, then written: ``cat new >
   ca.pem``, a config tool's copy) failed every health probe of every target that
   verifies with it while it was short, and the checker took the whole upstream out (then
   panic mode) over a file of its own host; the context it had built kept serving before.
   A build that fails now keeps the last good context and says so in a throttled line
   naming the file; the next use builds again (upstream/clienttls.py).
6. identity_proxies keeps who the user is to the authenticating proxies, by a list of names
   that left out the siblings of names it holds: Authelia writes ``Remote-User`` and
   ``Remote-Groups``, ``-Email``, ``-Name``; Kubernetes' authenticating proxy
   ``X-Remote-User`` and ``X-Remote-Group``. A client's ``Remote-Groups: admins`` or
   ``X-Remote-Group: system:masters`` reached the upstreams that authorise on them, as did
   Google IAP's ``X-Goog-Authenticated-User-Email``, Cloudflare Access's
   ``Cf-Access-Authenticated-User-Email``, authentik's ``X-authentik-*`` and Vouch's
   ``X-Vouch-User``. They are identity headers now (core/headers.py, IDENTITY_SET).

Held (tried, and the code did what it says): add_body's bytearray pieces on every consumer
(a replayed retry, chunked re-framing, a streamed body, HTTP/2 upstreams and gRPC-Web, which
all join the pieces into bytes; no plugin reads the pieces); identity headers over HTTP/2
(the same on_header), in trailers (dropped) and in odd case; the PROXY v2 SSL TLV, read only
from a peer in trusted_proxies and only for a PROXY command with addresses; ProtocolMismatch
leaving gRPC-Web and h2c upgrades alone (only a websocket is req.upgrade); the 101 without
Content-Length; redirect's public_query on $query and append_query; close_idle's clock (the
ticker's monotonic one on both sides); a full block_when_full pool skipped at most once per
target (the loop ends waiting on the last one).
"""
import json
import os
import subprocess
import time

from ..conftest import gateway_conf, route, wait_until
from .test_edge_security import body_of, get
from .test_health_attack_dec05e import checked_over_tls

DENY_LOOPBACK = {"ip_restriction": {"deny": ["127.0.0.0/8", "::1/128"]}}


# -- 1. a list the client writes itself -----------------------------------------------------

def test_a_list_a_client_writes_once_is_not_a_400(launcher, upstream):
    """One Accept field listing the condition's value and another: the catch-all's, as before
    c2d58ab; the same value sent in two Accept fields is still the 400 of copies."""
    gw = launcher.gateway(gateway_conf([
        route("v2", ["/*rest"], upstream.url, headers={"Accept": "application/vnd.gw.v2+json"},
              plugins=DENY_LOOPBACK),
        route("public", ["/*rest"], upstream.url)], http2={"h2c": True}))
    assert get(gw.port, b"/x", extra=b"Accept: application/vnd.gw.v2+json\r\n")[0] == 403
    for once in (b"Accept: application/vnd.gw.v2+json, application/json\r\n",
                 b"Accept: application/json,application/vnd.gw.v2+json\r\n"):
        status, answer = get(gw.port, b"/x", extra=once)
        assert status == 200, (once, answer[:400])
        seen = json.loads(body_of(answer))["headers"]
        assert [v for k, v in seen if k.lower() == "accept"] == \
            [once.partition(b": ")[2].strip().decode()], seen
    status, answer = get(gw.port, b"/x", extra=b"Accept: application/vnd.gw.v2+json\r\n"
                                                b"Accept: application/json\r\n")
    assert status == 400 and b"accept header is a list" in answer, answer[:400]
    # HTTP/2 alike: one field is a list, two are copies
    h2 = ["curl", "-sS", "--max-time", "10", "--http2-prior-knowledge", "-o", "/dev/null",
          "-w", "%{http_code}", f"http://127.0.0.1:{gw.port}/x"]
    once = subprocess.run(h2 + ["-H", "Accept: application/vnd.gw.v2+json, application/json"],
                          capture_output=True, timeout=20)
    assert once.stdout == b"200", once
    twice = subprocess.run(h2 + ["-H", "Accept: application/vnd.gw.v2+json",
                                 "-H", "Accept: application/json"], capture_output=True,
                           timeout=20)
    assert twice.stdout == b"400", twice
    assert upstream.stats()["requests"] == 3


# -- 2. a condition whose value holds a comma ------------------------------------------------

def test_copies_holding_a_value_with_a_comma_are_a_400(launcher, upstream):
    gw = launcher.gateway(gateway_conf([
        route("tagged", ["/*rest"], upstream.url, headers={"X-Tags": "a, b"},
              plugins=DENY_LOOPBACK),
        route("public", ["/*rest"], upstream.url)]))
    assert get(gw.port, b"/x", extra=b"X-Tags: a, b\r\n")[0] == 403
    for copies in (b"X-Tags: a, b\r\nX-Tags: c\r\n", b"X-Tags: c\r\nX-Tags: a, b\r\n"):
        status, answer = get(gw.port, b"/x", extra=copies)
        assert status == 400 and b"x-tags header is a list" in answer, (copies, answer[:400])
    # other values, once or twice, are the public route's
    assert get(gw.port, b"/x", extra=b"X-Tags: a, c\r\n")[0] == 200
    assert get(gw.port, b"/x", extra=b"X-Tags: a\r\nX-Tags: c\r\n")[0] == 200
    assert upstream.stats()["requests"] == 2


# -- 3. an identity proxy's headers for routes and plugins ------------------------------------

def test_an_identity_proxys_headers_reach_route_conditions(launcher, upstream):
    """oauth2-proxy (here: the loopback peer, in identity_proxies) says the user's groups; a
    route for admins matches on them. It never did after 03619e5: the header went upstream
    but was not in header_map, so the admins' route was missed."""
    gw = launcher.gateway(gateway_conf([
        route("admins", ["/*rest"], upstream.url, headers={"X-Forwarded-Groups": "admins"},
              plugins=DENY_LOOPBACK),
        route("public", ["/*rest"], upstream.url, plugins={"rewrite": {"request_headers": {
            "remove": ["X-Forwarded-Email"], "set": {"X-Forwarded-User": "svc-public"}}}})],
        server={"trusted_proxies": ["127.0.0.1/32"], "identity_proxies": ["127.0.0.1/32"]}))
    status, answer = get(gw.port, b"/x", extra=b"X-Forwarded-Groups: admins\r\n")
    assert status == 403, answer[:400]
    status, answer = get(gw.port, b"/x", extra=b"X-Forwarded-Groups: staff\r\n"
                                                b"X-Forwarded-Email: a@corp.example\r\n"
                                                b"X-Forwarded-User: alice\r\n")
    assert status == 200
    seen = json.loads(body_of(answer))["headers"]
    assert [v for k, v in seen if k.lower() == "x-forwarded-groups"] == ["staff"], seen
    # a plugin edits them as any header: removed, or set in place (not a second copy)
    assert [v for k, v in seen if k.lower() == "x-forwarded-email"] == [], seen
    assert [v for k, v in seen if k.lower() == "x-forwarded-user"] == ["svc-public"], seen
    # from a peer outside identity_proxies (trusted for its address or not) the header is
    # dropped for routing as for the upstream
    other = launcher.gateway(gateway_conf([
        route("admins", ["/*rest"], upstream.url, headers={"X-Forwarded-Groups": "admins"}),
        route("public", ["/*rest"], upstream.url, plugins=DENY_LOOPBACK)],
        server={"trusted_proxies": ["127.0.0.1/32"]}))
    for extra in (b"X-Forwarded-Groups: admins\r\n",
                  b"X-Forwarded-Groups: admins\r\nX-Forwarded-Groups: admins\r\n"):
        assert get(other.port, b"/x", extra=extra)[0] == 403, extra
    assert upstream.stats()["requests"] == 1



# -- 4. the underscore spellings of identity headers ------------------------------------------

def test_underscore_spellings_of_ruled_headers_are_dropped_when_allowed(launcher, upstream):
    gw = launcher.gateway(gateway_conf([route("echo", ["/*rest"], upstream.url)],
                                       server={"headers_with_underscores": "allow"}))
    status, answer = get(gw.port, b"/x", extra=b"X_Forwarded_User: admin\r\n"
                                                b"x_auth_request_groups: admins\r\n"
                                                b"X_Consumer_ID: admin\r\nX_Real_IP: 6.6.6.6\r\n"
                                                b"X_Custom_Thing: kept\r\n")
    assert status == 200, answer[:400]
    seen = {k.lower(): v for k, v in json.loads(body_of(answer))["headers"]}
    assert seen.get("x_custom_thing") == "kept", seen      # "allow" forwards the others
    assert not {"x_forwarded_user", "x_auth_request_groups", "x_consumer_id",
                "x_real_ip"} & set(seen), seen


# -- 5. a CA file rewritten in place -----------------------------------------------------------

def test_a_ca_file_rewritten_in_place_takes_no_target_out(launcher, tmp_path):
    from .test_review_dec08g import tls_upstream_and_bundle
    up, bundle, pem = tls_upstream_and_bundle(launcher, tmp_path)
    gw = checked_over_tls(launcher, up, bundle)

    def checks(result):
        text = gw.admin_get("/metrics")[1].decode()
        return sum(float(line.rpartition(" ")[2]) for line in text.splitlines()
                   if line.startswith("gwserver_health_checks_total{") and
                   f'result="{result}"' in line)

    def health():
        view = json.loads(gw.admin_get("/admin/upstreams")[1])
        return view["upstreams"]["api"]["targets"][0]["health"]
    wait_until(lambda: checks("success") >= 2, timeout=10)
    # rewritten in place: a second and a half with half of the file, then the rest
    with open(bundle, "wb") as f:
        f.write(pem[:len(pem) // 2])
        f.flush()
        passed = checks("success")
        time.sleep(1.5)
        assert health() == "healthy"
        f.write(pem[len(pem) // 2:])
    os.utime(bundle)
    wait_until(lambda: checks("success") >= passed + 3, timeout=10)
    assert checks("failure") == 0, gw.log()[-2000:]
    assert health() == "healthy"
    told = [line for line in gw.log().splitlines() if "cannot be read as they are" in line]
    assert told and "upstream-ca.pem" in told[0], gw.log()[-2000:]     # the operator knows


# -- 6. the identity headers of other authenticating proxies -----------------------------------

OTHER_IDENTITY = (b"Remote-Groups: admins\r\nRemote-Email: admin@corp.example\r\n"
                  b"Remote-Name: Admin\r\nX-Remote-Group: system:masters\r\n"
                  b"X-Goog-Authenticated-User-Email: accounts.google.com:admin@corp.example\r\n"
                  b"X-Goog-Authenticated-User-Id: accounts.google.com:1\r\n"
                  b"Cf-Access-Authenticated-User-Email: admin@corp.example\r\n"
                  b"X-authentik-username: admin\r\nX-authentik-groups: admins\r\n"
                  b"X-authentik-email: admin@corp.example\r\nX-Vouch-User: admin\r\n")


def test_other_proxies_identity_headers_come_from_identity_proxies_alone(launcher, upstream):
    names = {line.partition(b":")[0].decode().lower() for line in OTHER_IDENTITY.split(b"\r\n")
             if line}
    for identity in (False, True):
        gw = launcher.gateway(gateway_conf([route("echo", ["/*rest"], upstream.url)], server={
            "trusted_proxies": ["127.0.0.1/32"],
            "identity_proxies": ["127.0.0.1/32"] if identity else []}))
        status, answer = get(gw.port, b"/x", extra=OTHER_IDENTITY)
        assert status == 200, answer[:400]
        seen = {k.lower() for k, _ in json.loads(body_of(answer))["headers"]}
        assert names & seen == (names if identity else set()), (identity, names & seen)
