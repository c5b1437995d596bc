"""``limit_conn``: at most ``limit`` requests in progress at once per key (APISIX's limit-conn,
nginx's limit_conn), per host or across the cluster.

    plugins.limit_conn = {limit = 20, key = "ip", scope = "cluster", lease_seconds = 300}

key: "ip" (the client address through trusted_proxies: an X-Forwarded-For from anyone else
changes nothing), "route", "consumer" (the consumer an auth plugin identified), "header:NAME",
"cookie:NAME" (requests without the header, cookie or consumer share one key; one with the
header twice, or the cookie twice with two values, is a 400, as with rate_limit). A slot is
claimed in the access phase and given back in finish, when the answer is out (a streamed body
holds its slot to the end, a websocket for as long as it is open).

scope "cluster" keeps the slots where rate_limit keeps its state: in Redis with [redis] (one
sorted set per key of lease ids scored by expiry, a Lua script per claim, coalesced per
worker like rate_limit's decisions), else per host. scope "host" always counts per host, in
files every worker of the host shares. A worker that dies mid-request never gives its slots
back: each lease expires after ``lease_seconds`` (dropped on the next claim), and per host the
leases of a worker that is gone are dropped as soon as a claim finds every slot taken. Set
``lease_seconds`` above the longest request the route serves (its timeouts and retries, or
how long a websocket stays open): a request still running when its lease expires no longer
counts.

Over the limit: ``status`` (503) with Retry-After. When Redis cannot answer: "allow" lets the
request through, "deny" refuses it, "local" (default) counts per host instead.
"""
import logging

from ..core.context import Reply
from ..core.schema import Field, Schema, integer, number, one_of
from ..core.throttledlog import throttled_log
from ..errors import StoreError
from ..files import STATE_DIR, write_remedy
from .rate_limit import for_consumer, key_kinds, key_name, limit_key  # noqa: F401 (a hook)

log = logging.getLogger("gwserver.limit_conn")

NAME = "limit_conn"
PRIORITY = 790          # after rate_limit (800): a request refused by a rate never takes a slot


key_kind = key_kinds("header", "cookie")


SCHEMA = Schema(
    Field("limit", integer(1), doc="requests in progress at once, per key"),
    Field("key", key_kind, "ip", "what is limited: ip, route, consumer, header:NAME or "
          "cookie:NAME"),
    Field("ipv6_prefix", integer(1, 128), 64, "key ip (header:X-Forwarded-For and "
          "header:Forwarded too): an IPv6 client counts by its network of this many bits "
          "(128: each address alone)"),
    Field("scope", one_of("cluster", "host"), "cluster",
          "cluster: Redis when [redis] is set, else per host; host: per host always"),
    Field("lease_seconds", number(0, exclusive=True), 300.0,
          "a slot a worker never gave back (it died) is free again after this long"),
    # (not 1xx: an interim status is no answer, and the client would wait for the real one)
    Field("status", integer(200, 599, "a status from 200 to 599"), 503, "status of a refusal"),
    Field("retry_after", integer(0), 1, "Retry-After seconds sent with a refusal"),
    Field("on_store_error", one_of("allow", "deny", "local"), "local",
          "when Redis cannot answer: let through, refuse, or count per host"),
)


def prepare(conf):
    kind, _, name = conf["key"].partition(":")
    return {**conf, "kind": kind, "name": key_name(kind, name), "own": "",
            "consumer": None}


def access(conf, ctx):
    key = limit_key(conf, ctx)
    services = ctx.services
    store = services.local_store if conf["scope"] == "host" else services.limit_store
    try:
        try:
            claim = store.conn_claim(key, conf["limit"], conf["lease_seconds"])
        except StoreError:
            mode = conf["on_store_error"]
            if mode == "allow":
                _count(ctx, "store_error_allowed")
                return None
            if mode == "deny":
                return _unavailable(conf, ctx)
            store = services.local_store
            claim = store.conn_claim(key, conf["limit"], conf["lease_seconds"])
    except OSError as exc:
        # The per-host lease file cannot be written (a full state_dir): a 500 here failed
        # every request on the route. on_store_error decides, "local" (what failed) as allow.
        throttled_log.log(log, logging.ERROR, ("unwritable", ctx.route.id),
                          "route %s: limit_conn's per-host state cannot be written (%s); "
                          "on_store_error decides until it can: %s", ctx.route.id,
                          exc.strerror or exc, write_remedy(exc, STATE_DIR))
        if conf["on_store_error"] == "deny":
            return _unavailable(conf, ctx)
        _count(ctx, "store_error_allowed")
        return None
    if claim.lease is None:
        _count(ctx, "conn_limited")
        return _refusal(conf, "too_many_connections",
                        f"more than {conf['limit']} requests in progress for this "
                        f"{conf['kind']}")
    ctx.vars["limit_conn"] = (store, key, claim.lease)
    return None


def finish(conf, ctx, status):
    held = ctx.var("limit_conn")
    if held is None:
        return
    store, key, lease = held
    try:
        store.conn_release(key, conf["limit"], conf["lease_seconds"], lease)
    except (StoreError, OSError):
        pass                # the lease expires on its own


def _unavailable(conf, ctx):
    _count(ctx, "store_error_denied")
    return _refusal(conf, "limit_conn_unavailable", "the connection-limit store cannot answer")


def _refusal(conf, error, message):
    return Reply.json(conf["status"], {"error": error, "message": message},
                      [("Retry-After", str(conf["retry_after"]))])


def _count(ctx, outcome):
    if ctx.services.metrics is not None:
        ctx.services.metrics.count_limit(ctx.route.id, outcome)
