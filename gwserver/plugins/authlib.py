"""What the auth plugins (key_auth, basic_auth, jwt) share: finding the consumer directory,
the 401 answer, anonymous consumers, a per-worker cache of credentials already checked, one
of credentials found unknown, and per-host budgets of failed checks.

A cache key is a keyed BLAKE2b of the presented secret (the key is random per process), so
the cache never holds a secret a memory dump could replay elsewhere.
"""
import hashlib
import logging
import math
import os
import time

from ..core import consumers
from ..core.chain import refuse_unless_identified
from ..core.context import Reply
from ..core.realip import ipv6_network
from ..core.throttledlog import throttled_log

log = logging.getLogger("gwserver.plugins")
_PEPPER = os.urandom(32)


def fingerprint(*parts):
    h = hashlib.blake2b(key=_PEPPER, digest_size=20)
    for part in parts:
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    return h.digest()


def key_fingerprint(secret):
    """fingerprint() of one part, in one call (key_auth's, on every request)."""
    return hashlib.blake2b(secret, key=_PEPPER, digest_size=20).digest()


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

    def update(self, key, value):
        """What ``key`` was checked against, checked again: its time is not extended, so a
        full check still comes ``seconds`` after the last one (a change the quick re-check
        cannot see, such as a second consumer with the same key, is found then)."""
        hit = self.items.get(key)
        if hit is not None:
            self.items[key] = (value, hit[1])


class UnknownCache(CheckedCache):
    """Credentials found to match no consumer, remembered for the consumer-table generation
    they were checked against (Directory.generation): any change of the table forgets them
    all, so a credential added a moment later works on its first request. Bounded in size
    (oldest dropped first) and time (``seconds``) like CheckedCache."""

    def __init__(self, seconds, size):
        super().__init__(seconds, size)
        self.generation = None

    def _of(self, generation):
        if generation != self.generation:
            self.items.clear()
            self.generation = generation

    def known_unknown(self, key, generation):
        self._of(generation)
        return self.get(key) is not None

    def remember(self, key, generation):
        self._of(generation)
        self.put(key, True)


def client_of(ctx):
    """The client a failure budget counts: its address, an IPv6 one by its /64 as
    rate_limit's ``ipv6_prefix`` counts it. Whoever holds a /64 (any VPS) has 2**64
    addresses: keyed alone, each guess could come from a fresh budget."""
    address = ctx.client_ip
    return ipv6_network(address, 64) if ":" in address else address


def take_budgets(store, budgets, window):
    """Take one unit of each failed-check budget in ``budgets`` ([(store key, limit)]; a
    limit of 0 is no budget) on the per-host ``store`` (a sliding window of ``window``
    seconds per key, shared by every worker of the host). -> (keys taken, None), or
    ([], seconds until one would be free) when one is spent: then none stays taken."""
    taken = []
    for key, limit in budgets:
        if not limit:
            continue
        decision = store.decide("sliding_window", key, limit, window, 0)
        if not decision.allowed:
            give_back(store, taken, window)
            return [], decision.retry_after
        taken.append(key)
    return taken, None


def give_back(store, taken, window):
    """The check succeeded: it was not a failure."""
    for key in taken:
        store.give_back(key, window)


def too_many_failures(retry_after, message):
    """429 for a client past a failed-check budget: refused before any check runs."""
    seconds = max(1, math.ceil(min(retry_after, 86400.0)))
    return Reply.json(429, {"error": "too_many_failures", "message": message,
                            "retry_after": seconds}, [("Retry-After", str(seconds))])


def unauthorized(challenge, message, error="unauthorized"):
    return Reply.json(401, {"error": error, "message": message},
                      [("WWW-Authenticate", challenge)] if challenge else [])


def anonymous_or(conf, ctx, reply, plugin_name):
    """Requests without a credential: the configured anonymous consumer, else ``reply``. With
    an anonymous consumer, one an earlier auth plugin identified stands (Kong's "either
    credential": key_auth and basic_auth, each with ``anonymous``)."""
    anonymous = conf.get("anonymous")
    if anonymous is None:
        return reply
    if ctx.consumer is not None:
        return None
    found = ctx.services.consumers
    consumer = found.get(anonymous) if found is not None else None
    if consumer is None:
        return _anonymous_missing(ctx, anonymous, reply, plugin_name)
    consumers.identify(ctx, consumer, anonymous=True)
    return None


def _anonymous_missing(ctx, anonymous, reply, plugin_name):
    """The route's anonymous consumer is not configured (deleted from etcd while the route
    names it, say): a client without a credential is refused as on a route without one
    (never let through as nobody, which would skip what the anonymous consumer's own plugins
    limit), unless a later auth plugin of the route identifies it. It was a 500 on every
    such request, which the operator's log said nothing of. -> None: the refusal waits."""
    route_id = ctx.route.id if ctx.route is not None else None
    throttled_log.log(log, logging.ERROR, ("anonymous missing", route_id, anonymous),
                      "route %s: %s names the anonymous consumer %s, which is not configured: "
                      "requests without a credential are refused (401) until it is",
                      route_id, plugin_name, anonymous)
    payload = reply.payload or {}
    refused = Reply.json(reply.status, {
        **payload, "message": f"{payload.get('message', 'unauthorized')} (the route's "
                              f"anonymous consumer is not configured)"},
        [(k, v) for k, v in reply.headers if k.lower() != "content-type"])
    refuse_unless_identified(ctx, plugin_name, refused)
    return None
