"""A real HTTP/1.1 upstream for the integration tests, run as its own process.

    python tests/upstream.py PORT [NAME] [CERT KEY [CLIENT_CA]]
        with CERT and KEY: HTTPS; with CLIENT_CA too: clients must show a certificate it signed

Endpoints (any method):
  /echo...            JSON: method, path, raw header list, body length and sha256
  /bytes/N            N bytes with Content-Length;  ?chunked=1 streams them chunked
  /slow/SECONDS       answers after a delay
  /status/CODE        answers with that status (204/304 without a body)
  /upload             reads the body (Content-Length or chunked) and returns its size and sha256
  /ws                 101 Switching Protocols, then echoes raw bytes until the client closes
  /close-without-answer  reads the request, then closes the connection
  /stats              JSON: connections accepted and requests served so far
  /control?fail=F&delay=S   from now on, answer a fraction F (0-1) of requests with 500 and
                      every request S seconds late (a canary that goes bad on cue); JSON back
Every request is counted; /stats itself is not. With GW_TEST_DELAY=SECONDS in the environment
every answer (but /stats) is that much late: a slow target for balancing tests.
"""
import hashlib
import json
import os
import random
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STATS = {"connections": 0, "requests": 0}
FAULTS = {"fail": 0.0, "delay": 0.0}       # set by /control
DELAY = float(os.environ.get("GW_TEST_DELAY") or 0)
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True      # head and body go out in separate writes

    def setup(self):
        super().setup()
        with LOCK:
            STATS["connections"] += 1

    def log_message(self, fmt, *args):
        pass

    def read_body(self):
        """Yield the request body in pieces, decoding chunked framing."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                remaining = size
                while remaining:
                    piece = self.rfile.read(min(remaining, 1 << 20))
                    remaining -= len(piece)
                    yield piece
                self.rfile.readline()
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining:
                piece = self.rfile.read(min(remaining, 1 << 20))
                if not piece:
                    return
                remaining -= len(piece)
                yield piece

    def reply(self, status, body=b"", headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if status not in (204, 304):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def handle_any(self):
        path, _, query = self.path.partition("?")
        if path == "/stats":
            return self.reply(200, json.dumps(STATS).encode())
        if path == "/control":
            from urllib.parse import parse_qsl
            FAULTS.update((k, float(v)) for k, v in parse_qsl(query) if k in FAULTS)
            return self.reply(200, json.dumps(FAULTS).encode())
        with LOCK:
            STATS["requests"] += 1
        if DELAY or FAULTS["delay"]:
            time.sleep(DELAY + FAULTS["delay"])
        if FAULTS["fail"] and random.random() < FAULTS["fail"]:
            b"".join(self.read_body())
            return self.reply(500, b"canary failure (control)")
        if path.startswith("/upload"):
            digest, size = hashlib.sha256(), 0
            for piece in self.read_body():
                digest.update(piece)
                size += len(piece)
            return self.reply(200, json.dumps({"size": size, "sha256": digest.hexdigest()})
                              .encode(), [("Content-Type", "application/json")])
        body = b"".join(self.read_body())
        if path.startswith("/bytes/"):
            return self.send_bytes(int(path.split("/")[2]), "chunked=1" in query)
        if path.startswith("/slow/"):
            time.sleep(float(path.split("/")[2]))
            return self.reply(200, b"slow done")
        if path.startswith("/status/"):
            return self.reply(int(path.split("/")[2]), b"status body")
        if path == "/ws":
            return self.websocket_echo()
        if path == "/own-ratelimit":     # an upstream that counts too: the gateway's replace it
            return self.reply(200, b"counted", [("ratelimit-limit", "1000"),
                                                ("RateLimit-Remaining", "999"),
                                                ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
        if path == "/close-without-answer":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        payload = {"server": self.server.name, "method": self.command, "path": self.path,
                   "version": self.request_version, "headers": list(self.headers.items()),
                   "body_size": len(body), "body_sha256": hashlib.sha256(body).hexdigest()}
        self.reply(200, json.dumps(payload).encode(), [("Content-Type", "application/json"),
                                                       ("X-Upstream", self.server.name),
                                                       ("Keep-Alive", "timeout=60"),
                                                       ("Set-Cookie", "a=1"),
                                                       ("Set-Cookie", "b=2")])

    def send_bytes(self, count, chunked):
        block = b"x" * (1 << 20)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(count))
        self.end_headers()
        if self.command == "HEAD":
            return
        remaining = count
        while remaining:
            piece = block[:min(remaining, len(block))]
            if chunked:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            else:
                self.wfile.write(piece)
            remaining -= len(piece)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def websocket_echo(self):
        import base64
        key = self.headers.get("Sec-WebSocket-Key", "")
        accept = base64.b64encode(hashlib.sha1(
            (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        conn = self.connection
        while True:
            data = conn.recv(65536)
            if not data:
                break
            conn.sendall(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = handle_any


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128    # socketserver's 5 drops SYNs when 100 streams connect at once


def main():
    port = int(sys.argv[1])
    server = Server(("127.0.0.1", port), Handler)
    server.name = sys.argv[2] if len(sys.argv) > 2 else f"up{port}"
    if len(sys.argv) > 4:
        import ssl
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(sys.argv[3], sys.argv[4])
        if len(sys.argv) > 5:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(sys.argv[5])
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
