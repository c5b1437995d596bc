"""The edge, attacked (issue 12): every test reproduces an attack against real processes.

The gateway must authorise exactly what the upstream serves: a path or Host spelled another way
reaches the route the upstream will treat it as, or is refused. An upstream's stray bytes never
reach another client. Whatever a client or upstream sends is bounded.
"""
import hashlib
import json
import socket
import threading
import time

import jwt as pyjwt
import pytest

from ..conftest import gateway_conf, open_websocket, route, wait_until
from ..h2client import RawH2
from ..tricklers import Trickler

SECRET = "s3cret-for-tests-only-0123456789abcdef"


def raw_request(port, data, timeout=10.0):
    """Send bytes, read until the server closes or goes quiet; -> (status, whole answer)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        out = b""
        try:
            while True:
                piece = sock.recv(65536)
                if not piece:
                    break
                out += piece
                if b"\r\n\r\n" in out and _complete(out):
                    break
        except socket.timeout:
            pass
    status = int(out.split(b" ", 2)[1]) if out.startswith(b"HTTP/1.1 ") else None
    return status, out


def _complete(answer):
    head, _, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def get(port, target, host=b"gw.test", extra=b""):
    return raw_request(port, b"GET %s HTTP/1.1\r\nHost: %s\r\n%sConnection: close\r\n\r\n"
                       % (target, host, extra))


# -- one canonical request target --------------------------------------------------------------

@pytest.fixture(scope="module")
def admin_site(module_launcher):
    """nginx as the upstream (it decodes, merges slashes and resolves dots before routing)
    behind a gateway that protects /admin/*rest with jwt and leaves a catch-all open."""
    nginx = module_launcher.nginx("site", (
        "listen 127.0.0.1:{port}; server_name _; "
        'location /admin {{ return 200 "ADMIN $request_uri"; }} '
        'location / {{ return 200 "PUBLIC $request_uri"; }}'))
    site = f"http://127.0.0.1:{nginx}"
    admin_vhost = module_launcher.nginx("vhosts", (
        "listen 127.0.0.1:{port}; server_name admin.example; "
        'location / {{ return 200 "ADMIN-VHOST"; }} }} server {{ listen 127.0.0.1:{port} '
        'default_server; server_name _; location / {{ return 200 "OTHER-VHOST"; }}'))
    jwt = {"jwt": {"secret": SECRET, "algorithms": ["HS256"]}}
    return module_launcher.gateway(gateway_conf([
        route("admin", ["/admin/*rest"], site, plugins=jwt),
        # escapes written otherwise than requests have them once canonical
        route("spelt", ["/caf%c3%a9/*rest", "/%7eops/*rest", "/v1/things:batchDelete",
                        "/%40admin/*rest"], site, plugins=jwt),
        route("public", ["/*rest"], site),
        route("vhost-admin", ["/*rest"], f"http://127.0.0.1:{admin_vhost}",
              hosts=["admin.example"], plugins=jwt, priority=1),
    ]))


def token():
    return pyjwt.encode({"sub": "alice", "exp": time.time() + 600}, SECRET, algorithm="HS256")


@pytest.mark.parametrize("target, expected", [
    (b"/admin/x", 401),
    (b"/admin;x/y", 400),                   # Tomcat/Jetty/Spring read it as /admin/y
    (b"/x/..;/admin/y", 400),               # ... and this as /admin/y
    (b"/..;/admin/y", 400),
    (b"/admin", 401),                       # /admin/*rest covers /admin
    (b"//admin/x", 401),                    # slashes merged, then routed
    (b"/%61dmin/x", 401),                   # unreserved escapes decoded
    (b"/admin%2fx", 400),                   # encoded slash: rejected by default
    (b"/%2fadmin/x", 400),
    (b"/%5Cadmin/x", 400),                  # encoded backslash
    (b"/x/..%2fadmin/x", 400),
    (b"/x/../admin/x", 400),                # dot segments refused in every spelling
    (b"/x/%2e%2E/admin/x", 400),
    (b"/admin/./x", 400),
    (b"/%2e/admin/x", 400),
    (b"/admin%00/x", 400),                  # NUL
    (b"/%C0%AE%C0%AE/admin/x", 400),        # overlong UTF-8 for ".."
    (b"/%zz/admin", 400),                   # not an escape
    (b"http://gw.test//admin/x", 401),      # absolute-form reduced the same way
    (b"http://gw.test/%61dmin", 401),
    # A route written "/caf%c3%a9/*rest" or "/%7eops/*rest" matched no request (they come
    # as %C3%A9 and ~), and the public catch-all served what nginx reads as /café and /~ops.
    (b"/caf%C3%A9/x", 401),
    (b"/caf%c3%a9/x", 401),
    (b"/~ops/x", 401),
    (b"/%7Eops/x", 401),
    # ":", "@" and the other characters a segment holds as they are: nginx decodes their
    # escapes, the router did not, so either spelling went round a route on the other
    (b"/v1/things%3AbatchDelete", 401),
    (b"/v1/things%3abatchDelete", 401),
    (b"/v1/things:batchDelete", 401),
    (b"/@admin/x", 401),
    (b"/%40admin/x", 401),
    (b"/admin%3Bx/y", 400),                 # an encoded ; as a raw one (Spring does too)
])
def test_path_spellings_of_a_protected_prefix_never_reach_it_without_a_token(
        admin_site, target, expected):
    status, answer = get(admin_site.port, target)
    assert status == expected, answer[:300]
    assert b"ADMIN" not in answer


@pytest.mark.parametrize("target, forwarded", [
    (b"//public//x", b"/public/x"),
    (b"/%7Euser/%61%2a%3a", b"/~user/a*:"),  # unreserved and sub-delims decoded...
    (b"/q%3f%23%20", b"/q%3F%23%20"),         # ...the rest upper-case hex
    (b"/k/a%2bb", b"/k/a%2Bb"),               # + stays escaped: a space to S3 and PHP
    (b"/%2561dmin/x", b"/%2561dmin/x"),     # "%25" is "%": never decoded twice
])
def test_the_upstream_receives_the_path_the_gateway_routed_on(admin_site, target, forwarded):
    status, answer = get(admin_site.port, target)
    assert status == 200 and answer.endswith(b"PUBLIC " + forwarded), answer[-200:]


def test_with_a_token_the_protected_prefix_is_served(admin_site):
    bearer = b"Authorization: Bearer " + token().encode() + b"\r\n"
    status, answer = get(admin_site.port, b"//admin/x", extra=bearer)
    assert status == 200 and answer.endswith(b"ADMIN /admin/x")
    status, answer = get(admin_site.port, b"/admin", extra=bearer)
    assert status == 200 and answer.endswith(b"ADMIN /admin")


@pytest.mark.parametrize("host, expected", [
    (b"admin.example", 401),
    (b"admin.example.", 401),               # nginx strips the dot: so do we
    (b"ADMIN.Example.", 401),
    (b"admin.example.:80", 401),
    (b"admin.example..", 400),
    (b"admin.example:abc", 400),
    (b"admin.example:80:80", 400),
    (b"admin example", 400),
    (b"[::1", 400),
])
def test_host_spellings_of_a_protected_vhost(admin_site, host, expected):
    status, answer = get(admin_site.port, b"/x", host=host)
    assert status == expected, answer[:300]
    assert b"ADMIN-VHOST" not in answer


def test_absolute_form_host_with_a_trailing_dot_is_the_protected_vhost(admin_site):
    status, answer = get(admin_site.port, b"http://admin.example./x", host=b"other")
    assert status == 401 and b"ADMIN" not in answer


def test_escaped_slashes_can_be_decoded_instead(launcher, upstream):
    gw = launcher.gateway(gateway_conf([route("echo", ["/echo/*rest"], upstream.url)],
                                       server={"escaped_slashes": "decode"}))
    status, answer = get(gw.port, b"/echo%2Fa%5Cb")
    assert status == 200
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["path"] == "/echo/a/b"
    line = wait_until(gw.access_lines)[-1]
    assert line["path"] == "/echo%2Fa%5Cb"          # the log keeps what the client sent


# -- upstream framing is never trusted ---------------------------------------------------------

@pytest.fixture
def raw_gw(launcher):
    raw = launcher.raw_upstream()
    gw = launcher.gateway(gateway_conf([route("raw", ["/*rest"], f"http://127.0.0.1:{raw.port}")],
                                       server={"client_body_timeout": 2.0}))
    gw.raw_port = raw.port
    return gw


def upstream_counts(gw):
    return json.loads(get(gw.raw_port, b"/__stats")[1].partition(b"\r\n\r\n")[2])


def body_of(answer):
    return answer.partition(b"\r\n\r\n")[2]


def test_a_second_response_in_the_same_read_is_discarded(raw_gw):
    for _ in range(10):
        status, answer = get(raw_gw.port, b"/extra")
        assert status == 200 and body_of(answer) == b"first"
        status, answer = get(raw_gw.port, b"/ok")
        assert status == 200 and body_of(answer) == b"ok", answer
    assert "sent more than one response" in raw_gw.log()


def test_an_http1_upstreams_trailers_are_dropped(raw_gw):
    """docs/http2.md: as nginx and Envoy do by default; the body arrives whole, its framing
    the gateway's own."""
    status, answer = raw_request(raw_gw.port, b"GET /trailers HTTP/1.1\r\nHost: gw\r\n"
                                              b"TE: trailers\r\nConnection: close\r\n\r\n")
    assert status == 200 and b"x-trailer" not in answer.lower().partition(b"\r\n\r\n")[2]
    assert answer.endswith(b"5\r\nhello\r\n0\r\n\r\n"), answer


def test_headers_an_upstream_names_in_connection_stop_at_the_gateway(raw_gw):
    """RFC 9110 7.6.1 on the way back: what the upstream's Connection names is hop-by-hop;
    a plain keep-alive (any case) names nothing, and the other headers pass."""
    status, answer = get(raw_gw.port, b"/conn-named")
    head = answer.partition(b"\r\n\r\n")[0].lower()
    assert status == 200 and body_of(answer) == b"ok"
    assert b"x-hop" not in head and b"x-kept: 1" in head
    status, answer = get(raw_gw.port, b"/conn-plain")
    head = answer.partition(b"\r\n\r\n")[0].lower()
    assert status == 200 and b"x-hop: secret" in head and b"x-kept: 1" in head
    assert head.count(b"connection:") == 1          # the gateway's own, never the upstream's


def test_a_connection_header_naming_content_length_keeps_the_answer_framed(raw_gw):
    """An upstream that lists Content-Length in Connection still framed its answer with it;
    dropping it would hand the client a keep-alive answer with no length (its next answer
    would read as this one's body)."""
    with socket.create_connection(("127.0.0.1", raw_gw.port), timeout=10) as sock:
        sock.sendall(b"GET /conn-length HTTP/1.1\r\nHost: gw\r\n\r\n"
                     b"GET /ok HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        answers = b""
        while piece := sock.recv(65536):
            answers += piece
    first, _, rest = answers.partition(b"\r\n\r\n")
    assert b"content-length: 2" in first.lower() and b"x-hop" not in first.lower()
    assert rest.startswith(b"okHTTP/1.1 200 ") and rest.endswith(b"\r\n\r\nok"), rest


@pytest.mark.parametrize("extra, named", [
    (b"X-Big: " + b"v" * 8200 + b"\r\n", b"longer than 8190 bytes"),
    (b"".join(b"X-%d: 1\r\n" % i for i in range(101)), b"more than 100 header fields"),
    (b"".join(b"X-%d: %s\r\n" % (i, b"v" * 8000) for i in range(9)), b"request head over 65536"),
])
def test_each_head_limit_answers_431_naming_itself(raw_gw, extra, named):
    status, answer = get(raw_gw.port, b"/ok", extra=extra)
    assert status == 431 and named in answer, answer[:300]
    assert upstream_counts(raw_gw).get("/ok", 0) == 0          # never forwarded


def test_bytes_arriving_on_an_idle_pooled_connection_close_it(raw_gw):
    for _ in range(5):
        assert body_of(get(raw_gw.port, b"/stray-later")[1]) == b"first"
        time.sleep(0.3)                 # the stray answer lands while the connection is idle
        assert body_of(get(raw_gw.port, b"/ok")[1]) == b"ok"
    assert "sent bytes on an idle keep-alive connection" in raw_gw.log()


def test_without_keepalive_a_late_stray_answer_reaches_nobody(launcher):
    """The race no HTTP/1.1 proxy can see (a stray answer landing after the reuse check) is
    closed by keepalive = false on the upstream: every request gets its own connection."""
    raw = launcher.raw_upstream()
    gw = launcher.gateway(gateway_conf([{"id": "raw", "paths": ["/*rest"], "upstream": {
        "targets": [{"url": f"http://127.0.0.1:{raw.port}"}], "keepalive": False}}]))
    for _ in range(5):
        assert body_of(get(gw.port, b"/stray-later")[1]) == b"first"
        assert body_of(get(gw.port, b"/ok")[1]) == b"ok"       # at once, inside the window


def test_a_body_written_after_a_204_never_answers_the_next_client(raw_gw):
    for _ in range(10):
        assert get(raw_gw.port, b"/204-late")[0] == 204
        status, answer = get(raw_gw.port, b"/ok")      # at once: the late bytes are in flight
        assert status == 200 and body_of(answer) == b"ok", answer


def test_a_request_smuggled_in_a_body_never_answers_another_client(raw_gw):
    smuggled = b"GET /admin/secret HTTP/1.1\r\nHost: x\r\n\r\n"
    for _ in range(5):
        status, answer = raw_request(raw_gw.port, b"POST /no-body-read HTTP/1.1\r\nHost: gw\r\n"
                                     b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                                     % (len(smuggled), smuggled))
        assert status == 200 and body_of(answer) == b"posted"
        time.sleep(0.1)
        for _ in range(5):
            status, answer = get(raw_gw.port, b"/ok")
            assert status == 200 and b"SECRET" not in answer and body_of(answer) == b"ok"


@pytest.mark.parametrize("path", [b"/early-hints", b"/continue"])
def test_1xx_heads_split_across_segments_are_dropped_not_a_500(raw_gw, path):
    status, answer = get(raw_gw.port, path)
    assert status == 200 and body_of(answer) == b"final", answer
    assert b"103" not in answer.partition(b"\r\n")[0]


@pytest.mark.parametrize("path", [b"/1xx-length", b"/1xx-chunked", b"/1xx-last-chunk"])
def test_an_interim_answer_framed_with_a_body_is_a_502(raw_gw, path):
    """A 1xx has no body; one framed with a body (llhttp reads it for a 1xx past 103) would
    put a head from inside it in front of the final answer's body: another response, which
    the client would take for the answer to its next request."""
    status, answer = get(raw_gw.port, path)
    assert status == 502 and b"INJECTED" not in answer and b"X-Fake" not in answer, answer
    for _ in range(3):                  # and the connection it came on is not reused
        status, answer = get(raw_gw.port, b"/ok")
        assert status == 200 and body_of(answer) == b"ok", answer


def test_an_unasked_101_is_a_502(raw_gw):
    status, answer = get(raw_gw.port, b"/switch")
    assert status == 502 and b"raw bytes" not in answer


def test_a_101_without_the_websocket_handshake_opens_no_tunnel(launcher, upstream):
    """An endpoint that answers 101 to anything (here /status/101) must not become a raw
    tunnel: the client's next bytes would reach the upstream as a request no plugin saw."""
    gw = launcher.gateway(gateway_conf([route("open", ["/*rest"], upstream.url)]))
    before = upstream.stats()["requests"]
    status, answer = raw_request(gw.port, (
        b"GET /status/101 HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade"
        b"\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        b"GET /admin/secret HTTP/1.1\r\nHost: gw\r\n\r\n"))
    assert status == 502 and b"status body" not in answer
    assert upstream.stats()["requests"] - before == 1          # the smuggled one never ran
    status, _ = raw_request(gw.port, b"GET /ws HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\n"
                            b"Connection: Upgrade\r\n\r\n")
    assert status == 400                                         # no Sec-WebSocket-Key


def test_a_close_delimited_identity_body_arrives_whole(raw_gw):
    status, answer = get(raw_gw.port, b"/identity")
    assert status == 200
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert body == b"1388\r\n" + b"i" * 5000 + b"\r\n0\r\n\r\n"


@pytest.mark.parametrize("request_bytes, named", [
    (b"GET /upgrade-body HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nContent-Length: 5\r\n\r\nhello",
     b"must not carry a body"),
    (b"POST /upgrade-body HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n", b"malformed chunked body"),
])
def test_an_upgrade_request_with_a_body_it_cannot_frame_is_refused(raw_gw, request_bytes, named):
    """llhttp ends an upgrade request at its head, so its body is never parsed. Forwarded
    without it, an upstream told Content-Length: N would take the next N bytes on that
    connection (another client's request head) as this body, and serve that request's body
    as a request."""
    status, answer = raw_request(raw_gw.port, request_bytes)
    assert status == 400 and named in answer, answer
    assert upstream_counts(raw_gw).get("/upgrade-body", 0) == 0


H2C_BODIES = {
    "length": (b"Content-Length: 11", b"hello world"),
    "chunked": (b"Transfer-Encoding: chunked", b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n"
                b"X-Trailer: t\r\n\r\n"),
}


@pytest.mark.parametrize("framing", ["length", "chunked"])
@pytest.mark.parametrize("split", [None, 3, 17])
def test_an_h2c_upgrade_with_a_body_is_served_as_http1_with_its_whole_body(
        launcher, upstream, split, framing):
    """What ``curl --http2 -d`` (or ``-T -``, chunked) sends to an http:// URL: the upgrade is
    dropped, the body (which the parser leaves unread) is read by its Content-Length or its
    chunks, whole, however the bytes are split; bytes after it are not a request; the
    connection ends with the answer."""
    gw = launcher.gateway(gateway_conf([route("echo", ["/*rest"], upstream.url)]))
    framing_line, body = H2C_BODIES[framing]
    head = (b"POST /echo HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
            b"%s\r\n\r\n" % framing_line)
    smuggled = b"GET /echo/smuggled HTTP/1.1\r\nHost: gw\r\n\r\n"
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        if split:
            sock.sendall(head + body[:split])
            time.sleep(0.2)
            sock.sendall(body[split:] + smuggled)
        else:
            sock.sendall(head + body + smuggled)
        answer = b""
        while piece := sock.recv(65536):
            answer += piece
    head_out = answer.partition(b"\r\n\r\n")[0].lower()
    assert answer.startswith(b"HTTP/1.1 200") and b"connection: close" in head_out, answer
    seen = json.loads(body_of(answer))
    assert seen["method"] == "POST" and seen["body_size"] == 11
    assert seen["body_sha256"] == hashlib.sha256(b"hello world").hexdigest()
    names = {name.lower() for name, _ in seen["headers"]}
    assert not names & {"upgrade", "http2-settings", "connection"}
    assert upstream.stats()["requests"] == 1            # the bytes after it were no request


def test_a_websocket_request_answered_without_a_101_closes_the_connection(raw_gw):
    """The parser reads no more of a connection after an upgrade request: if the upstream
    does not switch, the answer must say Connection: close, not promise another request."""
    status, answer = raw_request(raw_gw.port, b"GET /ok HTTP/1.1\r\nHost: gw\r\n"
                                 b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
                                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                                 b"Sec-WebSocket-Version: 13\r\n\r\n")
    head = answer.partition(b"\r\n\r\n")[0].lower()
    assert status == 200 and body_of(answer) == b"ok"
    assert b"\r\nconnection: close" in head and b"keep-alive" not in head, head


@pytest.mark.parametrize("target", [b"/upgrade-body", b"gw.test:443"])
def test_connect_is_refused_and_never_forwarded(raw_gw, target):
    status, answer = raw_request(raw_gw.port, b"CONNECT %s HTTP/1.1\r\nHost: gw\r\n"
                                 b"Content-Length: 5\r\n\r\nhello" % target)
    assert status == 501 and b"CONNECT is not supported" in answer, answer
    assert upstream_counts(raw_gw).get("/upgrade-body", 0) == 0


def test_a_connection_whose_request_was_cut_short_is_never_reused(raw_gw):
    """An upstream that answers before the body is in (nginx's `return`) drops the rest of
    it as it comes. The gateway stops sending when it sees that answer; if it then reused the
    connection, the next request's head would become the rest of that body, and the next
    request's body a request of its own (with nginx: past key_auth on another route)."""
    size, late = 70_000, 100                # over request_buffer_size: streamed
    with socket.create_connection(("127.0.0.1", raw_gw.port), timeout=10) as sock:
        sock.sendall(b"POST /early-answer HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n"
                     % size + b"x" * (size - late))
        time.sleep(0.3)                     # the answer is back before the last bytes
        sock.sendall(b"y" * late)
        answer = b""
        while not _complete(answer):
            piece = sock.recv(65536)
            if not piece:
                break
            answer += piece
    assert answer.startswith(b"HTTP/1.1 200") and body_of(answer) == b"early", answer
    for _ in range(3):
        status, answer = get(raw_gw.port, b"/ok")
        assert status == 200 and body_of(answer) == b"ok"
    counts = upstream_counts(raw_gw)
    assert counts["/early-answer"] == 1 and counts.get("/early-answer:reused", 0) == 0, counts


@pytest.mark.parametrize("path", [b"/hint-upload", b"/split-100-upload"])
def test_an_interim_answer_during_an_upload_does_not_cut_the_upload(raw_gw, path):
    """A 103 Early Hints (or an unasked 100 Continue, even in two writes) while the body goes
    out is not the answer: the gateway drops it and sends the rest, and the upstream's real
    answer comes."""
    size, late = 200_000, 100_000           # over request_buffer_size: streamed
    with socket.create_connection(("127.0.0.1", raw_gw.port), timeout=10) as sock:
        sock.sendall(b"POST %s HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n" % (path, size) + b"x" * (size - late))
        time.sleep(0.3)                     # the 103 is back before the rest of the body
        sock.sendall(b"y" * late)
        answer = b""
        while piece := sock.recv(65536):
            answer += piece
    assert answer.startswith(b"HTTP/1.1 200") and body_of(answer) == b"got 200000", answer


def test_an_answer_that_is_not_http_is_a_502_and_never_resent(raw_gw):
    get(raw_gw.port, b"/ok")            # a pooled connection to reuse
    status, _ = get(raw_gw.port, b"/junk")
    assert status == 502
    assert upstream_counts(raw_gw)["/junk"] == 1


def upload_in_background(sock, size):
    """Send ``size`` body bytes as fast as the gateway takes them, from a thread, while the
    test reads the answer; stops when the gateway answers and closes."""
    def upload():
        piece = b"u" * 65536
        try:
            for _ in range(size // len(piece)):
                sock.sendall(piece)
        except OSError:
            pass

    threading.Thread(target=upload, daemon=True).start()


def answer_to_upload(port, path, size=64 << 20, timeout=10):
    """POST ``size`` bytes to ``path``, sent as fast as the gateway takes them, and read the
    answer's head meanwhile: (the bytes read up to the head's end, seconds it took)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"POST %s HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n"
                     % (path, size))
        upload_in_background(sock, size)
        started = time.monotonic()
        answer = b""
        while b"\r\n\r\n" not in answer and (piece := sock.recv(65536)):
            answer += piece
    return answer, time.monotonic() - started


@pytest.mark.parametrize("path", [b"/early-413", b"/split-413", b"/late-413", b"/hint-late-413"])
def test_an_early_413_reaches_the_client_during_a_large_upload(raw_gw, path):
    """However its head is split, and while the gateway waits to send more: the start of an
    answer stops the upload (only whole interim 1xx heads let it go on). The body is sent as
    fast as the gateway takes it, so that its sends to the upstream (which reads no more) fill
    the buffers and wait."""
    answer, took = answer_to_upload(raw_gw.port, path)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert took < 5


def test_an_upstream_that_neither_reads_nor_answers_an_upload_times_out(launcher):
    """While a send waits for room it also watches for an answer; the route's read_timeout
    still ends the wait (the deadline closes the socket, the wait's next slice sees it)."""
    raw = launcher.raw_upstream()
    gw = launcher.gateway(gateway_conf([route("raw", ["/*rest"], f"http://127.0.0.1:{raw.port}",
                                              timeouts={"read": 1})]))
    answer, took = answer_to_upload(gw.port, b"/no-read")
    assert answer.startswith(b"HTTP/1.1 504"), answer[:300]
    assert 0.9 < took < 4
    wait_until(lambda: "did not accept the request" in gw.log())     # the client: no details


def latency_while(gw, attack):
    """Run ``attack`` in a thread; meanwhile time requests to /ok on another connection."""
    worst = []
    thread = threading.Thread(target=attack, daemon=True)
    thread.start()
    time.sleep(0.05)
    while thread.is_alive() and len(worst) < 200:
        started = time.monotonic()
        status, _ = get(gw.port, b"/ok")
        assert status == 200
        worst.append(time.monotonic() - started)
    thread.join(30)
    return max(worst) if worst else 0.0


def test_a_huge_upstream_head_is_a_502_and_stalls_nobody(raw_gw):
    results = []
    pids = raw_gw.worker_pids()
    worst = latency_while(raw_gw, lambda: results.append(get(raw_gw.port, b"/huge-head")[0]))
    assert results == [502]
    assert worst < 0.5, worst
    assert raw_gw.worker_pids() == pids
    assert "response head over 65536 bytes" in raw_gw.log()


@pytest.mark.parametrize("trailer, piece, pieces, named", [
    # ~20 MiB of lines: the count of fields trips, or (reads batched on a loaded host) the
    # bound on what the parser may hold unparsed, first; either is a 431 that names it
    (b"", b"Via: " + b"v" * 200 + b"\r\n", 100_000, (b"header fields", b"trailers too large")),
    # httptools holds a trailer field until its line ends and copies it on every read: one
    # that never ends must not grow inside the parser until the client stops.
    (b"X-Trailer: ", b"a" * 65536, 160, b"trailers too large"),          # 10 MiB, one line
])
def test_a_trailer_flood_is_refused_early_and_stalls_nobody(raw_gw, trailer, piece, pieces,
                                                            named):
    pids = raw_gw.worker_pids()
    results = []

    def flood():
        with socket.create_connection(("127.0.0.1", raw_gw.port), timeout=10) as sock:
            sock.sendall(b"POST /ok HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n"
                         b"\r\n1\r\nx\r\n0\r\n" + trailer)
            try:
                for _ in range(pieces):
                    sock.sendall(piece)
            except OSError:
                pass
            results.append(sock.recv(65536))

    worst = latency_while(raw_gw, flood)
    assert results and results[0].startswith(b"HTTP/1.1 431"), results
    assert any(name in results[0] for name in
               (named if isinstance(named, tuple) else (named,))), results[0][:300]
    assert worst < 0.5, worst
    assert raw_gw.worker_pids() == pids


def test_a_long_run_of_spaces_in_an_upstream_header_stalls_nobody(raw_gw):
    """The response's special lines are found with one regex; a value ending in a long run
    of spaces must not make it backtrack once per byte (60,000 spaces took seconds)."""
    results = []
    worst = latency_while(raw_gw, lambda: results.append(get(raw_gw.port, b"/via-spaces")))
    assert results[0][0] == 200 and body_of(results[0][1]) == b"ok"
    head = results[0][1].partition(b"\r\n\r\n")[0]
    assert b"x, 1.1 gwserver" in head       # the upstream's Via, spaces included, then ours
    assert worst < 0.5, worst


@pytest.mark.parametrize("path", [b"/lead-crlf", b"/100-crlf"])
def test_blank_lines_before_a_status_line_keep_the_answer_whole(raw_gw, path):
    """llhttp skips CRLFs before a status line (after a 1xx, or a stray one after the last
    answer); the head must be taken from where the status line really begins, or the status
    line is relayed as a header and the headers after it are lost."""
    status, answer = get(raw_gw.port, path)
    head = answer.partition(b"\r\n\r\n")[0]
    assert status == 200 and body_of(answer) == b"ok", answer
    assert head.count(b"HTTP/1.1") == 1 and b"\r\nX-Kept: 1" in head, head
    if path == b"/lead-crlf":
        assert b"\r\nContent-Type: text/plain" in head


def test_a_control_byte_in_a_reason_phrase_never_reaches_the_client(raw_gw):
    status, answer = get(raw_gw.port, b"/bad-reason")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and body_of(answer) == b"ok", answer


def test_the_client_gets_one_x_request_id_the_gateways(raw_gw):
    _, answer = get(raw_gw.port, b"/request-id", extra=b"X-Request-ID: from-client-1\r\n")
    head = answer.partition(b"\r\n\r\n")[0].lower()
    assert head.count(b"x-request-id:") == 1 and b"x-request-id: from-client-1" in head, head
    # and one X-Trace-Id, the gateway's (the upstream's came first, naming its own trace)
    assert head.count(b"x-trace-id:") == 1 and b"upstream-chosen" not in head, head


def test_an_upstreams_trace_id_header_passes_when_the_gateway_writes_none(launcher):
    raw = launcher.raw_upstream()
    gw = launcher.gateway(gateway_conf([route("raw", ["/*rest"], f"http://127.0.0.1:{raw.port}")],
                                       tracing={"enabled": False}))
    head = get(gw.port, b"/request-id")[1].partition(b"\r\n\r\n")[0].lower()
    assert b"x-trace-id: upstream-chosen" in head, head


def test_key_auths_query_key_never_reaches_the_access_log(launcher, upstream):
    """The Common Log Format's request line holds the query: the one the upstream got."""
    from gwserver.plugins.key_auth import hash_key
    key = "ak_" + "5" * 16
    gw = launcher.gateway(gateway_conf(
        [route("key", ["/key/*rest"], upstream.url, plugins={"key_auth": {"query": "apikey"}})],
        log={"access_format": "common"},
        consumers={"alice": {"credentials": {"key_auth": {"key_hash": hash_key(key)}}}}))
    assert get(gw.port, b"/key/x?apikey=%s&page=2" % key.encode())[0] == 200
    assert get(gw.port, b'/key/a"b?apikey=%s' % key.encode())[0] == 200
    lines = wait_until(lambda: [line for line in gw.log().splitlines()
                                if '"GET /key/' in line][1:] and gw.log().splitlines())
    assert key not in gw.log()
    assert any('"GET /key/x?page=2 HTTP/1.1" 200' in line for line in lines)
    assert any('"GET /key/a\\x22b HTTP/1.1" 200' in line for line in lines)


# -- what clients may send ---------------------------------------------------------------------

WSGI_APP = """
import json, sys
from wsgiref.simple_server import make_server
def app(environ, start):
    seen = {k: v for k, v in environ.items() if k.startswith("HTTP_")}
    start("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(seen).encode()]
make_server("127.0.0.1", int(sys.argv[1]), app).serve_forever()
"""


@pytest.mark.parametrize("action, status, seen", [
    ("drop", 200, None),
    ("reject", 400, None),
    ("allow", 200, "admin"),
])
def test_underscore_headers_never_pose_as_dashed_ones_at_a_wsgi_upstream(
        launcher, tmp_path, action, status, seen):
    import subprocess
    import sys
    from ..conftest import free_port, wait_for_port
    port = free_port()
    app = tmp_path / "app.py"
    app.write_text(WSGI_APP)
    proc = subprocess.Popen([sys.executable, str(app), str(port)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    launcher.started.append(proc)
    wait_for_port(port, proc=proc)
    gw = launcher.gateway(gateway_conf([route("w", ["/*rest"], f"http://127.0.0.1:{port}")],
                                       server={"headers_with_underscores": action}))
    got, answer = raw_request(gw.port, b"GET / HTTP/1.1\r\nHost: gw\r\nX_User_Id: admin\r\n"
                              b"Connection: close\r\n\r\n")
    assert got == status
    if status == 200:
        assert json.loads(body_of(answer)).get("HTTP_X_USER_ID") == seen


def test_a_slow_uploader_holds_no_upstream_connection(launcher, upstream):
    gw = launcher.gateway(gateway_conf([route("echo", ["/*rest"], upstream.url)],
                                       server={"client_body_timeout": 3.0}))
    before = upstream.stats()["connections"]
    socks = []
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 10\r\n\r\nab")
        socks.append(sock)
    time.sleep(1.0)
    for sock in socks:
        sock.sendall(b"cd")          # still slow, still under the 3 s between reads
    time.sleep(1.0)
    # Bodies wait at the gateway: the one new connection is stats() asking.
    assert upstream.stats()["connections"] == before + 1
    for sock in socks:
        sock.sendall(b"efghij")
    for sock in socks:
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:100]
        sock.close()
    assert upstream.stats()["connections"] - before - 2 <= 20       # two were stats()


def test_a_stalled_body_gets_a_408(launcher, upstream):
    gw = launcher.gateway(gateway_conf([route("echo", ["/*rest"], upstream.url)],
                                       server={"client_body_timeout": 1.0}))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 10\r\n\r\nab")
        started = time.monotonic()
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert 0.9 < time.monotonic() - started < 3


def test_a_slow_head_gets_a_408_before_the_close(launcher, upstream):
    gw = launcher.gateway(gateway_conf([route("echo", ["/*rest"], upstream.url)],
                                       server={"header_timeout": 1.0}))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: gw\r\nX-Slow: ")
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 408"), answer


def test_idle_keepalive_connections_cannot_lock_out_a_new_client(launcher, upstream):
    """5,000 idle keep-alive connections against worker_connections = 1000: the oldest idle
    ones are closed to make room, and a new client is served at once."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 20000), hard))
    gw = launcher.gateway(gateway_conf([route("echo", ["/*rest"], upstream.url)],
                                       server={"keepalive": 60.0, "worker_connections": 1000}))
    idle = []
    try:
        for _ in range(5000):
            sock = socket.socket()
            sock.settimeout(10)
            sock.connect(("127.0.0.1", gw.port))
            idle.append(sock)
        time.sleep(1.0)
        started = time.monotonic()
        status, _ = get(gw.port, b"/echo")
        assert status == 200
        assert time.monotonic() - started < 1.0
    finally:
        for sock in idle:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_h2c_upgrade_is_not_forwarded(launcher, upstream):
    gw = launcher.gateway(gateway_conf([route("echo", ["/*rest"], upstream.url)]))
    status, answer = raw_request(gw.port, b"GET /echo HTTP/1.1\r\nHost: gw\r\nConnection: "
                                 b"Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                                 b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
    assert status == 200
    names = {name.lower() for name, _ in json.loads(body_of(answer))["headers"]}
    assert not names & {"upgrade", "http2-settings", "connection"}
    assert upstream.stats()["requests"] == 1


# -- who the client is -------------------------------------------------------------------------

SPOOFED = (b"X-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\n"
           b"X-Original-URL: /admin\r\nX-Rewrite-URL: /admin\r\nX-Forwarded-Proto: https\r\n"
           b"X-HTTP-Method-Override: DELETE\r\nX-Forwarded-Prefix: /admin\r\n"
           b"True-Client-IP: 6.6.6.6\r\nX-Forwarded-Port: 1\r\n"
           b"X-Consumer-ID: admin\r\nX-Consumer-Groups: admins\r\n")


def seen_headers(answer):
    return {name.lower(): value for name, value in json.loads(body_of(answer))["headers"]}


def test_an_untrusted_peer_cannot_say_who_the_client_is(launcher, upstream):
    gw = launcher.gateway(gateway_conf([route("echo", ["/*rest"], upstream.url)]))
    status, answer = get(gw.port, b"/echo", extra=SPOOFED)
    assert status == 200
    headers = seen_headers(answer)
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert not {"x-real-ip", "forwarded", "x-original-url", "x-rewrite-url",
                "x-http-method-override", "x-forwarded-prefix", "true-client-ip",
                "x-forwarded-port", "x-consumer-id", "x-consumer-groups"} & set(headers)
    assert wait_until(gw.access_lines)[-1]["client"] == "127.0.0.1"


@pytest.mark.parametrize("trusted, client", [
    (["127.0.0.1/32"], "10.1.1.1"),                    # the walk stops at an untrusted hop
    (["127.0.0.1/32", "10.0.0.0/8"], "6.6.6.6"),       # ... or goes on past trusted ones
])
def test_a_trusted_proxy_names_the_client_walked_from_the_right(
        launcher, upstream, trusted, client):
    gw = launcher.gateway(gateway_conf([route("echo", ["/*rest"], upstream.url)],
                                       server={"trusted_proxies": trusted}))
    status, answer = get(gw.port, b"/echo", extra=b"X-Forwarded-For: 6.6.6.6, 10.1.1.1\r\n"
                                                  b"X-Real-IP: 6.6.6.6\r\n")
    assert status == 200
    headers = seen_headers(answer)
    assert headers["x-forwarded-for"] == "6.6.6.6, 10.1.1.1, 127.0.0.1"
    # X-Real-IP says the client the walk found (test_forwarded_dec06r.py): it passed as
    # sent, and behind a proxy that does not write it, it was the client's own to choose
    assert headers["x-real-ip"] == client
    assert wait_until(gw.access_lines)[-1]["client"] == client


def test_rate_limits_count_the_client_a_trusted_proxy_names(launcher, upstream):
    gw = launcher.gateway(gateway_conf(
        [route("echo", ["/*rest"], upstream.url, plugins={"rate_limit": {
            "algorithm": "sliding_window", "rate": 2, "per": 60, "key": "ip"}})],
        server={"trusted_proxies": ["127.0.0.1/32"]}))
    statuses = [get(gw.port, b"/echo", extra=b"X-Forwarded-For: 10.0.0.%d\r\n" % (i % 2))[0]
                for i in range(6)]
    assert statuses == [200, 200, 200, 200, 429, 429]


def test_admin_token_scheme_is_case_insensitive_and_guessing_is_throttled(launcher, upstream):
    gw = launcher.gateway(gateway_conf([route("echo", ["/*rest"], upstream.url)],
                                       admin={"token": "t0ken"},
                                       server={"trusted_proxies": ["127.0.0.1/32"]}))

    def admin(authorization):
        return raw_request(gw.admin_port, b"GET /admin/config HTTP/1.1\r\nHost: a\r\n"
                           b"Authorization: %s\r\nConnection: close\r\n\r\n" % authorization)[0]

    assert admin(b"bearer t0ken") == 200
    spoofed = [raw_request(gw.admin_port, b"GET /admin/config HTTP/1.1\r\nHost: a\r\n"
                           b"X-Forwarded-For: 10.9.8.%d\r\nAuthorization: Bearer no\r\n"
                           b"Connection: close\r\n\r\n" % i)[0] for i in range(3)]
    assert spoofed == [401] * 3             # counted by the peer, whatever XFF says
    assert admin(b"BEARER t0ken") == 200
    assert [admin(b"Bearer wrong%d" % i) for i in range(3)] == [401] * 2 + [429]
    assert admin(b"Bearer wrong9") == 429      # this address's guesses wait out the minute
    # and the right token still passes: all local processes share the address, so a lockout
    # that held it too would let any of them keep the scraper out (the eighth attack pass)
    assert admin(b"Bearer t0ken") == 200


def test_bytes_after_the_last_request_never_cost_the_client_its_answer(launcher):
    """A client that pipelines past a Connection: close (or sends on after an h2c upgrade's
    body) left bytes the gateway never read; closing over them sends RST, and the client
    lost the answer it was about to read (ECONNRESET). The gateway lingers, as after an
    early answer."""
    slow = launcher.upstream("slow", delay=0.3)
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], slow.url)]))
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
            sock.sendall(b"GET /a HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
            time.sleep(0.1)             # being proxied: nothing reads this socket now
            sock.sendall(b"GET /b HTTP/1.1\r\nHost: gw\r\n\r\n")
            time.sleep(0.6)             # the answer is here, and the close has happened
            answer = b""
            while piece := sock.recv(65536):
                answer += piece
        assert answer.startswith(b"HTTP/1.1 200") and b"connection: close" in answer.lower()


def test_an_idle_websocket_tunnel_is_closed_after_the_read_timeout(launcher, upstream):
    """A tunnel had no deadline: idle ones held connection slots for good (20 of them locked
    a worker with worker_connections = 20 out). Idle for the route's read timeout both ways,
    it is closed; one that moves stays open."""
    gw = launcher.gateway(gateway_conf([route("ws", ["/ws"], upstream.url,
                                              timeouts={"read": 1.0})]))

    def open_tunnel():
        sock, head, _ = open_websocket(gw.port)
        assert head.startswith(b"HTTP/1.1 101")
        return sock

    idle, busy = open_tunnel(), open_tunnel()
    started = time.monotonic()
    for _ in range(5):                                  # 2.5 s of traffic every 0.5 s
        busy.sendall(b"ping")
        assert busy.recv(16) == b"ping"
        time.sleep(0.5)
    busy.close()
    assert idle.recv(16) == b""                         # closed by the gateway...
    assert time.monotonic() - started < 4               # ...after ~1 s idle, not never
    idle.close()


# -- an attack pass on 2026-12-02: what one protocol refused and the other served ---------------

@pytest.fixture
def h2c_echo(launcher, upstream):
    return launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)],
                                         http2={"h2c": True}))


@pytest.mark.parametrize("method, path", [
    (b"GET", b"/x/\xc0\xae\xc0\xae/admin/x"),      # a raw overlong "..", past the UTF-8 check
    (b"GET", b"/x/\xed\xa0\x80"),                   # a surrogate
    (b"GET", b"/x\x7f"),
    (b"get", b"/echo"), (b"head", b"/echo"), (b"FOO", b"/echo")])
def test_what_http1_answers_400_is_a_400_over_http2_too(h2c_echo, upstream, method, path):
    before = upstream.stats()["requests"]
    request = method + b" " + path + b" HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
    assert raw_request(h2c_echo.port, request)[0] == 400
    client = RawH2(h2c_echo.port, validate=False)
    sid = client.conn.get_next_available_stream_id()
    client.conn.send_headers(sid, [(b":method", method), (b":scheme", b"http"),
                                   (b":path", path), (b":authority", b"gw")], end_stream=True)
    client.flush()
    answer = client.response(sid)       # a control byte in a field value: reset (malformed)
    assert answer[0] == 400 if answer else client.reset_code(sid) == 1
    assert upstream.stats()["requests"] == before       # neither reached the upstream


@pytest.mark.parametrize("length", [b"9223372036854775808", b"18446744073709551615"])
def test_a_content_length_over_2_63_is_refused(h2c_echo, upstream, length):
    """llhttp takes up to 2^64 - 1; nginx, Go and Tomcat refuse past 2^63 - 1, and an
    upstream that wraps would read the body as requests no plugin saw."""
    answer = raw_request(h2c_echo.port, b"POST /upload HTTP/1.1\r\nHost: gw\r\nContent-Length: "
                         + length + b"\r\n\r\nGET /admin HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert answer[0] == 400 and answer[1].count(b"HTTP/1.1") == 1
    client = RawH2(h2c_echo.port)
    sid = client.request("/upload", method="POST", end=False,
                         headers=[("content-length", "1" + "0" * 60)])
    assert client.response(sid)[0] == 400


def test_transfer_encoding_in_an_http10_request_is_refused(h2c_echo, upstream):
    """RFC 9112 6.1: faulty framing; it was decoded as chunked, the connection kept, and the
    pipelined request after it forwarded too."""
    before = upstream.stats()["requests"]
    status, answer = raw_request(
        h2c_echo.port, b"POST /upload HTTP/1.0\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: keep-alive\r\n\r\n1\r\nx\r\n0\r\n\r\n"
        b"GET /second HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert status == 400 and answer.count(b"HTTP/1.1 ") == 1, answer
    assert upstream.stats()["requests"] == before


def test_a_clients_fault_tags_do_not_reach_the_upstream(h2c_echo):
    """X-Fault-Injected and tracestate's gwfault= say the gateway injected a fault: a
    client's would make a real failure look injected."""
    status, answer = raw_request(
        h2c_echo.port, b"GET /echo HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
        b"X-Fault-Injected: delay\r\ntracestate: gwfault=abort,vendor=1\r\n"
        b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n")
    headers = {k.lower(): v for k, v in json.loads(answer.partition(b"\r\n\r\n")[2])["headers"]}
    assert status == 200 and "x-fault-injected" not in headers
    assert headers["tracestate"] == "vendor=1"


@pytest.fixture
def raw_h2c(launcher):
    raw = launcher.raw_upstream()
    return launcher.gateway(gateway_conf(
        [route("raw", ["/*rest"], f"http://127.0.0.1:{raw.port}")], http2={"h2c": True}))


def test_white_space_after_an_upstreams_values_is_not_sent_to_http2_clients(raw_h2c):
    """HTTP/1.1 allows it after a value, HTTP/2 does not: curl and h2 refused the stream."""
    client = RawH2(raw_h2c.port)           # h2 validates what it receives
    status, headers, body, _ = client.response(client.request("/ows"))
    assert (status, headers["x-a"], headers["content-length"], body) == (200, "b", "2", b"ok")
    assert client.goaway() is None


def test_a_status_outside_100_to_599_is_a_502(raw_h2c):
    assert raw_request(raw_h2c.port, b"GET /status-999 HTTP/1.1\r\nHost: gw\r\n"
                                     b"Connection: close\r\n\r\n")[0] == 502


def probe(port):
    try:
        return raw_request(port, b"GET /echo HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
                           timeout=1.0)[0]
    except OSError:
        return None


@pytest.mark.parametrize("min_body_rate", [0, 1024])
def test_bodies_trickled_into_every_slot_give_way_to_new_clients(launcher, upstream,
                                                                 min_body_rate):
    """12 bodies at a byte a second against worker_connections = 10: the timeout between
    reads (4 s) never trips, and every slot stayed taken while /-/healthz said healthy (an
    attack pass). With min_body_rate (the default, 1024), once slots run out the slowest
    body under the rate (after 5 s of waiting for it) gets a 408 and its slot goes to the
    next client; with 0, nobody else is served."""
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)], server={
        "worker_connections": 10, "client_body_timeout": 4.0,
        "min_body_rate": min_body_rate}))
    # Ten first, their heads read, then two more: a trickler connected but not yet sending
    # when a newcomer wanted its slot is idle, and was rightly closed for it (a race on a
    # loaded host, which left a slot free for the probe).
    slow, more = Trickler(gw.port, 10), None
    try:
        slow.wait_sending(10)
        time.sleep(0.5)
        more = Trickler(gw.port, 2)
        more.wait_sending(2)
        served, end = None, time.monotonic() + 10
        while served is None and time.monotonic() < end:
            if probe(gw.port) == 200:
                served = time.monotonic() - (end - 10)
        if min_body_rate:
            assert served is not None and served < 9, "no client served while slots were full"
            wait_until(lambda: any(a.startswith(b"HTTP/1.1 408")
                                   for a in slow.answers + more.answers), 3)
            assert "sending its request body at" in gw.log()
        else:
            assert served is None, (f"served after {served:.1f}s with every slot taken",
                                    slow.answers, more.answers)
    finally:
        slow.close()
        if more is not None:
            more.close()


def test_a_slow_body_keeps_its_slot_while_there_is_room(launcher, upstream):
    """min_body_rate only acts when every slot is taken: 3 bodies at a byte a second with 7
    slots free are not cut (a log shipped over a chunked POST is slow and legitimate)."""
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)], server={
        "worker_connections": 10, "client_body_timeout": 4.0}))
    slow = Trickler(gw.port, 3)
    try:
        time.sleep(8)
        assert slow.answers == [] and probe(gw.port) == 200
    finally:
        slow.close()


def test_per_try_timeout_bounds_a_head_that_drips_in(launcher):
    """docs/routes.md: the seconds each try may wait for the head of the answer. It bounded
    each read instead, so a head sent a byte every 0.1 s took 3 s past a limit of 1 s with
    no retry (an attack pass). The whole head now has it: a 504 after ~1 s."""
    raw = launcher.raw_upstream()
    gw = launcher.gateway(gateway_conf([route(
        "raw", ["/*rest"], f"http://127.0.0.1:{raw.port}",
        retry={"on": ["timeout"], "per_try_timeout": 1.0})]))
    started = time.monotonic()
    status, _ = raw_request(gw.port, b"GET /drip-head HTTP/1.1\r\nHost: gw\r\n"
                                     b"Connection: close\r\n\r\n")
    took = time.monotonic() - started
    assert status == 504 and took < 2.5, (status, took)
    assert "per_try_timeout" in gw.log()
    # without a per_try_timeout each read has the read timeout, and the head arrives
    plain = launcher.gateway(gateway_conf([route("raw", ["/*rest"],
                                                 f"http://127.0.0.1:{raw.port}")]))
    assert raw_request(plain.port, b"GET /drip-head HTTP/1.1\r\nHost: gw\r\n"
                                   b"Connection: close\r\n\r\n")[0] == 200


@pytest.mark.parametrize("target, sent, server", [
    (b"/f/echo?beta=1#1", "/echo?beta=1", "v2"),
    (b"/f/echo#x?beta=1", "/echo", "v1")])
def test_a_fragment_is_dropped_from_the_path_and_the_query(launcher, target, sent, server):
    """docs/security.md: kept in the query, "?beta=1#1" reached the upstream as sent (which
    drops the fragment: beta=1) while split's rule on the query's beta read "1#1" and sent
    the request to the baseline; "/a#x?beta=1" has no query at all, yet went with one."""
    v1, v2 = launcher.upstream("v1"), launcher.upstream("v2")
    gw = launcher.gateway(gateway_conf(
        [{"id": "f", "paths": ["/f/*rest"], "strip_prefix": "/f", "upstream": "v1",
          "plugins": {"split": {"upstreams": [{"upstream": "v1", "weight": 1},
                                              {"upstream": "v2", "weight": 0}],
                                "rules": [{"query": {"beta": "1"}, "upstream": "v2"}]}}}],
        upstreams={"v1": {"targets": [{"url": v1.url}]}, "v2": {"targets": [{"url": v2.url}]}}))
    status, answer = raw_request(gw.port, b"GET " + target + b" HTTP/1.1\r\nHost: gw\r\n"
                                 b"Connection: close\r\n\r\n")
    seen = json.loads(body_of(answer))
    assert status == 200 and (seen["path"], seen["server"]) == (sent, server), answer[-300:]


IDENTITY = (b"X-Forwarded-User: admin\r\nX-Forwarded-Email: admin@corp.example\r\n"
            b"X-Forwarded-Groups: admins\r\nX-Auth-Request-User: admin\r\n"
            b"X-Forwarded-Client-Cert: By=spiffe://corp/admin;URI=spiffe://corp/admin\r\n"
            b"X-WEBAUTH-USER: admin\r\nX-Remote-User: admin\r\nRemote-User: admin\r\n")
IDENTITY_NAMES = {"x-forwarded-user", "x-forwarded-email", "x-forwarded-groups",
                  "x-auth-request-user", "x-forwarded-client-cert", "x-webauth-user",
                  "x-remote-user", "remote-user"}


@pytest.mark.parametrize("trusted, identity", [(False, False), (True, False), (False, True),
                                               (True, True)])
def test_who_the_user_is_is_said_by_an_identity_proxy_alone(launcher, upstream, trusted,
                                                            identity):
    """An authenticating proxy's headers (oauth2-proxy's X-Forwarded-User and
    X-Auth-Request-*, Envoy's X-Forwarded-Client-Cert, Grafana's X-WEBAUTH-USER, REMOTE_USER
    spellings) passed from any client: X-Forwarded-User: admin was admin to an upstream that
    takes them on trust, as it does behind such a proxy. Then from any trusted proxy: a
    balancer trusted for the client's address that passes a client's headers on let them
    through. Now only a peer in server.identity_proxies says them (docs/security.md)."""
    gw = launcher.gateway(gateway_conf([route("echo", ["/*rest"], upstream.url)], server={
        "trusted_proxies": ["127.0.0.1/32"] if trusted else [],
        "identity_proxies": ["127.0.0.1/32"] if identity else []}))
    status, answer = get(gw.port, b"/echo", extra=IDENTITY)
    assert status == 200
    seen = IDENTITY_NAMES & set(seen_headers(answer))
    assert seen == (IDENTITY_NAMES if identity else set()), seen
