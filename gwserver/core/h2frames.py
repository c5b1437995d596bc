"""h2's frame reader, less one connection error that RFC 9113 makes a stream's, for both HTTP/2
sides (client.h2server, upstream.h2client).

A stream's WINDOW_UPDATE of 0 is a stream error (RFC 9113 6.9), but hyperframe refuses it as
it parses and h2 raises that as the connection's: every other stream of the connection was
cut (another user's, behind a proxy that pools its users on one connection). Here it comes
out as a ``ZeroIncrement`` frame for the caller's state machine to reset its stream. The
connection's own (stream 0), one inside a header block (6.10) and one whose reserved bit is
set (no increment of 0) still end the connection. ``__next__`` wraps h2's own (the same
through 4.x; tests/unit/test_h2_upstream_frames.py fails if it changes).
"""
from h2.exceptions import ProtocolError
from h2.frame_buffer import FrameBuffer
from hyperframe.exceptions import InvalidDataError
from hyperframe.frame import WindowUpdateFrame


class ZeroIncrement(WindowUpdateFrame):
    """A stream's WINDOW_UPDATE of 0 (RFC 9113 6.9: a stream error)."""


class StreamErrorFrames(FrameBuffer):
    """h2's FrameBuffer, but a stream's WINDOW_UPDATE of 0 is a ``ZeroIncrement``."""

    def __next__(self):
        try:
            return super().__next__()
        except ProtocolError as exc:
            data = self._data       # the refused frame is still at the front
            stream_id = int.from_bytes(data[5:9], "big") & 0x7FFFFFFF
            if not (isinstance(exc.__cause__, InvalidDataError) and data[3] == 0x8 and
                    stream_id and data[:3] == b"\0\0\4" and not self._headers_buffer and
                    int.from_bytes(data[9:13], "big") & 0x7FFFFFFF == 0):
                raise
            del data[:13]
            return ZeroIncrement(stream_id)
