"""The ordered plugin chain of a route.

A plugin is a module (or object) with ``NAME``, ``PRIORITY`` (higher runs first, as in APISIX),
``SCHEMA`` (a core.schema.Schema that fills defaults) and at least one phase:

    access(conf, ctx) -> Reply | None     before the upstream call; a Reply ends the request
    response(conf, ctx, head) -> None     after the upstream answered, before the client sees it
    finish(conf, ctx, status) -> None     once the request is over, whatever ended it (an
                                          upstream answer, a plugin's Reply, or a gateway error
                                          such as 502/504, which ``ctx.error`` then holds)

and optionally ``prepare(conf) -> conf`` to precompute per-route state once at compile time.
The proxy step is not a plugin: it always runs last, after every access phase let the request on.
A plugin that may also be set on an upstream object (applying to every route that uses it)
says so with ``UPSTREAM_PLUGIN = True``. A plugin whose config only works beside another
says so with ``needs(conf) -> [(plugin name, the setting that needs it), ...]``: a chain
without that plugin is a config error naming the route and the setting (a split rule on a
``claim`` never matches without ``jwt``), not a setting that silently never applies.
"""
import logging

from ..errors import ConfigError
from .schema import show

log = logging.getLogger("gwserver.plugins")

PHASES = ("access", "response", "finish")


def check_plugin(plugin):
    """Raise TypeError if ``plugin`` does not honour the contract above."""
    missing = [attr for attr in ("NAME", "PRIORITY", "SCHEMA") if not hasattr(plugin, attr)]
    if missing:
        raise TypeError(f"plugin {plugin!r} lacks {', '.join(missing)}")
    if not any(callable(getattr(plugin, phase, None)) for phase in PHASES):
        raise TypeError(f"plugin {plugin.NAME} defines no phase ({', '.join(PHASES)})")


class Chain:
    __slots__ = ("steps", "names", "access_steps", "response_steps", "finish_steps")

    def __init__(self, steps=()):
        self.steps = steps = tuple(sorted(steps, key=lambda step: -step[0].PRIORITY))
        self.names = tuple(plugin.NAME for plugin, _ in steps)
        self.access_steps = tuple((p, c) for p, c in steps if hasattr(p, "access"))
        self.response_steps = tuple((p, c) for p, c in steps if hasattr(p, "response"))
        self.finish_steps = tuple((p, c) for p, c in steps if hasattr(p, "finish"))

    def run_access(self, ctx):
        for plugin, conf in self.access_steps:
            reply = plugin.access(conf, ctx)
            if reply is not None:
                ctx.ended_by = plugin.NAME
                return reply
        return None

    def run_response(self, ctx, head):
        for plugin, conf in self.response_steps:
            plugin.response(conf, ctx, head)

    def run_finish(self, ctx, status):
        # The answer is out: a failing plugin here is logged, never turned into a response.
        for plugin, conf in self.finish_steps:
            try:
                plugin.finish(conf, ctx, status)
            except Exception:
                log.exception("route %s: plugin %s failed in finish", ctx.route.id, plugin.NAME)


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
            problems.append(f"{owner}: plugins.{name}: unknown plugin "
                            f"(available: {', '.join(sorted(registry)) or 'none'})")
            continue
        if conf is None or conf is False:
            continue            # a route may switch off a global plugin with `name = false`
        if conf is True:
            conf = {}
        try:
            conf = plugin.SCHEMA.validate(conf, f"{owner}: plugins.{name}")
            if hasattr(plugin, "prepare"):
                conf = plugin.prepare(conf)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        except ValueError as exc:
            problems.append(f"{owner}: plugins.{name}: {exc} (config {show(conf)})")
            continue
        steps.append((plugin, conf))
    names = {plugin.NAME for plugin, _ in steps}
    for plugin, conf in steps:
        for name, what in plugin.needs(conf) if hasattr(plugin, "needs") else ():
            if name not in names:
                problems.append(f"{owner}: plugins.{plugin.NAME}.{what} needs the {name} "
                                f"plugin on the route or in [plugins]; without it, it never "
                                f"applies")
    if problems:
        raise ConfigError(problems)
    return Chain(steps)


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
    scoped = {name: dict(conf, scope="upstream") if isinstance(conf, dict) else
              {"scope": "upstream"} if conf is True else conf
              for name, conf in (plugins or {}).items()}
    return build_chain(owner, scoped, None, registry).steps if scoped else ()
