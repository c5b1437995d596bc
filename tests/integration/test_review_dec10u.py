"""Review by attack of 6e58d84, d6ac5ee and c5e7056. Each test failed on c5e7056.

1. c5e7056 made a route's cors refusal of another origin's websocket wait for the auth
   plugins (a consumer's own cors may replace it), but it waited for every access phase: the
   plugins after the auth ones (rate_limit's count, limit_conn's slot) took the refused
   websocket as one of the consumer's requests. A page of any other site, in a browser that
   holds the user's credentials (cached Basic, a cookie), spent the user's rate limit with
   websockets that were all refused, and the user's own requests got 429.
"""
import base64

from gwserver.plugins.basic_auth import hash_password

from ..conftest import gateway_conf, route
from .test_attack_dec10c import EchoWebsocket, echoes, handshake


def basic(user, password):
    return b"Authorization: Basic %s\r\n" % base64.b64encode(f"{user}:{password}".encode())


def test_a_refused_origins_websockets_spend_no_rate_of_the_consumer(launcher):
    up = EchoWebsocket()
    cred = {"basic_auth": {"username": "ann", "password_hash": hash_password("pw", rounds=4)}}
    try:
        gw = launcher.gateway(gateway_conf([route("ws", ["/ws"], up.url, plugins={
            "cors": {"allow_origins": ["https://app.example"]}, "basic_auth": {},
            "rate_limit": {"rate": 3, "per": 3600, "burst": 3, "key": "consumer"}})],
            consumers={"ann": {"credentials": cred}}))
        for _ in range(4):      # the other site's page, with the user's credentials
            sock, head = handshake(gw.port, b"/ws",
                                   b"Origin: https://evil.example\r\n" + basic("ann", "pw"))
            sock.close()
            assert head.startswith(b"HTTP/1.1 403 ") and b"RateLimit" not in head, head
        # the user's own page still has its three
        for _ in range(3):
            sock, head = handshake(gw.port, b"/ws",
                                   b"Origin: https://app.example\r\n" + basic("ann", "pw"))
            try:
                assert head.startswith(b"HTTP/1.1 101 "), head
                assert echoes(sock)
            finally:
                sock.close()
    finally:
        up.close()
