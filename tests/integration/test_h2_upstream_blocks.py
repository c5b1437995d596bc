"""An HTTP/2 upstream's header blocks, weighed as the client edge's are (core.h2frames.
BoundedBlocks): the client side counted a CONTINUATION under 1 KiB that does not end its
block as an empty frame since 895682f; the upstream side still read blocks of them as one
frame each. An upstream that answered each request with 15 interim (103) heads of 60 empty
CONTINUATIONs each had the worker parse ~900 frames a request, weighed as none, however
fast it sent them. Against real processes: a gateway and a scripted h2c upstream."""
import threading

import h2.events
from hyperframe.frame import ContinuationFrame, HeadersFrame

from ..conftest import wait_until
from ..h2_upstreams import EventH2cUpstream
from .test_h2_upstream_fields import answer_to
from .test_h2_upstream_streams import gateway_to

EARLY_HINTS = b"\x08\x03103"        # :status 103, a literal of the static table's name


def interim_blocks(stream_id, count=15, fragments=60):
    """``count`` 103 heads, each a HEADERS and ``fragments`` empty CONTINUATIONs before the
    one that ends the block."""
    head = HeadersFrame(stream_id, EARLY_HINTS).serialize()
    empty = ContinuationFrame(stream_id, b"").serialize()
    last = ContinuationFrame(stream_id, b"")
    last.flags.add("END_HEADERS")
    return (head + empty * fragments + last.serialize()) * count


class FragmentingH2Upstream(EventH2cUpstream):
    """Answers each request 200 "ok", after interim_blocks(); counts the GOAWAYs it gets."""

    def __init__(self):
        self.goaways = []
        super().__init__()

    def on_event(self, conn, sock, event):
        if isinstance(event, h2.events.ConnectionTerminated):
            self.goaways.append(event.error_code)
        elif isinstance(event, h2.events.RequestReceived):
            sock.sendall(conn.data_to_send() + interim_blocks(event.stream_id))
            conn.send_headers(event.stream_id, [(":status", "200"), ("content-length", "2")])
            conn.send_data(event.stream_id, b"ok", end_stream=True)


def test_an_upstreams_small_continuations_are_weighed(launcher):
    upstream = FragmentingH2Upstream()
    try:
        gw = gateway_to(launcher, upstream)
        get = b"GET /x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
        assert answer_to(gw.port, get).startswith(b"HTTP/1.1 200")  # one: within budget
        answers, flooded = [], threading.Event()

        def client():
            while not flooded.is_set() and len(answers) < 400:
                answers.append(answer_to(gw.port, get)[:12])
        clients = [threading.Thread(target=client) for _ in range(8)]
        for thread in clients:          # ~900 fragments a request, 8 requests at a time
            thread.start()
        try:
            # Past the budget (10,000 frames with nothing to relay a second) the connection
            # is ended as a flood, as one of empty DATA or PINGs is; requests on it are 502s.
            wait_until(lambda: "flood" in gw.log(), timeout=15)
        finally:
            flooded.set()
            for thread in clients:
                thread.join(30)
        assert upstream.goaways and upstream.goaways[0] == 11, upstream.goaways
        assert b"HTTP/1.1 502" in answers, answers
    finally:
        upstream.close()
