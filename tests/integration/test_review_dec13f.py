"""Review r10 of ecff88b, e5db4c8, a8c8fb8, 9a875ea and db9af5a, against a real gateway and
h2c upstreams on loopback.

1. (a8c8fb8's other direction.) The gateway now tells HTTP/2 upstreams the head bound it
   reads answers within, so that an upstream that honours it fails one stream, not the
   connection. The other way it honoured nothing: h2 sends any request head whatever the
   upstream's SETTINGS_MAX_HEADER_LIST_SIZE says, and a client's head within the gateway's
   own limits (90 fields of 700 bytes: under limit_request_fields, limit_request_field_size
   and the 64 KiB head, counted as HTTP/1.1 writes them) is over 65536 as HPACK counts a
   field list (32 bytes a field on top of name and value). An upstream whose decoder holds
   to its setting (h2's own) ended the connection, and another client's request waiting on
   it was a 502. The head is held to the upstream's setting now: a 431 for it alone.

2. (9a875ea's other readers.) Fly-Client-IP and five more are dropped from every client but
   a trusted proxy now, as X-Real-IP and the like were; a rate_limit (a split, a hash key)
   on one then took every such client for one without it: one bucket, which one client
   could spend for all (its own Fly-Client-IP had been a fresh bucket of its choosing
   before). As on X-Forwarded-For, such a key counts the client the gateway found when the
   header is not there (a trusted proxy's own value still counts as it came).

Checked, no defect: ecff88b (the old and new StreamResponse.head answer the same status,
fields and message for every head tried; the fields are made bytes once, as before), the
streamed cut of e5db4c8 (HTTP/1.1 chunked: no last chunk; HTTP/2: RST_STREAM; gRPC-Web: no
trailer frame; logged), db9af5a (a reset after part of a ClientHello is still an info line).
"""
import socket
import threading

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from ..conftest import gateway_conf, route, wait_until
from ..h2_upstreams import H2cUpstream
from .test_h2_upstream_fields import answer_to


class HeldUpstream(H2cUpstream):
    """h2c (h2's own server: it says SETTINGS_MAX_HEADER_LIST_SIZE 65536 and ends the
    connection for a request head past it): /held is answered only when /release comes on
    the same connection; anything else at once."""

    def __init__(self):
        self.connections = 0
        self.held_seen = threading.Event()
        super().__init__()

    def connection(self, sock):
        self.connections += 1
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None))
        conn.initiate_connection()
        held = []
        with sock:
            try:
                sock.sendall(conn.data_to_send())
                while data := sock.recv(65536):
                    for e in conn.receive_data(data):
                        if not isinstance(e, h2.events.RequestReceived):
                            continue
                        path = dict(e.headers)[b":path"]
                        if path.endswith(b"/held"):
                            held.append(e.stream_id)
                            self.held_seen.set()
                            continue
                        for sid in [e.stream_id] + (held if path.endswith(b"/release") else []):
                            conn.send_headers(sid, [(b":status", b"200"),
                                                    (b"content-length", b"2")])
                            conn.send_data(sid, b"ok", end_stream=True)
                    sock.sendall(conn.data_to_send())
            except (h2.exceptions.ProtocolError, OSError):
                pass


def big_head():
    """90 fields a client may send (under limit_request_fields, limit_request_field_size
    and the 64 KiB head, counted as HTTP/1.1 writes them), over 65536 as HPACK counts a
    field list (32 bytes a field on top of its name and value)."""
    return b"".join(b"X-F-%02d: %s\r\n" % (i, b"v" * 700) for i in range(90))


def test_a_request_head_past_the_upstreams_header_list_size_fails_that_request_alone(launcher):
    upstream = HeldUpstream()
    try:
        gw = launcher.gateway(gateway_conf(
            [{"id": "h2", "paths": ["/h/*rest"], "upstream": {
                "targets": [{"url": f"http://127.0.0.1:{upstream.port}"}], "protocol": "h2"}}]))
        # the connection is open and settled
        assert answer_to(gw.port, b"GET /h/a HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
                         ).startswith(b"HTTP/1.1 200")
        held = {}
        thread = threading.Thread(target=lambda: held.setdefault("answer", answer_to(
            gw.port, b"POST /h/held HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\n"
                     b"Connection: close\r\n\r\n")))
        thread.start()
        assert upstream.held_seen.wait(5)
        big = answer_to(gw.port, b"GET /h/big HTTP/1.1\r\nHost: gw\r\n%sConnection: close\r\n\r\n"
                        % big_head())
        release = answer_to(gw.port, b"GET /h/release HTTP/1.1\r\nHost: gw\r\n"
                                     b"Connection: close\r\n\r\n")
        thread.join(10)
        assert held["answer"].startswith(b"HTTP/1.1 200"), held
        assert upstream.connections == 1
        # before: both 502 ("closed the HTTP/2 connection"), a second connection opened
        assert big.startswith(b"HTTP/1.1 431"), big[:200]
        assert release.startswith(b"HTTP/1.1 200"), release[:200]
        assert wait_until(lambda: "SETTINGS_MAX_HEADER_LIST_SIZE" in gw.log(), timeout=5), \
            gw.log()[-2000:]
    finally:
        upstream.close()


def status_from(port, source, path, headers=b""):
    """GET ``path`` from ``source`` (a loopback address); -> the answer's status."""
    with socket.create_connection(("127.0.0.1", port), timeout=5,
                                  source_address=(source, 0)) as sock:
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: gw\r\n%sConnection: close\r\n\r\n"
                     % (path, headers))
        got = b""
        while b"\r\n" not in got and (piece := sock.recv(4096)):
            got += piece
    return int(got.split(b" ", 2)[1])


def test_a_limit_keyed_on_a_header_that_names_the_client_counts_each_client(launcher,
                                                                            upstream):
    """9a875ea drops Fly-Client-IP (and five more) from clients that are no trusted proxy, as
    X-Real-IP and the like were: a rate_limit keyed on header:Fly-Client-IP then counted every
    such client in the one bucket of requests without it, which one client could spend (its
    Fly-Client-IP had been a bucket of its own choosing before). As header:X-Forwarded-For
    is, such a key counts the client the gateway found when the header is not there."""
    gw = launcher.gateway(gateway_conf([
        route("fly", ["/fly/*rest"], upstream.url, plugins={"rate_limit": {
            "rate": 1, "per": 3600, "burst": 1, "key": "header:Fly-Client-IP"}}),
        route("real", ["/real/*rest"], upstream.url, plugins={"rate_limit": {
            "rate": 1, "per": 3600, "burst": 1, "key": "header:X-Real-IP"}})]))
    for path, name in ((b"/fly/x", b"Fly-Client-IP"), (b"/real/x", b"X-Real-IP")):
        first = [status_from(gw.port, "127.0.0.2", path, b"%s: 203.0.113.%d\r\n" % (name, i))
                 for i in range(3)]
        assert first == [200, 429, 429], (path, first)        # no bucket of its choosing
        # before: 429, the first client had spent the one bucket of everyone
        assert status_from(gw.port, "127.0.0.3", path) == 200, path
        assert status_from(gw.port, "127.0.0.3", path) == 429, path
