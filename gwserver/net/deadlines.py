"""Every timeout of a worker, enforced by one ticker greenlet.

A ``gevent.Timeout`` per socket wait costs a timer start and cancel on every read; with thousands
of reads a second that is measurable (docs/benchmarks.md, "Design measurements the code
cites": part of the 4,400 -> 11,600 req/s step). Instead, code that is about to wait *arms* a
deadline for an owner, and the ticker, waking every
``interval``, calls ``owner.expire()`` for each one that is overdue. Owners expire by closing the
socket they wait on: gevent then raises in the waiting greenlet at once, at a point where it is
expecting socket errors, which is safer than throwing an exception into an arbitrary frame.

Deadlines are therefore enforced to within ``interval`` (50 ms in workers) late, never early,
fine for timeouts that are seconds long. ``now`` is a cached monotonic clock that the hot path
may read for free.
"""
import logging
import time

import gevent

log = logging.getLogger("gwserver.worker")


class WriteDeadline:
    """A connection's deadline owner for its writes. A write waiting in one greenlet and a
    read in another (a relay sending an early answer while the upload is still read) need a
    deadline each: with one owner, either's disarm cancels the other's, and a client that
    never reads would hold the writer forever. Expiring closes the connection all the same."""

    __slots__ = ("expire",)

    def __init__(self, expire):
        self.expire = expire


class Deadlines:
    def __init__(self, interval=0.1, on_tick=None):
        self.interval = interval
        self.now = time.monotonic()
        self._armed = {}
        self._on_tick = on_tick
        self._ticker = None

    def start(self):
        self._ticker = gevent.spawn(self._run)

    def stop(self):
        if self._ticker is not None:
            self._ticker.kill(block=False)

    def arm(self, owner, seconds):
        # From the clock, not the cached ``now``: that is as old as the last tick (more when
        # the loop was busy), and a deadline must never fire before its time.
        self._armed[owner] = time.monotonic() + seconds

    def disarm(self, owner):
        self._armed.pop(owner, None)

    def until(self, owner):
        """When ``owner``'s deadline falls (the monotonic clock), or None if none is armed."""
        return self._armed.get(owner)

    def owners(self):
        """The owners armed now (a copy: expiring one changes the set)."""
        return list(self._armed)

    def _run(self):
        while True:
            gevent.sleep(self.interval)
            self.tick()

    def tick(self):
        self.now = now = time.monotonic()
        if self._armed:
            overdue = [owner for owner, deadline in self._armed.items() if deadline <= now]
            for owner in overdue:
                del self._armed[owner]
                try:
                    owner.expire()
                except Exception:  # an owner's cleanup must never stop the ticker
                    pass
        if self._on_tick is not None:
            try:
                self._on_tick()
            except Exception:      # a bad state file must never stop every deadline
                log.exception("worker tick failed")
