"""A request's ``upstream_ms`` (the access log, the latency histogram, a canary's latency
gates) is the upstream's time, from its request's head going out to its answer's head. Over
HTTP/1.1 a wait for a pooled connection was never in it; over HTTP/2 a wait for a free stream
(the upstream's SETTINGS_MAX_CONCURRENT_STREAMS, which the upstream has not seen) was: a
healthy upstream answering in 0.6 s showed 1.2 s for a request queued behind another, and a
canary's latency gate would fail it for the gateway's own queue."""
import threading

from ..conftest import gateway_conf, wait_until
from ..h2_upstreams import ScriptedH2Upstream


def test_the_wait_for_a_free_http2_stream_is_no_upstream_time(launcher):
    upstream = ScriptedH2Upstream("up", "slow", delay=0.6, max_streams=1)
    try:
        gw = launcher.gateway(gateway_conf([
            {"id": "h2", "paths": ["/*rest"], "upstream": {
                "targets": [{"url": f"http://127.0.0.1:{upstream.port}"}],
                "protocol": "h2"}}]))
        statuses = []

        def call(n):
            resp, _ = gw.request("GET", f"/q{n}", timeout=5)
            statuses.append(resp.status)
        first = threading.Thread(target=call, args=(1,))
        first.start()
        wait_until(lambda: upstream.requests == 1, timeout=5)  # it holds the one stream
        call(2)                                                 # queued behind it
        first.join(5)
        assert statuses == [200, 200], statuses
        wait_until(lambda: len(gw.access_lines()) >= 2, timeout=5)
        lines = {line["path"]: line for line in gw.access_lines()}
        queued = lines["/q2"]
        # queued ~0.5 s, then 0.6 s at the upstream
        assert queued["duration_ms"] > 900, queued
        assert 550 < queued["upstream_ms"] < 850, queued
        assert 550 < lines["/q1"]["upstream_ms"] < 850, lines["/q1"]
    finally:
        upstream.close()
