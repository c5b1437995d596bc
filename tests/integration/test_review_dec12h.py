"""Review r8 of 5c6a473, 6cdb560 and ee250a6, against a real gateway and an h2c upstream on
loopback.

1. 6cdb560 weighs a header block relayed nowhere (late trailers of a call the gateway reset)
   by the wall time its decoding took (perf_counter), one per 12 us. A worker that is
   stopped while it decodes (its CPU quota used up, as a container's; preempted on a busy
   host; collecting garbage) has the block weigh the time it was stopped: a 50 ms stop in a
   ~10 us decode weighed one 240-byte block ~4,300, and an upstream that sent the late
   trailers of 3,000 reset calls had its connection, every call on it, cut as a flood
   (ENHANCE_YOUR_CALM) on a worker held to ~4% of a core. A block now weighs at most one per
   8 bytes as sent (30 for those; what it weighed before 6cdb560), by its time below that.
"""
import os
import signal
import threading
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from hyperframe.frame import HeadersFrame

from gwserver.core.h2fields import FieldEncoder

from ..conftest import gateway_conf
from .test_attack_dec12a import HostileH2Upstream, get

TRAILERS = 3000     # late trailer blocks of ~240 bytes: 1 to 5 each (budget: 10,000 a second)


class LateTrailersUpstream(HostileH2Upstream):
    """/reset-then-trailers: a malformed answer the gateway resets, then TRAILERS gRPC-like
    trailer blocks on that stream (what the late trailers of as many reset calls weigh),
    back to back; else as HostileH2Upstream."""

    def connection(self, sock):
        self.connections += 1
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_outbound_headers=False))
        conn.encoder = FieldEncoder()       # never indexes: each block decoded whole
        conn.initiate_connection()
        with sock:
            try:
                sock.sendall(conn.data_to_send())
                while data := sock.recv(65536):
                    for event in conn.receive_data(data):
                        if not isinstance(event, h2.events.RequestReceived):
                            continue
                        sid, path = event.stream_id, dict(event.headers)[b":path"]
                        if path == b"/reset-then-trailers":
                            conn.send_headers(sid, [(b":status", b"200"),
                                                    (b"content-length", b"2")])
                            conn.send_data(sid, b"x" * 7, end_stream=True)
                            sock.sendall(conn.data_to_send())
                            threading.Thread(target=self.late, args=(sock, conn, sid),
                                             daemon=True).start()
                        else:
                            conn.send_headers(sid, [(b":status", b"200"),
                                                    (b"content-length", b"2")])
                            conn.send_data(sid, b"ok", end_stream=True)
                    sock.sendall(conn.data_to_send())
            except (h2.exceptions.ProtocolError, OSError):
                pass

    def late(self, sock, conn, sid):
        time.sleep(0.2)         # the gateway resets the stream (a malformed answer)
        try:
            for n in range(TRAILERS):
                block = HeadersFrame(sid)
                block.data = conn.encoder.encode([
                    (b"grpc-status", b"4"), (b"grpc-message", b"deadline exceeded after "
                     b"%d.%03ds: the call to the inventory service did not answer in time; "
                     % (n % 7, n) + b"retry later " * 20)])
                block.flags.add("END_HEADERS")
                block.flags.add("END_STREAM")
                sock.sendall(block.serialize())
        except OSError:
            pass


def throttled(pid, seconds, run=0.002, stopped=0.05):
    """The worker ``pid`` held to a CPU quota, as a container's (CFS bandwidth control: once
    its quota of the period is used, the group is stopped until the period ends): ``run``
    seconds running, ``stopped`` stopped, for ``seconds``."""
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            time.sleep(run)
            os.kill(pid, signal.SIGSTOP)
            time.sleep(stopped)
            os.kill(pid, signal.SIGCONT)
    finally:
        os.kill(pid, signal.SIGCONT)


def test_late_trailers_on_a_throttled_worker_are_no_flood(launcher):
    upstream = LateTrailersUpstream()
    try:
        gw = launcher.gateway(gateway_conf([
            {"id": "h2", "paths": ["/*rest"], "upstream": {
                "targets": [{"url": f"http://127.0.0.1:{upstream.port}"}], "protocol": "h2"}}]))
        assert get(gw, b"/before").startswith(b"HTTP/1.1 200")
        answer = get(gw, b"/reset-then-trailers")
        assert answer.startswith(b"HTTP/1.1 502"), answer[:200]
        # the blocks come while the worker is held to a quota (~4% of a core)
        throttled(gw.worker_pids()[0], 2.5)
        # was: "upstream flood" in the log, the connection cut (the next call on a new one):
        # a stop that came while a block was decoded weighed that block ~4,000
        assert "flood" not in gw.log(), gw.log()[-1500:]
        assert get(gw, b"/after").startswith(b"HTTP/1.1 200")
        assert upstream.connections == 1, upstream.connections
    finally:
        upstream.close()
