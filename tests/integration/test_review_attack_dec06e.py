"""Review pass of 2026-12-06 (helper v5) over the newest commits (895682f, the HTTP/2 edge;
589bbc8, the retry timeout; bd89fe6, the table reader), as an attacker and as a broken
upstream. Every test starts a real gateway (the launcher fixture) and a real upstream and
talks to them over loopback; every wait is bounded and every socket closed. Each defect's
test failed on 895682f.

1. 895682f made an HTTP/2 connection with a header block begun a slow head
   (Runtime.head_readers) whatever else it carried. When every worker_connections slot
   was taken and none was idle, one whose streams were being served (a long poll waiting
   on its upstream, a download) and whose next request's block had stalled for a second
   (a slow uplink, a big cookie) was closed as a slowloris: GOAWAY ENHANCE_YOUR_CALM, and
   every stream it had in flight cut. Closing it frees nothing an attacker could not hold
   anyway (its streams hold the slot as long as they are served; those that wait for a
   body are judged by min_body_rate, close_slowest_body), and HTTP/1.1 never had the case
   (a slow head there is all the connection does). An HTTP/2 connection with streams open
   is not judged as a slow head; one with half a block and nothing else still is.
2. An HTTP/2 upstream's connection error (895682f's SETTINGS ACK with a payload among
   them: FRAME_SIZE_ERROR) closed the connection without the GOAWAY h2 had queued for it:
   the upstream saw a bare close, never why (RFC 9113 5.4.1: an endpoint that meets a
   connection error SHOULD send GOAWAY first). It is written, without waiting, before the
   close; the request is answered 502 as before.
"""
import http.client
import socket
import threading

import h2.config
import h2.connection
import h2.errors
import h2.events
from hyperframe.frame import Frame, GoAwayFrame, HeadersFrame

from ..conftest import gateway_conf
from ..h2_upstreams import H2cUpstream, first_request
from ..h2client import RawH2
from .test_h2client_attack_dec05c import h2c_gateway, settled

E = h2.errors.ErrorCodes


# -- 1. a served HTTP/2 connection closed as a slow head --------------------------------------

def no_delay(client):
    """TCP_NODELAY, as real HTTP/2 clients set it: with Nagle on, a frame sent after the
    SETTINGS ACK waited for that ACK's own ACK (delayed, up to 40 ms), and newcomers that
    came meanwhile found the connection idle (closed for them, GOAWAY NO_ERROR)."""
    client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client


def slow_http1_request(port, results):
    """GET /slow/4 over HTTP/1.1 in a thread: a slot taken, not idle, no slow head."""
    def run():
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/slow/4")
            results.append(conn.getresponse().status)
            conn.close()
        except Exception as exc:
            results.append(exc)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_served_h2_connection_is_no_slow_head(launcher, upstream):
    gw = h2c_gateway(launcher, upstream, server={"worker_connections": 3,
                                                 "header_timeout": 10.0})
    client = settled(no_delay(RawH2(gw.port)))
    others = []
    try:
        served = client.request("/slow/4")      # a long poll: served, its upstream waits
        block = client.conn.encoder.encode([
            (b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/echo"),
            (b":authority", b"a"), (b"cookie", b"x" * 200)])
        client.send_raw(HeadersFrame(served + 2, block).serialize())    # no END_HEADERS yet
        threads = [slow_http1_request(gw.port, others) for _ in range(2)]   # every slot
        answer = client.response(served, timeout=8)
        assert client.goaway() is None, client.goaway()     # ENHANCE_YOUR_CALM at 1 s
        assert answer is not None and answer[0] == 200, answer
        for thread in threads:
            thread.join(10)
        assert others == [200, 200], others
    finally:
        client.close()
    assert "slow head closed" not in gw.log()
    # Half a block and nothing else is still a slow head (895682f's rule).
    gw2 = h2c_gateway(launcher, upstream, server={"worker_connections": 3,
                                                  "header_timeout": 10.0})
    idle_half = settled(no_delay(RawH2(gw2.port)))
    others = []
    try:
        idle_half.send_raw(HeadersFrame(1, block).serialize())
        threads = [slow_http1_request(gw2.port, others) for _ in range(2)]
        idle_half.pump(lambda c: c.goaway() is not None or c.closed, timeout=4)
        assert idle_half.goaway() is not None and \
            idle_half.goaway().error_code == E.ENHANCE_YOUR_CALM, idle_half.goaway()
        for thread in threads:
            thread.join(10)
    finally:
        idle_half.close()


# -- 2. an upstream's connection error: no GOAWAY ---------------------------------------------

class SettingsAckWithPayload(H2cUpstream):
    """Answers the first request's head with a SETTINGS ACK that carries a payload (RFC 9113
    6.5: FRAME_SIZE_ERROR), then records the frames the gateway sends until it closes."""

    def __init__(self):
        self.frames, self.done = [], threading.Event()
        super().__init__()

    def connection(self, sock):
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        try:
            sock.sendall(conn.data_to_send())
            if first_request(conn, sock) is None:
                return
            sock.sendall(b"\0\0\6\x04\x01\0\0\0\0" + b"\0\x03\0\0\0\x64")    # ACK + entry
            sock.settimeout(3.0)
            buffered = b""
            while data := sock.recv(65536):
                buffered += data
            while len(buffered) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(buffered[:9]))
                frame.parse_body(memoryview(buffered[9:9 + length]))
                self.frames.append(frame)
                buffered = buffered[9 + length:]
        except OSError:
            pass
        finally:
            sock.close()
            self.done.set()


def test_an_upstreams_connection_error_is_told_with_goaway(launcher):
    up = SettingsAckWithPayload()
    try:
        route = {"id": "h2up", "paths": ["/*rest"],
                 "upstream": {"targets": [{"url": f"http://127.0.0.1:{up.port}"}],
                              "protocol": "h2"}}
        gw = launcher.gateway(gateway_conf([route]))
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        conn.request("GET", "/x")
        resp = conn.getresponse()
        resp.read()
        conn.close()
        assert resp.status == 502, resp.status
        assert up.done.wait(5)
        goaways = [f for f in up.frames if isinstance(f, GoAwayFrame)]
        assert goaways, up.frames                           # a bare close before
        assert goaways[0].error_code == E.FRAME_SIZE_ERROR, goaways[0]
    finally:
        up.close()
