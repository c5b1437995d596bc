"""One access-log line from a list of fields (``[log] access_fields``). Pure: the request is
read through the attributes ``core.context.RequestContext`` has, the time comes from the
caller (the worker keeps a per-second clock text).

    fields = compile_fields(["time", "client", "method", "path", "query", "status"], "json")
    fields.line(req, status, sent, upstream, elapsed_ms, time_text)

json: one object per line, keys in the listed order; a field marked optional (``fault``,
``attempts``, ``consumer``) is left out when it has no value, the others are ``null``.
common: the Common Log Format head ``client - - [time] "METHOD target HTTP/v" status bytes``
(what log tools parse; target includes the query, less key_auth's key), then each listed
field it does not hold, strings quoted (nginx's combined adds referer and user agent this
way), ``-`` for none.

Header values are logged as sent, at most 256 characters (nginx logs whole headers; a 32 KiB
User-Agent should not make a 32 KiB log line).
"""
import json
import re
from dataclasses import dataclass
from typing import Callable

from .schema import Invalid, show

# The C encoder, \u-escaping every character past 0x7e: a header's bytes 0x80-0x9f are C1
# controls once written out as UTF-8 (0x9b: a terminal's CSI, 0x85: a line break to readers
# that split on Unicode's), and JSON leaves them as they are.
_escape = json.encoder.encode_basestring_ascii
HEADER_CHARS = 256


def _header(name):
    def get(req, status, sent, upstream):
        # As the client sent it (sent_header): a route's edit for its upstream (a Referer
        # removed, its own User-Agent set) logged that edit for every client.
        raw = req.sent_value(name)
        return None if raw is None else raw[:HEADER_CHARS].decode("latin-1")
    return get


def _upstream_status(req, status, sent, upstream):
    # the upstream's answer reached the client: its head was read (upstream_seconds) and
    # neither a plugin nor an error made the gateway write the status itself (an error that
    # cut the answer's body came after its head; status 0: the client left before any)
    if req.upstream_seconds is None or req.ended_by is not None or not status or \
            req.error is not None and not req.cut:
        return None
    return req.var("upstream_status", status)       # set when a plugin changed the status


def _version(req, status=None, sent=None, upstream=None):
    # An HTTP/2 request is proxied with HTTP/1.1's semantics (its version says 1.1); the
    # line says what the client spoke, or an HTTP/2 client's requests were logged HTTP/1.1
    if req.var("protocol") == "HTTP/2":
        return "2"
    return getattr(req, "version", None)


def _trace_id(req, status, sent, upstream):
    return req.trace.trace_id if req.trace is not None else None


def _consumer(req, status, sent, upstream):
    consumer = req.consumer
    return None if consumer is None else consumer.id


def _ms(seconds):
    return None if seconds is None else round(seconds * 1000.0, 3)


@dataclass(frozen=True)
class Spec:
    doc: str
    get: Callable = None        # (req, status, sent, upstream) -> str | int | float | None
    optional: bool = False      # json: left out when None


# Every field a line may hold; time and duration_ms are handed in by the caller.
FIELDS = {
    "time": Spec("when the answer ended, UTC (RFC 3339 in json)"),
    "request_id": Spec("X-Request-ID of the request",
                       lambda req, *_: getattr(req, "request_id", None)),
    "client": Spec("client address (the peer, or what a trusted proxy named)",
                   lambda req, *_: req.client_ip),
    "method": Spec("request method", lambda req, *_: req.method),
    "path": Spec("path as sent, without the query",
                 lambda req, *_: req.url.partition(b"?")[0].decode("latin-1")),
    "query": Spec("query string without the '?', as sent less what a plugin took out "
                  "(key_auth's key) (null: none)",
                  lambda req, *_: getattr(req, "query", "") if b"?" in req.url else None),
    "version": Spec("HTTP version: 1.1, 1.0, 2", _version),
    "host": Spec("Host header as sent", _header(b"host")),
    "user_agent": Spec("User-Agent header", _header(b"user-agent")),
    "referer": Spec("Referer header", _header(b"referer")),
    "route": Spec("id of the matched route (null: none)",
                  lambda req, *_: req.route.id if req.route is not None else None),
    "upstream": Spec("the target last tried, answered or failed",
                     lambda req, status, sent, upstream: upstream),
    "status": Spec("status sent to the client", lambda req, status, *_: status),
    "upstream_status": Spec("status the upstream answered, when the client got that answer "
                            "(null: the gateway answered itself)", _upstream_status),
    "bytes": Spec("body bytes sent to the client (a websocket: what its tunnel carried to it)",
                  lambda req, status, sent, upstream: sent),
    "request_bytes": Spec("request body bytes received (a websocket: what its tunnel carried "
                          "from the client)", lambda req, *_: req.body_size),
    "duration_ms": Spec("milliseconds from the request head to the end of the answer"),
    "upstream_ms": Spec("milliseconds from sending upstream to the answer's head (last try; "
                        "no wait for a pooled connection or a free HTTP/2 stream, nor for "
                        "a slow upload, is in it)",
                        lambda req, *_: _ms(req.upstream_seconds)),
    "trace_id": Spec("trace id (docs/operations.md, tracing)", _trace_id),
    "ended_by": Spec("the plugin that answered, if one did", lambda req, *_: req.ended_by),
    "error": Spec("why the gateway answered with an error itself, as its log says it (a 502's "
                  "upstream address and cause, which the client is not told), or why an "
                  "answer was cut after its head went out",
                  lambda req, *_: req.error.reason if req.error is not None else None,
                  optional=True),
    "fault": Spec("fault injected: delay, abort or both", lambda req, *_: req.var("fault"),
                  optional=True),
    "attempts": Spec("tries, when the request was retried",
                     lambda req, *_: req.attempts if req.attempts > 1 else None, optional=True),
    "consumer": Spec("id of the identified consumer", _consumer, optional=True),
    "protocol": Spec("the client's protocol when it is not HTTP/1.x (HTTP/2)",
                     lambda req, *_: req.var("protocol"), optional=True),
}

# the line gwserver wrote before the list was configurable
DEFAULT_FIELDS = ("time", "request_id", "client", "method", "path", "route", "upstream",
                  "status", "bytes", "duration_ms", "upstream_ms", "trace_id", "ended_by",
                  "error", "fault", "attempts", "consumer", "protocol")
# what the Common Log Format head already holds
COMMON_HEAD = frozenset(["time", "client", "method", "path", "query", "version", "status",
                         "bytes"])
DEFAULT_COMMON_FIELDS = ("route", "request_id", "duration_ms", "trace_id", "error")


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _text(value):
    """A JSON string of a text field. A plugin may have set it to anything (ctx.vars,
    ctx.client_ip): True or a dict is written as its str(), never bare (no JSON) or as an
    error that loses the line."""
    return _escape(value if type(value) is str else str(value))


def _value(value, none):
    """A field's value in a line: numbers as they are (floats to the microsecond), anything
    else quoted and escaped as text, ``none`` for a missing value (json: null, common: -)."""
    if value is None:
        return none
    if not _number(value):
        return _text(value)
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


class AccessFields:
    """A compiled field list: ``line()`` renders one request."""

    def __init__(self, names, fmt):
        unknown = [name for name in names if name not in FIELDS]
        if unknown:
            raise ValueError(f"unknown access-log field(s) {', '.join(unknown)} "
                             f"(known: {', '.join(FIELDS)})")
        self.names = tuple(names)
        self.format = fmt
        listed = self.names if fmt == "json" else \
            tuple(name for name in self.names if name not in COMMON_HEAD)
        self._parts = [(name, FIELDS[name]) for name in listed]
        # The shipped line is written on every request: one f-string, not a loop over
        # fields (a test holds the two to the same output).
        self.fast = fmt == "json" and self.names == DEFAULT_FIELDS

    def functions(self):
        """(capture, render) for a worker to call on each line: ``capture`` and ``render``,
        or the shipped line's own functions when ``fast``, called directly (the methods'
        call before theirs was ~1,000 instructions of every request's)."""
        return (capture_default, render_default) if self.fast else (self.capture, self.render)

    def values(self, req, status, sent, upstream, elapsed_ms):
        """(name, value, optional) for each listed field; ``time`` is None, filled in when
        the line is rendered."""
        out = []
        for name, spec in self._parts:
            if name == "time":
                value = None
            elif name == "duration_ms":
                value = round(elapsed_ms, 3)
            else:
                value = spec.get(req, status, sent, upstream)
            out.append((name, value, spec.optional))
        return out

    def capture(self, req, status, sent, upstream, elapsed_ms):
        """What a line needs of a finished request, taken now; ``render`` writes the line
        later (the worker renders its buffered lines in one batch, on the tick)."""
        if self.fast:
            return capture_default(req, status, sent, upstream, elapsed_ms)
        head = None if self.format == "json" else (
            req.client_ip, req.method, common_target(req), _version(req) or "1.1",
            status, sent)
        return head, self.values(req, status, sent, upstream, elapsed_ms)

    def render(self, captured, time_text):
        """The line (newline included) of what ``capture`` took. ``time_text``: RFC 3339 for
        json (``2024-05-01T12:00:00.123Z``), ``01/May/2024:12:00:00 +0000`` for common."""
        if self.fast:
            return render_default(captured, time_text)
        head, values = captured
        if self.format == "json":
            body = ",".join(f'"{name}":{_value(time_text if name == "time" else value, "null")}'
                            for name, value, optional in values
                            if not (optional and value is None))
            return "{" + body + "}\n"
        client_ip, method, target, version, status, sent = head
        # escaped as the target is: a plugin's finish phase may have set any of them (a
        # client's value, with a line feed that wrote a forged line)
        if version == "2":
            version = "2.0"         # as nginx and Apache write it, which log tools parse
        head = (f'{common_escape(str(client_ip))} - - [{time_text}] "{common_escape(str(method))} '
                f'{target} HTTP/{common_escape(str(version))}" {status} {sent}')
        return " ".join([head, *(_value(value, "-") if value is None or _number(value) else
                                 f'"{common_escape(str(value))}"' for _, value, _ in values)]) \
            + "\n"

    def line(self, req, status, sent, upstream, elapsed_ms, time_text):
        """One line, newline included: ``render(capture(...))``."""
        return self.render(self.capture(req, status, sent, upstream, elapsed_ms), time_text)


def common_target(req):
    """The request target of a Common Log Format line: the path as sent and the query as the
    upstream got it (never key_auth's key), escaped as every quoted field of the line is
    (``common_escape``)."""
    target = req.url.partition(b"?")[0].decode("latin-1")
    query = getattr(req, "query", None)
    if query:
        target += "?" + query
    return common_escape(target)


_COMMON_ESCAPED = re.compile(r'[\x00-\x1f"\\\x7f-\xff]')


def common_escape(text):
    """A quoted field of a Common Log Format line as nginx writes one: a quote, a backslash,
    control bytes and every byte over 0x7e as \\xHH, so that no value (a target, a client's
    X-Request-ID or User-Agent) can end its field and forge the ones after it, nor write a
    C1 control (0x9b, a terminal's CSI; 0x85, a line break to some readers) into the log.
    JSON's \\" is no escape to a parser that reads quoted fields nginx's way."""
    return _COMMON_ESCAPED.sub(lambda m: f"\\x{ord(m.group()):02X}", text)


_NO_VARS = {}       # read only: what capture_default reads of a request without vars


def capture_default(req, status, sent, upstream, elapsed_ms):
    """DEFAULT_FIELDS of a request as one tuple, ``render_default``'s input (time apart)."""
    route, trace, consumer = req.route, req.trace, req.consumer
    vars_ = req._vars or _NO_VARS
    return (getattr(req, "request_id", None), req.client_ip, req.method, req.url,
            route.id if route is not None else None, upstream, status, sent, elapsed_ms,
            req.upstream_seconds, trace.trace_id if trace is not None else None, req.ended_by,
            req.error, vars_.get("fault"), req.attempts,
            consumer.id if consumer is not None else None, vars_.get("protocol"))


def render_default(captured, time_text):
    """DEFAULT_FIELDS as json, written out (~3x cheaper than the generic loop)."""
    try:
        return _render_default(captured, time_text, _escape)
    except TypeError:
        # A plugin set a field to something that is no str (vars["fault"] = True, a dict):
        # _escape (C) refuses it, and the line was lost, a traceback each time. Written as
        # its text, quoted; the common case pays nothing for it.
        return _render_default(captured, time_text, _text)


def _render_default(captured, time_text, text):
    (request_id, client_ip, method, url, route_id, upstream, status, sent, elapsed_ms, seconds,
     trace_id, ended_by, error, fault, attempts, consumer_id, protocol) = captured
    extra = f',"error":{_escape(error.reason)}' if error is not None else ""
    if fault:
        extra += f',"fault":{text(fault)}'
    if attempts > 1:
        extra += f',"attempts":{attempts}'
    if consumer_id is not None:
        extra += f',"consumer":{text(consumer_id)}'
    if protocol:
        extra += f',"protocol":{text(protocol)}'
    # A trace id is 32 lower-case hex digits, whichever way it came (tracing.extract), and
    # response_line writes it into a header as it is: quoted, it is its own JSON string,
    # without the escape's call (~850 instructions of a request's ~270,000).
    trace_text = "null" if trace_id is None else f'"{trace_id}"'
    return (f'{{"time":"{time_text}","request_id":'
            f'{text(request_id) if request_id else "null"},'
            f'"client":{text(client_ip)},"method":{text(method)},'
            f'"path":{_escape(url.partition(b"?")[0].decode("latin-1"))},'
            f'"route":{text(route_id) if route_id is not None else "null"},'
            f'"upstream":{text(upstream) if upstream else "null"},'
            f'"status":{status},"bytes":{sent},"duration_ms":{elapsed_ms:.3f},'
            f'"upstream_ms":{"null" if seconds is None else f"{seconds * 1000.0:.3f}"},'
            f'"trace_id":{trace_text},'
            f'"ended_by":{text(ended_by) if ended_by else "null"}{extra}}}\n')


def compile_fields(names, fmt="json"):
    """``names``: the ``[log] access_fields`` list; empty means the format's default."""
    if not names:
        names = DEFAULT_FIELDS if fmt == "json" else DEFAULT_COMMON_FIELDS
    return AccessFields(names, fmt)


def field_name(value):
    """Schema check for one entry of ``[log] access_fields``."""
    if value not in FIELDS:
        raise Invalid(f"must be an access-log field ({', '.join(FIELDS)}), got {show(value)}")
    return value
