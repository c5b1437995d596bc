"""A small upstream for the README demo and the docs' examples: echoes what it received as JSON,
keep-alive on, and answers on demand like httpbin (whose paths it borrows):

    /status/503      that status (100-599 but 1xx; 204 and 304 without a body)
    /delay/0.2       the echo, after that many seconds (at most 60)
    /bytes/100000    that many bytes (at most 100 MB), application/octet-stream

A prefix before them is allowed (``/api/status/503``), so a route that forwards its path as is
can be tried too. Anything else is the echo.
"""
import json
import re
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ACTION = re.compile(r"(?:.*/)?(status|delay|bytes)/([0-9.]+)/?")
MAX_DELAY = 60.0
MAX_BYTES = 100 * 1024 * 1024
CHUNK = b"x" * 65536


class EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "gwserver-demo"
    disable_nagle_algorithm = True      # head and body are separate writes

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, size = 200, None
        match = ACTION.fullmatch(self.path.partition("?")[0])
        try:
            if match and match[1] == "status":
                status = int(match[2])
                if not 200 <= status <= 599:
                    raise ValueError
            elif match and match[1] == "delay":
                time.sleep(min(float(match[2]), MAX_DELAY))
            elif match:
                size = min(int(match[2]), MAX_BYTES)
        except ValueError:
            status = 400
        if size is not None and status == 200:
            return self._send(status, "application/octet-stream", size, None)
        payload = {"service": self.server.name, "method": self.command, "path": self.path,
                   "status": status, "headers": dict(self.headers.items()),
                   "body_bytes": len(body)}
        data = b"" if status in (204, 304) else json.dumps(payload, indent=2).encode() + b"\n"
        self._send(status, "application/json", len(data), data)

    def _send(self, status, content_type, length, data):
        self.send_response(status)
        if status not in (204, 304):
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command == "HEAD" or status in (204, 304):
            return
        if data is not None:
            self.wfile.write(data)
            return
        while length > 0:
            piece = CHUNK[:min(length, len(CHUNK))]
            self.wfile.write(piece)
            length -= len(piece)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _answer

    def log_message(self, fmt, *args):
        pass


def listen(host="127.0.0.1", port=9001, name="demo"):
    """The server, bound: OSError (or OverflowError for a port past 65535) when it cannot."""
    server = ThreadingHTTPServer((host, port), EchoHandler)
    server.daemon_threads = True
    server.name = name
    return server


def serve(host="127.0.0.1", port=9001, name="demo", server=None):
    server = server or listen(host, port, name)
    print(f"demo upstream listening on http://{host}:{port} (/status/N, /delay/SECONDS, "
          f"/bytes/N answer on demand)", flush=True)
    server.serve_forever()
