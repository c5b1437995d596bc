"""The idle check every keep-alive reuse asks: real socket pairs, no mocks."""
import socket

import pytest

from gwserver.net.sockets import CLOSED, OPEN, UNREAD, idle_state


@pytest.fixture(params=["socket", "gevent"])
def pair(request):
    """A connected pair: the stdlib's, and gevent's (what the worker holds; the check reads
    the OS socket under it)."""
    if request.param == "gevent":
        from gevent import socket as gsocket
        a, b = gsocket.socketpair()
    else:
        a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_nothing_to_read_is_open(pair):
    a, _ = pair
    assert idle_state(a) is OPEN
    assert idle_state(a) is OPEN        # asking does not change the answer


def test_bytes_nobody_asked_for_are_unread_and_stay_in_the_socket(pair):
    a, b = pair
    b.send(b"HTTP/1.1 200 OK\r\n")
    assert idle_state(a) is UNREAD
    assert a.recv(100) == b"HTTP/1.1 200 OK\r\n"     # the check only peeked
    assert idle_state(a) is OPEN


def test_peer_closed_is_closed(pair):
    a, b = pair
    b.close()
    assert idle_state(a) is CLOSED


def test_bytes_then_close_is_unread_first(pair):
    a, b = pair
    b.send(b"x")
    b.close()
    assert idle_state(a) is UNREAD      # the stray byte is what makes it unusable


def test_our_own_closed_socket_and_none_are_closed(pair):
    a, _ = pair
    a.close()
    assert idle_state(a) is CLOSED          # gevent's closed socket: fileno() is -1
    assert idle_state(None) is CLOSED


def test_a_reset_connection_is_closed():
    import struct
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    try:
        accepted.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        accepted.close()                    # RST, not FIN
        import time
        time.sleep(0.05)
        assert idle_state(client) is CLOSED
    finally:
        client.close()
        server.close()


def test_a_connect_failure_is_told_in_the_systems_words():
    """urllib3 wraps the OSError in a NewConnectionError whose text names its connection class
    (what the error log and the access log's `error` field showed); the OS's reason is what
    an operator reads."""
    import errno
    import socket

    from urllib3.connection import HTTPConnection
    from urllib3.exceptions import NewConnectionError

    from gwserver.net.sockets import failure_reason
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    try:
        try:
            raise refused
        except OSError as exc:
            raise NewConnectionError(HTTPConnection("h", 1), f"Failed to establish: {exc}") \
                from exc
    except NewConnectionError as wrapped:
        assert failure_reason(wrapped) == "connection refused"
    assert failure_reason(socket.gaierror(-2, "Name or service not known")) == \
        "name or service not known"
    assert failure_reason(ValueError("bad port")) == "bad port"
