"""``key_auth``: an API key in a header or a query parameter names the consumer.

    plugins.key_auth = {header = "X-API-Key", query = ""}       # on a route
    [consumers.billing]
    credentials.key_auth = {key_hash = "sha256$9f1c...$4be2..."} # gwserver consumers hash-key

Keys are stored only as salted SHA-256 hashes (``sha256$SALT$DIGEST``, hex): API keys are
random and long, so a fast hash suffices (GitHub stores its tokens so); the conf file and etcd
never hold one in clear, and ``gwserver consumers put`` hashes a ``key`` it is given. A
presented key is compared with ``hmac.compare_digest``. A key found once is remembered per
worker (a keyed fingerprint, never the key) for ``cache_seconds``; an unknown key is compared
with every stored hash (one SHA-256 each: the salts differ, so there is no shortcut), then
remembered as unknown (``negative_cache_seconds``, at most ``negative_cache_size`` per route
and worker, oldest dropped first) until the consumer table changes: a key added through etcd
or a reload works on its first request after that. Full comparisons of keys that turn out
unknown are budgeted per client address (an IPv6 one by its /64; ``max_failures`` per
``failure_window``, per host): past it, 429 with ``Retry-After`` and no comparison, so a
flood of random keys costs one dictionary look-up each; keys already found good pass without
touching the budget.

The key is looked for only where configured: with ``query = ""`` a key in the query string is
not a key. It is removed before proxying (``hide_credentials = true``, the default: from the
header and the query both), so the upstream and its logs never see it, and neither does the
access log: its ``query`` field and the common format's target hold the query the upstream got
(or would have: a request a plugin that runs first ended, an http_to_https redirect or an
ip_restriction 403, is logged without the key too).
A request carrying two different keys (header and parameter, or the parameter twice) is a 401
``ambiguous_key``: the gateway would check one and an upstream that reads keys might take the
other.
"""
import hashlib
import hmac
import logging
import re
from urllib.parse import unquote_plus

from ..core import consumers
from ..core.consumers import CONSUMER_ID
from ..core.context import Reply
from ..core.schema import Field, Invalid, Schema, boolean, header_name, integer, number, string
from ..core.throttledlog import throttled_log
from . import authlib

log = logging.getLogger("gwserver.plugins")

NAME = "key_auth"
PRIORITY = 950          # before jwt (900) and acl (850): who is calling comes first
IDENTIFIES_CONSUMER = True
MAX_KEY = 512           # bytes; longer is not a key we issued

SCHEMA = Schema(
    Field("header", header_name, "X-API-Key", "request header carrying the key"),
    Field("query", string(r"[A-Za-z0-9_.~-]+", "a query parameter name", allow_empty=True),
          "", "query parameter carrying the key; empty: the header only. Every spelling an "
          "upstream may read as it counts (any case, percent-encoded, ASP.NET's %uXXXX, PHP's . "
          "for _, after a ;): "
          "two different keys in one request (header and query, or the query twice) are a 401 "
          "ambiguous_key"),
    Field("hide_credentials", boolean, True, "remove the key before proxying (the header, and "
          "every copy in the query)"),
    Field("anonymous", string(CONSUMER_ID, "a consumer id"), None,
          "consumer that requests without a key are taken for (default: 401)"),
    Field("cache_seconds", number(0), 60.0, "how long a key found is remembered per worker"),
    Field("cache_size", integer(1), 10000, "keys remembered per worker"),
    Field("negative_cache_seconds", number(0), 30.0,
          "how long a key that matched no consumer is remembered as unknown per worker "
          "(forgotten at once when the consumer table changes)"),
    Field("negative_cache_size", integer(1), 1000, "unknown keys remembered per worker"),
    Field("max_failures", integer(0), 100, "full look-ups of unknown keys allowed per client "
          "address per failure_window, counted per host; past it, 429 without a look-up "
          "(0: no limit)"),
    Field("failure_window", number(0, exclusive=True), 60.0,
          "seconds over which unknown keys are counted"),
)

HASH = re.compile(r"sha256\$([0-9a-f]{32,64})\$([0-9a-f]{64})")


def key_hash(value):
    if not isinstance(value, str) or not HASH.fullmatch(value):
        # never quoted back: it may be a key in clear, and this message reaches logs
        raise Invalid('must be "sha256$SALT$DIGEST" (hex; `gwserver consumers hash-key` makes '
                      'one); a key is never stored in clear')
    return value


CREDENTIAL = Schema(
    Field("key_hash", key_hash, doc="sha256$SALT$DIGEST of the key, SALT and DIGEST in hex"),
)


def hash_key(key, salt=None):
    """The stored form of ``key`` (str): sha256$SALT$HEX(sha256(SALT || key))."""
    import os
    salt = salt if salt is not None else os.urandom(16)
    return f"sha256${salt.hex()}${hashlib.sha256(salt + key.encode()).hexdigest()}"


def seal_credential(cred):
    """What ``gwserver consumers put`` stores for a credential given with a clear ``key``."""
    if isinstance(cred, dict) and isinstance(cred.get("key"), str) and cred["key"]:
        return {**{k: v for k, v in cred.items() if k != "key"}, "key_hash": hash_key(cred["key"])}
    return cred


def prepare_credential(cred):
    salt, digest = HASH.fullmatch(cred["key_hash"]).groups()
    return {**cred, "salt": bytes.fromhex(salt), "digest": bytes.fromhex(digest)}


def credential_lookup(cred):
    return cred["key_hash"]


def same_secret(clear, cred):
    """Whether ``clear`` (a credential as given to ``consumers put``) holds the key stored,
    salted, in ``cred`` (a prepared one): a salt of its own per hash hides a key two consumers
    share from ``credential_lookup``."""
    key = clear.get("key") if isinstance(clear, dict) else None
    if not isinstance(key, str) or not key:
        return False
    return hmac.compare_digest(hashlib.sha256(cred["salt"] + key.encode()).digest(),
                               cred["digest"])


def prepare(conf):
    return {**conf, "header_b": conf["header"].lower().encode("latin-1"),
            "cache": authlib.CheckedCache(conf["cache_seconds"], conf["cache_size"]),
            "unknown": authlib.UnknownCache(conf["negative_cache_seconds"],
                                            conf["negative_cache_size"])}


# IIS's %uXXXX escape, which ASP.NET (System.Web's HttpUtility.UrlDecode, behind
# Request.QueryString) decodes: "api%u006Bey" is its "apikey"
_U_ESCAPE = re.compile(r"%u([0-9A-Fa-f]{4})")


def _param_name(name):
    """A query parameter's name as the frameworks behind a gateway may read it: decoded
    (``api%6Bey``, and ASP.NET's ``api%u006Bey``), in any case (ASP.NET), and as PHP
    registers it (php_variables.c): leading spaces skipped, cut at a NUL, ``name[...]`` an
    array of ``name``, a ``[`` never closed and every ``.`` and space an ``_``."""
    if "%u" in name:
        name = _U_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), name)
    name = unquote_plus(name).lstrip(" ").partition("\x00")[0]
    base, bracket, rest = name.partition("[")
    if bracket:
        name = base if "]" in rest else base + "_" + rest
    return name.lower().replace(".", "_").replace(" ", "_")


def _from_query(query, name):
    """(the keys the query holds for parameter ``name``, the query without them). Every
    spelling an upstream may take for ``name`` counts (_param_name), and so does a
    parameter after a ``;`` (Rack and old CGI libraries split on it too): a key the gateway
    did not see could otherwise reach an upstream that reads one."""
    if not query:
        return [], query
    wanted = _param_name(name)
    found, kept = [], []
    for part in query.split("&"):
        keys = [value for key, _, value in (piece.partition("=") for piece in part.split(";"))
                if _param_name(key) == wanted]
        if keys:
            found += [unquote_plus(key) for key in keys]
        else:
            kept.append(part)
    return found, "&".join(kept)


def find(directory, key, conf, ctx=None):
    """The consumer whose stored hash ``key`` matches, None, or a Reply (429) when the
    client's budget of unknown keys is spent."""
    raw = key.encode("utf-8", "surrogateescape")
    mark = authlib.key_fingerprint(raw)
    generation = directory.generation
    known = conf["cache"].get(mark)
    if known is not None:
        stored, consumer, checked_in = known
        if checked_in == generation:
            return consumer         # the consumer table has not changed since
        consumer = directory.find(NAME, stored)
        if consumer is not None:
            conf["cache"].update(mark, (stored, consumer, generation))
            return consumer
    unknown = conf["unknown"]
    if unknown.known_unknown(mark, generation):
        return None
    store = ctx.services.local_store if ctx is not None else None
    taken = ()
    if store is not None and conf["max_failures"]:
        taken, wait = authlib.take_budgets(
            store, [(f"key_auth:{conf['failure_window']:g}:ip:{authlib.client_of(ctx)}",
                     conf["max_failures"])], conf["failure_window"])
        if wait is not None:
            return authlib.too_many_failures(wait, "too many unknown API keys from this "
                                             "address; retry later")
    found = None
    for stored, consumer in directory.credentials(NAME):
        cred = consumer.credentials[NAME]
        if hmac.compare_digest(hashlib.sha256(cred["salt"] + raw).digest(), cred["digest"]):
            if found is not None:
                # Each hash has its own salt, so no index sees one key stored for two
                # consumers: the whole scan does (once per key and table), and the key is
                # no one's rather than the first one's (authorised, limited and billed as
                # another).
                throttled_log.log(log, logging.ERROR, ("shared key", found[1].id),
                                  "consumers %s and %s have the same API key: it is refused "
                                  "until one of them has another", found[1].id, consumer.id)
                found = None
                break
            found = stored, consumer
    if found is not None:
        if taken:
            authlib.give_back(store, taken, conf["failure_window"])
        conf["cache"].put(mark, (*found, generation))
        return found[1]
    unknown.remember(mark, generation)
    return None


def access(conf, ctx):
    consumers.strip_client_copies(ctx)
    key = ctx.header_map.get(conf["header_b"])
    key = key.decode("latin-1") if key is not None else None
    in_query, rest = [], None
    if conf["query"]:
        in_query, rest = _from_query(ctx.query, conf["query"])
        if conf["hide_credentials"]:
            ctx.vars["key_auth_query"] = True       # finish() need not look again
        if in_query and conf["hide_credentials"]:
            # Taken out at once, whatever the answer: a request refused here (two keys, a
            # wrong one, a 429) goes nowhere, but its query is still the access log's
            ctx.query = rest
        if len(set(in_query) | ({key} if key is not None else set())) > 1:
            # The gateway would check one and an upstream that reads keys too might take
            # another (the header's, the last parameter's): two consumers for one request.
            return authlib.unauthorized(_challenge(conf), "the request carries more than one "
                                        "API key", "ambiguous_key")
        if key is None and in_query:
            key = in_query[0]
    if not key:
        return authlib.anonymous_or(conf, ctx, _missing(conf), NAME)
    directory = ctx.services.consumers
    consumer = find(directory, key, conf, ctx) \
        if directory is not None and len(key) <= MAX_KEY else None
    if consumer is None:
        return authlib.unauthorized(_challenge(conf), "the API key is not valid", "invalid_key")
    if isinstance(consumer, Reply):
        return consumer         # 429: this client's budget of unknown keys is spent
    if conf["hide_credentials"]:
        ctx.drop_header(conf["header_b"])     # (any name its config gives)
    consumers.identify(ctx, consumer)
    return None


def phases(conf):
    """finish only where a key may sit in the query."""
    return {"access", "finish"} if conf["query"] and conf["hide_credentials"] else {"access"}


def finish(conf, ctx, status):
    """A request another plugin ended before this one ran (redirect, ip_restriction, cors:
    all run first) or that the gateway refused first (a body over the route's limit) still
    has its key in the query, and the access log, written next, would show it."""
    if ctx.query and not ctx.var("key_auth_query"):
        ctx.query = _from_query(ctx.query, conf["query"])[1]


def public_query(conf, query):
    """(the plugin hook) The query without the key, for an answer made before access ran
    (redirect's append_query): a Location must not carry the key to the client's history,
    a Referer, or another host."""
    if conf["query"] and conf["hide_credentials"] and query:
        return _from_query(query, conf["query"])[1]
    return query


def _challenge(conf):
    return f'ApiKey realm="gwserver", header="{conf["header"]}"'


def _missing(conf):
    where = f"the {conf['header']} header" + \
        (f" or the {conf['query']} query parameter" if conf["query"] else "")
    return authlib.unauthorized(_challenge(conf), f"an API key is required in {where}",
                                "missing_key")
