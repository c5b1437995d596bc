"""Trace context: read W3C ``traceparent``/``tracestate`` and B3 (single and multi header),
start a trace when none arrives, and write the context the upstream should see, with the
gateway's own span as the parent. Pure: headers in, headers out, randomness injected.

W3C Trace Context (https://www.w3.org/TR/trace-context/):
    traceparent: 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>   (01 = sampled)
B3 (https://github.com/openzipkin/b3-propagation):
    b3: <trace id 16|32 hex>-<span id 16 hex>[-<sampled 0|1|d>[-<parent span id>]]
    X-B3-TraceId, X-B3-SpanId, X-B3-ParentSpanId, X-B3-Sampled, X-B3-Flags

Malformed values are ignored (a new trace starts), never an error: tracing must not fail a
request. Precedence when several arrive: traceparent, then b3, then X-B3-*. The ids come from
the first valid one; every form that arrived is sent on, carrying those ids (a client that
sends W3C and B3 has B3-only services behind it: Envoy and the OpenTelemetry composite
propagator do the same).

The trace id goes back to the client in one response header (``[tracing] response_header``):
``response_line(trace, name)`` is that header, ready for a head being assembled.
"""
import re

_HEX32 = re.compile(rb"[0-9a-f]{32}")
_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_B3_ID = re.compile(rb"[0-9a-f]{16}|[0-9a-f]{32}")
_ZERO_TRACE, _ZERO_SPAN = b"0" * 32, b"0" * 16
# A tracestate member's value (W3C Trace Context 3.3.1.3.2): 1 to 256 printable ASCII
# characters, no "," (which ends the member) or "=", not ending in a space.
_TRACESTATE_VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")


def is_tracestate_value(value):
    """Whether ``value`` (a plugin's ctx.vars["fault"], anything) may go upstream as a
    tracestate member's value: CR LF there wrote header lines of its own, a "," members of
    its own (another vendor's state, forged)."""
    return type(value) is str and _TRACESTATE_VALUE.fullmatch(value) is not None

# request headers the gateway replaces with its own context (lower case)
REPLACED_HEADERS = frozenset([b"traceparent", b"tracestate", b"b3", b"x-b3-traceid",
                              b"x-b3-spanid", b"x-b3-parentspanid", b"x-b3-sampled",
                              b"x-b3-flags"])


def trace_ids(randbytes, block=256):
    """-> a function that returns a new (trace id, span id) per call, 32 and 16 random hex
    digits cut from a block drawn every ``block`` calls: one ``randbytes`` call per block
    instead of one per request. Make it in the process that uses it (a worker, after fork),
    or workers would hand out the same ids."""
    def ids():
        while True:
            hexed = randbytes(24 * block).hex()
            for at in range(0, 48 * block, 48):
                yield hexed[at:at + 32], hexed[at + 32:at + 48]
    return ids().__next__


class TraceContext:
    """The trace a request belongs to and the gateway's span in it."""

    __slots__ = ("trace_id", "parent_id", "span_id", "sampled", "tracestate", "b3")

    def __init__(self, trace_id, parent_id, span_id, sampled, tracestate=None, b3=None):
        self.trace_id = trace_id        # 32 hex, as str
        self.parent_id = parent_id      # the caller's span id, or None: the gateway started it
        self.span_id = span_id          # the gateway's span, the upstream's parent
        self.sampled = sampled
        self.tracestate = tracestate    # bytes, passed on
        self.b3 = b3                    # None, "single" or "multi": the B3 form that came in

    def upstream_headers(self, emit_b3=False, extra_state=None):
        """[(name, value)] for the upstream: traceparent always, tracestate if any (with
        ``extra_state`` ("key=value") first, as the spec asks of a vendor that changes it),
        and B3 in the form that came in (or single when ``emit_b3`` and none came in)."""
        flags = "01" if self.sampled else "00"
        out = [(b"traceparent", f"00-{self.trace_id}-{self.span_id}-{flags}".encode())]
        if self.parent_id is None and not extra_state and not emit_b3:
            return out          # a trace we started: no state or B3 came in to pass on
        state = self.tracestate
        if extra_state:
            entry = extra_state.encode()
            key = entry.partition(b"=")[0]
            kept = [m for m in (state or b"").split(b",")
                    if m.strip() and m.strip().partition(b"=")[0] != key]
            state = b",".join([entry] + [m.strip() for m in kept][:31])
        if state:
            out.append((b"tracestate", state))
        b3 = self.b3 or ("single" if emit_b3 else None)
        sampled = b"1" if self.sampled else b"0"
        if b3 == "single":
            value = f"{self.trace_id}-{self.span_id}".encode() + b"-" + sampled
            if self.parent_id:
                value += b"-" + self.parent_id.encode()
            out.append((b"b3", value))
        elif b3 == "multi":
            out += [(b"X-B3-TraceId", self.trace_id.encode()),
                    (b"X-B3-SpanId", self.span_id.encode()),
                    (b"X-B3-Sampled", sampled)]
            if self.parent_id:
                out.append((b"X-B3-ParentSpanId", self.parent_id.encode()))
        return out


def extract(headers, new_ids):
    """headers: lower-case bytes name -> bytes value. ``new_ids()`` -> (a new trace id, the
    gateway's span id), random hex (``trace_ids``)."""
    trace_id, span_id = new_ids()
    if not (b"traceparent" in headers or b"b3" in headers or b"x-b3-traceid" in headers):
        return TraceContext(trace_id, None, span_id, True)
    found = _from_traceparent(headers) or _from_b3_single(headers) or _from_b3_multi(headers)
    if found is None:
        return TraceContext(trace_id, None, span_id, True)
    trace_id, parent_id, sampled, b3 = found
    state = None
    if b3 is None:                      # W3C won: its tracestate, and B3 if that came too
        state = headers.get(b"tracestate")
        if state is not None and len(state) > 512:
            state = None                # W3C: a vendor may drop an oversized tracestate
        elif state is not None and b"gwfault=" in state:
            # The fault plugin's key, which only this gateway writes: a client's would make
            # a real failure look injected.
            state = b",".join(m.strip() for m in state.split(b",")
                              if m.strip().partition(b"=")[0] != b"gwfault") or None
        b3 = "single" if b"b3" in headers else "multi" if b"x-b3-traceid" in headers else None
    return TraceContext(trace_id, parent_id, span_id, sampled, state, b3)


def response_line(trace, name):
    """``Name: <trace id>\r\n`` for the client's answer, or b"" when there is no trace or
    ``name`` (bytes, from ``[tracing] response_header``) is empty."""
    if trace is None or not name:
        return b""
    return name + b": " + trace.trace_id.encode("ascii") + b"\r\n"


def _from_traceparent(headers):
    value = headers.get(b"traceparent")
    if value is None:
        return None
    match = _TRACEPARENT.fullmatch(value.strip().lower()[:55])
    if match is None:
        return None
    version, trace_id, parent_id, flags = match.groups()
    if version == b"ff" or trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    if version == b"00" and len(value.strip()) != 55:
        return None
    return trace_id.decode(), parent_id.decode(), bool(int(flags, 16) & 1), None


def _b3_trace_id(value):
    if not _B3_ID.fullmatch(value) or value.strip(b"0") == b"":
        return None
    return value.decode().rjust(32, "0")       # 64-bit B3 ids become 128-bit W3C ids


def _from_b3_single(headers):
    value = headers.get(b"b3")
    if value is None:
        return None
    parts = value.strip().lower().split(b"-")
    if len(parts) < 2 or len(parts) > 4:
        return None                             # "b3: 0" alone (deny) carries no ids
    trace_id = _b3_trace_id(parts[0])
    if trace_id is None or len(parts[1]) != 16 or not _B3_ID.fullmatch(parts[1]):
        return None
    sampled = parts[2] in (b"1", b"d") if len(parts) > 2 else True
    return trace_id, parts[1].decode(), sampled, "single"


def _from_b3_multi(headers):
    trace = headers.get(b"x-b3-traceid")
    span = headers.get(b"x-b3-spanid")
    if trace is None or span is None:
        return None
    trace_id = _b3_trace_id(trace.strip().lower())
    span = span.strip().lower()
    if trace_id is None or len(span) != 16 or not _B3_ID.fullmatch(span):
        return None
    sampled = headers.get(b"x-b3-sampled", b"1").strip() in (b"1", b"true") or \
        headers.get(b"x-b3-flags", b"").strip() == b"1"
    return trace_id, span.decode(), sampled, "multi"
