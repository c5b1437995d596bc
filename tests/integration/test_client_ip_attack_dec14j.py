"""Pass a6 (who the client is): a client that wants to be someone else, an address on an
ip_restriction allow-list of 10.0.0.0/8, against real gateways, a recording upstream and a
test balancer on 127.0.0.1. No defect was found; these pin what was tried, so a change to
the walk (core/realip.py), the PROXY reader (net/proxy_protocol.py) or the HTTP/2 path cannot
let a spelling through unnoticed.

- A trusted proxy passes the client's own X-Forwarded-For on (here the test is both): the
  spellings other parsers read as 10.0.0.1 (inet_aton's octal, hex, integer and short forms,
  a trailing dot, IPv4-compatible and NAT64 ones, a scope id, a quoted or CIDR text) are no
  address to the walk: the client is `unknown`, refused by every ip_restriction; the same
  over HTTP/1.1 and h2c. The IPv4-mapped spellings are 10.0.0.1 and pass, as they should.
- A PROXY v2 header that names no client (AF_UNSPEC with the PROXY command, a unix socket
  family) leaves the balancer as the client, and never a trusted HTTP proxy: the forged
  X-Forwarded-For that a TCP balancer passes through names nobody.
"""
import socket
import struct

from ..conftest import free_port, gateway_conf, read_response, route, wait_until
from ..h2client import RawH2

ALLOW_10 = {"ip_restriction": {"allow": ["10.0.0.0/8"]}}

# Each read as 10.0.0.1 by some parser (inet_aton, Go before 1.17, a lax regex, ...)
OBFUSCATED = ["010.0.0.1", "0x0a.0.0.1", "167772161", "10.1", "10.0.0.1.", "::a00:1",
              "64:ff9b::a00:1", "10.0.0.1%eth0", '"10.0.0.1"', "10.0.0.1/8", "unix", "unknown"]
MAPPED = ["10.0.0.1", "::ffff:10.0.0.1", "[::ffff:10.0.0.1]:80", "::ffff:a00:1"]


def status_of(port, data):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        head, _ = read_response(sock)
    return int(head.split(b" ")[1])


def ask(port, forwarded_for):
    return status_of(port, b"GET /ipr HTTP/1.1\r\nHost: gw\r\nX-Forwarded-For: %s\r\n"
                           b"Connection: close\r\n\r\n" % forwarded_for.encode())


def test_no_spelling_of_an_allowed_address_passes_but_its_own(launcher, upstream):
    gw = launcher.gateway(gateway_conf(
        [route("ipr", ["/ipr"], upstream.url, plugins=ALLOW_10)],
        server={"trusted_proxies": ["127.0.0.1/32"]}, http2={"h2c": True}))
    h1 = {spelling: ask(gw.port, spelling) for spelling in OBFUSCATED + MAPPED}
    client = RawH2(gw.port)
    try:
        h2 = {}
        for spelling in OBFUSCATED + MAPPED:
            sid = client.request("/ipr", headers=[("x-forwarded-for", spelling)])
            h2[spelling] = client.response(sid)[0]
    finally:
        client.close()
    expected = {**{s: 403 for s in OBFUSCATED}, **{s: 200 for s in MAPPED}}
    assert h1 == expected
    assert h2 == expected
    lines = wait_until(lambda: len(gw.access_lines()) >= 2 * len(expected) and
                       gw.access_lines())
    clients = {line["client"] for line in lines}
    # the walk's own spelling: one per client, whatever the proxy wrote
    assert clients == {"unknown", "unix", "::a00:1", "64:ff9b::a00:1", "10.0.0.1"}, clients


V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def test_a_v2_header_that_names_no_client_trusts_no_forwarded_for(launcher, upstream):
    behind = free_port()
    gw = launcher.gateway(gateway_conf(
        [route("ipr", ["/ipr"], upstream.url, plugins=ALLOW_10)],
        server={"trusted_proxies": ["127.0.0.1/32"], "header_timeout": 1.0,
                "proxy_protocol": [f"127.0.0.1:{behind}"]}),
        extra_binds=[f"127.0.0.1:{behind}"])
    request = (b"GET /ipr HTTP/1.1\r\nHost: gw\r\nX-Forwarded-For: 10.9.9.9\r\n"
               b"X-Real-IP: 10.9.9.9\r\nConnection: close\r\n\r\n")
    headers = {
        "AF_UNSPEC": V2_SIGNATURE + b"\x21\x00\x00\x00",
        "AF_UNIX": V2_SIGNATURE + b"\x21\x31" + struct.pack("!H", 216) + b"\0" * 216,
        "TCP4 10.0.0.1": V2_SIGNATURE + b"\x21\x11\x00\x0c" + bytes([10, 0, 0, 1, 10, 0, 0, 2])
        + b"\x00\x01\x00\x02",
    }
    statuses = {name: status_of(behind, header + request) for name, header in headers.items()}
    assert statuses == {"AF_UNSPEC": 403, "AF_UNIX": 403, "TCP4 10.0.0.1": 200}
    lines = wait_until(lambda: len(gw.access_lines()) >= 3 and gw.access_lines())
    assert sorted(line["client"] for line in lines) == ["10.0.0.1", "127.0.0.1", "127.0.0.1"]
