"""A streamed request body (over server.request_buffer_size) cannot be sent twice, so it does
not go out on a pooled connection idle long enough for its upstream to be closing it."""
import threading
import time

from ..conftest import gateway_conf, route
from .test_attack_pass_dec03 import RecordingHttp1

IDLE_CLOSE = 1.2        # the upstream's keep-alive timeout, as Node's 5 s or gunicorn's 2 s


class ClosesIdleAsTheRequestComes(RecordingHttp1):
    """Closes a connection unanswered when a request comes on it after IDLE_CLOSE without
    one: its idle timer fired as the request arrived, the race every keep-alive pool meets."""

    def __init__(self):
        self.last = {}
        super().__init__()

    def answer(self, head, count):
        me = threading.get_ident()
        if count > 1 and time.monotonic() - self.last[me] > IDLE_CLOSE:
            return None
        self.last[me] = time.monotonic()
        return super().answer(head, count)


def test_a_streamed_body_does_not_go_out_on_a_connection_idle_too_long(launcher):
    up = ClosesIdleAsTheRequestComes()
    try:
        gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], up.url)]))
        assert gw.request("GET", "/warm")[0].status == 200     # a pooled connection
        time.sleep(IDLE_CLOSE + 0.3)
        body = b"x" * (200 << 10)           # streamed: over the 64 KiB request_buffer_size
        # Reused, the upload reached an upstream that closed the connection unanswered, and
        # with its bytes gone it could not be sent again: a 502.
        resp, data = gw.request("POST", "/upload", body=body)
        assert resp.status == 200, (resp.status, data[:200])
        assert len(up.conns) == 2
        # A connection used a moment ago is reused for the next upload.
        resp, _ = gw.request("POST", "/upload", body=body)
        assert resp.status == 200 and len(up.conns) == 2
    finally:
        up.close()
