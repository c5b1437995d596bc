"""An HTTP/2 upstream's head over 64 KiB (decoded) ends the gateway's connection to it, every
stream on it (HPACK's table would be out of step, docs/http2.md). The gateway never said so:
its SETTINGS held no MAX_HEADER_LIST_SIZE, so an upstream that honours the peer's limit (Go's
and grpc-go's servers refuse to write a head over it, failing that one stream) had no limit
to honour, and one oversized answer cut every other client's answer on the connection. Now
the gateway advertises the bound; such an upstream resets that stream alone. (A real gateway,
a scripted h2c upstream on loopback that honours the setting as Go's server does.)"""
import threading
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

from ..conftest import gateway_conf
from ..h2_upstreams import H2cUpstream
from .test_h2_upstream_fields import answer_to, body_of

BIG = 70000         # a head over 64 KiB decoded


class HonouringUpstream(H2cUpstream):
    """/big: a head of BIG bytes, or RST_STREAM when the peer's MAX_HEADER_LIST_SIZE is
    smaller (what Go's server does); /slow: 200 "0123456789" 0.8 s later; else 200 "ok"."""

    def __init__(self):
        self.limits, self.connections = [], 0
        super().__init__()

    def connection(self, sock):
        self.connections += 1
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None))
        conn.initiate_connection()
        lock = threading.Lock()

        def answer(sid, body, extra=()):
            with lock:
                try:
                    conn.send_headers(sid, [(b":status", b"200"), *extra,
                                            (b"content-length", b"%d" % len(body))])
                    conn.send_data(sid, body, end_stream=True)
                    sock.sendall(conn.data_to_send())
                except (h2.exceptions.ProtocolError, OSError):
                    pass

        with sock:
            try:
                sock.sendall(conn.data_to_send())
                while data := sock.recv(65536):
                    with lock:
                        events = conn.receive_data(data)
                    for event in events:
                        if isinstance(event, h2.events.RemoteSettingsChanged):
                            self.limits.append(conn.remote_settings.max_header_list_size)
                        if not isinstance(event, h2.events.RequestReceived):
                            continue
                        sid, path = event.stream_id, dict(event.headers)[b":path"]
                        if path == b"/slow":
                            threading.Timer(0.8, answer, (sid, b"0123456789")).start()
                        elif path == b"/big":
                            limit = conn.remote_settings.max_header_list_size
                            if limit is not None and BIG > limit:
                                with lock:
                                    conn.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
                            else:
                                answer(sid, b"big", [(b"x-pad", b"p" * BIG)])
                        else:
                            answer(sid, b"ok")
                    with lock:
                        sock.sendall(conn.data_to_send())
            except (h2.exceptions.ProtocolError, OSError):
                pass


def get(gw, path):
    return answer_to(gw.port, b"GET %s HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n" % path)


def test_an_oversized_head_fails_its_stream_alone_on_an_upstream_told_the_bound(launcher):
    upstream = HonouringUpstream()
    try:
        gw = launcher.gateway(gateway_conf([
            {"id": "h2", "paths": ["/*rest"], "upstream": {
                "targets": [{"url": f"http://127.0.0.1:{upstream.port}"}], "protocol": "h2"}}],
            workers=1))
        assert get(gw, b"/warm").startswith(b"HTTP/1.1 200")     # the connection is up
        bystander = {}
        reader = threading.Thread(
            target=lambda: bystander.setdefault("answer", get(gw, b"/slow")))
        reader.start()
        time.sleep(0.3)                 # its stream is open on the connection
        answer = get(gw, b"/big")
        reader.join(10)
        assert answer.startswith(b"HTTP/1.1 502"), answer[:200]
        # before: no limit said, the 70 KB head was sent and ended the connection: a 502
        assert bystander["answer"].startswith(b"HTTP/1.1 200"), bystander["answer"][:200]
        assert body_of(bystander["answer"]) == b"0123456789"
        assert upstream.limits and upstream.limits[-1] == 65536, upstream.limits
        assert upstream.connections == 1
    finally:
        upstream.close()
