"""A websocket tunnel's end, through a real gateway and upstream (found in a read of
gwserver/upstream/proxy.py on 2026-12-05, on 2257944).

1. Every tunnel that ended as tunnels do (both sides closed) raised UnboundLocalError in
   ``tunnel``: a line left by a merge added the down pump's count to a ``sent`` that
   function never had. The client had its bytes (the error came after the pumps), but each
   websocket's end was logged as "unhandled error" with a traceback (throttled, so a busy
   gateway's log said it over and over), the access line carried a 500's error, and the
   websocket was counted as a gateway answer in the metrics.
"""
from ..conftest import gateway_conf, open_websocket, route, wait_until


def test_a_websocket_that_ends_is_logged_as_the_101_it_was(launcher, upstream):
    gw = launcher.gateway(gateway_conf([route("ws", ["/ws"], upstream.url)]))
    sock, head, rest = open_websocket(gw.port, b"hello")
    assert head.startswith(b"HTTP/1.1 101"), head
    got = rest
    while b"hello" not in got:
        got += sock.recv(65536)
    sock.close()
    line = wait_until(lambda: next((entry for entry in gw.access_lines()
                                    if entry.get("route") == "ws"), None))
    assert line["status"] == 101 and "error" not in line, line
    assert line["bytes"] >= len(b"hello"), line
    log = gw.log()
    assert "unhandled error" not in log and "Traceback" not in log, log[-3000:]
