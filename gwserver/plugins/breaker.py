"""``breaker``: stop calling an upstream that fails, for every worker and host at once.

    plugins.breaker = {error_rate = 0.5, window = 10, min_requests = 20, open_for = 5,
                       max_open_for = 60, half_open_probes = 1}

Closed, it counts answers over a rolling ``window``; when at least ``min_requests`` were seen
and the share of failures reaches ``error_rate``, it opens: requests fail fast with 503 and a
JSON body naming the breaker, without touching the upstream. After ``open_for`` seconds
(doubling with each trip in a row, up to ``max_open_for``) it is half-open: exactly
``half_open_probes`` requests go through, cluster-wide; if they all succeed it closes, if one
fails it opens again. Failures are the ``failure_statuses`` an upstream answers with (its
own status, whatever a plugin maps it to), and always a connect error, a timeout or a broken
upstream connection. A websocket counts when its handshake is answered (``upgraded``), not
when its tunnel closes, and a half-open probe when its answer's head comes (``response``).

On a route, one breaker per route; with ``scope = "upstream"``, or set on an upstream object
(``[upstreams.NAME.plugins.breaker]``), one breaker per upstream shared by its routes. State is
in Redis with [redis], else per host; when Redis cannot answer, ``on_store_error = "local"``
(default) decides per host and ``"allow"`` lets requests through unguarded.

The state machine is ``core.breaker``; the state lives in the store (``ctx.services``).
"""
import logging
import math

from ..core.context import Reply
from ..core.schema import Field, Schema, integer, list_of, number, one_of, status_code
from ..core.throttledlog import throttled_log
from ..errors import StoreError
from ..files import STATE_DIR, write_remedy

log = logging.getLogger("gwserver.breaker")

NAME = "breaker"
PRIORITY = 700          # after rate_limit: a request refused by a limit never counts
UPSTREAM_PLUGIN = True


SCHEMA = Schema(
    Field("error_rate", number(0, exclusive=True, maximum=1), 0.5,
          "share of failed answers in the window that opens the breaker (0 < x <= 1)"),
    Field("window", number(0, exclusive=True), 10.0, "seconds of answers the error rate covers"),
    Field("min_requests", integer(1), 20, "answers in the window before the rate counts"),
    Field("open_for", number(0, exclusive=True), 5.0, "seconds open after the first trip"),
    Field("max_open_for", number(0, exclusive=True), 60.0,
          "cap of open_for, which doubles with each trip in a row"),
    Field("half_open_probes", integer(1), 1, "requests let through, cluster-wide, to test it"),
    Field("failure_statuses", list_of(status_code), [500, 502, 503, 504],
          "upstream statuses that count as failures (connect errors and timeouts always do)"),
    Field("scope", one_of("route", "upstream"), "route",
          "one breaker per route, or one per upstream shared by its routes"),
    Field("on_store_error", one_of("local", "allow"), "local",
          "when Redis cannot answer: decide per host, or let requests through"),
)


def prepare(conf):
    if conf["max_open_for"] < conf["open_for"]:
        raise ValueError(f"max_open_for ({conf['max_open_for']}) is below open_for "
                         f"({conf['open_for']})")
    return {**conf, "failure_statuses": frozenset(conf["failure_statuses"])}


def breaker_key(conf, route, upstream=None):
    """route:ID, or upstream:ID (the upstream a split chose, else the route's); a consumer's
    own breaker adds ``:consumer=ID`` (for_consumer)."""
    if conf["scope"] == "upstream":
        return f"upstream:{(upstream or route.upstream).id}{conf.get('own', '')}"
    return f"route:{route.id}{conf.get('own', '')}"


def for_consumer(conf, consumer_id):
    """(the plugin hook) A consumer's own breaker judges that consumer's requests: under the
    route's key (or the upstream's), its thresholds opened the breaker of every caller (a
    touchy one, after the one failure the consumer could cause itself). Consumer ids hold
    no ``=``: no route's or upstream's key is this one."""
    return {**conf, "own": f":consumer={consumer_id}"}


def access(conf, ctx):
    key = breaker_key(conf, ctx.route, ctx.upstream)
    try:
        store, verdict = admit(conf, ctx, key)
        if store is None:
            return None
        if verdict.admitted and verdict.state == "half_open" and not ctx.complete:
            # A probe must not wait on the client's upload: held until client_body_timeout
            # (a 408, then given back), every other request got 503, and a client that kept
            # one stalled upload going kept a recovered upstream's breaker half-open. Given
            # back while the body comes (whole up to request_buffer_size), then asked again.
            store.breaker_record(key, conf, verdict.epoch, None, probe=True)
            ctx.read_body()
            store, verdict = admit(conf, ctx, key)
            if store is None:
                return None
    except OSError as exc:
        unguarded(key, exc)
        return None
    if ctx.services.metrics is not None:
        ctx.services.metrics.breaker_state(key, verdict.state)
    if verdict.admitted:
        ctx.vars["breaker"] = (store, key, verdict.epoch)
        if verdict.state == "half_open":
            ctx.vars["breaker_probe"] = True
        return None
    if conf["scope"] == "upstream" and not conf.get("own"):
        # the upstream's own failures opened it: a rollout's gates count the refusal as one
        # (uncounted, a broken canary behind its breaker was never rolled back)
        ctx.vars["upstream_refused"] = key
    wait = max(1, math.ceil(verdict.retry_after))
    return Reply.json(503, {"error": "circuit_open", "breaker": key, "state": verdict.state,
                            "message": f"breaker {key} is {verdict.state.replace('_', '-')}; "
                                       f"the upstream is not called",
                            "retry_after": wait},
                      [("Retry-After", str(wait))])


def admit(conf, ctx, key):
    """-> (the store that decided, its verdict); (None, None) when Redis cannot answer and
    on_store_error = "allow" lets the request through. OSError: the per-host state."""
    store = ctx.services.limit_store
    try:
        return store, store.breaker_admit(key, conf)
    except StoreError:
        if conf["on_store_error"] == "allow":
            return None, None
        store = ctx.services.local_store
        return store, store.breaker_admit(key, conf)


def response(conf, ctx, head):
    """A half-open probe's verdict is the upstream's head. Left to finish, which comes when
    the body is out, a probe whose client read a large body slowly (or an event stream, a
    long download) held the verdict, and every other request out (503 circuit_open), for
    probe_timeout; then the next probe was held alike: one slow reader kept a recovered
    upstream shut out for good."""
    if ctx.var("breaker_probe") and ctx.var("breaker") is not None:
        finish(conf, ctx, head.upstream_status)
        del ctx.vars["breaker"]         # recorded: finish, at the end, does nothing


def finish(conf, ctx, status):
    admitted = ctx.var("breaker")
    if admitted is None:
        return
    try:
        record(conf, ctx, status, *admitted)
    except OSError as exc:
        unguarded(admitted[1], exc)


def upgraded(conf, ctx):
    """A websocket's verdict is its handshake. Left to finish, which comes when the tunnel
    closes, a half-open breaker's probe held its verdict, and every other handshake out (503
    circuit_open), for as long as the probe's websocket stayed open."""
    finish(conf, ctx, 101)
    if ctx.var("breaker") is not None:
        del ctx.vars["breaker"]         # recorded: finish, at the close, does nothing


def unguarded(key, exc):
    """The per-host state (a file in state_dir) cannot be written, a full disk: the request
    goes through unguarded, as on_store_error = "allow" would; a 500 for a breaker that
    only guards the upstream would fail requests the upstream might serve."""
    throttled_log.log(log, logging.ERROR, ("unguarded", key),
                      "breaker %s: its per-host state cannot be written (%s): requests pass "
                      "unguarded until it can; %s", key, exc.strerror or exc,
                      write_remedy(exc, STATE_DIR))


def record(conf, ctx, status, store, key, epoch):
    erred = ctx.upstream_erred()
    if ctx.ended_by is not None or not (ctx.sent or erred):
        # Nothing went upstream: a later plugin answered, or the gateway refused the request
        # itself (a body over max_body_size, a stalled upload) or the client left first.
        # Counted, any client could close a half-open breaker on a dead upstream with a 413.
        # The admission is given back: a half-open probe goes to the next request.
        store.breaker_record(key, conf, epoch, None, probe=bool(ctx.var("breaker_probe")))
        return
    if status == 0 or not (ctx.upstream_seconds is not None or erred):
        # Sent, but the client left before the upstream decided: no verdict, and the probe
        # is not given back either (the upstream may still be working on it; given back,
        # a client resetting its streams could send any number of probes at once).
        return
    store.breaker_record(key, conf, epoch,
                         not ctx.upstream_failed(status, conf["failure_statuses"]),
                         probe=bool(ctx.var("breaker_probe")))


ADMIN_VIEW = "breakers"


def admin_view(uses, services):
    """Plugin hook for /admin/breakers: every breaker, its routes, config and state as the
    store holds it (a breaker on an upstream is shared by the routes that use it)."""
    breakers = {}
    for route, conf in uses:
        key = breaker_key(conf, route)
        entry = breakers.get(key)
        if entry is None:
            entry = breakers[key] = {"routes": [], "config": {
                k: sorted(v) if isinstance(v, frozenset) else v for k, v in conf.items()}}
            entry.update(_breaker_state(services, key))
        if route.id not in entry["routes"]:     # (once for each upstream its split sends to)
            entry["routes"].append(route.id)
    shared = services.limit_store is not services.local_store
    return {"store": "redis" if shared else "per host", "breakers": breakers}


def _breaker_state(services, key):
    """The view of one breaker, its times counted on the clock of the store that wrote them
    (Redis' TIME, not this host's wall clock)."""
    try:
        state, now = services.limit_store.breaker_view(key)
    except Exception as exc:    # Redis down: say so, and show this host's fallback state
        state, now = services.local_store.breaker_view(key)
        out = {"store_error": f"{exc.__class__.__name__}: {exc}",
               "per_host_fallback": True}
    else:
        out = {}
    if state is None:
        return {**out, "state": "closed", "trips": 0, "seen": "no traffic in the window"}
    window = [b[1:] for b in state["buckets"]]
    out.update(state=state["state"], epoch=state["epoch"], trips=state["trips"],
               answers_in_window=sum(ok + failed for ok, failed in window),
               failures_in_window=sum(failed for _, failed in window))
    if state["state"] == "open":
        out["half_open_in"] = round(max(0.0, state["until"] - now), 3)
    elif state["state"] == "half_open":
        out["probes_granted"] = state["probes"]
        out["probes_succeeded"] = state["probe_ok"]
    return out
