"""What an HTTP/2 peer's small frames may cost, shared by the client side (client.h2server) and
the upstream side (upstream.h2client). Pure: the caller passes the time.

- ``SMALL_DATA``: a DATA frame with fewer bytes than this that does not end its stream costs
  about what an empty frame does to parse (~19 us here for one byte, 350 times what 16 KiB
  frames cost a byte), yet a gRPC stream of small messages sends one frame per message: the
  readers pace such frames past their budget rather than cut the connection.
- A peer that opens its window a byte at a time, and again once it has the byte (a
  WINDOW_UPDATE ping-pong), made the gateway send one 1-byte DATA frame per update as fast as
  the two could go: a client took 53% of a core, an upstream 63% (an attack pass), and each
  frame sent raised its flood budget. That is TCP's silly window syndrome (RFC 1122
  4.2.3.4). A send is ``silly`` when the window, not the data, makes the frame smaller than
  SMALL_DATA, and the update that opened the window was ``tiny`` for the peer's own windows;
  past ``SILLY_SENDS_PER_SECOND`` in a second (``WindowPacer``) the sender waits for the
  second to end. Both conditions matter: the small remainder of a window opened in big steps
  is common (a quarter of the frames of an nghttp2 download), and a client whose windows are
  1 KiB (``nghttp -w 10``) opens them half a window at a time; neither is slowed (a first
  version that counted every window-limited small frame held both to 100 frames a second).
"""

SMALL_DATA = 1024
SILLY_SENDS_PER_SECOND = 100
# Ended streams a connection remembers, either side (h2's _closed_streams; a client
# connection at least twice its max_concurrent_streams), ~120 bytes each: h2 keeps 65,536,
# ~11 MB of a connection that carried that many requests, for its life.
CLOSED_STREAMS = 1024


def tiny_update(increment, initial_window):
    """Is a WINDOW_UPDATE of ``increment`` tiny for a peer whose SETTINGS_INITIAL_WINDOW_SIZE
    is ``initial_window``? Under a quarter of that window (peers open theirs half a window at
    a time), under SMALL_DATA, and in any case under 16 bytes."""
    return increment < max(16, min(SMALL_DATA, initial_window >> 2))


def silly(window, waiting, opened_by_tiny_update):
    """Would sending ``window`` of the ``waiting`` bytes be a silly-window send?"""
    return opened_by_tiny_update and 0 < window < SMALL_DATA and window < waiting


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


def fed_from_window(conn, starved):
    """When a connection's send window opened: pop and return, oldest first, the waiters in
    ``starved`` (stream id -> a waiter with ``pending`` bytes to send) that the window can
    feed, each taking what it holds up to its stream's own window. ``conn`` is h2's
    H2Connection. Waking every waiter on each WINDOW_UPDATE let a peer that opens the window
    a byte at a time wake all of them for each byte (90% of a core with 100 waiting)."""
    budget = conn.outbound_flow_control_window
    fed = []
    while budget > 0 and starved:
        stream_id = next(iter(starved))
        waiter = starved.pop(stream_id)
        state = conn.streams.get(stream_id)
        if state is not None:
            budget -= max(0, min(state.outbound_flow_control_window, waiter.pending))
        fed.append(waiter)
    return fed
