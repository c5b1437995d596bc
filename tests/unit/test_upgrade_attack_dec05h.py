"""peer_closed (net.sockets), which the worker's tick asks of HTTP/1.1 clients whose streamed
answers wait on their upstreams (tests/integration/test_upgrade_attack_dec05h.py, 4): the
client's end must be seen whatever it sent before it (a pipelined request), and a client that
is only quiet, or has bytes unread, is no hang-up."""
import socket
import time

from gwserver.net.sockets import peer_closed


def pair():
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    return client, server


def settled(predicate):
    deadline = time.monotonic() + 2
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


def test_a_quiet_client_and_one_with_bytes_unread_have_not_hung_up():
    client, server = pair()
    try:
        assert not peer_closed(server)
        client.sendall(b"GET /next HTTP/1.1\r\n\r\n")       # pipelined, unread
        time.sleep(0.05)
        assert not peer_closed(server)
    finally:
        client.close()
        server.close()


def test_a_fin_after_unread_bytes_or_a_reset_is_a_hang_up():
    client, server = pair()
    client.sendall(b"GET /next HTTP/1.1\r\n\r\n")
    client.close()                  # FIN, behind bytes a peek would have shown first
    assert settled(lambda: peer_closed(server))
    server.close()
    client, server = pair()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    client.close()                  # a reset
    assert settled(lambda: peer_closed(server))
    server.close()


def test_a_socket_that_is_not_tcp_or_is_closed_never_says_so():
    left, right = socket.socketpair()
    right.close()
    assert not peer_closed(left)
    left.close()
    assert not peer_closed(left)
