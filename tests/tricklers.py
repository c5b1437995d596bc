"""Clients that send a request body a byte a second, each from its own thread, to hold a
gateway's connection slots (server.min_body_rate's tests). ``answers`` holds how each ended."""
import select
import socket
import threading
import time

import h2.errors
import h2.exceptions

from .h2client import RawH2


class Trickler:
    """``count`` HTTP/1.1 POSTs with a 60,000-byte Content-Length, until each ends or the
    gateway answers; an answer is kept as the bytes that came."""

    def __init__(self, port, count):
        self.answers, self.stop = [], threading.Event()
        self.sending = []               # one entry per client whose request is out
        self.threads = [threading.Thread(target=self.run, args=(port,), daemon=True)
                        for _ in range(count)]
        for thread in self.threads:
            thread.start()

    def run(self, port):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"POST /upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 60000\r\n\r\n")
                self.sending.append(True)
                while not self.stop.wait(1.0):
                    sock.sendall(b"x")
                    if select.select([sock], [], [], 0)[0]:
                        self.answers.append(sock.recv(4096))
                        return
        except OSError as exc:
            self.answers.append(repr(exc).encode())

    def wait_sending(self, count, timeout=10.0):
        """Wait until ``count`` clients have sent their request (a loaded host can take
        over a second to start a dozen threads and TLS handshakes): a test that meant to
        fill every slot first must not find room left."""
        deadline = time.monotonic() + timeout
        while len(self.sending) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.sending)} of {count} tricklers sending; "
                                     f"the others: {self.answers}")
            time.sleep(0.05)

    def close(self):
        self.stop.set()
        for thread in self.threads:
            thread.join(5)


class H2Trickler(Trickler):
    """The same over h2c connections, one POST stream each: an answer is "closed" (the
    connection) or "ended" (a GOAWAY or the stream reset); ``goaways`` holds the GOAWAYs
    (h2's ConnectionTerminated events) that came."""

    def __init__(self, port, count, tls=False):
        self.goaways, self.tls = [], tls
        super().__init__(port, count)

    def connect(self, port, tries=5):
        """A connection, tried again if the gateway closed it before it was made: on a
        loaded host a dozen TLS handshakes at once take over a second, and a handshake a
        second old gives way to the next client when every slot is taken (docs/tls.md), as
        it should; the tricklers, as an attacker would, come back (else "9 of 10 sending")."""
        for left in range(tries - 1, -1, -1):
            try:
                return RawH2(port, timeout=1, tls=self.tls)
            except OSError:
                if not left or self.stop.is_set():
                    raise
                time.sleep(0.1)

    def calmed(self):
        """The GOAWAYs that closed a connection as a slow client (ENHANCE_YOUR_CALM): a
        trickler whose request was not in yet when a newcomer took its slot was closed as
        idle (NO_ERROR), rightly."""
        return [g for g in self.goaways if g.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM]

    def run(self, port):
        try:
            client = self.connect(port)
            sid = client.request("/upload", "POST", [("content-length", "60000")], end=False)
            self.sending.append(True)
            while not self.stop.wait(1.0):
                client.conn.send_data(sid, b"x")
                client.flush()
                client.pump(lambda c: c.closed, timeout=0.05)
                if client.closed or client.goaway() or client.reset_code(sid) is not None:
                    self.answers.append("closed" if client.closed else "ended")
                    if client.goaway() is not None:
                        self.goaways.append(client.goaway())
                    return
        except (OSError, h2.exceptions.ProtocolError) as exc:
            self.answers.append(repr(exc))
