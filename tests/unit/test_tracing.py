"""Trace context: what comes in -> what the upstream gets, as tables."""
import itertools

import pytest

from gwserver.core.tracing import extract, response_line

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def fixed_ids():
    counter = itertools.count(0xabc)
    return lambda: (lambda ids: (ids[:32], ids[32:]))(f"{next(counter):048x}")


def upstream(headers, emit_b3=False, extra=None):
    ctx = extract({k.lower().encode(): v.encode() for k, v in headers.items()}, fixed_ids())
    return ctx, {k.decode().lower(): v.decode()
                 for k, v in ctx.upstream_headers(emit_b3, extra)}


def test_w3c_is_continued_with_the_gateway_span_as_parent():
    ctx, out = upstream({"traceparent": f"00-{TRACE}-{PARENT}-01", "tracestate": "a=1,b=2"})
    assert (ctx.trace_id, ctx.parent_id, ctx.sampled) == (TRACE, PARENT, True)
    assert out == {"traceparent": f"00-{TRACE}-{ctx.span_id}-01", "tracestate": "a=1,b=2"}
    assert ctx.span_id == "0000000000000abc" != PARENT


@pytest.mark.parametrize("value", [
    f"00-{TRACE}-{PARENT}-1",                   # flags too short
    f"00-{'0' * 32}-{PARENT}-01",                # all-zero trace id
    f"00-{TRACE}-{'0' * 16}-01",                 # all-zero parent
    f"ff-{TRACE}-{PARENT}-01",                   # version ff is invalid
    f"00-{TRACE.upper()}X-{PARENT}-01",
    f"00-{TRACE}-{PARENT}-01-extra",             # version 00 has exactly four fields
    "garbage",
])
def test_malformed_traceparent_starts_a_new_trace(value):
    ctx, out = upstream({"traceparent": value})
    assert ctx.parent_id is None and ctx.trace_id != TRACE      # the gateway started it
    assert out["traceparent"] == f"00-{ctx.trace_id}-{ctx.span_id}-01"


def test_unsampled_is_kept_unsampled():
    ctx, out = upstream({"traceparent": f"00-{TRACE}-{PARENT}-00"})
    assert out["traceparent"].endswith("-00") and not ctx.sampled


def test_future_version_is_read_by_its_first_four_fields():
    ctx, _ = upstream({"traceparent": f"01-{TRACE}-{PARENT}-01-whatever"})
    assert ctx.trace_id == TRACE and ctx.parent_id == PARENT


@pytest.mark.parametrize("b3, trace, sampled", [
    (f"{TRACE}-{PARENT}-1", TRACE, True),
    (f"{TRACE}-{PARENT}", TRACE, True),                     # sampling deferred
    (f"{TRACE}-{PARENT}-0", TRACE, False),
    (f"{TRACE}-{PARENT}-d-{'1' * 16}", TRACE, True),        # debug, with a parent
    (f"a3ce929d0e0e4736-{PARENT}-1", "0" * 16 + "a3ce929d0e0e4736", True),   # 64-bit id
])
def test_b3_single_is_continued_in_b3_single(b3, trace, sampled):
    ctx, out = upstream({"b3": b3})
    assert (ctx.trace_id, ctx.parent_id, ctx.sampled) == (trace, PARENT, sampled)
    assert out["b3"] == f"{trace}-{ctx.span_id}-{int(sampled)}-{PARENT}"
    assert out["traceparent"] == f"00-{trace}-{ctx.span_id}-0{int(sampled)}"


def test_b3_multi_is_continued_in_b3_multi():
    ctx, out = upstream({"X-B3-TraceId": TRACE, "X-B3-SpanId": PARENT, "X-B3-Sampled": "1"})
    assert out["x-b3-traceid"] == TRACE and out["x-b3-spanid"] == ctx.span_id
    assert out["x-b3-parentspanid"] == PARENT and out["x-b3-sampled"] == "1"


@pytest.mark.parametrize("headers", [{"b3": "0"}, {"b3": "xyz-abc"},
                                     {"X-B3-TraceId": TRACE}, {"X-B3-SpanId": PARENT}])
def test_incomplete_b3_starts_a_new_trace(headers):
    assert upstream(headers)[0].parent_id is None       # a new trace, the gateway's


def test_a_started_trace_may_emit_b3():
    ctx, out = upstream({}, emit_b3=True)
    assert out["b3"] == f"{ctx.trace_id}-{ctx.span_id}-1"


def test_extra_tracestate_entry_goes_first_and_replaces_its_key():
    _, out = upstream({"traceparent": f"00-{TRACE}-{PARENT}-01",
                       "tracestate": "gwfault=old, a=1"}, extra="gwfault=abort")
    assert out["tracestate"] == "gwfault=abort,a=1"


@pytest.mark.parametrize("state, passed", [("gwfault=abort, a=1", "a=1"),
                                           ("a=1,gwfault=delay ,b=2", "a=1,b=2"),
                                           ("gwfault=abort", None), ("xgwfault=1", "xgwfault=1")])
def test_a_clients_gwfault_entry_is_dropped(state, passed):
    """Only the fault plugin writes gwfault=: a client's would make a real failure look
    injected (an attack pass found it passed through)."""
    _, out = upstream({"traceparent": f"00-{TRACE}-{PARENT}-01", "tracestate": state})
    assert out.get("tracestate") == passed


OTHER = "1" * 32


@pytest.mark.parametrize("b3_in, b3_out", [
    ({"b3": f"{OTHER}-{'2' * 16}-1"}, {"b3": f"{TRACE}-{{span}}-1-{PARENT}"}),
    ({"X-B3-TraceId": OTHER, "X-B3-SpanId": "2" * 16, "X-B3-Sampled": "1"},
     {"x-b3-traceid": TRACE, "x-b3-spanid": "{span}", "x-b3-sampled": "1",
      "x-b3-parentspanid": PARENT}),
])
def test_w3c_and_b3_together_keep_both_forms_with_the_w3c_ids(b3_in, b3_out):
    ctx, out = upstream({"traceparent": f"00-{TRACE}-{PARENT}-01", "tracestate": "a=1", **b3_in})
    assert (ctx.trace_id, ctx.parent_id) == (TRACE, PARENT)
    expected = {"traceparent": f"00-{TRACE}-{ctx.span_id}-01", "tracestate": "a=1",
                **{k: v.format(span=ctx.span_id) for k, v in b3_out.items()}}
    assert out == expected


@pytest.mark.parametrize("name, line", [
    (b"X-Trace-Id", f"X-Trace-Id: {TRACE}\r\n".encode()),
    (b"", b""),                                 # empty setting: no header
])
def test_the_response_line_carries_the_trace_id(name, line):
    ctx, _ = upstream({"traceparent": f"00-{TRACE}-{PARENT}-01"})
    assert response_line(ctx, name) == line
    assert response_line(None, b"X-Trace-Id") == b""


def test_trace_ids_are_cut_from_blocks_and_never_repeat():
    import random
    from gwserver.core.tracing import trace_ids
    draws = []

    def randbytes(n):
        draws.append(n)
        return random.randbytes(n)

    ids = trace_ids(randbytes, block=256)
    got = [ids() for _ in range(256 * 2 + 1)]
    assert all(len(trace) == 32 and len(span) == 16 and
               set(trace + span) <= set("0123456789abcdef") for trace, span in got)
    assert len({trace for trace, _ in got}) == len({span for _, span in got}) == len(got)
    assert draws == [24 * 256] * 3       # one draw per block, the third begun


def test_a_started_trace_sends_traceparent_alone_unless_asked_for_more():
    from gwserver.core.tracing import extract
    trace = extract({}, lambda: ("a" * 32, "b" * 16))
    assert trace.upstream_headers() == [(b"traceparent", b"00-" + b"a" * 32 + b"-" + b"b" * 16
                                         + b"-01")]
    names = [name for name, _ in trace.upstream_headers(emit_b3=True, extra_state="gwfault=abort")]
    assert names == [b"traceparent", b"tracestate", b"b3"]
