"""Consumers: named clients (a team, an app, a partner) with credentials, groups and plugins
of their own (Kong's and APISIX's consumer object; docs/consumers.md).

    [consumers.billing]
    groups = ["internal"]
    credentials.AUTH_PLUGIN = {...}     # what that plugin's CREDENTIAL schema says
    plugins.PLUGIN = {...}              # applies to billing's requests

The same schema serves the conf file's ``[consumers.ID]`` and etcd's ``PREFIX/consumers/ID``.
Auth plugins declare what a credential of theirs looks like (``CREDENTIAL``, a Schema) and
how it is found (``credential_lookup(cred) -> hashable``, optional: plugins without it scan
their credentials). A ``Directory`` holds the compiled consumers and one index per auth
plugin; an auth plugin that recognises a client calls ``identify(ctx, consumer)``, after
which ``ctx.consumer`` is the Consumer for every later plugin, the upstream gets
``X-Consumer-ID``/``X-Consumer-Groups``, and the consumer's own plugins join the rest of the
route's chain (chain.py, ``IDENTIFIES_CONSUMER``).

A consumer's secrets never leave this module's values: ``public(spec)`` is what views show.
"""
import itertools
from dataclasses import dataclass, field

from ..errors import ConfigError, Unauthorized, WorkerExit
from .schema import Field, Schema, list_of, map_of, show, string

CONSUMER_ID = r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}"
GROUP = string(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}", "a group name (letters, digits, _.:-)")
HEADER_ID, HEADER_GROUPS = b"x-consumer-id", b"x-consumer-groups"

CONSUMER = Schema(
    Field("id", string(CONSUMER_ID, "a consumer id"), None,
          "the consumer's id (the table key in the conf file, the etcd key's last part)"),
    Field("groups", list_of(GROUP), list, "groups the consumer is in (acl allows or denies "
          "them)"),
    Field("credentials", map_of(lambda c: c), dict,
          "auth plugin name -> this consumer's credential for it (docs/plugins.md)"),
    Field("plugins", map_of(lambda c: c), dict,
          "plugins that apply to this consumer's requests once it is identified; they "
          "replace the route's config of the same plugin"),
    Field("description", string(what="text", allow_empty=True), "", "free text"),
    doc="Named clients: credentials per auth plugin, groups, and plugins of their own.",
)

_GENERATIONS = itertools.count()
JOINED_CACHE = 256      # joined chains kept per consumer (one per route it calls, usually few)


@dataclass(eq=False)
class Consumer:
    id: str
    groups: frozenset
    credentials: dict           # plugin name -> prepared credential
    chain: object               # core.chain.Chain of its own plugins
    version: int = 0
    # X-Consumer-ID and X-Consumer-Groups (left out with no groups), as the upstream gets them
    upstream_headers: tuple = ()
    joined: dict = field(default_factory=dict)   # route chain -> chain with ours joined

    def joined_with(self, chain):
        """The route's ``chain`` with this consumer's plugins in place of its own configs."""
        out = self.joined.get(chain)
        if out is None:
            from .chain import Chain
            mine = set(self.chain.names)
            if len(self.joined) >= JOINED_CACHE:
                self.joined.clear()
            out = self.joined[chain] = Chain(
                [s for s in chain.steps if s[0].NAME not in mine] + list(self.chain.steps))
        return out


def compile_consumer(consumer_id, spec, registry, version=0):
    """A consumer spec (validated or raw) -> Consumer; ConfigError names every problem."""
    from .chain import build_chain
    owner = f"consumer {consumer_id}"
    if isinstance(spec, dict):
        spec = {**spec}
        spec.setdefault("id", consumer_id)
        _refuse_bare_secrets(owner, spec.get("credentials"))
    else:       # never quoted either: a consumer written as its key
        raise ConfigError(f"{owner}: must be a table/object (the value is not shown: it may "
                          f"be a secret)")
    spec = CONSUMER.validate(spec, owner)
    problems = []
    if spec["id"] != consumer_id:
        problems.append(f"{owner}: id {show(spec['id'])} does not match the key")
    credentials = {}
    for name, cred in spec["credentials"].items():
        plugin = registry.get(name)
        schema = getattr(plugin, "CREDENTIAL", None)
        if schema is None:
            takers = sorted(n for n, p in registry.items() if hasattr(p, "CREDENTIAL"))
            problems.append(f"{owner}: credentials.{name}: not an auth plugin that takes "
                            f"credentials (those are: {', '.join(takers)})")
            continue
        step = "CREDENTIAL check"
        try:
            cred = schema.validate(cred, f"{owner}: credentials.{name}")
            prepare = getattr(plugin, "prepare_credential", None)
            step = "prepare_credential()"
            credentials[name] = prepare(cred) if prepare else cred
        except ConfigError as exc:
            problems.extend(exc.problems)
        except ValueError as exc:
            problems.append(f"{owner}: credentials.{name}: {exc}")
        except WorkerExit:
            raise       # the worker's own stop (a signal's), not the plugin's
        except (Exception, SystemExit) as exc:
            # a third-party bug, named here as a route's prepare() is: further out it was
            # "a value could not be checked: KeyError", naming neither consumer nor plugin
            problems.append(f"{owner}: credentials.{name}: the plugin's {step} failed: "
                            f"{exc!r}")
    for name, conf in spec["plugins"].items():
        plugin = registry.get(name)
        if conf is False or conf is None:
            # A route's `name = false` switches a global plugin off; a consumer's was taken
            # and did nothing: "billing has no limit" left billing under the route's
            problems.append(f"{owner}: plugins.{name}: a consumer cannot switch off the "
                            f"route's {name}; give it a config of its own instead")
        elif plugin is not None and (hasattr(plugin, "CREDENTIAL") or
                                   getattr(plugin, "IDENTIFIES_CONSUMER", False)):
            problems.append(f"{owner}: plugins.{name}: an auth plugin cannot be a consumer's "
                            f"own plugin (it runs before the consumer is known)")
        elif plugin is not None and hasattr(plugin, "link"):
            # Upstream ids are resolved per route (and followed there for etcd changes): a
            # consumer's split was never linked, a 500 on each of its requests
            problems.append(f"{owner}: plugins.{name}: it names upstreams, which only a "
                            f"route's plugins can (a route's split may send this consumer "
                            f"elsewhere with a rule on its X-Consumer-ID header)")
        elif getattr(plugin, "UPSTREAM_PROTOCOL", None) is not None:
            # A route's is refused with an upstream of another protocol; a consumer's joined
            # every route it called: grpc_web's calls went to HTTP/1.1 upstreams untranslated,
            # and their answers to the browser with CORS headers no route allowed
            problems.append(f"{owner}: plugins.{name}: it needs the route's upstream to speak "
                            f"{plugin.UPSTREAM_PROTOCOL} (protocol = "
                            f"\"{plugin.UPSTREAM_PROTOCOL}\"), which only a route's plugins "
                            f"are checked against: set it on the routes")
        elif getattr(plugin, "ROUTE_ONLY", False):
            problems.append(f"{owner}: plugins.{name}: only a route can set it (it says who "
                            f"the route lets through; a consumer's own would replace the "
                            f"route's for its requests)")
    chain = None
    try:
        chain = _own_state(build_chain(owner, {k: v for k, v in spec["plugins"].items()
                                               if not hasattr(registry.get(k), "CREDENTIAL")},
                                       None, registry), consumer_id)
    except ConfigError as exc:
        problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    groups = tuple(dict.fromkeys(spec["groups"]))
    upstream_headers = ((HEADER_ID, consumer_id.encode("latin-1")),) + \
        (((HEADER_GROUPS, ",".join(groups).encode("latin-1")),) if groups else ())
    return Consumer(consumer_id, frozenset(groups), credentials, chain, version,
                    upstream_headers)


def _own_state(chain, consumer_id):
    """The consumer's chain with each config that keeps state keyed as this consumer's
    (``for_consumer``): a limit keyed on ``ip`` counted in the route's bucket for that
    address, so one consumer's low limit drained it for every other consumer there."""
    if not any(hasattr(plugin, "for_consumer") for plugin, _ in chain.steps):
        return chain
    from .chain import Chain, call_hook
    owner = f"consumer {consumer_id}"
    return Chain([(plugin, call_hook(owner, plugin, "for_consumer",
                                     lambda: plugin.for_consumer(conf, consumer_id)))
                  if hasattr(plugin, "for_consumer") else (plugin, conf)
                  for plugin, conf in chain.steps])


def _refuse_bare_secrets(owner, credentials):
    """ConfigError for credentials written as a value and not a table: the value may be
    the secret itself (``credentials.key_auth = "ak_live_..."``, ``basic_auth =
    "user:password"``), and the schema's error would quote it into logs, `gwserver check`
    and the sync's rejected items (/admin/config)."""
    if credentials is None:
        return
    if not isinstance(credentials, dict):
        raise ConfigError(f"{owner}: credentials: must be a table/object of auth plugin name "
                          f"-> credential (the value is not shown: it may be a secret)")
    bare = [f"{owner}: credentials.{name}: must be a table/object (the value is not shown: "
            f"it may be a secret)" for name, cred in credentials.items()
            if not isinstance(cred, dict)]
    if bare:
        raise ConfigError(bare)


class CredentialTaken(ConfigError):
    """A consumer refused only because another one holds its credential: it is tried again
    once that one lets go of it (core.table)."""


class Directory:
    """The consumers one worker knows, and per auth plugin an index of their credentials.

    Changed one consumer at a time (etcd) or whole (the conf file); a credential two
    consumers claim is refused on the second with both named."""

    def __init__(self, registry):
        self.registry = registry
        self.consumers = {}         # id -> Consumer
        self.indexes = {}           # plugin name -> {lookup: Consumer}
        self.held = {}              # id -> {plugin name: lookup}, as add() put them in indexes
        # New on every change, and never the same in two directories of one process: what
        # a plugin remembers of a table (key_auth's known and unknown keys) is good for one
        # generation of one directory only.
        self.generation = next(_GENERATIONS)
        self._scans = {}            # plugin name -> credentials(), made once per generation

    def __len__(self):
        return len(self.consumers)

    def get(self, consumer_id):
        return self.consumers.get(consumer_id)

    def find(self, plugin_name, lookup):
        """The consumer whose ``plugin_name`` credential is found under ``lookup``."""
        index = self.indexes.get(plugin_name)
        return None if index is None else index.get(lookup)

    def credentials(self, plugin_name):
        """((lookup, Consumer), ...) for plugins that must compare against each credential;
        built once per generation, not per request."""
        scan = self._scans.get(plugin_name)
        if scan is None:
            scan = self._scans[plugin_name] = tuple(self.indexes.get(plugin_name, {}).items())
        return scan

    def _changed(self):
        self.generation = next(_GENERATIONS)
        self._scans = {}

    def lookups(self, consumer):
        """{plugin name: lookup} of ``consumer``'s credentials, as the indexes hold them."""
        return self._lookups(consumer)

    def _lookups(self, consumer):
        out = {}
        for name, cred in consumer.credentials.items():
            lookup = getattr(self.registry.get(name), "credential_lookup", None)
            try:
                out[name] = lookup(cred) if lookup else consumer.id
            except WorkerExit:
                raise
            except (Exception, SystemExit) as exc:     # a third-party bug, named
                raise ConfigError(f"consumer {consumer.id}: credentials.{name}: the "
                                  f"plugin's credential_lookup() failed: {exc!r}") from None
        return out

    def add(self, consumer):
        """Put ``consumer`` in (replacing its previous version); ConfigError on a clash."""
        lookups = self._lookups(consumer)
        for name, key in lookups.items():
            other = self.indexes.get(name, {}).get(key)
            if other is not None and other.id != consumer.id:
                raise CredentialTaken(f"consumer {consumer.id}: credentials.{name}: the "
                                      f"same credential is consumer {other.id}'s")
        self.remove(consumer.id)
        self.consumers[consumer.id] = consumer
        self.held[consumer.id] = lookups
        for name, key in lookups.items():
            self.indexes.setdefault(name, {})[key] = consumer
        self._changed()

    def remove(self, consumer_id):
        old = self.consumers.pop(consumer_id, None)
        if old is None:
            return
        self._changed()
        # What add() put in, not the plugin's lookups asked again: one that raised now (its
        # key service down) left the entries, and the removed consumer's key authenticated
        for name, key in self.held.pop(consumer_id).items():
            index = self.indexes.get(name, {})
            if index.get(key) is old:
                del index[key]


def compile_consumers(specs, registry):
    """Conf-file consumers ({id: spec}) -> (Directory, problems), every problem named."""
    directory, problems = Directory(registry), []
    for consumer_id, spec in specs.items():
        try:
            directory.add(compile_consumer(consumer_id, spec, registry))
        except ConfigError as exc:
            problems.extend(exc.problems)
    return directory, problems


def strip_client_copies(ctx):
    """Only the gateway says who the consumer is: a client's own copies never go upstream.
    (The readers keep none now; this stays for requests built elsewhere.) Once an auth plugin
    identified a consumer, the pair is the gateway's own and stays."""
    if ctx.consumer is not None:
        return
    header_map = ctx.header_map
    if HEADER_ID in header_map or HEADER_GROUPS in header_map:
        ctx.drop_header(HEADER_ID)
        ctx.drop_header(HEADER_GROUPS)


def identify(ctx, consumer, anonymous=False):
    """``consumer`` made this request: later plugins see it (``ctx.consumer``), and so does
    the upstream. An ``anonymous`` one (no credential came) gives way to a consumer a later
    auth plugin identifies; two credentials that name different consumers are a 401, never
    one consumer's identity with the other's plugins."""
    prior = ctx.consumer
    if prior is not None and prior is not consumer:
        if not ctx.var("anonymous"):
            raise Unauthorized("the request's credentials name different consumers")
        ctx.vars["anonymous"] = False
    if anonymous:
        ctx.vars["anonymous"] = True
    ctx.consumer = consumer
    header_map = ctx.header_map
    if HEADER_ID in header_map or HEADER_GROUPS in header_map:
        # a client's copies, or an earlier auth plugin's identification: replaced whole
        ctx.drop_header(HEADER_ID)
        ctx.drop_header(HEADER_GROUPS)
    ctx.headers += consumer.upstream_headers
    header_map.update(consumer.upstream_headers)


def consumer_id(ctx):
    """The identified consumer's id, or None (access log, metrics, rate_limit keys)."""
    consumer = ctx.consumer
    return None if consumer is None else consumer.id
