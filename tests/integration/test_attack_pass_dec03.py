"""Attack pass (Dec 03): four defects found, each shown by a test that failed on 14cbeac and
passes with its fix.

Every test starts real processes (a gateway from the launcher fixture) and talks to them over
loopback; the upstreams are small in-process socket servers on 127.0.0.1 that record what they
got, closed in teardown.

1. An HTTP/1.1 client names gateway-written headers in ``Connection`` and they never reach an
   HTTP/2 upstream (X-Consumer-ID/-Groups, a headers plugin's ``set``); an HTTP/1.1 upstream
   gets them.
2. ``rewrite`` checks its result for canonical form before ``strip_prefix`` is taken off: the
   upstream can be sent ``/../admin``.
3. ``rewrite``'s canonical check lets white space and raw non-ASCII bytes through: with
   ``$request_id`` (a client's X-Request-ID) in ``path.replace`` the client writes the
   upstream's request line.
4. ``jwt`` with ``jwks_file`` quotes the token's unverified ``kid`` into ``WWW-Authenticate``:
   a client adds auth-params to it, and a ``kid`` outside latin-1 turns the 401 into a 500
   (an unhandled UnicodeEncodeError, with its traceback in the log).

Held (these pass; kept because nothing else covers them): the HTTP/1.1-upstream control of
(1); an upstream HEAD answer that carries a body never answers the next request; HTTP/2 DATA
past content-length, carrying a request, never reaches an HTTP/1.1 upstream (h2 itself ends
the connection before the gateway's stream sees it).
"""
import base64
import json
import re
import socket
import threading

import h2.events
import pytest

from gwserver.plugins.key_auth import hash_key

from ..conftest import gateway_conf, route, wait_until
from ..h2client import RawH2
from ..h2_upstreams import EventH2cUpstream


class RecordingHttp1:
    """A loopback HTTP/1.1 upstream in this process: reads each request (its body by
    Content-Length), records its head as it came (``heads``), and writes ``answer``: 200 with
    the request line as JSON."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.heads, self.conns = [], []
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.conns.append(conn)
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn):
        buf, count = b"", 0
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                self.heads.append(head)
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buf) < length:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                buf = buf[length:]
                count += 1
                if not self.respond(conn, head, count):
                    return
        except OSError:
            pass
        finally:
            conn.close()

    def respond(self, conn, head, count):
        """Answer a request (its body read): -> whether the connection takes another."""
        answer = self.answer(head, count)
        if answer is None:
            return False
        conn.sendall(answer)
        return True

    def answer(self, head, count):
        """The bytes written for the ``count``-th request of its connection (1 for the first),
        or None to close the connection unanswered."""
        body = json.dumps({"line": head.split(b"\r\n")[0].decode("latin-1")}).encode()
        # (a HEAD is answered with the body too: an upstream bug the gateway must not let
        # reach the next request on the connection)
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    def header(self, index, name):
        """Values of ``name`` in the ``index``-th request head recorded."""
        lines = self.heads[index].split(b"\r\n")[1:]
        return [line.partition(b":")[2].strip().decode("latin-1") for line in lines
                if line.partition(b":")[0].strip().lower() == name.lower().encode()]

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for conn in self.conns:
            try:
                conn.close()
            except OSError:
                pass


class RecordingH2(EventH2cUpstream):
    """An h2c upstream: records each request's fields (``requests``), answers 200 "ok"."""

    def __init__(self):
        self.requests = []
        super().__init__()

    def on_event(self, conn, sock, event):
        if isinstance(event, h2.events.RequestReceived):
            self.requests.append([(bytes(k).decode(), bytes(v).decode("latin-1"))
                                  for k, v in event.headers])
            conn.send_headers(event.stream_id, [(b":status", b"200"), (b"content-length", b"2")])
            conn.send_data(event.stream_id, b"ok", end_stream=True)
        elif isinstance(event, h2.events.DataReceived):
            conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)


def raw_request(port, data, timeout=10):
    """Send raw bytes; everything the gateway sent back until it closed (reset it, or went
    quiet for ``timeout``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        out = b""
        try:
            while piece := sock.recv(65536):
                out += piece
        except (socket.timeout, ConnectionResetError):
            pass
        return out


# -- 1. Connection names the gateway's own headers: dropped on the way to HTTP/2 upstreams ----

KEY = "ak_attack_pass_partner_1"
PARTNER = {"partner": {"groups": ["readonly"],
                       "credentials": {"key_auth": {"key_hash": hash_key(KEY)}}}}
STRIPPING = (b"GET %s HTTP/1.1\r\nHost: api.test\r\nX-API-Key: " + KEY.encode() +
             b"\r\nConnection: close, X-Consumer-ID, X-Consumer-Groups, X-Readonly\r\n\r\n")


@pytest.fixture
def consumer_gw(launcher, h1_up, h2_up):
    plugins = {"key_auth": {}, "headers": {"request": {"set": {"X-Readonly": "true"}}}}
    return launcher.gateway(gateway_conf([
        route("to-h1", ["/h1/*rest"], h1_up.url, plugins=plugins),
        {"id": "to-h2", "paths": ["/h2/*rest"], "plugins": plugins,
         "upstream": {"targets": [{"url": f"http://127.0.0.1:{h2_up.port}"}],
                      "protocol": "h2"}},
    ], consumers=PARTNER))


def test_connection_cannot_strip_gateway_headers_bound_for_an_http1_upstream(consumer_gw,
                                                                             h1_up):
    """The control (passes): an HTTP/1.1 upstream gets what the gateway wrote."""
    answer = raw_request(consumer_gw.port, STRIPPING % b"/h1/orders")
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert h1_up.header(0, "X-Consumer-ID") == ["partner"]
    assert h1_up.header(0, "X-Consumer-Groups") == ["readonly"]
    assert h1_up.header(0, "X-Readonly") == ["true"]


def test_connection_cannot_strip_gateway_headers_bound_for_an_http2_upstream(consumer_gw,
                                                                             h2_up):
    """Was a defect: the gateway identified consumer "partner" (group readonly) and its headers
    plugin set X-Readonly, but an HTTP/1.1 client that lists those names in Connection has
    them all dropped on the way to an HTTP/2 upstream, which serves the request as one
    without a consumer or restriction. h2proxy.request_headers drops every header a
    client's Connection named *at send time*, after the plugins wrote theirs; the HTTP/1.1
    side drops only the client's own copies, as they are parsed."""
    answer = raw_request(consumer_gw.port, STRIPPING % b"/h2/orders")
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    fields = dict(h2_up.requests[0])
    assert fields.get("x-consumer-id") == "partner", h2_up.requests[0]
    assert fields.get("x-consumer-groups") == "readonly", h2_up.requests[0]
    assert fields.get("x-readonly") == "true", h2_up.requests[0]


# -- 2. and 3. rewrite: what is checked is not what is sent ----------------------------------

@pytest.fixture
def rewrite_gw(launcher, h1_up):
    return launcher.gateway(gateway_conf([
        route("svc", ["/svc/*rest"], h1_up.url, strip_prefix="/svc", plugins={"rewrite": {
            "path": {"match": "^/svc/v1(.*)$", "replace": "/svc$1"}}}),
        route("rid", ["/rid/*rest"], h1_up.url, plugins={"rewrite": {
            "path": {"match": "^/rid/(.*)$", "replace": "/t/$request_id/$1"}}}),
    ]))


@pytest.mark.parametrize("path", ["/svc/v1../admin", "/svc/v1./admin"])
def test_rewrite_then_strip_prefix_never_sends_a_dot_segment(rewrite_gw, h1_up, path):
    """Was a defect: /svc/v1../admin is canonical (its segment is "v1.."); the rewrite makes
    /svc../admin, canonical too, so rewrite lets it through; then upstream_path takes off
    strip_prefix "/svc" by string, not by segment, and the upstream is sent GET /../admin
    (or /./admin). docs/security.md: no dot segment reaches an upstream, and plugins.rewrite:
    "a rewrite cannot re-open what docs/security.md closes"."""
    resp, _ = rewrite_gw.request("GET", path)
    if resp.status == 200:
        target = h1_up.heads[-1].split(b"\r\n")[0].split(b" ")[1]
        segments = target.partition(b"?")[0].split(b"/")
        assert b".." not in segments and b"." not in segments, target
    else:
        assert resp.status in (400, 500)


@pytest.mark.parametrize("request_id", ["a /admin", "a\tb", "\xe9t\xe9"])
def test_a_rewritten_path_holds_no_white_space_or_raw_bytes(rewrite_gw, h1_up, request_id):
    """Was a defect: $request_id is the client's X-Request-ID (up to 200 bytes, any a header value
    may hold: spaces, tabs, obs-text). rewrite's canonical check (core.target.normalise_path)
    only acts on %, \\, ;, // and /. and lets raw bytes pass, so the upstream gets
    "GET /t/a /admin/x HTTP/1.1": a request line of four words, chosen by the client. The
    edge refuses these bytes in a client's own path (400, docs/security.md)."""
    resp, _ = rewrite_gw.request("GET", "/rid/x", headers={"X-Request-ID": request_id})
    if resp.status == 200:
        line = h1_up.heads[-1].split(b"\r\n")[0]
        method, target, version = line.split(b" ", 2)
        assert version == b"HTTP/1.1", line
        assert all(0x21 <= b <= 0x7E for b in target), line
    else:
        assert resp.status in (400, 500)


# -- 4. jwt: the token's unverified kid in WWW-Authenticate ----------------------------------

def b64(obj):
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def unsigned_token(kid):
    return b64({"alg": "RS256", "typ": "JWT", "kid": kid}) + "." + b64({"sub": "x"}) + ".AAAA"


@pytest.fixture
def jwks_gw(launcher, h1_up, tmp_path):
    import jwt as pyjwt
    from cryptography.hazmat.primitives.asymmetric import rsa
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(pyjwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}))
    return launcher.gateway(gateway_conf([route("j", ["/j/*rest"], h1_up.url, plugins={
        "jwt": {"jwks_file": str(jwks)}})], http2={"h2c": True}))


def test_a_kid_cannot_add_parameters_to_www_authenticate(jwks_gw):
    """The unverified kid was quoted with repr() into error_description="...": a double
    quote in it ended the parameter, and the client's own error= and scope= followed."""
    kid = 'x", error="insufficient_scope", scope="admin'
    resp, _ = jwks_gw.request("GET", "/j/x",
                              headers={"Authorization": "Bearer " + unsigned_token(kid)})
    assert resp.status == 401
    challenge = resp.getheader("WWW-Authenticate")
    assert challenge.startswith("Bearer "), challenge
    params = re.findall(r'\s*([A-Za-z_]+)=("(?:[^"\\]|\\.)*"|[^,\s]*),?',
                        challenge[len("Bearer "):])
    assert [name for name, _ in params] == ["realm", "error", "error_description"], challenge
    assert dict(params)["error"] == '"invalid_token"', challenge


def test_a_kid_outside_latin1_is_a_401_not_a_500(jwks_gw):
    """Was a defect: a kid of U+4E00 lands in WWW-Authenticate, which render_reply encodes as
    latin-1: UnicodeEncodeError, a 500 and an 'unhandled error' traceback in the log, for
    any anonymous client, on HTTP/1.1 and HTTP/2 alike (the route's 5xx rate and alerts
    follow the client's wish)."""
    token = unsigned_token("\u4e00")
    resp, _ = jwks_gw.request("GET", "/j/x", headers={"Authorization": "Bearer " + token})
    client = RawH2(jwks_gw.port)
    try:
        answer = client.response(client.request("/j/x", headers=[
            ("authorization", "Bearer " + token)]))
    finally:
        client.close()
    assert (resp.status, answer and answer[0]) == (401, 401)
    assert "UnicodeEncodeError" not in jwks_gw.log()


# -- held: attacks the gateway withstands (not covered elsewhere) ----------------------------

def test_a_head_answer_that_carries_a_body_never_answers_the_next_request(launcher, h1_up):
    """The upstream answers HEAD with its Content-Length *and* the body; the next request on
    the same client connection must get its own answer, not those bytes."""
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], h1_up.url)]))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        answers = []
        for method in (b"HEAD", b"GET", b"GET"):
            sock.sendall(b"%s /%s HTTP/1.1\r\nHost: h\r\n\r\n" % (method, method.lower()))
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            if method == b"GET":
                while len(body) < length:
                    body += sock.recv(65536)
            answers.append((head.split(b"\r\n")[0], body))
    assert answers[0] == (b"HTTP/1.1 200 OK", b"")
    assert [json.loads(body)["line"] for _, body in answers[1:]] == ["GET /get HTTP/1.1"] * 2


def test_h2_data_past_content_length_never_reaches_an_http1_upstream(launcher, h1_up):
    """DATA beyond an HTTP/2 request's content-length, holding a request of its own, in the
    same read as the valid body: h2 refuses the connection before the stream sees a byte."""
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], h1_up.url)],
                                       http2={"h2c": True}))
    client = RawH2(gw.port, validate=False)
    # the gateway's SETTINGS and connection WINDOW_UPDATE first: room for ~70 KB
    assert client.pump(lambda c: c.conn.outbound_flow_control_window > 100_000 and
                       c.conn.remote_settings.initial_window_size > 100_000, timeout=5)
    sid = client.request("/upload", "POST", [("content-length", "5")], end=False)
    client.conn.send_data(sid, b"hello")
    # past request_buffer_size, so the gateway would be streaming the body by then
    extra = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n" + b"x" * 70000
    for at in range(0, len(extra), 16384):
        client.conn.send_data(sid, extra[at:at + 16384])
    client.flush()
    client.pump(lambda c: c.closed or c.goaway() is not None, timeout=5)
    client.close()
    ok = RawH2(gw.port)
    try:
        assert ok.response(ok.request("/after"))[0] == 200
    finally:
        ok.close()
    assert not any(b"/smuggled" in head for head in h1_up.heads), h1_up.heads
    wait_until(lambda: "InvalidBodyLengthError" in gw.log(), timeout=5)   # h2's own check
