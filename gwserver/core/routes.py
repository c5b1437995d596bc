"""Route and upstream objects: their schemas and their compiled, frozen forms.

The same schema serves the conf file's ``[[routes]]`` and (later) etcd values, so a route that
``gwserver check`` accepts is a route the gateway serves. Compilation turns validated dicts into
frozen values the hot path reads without further checks.
"""
import contextlib
import functools
import re
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from ..errors import BadRequest, ConfigError
from ..files import accepted_before, checks_files, client_files_problems
from .balancer import POLICIES
from .schema import (Field, Invalid, Schema, absolute_path, boolean, fraction, header_name,
                     header_value, integer, list_of, map_of, number, one_of, request_key, show,
                     status_code, string)
from .target import normalise_path, static_key, strip_path_prefix

ROUTE_ID = r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}"
# The methods a route may list: HTTP's (RFC 9110, PATCH, QUERY), WebDAV's and PURGE. A closed
# list, as APISIX's: "PSOT" would otherwise be accepted, and POST fall to a broader route.
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH", "QUERY",
           "PURGE", "PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK",
           "REPORT", "SEARCH")
HOST = r"(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*"
PARAM = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# urllib3 fills a new pool with pool_size placeholders: 20,000,000 (a typo) held a worker and
# its clients for seconds at its first request to each target, and took hundreds of MB
MAX_POOL_SIZE = 65536
# A route's inline upstream is named "ROUTE.upstream" (logs, metrics, admin views). Health
# verdicts, passive ejections, the retry budget and the balancer are kept by upstream id, so
# a named upstream may not take such an id: one named "orders.upstream" (in etcd, by another
# team) shared them all with route orders' inline upstream, and its passive check ejected
# that route's targets.
INLINE_UPSTREAM = ".upstream"


def upstream_id_string(what="an upstream id"):
    """A string check for the id of a named upstream (or a reference to one)."""
    base = string(ROUTE_ID, what)

    def check(value):
        value = base(value)
        if value.endswith(INLINE_UPSTREAM):
            raise Invalid(f"must not end in {INLINE_UPSTREAM}, which names the upstream route "
                          f"{show(value[:-len(INLINE_UPSTREAM)])} writes inline, got "
                          f"{show(value)}")
        return value
    return check
# Characters a path segment pattern may hold (RFC 3986 pchar; %-escapes made canonical by
# path_text first).
SEGMENT = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@%]*")


def path_text(pattern=None, what="a path pattern", markers=True):
    """A string check for a path pattern (or, ``markers`` off, a strip_prefix) that returns
    it with the escapes of its static segments as a request path's are once made canonical
    (core.target.normalise_path): "/caf%c3%a9/*rest" is "/caf%C3%A9/*rest", "/%7eops" is
    "/~ops". Written otherwise, such a pattern matched no request, and a broader route took
    what the upstream serves as /café and /~ops: an auth route bypassed by its own spelling.

    Refused, naming it: an escape no request path can hold (malformed, %00, not UTF-8, a dot
    segment); a static segment that begins with ":" or "*" once decoded ("%3Aid"), which
    would read as a parameter; in a strip_prefix, a parameter (it is cut from the path as
    sent, where ":tenant" is never written)."""
    base = string(pattern, what)

    def check(value):
        value = base(value)
        if "\\" in value:
            return value                # (a backslash is refused where segments are read)
        segments = []
        for segment in value.split("/"):
            if segment[:1] in (":", "*"):
                if not markers:
                    raise Invalid(f"holds {show(segment)}, a parameter: a prefix to strip is "
                                  f"a path, cut as written, in {show(value)}")
                segments.append(segment)
                continue
            try:
                segment = normalise_path(b"/" + segment.encode(), escaped_slashes="keep",
                                         merge_slashes=False,
                                         path_parameters="keep").decode()[1:]
            except BadRequest as exc:
                raise Invalid(f"{str(exc).removeprefix('path ')} in {show(value)}") from None
            except UnicodeEncodeError:      # a lone surrogate, from JSON's \udc80
                raise Invalid(f"is not text a path can hold: {show(value)}") from None
            if segment[:1] in (":", "*"):
                raise Invalid(f"has a segment that begins with {segment[0]} once decoded, "
                              f"which would read as a parameter, in {show(value)}")
            segments.append(segment)
        return "/".join(segments)
    return check


_AUTHORITY_END = re.compile(r"[/?#]")
_BARE_IPV6 = re.compile(r"[0-9A-Fa-f:.]+")     # an IPv6 address (and a port) without brackets


def target_url(value):
    if not isinstance(value, str):
        raise Invalid(f"must be a URL string, got {show(value)}")
    return _checked_url(value)


# Remembered: a service of 10,000 instances is its upstream's 10,000 target URLs checked again
# at every change of one, in the sync process and between two requests in every worker (with
# make_upstream's parsing, about a second a change on two cores). ~3 MB for 32768 URLs at
# most; a refused URL is not remembered.
@functools.lru_cache(maxsize=32768)
def _checked_url(value):
    if "@" in _AUTHORITY_END.split(value.partition("://")[2] or value, 1)[0]:
        # (never quoted: it may hold a password, and a target is shown in /admin/ views,
        # metrics labels and the access log) "http://:pw@host" has an empty user name
        raise Invalid("must not hold a user or password (user:password@): the gateway sends "
                      "no credentials from a target URL; set Authorization with the headers "
                      "plugin")
    try:
        parts = urlsplit(value)
    except ValueError as exc:          # "http://[::1:8080": an unclosed IPv6 bracket
        raise Invalid(f"is not a URL ({exc}), got {show(value)}") from None
    if parts.netloc.count(":") > 1 and _BARE_IPV6.fullmatch(parts.netloc):
        # "http://::1:8080" read as host "" and port ":1:8080": say what is wrong with it
        raise Invalid(f"names an IPv6 address without brackets (http://[::1]:8080), got "
                      f"{show(value)}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid(f"must be an http:// or https:// URL with a host, got {show(value)}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise Invalid(f"must be scheme://host[:port] only (use strip_prefix to rewrite paths), "
                      f"got {show(value)}")
    try:
        port = parts.port
    except ValueError:
        raise Invalid(f"has a bad port, got {show(value)}") from None
    if port == 0:
        # (a service instance that registered the port it asked the kernel for) was taken
        # for no port, and its traffic went to port 80 of that host
        raise Invalid(f"has port 0, which no server listens on, got {show(value)}")
    return value


TIMEOUTS = Schema(
    Field("connect", number(0, exclusive=True), None,
          "seconds to open an upstream connection: its name's lookup, the TCP connect "
          "and a TLS handshake together"),
    Field("read", number(0, exclusive=True), None,
          "seconds to wait for each read from the upstream, and for each head of an answer "
          "whole (its bytes renew nothing; the first 16 interim 1xx heads each have their "
          "own); a websocket tunnel idle this long both ways is closed, as is one whose "
          "write to the upstream waits this long"),
)

IDEMPOTENT = ("GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE")     # RFC 9110 9.2.2
RETRY_EVENTS = ("connect", "reset", "timeout")


def condition_header_name(value):
    """A header a route's ``headers`` condition may name: not Host. The condition reads a value
    as the client wrote it, and the upstream gets Host canonical: ``ADMIN.test``,
    ``admin.test.``, ``admin.test:80`` or an absolute-form target's own host missed a route on
    ``Host = "admin.test"`` and went to a broader one, and the upstream got ``admin.test``
    all the same. ``hosts`` matches the canonical name."""
    name = header_name(value)
    if name.lower() == "host":
        raise Invalid(f"{name} is matched by the route's hosts, not by a header condition: "
                      f"the client's spellings of a host (case, a trailing dot, a port, an "
                      f"absolute-form target) would miss it")
    if name.lower() in APPENDED:
        # The value read is a trusted proxy's (an untrusted peer's is dropped), and the
        # upstream gets it with the peer (or this gateway) added: "10.9.9.9" matched, and
        # "10.9.9.9, 127.0.0.1" went upstream.
        raise Invalid(f"{name} goes upstream with the gateway's own member added (the peer's "
                      f"address to X-Forwarded-For, its name to Via), never as a condition "
                      f"reads it: match a client's address with ip_restriction")
    return name


# The headers the gateway adds its own member to as it forwards (X-Forwarded-For: the peer;
# Via: itself).
APPENDED = frozenset(["x-forwarded-for", "via"])


def retry_condition(value):
    # isascii(): isdigit() takes "²", which int() refuses (a raw ValueError, no field named)
    if value in RETRY_EVENTS or (isinstance(value, str) and value.isascii() and
                                 value.isdigit() and 400 <= int(value) <= 599):
        return value
    raise Invalid(f"must be connect, reset, timeout or a status from 400 to 599 like \"503\", "
                  f"got {show(value)}")


RETRY = Schema(
    Field("on", list_of(retry_condition, min_items=1), None,
          "what is retried: connect (no connection), reset (closed before an answer), timeout "
          "(no answer within per_try_timeout), or an answer's status (\"502\"; one with "
          "Retry-After only on another target); default [\"connect\"]"),
    Field("attempts", integer(0, 5, "an integer from 0 to 5"), None,
          "retries after the first try; default upstream_defaults.retries"),
    Field("per_try_timeout", number(0), None,
          "seconds each try may wait for the whole head of the answer (interim heads included) "
          "and a held body's send; default: each head whole within the read timeout; 0: none "
          "(a route's clears its upstream's)"),
    Field("backoff", number(0), None,
          "seconds before the first retry, doubled for each further one (with jitter); "
          "default 0.025"),
    Field("timeout", number(0), None,
          "seconds from the first try after which no retry starts, nor one whose backoff "
          "would end after it (a try under way runs on, within per_try_timeout); "
          "default and 0: none (a route's 0 clears its upstream's, as nginx's "
          "proxy_next_upstream_timeout 0)"),
    Field("methods", list_of(string(r"[A-Z]+", "an upper-case method"), min_items=1), None,
          "methods retried once the request was sent; default the idempotent ones (a failed "
          "connect sent nothing: any method is retried)"),
)

TARGET = Schema(
    Field("url", target_url, doc="http://host:port or https://host:port (no user:password@)"),
    Field("weight", integer(0, 1_000_000, "an integer from 0 to 1000000"), 1,
          "share of traffic; 0 takes the target out of rotation"),
)

HEALTH_CHECK = Schema(
    Field("type", one_of("http", "tcp"), "http", "http: a request must get an expected status; "
          "tcp: a connection must open"),
    Field("path", string(r"/[!-~]*", "a path starting with /"), "/", "http: path to request"),
    Field("method", one_of(*METHODS), "GET", "http: method"),
    Field("host", string(HOST, "a host name"), None, "http: Host header (default: the target's)"),
    Field("expected_statuses", list_of(status_code, min_items=1), None,
          "http: statuses that mean healthy (default: 200-399)"),
    Field("timeout", number(0, exclusive=True), 1.0, "seconds a probe may take"),
    Field("interval", number(0.05), 5.0, "seconds between probes of a healthy target"),
    Field("healthy_threshold", integer(1), 2, "successes in a row that readmit a target"),
    Field("unhealthy_threshold", integer(1), 3, "failures in a row that take it out"),
    Field("max_interval", number(0.05), 60.0,
          "cap of the backoff between probes of an unhealthy target"),
    Field("jitter", fraction, 0.2, "each delay is randomised by +-this share"),
)

PASSIVE = Schema(
    Field("consecutive_failures", integer(1), 5,
          "failures in a row (connect errors, timeouts, statuses) that eject a target"),
    Field("statuses", list_of(status_code), [502, 503, 504], "answers that count as failures"),
    Field("eject_for", number(0, exclusive=True), 10.0, "seconds out after a first ejection"),
    Field("max_eject_for", number(0, exclusive=True), 300.0,
          "cap: the time out doubles with each ejection in a row"),
    Field("max_ejected_percent", integer(0, 100, "a percentage"), 50,
          "never eject more than this share of the upstream's targets"),
)

UPSTREAM_TLS = Schema(
    Field("verify", boolean, True, "verify the target's certificate (https:// targets)"),
    Field("ca_file", absolute_path, None,
          "CA bundle to verify with (default: the system store)"),
    Field("server_name", string(HOST, "a host name"), None,
          "SNI and the name verified (default: the target's host)"),
    Field("cert_file", absolute_path, None, "client certificate (mTLS)"),
    Field("key_file", absolute_path, None, "client certificate's key"),
)

UPSTREAM = Schema(
    Field("targets", list_of(TARGET), None,
          "the servers behind this upstream (optional with service)"),
    Field("service", string(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", "a service name"), None,
          "follow the live instances registered in etcd under PREFIX/services/NAME/ (an "
          "upstream in etcd only: not inline, not in the conf file)"),
    Field("balance", one_of(*POLICIES), "round_robin",
          "round_robin (smooth weighted), least_outstanding or consistent_hash"),
    Field("hash_key", request_key, "ip", "consistent_hash: ip, header:, cookie:, claim:, query:NAME"),
    Field("health_check", HEALTH_CHECK, None, "active checks by the host's health process"),
    Field("passive", PASSIVE, None, "eject targets that keep failing real requests"),
    Field("tls", UPSTREAM_TLS, None, "TLS to https:// targets: verification, CA, SNI, mTLS"),
    Field("protocol", one_of("http1", "h2"), "http1",
          "h2: HTTP/2 to the targets (prior knowledge, or ALPN for https), gRPC"),
    Field("panic_threshold", fraction, 0.0,
          "when fewer than this share of targets are up (and always when none is), use all"),
    Field("pass_host", one_of("pass", "node", "rewrite"), "pass",
          "Host sent upstream: the client's (pass), the target's (node) or upstream_host"),
    Field("upstream_host", string(HOST, "a host name"), None, "Host header when pass_host=rewrite"),
    Field("pool_size", integer(1, MAX_POOL_SIZE), None,
          "keep-alive connections per target per worker; default upstream_defaults.pool_size"),
    Field("block_when_full", boolean, None, "with every connection to a target busy, go to "
          "another target not tried yet and up, or wait for a free connection (up to "
          "pool_timeout, then 503) instead of opening an unpooled one; default "
          "upstream_defaults.block_when_full"),
    Field("keepalive", boolean, True,
          "reuse connections; false: one per request (for an upstream that sends stray bytes)"),
    Field("timeouts", TIMEOUTS, None, "overrides of upstream_defaults timeouts"),
    Field("retry", RETRY, None, "when a request goes to another target (docs/health.md)"),
    Field("plugins", map_of(lambda conf: conf, string(r"[a-z][a-z0-9_-]*", "a plugin name")),
          None, "plugins for every route using this upstream (those that allow it: breaker)"),
    doc="An upstream: targets and how to talk to them.",
)

# The route label of the metrics' series of requests no route took (server/metrics.py).
NO_ROUTE = "none"


def route_id(value):
    """A route's id: not NO_ROUTE, whose answers the metrics counted with every request no
    route took (a 404 for a mistyped path and the route's own 404 were one series)."""
    value = string(ROUTE_ID, "an id of letters, digits and _.:- (max 128)")(value)
    if value == NO_ROUTE:
        raise Invalid(f"{show(value)} is the metrics' label of requests no route took "
                      f"(route=\"{NO_ROUTE}\"): give the route another id")
    return value


ROUTE = Schema(
    Field("id", route_id,
          doc="unique id of letters, digits and _.:- (max 128), not \"none\" (the metrics' "
              "label of requests no route took); named in logs and errors"),
    Field("paths", list_of(path_text(), min_items=1),
          doc="/exact, /users/:id (parameter), /static/*rest (catch-all)"),
    Field("prefix", boolean, False,
          "a path without a catch-all also matches below itself (by segment)"),
    Field("methods", list_of(one_of(*METHODS), min_items=1), None,
          "allowed methods (HEAD is allowed with GET), of HTTP's, WebDAV's and PURGE; "
          "absent: all"),
    Field("hosts", list_of(string(HOST, "a lower-case host or *.domain"), min_items=1), None,
          "Host values: exact or *.example.com; absent: any"),
    Field("headers", map_of(header_value, condition_header_name), None,
          "headers that must equal values (not Host: see hosts; nor X-Forwarded-For or "
          "Via, which go upstream with the gateway's member added)"),
    Field("claims", map_of(string(r"[ -~]+", "a printable ASCII value"),
                           string(r"[A-Za-z0-9_.:-]+", "a claim name")), None,
          "verified JWT claims that must hold these values (scope: one of the scopes; a "
          "boolean claim is true or false, an object compact JSON, as JSON spells it); "
          "needs the jwt plugin on the route or globally"),
    Field("priority", integer(-1_000_000, 1_000_000, "an integer"), 0,
          "higher wins among routes on the same path node"),
    Field("upstream", lambda value: UPSTREAM(value) if isinstance(value, dict) else
          upstream_id_string("an upstream object or the id of one")(value),
          doc="inline upstream object, or the id of a named upstream"),
    Field("strip_prefix", path_text(r"/[^?#]*", "a path starting with /", markers=False), None,
          "removed from the start of the path before proxying (\"/api/\" takes \"/api\" "
          "too); must prefix every path"),
    Field("timeouts", TIMEOUTS, None, "overrides of the upstream's timeouts"),
    Field("retry", RETRY, None, "overrides of the upstream's retry policy, field by field"),
    Field("max_body_size", integer(0), None,
          "request body limit in bytes, 0 = no limit; over it: 413, never forwarded; "
          "default server.max_body_size"),
    Field("plugins", map_of(lambda conf: conf, string(r"[a-z][a-z0-9_-]*", "a plugin name")),
          None, "plugin name -> plugin config (docs/plugins.md); name = false switches off "
          "a global one"),
    doc="A route: what requests it matches and where they go.",
)


@dataclass(frozen=True)
class Target:
    url: str
    scheme: str
    host: str
    port: int
    weight: int

    def __post_init__(self):
        object.__setattr__(self, "_hash", hash((self.url, self.weight)))
        # Host and :authority name an IPv6 address in brackets (RFC 3986 3.2.2): "::1:8080",
        # which nginx answers 400, went in every health probe and pass_host=node request
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        object.__setattr__(self, "authority",
                           host if self.port == default else f"{host}:{self.port}")

    def __hash__(self):
        # A target keys several per-request dicts (in flight, balancer state): hash it once,
        # not from its five fields on every lookup.
        return self._hash

    @property
    def key(self):
        return (self.scheme, self.host, self.port)


@dataclass(frozen=True)
class RetryPolicy:
    """When a request goes to another target. Never once a byte of the answer reached the
    client; after the request was sent, only for ``methods`` with the body held."""
    events: frozenset = frozenset(["connect"])      # connect, reset, timeout
    statuses: frozenset = frozenset()               # answers retried, e.g. {502, 503}
    attempts: int = 1
    per_try_timeout: float | None = None
    backoff: float = 0.025
    methods: frozenset = frozenset(IDEMPOTENT)
    timeout: float | None = None                    # no retry starts after it

    def merged(self, spec):
        """This policy with the fields a ``retry`` spec sets replaced."""
        if not spec:
            return self
        on = spec.get("on")
        changes = {} if on is None else {
            "events": frozenset(e for e in on if e in RETRY_EVENTS),
            "statuses": frozenset(int(e) for e in on if e not in RETRY_EVENTS)}
        for name in ("attempts", "backoff"):
            if spec.get(name) is not None:
                changes[name] = spec[name]
        for name in ("per_try_timeout", "timeout"):
            if spec.get(name) is not None:
                changes[name] = spec[name] or None      # 0: none, an upstream's cleared
        if spec.get("methods") is not None:
            changes["methods"] = frozenset(spec["methods"])
        return replace(self, **changes)


@dataclass(frozen=True)
class Upstream:
    id: str
    targets: tuple
    pass_host: str = "pass"
    upstream_host: str | None = None
    pool_size: int = 64
    block_when_full: bool = False
    keepalive: bool = True
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    plugin_steps: tuple = ()                # validated (plugin, conf) set on the upstream
    balance: str = "round_robin"
    hash_key: tuple = ("ip", "")            # (kind, name) for consistent_hash
    health_check: dict = field(default=None, compare=False)
    passive: dict = field(default=None, compare=False)
    panic_threshold: float = 0.0
    service: str = None
    tls: tuple = None                       # (verify, ca_file, server_name, cert, key)
    protocol: str = "http1"
    retry: RetryPolicy = RetryPolicy()
    refused_route: str = None               # the fence of a refused route (core.table)


@dataclass(frozen=True)
class Route:
    id: str
    paths: tuple
    upstream: Upstream
    prefix: bool = False
    methods: frozenset | None = None
    hosts: frozenset | None = None          # exact host names
    host_suffixes: tuple = ()               # ".example.com" for *.example.com
    headers: tuple = ()                     # ((b"x-lower-name", b"value"), ...)
    claims: tuple = ()                      # (("claim", "value"), ...)
    priority: int = 0
    strip_prefix: str | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    max_body_size: int = 0
    retry: RetryPolicy = RetryPolicy()
    chain: object = None                    # core.chain.Chain, set by the compiler
    spec: dict = field(default=None, compare=False, repr=False)

    @property
    def specificity(self):
        """Among routes at the same path node: more conditions sort first."""
        return (bool(self.hosts), bool(self.host_suffixes), len(self.headers) + len(self.claims),
                self.methods is not None)


def make_target(spec):
    parts = urlsplit(spec["url"])
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return Target(spec["url"], parts.scheme, parts.hostname, port, spec["weight"])


def try_policy(route, upstream):
    """(retry policy, connect timeout) for a request of ``route`` sent to ``upstream``: the
    route's for its own upstream (its retry and timeouts override the upstream's); a
    plugin's upstream (a split's canary) keeps its own, over HTTP/1.1 and HTTP/2 alike."""
    if upstream is route.upstream:
        return route.retry, route.connect_timeout
    return upstream.retry, upstream.connect_timeout


def no_target_reason(upstream):
    """Why a request to an upstream without targets is answered 503."""
    if upstream.refused_route:
        return f"route {upstream.refused_route} is not available: its configuration was refused"
    if upstream.service is None:
        return f"upstream {upstream.id} is not defined (yet)"
    return f"upstream {upstream.id}: no live instance of service {upstream.service}"


def undefined_upstream(upstream_id, defaults, refused_route=None):
    """A stand-in upstream with no targets and no service, so a request that gets past the
    route's plugins is answered 503 and the route's paths never fall through to a broader
    route: for an upstream id a live route names before it is defined (or after it was
    deleted), or, with ``refused_route``, the fence of a route whose configuration was
    refused (core.table)."""
    return Upstream(id=upstream_id, targets=(), pool_size=defaults["pool_size"],
                    connect_timeout=defaults["connect_timeout"],
                    read_timeout=defaults["read_timeout"], refused_route=refused_route)


INLINE_SERVICE = "an inline upstream cannot follow a service"


def check_inline(spec, owner):
    """Raise ConfigError for an upstream written inline (a route's, its plugins') that names
    a ``service`` and no ``targets``: config-sync expands the live instances into upstreams
    from etcd only (workers compile inline ones from the route's value, and never see
    instances), so such a route answered 503 "no live instance" for good, instances
    registered or not. One with targets serves them, as it did (refused, a route that served
    would answer 503 after an upgrade)."""
    if isinstance(spec, dict) and spec.get("service") and not spec.get("targets"):
        raise ConfigError(f"{owner}: service: {INLINE_SERVICE} (its live instances go to "
                          f"upstreams in etcd only): put an upstream with \"service\": "
                          f"{show(spec['service'])} in etcd and give its id here")


def make_upstream(upstream_id, spec, defaults, registry, owner=None, previous=None):
    """Build an Upstream from a validated spec, filling gaps from ``[upstream_defaults]``.
    ``owner`` names it in errors (default "upstream ID"; an inline one: "route R: upstream").
    ``registry``: the plugins by name (the caller loads them; the core imports none).
    ``previous``: the upstream this one replaces, whose targets are taken as they are where
    the spec has them unchanged."""
    owner = owner or f"upstream {upstream_id}"
    from .chain import upstream_plugins
    plugin_steps, problems = (), []      # every problem at once (gwserver check)
    if spec.get("plugins"):
        try:
            plugin_steps = upstream_plugins(owner, spec["plugins"], registry)
        except ConfigError as exc:
            problems.extend(exc.problems)
    timeouts = spec.get("timeouts") or {}
    # Parsed again, the 10,000 target URLs of a large service cost every worker a stall at
    # each instance that came or went; a Target is immutable, so the previous ones serve.
    known = {(t.url, t.weight): t for t in previous.targets} if previous is not None else {}
    targets = tuple(known.get((t["url"], t["weight"])) or make_target(t)
                    for t in spec["targets"] or ())
    service = spec.get("service")
    if not targets and not service:
        problems.append(f"{owner}: targets: needs at least one target, or a service to "
                        f"follow")
    if targets and not any(t.weight for t in targets):
        problems.append(f"{owner}: every target has weight 0")
    if len({t.key for t in targets}) != len(targets):
        problems.append(f"{owner}: targets: a target is listed twice")
    kind, _, name = spec.get("hash_key", "ip").partition(":")
    if spec["pass_host"] == "rewrite" and not spec["upstream_host"]:
        problems.append(f"{owner}: pass_host=rewrite needs upstream_host")
    try:
        tls = _upstream_tls(owner, spec.get("tls"))
    except ConfigError as exc:
        problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    pick = lambda value, default: default if value is None else value  # noqa: E731
    return Upstream(
        id=upstream_id, targets=targets, pass_host=spec["pass_host"],
        upstream_host=spec["upstream_host"],
        pool_size=pick(spec["pool_size"], defaults["pool_size"]),
        block_when_full=pick(spec["block_when_full"], defaults["block_when_full"]),
        keepalive=spec["keepalive"],
        connect_timeout=pick(timeouts.get("connect"), defaults["connect_timeout"]),
        read_timeout=pick(timeouts.get("read"), defaults["read_timeout"]),
        plugin_steps=plugin_steps,
        balance=spec.get("balance", "round_robin"),
        hash_key=(kind, name.lower().encode("latin-1") if kind == "header" else name),
        health_check=_health_check(spec.get("health_check")),
        passive=_passive(spec.get("passive")),
        panic_threshold=spec.get("panic_threshold", 0.0), service=service,
        tls=tls, protocol=spec.get("protocol", "http1"),
        retry=RetryPolicy(attempts=defaults["retries"]).merged(spec.get("retry")),
    )


_refused_files = None       # the list refused_files() collects in, while it does


@contextlib.contextmanager
def refused_files():
    """-> the list of the tls files the refusals made inside were over (_upstream_tls): the
    sync process puts an item refused over its files again once one of them changes
    (LiveTable.retry_files)."""
    global _refused_files
    was, _refused_files = _refused_files, []
    try:
        yield _refused_files
    finally:
        _refused_files = was


def _upstream_tls(owner, conf):
    if conf is None:
        return None
    if bool(conf["cert_file"]) != bool(conf["key_file"]):
        raise ConfigError(f"{owner}: tls: cert_file and key_file go together")
    files = conf["ca_file"], conf["cert_file"], conf["key_file"]
    # Loaded as a connection loads them, where they are checked (not in a worker or helper:
    # files.checks_files): a ca_file holding no certificate passed, and each request of the
    # route was a 500 (client_tls_problem)
    problems = checks_files() and client_files_problems(*files)
    if problems:
        if _refused_files is not None:
            _refused_files.extend(filter(None, files))
        raise ConfigError(f"{owner}: {problems[0]}")    # (the first only, as it always was)
    return (conf["verify"], conf["ca_file"], conf["server_name"], conf["cert_file"],
            conf["key_file"])


def _health_check(conf):
    if conf is None:
        return None
    if conf["max_interval"] < conf["interval"]:
        conf = {**conf, "max_interval": conf["interval"]}
    statuses = conf["expected_statuses"]
    return {**conf, "expected": frozenset(statuses) if statuses else frozenset(range(200, 400))}


def _passive(conf):
    return None if conf is None else {**conf, "statuses": frozenset(conf["statuses"])}


def compile_route(spec, upstreams, defaults, server, global_plugins, registry,
                  broken=frozenset(), absent=None):
    """A validated route spec -> Route: its upstream (an id in ``upstreams``, or inline) and
    its plugin chain. The conf file and the live (etcd) table both compile routes here.

    Raises ConfigError naming every problem of the route. ``broken``: ids of upstreams that
    exist but are invalid; their own problems are reported where they are checked, so a route
    that uses one is not told it is unknown. ``absent(id)``: a stand-in for an upstream id
    not defined yet (the live table's), instead of a problem."""
    from .chain import build_chain, follow_linked_upstreams
    owner = f"route {spec['id']}"
    problems = []
    upstream = spec["upstream"]
    if isinstance(upstream, str):
        if upstream not in upstreams and upstream not in broken:
            if absent is not None:
                upstreams = {**upstreams, upstream: absent(upstream)}
            else:
                problems.append(f"{owner}: upstream: unknown upstream id {show(upstream)}")
        upstream = upstreams.get(upstream)
    else:
        try:
            check_inline(upstream, f"{owner}: upstream")
            upstream = make_upstream(f"{spec['id']}.upstream", upstream, defaults, registry,
                                     f"{owner}: upstream")
        except ConfigError as exc:
            problems.extend(exc.problems)
            upstream = None
    chain = None
    try:
        chain = build_chain(owner, spec["plugins"], global_plugins, registry,
                            upstream.plugin_steps if upstream is not None else ())
    except ConfigError as exc:
        problems.extend(exc.problems)
    if chain is not None:
        if spec.get("claims") and not chain.claims_steps:
            problems.append(f"{owner}: claims: matching on claims needs a plugin that verifies "
                            f"them (jwt) on the route or in [plugins]")
        if upstream is not None:
            problems.extend(chain.check_upstream(owner, upstream))
        # The global plugins this route keeps as [plugins] says them: their inline upstreams'
        # files are the master's to check (parse_conf links them once); loaded again here,
        # one gone bad since made the sync process refuse every new route from etcd.
        from_global = set(global_plugins or {}) - set(spec["plugins"] or {}) - {
            plugin.NAME for plugin, _ in (upstream.plugin_steps if upstream else ())}
        try:
            chain = link_chain(owner, chain, upstreams, defaults, registry, broken, absent,
                               from_global)
            problems.extend(linked_protocol_problems(owner, chain))
            chain = follow_linked_upstreams(owner, chain, upstream, spec["plugins"])
        except ConfigError as exc:
            problems.extend(exc.problems)
    if not problems:        # (the plugins' configs are valid: their schemas said nothing)
        try:
            upstream_refs(spec, registry)   # etcd asks it of every served route on upstream puts
        except ConfigError as exc:
            problems.extend(exc.problems)
    problems.extend(path_problems(spec, server))
    if problems or upstream is None or chain is None:
        raise ConfigError(problems)
    return make_route(spec, upstream, server, chain)


def linked_protocol_problems(owner, chain):
    """check_upstream for the upstreams a plugin sends to besides the route's (split's): a
    grpc_web route split between an h2 upstream and an HTTP/1.1 one sent its share of the
    gRPC-Web calls to the second untranslated. A stand-in (an id not defined yet) is checked
    once it is (the route is compiled again then)."""
    return [f"{problem}: upstream {linked.id}, which it may send to, does not"
            for linked in chain.linked_upstreams(owner) if linked.targets or linked.service
            for problem in chain.check_upstream(owner, linked)]


def link_chain(owner, chain, upstreams, defaults, registry, broken=frozenset(),
               absent=None, accepted=frozenset()):
    """Let plugins that name other upstreams (``link(conf, resolve)``) resolve them: ``resolve``
    turns an upstream id or inline upstream object into an Upstream, or raises ConfigError
    (with no problem of its own for an upstream in ``broken``: that one was reported).
    ``accepted``: names of plugins whose config was checked already (the global ones): their
    inline upstreams' tls files are not checked again (accepted_before)."""
    if not any(hasattr(plugin, "link") for plugin, _ in chain.steps):
        return chain
    from .chain import Chain, call_hook

    def resolve(ref, where):
        if isinstance(ref, str):
            if ref in broken:
                raise ConfigError([])
            if ref not in upstreams:
                if absent is not None:
                    return absent(ref)
                raise ConfigError(f"{owner}: {where}: unknown upstream id {show(ref)}")
            return upstreams[ref]
        name = f"{owner.partition(' ')[2]}.{where}"
        check_inline(ref, f"{owner}: {where}")
        return make_upstream(name, UPSTREAM.validate(ref, f"{owner}: {where}"), defaults,
                             registry)

    def linked(plugin, conf):
        if not hasattr(plugin, "link"):
            return conf
        if plugin.NAME not in accepted:
            return call_hook(owner, plugin, "link", lambda: plugin.link(conf, resolve))
        with accepted_before():     # (parse_conf checked them: the master's word)
            return call_hook(owner, plugin, "link", lambda: plugin.link(conf, resolve))
    return Chain([(plugin, linked(plugin, conf)) for plugin, conf in chain.steps])


def upstream_refs(spec, registry):
    """Ids of the named upstreams a validated route spec uses: its own and its plugins'.
    ConfigError naming the plugin for an ``upstream_refs`` hook that raises (compile_route
    refuses such a route, so a served one's answers)."""
    from .chain import call_hook
    refs = {spec["upstream"]} if isinstance(spec["upstream"], str) else set()
    for name, conf in (spec.get("plugins") or {}).items():
        plugin = registry.get(name)
        if plugin is not None and hasattr(plugin, "upstream_refs") and isinstance(conf, dict):
            refs |= call_hook(f"route {spec['id']}", plugin, "upstream_refs",
                              lambda: set(plugin.upstream_refs(conf)))
    return refs


def check_path(pattern):
    """Return the parsed segments of a path pattern, or raise Invalid naming the problem.

    Each segment is ("static", text), ("param", name) or ("catchall", name).
    """
    if not pattern.startswith("/"):
        raise Invalid(f"must start with /, got {show(pattern)}")
    segments, seen = [], set()
    raw = pattern[1:].split("/")
    for i, seg in enumerate(raw):
        if seg.startswith(":") or seg.startswith("*"):
            kind = "param" if seg[0] == ":" else "catchall"
            name = seg[1:]
            if not PARAM.fullmatch(name):
                raise Invalid(f"has a bad parameter name {show(seg)} in {show(pattern)}")
            if name in seen:
                raise Invalid(f"binds parameter {show(name)} twice in {show(pattern)}")
            if kind == "catchall" and i != len(raw) - 1:
                raise Invalid(f"has a catch-all that is not the last segment in {show(pattern)}")
            seen.add(name)
            segments.append((kind, name))
        elif seg in (".", ".."):
            raise Invalid(f"has a dot segment in {show(pattern)}")
        elif not SEGMENT.fullmatch(seg):
            raise Invalid(f"has characters not allowed in a path in {show(pattern)}")
        else:
            segments.append(("static", seg))
    return segments


def unreachable_paths(specs, involving=None):
    """Warnings for paths of validated route specs that no request can reach: another route
    has the same pattern, ``prefix`` and conditions (hosts, methods, headers, claims) and wins
    the tie the router breaks (higher priority, then the lower id): a copied route block, say.
    Not an error: the table works, one route in it never serves that path. ``involving``: only
    the warnings that name one of these route ids (the items a `routes put` brings)."""
    sharing = {}
    for spec in specs:
        conditions = tuple(frozenset(spec.get(key) or ()) for key in ("hosts", "methods")) + \
            tuple(frozenset((spec.get(key) or {}).items()) for key in ("headers", "claims"))
        for pattern in spec["paths"]:
            # (keyed as the router keys it: "/a+b" and "/a%2Bb" are one path to it)
            sharing.setdefault((static_key(pattern), bool(spec.get("prefix")), conditions),
                               []).append((spec, pattern))
    warnings = []
    for held in sharing.values():
        (winner, _), *losers = sorted(held, key=lambda s: (-s[0].get("priority", 0),
                                                           s[0]["id"]))
        for loser, pattern in losers:
            if loser is winner or involving is not None and loser["id"] not in involving \
                    and winner["id"] not in involving:
                continue
            why = "a higher priority" if winner.get("priority", 0) > loser.get("priority", 0) \
                else "the same priority and the lower id"
            warnings.append(f"route {loser['id']}: paths {show(pattern)} is never served by "
                            f"it: route {winner['id']} has the same path and conditions and "
                            f"wins ({why})")
    return warnings


def path_problems_beside(written, bad, owner, server):
    """The path problems of a route its schema refused, its ``bad`` fields (ROUTE.partial's)
    left out: `check` and `routes validate` name every problem in one run, and a typo in an
    inline upstream (or in methods) hid the route's bad paths until it was fixed."""
    if not isinstance(written, dict):
        return []
    stand_in, _, _ = ROUTE.partial({**written, "upstream": "stand-in"}, owner)
    if stand_in is None:
        return []
    return [p for p in path_problems(stand_in, server)
            if not any(p.startswith(f"{owner}: {name}") for name in bad)]


def path_problems(spec, server):
    """What is wrong with a validated route spec's paths and strip_prefix, as a list.
    ``server``: [server]'s path rules, under which some patterns match no request."""
    problems = []
    for i, pattern in enumerate(spec["paths"]):
        try:
            segments = check_path(pattern)
        except Invalid as exc:
            problems.append(f"route {spec['id']}: paths[{i}] {exc}")
            continue
        dead = dead_pattern(pattern, segments, spec["prefix"], server)
        if dead:
            problems.append(f"route {spec['id']}: paths[{i}] {show(pattern)} {dead}")
            continue
        strip = spec["strip_prefix"]      # ("/api/" takes "/api" too)
        # either spelling of "+" and ";" (static_key): strip_path_prefix cuts both, and
        # "/a%2Bb" less "/a+b" was refused as no prefix of the route it cuts
        folded, strip_folded = static_key(pattern), static_key(strip or "")
        if strip and not (folded.startswith(strip_folded) or
                          strip[-1:] == "/" and folded == strip_folded[:-1]):
            problems.append(f"route {spec['id']}: strip_prefix {show(strip)} is not "
                            f"a prefix of paths[{i}] {show(pattern)}")
        elif strip and strip_path_prefix(pattern, strip) is None:
            problems.append(f"route {spec['id']}: strip_prefix {show(strip)} cuts "
                            f"paths[{i}] {show(pattern)} into a dot segment (. or ..)")
        if spec["prefix"] and segments[-1][0] == "catchall":
            problems.append(f"route {spec['id']}: prefix=true with a catch-all in paths[{i}]; "
                            f"use one or the other")
    return problems


def dead_pattern(pattern, segments, prefix, server):
    """Why no request path can match ``pattern`` under [server]'s path rules, or why it
    would leave a hole, or None. A dead route is no harmless one: a broader route takes the
    requests it was written for (an auth route on "/admin/" with prefix took nothing below
    it; the catch-all did). One ending in "/" is refused, though it takes that one path: it
    would leave the path without the "/", which nginx and frameworks serve alike, to a
    broader route."""
    if pattern == "/" and prefix:
        return 'with prefix = true: write "/*rest" for every path'
    if pattern.endswith("/") and pattern != "/":
        bare = pattern.rstrip("/")
        return (f"ends in /: write {show(bare)} (which matches {show(bare + '/')} too, and "
                f"with prefix = true every path below it) or {show(bare + '/*rest')}")
    statics = [text for kind, text in segments if kind == "static"]
    if server["merge_slashes"] and ("static", "") in segments[:-1]:
        return "has an empty segment (//), and server.merge_slashes merges them in requests"
    action = server["escaped_slashes"]
    if action != "keep" and any("%2F" in text or "%5C" in text for text in statics):
        return (f"holds an encoded / or \\, which server.escaped_slashes = {show(action)} "
                + ("answers 400" if action == "reject" else "decodes to / in every request"))
    if server["path_parameters"] == "reject" and \
            any(";" in text or "%3B" in text for text in statics):
        return 'holds a ;, which server.path_parameters = "reject" answers 400'
    return None


def make_route(spec, upstream, settings, chain=None):
    """Build a Route from a validated spec whose paths compile_route has checked
    (path_problems), and its resolved Upstream."""
    hosts = spec["hosts"] or []
    timeouts = spec["timeouts"] or {}
    methods = frozenset(spec["methods"]) if spec["methods"] else None
    if methods and "GET" in methods:
        methods = methods | {"HEAD"}
    body_limit = spec["max_body_size"]
    return Route(
        id=spec["id"], paths=tuple(spec["paths"]), upstream=upstream, prefix=spec["prefix"],
        methods=methods,
        hosts=frozenset(h for h in hosts if not h.startswith("*.")) or None,
        host_suffixes=tuple(h[1:] for h in hosts if h.startswith("*.")),
        headers=tuple((k.lower().encode("latin-1"), v.encode("latin-1"))
                      for k, v in sorted((spec["headers"] or {}).items())),
        claims=tuple(sorted((spec.get("claims") or {}).items())),
        priority=spec["priority"], strip_prefix=spec["strip_prefix"],
        connect_timeout=timeouts.get("connect") or upstream.connect_timeout,
        read_timeout=timeouts.get("read") or upstream.read_timeout,
        max_body_size=settings["max_body_size"] if body_limit is None else body_limit,
        retry=upstream.retry.merged(spec.get("retry")),
        chain=chain, spec=spec,
    )
