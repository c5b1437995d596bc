"""Malformed and ambiguous requests, as data: tests/cases/requests/STATUS-name.http.

Each file holds the exact bytes a client sends. The gateway must answer with the status in the
file name, and a rejected request must never reach the upstream (RFC 9112; at least as strict as
gunicorn's parser).
"""
from pathlib import Path

import pytest

from ..conftest import gateway_conf, route

CASES = sorted((Path(__file__).parent.parent / "cases" / "requests").glob("*.http"))


@pytest.fixture(scope="module")
def gw(module_launcher):
    upstream = module_launcher.upstream("cases")
    gateway = module_launcher.gateway(gateway_conf([route("echo", ["/echo"], upstream.url,
                                                          prefix=True)]))
    gateway.upstream = upstream
    return gateway


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_request_case(gw, case):
    expected = int(case.stem.split("-")[0])
    before = gw.upstream.stats()["requests"]
    response = gw.raw(case.read_bytes())
    status_line = response.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 %d" % expected), response[:300]
    forwarded = gw.upstream.stats()["requests"] - before
    assert forwarded == (1 if expected == 200 else 0)
    if expected >= 400:
        assert b"Connection: close" in response and b'"error":' in response


def test_cases_cover_the_hardening_list():
    names = {c.stem for c in CASES}
    for needed in ("400-cl-and-te", "400-duplicate-cl-same-value", "400-bad-chunk-size",
                   "400-bad-header-name", "400-space-before-colon", "400-duplicate-host",
                   "400-control-char-in-path"):
        assert needed in names
