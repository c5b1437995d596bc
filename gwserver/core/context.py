"""What a plugin sees of a request, and what it may return.

Headers travel as lists of ``(name, value)`` bytes pairs, exactly as the client sent them (case
and order kept, repeats kept); ``header_map`` is a lower-case name -> last value view for lookups.
"""
import json
import re
from urllib.parse import parse_qsl

from ..errors import BadRequest, UpstreamError, UpstreamTimeout
from ..services import NONE as NO_SERVICES
from .cookies import one_cookie
from .headers import (CLIENT_NAMED_IN, CLIENT_NAMING, FIELD_NAME, FIELD_VALUE, NOT_FORWARDED,
                      is_field_name, is_field_value)


class Reply:
    """A response the gateway writes itself (a plugin ending the request, or an error).

    A JSON error reply has one shape whoever made it: ``error``, ``status``, ``message`` and
    ``request_id`` first, then anything the maker added (``with_error_shape``)."""

    __slots__ = ("status", "body", "headers", "payload")

    def __init__(self, status, body=b"", headers=()):
        self.status = status
        self.body = body
        self.headers = list(headers)
        self.payload = None

    @classmethod
    def json(cls, status, payload, headers=()):
        reply = cls(status, _json_body(payload),
                    [("Content-Type", "application/json")] + list(headers))
        reply.payload = payload
        return reply

    def with_error_shape(self, request_id):
        """Fill in what an error body lacks of the documented shape (status, message,
        request_id); other replies are left as they are."""
        payload = self.payload
        if payload is None or "error" not in payload or \
                ("status" in payload and "message" in payload and
                 ("request_id" in payload or not request_id)):
            return
        shaped = {"error": payload["error"], "status": self.status,
                  "message": payload.get("message") or str(payload["error"]).replace("_", " ")}
        if request_id:
            shaped["request_id"] = request_id
        shaped.update((k, v) for k, v in payload.items() if k not in shaped)
        self.payload, self.body = shaped, _json_body(shaped)


def _json_body(payload):
    return json.dumps(payload, separators=(",", ":")).encode() + b"\n"


def _enc(text):
    return text.encode("latin-1") if isinstance(text, str) else text


def _editable(name, verb):
    """(``name`` as bytes, lower-cased) for a plugin's edit; ValueError for a header the
    gateway writes itself (Host, framing, hop-by-hop, X-Forwarded-*, Via, X-Consumer-*)."""
    name = _enc(name)
    lower = name.lower()
    if lower in NOT_FORWARDED:
        raise ValueError(f"{name!r} is written by the gateway itself; a plugin cannot {verb} it")
    return name, lower


# Body pieces shorter than this are joined to a short piece before them (add_body): 512 bytes
# bound the memory a held piece costs beyond its bytes (~60: an object and a list slot) to ~12%.
SMALL_PIECE = 512

# Whole ``Name: value\r\n`` lines: a token name, a value of what a header may hold (no CR, LF,
# NUL or other control character but tab), no empty line.
_LINES = re.compile(f"(?:{FIELD_NAME}:{FIELD_VALUE}\r\n)+".encode("latin-1"))


def claim_text(value):
    """A verified JWT claim's value as route ``claims``, split's claim rules and limits keyed
    on a claim compare it: as the token's JSON spells it. Python's str() made a boolean
    True, which no condition written as the token says it ("true": email_verified = true)
    ever matched: such a route fell through to the next one for every token. An object,
    a list and a null (in a list) are compact JSON too: str() spelled them as Python does,
    "{'a': 1}", "None", which no upstream reading JSON parsed."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def set_header(headers, name, value):
    """Replace every ``name`` header in a list of (bytes, bytes) pairs by one with ``value``."""
    remove_header(headers, name)
    headers.append((_enc(name), _enc(value)))


def remove_header(headers, name):
    lower = _enc(name).lower()
    headers[:] = [(k, v) for k, v in headers if k.lower() != lower]


class RequestContext:
    """One request as it moves through the plugin chain to the proxy step.

    The HTTP/1.1 reader fills it while parsing (so a request is one object, not three); plugins
    read ``method``, ``path``, ``query``, ``host``, ``client_ip``, ``route``, ``params`` and the
    headers, may edit headers with ``set_header``/``add_header``/``remove_header`` (and read
    the client's own values with ``sent_header``), and keep their own state in ``vars``.
    """

    __slots__ = ("method", "path", "query", "headers", "header_map", "host", "host_header",
                 "services",    # gwserver.services.Services: stores and metrics for plugins
                 "client_ip",   # the client: the peer, or what a trusted proxy named
                 "peer_ip",     # the socket's peer, set when it is a trusted proxy
                 "scheme", "request_id", "route", "params", "_vars", "ended_by",
                 "error",       # the HTTPError that ended the request, if one did
                 "cut",         # its answer was cut after the head went out (error says why)
                 "trace",       # core.tracing.TraceContext, or None with tracing off
                 "upstream",    # an Upstream chosen by a plugin (split) instead of the route's
                 # filled by the reader, used by the proxy step
                 "url", "version", "keep_alive", "upgrade", "upgrade_tail", "head_done",
                 "complete", "body", "body_size", "content_length", "chunked", "host_count",
                 "connection_tokens", "upstream_seconds",
                 "repeated",    # names (lower case) of the header fields that came twice or more
                 "attempts",    # tries that reached an upstream (more than 1: retried)
                 "sent",        # a try went out to an upstream (answered or not)
                 "target",      # the url of the target last chosen (None: none was)
                 "started",     # time.monotonic() when the head was read
                 "upstream_host_header",    # Host for the upstream set by a plugin (rewrite)
                 "sent_values",     # name -> the value before its first edit (sent_header)
                 "consumer",    # the Consumer an auth plugin identified (core.consumers)
                 "chain",       # the route's chain joined with that consumer's plugins
                 "reader")      # the client connection the body comes from (read_body)

    def __init__(self, client_ip, scheme, services=NO_SERVICES, reader=None):
        self.services = services
        self.reader = reader
        self.client_ip = client_ip
        self.peer_ip = None
        # (set by check_target once the target is parsed: read_head tells by it whether
        # handle() can answer a gRPC-Web call's 400 by its route)
        self.request_id = None
        self.scheme = scheme
        self.url = b""
        self.headers = []
        self.header_map = {}
        self.host_count = 0
        self.connection_tokens = self.repeated = None
        self.head_done = self.complete = self.upgrade = False
        self.body = []
        self.body_size = 0
        self.content_length = None
        self.route = self.params = self._vars = self.ended_by = self.upstream_seconds = None
        self.error = self.trace = self.upstream = None
        self.cut = False
        self.upgrade_tail = b""
        self.attempts = 0
        self.sent = False
        self.target = None
        self.started = self.upstream_host_header = self.consumer = self.chain = None
        self.sent_values = None

    @property
    def vars(self):
        """Per-request values plugins hand on (docs/plugins.md lists the names in use)."""
        if self._vars is None:
            self._vars = {}
        return self._vars

    def var(self, name, default=None):
        """A value some plugin set in ``vars``, without making the dict for a request that
        has none (most requests)."""
        return default if self._vars is None else self._vars.get(name, default)

    def upstream_erred(self):
        """Did the request end in a connect error, a timeout or a broken upstream connection
        (an upstream failure with no answer to judge)?"""
        return isinstance(self.error, (UpstreamError, UpstreamTimeout)) and \
            not self.error.client_side

    def upstream_failed(self, status, failure_statuses):
        """Did the upstream fail this request? A connect error, a timeout or a broken
        connection always counts; an answer counts if its status is in ``failure_statuses``:
        the status the upstream gave, whatever a response plugin made of ``status`` for the
        client (rewrite's response_status: a 503 mapped to 429 or 200 counted as a success
        for the breaker, adaptive limits and a rollout's gates)."""
        return self.upstream_erred() or \
            self.var("upstream_status", status) in failure_statuses

    def value_of(self, kind, name):
        """A request value by kind: "header" (``name`` lower-case bytes or str), "cookie",
        "query", "claim" (a verified JWT claim), or "ip". None when absent. Used to key
        sticky choices (split, consistent hashing) and limits."""
        if kind == "header":
            if not isinstance(name, bytes):
                name = name.lower().encode("latin-1")
            if name in CLIENT_NAMED_IN:
                # The client the gateway found in it, as a limit keyed on it counts: behind
                # a trusted proxy the list's left part is the client's own, and each address
                # it prepended was a fresh split key or hash point (it chose its group, its
                # target); from anyone else the header is dropped (every client keyless).
                return self.client_ip
            raw = self.header_map.get(name)
            if raw is None and name in CLIENT_NAMING:
                return self.client_ip   # (dropped from all but a trusted proxy: CLIENT_NAMING)
            return raw.decode("latin-1") if raw is not None else None
        if kind == "cookie":
            # As upstreams read it (core.cookies): "%61bc" and '"abc"' are one sticky key
            # and match one rule, as they are one session upstream. A cookie upstreams would
            # read differently is no value: its request is weighed at random, matches no
            # rule (a limit, which must count it, refuses it instead).
            try:
                value = one_cookie(self.header_map.get(b"cookie"), name.encode("latin-1"))
            except BadRequest:
                return None
            return None if value is None else value.decode("latin-1")
        if kind == "query":
            for key, value in parse_qsl(self.query, keep_blank_values=True):
                if key == name:
                    return value
            return None
        if kind == "claim":
            value = ((self._vars or {}).get("claims") or {}).get(name)
            return None if value is None else claim_text(value)
        return self.client_ip

    def read_body(self):
        """Read the request's body now, as the gateway does after the access phases: whole
        up to server.request_buffer_size (a larger one still streams to the upstream; a gRPC
        call's is never held). For a plugin whose decision must not wait on the client's
        upload (breaker: a half-open probe). Raises the gateway's answer for a body too
        slow (408) or too large (413); nothing to do once the body is in."""
        if not self.complete and self.reader is not None:
            self.reader.buffer_body(self, self.route.max_body_size if self.route else 0)

    def add_body(self, piece):
        """One piece of the body as it came (bytes). A short piece is joined to a short one
        before it: a chunked body of 2-byte chunks was a bytes object and a list slot per
        piece, ~1.8 MB held for a 64 KiB buffered body (request_buffer_size promises 64 KiB);
        joined, a short piece is held only after one of SMALL_PIECE bytes or more, so at most
        two pieces a SMALL_PIECE bytes (HTTP/2 DATA frames of a byte or two alike). A joined
        piece is a bytearray: whoever takes the body joins its pieces."""
        body = self.body
        if len(piece) < SMALL_PIECE and body and len(body[-1]) < SMALL_PIECE:
            last = body[-1]
            if type(last) is not bytearray:
                # grown in place: joining bytes to bytes copied the piece so far each time
                body[-1] = last = bytearray(last)
            last += piece
        else:
            body.append(piece)
        self.body_size += len(piece)

    def take_body(self):
        chunks, self.body = self.body, []
        return chunks

    def header(self, name):
        value = self.header_map.get(_enc(name).lower())
        return None if value is None else value.decode("latin-1")

    def set_header(self, name, value):
        """Replace every copy of ``name`` by one with ``value``. header_map holds every name
        the request has, so a header it lacks is appended without a scan of the others.
        ValueError for a header the gateway writes itself (Host, framing, hop-by-hop,
        X-Forwarded-*, X-Consumer-*): the built-in plugins refuse such names in their
        configs; this stops a third-party plugin from sending a second Content-Length."""
        name, lower = _editable(name, "set")
        value = _enc(value)
        self._keep_sent(lower, self.header_map.get(lower))
        if lower in self.header_map:
            set_header(self.headers, name, value)
        else:
            self.headers.append((name, value))
        self.header_map[lower] = value

    def add_header(self, name, value):
        """Add one more copy of ``name``; ``header`` reads it from now on. Taken and refused
        as ``set_header`` takes and refuses them: a plugin's str pair was a 500 on every
        request, and an X-Consumer-ID went upstream as no auth plugin said."""
        name, lower = _editable(name, "set")
        value = _enc(value)
        self._keep_sent(lower, self.header_map.get(lower))
        self.headers.append((name, value))
        self.header_map[lower] = value

    def remove_header(self, name):
        """Drop every copy of ``name``. ValueError for a header the gateway writes itself, as
        ``set_header``: header_map's X-Forwarded-Proto, -For, -Host and Via are what the
        gateway writes upstream from a trusted proxy's, and a plugin that removed them sent
        the gateway's own ``http`` for the proxy's ``https``."""
        self.drop_header(_editable(name, "remove")[0])

    def drop_header(self, name):
        """``remove_header`` for any name: the core's own edits (the consumer's pair) and a
        built-in's header an operator named (key_auth's ``header``)."""
        lower = _enc(name).lower()
        # header_map holds every name the request has: one it lacks needs no scan
        value = self.header_map.pop(lower, None)
        if value is not None:
            self._keep_sent(lower, value)
            self.headers[:] = [(k, v) for k, v in self.headers if k.lower() != lower]

    def sent_header(self, name):
        """``header(name)`` as it came with the request, whatever an edit for the upstream
        (headers', rewrite's) made of it since: what the client takes (Accept-Encoding) or
        where it runs (Origin) is judged by what it said. An upstream that must not see a
        client's Origin, or is to send its answers plain for gzip to compress, had the
        route's own answers judged as if the client had sent none."""
        value = self.sent_value(_enc(name).lower())
        return None if value is None else value.decode("latin-1")

    def sent_value(self, lower):
        """``sent_header``'s bytes, by a lower-case bytes name (the access log's fields)."""
        sent = self.sent_values
        return sent[lower] if sent is not None and lower in sent else self.header_map.get(lower)

    def _keep_sent(self, lower, value):
        """Before ``lower``'s first edit: its value as it came (None: absent)."""
        if self.sent_values is None:
            self.sent_values = {}
        self.sent_values.setdefault(lower, value)


def parse_block(block):
    """(name, value) pairs of a header block (``Name: value\r\n`` lines, as read)."""
    return [tuple(line.split(b": ", 1)) if b": " in line else
            (line.partition(b":")[0], line.partition(b":")[2].strip())
            for line in block.split(b"\r\n")[:-1]]


class ResponseHead:
    """The upstream's status and headers, editable by plugins before the client sees them.

    Built from the upstream's header block as read (HTTP/1.1) or from pairs (HTTP/2). The
    block is split into pairs only when a plugin reads or edits ``headers``: a plugin that
    only adds headers (``append_header``, ``append_lines``; rate_limit's RateLimit-*) adds
    lines to the upstream's block as it came, which spares every answer a split and a
    rebuild.
    """

    __slots__ = ("status", "upstream_status", "_headers", "_block", "body_filters")

    def __init__(self, status, headers=None, block=None):
        self.status = status
        # what the upstream answered, whatever a plugin makes of ``status`` (rewrite's
        # response_status): a breaker judges the upstream, not the client's status
        self.upstream_status = status
        self._headers = headers
        self._block = block
        self.body_filters = None

    @property
    def headers(self):
        """The headers as a list of (name, value) pairs, edited in place by plugins."""
        if self._headers is None:
            self._headers = parse_block(self._block)
            self._block = None
        return self._headers

    @headers.setter
    def headers(self, pairs):
        self._headers, self._block = pairs, None

    def append_header(self, name, value):
        """Add a header after the upstream's (no scan, no split)."""
        name, value = _enc(name), _enc(value)
        if not is_field_name(name):
            raise ValueError(f"not a header name: {name!r}")
        if not is_field_value(value):
            raise ValueError(f"not a header value (a control character?): {value!r}")
        self._add(b"%s: %s\r\n" % (name, value))

    def append_lines(self, lines):
        """Add whole ``Name: value\r\n`` lines (bytes) after the upstream's headers; anything
        else (a bare CR or LF, a NUL, an empty line) raises ValueError: what would split or
        end the client's head (a header a client's value adds)."""
        if _LINES.fullmatch(lines) is None:
            raise ValueError(f"header lines must be whole 'Name: value\\r\\n' lines: {lines!r}")
        self._add(lines)

    def _add(self, lines):
        if self._headers is None:
            self._block += lines
        else:
            self._headers.extend(parse_block(lines))

    def block_as_read(self):
        """The header block while nobody has split it (bytes, which appending only extends),
        else None: what a check of a plugin's edits compares with, at no cost."""
        return self._block if self._headers is None else None

    def has_header_prefix(self, prefix):
        """Whether any header name starts with ``prefix`` (lower case bytes), cheaply: the
        block is searched as it is, not split."""
        if self._headers is not None:
            return any(k[:len(prefix)].lower() == prefix for k, _ in self._headers)
        block = self._block.lower()
        return block.startswith(prefix) or b"\n" + prefix in block

    def block(self):
        """The headers as ``Name: value\r\n`` lines, for the client's head."""
        if self._headers is None:
            return self._block
        return b"".join([b"%s: %s\r\n" % pair for pair in self._headers])

    def filter_body(self, transform):
        """Run the answer's body through ``transform(data, last) -> bytes`` (gzip). The
        gateway then drops Content-Length and frames the body itself (chunked, or to the
        close for HTTP/1.0); the body streams through it piece by piece, never whole."""
        if self.body_filters is None:
            self.body_filters = []
        self.body_filters.append(transform)

    def header(self, name):
        """The value of ``name`` (the last copy), or None."""
        lower = _enc(name).lower()
        for key, value in reversed(self.headers):
            if _enc(key).lower() == lower:
                return value.decode("latin-1") if isinstance(value, bytes) else value
        return None

    def header_list(self, name):
        """Every copy of a list-valued ``name`` (Vary, Cache-Control) joined with ", ", as
        RFC 9110 5.3 reads fields on several lines, or None. ``header`` gives the last copy
        alone: "Vary: Cookie" then "Vary: Origin" is one list of two names."""
        lower = _enc(name).lower()
        found = [value.decode("latin-1") if isinstance(value, bytes) else value
                 for key, value in self.headers if _enc(key).lower() == lower]
        return ", ".join(found) if found else None

    def set_header(self, name, value):
        set_header(self.headers, name, value)

    def remove_header(self, name):
        remove_header(self.headers, name)
