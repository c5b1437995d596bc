"""A radix tree over path segments.

Rules, in the order they decide a match:

1. Path: at each segment a static child is tried before the parameter child, and both before a
   catch-all; an exact end before a ``prefix = true`` route. ``/p/*rest`` also matches ``/p``
   (with ``rest`` empty), after an exact or prefix route for ``/p``. The deepest, most static match wins,
   and the walk backtracks when a more specific branch has no route whose conditions hold.
   A static segment matches "%2B" as "+" and "%3B" as ";", as upstreams decode them
   (core.target.static_key).
2. Among routes on the same node: higher ``priority`` first, then the more specific conditions
   (exact hosts, wildcard hosts, more headers, restricted methods), then route id.
3. Host (exact or ``*.example.com``), headers (exact values) and method must all hold.

If some route matches everything but the method, the answer is 405 with ``Allow``; else 404.
A CORS preflight goes to the route its announced method would take (``_preflight``), and to
every route a header it announces may lead that request to, all of which must consent.
Lookup cost grows with path depth, not with the number of routes; while no route matches on
headers or claims, a match is also remembered by (method, host, path) until the table changes.
"""
import re
from dataclasses import replace

from ..errors import BadRequest, ConfigError, MethodNotAllowed, RouteNotFound
from .chain import EMPTY_CHAIN, Chain
from .context import Reply, claim_text
from .routes import check_path
from .target import static_key

# Matches remembered per table, when no route matches on headers or claims (the answer then
# depends on method, host and path alone): a walk is ~1.1 us, a hit ~0.2. Full, the memory
# starts over (a client sending endless distinct paths or hosts costs an insert each); a
# host and path longer than MATCH_CACHE_KEY together are not kept, so it holds at most
# MATCH_CACHE_SIZE x MATCH_CACHE_KEY characters of them.
MATCH_CACHE_SIZE = 1024
MATCH_CACHE_KEY = 256


class _Node:
    __slots__ = ("static", "param", "param_name", "param_owner", "param_users", "catchall",
                 "catchall_name", "exact", "prefix")

    def __init__(self):
        self.static = {}
        self.param = None
        self.param_name = None
        self.param_owner = None
        self.param_users = 0        # routes whose paths go through the parameter child
        self.catchall = []
        self.catchall_name = None
        self.exact = []
        self.prefix = []


def _empty(node):
    return not (node.static or node.param or node.catchall or node.catchall_name or
                node.exact or node.prefix)


def _segments(pattern):
    """check_path's segments of a pattern it accepted already (a route in the router), without
    its checks: a removal's walk, one split a path (see Router._placed)."""
    for text in pattern[1:].split("/"):
        lead = text[:1]
        yield ("param", text[1:]) if lead == ":" else ("catchall", text[1:]) if lead == "*" \
            else ("static", text)


def claims_match(wanted, claims):
    """Do verified ``claims`` satisfy a route's ((name, value), ...)? A list claim matches if
    it holds the value; ``scope``/``scp`` strings are space-separated sets (OAuth 2)."""
    for name, value in wanted:
        got = claims.get(name)
        if got is None:
            return False
        if isinstance(got, list):
            if value not in (claim_text(item) for item in got):
                return False
        elif isinstance(got, str) and name in ("scope", "scp"):
            if value not in got.split():
                return False
        elif claim_text(got) != value:
            return False
    return True


def _sort_key(route):
    return (-route.priority, tuple(not flag for flag in route.specificity), route.id)


class Router:
    """Routing table. ``add``/``remove`` build and change it in
    place (a gevent worker never yields inside them, so a request sees the table before or
    after a change, never half of one); ``match()`` looks a request up."""

    def __init__(self):
        self._root = _Node()
        self.routes = {}
        self.claim_routes = 0       # routes that match on JWT claims: match() needs claims_of
        self.conditional = 0        # routes that match on headers or claims: no match cache
        # route id -> (buckets it sits in, param nodes it uses). A route's paths are parsed
        # once, at its check, for the add (a route of 40,000 paths held every worker ~2 s an
        # etcd write, parsing each path at its check, add and removal); its removal splits
        # them again (_segments), without the checks: kept here, the parsed paths more than
        # doubled a table's memory in every worker (15,000 paths of 7 segments: the
        # router's 7 MB became 19.6 MB, a tuple and a string a segment)
        self._placed = {}
        self._matches = {}          # (method, host, path) -> (route, params): see match()

    def check(self, route):
        """Raise ConfigError if ``route`` conflicts with the table, or its paths with each
        other; change nothing. -> its paths parsed (check_path), one list each."""
        if route.id in self.routes:
            raise ConfigError(f"route {route.id}: duplicate route id")
        own = {}        # position (the segments before it) -> the name this route's paths gave
        parsed = []
        for pattern in route.paths:
            node, position = self._root, ()
            segments = check_path(pattern)
            parsed.append(segments)
            for kind, text in segments:
                if kind != "static":
                    named = own.setdefault((kind, position), text)
                    if named != text:
                        mark = ":" if kind == "param" else "*"
                        raise ConfigError(
                            f"route {route.id}: {mark}{text} in {pattern!r} conflicts with "
                            f"{mark}{named} of another of its paths at the same position")
                # (a static segment as the tree keys it: "/a+b/:x" and "/a%2Bb/:y" are one
                # position, named twice)
                position += ((kind, static_key(text) if kind == "static" else ""),)
                if node is None:
                    continue            # new territory: only the route's own paths can clash
                if kind == "static":
                    node = node.static.get(static_key(text))
                elif kind == "param":
                    if node.param is not None and node.param_name != text:
                        raise ConfigError(
                            f"route {route.id}: parameter :{text} in {pattern!r} conflicts with "
                            f":{node.param_name} of route {node.param_owner} at the same position")
                    node = node.param
                elif node.catchall_name not in (None, text):
                    raise ConfigError(
                        f"route {route.id}: catch-all *{text} in {pattern!r} conflicts with "
                        f"*{node.catchall_name} at the same position")
        return parsed

    def conforming(self, pattern):
        """``pattern`` with its parameter and catch-all names those the tree already has at
        the same positions: for a fence, whose parameters are never read (core.table)."""
        node, parts, used = self._root, [], set()
        for kind, text in check_path(pattern):
            if kind == "static":
                parts.append(text)
                node = node.static.get(static_key(text)) if node is not None else None
                continue
            if kind == "param":
                name = node.param_name if node is not None and node.param is not None else None
                node = node.param if node is not None else None
            else:
                name = node.catchall_name if node is not None and node.catchall_name else None
            # A position the tree does not name keeps the pattern's name, unless the tree gave
            # it to an earlier position ("/a/:id" in the tree made "/a/:x/:id" the refused
            # "/a/:id/:id", and no fence held its paths).
            name = name or unused(text, used)
            used.add(name)
            parts.append((":" if kind == "param" else "*") + name)
        return "/" + "/".join(parts)

    def add(self, route):
        """Insert a route; raise ConfigError naming the route if it conflicts."""
        parsed = self.check(route)
        buckets, params = [], []
        for segments in parsed:
            node = self._root
            for kind, text in segments:
                if kind == "static":
                    node = node.static.setdefault(static_key(text), _Node())
                elif kind == "param":
                    if node.param is None:
                        node.param, node.param_name, node.param_owner = _Node(), text, route.id
                    node.param_users += 1
                    params.append(node)
                    node = node.param
                else:
                    node.catchall_name = text
                    buckets.append(node.catchall)
                    break
            else:
                buckets.append(node.prefix if route.prefix else node.exact)
        for bucket in buckets:
            if route not in bucket:
                bucket.append(route)
                bucket.sort(key=_sort_key)
        self.routes[route.id] = route
        self._placed[route.id] = (buckets, params)
        if route.claims:
            self.claim_routes += 1
        if route.claims or route.headers:
            self.conditional += 1
        self._matches.clear()

    def remove(self, route_id):
        """Take a route out; a parameter or catch-all name nobody uses any more is freed."""
        route = self.routes.pop(route_id, None)
        if route is None:
            return None
        if route.claims:
            self.claim_routes -= 1
        if route.claims or route.headers:
            self.conditional -= 1
        self._matches.clear()
        buckets, params = self._placed.pop(route_id)
        for bucket in buckets:
            if route in bucket:
                bucket.remove(route)
        for node in params:
            node.param_users -= 1
            if node.param_users == 0:
                node.param = node.param_name = node.param_owner = None
        self._tidy(route)
        return route

    def _tidy(self, route):
        """Free catch-all names nobody uses, and drop static nodes left empty: a table that
        churns through paths (etcd) must not grow a tree of dead branches."""
        for pattern in route.paths:
            node, trail = self._root, []
            for kind, text in _segments(pattern):
                if node is None:
                    break
                if kind == "static":
                    text = static_key(text)
                    trail.append((node, text))
                    node = node.static.get(text)
                elif kind == "param":
                    node = node.param
                elif not node.catchall:
                    node.catchall_name = None
            for parent, text in reversed(trail):
                child = parent.static.get(text)
                if child is None or not _empty(child):
                    break
                del parent.static[text]

    def __len__(self):
        return len(self.routes)

    def match(self, method, host, path, headers=None, claims_of=None, repeated=()):
        """Return (route, params) for (method, host, path, headers) or raise RouteNotFound/405.

        ``host`` is lower-case without port; ``headers`` maps lower-case bytes names to bytes.
        ``claims_of(route)`` returns the request's verified JWT claims under that route's jwt
        config, or None; it is asked only for routes with ``claims`` conditions. ``repeated``:
        the names of ``headers`` that came more than once (refuse_listed).
        """
        cacheable = not self.conditional and len(path) + len(host) <= MATCH_CACHE_KEY
        if cacheable:
            found = self._matches.get((method, host, path))
            if found is not None:
                route, params = found
                return route, dict(params) if params else {}    # the caller's to change
        segments = path[1:].split("/")
        if method == "OPTIONS":         # never remembered (below): a preflight's header decides
            found = self._preflight(segments, host, headers, claims_of, repeated)
            if found is not None:
                return found
        params = []
        allowed = set()
        found = self._walk(self._root, segments, 0, params, method, host,
                           (headers, claims_of, repeated), allowed)
        if found is not None:
            if cacheable and method != "OPTIONS":
                matches = self._matches
                if len(matches) >= MATCH_CACHE_SIZE:
                    matches.clear()
                route, params = found
                matches[method, host, path] = (route, dict(params))
            return found
        if allowed:
            raise MethodNotAllowed(allowed)
        raise RouteNotFound(f"no route for {path}")

    def _preflight(self, segments, host, headers, claims_of, repeated):
        """A CORS preflight (OPTIONS with Origin and Access-Control-Request-Method) goes to
        the route the request it announces would take, when that route's chain answers
        preflights (cors, grpc_web); else it is routed as any OPTIONS. A browser sends one
        before a JSON POST or an Authorization header: routed as OPTIONS it was a 405 on a
        route with ``methods``, or went to a broader route (a catch-all) without the cors."""
        asked = headers.get(b"access-control-request-method") if headers else None
        if asked is None or b"origin" not in headers:
            return None
        method = asked.decode("latin-1")
        found = self._walk(self._root, segments, 0, [], method, host,
                           (headers, claims_of, repeated), set())
        steered, alone = self._steered(segments, host) if self.conditional else (False, True)
        if steered:
            routes = self._may_take(segments, method, host, headers, claims_of,
                                    _announced(headers))
            if routes or found is not None:
                routes = routes or [found[0]]
                # the path's one route: a request its answer covers reaches it or none
                found = (routes[0], found[1] if found else {}) if alone else \
                    _jointly(routes, found)
        if found is None or found[0].chain is None or not found[0].chain.answers_preflight:
            return None
        return found

    def _may_take(self, segments, method, host, headers, claims_of, announced):
        """The routes a preflight's announced request may take, in match order: those whose
        ``headers`` (or ``claims``) conditions fail only on a header it may send
        (``announced``: the names its Access-Control-Request-Headers lists, not their
        values, and a CORS_SAFELISTED one a page may set unannounced to the value the
        condition wants: _unannounced), up to the first whose conditions hold on the
        preflight whatever the page sets. Answered by that last one alone, the preflight
        let a cors that allows an origin approve a request that a route without one (or
        with another) serves, once the page sent the header."""
        routes = []
        for route in self._on_path(segments, host):
            if any(r is route for r in routes) or \
                    route.methods is not None and method not in route.methods:
                continue        # (a route with two paths on this one is met twice)
            missed = [(name, value) for name, value in route.headers
                      if headers.get(name) != value]
            claims = claims_of(route) if route.claims and claims_of is not None else None
            if route.claims and (claims is None or not claims_match(route.claims, claims)):
                missed.append((b"authorization", None))     # the token it would carry
            if not missed:
                routes.append(route)
                # held by a value the page may set otherwise (the preflight's Accept: */*)?
                if CORS_SAFELISTED.isdisjoint(name for name, _ in route.headers):
                    return routes
            elif all(name in announced or _unannounced(name, value)
                     for name, value in missed):
                routes.append(route)
        return routes

    def _steered(self, segments, host):
        """(Does a route on this path and host, whatever its methods, match on headers or
        claims?, is it the only route there?) Steered, a preflight's answer must not be
        cached (JointPreflight) unless no other route is there to be led to: a gRPC-Web
        route on ``Content-Type = "application/grpc-web+proto"`` alone on its path keeps its
        max_age, not a preflight before every call."""
        steered, first, alone = False, None, True
        for route in self._on_path(segments, host):
            steered = steered or bool(route.headers or route.claims)
            if first is None:
                first = route
            elif route is not first:    # (a route with two paths on this one is met twice)
                alone = False
        return steered, alone

    def _on_path(self, segments, host):
        """The routes on a path whose hosts take ``host``, in the order _walk tries them."""
        for route in _in_order(self._root, segments, 0):
            if (route.hosts is not None or route.host_suffixes) and \
                    not (route.hosts and host in route.hosts) and \
                    not (host and host.endswith(route.host_suffixes)):
                continue
            yield route

    def _walk(self, node, segments, i, params, method, host, conditions, allowed):
        if i == len(segments):
            for bucket in (node.exact, node.prefix):
                if bucket:
                    route = _pick(bucket, method, host, conditions, allowed)
                    if route is not None:
                        return route, dict(params) if params else {}
            if node.catchall:
                # /admin/*rest covers /admin itself: frameworks serve /admin as /admin/, so a
                # protected prefix must leave no bare-name hole to a broader route.
                route = _pick(node.catchall, method, host, conditions, allowed)
                if route is not None:
                    bound = dict(params) if params else {}
                    bound[node.catchall_name] = ""
                    return route, bound
            return None
        segment = segments[i]
        child = node.static.get(static_key(segment) if "%" in segment else segment)
        if child is not None:
            found = self._walk(child, segments, i + 1, params, method, host, conditions, allowed)
            if found is not None:
                return found
        if node.param is not None and segment:
            params.append((node.param_name, segment))
            found = self._walk(node.param, segments, i + 1, params, method, host, conditions,
                               allowed)
            if found is not None:
                return found
            params.pop()
        if node.catchall:
            route = _pick(node.catchall, method, host, conditions, allowed)
            if route is not None:
                bound = dict(params) if params else {}
                bound[node.catchall_name] = "/".join(segments[i:])
                return route, bound
        if node.exact and not segment and i == len(segments) - 1:
            # /admin/ is /admin to most frameworks and to nginx: an exact route covers its
            # path with a trailing slash, or /admin/ would be a hole to a broader route.
            route = _pick(node.exact, method, host, conditions, allowed)
            if route is not None:
                return route, dict(params) if params else {}
        if node.prefix:
            route = _pick(node.prefix, method, host, conditions, allowed)
            if route is not None:
                return route, dict(params) if params else {}
        return None


def unused(name, used):
    """``name``, or it with underscores after it, not in ``used``: a fence's parameter name
    that no other position of its pattern has (the router refuses one bound twice)."""
    while name in used:
        name += "_"
    return name


def _in_order(node, segments, i):
    """Every route on a path, in the order _walk tries them."""
    if i == len(segments):
        yield from node.exact
        yield from node.prefix
        yield from node.catchall
        return
    segment = segments[i]
    child = node.static.get(static_key(segment) if "%" in segment else segment)
    if child is not None:
        yield from _in_order(child, segments, i + 1)
    if node.param is not None and segment:
        yield from _in_order(node.param, segments, i + 1)
    yield from node.catchall
    if node.exact and not segment and i == len(segments) - 1:
        yield from node.exact
    yield from node.prefix


# Request headers a page sets on a cross-origin request without its preflight naming them
# (the Fetch standard's CORS-safelisted request-headers): a route's condition on one
# (Accept = "application/vnd.internal+json") is met by a request whose preflight said nothing.
# Only with a safelisted value, though: Content-Type: application/grpc-web+proto or
# application/json, Range: bytes=-500, a value past 128 bytes make the browser announce it.
CORS_SAFELISTED = frozenset([b"accept", b"accept-language", b"content-language",
                             b"content-type", b"range"])
SAFELISTED_VALUE_BYTES = 128
# The Fetch standard's CORS-unsafe request-header bytes: controls but tab, '"():<>?@[\]{}'
UNSAFE_VALUE = re.compile(rb'[\x00-\x08\x0a-\x1f"():<>?@\[\\\]{}\x7f]')
LANGUAGE_VALUE = re.compile(rb"[0-9A-Za-z *,\-.;=]*")
SAFELISTED_CONTENT_TYPES = frozenset([b"application/x-www-form-urlencoded",
                                      b"multipart/form-data", b"text/plain"])
SIMPLE_RANGE = re.compile(rb"bytes=[0-9]+-[0-9]*")


def _unannounced(name, value):
    """Can a page send ``name: value`` on a cross-origin request without its preflight's
    Access-Control-Request-Headers naming it (a CORS-safelisted request-header)? A route
    on ``Content-Type = "application/grpc-web+proto"`` is reached only by a request whose
    preflight announced Content-Type: asked to consent to every DELETE's, its grpc_web (POST
    only) refused the REST route's beside it."""
    if name not in CORS_SAFELISTED or value is None or len(value) > SAFELISTED_VALUE_BYTES:
        return False
    if name == b"accept":
        return UNSAFE_VALUE.search(value) is None
    if name == b"content-type":
        essence = value.partition(b";")[0].strip(b" \t").lower()
        return UNSAFE_VALUE.search(value) is None and essence in SAFELISTED_CONTENT_TYPES
    if name == b"range":
        return SIMPLE_RANGE.fullmatch(value) is not None
    return LANGUAGE_VALUE.fullmatch(value) is not None     # the -Language ones


def _announced(headers):
    """The lower-case names a preflight's Access-Control-Request-Headers announces (the
    CORS-safelisted ones a page sets unannounced: _unannounced)."""
    names = headers.get(b"access-control-request-headers")
    return frozenset(n.strip().lower() for n in names.split(b",")) - {b""} if names else \
        frozenset()


def _jointly(routes, found):
    """(route, params) for a preflight whose request may take ``routes`` on a path where a
    header may choose the route: the first of them, answering with every one's consent and
    for this request alone (JointPreflight)."""
    params = found[1] if found is not None else {}
    chain = JointPreflight(routes)
    return (replace(routes[0], chain=chain), params) if chain.answers_preflight else None


class JointPreflight(Chain):
    """The chain of a preflight whose request several routes may take, the value of a header
    it announces deciding which: each route's chain answers it in turn (their cors, on
    their own terms), and it is allowed only when every one allows it (the first one's
    answer goes out, with credentials only if every one allows them). A route whose chain
    answers no preflight cannot consent at the gateway: refused. Everything else is the
    first route's chain.

    It is the chain of every preflight on a path where a route matches on headers or
    claims: a browser caches an allowed answer's methods and headers one by one (the Fetch
    standard's CORS-preflight cache) and sends no preflight for a later request they cover,
    even one a header leads to a route that never consented. The answer says
    Access-Control-Max-Age: 0, so each such request has a preflight of its own."""

    __slots__ = ("routes",)

    def __init__(self, routes):
        first = routes[0].chain or EMPTY_CHAIN
        for name in Chain.__slots__:        # the first route's chain, but for the preflight
            setattr(self, name, getattr(first, name))
        self.routes = tuple(routes)
        self.answers_preflight = any(r.chain is not None and r.chain.answers_preflight
                                     for r in routes)
        self.access_steps = (None,)         # (run_access always runs)

    def run_access(self, ctx):
        answer, credentials = None, True
        for route in self.routes:
            ctx.route = route
            chain = route.chain
            reply = chain.run_access(ctx) if chain is not None and chain.answers_preflight \
                else None
            if reply is None:
                ctx.ended_by = None
                return Reply.json(403, {"error": "cors_not_allowed",
                                        "message": "a route this request may take (by the "
                                                   "headers it announces) answers no CORS "
                                                   "preflight"}, [("Vary", "Origin")])
            if not 200 <= reply.status < 300:
                return reply
            answer = answer or (route, reply)
            credentials = credentials and _has(reply, "access-control-allow-credentials")
        ctx.route, reply = answer
        # not for a browser's cache; credentials only if every route allows them (a new
        # Reply: a plugin may hand out one of its own more than once)
        dropped = ("access-control-max-age",) if credentials else \
            ("access-control-max-age", "access-control-allow-credentials")
        return Reply(reply.status, reply.body,
                     [(k, v) for k, v in reply.headers if k.lower() not in dropped] +
                     [("Access-Control-Max-Age", "0")])


def _has(reply, name):
    return any(k.lower() == name for k, _ in reply.headers)


def _pick(bucket, method, host, conditions, allowed):
    headers, claims_of, repeated = conditions
    for route in bucket:
        if route.hosts is not None or route.host_suffixes:
            if not (route.hosts and host in route.hosts) and \
                    not (host and host.endswith(route.host_suffixes)):
                continue
        if route.headers:
            if headers is None or any(headers.get(k) != v for k, v in route.headers):
                if headers is not None and (route.methods is None or method in route.methods):
                    refuse_listed(route.headers, headers, repeated)
                continue
        if route.claims:
            claims = claims_of(route) if claims_of is not None else None
            if claims is None or not claims_match(route.claims, claims):
                continue
        if route.methods is not None and method not in route.methods:
            allowed.update(route.methods)
            continue
        return route
    return None


# Fields a client itself sends as a comma-separated list on one line (RFC 9110's list-based
# fields that user agents write so): ``Accept: application/json, text/html`` once is what the
# upstream reads too, and a condition it fails sends the request on to a broader route.
CLIENT_LISTS = frozenset([b"accept", b"accept-charset", b"accept-encoding", b"accept-language",
                          b"cache-control", b"if-match", b"if-none-match", b"prefer"])


def refuse_listed(wanted, headers, repeated):
    """A header condition that failed on a list holding its value: BadRequest. header_map
    joins a field that came twice with ", ", so ``X-Env: internal`` sent twice missed a route
    on ``X-Env = "internal"`` and went to a broader one, while an upstream that reads the
    first copy (Go) or the last (PHP) read ``internal``: no copy can be chosen that every
    upstream agrees with, as rate_limit's keys say too. ``repeated``: the names of the fields
    that came more than once; a CLIENT_LISTS field that came once is a list, not copies."""
    repeated = repeated or ()
    for name, value in wanted:
        got = headers.get(name)
        if got is None or got == value or b"," not in got or \
                (name in CLIENT_LISTS and name not in repeated):
            continue
        if (b"," not in value and
                value in (item.strip(b" \t") for item in got.split(b","))) or \
                (name in repeated and b", " + value + b", " in b", " + got + b", "):
            # (a value holding a comma: one of the copies, which on_header joined with ", ")
            # (the value unquoted: a condition may match a secret, and errors are logged)
            raise BadRequest(f"the {name.decode('latin-1')} header is a list holding the "
                             f"value a route's condition wants (it came more than once?); a "
                             f"route matches on one value")
