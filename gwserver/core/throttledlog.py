"""Log lines a client (or a broken upstream) can cause, at most one per second per kind.

A refused PROXY header, a failed TLS handshake, a malformed HTTP/2 stream, an upstream that
fails every request: each is worth a line to an operator, but whoever causes one can cause
thousands a second, which fills the disk and buries every other line. ``ThrottledLog``
writes the first line of a kind in each second and counts the rest; the next line written
says how many were left out. When a burst stops, ``flush`` (the worker's tick) writes the
last line left out with the count of the others, so every event is accounted for.

Kinds are fixed names, or names and a route id and an error, never a client's address: the
state stays small whoever connects, and kinds quiet for a minute are forgotten.

Logging is process-wide, like ``logging`` itself: ``throttled_log`` is the one instance of a
process, and a worker's tick flushes it.
"""
import time

FORGET_AFTER = 60.0     # seconds a kind with nothing to tell is remembered


class ThrottledLog:
    """At most one line per ``interval`` seconds per ``kind``."""

    def __init__(self, interval=1.0, clock=time.monotonic):
        self.interval = interval
        self.clock = clock
        # kind -> [when its last line was written, lines left out since, the last of them]
        self._kinds = {}

    def log(self, logger, level, kind, msg, *args, exc_info=None):
        """``logger.log(level, msg, *args)``, unless a line of ``kind`` was written less than
        ``interval`` ago. ``exc_info``: an exception whose traceback the line shows."""
        if not logger.isEnabledFor(level):
            return
        now = self.clock()
        entry = self._kinds.get(kind)
        if entry is not None and now - entry[0] < self.interval:
            entry[1] += 1
            entry[2] = (logger, level, msg, args, exc_info)
            return
        self._kinds[kind] = [now, 0, None]
        self._write(logger, level, msg, args, exc_info, entry[1] if entry is not None else 0)

    def flush(self, everything=False):
        """Tell what was left out: for each kind whose second is over (every kind, when the
        process is about to exit), its last line left out, with the count of the others."""
        now = self.clock()
        for kind, (written, left_out, last) in list(self._kinds.items()):
            if now - written < self.interval and not everything:
                continue
            if left_out:
                self._kinds[kind] = [now, 0, None]
                logger, level, msg, args, exc_info = last
                self._write(logger, level, msg, args, exc_info, left_out - 1)
            elif now - written > FORGET_AFTER:
                del self._kinds[kind]

    @staticmethod
    def _write(logger, level, msg, args, exc_info, left_out):
        if left_out:
            msg += " (and %d more like it since the last such line, not logged)"
            args += (left_out,)
        logger.log(level, msg, *args, exc_info=exc_info)


throttled_log = ThrottledLog()
