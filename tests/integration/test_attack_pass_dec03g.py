"""Attack pass (Dec 03, g): the ``cookie:NAME`` limit key (fca2a1b), upstream 1xx heads
(1bbe816), remove_stale_tmp (9162942) and reload verdicts (705b796, 668e27e). Each defect is
shown by a test that failed on fca2a1b and passes with its fix; held cases are
test_held_*.

Every test starts real processes (a gateway from the launcher fixture with h2c on) and talks
to it over loopback; the upstream is the in-process recording server of the attack modules.

1. ``cookie:NAME`` counted the value as spelt after splitting at ";", but upstreams decode
   it: PHP, Node's cookie package and Rack percent-decode (``session=%61bc`` is ``abc``),
   PHP also the name (``s%65ssion=abc`` is the cookie ``session``, and PHP reads the first
   copy), Python's SimpleCookie, Django and Werkzeug unescape a quoted value
   (``"\\141bc"``), and SimpleCookie also ends a cookie at white space and reads the last
   copy (``session=junk; x=1 session=abc`` is ``abc``; so is ``session=abc "junk``). Each
   was a fresh bucket per request for one session. The value is now read as the most
   decoding of them reads it, and a header where they would read different values is a 400.

2. remove_stale_tmp swept every NAME.PID.tmp in runtime_dir whose pid was not alive here:
   in a shared runtime_dir (/dev/shm, /run) another program's file, or a live writer's in
   another pid namespace; beside the snapshot, another instance's ``snap.b.PID.tmp`` (a
   prefix match of ``snap``). Only the exact names the sync process writes are swept now
   (tests/unit/test_shm.py, pure).
3. A reload applied while fork() was refused (generation 2, its workers missing), then a
   second reload once forks worked again: the second's workers, started inside the reload,
   made manage_workers log "reload complete: generation 2 ... (its workers could start only
   now)" before the reload logged generation 3. Generation 2's workers never served. Only the
   generation that lacked workers is now said complete by manage_workers.

Held: white space, tabs and quotes around the value, a ``$Version`` pair, junk cookies
beside it, two Cookie lines over HTTP/1.1 and HTTP/2 crumbs (one bucket each); the cookie
twice alike; an empty value; ``=`` inside the value; non-ASCII bytes; a Cookie line over
limit_request_field_size (431, no worker error); refused spellings are 400s for limit_conn
too. Interim heads (1bbe816): with Connection: close or in HTTP/1.0 and an answer in a later
read, junk or a close after a 100, a 100 or 150 with a body, an HTTP/2.0 answer after a 103,
a 101 to a request that asked for no upgrade, interim heads past the head limit: a 502 at
once, nothing of the later bytes relayed; interim heads split mid-line across reads, or 100
of them, then an answer: the answer.
"""
import os
import signal
import time

import pytest

from ..conftest import gateway_conf, route, wait_until
from .test_attack_pass_dec03 import RecordingHttp1, raw_request
from .test_attack_pass_dec03e import cap_tasks, pids_cgroup, uncap_tasks  # noqa: F401
from .test_attack_pass_dec03f import h1, h2

ONE_AN_HOUR = {"rate": 1, "per": 3600, "burst": 1}


@pytest.fixture
def gw(launcher, h1_up):
    return launcher.gateway(gateway_conf([
        route("sk", ["/sk"], h1_up.url,
              plugins={"rate_limit": {**ONE_AN_HOUR, "key": "cookie:session"}}),
        route("lc", ["/lc"], h1_up.url,
              plugins={"limit_conn": {"limit": 5, "key": "cookie:session"}}),
    ], http2={"h2c": True}))


# -- 1. spellings of one session cookie ----------------------------------------------------

@pytest.mark.parametrize("fields", [
    b"Cookie: session=%61bc\r\n",                       # PHP, Node, Rack: abc
    b"Cookie: session=ab%63\r\n",
    b'Cookie: session="\\141bc"\r\n',                   # SimpleCookie, Django, Werkzeug: abc
    b'Cookie: session="a\\bc"\r\n',
    b"Cookie: s%65ssion=abc; session=x1\r\n",           # PHP: the first, named session
    b"Cookie: session=x2; x=1 session=abc\r\n",         # SimpleCookie: the last
    b"Cookie: session=x3 session=abc\r\n",
    b'Cookie: session=abc "x4\r\n',                     # SimpleCookie: abc
    b"Cookie: session=abc,x5=1\r\n",                    # RFC 2965 parsers: abc
])
def test_a_spelling_of_the_session_an_upstream_reads_as_it_is_no_fresh_bucket(gw, fields):
    """Once session=abc has spent its one request an hour, a spelling an upstream reads as
    abc is counted in its bucket (429) or refused (400), never a fresh bucket."""
    assert h1(gw, b"/sk", b"Cookie: session=abc\r\n") == 200
    assert h1(gw, b"/sk", fields) in (400, 429), fields


def test_held_plain_spellings_are_one_bucket_and_other_sessions_another(gw):
    assert h1(gw, b"/sk", b"Cookie: session=abc\r\n") == 200
    for fields in [b"Cookie: \t session = abc \t; x=1\r\n", b'Cookie: session="abc"\r\n',
                   b"Cookie: $Version=1; session=abc; $Path=/\r\n",
                   b"Cookie: session=abc; session=abc\r\n",
                   b"Cookie: a=1\r\nCookie: session=abc\r\n"]:
        assert h1(gw, b"/sk", fields) == 429, fields
    assert h2(gw, "/sk", [("cookie", "x=1"), ("cookie", "session=abc")]) == 429
    for value in [b"", b"a=b", b"\xc3\xa9t\xc3\xa9", b"Z" * 3000]:
        assert h1(gw, b"/sk", b"Cookie: session=%s\r\n" % value) == 200, value
    assert h1(gw, b"/sk", b"Cookie: session=" + b"Y" * 20000 + b"\r\n") == 431


def test_a_hostile_cookie_is_a_clean_400_for_limit_conn_too(gw):
    """limit_conn reads the key the same way: refused spellings are 400s, not 500s."""
    assert h1(gw, b"/lc", b"Cookie: session=abc\r\n") == 200
    assert h1(gw, b"/lc", b"Cookie: session=x3 session=abc\r\n") == 400
    assert h2(gw, "/lc", [("cookie", "session=x"), ("cookie", "y=1 session=abc")]) == 400


# -- 2. interim heads from a broken upstream -----------------------------------------------

class DrippingHttp1(RecordingHttp1):
    """A loopback upstream that answers each request with ``pieces``, one write each, 0.3 s
    apart (each its own read at the gateway), then holds the connection open."""

    def __init__(self, pieces):
        self.pieces = pieces            # before the accept thread starts
        super().__init__()

    def serve(self, conn):
        try:
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += conn.recv(65536) or b"\r\n\r\n"
            for piece in self.pieces:
                time.sleep(0.3)
                if piece is None:
                    conn.close()
                    return
                conn.sendall(piece)
        except OSError:
            pass


INJECTED = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nINJECTED"
FINE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.mark.parametrize("pieces, status", [
    ([b"HTTP/1.1 100 Continue\r\nConnection: close\r\n\r\n", INJECTED], 502),
    ([b"HTTP/1.0 103 Early Hints\r\n\r\n", INJECTED], 502),
    ([b"HTTP/1.1 100 Continue\r\n\r\n", b"junk\r\n\r\n"], 502),
    ([b"HTTP/1.1 100 Continue\r\n\r\n", None], 502),
    ([b"HTTP/1.1 100 Continue\r\nContent-Length: 5\r\n\r\nHELLO", INJECTED], 502),
    ([b"HTTP/1.1 150 Odd\r\nContent-Length: 8\r\n\r\n", INJECTED], 502),
    ([b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/2.0 200 OK\r\n\r\n"], 502),
    ([b"HTTP/1.1 101 Switching Protocols\r\n\r\n", b"RAW"], 502),
    ([b"HTTP/1.1 103 Early Hints\r\n", b"Link: </a>\r\n\r\nHTTP/1.1 1", b"03 E\r\n\r\n",
      FINE], 200),
    ([b"HTTP/1.1 103 Early Hints\r\n\r\n" * 100, FINE], 200),
    ([b"HTTP/1.1 100 Continue\r\n\r\n" * 5000, FINE], 502),      # past the head limit
])
def test_held_a_broken_upstream_s_interim_heads_get_a_prompt_answer(launcher, pieces, status):
    """Interim heads in other versions, with Connection: close, with a body, followed by
    junk or a close, split across reads: a 502 well before read_timeout (10 s), nothing of
    a later head relayed; whole interim heads then an answer: the answer."""
    up = DrippingHttp1(pieces)
    try:
        gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], up.url,
                                                  timeouts={"read": 10.0})]))
        began = time.monotonic()
        answer = raw_request(gw.port, b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close"
                             b"\r\n\r\n", timeout=15)
        assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:300]
        assert b"INJECTED" not in answer and b"RAW" not in answer
        assert time.monotonic() - began < 5, answer[:300]
    finally:
        up.close()


# -- 3. a reload after one whose workers could not start ------------------------------------

def test_a_reload_after_one_whose_workers_could_not_start_claims_only_its_own(
        launcher, h1_up, pids_cgroup):
    """Reload 1 is applied as generation 2 but fork() is refused (TasksMax); the cap is
    lifted and reload 2 starts its workers at once. The master logged "reload complete:
    generation 2 ... (its workers could start only now)" for reload 2's workers: generation
    2's never served. Only generation 3 completes."""
    gw = launcher.gateway(gateway_conf([route("e", ["/e"], h1_up.url)]))
    assert [gw.request("GET", "/e")[0].status for _ in range(5)] == [200] * 5
    cap_tasks(gw, pids_cgroup)
    os.kill(gw.pid, signal.SIGHUP)
    wait_until(lambda: "reload applied as generation 2, but 1 of 1" in gw.log(), timeout=20)
    uncap_tasks(pids_cgroup)
    os.kill(gw.pid, signal.SIGHUP)          # before the master's next try (about a second)
    wait_until(lambda: "reload complete: generation 3" in gw.log(), timeout=20)
    assert "reload complete: generation 2" not in gw.log(), gw.log()[-3000:]
    assert gw.request("GET", "/e")[0].status == 200
