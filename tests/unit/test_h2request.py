"""RFC 9113 8.2/8.3 checks of an HTTP/2 request head, and the gRPC answers the gateway makes."""
import pytest

from gwserver.core.h2request import Malformed, grpc_code, grpc_message, grpc_timeout, \
    grpc_timeout_value, split_request
from gwserver.errors import UpstreamTimeout

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
