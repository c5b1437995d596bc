"""Plugin discovery: the built-ins plus installed packages' ``gwserver.plugins`` entry points."""
import importlib
import logging
from importlib.metadata import entry_points

from ..core.chain import check_plugin, mark_shipped

log = logging.getLogger("gwserver.plugins")

BUILTIN = ("gwserver.plugins.grpc_web", "gwserver.plugins.headers", "gwserver.plugins.jwt", "gwserver.plugins.rate_limit",
           "gwserver.plugins.fault", "gwserver.plugins.split", "gwserver.plugins.breaker",
           "gwserver.plugins.key_auth", "gwserver.plugins.basic_auth", "gwserver.plugins.acl",
           "gwserver.plugins.ip_restriction", "gwserver.plugins.cors",
           "gwserver.plugins.redirect", "gwserver.plugins.rewrite", "gwserver.plugins.limit_conn",
           "gwserver.plugins.gzip")
ENTRY_POINT_GROUP = "gwserver.plugins"
_registry = None


class Registry(dict):
    """{name: plugin}, and ``refused``: {name: why} for installed plugins that were left out,
    so a route naming one says why (the log line may be far away), not just "unknown" (and
    an entry point whose plugin has another NAME: the NAME routes use);
    ``contested``: {name: why} for names two plugins claim, which no route may use: it could
    not say which of the two it meant (an allow-list could be run by another plugin's code)."""

    def __init__(self):
        super().__init__()
        self.refused = {}
        self.contested = {}


def load_registry(reload=False):
    """Return {name: plugin}. A third-party plugin that fails to load is logged and left out."""
    global _registry
    if _registry is not None and not reload:
        return _registry
    registry = Registry()
    for module_name in BUILTIN:
        plugin = importlib.import_module(module_name)
        check_plugin(plugin)
        mark_shipped(plugin)
        registry[plugin.NAME] = plugin
    builtin, source = set(registry), {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            plugin = ep.load()
            check_plugin(plugin)
        except (Exception, SystemExit) as exc:  # a broken add-on must not stop the gateway
            # (a module that parses sys.argv when imported exits: argparse on `gwserver run`)
            why = repr(exc) if isinstance(exc, SystemExit) else exc     # not a bare "2"
            log.error("plugin entry point %s (%s) not loaded: %s", ep.name, ep.value, why)
            registry.refused[ep.name] = f"entry point {ep.name} ({ep.value}) not loaded: {why}"
            continue
        if ep.name != plugin.NAME:
            # Routes name a plugin by its NAME: one naming the entry point was told "unknown
            # plugin", with nothing to say that it is installed under another name.
            log.warning("plugin entry point %s (%s) loads a plugin whose NAME is %s: routes "
                        "name it plugins.%s", ep.name, ep.value, plugin.NAME, plugin.NAME)
            registry.refused.setdefault(ep.name, (
                f"entry point {ep.name} ({ep.value}) loads a plugin named otherwise: its "
                f"NAME is {plugin.NAME}, which routes use (plugins.{plugin.NAME})"))
        if registry.get(plugin.NAME) is plugin:
            continue            # one plugin under two entry point names: nothing to choose
        if plugin.NAME in registry:
            owner = "a built-in plugin" if plugin.NAME in builtin else \
                f"the plugin from {source[plugin.NAME]}"
            log.error("plugin %s from %s (entry point %s) ignored: %s is named %s too, and a "
                      "route naming plugins.%s is refused until one of them is renamed; give "
                      "yours another NAME", plugin.NAME, ep.value, ep.name, owner, plugin.NAME,
                      plugin.NAME)
            registry.contested[plugin.NAME] = (
                f"{owner} and {ep.value} (entry point {ep.name}) are both named {plugin.NAME}: "
                + ("give the installed one another NAME" if plugin.NAME in builtin else
                   "give one of them another NAME"))
            continue
        registry[plugin.NAME] = plugin
        source[plugin.NAME] = ep.value
    _registry = registry
    return registry
