"""Review r6 of a929b47 (a hostile HTTP/2 upstream), as an attacker and as a broken upstream,
against a real gateway and an h2c upstream on loopback.

1. A body short of its content-length that a trailer block ends (HEADERS with END_STREAM, no
   DATA or too little) was relayed: h2 checks the length only as DATA comes, and a trailer
   block resets what it expects. An HTTP/1.1 client that sent "TE: trailers" got a whole,
   chunked 200 with 2 of its 5 bytes; another one "content-length: 5", 2 bytes and a close.
   a929b47 made the same answer without its trailers (a head that ends the stream) a 502.
2. A 304 with a content-length (RFC 9110 8.6 allows one; RFC 9113 8.1.1: "MAY have a
   non-zero content-length ... even though no content is included in DATA frames") that an
   empty DATA frame ended was a 502, while the same 304 ending on its head was relayed.
"""
import h2.events

from ..conftest import gateway_conf
from ..h2_upstreams import EventH2cUpstream
from ..h2client import RawH2
from .test_h2_upstream_fields import answer_to, body_of


class EndingUpstream(EventH2cUpstream):
    """By path, each answer in one write (as a unary call's whole answer comes):
    - /trailers-short/<body>: 200, content-length 5, DATA <body> (none if empty), then a
      trailer block that ends the stream
    - /trailers-whole: the same with all 5 bytes
    - /304-then-data: 304 with content-length 1234, then an empty DATA with END_STREAM
    - else: 200 "ok"."""

    def on_event(self, conn, sock, event):
        if not isinstance(event, h2.events.RequestReceived):
            return
        sid, path = event.stream_id, dict(event.headers)[b":path"]
        if path.startswith(b"/trailers-short/") or path == b"/trailers-whole":
            body = b"12345" if path == b"/trailers-whole" else path[16:]
            conn.send_headers(sid, [(b":status", b"200"), (b"content-length", b"5")])
            if body:
                conn.send_data(sid, body)
            conn.send_headers(sid, [(b"x-checksum", b"abc")], end_stream=True)
        elif path == b"/304-then-data":
            conn.send_headers(sid, [(b":status", b"304"), (b"etag", b'"v1"'),
                                    (b"content-length", b"1234")])
            conn.send_data(sid, b"", end_stream=True)
        else:
            conn.send_headers(sid, [(b":status", b"200"), (b"content-length", b"2")])
            conn.send_data(sid, b"ok", end_stream=True)


def ending_gateway(launcher):
    upstream = EndingUpstream()
    gw = launcher.gateway(gateway_conf([
        {"id": "h2", "paths": ["/*rest"], "upstream": {
            "targets": [{"url": f"http://127.0.0.1:{upstream.port}"}], "protocol": "h2"}}],
        http2={"h2c": True}))
    return gw, upstream


def ask(gw, path, extra=b""):
    return answer_to(gw.port, b"GET %s HTTP/1.1\r\nHost: gw\r\n%sConnection: close\r\n\r\n"
                     % (path, extra))


def test_a_body_that_trailers_end_short_of_its_content_length_is_a_502(launcher):
    gw, upstream = ending_gateway(launcher)
    try:
        for path in (b"/trailers-short/ab", b"/trailers-short/"):
            for extra in (b"TE: trailers\r\n", b""):
                answer = ask(gw, path, extra)
                # was, with TE: trailers: a whole chunked 200 of "ab" (or of nothing), its
                # trailer after it; without: "content-length: 5", the bytes and a close
                assert answer.startswith(b"HTTP/1.1 502"), (path, extra, answer[:300])
        client = RawH2(gw.port)     # an HTTP/2 client alike (was: a 200 "ab", then a reset)
        try:
            answer = client.response(client.request("/trailers-short/ab",
                                                    headers=[("te", "trailers")]))
            assert answer is not None and answer[0] == 502, (answer, client.events)
        finally:
            client.close()
        assert "malformed answer" in gw.log()
        # a whole body that trailers end is relayed, trailers and all
        answer = ask(gw, b"/trailers-whole", b"TE: trailers\r\n")
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        assert body_of(answer) == b"12345" and b"x-checksum: abc" in answer, answer
        assert ask(gw, b"/after").startswith(b"HTTP/1.1 200")
    finally:
        upstream.close()


def test_a_304_with_a_content_length_that_an_empty_data_frame_ends_is_relayed(launcher):
    gw, upstream = ending_gateway(launcher)
    try:
        answer = ask(gw, b"/304-then-data")
        # was: 502 ("malformed answer": h2 held the empty DATA to the 304's content-length)
        assert answer.startswith(b"HTTP/1.1 304"), answer[:300]
        head, _, rest = answer.partition(b"\r\n\r\n")
        assert b"etag: \"v1\"" in head.lower() and rest == b"", answer
        assert "malformed answer" not in gw.log()
    finally:
        upstream.close()
