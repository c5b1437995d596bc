"""``rate_limit``: token bucket or sliding window per key, shared by every worker and host.

    plugins.rate_limit = {algorithm = "token_bucket", rate = 100, per = 1, burst = 20,
                          key = "ip", on_store_error = "local"}

key: "ip" (client address; an IPv6 client by its /64, ``ipv6_prefix``), "route" (one limit for
the route), "consumer" (the consumer an auth plugin identified; docs/consumers.md),
"header:NAME", "cookie:NAME" (one cookie, as upstreams read it: other cookies beside it change
nothing), "claim:NAME" (a verified JWT claim, once the jwt plugin has run; requests without the
header, cookie, claim or consumer share one bucket; one with the header twice, or the cookie
twice with two values, is a 400, since an upstream reads only one copy of it; Cookie, Host and
Authorization count as they are read, not as spelt, X-Forwarded-For and Forwarded as the
client the gateway names in them, as "ip" counts it: docs/ratelimit.md). Set in a consumer's own
``plugins``, the limit is that consumer's, in buckets apart from the route's (for_consumer).
With [redis] the state is in Redis (one atomic script per decision, coalesced per worker);
without it, per host. When Redis cannot answer: "allow"
lets the request through, "deny" answers 503, "local" (default) decides with the per-host
limiter instead.

Rejected requests get 429 with Retry-After; every answer a limiter counted carries
RateLimit-Limit, RateLimit-Remaining and RateLimit-Reset (IETF httpapi ratelimit-headers draft):
with Redis down, "local" sends the per-host count, "allow" and "deny" count nothing and send
none (a Remaining the gateway made up would pace clients wrongly).

Adaptive (opt-in): ``adaptive = {floor = 20, ceiling = 200}`` makes ``rate`` the starting point
of an effective rate that follows the upstream: each ``window`` the share of successful
answers is computed, and the rate goes up by ``step_up`` when at least ``raise_above``
succeeded, down by ``step_down`` below ``lower_below``, within floor..ceiling. The rate is
one per route, shared like the limit itself (Redis, or per host).
"""
import base64
import binascii
import hashlib
import logging
import math
import re

from ..core import ratelimit
from ..core.context import Reply, claim_text, parse_block
from ..core.cookies import one_cookie
from ..core.headers import CLIENT_NAMED_IN, CLIENT_NAMING
from ..core.realip import ipv6_network
from ..core.schema import (Field, Invalid, Schema, fraction, header_in_key, integer, list_of,
                           number, one_of, show, status_code)
from ..core.throttledlog import throttled_log
from ..errors import BadRequest, StoreError
from ..files import STATE_DIR, write_remedy

log = logging.getLogger("gwserver.rate_limit")

NAME = "rate_limit"
PRIORITY = 800          # after authentication (jwt keys limits by claim), before the proxy


def key_kinds(*named):
    """The ``key`` validator of a limit: "ip", "route", "consumer", or KIND:NAME for a KIND
    in ``named`` (limit_conn has no claims)."""
    choices = ["ip", "route", "consumer"] + [f"{kind}:NAME" for kind in named]
    allowed = ", ".join(f'"{c}"' for c in choices[:-1]) + f' or "{choices[-1]}"'

    def key_kind(value):
        if value in ("ip", "route", "consumer"):
            return value
        header_in_key(value)
        if isinstance(value, str) and value.partition(":")[0] in named and \
                value.partition(":")[2]:
            return value
        raise Invalid(f"must be {allowed}, got {show(value)}")
    return key_kind


key_kind = key_kinds("header", "cookie", "claim")


def key_name(kind, name):
    """The NAME of a key as limit_key looks it up: a header's lower-case bytes, a cookie's
    bytes (cookie names are case-sensitive), a claim's str."""
    if kind == "header":
        return name.lower().encode("latin-1")
    return name.encode("latin-1") if kind == "cookie" else name


ADAPTIVE = Schema(
    Field("floor", number(0, exclusive=True), doc="the lowest effective rate"),
    Field("ceiling", number(0, exclusive=True), doc="the highest effective rate"),
    Field("window", number(0, exclusive=True), 10.0, "seconds of answers per adjustment"),
    Field("raise_above", fraction, 0.95, "raise when at least this share succeeded"),
    Field("lower_below", fraction, 0.7, "lower when less than this share succeeded"),
    Field("step_up", number(0, exclusive=True), 0.2, "raise by this fraction (0.2 = +20%)"),
    Field("step_down", fraction, 0.2, "lower by this fraction (0.2 = -20%)"),
    Field("failure_statuses", list_of(status_code), [500, 502, 503, 504],
          "upstream statuses that count as failed (connect errors and timeouts always do)"),
)

SCHEMA = Schema(
    Field("algorithm", one_of("token_bucket", "sliding_window"), "token_bucket",
          "token_bucket (rate with bursts) or sliding_window (at most rate per window)"),
    Field("rate", number(0, exclusive=True), doc="requests allowed per `per` seconds"),
    Field("per", number(0, exclusive=True), 1.0, "the window, in seconds"),
    Field("burst", integer(0), 0, "token bucket: extra requests allowed at once (0 = none)"),
    Field("key", key_kind, "ip", "what is limited: ip, route, consumer, header:NAME, "
          "cookie:NAME or claim:NAME"),
    Field("ipv6_prefix", integer(1, 128), 64, "key ip (header:X-Forwarded-For and "
          "header:Forwarded too): an IPv6 client counts by its network of this many bits "
          "(128: each address alone)"),
    Field("on_store_error", one_of("allow", "deny", "local"), "local",
          "when Redis cannot answer: let through, refuse (503), or limit per host"),
    Field("adaptive", ADAPTIVE, None, "move the rate with the upstream's success rate"),
)


def prepare(conf):
    kind, _, name = conf["key"].partition(":")
    adaptive = conf["adaptive"]
    lowest = conf["rate"] if adaptive is None else min(conf["rate"], adaptive["floor"])
    if conf["algorithm"] == "sliding_window" and lowest < 1:
        # a window admits whole requests: below one per window it would never admit any
        raise ValueError(f"sliding_window needs a rate (and adaptive.floor) of at least 1 per "
                         f"window, got {lowest:g}: for one request every {conf['per'] / lowest:g} s "
                         f"write rate = 1, per = {conf['per'] / lowest:g}")
    if adaptive is not None:
        if adaptive["floor"] > adaptive["ceiling"]:
            raise ValueError(f"adaptive.floor ({adaptive['floor']:g}) is above adaptive.ceiling "
                             f"({adaptive['ceiling']:g})")
        if adaptive["lower_below"] > adaptive["raise_above"]:
            raise ValueError(f"adaptive.lower_below ({adaptive['lower_below']:g}) is above "
                             f"adaptive.raise_above ({adaptive['raise_above']:g})")
        adaptive = {**adaptive, "failure_statuses": frozenset(adaptive["failure_statuses"])}
    return {**conf, "kind": kind, "adaptive": adaptive, "name": key_name(kind, name),
            "own": "", "consumer": None,
            "fractional": adaptive is None and conf["rate"] % 1 != 0}


def for_consumer(conf, consumer_id):
    """(the plugin hook) A consumer's own limit counts in buckets of its own: keyed like the
    route's (``ip``, ``route``, a header), it was the route's bucket, drained to the
    consumer's capacity for everyone else behind that address or on that route. Consumer
    ids hold no ``=``, route ids none either: no route's key or other consumer's is this
    one. Keyed on ``consumer``, the bucket is the consumer's already (and keeps its key).
    An adaptive one moves a rate of its own too (_adaptive_key)."""
    own = "" if conf["kind"] == "consumer" else f"consumer={consumer_id}="
    return {**conf, "own": own, "consumer": consumer_id}


def phases(conf):
    """finish reports answers to an adaptive limit; a fixed one has no use for it."""
    return {"access", "response"} | ({"finish"} if conf["adaptive"] is not None else set())


def limit_key(conf, ctx):
    """The state key a limit counts under: route, then what ``key`` names (ip, route,
    consumer, header:NAME, cookie:NAME, claim:NAME); limit_conn keys its slots the same
    way."""
    kind = conf["kind"]
    if kind == "ip":
        value = _client(conf, ctx)
    elif kind == "route":
        value = ""
    elif kind == "consumer":
        consumer = ctx.consumer
        value = "-" if consumer is None else consumer.id
    elif kind == "header" or kind == "cookie":
        name = conf["name"]
        if kind == "cookie":
            raw = _one_cookie(ctx, name)
        elif name in CLIENT_NAMED_IN:
            # The client found there, an IPv6 one by its network as key "ip" counts it (a
            # trusted proxy may split its list over several fields: one list still)
            raw = _client(conf, ctx).encode("latin-1")
        else:
            raw = _one_copy(ctx, name)
            if name in _AS_READ:
                raw = _AS_READ[name](ctx, raw)
            elif raw is None and name in CLIENT_NAMING:
                # Dropped from every client but a trusted proxy (or none came): the client
                # found, as above, not the one bucket of everyone without it
                raw = _client(conf, ctx).encode("latin-1")
        # Always hashed: a header or cookie may carry a secret (an API key, a session), which
        # must not sit in Redis key names or state files; hashed, a long value never makes a
        # long key either.
        value = "-" if raw is None else hashlib.blake2b(raw, digest_size=12).hexdigest()
    else:
        value = claim_key_part(ctx.var("claims") or {}, conf["name"])
    route_id = ctx.route.id
    if ":" in route_id:
        route_id = route_id.replace(":", _ROUTE_PART)
    return f"{route_id}:{conf['own']}{kind}:{value}"


# The route part of a key ends at its first ":". Route ids may hold ":", and written as they
# are, route "key_auth:60" limited per address counted in key_auth's budget of failed
# look-ups for that address (key_auth:60:ip:ADDR), and route "r:consumer" per address in
# route r's bucket of a consumer named "ip:ADDR". No id holds "%": escaped, no key spells
# another, and the keys of ids without ":" stay as they were.
_ROUTE_PART = "%3A"


# A claim's value as it may stand in a key name: short and plain. Anything else is hashed:
# a lone surrogate ("\ud800", valid JSON) could not be encoded, and failed the worker's whole
# pipeline, every client's decision in it; "{" and "}" are a Redis Cluster hash tag (the
# client would choose its key's slot); ":" could spell another limit's key (ROUTE:claim:V).
# "|" and "/" are plain: Auth0's subjects are "auth0|5f7c...", and hashed, every such
# client's bucket moved at the deploy (an emptied daily quota came back whole).
_PLAIN_CLAIM = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+=|/-]{0,63}")


def claim_key_part(claims, name):
    """The part of a key that claim ``name`` makes: "-" when absent, the value when plain,
    else "#" and its hash (the "#" keeps a hash apart from a plain value that spells one)."""
    value = claims.get(name)
    if value is None:
        return "-"
    text = claim_text(value)
    if _PLAIN_CLAIM.fullmatch(text):
        return text
    return "#" + hashlib.blake2b(text.encode("utf-8", "surrogatepass"),
                                 digest_size=12).hexdigest()


def _cookie_list(ctx, raw):
    """Cookies as an upstream reads them: pairs split at ";", without the white space
    around them or empty crumbs, in any order. "a=1;b=2", "b=2; a=1", HTTP/2 crumbs in
    either order and "a=1; ; b=2" are one client's one session to the upstream."""
    if raw is None:
        return None
    return b"; ".join(sorted(filter(None, (c.strip(b" \t") for c in raw.split(b";")))))


def _one_cookie(ctx, name):
    """Cookie ``name``'s value as upstreams read it (gwserver.core.cookies), or None. Other
    cookies do not change it: junk cookies added to the header are no new bucket."""
    return one_cookie(ctx.header_map.get(b"cookie"), name)


def _routed_host(ctx, raw):
    """The host the request is routed by and served as (an HTTP/1.0 absolute-form target
    without Host has one too); None without any."""
    return ctx.host.encode("latin-1") if ctx.host else None


def _credentials(ctx, raw):
    """RFC 9110 11.1, 11.4: the scheme is case-insensitive and any run of spaces parts it
    from its credentials; jwt and basic_auth read "bearer   T" as "Bearer T", and so do
    upstreams. Basic credentials count as decoded: base64's last character has bits no byte
    holds, which decoders (basic_auth's, Go's, Python's) ignore, so "dXNlcjpwYXM=" and
    "dXNlcjpwYXN=" are one user:pas, and were four buckets (sixteen before "==")."""
    scheme, space, rest = (raw or b"").partition(b" ")
    if not space:
        return raw
    scheme, rest = scheme.lower(), rest.strip(b" \t")
    if scheme == b"basic":
        try:
            rest = base64.b64encode(base64.b64decode(rest, validate=True))
        except (binascii.Error, ValueError):
            pass            # no credentials basic_auth reads: counted as they are spelt
    return scheme + b" " + rest


def _client(conf, ctx):
    """The client as a limit counts it: an IPv6 one by its network (ipv6_prefix)."""
    value = ctx.client_ip
    if ":" in value and conf["ipv6_prefix"] < 128:
        value = ipv6_network(value, conf["ipv6_prefix"])
    return value


# Headers with many spellings of one value, counted as the request is served: a limit on
# Host counts the name it was routed by (lower case, no trailing dot, no port, the
# absolute-form target's own), not "API.Example.", ":8080" or a Host the target overrode.
_AS_READ = {b"cookie": _cookie_list, b"host": _routed_host, b"authorization": _credentials}


def _one_copy(ctx, name):
    """The value of header ``name`` (lower-case bytes), or None; BadRequest when it came more
    than once. header_map joins copies with ", ", so "KEY" then anything would count in a
    bucket of its own while an upstream reads one copy as KEY (Go and nginx the first, PHP
    the last): no copy can be chosen that every upstream agrees with."""
    raw = ctx.header_map.get(name)
    if raw is not None and b", " in raw and \
            sum(1 for field, _ in ctx.headers if field.lower() == name) > 1:
        raise _more_than_once(name)
    if b"-" in name:
        # With headers_with_underscores = "allow", X_Api_Key is HTTP_X_API_KEY to a CGI or
        # WSGI upstream, as X-Api-Key is: a copy of it. Left out, a key sent so counted in
        # the one bucket of requests without the header, which it spent for all of them.
        spelt = [value for field, value in ctx.headers
                 if _UNDERSCORE in field and field.lower().replace(b"_", b"-") == name]
        if spelt:
            if raw is not None or len(spelt) > 1:
                raise _more_than_once(name)
            raw = spelt[0]
    return raw


# `b"_" in field` tries the needle as an integer first, raises and clears a TypeError, and
# only then searches (~240 ns a header in CPython 3.11, against ~20 ns for the byte's value)
_UNDERSCORE = ord("_")


def _more_than_once(name):
    return BadRequest(f"the {name.decode('latin-1')} header comes more than once; a limit "
                      f"keyed on it needs one")


def access(conf, ctx):
    key = limit_key(conf, ctx)
    store = ctx.services.limit_store
    rate = conf["rate"] if conf["adaptive"] is None else \
        store.adaptive_rate(_adaptive_key(conf, ctx), conf)
    args = (conf["algorithm"], key, rate, conf["per"], conf["burst"])
    try:
        decision = store.decide(*args)
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
        store = ctx.services.local_store
        decision = store.decide(*args)
        outcome = "local_"
    else:
        outcome = ""
    if conf["fractional"] or decision.limit < 1:
        # A configured rate that is not whole, or an adaptive one under 1 (rounded down, as
        # an adaptive rate's is, it said 0): _lines states its quota and window
        decision = decision._replace(limit=rate)
    ctx.vars["rate_limit"] = decision
    if conf["adaptive"] is not None:
        ctx.vars["rate_limit_store"] = store
    _count(ctx, outcome + ("allowed" if decision.allowed else "limited"))
    if decision.allowed:
        return None
    return Reply.json(429, {"error": "too_many_requests", "limit": decision.limit,
                            "retry_after": round(decision.retry_after, 3)},
                      [("Retry-After", str(max(1, math.ceil(decision.retry_after))))] +
                      _headers(decision, conf["per"]))


_OURS = (b"ratelimit-limit", b"ratelimit-remaining", b"ratelimit-reset", b"ratelimit-policy")


def response(conf, ctx, head):
    decision = ctx.var("rate_limit")
    if decision is None:
        return
    # Ours replace any RateLimit-* the upstream sent; without those, the upstream's head is
    # never split into pairs (append_lines), only added to.
    if head.has_header_prefix(b"ratelimit-"):
        head.headers = [(k, v) for k, v in head.headers if k.lower() not in _OURS]
    head.append_lines(_lines(decision, conf["per"]))


def finish(conf, ctx, status):
    """Adaptive limits: report whether the upstream's answer succeeded."""
    adaptive = conf["adaptive"]
    if adaptive is None or status == 0 or ctx.ended_by is not None:
        return
    store = ctx.var("rate_limit_store")
    if store is None:
        return
    if ctx.upstream_seconds is None and not ctx.upstream_erred():
        # The gateway answered itself (a stalled upload's 408): the upstream said nothing.
        # Counted as a success, a client's stalls could hold the rate up while it fails.
        return
    try:
        store.adaptive_record(_adaptive_key(conf, ctx), conf,
                              not ctx.upstream_failed(status, adaptive["failure_statuses"]))
    except OSError as exc:      # the per-host state in a full state_dir: the rate stands still
        throttled_log.log(log, logging.ERROR, ("adaptive unwritable", ctx.route.id),
                          "route %s: the adaptive rate cannot be recorded (%s); it stays "
                          "where it is until it can: %s", ctx.route.id,
                          exc.strerror or exc, write_remedy(exc, STATE_DIR))
        return
    if ctx.services.metrics is not None and conf["consumer"] is None:   # the route's rate
        ctx.services.metrics.effective_rate(ctx.route.id, store.adaptive_rate(ctx.route.id, conf))


def _adaptive_key(conf, ctx):
    """Where an adaptive limit's effective rate is kept: per route, and a consumer's own
    apart from it (its floor and ceiling moved the route's rate)."""
    consumer = conf["consumer"]
    return ctx.route.id if consumer is None else f"{ctx.route.id}:consumer={consumer}"


def upgraded(conf, ctx):
    """Adaptive limits: a websocket's answer is its handshake (a checked 101), not its
    tunnel's close, hours later perhaps."""
    finish(conf, ctx, 101)
    if ctx.var("rate_limit_store") is not None:
        del ctx.vars["rate_limit_store"]    # recorded: finish, at the close, does nothing


def _lines(decision, per):
    """RateLimit-* as header lines, in one formatting: added to every answer of a limited
    route. A rate that is not whole (a float ``limit``: 0.5 a second) is stated as a whole
    quota with the window it is whole in (RateLimit-Policy: 1;w=2), as the draft asks."""
    limit = decision.limit
    if type(limit) is not int:
        requests, seconds = ratelimit.quota(limit, per)
        return b"RateLimit-Limit: %d\r\nRateLimit-Policy: %d;w=%d\r\n" \
            b"RateLimit-Remaining: %d\r\nRateLimit-Reset: %d\r\n" % (
                requests, requests, seconds, decision.remaining,
                max(0, math.ceil(decision.reset)))
    return b"RateLimit-Limit: %d\r\nRateLimit-Remaining: %d\r\nRateLimit-Reset: %d\r\n" % (
        limit, decision.remaining, max(0, math.ceil(decision.reset)))


def _headers(decision, per):
    """The same RateLimit-* as (str, str) pairs, like the rest of our 429's headers."""
    return [(name.decode(), value.decode())
            for name, value in parse_block(_lines(decision, per))]


def _count(ctx, outcome):
    if ctx.services.metrics is not None:
        ctx.services.metrics.count_limit(ctx.route.id, outcome)
