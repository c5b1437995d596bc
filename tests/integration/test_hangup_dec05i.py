"""A client that hangs up while the gateway waits for its upstream's answer head.

A long poll (an upstream that answers when there is news, 30 s later) whose HTTP/1.1 client
closed its connection held the upstream connection, the request's limit_conn slot and the
upstream's work until the head came or the read timeout passed; the answer then went to
nobody. The worker's tick now looks once a second (TCP_INFO, one getsockopt per waiting
request; nothing is set up per request) at the clients whose request waits for a head, and
lets the upstream go when one has ended its connection: the request ends as the client's
doing, never as a failure of the upstream's (no retry, no passive-check failure, no error
logged). nginx's proxy_ignore_client_abort off does the same.
"""
import socket
import time

from ..conftest import gateway_conf, wait_until
from .test_upgrade_attack_dec05h import EventStreamUpstream


class LongPollUpstream(EventStreamUpstream):
    """Each request is held, unanswered, until the gateway closes its connection or ``hold``
    seconds pass; ``requests`` counts the requests, ``let_go`` those the gateway gave up."""

    def __init__(self, hold=30.0):
        self.hold, self.requests, self.let_go = hold, 0, 0
        super().__init__(every=hold)

    def stream(self, conn):
        with conn:
            conn.settimeout(self.hold)
            head = b""
            try:
                while b"\r\n\r\n" not in head:
                    piece = conn.recv(65536)
                    if not piece:
                        return
                    head += piece
                self.requests += 1
                if not conn.recv(65536):
                    self.let_go += 1        # the gateway closed it: nobody waits any more
            except OSError:
                return


def ask_and_leave(port, path, stay=0.5):
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % path)
    time.sleep(stay)
    sock.close()


def test_a_client_that_hangs_up_on_a_long_poll_lets_its_upstream_go(launcher):
    ups = [LongPollUpstream(), LongPollUpstream()]
    try:
        gw = launcher.gateway(gateway_conf([{
            "id": "poll", "paths": ["/poll"],
            "upstream": {"targets": [{"url": up.url} for up in ups],
                         "passive": {"consecutive_failures": 1, "eject_for": 60}},
            "timeouts": {"read": 30.0}, "retry": {"on": ["timeout", "reset"], "attempts": 2},
            "plugins": {"limit_conn": {"limit": 1, "scope": "host"}}}]))
        ask_and_leave(gw.port, b"/poll")
        left = time.monotonic()
        wait_until(lambda: sum(up.let_go for up in ups) >= 1, timeout=5)
        assert time.monotonic() - left < 3
        line = wait_until(lambda: next(iter(gw.access_lines()), None), timeout=5)
        assert line["path"] == "/poll" and line.get("attempts", 1) == 1, line
        assert line["status"] == 0 and line["bytes"] == 0 and "error" not in line, line
        # the slot is free again, and neither target was ejected: two more long polls
        # reach both targets (round robin) instead of a 503
        for n in (2, 3):
            ask_and_leave(gw.port, b"/poll", stay=0.3)
            wait_until(lambda: sum(up.let_go for up in ups) >= n, timeout=5)
        assert [up.requests for up in ups] == [2, 1] or [up.requests for up in ups] == [1, 2]
        assert all(line["status"] != 503 for line in gw.access_lines())
        log = gw.log()      # the client's doing: nothing of the upstream's is logged
        assert "retrying" not in log and "[ERROR]" not in log and "[WARNING]" not in log, \
            log[-2000:]
    finally:
        for up in ups:
            up.close()
