"""A TLS-terminating TCP balancer in front of a plain listener.

1. The balancer (HAProxy with send-proxy-v2-ssl) says in its PROXY v2 header's SSL TLV that
   the client came over TLS. The gateway did not read it: the connection was http://, so
   `http_to_https` redirected a client that had come over https to https again, in a loop,
   and the upstream was told X-Forwarded-Proto: http.
"""
import json
import socket
import struct

from ..conftest import free_port, gateway_conf, read_response, route
from .test_proxy_protocol import V2_SIGNATURE


def v2_ipv4(client, tlvs=b""):
    body = socket.inet_pton(socket.AF_INET, client) + socket.inet_pton(
        socket.AF_INET, "127.0.0.1") + struct.pack("!HH", 5555, 443) + tlvs
    return V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", len(body)) + body


SSL_TLV = b"\x20\x00\x05\x01\x00\x00\x00\x00"       # PP2_TYPE_SSL: PP2_CLIENT_SSL, verified


def ask(port, header, path):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(header + f"GET {path} HTTP/1.1\r\nHost: gw.test\r\n\r\n".encode())
        return read_response(sock)


def test_a_client_that_came_over_tls_to_the_balancer_is_https(launcher, upstream):
    behind = free_port()
    gw = launcher.gateway(gateway_conf(
        [route("secure", ["/echo"], upstream.url, plugins={"redirect": {"http_to_https": True}})],
        server={"trusted_proxies": ["127.0.0.1/32"], "proxy_protocol": [f"127.0.0.1:{behind}"]}),
        extra_binds=[f"127.0.0.1:{behind}"])
    head, body = ask(behind, v2_ipv4("203.0.113.7", SSL_TLV), "/echo")
    assert head.startswith(b"HTTP/1.1 200 "), head          # served, not redirected again
    headers = {k.lower(): v for k, v in json.loads(body)["headers"]}
    assert headers["x-forwarded-proto"] == "https"
    # without the TLV (or with the client in clear) the redirect stands
    for tlvs in (b"", b"\x20\x00\x05\x00\x00\x00\x00\x00"):
        head, _ = ask(behind, v2_ipv4("203.0.113.7", tlvs), "/echo")
        assert head.split(b" ")[1] in (b"301", b"308"), head
        assert b"\r\nLocation: https://gw.test/echo" in head, head
