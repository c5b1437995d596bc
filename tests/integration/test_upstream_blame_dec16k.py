"""Attack (helper a35): a broken upstream and a stalled client must not starve or blame.

1. An h2c client that stops reading a large answer from an HTTP/2 upstream holds one of that
   connection's streams: bounded by the gateway's own http2.send_timeout (the stream is reset,
   its slot freed), not by the upstream's send timeout; the next client is served then.
2. A request head over an upstream's own limit: nginx answers it 400, which no passive check
   or breaker counts (a guard; so do gunicorn, Apache, Tomcat, Node, Go: 400 or 431). A close
   without a word stays the target's failure, as the gateway cannot tell it from a crash.
3. An upstream's answer head (or an interim 1xx head) trickled a byte at a time renewed the
   read timeout at every byte: held far past the route's read timeout; interim heads one
   after another were not counted at all over HTTP/1.1 (HTTP/2's and the health check's:
   at most 16).
"""
import time

import h2.settings

from ..conftest import gateway_conf, route
from ..h2_upstreams import StreamingH2Upstream
from ..h2client import RawH2


def timed_get(gw, path, headers=None):
    """GET ``path`` -> (status, body, seconds it took)."""
    started = time.monotonic()
    resp, body = gw.request("GET", path, headers=headers, timeout=15)
    return resp.status, body, time.monotonic() - started


# -- 1. a stalled h2c reader and the upstream's stream slots -----------------------------------

def test_a_stalled_h2_reader_gives_its_upstream_stream_back_at_send_timeout(launcher):
    """The upstream allows 2 streams; a client opens 2 downloads of 8 MiB with its windows
    shut (SETTINGS_INITIAL_WINDOW_SIZE 0) and never reads. Another client's request waits for
    a free stream: it is served once http2.send_timeout (1.5 s) reset the stalled streams,
    well within pool_timeout (5 s), not at the upstream's own send timeout (it has none)."""
    up = StreamingH2Upstream(max_streams=2)
    try:
        gw = launcher.gateway(gateway_conf([{
            "id": "dl", "paths": ["/*rest"], "upstream": {
                "targets": [{"url": f"http://127.0.0.1:{up.port}"}], "protocol": "h2"}}],
            http2={"h2c": True, "send_timeout": 1.5}))
        attacker = RawH2(gw.port, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        try:
            sids = [attacker.request("/stream?n=8388608&f=16384") for _ in range(2)]
            attacker.pump(lambda c: all(any(getattr(e, "stream_id", None) == sid
                                            for e in c.events) for sid in sids), timeout=5)
            status, body, took = timed_get(gw, "/ok")
            attacker.pump(lambda c: None not in map(c.reset_code, sids), timeout=3)
            resets = [attacker.reset_code(sid) for sid in sids]
        finally:
            attacker.close()
        assert (status, body) == (200, b"ok") and 1.0 < took < 4.0, (status, body, took)
        assert None not in resets, resets       # the stalled streams were reset (CANCEL)
    finally:
        up.close()


# -- 2. a request head over the upstream's limit ---------------------------------------------

def big_head_route(urls):
    """A route to ``urls``: passive checks that eject on two failures in a row, a breaker that
    opens at half of four answers failed."""
    return {"id": "r", "paths": ["/*rest"],
            "upstream": {"targets": [{"url": u} for u in urls],
                         "passive": {"consecutive_failures": 2, "eject_for": 30}},
            "plugins": {"breaker": {"error_rate": 0.5, "min_requests": 4, "window": 10,
                                    "open_for": 10}}}


def test_a_big_request_head_an_upstream_answers_is_not_blamed(launcher):
    """The control, with a real nginx whose header buffers are 1 KiB: it answers 400 (Request
    Header Or Cookie Too Large), a status no passive check or breaker counts."""
    port = launcher.nginx("small-heads", "listen 127.0.0.1:{port}; server_name _; "
                                         "large_client_header_buffers 2 1k; "
                                         "location / {{ return 200 ok; }}")
    gw = launcher.gateway(gateway_conf([big_head_route([f"http://127.0.0.1:{port}"])]))
    big = [gw.request("GET", "/", headers={"X-Big": "b" * 2000})[0].status for _ in range(4)]
    time.sleep(0.3)
    others = [gw.request("GET", "/")[0].status for _ in range(4)]
    assert (big, others) == ([400] * 4, [200] * 4)


# -- 3. an answer head trickled ------------------------------------------------------------------

def test_a_trickled_response_head_is_bounded_by_the_read_timeout(launcher):
    """/drip-head sends its head a byte every 0.1 s (~3 s). Before: each byte renewed the read
    timeout (1 s), and the answer came after ~3 s: any head, a byte every read_timeout - 1 ms,
    held the request and its pooled connection for as long as the upstream liked. Now the
    whole head comes within the read timeout or the request is a 504."""
    raw = launcher.raw_upstream()
    gw = launcher.gateway(gateway_conf([route("raw", ["/*rest"], raw.url,
                                              timeouts={"read": 1.0})]))
    status, _, took = timed_get(gw, "/drip-head")
    assert status == 504 and took < 2.0, (status, took)
    assert "whole head" in gw.log()
    assert gw.request("GET", "/ok")[0].status == 200      # a head that comes whole passes


def test_a_trickled_interim_head_is_bounded_by_the_read_timeout(launcher):
    """The same for a 103 Early Hints dripped a byte every 0.1 s (~4 s), then a 200."""
    raw = launcher.raw_upstream()
    gw = launcher.gateway(gateway_conf([route("raw", ["/*rest"], raw.url,
                                              timeouts={"read": 1.0})]))
    status, _, took = timed_get(gw, "/drip-hint")
    assert status == 504 and took < 2.0, (status, took)


def test_interim_heads_one_after_another_are_bounded(launcher):
    """24 103 heads 0.3 s apart (each within the read timeout, 0.5 s), then a 200. Before:
    relayed as a 200 after ~7 s: each head renewed the read timeout, so such heads held a
    request for as long as the upstream liked. Each interim head still has a read timeout of
    its own (102 Processing keeps a long request alive, as over HTTP/2), for the first 16
    (HTTP/2's bound): a 504 within 17 read timeouts (8.5 s), here ~16 x 0.3 + 0.5 s."""
    raw = launcher.raw_upstream()
    gw = launcher.gateway(gateway_conf([route("raw", ["/*rest"], raw.url,
                                              timeouts={"read": 0.5})]))
    status, body, took = timed_get(gw, "/many-hints")
    assert status == 504 and took < 6.5, (status, body, took)
    assert "of its 16th interim (1xx) head" in gw.log()
    assert timed_get(gw, "/early-hints")[:2] == (200, b"final")     # a few pass, as ever
