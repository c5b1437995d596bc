"""key_auth reads a key from the header and, when configured, the query: a request carrying
two different keys is refused (the gateway would check one and an upstream that reads keys
might take the other), and hide_credentials clears both places."""
from types import SimpleNamespace

import pytest

from gwserver.core.chain import build_chain
from gwserver.core.consumers import Directory, compile_consumer
from gwserver.core.context import RequestContext
from gwserver.plugins import load_registry
from gwserver.plugins.key_auth import hash_key
from gwserver.services import Services

REGISTRY = load_registry()


def key_auth(**conf):
    (plugin, prepared), = build_chain("route r", {"key_auth": {
        "query": "apikey", "max_failures": 0, **conf}}, None, REGISTRY).steps
    return plugin, prepared


def request(header=None, query=""):
    directory = Directory(REGISTRY)
    for cid, key in (("alice", "ka"), ("bob", "kb")):
        directory.add(compile_consumer(cid, {"credentials": {
            "key_auth": {"key_hash": hash_key(key, b"s" * 16)}}}, REGISTRY))
    ctx = RequestContext("203.0.113.7", "http", Services(consumers=directory))
    ctx.method, ctx.path, ctx.query, ctx.host = "GET", "/a", query, "h"
    ctx.route = SimpleNamespace(id="r")
    if header is not None:
        ctx.set_header("X-API-Key", header)
    return ctx


@pytest.mark.parametrize("header, query", [
    ("ka", "apikey=kb"),                    # alice in the header, bob in the query
    (None, "apikey=ka&apikey=kb"),          # the parameter twice
    ("ka", "x=1&apikey=ka&apikey=kb"),
    ("ka", "api%6Bey=kb"),                  # the name percent-encoded: decoded upstream
    ("ka", "x=1&%61pikey=kb"),
    ("ka", "APIKEY=kb"),                    # ASP.NET reads names in any case
    ("ka", "x=1;apikey=kb"),                # Rack splits on ; too
])
def test_two_different_keys_are_refused(header, query):
    plugin, conf = key_auth()
    reply = plugin.access(conf, request(header, query))
    assert reply.status == 401 and b"ambiguous_key" in reply.body


@pytest.mark.parametrize("second", [
    "api.key=kb", "+api_key=kb", "%20api_key=kb", "api_key%00x=kb", "api[key=kb",
    "api_key[]=kb", "api_key[0]=kb",
])
def test_names_php_reads_as_the_parameter_count(second):
    """PHP registers each of these as $_GET['api_key'] (php_variables.c: leading spaces
    skipped, cut at a NUL, '[' unclosed or '.' as '_', name[...] an array of name)."""
    plugin, conf = key_auth(query="api_key")
    reply = plugin.access(conf, request("ka", second))
    assert reply.status == 401 and b"ambiguous_key" in reply.body


@pytest.mark.parametrize("header, query, consumer", [
    ("ka", "x=1&apikey=ka", "alice"),       # the same key twice is one key
    (None, "apikey=kb&x=1", "bob"),
    (None, "Api%4Bey=kb&x=1", "bob"),       # one key, however spelt: found and taken out
    ("ka", "x=1", "alice"),
])
def test_hide_credentials_clears_the_header_and_the_query(header, query, consumer):
    plugin, conf = key_auth()
    ctx = request(header, query)
    assert plugin.access(conf, ctx) is None and ctx.consumer.id == consumer
    assert ctx.query == "x=1" and ctx.header("X-API-Key") is None


def test_without_hide_credentials_both_stay():
    plugin, conf = key_auth(hide_credentials=False)
    ctx = request("ka", "apikey=ka")
    assert plugin.access(conf, ctx) is None and ctx.consumer.id == "alice"
    assert ctx.query == "apikey=ka" and ctx.header("X-API-Key") == "ka"
