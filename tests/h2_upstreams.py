"""Plain h2c upstreams for tests: a listener on loopback, one thread per connection.
Subclasses say what a connection does (``connection(sock)``); the fixture closes the listener."""
import socket
import threading


class H2cUpstream:
    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return                              # closed by the fixture's teardown
            threading.Thread(target=self.connection, args=(sock,), daemon=True).start()

    def connection(self, sock):
        raise NotImplementedError

    def close(self):
        self.listener.close()
