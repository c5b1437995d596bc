"""A streamed request body reaches the upstream whole, however its end arrives.

An HTTP/2 client's body is filled in by its connection's reader, a greenlet of its own: the last
piece and the end of the body can arrive while the proxy waits in a send. Found by an attack
pass: the loop then returned without sending that piece (or the end of the chunked body), and
an upstream connection that answered early went back to the pool still owed those bytes."""
from types import SimpleNamespace

from gwserver.core.context import RequestContext
from gwserver.upstream.h2proxy import H2Forwarder, TakenBody
from gwserver.upstream.proxy import Proxy

ROUTE = SimpleNamespace(max_body_size=0, read_timeout=5.0)


class Client:
    """The client side as the proxy sees it; the body arrives elsewhere (another greenlet)."""

    def send_continue(self, req):
        pass

    def read_body(self, watch=None, timeout=None):
        return False                        # (True: ``watch``, the upstream, spoke first)


def streamed_request():
    req = RequestContext("127.0.0.1", "http")
    req.body, req.body_size, req.chunked = [b"first"], 5, True
    return req


def the_end_arrives(req):
    req.body.append(b"last")
    req.body_size += 4
    req.complete = True


def test_http1_upstream_gets_the_piece_and_the_end_that_came_during_a_send():
    req = streamed_request()
    sent = []

    def send_piece(ex, data, route, stale_ok=False):
        sent.append(data)
        if len(sent) == 1:
            the_end_arrives(req)
        return True                         # taken, not answered

    proxy = Proxy.__new__(Proxy)
    proxy.send_piece = send_piece
    proxy.answered_between = lambda ex, route: False
    ex = SimpleNamespace(request_cut=False, sock=None)
    proxy.stream_request_body(Client(), req, ex, ROUTE)
    assert b"".join(sent) == b"5\r\nfirst\r\n4\r\nlast\r\n0\r\n\r\n"
    assert not ex.request_cut


def test_http2_upstream_gets_the_piece_and_the_end_that_came_during_a_send():
    req = streamed_request()
    sent = []

    class Connection:
        def send_body(self, stream_id, stream, data, timeout, end):
            sent.append((data, end))
            if len(sent) == 1:
                the_end_arrives(req)

    stream = SimpleNamespace(stream_id=1, stream=SimpleNamespace(awaiting_client=False),
                             fail=lambda exc: sent.append(exc))
    taken = TakenBody(b"head's")
    H2Forwarder.__new__(H2Forwarder).send_body(Client(), req, ROUTE, Connection(), stream,
                                               taken)
    assert sent == [(b"first", False), (b"last", True)]
    # kept for a refused stream's second try: all of it, in order, and that it ended
    assert taken.pieces == [b"head's", b"first", b"last"] and taken.ended
