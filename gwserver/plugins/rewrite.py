"""``rewrite``: change the path, Host and headers the upstream gets, and the headers and status
the client gets back (APISIX's proxy-rewrite and response-rewrite, Kong's request- and
response-transformer).

    plugins.rewrite = {path = {match = "^/api/v1/(.*)$", replace = "/v2/$1"},
                       host = "orders.internal",
                       request_headers = {set = {"X-Client" = "$client_ip"}, remove = ["Cookie"]},
                       response_headers = {add = {"X-Served-By" = "gw"}},
                       response_status = {"404" = 410}}

The path: the first match of ``match`` (a Python regular expression, searched in the canonical
path) is replaced by ``replace``, where ``$1``..``$9`` are its groups and ``$variables`` work;
anchor it with ``^...$`` to replace the whole path. The result must itself be canonical,
by the server's path rules (``escaped_slashes``, ``merge_slashes``, ``path_parameters``: what
the gateway would take from a client), and start with ``/``: a replacement whose own text is
not (by the strictest rules) is a config error; a request whose captures or values would
make one (``/a/$1`` with ``$1`` = ``..``, or empty), or one the route's ``strip_prefix``
would cut into a dot segment, is refused with 400 (the request made it: never a 500 an
anonymous client could ask for) and an info line naming the route and both paths, so a
rewrite cannot re-open what docs/security.md closes. A ``$variable``'s value is literal
text, percent-encoded where a path cannot hold it raw and its ``%`` too
(``variables.path_escape``; ``$path`` and ``$param_NAME`` are path text already): a
client's X-Request-ID never writes spaces into the upstream's request line.

Order: the access phase sets ``ctx.path``; the proxy then builds the upstream's path from it
(``upstream_path``), removing the route's ``strip_prefix`` if the rewritten path starts with
it; the query is kept as it came.

``host`` sets the Host sent upstream, whatever the upstream's ``pass_host``; it does not
change which route matched, ``$host`` or X-Forwarded-Host (the client's Host).

Headers: ``remove``, then ``set`` (replace every copy), then ``add`` (one more copy). Values
take ``$variables``; a ``set`` whose value comes out empty removes the header (a client's own
copy never survives a value the gateway could not fill), an ``add`` adds nothing. A value that
would hold a control character (CR, LF, NUL, ...) or text outside latin-1 is refused with
400. Headers the gateway writes itself (Host, Content-Length, X-Forwarded-*, hop-by-hop ones)
cannot be edited here.

``response_status`` maps upstream statuses to others (not to or from 1xx, 204 or 304, whose
framing differs, nor to 205, which has no content). ``response_body`` replaces the body of
the upstream's answer (of every status, or those in ``response_body_statuses``; never a 204,
205 or 304, which have no content) with a fixed text with ``$variables``; the upstream's
body is read and dropped as it streams, never held, and what the upstream said of its body
goes with it (Content-Encoding, ETag, digests, Content-Range and Accept-Ranges: the text is
sent as written, whole: a 206 whose body is replaced is a 200, unless
``response_status`` maps 206). A HEAD gets the status and headers without the upstream's
Content-Length (the GET's body is the text, not that one).
"""
import logging
import re

from ..core.context import Reply
from ..core.headers import (NO_BODY_STATUSES, NOT_FORWARDED, RESPONSE_RESERVED, check_editable,
                            is_field_value)
from ..core.schema import (Field, Schema, backtrack_warnings, compile_pattern, header_name,
                           header_value, list_of, map_of, show, status_code, string)
from ..core.target import canonical_escape, normalise_path, strip_path_prefix
from ..core.throttledlog import throttled_log
from ..errors import BadRequest
from ..services import STRICT_PATHS
from .variables import compile_template, path_escape

log = logging.getLogger("gwserver.plugins")

NAME = "rewrite"
PRIORITY = 710          # after auth (its $consumer), limits and split (720); before breaker (700)

HOST_PORT = r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:[0-9]{1,5})?"

_PATH = Schema(
    Field("match", string(what="a regular expression"), doc="regular expression searched in "
          "the path"),
    Field("replace", header_value, doc="what replaces the first match ($1..$9, $variables)"),
)
_EDITS = Schema(
    Field("set", map_of(header_value, header_name), dict, "header name -> value ($variables) "
          "replacing every copy"),
    Field("add", map_of(header_value, header_name), dict, "header name -> value ($variables) "
          "added as one more copy"),
    Field("remove", list_of(header_name), list, "header names to drop"),
)


SCHEMA = Schema(
    Field("path", _PATH, None, "regex path rewrite"),
    Field("host", string(HOST_PORT, "a lower-case host[:port]"), None,
          "Host sent upstream, whatever the upstream's pass_host"),
    Field("request_headers", _EDITS, dict, "edits to the request before it goes upstream"),
    Field("response_headers", _EDITS, dict, "edits to the upstream's answer"),
    Field("response_status", map_of(status_code), dict, "upstream status (as a string key) -> "
          "the status the client gets"),
    Field("response_body", string(what="a body text", allow_empty=True), None,
          "replaces the upstream answer's body ($variables)"),
    Field("response_body_statuses", list_of(status_code), list,
          "upstream statuses whose body is replaced; empty: every status"),
)

# What an upstream says of the body response_body replaces: the text is sent as it is
# (a Content-Encoding: gzip left on it makes clients fail to decode the answer), and the
# validators and digests of the upstream's bytes do not hold for it. Nor does a range: a 206's
# "Content-Range: bytes 0-9/1000" on the text had a client or cache store it as those bytes
# of the file, and Accept-Ranges asked for more such ranges (each one the text again).
OF_THE_BODY = frozenset([b"content-encoding", b"etag", b"content-md5", b"digest",
                         b"content-digest", b"repr-digest", b"content-range", b"accept-ranges"])
PARTIAL = 206
# Answers response_body leaves without content: a 205 too (RFC 9110 15.3.6: the server MUST
# NOT generate content; a client resetting its form after one got the text as a body).
NO_CONTENT = NO_BODY_STATUSES | {205}


def prepare(conf):
    path = conf["path"]
    if path is not None:
        try:
            regex = compile_pattern(path["match"])
        except ValueError as exc:
            raise ValueError(f"path.match is not a regular expression: {exc}") from None
        _check_match_escapes(path["match"], regex)
        replace = compile_template(path["replace"], captures=True)
        _check_replace_escapes(replace)
        for part in replace.parts:
            if isinstance(part, int) and part > regex.groups:
                raise ValueError(f"path.replace uses ${part} but path.match has "
                                 f"{regex.groups} group(s)")
        _check_fixed_text(replace)
        path = (regex, replace, _escapes(replace))
    statuses = {}
    for key, to in conf["response_status"].items():
        if not key.isdigit() or not 100 <= int(key) <= 599:
            raise ValueError(f"response_status: {show(key)} is not a status")
        for status in (int(key), to):
            if status < 200 or status in NO_BODY_STATUSES:
                raise ValueError(f"response_status: {status} cannot be rewritten from or to "
                                 f"(1xx, 204 and 304 are framed differently)")
        if to == 205:
            # RFC 9110 15.3.6: a 205 has no content, and the one mapped to it had (or
            # response_body's text): a 205 with a body went to the client.
            raise ValueError(f"response_status: {key} cannot be rewritten to 205 (Reset "
                             f"Content has no content; the answer has one)")
        statuses[int(key)] = to
    return {"path": path, "host": conf["host"].encode("latin-1") if conf["host"] else None,
            "request": _edits(conf["request_headers"], NOT_FORWARDED, "request_headers"),
            "response": _edits(conf["response_headers"], RESPONSE_RESERVED,
                               "response_headers"),
            "status": statuses,
            "body": None if conf["response_body"] is None else
            compile_template(conf["response_body"]),
            "body_statuses": frozenset(conf["response_body_statuses"])}


def warnings(conf):
    """(the plugin hook) A path.match that can backtrack exponentially on a client's path."""
    if conf["path"] is None:
        return []
    return backtrack_warnings([("path.match", conf["path"]["match"])], "path", searched=True)


def phases(conf):
    """The response phase only when the answer has something to rewrite."""
    edits_answer = any(conf["response"]) or conf["status"] or conf["body"] is not None
    return {"access", "response"} if edits_answer else {"access"}


def _escapes(replace):
    """For each part of ``replace``: None for its own text, False for what goes in as path
    text (a capture, $path, $param_NAME), True for a value, literal text that
    variables.path_escape encodes. ``replace.names`` names every part that is not text, a
    capture's included, in order."""
    names = iter(replace.names)
    flags = []
    for part in replace.parts:
        if isinstance(part, str):
            flags.append(None)
            continue
        name = next(names)
        flags.append(not (isinstance(part, int) or name == "path" or
                          name.startswith("param_")))
    return tuple(flags)


def _misspelt_escapes(text, ignore_case=False):
    """(escape, how a canonical path spells it) for each %XX of ``text`` spelt otherwise."""
    for escape in re.findall(r"%[0-9A-Fa-f]{2}", text):
        canonical = canonical_escape(escape)
        if canonical != escape and not (ignore_case and canonical == escape.upper()):
            yield escape, canonical


def _outside_classes(pattern):
    """``pattern`` with each character class ([...]) left out: the "%2f" of "[^%2f]" is three
    characters a path may hold or not, not an escape."""
    out, i, end = [], 0, len(pattern)
    while i < end:
        char = pattern[i]
        if char == "\\":
            out.append(pattern[i:i + 2])
            i += 2
        elif char != "[":
            out.append(char)
            i += 1
        else:
            i += 1
            i += pattern.startswith("^", i)
            i += pattern.startswith("]", i)         # a ] first in a class is one of its members
            while i < end and pattern[i] != "]":
                i += 2 if pattern[i] == "\\" else 1
            i += 1
            out.append(" ")
    return "".join(out)


def _check_match_escapes(match, regex):
    """path.match is searched in the canonical path: an escape that path never holds would
    never match, and the rewrite would be left undone without a word."""
    for escape, canonical in _misspelt_escapes(_outside_classes(match),
                                               regex.flags & re.IGNORECASE):
        raise ValueError(f"path.match holds {escape}, which the canonical path it is "
                         f"searched in never does: write {show(re.escape(canonical))} "
                         f"(docs/security.md)")


def _check_replace_escapes(replace):
    """The replacement's own text must be canonical (_check_fixed_text): an escape written
    otherwise than a canonical path spells it is named, with the spelling to write."""
    for part in replace.parts:
        for escape, canonical in _misspelt_escapes(part) if isinstance(part, str) else ():
            raise ValueError(f"path.replace holds {escape}, which a canonical path spells "
                             f"{show(canonical)} (docs/security.md)")


def _check_fixed_text(replace):
    """Refuse at compile time a replacement that is not canonical whatever the captures:
    each capture and variable stands for one plain segment character."""
    sample = "".join(p if isinstance(p, str) else "x" for p in replace.parts)
    if "?" in sample or "#" in sample:
        raise ValueError("path.replace cannot hold ? or # (the query is kept as it came)")
    if not _canonical(sample):
        raise ValueError(f"path.replace {replace.source!r} does not make a canonical path "
                         f"(starts with /, no //, no . or .. segments, no encoded / or \\, "
                         f"no ;): docs/security.md")


def _canonical(path, rules=STRICT_PATHS):
    """Is ``path`` canonical under ``rules`` ([server]'s path rules; the strictest for the
    replacement's own text)? What the gateway would take from a client, unchanged."""
    if not path.startswith("/"):
        return False
    try:
        raw = path.encode("latin-1")
        return normalise_path(raw, *rules) == raw
    except (BadRequest, UnicodeEncodeError):
        return False


def _edits(part, reserved, where):
    part = {"set": {}, "add": {}, "remove": [], **part}     # an absent table is not filled
    check_editable(list(part["remove"]) + list(part["set"]) + list(part["add"]), reserved, where)
    for name, value in list(part["set"].items()) + list(part["add"].items()):
        try:
            compile_template(value)
        except ValueError as exc:
            raise ValueError(f"{where}: {name}: {exc}") from None
    return ([name.encode("latin-1") for name in part["remove"]],
            [(name.encode("latin-1"), compile_template(v)) for name, v in part["set"].items()],
            [(name.encode("latin-1"), compile_template(v)) for name, v in part["add"].items()])


def access(conf, ctx):
    if conf["path"] is not None:
        reply = _rewrite_path(conf["path"], ctx)
        if reply is not None:
            return reply
    if conf["host"] is not None:
        ctx.upstream_host_header = conf["host"]
    remove, to_set, to_add = conf["request"]
    for name in remove:
        ctx.remove_header(name)
    for name, template in to_set:
        value = template.expand(ctx)
        if not is_field_value(value):
            return _bad_value(ctx, name)
        if value:
            ctx.set_header(name, value)
        else:
            ctx.remove_header(name)
    for name, template in to_add:
        value = template.expand(ctx)
        if not is_field_value(value):
            return _bad_value(ctx, name)
        if value:
            ctx.add_header(name, value)
    return None


def _rewrite_path(path_conf, ctx):
    regex, replace, escaped = path_conf
    m = regex.search(ctx.path)
    if m is None:
        return None
    new = _expand(replace, escaped, m, ctx)
    strip = ctx.route.strip_prefix if ctx.route else None
    if _canonical(new, ctx.services.path_rules) and not ("?" in new or "#" in new) and \
            not (strip and strip_path_prefix(new, strip) is None):
        ctx.path = new
        return None
    # The template's own text makes a canonical path (prepare checked it): what spoils this
    # one came with the request (its path's captures, $path, a header's value), so the
    # answer is the client's error, never a 500 an anonymous client could ask for.
    route_id = ctx.route.id if ctx.route else None
    throttled_log.log(log, logging.INFO, ("rewrite refused", route_id),
                      "route %s: rewrite made %r from %r, which is not a canonical path; "
                      "refused (400)", route_id, new[:200], ctx.path[:200])
    return Reply.json(400, {"error": "bad_request",
                            "message": "this request's path cannot be rewritten to a "
                                       "canonical one"})


def _expand(replace, escaped, m, ctx):
    pieces = []
    for part, escape in zip(replace.parts, escaped):
        if escape is None:
            pieces.append(part)
        elif isinstance(part, int):
            pieces.append(m.group(part) or "")
        elif escape:
            pieces.append(path_escape(part(ctx)))
        else:
            pieces.append(part(ctx))
    return m.string[:m.start()] + "".join(pieces) + m.string[m.end():]


def _bad_value(ctx, name):
    return Reply.json(400, {"error": "invalid_header_value",
                            "message": f"{name.decode('latin-1')} would hold a control character "
                                       f"or text outside latin-1"})


def response(conf, ctx, head):
    body = conf["body"]
    replaced = body is not None and head.status not in NO_CONTENT and \
        (not conf["body_statuses"] or head.status in conf["body_statuses"])
    if replaced:                # before the config's own edits, which may set one of these
        head.headers = [(k, v) for k, v in head.headers if k.lower() not in OF_THE_BODY]
    remove, to_set, to_add = conf["response"]
    for name in remove:
        head.remove_header(name)
    for name, template in to_set:
        value = template.expand(ctx)
        if value and is_field_value(value):
            head.set_header(name, value)
        else:
            head.remove_header(name)
    for name, template in to_add:
        value = template.expand(ctx)
        if value and is_field_value(value):
            head.headers.append((name, value.encode("latin-1")))
    if replaced:
        if ctx.method == "HEAD":
            head.remove_header("Content-Length")    # the upstream's body's, not the text's
        else:
            text = body.expand(ctx).encode("utf-8")
            head.filter_body(lambda data, last: text if last else b"")
    status = conf["status"].get(head.status)
    if status is not None:
        head.status = status
    elif replaced and head.status == PARTIAL:
        head.status = 200               # the text is the whole answer, not a range of one
