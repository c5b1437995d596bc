"""The live route table: routes, upstreams and consumers that change one item at a time.

Rules (issue 3, and what an operator expects of a gateway):

- Items are validated one by one. A bad value (invalid JSON, schema error, path conflict, unknown
  plugin) is rejected alone, with its key and reason in ``rejected``; every good item keeps
  serving. A bad *update* keeps the last good version of that item serving.
- A route refused because another route holds its path is tried again whenever a route moves
  or goes: a path can move from one route to another in one change, in either order.
- A route whose upstream id is not known yet (or was deleted) is served with a stand-in that
  answers 503 after the route's own plugins, and noted as waiting: its paths never fall through
  to a broader route (whose plugins may be nothing like its own: a public catch-all in front
  of a route with key_auth). It starts working as soon as the upstream arrives. Routes are
  recompiled when their upstream changes.
- A *new* route that is refused (a schema error, a plugin config its plugin refuses, a path
  another route holds) is fenced, when its paths can be read: they answer 503 (the global
  plugins still run) until a good version arrives, instead of falling through to a broader
  route. A fence is published to workers like an item (at its route's version, compared by
  value: it follows the table around it). An invalid update of a served route keeps the last
  good version serving, as above.
- Static routes and upstreams from the conf file are always there; a dynamic item with the same
  id is rejected.
- Changes are applied to the router in place, route by route: cost follows the change, not the
  table size.

Each dynamic item carries a version (etcd's mod_revision), so a worker applying a published
table compares integers, not specs.
"""
import functools
import ipaddress
import json
import socket
from urllib.parse import urlsplit

from ..errors import ConfigError
from ..files import accepted_before
from .consumers import CredentialTaken, Directory, compile_consumer
from .router import Router, unused
from .routes import (ROUTE, TARGET, UPSTREAM, check_path, compile_route, make_target,
                     make_upstream, path_problems_beside, refused_files, undefined_upstream,
                     upstream_id_string, upstream_refs)
from .schema import Invalid, show
from .target import static_key


def decode_json(raw):
    """An etcd value or a file's text as JSON, or ConfigError saying why it is none (a
    document nested past the recursion limit too); anything else is returned as it is."""
    if isinstance(raw, (bytes, str)):
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            slip = json_slip(exc)
            raise ConfigError(f"invalid JSON: {exc}" + (f" ({slip})" if slip else "")) \
                from None
        except RecursionError:
            raise ConfigError("invalid JSON: arrays or objects nested too deep") from None
    return raw


def json_slip(exc):
    """The slip of a hand-written file that json's refusal ``exc`` stands for, or None: a
    comma before a closing bracket, a comment. json names neither ("Expecting property
    name enclosed in double quotes"), and a newcomer looks for a missing quote."""
    doc, pos = getattr(exc, "doc", None), getattr(exc, "pos", None)
    if not isinstance(doc, str) or not isinstance(pos, int):
        return None
    if getattr(exc, "msg", "").startswith("Invalid control character"):
        # a raw newline or tab inside a string: what follows it ("// b", ",}") is the
        # string's own text, and a hint of a comment sent the reader looking for none
        return None
    rest = doc[pos:].lstrip()
    if rest.startswith(("//", "/*", "#")):
        return "JSON has no comments: remove them"
    if rest[:1] in ("}", "]") and doc[:pos].rstrip().endswith(","):
        return f"JSON allows no trailing comma: remove the one before {rest[0]}"
    return None


upstream_id_check = upstream_id_string()


def unreachable_from_etcd(spec, owner):
    """Raise ConfigError for a target an etcd item may not name: a link-local address
    (169.254.169.254, the cloud metadata service that hands out the gateway host's own
    credentials; fe80::/10) or an unspecified one (0.0.0.0, ::, which connect to this host).
    Whoever may register a service instance, or write one team's upstream, would otherwise
    have the gateway fetch them for any client of the route. Literal addresses only: a name
    is resolved when the gateway connects. The conf file's targets are the operator's own,
    and are not checked."""
    for target in spec.get("targets") or ():
        if not isinstance(target, dict) or not isinstance(target.get("url"), str):
            continue        # (a plugin's upstream before its own checks: they refuse it)
        kind = _forbidden_kind(target["url"])
        if kind is not None:
            raise ConfigError(f"{owner}: target {target['url']} is {kind} address, which an "
                              f"item from etcd may not name (a cloud metadata service; this "
                              f"host): write it in the conf file")


@functools.lru_cache(maxsize=32768)     # (as routes._checked_url: every target, every change)
def _forbidden_kind(url):
    """"a link-local" or "an unspecified" for a URL whose host is such a literal address;
    None for any other (a name included)."""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return None
    address = literal_address(host)
    if address is None or not (address.is_link_local or address.is_unspecified):
        return None
    return "a link-local" if address.is_link_local else "an unspecified"


# IPv6 prefixes whose last 32 bits are an IPv4 address the host may reach: IPv4-compatible
# (::/96, deprecated) and NAT64's well-known prefix (RFC 6052); IPv4-mapped is ipv4_mapped
_EMBEDDING = (ipaddress.ip_network("::/96"), ipaddress.ip_network("64:ff9b::/96"))


def literal_address(host):
    """The address a target's host names as a literal, as getaddrinfo reads it, or None for a
    name. Beside ipaddress's spellings, getaddrinfo takes inet_aton's as IPv4 literals
    ("2852039166", "0xa9fea9fe", "0251.0376.0251.0376", "169.254.43518" are all
    169.254.169.254; "0" is 0.0.0.0); an IPv6 address that embeds an IPv4 one is that."""
    host = host.partition("%")[0]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host.rstrip(".")))
        except (OSError, ValueError):
            return None
    if address.version == 6:
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if int(address) > 1 and any(address in net for net in _EMBEDDING):    # not ::, ::1
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def inline_upstreams(value, depth=16):
    """The upstream objects written in a route's value, its plugins' included: every object
    with a list of ``targets``, up to ``depth`` levels down (a plugin's config nested deeper
    is refused by the plugin's own checks)."""
    pending = [(value, 0)]
    while pending:
        value, level = pending.pop()
        if level > depth:
            continue
        if isinstance(value, dict):
            if isinstance(value.get("targets"), list):
                yield value
            pending.extend((item, level + 1) for item in value.values())
        elif isinstance(value, list):
            pending.extend((item, level + 1) for item in value)


WAITING = "starts working when it arrives"     # in a waiting route's note (routes_cli)
FENCED = "its paths answer 503 until a valid version arrives"
# in the reason of an item refused over its tls files (LiveTable.retry_files)
RETRIED_ON_FILES = "tried again when one of those files changes"


def one_name_a_position(patterns):
    """A fence's ``patterns`` with each parameter (catch-all) named as the first of them
    named the one at its position. Its names are never read; a refused route whose paths named
    one position twice ("/a/:id", "/a/:name/logs") had a fence the router refused whole, and
    its paths fell through to a broader route (after a compile a path, to fail all the same)."""
    names, conformed = {}, []
    for pattern in patterns:
        position, parts, used = (), [], set()
        for kind, text in check_path(pattern):
            if kind == "static":
                parts.append(text)
            else:
                # the first pattern's name here, or this one's, never one an earlier
                # position of this pattern has ("/a/:id/:x" and "/a/:y/b/:id" made
                # "/a/:id/b/:id", which the router refuses)
                text = names.setdefault((kind, position), unused(text, used))
                used.add(text)
                parts.append((":" if kind == "param" else "*") + text)
            # (keyed as the router keys it: "/a+b/:id" and "/a%2Bb/:x" are one position)
            position += ((kind, static_key(text) if kind == "static" else ""),)
        conformed.append("/" + "/".join(parts))
    return conformed


def names_once(path):
    """``path`` with a parameter (catch-all) name it binds again made another: a fence's names
    are never read, and a route refused for "/u/:id/f/:id" alone (or with a misspelt plugin)
    was not fenced at all, its paths served by a broader route."""
    used, segments = set(), path.split("/")
    for i, segment in enumerate(segments):
        if segment[:1] in (":", "*") and segment[1:]:
            segments[i] = segment[0] + unused(segment[1:], used)
            used.add(segments[i][1:])
    return "/".join(segments)


def fence_of(route_id, spec):
    """The match fields of a refused route's value, as far as they can be read, or None when
    none of its paths can: the requests the route would have taken, ranked as it would be.

    It fails closed: a slip in a match field (``"get"``, ``"API.example.com"``, ``"10"``)
    is read the way it was surely meant, or the field is left out, which makes the fence
    broader, never narrower. A route that matches on claims is not fenced: requests without
    them fall through to a broader route by design, and a fence cannot check them."""
    if not isinstance(spec, dict) or spec.get("claims"):
        return None
    fields = ROUTE.fields

    def readable(name, value):
        return _passes(fields[name].check, value)

    def items(value, normalise):
        return [normalise(v) for v in value if isinstance(v, str)] \
            if isinstance(value, list) else []
    # prefix: whatever is not plainly false ("True", 1, "yes") is read as true (broader)
    prefix = spec.get("prefix") not in (None, False, 0, "") and \
        str(spec.get("prefix")).strip().lower() not in ("false", "0", "no", "off")
    paths = []
    for path in items(spec.get("paths"), str):
        try:
            path = fields["paths"].check([names_once(path)])[0]   # escapes as requests have
            check_path(path)
        except (Invalid, ValueError):
            continue
        if path == "/" and prefix:
            path = "/*rest"             # (what "/" with prefix could only have meant)
        elif path.endswith("/") and path != "/":
            path = path.rstrip("/")     # broader: it takes the / too, and below with prefix
        paths.append(path)
    if not paths:
        return None
    fence = {"id": route_id, "paths": paths}
    methods = _all_readable(spec.get("methods"), str.upper, "methods")
    hosts = _all_readable(spec.get("hosts"), _host_as_meant, "hosts")
    if methods:
        fence["methods"] = methods
    if hosts:
        fence["hosts"] = hosts
    headers = spec.get("headers")
    if isinstance(headers, dict):
        headers = {k: v for k, v in headers.items() if readable("headers", {k: v})}
        if headers:
            fence["headers"] = headers
    priority = spec.get("priority")
    if isinstance(priority, str):
        try:
            priority = int(priority.strip())
        except ValueError:              # "--5", "²", 5,000 digits: left out
            priority = None
    if priority is not None and readable("priority", priority):
        fence["priority"] = priority
    catchalls = [p.rpartition("/")[2].startswith("*") for p in paths]
    if prefix and not any(catchalls):
        fence["prefix"] = True
    elif prefix:        # prefix beside a catch-all (refused): each path covers what is below
        fence["paths"] = [p if catchall else p + "/*rest" for p, catchall in zip(paths, catchalls)]
    return fence


def _all_readable(value, normalise, name):
    """A fence's list field (methods, hosts): every item as surely meant, or None (the field
    left out) when any item cannot be read. Keeping the readable ones made the fence narrower
    than the route: ``["admin.example", "API.example:8443"]`` fenced admin.example alone, and
    api.example's requests fell through to a broader route."""
    if not isinstance(value, list):
        return None
    meant = [normalise(v) if isinstance(v, str) else None for v in value]
    if None in meant or not _passes(ROUTE.fields[name].check, meant):
        return None
    return meant


def _host_as_meant(host):
    """A ``hosts`` entry as requests are matched: lower case, without a port or the trailing
    dot (core.target's Host rules)."""
    host = host.strip().lower()
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host[:-1] if host.endswith(".") else host


def _passes(check, value):
    try:
        check(value)
        return True
    except Invalid:
        return False


def _match_of(route):
    """What a route's place in the router depends on (a change may free a path)."""
    return (route.paths, route.prefix, route.methods, route.hosts, route.host_suffixes,
            route.headers, route.claims, route.priority)


TRADE_TRIES = 8     # choices between consumers that want one credential, in one trade


class LiveTable:
    def __init__(self, upstream_defaults, server, global_plugins, registry,
                 static_routes=(), static_upstreams=None, static_consumers=None):
        self.defaults = upstream_defaults
        self.server = server
        self.global_plugins = global_plugins or {}
        self.registry = registry
        self.router = Router()
        self.upstreams = {}         # id -> Upstream (compiled), static and dynamic
        self.route_specs = {}       # dynamic route id -> (version, validated spec) being served
        self.upstream_specs = {}    # dynamic upstream id -> (version, validated spec) served
        # dynamic upstream id that follows a service -> (version, validated spec before
        # _expand): what its served version is expanded from again (_follow)
        self.followers = {}
        # such an upstream's static targets, listed beside its service: published, so the
        # snapshot tells them from the instances it was expanded with (keep_last_good)
        self.service_targets = {}
        # such an upstream taken from a table that did not list them (written before they
        # were): id -> its targets as published (static and that day's instances, mixed)
        self.targets_unknown = {}
        self.wanted_routes = {}     # dynamic route id -> (version, raw) as the source has it
        self.wanted_upstreams = {}
        self.static_routes, self.static_upstreams = set(), set()
        self.rejected = {}          # "routes/ID", "upstreams/ID", "services/S/I" -> reason
        self.expand_services = False    # the sync process turns it on when it sees services
        self.instances = {}         # service -> {instance: target spec}
        self.service_revision = {}  # service -> etcd revision of its last change
        self.waiting = set()        # "routes/ID" served with a stand-in for a missing upstream
        self.fence_specs = {}       # refused new route id -> (version, fence spec) (_fence)
        self._conflicted = set()    # route ids refused only for a path another route held
        self._retrying = False
        # upstream id refused only as routes using it could not take it -> those route ids
        self._unfit = {}            # (_put_upstream, _retry_unfit)
        self._retrying_unfit = False
        # "routes/ID", "upstreams/ID" refused over tls files -> those files' stamps then; kept
        # by the sync process (retries_files), not by a CLI's table, which writes nothing
        self.retries_files = False
        self.file_refusals = {}
        self.consumers = Directory(registry)    # static and dynamic, compiled
        self.consumer_specs = {}    # dynamic consumer id -> (version, validated spec) served
        self.wanted_consumers = {}
        self.static_consumers = set()
        self._taken = set()         # consumer ids refused only for a credential another held
        for consumer_id, spec in (static_consumers or {}).items():
            self.consumers.add(compile_consumer(consumer_id, spec, registry))
            self.static_consumers.add(consumer_id)
        for upstream_id, spec in (static_upstreams or {}).items():
            self.upstreams[upstream_id] = make_upstream(
                upstream_id, UPSTREAM.validate(spec, f"upstream {upstream_id}"), self.defaults,
                registry)
            self.static_upstreams.add(upstream_id)
        for spec in static_routes:
            route, _ = self._compile_route(ROUTE.validate(spec, f"route {spec.get('id')}"))
            self.router.add(route)
            self.static_routes.add(route.id)

    @classmethod
    def for_conf(cls, conf, registry):
        """The table of a loaded conf file: its static items, defaults and global plugins."""
        return cls(conf.upstream_defaults, conf.server, dict(conf.plugins), registry,
                   conf.static_routes, dict(conf.static_upstreams),
                   dict(conf.static_consumers or {}))

    # -- whole-table operations ----------------------------------------------------------------

    def replace_all(self, routes, upstreams, consumers=None, fences=None):
        """Make the dynamic part equal to ``routes``/``upstreams`` ({id: (version, raw)}), and
        the fences to ``fences`` (a published table's; None: what the routes leave).

        Compared by value, not by version alone: versions are etcd revisions, which restart
        in another cluster, after a restore or a wipe (an item at an equal revision may hold
        another value). Equal values are skipped, so an unchanged item costs a comparison."""
        for upstream_id in list(self.wanted_upstreams):
            if upstream_id not in upstreams:
                self.delete_upstream(upstream_id)
        for upstream_id, (version, raw) in upstreams.items():
            if self.wanted_upstreams.get(upstream_id) != (version, raw):
                self.put_upstream(upstream_id, raw, version)
        for route_id in list(self.wanted_routes):
            if route_id not in routes:
                self.delete_route(route_id)
        if fences is None:      # etcd's view: a fence taken up (load_served) of a route gone
            fences = {k: v for k, v in self.fence_specs.items() if k in routes}
        for route_id in [k for k in self.fence_specs if self.fence_specs[k] != fences.get(k)]:
            self.delete_fence(route_id)
        for route_id, (version, raw) in routes.items():
            if self.wanted_routes.get(route_id) != (version, raw):
                self.put_route(route_id, raw, version)
        for route_id, (version, spec) in fences.items():    # after the routes, as in a delta
            if route_id not in self.fence_specs:
                self.put_fence(route_id, spec, version)
        consumers = consumers or {}
        for consumer_id in list(self.wanted_consumers):
            if consumer_id not in consumers:
                self.delete_consumer(consumer_id)
        for consumer_id, (version, raw) in consumers.items():
            if self.wanted_consumers.get(consumer_id) != (version, raw):
                self.put_consumer(consumer_id, raw, version)

    # -- service instances (the sync process only: workers receive expanded upstreams) ---------

    def replace_instances(self, instances, revision):
        """Full load: {service: {instance: raw}} at ``revision``."""
        self.expand_services = True
        self.service_revision = {}      # revisions of another history mean nothing here
        # (and the services of upstreams put from a published table, which may have none
        # now: take_service_targets)
        followed = {spec["service"] for _, spec in self.followers.values()}
        for service in set(self.instances) | set(instances) | followed:
            self.instances[service] = {}
            for instance, raw in instances.get(service, {}).items():
                self._take_instance(service, instance, raw)
            self._service_changed(service, revision)

    def apply_instances(self, changes):
        """One watch batch of instance events, [(service, instance, raw or None for a
        delete, revision)]; each service's upstreams are rebuilt once, after all of them:
        rebuilt per event, registering N instances of a service cost N^2 (each rebuild
        lists every instance so far)."""
        changed = {}
        for service, instance, raw, revision in changes:
            if raw is None:
                self.rejected.pop(f"services/{service}/{instance}", None)
                if self.instances.get(service, {}).pop(instance, None) is None:
                    continue
            else:
                self.expand_services = True
                self._take_instance(service, instance, raw)
            changed[service] = max(changed.get(service, 0), revision)
        for service, revision in changed.items():
            self._service_changed(service, revision)

    def put_instance(self, service, instance, raw, revision):
        self.apply_instances([(service, instance, raw, revision)])

    def delete_instance(self, service, instance, revision):
        self.apply_instances([(service, instance, None, revision)])

    def _take_instance(self, service, instance, raw):
        key = f"services/{service}/{instance}"
        try:
            value = decode_json(raw)
            if isinstance(value, str):
                value = {"url": value}
            spec = TARGET.validate(value, f"service {service} instance {instance}")
            unreachable_from_etcd({"targets": [spec]}, f"service {service} instance {instance}")
        except Exception as exc:        # noqa: BLE001 - see _reject
            self.instances.get(service, {}).pop(instance, None)
            self._reject(key, exc, False)
            return
        self.instances.setdefault(service, {})[instance] = spec
        self.rejected.pop(key, None)

    def _service_changed(self, service, revision):
        self.service_revision[service] = max(self.service_revision.get(service, 0), revision)
        for upstream_id, (_, spec) in list(self.upstream_specs.items()):
            if spec.get("service") == service and upstream_id in self.wanted_upstreams:
                version, raw = self.wanted_upstreams[upstream_id]
                if not self.put_upstream(upstream_id, raw, version):
                    self._follow(upstream_id)

    def take_service_targets(self, service_targets):
        """The sync process put a published table (its snapshot, or runtime_dir's after a
        restart): its service-following upstreams came expanded, the instances of that day
        as their targets. Written again as etcd had them, their static targets alone (which
        the table lists: ``service_targets``), so they follow their service once its live
        instances are known (replace_instances); else, their update refused in etcd, an
        instance deregistered meanwhile kept its share of the traffic for good.
        None: a table written before tables listed them; which of their targets are static
        is not known here (targets_unknown: the sync process asks etcd once it answers)."""
        self.targets_unknown = {upstream_id: spec.get("targets")
                                for upstream_id, (_, spec) in self.followers.items()} \
            if service_targets is None else {}
        if not isinstance(service_targets, dict):     # (a file by another hand): none
            service_targets = {}
        self.service_targets = {k: v for k, v in service_targets.items() if k in self.followers}
        for upstream_id, (version, spec) in list(self.followers.items()):
            written = {**spec, "targets": self.service_targets.get(upstream_id)}
            self.followers[upstream_id] = (version, written)
            self.wanted_upstreams[upstream_id] = (version, json.dumps(written))

    def without_instances(self, service, targets):
        """``targets`` (a published, expanded upstream's) less the live instances of
        ``service``: its static targets, as far as the instances known now tell."""
        live = {make_target(t).key for t in self.instances.get(service, {}).values()}
        return [t for t in targets or [] if make_target(t).key not in live] or None

    def _follow(self, upstream_id):
        """The version served of an upstream whose update is refused still follows its
        service: it kept the instances of the moment the update came, an instance whose
        lease expired kept its share of the traffic, and one that registered got none."""
        if upstream_id not in self.followers:
            return
        try:
            self._serve_upstream(upstream_id, *self.followers[upstream_id])
        except Exception:       # noqa: BLE001 - as it was, as for a refused update
            return
        self._recompile_users(upstream_id)

    def _serve_upstream(self, upstream_id, version, written):
        """Compile ``written`` (a validated spec) with the live instances of the service it
        follows, if any, and serve it; raises what make_upstream raises, serving as before."""
        previous = self.upstreams.get(upstream_id)     # its targets kept as they are
        spec, served_version = self._expand(written, version, previous)
        self.upstreams[upstream_id] = make_upstream(upstream_id, spec, self.defaults,
                                                   self.registry, previous=previous)
        self.upstream_specs[upstream_id] = (served_version, spec)

    def _expand(self, spec, version, previous=None):
        """An upstream that follows a service gets the live instances as targets, and a
        version that moves whenever they change (workers compare versions). One server
        is one target however its URL is spelt ("http://10.0.0.7:80/", "http://10.0.0.7"),
        in the place of the first, as the last says. Compared by URL, an instance registered
        again, spelt otherwise, had the whole upstream refused ("a target is listed twice"),
        and it followed its instances no more."""
        service = spec.get("service")
        if not service or not self.expand_services:
            return spec, version
        live = sorted(self.instances.get(service, {}).items())
        known = {t.url: t.key for t in previous.targets} if previous is not None else {}
        unique = {}
        for target in list(spec["targets"] or []) + [target for _, target in live]:
            unique[known.get(target["url"]) or make_target(target).key] = target
        return {**spec, "targets": list(unique.values())}, \
            max(version, self.service_revision.get(service, 0))

    def published(self):
        """The good dynamic items, as workers rebuild them: {kind: {id: [version, spec]}}."""
        table = {"routes": {k: list(v) for k, v in self.route_specs.items()},
                 "upstreams": {k: list(v) for k, v in self.upstream_specs.items()},
                 "consumers": {k: list(v) for k, v in self.consumer_specs.items()},
                 "fences": {k: list(v) for k, v in self.fence_specs.items()}}
        # (workers read none of it: the snapshot's, for its start). Listed, even empty, while
        # an upstream follows a service: a table without it is taken for one written before
        # it was listed (take_service_targets)
        if self.service_targets or self.followers:
            table["service_targets"] = dict(self.service_targets)
        return table

    def apply_delta(self, delta):
        """Worker side: one published generation's changes ({kind: {id: [version, spec] or
        None}}). Upstreams first, so routes find theirs; removals of routes before upstreams."""
        for upstream_id, item in delta.get("upstreams", {}).items():
            if item is not None:
                self.put_upstream(upstream_id, item[1], item[0])
        routes = delta.get("routes", {})
        for route_id in routes:     # all out first: two may trade paths or names in one change
            self.delete_route(route_id)
        for route_id, item in routes.items():
            if item is not None:
                self.put_route(route_id, item[1], item[0])
        for upstream_id, item in delta.get("upstreams", {}).items():
            if item is None:
                self.delete_upstream(upstream_id)
        for consumer_id, item in delta.get("consumers", {}).items():
            if item is None:
                self.delete_consumer(consumer_id)
            else:
                self.put_consumer(consumer_id, item[1], item[0])
        # Fences after routes (a route that becomes good takes its fence's place), and every
        # old fence out before a new one goes in: two may swap paths in one change.
        fences = delta.get("fences", {})
        for route_id in fences:
            self.delete_fence(route_id)
        for route_id, item in fences.items():
            if item is not None:
                self.put_fence(route_id, item[1], item[0])

    def apply_steps(self, steps):
        """Follow what a table reader returned: ("full", document) or ("delta", document)."""
        for kind, document in steps:
            if kind == "full":
                self.apply_published(document["table"])
            else:
                self.apply_delta(document)

    def apply_published(self, table):
        """Worker side: follow a table published by the sync process (all items are good).
        Routes that change go out before any comes in, as in apply_delta."""
        for route_id in [k for k, v in self.wanted_routes.items()
                         if tuple(table["routes"].get(k, ())) != v]:
            self.delete_route(route_id)
        self.replace_all({k: tuple(v) for k, v in table["routes"].items()},
                         {k: tuple(v) for k, v in table["upstreams"].items()},
                         {k: tuple(v) for k, v in table.get("consumers", {}).items()},
                         {k: tuple(v) for k, v in table.get("fences", {}).items()})

    # -- single items --------------------------------------------------------------------------

    def put_route(self, route_id, raw, version=0):
        accepted = self._noting_files(f"routes/{route_id}", self._put_route, route_id, raw,
                                      version)
        if accepted:
            self._retry_unfit(route_id)     # it may take an upstream it could not before
        return accepted

    def _put_route(self, route_id, raw, version):
        key = f"routes/{route_id}"
        self.wanted_routes[route_id] = (version, raw)
        spec = None
        try:
            if route_id in self.static_routes:
                raise ConfigError(f"route {route_id}: the id is taken by a static route in the "
                                  f"conf file")
            spec = decode_json(raw)
            if isinstance(spec, dict):
                spec.setdefault("id", route_id)
                if spec["id"] != route_id:
                    raise ConfigError(f"route {route_id}: id {show(spec['id'])} in the value "
                                      f"does not match the key")
            valid, problems, bad = ROUTE.partial(spec, f"route {route_id}")
            if problems:
                raise ConfigError(problems + path_problems_beside(
                    spec, bad, f"route {route_id}", self.server))
            spec = valid
            for inline in inline_upstreams(spec):      # its own, and its plugins' (split)
                unreachable_from_etcd(inline, f"route {route_id}")
            route, missing = self._compile_route(spec)
            old = self.router.remove(route_id)
            try:
                fences_moved = self._add_past_fences(route) if self.fence_specs else \
                    self.router.add(route)
            except Exception:       # noqa: BLE001 - see _reject
                if old is not None:
                    try:
                        self.router.add(old)    # it held these positions a moment ago
                    except Exception:           # noqa: BLE001 - then it is not served
                        self.route_specs.pop(route_id, None)
                        self.fence_specs.pop(route_id, None)
                self._conflicted.add(route_id)
                raise
        except Exception as exc:        # noqa: BLE001 - see _reject
            served = route_id in self.route_specs
            try:
                fenced = not served and route_id not in self.static_routes and \
                    self._fence(route_id, spec, version)
            except Exception:       # noqa: BLE001 - a fence must never fail a put (see _reject)
                fenced = route_id in self.fence_specs
            self._reject(key, exc, served)
            if fenced:
                self.rejected[key] += f" ({FENCED})"
            return False
        self.route_specs[route_id] = (version, spec)
        self.fence_specs.pop(route_id, None)        # its place in the router is the route's
        self._conflicted.discard(route_id)
        if missing:
            self.waiting.add(key)
            self.rejected[key] = (f"route {route_id}: upstream: unknown upstream id "
                                  f"{', '.join(map(show, missing))} (the route {WAITING}; "
                                  f"until then it answers 503)")
        else:
            self.waiting.discard(key)
            self.rejected.pop(key, None)
        if fences_moved or old is not None and _match_of(old) != _match_of(route):
            self._retry_conflicted()        # it may have left a path another route wants
        return True

    def delete_route(self, route_id):
        self.wanted_routes.pop(route_id, None)
        self.rejected.pop(f"routes/{route_id}", None)
        self.waiting.discard(f"routes/{route_id}")
        self._conflicted.discard(route_id)
        if route_id in self.route_specs or route_id in self.fence_specs:
            self.route_specs.pop(route_id, None)
            self.fence_specs.pop(route_id, None)
            self.router.remove(route_id)
        self._retry_conflicted()
        self._retry_unfit(route_id)

    def put_upstream(self, upstream_id, raw, version=0):
        return self._noting_files(f"upstreams/{upstream_id}", self._put_upstream,
                                  upstream_id, raw, version)

    def _put_upstream(self, upstream_id, raw, version):
        key = f"upstreams/{upstream_id}"
        self.wanted_upstreams[upstream_id] = (version, raw)
        self._unfit.pop(upstream_id, None)
        served = self.upstreams.get(upstream_id), self.upstream_specs.get(upstream_id)
        try:
            if upstream_id in self.static_upstreams:
                raise ConfigError(f"upstream {upstream_id}: the id is taken by a static upstream "
                                  f"in the conf file")
            try:
                upstream_id_check(upstream_id)
            except Invalid as exc:
                raise ConfigError(f"upstream {upstream_id}: the id {exc}") from None
            written = UPSTREAM.validate(decode_json(raw), f"upstream {upstream_id}")
            unreachable_from_etcd(written, f"upstream {upstream_id}")
            self._serve_upstream(upstream_id, version, written)
        except Exception as exc:        # noqa: BLE001 - see _reject
            return self._reject(key, exc, upstream_id in self.upstream_specs)
        unfit = self._recompile_users(upstream_id)
        if unfit:
            # Refused, as a bad update is: accepted, the routes kept their previous version
            # where they were compiled, but a worker started after (a reload's, a dead one's
            # replacement) compiled the route published with this upstream, failed, and
            # answered 503 for all its paths. Tried again when one of them changes
            # (_retry_unfit).
            self._unserve_upstream(upstream_id, *served)
            self._recompile_users(upstream_id)
            self._unfit[upstream_id] = frozenset(unfit)
            return self._reject(key, ConfigError(
                [f"upstream {upstream_id}: a route that uses it cannot take it: {problem}"
                 for problems in unfit.values() for problem in problems]),
                upstream_id in self.upstream_specs)
        if written.get("service"):
            self.followers[upstream_id] = (version, written)
        else:
            self.followers.pop(upstream_id, None)
        if written.get("service") and written.get("targets"):
            self.service_targets[upstream_id] = written["targets"]
        else:
            self.service_targets.pop(upstream_id, None)
        self.rejected.pop(key, None)
        return True

    def _unserve_upstream(self, upstream_id, upstream, spec):
        """Serve ``upstream`` (its ``spec``) again, as before a put; None: none was."""
        if upstream is None:
            self.upstreams.pop(upstream_id, None)
            self.upstream_specs.pop(upstream_id, None)
        else:
            self.upstreams[upstream_id], self.upstream_specs[upstream_id] = upstream, spec

    def delete_upstream(self, upstream_id):
        self.wanted_upstreams.pop(upstream_id, None)
        self.rejected.pop(f"upstreams/{upstream_id}", None)
        self._unfit.pop(upstream_id, None)
        if upstream_id not in self.upstream_specs:
            return
        # Routes that use it answer 503 until it is back (a stand-in), as on a host that
        # starts now: every host serves what etcd holds, whatever it saw before.
        del self.upstream_specs[upstream_id]
        del self.upstreams[upstream_id]
        self.followers.pop(upstream_id, None)
        self.service_targets.pop(upstream_id, None)
        self._recompile_users(upstream_id)

    def put_consumer(self, consumer_id, raw, version=0):
        key = f"consumers/{consumer_id}"
        self.wanted_consumers[consumer_id] = (version, raw)
        try:
            if consumer_id in self.static_consumers:
                raise ConfigError(f"consumer {consumer_id}: the id is taken by a consumer in "
                                  f"the conf file")
            consumer = compile_consumer(consumer_id, decode_json(raw), self.registry, version)
            self.consumers.add(consumer)
        except Exception as exc:        # noqa: BLE001 - see _reject
            if not isinstance(exc, CredentialTaken):
                self._taken.discard(consumer_id)
                return self._reject(key, exc, consumer_id in self.consumer_specs)
            self._taken.add(consumer_id)
            self._reject(key, exc, consumer_id in self.consumer_specs)
            return self._trade_taken() and consumer_id not in self._taken
        self._served_consumer(consumer_id, version, raw)
        self._retry_taken()             # its previous version may have let go of a credential
        return True

    def _served_consumer(self, consumer_id, version, raw):
        self.consumer_specs[consumer_id] = (version, decode_json(raw))
        self.rejected.pop(f"consumers/{consumer_id}", None)
        self._taken.discard(consumer_id)

    def _trade_taken(self):
        """Consumers refused only for a credential that another refused one's served version
        holds, put in together: two that trade keys (in one etcd transaction, or two puts)
        each wanted what the other still had, both were refused, and nothing was ever tried
        again: the keys stayed where they were, each partner served as the other, for good.
        The largest set of them that fits goes in at once; -> whether any did."""
        wanted = {}
        for consumer_id in self._taken:
            if consumer_id in self.wanted_consumers:
                version, raw = self.wanted_consumers[consumer_id]
                try:
                    wanted[consumer_id] = compile_consumer(consumer_id, decode_json(raw),
                                                           self.registry, version)
                except Exception:       # noqa: BLE001 - refused alone, as put_consumer does
                    continue
        wants = {consumer_id: set(self.consumers.lookups(consumer).items())
                 for consumer_id, consumer in wanted.items()}
        chosen = self._fitting(wants, frozenset(wants), TRADE_TRIES)
        if len(chosen) < 2 or not self._put_together([wanted[c] for c in chosen]):
            return False            # one alone was just refused: a trade takes two
        for consumer_id in chosen:
            self._served_consumer(consumer_id, *self.wanted_consumers[consumer_id])
        self._retry_taken()
        return True

    def _fitting(self, wants, chosen, tries):
        """The largest part of ``chosen`` (consumer ids; ``wants``: their new versions'
        credentials, as (plugin, lookup)) that can go in together: no credential of one
        held by a consumer that keeps its served version, none wanted by two of them. Of two
        that want one credential, each is left out in turn (at most ``tries`` such choices:
        the sets are a handful of consumers in the middle of a change)."""
        while True:
            claims = {}
            for consumer_id in chosen:
                for credential in wants[consumer_id]:
                    claims.setdefault(credential, []).append(consumer_id)
            kept = frozenset(c for c in chosen if all(
                self._holder(credential) in (None, c, *chosen) for credential in wants[c]))
            if kept == chosen:
                break
            chosen = kept
        contested = next((ids for ids in claims.values() if len(ids) > 1), None)
        if contested is None:
            return chosen
        best = frozenset()
        for consumer_id in sorted(contested)[:max(tries, 1)]:
            found = self._fitting(wants, chosen - {consumer_id}, tries // 2)
            best = max(best, found, key=len)
        return best

    def _holder(self, credential):
        """The id of the consumer whose served version holds ``credential``, or None."""
        holder = self.consumers.find(*credential)
        return None if holder is None else holder.id

    def _put_together(self, consumers):
        """Replace these consumers' served versions with ``consumers`` in one step; -> whether
        they fit (else nothing is changed)."""
        served = [self.consumers.get(c.id) for c in consumers]
        for consumer in consumers:
            self.consumers.remove(consumer.id)
        try:
            for consumer in consumers:
                self.consumers.add(consumer)
        except CredentialTaken:
            for added in consumers:
                self.consumers.remove(added.id)
            for old in served:      # as it was a moment ago, so they fit again
                if old is not None:
                    self.consumers.add(old)
            return False
        return True

    def delete_consumer(self, consumer_id):
        self.wanted_consumers.pop(consumer_id, None)
        self.rejected.pop(f"consumers/{consumer_id}", None)
        self._taken.discard(consumer_id)
        if self.consumer_specs.pop(consumer_id, None) is not None:
            self.consumers.remove(consumer_id)
            self._retry_taken()

    def _retry_taken(self):
        """Consumers refused for a credential another held are tried again whenever one
        changes or goes: a rename (the new id put with the old one's key, then the old id
        deleted) locked the partner out for good, and a consumer whose new key a stale one
        held kept serving its previous, revoked, key. (Their retries call this again: one
        pass frees what the next needs.)"""
        for consumer_id in list(self._taken):
            if consumer_id in self._taken and consumer_id in self.wanted_consumers:
                version, raw = self.wanted_consumers[consumer_id]
                self.put_consumer(consumer_id, raw, version)

    # -- helpers -------------------------------------------------------------------------------

    def _reject(self, key, exc, still_served):
        """Reject one item for ``exc``: a ConfigError, or whatever a check that did not
        foresee its value raised (a library's own exception for a key it cannot use, say).
        Either way the item alone: one value in etcd must never stop the sync process (it
        would crash-loop on it, and no later change apply)."""
        kept = " (the previous version keeps serving)" if still_served else ""
        self.rejected[key] = "; ".join(ConfigError.of(exc).problems) + kept
        return False

    def _noting_files(self, key, put, *args):
        """``put(*args)``, noting the tls files it was refused over (retry_files)."""
        if not self.retries_files:
            return put(*args)
        with refused_files() as files:
            accepted = put(*args)
        if not accepted and files and key in self.rejected:
            self.file_refusals[key] = _file_stamps(files)
            self.rejected[key] += f" ({RETRIED_ON_FILES})"
        else:
            self.file_refusals.pop(key, None)
        return accepted

    def retry_files(self):
        """Items refused over their tls files are put again once one of those files changed:
        nothing in etcd changes when the operator puts a file right, and such an item stayed
        rejected (its route 404 or its previous version serving) until it was written again.
        -> whether one was put again and accepted: one refused again (its reason said
        anew, if it changed) changes nothing the workers see, and a file that keeps
        changing (a log-like one, a bundle rewritten by a timer) made the sync process
        publish a generation of no change at every quiet turn, each worker applying it."""
        retried = False
        for key, stamps in list(self.file_refusals.items()):
            if self.file_refusals.get(key) is not stamps:
                # put again already, by an upstream retried before it (_recompile_users puts
                # every rejected route): its entry went, or is that put's; `del` of the gone
                # one raised KeyError out of the sync process's loop, which died with it
                continue
            kind, _, item_id = key.partition("/")
            wanted = (self.wanted_routes if kind == "routes" else self.wanted_upstreams)
            if key not in self.rejected or item_id not in wanted:
                del self.file_refusals[key]
                continue
            if _file_stamps(stamps) == stamps:
                continue
            del self.file_refusals[key]
            version, raw = wanted[item_id]
            # put's own word: a route accepted while it waits for an upstream id is served
            # (503 for that one) and still listed in rejected; judged by that list, it was
            # never published, its fence kept answering 503 once the file was put right
            if (self.put_route if kind == "routes" else self.put_upstream)(item_id, raw,
                                                                           version):
                retried = True
        return retried

    def _compile_route(self, spec):
        """-> (route, ids of the upstreams it names that are not defined: stand-ins)."""
        missing = []

        def stand_in(upstream_id):
            missing.append(upstream_id)
            return undefined_upstream(upstream_id, self.defaults)
        route = compile_route(spec, self.upstreams, self.defaults, self.server,
                              self.global_plugins, self.registry, absent=stand_in)
        return route, missing

    def _fence(self, route_id, spec, version):
        """Hold a refused new route's paths with a route that answers 503 after the global
        plugins: the paths of a route that failed its checks (its key_auth misspelt, say)
        must not fall through to a broader route, a public catch-all perhaps. -> whether a
        fence stands. The old fence is swapped for the new one in one step: a route refused
        for the old one's paths must not slip in between (and then keep the new one out)."""
        fence, old = fence_of(route_id, spec), self.fence_specs.get(route_id)
        if fence is None or (old is not None and old[1] == fence):
            return old is not None      # unreadable paths keep the fence they had
        if old is not None:
            old_route = self.router.remove(route_id)
        # A fence's parameters are never read: it takes the names the tree has, and holds a
        # path whatever another route called them. A path it still cannot hold is left to
        # its holder and tried again whenever a route moves or goes (_conflicted).
        wanted = one_name_a_position([self.router.conforming(p) for p in fence["paths"]])
        # All at once first: path by path is a route compiled per path, ~5 s in the sync
        # process for the 100,000 paths a 1 MB value holds, at each write of it.
        if not self._placeable(route_id, {**fence, "paths": wanted}):
            fence["paths"] = [path for path in wanted
                              if self._placeable(route_id, {**fence, "paths": [path]})]
        else:
            fence["paths"] = wanted
        if len(fence["paths"]) < len(wanted):
            self._conflicted.add(route_id)
        if not fence["paths"] or not self.put_fence(route_id, fence, version):
            if old is not None:
                self.router.add(old_route)  # its paths stay held
            return old is not None
        self._retry_conflicted()            # the old fence may have left a path
        return True

    def _add_past_fences(self, route):
        """Add a good route that fences may be in the way of, by parameter names only (a
        fence took whatever names the tree had): the fences step aside, the route goes in,
        and they come back under its names. Raises as Router.add if it still conflicts."""
        try:
            self.router.add(route)
            return False
        except Exception:       # noqa: BLE001 - maybe only a fence's names
            fences = {k: self.router.remove(k) for k in self.fence_specs if k != route.id}
            try:
                self.router.add(route)
            except Exception:
                for fence_route in fences.values():
                    self.router.add(fence_route)
                raise
        retrying, self._retrying = self._retrying, True     # no retries half way through
        try:
            for route_id in fences:
                version, fence = self.fence_specs.pop(route_id)
                self._fence(route_id, fence, version)
        finally:
            self._retrying = retrying
        return True             # fences moved: the caller retries what waits for paths

    def _fence_route(self, route_id, fence):
        spec = ROUTE.validate({**fence, "upstream": route_id}, f"route {route_id}")
        # Its id has a space: no real upstream's (the health checker keys upstreams by id).
        stand_in = undefined_upstream(f"{route_id} (refused)", self.defaults, route_id)
        return compile_route(spec, {route_id: stand_in}, self.defaults, self.server,
                             self.global_plugins, self.registry)

    def _placeable(self, route_id, fence):
        try:
            self.router.check(self._fence_route(route_id, fence))
            return True
        except Exception:       # noqa: BLE001 - not placeable, whatever the reason
            return False

    def put_fence(self, route_id, fence, version=0):
        """Fence ``fence`` (a route's match fields); workers receive fences published, and
        rename its parameters to their tree's, as the sync process did to its own."""
        try:
            conformed = {**fence, "paths": [self.router.conforming(p) for p in fence["paths"]]}
            self.router.add(self._fence_route(route_id, conformed))
        except Exception:       # noqa: BLE001 - no fence: the route is refused all the same
            return False
        self.fence_specs[route_id] = (version, fence)
        return True

    def delete_fence(self, route_id):
        if self.fence_specs.pop(route_id, None) is not None:
            self.router.remove(route_id)
            self._retry_conflicted()        # a route may want the paths it held

    def refused(self):
        """Rejected items, less the routes served with a stand-in while they wait. By the
        reason, as `routes status` counts them: a waiting route whose next version was refused
        stays in ``waiting`` (the old one serves), and its refusal went uncounted."""
        return {k: v for k, v in self.rejected.items()
                if k not in self.waiting or WAITING not in v}

    def _retry_conflicted(self):
        """A route refused for a path another route held is tried again whenever a route
        moves or goes: one change can move a path from one route to another (z leaves /p, c
        takes it), and whichever side arrives first would otherwise keep c out for good."""
        if self._retrying or not self._conflicted:
            return
        self._retrying = True
        try:
            progress = True
            while progress and self._conflicted:
                progress = False
                for route_id in list(self._conflicted):
                    version, raw = self.wanted_routes[route_id]
                    progress = self.put_route(route_id, raw, version) or progress
        finally:
            self._retrying = False

    def _retry_unfit(self, route_id):
        """An upstream refused as routes that use it could not take it is tried again
        whenever one of those routes changes or goes: the change that lets them take it
        (grpc_web taken off the route, for an upstream put without protocol = "h2") may
        come after it. Only then: no other change lets it in, and tried at every route's,
        each try reading every route's upstreams, N route puts cost N x N (a sync process's
        restart puts them all: minutes for 10,000, publishing nothing)."""
        if self._retrying_unfit or not any(route_id in routes for routes in
                                           self._unfit.values()):
            return
        self._retrying_unfit = True
        try:
            for upstream_id in list(self._unfit):
                if upstream_id in self._unfit and upstream_id in self.wanted_upstreams:
                    version, raw = self.wanted_upstreams[upstream_id]
                    self.put_upstream(upstream_id, raw, version)
        finally:
            self._retrying_unfit = False

    def _recompile_users(self, upstream_id):
        """Routes that use, or wait for, this upstream pick up its new version. -> {route id:
        problems} of the routes served that cannot: their version served, compiled with it
        (a published route a worker could not compile), for _put_upstream to refuse it."""
        unfit = {}
        for route_id, (version, raw) in list(self.wanted_routes.items()):
            served = self.route_specs.get(route_id)
            try:
                uses = served is not None and \
                    upstream_id in upstream_refs(served[1], self.registry)
            except ConfigError:
                uses = True     # put again: refused naming the plugin, never out of the sync
            waits = f"routes/{route_id}" in self.rejected
            if not (uses or waits):
                continue
            accepted = self.put_route(route_id, raw, version)
            if accepted or route_id not in self.route_specs:
                continue        # it took the upstream, or has no version served to keep
            try:        # (refused: its own version may be what is wrong, not the upstream)
                with accepted_before():     # as a worker compiles it: its tls files unread
                    self._compile_route(self.route_specs[route_id][1])
            except Exception as exc:        # noqa: BLE001 - as put_route's compile
                unfit[route_id] = ConfigError.of(exc).problems
        return unfit


def _file_stamps(paths):
    """What tells each of ``paths`` from its next version (None: gone)."""
    from ..files import stamp
    return {path: stamp(path) for path in paths}
