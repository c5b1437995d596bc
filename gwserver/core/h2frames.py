"""h2's frame reader, less the connection errors that RFC 9113 makes a stream's or no error,
for both HTTP/2 sides (client.h2server, upstream.h2client).

A stream's WINDOW_UPDATE of 0 is a stream error (RFC 9113 6.9), but hyperframe refuses it as
it parses and h2 raises that as the connection's: every other stream of the connection was
cut (another user's, behind a proxy that pools its users on one connection). Here it comes
out as a ``ZeroIncrement`` frame for the caller's state machine to reset its stream. The
connection's own (stream 0) and one inside a header block (6.10) still end the connection.

A PRIORITY frame whose payload is not 5 bytes is a stream error of type FRAME_SIZE_ERROR
(6.3); hyperframe refused it as the connection's (GOAWAY FRAME_SIZE_ERROR, every stream of a
buggy but harmless client lost). It comes out as a ``PrioritySizeError`` for the caller to
reset its stream (or drop it: a PRIORITY may name a stream never opened).

A WINDOW_UPDATE's reserved bit "MUST be ignored when receiving" (6.9), but hyperframe read
it as part of the increment, past 2^31 - 1: GOAWAY PROTOCOL_ERROR. Where
``reserved_bit_ignored`` is set (the client edge) the bit is dropped and the frame is what
the other 31 bits say (an increment of 0 as above). ``__next__`` wraps h2's own (the same
through 4.x; tests/unit/test_h2_upstream_frames.py fails if it changes). Each case costs
only when hyperframe has refused the frame: nothing on the path of a good one.

A SETTINGS frame with the ACK flag and a payload is a connection error of type
FRAME_SIZE_ERROR (6.5); hyperframe refused it as non-compliant data, which h2 answered GOAWAY
PROTOCOL_ERROR (h2spec 6.5.1 asks for FRAME_SIZE_ERROR): ``SettingsAckWithPayload``.

A frame longer than ``max_frame_size`` is refused as soon as its header is in (GOAWAY
FRAME_SIZE_ERROR, 4.2). h2 checked its length only once all of it had arrived, so a header
that declared 16 MiB had the connection hold whatever followed, up to 16 MiB, however small
the SETTINGS_MAX_FRAME_SIZE it was told (~250 such connections: 4 GiB of a worker). This
costs one look at the header of a frame not yet whole: once a read at most.
"""
from h2.exceptions import (DenialOfServiceError, FrameDataMissingError, FrameTooLargeError,
                           ProtocolError)
from h2.frame_buffer import FrameBuffer
from hyperframe.exceptions import InvalidDataError, InvalidFrameError
from hyperframe.frame import PriorityFrame, WindowUpdateFrame

from .h2limits import SMALL_DATA

WINDOW_UPDATE, PRIORITY, SETTINGS = 0x8, 0x2, 0x4
ACK = 0x1


class SettingsAckWithPayload(FrameDataMissingError):
    """A SETTINGS ACK that carries a payload: GOAWAY FRAME_SIZE_ERROR (RFC 9113 6.5)."""


class ZeroIncrement(WindowUpdateFrame):
    """A stream's WINDOW_UPDATE of 0 (RFC 9113 6.9: a stream error)."""


class PrioritySizeError(PriorityFrame):
    """A stream's PRIORITY whose payload is not 5 bytes (RFC 9113 6.3: a stream error of
    type FRAME_SIZE_ERROR). ``body_len``: the payload's length, as sent."""

    def __init__(self, stream_id, length):
        super().__init__(stream_id)
        self.body_len = length


class StreamErrorFrames(FrameBuffer):
    """h2's FrameBuffer, but a stream's WINDOW_UPDATE of 0 is a ``ZeroIncrement`` and its
    PRIORITY of the wrong size a ``PrioritySizeError``."""

    reserved_bit_ignored = False    # a WINDOW_UPDATE's reserved bit: see the module doc

    def __next__(self):
        try:
            return super().__next__()
        except StopIteration:
            self._refuse_overlong()
            raise
        except ProtocolError as exc:
            frame = self._stream_error_frame(exc)
            if frame is None:
                raise
            return frame

    def _refuse_overlong(self):
        """A frame not yet whole whose header declares more than max_frame_size: its error
        now, not once the bytes it declared have been read and held (see the module doc)."""
        data = self._data
        if len(data) >= 9:
            length = int.from_bytes(data[:3], "big")
            if length > self.max_frame_size:
                raise FrameTooLargeError(f"Received overlong frame: length {length}, max "
                                         f"{self.max_frame_size} (its header)")

    def _stream_error_frame(self, exc):
        """The frame hyperframe refused (still at the front of the buffer), taken off it, if
        it is one of those the module doc names; else None (the connection's error)."""
        data = self._data
        if self._headers_buffer or len(data) < 9:
            return None                     # inside a header block: 6.10
        length = int.from_bytes(data[:3], "big")
        stream_id = int.from_bytes(data[5:9], "big") & 0x7FFFFFFF
        cause = exc.__cause__
        if data[3] == SETTINGS and data[4] & ACK and length:
            raise SettingsAckWithPayload(f"SETTINGS ACK with a payload of {length} bytes "
                                         f"(RFC 9113 6.5)") from exc
        if data[3] == PRIORITY and stream_id and isinstance(cause, InvalidFrameError):
            del data[:9 + length]           # (all of it is in: hyperframe parsed its body)
            return PrioritySizeError(stream_id, length)
        if data[3] != WINDOW_UPDATE or length != 4 or not isinstance(cause, InvalidDataError):
            return None
        increment = int.from_bytes(data[9:13], "big")
        if increment & 0x7FFFFFFF == 0:
            if not stream_id:
                return None                 # the connection's increment of 0: its error
            del data[:13]
            return ZeroIncrement(stream_id)
        if not self.reserved_bit_ignored:
            return None
        del data[:13]
        return WindowUpdateFrame(stream_id, window_increment=increment & 0x7FFFFFFF)


class HeaderBlockTooLarge(DenialOfServiceError):
    """A header block's frames, still without END_HEADERS, hold more than the decoded list
    may (h2 answers it GOAWAY ENHANCE_YOUR_CALM, as it does an HPACK bomb)."""


class BoundedBlocks(StreamErrorFrames):
    """``StreamErrorFrames`` that holds a header block, as sent, to ``max_block`` bytes
    before its END_HEADERS (h2 holds up to 64 frames whatever their size: 1 MiB at the
    default max_frame_size, 1 GiB at 16 MiB), and counts the CONTINUATIONs under
    SMALL_DATA that do not end their block (``fragments``, an empty frame each for the
    flood budget, taken by the connection's count after a read). Both sides read frames
    through one: the client edge (client.h2server) and the HTTP/2 upstreams
    (upstream.h2client). ``_update_header_buffer`` is h2's own (private, the same through
    4.x); test_h2client_attack_dec05c.py fails if it changes."""

    max_block = 64 * 1024   # h2's default max_header_list_size; the client edge's: its own
    held_bytes = 0          # of the block held: a sum per frame cost a block of 64 frames
    #                         2,000 len() calls, a third of a CONTINUATION flood's parse
    fragments = 0           # small CONTINUATIONs that did not end their block, not yet taken

    def _update_header_buffer(self, f):
        frame = super()._update_header_buffer(f)
        held = self._headers_buffer
        if not held:
            self.held_bytes = 0
            return frame
        size = len(f.data)
        if len(held) > 1 and size < SMALL_DATA:
            # A CONTINUATION that does not end the block carries part of a head too large
            # for one frame, so a whole frame of it; one of under 1 KiB carries nothing that
            # needs it. Unweighed, blocks of 63 empty CONTINUATIONs on a stream the client
            # had reset (each block dropped, one empty frame) took 61% of a worker's core
            # and made another client wait 5 s (the CONTINUATION flood of 2024).
            self.fragments += 1
        self.held_bytes = size = self.held_bytes + size
        if size > self.max_block:
            raise HeaderBlockTooLarge(f"header block over {self.max_block} bytes before "
                                      f"its END_HEADERS ({len(held)} frames)")
        return frame

    def take_fragments(self):
        """-> the small CONTINUATIONs counted since the last call (an empty frame each)."""
        fragments, self.fragments = self.fragments, 0
        return fragments
