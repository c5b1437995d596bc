"""Plain h2c upstreams for tests: a listener on loopback, one thread per connection.
Subclasses say what a connection does (``connection(sock)``); the fixture closes the listener."""
import select
import socket
import sys
import threading
import time
from urllib.parse import parse_qs, urlsplit

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings


def first_request(conn, sock):
    """Read until the first request's head has come; its stream id (None if the peer left)."""
    sid = None
    while sid is None and (data := sock.recv(65536)):
        sid = next((e.stream_id for e in conn.receive_data(data)
                    if isinstance(e, h2.events.RequestReceived)), None)
        sock.sendall(conn.data_to_send())
    return sid


class H2cUpstream:
    def __init__(self, port=0):
        self.listener = socket.create_server(("127.0.0.1", port))
        self.port = self.listener.getsockname()[1]
        self.closing = False
        self.acceptor = threading.Thread(target=self.serve, daemon=True)
        self.acceptor.start()

    def serve(self):
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return                              # shut down by close()
            if self.closing:
                sock.close()
                return
            if sock.getsockname()[1] != self.port:     # (shown with a failing test's output)
                print(f"{type(self).__name__} of port {self.port} accepted a connection to "
                      f"port {sock.getsockname()[1]}", file=sys.stderr)
            threading.Thread(target=self.connection, args=(sock,), daemon=True).start()

    def connection(self, sock):
        raise NotImplementedError

    def close(self):
        """Stop listening for good. close() alone does not wake a thread blocked in accept():
        the port kept listening for the rest of the run, and CI saw later tests' requests
        answered by earlier tests' upstreams. shutdown() wakes it; then the fd goes."""
        self.closing = True
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.acceptor.join(5)
        self.listener.close()


class EventH2cUpstream(H2cUpstream):
    """An h2c upstream that hands each event of a connection to ``on_event`` and sends what
    that queued after each read; a protocol error or a closed socket ends the connection."""

    def connection(self, sock):
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None))
        conn.initiate_connection()
        with sock:
            try:
                sock.sendall(conn.data_to_send())
                while data := sock.recv(65536):
                    for event in conn.receive_data(data):
                        self.on_event(conn, sock, event)
                    sock.sendall(conn.data_to_send())
            except (h2.exceptions.ProtocolError, OSError):
                pass

    def on_event(self, conn, sock, event):
        raise NotImplementedError


class StreamingH2Upstream(H2cUpstream):
    """A well-behaved h2c upstream (honours flow control and RST_STREAM):
    - GET /stream[?n=BYTES&f=FRAME]: 200, then BYTES (default 4 MiB) of body in DATA frames
      of FRAME bytes (default 100: a server-streaming gRPC call of small messages, an SSE
      feed), as fast as the windows allow; stops when the gateway resets the stream.
    - GET /slow: 200 "slow-ok" after 3 s.
    - any method /tick?n=N&every=S: 200 at once, then one DATA "tick" every S seconds, the
      N-th ending the stream, whether or not the request has ended (a bidi call's server
      that streams while its client listens).
    - anything else: 200 "ok".
    ``resets`` counts the RST_STREAMs it received, ``connections`` the connections;
    ``max_streams``: the MAX_CONCURRENT_STREAMS it allows (h2's 100 by default)."""
    def __init__(self, max_streams=None):
        self.resets = self.connections = 0
        self.max_streams = max_streams
        super().__init__()

    def connection(self, sock):
        self.connections += 1
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        if self.max_streams is not None:
            conn.update_settings(
                {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams})
        pending = {}        # stream id -> [bytes left, frame size]
        timers = []         # (when, stream id)
        ticks = {}          # stream id -> [ticks left, every, next at]
        sock.setblocking(False)
        out = bytearray(conn.data_to_send())
        try:
            while True:
                wantw = bool(out)
                r, w, _ = select.select([sock], [sock] if wantw else [], [], 0.01)
                if r:
                    try:
                        data = sock.recv(65536)
                    except BlockingIOError:
                        data = None
                    if data == b"":
                        return
                    if data:
                        for ev in conn.receive_data(data):
                            if isinstance(ev, h2.events.RequestReceived):
                                url = urlsplit(dict(ev.headers)[b":path"].decode())
                                if url.path.endswith("/stream"):
                                    q = parse_qs(url.query)
                                    conn.send_headers(ev.stream_id, [(b":status", b"200")])
                                    pending[ev.stream_id] = [int(q.get("n", [4 << 20])[0]),
                                                             int(q.get("f", [100])[0])]
                                elif url.path.endswith("/tick"):
                                    q = parse_qs(url.query)
                                    every = float(q.get("every", [1])[0])
                                    conn.send_headers(ev.stream_id, [(b":status", b"200")])
                                    ticks[ev.stream_id] = [int(q.get("n", [3])[0]), every,
                                                           time.monotonic() + every]
                                elif url.path.endswith("/slow"):
                                    timers.append((time.monotonic() + 3, ev.stream_id))
                                else:
                                    conn.send_headers(ev.stream_id, [(b":status", b"200")])
                                    conn.send_data(ev.stream_id, b"ok", end_stream=True)
                            elif isinstance(ev, h2.events.StreamReset):
                                self.resets += 1
                                pending.pop(ev.stream_id, None)
                                ticks.pop(ev.stream_id, None)
                            elif isinstance(ev, h2.events.DataReceived):
                                conn.acknowledge_received_data(ev.flow_controlled_length,
                                                               ev.stream_id)
                now = time.monotonic()
                for sid, tick in list(ticks.items()):
                    if tick[2] <= now:
                        tick[0] -= 1
                        tick[2] = now + tick[1]
                        try:
                            conn.send_data(sid, b"tick", end_stream=not tick[0])
                        except h2.exceptions.ProtocolError:
                            tick[0] = 0
                        if not tick[0]:
                            del ticks[sid]
                for when, sid in [t for t in timers if t[0] <= now]:
                    timers.remove((when, sid))
                    try:
                        conn.send_headers(sid, [(b":status", b"200")])
                        conn.send_data(sid, b"slow-ok", end_stream=True)
                    except h2.exceptions.ProtocolError:
                        pass
                # fill the windows, at most ~256 KiB of frames per turn
                budget = 256 << 10
                for sid in list(pending):
                    left, size = pending[sid]
                    while left and budget > 0:
                        n = min(size, left, conn.local_flow_control_window(sid))
                        if n <= 0:
                            break
                        left -= n
                        budget -= n + 9
                        conn.send_data(sid, b"m" * n, end_stream=not left)
                    if left:
                        pending[sid][0] = left
                    else:
                        del pending[sid]
                out += conn.data_to_send()
                if out:
                    try:
                        sent = sock.send(out)
                        del out[:sent]
                    except BlockingIOError:
                        pass
        except (OSError, h2.exceptions.ProtocolError):
            pass
        finally:
            sock.close()


class ScriptedH2Upstream(H2cUpstream):
    """h2c that treats every request alike; ``behaviour``:
    - "ok": 200, the body "<name> got <request body bytes>", with content-length
    - "500": the same with :status 500
    - "reset": RST_STREAM INTERNAL_ERROR once the request is in, instead of an answer
    - "slow": "ok" after ``delay`` seconds
    - "204-length": 204 with content-length: 7 (RFC 9110 8.6 forbids it)
    - "bad-status": :status "abc", which the h2 library passes on as it came
    - "cut": 200 with content-length: 100000, 1000 bytes of it, then RST_STREAM INTERNAL_ERROR
    - "head-then-wait": 200 at once, its body ("<name> later") ``delay`` seconds after;
      "head-empty-then-wait": the same with an empty DATA frame right after the head;
      "message-then-wait": 200 and DATA "<name> first" at the request's head, then nothing
    - "head-then-reset": a gRPC head (200, application/grpc) at once, RST_STREAM
      INTERNAL_ERROR ``delay`` seconds after, before any body
    - at the request's head, before its body: "refuse" (RST_STREAM REFUSED_STREAM),
      "reset-at-head" (RST_STREAM INTERNAL_ERROR 0.2 s later), "early-413" (413 "too big!",
      then RST_STREAM NO_ERROR, as RFC 9113 8.1 allows)
    ``window``: the INITIAL_WINDOW_SIZE it grants; ``max_streams``: the
    MAX_CONCURRENT_STREAMS it allows; ``ack``: whether it opens the windows of
    the body it reads again. ``requests`` counts the requests it acted on; ``heads`` holds
    each request's header fields (a dict)."""
    AT_HEAD = ("refuse", "reset-at-head", "early-413", "message-then-wait")

    def __init__(self, name, behaviour, delay=3.0, window=None, ack=True, port=0,
                 max_streams=None):
        self.name, self.behaviour, self.delay = name, behaviour, delay
        self.window, self.ack, self.max_streams = window, ack, max_streams
        self.requests, self.heads = 0, []
        super().__init__(port)

    def connection(self, sock):
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, validate_outbound_headers=False))
        conn.initiate_connection()
        if self.window is not None:
            conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self.window})
        if self.max_streams is not None:
            conn.update_settings(
                {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams})
        lock = threading.Lock()
        sizes = {}

        def send():
            sock.sendall(conn.data_to_send())

        def answer(stream_id, status, body=None, reset=None):
            body = body if body is not None else \
                b"%s got %d" % (self.name.encode(), sizes.pop(stream_id, 0))
            with lock:
                try:
                    conn.send_headers(stream_id, [(b":status", status),
                                                  (b"content-length", b"%d" % len(body))],
                                      end_stream=not body)
                    if body:
                        conn.send_data(stream_id, body, end_stream=True)
                    if reset is not None and conn.streams.get(stream_id) is not None and \
                            not conn.streams[stream_id].closed:
                        conn.reset_stream(stream_id, reset)     # the request is still open
                    send()
                except (h2.exceptions.ProtocolError, OSError):
                    pass

        def reset(stream_id, code):
            with lock:
                try:
                    conn.reset_stream(stream_id, code)
                    send()
                except (h2.exceptions.ProtocolError, OSError):
                    pass

        def act(stream_id):
            self.requests += 1
            behaviour = self.behaviour
            if behaviour == "500":
                answer(stream_id, b"500")
            elif behaviour == "reset":
                reset(stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
            elif behaviour == "bad-status":
                answer(stream_id, b"abc")
            elif behaviour == "refuse":
                reset(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            elif behaviour == "reset-at-head":
                threading.Timer(0.2, reset, (stream_id,
                                             h2.errors.ErrorCodes.INTERNAL_ERROR)).start()
            elif behaviour == "early-413":
                answer(stream_id, b"413", b"too big!", reset=h2.errors.ErrorCodes.NO_ERROR)
            elif behaviour == "204-length":
                with lock:
                    conn.send_headers(stream_id, [(b":status", b"204"),
                                                  (b"content-length", b"7")], end_stream=True)
                    send()
            elif behaviour == "cut":
                with lock:
                    conn.send_headers(stream_id, [(b":status", b"200"),
                                                  (b"content-length", b"100000")])
                    conn.send_data(stream_id, b"c" * 1000)
                    send()
                threading.Timer(0.1, reset, (stream_id,
                                             h2.errors.ErrorCodes.INTERNAL_ERROR)).start()
            elif behaviour == "message-then-wait":
                with lock:
                    conn.send_headers(stream_id, [(b":status", b"200"),
                                                  (b"content-type", b"application/grpc")])
                    conn.send_data(stream_id, b"%s first" % self.name.encode())
                    send()
            elif behaviour in ("head-then-wait", "head-empty-then-wait"):
                with lock:
                    conn.send_headers(stream_id, [(b":status", b"200")])
                    if behaviour == "head-empty-then-wait":
                        conn.send_data(stream_id, b"")
                    send()

                def later():
                    with lock:
                        try:
                            conn.send_data(stream_id, b"%s later" % self.name.encode(),
                                           end_stream=True)
                            send()
                        except (h2.exceptions.ProtocolError, OSError):
                            pass
                threading.Timer(self.delay, later).start()
            elif behaviour == "head-then-reset":
                with lock:
                    conn.send_headers(stream_id, [(b":status", b"200"),
                                                  (b"content-type", b"application/grpc")])
                    send()
                threading.Timer(self.delay, reset, (stream_id,
                                                    h2.errors.ErrorCodes.INTERNAL_ERROR)).start()
            elif behaviour == "slow":
                threading.Timer(self.delay, answer, (stream_id, b"200")).start()
            else:
                answer(stream_id, b"200")

        with sock:
            with lock:
                send()
            try:
                while data := sock.recv(65536):
                    with lock:
                        events = conn.receive_data(data)
                        send()
                    for event in events:
                        if isinstance(event, h2.events.RequestReceived):
                            self.heads.append(dict(event.headers))
                        if isinstance(event, h2.events.DataReceived):
                            sizes[event.stream_id] = sizes.get(event.stream_id, 0) + \
                                len(event.data)
                            if self.ack:
                                with lock:
                                    conn.acknowledge_received_data(
                                        event.flow_controlled_length, event.stream_id)
                                    send()
                        if isinstance(event, h2.events.RequestReceived) and \
                                self.behaviour in self.AT_HEAD or \
                                isinstance(event, h2.events.StreamEnded) and \
                                self.behaviour not in self.AT_HEAD:
                            act(event.stream_id)
            except (h2.exceptions.ProtocolError, OSError):
                pass
