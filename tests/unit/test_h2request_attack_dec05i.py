"""core.h2request.check_trailers (attack pass dec05i, defect 2): a request's trailers keep the
rules of its head's fields (RFC 9113 8.1, 8.2); they were checked for their number only."""
import pytest

from gwserver.core.h2request import Malformed, check_trailers


@pytest.mark.parametrize("fields", [
    [(b":path", b"/admin")],
    [(b"x-a", b"1"), (b":status", b"200")],
    [(b"X-A", b"1")],
    [(b"x a", b"1")],
    [(b"", b"1")],
    [(b"connection", b"close")],
    [(b"keep-alive", b"1")],
    [(b"transfer-encoding", b"chunked")],
    [(b"upgrade", b"h2c")],
    [(b"te", b"gzip")],
    [(b"x-a", b"1\r\nx-b: 2")],
    [(b"x-a", b"\x00")],
    [(b"x-a", b" 1")],
])
def test_malformed_trailers_are_refused(fields):
    with pytest.raises(Malformed):
        check_trailers(fields)


@pytest.mark.parametrize("fields", [
    [],
    [(b"grpc-status", b"0"), (b"x-checksum", b"abc\tdef")],
    [(b"te", b"trailers")],
])
def test_trailers_that_keep_the_rules_pass(fields):
    check_trailers(fields)
