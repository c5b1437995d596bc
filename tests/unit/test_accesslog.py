"""An access-log line is what [log] access_fields lists, in that order, in json or common."""
import json

import pytest

from gwserver.core.accesslog import DEFAULT_FIELDS, FIELDS, compile_fields
from gwserver.core.context import RequestContext
from gwserver.core.tracing import extract
from gwserver.settings import LOG
from gwserver.settings import LOG

TIME = "2024-05-01T12:00:00.123Z"


class Route:
    id = "users"


def request(url=b"/u/1?page=2&q=a%20b", headers=(), **attrs):
    req = RequestContext("10.0.0.9", "http")
    req.method, req.url, req.version, req.request_id = "GET", url, "1.1", "rid-1"
    req.query = url.partition(b"?")[2].decode("latin-1")       # as the reader sets it
    req.headers = [(k.encode(), v.encode()) for k, v in headers]
    req.header_map = {k.lower(): v for k, v in req.headers}
    req.route, req.upstream_seconds, req.body_size = Route(), 0.0123, 0
    for name, value in attrs.items():
        setattr(req, name, value)
    return req


def json_line(names, req, status=200, sent=5, upstream="http://127.0.0.1:9000"):
    text = compile_fields(names, "json").line(req, status, sent, upstream, 1.5, TIME)
    assert text.endswith("}\n") and text.count("\n") == 1
    return json.loads(text)


def test_the_default_line_is_the_one_gwserver_always_wrote():
    line = json_line([], request())
    assert list(line) == [n for n in DEFAULT_FIELDS
                          if n not in ("error", "fault", "attempts", "consumer", "protocol")]
    assert line["path"] == "/u/1" and line["upstream_ms"] == 12.3 and line["duration_ms"] == 1.5


@pytest.mark.parametrize("names, headers, url, expected", [
    (["query"], [], b"/u?page=2&q=a%20b", {"query": "page=2&q=a%20b"}),
    (["query"], [], b"/u", {"query": None}),
    (["query"], [], b"/u?", {"query": ""}),
    (["host", "user_agent"], [("Host", "api.example.com"), ("User-Agent", 'curl/8 "x"')],
     b"/", {"host": "api.example.com", "user_agent": 'curl/8 "x"'}),
    (["user_agent", "referer"], [], b"/", {"user_agent": None, "referer": None}),
    (["user_agent"], [("User-Agent", "a" * 1000)], b"/", {"user_agent": "a" * 256}),
    (["status", "path", "method"], [], b"/x", {"status": 200, "path": "/x", "method": "GET"}),
])
def test_listed_fields_in_their_order(names, headers, url, expected):
    line = json_line(names, request(url, headers))
    assert line == expected and list(line) == names


@pytest.mark.parametrize("attrs, status, upstream_status", [
    ({}, 503, 503),                                         # relayed answer
    ({"upstream_seconds": None}, 404, None),                # no route: the gateway answered
    ({"ended_by": "rate_limit", "upstream_seconds": None}, 429, None),
    ({"error": RuntimeError("connect")}, 502, None),        # the upstream failed
])
def test_upstream_status_is_the_upstreams_only_when_its_answer_was_sent(
        attrs, status, upstream_status):
    line = json_line(["status", "upstream_status"], request(**attrs), status=status)
    assert line == {"status": status, "upstream_status": upstream_status}


def test_request_bytes_and_optional_fields():
    req = request(body_size=1234, attempts=2)
    line = json_line(["request_bytes", "attempts", "fault", "consumer"], req)
    assert line == {"request_bytes": 1234, "attempts": 2}       # fault, consumer: left out


def test_trace_id():
    trace = extract({b"traceparent": b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01"},
                    lambda: ("c" * 32, "c" * 16))
    assert json_line(["trace_id"], request(trace=trace)) == {"trace_id": "a" * 32}
    assert json_line(["trace_id"], request()) == {"trace_id": None}


def test_common_keeps_the_clf_head_then_the_other_fields():
    req = request(headers=[("User-Agent", "curl/8")])
    fields = compile_fields(["client", "status", "user_agent", "upstream_status", "query"],
                            "common")
    assert fields.line(req, 200, 5, None, 1.5, "01/May/2024:12:00:00 +0000") == \
        '10.0.0.9 - - [01/May/2024:12:00:00 +0000] "GET /u/1?page=2&q=a%20b HTTP/1.1" ' \
        '200 5 "curl/8" 200\n'
    default = compile_fields([], "common").line(req, 200, 5, None, 1.5, "T")
    assert default.endswith('200 5 "users" "rid-1" 1.500 - -\n')       # trace_id, error


def test_a_common_target_cannot_forge_the_fields_after_it():
    """A quote in the target would end the quoted request field: a client could write its own
    status, bytes and route into the line. nginx writes it as \\x22 (a backslash as \\x5C)."""
    req = request(url=b'/x"_200_0_"-"_route=admin\\?a"b=1')
    line = compile_fields(["route"], "common").line(req, 404, 0, None, 1.5, "T")
    assert line == ('10.0.0.9 - - [T] "GET /x\\x22_200_0_\\x22-\\x22_route=admin\\x5C'
                    '?a\\x22b=1 HTTP/1.1" 404 0 "users"\n')
    assert line.count('"') == 4


def test_the_logged_query_is_the_one_the_upstream_got():
    """key_auth takes its key out of the query before proxying; the log must not keep it."""
    req = request(url=b"/admin/x?apikey=SECRET&page=2")
    req.query = "page=2"                        # what key_auth left
    common = compile_fields([], "common").line(req, 200, 5, None, 1.5, "T")
    assert '"GET /admin/x?page=2 HTTP/1.1"' in common and "SECRET" not in common
    assert json_line(["query"], req) == {"query": "page=2"}
    req.query = ""                              # the key was all of it
    assert '"GET /admin/x HTTP/1.1"' in compile_fields([], "common").line(req, 200, 5, None,
                                                                          1.5, "T")
    assert json_line(["query"], req) == {"query": ""}


def test_the_setting_accepts_known_fields_and_names_an_unknown_one():
    assert LOG({"access_fields": ["host", "query"]})["access_fields"] == ["host", "query"]
    assert LOG({})["access_fields"] == []
    with pytest.raises(Exception, match=r"access_fields\[1\]: must be an access-log field"):
        LOG.validate({"access_fields": ["host", "hots"]}, "log")
    with pytest.raises(ValueError, match="unknown access-log field"):
        compile_fields(["hots"])


def test_every_field_has_a_doc_line():
    assert all(spec.doc for spec in FIELDS.values())


def test_operations_md_names_every_field():
    from pathlib import Path
    text = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    assert all(f"`{name}`" in text for name in FIELDS), \
        [name for name in FIELDS if f"`{name}`" not in text]


@pytest.mark.parametrize("vars_, attempts", [
    (None, 0), (None, 3), ({"fault": "abort"}, 0),
    ({"fault": "delay", "protocol": "HTTP/2"}, 2),
])
def test_the_shipped_line_written_out_equals_the_generic_renderer(vars_, attempts):
    """The default json line is one f-string for speed; the generic loop over DEFAULT_FIELDS
    is what it must equal, whatever optional fields are present."""
    from types import SimpleNamespace
    from gwserver.core.accesslog import DEFAULT_FIELDS, AccessFields
    from gwserver.core.context import RequestContext
    req = RequestContext("10.0.0.1", "http")
    req.url, req.method, req.version = b'/a"b?q=1', "GET", "1.1"
    req.request_id, req.upstream_seconds, req.attempts = "rid-1", 0.0123, attempts
    req.route, req.trace = SimpleNamespace(id="r1"), SimpleNamespace(trace_id="ab" * 16)
    if vars_:
        req.vars.update(vars_)
        req.consumer = SimpleNamespace(id="bob")
        from gwserver.errors import UpstreamError
        req.error = UpstreamError('cannot connect to http://10.0.0.9:80: "refused"')
    shipped, generic = AccessFields(DEFAULT_FIELDS, "json"), AccessFields(DEFAULT_FIELDS, "json")
    generic.fast = False
    assert shipped.fast
    args = (req, 200, 42, "http://u:1", 1.5, "2026-01-01T00:00:00.000Z")
    assert shipped.line(*args) == generic.line(*args)
    assert json.loads(shipped.line(*args))["path"] == '/a"b'


@pytest.mark.parametrize("fmt, fields", [("json", []), ("json", ["time", "client", "status"]),
                                         ("common", [])])
def test_the_worker_buffers_fields_and_renders_lines_in_order_with_their_own_times(
        fmt, fields, monkeypatch):
    """A request leaves a tuple; the line is rendered at the flush, with the time the request
    ended, not the time of the flush, and a rejected request's line keeps its place."""
    import time
    from gwserver.errors import BadRequest
    from gwserver.server.runtime import AccessLog
    log = AccessLog({**LOG.defaults(), "access_format": fmt, "access_fields": fields})
    clock = iter([1714564800.25, 1714564801.5, 1714564862.75])
    monkeypatch.setattr(time, "time", lambda: next(clock))
    first = request()
    log.request(first, 200, 5, "http://127.0.0.1:9000", time.monotonic())
    first.url, first.route = b"/changed-after", None     # the line holds what it was
    log.rejected("10.0.0.7", BadRequest("bad head"))
    log.request(request(url=b"/second"), 404, 0, None, time.monotonic())
    lines = log.render().splitlines()
    assert log.render() == "" and len(lines) == 3
    if fmt == "common":
        assert lines[0].startswith('10.0.0.9 - - [01/May/2024:12:00:00 +0000] "GET /u/1?page=2')
        assert lines[1].startswith('10.0.0.7 - - [01/May/2024:12:00:01 +0000] "-" 400')
        assert '[01/May/2024:12:01:02 +0000] "GET /second HTTP/1.1" 404 0' in lines[2]
        return
    parsed = [json.loads(line) for line in lines]
    assert [p["time"] for p in parsed] == ["2024-05-01T12:00:00.250Z", "2024-05-01T12:00:01.500Z",
                                           "2024-05-01T12:01:02.750Z"]
    assert parsed[1] == {"time": "2024-05-01T12:00:01.500Z", "client": "10.0.0.7",
                         "status": 400, "rejected": "bad head"}
    assert parsed[0]["status"] == 200 and parsed[2]["status"] == 404
    if not fields:
        assert parsed[0]["path"] == "/u/1" and parsed[0]["route"] == "users"
        assert parsed[2]["path"] == "/second"


def test_a_line_that_cannot_be_rendered_is_left_out_and_the_others_are_written(caplog):
    import time
    from gwserver.server.runtime import AccessLog
    log = AccessLog({**LOG.defaults(), "access_fields": []})
    log.request(request(url=b"/one"), 200, 5, None, time.monotonic())
    log.pending.append((time.time(), ("not", "the", "fields")))    # a bug's leftovers
    log.request(request(url=b"/three"), 200, 5, None, time.monotonic())
    paths = [json.loads(line)["path"] for line in log.render().splitlines()]
    assert paths == ["/one", "/three"]
    assert "an access line could not be rendered" in caplog.text


def test_a_full_batch_is_written_by_the_request_that_fills_it(capfd):
    import time
    from gwserver.server.runtime import ACCESS_FLUSH_LINES, AccessLog
    log = AccessLog({**LOG.defaults(), "access_fields": []})
    for i in range(ACCESS_FLUSH_LINES - 1):
        log.request(request(url=b"/%d" % i), 200, 5, None, time.monotonic())
    assert capfd.readouterr().err == ""             # waits for the tick or a full batch
    log.request(request(url=b"/last"), 200, 5, None, time.monotonic())
    written = capfd.readouterr().err.splitlines()
    assert len(written) == ACCESS_FLUSH_LINES and log.pending == []
    assert json.loads(written[-1])["path"] == "/last"
