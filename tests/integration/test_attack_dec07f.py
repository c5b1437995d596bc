"""Attack pass on the plugins that change answers and requests (gzip, cors, redirect,
headers, rewrite), Dec 07, helper w6: each test failed on 8ec039a and passes with its fix.

1. gzip compressed an answer and left the upstream's digests of its plain bytes on it:
   ``Content-Digest``, ``Repr-Digest`` (RFC 9530), ``Digest`` (RFC 3230) and ``Content-MD5``
   in the head (HTTP/1.1 and HTTP/2 upstreams, both client protocols, HEAD too), and an
   HTTP/2 upstream's ``content-digest`` trailer relayed after the gzip bytes to a client that
   asked for trailers. A client that checks one refused every compressed answer as corrupt.
   They are dropped from a compressed answer now (other trailers still go through).
2. gzip made the upstream's 304 say ``ETag: W/"v1"`` whenever If-None-Match held that weak
   tag, to a client that does not take gzip too, whose 200 says the strong ``"v1"`` (RFC
   9110 15.4.5: a 304 says the ETag the 200 would). A cache holding both variants asks with
   both tags; told the weak one, it serves the stored gzip bytes to that client. The tag is
   weakened only for a client that takes gzip now.
3. A ``headers`` or ``rewrite`` config that sets the trace id's response header (``X-Trace-Id``,
   which the docs list nowhere as the gateway's) was taken, and with tracing on the client got
   two: the plugin's first, then the gateway's (HTTP/1.1 and HTTP/2 clients, from either
   upstream). The upstream's own copy was already dropped; a plugin's is dropped too now.
4. rewrite's ``response_body`` (every status by default) gave an upstream's 205 Reset Content
   its text as content, to both client protocols: RFC 9110 15.3.6 forbids a 205 any (as
   gzip already knew). A 205 keeps its empty body now, as a 204 and a 304 do.
"""
import gzip as gzlib
import json
import re

import h2.events
import pytest

from ..conftest import gateway_conf, route
from ..h2_upstreams import EventH2cUpstream
from ..h2client import RawH2
from .test_attack_pass_dec03 import RecordingHttp1, raw_request

BODY = json.dumps({"items": list(range(600))}).encode()
JSON = (b"content-type", b"application/json")
DIGESTS = [(b"content-md5", b"Q2hlY2sgSW50ZWdyaXR5IQ=="),
           (b"content-digest", b"sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"),
           (b"repr-digest", b"sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"),
           (b"digest", b"SHA-256=X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=")]


class ScriptedHttp1(RecordingHttp1):
    """An HTTP/1.1 upstream answering each path (the query left out) with ``answers[path]``,
    a whole response."""

    def __init__(self, answers):
        self.answers = answers
        super().__init__()

    def answer(self, head, count):
        path = head.split(b" ")[1].split(b"?")[0]
        return self.answers.get(path, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")


class ScriptedH2(EventH2cUpstream):
    """An h2c upstream answering each path with ``answers[path]``: (status, fields, body[,
    trailers])."""

    def __init__(self, answers):
        self.answers = answers
        super().__init__()

    def on_event(self, conn, sock, event):
        if isinstance(event, h2.events.RequestReceived):
            path = dict(event.headers)[b":path"].split(b"?")[0]
            status, fields, body, *trailers = self.answers.get(path, (404, [], b""))
            conn.send_headers(event.stream_id, [(b":status", b"%d" % status), *fields],
                              end_stream=not body and not trailers)
            if body:
                conn.send_data(event.stream_id, body, end_stream=not trailers)
            if trailers:
                conn.send_headers(event.stream_id, trailers[0], end_stream=True)
        elif isinstance(event, h2.events.DataReceived):
            conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)


def h1_answer(status, fields, body=BODY):
    lines = b"".join(b"%s: %s\r\n" % pair for pair in fields)
    return b"HTTP/1.1 %d X\r\n%sContent-Length: %d\r\n\r\n%s" % (status, lines, len(body), body)


H1_ANSWERS = {b"/digests": h1_answer(200, [JSON, *DIGESTS]),
              b"/304": h1_answer(304, [(b"ETag", b'"v1"')], b""),
              b"/205": h1_answer(205, [(b"Content-Type", b"text/plain")], b""),
              b"/404": h1_answer(404, [(b"Content-Type", b"text/plain")], b"no such")}
H2_ANSWERS = {b"/digests": (200, [JSON, *DIGESTS, (b"content-length", b"%d" % len(BODY))],
                            BODY),
              b"/trailers": (200, [JSON], BODY, [(b"content-digest", b"sha-256=:AAAA:"),
                                                 (b"x-checked", b"yes")]),
              b"/304": (304, [(b"etag", b'"v1"')], b""),
              b"/205": (205, [(b"content-type", b"text/plain")], b"")}


@pytest.fixture(scope="module")
def gw(module_launcher):
    h1_up, h2_up = ScriptedHttp1(H1_ANSWERS), ScriptedH2(H2_ANSWERS)
    plugins = {"gzip": {"types": ["application/json"]}}
    yield module_launcher.gateway(gateway_conf([
        route("h1", ["/h1/*rest"], h1_up.url, strip_prefix="/h1", plugins=plugins),
        {"id": "h2", "paths": ["/h2/*rest"], "strip_prefix": "/h2", "plugins": plugins,
         "upstream": {"targets": [{"url": f"http://127.0.0.1:{h2_up.port}"}],
                      "protocol": "h2"}},
        route("trace-h1", ["/trace/h1/*rest"], h1_up.url, strip_prefix="/trace/h1",
              plugins={"headers": {"response": {"set": {"X-Trace-Id": "from-headers"}}}}),
        route("trace-rw", ["/trace/rw/*rest"], h1_up.url, strip_prefix="/trace/rw",
              plugins={"rewrite": {"response_headers": {"add": {"x-trace-id": "$request_id"}}}}),
        {"id": "trace-h2", "paths": ["/trace/h2/*rest"], "strip_prefix": "/trace/h2",
         "plugins": {"headers": {"response": {"set": {"X-Trace-Id": "from-headers"}}}},
         "upstream": {"targets": [{"url": f"http://127.0.0.1:{h2_up.port}"}],
                      "protocol": "h2"}},
        route("body-h1", ["/body/h1/*rest"], h1_up.url, strip_prefix="/body/h1",
              plugins={"rewrite": {"response_body": "replaced"}}),
        {"id": "body-h2", "paths": ["/body/h2/*rest"], "strip_prefix": "/body/h2",
         "plugins": {"rewrite": {"response_body": "replaced"}},
         "upstream": {"targets": [{"url": f"http://127.0.0.1:{h2_up.port}"}],
                      "protocol": "h2"}},
    ], http2={"h2c": True}))
    h1_up.close()
    h2_up.close()


def h1_get(gw, path, fields=(), method="GET"):
    """(status, {lower-case name: [values]}, body as sent, trailer lines) of an HTTP/1.1 ask."""
    extra = b"".join(b"%s: %s\r\n" % pair for pair in fields)
    answer = raw_request(gw.port, b"%s %s HTTP/1.1\r\nHost: gw\r\n%sConnection: close\r\n\r\n"
                         % (method.encode(), path, extra))
    head, _, rest = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    got = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        got.setdefault(name.strip().lower(), []).append(value.strip())
    body, trailers = b"", []
    if got.get(b"transfer-encoding") == [b"chunked"]:
        while True:
            size, _, rest = rest.partition(b"\r\n")
            size = int(size.split(b";")[0], 16)
            if size == 0:
                trailers = [t for t in rest.split(b"\r\n") if t]
                break
            body, rest = body + rest[:size], rest[size + 2:]
    else:
        body = rest
    return int(lines[0].split()[1]), got, body, trailers


def h2_get(gw, path, fields=(), method="GET"):
    client = RawH2(gw.port)
    try:
        sid = client.request(path.decode(), method=method, headers=fields)
        answer = client.response(sid)
        assert answer is not None, f"{path}: stream reset"
        return answer
    finally:
        client.close()


GZIP = (b"accept-encoding", b"gzip")


@pytest.mark.parametrize("side", [b"/h1", b"/h2"])
def test_a_compressed_answer_loses_the_digests_of_the_upstreams_bytes(gw, side):
    path = side + b"/digests"
    names = {name for name, _ in DIGESTS}
    status, got, body, _ = h1_get(gw, path, [GZIP])
    assert status == 200 and got[b"content-encoding"] == [b"gzip"]
    assert gzlib.decompress(body) == BODY
    assert not names & set(got), got
    status, got, _, _ = h1_get(gw, path, [GZIP], method="HEAD")
    assert status == 200 and got[b"content-encoding"] == [b"gzip"]
    assert not names & set(got), got
    status, fields, body, _ = h2_get(gw, path, [GZIP])
    assert status == 200 and fields["content-encoding"] == "gzip"
    assert gzlib.decompress(body) == BODY
    assert not names & {name.encode() for name in fields}, fields
    # not compressed: the bytes are the upstream's, and so are their digests
    status, got, body, _ = h1_get(gw, path)
    assert status == 200 and b"content-encoding" not in got and body == BODY
    assert names <= set(got), got


def test_an_h2_upstreams_digest_trailer_is_not_relayed_after_gzip_bytes(gw):
    status, got, body, trailers = h1_get(gw, b"/h2/trailers", [GZIP, (b"te", b"trailers")])
    assert status == 200 and got[b"content-encoding"] == [b"gzip"]
    assert gzlib.decompress(body) == BODY
    assert trailers == [b"x-checked: yes"], trailers
    status, fields, body, trailers = h2_get(gw, b"/h2/trailers", [GZIP, (b"te", b"trailers")])
    assert status == 200 and fields["content-encoding"] == "gzip"
    assert gzlib.decompress(body) == BODY
    assert trailers == {"x-checked": "yes"}, trailers
    # not compressed: the upstream's trailer is the body's
    _, fields, body, trailers = h2_get(gw, b"/h2/trailers", [(b"te", b"trailers")])
    assert body == BODY and trailers["content-digest"] == "sha-256=:AAAA:"


@pytest.mark.parametrize("side", [b"/h1", b"/h2"])
def test_a_304_keeps_the_strong_tag_for_a_client_that_does_not_take_gzip(gw, side):
    both = (b"if-none-match", b'"v1", W/"v1"')
    # a client that takes gzip revalidates the compressed variant: the weak tag (as before)
    status, got, _, _ = h1_get(gw, side + b"/304", [GZIP, both])
    assert status == 304 and got[b"etag"] == [b'W/"v1"']
    status, fields, _, _ = h2_get(gw, side + b"/304", [GZIP, both])
    assert status == 304 and fields["etag"] == 'W/"v1"'
    # one that does not gets the plain bytes' strong tag, as its 200 would say
    for fields in ([both], [(b"if-none-match", b'W/"v1"')],
                   [both, (b"accept-encoding", b"gzip;q=0, identity")]):
        status, got, _, _ = h1_get(gw, side + b"/304", fields)
        assert status == 304 and got[b"etag"] == [b'"v1"'], fields
        status, h2_fields, _, _ = h2_get(gw, side + b"/304", fields)
        assert status == 304 and h2_fields["etag"] == '"v1"', fields


def h2_fields(gw, path):
    """Every field of an HTTP/2 client's answer head, as the list it came in."""
    client = RawH2(gw.port)
    try:
        sid = client.request(path.decode())
        assert client.response(sid) is not None, f"{path}: stream reset"
        return [(bytes(k).lower(), bytes(v)) for e in client.events
                if isinstance(e, h2.events.ResponseReceived) for k, v in e.headers]
    finally:
        client.close()


@pytest.mark.parametrize("path", [b"/trace/h1/digests", b"/trace/rw/digests",
                                  b"/trace/h2/digests"])
def test_a_plugin_cannot_add_a_second_trace_id_beside_the_gateways(gw, path):
    status, got, _, _ = h1_get(gw, path)
    assert status == 200 and len(got[b"x-trace-id"]) == 1, got
    assert re.fullmatch(rb"[0-9a-f]{32}", got[b"x-trace-id"][0]), got     # the gateway's
    ids = [v for k, v in h2_fields(gw, path) if k == b"x-trace-id"]
    assert len(ids) == 1 and re.fullmatch(rb"[0-9a-f]{32}", ids[0]), ids


@pytest.mark.parametrize("side", [b"/body/h1", b"/body/h2"])
def test_response_body_gives_a_205_no_content(gw, side):
    status, _, body, _ = h1_get(gw, side + b"/205")
    assert status == 205 and body == b"", body
    status, _, body, _ = h2_get(gw, side + b"/205")
    assert status == 205 and body == b"", body
    if side == b"/body/h1":        # the other statuses' bodies are still replaced
        status, _, body, _ = h1_get(gw, side + b"/404")
        assert status == 404 and body == b"replaced"
