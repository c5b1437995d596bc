"""A TLS upstream that controls its TLS records byte by byte (the TLS layer runs over memory
buffers, the socket sees only what this script chooses to send), to misbehave on purpose.
Run as its own process:  python tests/tls_raw_upstream.py PORT CERT KEY

Keep-alive HTTP/1.1 over TLS; bodies are not read (tests send GETs).
  /ok            200 "ok"
  /stray-later   200 "first"; 100 ms later a second response "SECRET" on the idle connection,
                 in one TLS record sent whole
  /stray-split   200 "first"; 100 ms later the first 10 bytes of a TLS record holding a
                 response "SECRET"; the rest of that record when the peer next sends (its next
                 request, which then gets its own answer behind it) — a record cut in two by
                 the network, across the moment a client checks the idle connection
  /connections   200, the number of connections accepted so far
  /early-413     413 at once, as soon as the head is in; then reads nothing more (a body's
                 sender fills the buffers and waits) and closes 10 s later
  /part-record   as /early-413, but only the first 10 bytes of the 413's TLS record are sent:
                 the socket stays readable with no data the TLS layer can give
  /drip-413      as /early-413, the first 40 bytes of its head a byte (a record) every 0.1 s
  /late-413      as /early-413, 0.3 s after the head (its session tickets went before it)
"""
import socket
import ssl
import sys
import threading
import time

ACCEPTED = 0


def response(body):
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


class RecordConnection:
    def __init__(self, conn, context):
        self.conn = conn
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.held = b""                 # a record's tail, sent when the peer next sends

    def receive(self):
        data = self.conn.recv(65536)
        if not data:
            raise EOFError
        if self.held:
            self.conn.sendall(self.held)
            self.held = b""
        self.incoming.write(data)

    def flush(self):
        self.conn.sendall(self.outgoing.read())

    def handshake(self):
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.flush()
                self.receive()
        self.flush()

    def read(self):
        while True:
            try:
                data = self.tls.read(65536)
            except ssl.SSLWantReadError:
                self.flush()
                self.receive()
                continue
            if not data:
                raise EOFError
            return data

    def send(self, data):
        self.tls.write(data)
        self.flush()


def serve(conn, context):
    tls = RecordConnection(conn, context)
    try:
        tls.handshake()
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                buf += tls.read()
            head, _, buf = buf.partition(b"\r\n\r\n")
            path = head.split(b" ", 2)[1]
            if path == b"/stray-later":
                tls.send(response(b"first"))
                time.sleep(0.1)
                tls.send(response(b"SECRET"))
            elif path == b"/stray-split":
                tls.send(response(b"first"))
                time.sleep(0.1)
                tls.tls.write(response(b"SECRET"))
                record = tls.outgoing.read()
                conn.sendall(record[:10])
                tls.held = record[10:]
            elif path == b"/early-413":
                tls.send(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\n"
                         b"Connection: close\r\n\r\ntoo large")
                time.sleep(10)
                return
            elif path == b"/late-413":
                time.sleep(0.3)
                tls.send(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\n"
                         b"Connection: close\r\n\r\ntoo large")
                time.sleep(10)
                return
            elif path == b"/drip-413":
                answer = (b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\n"
                          b"Connection: close\r\n\r\ntoo large")
                for byte in answer[:40]:
                    tls.send(bytes([byte]))
                    time.sleep(0.1)
                tls.send(answer[40:])
                time.sleep(10)
                return
            elif path == b"/part-record":
                tls.tls.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
                conn.sendall(tls.outgoing.read()[:10])
                time.sleep(10)
                return
            elif path == b"/connections":
                tls.send(response(b"%d" % ACCEPTED))
            else:
                tls.send(response(b"ok"))
    except (EOFError, OSError, ssl.SSLError):
        pass
    finally:
        conn.close()


def main():
    port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", port))
    global ACCEPTED
    while True:
        conn, _ = listener.accept()
        ACCEPTED += 1
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=serve, args=(conn, context), daemon=True).start()


if __name__ == "__main__":
    main()
