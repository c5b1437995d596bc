"""An HTTP/2 upstream that answers before it has the request body, then resets the stream
(RFC 9113 8.1 allows both: nginx does it when it cannot take a body). Found by an attack
pass: the gateway's body sender was still parked in the client's socket when the connection
lingered on it (an unhandled ConcurrentObjectUseError), a chunked body hit the closed stream
(an unhandled StreamClosedError, a 500), and the answer promised keep-alive with the body
half read."""
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import pytest

from ..conftest import gateway_conf
from ..h2_upstreams import H2cUpstream
from .test_h2_upstream_fields import answer_to, body_of


class EarlyH2Upstream(H2cUpstream):
    """h2c with prior knowledge: a request whose body is still coming gets 403 "nope" at
    once, then RST_STREAM(NO_ERROR); what else the gateway sends is read and ignored."""

    def connection(self, sock):
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        with sock:
            sock.sendall(conn.data_to_send())
            try:
                while data := sock.recv(65536):
                    for event in conn.receive_data(data):
                        if isinstance(event, h2.events.RequestReceived) and \
                                event.stream_ended is None:
                            conn.send_headers(event.stream_id, [(b":status", b"403"),
                                                                (b"content-length", b"4")])
                            conn.send_data(event.stream_id, b"nope", end_stream=True)
                            conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.NO_ERROR)
                    sock.sendall(conn.data_to_send())
            except (h2.exceptions.ProtocolError, OSError):
                pass


@pytest.fixture
def gw(launcher):
    upstream = EarlyH2Upstream()
    try:
        yield launcher.gateway(gateway_conf([
            {"id": "h2", "paths": ["/*rest"], "upstream": {
                "targets": [{"url": f"http://127.0.0.1:{upstream.port}"}], "protocol": "h2"}}]))
    finally:
        upstream.close()


def post(port, framing, body_bytes):
    """A POST whose body is longer than request_buffer_size (so it streams); the answer."""
    if framing == "length":
        return answer_to(port, b"POST /up HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n"
                         % (body_bytes * 2) + b"x" * body_bytes)
    return answer_to(port, b"POST /up HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n"
                     b"\r\n%x\r\n%s\r\n" % (body_bytes, b"x" * body_bytes))


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_an_early_answer_and_reset_is_relayed_and_ends_the_connection(gw, framing):
    answer = post(gw.port, framing, 200_000)
    head = answer.partition(b"\r\n\r\n")[0].lower()
    if framing == "length":
        assert answer.startswith(b"HTTP/1.1 403") and body_of(answer) == b"nope", answer[:300]
    else:   # the stream was gone before the first piece went out: no answer to relay yet
        assert answer.startswith((b"HTTP/1.1 403", b"HTTP/1.1 502")), answer[:300]
    assert b"connection: close" in head and b"keep-alive" not in head
    log = gw.log()
    assert "unhandled error" not in log and "ConcurrentObjectUseError" not in log, log[-2000:]
