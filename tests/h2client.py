"""A hand-driven HTTP/2 client (the h2 library over a socket) for tests where real clients
cannot misbehave: it sends what it is told, frames included, and reports every event."""
import socket
import ssl
import time

import h2.config
import h2.connection
import h2.events


class RawH2:
    def __init__(self, port, settings=None, timeout=5.0, validate=True, tls=False):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if tls:                 # h2 by ALPN; the certificate is not what these tests check
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            context.set_alpn_protocols(["h2"])
            self.sock = context.wrap_socket(self.sock, server_hostname="localhost")
            assert self.sock.selected_alpn_protocol() == "h2"
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=validate,
            normalize_outbound_headers=validate))
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)
        self.events = []
        self.closed = False
        self.flush()

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            try:
                self.sock.sendall(data)
            except OSError:
                self.closed = True

    def send_raw(self, data):
        try:
            self.sock.sendall(data)
        except OSError:
            self.closed = True

    def request(self, path, method="GET", headers=(), body=None, authority="localhost",
                end=True):
        sid = self.conn.get_next_available_stream_id()
        fields = [(b":method", method.encode()), (b":scheme", b"http"),
                  (b":path", path.encode()), (b":authority", authority.encode()),
                  *[(k.encode() if isinstance(k, str) else k,
                     v.encode() if isinstance(v, str) else v) for k, v in headers]]
        self.conn.send_headers(sid, fields, end_stream=end and not body)
        if body:
            self.conn.send_data(sid, body, end_stream=end)
        self.flush()
        return sid

    def pump(self, until, timeout=5.0):
        """Read and process until ``until(self)`` is true or the peer closes; -> bool."""
        deadline = time.monotonic() + timeout
        while not until(self):
            if self.closed or time.monotonic() > deadline:
                return until(self)
            self.sock.settimeout(max(0.01, min(0.5, deadline - time.monotonic())))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                self.closed = True
                continue
            if not data:
                self.closed = True
                continue
            try:
                events = self.conn.receive_data(data)
            except Exception as exc:          # a frame our state machine dislikes
                self.events.append(exc)
                continue
            self.keep(events)
            self.flush()
        return True

    def keep(self, events):
        """Record ``events``, giving back the flow-control credit of the DATA among them
        (sent with the next flush)."""
        for event in events:
            self.events.append(event)
            if isinstance(event, h2.events.DataReceived):
                self.conn.acknowledge_received_data(event.flow_controlled_length,
                                                    event.stream_id)

    def response(self, sid, timeout=5.0):
        """-> (status, headers dict, body, trailers dict) or None if the stream was reset
        before its answer ended (a reset after it, as the gateway sends when it answered
        before the request's body was in, often comes in the same read)."""
        self.pump(lambda c: c.ended(sid) or c.reset_code(sid) is not None, timeout)
        if self.reset_code(sid) is not None and not self.ended(sid):
            return None
        status, headers, body, trailers = None, {}, b"", {}
        for e in self.events:
            if getattr(e, "stream_id", None) != sid:
                continue
            if isinstance(e, h2.events.ResponseReceived):
                headers = {bytes(k).decode(): bytes(v).decode() for k, v in e.headers}
                status = int(headers.pop(":status"))
            elif isinstance(e, h2.events.DataReceived):
                body += e.data
            elif isinstance(e, h2.events.TrailersReceived):
                trailers = {bytes(k).decode(): bytes(v).decode() for k, v in e.headers}
        return status, headers, body, trailers

    def head_delay(self, sid, started, timeout=5.0):
        """Seconds from ``started`` (time.monotonic) until stream ``sid``'s answer head came
        (pumped until it does, or ``timeout``)."""
        self.pump(lambda c: any(isinstance(e, h2.events.ResponseReceived) and
                                e.stream_id == sid for e in c.events), timeout)
        return time.monotonic() - started

    def ended(self, sid):
        return any(isinstance(e, h2.events.StreamEnded) and e.stream_id == sid
                   for e in self.events)

    def reset_code(self, sid):
        for e in self.events:
            if isinstance(e, h2.events.StreamReset) and e.stream_id == sid:
                return e.error_code
        return None

    def goaway(self):
        for e in self.events:
            if isinstance(e, h2.events.ConnectionTerminated):
                return e
        return None

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
