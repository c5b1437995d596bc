"""Attack pass dec15f: a broken or hostile HTTP/1.1 upstream (tests/raw_upstream.py, by path),
against a real gateway, its HTTP/1.1 and HTTP/2 (h2c) clients.

Defect found and fixed (its test seen failing before the fix):

1. A response's Transfer-Encoding lines were judged one at a time, the last one deciding:
   "chunked" then "identity" (one list, RFC 9110 5.3: "chunked, identity", chunked not last)
   was read to the close as llhttp reads it, and the chunk framing ("5\\r\\nhello\\r\\n0...")
   reached the client as the body of a 200, over HTTP/1.1 and HTTP/2. The same list in one
   line was already a 502.

Held (tried against a real gateway, no defect): CL with TE, "5, 5", two equal lengths, -5,
0x5, an empty length (502); "005" and chunk extensions (relayed whole); a chunk size with a
space, bare LF framing, data not ended by CRLF (502); a last chunk without its CRLF (the
answer waits, then is cut: never ended as whole); HTTP/1.0 with keep-alive; a reason that is
missing, 8-bit or 5000 bytes; control bytes and DEL in a value, "X{V}", ":status" and ""
as names (502); Proxy-Connection, Keep-Alive, Upgrade, TE and what Connection names (dropped
for both protocols); 100, 100, 102 in a row; a reset (RST) mid-body and in a body framed by
the close (the answer is cut, never ended as whole, the access line names the reset).
"""
import json
import re

import pytest

from ..conftest import gateway_conf, route, wait_until
from ..h2client import RawH2
from .test_attack_pass_dec03d import exchange

ACCESS = {"access_fields": ["status", "upstream_status", "error", "path", "bytes", "protocol"]}


@pytest.fixture(scope="module")
def gw(module_launcher):
    raw = module_launcher.raw_upstream()
    return module_launcher.gateway(gateway_conf(
        [route("raw", ["/*rest"], f"http://127.0.0.1:{raw.port}")], log=ACCESS,
        http2={"h2c": True}))


def get(gw, path):
    return exchange(gw.port, b"GET %s HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n" % path)


def access_line(gw, path, protocol=None):
    """The last access line of ``path`` from ``protocol``'s clients (written once the answer
    went out: waited for, briefly)."""
    def last():
        lines = [line for line in map(json.loads, re.findall(r"(?m)^\{.*$", gw.log()))
                 if line.get("path") == path.decode() and line.get("protocol") == protocol]
        return lines[-1] if lines else None
    return wait_until(last, timeout=3)


# -- 1. Transfer-Encoding in two lines is one list ------------------------------------------------

def test_transfer_encoding_in_two_lines_is_judged_as_one_list(gw):
    answer = get(gw, b"/te-split")
    # was: 200, its body the upstream's chunk framing "5\r\nhello\r\n0\r\n\r\n" (15 bytes)
    assert answer.startswith(b"HTTP/1.1 502 "), answer[:300]
    assert b"hello" not in answer
    line = access_line(gw, b"/te-split")
    assert line["status"] == 502 and "transfer coding" in line["error"], line
    client = RawH2(gw.port)
    try:
        sid = client.request("/te-split")
        status, _, body, _ = client.response(sid)
    finally:
        client.close()
    assert status == 502 and b"hello" not in body, body
    assert access_line(gw, b"/te-split", "HTTP/2")["status"] == 502


# -- held: a reset (RST) mid-body is never an answer ended whole ----------------------------------

@pytest.mark.parametrize("path", [b"/rst-mid-body", b"/rst-to-close"])
def test_a_reset_mid_body_cuts_the_answer_for_both_protocols(gw, path):
    answer = get(gw, path)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert not answer.endswith(b"\r\n0\r\n\r\n")            # (chunked: no last chunk)
    client = RawH2(gw.port)
    try:
        sid = client.request(path.decode())
        assert client.response(sid) is None                 # reset, never ended
    finally:
        client.close()
    for protocol in (None, "HTTP/2"):
        line = access_line(gw, path, protocol)
        assert "reset" in line["error"] and line["bytes"] == 1000, line
