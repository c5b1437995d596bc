"""PROXY protocol headers: parsed strictly, and taken off the socket to their last byte only."""
import socket
import struct

import pytest

from gwserver.core.realip import ProxiedAddress
from gwserver.net.proxy_protocol import (V2_SIGNATURE, ProxyHeaderError, parse_v1,
                                         read_proxy_header)


def v2(command=0x21, family=0x11, addresses=b"", tlvs=b""):
    body = addresses + tlvs
    return V2_SIGNATURE + bytes([command, family]) + struct.pack("!H", len(body)) + body


V4 = socket.inet_pton(socket.AF_INET, "203.0.113.7") + socket.inet_pton(
    socket.AF_INET, "192.0.2.1") + struct.pack("!HH", 56324, 443)
V6 = socket.inet_pton(socket.AF_INET6, "2001:db8::7") + socket.inet_pton(
    socket.AF_INET6, "2001:db8::1") + struct.pack("!HH", 4000, 443)


PEER = ("192.0.2.9", 40000, 0, 0)       # the balancer, as accept() gave it


def taken(data, pieces=1):
    """read_proxy_header over a real socket pair, the bytes sent in ``pieces`` writes ->
    (its answer, what is left on the socket)."""
    a, b = socket.socketpair()
    with a, b:
        step = max(1, len(data) // pieces)
        for i in range(0, len(data), step):
            a.sendall(data[i:i + step])
        a.shutdown(socket.SHUT_WR)
        try:
            answer = read_proxy_header(b, PEER)
        except ProxyHeaderError as exc:
            answer = exc
        rest = b""
        while chunk := b.recv(65536):
            rest += chunk
        return answer, rest


@pytest.mark.parametrize("pieces", [1, 3, 40])
@pytest.mark.parametrize("header, client", [
    (b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 443\r\n", ("203.0.113.7", 56324)),
    (b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 443\r\n", ("2001:db8::7", 4000)),
    (b"PROXY UNKNOWN\r\n", PEER[:2]),
    (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", PEER[:2]),
    (v2(addresses=V4), ("203.0.113.7", 56324)),
    (v2(family=0x21, addresses=V6, tlvs=b"\x04\x00\x01x"), ("2001:db8::7", 4000)),
    (v2(command=0x20, family=0x00), PEER[:2]),               # LOCAL: the balancer's health check
    (v2(family=0x00), PEER[:2]),
])
def test_a_header_is_taken_to_its_last_byte_and_no_further(header, client, pieces):
    answer, rest = taken(header + b"GET / HTTP/1.1\r\n\r\n", pieces)
    assert answer == client and rest == b"GET / HTTP/1.1\r\n\r\n"
    assert type(answer) is ProxiedAddress          # never a trusted HTTP proxy


@pytest.mark.parametrize("header", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",                   # no header at all
    b"PROXY TCP4 203.0.113.7 192.0.2.1 56324\r\n",          # a port missing
    b"PROXY TCP4 2001:db8::7 192.0.2.1 1 2\r\n",            # IPv6 named TCP4
    b"PROXY TCP4 203.0.113.7 192.0.2.1 065535 2\r\n",       # a leading zero
    b"PROXY TCP4 203.0.113.7 192.0.2.1 70000 2\r\n",
    b"PROXY TCP4 203.0.113.7  192.0.2.1 1 2\r\n",           # two spaces
    b"PROXY TCP4 203.0.113.7 192.0.2.1 1 2\n",              # LF alone
    b"PROXY TCP4 203.0.113.7\r\n192.0.2.1 1 2\r\n",         # CRLF inside
    b"PROXY TCP4 " + b"1" * 200 + b"\r\n",                  # over 107 bytes
    b"PROXY TCP4 203.0.113.7 192.0.2.1 1 2",                # closed before its end
    b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",                # a scope id
    b"",                                                    # closed at once
    v2(command=0x22, addresses=V4),                         # an unknown command
    v2(command=0x11, addresses=V4),                         # version 1 in a v2 header
    v2(family=0x12, addresses=V4),                          # UDP
    v2(addresses=V4[:8]),                                   # addresses cut short
    V2_SIGNATURE + b"\x21\x11\x00\x40" + V4,                # a length over what came
])
def test_anything_else_is_refused(header):
    answer, _ = taken(header)
    assert isinstance(answer, ProxyHeaderError)


def test_an_ipv4_mapped_address_is_the_ipv4_client():
    mapped = socket.inet_pton(socket.AF_INET6, "::ffff:203.0.113.7") + bytes(16) + \
        struct.pack("!HH", 1, 2)
    assert taken(v2(family=0x21, addresses=mapped))[0] == ("203.0.113.7", 1)
    assert taken(b"PROXY TCP6 ::ffff:203.0.113.7 ::1 1 2\r\n")[0] == ("203.0.113.7", 1)


def test_parse_v1_wants_exactly_one_line():
    with pytest.raises(ProxyHeaderError):
        parse_v1(b"PROXY UNKNOWN\r\nmore\r\n")


def ssl_tlv(client_flags, sub=b""):
    value = bytes([client_flags]) + b"\x00\x00\x00\x00" + sub         # client, verify, sub-TLVs
    return b"\x20" + struct.pack("!H", len(value)) + value


@pytest.mark.parametrize("tlvs, tls", [
    (b"", False),
    (ssl_tlv(0x01), True),                                      # PP2_CLIENT_SSL
    (ssl_tlv(0x07, b"\x21\x00\x07TLSv1.3"), True),              # with its version sub-TLV
    (ssl_tlv(0x00), False),                                     # the TLV, the client in clear
    (b"\x04\x00\x01x" + ssl_tlv(0x01), True),                   # after a NOOP
    (b"\x20\x00\x00", False),                                   # an empty SSL TLV
])
def test_the_ssl_tlv_says_whether_the_client_came_over_tls(tlvs, tls):
    answer, rest = taken(v2(addresses=V4, tlvs=tlvs) + b"GET / HTTP/1.1\r\n\r\n")
    assert answer == ("203.0.113.7", 56324) and answer.tls is tls
    assert rest == b"GET / HTTP/1.1\r\n\r\n"


def test_a_v1_header_or_a_local_command_says_nothing_of_tls():
    assert taken(b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 443\r\n")[0].tls is False
    assert taken(v2(command=0x20, family=0x11, addresses=V4, tlvs=ssl_tlv(1)))[0].tls is False


@pytest.mark.parametrize("tlvs", [b"\x20\x00", b"\x20\x00\x09\x01\x00"])
def test_a_tlv_that_overruns_the_header_is_refused(tlvs):
    answer, _ = taken(v2(addresses=V4, tlvs=tlvs))
    assert isinstance(answer, ProxyHeaderError) and "TLV" in str(answer)
