"""``cors``: Cross-Origin Resource Sharing answered at the gateway (the Fetch standard's CORS
protocol; APISIX's and Kong's cors plugins).

    plugins.cors = {allow_origins = ["https://app.example.com"],
                    allow_origin_patterns = ['https://[a-z0-9-]+\\.example\\.com'],
                    allow_methods = ["GET", "POST"], allow_headers = ["Authorization"],
                    allow_credentials = true, max_age = 600}

An origin is allowed if it equals an entry of ``allow_origins`` (compared whole, case-blind
in scheme and host: ``https://app.example.com.evil.net`` is not ``https://app.example.com``),
or if a pattern matches it *whole* (``re.fullmatch``: a pattern cannot be satisfied by a
prefix), or ``"*"`` is listed. A preflight (OPTIONS with Origin and
Access-Control-Request-Method) is answered here: 204 with the allowed methods and headers
for an allowed origin and method, 403 otherwise; it never reaches the upstream or the auth
plugins (a browser sends no credentials on a preflight). A method is allowed when
``allow_methods`` and the route's ``methods`` both take it; the router hands a preflight
to the route its announced method would take, whatever that route's ``methods`` say of
OPTIONS, and to every route a header it announces may lead its request to, each cors
answering on its own terms (all must allow it: docs/routes.md). Other answers to an
allowed origin get Access-Control-Allow-Origin (the origin itself, or ``*`` when every
origin is allowed without credentials), -Allow-Credentials and -Expose-Headers; every answer
of a route whose answer depends on the origin gets ``Vary: Origin`` so that caches keep them
apart. When every origin is allowed without credentials, every answer gets
``Access-Control-Allow-Origin: *``, with or without an Origin: one answer for all, which a
cache cannot hand to the wrong one.

A websocket handshake (``Upgrade: websocket``) from an origin that is not allowed is refused
with 403: a browser applies no CORS to a websocket, so the page of any other site (or a
sandboxed frame's ``null``) would otherwise read every message through it, with the user's
cookies (cross-site websocket hijacking). One without Origin (no browser) goes on, and so
does one from the gateway's own origin (the Origin's host and port are the request's Host).
One from an origin allowed as any site's would be (by ``"*"``, as ``null``, or by a pattern
that matches every origin: none of which may go with ``allow_credentials``) goes on without
the user's credentials (its Cookie and Authorization removed, before the auth plugins and the
upstream see them): a browser sends them with every handshake, and any site's page would
read the user's every message. An origin the config names goes on with them. A consumer's
own cors runs after the auth plugin that named the consumer: where that allows the origin
as any site's and the handshake came with those credentials, it is refused with 403 (they
already made it the user's).
A consumer's own cors replaces the route's here too: the route's no waits for the auth
plugins, and a consumer whose cors allows the origin gets its websocket.

The route's cors speaks for its answers alone: an upstream's own ``Access-Control-*``
headers are dropped (its ``-Allow-Credentials: true`` beside the gateway's
``-Allow-Origin`` would grant what this config does not, and its ``-Allow-Origin`` would
let in an origin this config refuses). Its answer headers go on after those of ``headers``
and ``rewrite`` (its response phase runs at 650, before gzip's): a ``Vary`` they set or
remove keeps ``Origin``, and an ``Access-Control-*`` they set is dropped as the upstream's.
The Origin judged is the one the client sent, whatever those made of it for the upstream
(one removed there still gets a 401 its page can read). The ``null`` origin (sandboxed
frames, ``data:`` and ``file:`` pages: any site can make one) is allowed only when
``allow_origins`` lists it, never by a pattern, and never with credentials; nor may a
pattern with credentials match any origin at all (``.*``: every site could read the user's
answers).
"""
import re

from ..core.chain import refuse_unless_replaced, withdraw_refusal
from ..core.context import Reply
from ..core.schema import (Field, Invalid, Schema, backtrack_warnings, boolean, compile_pattern,
                           header_name, integer, list_of, show, string)
from ..core.target import normalise_host
from ..errors import BadRequest

NAME = "cors"
PRIORITY = 1120         # before grpc_web (1100) and every auth plugin: preflights carry none
# Its answer headers go on after the plugins that edit them (headers 1000, rewrite 710), before
# gzip (600): a Vary they set or removed dropped its Origin, and a shared cache handed one
# origin's answer to another.
RESPONSE_PRIORITY = 650
ANSWERS_PREFLIGHT = True    # the router hands us the preflights of our route's methods

# What a browser sends with a cross-site websocket handshake by itself, and leaves out of a
# fetch made without credentials (the Fetch standard's credentials mode "omit").
AMBIENT_CREDENTIALS = ("Cookie", "Authorization")
CREDENTIALS_REMOVED = "cors_credentials_removed"     # (ctx.vars) the route's cors removed them
ORIGIN = r"\*|https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?|null"
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def pattern(value):
    value = string(what="a regular expression")(value)
    try:
        compile_pattern(value)
    except ValueError as exc:
        raise Invalid(f"must be a regular expression ({exc}), got {show(value)}") from None
    return value


SCHEMA = Schema(
    Field("allow_origins", list_of(string(ORIGIN, "an origin (scheme://host[:port]) or *")),
          list, "origins allowed, compared whole; \"*\": any"),
    Field("allow_origin_patterns", list_of(pattern), list,
          "regular expressions an origin must match whole to be allowed"),
    Field("allow_methods", list_of(string(r"[A-Z]+", "an upper-case method")),
          lambda: list(METHODS), "methods a preflight may ask for"),
    Field("allow_headers", list_of(string(r"\*|" + r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+",
                                          "a header name or *")), list,
          "request headers a preflight may ask for; \"*\": whatever it asks"),
    Field("expose_headers", list_of(header_name), list, "response headers scripts may read"),
    Field("allow_credentials", boolean, False, "allow cookies and Authorization (never with *)"),
    Field("max_age", integer(0), 600, "seconds a browser may cache a preflight's answer"),
)


def warnings(conf):
    """(the plugin hook) An origin pattern that can backtrack exponentially on an Origin."""
    return backtrack_warnings(((f"allow_origin_patterns[{i}]", p)
                               for i, p in enumerate(conf["allow_origin_patterns"])), "Origin")


def prepare(conf):
    origins = frozenset(o.lower() for o in conf["allow_origins"])
    if "*" in origins and conf["allow_credentials"]:
        raise ValueError('allow_origins = ["*"] with allow_credentials = true: browsers refuse '
                         "it (list the origins, or use allow_origin_patterns)")
    if not origins and not conf["allow_origin_patterns"]:
        raise ValueError("set allow_origins or allow_origin_patterns")
    patterns = tuple(re.compile(p, re.I) for p in conf["allow_origin_patterns"])
    if conf["allow_credentials"]:
        _check_credentialed(origins, patterns)
    headers = [h.lower() for h in conf["allow_headers"]]
    public = "*" in origins and not conf["allow_credentials"]
    return {**conf, "origins": origins, "any": "*" in origins,
            "patterns": patterns,
            # (those that do not match any origin: anyones)
            "site_patterns": tuple(p for p in patterns
                                   if not any(p.fullmatch(o) for o in NO_SITES)),
            "public": public,        # one answer for every origin: "*" on all
            "methods": frozenset(conf["allow_methods"]) | {"OPTIONS"},
            "methods_text": ", ".join(conf["allow_methods"]),
            "reflect_headers": "*" in headers,
            "headers": frozenset(headers) - {"*"},
            "headers_text": ", ".join(h for h in headers if h != "*"),
            "expose_text": ", ".join(conf["expose_headers"]),
            "vary": not public}


# Origins no site may be given (.invalid is reserved, RFC 2606): a credentialed pattern that
# matches one would match the attacker's site too.
NO_SITES = ("https://attacker.invalid", "http://attacker.invalid")


def _check_credentialed(origins, patterns):
    """With credentials, an origin that any site can send is a config error: ``null``, or a
    pattern that matches every origin."""
    if "null" in origins:
        raise ValueError('allow_origins = ["null"] with allow_credentials = true: any site can '
                         "send Origin: null (a sandboxed iframe) and read the user's answers")
    for pattern in patterns:
        site = next((o for o in NO_SITES if pattern.fullmatch(o)), None)
        if site is not None:
            raise ValueError(f"allow_origin_patterns: {pattern.pattern!r} with "
                             f"allow_credentials = true matches any origin ({site} too): "
                             f"every site could read the user's answers")


def allowed(conf, origin):
    if origin is None:
        return False
    if conf["any"] or origin.lower() in conf["origins"]:
        return True
    # "null" is anyone's (a sandboxed frame): allowed only by name, never by a pattern
    return origin != "null" and any(p.fullmatch(origin) for p in conf["patterns"])


def anyones(conf, origin):
    """Is ``origin`` (an allowed one) allowed as any site's would be: by "*", as ``null``
    (a sandboxed frame's), or by a pattern that matches every origin? Not one the config
    names, as it names the pages it trusts."""
    if origin == "null":
        return True
    return origin.lower() not in conf["origins"] and \
        not any(p.fullmatch(origin) for p in conf["site_patterns"])


def preflight(conf, ctx, origin):
    """The answer to a preflight (a Reply either way)."""
    method = ctx.header("access-control-request-method")
    asked = [h.strip().lower() for h in (ctx.header("access-control-request-headers") or
                                         "").split(",") if h.strip()]
    route_methods = ctx.route.methods if ctx.route is not None else None
    if not allowed(conf, origin) or method not in conf["methods"] or \
            (route_methods is not None and method not in route_methods) or \
            (not conf["reflect_headers"] and not set(asked) <= conf["headers"]):
        return Reply.json(403, {"error": "cors_not_allowed",
                                "message": "this origin, method or header is not allowed"},
                          [("Vary", "Origin")])
    methods_text = conf["methods_text"] if route_methods is None else \
        ", ".join(m for m in conf["allow_methods"] if m in route_methods)
    headers = [("Access-Control-Allow-Origin", _allow_origin(conf, origin)),
               ("Access-Control-Allow-Methods", methods_text),
               ("Access-Control-Max-Age", str(conf["max_age"]))]
    allow_headers = ", ".join(asked) if conf["reflect_headers"] else conf["headers_text"]
    if allow_headers:
        headers.append(("Access-Control-Allow-Headers", allow_headers))
    if conf["allow_credentials"]:
        headers.append(("Access-Control-Allow-Credentials", "true"))
    if conf["vary"]:
        headers.append(("Vary", "Origin, Access-Control-Request-Method, "
                                "Access-Control-Request-Headers"))
    return Reply(204, b"", headers)


def _allow_origin(conf, origin):
    return "*" if conf["any"] and not conf["allow_credentials"] else origin


def is_preflight(ctx):
    return ctx.method == "OPTIONS" and ctx.header("access-control-request-method") is not None


def access(conf, ctx):
    origin = ctx.sent_header("origin")     # a consumer's cors runs after headers' edits
    if origin is None:
        return None
    if is_preflight(ctx):
        return preflight(conf, ctx, origin)
    if ctx.upgrade:
        withdraw_refusal(ctx, NAME)     # a consumer's cors replaces the route's no
    if allowed(conf, origin):
        ctx.vars["cors_origin"] = origin
        if ctx.upgrade and anyones(conf, origin) and not same_origin(ctx, origin):
            if named_by_ambient(ctx):
                # A consumer's cors runs after the auth plugin that named the consumer: the
                # credentials it would remove already made the websocket the user's.
                return Reply.json(403, {"error": "cors_not_allowed",
                                        "message": "this origin may not open a websocket "
                                                   "with the user's credentials here"},
                                  [("Vary", "Origin")])
            # A browser sends the user's cookies and HTTP auth with every handshake and
            # applies no CORS to it: any site's page (an "*") read the user's every message,
            # which no config may grant (prepare: never with credentials). It goes on
            # without them, as that page's fetches do.
            for name in AMBIENT_CREDENTIALS:
                ctx.remove_header(name)
            ctx.vars[CREDENTIALS_REMOVED] = True
        return None
    if ctx.var("cors_origin") is not None:
        # A consumer's cors replacing the route's: the route's yes must not outlive this no.
        del ctx.vars["cors_origin"]
    if ctx.upgrade and not same_origin(ctx, origin):
        # A browser applies no CORS to a websocket: a page of a refused origin would read
        # every message, with the user's cookies (cross-site websocket hijacking).
        reply = Reply.json(403, {"error": "cors_not_allowed",
                                 "message": "this origin may not open a websocket here"},
                           [("Vary", "Origin")])
        if ctx.consumer is None and ctx.route is not None and ctx.route.chain.identifies:
            # The consumer a later auth plugin names may have a cors of its own, which
            # replaces this one (it allows its partner's page's fetches: its websocket too)
            refuse_unless_replaced(ctx, NAME, reply)
            return None
        return reply
    return None


def named_by_ambient(ctx):
    """Did an auth plugin name the (not anonymous) consumer while the handshake still carried
    the credentials a browser adds by itself? A route's cors that removed them ran first."""
    return ctx.consumer is not None and not ctx.var("anonymous") and \
        not ctx.var(CREDENTIALS_REMOVED) and \
        any(ctx.sent_header(name) is not None for name in AMBIENT_CREDENTIALS)


def same_origin(ctx, origin):
    """Is ``origin`` the gateway's own, as the client named it in Host (a page served by
    this host, whose requests CORS does not judge)? Its scheme is left out: a TLS proxy in
    front may have spoken it."""
    host = ctx.host_header
    authority = origin.partition("://")[2]
    if host is None or not authority:
        return False
    # Spelt as Host is (normalise_host): a page of "http://h.example." sent that Origin,
    # its Host "h.example." became "h.example", and its own websocket was refused.
    try:
        name, port = normalise_host(authority.encode("latin-1"))
    except (BadRequest, UnicodeEncodeError):
        return False
    return (name + b":" + port if port else name) == host


def response(conf, ctx, head):
    # This config is the route's CORS policy: an upstream's own headers would add to it
    # (its -Allow-Credentials beside our -Allow-Origin) or stand where it says no.
    if head.has_header_prefix(b"access-control-"):
        _drop_cors_headers(head)
    _add_headers(conf, head, ctx.var("cors_origin"))


def reply(conf, ctx, head):
    """An answer the gateway writes itself (a 401 from an auth plugin, a 429, a 502) needs
    the same headers, or a browser cannot read why it was refused. The origin is judged
    here, by the config in force: the request may have ended before access() ran (a
    redirect, which a browser follows only with them; a 413), and a consumer's cors may
    have replaced the route's since. A preflight's answer is whole as preflight() made it."""
    if not is_preflight(ctx):
        origin = ctx.sent_header("origin")     # not what headers or rewrite left upstream
        _add_headers(conf, head, origin if allowed(conf, origin) else None)


def _add_headers(conf, head, origin):
    if conf["public"]:
        origin = "*"
    if origin is not None:
        head.set_header("Access-Control-Allow-Origin", _allow_origin(conf, origin))
        if conf["allow_credentials"]:
            head.set_header("Access-Control-Allow-Credentials", "true")
        if conf["expose_text"]:
            head.set_header("Access-Control-Expose-Headers", conf["expose_text"])
    if conf["vary"]:
        add_vary(head, "Origin")


def _drop_cors_headers(head):
    head.headers = [(k, v) for k, v in head.headers
                    if not k.lower().startswith(b"access-control-")]


def add_vary(head, name):
    """Add ``name`` to the answer's Vary, keeping what the upstream put there."""
    lower = name.lower().encode()
    values = [v for k, v in head.headers if k.lower() == b"vary"]
    tokens = [t.strip() for v in values for t in v.split(b",") if t.strip()]
    if b"*" in tokens or lower in (t.lower() for t in tokens):
        return
    head.set_header("Vary", b", ".join(tokens + [name.encode()]))
