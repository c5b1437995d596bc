"""A new connection that has sent nothing yet, waited on as an idle one.

A TLS listener waits for the ClientHello, and a plain listener with h2c on peeks for the
HTTP/2 preface, before either knows which protocol serves the connection. Waited for outside
the worker's count of open and idle connections, worker_connections of them that sent
nothing held every slot for the handshake or header timeout, and did it again with each
reconnect, while the same silence on a plain HTTP/1.1 listener gives way to a newcomer
(Runtime.close_oldest_idle). Here the wait is an idle connection's: counted as open, and
closed for a newcomer as the oldest idle ones are when the slots run out, until its first
byte comes.
"""
import time

from ..net.sockets import has_unread_input, wait_readable

# A client's first bytes follow its connect at once (the ClientHello, a request): a
# connection counts as idle only after this long without them. At once, a client between
# its connect and its first send lost the race to a newcomer when every slot was taken.
FIRST_BYTE_GRACE = 1.0


def handshake_just_ended(sock):
    """Did ``sock``'s TLS handshake end under FIRST_BYTE_GRACE ago? Its client's first request
    follows at once, while the connection waits for it as an idle one: a newcomer at the
    slot limit took that slot in the gap, and the close, over the request come meanwhile,
    reset the connection and its GOAWAY with it (a client that did no wrong, told nothing).
    A plain socket has no handshake: its first bytes were waited for (wait_first_byte)."""
    established = getattr(sock, "established", None)
    return established is not None and time.monotonic() - established < FIRST_BYTE_GRACE


class FirstByteWait:
    """The deadline owner and idle entry of one connection's wait (Runtime.idle_clients)."""

    __slots__ = ("sock", "since")

    def __init__(self, sock):
        self.sock = sock
        self.since = time.monotonic()

    def expire(self):
        self.sock.close()           # the wait raises at once (net.deadlines)

    def may_close_idle(self):
        # Not within the grace, nor once its first bytes are here: its greenlet may not have
        # run since they came, and closing over them would reset a client that did no wrong.
        return time.monotonic() - self.since >= FIRST_BYTE_GRACE and \
            not has_unread_input(self.sock)

    def reclaim(self):
        self.sock.close()


class HandshakeWait:
    """A TLS handshake under way, as one of Runtime.head_readers: when every slot is taken
    and none is idle, one begun SLOW_HEAD_GRACE ago and not done is closed as a slow request
    head is (close_slowest_head). A byte of a ClientHello each (the first byte makes a
    connection no idle one), worker_connections clients held every slot for
    tls.handshake_timeout (10 s), and again at each reconnect, newcomers waiting unanswered
    in the listen queue: the slowloris close_slowest_head ends for heads. OpenSSL reads the
    socket itself and counts nothing for us, so its rate is taken as none (``head_read``
    stays 0): a handshake takes a round trip or two, not a second."""

    __slots__ = ("sock", "client_ip", "timeout_reason")
    head_read = 0
    unfinished = "TLS handshake"

    def __init__(self, sock, client_ip):
        self.sock, self.client_ip, self.timeout_reason = sock, client_ip, None

    def expire(self):
        self.sock.close()           # the handshake's wait raises at once


def wait_first_byte(runtime, sock, timeout):
    """Wait up to ``timeout`` seconds for ``sock`` (a plain socket just accepted) to be
    readable, as an idle connection; -> whether it is. False: the time ran out, or the slot
    was wanted for a newcomer (the socket is closed then). A client that closed without a
    byte is readable too: the read that follows tells.

    The connection takes its slot here (Runtime.client_opened: one per connection, or a
    newcomer at the limit would close two idle ones). True hands the slot on: the caller
    serves the connection with ``serve(counted=True)``, or gives the slot back itself
    (Runtime.client_closed)."""
    waiting = FirstByteWait(sock)
    runtime.client_opened()
    runtime.idle_clients[waiting] = None
    runtime.deadlines.arm(waiting, timeout)
    readable = False
    try:
        wait_readable(sock)
        readable = True
    except OSError:
        pass
    finally:
        runtime.deadlines.disarm(waiting)
        runtime.idle_clients.pop(waiting, None)
        if not readable:
            runtime.client_closed()
    return readable


def serve_counted(connection_class, runtime, sock, addr, **options):
    """Build and serve a connection whose slot ``wait_first_byte`` took: its ``serve``
    gives the slot back, or this does if the connection could not be built."""
    try:
        connection = connection_class(runtime, sock, addr, **options)
    except BaseException:
        runtime.client_closed()
        raise
    connection.serve(counted=True)
