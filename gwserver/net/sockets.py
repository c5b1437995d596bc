"""The two socket operations of the hot path, thinner than gevent's socket methods.

gevent sockets keep the OS-level non-blocking socket as ``_sock`` (gevent's own code relies on
it). Trying that first costs one syscall; only when the kernel buffer is full do we arm a
deadline and let gevent's ``send`` wait for writability (docs/benchmarks.md: gevent's
``sendall`` calls getsockopt and time() and builds a memoryview on every call).

Only for plain sockets: a TLS socket's ``_sock`` is the TCP socket under the encryption, and
its reads may be served from bytes already decrypted while the descriptor is not readable. TLS
sockets go through their own methods.
"""
import contextlib
import errno
import fcntl
import select
import socket
import ssl
import struct

import gevent
from gevent.exceptions import ConcurrentObjectUseError
from gevent.select import select as gevent_select
from gevent.monkey import get_original
from gevent.socket import socket as PlainSocket

RECV_SIZE = 64 * 1024          # one read; also the most body a worker holds per request
LINGER_SECONDS = 2.0           # nginx: lingering_timeout 5s, lingering_time 30s
LINGER_BYTES = 16 * 1024 * 1024
OPENING_SLACK = 0.05           # opening_within's bound past the socket's connect timeout
WAIT_SLICE = 0.5               # send_unless_answered: longest wait before a deadline is seen
PEEK_FLAGS = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)   # an IntFlag `|` costs ~1 us a call
# The kernel's poll(2), not gevent's cooperative emulation (which waits on the hub: ~12 us):
# with a zero timeout it never blocks. idle_state costs 0.78 us so, against 1.4 us with a
# MSG_PEEK that raises EAGAIN (docs/benchmarks.md).
_kernel_poll = get_original("select", "poll")


# Host name -> the greenlet of a lookup of it, started once a connect's lookup of it hung
# (opening_within): while it runs, connects to that name wait on it, not a lookup of their own.
_HANGING = {}


@contextlib.contextmanager
def opening_within(seconds, host=None):
    """A ``gevent.Timeout`` that raises ``socket.timeout`` once ``seconds`` have passed: a
    new upstream connection's name lookup and TCP connect together within the connect
    timeout. A socket's own timeout bounds each connect but not the lookup before it, which
    waits as long as resolv.conf says (5 s a try, twice, per nameserver) for a nameserver
    that is gone. It fires OPENING_SLACK after the socket's would, so a connect that timed
    out is still told as one. Never on the hot path: only when a connection is opened.

    A lookup the timeout cut goes on in gevent's resolver thread pool (10 threads) until
    the system's resolver gives up. Each connect to a name that hangs starting one, ten
    requests a few seconds apart took every thread, and every other upstream named by a
    host name timed out behind them (a 504 for ``localhost``). So once ``host``'s lookup
    hung, one lookup of it runs on its own (_HANGING), and connects to that name wait for
    it, within their timeout, before one of their own: one thread, not one a request."""
    timeout = gevent.Timeout(seconds + OPENING_SLACK, socket.timeout(
        f"name lookup and connect took over {seconds:g}s"))
    timeout.start()
    try:
        lookup = _HANGING.get(host)
        if lookup is not None:
            lookup.join()
        yield
    except BaseException:
        if not timeout.pending and host is not None and host not in _HANGING:
            # ours fired, not the socket's connect timeout (earlier): the lookup hung
            _HANGING[host] = gevent.spawn(_look_up_hanging, host)
        raise
    finally:
        timeout.close()


def lookup_hangs(host):
    """Is a lookup of ``host`` that hung still running (opening_within's shared one)? A
    connect to that name now waits for it, within its timeout, before it can begin."""
    return host in _HANGING


def handshake_within(seconds):
    """A ``gevent.Timeout`` that raises ``socket.timeout`` once ``seconds`` (and twice
    OPENING_SLACK) have passed: a new upstream connection's TLS handshake as a whole within
    the connect timeout. The socket's own timeout bounds each read of it, and an upstream
    that dribbled its handshake a byte at a time (a stuck terminator, a tarpit) held the
    request and its pool slot for as long as it went on. Never on the hot path.

    Its bound lies past opening_within's, which runs inside it for an HTTP/1.1 upstream's
    lookup and connect: with the same one, started first, it fired first, opening_within
    took the cut for the socket's connect timeout and never shared the hung name's lookup
    (_HANGING): each request to an https:// target whose name hangs took a resolver
    thread, and every other name's lookup queued behind them."""
    return gevent.Timeout(seconds + 2 * OPENING_SLACK,
                          socket.timeout(f"TLS handshake took over {seconds:g}s"))


def _look_up_hanging(host):
    """opening_within's own lookup of a name whose lookup hung; connects wait for its end."""
    try:
        socket.getaddrinfo(host, None, 0, socket.SOCK_STREAM)
    except Exception:           # (socket.gaierror: the connects that follow say it)
        pass
    finally:
        _HANGING.pop(host, None)


def raw_socket(sock):
    """The OS-level socket under a gevent socket."""
    return getattr(sock, "_sock", sock)


def send_all(sock, data, deadlines, owner, timeout):
    """Send all of ``data``; if it must wait, ``owner.expire()`` runs after ``timeout``."""
    sent = 0
    if type(sock) is PlainSocket:
        try:
            sent = sock._sock.send(data)
        except BlockingIOError:
            pass
    if sent == len(data):
        return
    deadlines.arm(owner, timeout)
    try:
        view = memoryview(data)
        while sent < len(data):
            sent += sock.send(view[sent:])
    finally:
        deadlines.disarm(owner)


def send_unless_answered(sock, data, deadlines, owner, timeout, answered):
    """``send_all`` for a plain socket whose peer may answer while we send (a request body an
    upstream answers early, then stops reading). When the send must wait, it waits for room
    or for something to read, whichever comes first; ``answered()`` (which reads it) says
    whether to stop (True), or to go on with a new deadline (False, an interim head) or the
    same one (None). Returns False if it stopped, True when all of ``data`` went out.

    The wait is gevent's select in slices: a deadline closes the socket, and a closed socket
    wakes no watcher, so each slice ends by itself and the next send raises."""
    raw = sock._sock
    view = memoryview(data)
    sent, armed = 0, False
    try:
        while sent < len(data):
            try:
                sent += raw.send(view[sent:])
                continue
            except BlockingIOError:
                pass
            if not armed:
                deadlines.arm(owner, timeout)
                armed = True
            readable, _, _ = gevent_select([raw], [raw], [], WAIT_SLICE)
            if readable:
                said = answered()
                if said:
                    return False
                if said is not None:
                    # An interim head: the next wait has a timeout of its own. Anything
                    # else (None) keeps the deadline the wait had.
                    deadlines.disarm(owner)
                    armed = False
    finally:
        if armed:
            deadlines.disarm(owner)
    return True


def tls_send_unless_answered(sock, data, deadlines, owner, timeout, answered):
    """``send_unless_answered`` for a TLS socket. The TLS layer takes all of ``data`` or, with
    the TCP buffer full, raises SSLWantWriteError and must be given the same data again once
    there is room (OpenSSL's rule; gevent's own send does so). A readable socket may hold a
    record with no data in it (TLS 1.3 session tickets come after the handshake, and nobody
    reads before the answer): ``answered()`` must read without waiting (``tls_read_now``),
    and returns None when there was no data (the TLS layer took the bytes: the socket is no
    longer readable), True to stop, False to go on."""
    sslobj, raw = sock._sslobj, sock._sock
    armed = False
    try:
        while True:
            try:
                sslobj.write(data)
                return True
            except ssl.SSLWantWriteError:
                room = [raw]
            except ssl.SSLWantReadError:
                room = []       # a renegotiation: room to write would wake the wait at once
            if not armed:
                deadlines.arm(owner, timeout)
                armed = True
            readable, _, _ = gevent_select([raw], room, [], WAIT_SLICE)
            if readable or sock.pending():
                said = answered()
                if said:
                    return False
                if said is not None:
                    # An interim head: the next wait has a read_timeout of its own. Its read
                    # disarmed the deadline only if it went through recv_feed (a head in
                    # pieces): one taken whole by tls_read_now left it armed.
                    deadlines.disarm(owner)
                    armed = False
    finally:
        if armed:
            deadlines.disarm(owner)


def tls_read_now(sock, buf):
    """Read what a TLS socket holds decrypted into ``buf`` without waiting: the byte count,
    0 at the end of the stream (close_notify or the connection's end), or None when what
    had arrived held no data yet (a session ticket, the first part of a record)."""
    sslobj = sock._sslobj
    if sslobj is None:          # closed (by a deadline): no AttributeError, a failed read
        raise OSError(errno.EBADF, "socket closed")
    try:
        return sslobj.read(len(buf), buf)
    except ssl.SSLWantReadError:
        return None
    except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
        return 0


OPEN, CLOSED, UNREAD = "open", "closed", "unread"


def idle_state(sock):
    """What a connection we are not reading from holds: ``OPEN`` (nothing to read),
    ``CLOSED`` (EOF or an error) or ``UNREAD`` (bytes nobody asked for yet: on an idle
    keep-alive connection, a reason never to reuse it). One poll(2) without waiting; only a
    readable socket costs a non-blocking MSG_PEEK more, to tell bytes from EOF."""
    if sock is None:
        return CLOSED
    raw = raw_socket(sock)
    fd = raw.fileno()
    if fd < 0:
        return CLOSED
    poller = _kernel_poll()
    poller.register(fd, select.POLLIN)     # hang-ups and errors are reported anyway
    if not poller.poll(0):
        return OPEN                 # the common case, without an exception raised
    try:                            # bytes, EOF or an error: the peek tells which
        data = raw.recv(1, PEEK_FLAGS)
    except BlockingIOError:
        return OPEN
    except OSError:
        return CLOSED
    return UNREAD if data else CLOSED


def tls_idle_state(sock):
    """``idle_state`` for a TLS connection: any bytes under the TLS layer make it ``UNREAD``
    (or ``CLOSED`` if they end it), even when they decrypt to no data yet. The TLS layer
    cannot tell a whole record that carries none (a key update, a late session ticket: TLS
    1.3's arrive before the first answer, whose read takes them) from the first part of a
    record whose rest is still on its way, and that rest, a stray answer, would be read as
    the next request's (tests/tls_raw_upstream.py, /stray-split). Reconnecting in the rare
    first case is cheap beside that."""
    if sock is None:
        return CLOSED
    if sock.pending():
        return UNREAD
    state = idle_state(sock)            # the TCP socket under the TLS layer
    if state is not UNREAD:
        return state
    try:
        data = sock._sslobj.read(1)     # an alert (close_notify) says CLOSED, not UNREAD
    except ssl.SSLWantReadError:
        return UNREAD                   # a record, or part of one: no data yet
    except (ssl.SSLError, OSError, AttributeError):
        return CLOSED
    return UNREAD if data else CLOSED


def linger(sock, buf, deadlines, owner):
    """Before closing a connection whose peer may still be sending: shut our side, read and
    drop what comes for up to LINGER_SECONDS (``owner.expire()`` closes the socket then) or
    LINGER_BYTES. Closing with unread input makes the kernel send RST, and the peer may then
    lose the answer we just wrote (nginx's lingering_close). The caller closes the socket."""
    deadlines.arm(owner, LINGER_SECONDS)
    try:
        sock.shutdown(socket.SHUT_WR)
        drained = 0
        while drained < LINGER_BYTES:
            n = sock.recv_into(buf)
            if not n:
                break
            drained += n
    except OSError:
        pass
    finally:
        deadlines.disarm(owner)


# tcp_states.h: the peer sent its FIN (CLOSE_WAIT), or reset the connection (CLOSE)
_PEER_GONE = frozenset([7, 8])


def peer_closed(sock):
    """Has the peer of a TCP connection ended it (its FIN, or a reset)? Its kernel state, one
    getsockopt: bytes it sent before (a pipelined request, a TLS close_notify) do not hide the
    end as they would from a peek. Another kind of socket (Unix) never says so."""
    try:
        return raw_socket(sock).getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] \
            in _PEER_GONE
    except (OSError, ValueError):
        return False


def wait_readable(sock):
    """Park until ``sock`` is readable; raise OSError if it was closed (a deadline expired).

    Used where nothing can have arrived yet (right after sending a request upstream, right after
    answering a keep-alive client): reading first would only raise EAGAIN inside gevent.
    """
    event = sock._read_event
    if event is None:
        raise OSError(errno.EBADF, "socket closed")
    try:
        sock._wait(event)
    except ConcurrentObjectUseError:
        raise OSError(errno.EBADF, "socket closed") from None


class Woken(Exception):
    """Raised by ReadableWake into the wait it ends."""


class ReadableWake:
    """Ends the current greenlet's wait once ``sock`` turns readable (an upstream answering
    while a request body waits on its client): by setting ``event`` when given (what that
    wait is on), else by raising Woken into it, which must then wait at one point only
    (stopped as soon as that wait ends: a wake pending is dropped with the watcher).
    ``woke`` says whether it did."""

    __slots__ = ("watcher", "greenlet", "event", "woke", "stopped")

    def __init__(self, sock, event=None):
        self.greenlet, self.event, self.woke = gevent.getcurrent(), event, False
        self.stopped = False
        self.watcher = gevent.get_hub().loop.io(sock.fileno(), 1)
        self.watcher.start(self._wake)

    def _wake(self):
        if self.stopped:        # (a call queued before the stop: the wait is over)
            return
        self.watcher.stop()
        self.woke = True
        if self.event is not None:
            self.event.set()
        else:
            self.greenlet.throw(Woken)

    def stop(self):
        self.stopped = True
        self.watcher.stop()
        self.watcher.close()


def readable_within(sock, seconds):
    """Has ``sock`` something to read (or closed) within ``seconds``? Nothing is read; a TLS
    socket's bytes decrypted already count."""
    if type(sock) is not PlainSocket and sock.pending():
        return True
    try:
        return bool(gevent_select([sock], (), (), seconds)[0])
    except (OSError, ValueError):       # closed meanwhile: the read after it says so
        return True


def recv_when_readable(sock, buf):
    """``wait_readable`` then one read from the OS socket (gevent's wrapper is not needed)."""
    if type(sock) is not PlainSocket:
        return sock.recv_into(buf)      # TLS: the socket knows whether it must wait
    wait_readable(sock)
    try:
        return sock._sock.recv_into(buf)
    except BlockingIOError:         # a spurious wake-up: let gevent wait properly
        return sock.recv_into(buf)


def has_unread_input(sock):
    """Has the client sent bytes nobody read? Closing over them makes the kernel send RST,
    and the client may lose what was written last (see ``linger``); an idle connection
    holding them is no idle one to close for a newcomer (its GOAWAY went the same way). A
    client TLS socket answers for itself (client.tls.TLSSocket.has_unread_input)."""
    if type(sock) is PlainSocket:
        return idle_state(sock) is UNREAD
    return sock.has_unread_input()


SIOCOUTQNSD = 0x894B         # linux/sockios.h: bytes queued and not yet sent


def unsent_bytes(sock):
    """Bytes of an answer the kernel still holds because the peer's window is full (not the
    ones sent and not yet acknowledged, which a delayed ACK keeps for up to 200 ms on
    loopback too). 0 when it cannot be asked."""
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), SIOCOUTQNSD, b"\0\0\0\0"))[0]
    except (OSError, ValueError):
        return 0


def peer_address(addr):
    """The client's address as text from accept()'s ``addr``: an IPv4 client of a dual-stack
    [::] listener (``::ffff:10.0.0.5``) is 10.0.0.5, as on an IPv4 listener, so limits,
    allow-lists and X-Forwarded-For see one address, not two spellings of it."""
    if not isinstance(addr, tuple):
        return "unix"
    address = addr[0]
    if address.startswith("::ffff:") and "." in address:
        return address[7:]
    return address


def _os_errors(exc):
    """The OSErrors in ``exc``'s chain of causes, itself first (urllib3 wraps the OS's)."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError):
            yield seen
        seen = seen.__cause__ or seen.__context__


def out_of_files(exc):
    """Whether a connect failed for want of a file descriptor in this process (EMFILE) or on
    the host (ENFILE), under urllib3's wrappers too: the gateway's limit, not the peer's."""
    return any(error.errno in (errno.EMFILE, errno.ENFILE) for error in _os_errors(exc))


def failure_reason(exc):
    """Why a connect failed, in a log line's words: the OS's reason ("connection refused",
    "name or service not known") under urllib3's wrappers, whose own text names its
    connection class (``CheapCheckHTTPConnection(host=..., port=...): Failed to establish a
    new connection: [Errno 111] ...``); anything else as it says itself."""
    for error in _os_errors(exc):
        if error.strerror:
            return error.strerror[:1].lower() + error.strerror[1:]
    return str(getattr(exc, "reason", None) or exc)
