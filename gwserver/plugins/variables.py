"""``$variables`` in the values redirect and rewrite write (a URI, a header value), compiled
once per route into a template and expanded per request (nginx's and APISIX's ``$host``,
``$request_uri`` ...; only the names below).

    $host        the Host the route matched: lower case, no port (core.target); on a route
                 without ``hosts`` it is whatever the client sent, so a template that puts it
                 in a URI lets the client choose that URI's host (docs/plugins.md, redirect);
                 "" for an HTTP/1.0 request that sends none (redirect answers it 400)
    $path        the canonical request path (docs/security.md)
    $query       the query string, without "?"
    $scheme      http or https, as the client connected
    $method      the request method
    $request_id  the request id (X-Request-ID, or one the gateway made)
    $client_ip   the client address through trusted_proxies, never a header from anyone else
    $consumer    the id of the consumer an auth plugin identified ("" when none)
    $consumer_groups   its groups, comma-separated, in its order (as X-Consumer-Groups)
    $param_NAME  the route parameter NAME (``/users/:id`` -> $param_id; "" when unbound)

``${name}`` separates a name from letters that follow it; ``$$`` is one ``$``. An unknown name
is a config error at compile time, not an empty string at run time. Values are what the client
sent, so each use decides what may reach its output: a header value refuses CR, LF and NUL; a
Location percent-encodes anything outside RFC 3986 (``expand(..., escape=uri_escape)``).
"""
import difflib
import re
from urllib.parse import quote

from ..core.consumers import HEADER_GROUPS

_REF = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*)|(\d))")

NAMES = ("host", "path", "query", "scheme", "method", "request_id", "client_ip", "consumer",
         "consumer_groups")


def _consumer(ctx):
    consumer = ctx.consumer
    return "" if consumer is None else consumer.id


def _groups(ctx):
    # as X-Consumer-Groups says them, in the consumer's order: the frozenset's order is the
    # process' string hashing's, another on every host and restart
    consumer = ctx.consumer
    if consumer is not None:
        for name, value in consumer.upstream_headers:
            if name == HEADER_GROUPS:
                return value.decode("latin-1")
    return ""


_GETTERS = {
    "host": lambda ctx: ctx.host or "",
    "path": lambda ctx: ctx.path,
    "query": lambda ctx: ctx.query or "",
    "scheme": lambda ctx: ctx.scheme,
    "method": lambda ctx: ctx.method,
    "request_id": lambda ctx: ctx.request_id or "",
    "client_ip": lambda ctx: ctx.client_ip or "",
    "consumer": _consumer,
    "consumer_groups": _groups,
}


def _param(name):
    return lambda ctx: str((ctx.params or {}).get(name, ""))


class Template:
    """A compiled value: literal text and getters, in order. ``names`` lists the variables
    it uses (checks that depend on where a variable stands read it)."""

    __slots__ = ("parts", "names", "source")

    def __init__(self, parts, names, source):
        self.parts, self.names, self.source = parts, names, source

    @property
    def constant(self):
        return not self.names

    def expand(self, ctx, escape=None):
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
            else:
                value = part(ctx)
                out.append(escape(value) if escape is not None else value)
        return "".join(out)


def compile_template(text, captures=False):
    """``text`` -> Template; ValueError naming an unknown variable. With ``captures``, ``$0``
    to ``$9`` are regex groups, returned as getters of ``ctx`` taking a match: the caller
    (rewrite) substitutes them itself."""
    parts, names, pos = [], [], 0
    for m in _REF.finditer(text):
        if m.start() > pos:
            parts.append(text[pos:m.start()])
        pos = m.end()
        braced, bare, digit = m.groups()
        if m.group(0) == "$$":
            parts.append("$")
            continue
        if digit is not None:
            if not captures:
                raise ValueError(f"${digit} at offset {m.start()}: regex captures exist only "
                                 f"in rewrite's path.replace (a literal $ is written $$)")
            parts.append(int(digit))
            names.append(m.group(0))
            continue
        name = braced or bare
        if name in _GETTERS:
            parts.append(_GETTERS[name])
        elif name.startswith("param_") and len(name) > 6:
            parts.append(_param(name[6:]))
        else:
            # The text is not quoted: a header value may be a credential with a "$" in it.
            # Nor is the name, unless it is a known one misspelt: a piece of a credential
            # is no near miss of "$remote_addr".
            near = difflib.get_close_matches(name, NAMES, n=1, cutoff=0.8)
            said = f"${name} (did you mean ${near[0]}?)" if near else "a variable"
            raise ValueError(f"unknown variable at offset {m.start()}: {said} (known: "
                             f"{', '.join('$' + n for n in NAMES)}, $param_NAME; a literal "
                             f"$ is written $$)")
        names.append(name)
    if pos < len(text):
        parts.append(text[pos:])
    # adjacent literals merged: the common all-literal value is one string
    merged = []
    for part in parts:
        if merged and isinstance(part, str) and isinstance(merged[-1], str):
            merged[-1] += part
        else:
            merged.append(part)
    return Template(tuple(merged), tuple(names), text)


# RFC 3986 reserved and unreserved characters, and "%" (a value's escapes stay as they are):
# everything else, CR, LF, space, controls, '\\', '"', '<', non-ASCII, is percent-encoded.
_URI_SAFE = "!#$&'()*+,/:;=?@[]-._~%"


def uri_escape(value):
    return _quote(value, _URI_SAFE)


def _quote(value, safe):
    # request values are bytes read as latin-1: escape those bytes, not their UTF-8 re-coding
    try:
        raw = value.encode("latin-1")
    except UnicodeEncodeError:
        raw = value.encode()
    return quote(raw, safe=safe)


# A path's characters (RFC 3986 pchar and "/"): "?" and "#" would end the path, "%" would
# make the text an escape, and the rest (space, controls, '"', '<', '\\', non-ASCII ...) cannot
# stand raw in a request line.
_PATH_SAFE = "!$&'()*+,/:;=@-._~"


def path_escape(value):
    """A value as literal text of a path (rewrite's path.replace): what a path cannot hold
    raw, and "%", is percent-encoded; "/" stays a separator, and the result is still checked
    as a path. Text already in a path's form ($path, $param_NAME) is not a value."""
    return _quote(value, _PATH_SAFE)
