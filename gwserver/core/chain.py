"""The ordered plugin chain of a route.

A plugin is a module (or object) with ``NAME``, ``PRIORITY`` (higher runs first, as in APISIX),
``SCHEMA`` (a core.schema.Schema that fills defaults) and at least one phase:

    access(conf, ctx) -> Reply | None     before the upstream call; a Reply ends the request
    response(conf, ctx, head) -> None     after the upstream answered, before the client sees it

and optionally ``prepare(conf) -> conf`` to precompute per-route state once at compile time.
The proxy step is not a plugin: it always runs last, after every access phase let the request on.
"""
from ..errors import ConfigError
from .schema import show

PHASES = ("access", "response")


def check_plugin(plugin):
    """Raise TypeError if ``plugin`` does not honour the contract above."""
    missing = [attr for attr in ("NAME", "PRIORITY", "SCHEMA") if not hasattr(plugin, attr)]
    if missing:
        raise TypeError(f"plugin {plugin!r} lacks {', '.join(missing)}")
    if not any(callable(getattr(plugin, phase, None)) for phase in PHASES):
        raise TypeError(f"plugin {plugin.NAME} defines no phase ({', '.join(PHASES)})")


class Chain:
    __slots__ = ("names", "access_steps", "response_steps")

    def __init__(self, steps=()):
        steps = sorted(steps, key=lambda step: -step[0].PRIORITY)
        self.names = tuple(plugin.NAME for plugin, _ in steps)
        self.access_steps = tuple((p, c) for p, c in steps if hasattr(p, "access"))
        self.response_steps = tuple((p, c) for p, c in steps if hasattr(p, "response"))

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


EMPTY_CHAIN = Chain()


def build_chain(owner, route_plugins, global_plugins, registry):
    """Validate and order the plugins of one route; a route's config replaces the global one."""
    merged = dict(global_plugins or {})
    merged.update(route_plugins or {})
    if not merged:
        return EMPTY_CHAIN
    steps, problems = [], []
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
    if problems:
        raise ConfigError(problems)
    return Chain(steps)
