"""A review, as an attacker, of the two commits that just landed (f3632b5, the open items, and
4d496a6, the hang-up during a head's wait), against real gateways, upstreams and `gwserver
check` (the attack pass of 2026-12-05, helper h7, on 4d496a6). Each test failed on that commit.

1. A Redis password holding an "@" and, after it, a "/", "?" or "#" ("ab@cd/ef"), written
   unencoded: ``redis://:ab@cd/ef@127.0.0.1:6379/0``. f3632b5 refuses a user part that
   redis-py reads as host and path, but only when the authority held no "@": this one passed
   `gwserver check`, and redis-py reads password "ab" and host "cd" (a name made of the
   password, looked up in DNS, connected to with the first part of it). In a
   ``redis+sentinel://`` or ``redis+cluster://`` URL (the gateway's own parser takes the user
   part to the last "@": the password works) ``--dump`` masked to the first "@" and showed
   the rest of the password ("redis+sentinel://:***@cd/ef@h1,h2/m"), as did log texts
   (mask_userinfo, which masked the user part before the lax reading looked for its ":").
2. An HTTP/1.1 client of a route whose upstream speaks HTTP/2 (protocol = "h2": gRPC-Web, or
   plain HTTP) hanging up while the answer's head is awaited (a long poll): 4d496a6 let the
   upstream go for HTTP/1.1 upstreams only, as its docs did not say. The stream stayed open,
   the upstream's work and the request's limit_conn slot held, until the head came or the
   read timeout passed; the answer then went to nobody.
3. A client that left during a retry's backoff (the first answer a 503, ``retry.backoff``
   seconds of wait before the next try): nothing watches a backoff, and the next try went to
   the upstream for nobody (a second POST-less but real request, its work, a retry budget's
   share); the hang-up was seen only in that try's head wait, if it lasted a tick.
"""
import http.client
import socket
import time

from ..conftest import gateway_conf, route, wait_until
from ..h2_upstreams import StreamingH2Upstream
from .test_open_items_dec05h import check_dump

SECRET = "hunter3-tail"


# -- 1. a Redis password with "@" on both sides of a "/" ---------------------------------------

def test_a_redis_password_with_an_at_sign_before_a_slash_is_neither_misread_nor_shown(tmp_path):
    for url in (f"redis://:ab@{SECRET}/x@127.0.0.1:6379/0",
                f"redis://:ab@{SECRET}?x@127.0.0.1:6379/0",
                f"rediss://u:ab@{SECRET}#x@127.0.0.1:6379/0"):
        code, out = check_dump(tmp_path, url)
        # redis-py would connect to host "hunter3-tail" with password "ab"
        assert code != 0 and "must be percent-encoded" in out, out
        assert SECRET not in out, out
    for url in (f"redis+sentinel://:ab@{SECRET}/x@127.0.0.1:26379,127.0.0.1:26380/m",
                f"redis+cluster://u:ab@{SECRET}?x@127.0.0.1:7000,127.0.0.1:7001"):
        code, out = check_dump(tmp_path, url)
        assert code == 0 and "url = " in out, out
        assert SECRET not in out, out
    code, out = check_dump(tmp_path, "redis://alice:pw@127.0.0.1:6379/0?db=0")
    assert code == 0 and 'url = "redis://alice:***@127.0.0.1:6379/0?db=0"' in out, out


# -- 2. a hang-up while an HTTP/2 upstream's head is awaited ------------------------------------

def test_a_client_that_hangs_up_while_an_h2_upstreams_head_is_awaited_lets_it_go(launcher):
    up = StreamingH2Upstream()          # /slow: its head after 3 s
    try:
        gw = launcher.gateway(gateway_conf([{
            "id": "h2", "paths": ["/*rest"], "timeouts": {"read": 30.0},
            "upstream": {"targets": [{"url": f"http://127.0.0.1:{up.port}"}],
                         "protocol": "h2"},
            "plugins": {"limit_conn": {"limit": 1, "scope": "host"}}}]))
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
            sock.sendall(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
            time.sleep(0.3)
        left = time.monotonic()
        # the stream is reset within a tick's second, long before the head's 3 s
        wait_until(lambda: up.resets >= 1, timeout=2.2)
        assert time.monotonic() - left < 2.3
        line = wait_until(lambda: next((line for line in gw.access_lines()
                                        if line["path"] == "/slow"), None), timeout=5)
        assert line["status"] == 0 and line["bytes"] == 0 and "error" not in line, line
        # the limit_conn slot is free again: the next request is served, not refused
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        conn.request("GET", "/fast")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == b"ok"
        conn.close()
        log = gw.log()      # the client's doing: no failure of the upstream's is logged
        assert "[WARNING]" not in log and "[ERROR]" not in log, log[-2000:]
    finally:
        up.close()


# -- 3. a hang-up during a retry's backoff ------------------------------------------------------

def test_a_client_that_leaves_during_a_retrys_backoff_gets_no_second_try(launcher, upstream):
    gw = launcher.gateway(gateway_conf([route(
        "r", ["/*rest"], upstream.url,
        retry={"on": ["503"], "attempts": 2, "backoff": 2.0})]))
    before = upstream.stats()["requests"]
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(b"GET /status/503 HTTP/1.1\r\nHost: h\r\n\r\n")
        time.sleep(0.3)     # the first try's 503 came; the backoff waits 1 to 3 s
    line = wait_until(lambda: next((line for line in gw.access_lines()
                                    if line["path"] == "/status/503"), None), timeout=8)
    time.sleep(0.3)
    assert upstream.stats()["requests"] - before == 1, line
    assert line["status"] == 0 and line["bytes"] == 0 and "error" not in line, line
