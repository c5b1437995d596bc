"""Attack pass of 2026-12-05 (a helper's): native gRPC, gRPC-Web and the HTTP/2 edges.

Every test starts real processes (gateways from the launcher fixture) and talks to them over
loopback; in-process upstreams are small h2c servers on 127.0.0.1, closed in teardown.

Found (each test failed on the code as it was, 3d052ca):
1. A gRPC-Web request body is read whole into the worker, with no bound by default (now
   grpc_web.max_body_size, 4 MiB, gRPC's own default message limit: 413 past it).
2. One client's stalled HTTP/2 downloads hold an h2 upstream connection's whole receive
   window: every other client's download from that upstream (same worker) stalls.
3. A gRPC-Web answer whose content-type is not UTF-8 is an unhandled error (500, traceback).
4. A gRPC-Web answer loses the head's grpc-encoding (compressed messages cannot be read).
   3 and 4: h2proxy's relay keeps the head as it came but the call's status fields.
   2: once the connection's window runs short, streams whose answers waited over a second for
   their clients are reset and give their share back (h2client, H2Connection._give_back).
Held: test_held_fewer_stalled_streams_leave_other_downloads_alone (the control of 2).
"""
import http.client
import socket
import time

import h2.settings

from ..conftest import gateway_conf
from ..h2_upstreams import StreamingH2Upstream
from ..h2client import RawH2
from .test_attack_pass_dec04b import h2_gateway, h2_scripts  # noqa: F401 (fixture)
from .test_http2_streaming import peak_rss


def grpc_web_gateway(launcher, up, **sections):
    return h2_gateway(launcher, up, {"plugins": {"grpc_web": {}}}, **sections)


def post_streamed(port, path, content_type, size, piece=1 << 20, timeout=60):
    """POST ``size`` zero bytes (Content-Length framed) in pieces; -> (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"POST %s HTTP/1.1\r\nHost: gw\r\nContent-Type: %s\r\n"
                     b"Content-Length: %d\r\n\r\n" % (path, content_type, size))
        chunk = b"\0" * piece
        left = size
        try:
            while left:
                n = min(left, piece)
                sock.sendall(chunk[:n])
                left -= n
        except OSError:
            pass
        out = b""
        try:
            while piece_in := sock.recv(65536):
                out += piece_in
                if b"\r\n\r\n" in out:
                    break
        except OSError:
            pass
        return out


# -- 1. gRPC-Web bodies are buffered whole, without bound, before the upstream is called -----

def test_a_grpc_web_body_is_not_buffered_whole_without_bound(launcher, h2_scripts):
    """docs/security.md: bodies up to server.request_buffer_size (64 KiB) are read whole,
    larger ones stream; the HTTP/2 streaming tests hold a 1 GiB upload to < 64 MiB of worker
    RSS. A gRPC-Web request (Content-Type application/grpc-web) on a grpc_web route is read
    whole into the worker (H2Forwarder.read_body) with no limit but the route's
    max_body_size, which is 0 (none) by default: one client's 256 MiB POST grows the worker's
    peak RSS by about 256 MiB (more in text mode), so a few clients take a worker down."""
    up = h2_scripts({})
    gw = grpc_web_gateway(launcher, up)
    worker = gw.worker_pids()[0]
    before = peak_rss(worker)
    answer = post_streamed(gw.port, b"/pkg.Svc/Method", b"application/grpc-web", 256 << 20)
    grown = peak_rss(worker) - before
    assert grown < 64 << 20, f"worker peak RSS grew by {grown >> 20} MiB"
    # grpc_web.max_body_size: the 413 a gRPC-Web client reads, grpc-status 8 (test_fix_dec07b)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert b"content-type: application/grpc-web" in answer.lower(), answer[:300]


# -- 2. Stalled downloads of one client hold the upstream connection's window for everyone ---

def stalled_downloads(gw, count):
    """A client that opens ``count`` downloads of 8 MiB with its windows shut, and takes
    their heads for 3 s; -> (the client, its stream ids)."""
    attacker = RawH2(gw.port, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    sids = [attacker.request("/stream?n=8388608&f=16384") for _ in range(count)]
    attacker.pump(lambda c: False, timeout=3)
    return attacker, sids


def stalled_download_victim(launcher, stalled):
    """A gateway on an h2 upstream; a client opens ``stalled`` downloads with its windows
    shut and never opens them; -> (another client's body or None, seconds it took)."""
    up = StreamingH2Upstream()
    try:
        gw = launcher.gateway(gateway_conf([{
            "id": "dl", "paths": ["/*rest"], "upstream": {
                "targets": [{"url": f"http://127.0.0.1:{up.port}"}], "protocol": "h2"}}],
            http2={"h2c": True}))
        attacker, _ = stalled_downloads(gw, stalled)
        started = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        try:
            conn.request("GET", "/stream?n=2000000&f=16384")
            body = conn.getresponse().read()
        except (socket.timeout, TimeoutError):
            body = None
        took = time.monotonic() - started
        conn.close()
        attacker.close()
        return body, took
    finally:
        up.close()


def test_stalled_streams_of_one_client_do_not_stall_other_clients_downloads(launcher):
    """One multiplexed connection per h2 upstream per worker, with a 16 MiB connection
    receive window (and 1 MiB per stream); each stream's DATA is acknowledged only as it is
    relayed. A client that opens 20 downloads with its own windows shut
    (SETTINGS_INITIAL_WINDOW_SIZE 0) never takes them, so each keeps ~1 MiB of that
    connection's window until http2.send_timeout (60 s). Past 16 of them the upstream can
    send no DATA to anyone else through that worker: another client's 2 MB download gets its
    head and then nothing for a minute (here: not within 10 s)."""
    body, took = stalled_download_victim(launcher, 20)
    assert body is not None and len(body) == 2000000 and took < 5, \
        f"the victim's download stalled ({took:.1f}s)"


def test_held_fewer_stalled_streams_leave_other_downloads_alone(launcher):
    """The control: 8 stalled downloads (8 MiB of the 16 MiB window) and the other client's
    download is served at once."""
    body, took = stalled_download_victim(launcher, 8)
    assert body is not None and len(body) == 2000000 and took < 5, took


# -- 3. A gRPC-Web answer whose content-type is not UTF-8 is an unhandled error -----------------

def test_a_grpc_web_answer_with_a_non_utf8_content_type_is_a_502_not_a_crash(launcher,
                                                                            h2_scripts):
    """An h2 upstream's content-type with an obs-text byte (allowed in a field value, and
    relayed as it is to plain HTTP clients) on a gRPC-Web call: relay() decodes it as UTF-8
    and the UnicodeDecodeError escapes the proxy step: a 500 'internal error' and an
    'unhandled error' traceback in the log, where a broken upstream's answer is a 502."""
    def script(link, conn, sid):
        with link.lock:
            conn.send_headers(sid, [(b":status", b"200"),
                                    (b"content-type", b"application/grpc+\xe9")])
            conn.send_data(sid, b"\0\0\0\0\0")
            conn.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
            link.send()
    up = h2_scripts({b"/pkg.Svc/M": script})
    gw = grpc_web_gateway(launcher, up)
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    conn.request("POST", "/pkg.Svc/M", body=b"\0\0\0\0\0",
                 headers={"Content-Type": "application/grpc-web", "X-Grpc-Web": "1"})
    resp = conn.getresponse()
    resp.read()
    conn.close()
    time.sleep(0.3)
    assert "unhandled error" not in gw.log(), gw.log()[-1500:]
    assert resp.status != 500


# -- 4. gRPC-Web answers lose the upstream's grpc-encoding -------------------------------------

def test_a_grpc_web_answer_keeps_the_message_encoding_of_its_compressed_messages(
        launcher, h2_scripts):
    """A gRPC server that compresses its answer (a client's grpc-accept-encoding: gzip reaches
    it) says so in the head (grpc-encoding: gzip) and sets flag 1 on each compressed message.
    relay() drops every grpc-* field of the head from a gRPC-Web answer (only a trailers-only
    answer puts them in the trailer frame): the client gets the compressed message with no
    grpc-encoding anywhere and cannot read it. Envoy's grpc_web filter passes the head's
    grpc-encoding through (PROTOCOL-WEB.md: response headers are HTTP headers)."""
    import gzip
    message = gzip.compress(b"\x0a\x05hello")

    def script(link, conn, sid):
        with link.lock:
            conn.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc"),
                                    (b"grpc-encoding", b"gzip")])
            conn.send_data(sid, b"\x01" + len(message).to_bytes(4, "big") + message)
            conn.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
            link.send()
    up = h2_scripts({b"/pkg.Svc/M": script})
    gw = grpc_web_gateway(launcher, up)
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    conn.request("POST", "/pkg.Svc/M", body=b"\0\0\0\0\0", headers={
        "Content-Type": "application/grpc-web", "X-Grpc-Web": "1",
        "grpc-accept-encoding": "gzip"})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    assert resp.status == 200 and body.startswith(b"\x01"), (resp.status, body[:50])
    trailer_block = body[5 + len(message) + 5:]
    assert resp.getheader("grpc-encoding") == "gzip" or b"grpc-encoding:gzip" in trailer_block, \
        (resp.getheaders(), trailer_block)


def test_a_grpc_web_body_declared_over_the_limit_is_refused_before_it_is_read(launcher,
                                                                             h2_scripts):
    """A Content-Length over grpc_web.max_body_size is a 413 at once: the gateway need not
    take (or wait for) 5 MiB it would refuse."""
    gw = grpc_web_gateway(launcher, h2_scripts({}))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(b"POST /pkg.Svc/M HTTP/1.1\r\nHost: gw\r\nContent-Type: "
                     b"application/grpc-web\r\nContent-Length: %d\r\n\r\n" % (5 << 20))
        answer = sock.recv(4096)         # nothing of the body sent: only a 413 can come
    # (to a gRPC-Web client as it reads one: grpc-status 8, test_fix_dec07b)
    assert answer.startswith(b"HTTP/1.1 200 ") and b"grpc-status:8" in answer, answer[:200]
