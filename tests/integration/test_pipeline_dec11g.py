"""A pipelined request followed in the same read by a malformed one (Dec 11 g): the good
request, whole and parsed, was never answered nor logged: the 400 for the bytes after it was
the connection's only answer. nginx serves the requests before the bad bytes, then the 400;
so does the gateway now."""
import re
import socket

import pytest

from ..conftest import gateway_conf, route, wait_until


def read_all(sock):
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def statuses(data):
    """The status of each answer (an answer's body runs into the next one's status line)."""
    return [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]


@pytest.mark.parametrize("bad", [
    b"GET\x01 / HTTP/1.1\r\nHost: h\r\n\r\n",            # a bad method
    b"GET /echo HTTP/1.1\r\nHost: h\r\nBad Header: x\r\n\r\n",    # a bad field name
    b"\x00\x01\x02garbage",                                # no request at all
])
def test_requests_before_malformed_bytes_are_served_then_the_400(launcher, upstream, bad):
    gw = launcher.gateway(gateway_conf([route("e", ["/echo"], upstream.url)]))
    good = b"GET /echo?n=%d HTTP/1.1\r\nHost: h\r\n\r\n"
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(good % 1 + good % 2 + bad)
        data = read_all(sock)
    assert statuses(data) == [200, 200, 400], data[-600:]
    assert b'"n=1"' in data or b"n=1" in data
    wait_until(lambda: gw.log().count('"path":"/echo"') >= 2, timeout=5)


def test_a_bad_chunk_in_a_pipelined_requests_own_body_is_still_its_400(launcher, upstream):
    """The request the bad bytes belong to is not served: a body that breaks is its own."""
    gw = launcher.gateway(gateway_conf([route("e", ["/echo"], upstream.url)]))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: h\r\n\r\n"
                     b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"zz\r\n")
        data = read_all(sock)
    assert statuses(data) == [200, 400], data[:600]
