"""What plugins put on the wire and into logs (Dec 06, pass y): each test failed on 45caef6
and passes with its fix.

1. A third-party plugin's ``ctx.vars["fault"]`` went upstream in tracestate's ``gwfault=``
   member as it was: a client's decoded CR LF wrote header lines of its own into the
   HTTP/1.1 upstream's head (an HTTP/2 upstream closed the connection: a 502, the other
   streams on it lost), a "," forged other vendors' tracestate members, and "=", 300 bytes
   or non-ASCII broke W3C's grammar. Such a value is now a 500 naming the plugin.
2. The Common Log Format head wrote the client address, method and HTTP version as they
   were: a plugin's finish phase (run just before the line is taken) that set one from a
   client's value forged a second access line. JSON lines lost a line (an error logged per
   request) or became no JSON (``"fault":True``) for a plugin's non-text value. And an
   HTTP/2 client's request was logged as HTTP/1.1 (``version`` "1.1", the common format's
   request line ``HTTP/1.1``): it is ``2``, and ``HTTP/2.0`` as nginx writes it.
3. A gRPC-Web call answered with no gRPC answer (an HTML 502 page) reached the client as
   gRPC-Web: the page's bytes read as frames, and a trailer frame without grpc-status. As
   Envoy's grpc_web filter does, the client now gets the status the HTTP one maps to (502:
   14 UNAVAILABLE) and the page as grpc-message (without the page's Content-Encoding).
4. A grpc-web-text body was base64-decoded leniently: characters outside the alphabet (a
   space, "!!!!", url-safe "-_") were dropped and the upstream was sent other bytes than the
   client encoded. They are a 400 now, as in Envoy.
"""
import base64
import gzip
import json
import time

import h2.events

from ..conftest import gateway_conf, installed_plugin, route, stop_process, wait_until
from ..h2client import RawH2
from .test_attack_pass_dec03 import RecordingH2, raw_request
from .test_grpc_web import frame, parse_frames

ASK = b"GET %s?v=%s HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"


def h2_route(route_id, paths, port, plugins):
    return {"id": route_id, "paths": paths, "plugins": plugins,
            "upstream": {"targets": [{"url": f"http://127.0.0.1:{port}"}], "protocol": "h2"}}


# -- 1. a plugin's fault value in tracestate ------------------------------------------------------

FAULTER = '''
from gwserver.core.schema import Schema


class faulter:
    """Tags chaos traffic as the fault plugin does, with the client's ?v= (decoded)."""
    NAME, PRIORITY, SCHEMA = "faulter", 500, Schema()

    @staticmethod
    def access(conf, ctx):
        value = ctx.value_of("query", "v")
        if value is not None:
            ctx.vars["fault"] = value
        return None
'''


def test_a_third_party_plugins_fault_value_is_a_tracestate_value_or_a_500(launcher, h1_up,
                                                                          h2_up, tmp_path):
    env = installed_plugin(tmp_path, "gwfaulter", FAULTER, "faulter = gwfaulter:faulter\n")
    gw = launcher.gateway(gateway_conf([
        route("h1", ["/h1"], h1_up.url, plugins={"faulter": {}}),
        h2_route("h2", ["/h2"], h2_up.port, {"faulter": {}})]), env=env)
    # a value W3C allows goes on as the plugin set it, to either kind of upstream
    for value in (b"delay", b"chaos%2Babort", b"x" * 256):
        answer = raw_request(gw.port, ASK % (b"/h1", value))
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
        state = "gwfault=" + value.decode().replace("%2B", "+")
        assert h1_up.header(-1, "tracestate") == [state], h1_up.heads[-1]
        answer = raw_request(gw.port, ASK % (b"/h2", value))
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
        assert dict(h2_up.requests[-1])["tracestate"] == state, h2_up.requests[-1]
    sent = len(h1_up.heads), len(h2_up.requests)
    for value in (b"a%0d%0aX-Injected:%20yes", b"a,vendor=forged", b"a=b", b"x" * 300,
                  b"%c3%a9", b"a%20"):
        for path in (b"/h1", b"/h2"):
            answer = raw_request(gw.port, ASK % (path, value))
            assert answer.startswith(b"HTTP/1.1 500 "), (path, value, answer[:300])
    assert (len(h1_up.heads), len(h2_up.requests)) == sent, (h1_up.heads[sent[0]:],
                                                              h2_up.requests[sent[1]:])
    assert "plugin faulter: the fault it set in ctx.vars" in gw.log()


# -- 2. access-log fields a plugin's finish phase set ---------------------------------------------

LOGGER = '''
from gwserver.core.schema import Schema


class logger:
    """Sets, in its finish phase, what the path's last segment names to the client's ?v=."""
    NAME, PRIORITY, SCHEMA = "logger", 500, Schema()

    @staticmethod
    def finish(conf, ctx, status):
        what, value = ctx.path.rsplit("/", 1)[-1], ctx.value_of("query", "v")
        if what == "client":
            ctx.client_ip = value
        elif what == "version":
            ctx.version = value
        elif what == "method":
            ctx.method = value
        elif what == "flag":
            ctx.vars["fault"] = True
        elif what == "dict":
            ctx.vars["fault"] = {"tag": value}
        elif what == "protocol":
            ctx.vars["protocol"] = 2
'''
ASKS = ((b"client", b"1.2.3.4%0a6.6.6.6%20-%20-%20[forged]%20%22GET%20/x%20HTTP/1.1%22"),
        (b"version", b'1.1%22%20200%200%0a6.6.6.6%20-%20-%20[forged]'),
        (b"method", b"GET%0a6.6.6.6"), (b"flag", b""), (b"dict", b'a%22}'),
        (b"protocol", b""))


def logged_lines(tmp_path, launcher, h1_up, log):
    path = tmp_path / "access.log"
    tmp_path.mkdir(exist_ok=True)
    env = installed_plugin(tmp_path, "gwlogger", LOGGER, "logger = gwlogger:logger\n")
    gw = launcher.gateway(gateway_conf([route("s", ["/s/*rest"], h1_up.url,
                                              plugins={"logger": {}})],
                                       log={**log, "access_log_path": str(path)}), env=env)
    for what, value in ASKS:
        answer = raw_request(gw.port, ASK % (b"/s/" + what, value))
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    # a line is written on the worker's tick; one the render refused is never written
    wait_until(lambda: path.exists() and path.read_text().count("\n") >= len(ASKS) or
               "could not be rendered" in gw.log(), timeout=5)
    time.sleep(0.3)
    return path.read_text().splitlines(), gw


def test_common_log_lines_cannot_be_forged_by_what_a_finish_phase_set(launcher, h1_up,
                                                                      tmp_path):
    lines, gw = logged_lines(tmp_path, launcher, h1_up, {"access_format": "common"})
    assert len(lines) == len(ASKS), lines
    assert not any(line.startswith("6.6.6.6") for line in lines), lines
    for line, (what, _) in zip(lines, ASKS):
        assert f"/s/{what.decode()}" in line, lines
    assert lines[0].startswith("1.2.3.4\\x0A6.6.6.6 - - "), lines[0]
    assert '"fault"' not in "".join(lines)       # (not a listed field of the default line)


def test_json_log_lines_hold_a_plugins_values_that_are_no_text(launcher, h1_up, tmp_path):
    for at, fields in enumerate(([], ["client", "method", "version", "fault", "protocol"])):
        lines, gw = logged_lines(tmp_path / str(at), launcher, h1_up,
                                 {"access_format": "json", "access_fields": fields})
        assert "could not be rendered" not in gw.log(), gw.log()[-2000:]
        assert len(lines) == len(ASKS), (fields, lines)
        parsed = [json.loads(line) for line in lines]
        assert parsed[0]["client"].startswith("1.2.3.4\n6.6.6.6"), parsed[0]
        assert parsed[3]["fault"] == "True", parsed[3]
        assert parsed[4]["fault"] == str({"tag": 'a"}'}), parsed[4]
        assert str(parsed[5]["protocol"]) == "2", parsed[5]      # a number stays one
        stop_process(gw.proc)


def test_an_http2_clients_request_is_logged_with_its_version(launcher, h1_up, tmp_path):
    for fmt, fields, want in (("common", [], '"GET /over-h2 HTTP/2.0" 200 '),
                              ("json", ["version", "path"], '{"version":"2","path":"/over-h2"}')):
        path = tmp_path / f"{fmt}.log"
        gw = launcher.gateway(gateway_conf([route("s", ["/*rest"], h1_up.url)],
                                           http2={"h2c": True},
                                           log={"access_format": fmt, "access_fields": fields,
                                                "access_log_path": str(path)}))
        client = RawH2(gw.port)
        try:
            assert client.response(client.request("/over-h2"))[0] == 200
        finally:
            client.close()
        answer = raw_request(gw.port, b"GET /over-h1 HTTP/1.0\r\nHost: h\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
        wait_until(lambda: path.exists() and path.read_text().count("\n") >= 2, timeout=5)
        lines = path.read_text().splitlines()
        assert want in lines[0], lines                  # it said HTTP/1.1, and "1.1"
        assert "HTTP/1.0" in lines[1] or '"version":"1.0"' in lines[1], lines
        stop_process(gw.proc)


# -- 3. and 4. gRPC-Web: an answer that is no gRPC one; base64 outside the alphabet -----------

PAGE = b"<html><body><h1>502 Bad Gateway</h1>\xe9 100%</body></html>"


class PageH2(RecordingH2):
    """An h2c upstream that answers every call, once its body is in, with an HTML 502 page
    (a proxy in front of a gRPC service that is down), gzipped for a path ending in "Zip";
    ``bodies``: what each call sent."""

    def __init__(self):
        self.bodies, self.paths = {}, {}
        super().__init__()

    def on_event(self, conn, sock, event):
        if isinstance(event, h2.events.RequestReceived):
            self.requests.append(event.headers)
            self.bodies[event.stream_id] = b""
            self.paths[event.stream_id] = dict(event.headers)[b":path"]
        elif isinstance(event, h2.events.DataReceived):
            self.bodies[event.stream_id] += event.data
            conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            zipped = self.paths[event.stream_id].endswith(b"Zip")
            page = gzip.compress(PAGE) if zipped else PAGE
            conn.send_headers(event.stream_id, [
                (b":status", b"502"), (b"content-type", b"text/html"),
                (b"content-length", b"%d" % len(page)),
                *([(b"content-encoding", b"gzip")] if zipped else [])])
            conn.send_data(event.stream_id, page, end_stream=True)


def grpc_web_call(port, content_type, body, path=b"/svc.Echo/Say"):
    answer = raw_request(port, b"POST %s HTTP/1.1\r\nHost: h\r\nContent-Type: %s\r\n"
                               b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                         % (path, content_type, len(body), body))
    head, _, chunked = answer.partition(b"\r\n\r\n")
    if b"chunked" not in head:
        return head, chunked
    body = b""
    while chunked:
        size, _, rest = chunked.partition(b"\r\n")
        size = int(size, 16)
        body, chunked = body + rest[:size], rest[size + 2:]
        if not size:
            break
    return head, body


def test_a_grpc_web_call_answered_with_an_html_page_gets_a_grpc_status(launcher):
    up = PageH2()
    try:
        gw = launcher.gateway(gateway_conf([h2_route("g", ["/*rest"], up.port,
                                                     {"grpc_web": {}})]))
        message = frame(b"\x0a\x05world")
        for content_type, body, decode in (
                (b"application/grpc-web+proto", message, bytes),
                (b"application/grpc-web-text", base64.b64encode(message), base64.b64decode)):
            head, body = grpc_web_call(gw.port, content_type, body)
            assert head.startswith(b"HTTP/1.1 502 "), head
            assert content_type in head, head
            messages, trailers = parse_frames(decode(body))
            assert messages == [], messages             # the page is no message
            assert trailers.get("grpc-status") == "14", (body, trailers)   # UNAVAILABLE
            assert trailers.get("grpc-message") == \
                "<html><body><h1>502 Bad Gateway</h1>%E9 100%25</body></html>", trailers
        # a gzipped page: its Content-Encoding is no encoding of the trailer frame sent
        head, body = grpc_web_call(gw.port, b"application/grpc-web", message,
                                   path=b"/svc.Echo/SayZip")
        assert head.startswith(b"HTTP/1.1 502 ") and b"content-encoding" not in head.lower(), \
            head
        messages, trailers = parse_frames(body)
        assert (messages, trailers.get("grpc-status")) == ([], "14"), (body, trailers)
        assert trailers["grpc-message"].startswith("%1F%8B"), trailers       # gzip's bytes
    finally:
        up.close()


def test_a_grpc_web_text_body_outside_the_base64_alphabet_is_refused(launcher):
    up = PageH2()
    try:
        gw = launcher.gateway(gateway_conf([h2_route("g", ["/*rest"], up.port,
                                                     {"grpc_web": {}})]))
        encoded = base64.b64encode(frame(b"\x0a\x05world"))
        # the controls: padded pieces back to back, and line breaks, are gRPC-Web's
        for body in (encoded, base64.b64encode(b"\x00\x00") + base64.b64encode(
                b"\x00\x00\x03\x0a\x01a"), encoded[:8] + b"\r\n" + encoded[8:]):
            head, _ = grpc_web_call(gw.port, b"application/grpc-web-text", body)
            assert head.startswith(b"HTTP/1.1 502 "), (body, head)      # reached the page
        assert len(up.requests) == 3
        for body in (encoded[:8] + b" " + encoded[8:], encoded + b"!!!!",
                     b"-_8" + encoded[3:], encoded[:8] + b"\t" + encoded[8:]):
            head, answer = grpc_web_call(gw.port, b"application/grpc-web-text", body)
            # the 400 a gRPC-Web client reads: grpc-status 13 INTERNAL (test_fix_dec07b)
            assert head.startswith(b"HTTP/1.1 200 "), (body, head)
            assert parse_frames(base64.b64decode(answer))[1]["grpc-status"] == "13", answer
        assert len(up.requests) == 3, list(up.bodies.values())
    finally:
        up.close()
