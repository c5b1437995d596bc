"""Review of 2cadb74 (a TLS connection is not idle for a newcomer as its handshake ends) and of
c617270 + e5e7bbe (HTTP/2 frames: core/h2frames.py), as an attacker (helper u7). Each test
failed on 0fa75ba.

1. 2cadb74 keeps an HTTP/2 connection over TLS out of a newcomer's reach for FIRST_BYTE_GRACE
   after its handshake, and ``may_close_idle`` asked that last: first came the kernel's
   send queue (an ioctl) and unread input (pyOpenSSL's pending, a poll) of every such
   connection. At the slot limit each newcomer, and the tick 20 times a second, walk every
   idle connection until one can go; TLS clients that handshake (resumed: cheap for them)
   and stay silent, each reconnecting within the second, keep every idle one in its grace,
   so each walk asked them all: 400 of them, 2.7 ms of syscalls a walk, a walk per accept,
   where before 2cadb74 the walk stopped at the first. The grace is asked first now (two
   attribute reads): 0.7 ms for the 400, as a walk over FirstByteWait entries costs.
2. 2cadb74 spared the first request of a TLS connection on its way, but not one come and
   not yet read: an HTTP/1.1 connection's ``may_close_idle`` never looked at unread input
   (HTTP/2's and FirstByteWait's do). A client whose first request came a second or more
   after its handshake (a preconnected socket), or any plain listener's new client, whose
   request was in the socket while the worker ran other greenlets, was closed over for a
   newcomer: the client got an EOF (over TLS) or a reset (plain) and no answer. Before its
   first request such a connection is not idle now.
"""
import json
import subprocess
import sys
import textwrap

import pytest

from ..pki import CA
from .test_http2_hardening import TLS_WORKER_CHILD

# N h2 clients over TLS, handshaken and silent, each in its grace; one walk of the idle
# connections with the syscalls counted, then one more once the grace is over.
GRACE_WALK_CHILD = TLS_WORKER_CHILD + textwrap.dedent("""
    import gwserver.client.h2server as h2server
    from gwserver.client.waiting import FIRST_BYTE_GRACE

    count = int(sys.argv[4])
    runtime = tls_worker()[0]           # (its listener serves one client: not used)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(count)

    def handle(sock, addr):
        tls = runtime.tls_server.wrap(sock)
        tls.do_handshake()
        H2ServerConnection(runtime, tls, addr, scheme="https").serve()

    def accept():
        while True:
            sock, addr = listener.accept()
            gevent.spawn(handle, sock, addr)

    gevent.spawn(accept)
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    clients = [context.wrap_socket(socket.create_connection(listener.getsockname()),
                                   server_hostname="localhost") for _ in range(count)]
    gevent.sleep(0.05)                  # every reader waits for its client's preface
    asked = []
    real_unsent, real_unread = h2server.unsent_bytes, h2server.has_unread_input
    h2server.unsent_bytes = lambda sock: asked.append("unsent") or real_unsent(sock)
    h2server.has_unread_input = lambda sock: asked.append("unread") or real_unread(sock)
    idle = len(runtime.idle_clients)
    freed = runtime.close_oldest_idle()
    in_grace = {"idle": idle, "freed": freed, "syscalls": len(asked)}
    hold(FIRST_BYTE_GRACE + 0.1)
    print(json.dumps({"in_grace": in_grace, "after": runtime.close_oldest_idle()}))
""")


def test_a_walk_over_tls_connections_in_their_grace_asks_the_kernel_nothing(tmp_path):
    cert, key, _ = CA(tmp_path).issue("localhost")
    count = 50
    out = subprocess.run([sys.executable, "-c", GRACE_WALK_CHILD, str(tmp_path), str(cert),
                          str(key), str(count)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.splitlines()[-1])
    assert seen["in_grace"]["idle"] == count, f"not all waiting in their grace: {seen}"
    # none may go yet (2cadb74), and finding that out costs no syscall per connection
    assert seen["in_grace"]["freed"] is False, seen
    assert seen["in_grace"]["syscalls"] == 0, seen
    assert seen["after"] is True, seen      # past the grace, a silent one gives way


# -- 2. a first request come as the grace is over: reset over HTTP/1.1 ------------------------

# One HTTP/1.1 client, over TLS silent past FIRST_BYTE_GRACE (plain: the reader waits at
# once); its first request is in the gateway's socket, not yet read (the worker busy
# elsewhere), when a newcomer wants a slot.
LATE_FIRST_CHILD = TLS_WORKER_CHILD + textwrap.dedent("""
    from gwserver.client.http1 import ClientConnection
    from gwserver.client.waiting import FIRST_BYTE_GRACE

    over_tls = sys.argv[4] == "tls"
    runtime = tls_worker()[0]           # (its listener serves h2: not used)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    served = []

    def serve():
        sock, addr = listener.accept()
        if over_tls:
            sock = runtime.tls_server.wrap(sock)
            sock.do_handshake()
        served.append(ClientConnection(runtime, sock, addr))
        served[0].serve()

    gevent.spawn(serve)
    client = socket.create_connection(listener.getsockname())
    if over_tls:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        context.set_alpn_protocols(["http/1.1"])
        client = context.wrap_socket(client, server_hostname="localhost")
    client.settimeout(3)
    # past the grace over TLS: an idle connection now
    gevent.sleep(FIRST_BYTE_GRACE + 0.2 if over_tls else 0.2)
    waiting = [c is served[0] for c in runtime.idle_clients]
    client.sendall(b"GET /a HTTP/1.1\\r\\nHost: localhost\\r\\n\\r\\n")
    hold(0.1)                           # in the gateway's socket; its reader has not run
    taken = runtime.close_oldest_idle()
    try:
        data = client.recv(65536)
        answer = data.split(b"\\r\\n", 1)[0].decode() if data else "closed"
    except OSError as exc:
        answer = repr(exc)
    print(json.dumps({"waiting": waiting, "taken": taken, "answer": answer}))
""")


@pytest.mark.parametrize("listener", ["tls", "plain"])
def test_a_first_request_come_but_unread_is_served_not_reset(tmp_path, listener):
    """An HTTP/1.1 connection's ``may_close_idle`` never looked at unread input, where an
    HTTP/2 one's and a FirstByteWait's do: a first request come a second after the
    handshake (a browser's preconnected socket, a client that opened its connection ahead)
    but not yet read was closed over, the client told nothing; so was a plain listener's
    (whose new connections are idle at once). Before its first request a connection with
    unread input is not idle now (a keep-alive one still is: its client may send again,
    RFC 9112 9.3.1)."""
    cert, key, _ = CA(tmp_path).issue("localhost")
    out = subprocess.run([sys.executable, "-c", LATE_FIRST_CHILD, str(tmp_path), str(cert),
                          str(key), listener], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.splitlines()[-1])
    assert seen["waiting"] == [True], f"the race was not set up: {seen}"
    assert seen["taken"] is False, seen
    assert seen["answer"] == "HTTP/1.1 301 Moved Permanently", seen
