"""key_auth remembers a key's consumer per worker: a change of the consumer table (groups,
key rotated, consumer removed) takes effect on the next request, and a consumer remembered
from one directory is never served from another."""
from types import SimpleNamespace

from gwserver.core.chain import build_chain
from gwserver.core.consumers import Directory, compile_consumer
from gwserver.core.context import RequestContext
from gwserver.plugins import load_registry
from gwserver.plugins.key_auth import hash_key
from gwserver.services import Services

REGISTRY = load_registry()


def request(directory, key):
    ctx = RequestContext("203.0.113.7", "http", Services(consumers=directory))
    ctx.method, ctx.path, ctx.query, ctx.host = "GET", "/a", "", "h"
    ctx.route = SimpleNamespace(id="r")
    ctx.set_header("X-API-Key", key)
    return ctx


def consumer(cid, key, groups=()):
    return compile_consumer(cid, {"groups": list(groups), "credentials": {
        "key_auth": {"key_hash": hash_key(key, b"s" * 16)}}}, REGISTRY)


def key_auth():
    (plugin, conf), = build_chain("route r", {"key_auth": {"max_failures": 0}}, None,
                                  REGISTRY).steps
    return plugin, conf


def test_a_remembered_key_follows_every_change_of_the_table():
    plugin, conf = key_auth()
    directory = Directory(REGISTRY)
    directory.add(consumer("alice", "ka", ["g1"]))
    directory.add(consumer("bob", "kb"))
    ctx = request(directory, "ka")
    assert plugin.access(conf, ctx) is None and ctx.consumer.id == "alice"
    directory.add(consumer("alice", "ka", ["g2"]))              # groups changed
    ctx = request(directory, "ka")
    assert plugin.access(conf, ctx) is None and ctx.consumer.groups == {"g2"}
    assert dict(ctx.headers)[b"x-consumer-groups"] == b"g2"
    directory.add(consumer("alice", "ka2", ["g2"]))             # key rotated
    assert plugin.access(conf, request(directory, "ka")).status == 401
    assert plugin.access(conf, request(directory, "kb")) is None
    directory.remove("bob")                                     # consumer removed
    assert plugin.access(conf, request(directory, "kb")).status == 401


def test_a_consumer_remembered_from_one_directory_is_not_served_from_another():
    """Two directories with the same number of changes once had the same generation: a key
    remembered from the first was then taken for its old consumer in the second."""
    plugin, conf = key_auth()
    first = Directory(REGISTRY)
    first.add(consumer("alice", "ka", ["admins"]))
    first.add(consumer("bob", "kb"))
    assert plugin.access(conf, request(first, "ka")) is None
    second = Directory(REGISTRY)                # alice is not in this one
    second.add(consumer("bob", "kb"))
    second.add(consumer("carol", "kc"))
    assert first.generation != second.generation
    ctx = request(second, "ka")
    assert plugin.access(conf, ctx).status == 401 and ctx.consumer is None
