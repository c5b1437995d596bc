"""key_auth remembers a key's consumer per worker: a change of the consumer table (groups,
key rotated, consumer removed) takes effect on the next request, and a consumer remembered
from one directory is never served from another."""
import time
from types import SimpleNamespace

import pytest

from gwserver.core.chain import build_chain
from gwserver.core.consumers import Directory, compile_consumer
from gwserver.core.context import RequestContext
from gwserver.errors import ConfigError
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


def test_one_key_stored_for_two_consumers_is_no_ones(caplog):
    """Each key_hash has its own salt, so the directory cannot see one key hashed twice;
    the scan that compares the key does, and refuses it rather than take the first consumer
    (the other's calls were authorised, limited and billed as that one's)."""
    plugin, conf = key_auth()
    directory = Directory(REGISTRY)
    for cid in ("alice", "bob"):
        directory.add(compile_consumer(cid, {"credentials": {"key_auth": {
            "key_hash": hash_key("shared")}}}, REGISTRY))
    directory.add(consumer("carol", "own"))
    with caplog.at_level("ERROR", logger="gwserver.plugins"):
        assert plugin.access(conf, request(directory, "shared")).status == 401
    assert "consumers alice and bob have the same API key" in caplog.text
    assert plugin.access(conf, request(directory, "shared")).status == 401   # remembered
    ctx = request(directory, "own")
    assert plugin.access(conf, ctx) is None and ctx.consumer.id == "carol"
    directory.remove("bob")                     # fixed: the key is alice's again
    ctx = request(directory, "shared")
    assert plugin.access(conf, ctx) is None and ctx.consumer.id == "alice"


def test_a_consumer_may_not_carry_an_acl_of_its_own():
    """Who may call is the route's to say (ROUTE_ONLY): a consumer's own acl would replace
    the route's for its requests, lifting a deny_consumers that names it."""
    with pytest.raises(ConfigError, match="plugins.acl: only a route can set it"):
        compile_consumer("mallory", {"plugins": {"acl": {"allow_groups": ["partners"]}},
                                     "credentials": {"key_auth": {"key_hash": hash_key("k")}}},
                         REGISTRY)


def test_a_key_given_to_a_second_consumer_later_is_refused_within_cache_seconds():
    """A key remembered as alice's is re-checked against a changed table by its stored hash
    alone, which cannot see bob's copy: that quick re-check does not extend the memory, so
    the full comparison comes cache_seconds after the last one, and finds both."""
    (plugin, conf), = build_chain("route r", {"key_auth": {
        "max_failures": 0, "cache_seconds": 1.0}}, None, REGISTRY).steps
    directory = Directory(REGISTRY)
    directory.add(consumer("alice", "shared"))
    ctx = request(directory, "shared")
    checked = time.monotonic()
    assert plugin.access(conf, ctx) is None and ctx.consumer.id == "alice"
    directory.add(compile_consumer("bob", {"credentials": {"key_auth": {
        "key_hash": hash_key("shared")}}}, REGISTRY))
    while time.monotonic() < checked + 0.5:     # table changes keep coming meanwhile
        directory.add(consumer("carol", "own"))
        ctx = request(directory, "shared")
        assert plugin.access(conf, ctx) is None and ctx.consumer.id == "alice"
        time.sleep(0.05)
    time.sleep(max(0.0, checked + 1.1 - time.monotonic()))
    assert plugin.access(conf, request(directory, "shared")).status == 401
