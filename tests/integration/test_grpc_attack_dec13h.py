"""Attack pass of 2026-12-13 (helper g1): gRPC and gRPC-Web, a hostile client and a hostile
or broken gRPC upstream.

Every test starts a real gateway (the launcher fixture) and talks to it over loopback; the
upstreams are the scripted h2c servers of test_attack_pass_dec04b on 127.0.0.1, closed in
teardown.

Found (each test failed on the code as it was, 138887a):
1. A native gRPC call over HTTP/2 without ``te: trailers`` lost its status: the gateway adds
   ``te: trailers`` upstream itself, then dropped the answer's trailers (grpc-status 3 and its
   message), and the client read a call that ended with no status at all.
2. A gRPC-Web answer's trailer frame carried the upstream's grpc-message as it came: raw
   UTF-8 (not the percent-encoding gRPC requires) in a body the client parses as ASCII lines.
3. A gRPC-Web answer without a grpc-status (no trailers, or a trailers-only head without
   one) or with one that is no number got a trailer frame without a status, or with "abc":
   a gRPC client derives UNKNOWN (2) for both; a gRPC-Web client had nothing to read.
4. A gRPC-Web server stream whose upstream stalled between two messages, past the call's
   grpc-timeout or the route's read timeout, was cut (a chunked body without its end): no
   status to read, where docs/http2.md says past it the gateway answers 4; a native call's
   stream was reset (INTERNAL to its client). Now the status follows the last message.
Held: a stall inside a message is still a cut (no trailer frame can follow it); a client's
RST_STREAM CANCEL resets the upstream's stream at once; grpc-timeout forms that are no
timeout (9 digits, a bad unit, a sign) are ignored, "0m" and huge ones are served.
"""
import base64
import http.client
import time

import h2.errors
import h2.exceptions
import pytest

from ..h2client import RawH2
from .test_attack_pass_dec04b import h2_gateway, h2_scripts  # noqa: F401 (fixture)
from .test_grpc_web import frame, parse_frames

GRPC_HEAD = [(b":status", b"200"), (b"content-type", b"application/grpc")]
NATIVE = [("content-type", "application/grpc")]


def grpc_answer(trailers, head=GRPC_HEAD, message=b"\0\0\0\0\0"):
    """A script: ``head``, then ``message`` (None: none) and ``trailers`` (None: the stream
    ends without any)."""
    def script(link, conn, sid):
        with link.lock:
            conn.send_headers(sid, head, end_stream=message is None and trailers is None)
            if message is not None:
                conn.send_data(sid, message, end_stream=trailers is None)
            if trailers is not None:
                conn.send_headers(sid, trailers, end_stream=True)
            link.send()
    return script


def web_call(gw, path, headers=None, timeout=10):
    """A gRPC-Web call with one empty message; -> (response, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=timeout)
    try:
        conn.request("POST", path, body=frame(b""), headers={
            "Content-Type": "application/grpc-web", "X-Grpc-Web": "1", **(headers or {})})
        resp = conn.getresponse()
        return resp, resp.read()
    finally:
        conn.close()


# -- 1. A native gRPC call without te: trailers loses its status --------------------------------

def test_a_native_grpc_call_without_te_trailers_still_gets_its_grpc_status(launcher,
                                                                          h2_scripts):
    """gRPC clients send ``te: trailers``; one that does not still gets ``te: trailers`` sent
    upstream for it (gRPC servers insist on it). Its answer's trailers were then dropped, as
    an HTTP/1.1 client's are without TE: grpc-status 3 and its message never reached the
    client, over HTTP/2, which always carries trailers."""
    up = h2_scripts({b"/pkg.Svc/M": grpc_answer([(b"grpc-status", b"3"),
                                                 (b"grpc-message", b"bad")])})
    gw = h2_gateway(launcher, up, http2={"h2c": True})
    client = RawH2(gw.port)
    try:
        sid = client.request("/pkg.Svc/M", "POST", NATIVE, body=frame(b""))
        got = client.response(sid)
    finally:
        client.close()
    assert got is not None and got[3] == {"grpc-status": "3", "grpc-message": "bad"}, got


# -- 2. An upstream's raw grpc-message in a gRPC-Web trailer frame ------------------------------

def test_a_grpc_web_trailer_frame_percent_encodes_a_raw_grpc_message(launcher, h2_scripts):
    """gRPC's grpc-message is percent-encoded (bytes outside 0x20-0x7E); a server that sends
    raw UTF-8 had it copied into the trailer frame as it came. Encoded there, a client
    decodes it back to the same text; a message already encoded is left as it is."""
    up = h2_scripts({
        b"/pkg.Svc/Raw": grpc_answer([(b"grpc-status", b"3"),
                                      (b"grpc-message", "caf\u00e9 \u00fcber".encode())]),
        b"/pkg.Svc/Encoded": grpc_answer([(b"grpc-status", b"3"),
                                          (b"grpc-message", b"caf%C3%A9 100%25")])})
    gw = h2_gateway(launcher, up, {"plugins": {"grpc_web": {}}})
    resp, body = web_call(gw, "/pkg.Svc/Raw")
    block = body[5 + 5:]
    assert resp.status == 200 and \
        block == b"grpc-status:3\r\ngrpc-message:caf%C3%A9 %C3%BCber\r\n", body
    resp, body = web_call(gw, "/pkg.Svc/Encoded")
    assert body[10:] == b"grpc-status:3\r\ngrpc-message:caf%C3%A9 100%25\r\n", body


# -- 3. A gRPC-Web answer without a grpc-status, or with one that is no number ------------------

@pytest.mark.parametrize("script", [
    grpc_answer(None),                                                    # no trailers at all
    grpc_answer(None, head=GRPC_HEAD, message=None),                      # trailers-only, none
    grpc_answer(None, head=GRPC_HEAD + [(b"grpc-status", b"abc")], message=None),
    grpc_answer([(b"grpc-status", b"-1"), (b"grpc-message", b"odd")])],
    ids=["no-trailers", "trailers-only-without-status", "trailers-only-abc", "trailers-minus"])
def test_a_grpc_web_answer_without_a_grpc_status_gets_unknown(launcher, h2_scripts, script):
    """A gRPC answer whose stream ends without grpc-status, or with one that is no number, is
    UNKNOWN (2) to a gRPC client (grpc/doc/http-grpc-status-mapping.md: the HTTP status, 200,
    mapped). The gRPC-Web client got a trailer frame with no status, or "abc", to guess
    from."""
    up = h2_scripts({b"/pkg.Svc/M": script})
    gw = h2_gateway(launcher, up, {"plugins": {"grpc_web": {}}})
    resp, body = web_call(gw, "/pkg.Svc/M")
    _, trailers = parse_frames(body)
    assert resp.status == 200 and trailers.get("grpc-status") == "2", body
    assert trailers.get("grpc-message"), body


# -- 4. A gRPC-Web answer whose upstream fails between two messages is cut, no status ----------

def message_then_stall(link, conn, sid):
    """A server stream's head and first message, then nothing (the stream stays open)."""
    with link.lock:
        conn.send_headers(sid, GRPC_HEAD)
        conn.send_data(sid, frame(b"\x0a\x01a"))
        link.send()


def half_message_then_stall(link, conn, sid):
    """As message_then_stall, but the stream stops inside its second message."""
    with link.lock:
        conn.send_headers(sid, GRPC_HEAD)
        conn.send_data(sid, frame(b"\x0a\x01a") + frame(b"\x0a\x01b")[:4])
        link.send()


@pytest.mark.parametrize("mode", ["binary", "text"])
def test_a_grpc_web_stream_past_its_deadline_ends_with_status_4(launcher, h2_scripts, mode):
    """docs/http2.md: past a call's grpc-timeout the gateway answers status 4; a gRPC-Web
    call's status rides in its body, so it can, whenever the upstream stalls between two
    messages. A server stream whose upstream sent one message and stalled: past the 300 ms
    deadline the gateway cut the connection (a chunked body without its end), and the
    client read no status at all; past the route's read timeout, the same (14 now). The
    access log keeps the 200 and the error."""
    up = h2_scripts({b"/pkg.Svc/S": message_then_stall})
    gw = h2_gateway(launcher, up, {"plugins": {"grpc_web": {}}, "timeouts": {"read": 1}})
    content_type = "application/grpc-web-text" if mode == "text" else "application/grpc-web"
    for timeout, code in (("300m", "4"), (None, "14")):
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
        started = time.monotonic()
        try:
            conn.request("POST", "/pkg.Svc/S", body=frame(b"") if mode == "binary" else
                         base64.b64encode(frame(b"")), headers={
                             "Content-Type": content_type, "X-Grpc-Web": "1",
                             **({"grpc-timeout": timeout} if timeout else {})})
            resp = conn.getresponse()
            try:
                body = resp.read()
            except http.client.IncompleteRead as exc:
                body = exc.partial
        finally:
            conn.close()
        took = time.monotonic() - started
        if mode == "text":
            body = base64.b64decode(body + b"=" * (-len(body) % 4))
        messages, trailers = parse_frames(body)
        assert messages == [b"\x0a\x01a"] and trailers.get("grpc-status") == code and \
            took < 2.5, (timeout, body, took)
    time.sleep(0.3)
    logged = [line for line in gw.access_lines() if line["path"] == "/pkg.Svc/S"]
    assert [line["status"] for line in logged] == [200, 200] and \
        all(line.get("error") for line in logged), logged


def test_a_native_grpc_stream_past_its_deadline_ends_with_status_4(launcher, h2_scripts):
    """The same for a native gRPC call over HTTP/2, whose head and first message went: past
    the deadline the stream was reset (INTERNAL_ERROR, which a gRPC client reads as INTERNAL
    13), where trailers can still carry status 4; past the read timeout, 14."""
    up = h2_scripts({b"/pkg.Svc/S": message_then_stall})
    gw = h2_gateway(launcher, up, {"timeouts": {"read": 1}}, http2={"h2c": True})
    client = RawH2(gw.port)
    try:
        for timeout, code in (("300m", "4"), (None, "14")):
            sid = client.request("/pkg.Svc/S", "POST", NATIVE + [("te", "trailers")] + (
                [("grpc-timeout", timeout)] if timeout else []), body=frame(b""))
            got = client.response(sid, timeout=3)
            assert got is not None and got[2] == frame(b"\x0a\x01a") and \
                got[3].get("grpc-status") == code, (timeout, got, client.reset_code(sid))
    finally:
        client.close()


def test_a_grpc_web_stream_cut_inside_a_message_stays_cut(launcher, h2_scripts):
    """The control of 4: a stall inside a message can get no trailer frame (the client would
    read it as the message's bytes): the answer is cut, as before."""
    up = h2_scripts({b"/pkg.Svc/S": half_message_then_stall})
    gw = h2_gateway(launcher, up, {"plugins": {"grpc_web": {}}})
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
    try:
        conn.request("POST", "/pkg.Svc/S", body=frame(b""), headers={
            "Content-Type": "application/grpc-web", "X-Grpc-Web": "1", "grpc-timeout": "300m"})
        resp = conn.getresponse()
        with pytest.raises(http.client.IncompleteRead) as cut:
            resp.read()
    finally:
        conn.close()
    assert cut.value.partial == frame(b"\x0a\x01a") + frame(b"\x0a\x01b")[:4]


# -- Held --------------------------------------------------------------------------------------

def test_a_cancelled_call_resets_its_upstream_stream(launcher, h2_scripts):
    """A client's RST_STREAM CANCEL mid-way through a server stream: the upstream's stream is
    reset within a moment (its next send fails), nothing left streaming to nobody."""
    seen = {}

    def streaming(link, conn, sid):
        with link.lock:
            conn.send_headers(sid, GRPC_HEAD)
            link.send()
        for _ in range(60):
            try:
                with link.lock:
                    conn.send_data(sid, b"\0\0\0\0\x01x")
                    link.send()
            except h2.exceptions.StreamClosedError:
                seen["closed"] = time.monotonic()
                return
            time.sleep(0.05)
    up = h2_scripts({b"/pkg.Svc/S": streaming})
    gw = h2_gateway(launcher, up, http2={"h2c": True})
    client = RawH2(gw.port)
    try:
        sid = client.request("/pkg.Svc/S", "POST", NATIVE + [("te", "trailers")],
                             body=frame(b""))
        assert client.pump(lambda c: any(getattr(e, "data", b"") for e in c.events), 3)
        client.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        client.flush()
        cancelled = time.monotonic()
        time.sleep(0.5)
    finally:
        client.close()
    assert seen.get("closed", cancelled + 9) - cancelled < 0.5, seen


def test_grpc_timeout_forms_that_are_none_are_ignored(launcher, h2_scripts):
    """gRPC's grpc-timeout is 1 to 8 digits and a unit: the others (9 digits, a sign, a space,
    a unit of another case) bound nothing, and "0m" or a huge value is no crash."""
    up = h2_scripts({b"/pkg.Svc/M": grpc_answer([(b"grpc-status", b"0")])})
    gw = h2_gateway(launcher, up, http2={"h2c": True})
    client = RawH2(gw.port)
    try:
        for value in ("99999999H", "0m", "123456789m", "1h", "-1S", "1 S", "S"):
            sid = client.request("/pkg.Svc/M", "POST", NATIVE + [
                ("te", "trailers"), ("grpc-timeout", value)], body=frame(b""))
            got = client.response(sid)
            assert got is not None and got[0] == 200 and got[3]["grpc-status"] in ("0", "4"), \
                (value, got)
    finally:
        client.close()
    assert "unhandled error" not in gw.log()
