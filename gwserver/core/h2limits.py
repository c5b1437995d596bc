"""What an HTTP/2 peer's small frames may cost, shared by the client side (client.h2server) and
the upstream side (upstream.h2client). Pure: the caller passes the time.

- ``SMALL_DATA``: a DATA frame with fewer bytes than this that does not end its stream costs
  about what an empty frame does to parse (~19 us here for one byte, 350 times what 16 KiB
  frames cost a byte), yet a gRPC stream of small messages sends one frame per message: the
  readers pace such frames past their budget rather than cut the connection.
- ``WindowPacer``: the sending side of the same cost. A peer that opens its window a byte at
  a time, and again once it has the byte (a WINDOW_UPDATE ping-pong), makes the gateway send
  one 1-byte DATA frame per update: ~65 us each, 40% of a worker's core from one upstream in
  an attack pass, while every frame sent raised the peer's flood budget. That is TCP's silly
  window syndrome (RFC 1122 4.2.3.4); a frame smaller than SMALL_DATA made only because the
  window is that small while more data waits is counted, and past ``SILLY_SENDS_PER_SECOND``
  in a second the sender waits for the second to end. Streams of small messages are not
  counted (their frames are small because the messages are).
"""

SMALL_DATA = 1024
SILLY_SENDS_PER_SECOND = 100


def silly(window, waiting):
    """Would sending ``window`` of the ``waiting`` bytes make a frame under SMALL_DATA only
    because the window is that small?"""
    return 0 < window < SMALL_DATA and window < waiting


class WindowPacer:
    """Per connection: ``pause(now)``, for each silly send -> seconds the sender should wait
    before making it (0.0: send now)."""

    __slots__ = ("count", "since")

    def __init__(self):
        self.count, self.since = 0, 0.0

    def pause(self, now):
        if now - self.since >= 1.0:
            self.since, self.count = now, 0
        self.count += 1
        return 0.0 if self.count <= SILLY_SENDS_PER_SECOND else self.since + 1.0 - now
