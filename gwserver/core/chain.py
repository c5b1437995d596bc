"""The ordered plugin chain of a route, and the plugin contract (docs/plugins.md).

A plugin is a module (or object) with ``NAME``, ``PRIORITY`` (higher runs first, as in APISIX),
``SCHEMA`` (a core.schema.Schema that fills defaults) and at least one phase:

    access(conf, ctx) -> Reply | None     before the upstream call; a Reply ends the request
    response(conf, ctx, head) -> None     after the upstream answered, before the client sees it
    finish(conf, ctx, status) -> None     once the request is over, whatever ended it (an
                                          upstream answer, a plugin's Reply, or a gateway error
                                          such as 502/504, which ``ctx.error`` then holds)

Optional hooks, each for one thing the core would otherwise have to know a plugin by name for:

    prepare(conf) -> conf                 precompute per-route state once, at compile time
    phases(conf) -> {phase}               the phases this config needs, when fewer than the
                                          plugin defines (headers without response edits
                                          runs no response phase): the others are left out
                                          of the route's chain, not called to do nothing
    needs(conf) -> [(plugin, setting)]    plugins this config only works beside
    claims(conf, ctx, route_id) -> dict | None
                                          verified claims, for routes that match on ``claims``
    link(conf, resolve) -> conf           resolve the upstream ids the config names
    upstream_refs(conf) -> {upstream id}  ... and say which (etcd follows them)
    upstreams(conf) -> [Upstream]         the compiled upstreams it may send to (pools kept)
    admin_view(uses, services) -> dict   its state at /admin/<ADMIN_VIEW>; ``uses`` holds
                                          (route, conf) for every route that runs it (an
                                          upstream plugin's beside a split: once for each
                                          upstream a config serves, as route.upstream)
    reply(conf, ctx, head) -> None        edit the head of an answer the gateway writes itself
                                          (a plugin's Reply or an error), as ``response`` does
                                          for upstream answers
    public_query(conf, query) -> str      the query without what this plugin keeps from
                                          leaving the gateway (key_auth's key): what an
                                          answer may carry of it (redirect's append_query)
    for_consumer(conf, consumer_id) -> conf
                                          the config as that consumer's own plugin: one that
                                          keeps state (a limit's bucket) keeps it apart from
                                          the route's and other consumers' configs
    RESPONSE_PRIORITY = 650               where its response phase runs, when not at PRIORITY
                                          (cors: its Vary and Access-Control-* are written
                                          after the plugins that edit the answer's headers)
    UPSTREAM_PLUGIN = True                may be set on an upstream object as well as a route
                                          (where a split may send elsewhere, each request
                                          runs its upstream's config: Follow)
    ROUTE_ONLY = True                     may not be a consumer's own plugin (it says what
                                          the route lets through: acl)
    UPSTREAM_PROTOCOL = "h2"              works only with an upstream of that protocol
    ANSWERS_PREFLIGHT = True              its access phase answers CORS preflights (cors):
                                          the router hands it those whose announced method
                                          the route takes, whatever its methods say of OPTIONS
    IDENTIFIES_CONSUMER = True            its access phase may identify a consumer
                                          (core.consumers.identify); that consumer's own
                                          plugins then replace the route's configs of the
                                          same plugins for the rest of the request
    CREDENTIAL = Schema(...)              what a consumer's credential for it looks like;
    prepare_credential(cred) -> cred      ... precomputed once per consumer
    credential_lookup(cred) -> hashable   ... and the key it is found under
    seal_credential(cred) -> cred         ... as stored, from one given with a clear secret
                                          (`consumers put` takes it so; etcd never holds it)
    same_secret(clear, cred) -> bool      ... whether a clear one holds a stored one's secret,
                                          where a salted hash hides a clash from the lookup

``check_plugin`` enforces this shape when a plugin is loaded, so a third-party plugin that
breaks it is refused with the reason, not discovered in the middle of a request. The proxy step
is not a plugin: it always runs last, after every access phase let the request on.
"""
import difflib
import inspect
import logging
import re

from ..errors import ConfigError, GreenletExit, HTTPError, WorkerExit
from ..redact import redact
from .consumers import Consumer
from .context import Reply, ResponseHead, _enc, parse_block
from .headers import (CONSUMER_SET, FIELD_NAME, NO_BODY_STATUSES, RESPONSE_RESERVED,
                      WRITTEN_UPSTREAM, is_field_name, is_field_value)
from .routes import Route
from .schema import show
from .throttledlog import throttled_log
from .tracing import is_tracestate_value

log = logging.getLogger("gwserver.plugins")

PHASES = ("access", "response", "finish")
# What the core passes each phase and hook: one that cannot take it is refused at load, not
# found out as a TypeError on every request that runs it.
ARGUMENTS = {"access": ("conf", "ctx"), "response": ("conf", "ctx", "head"),
             "finish": ("conf", "ctx", "status"), "prepare": ("conf",), "phases": ("conf",),
             "needs": ("conf",), "claims": ("conf", "ctx", "route_id"),
             "link": ("conf", "resolve"), "upstream_refs": ("conf",), "upstreams": ("conf",),
             "admin_view": ("uses", "services"), "reply": ("conf", "ctx", "head"),
             "upgraded": ("conf", "ctx"), "public_query": ("conf", "query"),
             "warnings": ("conf",), "prepare_credential": ("cred",),
             "credential_lookup": ("cred",), "seal_credential": ("cred",),
             "same_secret": ("clear", "cred"), "for_consumer": ("conf", "consumer_id")}
PROTOCOLS = {"http1": "HTTP/1.1", "h2": "HTTP/2"}


def check_plugin(plugin):
    """Raise TypeError naming what ``plugin`` gets wrong in the contract above."""
    from .schema import Schema
    missing = [attr for attr in ("NAME", "PRIORITY", "SCHEMA") if not hasattr(plugin, attr)]
    if missing:
        # the NAME a route uses, if it has one, and where it comes from
        home = getattr(plugin, "__name__", None) or type(plugin).__name__
        label = f"{plugin.NAME} ({home})" if isinstance(getattr(plugin, "NAME", None), str) \
            else home
        raise TypeError(f"plugin {label} lacks {', '.join(missing)}")
    name = plugin.NAME
    if not isinstance(name, str) or not name.replace("_", "a").isalnum() or name != name.lower():
        raise TypeError(f"plugin NAME must be lower-case letters, digits and _, got {name!r}")
    for attr in ("PRIORITY", "RESPONSE_PRIORITY"):
        value = getattr(plugin, attr, 0)
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"plugin {name}: {attr} must be an integer, got {value!r}")
    if not isinstance(plugin.SCHEMA, Schema):
        raise TypeError(f"plugin {name}: SCHEMA must be a gwserver.core.schema.Schema")
    _check_defaults(name, "SCHEMA", plugin.SCHEMA)
    for helper, hook in _misspelt(plugin):
        raise TypeError(f"plugin {name}: {helper} is not a phase or hook; did you mean {hook}? "
                        f"(a helper of that name: start it with _)")
    if not any(callable(getattr(plugin, phase, None)) for phase in PHASES):
        raise TypeError(f"plugin {name} defines no phase ({', '.join(PHASES)})")
    for hook, arguments in ARGUMENTS.items():
        if hasattr(plugin, hook) and not callable(getattr(plugin, hook)):
            raise TypeError(f"plugin {name}: {hook} must be a function")
        if hasattr(plugin, hook) and _never_runs(getattr(plugin, hook), hook):
            # called, it returns a coroutine (a generator) that nothing runs: a response or
            # finish phase that did nothing, without a word
            raise TypeError(f"plugin {name}: {hook} must be a plain function, not an async "
                            f"or generator one: the gateway calls it (gevent, not asyncio) "
                            f"and never awaits or iterates what it returns")
        if hasattr(plugin, hook) and not _takes(getattr(plugin, hook), len(arguments)):
            count = f"{len(arguments)} argument" + ("s" if len(arguments) > 1 else "")
            raise TypeError(f"plugin {name}: {hook} must take {count} "
                            f"({', '.join(arguments)}), it takes "
                            f"({', '.join(inspect.signature(getattr(plugin, hook)).parameters)})")
    if not isinstance(getattr(plugin, "UPSTREAM_PLUGIN", False), bool):
        raise TypeError(f"plugin {name}: UPSTREAM_PLUGIN must be True or False")
    if not isinstance(getattr(plugin, "IDENTIFIES_CONSUMER", False), bool):
        raise TypeError(f"plugin {name}: IDENTIFIES_CONSUMER must be True or False")
    if not isinstance(getattr(plugin, "ROUTE_ONLY", False), bool):
        raise TypeError(f"plugin {name}: ROUTE_ONLY must be True or False")
    if not isinstance(getattr(plugin, "ANSWERS_PREFLIGHT", False), bool):
        raise TypeError(f"plugin {name}: ANSWERS_PREFLIGHT must be True or False")
    if hasattr(plugin, "CREDENTIAL") and not isinstance(plugin.CREDENTIAL, Schema):
        raise TypeError(f"plugin {name}: CREDENTIAL must be a gwserver.core.schema.Schema")
    if hasattr(plugin, "CREDENTIAL"):
        _check_defaults(name, "CREDENTIAL", plugin.CREDENTIAL)
    if getattr(plugin, "UPSTREAM_PROTOCOL", None) not in (None, *PROTOCOLS):
        raise TypeError(f"plugin {name}: UPSTREAM_PROTOCOL must be one of {', '.join(PROTOCOLS)}")
    if hasattr(plugin, "admin_view") and not str(getattr(plugin, "ADMIN_VIEW", "")).isidentifier():
        raise TypeError(f"plugin {name}: admin_view needs ADMIN_VIEW, the name of its view "
                        f"(/admin/<ADMIN_VIEW>)")
    if hasattr(plugin, "link") != hasattr(plugin, "upstream_refs"):
        raise TypeError(f"plugin {name}: link and upstream_refs go together (etcd must know "
                        f"the upstreams a config names to follow their changes)")


# What a route's TOML or JSON config holds: a default of another type is already normalised.
_WRITTEN = (str, int, float, bool, list, dict)


def _check_defaults(name, attr, schema, prefix=""):
    """A default goes to the plugin unchecked on every route that leaves the field out: one
    its own check refuses (a status of 42) is the author's bug, named at load. None is unset.
    A default no route could write (bytes, a frozenset) is in the form the check returns,
    as the plugin uses it: not checked, which would refuse a plugin that works."""
    from .schema import Invalid, Schema, join
    for field in schema.fields.values():
        if isinstance(field.check, Schema):     # its fields' defaults are filled, unchecked
            _check_defaults(name, attr, field.check, join(prefix, field.name))
        if field.required or field.default is None:
            continue
        default = field.default_value()
        if not isinstance(default, _WRITTEN):
            continue
        try:
            field.check(default)
        except Invalid as exc:
            reasons = "; ".join(": ".join(part for part in (sub, reason) if part)
                                for sub, reason in exc.problems)
            raise TypeError(f"plugin {name}: {attr}: the default of "
                            f"{join(prefix, field.name)} fails its own check: {reasons}") from None


def _misspelt(plugin):
    """(function, hook) for each public function the plugin defines whose name is close to a
    phase or hook it lacks and that takes that hook's arguments: an `acess(conf, ctx)` beside
    a real `finish` is never called, and nothing else would say so (an allow-list that lets
    everyone through). Names alone are no proof: `respond(status, body)` is within difflib's
    0.8 of `response`, `warning(message)` of `warnings`, and such helpers are common."""
    home = getattr(plugin, "__name__", None) if inspect.ismodule(plugin) else \
        getattr(plugin, "__module__", None)
    for attr in dir(plugin):
        value = getattr(plugin, attr, None)
        if attr.startswith("_") or attr in ARGUMENTS or not inspect.isfunction(value) or \
                value.__module__ != home:      # imported helpers are not the author's names
            continue
        for hook in difflib.get_close_matches(attr, ARGUMENTS, n=1, cutoff=0.8):
            if not hasattr(plugin, hook) and _parameters(value) == ARGUMENTS[hook]:
                yield attr, hook


# The hooks whose return value the gateway iterates, which runs a generator's body. Every
# other hook's value is read as it is (a Reply, a conf, claims, a credential, a lookup): a
# generator is none of them, and a generator prepare() made the route's conf a generator
# object that `check` passed, every request on the route a 500.
_ITERATED = ("needs", "warnings", "upstreams")


def _never_runs(function, hook):
    """Whether calling ``function`` as ``hook`` runs none of its body."""
    return inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function) or \
        (hook not in _ITERATED and inspect.isgeneratorfunction(function))


def _parameters(function):
    """The names of ``function``'s parameters, or None when it has no signature to read."""
    try:
        return tuple(inspect.signature(function).parameters)
    except ValueError:
        return None


def _takes(function, count):
    """Whether ``function`` can be called with ``count`` positional arguments."""
    try:
        inspect.signature(function).bind(*range(count))
    except TypeError:
        return False
    except ValueError:      # no signature to read (a builtin): it is called and seen then
        return True
    return True


class Chain:
    __slots__ = ("steps", "names", "access_steps", "response_steps", "finish_steps",
                 "claims_steps", "reply_steps", "upgraded_steps", "identifies", "identifiers",
                 "third_party", "answers_preflight", "query_steps")

    def __init__(self, steps=()):
        # Ties in NAME order: in the config's order, two plugins of one PRIORITY ran one
        # way on one route and the other way on the next (a consumer's plugins, joined, too).
        self.steps = steps = tuple(sorted(steps, key=lambda step: (-step[0].PRIORITY,
                                                                   step[0].NAME)))
        self.names = tuple(plugin.NAME for plugin, _ in steps)
        self.access_steps = _running(steps, "access")
        self.response_steps = tuple(sorted(_running(steps, "response"),
                                           key=lambda step: -response_priority(step[0])))
        self.finish_steps = _running(steps, "finish")
        self.claims_steps = tuple((p, c) for p, c in steps if hasattr(p, "claims"))
        self.reply_steps = tuple((p, c) for p, c in steps if hasattr(p, "reply"))
        self.upgraded_steps = tuple((p, c) for p, c in steps if hasattr(p, "upgraded"))
        self.query_steps = tuple((p, c) for p, c in steps if hasattr(p, "public_query"))
        # by id: a plugin may be any object, hashable or not; the chain keeps it alive
        self.identifiers = frozenset(id(p) for p, _ in steps
                                     if getattr(p, "IDENTIFIES_CONSUMER", False))
        self.identifies = bool(self.identifiers)
        self.answers_preflight = any(getattr(p, "ANSWERS_PREFLIGHT", False) for p, _ in steps)
        # the plugins whose head edits are checked (the built-ins' are known good)
        self.third_party = frozenset(id(p) for p, _ in steps if not _shipped(p))

    def claims_of(self, ctx, route_id):
        """Verified claims for a ``claims`` route, from the plugin that provides them."""
        for plugin, conf in self.claims_steps:
            try:
                return plugin.claims(conf, ctx, route_id)
            except BaseException as exc:
                raise _raised(exc, plugin, "claims hook")
        return None

    def public_query(self, query):
        """``query`` as an answer may carry it: each plugin with a ``public_query`` hook takes
        out what it keeps from leaving the gateway (a credential read from the query)."""
        for plugin, conf in self.query_steps:
            try:
                query = plugin.public_query(conf, query)
            except BaseException as exc:
                raise _raised(exc, plugin, "public_query hook")
        return query

    def linked_upstreams(self, owner=None):
        """Upstreams the chain's plugins may send requests to besides the route's own, each
        once. With ``owner`` (a compile's), a plugin's ``upstreams`` that raises is a config
        error naming it (call_hook)."""
        def of(plugin, conf):
            if owner is None:
                return plugin.upstreams(conf)
            return call_hook(owner, plugin, "upstreams", lambda: list(plugin.upstreams(conf)))
        # Once each by identity: an Upstream with plugins (a breaker set on it) holds their
        # dict configs and cannot be hashed: a split naming one was refused, "a value could
        # not be checked: TypeError: unhashable type: 'dict'"
        return list({id(upstream): upstream for plugin, conf in self.steps
                     if hasattr(plugin, "upstreams") for upstream in of(plugin, conf)}.values())

    def check_upstream(self, owner, upstream):
        """Problems with ``upstream`` for plugins that need a protocol of it."""
        return [f"{owner}: plugins.{plugin.NAME}: the upstream must speak "
                f"{PROTOCOLS[needed]} (protocol = \"{needed}\")"
                for plugin, _ in self.steps
                for needed in [getattr(plugin, "UPSTREAM_PROTOCOL", None)]
                if needed is not None and upstream.protocol != needed]

    def run_access(self, ctx):
        if self.identifies:
            return self._run_access_joining(ctx)
        for plugin, conf in self.access_steps:
            try:
                reply = plugin.access(conf, ctx)
                if reply is None and not _shipped(plugin):
                    _check_request(plugin, ctx)
            except BaseException as exc:
                raise _raised(exc, plugin, "access phase")
            if reply is not None:
                ctx.ended_by = plugin.NAME
                return _checked(plugin, reply)
        return None

    def _run_access_joining(self, ctx):
        """run_access for a chain that may identify a consumer: once one is, the rest of the
        request follows the route's chain joined with the consumer's plugins (``ctx.chain``).
        The consumer's steps that rank above the plugin that identified it run right after
        it (until then nobody knew whose they were). A later plugin that identifies another
        consumer joins that one's instead; an anonymous consumer is joined only after the
        last auth plugin, as one of them may still name the real consumer (whose request
        must not carry what the anonymous one's plugins did: a cors that allows any origin)."""
        steps, i, ran, joined_for = self.access_steps, 0, set(), None
        while True:
            while i < len(steps):
                if ctx._vars is not None and REPLACEABLE in ctx._vars and \
                        not self._may_replace(ctx._vars[REPLACEABLE][0], steps[i:]):
                    # No later auth plugin, nor a consumer's config of the refusing plugin,
                    # can replace the route's no: it ends the request before the plugins
                    # after (a limit counted another site's refused websockets as the
                    # user's requests, and the user's own got 429)
                    return _deferred_refusal(ctx, REPLACEABLE)
                plugin, conf = steps[i]
                i += 1
                ran.add(id(conf))
                try:
                    reply = plugin.access(conf, ctx)
                    if reply is None and not _shipped(plugin):
                        _check_request(plugin, ctx)
                except BaseException as exc:
                    raise _raised(exc, plugin, "access phase")
                if reply is not None:
                    ctx.ended_by = plugin.NAME
                    return _checked(plugin, reply)
                if ctx.consumer is not joined_for and id(plugin) in self.identifiers:
                    if ctx.var("anonymous") and any(id(later) in self.identifiers
                                                    for later, _ in steps[i:]):
                        continue
                    joined_for, steps, i = self._join(ctx, ran)
                elif ctx.consumer is None and ctx._vars is not None and \
                        DEFERRED_REFUSAL in ctx._vars and not any(
                            id(later) in self.identifiers for later, _ in steps[i:]):
                    # no later auth plugin can name the client: refused before the plugins
                    # after them (acl's 403, a limit's count) take it for an unknown one
                    return _deferred_refusal(ctx)
            if ctx.consumer is None:
                # (no vars: no refusal waits, and no call on a jwt route's every request)
                return None if ctx._vars is None else \
                    _deferred_refusal(ctx) or _deferred_refusal(ctx, REPLACEABLE)
            if ctx.consumer is joined_for:
                return None if ctx._vars is None else _deferred_refusal(ctx, REPLACEABLE)
            joined_for, steps, i = self._join(ctx, ran)     # the anonymous one, at the end

    def _may_replace(self, plugin_name, steps):
        """May one of ``steps`` (to run) replace a refusal of ``plugin_name``'s
        (refuse_unless_replaced): an auth plugin, or a config of that plugin?"""
        return any(id(plugin) in self.identifiers or plugin.NAME == plugin_name
                   for plugin, _ in steps)

    def _join(self, ctx, ran):
        """Follow ctx.consumer's joined chain from here: (consumer, its steps not run, 0)."""
        consumer = ctx.consumer
        chain = consumer.joined_with(self) if consumer.chain.steps else self
        ctx.chain = None if chain is self else chain
        return consumer, [step for step in chain.access_steps if id(step[1]) not in ran], 0

    def response_steps_of(self, ctx):
        """The response steps this request runs: the route's, or the route's joined with
        an identified consumer's plugins (which may bring some the route has not)."""
        return (ctx.chain or self).response_steps

    def finish_steps_of(self, ctx):
        return (ctx.chain or self).finish_steps

    def run_response(self, ctx, head):
        chain = ctx.chain or self
        for plugin, conf in chain.response_steps:
            checked = chain.third_party and id(plugin) in chain.third_party
            before = _before(head) if checked else None
            try:
                plugin.response(conf, ctx, head)
                if checked:
                    _check_head(plugin, head, before)
                    _check_request_id(plugin, ctx)      # the answer's X-Request-ID
            except BaseException as exc:
                raise _raised(exc, plugin, "response phase")

    def run_reply(self, ctx, reply, shipped_only=False):
        """Let plugins with a ``reply`` hook edit the head of an answer the gateway wrote
        itself (a plugin's Reply, a 404, a 502): cors adds its headers to a 401, so a browser
        can read why it was refused. ``shipped_only``: the built-in hooks alone (the worker's
        ticker, which must never wait: a third-party hook may, and held every deadline)."""
        chain = ctx.chain or self
        steps = chain.reply_steps
        if shipped_only and chain.third_party:
            steps = tuple((p, c) for p, c in steps if id(p) not in chain.third_party)
        if steps:
            head = ResponseHead(reply.status, [(_enc(k), _enc(v)) for k, v in reply.headers])
            for plugin, conf in steps:
                # a third-party hook's head is checked as its response hook's would be
                before = _before(head) if id(plugin) in chain.third_party else None
                request_id = getattr(ctx, "request_id", None)
                try:
                    plugin.reply(conf, ctx, head)
                    if before:
                        _check_head(plugin, head, before)
                        _check_request_id(plugin, ctx)
                except (WorkerExit, GreenletExit):
                    raise       # a kill: the answer is for nobody, and no failure of the hook's
                except (Exception, SystemExit) as exc:
                    ctx.request_id = request_id     # the answer's X-Request-ID, as it was
                    # The answer is decided and may be the 500 of an error: raising would
                    # make the error path run this again and send nothing. It goes out as
                    # the gateway wrote it, with none of the hooks' edits.
                    route_id = ctx.route.id if ctx.route else None
                    throttled_log.log(log, logging.ERROR, ("reply", route_id, plugin.NAME),
                                      "route %s: plugin %s failed in reply", route_id,
                                      plugin.NAME, exc_info=exc)
                    return
            reply.headers = head.headers

    def run_upgraded(self, ctx):
        """The upstream switched protocols (a websocket's checked 101): what the exchange
        says of the upstream is known now, while finish comes when the tunnel closes, hours
        later perhaps. Runs before the tunnel; one that raises is logged, as in finish."""
        for plugin, conf in (ctx.chain or self).upgraded_steps:
            try:
                plugin.upgraded(conf, ctx)
            except (WorkerExit, GreenletExit):
                raise
            except (Exception, SystemExit) as exc:
                throttled_log.log(log, logging.ERROR, ("upgraded", ctx.route.id, plugin.NAME),
                                  "route %s: plugin %s failed in upgraded", ctx.route.id,
                                  plugin.NAME, exc_info=exc)

    def run_finish(self, ctx, status):
        """The answer is out: a failing plugin here is logged, never turned into a response.
        A kill that lands in a plugin's finish while it waits (gevent I/O of a third-party
        one) is no failure of the plugin's, and skips none of the others' finish: it is
        raised once they ran. Raised at once, the drain's GreenletExit skipped limit_conn's
        release (the slot held in Redis for lease_seconds) and the access line; caught as
        the plugin's failure, an HTTP/2 client's hang-up was logged as the plugin's bug."""
        killed = None
        for plugin, conf in (ctx.chain or self).finish_steps:
            before = None if _shipped(plugin) else \
                [getattr(ctx, name) for name, _ in _READ_AFTER_FINISH]
            try:
                plugin.finish(conf, ctx, status)
            except WorkerExit:
                raise
            except GreenletExit as exc:
                killed = exc
            except (Exception, SystemExit) as exc:
                throttled_log.log(log, logging.ERROR, ("finish", ctx.route.id, plugin.NAME),
                                  "route %s: plugin %s failed in finish", ctx.route.id,
                                  plugin.NAME, exc_info=exc)
            if before is not None:
                _undo_mistyped(plugin, ctx, before)
        if killed is not None:
            raise killed


# What the access line, the metrics and the span read of a request after its finish phase,
# and the types they read: a third-party finish phase that set one to another type (ctx.url
# a str) lost the request's access line, a traceback each time.
# (route first: its id names the edit undone)
_READ_AFTER_FINISH = (("route", (Route, type(None))), ("url", bytes), ("attempts", int),
                      ("body_size", int), ("upstream_seconds", (float, int, type(None))),
                      ("error", (HTTPError, type(None))),
                      ("consumer", (Consumer, type(None))))


def _undo_mistyped(plugin, ctx, before):
    """Put back what a third-party finish phase set to another type than the core's, and
    name it (once a minute): the request is logged as it was served."""
    for (name, kind), value in zip(_READ_AFTER_FINISH, before):
        now = getattr(ctx, name)
        if now is not value and not isinstance(now, kind):
            setattr(ctx, name, value)
            route_id = ctx.route.id if ctx.route else None
            throttled_log.log(log, logging.ERROR, ("finish-type", route_id, plugin.NAME, name),
                              "route %s: plugin %s set ctx.%s to a %s in finish, where the "
                              "gateway reads a %s: put back", route_id, plugin.NAME, name,
                              type(now).__name__, _type_names(kind))


def _type_names(kind):
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("None" if k is type(None) else k.__name__ for k in kinds)


def _blame(exc, plugin, where):
    """Name the plugin in the traceback the worker logs: its frames are the core's up to the
    plugin's own file, and the route may run several. (A try costs nothing until raised.)
    An HTTPError is an answer, not a bug; an instance raised again keeps one note."""
    note = f"raised by plugin {plugin.NAME} in its {where}"
    if not isinstance(exc, HTTPError) and note not in getattr(exc, "__notes__", ()):
        exc.add_note(note)


class PluginExit(RuntimeError):
    """A plugin called sys.exit() (argparse's on a value it refuses, an exit() left in):
    raised in a request's greenlet, SystemExit ended the whole worker, every request it
    served cut without an answer. It is the plugin's bug, as any other exception."""


def _raised(exc, plugin, where):
    """What goes on up the request path for ``exc``, out of ``plugin``'s hook: its exception,
    named (_blame); its sys.exit() as a PluginExit; the worker's own exit (WorkerExit, a
    signal's, in whatever greenlet it found), a greenlet's kill, a KeyboardInterrupt as
    they came."""
    if isinstance(exc, Exception):
        _blame(exc, plugin, where)
    elif isinstance(exc, SystemExit) and not isinstance(exc, WorkerExit):
        error = PluginExit(f"plugin {plugin.NAME} called sys.exit({exc.code!r}) in its "
                           f"{where}")
        _blame(error, plugin, where)
        error.__cause__ = exc
        return error
    return exc


DEFERRED_REFUSAL = "refused_unless_identified"


def refuse_unless_identified(ctx, plugin_name, reply):
    """``reply`` ends the request after the access phases unless a later plugin identifies
    a consumer: an auth plugin that cannot name the client (its anonymous consumer is gone)
    must not refuse a credential a later auth plugin of the route takes. The first stands."""
    ctx.vars.setdefault(DEFERRED_REFUSAL, (plugin_name, reply))


REPLACEABLE = "refused_unless_replaced"


def refuse_unless_replaced(ctx, plugin_name, reply):
    """``reply`` ends the request after the access phases unless the consumer a later auth
    plugin names has a config of ``plugin_name`` of its own, which replaces the route's for
    its requests: that one's access runs then and judges anew (``withdraw_refusal``). A
    route's cors runs before the auth plugins: its no to a websocket stood where the
    consumer's cors said yes (as it does for the consumer's other requests)."""
    ctx.vars[REPLACEABLE] = (plugin_name, reply)


def withdraw_refusal(ctx, plugin_name):
    """A config of ``plugin_name`` judges the request anew: the route's refusal goes."""
    if ctx._vars is not None and ctx._vars.get(REPLACEABLE, ("",))[0] == plugin_name:
        del ctx._vars[REPLACEABLE]


def _deferred_refusal(ctx, key=DEFERRED_REFUSAL):
    """The refusal an auth plugin left for the end (refuse_unless_identified; with ``key``
    REPLACEABLE, a route's refuse_unless_replaced), or None."""
    deferred = ctx.var(key)
    if deferred is None:
        return None
    ctx.ended_by, reply = deferred
    return reply


def _checked(plugin, reply):
    """``reply``, if it is one: anything else is the plugin's bug, named here rather than as an
    AttributeError in whatever code writes the answer (a 500 either way)."""
    if not isinstance(reply, Reply):
        raise TypeError(f"plugin {plugin.NAME}: access must return a Reply or None, "
                        f"got {type(reply).__name__}")
    status = reply.status
    if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
        # written as it is, "HTTP/1.1 42 Unknown" is no answer a client can read, and a 1xx
        # is an interim one: the client waits on for the final answer, and takes the next
        # one on its connection (or this one's body) for it
        raise TypeError(f"plugin {plugin.NAME}: its Reply's status must be an integer from 200 "
                        f"to 599 (a final answer), got {status!r}")
    if not isinstance(reply.body, (bytes, bytearray)):
        raise TypeError(f"plugin {plugin.NAME}: its Reply's body must be bytes, got "
                        f"{type(reply.body).__name__}")
    for name, value in reply.headers:
        if not _is_field(name, value):
            # a value a client chose, with CR LF in it, would add headers of its own
            raise TypeError(f"plugin {plugin.NAME}: its Reply's header {name!r} is no field HTTP "
                            f"allows (a token name; a value without CR, LF or other controls)")
        if _enc(name).lower() in RESPONSE_RESERVED:
            # a second Content-Length or Connection beside the gateway's: two framings
            raise TypeError(f"plugin {plugin.NAME}: its Reply sets {name}, which the gateway "
                            f"writes itself")
    return reply


_SHIPPED = set()        # id() of each built-in plugin module (kept alive by sys.modules)


def mark_shipped(plugin):
    """For the plugin loader: ``plugin`` is a built-in, whose head edits are known good. Its
    name is no proof: any object may call itself "gwserver.plugins.x", and a package may put
    a module there."""
    _SHIPPED.add(id(plugin))


def _shipped(plugin):
    return id(plugin) in _SHIPPED


def _before(head):
    """What ``_check_head`` compares a hook's edits with: the status, and the block as read
    (kept, not split: a hook that only appends splits nothing) or, once split, the
    Content-Length fields."""
    block = head.block_as_read()
    return head.status, block if block is not None else _content_length(head.headers)


def _content_length(pairs):
    return [value for name, value in pairs if name.lower() == b"content-length"]


def _check_head(plugin, head, before):
    """A third-party plugin's edits of an answer's head: ``head.headers`` is a list it may edit
    in place, past ``set_header``'s reach. A value with CR LF (a client's, say) would add
    headers of its own; a hop-by-hop field or a changed Content-Length would frame the body
    apart from what the gateway sends (a filter, as gzip's, makes the gateway frame it), and
    so would a status that has no body where the upstream's has one, or the reverse (the
    gateway frames the body by the upstream's status; rewrite refuses such changes too).
    ``before``: what ``_before`` took of the head the hook was given."""
    status, length = before
    problem = head.status != status and _status_problem(status, head.status)
    if problem:
        raise TypeError(f"plugin {plugin.NAME}: it changed the answer's status from {status} "
                        f"to {head.status!r}: {problem}")
    block = head.block_as_read()
    if type(length) is bytes and block is not None and block.startswith(length):
        # only appended to: the lines it added, against none of them a Content-Length
        fields, length = parse_block(block[len(length):]), []
    else:
        fields = head.headers
        if type(length) is bytes:
            length = _content_length(parse_block(length))
    for name, value in fields:
        if type(name) is not bytes or type(value) is not bytes or not _is_field(name, value):
            raise TypeError(f"plugin {plugin.NAME}: a response header it set, {name!r}, is no "
                            f"field HTTP allows (bytes: a token name; a value without CR, LF "
                            f"or other controls)")
        lower = name.lower()
        if lower in RESPONSE_RESERVED and lower != b"content-length":
            raise TypeError(f"plugin {plugin.NAME}: it set the response header {name!r}, "
                            f"which the gateway writes itself")
    if not head.body_filters and _content_length(fields) != length:    # [] filters nothing
        raise TypeError(f"plugin {plugin.NAME}: it changed the answer's Content-Length, which "
                        f"frames the body the gateway relays as the upstream sent it")


def _check_request(plugin, ctx):
    """A third-party plugin's edits of the request's headers, which the HTTP/1.1 upstream
    head is written from as they are: ``set_header`` checks names, not values, and
    ``ctx.headers`` is a list it may edit in place. A value with CR LF (a client's decoded
    query value, say) wrote headers of its own upstream, a Content-Length among them that
    framed the body apart from the gateway's (the rest of the head read as body, or a
    request smuggled on a pooled connection). The gateway's own fields (Host, framing,
    hop-by-hop, X-Forwarded-*) never sit in that list: one there is the plugin's. Nor do
    X-Consumer-ID and -Groups but as the identified consumer's own pair (consumers.identify):
    appended by the plugin, the upstream was told a consumer no auth plugin named."""
    consumer = getattr(ctx, "consumer", None)
    own = consumer.upstream_headers if consumer is not None else ()
    for name, value in ctx.headers:
        if type(name) is not bytes or type(value) is not bytes or not _is_field(name, value):
            raise TypeError(f"plugin {plugin.NAME}: a request header it set, {name!r}, is no "
                            f"field HTTP allows (bytes: a token name; a value without CR, LF "
                            f"or other controls)")
        lower = name.lower()
        if lower in WRITTEN_UPSTREAM or lower in CONSUMER_SET and (name, value) not in own:
            raise TypeError(f"plugin {plugin.NAME}: it set the request header {name!r}, "
                            f"which the gateway writes itself")
    # The request line, Host and X-Request-ID are written from these as they are, the last
    # in the client's answer too: a client's decoded "a\r\nX-Injected: 1" in any of them
    # wrote lines of its own upstream, or split the answer.
    for what, fits in (("method", _TOKEN), ("path", _TARGET), ("query", _TARGET)):
        value = getattr(ctx, what, None)        # (the reader sets them all: a test may not)
        if value is not None and (type(value) is not str or not fits(value)):
            raise TypeError(f"plugin {plugin.NAME}: the request's {what} it set, "
                            f"{value!r:.60}, cannot stand in a request line (text without "
                            f"white space or control characters)")
    # Host (pass_host "pass") and X-Forwarded-Host are written from host_header, and
    # X-Forwarded-For from client_ip, as they are too; so are the header_map values of the
    # forwarded headers and Via, which set_header refuses but a plugin may write there.
    for what in ("upstream_host_header", "host_header"):
        host = getattr(ctx, what, None)
        if host is not None and (type(host) is not bytes or not _TARGET_BYTES(host)):
            raise TypeError(f"plugin {plugin.NAME}: the {what} it set, {host!r:.60}, is no "
                            f"host (bytes without white space or control characters)")
    client = getattr(ctx, "client_ip", None)
    if client is not None and (type(client) is not str or not client or not _TARGET(client)):
        raise TypeError(f"plugin {plugin.NAME}: the client address it set, {client!r:.60}, "
                        f"is no address (text without white space or control characters)")
    hmap = getattr(ctx, "header_map", None) or {}
    for name in _WRITTEN_FROM_MAP:
        value = hmap.get(name)
        if value is not None and (type(value) is not bytes or not is_field_value(value)):
            raise TypeError(f"plugin {plugin.NAME}: the {name.decode()} it put in header_map, "
                            f"{value!r:.60}, is no field value (bytes without CR, LF or other "
                            f"controls)")
    fault = (getattr(ctx, "_vars", None) or {}).get("fault")
    if fault and not is_tracestate_value(fault):      # it goes upstream as gwfault=
        raise TypeError(f"plugin {plugin.NAME}: the fault it set in ctx.vars, {fault!r:.60}, "
                        f"is no tracestate value (1 to 256 printable ASCII characters, no "
                        f"',' or '=')")
    _check_request_id(plugin, ctx)


def _check_request_id(plugin, ctx):
    """A third-party hook's ``ctx.request_id``: X-Request-ID upstream and in the answer."""
    value = getattr(ctx, "request_id", None)
    if value is not None and (type(value) is not str or not _TARGET(value)):
        ctx.request_id = None       # the 500 that follows goes out without it
        raise TypeError(f"plugin {plugin.NAME}: the request id it set, {value!r:.60}, is no "
                        f"header value (text without white space or control characters)")


# What a request line's method and target, a Host and an X-Request-ID may hold: visible
# characters (obs-text too: a query as an HTTP/1.1 client sent it), never a space or control.
_TOKEN = re.compile(FIELD_NAME).fullmatch
_TARGET = re.compile("[\x21-\x7e\x80-\xff]*").fullmatch
_TARGET_BYTES = re.compile(b"[\x21-\x7e\x80-\xff]+").fullmatch
# header_map values the upstream head carries as they are (proxy.forwarded_values, via_chain)
_WRITTEN_FROM_MAP = (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"via")


def _status_problem(old, new):
    """Why ``new`` may not replace the status ``old`` of an answer, or None."""
    if type(new) is not int or not 100 <= new <= 599:
        return "a status is an integer from 100 to 599"
    if min(old, new) < 200 or {old, new} & NO_BODY_STATUSES:
        return "the body is framed by the upstream's status (1xx, 204 and 304 have none)"
    return None


def _is_field(name, value):
    try:
        return is_field_name(name.encode("latin-1") if isinstance(name, str) else name) and \
            is_field_value(value)
    except (AttributeError, TypeError, UnicodeEncodeError):     # not text at all
        return False


def _phases_problem(plugin, conf):
    """What is wrong with a plugin's ``phases(conf)`` for this config, or None. Checked once
    here, so the chains built from the step later (a consumer's joined chain) can rely on it;
    a third-party hook that raises is a config error naming the route, not a crash."""
    if not hasattr(plugin, "phases"):
        return None
    try:
        phases = plugin.phases(conf)
        unknown = set(phases) - set(PHASES) if isinstance(phases, (set, frozenset, list,
                                                                    tuple)) else None
    except WorkerExit:
        raise
    except (Exception, SystemExit) as exc:
        return f"the plugin's phases() failed: {exc!r}"
    if unknown is None:
        return f"the plugin's phases() must return a set of phase names, got {phases!r}"
    if unknown:
        return f"the plugin's phases() names what is not a phase: " \
               f"{', '.join(sorted(map(repr, unknown)))}"
    lacking = sorted(phase for phase in phases if not hasattr(plugin, phase))
    if lacking:
        # the chain runs a phase only where the plugin defines it: left out without a word,
        # the plugin's check would never run on this route
        return f"the plugin's phases() names {', '.join(lacking)}, which it does not define"
    return None


def response_priority(plugin):
    """Where ``plugin``'s response phase runs among the route's (higher first)."""
    return getattr(plugin, "RESPONSE_PRIORITY", plugin.PRIORITY)


def _running(steps, phase):
    """The steps that run ``phase``: their plugin defines it, and their config needs it."""
    return tuple((plugin, conf) for plugin, conf in steps if hasattr(plugin, phase) and
                 (not hasattr(plugin, "phases") or phase in plugin.phases(conf)))


def route_claims(ctx, route):
    """The router's ``claims_of`` for one request: claims under ``route``'s own chain."""
    return route.chain.claims_of(ctx, route.id)


EMPTY_CHAIN = Chain()


def build_chain(owner, route_plugins, global_plugins, registry, upstream_steps=()):
    """Validate and order the plugins of one route. A route's config of a plugin replaces its
    upstream's (``upstream_steps``, validated by ``upstream_plugins``), which replaces the
    global one."""
    merged = dict(global_plugins or {})
    for plugin, conf in upstream_steps:
        merged.pop(plugin.NAME, None)
    merged.update(route_plugins or {})
    steps = [step for step in upstream_steps if step[0].NAME not in merged]
    if not merged:
        return Chain(steps) if steps else EMPTY_CHAIN
    problems = []
    for name, conf in merged.items():
        plugin = registry.get(name)
        if plugin is None:
            refused = getattr(registry, "refused", {}).get(name)
            # `plugins.rollout` for split's `rollout` setting: where it belongs, as the conf
            # file's checker says of a key in the wrong section
            owners = sorted(other for other, known in registry.items()
                            if name in getattr(getattr(known, "SCHEMA", None), "fields", ()))
            problems.append(f"{owner}: plugins.{name}: unknown plugin " + (
                f"(installed, but its {refused})" if refused else
                f"(available: {', '.join(sorted(registry)) or 'none'})") + (
                f"; it is a setting of {', '.join(f'plugins.{o}' for o in owners)}"
                if owners and not refused else ""))
            continue
        contested = getattr(registry, "contested", None)
        if contested and name in contested:
            problems.append(f"{owner}: plugins.{name}: ambiguous: {contested[name]}")
            continue
        if conf is None or conf is False:
            continue            # a route may switch off a global plugin with `name = false`
        if conf is True:
            conf = {}
        step = "SCHEMA check"
        try:
            conf = plugin.SCHEMA.validate(conf, f"{owner}: plugins.{name}")
            if hasattr(plugin, "prepare"):
                step = "prepare()"
                conf = plugin.prepare(conf)
                if conf is None:
                    # a prepare that edits its conf and forgets to return it: every request
                    # the route served would be the plugin's 500
                    problems.append(f"{owner}: plugins.{name}: the plugin's prepare() "
                                    f"returned None (it must return the conf)")
                    continue
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        except ValueError as exc:
            # The config is echoed to logs and `check`: never with its secrets, so with no
            # text at all (a header value under any name may be one).
            problems.append(f"{owner}: plugins.{name}: {exc} "
                            f"(config {show(redact(conf, every_text=True))})")
            continue
        except WorkerExit:
            raise
        except (Exception, SystemExit) as exc:
            # A third-party bug, not a bad value: named here, where the route and plugin are
            # known (ConfigError.of, further out, names neither). A sys.exit() too (argparse's
            # on a value it refuses): raised in the master's check of a reload, it ended the
            # master and every worker with it.
            problems.append(f"{owner}: plugins.{name}: the plugin's {step} failed: {exc!r}")
            continue
        problem = _phases_problem(plugin, conf)
        if problem:
            problems.append(f"{owner}: plugins.{name}: {problem}")
            continue
        steps.append((plugin, conf))
    names = {plugin.NAME for plugin, _ in steps}
    for plugin, conf in steps:
        try:
            # unpacked here: a needs() of names, not (plugin, setting) pairs, is its bug too
            needed = [(name, what) for name, what in plugin.needs(conf)] \
                if hasattr(plugin, "needs") else ()
        except WorkerExit:
            raise
        except (Exception, SystemExit) as exc:        # a third-party bug: named as prepare()'s are
            problems.append(f"{owner}: plugins.{plugin.NAME}: the plugin's needs() failed: "
                            f"{exc!r}")
            continue
        for name, what in needed:
            if name not in names:
                problems.append(f"{owner}: plugins.{plugin.NAME}.{what} needs the {name} "
                                f"plugin on the route or in [plugins]; without it, it never "
                                f"applies")
    if problems:
        raise ConfigError(problems)
    return Chain(steps)


def call_hook(owner, plugin, hook, call):
    """``call()``, a compile-time hook of ``plugin`` (link, upstreams, upstream_refs,
    for_consumer): what it raises is a config error naming ``owner``, the plugin and the hook,
    as prepare()'s is. Further out it was "a value could not be checked: KeyError: 'spare'",
    naming none of them; and a raising upstream_refs, never called by a check, ended the
    sync process at the next upstream put in etcd. A ConfigError (link's resolve of an
    unknown upstream id) is the config's, as it came."""
    try:
        return call()
    except (ConfigError, WorkerExit):
        raise
    except (Exception, SystemExit) as exc:
        raise ConfigError(f"{owner}: plugins.{plugin.NAME}: the plugin's {hook}() failed: "
                          f"{exc!r}") from None


def upstream_plugins(owner, plugins, registry):
    """Validate the plugins set on an upstream object -> ((plugin, conf), ...).

    Only plugins with ``UPSTREAM_PLUGIN = True`` may be set there; their config gets
    ``scope = "upstream"`` so that they key their state by the upstream, not the route.
    """
    problems = []
    for name in plugins or {}:
        plugin = registry.get(name)
        if plugin is not None and not getattr(plugin, "UPSTREAM_PLUGIN", False):
            allowed = sorted(n for n, p in registry.items() if getattr(p, "UPSTREAM_PLUGIN", False))
            problems.append(f"{owner}: plugins.{name}: cannot be set on an upstream "
                            f"(upstream plugins: {', '.join(allowed) or 'none'})")
    if problems:
        raise ConfigError(problems)
    scoped = upstream_scoped(plugins, registry)
    return build_chain(owner, scoped, None, registry).steps if scoped else ()


def upstream_scoped(plugins, registry):
    """The plugins written on an upstream object as they run there: keyed by the upstream
    (``scope = "upstream"``). The admin views show them so: as written, an upstream's
    breaker was shown with "scope": "route", keyed as it is not. Only a plugin whose SCHEMA
    has a ``scope`` (breaker's) is given one: a third-party UPSTREAM_PLUGIN without was
    refused on every upstream object ("plugins.NAME: scope: unknown key")."""
    def scoped(name, conf):
        if "scope" not in getattr(getattr(registry.get(name), "SCHEMA", None), "fields", {}):
            return conf
        return dict(conf, scope="upstream") if isinstance(conf, dict) else \
            {"scope": "upstream"} if conf is True else conf
    return {name: scoped(name, conf) for name, conf in (plugins or {}).items()}


# -- upstream plugins on a route that may send elsewhere (a split) ----------------------------

# The hooks a followed plugin may have: each takes (conf, ctx, ...), and ctx says the upstream.
FOLLOWED_HOOKS = ("access", "response", "finish", "upgraded", "reply")
# ... and those it may have besides: called at compile time on the upstream's own config
# (prepare, phases, needs, warnings), on the module (admin_view), or for a consumer's own
# chain (for_consumer), never with a request whose upstream would choose the config.
UNFOLLOWED_HOOKS = ("prepare", "phases", "needs", "warnings", "admin_view", "for_consumer")


class FollowedConfs:
    """The configs of one upstream plugin on a route whose plugins may send a request to
    another upstream than the route's own: ``by_upstream`` ((Upstream, conf), ...) for the
    linked upstreams that set the plugin themselves, ``default`` (the route's own upstream's,
    or [plugins]', or None) for every other one. ``phases_of``: the plugin's ``phases``
    hook, when it has one (a config runs only the phases it names)."""
    __slots__ = ("default", "by_upstream", "_by_id", "_left_out")

    def __init__(self, default, by_upstream, phases_of=None):
        self.default = default
        self.by_upstream = tuple(by_upstream)
        self._by_id = {id(upstream): conf for upstream, conf in self.by_upstream}
        # id(conf) -> the phases its phases() leaves out: the chain runs a phase when one
        # config needs it, and the others' were called all the same (a plugin's 500 on
        # every request sent to an upstream whose config had no use for its response)
        self._left_out = {} if phases_of is None else {
            id(conf): frozenset(PHASES).difference(phases_of(conf)) for conf in self.all()}

    def of(self, upstream, phase=None):
        """The config for a request sent to ``upstream``; None when there is none, or
        when it leaves ``phase`` out."""
        conf = self._by_id.get(id(upstream), self.default)
        if conf is not None and phase in self._left_out.get(id(conf), ()):
            return None
        return conf

    def all(self):
        """Every config, the default first when there is one."""
        return ([self.default] if self.default is not None else []) + \
            [conf for _, conf in self.by_upstream]


class Follow:
    """An upstream plugin (UPSTREAM_PLUGIN) as a route runs it when a plugin of the route (a
    split) may send the request to another upstream: each phase runs the config of the
    upstream the request goes to (``ctx.upstream``; the route's own until a plugin chose),
    a FollowedConfs. Without it, a breaker set on a canary's own upstream object guarded
    nothing: a route ran its own upstream's plugins, whichever upstream the split chose."""

    def __init__(self, plugin):
        self.plugin = plugin
        self.NAME, self.PRIORITY, self.SCHEMA = plugin.NAME, plugin.PRIORITY, plugin.SCHEMA
        self.RESPONSE_PRIORITY = response_priority(plugin)
        for hook in FOLLOWED_HOOKS:
            if hasattr(plugin, hook):
                setattr(self, hook, _following(hook, getattr(plugin, hook)))
        if hasattr(plugin, "phases"):
            self.phases = lambda confs: set().union(*(plugin.phases(c) for c in confs.all()))

    def __repr__(self):
        return f"Follow({self.NAME})"


def _following(name, hook):
    """``hook`` (the plugin's ``name`` phase or hook) called with the request's config."""
    def run_for_upstream(confs, ctx, *rest):
        conf = confs.of(ctx.upstream, name)
        return None if conf is None else hook(conf, ctx, *rest)
    return run_for_upstream


_FOLLOWS = {}       # id(plugin) -> (plugin, its Follow): one each, so _SHIPPED holds it


def follow(plugin):
    entry = _FOLLOWS.get(id(plugin))
    if entry is None or entry[0] is not plugin:
        entry = _FOLLOWS[id(plugin)] = (plugin, Follow(plugin))
        if _shipped(plugin):
            mark_shipped(entry[1])
    return entry[1]


def unfollowed(plugin, conf):
    """(plugin, conf) pairs of one chain step: a Follow's plugin with each of its configs,
    and the upstream each is for (None: the route's own, or any without one of its own)."""
    if isinstance(plugin, Follow):
        pairs = [(None, conf.default)] if conf.default is not None else []
        return [(plugin.plugin, c, upstream)
                for upstream, c in pairs + list(conf.by_upstream)]
    return [(plugin, conf, None)]


def served_configs(route, plugin, conf):
    """unfollowed(plugin, conf) of one of ``route``'s chain steps, and an upstream plugin's
    config of the route's own also for each upstream its split sends to that sets none of
    its own: that config runs there, keyed on that upstream (a breaker with scope
    upstream). What a view of the plugin's state must name: /admin/breakers had no word of
    the breaker a canary's clients were refused by ("breaker upstream:v3 is open")."""
    pairs = unfollowed(plugin, conf)
    own = [entry for entry in pairs if entry[2] is None]
    if not own or not getattr(own[0][0], "UPSTREAM_PLUGIN", False):
        return pairs
    covered = {id(upstream) for _, _, upstream in pairs} | {id(route.upstream)}
    return pairs + [(own[0][0], own[0][1], upstream)
                    for upstream in route.chain.linked_upstreams() if id(upstream) not in covered]


def follow_linked_upstreams(owner, chain, own, route_plugins):
    """``chain`` with the plugins set on the upstreams its plugins may send to (a split's
    canary) in place: for each such plugin, a Follow step that runs the config of the
    upstream a request goes to. A plugin the route configures itself is the route's, as it
    is over its own upstream's. ConfigError for one that would run before the upstream is
    chosen (a PRIORITY above the choosing plugin's), or has hooks no request can follow."""
    linked = [u for u in chain.linked_upstreams(owner) if u is not own and u.plugin_steps]
    if not linked:
        return chain
    chooser = max(plugin.PRIORITY for plugin, _ in chain.steps if hasattr(plugin, "upstreams"))
    plugins, confs, problems = {}, {}, []
    for upstream in linked:
        for plugin, conf in upstream.plugin_steps:
            if plugin.NAME in (route_plugins or {}):
                continue
            if plugin.PRIORITY >= chooser:
                problems.append(f"{owner}: upstream {upstream.id}: plugins.{plugin.NAME} "
                                f"(PRIORITY {plugin.PRIORITY}) would run before the route's "
                                f"plugins choose the upstream (PRIORITY {chooser}), so it "
                                f"could not follow their choice: set it on the route")
                continue
            extra = [hook for hook in ARGUMENTS if hasattr(plugin, hook) and
                     hook not in FOLLOWED_HOOKS and hook not in UNFOLLOWED_HOOKS]
            # (the chain reads these flags off the step, which would not say them)
            extra += [flag for flag in ("IDENTIFIES_CONSUMER", "ANSWERS_PREFLIGHT")
                      if getattr(plugin, flag, False)]
            if extra:
                problems.append(f"{owner}: upstream {upstream.id}: plugins.{plugin.NAME} "
                                f"cannot follow the upstream a request is sent to (its "
                                f"{', '.join(extra)}): set it on the route")
                continue
            plugins[plugin.NAME] = plugin
            confs.setdefault(plugin.NAME, []).append((upstream, conf))
    if problems:
        raise ConfigError(problems)
    if not confs:
        return chain
    steps = []
    for plugin, conf in chain.steps:
        if plugin.NAME in confs:
            steps.append((follow(plugin), FollowedConfs(conf, confs.pop(plugin.NAME),
                                                        getattr(plugin, "phases", None))))
        else:
            steps.append((plugin, conf))
    steps.extend((follow(plugins[name]), FollowedConfs(None, by_upstream,
                                                       getattr(plugins[name], "phases", None)))
                 for name, by_upstream in confs.items())
    return Chain(steps)
