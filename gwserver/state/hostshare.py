"""What a host's workers tell each other about upstreams, so that the retry budget and the
skip of a target that refused a connection hold per host, as per-host rate limits do: with
eight workers a dead target costs a connect a second per host, not eight.

Each worker writes its own small file, ``<state_dir>/share/<pid>.json``, replaced whole by
rename (a reader never sees half of one), and reads the others' on its 50 ms tick when their
stamp changed. Nothing is read or written per request: a refused connect is published at
once (a rare event), request and retry counts once a second. A file not rewritten for
``STALE`` seconds belongs to a worker that is gone and is ignored (and removed).
"""
import hashlib
import json
import logging
import os
import time

from ..files import write_remedy

log = logging.getLogger("gwserver.share")

PUBLISH_EVERY = 1.0     # seconds between publishing request and retry counts
STALE = 15.0            # a worker that has not written for this long is gone


class HostShare:
    def __init__(self, directory):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, f"{os.getpid()}.json")
        self.counts = {}            # upstream id -> [requests, retries] in the budget window
        self.refused = {}           # target url -> until (monotonic: one clock per host)
        self.published_at = 0.0
        self._peers = {}            # file name -> (stamp, _read_share's or None)
        self.failing = False        # publishing fails (a full disk): said once, not a second

    def publish(self, now, counts=None):
        if counts is not None:
            self.counts = counts
        self.refused = {url: until for url, until in self.refused.items() if until > now}
        # "wall": staleness is judged by the wall clock, which survives a reboot; "refused"
        # holds monotonic times, comparable between the processes of one boot only.
        data = json.dumps({"wall": time.time(), "counts": self.counts,
                           "refused": self.refused})
        tmp = f"{self.path}.tmp"
        try:
            with open(tmp, "w") as f:
                f.write(data)
            os.replace(tmp, self.path)
        except OSError as exc:      # a full disk must not fail requests: sharing just stops
            if not self.failing:
                self.failing = True
                log.warning("cannot publish to %s: %s; the host's workers no longer share "
                            "retry budgets and refused targets until it can: %s",
                            self.directory, exc.strerror, write_remedy(exc))
            self.published_at = now
            return
        if self.failing:
            self.failing = False
            log.warning("publishing to %s again", self.directory)
        self.published_at = now

    def refuse(self, url, until, now):
        """This worker could not connect to ``url``: the others skip it until ``until``
        (published at once, unless that only moves a published skip by under half of it:
        a single-target upstream that is down refuses every request)."""
        published = self.refused.get(url, 0.0)
        self.refused[url] = until
        if until - published >= (until - now) / 2:
            self.publish(now)

    def claim_probe(self, url, until, period):
        """When the host's skip of ``url`` (ending at ``until``) runs out, every worker would
        try it at once; one wins this claim (an O_EXCL create) and tries, the rest skip it a
        while longer. Skips that end within the same ``period`` share one claim. True for
        the winner, and for everyone if the claim cannot be made."""
        key = hashlib.blake2b(f"{url} {until // period:.0f}".encode(),
                              digest_size=8).hexdigest()
        try:
            os.close(os.open(os.path.join(self.directory, f"probe-{key}"),
                             os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            return True
        except FileExistsError:
            return False
        except OSError:
            return True

    def peers(self, now):
        """(counts summed over the other live workers, their refused targets)."""
        counts, refused, seen = {}, {}, set()
        try:
            entries = list(os.scandir(self.directory))
        except OSError:
            return counts, refused
        own = os.path.basename(self.path)
        for entry in entries:
            name = entry.name
            if name.startswith("probe-"):
                try:
                    if time.time() - entry.stat().st_mtime > STALE:
                        _remove(entry.path)     # a claim long decided
                except OSError:
                    pass
                continue
            if name == own or not name.endswith(".json"):
                continue
            seen.add(name)
            try:
                stat = entry.stat()
            except OSError:
                continue
            stamp = (stat.st_ino, stat.st_mtime_ns)
            known = self._peers.get(name)
            if known is None or known[0] != stamp:
                try:
                    with open(entry.path) as f:
                        data = json.load(f)
                except (OSError, ValueError):
                    continue
                try:
                    known = self._peers[name] = (stamp, _read_share(data))
                except (AttributeError, TypeError, ValueError):
                    # JSON, but no worker's share (another tool's file, another build's):
                    # it raised in every worker's tick, and what the tick does after it
                    # (idle connections closed, pools pruned) stopped
                    known = self._peers[name] = (stamp, None)
            if known[1] is None:
                continue
            wall, their_counts, their_refused = known[1]
            if time.time() - wall > STALE:
                if time.time() - stat.st_mtime > STALE:
                    _remove(entry.path)     # a worker that is gone, or from a former boot
                continue
            for upstream_id, requests, retries in their_counts:
                total = counts.setdefault(upstream_id, [0, 0])
                total[0] += requests
                total[1] += retries
            for url, until in their_refused:
                if until > now and until > refused.get(url, 0):
                    refused[url] = until
        for name in set(self._peers) - seen:
            del self._peers[name]
        return counts, refused

    def close(self):
        _remove(self.path)


def _read_share(data):
    """(wall time, [(upstream id, requests, retries)], [(url, until)]) of a worker's
    published share; raises AttributeError, TypeError or ValueError for anything else."""
    return (float(data.get("wall", 0)),
            [(str(upstream_id), int(requests), int(retries))
             for upstream_id, (requests, retries) in data.get("counts", {}).items()],
            [(str(url), float(until)) for url, until in data.get("refused", {}).items()])


def _remove(path):
    try:
        os.unlink(path)
    except OSError:
        pass
