"""The idle check every keep-alive reuse asks: real socket pairs, no mocks."""
import socket

import pytest

from gwserver.net.sockets import CLOSED, OPEN, UNREAD, idle_state


@pytest.fixture
def pair():
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
    assert idle_state(a) is CLOSED
    assert idle_state(None) is CLOSED
