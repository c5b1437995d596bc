"""``rate_limit``: token bucket or sliding window per key, shared by every worker and host.

    plugins.rate_limit = {algorithm = "token_bucket", rate = 100, per = 1, burst = 20,
                          key = "ip", on_store_error = "local"}

key: "ip" (client address), "route" (one limit for the route), "header:NAME", "claim:NAME" (a
verified JWT claim, once the jwt plugin has run; requests without the header or claim share
one bucket). With [redis] the state is in Redis (one atomic script per decision, coalesced per
worker); without it, per host. When Redis cannot answer: "allow" lets the request through,
"deny" answers 503, "local" (default) decides with the per-host limiter instead.

Rejected requests get 429 with Retry-After; every limited route's answers carry RateLimit-Limit,
RateLimit-Remaining and RateLimit-Reset (IETF httpapi ratelimit-headers draft).
"""
import hashlib
import math

from .. import services
from ..core.context import Reply
from ..core.schema import Field, Invalid, Schema, integer, number, one_of, show
from ..errors import StoreError

NAME = "rate_limit"
PRIORITY = 800          # after authentication (jwt keys limits by claim), before the proxy


def key_kind(value):
    if value in ("ip", "route"):
        return value
    if isinstance(value, str) and value.partition(":")[0] in ("header", "claim") and \
            value.partition(":")[2]:
        return value
    raise Invalid(f'must be "ip", "route", "header:NAME" or "claim:NAME", got {show(value)}')


SCHEMA = Schema(
    Field("algorithm", one_of("token_bucket", "sliding_window"), "token_bucket",
          "token_bucket (rate with bursts) or sliding_window (at most rate per window)"),
    Field("rate", number(0, exclusive=True), doc="requests allowed per `per` seconds"),
    Field("per", number(0, exclusive=True), 1.0, "the window, in seconds"),
    Field("burst", integer(0), 0, "token bucket: extra requests allowed at once (0 = none)"),
    Field("key", key_kind, "ip", "what is limited: ip, route, header:NAME or claim:NAME"),
    Field("on_store_error", one_of("allow", "deny", "local"), "local",
          "when Redis cannot answer: let through, refuse (503), or limit per host"),
)


def prepare(conf):
    kind, _, name = conf["key"].partition(":")
    return {**conf, "kind": kind, "name": name.lower().encode("latin-1") if kind == "header"
            else name}


def _key(conf, ctx):
    kind = conf["kind"]
    if kind == "ip":
        value = ctx.client_ip
    elif kind == "route":
        value = ""
    elif kind == "header":
        raw = ctx.header_map.get(conf["name"])
        value = raw.decode("latin-1") if raw is not None else "-"
    else:
        claims = (ctx._vars or {}).get("claims") or {}
        value = str(claims.get(conf["name"], "-"))
    if len(value) > 64:
        value = hashlib.blake2b(value.encode(), digest_size=12).hexdigest()
    return f"{ctx.route.id}:{kind}:{value}"


def access(conf, ctx):
    key = _key(conf, ctx)
    args = (conf["algorithm"], key, conf["rate"], conf["per"], conf["burst"])
    try:
        decision = services.limit_store.decide(*args)
    except StoreError:
        mode = conf["on_store_error"]
        if mode == "allow":
            _count(ctx, "store_error_allowed")
            return None
        if mode == "deny":
            _count(ctx, "store_error_denied")
            return Reply.json(503, {"error": "rate_limit_unavailable",
                                    "message": "the rate-limit store cannot answer"},
                              [("Retry-After", "1")])
        decision = services.local_store.decide(*args)
        outcome = "local_"
    else:
        outcome = ""
    ctx.vars["rate_limit"] = decision
    _count(ctx, outcome + ("allowed" if decision.allowed else "limited"))
    if decision.allowed:
        return None
    return Reply.json(429, {"error": "too_many_requests", "limit": decision.limit,
                            "retry_after": round(decision.retry_after, 3)},
                      [("Retry-After", str(max(1, math.ceil(decision.retry_after))))] +
                      _headers(decision))


def response(conf, ctx, head):
    decision = (ctx._vars or {}).get("rate_limit")
    if decision is not None:
        for name, value in _headers(decision):
            head.set_header(name, value)


def _headers(decision):
    return [("RateLimit-Limit", str(decision.limit)),
            ("RateLimit-Remaining", str(decision.remaining)),
            ("RateLimit-Reset", str(max(0, math.ceil(decision.reset))))]


def _count(ctx, outcome):
    if services.metrics is not None:
        services.metrics.count_limit(ctx.route.id, outcome)
