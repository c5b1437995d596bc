from gwserver.settings import compile_table, SERVER, UPSTREAM_DEFAULTS
from gwserver.plugins import load_registry


def compile_routes(specs, upstreams=None, global_plugins=None, **server):
    """Compile route specs the way the conf loader does, under [server] defaults but
    ``server``; return (router, problems)."""
    for spec in specs:
        spec.setdefault("upstream", {"targets": [{"url": "http://127.0.0.1:9"}]})
    return compile_table(specs, upstreams or {}, UPSTREAM_DEFAULTS.defaults(),
                         {**SERVER.defaults(), **server}, global_plugins or {},
                         load_registry())


def router_for(specs, **server):
    router, problems = compile_routes(specs, **server)
    assert problems == []
    return router
