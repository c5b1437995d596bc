"""Log lines a client can cause, at most one per second per kind.

A refused PROXY header, a failed TLS handshake or a malformed HTTP/2 stream is worth a line
to an operator, but anyone who can connect can cause one per connection or per stream: a
flood of them would fill the disk and bury every other line. ``ThrottledLog`` writes the
first line of a kind in each interval and counts the rest; the next line written says how
many were left out. Kinds are fixed names chosen by the caller, never a client's address, so
the state stays a handful of entries whoever connects.
"""
import time


class ThrottledLog:
    """At most one line per ``interval`` seconds per ``kind``, through ``logger``."""

    def __init__(self, logger, interval=1.0, clock=time.monotonic):
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._kinds = {}        # kind -> [when its last line was written, lines left out since]

    def log(self, level, kind, msg, *args):
        if not self.logger.isEnabledFor(level):
            return
        now = self.clock()
        entry = self._kinds.get(kind)
        if entry is not None and now - entry[0] < self.interval:
            entry[1] += 1
            return
        left_out = entry[1] if entry is not None else 0
        self._kinds[kind] = [now, 0]
        if left_out:
            msg += " (and %d more like it since the last such line, not logged)"
            args += (left_out,)
        self.logger.log(level, msg, *args)
