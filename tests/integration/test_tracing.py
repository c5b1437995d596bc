"""Trace context through a real gateway: a client that sends W3C and B3 keeps both on the way
upstream (one trace, the gateway's span as parent), and the trace id comes back to the client
in [tracing] response_header, on relayed answers and on the gateway's own."""
import json

import pytest

from ..conftest import gateway_conf, route

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
W3C = {"traceparent": f"00-{TRACE}-{PARENT}-01"}


def seen(body):
    return {name.lower(): value for name, value in json.loads(body)["headers"]}


@pytest.mark.parametrize("b3_in, b3_names", [
    ({"b3": f"{TRACE}-{PARENT}-1"}, ["b3"]),
    ({"X-B3-TraceId": TRACE, "X-B3-SpanId": PARENT, "X-B3-Sampled": "1"},
     ["x-b3-traceid", "x-b3-spanid", "x-b3-sampled", "x-b3-parentspanid"]),
])
def test_w3c_and_b3_together_both_reach_the_upstream(launcher, upstream, b3_in, b3_names):
    gw = launcher.gateway(gateway_conf([route("t", ["/t/*r"], upstream.url, strip_prefix="/t")]))
    _, body = gw.request("GET", "/t/echo", headers={**W3C, **b3_in})
    headers = seen(body)
    span = headers["traceparent"].split("-")[2]
    assert headers["traceparent"] == f"00-{TRACE}-{span}-01" and span != PARENT
    assert all(name in headers for name in b3_names), headers
    if "b3" in headers:
        assert headers["b3"] == f"{TRACE}-{span}-1-{PARENT}"
    else:
        assert (headers["x-b3-traceid"], headers["x-b3-spanid"],
                headers["x-b3-parentspanid"]) == (TRACE, span, PARENT)


def response_headers(gw, path, headers):
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}


@pytest.mark.parametrize("setting, name", [({}, "x-trace-id"),
                                           ({"response_header": "Trace-Id"}, "trace-id")])
def test_the_trace_id_comes_back_to_the_client(launcher, upstream, setting, name):
    gw = launcher.gateway(gateway_conf([route("t", ["/t/*r"], upstream.url, strip_prefix="/t")],
                                       tracing=setting))
    for path, status in [("/t/echo", 200), ("/t/status/503", 503), ("/nowhere", 404)]:
        got, headers = response_headers(gw, path, W3C)
        assert (got, headers.get(name)) == (status, TRACE), path
    _, headers = response_headers(gw, "/t/echo", {})         # a trace the gateway started
    assert len(headers[name]) == 32


def test_an_empty_response_header_sends_none(launcher, upstream):
    gw = launcher.gateway(gateway_conf([route("t", ["/t/*r"], upstream.url, strip_prefix="/t")],
                                       tracing={"response_header": ""}))
    for path in ("/t/echo", "/nowhere"):
        _, headers = response_headers(gw, path, W3C)
        assert "x-trace-id" not in headers and TRACE not in headers.values()
