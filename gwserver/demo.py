"""A small upstream for the README demo: echoes what it received as JSON, keep-alive on."""
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "gwserver-demo"
    disable_nagle_algorithm = True      # head and body are separate writes

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        payload = {"service": self.server.name, "method": self.command, "path": self.path,
                   "headers": dict(self.headers.items()), "body_bytes": len(body)}
        data = json.dumps(payload, indent=2).encode() + b"\n"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _answer

    def log_message(self, fmt, *args):
        pass


def serve(host="127.0.0.1", port=9001, name="demo"):
    server = ThreadingHTTPServer((host, port), EchoHandler)
    server.daemon_threads = True
    server.name = name
    print(f"demo upstream listening on http://{host}:{port}", flush=True)
    server.serve_forever()
