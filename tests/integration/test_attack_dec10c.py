"""Websocket tunnels, gzip, redirect, rewrite and cors attacked as a hostile client, a broken
upstream and an operator changing routes live (the attack pass of 2026-12-10, helper g3).
Each test failed on b80fd42.

1. An operator who deleted a route in etcd, or a consumer, or gave a consumer a new key (a
   leaked one revoked), left every websocket opened through it open: the worker applied the
   new table between requests, and a tunnel is one request that never ends while bytes move
   (``timeouts.read`` only ends an idle one). The revoked key's client went on talking to the
   upstream for as long as it liked; only a SIGHUP reload bounded it (graceful_timeout).
2. A route's cors names the origins whose pages may read its answers, and a browser applies
   no CORS to a websocket: a page of any other site (or a sandboxed frame's ``null``) opened
   one through the route, with the user's cookies, and read every message the upstream
   sent (cross-site websocket hijacking), where its fetch of the same route was unreadable.
"""
import os
import signal
import socket

from gwserver.plugins.key_auth import hash_key

from ..conftest import WEBSOCKET_HANDSHAKE, gateway_conf, route, wait_until
from .test_etcd import PREFIX, _is_worker, all_workers_at, etcd_conf, put
from .test_upgrade_attack_dec05h import WebsocketUpstream


def echo(conn, state):
    """Echo what comes until the gateway closes its side."""
    while piece := conn.recv(65536):
        conn.sendall(piece)


class EchoWebsocket(WebsocketUpstream):
    """A loopback upstream in this process: completes each websocket handshake with a 101,
    then echoes what comes until the gateway closes its side."""

    def __init__(self):
        super().__init__(echo)


def handshake(port, path, fields=b""):
    """A websocket handshake for ``path`` with more ``fields`` (CRLF-ended lines); -> (the
    socket, the answer's head)."""
    data = WEBSOCKET_HANDSHAKE.replace(b"GET /ws ", b"GET %s " % path)
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(data[:-2] + fields + b"\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        piece = sock.recv(4096)
        if not piece:
            break
        head += piece
    return sock, head


def open_tunnel(port, path, key=None):
    """A websocket through the gateway, checked to echo; -> the socket."""
    sock, head = handshake(port, path, b"X-API-Key: %s\r\n" % key if key else b"")
    assert head.startswith(b"HTTP/1.1 101 "), head
    assert echoes(sock)
    return sock


def echoes(sock):
    """Does the tunnel still carry a message both ways? False once the gateway closed it."""
    try:
        sock.sendall(b"ping")
        return sock.recv(16) == b"ping"
    except OSError:
        return False


def assert_handshakes(port, cases, path=b"/ws"):
    """Each (fields, status) of ``cases``: a handshake with those fields is answered that
    status (bytes, b"101"...), and a tunnel it opened echoes."""
    for fields, status in cases:
        sock, head = handshake(port, path, fields)
        try:
            assert head.startswith(b"HTTP/1.1 " + status + b" "), (fields, head)
            if status == b"101":
                assert echoes(sock)
        finally:
            sock.close()


def applied(gw, client):
    """Wait until every worker has applied etcd's latest change."""
    revision = client.revision()
    wait_until(lambda: all_workers_at(gw, revision))


# -- 1. a route deleted or a key revoked in etcd ends the websockets opened through it -------

def test_a_websocket_ends_when_etcd_deletes_its_route_or_revokes_its_key(launcher, tmp_path):
    up = EchoWebsocket()
    etcd = launcher.etcd()
    client = etcd.client()
    try:
        put(client, "upstreams", "up", {"targets": [{"url": up.url}]})
        put(client, "consumers", "ann", {"credentials": {"key_auth": {
            "key_hash": hash_key("ann-key-0123456789")}}})
        bob_key = {"key_auth": {"key_hash": hash_key("bob-key-0123456789")}}
        put(client, "consumers", "bob", {"credentials": bob_key})
        put(client, "routes", "open", {"paths": ["/open"], "upstream": "up"})
        put(client, "routes", "keyed", {"paths": ["/keyed"], "upstream": "up",
                                        "plugins": {"key_auth": {}}})
        gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], workers=1))
        applied(gw, client)
        # a worker started by a reload applies a published table at once: that must work
        workers = set(p for p in gw.worker_pids() if _is_worker(p))
        os.kill(gw.pid, signal.SIGHUP)
        wait_until(lambda: not workers & set(gw.worker_pids()))
        applied(gw, client)
        public = open_tunnel(gw.port, b"/open")
        ann = open_tunnel(gw.port, b"/keyed", b"ann-key-0123456789")
        bob = open_tunnel(gw.port, b"/keyed", b"bob-key-0123456789")
        try:
            # ann's key revoked: her websocket ends, bob's and the public one go on
            client.delete(f"{PREFIX}/consumers/ann")
            applied(gw, client)
            wait_until(lambda: not echoes(ann), timeout=3)
            assert echoes(bob) and echoes(public)
            # bob described otherwise, his key the same: his websocket goes on
            put(client, "consumers", "bob", {"description": "bob", "credentials": bob_key})
            applied(gw, client)
            assert echoes(bob)
            # bob's key rotated: the websocket opened with the old one ends
            put(client, "consumers", "bob", {"credentials": {"key_auth": {
                "key_hash": hash_key("bob-new-key-0123456789")}}})
            applied(gw, client)
            wait_until(lambda: not echoes(bob), timeout=3)
            assert echoes(public)
            # the route deleted: the websocket through it ends
            client.delete(f"{PREFIX}/routes/open")
            applied(gw, client)
            wait_until(lambda: not echoes(public), timeout=3)
            assert "websocket" in gw.log() and "its route was deleted" in gw.log()
        finally:
            for sock in (public, ann, bob):
                sock.close()
    finally:
        up.close()


# -- 2. a route's cors refuses the websockets of the origins it refuses ----------------------

def test_a_page_of_an_origin_cors_refuses_cannot_open_a_websocket(launcher):
    up = EchoWebsocket()
    try:
        gw = launcher.gateway(gateway_conf([route("ws", ["/ws"], up.url, plugins={"cors": {
            "allow_origins": ["https://app.example"], "allow_credentials": True}})]))
        for origin in (b"https://evil.example", b"null", b"https://app.example.evil"):
            sock, head = handshake(gw.port, b"/ws", b"Origin: %s\r\nCookie: s=1\r\n" % origin)
            sock.close()
            assert head.startswith(b"HTTP/1.1 403 "), (origin, head)
            assert b"Access-Control-Allow-Origin" not in head
        # the allowed origin, the gateway's own (same-origin: CORS is not asked) and a
        # client that is no browser (no Origin) get their websocket
        for fields in (b"Origin: https://app.example\r\n", b"Origin: http://h\r\n", b""):
            sock, head = handshake(gw.port, b"/ws", fields)
            try:
                assert head.startswith(b"HTTP/1.1 101 "), (fields, head)
                assert echoes(sock)
            finally:
                sock.close()
    finally:
        up.close()
