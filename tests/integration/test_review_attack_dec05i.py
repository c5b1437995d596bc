"""A review, as an attacker, of three commits of 2026-12-05 (7e474f2 joint CORS preflights,
3746142 the Redis Cluster store, 40198d2 tunnels and the hang-up watch), through real gateways
and upstreams (helper h5). Each test failed on 40198d2.

1. A route matched on a CORS-safelisted header (``Accept = "application/vnd.internal+json"``,
   the media-type versioning docs/routes.md shows) was never asked to consent to a
   preflight: a page sets Accept, Accept-Language, Content-Language and Content-Type (and
   Range) without its preflight naming them (the Fetch standard), so the preflight for a
   credentialed DELETE announced nothing, the public route's cors answered 204 alone, and
   the DELETE with that Accept (the user's cookie along) was served by the internal route,
   which runs no cors. Safelisted names now count as announced, and a route held on the
   preflight by a safelisted value (its ``Accept: */*``) no longer decides alone.
2. A browser caches a preflight's allowed methods and headers one by one, for
   Access-Control-Max-Age (600 s by default), and sends no preflight for a later request
   they cover: the public route's answer to a preflight that announced only Content-Type
   listed ``X-Tenant`` (its ``allow_headers``) for ten minutes, and the page's next DELETE
   with ``X-Tenant: internal`` went, without a preflight, to the internal route the joint
   check of 7e474f2 would have asked. On a path where a route matches on headers or claims
   the answer now says Access-Control-Max-Age: 0: each such request has its own preflight.
3. A joint preflight went out as the first route's answer, ``Access-Control-Allow-Credentials:
   true`` included, when another route it may take allows the origin without credentials:
   the browser sent the user's cookie to that route. Credentials now only when every route
   allows them.
4. A cluster master that lost its scripts (a failover's promoted replica, a restart, SCRIPT
   FLUSH) answered NOSCRIPT, and the store loaded the scripts on every master, one after
   the other, a hung one (SIGSTOPped) included: the retried decisions of the master that
   answered at once waited out the hung one's timeout and fell back (StoreTimeout), which
   3746142 meant to end. The scripts are loaded on the master that answered NOSCRIPT (the
   one a MOVED or ASK led to included), and only its missing calls go again.

Held up: ``_in_order`` against ``_walk`` (305 random tables of static, parameter, catch-all,
exact, prefix and trailing-slash routes, every path of up to three segments: the same order);
a joint preflight over h2c (204, the answering route's id in the access line); MOVED and ASK
replies during a resharding (counted once); a client that pipelines its next request behind
an event stream quiet for 2.5 s (both answered, the watch let go).
Found, not fixed: a hung master still delays (not fails) the next batch's decisions of the
living masters by up to ``timeout`` once per ``pause`` (the batcher waits for every master of
a batch before it sends the next; sending on would need per-master ordering of limit_conn's
claims and releases); a client half-close (``shutdown(SHUT_WR)``) ends any answer that comes
in more than one read within a second, as nginx's ``proxy_ignore_client_abort off`` does
(docs/operations.md says so), while the tunnels of 40198d2 pass a half-close on.
"""
import json
import signal
import socket
import subprocess
import sys

from ..conftest import free_port, gateway_conf, route
from .test_limits_attack_dec05b import cli, cluster_on, master_of
from .test_review_attack_dec05h import STORE_DRIVER, only_the_hung_masters_call_failed

PARTNER = b"https://partner.example"


def raw_request(port, data, timeout=5):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        out = b""
        while True:
            piece = sock.recv(65536)
            if not piece:
                return out
            out += piece


def status_of(answer):
    return int(answer.split(b" ", 2)[1])


def header_of(answer, name):
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


def preflight(port, method=b"DELETE", announced=None, path=b"/api/orders/1"):
    """A browser's preflight (its own Accept: */* included)."""
    asked = b"Access-Control-Request-Headers: " + announced + b"\r\n" if announced else b""
    return raw_request(port, b"OPTIONS " + path + b" HTTP/1.1\r\nHost: a\r\nOrigin: " +
                       PARTNER + b"\r\nAccept: */*\r\nAccess-Control-Request-Method: " +
                       method + b"\r\n" + asked + b"Connection: close\r\n\r\n")


# -- 1. a condition on a header a page sets without announcing it -----------------------------

def test_a_route_on_a_safelisted_header_must_consent_to_a_preflight_that_announces_nothing(
        launcher, h1_up):
    public_cors = {"allow_origins": [PARTNER.decode()], "allow_credentials": True}
    internal = route("internal", ["/api/*rest"], h1_up.url,
                     headers={"Accept": "application/vnd.internal+json"})
    public = route("public", ["/api/*rest"], h1_up.url, plugins={"cors": public_cors})
    # routes that all allow the partner answer it still
    both = {"allow_origins": [PARTNER.decode()]}
    v2 = route("v2", ["/v/*rest"], h1_up.url, headers={"Accept": "application/vnd.v2+json"},
               plugins={"cors": both})
    v1 = route("v1", ["/v/*rest"], h1_up.url, plugins={"cors": both})
    gw = launcher.gateway(gateway_conf([internal, public, v2, v1]))
    answer = preflight(gw.port, path=b"/v/1")
    assert status_of(answer) == 204, answer
    assert header_of(answer, b"access-control-allow-origin") == PARTNER
    # the page's fetch(..., {method: "DELETE", headers: {Accept: "application/vnd.internal
    # +json"}, credentials: "include"}): Accept is safelisted, the preflight names nothing
    answer = preflight(gw.port)
    assert status_of(answer) == 403, answer
    assert header_of(answer, b"access-control-allow-origin") is None
    answer = preflight(gw.port, announced=b"content-language")
    assert status_of(answer) == 403, answer
    # what that DELETE would reach: the internal route, as always
    answer = raw_request(gw.port, b"DELETE /api/orders/1 HTTP/1.1\r\nHost: a\r\n"
                         b"Accept: application/vnd.internal+json\r\nConnection: close\r\n\r\n")
    assert status_of(answer) == 200 and h1_up.heads[-1].startswith(b"DELETE /api/orders/1 ")
    assert not any(head.startswith(b"OPTIONS") for head in h1_up.heads)


# -- 2. an answer cached for headers and methods nobody asked about ---------------------------

def test_a_preflight_on_a_path_a_header_steers_is_not_cached_by_the_browser(launcher, h1_up):
    public_cors = {"allow_origins": [PARTNER.decode()], "allow_headers": ["X-Tenant",
                                                                         "Content-Type"],
                   "allow_credentials": True}
    gw = launcher.gateway(gateway_conf([
        route("internal", ["/api/*rest"], h1_up.url, headers={"X-Tenant": "internal"}),
        route("public", ["/api/*rest"], h1_up.url, plugins={"cors": public_cors}),
        route("plain", ["/plain/*rest"], h1_up.url, plugins={"cors": public_cors})]))
    answer = preflight(gw.port, announced=b"content-type")
    assert status_of(answer) == 204, answer
    # the answer lists X-Tenant (allow_headers): cached, the page's next DELETE with X-Tenant:
    # internal would go to the internal route without a preflight
    assert b"x-tenant" in header_of(answer, b"access-control-allow-headers").lower()
    assert header_of(answer, b"access-control-max-age") == b"0", answer
    # X-Tenant announced: refused, as 7e474f2 made it
    assert status_of(preflight(gw.port, announced=b"x-tenant")) == 403
    # a path no header steers keeps its cache
    answer = preflight(gw.port, announced=b"content-type", path=b"/plain/1")
    assert status_of(answer) == 204 and header_of(answer, b"access-control-max-age") == b"600"


# -- 3. credentials granted on one route's word -----------------------------------------------

def test_a_joint_preflight_allows_credentials_only_when_every_route_does(launcher, h1_up):
    origin = [PARTNER.decode()]
    gw = launcher.gateway(gateway_conf([
        route("internal", ["/api/*rest"], h1_up.url, headers={"X-Tenant": "internal"},
              plugins={"cors": {"allow_origins": origin, "allow_headers": ["x-tenant"],
                                "allow_credentials": True}}),
        route("public", ["/api/*rest"], h1_up.url,
              plugins={"cors": {"allow_origins": origin, "allow_headers": ["x-tenant"]}})]))
    answer = preflight(gw.port, announced=b"x-tenant")
    assert status_of(answer) == 204, answer
    assert header_of(answer, b"access-control-allow-origin") == PARTNER
    assert header_of(answer, b"access-control-allow-credentials") is None, answer


# -- 4. a NOSCRIPT on one master loaded the scripts on a hung one -----------------------------

NOSCRIPT_BATCH = STORE_DRIVER % {"pause": 5.0} + """
sys.stdin.readline()                    # the test hangs a master and flushes another's scripts
jobs = [gevent.spawn(ask, key) for key in keys]     # queued together: one batch
gevent.joinall(jobs)
print(json.dumps([job.value for job in jobs]), flush=True)
"""


def test_a_master_that_lost_its_scripts_is_not_held_by_a_hung_one(launcher):
    """A master whose scripts are gone (a failover's promoted replica, a restart, SCRIPT
    FLUSH) answers NOSCRIPT; the store then loaded the scripts on every master, one after
    the other, a hung one (SIGSTOPped, its host gone) included, which held that master's
    retried decisions for the timeout: they fell back (StoreTimeout), while its master
    answered at once. Since 3746142 a hung master holds no living master's answers; it
    still did through the scripts. The scripts are loaded where they were missing."""
    ports = [free_port() for _ in range(3)]
    procs = cluster_on(launcher, ports, 0, "--cluster-require-full-coverage", "no")
    keys = {}
    for i in range(40):
        key = f"gw:rl:noscript-{i}"
        keys.setdefault(master_of(ports[0], key), key)
    assert len(keys) == 3
    hung, flushed, other = ports
    ordered = [keys[hung], keys[flushed], keys[other]]
    url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)
    script = subprocess.Popen([sys.executable, "-c", NOSCRIPT_BATCH, url,
                               *(k[len("gw:rl:"):] for k in ordered)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert script.stdout.readline().strip() == "ready"
        assert cli(flushed, "script", "flush") == "OK"
        procs[hung].send_signal(signal.SIGSTOP)
        script.stdin.write("go\n")
        script.stdin.flush()
        only_the_hung_masters_call_failed(json.loads(script.stdout.readline()))
    finally:
        procs[hung].send_signal(signal.SIGCONT)
        script.kill()
        script.wait()
