"""``:scheme`` of an HTTP/2 request (attack pass dec05n, item 2): a value that is no URI
scheme (RFC 3986 3.1) is malformed; a scheme other than http or https, in any case, is a 400,
as an absolute-form target of another scheme is on HTTP/1.1. Both were served before."""
import pytest

from gwserver.core.h2request import Malformed, check_method_and_path, split_request
from gwserver.errors import BadRequest


def head(scheme):
    return [(b":method", b"GET"), (b":scheme", scheme), (b":path", b"/x"), (b":authority", b"a")]


@pytest.mark.parametrize("scheme", [b"", b"1http", b"ht tp", b"http:", b"ht/tp", b"-x",
                                    b"http\x00", b"h_ttp", b"\xe9tp"])
def test_a_value_that_is_no_scheme_is_malformed(scheme):
    with pytest.raises(Malformed, match=":scheme"):
        split_request(head(scheme))


@pytest.mark.parametrize("scheme", [b"javascript", b"ftp", b"wss", b"h2c", b"a+b.c-d"])
def test_another_scheme_is_a_bad_request(scheme):
    pseudo, _ = split_request(head(scheme))
    with pytest.raises(BadRequest, match="scheme"):
        check_method_and_path(b"GET", b"/x", pseudo[b":scheme"])


@pytest.mark.parametrize("scheme", [b"http", b"https", b"HTTP", b"Https"])
def test_http_and_https_in_any_case_are_served(scheme):
    pseudo, _ = split_request(head(scheme))
    check_method_and_path(b"GET", b"/x", pseudo[b":scheme"])
