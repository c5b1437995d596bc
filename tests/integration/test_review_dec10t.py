"""Review by attack of 5ef640c (websockets ended when etcd revokes what let them in; a cors
route refusing other origins' websockets). Each test failed on 5ef640c.

1. A consumer whose basic_auth password was rotated in etcd (a leaked password revoked), or
   whose jwt credential was given another signing key (``kid``), kept every websocket opened
   with the old secret: the revocation compared each credential's index lookup, which is the
   user name (the jwt ``key`` claim), not the secret.
2. A consumer's cors replaces the route's for its requests, but the route's (which runs before
   the auth plugins) refused the websocket of the consumer's allowed origin with a 403.
3. A page of the gateway's own origin spelt with a trailing dot ("http://h.", Host "h.",
   made "h") had its own websocket refused: the Origin was compared as it came.
"""
import base64
import socket

from gwserver.plugins.basic_auth import hash_password

from ..conftest import WEBSOCKET_HANDSHAKE, gateway_conf, route, wait_until
from .test_attack_dec10c import EchoWebsocket, applied, echoes, handshake
from .test_etcd import etcd_conf, put


def basic(user, password):
    return b"Authorization: Basic %s\r\n" % base64.b64encode(f"{user}:{password}".encode())


def test_a_websocket_ends_when_etcd_rotates_its_consumers_password(launcher, tmp_path):
    up = EchoWebsocket()
    etcd = launcher.etcd()
    client = etcd.client()
    socks = []
    try:
        cred = {"basic_auth": {"username": "ann", "password_hash": hash_password("old-pw",
                                                                                 rounds=4)}}
        put(client, "upstreams", "up", {"targets": [{"url": up.url}]})
        put(client, "consumers", "ann", {"credentials": cred})
        put(client, "routes", "ws", {"paths": ["/ws"], "upstream": "up",
                                     "plugins": {"basic_auth": {}}})
        gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], workers=1))
        applied(gw, client)
        sock, head = handshake(gw.port, b"/ws", basic("ann", "old-pw"))
        socks.append(sock)
        assert head.startswith(b"HTTP/1.1 101 "), head
        assert echoes(sock)
        # described otherwise, the password the same: the websocket goes on
        put(client, "consumers", "ann", {"description": "ann", "credentials": cred})
        applied(gw, client)
        assert echoes(sock)
        # the password rotated (the old one leaked): what it opened ends, as a new request
        # with it is refused
        put(client, "consumers", "ann", {"credentials": {"basic_auth": {
            "username": "ann", "password_hash": hash_password("new-pw", rounds=4)}}})
        applied(gw, client)
        refused, head = handshake(gw.port, b"/ws", basic("ann", "old-pw"))
        socks.append(refused)
        assert head.startswith(b"HTTP/1.1 401 "), head
        wait_until(lambda: not echoes(sock), timeout=3)
        assert "credentials changed" in gw.log()
    finally:
        for sock in socks:
            sock.close()
        up.close()


# -- 2. a consumer's cors replaces the route's for its websockets too ------------------------

def test_a_consumers_cors_replaces_the_routes_for_its_websocket(launcher):
    """The route's cors runs before the auth plugins: its 403 to a websocket from the
    partner's page stood, where the partner's own cors (which replaces the route's) let that
    page read every other answer. The route's no still stands for a client it names no
    consumer for, or one without a cors of its own; the partner's cors refuses others."""
    up = EchoWebsocket()
    cred = lambda user: {"basic_auth": {"username": user,      # noqa: E731
                                        "password_hash": hash_password("pw", rounds=4)}}
    try:
        gw = launcher.gateway(gateway_conf([route("ws", ["/ws"], up.url, plugins={
            "cors": {"allow_origins": ["https://app.example"]}, "basic_auth": {}})],
            consumers={"partner": {"credentials": cred("p"), "plugins": {"cors": {
                "allow_origins": ["https://partner.example"]}}},
                "plain": {"credentials": cred("q")}}))
        for fields, status in (
                (b"Origin: https://partner.example\r\n" + basic("p", "pw"), b"101"),
                (b"Origin: https://app.example\r\n" + basic("p", "pw"), b"403"),
                (b"Origin: https://partner.example\r\n" + basic("q", "pw"), b"403"),
                (b"Origin: https://app.example\r\n" + basic("q", "pw"), b"101"),
                (b"Origin: https://partner.example\r\n" + basic("p", "wrong"), b"401"),
                (b"Origin: https://partner.example\r\n", b"401")):
            sock, head = handshake(gw.port, b"/ws", fields)
            try:
                assert head.startswith(b"HTTP/1.1 " + status + b" "), (fields, head)
                if status == b"101":
                    assert echoes(sock)
                else:
                    assert b"Access-Control-Allow-Origin" not in head
            finally:
                sock.close()
    finally:
        up.close()


# -- 3. the gateway's own origin, spelt as its Host is ---------------------------------------

def test_a_page_of_the_gateways_own_origin_spelt_as_its_host_opens_its_websocket(launcher):
    """A page of "http://h." (a fully qualified name) sends that Origin and Host "h.": the
    Host was made "h" and the Origin compared as it came, so the page's own websocket was
    refused. Other spellings of another host stay refused."""
    up = EchoWebsocket()
    try:
        gw = launcher.gateway(gateway_conf([route("ws", ["/ws"], up.url, plugins={"cors": {
            "allow_origins": ["https://app.example"], "allow_credentials": True}})]))
        for host, origin, status in (
                (b"h.", b"http://h.", b"101"), (b"H", b"HTTP://H.", b"101"),
                (b"[::1]:8080", b"http://[0::1]:8080", b"403"),
                (b"[::1]:8080", b"http://[::1]:8080", b"101"),
                (b"h", b"http://h/x", b"403"), (b"h", b"http://x@h", b"403"),
                (b"h", b"http://h:", b"403"), (b"h.", b"http://h.evil", b"403")):
            data = WEBSOCKET_HANDSHAKE.replace(b"Host: h\r\n", b"Host: %s\r\nOrigin: %s\r\n"
                                               % (host, origin))
            with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
                sock.sendall(data)
                head = b""
                while b"\r\n\r\n" not in head and (piece := sock.recv(4096)):
                    head += piece
                assert head.startswith(b"HTTP/1.1 " + status + b" "), (host, origin, head)
                if status == b"101":
                    assert echoes(sock)
    finally:
        up.close()
