"""ResponseFramer: the HTTP/1.1 answer a stream's request path writes, as HTTP/2 frames. The
end of the answer rides on its last frame; one write's body is one DATA action."""
import pytest

from gwserver.client.h2server import ResponseFramer

HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\nX-A: 1\r\n\r\n"
STATUS = (b":status", b"200")


@pytest.mark.parametrize("writes, expected", [
    ([HEAD + b"hello"],                                  # the usual small answer: 2 frames
     [("headers", [STATUS, (b"content-length", b"5"), (b"x-a", b"1")], False),
      ("data", b"hello", True)]),
    ([HEAD, b"hel", b"lo"],                              # streamed: the last piece ends it
     [("headers", [STATUS, (b"content-length", b"5"), (b"x-a", b"1")], False),
      ("data", b"hel", False), ("data", b"lo", True)]),
    ([b"HTTP/1.1 204 No Content\r\n\r\n"],                # no body: the head ends the stream
     [("headers", [(b":status", b"204")], True)]),
    ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n"
      b"0\r\ngrpc-status: 0\r\n\r\n"],                    # chunks joined, trailers end it
     [("headers", [STATUS], False), ("data", b"abcde", False),
      ("headers", [(b"grpc-status", b"0")], True)]),
    ([b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"],
     [("headers", [(b":status", b"100")], False), ("headers", [STATUS, (b"content-length",
                                                                         b"0")], True)]),
])
def test_answers_become_frames(writes, expected):
    framer = ResponseFramer(head_only=False)
    got = [action for data in writes for action in framer.feed(data)]
    assert got == expected


def test_a_head_request_gets_the_head_only():
    framer = ResponseFramer(head_only=True)
    assert framer.feed(HEAD) == [("headers", [STATUS, (b"content-length", b"5"),
                                              (b"x-a", b"1")], True)]
