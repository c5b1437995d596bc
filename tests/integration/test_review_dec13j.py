"""Review of 8c32239 (gRPC, both ends hostile), helper r12.

Every test starts a real gateway (the launcher fixture) and talks to it over loopback; the
upstreams are the scripted h2c servers of test_attack_pass_dec04b on 127.0.0.1, closed in
teardown.

Found (each test failed on 8c32239):
1. A gRPC-Web call from an HTTP/1.0 client (nginx's proxy_http_version is 1.0 by default)
   whose upstream failed between two messages was still cut: the status after the last
   message was given only to chunked answers, while a gRPC-Web call's status rides in its
   body, which an HTTP/1.0 answer ends by the close.
2. MessageEdges.feed (run on every chunk of a gRPC answer) stepped through each message in
   two turns of a Python loop, building its prefix by slices and concatenation: a server
   stream of 50-byte messages cost the worker 2.5-2.8 times the CPU of the same bytes
   relayed unfollowed (~0.65 us a message; 100-byte ones: 0.17 s against 0.06 s for 12.8
   MB). One step a message now (struct), 1.2-1.3 times.
Held: messages whose prefixes are split across DATA frames, a compressed one and an empty
one are followed to their edge (the status after them); one byte into the next prefix is
a cut; a native call whose upstream resets its stream after a message gets trailers and
an ended stream, no reset of its own (the client's stream ended: stream_done resets only
one whose request is still open, NO_ERROR, as RFC 9113 8.1 allows).
"""
import http.client
import os
import socket
import time

import h2.errors
import h2.events

from .test_attack_pass_dec04b import h2_gateway, h2_scripts  # noqa: F401 (fixture)
from .test_grpc_attack_dec13h import GRPC_HEAD, NATIVE, message_then_stall
from .test_grpc_web import frame, parse_frames
from ..h2client import RawH2


def http10_call(port, path, fields, body, timeout=5):
    """An HTTP/1.0 request; -> (status line, {lower-case name: value}, body to the close)."""
    head = b"POST %s HTTP/1.0\r\nHost: gw\r\nContent-Length: %d\r\n%s\r\n" % (
        path, len(body), b"".join(b"%s: %s\r\n" % pair for pair in fields))
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head + body)
        got = b""
        while data := sock.recv(65536):
            got += data
    head, _, rest = got.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip()
    return lines[0], fields, rest


# -- 1. gRPC-Web over HTTP/1.0: the status after the last message ------------------------------

def test_a_grpc_web_stream_over_http10_past_its_deadline_ends_with_status_4(launcher,
                                                                          h2_scripts):
    """An HTTP/1.0 client's gRPC-Web answer is ended by the close, and its trailer frame is
    in the body: it can carry the status after the last message as a chunked one does. It
    got the message and the close, no status to read."""
    up = h2_scripts({b"/pkg.Svc/S": message_then_stall})
    gw = h2_gateway(launcher, up, {"plugins": {"grpc_web": {}}, "timeouts": {"read": 1}})
    for timeout, code in ((b"300m", "4"), (None, "14")):
        started = time.monotonic()
        line, fields, body = http10_call(gw.port, b"/pkg.Svc/S", [
            (b"Content-Type", b"application/grpc-web"), (b"X-Grpc-Web", b"1"),
            *([(b"grpc-timeout", timeout)] if timeout else [])], frame(b""))
        took = time.monotonic() - started
        messages, trailers = parse_frames(body)
        assert line.startswith(b"HTTP/1.1 200") and b"transfer-encoding" not in fields and \
            messages == [b"\x0a\x01a"] and trailers.get("grpc-status") == code and \
            took < 2.5, (timeout, line, body, took)


# -- 2. The cost of MessageEdges on a stream of small messages ---------------------------------

def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


MESSAGE = frame(b"x" * 45)          # 50 bytes with its prefix
PIECE = MESSAGE * 320               # 16,000 bytes: a DATA frame
PIECES = 800                        # 12.8 MB, 256,000 messages


def small_messages(link, conn, sid):
    """A server stream of PIECES * 320 messages of 50 bytes, as fast as the windows let."""
    with link.lock:
        conn.send_headers(sid, GRPC_HEAD)
        link.send()
    for _ in range(PIECES):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with link.lock:
                if conn.local_flow_control_window(sid) >= len(PIECE):
                    conn.send_data(sid, PIECE)
                    link.send()
                    break
            time.sleep(0.0005)
    with link.lock:
        conn.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
        link.send()


def test_following_message_edges_costs_little_on_a_stream_of_small_messages(launcher,
                                                                            h2_scripts):
    """The same 12.8 MB of 50-byte messages, relayed to a native gRPC call (its messages
    followed, for a status after the last one) and to a call of another content type
    (not followed): the worker's CPU for the first was 2.5-2.8 times the second's (0.27 s
    and 0.10 s: MessageEdges.feed took ~0.65 us a message), 1.2-1.3 times now."""
    up = h2_scripts({b"/pkg.Svc/S": small_messages})
    gw = h2_gateway(launcher, up, http2={"h2c": True})
    worker, = gw.serving_worker_pids()
    spent = {}
    for kind, headers in (("other", [("content-type", "application/octet-stream")]),
                          ("grpc", NATIVE)) * 2:
        client = RawH2(gw.port)
        try:
            before = cpu_seconds(worker)
            sid = client.request("/pkg.Svc/S", "POST", headers + [("te", "trailers")],
                                 body=frame(b""))
            client.pump(lambda c: c.ended(sid) or c.reset_code(sid) is not None, 20)
            cpu = cpu_seconds(worker) - before
        finally:
            client.close()
        size = sum(len(e.data) for e in client.events if isinstance(e, h2.events.DataReceived))
        trailers = [dict(e.headers) for e in client.events
                    if isinstance(e, h2.events.TrailersReceived)]
        assert size == len(PIECE) * PIECES and trailers == [{b"grpc-status": b"0"}], \
            (kind, size, trailers)
        spent[kind] = min(spent.get(kind, 9), cpu)
    assert spent["grpc"] < 1.8 * spent["other"], spent


# -- Held: messages split across frames, compressed, empty; a reset after a message ----------

MESSAGES = frame(b"\x0a\x01a", flag=1) + frame(b"") + frame(b"xyz")


def split_messages(extra):
    """MESSAGES (and ``extra``) in DATA frames of 1, 2, 3... bytes, then nothing."""
    def script(link, conn, sid):
        data, size = MESSAGES + extra, 1
        with link.lock:
            conn.send_headers(sid, GRPC_HEAD)
            while data:
                conn.send_data(sid, data[:size])
                data, size = data[size:], size + 1
            link.send()
    return script


def test_messages_split_across_frames_are_followed_to_their_edge(launcher, h2_scripts):
    """Prefixes split across DATA frames, a compressed message and an empty one: the status
    still follows the last of them; one byte into the next prefix, the answer is cut."""
    up = h2_scripts({b"/pkg.Svc/Edge": split_messages(b""),
                     b"/pkg.Svc/Into": split_messages(b"\0")})
    gw = h2_gateway(launcher, up, {"plugins": {"grpc_web": {}}})
    for path, whole in (("/pkg.Svc/Edge", True), ("/pkg.Svc/Into", False)):
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
        try:
            conn.request("POST", path, body=frame(b""), headers={
                "Content-Type": "application/grpc-web", "X-Grpc-Web": "1",
                "grpc-timeout": "300m"})
            resp = conn.getresponse()
            try:
                body, cut = resp.read(), False
            except http.client.IncompleteRead as exc:
                body, cut = exc.partial, True
        finally:
            conn.close()
        if whole:
            messages, trailers = parse_frames(body)
            assert not cut and messages == [b"\x0a\x01a", b"", b"xyz"] and \
                trailers.get("grpc-status") == "4", body
        else:
            assert cut and body == MESSAGES + b"\0", body


def message_then_reset(link, conn, sid):
    """A message, and once it went on (a reset in the same read is a whole 14, the message
    dropped: nothing had gone to the client), a reset."""
    with link.lock:
        conn.send_headers(sid, GRPC_HEAD)
        conn.send_data(sid, frame(b"\x0a\x01a"))
        link.send()
    time.sleep(0.3)
    with link.lock:
        conn.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
        link.send()


def test_a_native_call_whose_upstream_resets_after_a_message_gets_14_and_no_reset(
        launcher, h2_scripts):
    """The upstream resets its stream after a whole message: the client gets the message,
    trailers with 14 and its stream's end, and no RST_STREAM of its own (which would have
    it read INTERNAL, whatever the trailers said)."""
    up = h2_scripts({b"/pkg.Svc/S": message_then_reset})
    gw = h2_gateway(launcher, up, http2={"h2c": True})
    client = RawH2(gw.port)
    try:
        sid = client.request("/pkg.Svc/S", "POST", NATIVE + [("te", "trailers")],
                             body=frame(b""))
        got = client.response(sid, timeout=3)
        time.sleep(0.2)         # a reset would follow the trailers at once
        client.pump(lambda c: False, 0.2)
    finally:
        client.close()
    assert got is not None and got[2] == frame(b"\x0a\x01a") and \
        got[3].get("grpc-status") == "14" and client.reset_code(sid) is None, \
        (got, client.reset_code(sid))
