"""``redirect``: answer with a redirect instead of proxying: plain HTTP to HTTPS, or a fixed URI
with `$variables` (APISIX's redirect, nginx's ``return 301``).

    plugins.redirect = {http_to_https = true, https_port = 8443}
    plugins.redirect = {uri = "https://docs.example.com/v2$path", status = 308,
                        append_query = true}

http_to_https answers requests that came over plain HTTP with ``https://HOST[:https_port]``
and the same path and query; a request that came over TLS, or through a trusted proxy that
says ``X-Forwarded-Proto: https``, goes on. HOST is ``host`` when set, else the Host the route
matched.

A Location is never one a client can point elsewhere: variables are percent-encoded
(CR and LF cannot split the header), the URI's authority is fixed text or ``$host`` alone
(checked at compile time: no other variable may stand where it could extend the authority,
as in ``https://a.example$param_x`` with x = ``@evil.example``), and a relative URI that would
start with ``//`` (a scheme-relative URI: another host) is collapsed to one ``/``. ``$host``
is the Host the route matched: on a route without ``hosts`` that is any name a client sends,
so use ``hosts`` on the route, or ``host`` here. A request that names no host (HTTP/1.0
without Host) gets 400 ``no_host`` where the Location would need one.

A CORS preflight on a route with ``cors`` goes on to it (a browser does not follow a
redirect of a preflight); the request it announces is redirected, with cors' headers.
"""
import logging
import re
from urllib.parse import urlsplit

from ..core.context import Reply
from ..core.schema import Field, Schema, boolean, header_value, integer, one_of, string
from ..core.throttledlog import throttled_log
from .variables import compile_template, uri_escape

log = logging.getLogger("gwserver.plugins")

NAME = "redirect"
PRIORITY = 1150         # after ip_restriction (1200): a refused address learns nothing; before
                        # cors (1120) and auth: credentials should not be asked for over http

HOST_PORT = r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:[0-9]{1,5})?"

SCHEMA = Schema(
    Field("http_to_https", boolean, False, "redirect plain-HTTP requests to https://, same "
          "path and query"),
    Field("https_port", integer(1, 65535, "a port"), 443, "the HTTPS port named in the "
          "Location (left out when 443)"),
    Field("host", string(HOST_PORT, "a lower-case host name"), None,
          "http_to_https: the host named in the Location; unset: the Host the route matched"),
    Field("uri", header_value, None, "redirect every request to this URI ($variables: "
          "docs/plugins.md); starts with /, $path, http:// or https://"),
    Field("append_query", boolean, False, "uri: add the request's query string"),
    Field("status", one_of(301, 302, 307, 308), 301, "the redirect status (307/308 keep the "
          "method and body)"),
)


def prepare(conf):
    if conf["http_to_https"] == (conf["uri"] is not None):
        raise ValueError("set exactly one of http_to_https = true and uri")
    if conf["uri"] is None:
        if conf["host"] and ":" in conf["host"] and conf["https_port"] != 443:
            # "https://a.example:8443:8443/": no client could follow it
            raise ValueError(f"host {conf['host']!r} names a port and https_port "
                             f"{conf['https_port']} another: set one of them")
        return {**conf, "template": None, "authority": None}
    template = compile_template(conf["uri"])
    return {**conf, "template": template, "authority": _check_uri(template)}


def _check_uri(template):
    """The fixed authority of an absolute template ("$host" standing for the matched host),
    None for a relative one; ValueError if a variable could move the URI to another host."""
    names = iter(template.names)
    shape = [(part, None) if isinstance(part, str) else ("\0", next(names))
             for part in template.parts]
    first = shape[0][0] if shape else ""
    if first == "\0":
        if shape[0][1] != "path":
            raise ValueError("uri must start with /, $path, http:// or https://")
        return None                 # $path starts with "/"; access() keeps it to one
    if first.startswith("/"):
        if first.startswith(("//", "/\\")):
            raise ValueError("uri must not start with // (a scheme-relative URI names a host)")
        return None
    scheme, sep, rest = first.partition("://")
    if scheme not in ("http", "https") or not sep:
        raise ValueError("uri must start with /, $path, http:// or https://")
    # The authority runs to the first literal "/", "?" or "#", or to $path (which starts with
    # "/"). Every variable inside it must be $host: any other value could add "@evil" or
    # ".evil" to it.
    authority = ""
    for text, name in [(rest, None)] + shape[1:]:
        if name == "path":
            break
        if name is not None:
            if name != "host":
                raise ValueError(f"uri: ${name} stands where it would be read as part of the "
                                 f"host; only $host may, and other variables need a / "
                                 f"before them")
            authority += "$host"
            continue
        cut = next((n for n, c in enumerate(text) if c in "/?#"), None)
        authority += text if cut is None else text[:cut]
        if cut is not None:
            break
    if not authority or any(c in authority for c in "@\\%") or \
            authority.count("$host") > 1 or \
            not re.fullmatch(r"(\$host|[a-z0-9.-]+|\[[0-9a-f:.]+\])(:[0-9]{1,5})?",
                             authority):
        raise ValueError(f"uri: the host part {authority!r} must be a lower-case host name "
                         f"or $host, with an optional :port")
    return authority


def access(conf, ctx):
    if ctx.method == "OPTIONS" and _preflight_for_cors(ctx):
        return None
    if conf["http_to_https"]:
        if ctx.scheme == "https" or (ctx.peer_ip is not None and
                                     ctx.header("x-forwarded-proto") == "https"):
            return None
        host = conf["host"] or ctx.host
        if not host:
            return _no_host()
        port = "" if conf["https_port"] == 443 else f":{conf['https_port']}"
        location = f"https://{host}{port}{uri_escape(ctx.path)}"
        query = ctx.query
        if query and conf["host"] and conf["host"].split(":")[0] != ctx.host:
            # Another host than the one asked: it gets no credential the route takes out of
            # the query (key_auth's key), which the same host over TLS would take in.
            query = _public_query(ctx)
        if query:
            location += "?" + uri_escape(query)
        return _redirect(conf, location)
    authority = conf["authority"]
    if authority is not None and "$host" in authority and not ctx.host:
        # An HTTP/1.0 request may name no host: the client's error, as for http_to_https,
        # not a 500 (and an ERROR line blaming the route's uri) any client could ask for
        return _no_host()
    if ctx.query and (conf["append_query"] or "query" in conf["template"].names):
        # The request ends here: what the Location may carry of its query is what no plugin
        # of the route keeps in (key_auth's key, which runs after this: the client, and
        # whatever the Location points at, would get it)
        ctx.query = _public_query(ctx)
    location = conf["template"].expand(ctx, uri_escape)
    if conf["append_query"] and ctx.query:
        location += ("&" if "?" in location else "?") + uri_escape(ctx.query)
    if authority is None:
        # a relative URI: one leading "/", never "//host" (uri_escape already turned "\" into
        # %5C, which browsers do not read as a slash)
        location = "/" + location.lstrip("/")
    else:
        expected = authority.replace("$host", ctx.host or "")
        if urlsplit(location).netloc != expected:
            route_id = ctx.route.id if ctx.route else None
            throttled_log.log(log, logging.ERROR, ("redirect refused", route_id),
                              "route %s: redirect uri %r made %r, whose host is not %r; "
                              "refused", route_id, conf["uri"], location[:200], expected)
            return Reply.json(500, {"error": "redirect_failed",
                                    "message": "the redirect target could not be built"})
    return _redirect(conf, location)


def _public_query(ctx):
    chain = ctx.chain or getattr(ctx.route, "chain", None)
    return ctx.query if chain is None else chain.public_query(ctx.query)


def _preflight_for_cors(ctx):
    """A CORS preflight on a route whose cors answers it: a browser never follows a redirect
    of one (the fetch fails), and it carries no credentials. The request it announces gets
    the redirect, with cors' headers (its reply hook), which a browser then follows."""
    return ctx.header("access-control-request-method") is not None and \
        ctx.header("origin") is not None and ctx.route is not None and \
        ctx.route.chain is not None and ctx.route.chain.answers_preflight


def _no_host():
    return Reply.json(400, {"error": "no_host", "message": "the request names no host to "
                            "redirect to (send Host)"})


def _redirect(conf, location):
    return Reply(conf["status"], b"", [("Location", location)])
