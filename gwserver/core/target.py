"""The request target and Host, made canonical once: what the gateway routes on, what every
plugin sees and what it forwards are the same bytes, so it authorises exactly what the upstream
will serve (Envoy's ``normalize_path``/``merge_slashes``/``path_with_escaped_slashes_action``;
RFC 3986 6.2.2; nginx's ``merge_slashes`` and its Host rules).

Path rules, in order:

1. ``%XX`` must be two hex digits. Unreserved characters (``A-Z a-z 0-9 - . _ ~``) are decoded,
   and so are the other characters a path segment may hold as they are (``: @ ! $ & ' ( ) *
   , =``): nginx, Go, werkzeug and Spring decode them before routing, so
   ``/v1/things%3AbatchDelete`` is ``/v1/things:batchDelete`` to them, and must be to the
   router too, or a route on either spelling is bypassed by the other (RFC 3986 2.2 leaves
   that to the scheme; HTTP servers treat them alike). Not ``%2B``: S3 and PHP's urldecode
   read a ``+`` in a path as a space, so a key holding ``+`` must reach them escaped. Every
   other escape keeps its encoding with upper-case hex (``%2f`` -> ``%2F``, ``%2B``, ``%3F``,
   ``%23``, ``%25``, ``%3B``).
2. Once decoded, the bytes must be UTF-8 (overlong forms such as ``%C0%AE`` are not) and hold
   no NUL.
3. ``/`` and ``\\`` in any spelling (``%2F``, ``%5C``, a raw ``\\``): the ``escaped_slashes``
   action. ``reject`` (default) answers 400; ``decode`` turns them into ``/``; ``keep`` forwards
   them encoded, for upstreams that do not decode them before routing.
4. Repeated slashes are merged (``//admin`` -> ``/admin``) unless ``merge_slashes`` is off.
5. Dot segments (``.``, ``..``, ``%2e``, ``%2E.``, ``..;x``, ...) are refused: clients resolve
   them before sending (RFC 3986 5.2.4), so one that arrives is a probe, not a link.
6. ``;`` path parameters (``/admin;x/y``): ``path_parameters`` action. Tomcat, Jetty and Spring
   strip them before routing, so ``/admin;x/y`` is ``/admin/y`` to them and a catch-all to us:
   ``reject`` (default) answers 400, ``keep`` forwards them (for upstreams that do not strip).
   ``reject`` refuses an encoded one (``%3B``) too, as Spring's firewall does: a container
   that decodes before it strips reads it as a parameter.

Host rules: lower case, the port taken off, one trailing dot removed (``admin.example.`` is
``admin.example``, as nginx and DNS say), labels of letters, digits, ``-`` and ``_``, or an IP
literal; anything else is a 400.

Pure: raises ``BadRequest`` naming the problem; no sockets, no settings object.
"""
import re

from ..errors import BadRequest


_HEX = b"0123456789ABCDEFabcdef"
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Decoded wherever they are escaped (rule 1): unreserved, and the path characters that
# delimit nothing in a segment. Not ";" (rule 6), "/" or "\" (rule 3), "+" (a space to
# some), "%", "?" or "#".
_DECODED = _UNRESERVED | frozenset(b":@!$&'()*,=")
_SLASHES = frozenset(b"/\\")
_HOST_NAME = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-_.")
_IPV6 = frozenset(b"0123456789abcdef:.")


# What any rule below acts on: an escape, a backslash, a path parameter, a repeated slash, a
# dot after a slash. One compiled search (~0.2 us) instead of five substring scans (~0.7 us).
# Each alternative begins with one byte, so the search skips to the next of "%\;/" and
# tries the pattern there alone (a path's letters cost no attempt): ~1,300 instructions
# less a request than "[%\\;]|//|/\." tried at every byte.
_ACTED_ON = re.compile(rb"%|\\|;|/[/.]")


def normalise_path(path, escaped_slashes="reject", merge_slashes=True, path_parameters="reject"):
    """Return the canonical form of ``path`` (bytes, starting with ``/``, no query) as bytes."""
    if _ACTED_ON.search(path) is None:
        return path                 # the common path that no rule changes: no allocation
    out = bytearray()
    decoded = bytearray()          # every escape decoded: what a lenient upstream would see
    i, n = 0, len(path)
    while i < n:
        byte = path[i]
        if byte == 0x25:                                    # "%"
            pair = path[i + 1:i + 3]
            if len(pair) != 2 or pair[0] not in _HEX or pair[1] not in _HEX:
                raise BadRequest("path has a malformed percent-escape")
            value = int(pair, 16)
            decoded.append(value)
            i += 3
            if value in _DECODED:
                out.append(value)
            elif value in _SLASHES:
                out += _slash(value, escaped_slashes, b"%" + pair.upper())
            elif value == 0x3B and path_parameters == "reject":                # ";"
                raise BadRequest("path has an encoded ; (%3B) (server.path_parameters = "
                                 "\"reject\")")
            else:
                out += b"%" + pair.upper()
            continue
        decoded.append(byte)
        i += 1
        out += _slash(byte, escaped_slashes, b"\\") if byte == 0x5C else bytes((byte,))
    if 0 in decoded:
        raise BadRequest("path holds a NUL byte")
    try:
        bytes(decoded).decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("path is not UTF-8 once decoded (overlong or invalid bytes)") from None
    if merge_slashes:
        while b"//" in out:
            out = out.replace(b"//", b"/")
    if any(is_dot_segment(segment) for segment in bytes(out).split(b"/")):
        raise BadRequest("path has a dot segment (. or ..)")
    if b";" in out and path_parameters == "reject":
        raise BadRequest("path has ; parameters (server.path_parameters = \"reject\")")
    return bytes(out)


def is_dot_segment(segment):
    """Whether a canonical path segment (bytes) is "." or "..", with ;parameters after it in
    either spelling: "..;x" is ".." to an upstream that strips parameters, and "..%3Bx" to one
    that decodes first."""
    return segment.partition(b";")[0].partition(b"%3B")[0] in (b".", b"..")


def canonical_escape(escape):
    """One ``%XX`` as a canonical path holds it: the character, for one rule 1 decodes, else
    upper-case hex (an escaped ``/`` or ``\\`` too: ``escaped_slashes`` decides its fate)."""
    value = int(escape[1:], 16)
    return chr(value) if value in _DECODED else escape.upper()


def strip_path_prefix(path, prefix):
    """``path`` (canonical, str) less a route's ``strip_prefix``: absolute, never empty, or
    None when the cut would leave a dot segment first ("/svc../x" less "/svc"; a rewrite can
    make such a path, whose whole form is canonical). A prefix ending in "/" also takes the
    bare prefix ("/api" less "/api/" is "/"), as ``/api/*rest`` matches ``/api``."""
    end = len(prefix) if path.startswith(prefix) else _folded_prefix_end(path, prefix)
    if end is not None:
        rest = path[end:]
        if rest[:1] == "/":
            return rest
        if is_dot_segment(rest.partition("/")[0].encode("latin-1", "replace")):
            return None
        return "/" + rest
    if prefix[-1:] == "/" and (path == prefix[:-1] or
                               _folded_prefix_end(path, prefix[:-1]) == len(path)):
        return "/"
    return path


# "%2B" and "+" in a path segment are one character to nginx, Go, Spring and WSGI servers,
# which decode it before they route (only a query reads "+" as a space); so are "%3B" and ";"
# where path parameters are kept (path_parameters = "keep"; else both are a 400). A request
# path keeps the escape as sent (S3 and PHP's urldecode read a raw "+" in a path as a space),
# so the router (core.router) keys static segments with the escape read as its character: a
# route on "/files/a+b/*rest" took no "/files/a%2Bb/x", which the catch-all then served as
# /files/a+b/x, past the route's auth.
KEY_FOLDS = (("%2B", "+"), ("%3B", ";"))


def static_key(text):
    """A static segment as the router keys it: "%2B" read as "+", "%3B" as ";" (a canonical
    path spells an escape in upper-case hex alone: normalise_path)."""
    if "%" in text:
        for escape, char in KEY_FOLDS:
            text = text.replace(escape, char)
    return text


_FOLDED = {char: escape for escape, char in KEY_FOLDS}


def _folded_prefix_end(path, prefix):
    """Where ``prefix`` ends in ``path`` with "%2B" and "+", "%3B" and ";" read alike on both
    sides, as the router reads them (static_key): a route on "/a+b/*rest" takes
    "/a%2Bb/x", whose strip_prefix "/a+b" must cut it too. None when it is no prefix."""
    if "%" not in path and "%" not in prefix:
        return None                 # (the caller tried the plain spelling)
    i = 0
    for char in static_key(prefix):
        escape = _FOLDED.get(char)
        if escape is not None and path.startswith(escape, i):
            i += 3
        elif path[i:i + 1] == char:
            i += 1
        else:
            return None
    return i


def _slash(byte, action, kept):
    if action == "decode":
        return b"/"
    if action == "keep":
        return kept if kept[:1] == b"%" else b"%5C"
    raise BadRequest("path has an encoded or backslash path separator "
                     "(server.escaped_slashes = \"reject\")")


def normalise_host(value):
    """``Host`` (or an absolute-form authority) -> (name, port): name lower-case without the
    trailing dot, port as bytes (b"" when absent). Raises BadRequest on anything else."""
    value = value.lower()
    if value[:1] == b"[":
        close = value.find(b"]")
        name, rest = value[:close + 1], value[close + 1:]
        if close < 3 or not _IPV6.issuperset(name[1:-1]):
            raise BadRequest("invalid Host header (IPv6 literal)")
    else:
        name = value.partition(b":")[0]
        rest = value[len(name):]
        if name.endswith(b"."):
            name = name[:-1]
        if not name or not _HOST_NAME.issuperset(name) or b".." in name or \
                name[:1] in b".-" or name[-1:] == b".":
            raise BadRequest("invalid Host header")
    port = b""
    if rest:
        port = rest[1:]
        # (the length first: int() of over 4300 digits raises ValueError, no BadRequest,
        # and a trusted proxy's X-Forwarded-Host so spelt was a 400, not dropped)
        if rest[:1] != b":" or not port.isdigit() or len(port.lstrip(b"0")) > 5 or \
                not 0 < int(port.lstrip(b"0") or b"0") < 65536:
            raise BadRequest("invalid port in Host header")
    return name, port
