"""Attack pass of 2026-12-04 (third): the client side (HTTP/1.1 and HTTP/2 listeners, TLS).

Every test runs real gateways (the launcher fixture) and talks to them over loopback; every
process and socket a test opens is closed in teardown, and every wait is bounded. Four were
defects, fixed with them: connections that sent nothing held every slot of a TLS or h2c
listener (client.waiting), ``..%3B`` passed the dot-segment rule under
``path_parameters = "keep"`` (core.target), and a read of tiny pipelined requests became
thousands of queued requests (MAX_PIPELINED in client.http1).
"""
import socket
import time

import pytest

from ..conftest import free_port, gateway_conf, route
from ..h2client import RawH2
from ..pki import CA
from .test_attack_pass_dec03 import raw_request
from .test_http2_hardening import first_served


def status_of(answer):
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else None


def body_of(answer):
    return answer.partition(b"\r\n\r\n")[2]


def open_silent(port, count):
    """``count`` connections that never send a byte."""
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        socks.append(sock)
    return socks


# -- 1. silent connections and worker_connections -----------------------------------------------

def test_held_silent_connections_on_a_plain_http1_listener_give_way(launcher, upstream):
    """The control: connections that never send a byte to a plain HTTP/1.1 listener are idle,
    and the oldest is closed when every slot is taken (docs/security.md, Limits)."""
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)],
                                       server={"worker_connections": 10}))
    socks = open_silent(gw.port, 12)
    try:
        time.sleep(0.5)
        served = first_served(gw.port, 5)
        assert served is not None and served < 2, served
    finally:
        for sock in socks:
            sock.close()


def test_silent_connections_on_an_h2c_listener_give_way(launcher, upstream):
    """With ``http2.h2c`` on, a connection that had sent nothing waited in the preface sniff
    (client/h2server.py ``wants_h2``) for header_timeout, before ``client_opened`` and
    outside ``idle_clients``: worker_connections of them locked every new client out of the
    worker for header_timeout (10 s by default), and again with each reconnect. Now they are
    idle after a second of silence (client.waiting) and give way, as on a plain listener."""
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)],
                                       http2={"h2c": True},
                                       server={"worker_connections": 10}))
    socks = open_silent(gw.port, 12)
    try:
        time.sleep(0.5)
        served = first_served(gw.port, 5)
        assert served is not None and served < 2, f"no client served for {served} s"
    finally:
        for sock in socks:
            sock.close()


def test_silent_connections_on_a_tls_listener_give_way(launcher, upstream, tmp_path):
    """A TCP connection to a TLS listener that never starts its handshake held a pool slot
    for tls.handshake_timeout (10 s), counted nowhere: worker_connections of them locked new
    clients out, where the same silence on a plain listener is idle and gives way. Now it
    is idle too (client.waiting)."""
    cert, key, _ = CA(tmp_path).issue("localhost")
    port = free_port()
    launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)],
                                  server={"worker_connections": 10},
                                  tls={"bind": [f"127.0.0.1:{port}"],
                                       "certificates": [{"cert": str(cert), "key": str(key)}]}))
    socks = open_silent(port, 12)
    try:
        time.sleep(0.5)
        served = first_served(port, 5, tls=True)
        assert served is not None and served < 2, f"no client served for {served} s"
    finally:
        for sock in socks:
            sock.close()


# -- 2. path parameters kept: "..;" in another spelling ----------------------------------------

@pytest.fixture
def params_kept(launcher, h1_up):
    """path_parameters = "keep" (documented: "..; stays a 400 either way"), /admin/*rest
    behind ip_restriction that lets nobody in, and a public catch-all."""
    gw = launcher.gateway(gateway_conf([
        route("admin", ["/admin/*rest"], h1_up.url,
              plugins={"ip_restriction": {"deny": ["0.0.0.0/0", "::/0"]}}),
        route("public", ["/*rest"], h1_up.url),
    ], server={"path_parameters": "keep"}))
    return gw


@pytest.mark.parametrize("target", [
    b"/x/..;/admin/y",              # the control: refused (docs/security.md)
    b"/x/..;v=1/admin/y",
])
def test_held_a_dot_dot_parameter_is_refused_when_parameters_are_kept(params_kept, h1_up,
                                                                      target):
    answer = raw_request(params_kept.port, b"GET %s HTTP/1.1\r\nHost: gw\r\n"
                         b"Connection: close\r\n\r\n" % target)
    assert status_of(answer) == 400, answer[:300]
    assert h1_up.heads == []


@pytest.mark.parametrize("target", [
    b"/x/..%3B/admin/y",
    b"/x/..%3b/admin/y",
    b"/x/%2e%2e%3Bv=1/admin/y",
])
def test_an_encoded_dot_dot_parameter_is_refused_when_parameters_are_kept(params_kept, h1_up,
                                                                          target):
    """``..%3B`` is ``..;`` to a container that decodes before it strips parameters (which
    the docs name as the reason ``reject`` refuses ``%3B``): it strips ``;`` and resolves
    ``/x/../admin/y`` to ``/admin/y``. core.target checked dot segments on the canonical
    form, where ``%3B`` is still escaped, so under ``keep`` the public catch-all forwarded
    it; a 400 now, as ``..;`` is."""
    answer = raw_request(params_kept.port, b"GET %s HTTP/1.1\r\nHost: gw\r\n"
                         b"Connection: close\r\n\r\n" % target)
    assert status_of(answer) == 400, (answer[:300], h1_up.heads)
    assert h1_up.heads == []


# -- 3. HTTP/1.1 pipelining after an answer the gateway made itself -----------------------------

@pytest.fixture
def guarded(launcher, h1_up):
    """/admin/*rest refused to everyone (ip_restriction), a public catch-all with a small
    max_body_size, both to one recording upstream."""
    return launcher.gateway(gateway_conf([
        route("admin", ["/admin/*rest"], h1_up.url,
              plugins={"ip_restriction": {"deny": ["0.0.0.0/0", "::/0"]}}),
        route("small", ["/small/*rest"], h1_up.url, max_body_size=100),
        route("public", ["/*rest"], h1_up.url),
    ], server={"client_body_timeout": 2.0}))


SMUGGLED = b"GET /admin/secret HTTP/1.1\r\nHost: gw\r\n\r\n"


def admin_lines(up):
    return [h.split(b"\r\n")[0] for h in up.heads if b"/admin" in h.split(b"\r\n")[0]]


@pytest.mark.parametrize("first", [
    # refused by a plugin, its body (a request) in the same packet
    b"POST /admin/x HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n" % len(SMUGGLED)
    + SMUGGLED,
    # refused by a plugin, Expect: 100-continue, body sent at once anyway
    b"POST /admin/x HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n"
    % len(SMUGGLED) + SMUGGLED,
    # refused by a plugin, chunked, the request inside a chunk
    b"POST /admin/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
    % (len(SMUGGLED), SMUGGLED),
    # over max_body_size as declared: the body (a request) is never read as a request
    b"POST /small/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 1000\r\n\r\n" + SMUGGLED * 30,
    # over max_body_size chunked, whole in one packet
    b"POST /small/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
    % (len(SMUGGLED) * 5, SMUGGLED * 5),
    # refused by the plugin (/admin/*rest takes /admin too), a 5-byte body
    b"POST /admin HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\nhello",
    # a 400 (bad path) with a body that is a request
    b"POST /%%zz HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED,
], ids=["plugin-cl", "plugin-expect", "plugin-chunked", "413-declared", "413-chunked",
        "plugin-small-body", "400-path"])
def test_a_request_after_an_answer_the_gateway_made_never_skips_the_plugins(guarded, h1_up,
                                                                            first):
    """Whatever the gateway answered itself, a request hidden in (or following) the body is
    never served past /admin's plugin: either it is read as the body, or it is a request of
    its own that meets the plugin too (another 403), or the connection ends."""
    answer = raw_request(guarded.port, first + SMUGGLED + b"GET /done HTTP/1.1\r\nHost: gw\r\n"
                         b"Connection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 4"), answer[:300]
    assert admin_lines(h1_up) == [], h1_up.heads
    # every answer on the wire is one the gateway made (or /done's): never an /admin 200
    for part in answer.split(b"HTTP/1.1 ")[1:]:
        status = int(part[:3])
        assert status != 200 or b'"line": "GET /done' in part, answer


@pytest.mark.parametrize("bad", [
    b"0x10", b"+10", b" 10", b"10 ", b"1_0", b"-1", b"ffffffffffffffffff", b"10;a=\"b",
    b"10\n", b"",
], ids=["0x", "plus", "lead-space", "trail-space", "underscore", "negative", "overflow",
        "open-quote-ext", "bare-lf", "empty"])
def test_odd_chunk_sizes_are_refused_and_nothing_smuggled(guarded, h1_up, bad):
    """A chunk size a lenient upstream would read otherwise is a 400 before any of it is
    forwarded; what follows is never read as a request."""
    body = b"%s\r\n%s\r\n0\r\n\r\n" % (bad, SMUGGLED[:16])
    answer = raw_request(guarded.port, b"POST /upload HTTP/1.1\r\nHost: gw\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n" + body + SMUGGLED)
    assert status_of(answer) == 400, answer[:300]
    assert answer.count(b"HTTP/1.1 ") == 1, answer
    assert h1_up.heads == []


@pytest.mark.parametrize("framing", [
    b"Content-Length: 5, 5\r\n",
    b"Content-Length: 5,\r\n",
    b"Content-Length: 0x5\r\n",
    b"Content-Length: 5 5\r\n",
    b"Content-Length: \x0b5\r\n",
    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: chunked, identity\r\n",
    b"Transfer-Encoding: identity\r\n",
    b"Transfer-Encoding: \x0bchunked\r\n",
    b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
    b"Transfer-Encoding : chunked\r\n",
    b"Transfer-Encoding\t: chunked\r\n",
    b" Transfer-Encoding: chunked\r\n",
], ids=["cl-list", "cl-trailing-comma", "cl-hex", "cl-space", "cl-vt", "te-twice",
        "te-identity-last", "te-identity", "te-vt", "te-and-cl", "te-space-colon",
        "te-tab-colon", "te-leading-space"])
def test_ambiguous_framing_is_never_forwarded(guarded, h1_up, framing):
    """Framing a lenient upstream could read otherwise is refused (400/501) before anything
    reaches it, and the bytes after it are never a request."""
    answer = raw_request(guarded.port, b"POST /upload HTTP/1.1\r\nHost: gw\r\n" + framing +
                         b"\r\n5\r\nhello\r\n0\r\n\r\n" + SMUGGLED)
    assert status_of(answer) in (400, 501), answer[:300]
    assert answer.count(b"HTTP/1.1 ") == 1, answer
    assert h1_up.heads == []


# -- 4. pipelined requests parsed ahead ------------------------------------------------------------

def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_pipelined_requests_are_not_parsed_ahead_without_bound(launcher):
    """A client that pipelines small requests to a slow route: llhttp parses the whole read
    (64 KiB) at once, and each request becomes a RequestContext with its header list, map,
    path and id, queued (http1.py ``on_message_begin``) until its turn. 26 bytes on the wire
    are ~1 KiB in the worker, so worker_connections clients that each send 64 KiB and read
    nothing made a worker hold ~36x what they sent (228 MB here; nginx, Go, gunicorn read
    one request at a time and leave the rest in the socket). Here 100 connections send
    6.4 MB; with at most MAX_PIPELINED requests parsed ahead the worker grows ~5 MB, its
    read buffers included."""
    slow = launcher.upstream("slow", delay=8)
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], slow.url)],
                                       server={"worker_connections": 1000}))
    worker = gw.worker_pids()[0]
    one = b"GET / HTTP/1.1\r\nHost:a\r\n\r\n"
    burst = one * (65536 // len(one))
    socks = []
    try:
        time.sleep(0.5)
        before = rss_kib(worker)
        for _ in range(100):
            sock = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(burst)
            socks.append(sock)
        time.sleep(3)
        grown = rss_kib(worker) - before
        sent_kib = len(burst) * len(socks) // 1024
        assert grown < 2 * sent_kib, f"worker grew {grown} KiB for {sent_kib} KiB sent"
    finally:
        for sock in socks:
            sock.close()


def read_answers(sock, deadline=10.0):
    """Every answer on ``sock`` until the gateway closes it: [(head, body)] (Content-Length
    framed, as the recording upstream's answers are)."""
    sock.settimeout(deadline)
    data = b""
    while piece := sock.recv(65536):
        data += piece
    answers = []
    while data:
        head, _, data = data.partition(b"\r\n\r\n")
        length = int(next(line.split(b":", 1)[1] for line in head.lower().split(b"\r\n")
                          if line.startswith(b"content-length:")))
        answers.append((head, data[:length]))
        data = data[length:]
    return answers


def test_a_pipelined_flood_is_answered_up_to_the_limit_then_closed(launcher, h1_up):
    """40 requests in one write: the first 32 (MAX_PIPELINED) are answered in order, the
    32nd with Connection: close, and the connection ends; the rest were never parsed, so
    never forwarded (the client retries them, RFC 9112 9.3.2)."""
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], h1_up.url)]))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(b"".join(b"GET /n%d HTTP/1.1\r\nHost: a\r\n\r\n" % i
                              for i in range(40)))
        answers = read_answers(sock)
    assert [head.split(b" ", 2)[1] for head, _ in answers] == [b"200"] * 32, answers[-1:]
    assert b"connection: close" in answers[-1][0].lower(), answers[-1][0]
    assert all(b"connection: keep-alive" in head.lower() for head, _ in answers[:-1])
    assert [head.split(b" ")[1] for head in h1_up.heads] == [b"/n%d" % i for i in range(32)]


def test_pipelined_requests_within_the_limit_are_all_served_and_kept_alive(launcher, h1_up):
    """A pipelining client under the limit notices nothing: 10 requests in one write get
    10 answers in order, and the connection carries the next request."""
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], h1_up.url)]))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(b"".join(b"GET /p%d HTTP/1.1\r\nHost: a\r\n\r\n" % i
                              for i in range(10)))
        sock.sendall(b"GET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        answers = read_answers(sock)
    assert len(answers) == 11, answers[-1:]
    assert all(head.startswith(b"HTTP/1.1 200") for head, _ in answers)
    assert [head.split(b" ")[1] for head in h1_up.heads] == \
        [b"/p%d" % i for i in range(10)] + [b"/last"]


# -- 5. HTTP/2: :authority and Host spellings, fragments, malformed blocks ----------------------

@pytest.fixture
def vhosts(launcher, h1_up):
    """admin.example refused to everyone (ip_restriction) at priority 1; a public catch-all.
    Both to one recording upstream; h2c on."""
    deny = {"ip_restriction": {"deny": ["0.0.0.0/0", "::/0"]}}
    return launcher.gateway(gateway_conf([
        route("vhost-admin", ["/*rest"], h1_up.url, hosts=["admin.example"], plugins=deny,
              priority=1),
        route("admin", ["/admin/*rest"], h1_up.url, plugins=deny),
        route("public", ["/*rest"], h1_up.url),
    ], http2={"h2c": True}))


def h2_answer(port, fields, body=None):
    """One request with exactly ``fields`` (unchecked by the client) -> (status or None if
    reset, reset code or None)."""
    client = RawH2(port, validate=False)
    try:
        sid = client.conn.get_next_available_stream_id()
        client.conn.send_headers(sid, fields, end_stream=body is None)
        if body is not None:
            client.conn.send_data(sid, body, end_stream=True)
        client.flush()
        answer = client.response(sid)
        reset = client.reset_code(sid)
        if reset is None and client.goaway() is not None:
            reset = ("goaway", client.goaway().error_code)
        elif answer is None and reset is None and client.closed:
            reset = "closed"
        return (answer[0] if answer else None), reset
    finally:
        client.close()


def forwarded_host_lines(up):
    return [(h.split(b"\r\n")[0], [l for l in h.split(b"\r\n") if l.lower().startswith(b"host:")])
            for h in up.heads]


@pytest.mark.parametrize("authority, extra", [
    (b"admin.example", []),                       # the control: 403
    (b"ADMIN.EXAMPLE.", []),
    (b"admin.example.:8080", []),
    (b"x@admin.example", []),
    (b"admin.example@other", []),
    (b"admin.example, other", []),
    (b"other\\@admin.example", []),
    (None, [(b"host", b"admin.example")]),          # Host without :authority
    (None, [(b"host", b"Admin.Example.")]),
    (None, [(b"host", b"other"), (b"host", b"admin.example")]),
    (b"", [(b"host", b"admin.example")]),
    (b"admin.example", [(b"host", b"admin.example")]),
])
def test_authority_spellings_of_a_protected_vhost_over_http2(vhosts, h1_up, authority, extra):
    """Every spelling of admin.example, in :authority or Host, is the protected vhost (403),
    or a 400/reset: never a 200 from the catch-all."""
    fields = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/x")]
    if authority is not None:
        fields.append((b":authority", authority))
    status, reset = h2_answer(vhosts.port, fields + extra)
    assert status in (400, 403) or reset is not None, (status, reset)
    assert h1_up.heads == [], forwarded_host_lines(h1_up)


@pytest.mark.parametrize("target", [
    b"/public#/../admin/x", b"/public%23/../admin/x", b"/public?#/../admin/x",
    b"/public#?/../admin/x",
])
def test_a_fragment_never_carries_a_protected_path_upstream(vhosts, h1_up, target):
    """A ``#`` and what follows it is no part of the path the gateway routed on; whatever it
    forwards must not hold ``/admin`` as a path an upstream could resolve (``/public#/../admin``
    is ``/admin`` to a server that takes ``#`` as a path byte)."""
    answer = raw_request(vhosts.port, b"GET %s HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
                         % target)
    status, reset = h2_answer(vhosts.port, [(b":method", b"GET"), (b":scheme", b"http"),
                                            (b":path", target), (b":authority", b"gw")])
    for line, _ in forwarded_host_lines(h1_up):
        path = line.split(b" ")[1].partition(b"?")[0]
        assert b"/admin" not in path and b"#" not in path, (line, answer[:200])


@pytest.mark.parametrize("extra", [
    [(b"X-Api-Key", b"k")], [(b"connection", b"keep-alive")], [(b"te", b"gzip")],
    [(b"transfer-encoding", b"chunked")], [(b"upgrade", b"websocket")],
    [(b"proxy-connection", b"x")], [(b"keep-alive", b"5")], [(b"x y", b"1")], [(b"", b"1")],
    [(b"x", b"a\r\nhost: admin.example")], [(b"x", b"a\nb")], [(b"x", b"\x00")],
    [(b":path", b"/admin/x")], [(b":protocol", b"websocket")], [(b":status", b"200")],
    [(b"x:y", b"1")], [(b"x", b"1"), (b":authority", b"admin.example")],
])
def test_malformed_http2_blocks_never_reach_the_upstream(vhosts, h1_up, extra):
    fields = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/public"),
              (b":authority", b"gw")] + extra
    status, reset = h2_answer(vhosts.port, fields)
    assert reset is not None or status == 400, (status, reset)
    assert h1_up.heads == []


@pytest.mark.parametrize("cl, body", [
    (b"5", b"hello" + b"GET /admin/x HTTP/1.1\r\nHost: gw\r\n\r\n"),
    (b"100", b"short"),
    (b"-1", b"x"), (b"+5", b"hello"), (b"5 ", b"hello"), (b"0x5", b"hello"),
])
def test_http2_content_length_that_disagrees_never_frames_an_upstream_request(vhosts, h1_up,
                                                                              cl, body):
    fields = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/upload"),
              (b":authority", b"gw"), (b"content-length", cl)]
    status, reset = h2_answer(vhosts.port, fields, body)
    assert reset is not None or status == 400, (status, reset)
    assert admin_lines(h1_up) == []
    for head in h1_up.heads:        # whatever went out was framed as the body it carries
        assert b"content-length: %s" % cl not in head.lower() or len(body) == int(cl)


@pytest.mark.parametrize("target, host", [
    (b"http://admin.example/x", b"other"),          # the control: 403
    (b"HTTP://ADMIN.EXAMPLE/x", b"other"),
    (b"hTtP://admin.example.:80/x", b"other"),
    (b"http://admin.example?x=1", b"other"),
    (b"http://admin.example", b"other"),
    (b"https://admin.example/x", b"other"),
    (b"http://x@admin.example/x", b"other"),
    (b"http://admin.example@other/x", b"other"),
    (b"http://other:80@admin.example/x", b"other"),
    (b"http://admin.example:/x", b"other"),
    (b"http://admin.example#/x", b"other"),
    (b"http://other/x", b"admin.example"),          # the URI's host wins: "other", public
])
def test_absolute_form_spellings_of_a_protected_vhost(vhosts, h1_up, target, host):
    """RFC 9112 3.2.2: the absolute-form's authority wins over Host. Every spelling of
    admin.example there is the protected vhost or a 400; the upstream is never sent
    admin.example as Host for a request the catch-all served."""
    answer = raw_request(vhosts.port, b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                         % (target, host))
    status = status_of(answer)
    assert status in (400, 403, 200), answer[:300]
    for line, hosts in forwarded_host_lines(h1_up):
        assert all(b"admin.example" not in h.lower() for h in hosts), (line, hosts)
    if status == 200:
        assert target == b"http://other/x", answer[:300]
