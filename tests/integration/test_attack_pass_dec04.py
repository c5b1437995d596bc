"""Attack pass, Dec 4: the active health checker and the helper processes, seen from a broken
or hostile upstream, OCSP responder or state file. Every test runs real gateways (or the
real probe against real servers) on 127.0.0.1 and is bounded in time.

1. An HTTP/1.1 target whose answer starts with a 103 Early Hints (or a stray CRLF before
   its status line) is served by the proxy, but the check calls it "status 103" / "not an
   HTTP answer": a healthy upstream is taken out (http.client only skips 100).
2. An h2 target that sends a graceful GOAWAY (NO_ERROR, last_stream_id = the probe's stream)
   before its answer, as nginx does at keepalive_requests: the proxy lets the stream finish,
   the probe fails the target.
3. The ocsp helper takes any certificate whose *issuer name* is the CA's as a delegated
   responder: a response signed by any key, with a self-made "responder" certificate, is
   stapled (here: a forged REVOKED).
4. An OCSP answer signed with a key type the issuer's key does not fit (Ed25519 signature,
   EC issuer) raises TypeError out of the helper's loop: the ocsp helper dies, and again
   after each restart.
5. (A responder that drips or floods its answer: test_tls.py,
   test_a_broken_ocsp_responder_is_given_up_on_in_time.)
6. health.json whose "targets" is not an object of objects (or ejections.json whose entries
   are not lists): every worker tick raises (a traceback every 50 ms per worker) and skips
   what follows it in on_tick; a state without "healthy" makes /admin/upstreams a 500.
   health.json that is JSON but no object kills the checker at each (re)start.
7. health.prom keeps the check counts of removed targets for the life of the checker.
8. config-sync dies (and again after each restart) on an endpoint that answers 200 with
   something that is not JSON, and never asks the next endpoint.
9. The rollouts helper logs a line every 0.5 s tick while Redis is down.
"""
import datetime
import http.server
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID
from hyperframe.frame import GoAwayFrame

from ..conftest import gateway_conf, to_toml, wait_until
from ..h2_upstreams import H2cUpstream, ScriptedH2Upstream
from ..pki import CA, NOW
from .test_health import FAST_CHECK, h2_pool_gateway, target_health, target_view
from .test_tls import ocsp_staple, tls_gateway


def stays_healthy(gw, url, seconds=3.0):
    """Checked every 0.2 s for ``seconds`` (FAST_CHECK: ~15 checks): never unhealthy."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        entry = target_view(gw, url)
        assert entry["health"] != "unhealthy", entry
        time.sleep(0.2)
    assert target_view(gw, url)["health"] == "healthy"


# -- 1. HTTP/1.1 interim answers and leading CRLFs ------------------------------------------------

@pytest.mark.parametrize("path", ["/early-hints", "/lead-crlf"])
def test_http1_check_passes_what_the_proxy_serves(launcher, path):
    """/early-hints: 103 then 200; /lead-crlf: two CRLFs, then 200. The proxy answers 200 for
    both; the check said "status 103" / "not an HTTP answer" and took the target out."""
    a, raw = launcher.upstream("a"), launcher.raw_upstream()
    gw = launcher.gateway(gateway_conf(
        [{"id": "r", "paths": ["/r/*rest"], "strip_prefix": "/r", "upstream": "pool"},
         {"id": "raw", "paths": ["/raw/*rest"], "strip_prefix": "/raw",
          "upstream": {"targets": [{"url": raw.url}]}}],
        upstreams={"pool": {"targets": [{"url": a.url}, {"url": raw.url}],
                            "health_check": {**FAST_CHECK, "path": path}}}))
    # the proxy serves the raw target's answer
    assert [gw.request("GET", "/raw" + path)[0].status for _ in range(3)] == [200] * 3
    stays_healthy(gw, raw.url)


# -- 2. h2: a graceful GOAWAY before the answer ------------------------------------------------

class GoawayFirstH2(H2cUpstream):
    """h2c: to each request, GOAWAY(NO_ERROR, last_stream_id = the request's stream) and then
    the 200 answer on that stream (what nginx does on the request that reaches
    keepalive_requests / http2_max_requests)."""

    def connection(self, sock):
        sock.settimeout(5)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        try:
            sock.sendall(conn.data_to_send())
            while True:
                data = sock.recv(65536)
                if not data:
                    return
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        sid = event.stream_id
                        goaway = GoAwayFrame(0)
                        goaway.last_stream_id, goaway.error_code = sid, 0
                        sock.sendall(conn.data_to_send() + goaway.serialize())
                        conn.send_headers(sid, [(":status", "200"), ("content-length", "2")])
                        conn.send_data(sid, b"ok", end_stream=True)
                sock.sendall(conn.data_to_send())
        except (OSError, h2.exceptions.ProtocolError):
            pass
        finally:
            sock.close()


def test_h2_check_passes_a_target_that_goes_away_gracefully_before_answering(launcher):
    up, polite = ScriptedH2Upstream("up", "ok"), GoawayFirstH2()
    try:
        gw, urls = h2_pool_gateway(launcher, up, polite)
        # the proxy itself lets the stream finish: every request is answered
        assert [gw.request("GET", "/r/x")[0].status for _ in range(6)] == [200] * 6
        stays_healthy(gw, urls[1])
    finally:
        up.close()
        polite.close()


# -- 3-4. the ocsp helper against a hostile responder ----------------------------------------------

class LoopbackHTTP:
    """A threaded HTTP server on a free loopback port; a subclass's ``answer(handler)``
    answers each POST (``handler``: its BaseHTTPRequestHandler)."""

    protocol = "HTTP/1.0"

    def __init__(self):
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = self.protocol

            def do_POST(self):
                outer.answer(self)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def answer_with(handler, status, content_type, body):
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class Responder(LoopbackHTTP):
    """A plain-HTTP OCSP responder (OCSP runs over http: anyone on the path can be it) that
    answers every POST with ``body`` (bytes); ``posts`` counts them."""

    def __init__(self, body=b""):
        self.body, self.posts = body, 0
        super().__init__()

    def answer(self, handler):
        handler.rfile.read(int(handler.headers.get("Content-Length", 0)))
        self.posts += 1
        answer_with(handler, 200, "application/ocsp-response", self.body)


def _self_made(name, key, issuer_name, signing_key, algorithm):
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(issuer_name).public_key(key.public_key()).serial_number(7)
            .not_valid_before(NOW - datetime.timedelta(days=1))
            .not_valid_after(NOW + datetime.timedelta(days=3))
            .sign(signing_key, algorithm))


def forged_revocation(ca, leaf):
    """REVOKED for ``leaf``, signed by a key the CA never saw, with a "delegated responder"
    certificate that only *names* the CA as its issuer (signed by the same stranger key)."""
    stranger = ec.generate_private_key(ec.SECP256R1())
    fake = _self_made("responder", stranger, ca.cert.subject, stranger, hashes.SHA256())
    return (ocsp.OCSPResponseBuilder()
            .add_response(leaf, ca.cert, hashes.SHA1(), ocsp.OCSPCertStatus.REVOKED, NOW,
                          NOW + datetime.timedelta(days=1), NOW,
                          x509.ReasonFlags.key_compromise)
            .responder_id(ocsp.OCSPResponderEncoding.HASH, fake).certificates([fake])
            .sign(stranger, hashes.SHA256()).public_bytes(serialization.Encoding.DER))


def ed25519_signed(ca, leaf):
    """GOOD for ``leaf``, signed with an Ed25519 key (the CA's is EC)."""
    key = ed25519.Ed25519PrivateKey.generate()
    own = _self_made("ed", key, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ed")]),
                     key, None)
    return (ocsp.OCSPResponseBuilder()
            .add_response(leaf, ca.cert, hashes.SHA1(), ocsp.OCSPCertStatus.GOOD, NOW,
                          NOW + datetime.timedelta(days=1), None, None)
            .responder_id(ocsp.OCSPResponderEncoding.HASH, own)
            .sign(key, None).public_bytes(serialization.Encoding.DER))


def stapling_gateway(launcher, upstream, ca, responder, answer_for):
    """A TLS gateway stapling OCSP for a certificate whose responder is ``responder``, which
    answers ``answer_for(ca, leaf)``; returned once the helper has asked it."""
    cert, key, leaf = ca.issue("site", ocsp_url=f"http://127.0.0.1:{responder.port}")
    responder.body = answer_for(ca, leaf)
    gw = tls_gateway(launcher, upstream, [(cert, key, {})], ocsp_stapling=True,
                     ocsp_refresh=5)
    wait_until(lambda: responder.posts >= 1, timeout=20)
    return gw


@pytest.fixture
def ca(tmp_path):
    return CA(tmp_path)


def test_ocsp_refuses_a_response_from_a_responder_the_ca_never_vouched_for(launcher, upstream,
                                                                          ca):
    """_check_signature takes any certificate in the answer whose issuer *name* is the CA's
    as the signer, without checking that the CA signed it (nor its OCSPSigning EKU): anyone
    who can answer the plain-HTTP OCSP request staples what they like (a forged REVOKED
    takes the site down for clients that honour it; a forged GOOD hides a revocation)."""
    responder = Responder()
    try:
        gw = stapling_gateway(launcher, upstream, ca, responder, forged_revocation)
        wait_until(lambda: "OCSP" in gw.log(), timeout=10)
        time.sleep(1.0)                             # the helper wrote it; workers tick 50 ms
        staple = ocsp_staple(gw.tls_port, ca)
        assert staple != responder.body, "a forged OCSP response is stapled"
        assert "does not verify" in gw.log() or "not authorised" in gw.log()
    finally:
        responder.close()


def test_ocsp_helper_survives_an_answer_signed_with_another_key_type(launcher, upstream, ca):
    """A successful answer for our certificate, with an Ed25519 signature: the issuer's key
    is EC, ec.ECDSA(None) raises TypeError, which run() does not catch: the helper dies,
    the master starts it again, it fetches again and dies again."""
    responder = Responder()
    try:
        gw = stapling_gateway(launcher, upstream, ca, responder, ed25519_signed)
        first = wait_until(lambda: gw.helper_pid("ocsp"), timeout=10)
        time.sleep(4)
        assert "Traceback" not in gw.log(), gw.log()[-3000:]
        assert gw.helper_pid("ocsp") == first          # not died and restarted
        assert "keeping the last response" in gw.log()
    finally:
        responder.close()


# -- 6. health.json that is JSON, but not the checker's --------------------------------------------

@pytest.mark.parametrize("name, data", [
    ("health.json", {"targets": {"pool|URL": 1}}),
    ("health.json", {"targets": ["pool|URL"]}),
    ("health.json", {"targets": {"pool|URL": {"since": 1}}}),     # /admin/upstreams: 500
    ("ejections.json", {"pool|URL": 1}),
])
def test_a_malformed_health_file_does_not_break_every_worker_tick(launcher, name, data):
    a = launcher.upstream("a")
    gw = launcher.gateway(gateway_conf(
        [{"id": "r", "paths": ["/r/*rest"], "strip_prefix": "/r", "upstream": "pool"}],
        upstreams={"pool": {"targets": [{"url": a.url}],
                            "health_check": {**FAST_CHECK, "interval": 30}}}))
    log_before = len(gw.log())
    state_dir = gw.conf["server"]["state_dir"]
    wait_until(lambda: os.path.exists(os.path.join(state_dir, "health.json")), timeout=10)
    path = os.path.join(state_dir, name)
    with open(path + ".x", "w") as f:
        f.write(json.dumps(data).replace("URL", a.url))
    os.replace(path + ".x", path)
    time.sleep(1.5)
    failures = gw.log()[log_before:].count("worker tick failed")
    assert failures <= 2, f"{failures} tracebacks in 1.5 s"
    assert gw.request("GET", "/r/echo")[0].status == 200
    assert gw.admin_get("/admin/upstreams")[0] == 200


# -- 7. counts of removed targets ----------------------------------------------------------------

def test_health_metrics_forget_removed_targets(launcher):
    a, b = launcher.upstream("a"), launcher.upstream("b")

    def conf(targets):
        return gateway_conf(
            [{"id": "r", "paths": ["/r/*rest"], "strip_prefix": "/r", "upstream": "pool"}],
            upstreams={"pool": {"targets": [{"url": t.url} for t in targets],
                                "health_check": FAST_CHECK}})

    def checks():
        return [line for line in gw.admin_get("/metrics")[1].decode().splitlines()
                if line.startswith("gwserver_health_checks_total{")]
    gw = launcher.gateway(conf([a, b]))
    wait_until(lambda: any(f'target="{b.url}"' in line for line in checks()), timeout=10)
    smaller = json.loads(json.dumps(gw.conf))
    smaller["upstreams"]["pool"]["targets"] = [{"url": a.url}]
    with open(gw.conf_path, "w") as f:
        f.write(to_toml(smaller))
    os.kill(gw.pid, signal.SIGHUP)
    wait_until(lambda: list(target_health(gw)) == [a.url], timeout=15)
    time.sleep(2.5)                             # health.prom is rewritten every second
    lines = checks()
    assert any(f'target="{a.url}"' in line for line in lines), lines
    assert not any(f'target="{b.url}"' in line for line in lines), \
        "a removed target's check counts stay for good"


def test_a_checker_restarted_over_a_malformed_health_file_comes_up(launcher):
    """previous_verdicts() read health.json as a dict: JSON that is not an object (``[0]``)
    raised AttributeError at the checker's start, so the master's restart of it died again,
    and again, and nothing rewrote the file: no active checks for good."""
    a = launcher.upstream("a")
    gw = launcher.gateway(gateway_conf(
        [{"id": "r", "paths": ["/r/*rest"], "strip_prefix": "/r", "upstream": "pool"}],
        upstreams={"pool": {"targets": [{"url": a.url}], "health_check": FAST_CHECK}}))
    path = os.path.join(gw.conf["server"]["state_dir"], "health.json")
    first = wait_until(lambda: gw.helper_pid("health"), timeout=10)
    wait_until(lambda: os.path.exists(path), timeout=10)
    with open(path + ".x", "w") as f:
        f.write("[0]")
    os.replace(path + ".x", path)
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: (gw.helper_pid("health") or first) != first, timeout=10)

    def rewritten():
        try:
            with open(path) as f:
                return isinstance(json.load(f), dict)
        except ValueError:
            return False
    wait_until(rewritten, timeout=10)
    assert "AttributeError" not in gw.log()


# -- 8. config-sync against an endpoint that answers, but is not etcd ------------------------------

class NotEtcd(LoopbackHTTP):
    """An "etcd endpoint" that answers every POST with ``status`` and ``body`` (a load
    balancer's maintenance page, a web server on a misrouted port, a captive proxy)."""

    def __init__(self, status=200, body=b"<html><body>down for maintenance</body></html>"):
        self.status, self.body, self.posts = status, body, 0
        super().__init__()

    def answer(self, handler):
        handler.rfile.read(int(handler.headers.get("Content-Length", 0)))
        self.posts += 1
        answer_with(handler, self.status, "text/html", self.body)


@pytest.mark.parametrize("status, body", [
    (200, b"<html><body>down for maintenance</body></html>"),
    (404, b"<html><body>Not Found</body></html>"),         # (found by the review pass)
    (200, b"{}"),                                          # JSON, but no etcd answer
])
def test_config_sync_survives_an_endpoint_that_is_not_etcd_and_uses_the_next(
        launcher, upstream, tmp_path, status, body):
    """endpoints = [a port that answers 200 with HTML, a real etcd]: resp.json() raised
    requests' JSONDecodeError out of ConfigSync.run (it catches EtcdError only): the helper
    died, the master started it again, it asked the same endpoint first and died again; the
    real etcd second in the list was never asked, and etcd's routes never served. A 404
    page was taken as etcd's error: that endpoint was asked first again and again."""
    from .test_etcd import all_workers_at, etcd_conf, put
    member = launcher.etcd()
    broken = NotEtcd(status, body)
    try:
        client = member.client()
        put(client, "upstreams", "up", {"targets": [{"url": upstream.url}]})
        revision = put(client, "routes", "r1", {"paths": ["/one"], "upstream": "up"})
        gw = launcher.gateway(etcd_conf(tmp_path, [broken.url, member.url], workers=1))
        wait_until(lambda: broken.posts >= 1, timeout=15)
        first = wait_until(lambda: gw.helper_pid("config-sync"), timeout=10)
        time.sleep(3)
        assert "Traceback" not in gw.log(), gw.log()[-2500:]
        assert gw.helper_pid("config-sync") == first
        wait_until(lambda: all_workers_at(gw, revision), timeout=10)
        assert gw.request("GET", "/one")[0].status == 200
    finally:
        broken.close()


class EndlessWatch(LoopbackHTTP):
    """An "etcd endpoint" in front of a real one: every call is passed on, but a watch is
    answered with a message that never ends its line (``streamed`` bytes, then closed)."""

    protocol = "HTTP/1.1"

    def __init__(self, etcd_url, streamed):
        self.etcd_url, self.streamed, self.watches = etcd_url, streamed, 0
        super().__init__()

    def answer(self, handler):
        body = handler.rfile.read(int(handler.headers.get("Content-Length", 0)))
        if handler.path == "/v3/watch":
            self.watches += 1
            handler.send_response(200)
            handler.send_header("Transfer-Encoding", "chunked")
            handler.send_header("Connection", "close")
            handler.end_headers()
            piece = b'{"result":{"header":{},"events":[' + b" " * 65500
            for _ in range(self.streamed // len(piece)):
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            handler.close_connection = True
            return
        request = urllib.request.Request(self.etcd_url + handler.path, data=body,
                                         headers=dict(handler.headers))
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                status, data = answer.status, answer.read()
        except urllib.error.HTTPError as exc:
            status, data = exc.code, exc.read()
        answer_with(handler, status, "application/json", data)


def peak_memory_mib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for process {pid}")


def test_config_sync_drops_a_watch_message_that_never_ends(launcher, upstream, tmp_path):
    """The watch stream was read by lines with no bound on a line: an endpoint (a broken
    proxy in front of etcd, say) that never ended one filled the sync process's memory,
    its concatenations slowing down as it grew, and the table was never updated again. A
    line past 64 MiB now drops the watch; the table is reloaded by value, and served."""
    from gwserver.sync.etcd import MAX_WATCH_MESSAGE
    from .test_etcd import all_workers_at, etcd_conf, put
    member = launcher.etcd()
    broken = EndlessWatch(member.url, streamed=MAX_WATCH_MESSAGE + (16 << 20))
    try:
        client = member.client()
        put(client, "upstreams", "up", {"targets": [{"url": upstream.url}]})
        revision = put(client, "routes", "r1", {"paths": ["/one"], "upstream": "up"})
        gw = launcher.gateway(etcd_conf(tmp_path, [broken.url], workers=1))
        wait_until(lambda: all_workers_at(gw, revision), timeout=15)
        sync = gw.helper_pid("config-sync")
        wait_until(lambda: "a watch message went past 67108864 bytes without its end"
                   in gw.log(), timeout=30)
        wait_until(lambda: broken.watches >= 2, timeout=15)     # dropped, and watched again
        assert gw.helper_pid("config-sync") == sync
        assert peak_memory_mib(sync) < 200
        assert gw.request("GET", "/one")[0].status == 200
        assert "Traceback" not in gw.log(), gw.log()[-2500:]
    finally:
        broken.close()


# -- 9. the rollouts helper while Redis is down ---------------------------------------------------

def test_rollouts_helper_says_a_redis_outage_once_not_every_tick(launcher, tmp_path):
    """run() logged "rollouts: connection refused" on every 0.5 s tick for as long as Redis
    was down: 7,200 lines an hour, burying the lines that matter."""
    from ..conftest import stop_process
    from .test_rollouts import rollout_conf, rollout_of
    redis, v1, v2 = launcher.redis(), launcher.upstream("v1"), launcher.upstream("v2")
    gw = launcher.gateway(rollout_conf(tmp_path, v1, v2, redis=redis, min_requests=10))
    wait_until(lambda: rollout_of(gw), timeout=15)
    before = len(gw.log().splitlines())
    stop_process(redis)
    time.sleep(6)
    lines = [line for line in gw.log().splitlines()[before:] if "gwserver.rollouts" in line]
    assert 1 <= len(lines) <= 3, lines
