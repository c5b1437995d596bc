"""RFC 9113 8.2/8.3 checks of an HTTP/2 request head, and the gRPC answers the gateway makes."""
import httptools
import pytest

from gwserver.core.h2request import HTTP_METHODS, Malformed, check_method_and_path, \
    grpc_code, grpc_message, grpc_timeout, grpc_timeout_value, split_request
from gwserver.errors import BadRequest, UpstreamTimeout

BASE = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/x"), (b":authority", b"a")]


@pytest.mark.parametrize("headers", [
    BASE[1:],                                               # no :method
    [(b":method", b"GET"), (b":authority", b"a")],          # no :scheme/:path
    BASE + [(b":path", b"/y")],                             # twice
    [BASE[0], (b"x", b"1")] + BASE[1:],                     # pseudo after regular
    BASE + [(b":status", b"200")],                          # a response pseudo-header
    BASE + [(b"connection", b"close")], BASE + [(b"upgrade", b"h2c")],
    BASE + [(b"keep-alive", b"5")], BASE + [(b"transfer-encoding", b"chunked")],
    BASE + [(b"te", b"gzip")], BASE + [(b"X-Up", b"1")], BASE + [(b"x", b"a\r\nb")],
    BASE + [(b"x", b" lead")], BASE + [(b"host", b"b")],    # Host disagrees with :authority
    # what llhttp refuses on HTTP/1.1 is refused here too: controls in a value, non-token names
    BASE + [(b"x", b"a\x0bb")], BASE + [(b"x", b"a\x01")], BASE + [(b"x", b"\x7f")],
    BASE + [(b"x(y", b"1")], BASE + [(b"x@y", b"1")], BASE + [(b"x/y", b"1")],
    [(b":method", b"CONNECT"), (b":authority", b"a:443")],
    [(b":method", b"connect"), (b":scheme", b"http"), (b":path", b"/x")],
    # method and path become an HTTP/1.1 request line: no room for a line of the client's own
    [(b":method", b"GET /admin/secret"), (b":scheme", b"http"), (b":path", b"/public")],
    [(b":method", b"GET\t/admin"), (b":scheme", b"http"), (b":path", b"/public")],
    [(b":method", b""), (b":scheme", b"http"), (b":path", b"/public")],
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/public /admin")],
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/public\t/admin")],
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"x")],
])
def test_malformed(headers):
    with pytest.raises(Malformed):
        split_request(headers)


def http1_parses(request_line):
    """Whether llhttp (as the HTTP/1.1 side runs it) takes the request line."""
    parser = httptools.HttpRequestParser(object())
    try:
        parser.feed_data(request_line + b"\r\nHost: a\r\n\r\n")
    except httptools.HttpParserUpgrade:
        return True                 # CONNECT: parsed, then refused by the gateway on both
    except httptools.HttpParserError:
        return False
    return True


def h2_takes(method, path):
    try:
        split_request([(b":method", method), (b":scheme", b"http"), (b":path", path),
                       (b":authority", b"a")])
        check_method_and_path(method, path)
    except BadRequest:
        return False
    except Malformed:
        return False
    return True


# llhttp's methods, its RTSP ones, HTTP/2's preface, other spellings (found by an attack pass:
# "get", "head" and "FOO" were forwarded over HTTP/2, a 400 over HTTP/1.1)
CANDIDATES = sorted(HTTP_METHODS) + [b"PRI", b"DESCRIBE", b"ANNOUNCE", b"SETUP", b"PLAY",
                                     b"PAUSE", b"TEARDOWN", b"GET_PARAMETER", b"RECORD",
                                     b"FLUSH", b"FOO", b"get", b"head", b"Get", b"GETX", b"M"]


@pytest.mark.parametrize("method", CANDIDATES, ids=lambda m: m.decode())
def test_a_method_is_taken_on_http2_exactly_when_on_http1(method):
    if method == b"CONNECT":
        assert http1_parses(b"CONNECT a:443 HTTP/1.1")     # and refused by both (not a proxy)
        assert not h2_takes(method, b"/x")
        return
    assert h2_takes(method, b"/x") == http1_parses(method + b" /x HTTP/1.1")


def test_a_path_byte_is_taken_on_http2_exactly_when_on_http1():
    """Every byte value inside a path; raw bytes over 0x7f (an overlong "..", \xc0\xae) were
    forwarded over HTTP/2 past the UTF-8 checks, a 400 over HTTP/1.1."""
    for byte in range(256):
        path = b"/a" + bytes([byte]) + b"b"
        assert h2_takes(b"GET", path) == http1_parses(b"GET " + path + b" HTTP/1.1"), hex(byte)


def test_well_formed():
    pseudo, regular = split_request(BASE + [(b"host", b"a"), (b"te", b"trailers"), (b"x", b""),
                                            (b"x-tab", b"a\tb \xe9")])
    assert pseudo[b":path"] == b"/x" and regular[0] == (b"host", b"a")


@pytest.mark.parametrize("status, code", [(404, 12), (401, 16), (403, 7), (429, 8), (502, 14),
                                          (503, 14), (504, 14), (400, 13), (418, 2)])
def test_grpc_codes(status, code):
    assert grpc_code(status) == code


def test_deadline_and_message():
    assert grpc_code(504, UpstreamTimeout("x"), deadline_hit=True) == 4
    assert grpc_timeout(b"200m") == 0.2 and grpc_timeout(b"1S") == 1.0
    assert grpc_timeout(b"123456789S") is None and grpc_timeout(b"5x") is None
    # the time left, told upstream on a retry: milliseconds, at least 1, at most 8 digits
    assert grpc_timeout_value(4.2505) == b"4250m" and grpc_timeout(b"4250m") == 4.25
    assert grpc_timeout_value(-3) == b"1m" and grpc_timeout_value(10 ** 9) == b"99999999m"
    assert grpc_message("ok 100% é") == b"ok 100%25 %C3%A9"
