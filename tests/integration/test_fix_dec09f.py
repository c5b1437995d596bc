"""An upstream that dribbles its TLS handshake (Dec 09, f).

A new upstream connection's name lookup and TCP connect were bounded by the route's
``timeouts.connect`` as a whole (opening_within), its TLS handshake only read by read: an
upstream that sent its handshake a byte every fraction of a second (a stuck TLS terminator, a
tarpit) held the request, its pool slot and its client's connection for as long as it kept
dribbling -- a 16 kB record took over an hour. The handshake is within ``timeouts.connect``
now too, over HTTP/1.1 and HTTP/2: a 504 that says the connect timed out.
"""
import socket
import threading
import time

import pytest

from ..conftest import gateway_conf


class HandshakeDribbler:
    """Accepts, reads the ClientHello, announces a 16 kB handshake record and sends it one
    byte every 0.2 s: every read of the client's handshake gets a byte within its timeout."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while not self.stop.is_set():
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.dribble, args=(sock,), daemon=True).start()

    def dribble(self, sock):
        with sock:
            try:
                sock.recv(65536)
                sock.sendall(b"\x16\x03\x03\x3e\x80")
                deadline = time.monotonic() + 20
                while not self.stop.is_set() and time.monotonic() < deadline:
                    sock.sendall(b"\x02")
                    time.sleep(0.2)
            except OSError:
                pass

    def close(self):
        self.stop.set()
        self.listener.close()


@pytest.mark.parametrize("protocol", ["http1", "h2"])
def test_a_dribbled_tls_handshake_is_held_to_the_connect_timeout(launcher, protocol):
    up = HandshakeDribbler()
    try:
        gw = launcher.gateway(gateway_conf([{
            "id": "r", "paths": ["/r"], "timeouts": {"connect": 1.0},
            "upstream": {"targets": [{"url": f"https://127.0.0.1:{up.port}"}],
                         "protocol": protocol}}], workers=1))
        started = time.monotonic()
        resp, body = gw.request("GET", "/r", timeout=8)
        took = time.monotonic() - started
        assert resp.status == 504, (resp.status, body)
        assert took < 3, took
    finally:
        up.close()
