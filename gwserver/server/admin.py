"""The admin listener: health probes, metrics and read-only JSON views of this worker's state.

Served by the workers on their own listener (``[admin] bind``, loopback by default), with the
same HTTP/1.1 parsing, limits and timeouts as traffic. ``[admin] token`` protects everything
but the two probes:

    /-/healthz          the process answers                                  (load balancers)
    /-/ready            routes loaded and this worker serving; 503 while draining
    /metrics            Prometheus text: all workers (multiprocess) + the sync process
    /admin/routes       the route table this worker serves, with its generation
    /admin/routes/ID    one route as compiled: its upstream, its plugins in order with their
                        configs (secrets masked), and where it came from (conf or etcd revision)
    /admin/upstreams    upstreams, their targets and this worker's keep-alive pools
    /admin/upstreams/ID one upstream as compiled, its source and the routes that use it
    /admin/config       where the table comes from; etcd sync status and rejected items; the
                        master's reload status (generation, last reload applied, when)
    /admin/rollouts     (split's admin_view) each rollout: step, weights, gates, history
    /admin/breakers     every circuit breaker: its routes, config and state (from the store)
"""
import dataclasses
import hmac
import os
import time

import gevent

from ..core.chain import served_configs, unfollowed, upstream_scoped
from ..core.context import Reply
from ..errors import ConfigError
from ..plugins import load_registry
from ..redact import redact
from .app import rfc3339
from ..client.http1 import ClientConnection, render_reply
from ..sync.shm import STATUS, read_json

PROBES = ("/-/healthz", "/-/ready")
# Wrong tokens: each costs the client a pause, and past a few a minute from one address the
# answer is a 429 until the minute is over (per worker). The right token still passes (see
# check_token), so neither bounds a guesser that sends many at once: a token's length does
# (`check` warns under MIN_ADMIN_TOKEN characters).
FAILED_AUTH_PAUSE = 0.25
FAILED_AUTH_LIMIT = 5
FAILED_AUTH_WINDOW = 60.0


class AdminConnection(ClientConnection):

    def handle(self, req):
        # An upgrade request (websocket) handed the connection to a tunnel that the admin
        # listener never opens: its parser reads no more requests, so the connection ends
        # with this answer (kept, it was held for as long as its client kept sending).
        keep_alive = req.keep_alive and self.runtime.alive and req.complete and \
            not self.upgraded
        try:
            reply = self.dispatch(req)
        except Exception as exc:        # an admin view must never take a worker down
            reply = Reply.json(500, {"error": "internal_error", "message": str(exc)})
        self.write(render_reply(reply, keep_alive, req.request_id, req.method == "HEAD"))
        return keep_alive

    def dispatch(self, req):
        if req.method not in ("GET", "HEAD"):
            return Reply.json(405, {"error": "method_not_allowed"}, [("Allow", "GET, HEAD")])
        token = self.runtime.conf.admin["token"]
        if token and req.path not in PROBES:
            refused = self.check_token(req, token)
            if refused is not None:
                return refused
        view = VIEWS.get(req.path)
        if view is not None:
            return view(self.runtime)
        kind, _, item_id = req.path.removeprefix("/admin/").partition("/")
        if kind in ITEM_VIEWS and item_id and "/" not in item_id:
            return ITEM_VIEWS[kind](self.runtime, item_id)
        return Reply.json(404, {"error": "not_found", "status": 404,
                                "message": f"no admin view at {req.path}",
                                "endpoints": sorted(VIEWS) + [f"/admin/{k}/ID"
                                                              for k in ITEM_VIEWS]})

    def check_token(self, req, token):
        """None if ``Authorization: Bearer <token>`` (scheme in any case, RFC 9110 11.1);
        else the 401 or, after FAILED_AUTH_LIMIT wrong tokens a minute from one address, 429
        (a scraper that sends no token at all is not guessing, and locks nobody out). The
        right token always passes: every local process shares 127.0.0.1, so a lockout that
        held it too would let any of them keep the metrics scraper out."""
        authorization = req.header("authorization")
        scheme, _, sent = (authorization or "").strip().partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(sent.strip().encode(),
                                                             token.encode()):
            return None
        failures = self.runtime.admin_auth_failures
        peer = self.client_ip       # the socket's peer: a forwarded address is not counted
        now = time.monotonic()
        count, since = failures.get(peer, (0, now))
        if now - since > FAILED_AUTH_WINDOW:
            count, since = 0, now
        if count >= FAILED_AUTH_LIMIT:
            # paused as a 401 is: answered at once, a lockout made guessing faster
            gevent.sleep(FAILED_AUTH_PAUSE)
            wait = int(FAILED_AUTH_WINDOW - (time.monotonic() - since)) + 1
            return Reply.json(429, {"error": "too_many_requests", "status": 429,
                                    "message": "too many wrong admin tokens; wait"},
                              [("Retry-After", str(max(wait, 1)))])
        if authorization is not None:      # a guess; no header at all guesses nothing
            if len(failures) > 10_000:      # (addresses of a whole /64, say) expired first
                for old_peer in [p for p, (_, t) in failures.items()
                                 if now - t > FAILED_AUTH_WINDOW]:
                    del failures[old_peer]
                if len(failures) > 10_000:
                    failures.clear()
            failures[peer] = (count + 1, since)
            gevent.sleep(FAILED_AUTH_PAUSE)
        return Reply.json(401, {"error": "unauthorized", "status": 401,
                                "message": "admin token missing or wrong"},
                          [("WWW-Authenticate", 'Bearer realm="gwserver admin"')])


def healthz(runtime):
    return Reply.json(200, {"status": "ok", "pid": os.getpid()})


def ready(runtime):
    if not runtime.alive:
        return Reply.json(503, {"status": "draining", "pid": os.getpid()})
    reader = runtime.table_reader
    if reader is not None and reader.generation == 0:
        return Reply.json(503, {"status": "waiting for the first route table",
                                "pid": os.getpid()})
    return Reply.json(200, {"status": "ready", "routes": len(runtime.router), "pid": os.getpid()})


def metrics_view(runtime):
    from . import metrics
    if runtime.metrics is None:
        return Reply.json(404, {"error": "metrics are off ([admin] metrics = false)"})
    runtime.update_gauges()
    from ..helpers.health import METRICS_FILE
    # the health process, the master (reload status: app.ReloadStatus), the rollouts helper
    extra = [os.path.join(runtime.health.state_dir, name) for name in (METRICS_FILE,
                                                                       "master.prom",
                                                                       "rollouts.prom")]
    if runtime.conf.etcd:
        extra.append(os.path.join(runtime.conf.etcd["runtime_dir"], "metrics.prom"))
    text = metrics.render(extra, runtime.watched_targets(), runtime.breaker_owners(),
                          runtime.target_urls(), runtime.consumer_ids())
    return Reply(200, text,
                 [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")])


def routes_view(runtime):
    reader = runtime.table_reader
    static = runtime.table.static_routes if runtime.table else set(runtime.router.routes)
    routes = [{"id": r.id, "paths": list(r.paths), "prefix": r.prefix,
               "methods": sorted(r.methods) if r.methods else None,
               "hosts": sorted(r.hosts or []) + [f"*{s}" for s in r.host_suffixes] or None,
               "priority": r.priority, "upstream": r.upstream.id,
               "targets": [t.url for t in r.upstream.targets], "plugins": list(r.chain.names),
               "source": "conf" if r.id in static else "etcd"}
              for r in sorted(runtime.router.routes.values(), key=lambda r: r.id)]
    return Reply.json(200, {"generation": reader.generation if reader else 0,
                            "pid": os.getpid(), "count": len(routes), "routes": routes})


def in_panic(runtime, upstream):
    """Whether traffic still goes to targets all shown down (panic mode): what an operator
    looking at one upstream, or at them all, asks."""
    return runtime.health.avoid(upstream)[1] if upstream.targets else False


def target_entries(runtime, upstream):
    """Each target of an upstream with its health, as both upstream views show them."""
    return [{"url": t.url, "weight": t.weight,
             **runtime.health.describe(upstream.id, t.url, passive=bool(upstream.passive))}
            for t in upstream.targets]


def upstream_entry(runtime, upstream):
    """What /admin/upstreams says of one upstream (its "routes" filled by the caller)."""
    return {"targets": target_entries(runtime, upstream),
            "balance": upstream.balance, "service": upstream.service,
            "health_check": bool(upstream.health_check), "passive": bool(upstream.passive),
            "panic": in_panic(runtime, upstream),
            "pass_host": upstream.pass_host, "pool_size": upstream.pool_size,
            "block_when_full": upstream.block_when_full, "routes": []}


def upstreams_view(runtime):
    upstreams = {}
    for route in runtime.router.routes.values():
        # the upstreams of its plugins too: a split's canary and its targets' health
        for upstream in (route.upstream, *route.chain.linked_upstreams()):
            entry = upstreams.get(upstream.id) or upstreams.setdefault(
                upstream.id, upstream_entry(runtime, upstream))
            if route.id not in entry["routes"]:
                entry["routes"].append(route.id)
    pools = {target: {"idle": idle, "max": most}
             for target, (idle, most) in runtime.upstream_connections().items()}
    return Reply.json(200, {"pid": os.getpid(), "upstreams": upstreams,
                            "pools_in_this_worker": pools})


def config_view(runtime):
    """Where the table comes from, and the master's reload status (app.ReloadStatus).
    Timestamps are RFC 3339 (UTC)."""
    conf = runtime.conf
    master = read_json(os.path.join(conf.server["state_dir"], "master.json")) or {}
    reload = {key: master.get(key) for key in ("generation", "last_reload_successful",
                                               "last_reload_success", "last_reload_attempt")}
    if conf.etcd is None:
        return Reply.json(200, {"source": "conf file", "path": os.path.abspath(conf.path),
                                "routes": len(runtime.router), "reload": reload})
    status = read_json(os.path.join(conf.etcd["runtime_dir"], STATUS)) or {}
    if status.get("last_sync"):
        status["last_sync"] = rfc3339(status["last_sync"])
    # (redacted as the other views are: check refuses a password in an endpoint, and the
    # status file holds what the sync process wrote)
    return Reply.json(200, redact({"source": "etcd", "path": os.path.abspath(conf.path),
                                   "endpoints": list(conf.etcd["endpoints"]),
                                   "prefix": conf.etcd["prefix"], "sync": status,
                                   "reload": reload,
                                   "worker_generation": runtime.table_reader.generation}))


def plugin_view(runtime, plugin):
    """/admin/<plugin's ADMIN_VIEW>: the plugin's own account of its state (its
    ``admin_view`` hook), given every route that uses it, with its config there."""
    # a config the route runs for a split's upstream is shown as that upstream's (Follow)
    uses = [(route if upstream is None else dataclasses.replace(route, upstream=upstream), conf)
            for route in sorted(runtime.router.routes.values(), key=lambda r: r.id)
            for step, step_conf in route.chain.steps
            for used, conf, upstream in served_configs(route, step, step_conf) if used is plugin]
    return Reply.json(200, {"pid": os.getpid(), **plugin.admin_view(uses, runtime.services)})


# -- one route or upstream as compiled, and where it came from --------------------------------

def route_view(runtime, route_id):
    route = runtime.router.routes.get(route_id)
    if route is None:
        return _not_found("route", route_id)
    spec = {k: v for k, v in route.spec.items() if k not in ("upstream", "plugins")}
    own = _upstream_spec(runtime, route.upstream, route).get("plugins")
    configured = {**(runtime.conf.plugins or {}), **upstream_scoped(own, load_registry()),
                  **(route.spec.get("plugins") or {})}
    return Reply.json(200, redact({
        "pid": os.getpid(), "id": route.id, "source": _source(runtime, "routes", route.id),
        "spec": spec, "methods": sorted(route.methods) if route.methods else None,
        "upstream": _upstream(runtime, route.upstream, route),
        "plugins": [_plugin(plugin, conf, configured) if upstream is None else
                    {**_plugin(plugin, conf, upstream_scoped(
                        _upstream_spec(runtime, upstream).get("plugins"), load_registry())),
                     "upstream": upstream.id}
                    for step, step_conf in route.chain.steps
                    for plugin, conf, upstream in unfollowed(step, step_conf)],
        "connect_timeout": route.connect_timeout, "read_timeout": route.read_timeout,
        "max_body_size": route.max_body_size, "retry": _retry(route.retry)}))


def upstream_view(runtime, upstream_id):
    upstream = None
    if runtime.table is not None:
        upstream = runtime.table.upstreams.get(upstream_id)
    # the routes that send to it: as their own upstream, or through a plugin (a split's
    # canary), as /admin/upstreams counts them; one only a split named was a 404
    sending = {r.id: u for r in runtime.router.routes.values()
               for u in (r.upstream, *r.chain.linked_upstreams()) if u.id == upstream_id}
    users = sorted(sending)
    if upstream is None and users:
        upstream = sending[users[0]]
    if upstream is None:
        return _not_found("upstream", upstream_id)
    route = runtime.router.routes[users[0]] if users else None
    return Reply.json(200, redact({"pid": os.getpid(), **_upstream(runtime, upstream, route),
                                   "panic": in_panic(runtime, upstream),
                                   "source": _source(runtime, "upstreams", upstream_id),
                                   "routes": users}))


def _upstream_spec(runtime, upstream, route=None):
    """The upstream as written: etcd's, the conf file's [upstreams.ID], or inline in
    ``route``; {} when none is found."""
    table = runtime.table
    if table is not None and upstream.id in table.upstream_specs:
        return table.upstream_specs[upstream.id][1] or {}
    named = runtime.conf.static_upstreams or {}
    if upstream.id in named:
        return named[upstream.id] or {}
    # (the route's own: a split's inline upstream is not the one its route spec holds)
    inline = (route.spec or {}).get("upstream") \
        if route is not None and route.upstream.id == upstream.id else None
    return inline if isinstance(inline, dict) else {}


def _retry(policy):
    """A RetryPolicy in the shape of its config (``retry`` in docs/routes.md)."""
    return {"on": sorted(policy.events) + [str(s) for s in sorted(policy.statuses)],
            "attempts": policy.attempts, "per_try_timeout": policy.per_try_timeout,
            "backoff": policy.backoff, "methods": sorted(policy.methods),
            "timeout": policy.timeout}


def _upstream(runtime, upstream, route=None):
    configured = upstream_scoped(_upstream_spec(runtime, upstream, route).get("plugins"),
                                 load_registry())
    out = {}
    for field in dataclasses.fields(upstream):
        value = getattr(upstream, field.name)
        if field.name == "targets":
            value = target_entries(runtime, upstream)
        elif field.name == "plugin_steps":
            out["plugins"] = [_plugin(p, c, configured) for p, c in value]
            continue
        elif field.name == "retry":
            value = _retry(value)
        elif field.name == "hash_key":
            kind, name = value
            value = f"{kind}:{name.decode('latin-1') if isinstance(name, bytes) else name}" \
                if name else kind
        elif field.name == "tls" and value is not None:
            value = dict(zip(("verify", "ca_file", "server_name", "cert_file", "key_file"),
                             value))
        out[field.name] = value
    return out


def _plugin(plugin, conf, configured=None):
    """A plugin step as configured: its config as written (``configured``: name -> config)
    validated by its schema, so defaults are filled; what the plugin compiled from it (a
    jwt verifier, the headers plugin's tuples) is not shown."""
    schema = getattr(plugin, "SCHEMA", None)
    written = (configured or {}).get(plugin.NAME)
    if schema is not None and isinstance(written, (dict, bool)):
        try:
            shown = schema.validate({} if written is True else written, plugin.NAME)
            return {"name": plugin.NAME, "priority": plugin.PRIORITY, "config": shown}
        except ConfigError:
            pass            # (it compiled from this very config: not expected)
    fields = getattr(schema, "fields", None)
    shown = {k: v for k, v in conf.items() if fields is None or k in fields}
    for k, v in shown.items():
        if dataclasses.is_dataclass(v):
            shown[k] = getattr(v, "id", str(v))
    return {"name": plugin.NAME, "priority": plugin.PRIORITY, "config": shown}


def _source(runtime, kind, item_id):
    conf, table = runtime.conf, runtime.table
    static = (table.static_routes if kind == "routes" else table.static_upstreams) \
        if table is not None else None
    dynamic = {} if table is None else (table.route_specs if kind == "routes"
                                        else table.upstream_specs)
    if item_id in dynamic and (static is None or item_id not in static):
        return {"from": "etcd", "key": f"{conf.etcd['prefix'].rstrip('/')}/{kind}/{item_id}",
                "revision": dynamic[item_id][0],
                "table_generation": runtime.table_reader.generation}
    return {"from": "conf file", "path": os.path.abspath(conf.path)}


def _not_found(kind, item_id):
    return Reply.json(404, {"error": "not_found", "status": 404,
                            "message": f"no {kind} {item_id!r} in this worker's table"})


ITEM_VIEWS = {"routes": route_view, "upstreams": upstream_view}

VIEWS = {"/-/healthz": healthz, "/-/ready": ready, "/metrics": metrics_view,
         "/admin/routes": routes_view, "/admin/upstreams": upstreams_view,
         "/admin/config": config_view}


def _plugin_views():
    from functools import partial
    return {f"/admin/{plugin.ADMIN_VIEW}": partial(plugin_view, plugin=plugin)
            for plugin in load_registry().values() if hasattr(plugin, "admin_view")}


VIEWS.update(_plugin_views())

