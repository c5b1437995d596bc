"""What the auth plugins (key_auth, basic_auth, jwt) share: finding the consumer directory,
the 401 answer, anonymous consumers, and a per-worker cache of credentials already checked.

A cache key is a keyed BLAKE2b of the presented secret (the key is random per process), so
the cache never holds a secret a memory dump could replay elsewhere.
"""
import hashlib
import os
import time

from ..core import consumers
from ..core.context import Reply

_PEPPER = os.urandom(32)


def fingerprint(*parts):
    h = hashlib.blake2b(key=_PEPPER, digest_size=20)
    for part in parts:
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    return h.digest()


class CheckedCache:
    """fingerprint -> (what it was checked against, until): bounded, oldest dropped first."""

    def __init__(self, seconds, size):
        self.seconds, self.size, self.items = seconds, size, {}

    def get(self, key):
        hit = self.items.get(key)
        if hit is None or hit[1] <= time.monotonic():
            return None
        return hit[0]

    def put(self, key, value):
        if not self.seconds:
            return
        items = self.items
        if len(items) >= self.size:
            now = time.monotonic()
            for stale in [k for k, (_, until) in items.items() if until <= now]:
                del items[stale]
            if len(items) >= self.size:
                del items[next(iter(items))]
        items[key] = (value, time.monotonic() + self.seconds)


def directory(ctx):
    return consumers.directory_of(ctx)


def unauthorized(challenge, message, error="unauthorized"):
    return Reply.json(401, {"error": error, "message": message},
                      [("WWW-Authenticate", challenge)] if challenge else [])


def anonymous_or(conf, ctx, reply):
    """Requests without a credential: the configured anonymous consumer, else ``reply``."""
    anonymous = conf.get("anonymous")
    if anonymous is None:
        return reply
    found = directory(ctx)
    consumer = found.get(anonymous) if found is not None else None
    if consumer is None:
        return Reply.json(500, {"error": "anonymous_consumer_missing",
                                "message": f"consumer {anonymous} is not configured"})
    consumers.identify(ctx, consumer)
    return None
