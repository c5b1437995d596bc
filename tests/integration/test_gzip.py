"""gzip against real processes: what is compressed and what is not, streaming, and a client
that asks for a huge compressible answer and never reads it."""
import gzip as gzlib
import http.client
import json
import socket
import threading
import time
import zlib

import h2.config
import h2.connection
import h2.events
import pytest

from ..conftest import gateway_conf, route

DOC = json.dumps({"items": [{"id": i, "name": f"item {i}"} for i in range(70)]})
NGINX_DOC = DOC.replace("{", "{{").replace("}", "}}")      # launcher.nginx() runs .format


@pytest.fixture(scope="module")
def gw(module_launcher):
    nginx = module_launcher.nginx("gz", (
        "listen 127.0.0.1:{port}; default_type application/json; "
        f"location /json {{{{ return 200 '{NGINX_DOC}'; }}}} "
        "location /small {{ return 200 '{{\"a\":1}}'; }} "
        f"location /encoded {{{{ add_header Content-Encoding br; return 200 '{NGINX_DOC}'; }}}} "
        f"location /nt {{{{ add_header Cache-Control no-transform; return 200 '{NGINX_DOC}'; }}}} "
        f"location /etag {{{{ add_header ETag '\"v1\"'; return 200 '{NGINX_DOC}'; }}}} "
        f"location /text {{{{ default_type text/csv; return 200 '{NGINX_DOC}'; }}}}"))
    up = module_launcher.upstream("bytes")
    plugin = {"gzip": {"types": ["application/json", "application/octet-stream"]}}
    gateway = module_launcher.gateway(gateway_conf([
        route("gz", ["/gz/*rest"], f"http://127.0.0.1:{nginx}", strip_prefix="/gz",
              plugins=plugin),
        route("big", ["/big/*rest"], up.url, strip_prefix="/big", plugins=plugin)]))
    return gateway


def fetch(gw, path, headers=None, version=b"1.1"):
    head = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in (headers or {}).items())
    with socket.create_connection(("127.0.0.1", gw.port), timeout=20) as sock:
        sock.sendall(b"GET %s HTTP/%s\r\nHost: gw\r\n%sConnection: close\r\n\r\n"
                     % (path.encode(), version, head))
        data = b""
        while True:
            piece = sock.recv(1 << 20)
            if not piece:
                break
            data += piece
    raw_head, _, body = data.partition(b"\r\n\r\n")
    lines = raw_head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), value.strip())
    if headers.get("transfer-encoding") == "chunked":
        body = dechunk(body)
    return int(lines[0].split()[1]), headers, body


def dechunk(data):
    out = b""
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return out
        out, data = out + data[:size], data[size + 2:]


GZ = {"Accept-Encoding": "br;q=1.0, gzip;q=0.8"}


def test_a_listed_type_is_compressed_for_a_client_that_accepts_gzip(gw):
    status, headers, body = fetch(gw, "/gz/json", GZ)
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert "content-length" not in headers and headers["transfer-encoding"] == "chunked"
    assert "Accept-Encoding" in headers["vary"]
    assert gzlib.decompress(body).decode() == DOC and len(body) < len(DOC) / 3


@pytest.mark.parametrize("path, headers, why", [
    ("/gz/json", {}, "no Accept-Encoding"),
    ("/gz/json", {"Accept-Encoding": "gzip;q=0, br"}, "gzip refused"),
    ("/gz/json", {"Accept-Encoding": "identity"}, "identity only"),
    ("/gz/small", GZ, "under min_length"),
    ("/gz/encoded", GZ, "already encoded"),
    ("/gz/nt", GZ, "Cache-Control: no-transform"),
    ("/gz/text", GZ, "type not listed"),
])
def test_what_is_left_as_it_is(gw, path, headers, why):
    status, got, body = fetch(gw, path, headers)
    assert status == 200 and got.get("content-encoding") in (None, "br"), why
    assert body.startswith(b"{"), why


def test_vary_even_when_not_compressed_and_a_strong_etag_weakened(gw):
    _, plain, _ = fetch(gw, "/gz/json")
    assert "Accept-Encoding" in plain["vary"]
    _, zipped, _ = fetch(gw, "/gz/etag", GZ)
    assert zipped["etag"] == 'W/"v1"'


def test_http10_client_gets_a_close_delimited_gzip_body(gw):
    status, headers, body = fetch(gw, "/gz/json", GZ, version=b"1.0")
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert "transfer-encoding" not in headers
    assert gzlib.decompress(body).decode() == DOC


def test_a_large_answer_streams_through(gw):
    status, headers, body = fetch(gw, "/big/bytes/5000000?chunked=1", GZ)
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert gzlib.decompress(body) == b"x" * 5_000_000


def test_a_client_that_never_reads_a_huge_compressible_answer_holds_no_memory(gw):
    """200 MB of compressible bytes asked for with gzip and never read: the gateway's send
    stalls, so the upstream read stalls; the worker's memory stays put and others are served."""
    pid = gw.worker_pids()[0]

    def rss_mib():
        with open(f"/proc/{pid}/status") as f:
            return int(next(l for l in f if l.startswith("VmRSS")).split()[1]) / 1024

    before = rss_mib()
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        sock.sendall(b"GET /big/bytes/200000000 HTTP/1.1\r\nHost: gw\r\n"
                     b"Accept-Encoding: gzip\r\n\r\n")
        time.sleep(3.0)
        started = time.monotonic()
        assert fetch(gw, "/gz/small")[0] == 200
        assert time.monotonic() - started < 0.5
        assert rss_mib() - before < 60
    finally:
        sock.close()


# -- both upstream protocols (issue 13: one upstream path) ------------------------------------

@pytest.fixture(scope="module")
def both(module_launcher):
    """nginx over HTTP/1.1 and over h2c, the same answers: gzip on each route."""
    answers = ('default_type application/json; '
               f"location /json {{{{ add_header Accept-Ranges bytes; return 200 '{NGINX_DOC}'; }}}} "
               "location /small {{ return 200 '{{\"a\":1}}'; }}")
    h1 = module_launcher.nginx("gz-h1", "listen 127.0.0.1:{port}; " + answers)
    h2 = module_launcher.nginx("gz-h2", "listen 127.0.0.1:{port} http2; " + answers)
    return module_launcher.gateway(gateway_conf([
        {"id": proto, "paths": [f"/{proto}/*rest"], "strip_prefix": f"/{proto}",
         "upstream": {"targets": [{"url": f"http://127.0.0.1:{port}"}], "protocol": protocol},
         "plugins": {"gzip": {}}}
        for proto, port, protocol in (("h1", h1, "http1"), ("h2", h2, "h2"))]))


@pytest.mark.parametrize("proto", ["h1", "h2"])
def test_an_answer_is_compressed_whichever_protocol_the_upstream_speaks(both, proto):
    """An HTTP/2 upstream's answer went out saying Content-Encoding: gzip over the plain
    bytes: no client could read it."""
    status, headers, body = fetch(both, f"/{proto}/json", GZ)
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert gzlib.decompress(body).decode() == DOC
    # A Range on the upstream's bytes would splice them into gzip's: no ranges offered.
    assert "accept-ranges" not in headers
    _, plain, body = fetch(both, f"/{proto}/json")
    assert plain["accept-ranges"] == "bytes" and body.decode() == DOC


class EventStream:
    """An upstream that sends one event, then a second only when ``release`` is set (or
    after 10 s), over HTTP/1.1 (chunked) or h2c."""

    def __init__(self, protocol):
        self.protocol, self.release = protocol, threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        try:
            sock, _ = self.listener.accept()
        except OSError:
            return
        with sock:
            try:
                (self.h2 if self.protocol == "h2" else self.http1)(sock)
            except OSError:
                pass

    def http1(self, sock):
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n9\r\ndata: 1\n\n\r\n")
        self.release.wait(10)
        sock.sendall(b"9\r\ndata: 2\n\n\r\n0\r\n\r\n")

    def h2(self, sock):
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        stream_id = None
        while stream_id is None:
            for event in conn.receive_data(sock.recv(65536)):
                if isinstance(event, h2.events.RequestReceived):
                    stream_id = event.stream_id
            sock.sendall(conn.data_to_send())
        conn.send_headers(stream_id, [(b":status", b"200"),
                                      (b"content-type", b"text/event-stream")])
        conn.send_data(stream_id, b"data: 1\n\n")
        sock.sendall(conn.data_to_send())
        self.release.wait(10)
        conn.send_data(stream_id, b"data: 2\n\n", end_stream=True)
        sock.sendall(conn.data_to_send())
        sock.settimeout(2.0)
        try:
            while sock.recv(65536):     # until the gateway is done with the connection
                pass
        except OSError:
            pass

    def close(self):
        self.release.set()
        self.listener.close()


@pytest.mark.parametrize("protocol", ["http1", "h2"])
def test_a_compressed_event_stream_goes_out_as_it_comes(launcher, protocol):
    """zlib holds small input until kilobytes follow: each event waited in the gateway for
    the ones after it (for good, on a quiet feed). Each piece now goes out as it comes."""
    upstream = EventStream(protocol)
    try:
        gw = launcher.gateway(gateway_conf([{
            "id": "events", "paths": ["/events"], "plugins": {"gzip": {
                "types": ["text/event-stream"], "min_length": 0}},
            "upstream": {"targets": [{"url": f"http://127.0.0.1:{upstream.port}"}],
                         "protocol": protocol}}]))
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
        conn.request("GET", "/events", headers={"Accept-Encoding": "gzip"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Encoding") == "gzip"
        inflate, got = zlib.decompressobj(31), b""
        while b"data: 1\n\n" not in got:        # the socket's timeout bounds the wait
            got += inflate.decompress(resp.read1(65536))
        assert got == b"data: 1\n\n" and not upstream.release.is_set()
        upstream.release.set()
        got += inflate.decompress(resp.read()) + inflate.flush()
        assert got == b"data: 1\n\ndata: 2\n\n" and inflate.eof
        conn.close()
    finally:
        upstream.close()


@pytest.mark.parametrize("proto", ["h1", "h2"])
def test_min_length_holds_whichever_protocol_the_upstream_speaks(both, proto):
    """gzip never saw an HTTP/2 upstream's Content-Length: a 7-byte answer was compressed."""
    status, headers, body = fetch(both, f"/{proto}/small", GZ)
    assert status == 200 and "content-encoding" not in headers and body == b'{"a":1}'


@pytest.mark.parametrize("proto", ["h1", "h2"])
def test_a_head_gets_the_head_a_get_would(both, proto):
    """HEAD went out unencoded with the upstream's length while GET was gzip: a client
    sizing the download, or a cache comparing validators, was told another story."""
    with socket.create_connection(("127.0.0.1", both.port), timeout=10) as sock:
        sock.sendall(b"HEAD /%s/json HTTP/1.1\r\nHost: gw\r\nAccept-Encoding: gzip\r\n"
                     b"Connection: close\r\n\r\n" % proto.encode())
        answer = b""
        while piece := sock.recv(65536):
            answer += piece
    head = answer.lower()
    assert head.startswith(b"http/1.1 200") and b"\r\ncontent-encoding: gzip\r\n" in head
    assert b"content-length" not in head and b"accept-ranges" not in head
    assert b"vary: accept-encoding" in head and answer.endswith(b"\r\n\r\n")
