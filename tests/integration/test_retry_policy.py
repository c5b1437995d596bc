"""Retries on answers, not only on connects (issue 15): a request goes to another target when
the policy says so, never once a byte of the answer reached the client; the retry budget and
the skip of a refusing target hold per host."""
import re
import threading
import time

import pytest

from ..conftest import free_port, gateway_conf, wait_until


def retry_route(targets, retry=None, **extra):
    upstream = {"targets": [{"url": url} for url in targets]}
    return {"id": "r", "paths": ["/*rest"], "upstream": upstream,
            **({"retry": retry} if retry else {}), **extra}


def failing(launcher):
    """A tests/upstream.py that answers 500 to everything (its /control switch)."""
    bad = launcher.upstream("bad")
    import urllib.request
    urllib.request.urlopen(f"{bad.url}/control?fail=1", timeout=5).read()
    return bad


def statuses(gw, n, method="GET", path="/echo"):
    return [gw.request(method, path, body=b"payload" if method == "POST" else None)[0].status
            for _ in range(n)]


def test_an_answer_in_the_policy_goes_to_another_target(launcher, upstream):
    bad = failing(launcher)
    gw = launcher.gateway(gateway_conf([retry_route([bad.url, upstream.url],
                                                    {"on": ["connect", "500"], "attempts": 1})]))
    assert statuses(gw, 20) == [200] * 20
    assert bad.stats()["requests"] >= 5                 # it was tried, its 500s never came out
    lines = wait_until(lambda: [l for l in gw.access_lines() if l.get("attempts") == 2])
    assert lines[0]["status"] == 200 and lines[0]["upstream"] == upstream.url
    assert "answered 500; retrying on another target" in gw.log()


def test_not_idempotent_and_not_in_the_policy_are_not_retried(launcher, upstream):
    bad = failing(launcher)
    gw = launcher.gateway(gateway_conf([retry_route([bad.url, upstream.url],
                                                    {"on": ["connect", "500"]})]))
    assert 500 in statuses(gw, 20, "POST")             # POST: the upstream may have acted
    plain = launcher.gateway(gateway_conf([retry_route([bad.url, upstream.url])]))
    assert 500 in statuses(plain, 20)                  # the default policy: connects only


def test_a_post_with_a_held_body_is_replayed_when_the_route_allows_it(launcher, upstream):
    bad = failing(launcher)
    gw = launcher.gateway(gateway_conf([retry_route(
        [bad.url, upstream.url], {"on": ["500"], "methods": ["POST"]})]))
    for _ in range(10):
        resp, body = gw.request("POST", "/upload", body=b"x" * 5000)
        assert resp.status == 200 and b'"size": 5000' in body


def test_reset_before_an_answer_is_retried_with_reset_in_the_policy(launcher, upstream):
    raw = launcher.raw_upstream()
    targets = [f"http://127.0.0.1:{raw.port}", upstream.url]
    without = launcher.gateway(gateway_conf([retry_route(targets)]))
    assert 502 in statuses(without, 20, path="/no-answer")
    gw = launcher.gateway(gateway_conf([retry_route(targets, {"on": ["connect", "reset"]})]))
    assert statuses(gw, 20, path="/no-answer") == [200] * 20


def test_no_retry_once_the_answer_has_started(launcher):
    first, second = launcher.raw_upstream(), launcher.raw_upstream()
    gw = launcher.gateway(gateway_conf([retry_route(
        [f"http://127.0.0.1:{first.port}", f"http://127.0.0.1:{second.port}"],
        {"on": ["connect", "reset", "502"], "attempts": 2})]))
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    conn.request("GET", "/reset-mid-body")
    resp = conn.getresponse()
    assert resp.status == 200
    with pytest.raises(http.client.IncompleteRead):
        resp.read()                                     # cut, never restarted elsewhere
    counts = [json_counts(u).get("/reset-mid-body", 0) for u in (first, second)]
    assert sum(counts) == 1


def json_counts(raw):
    import json
    import urllib.request
    return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{raw.port}/__stats",
                                             timeout=5).read())


def test_a_try_that_times_out_goes_to_another_target(launcher, upstream):
    slow = launcher.upstream("slow", delay=2.0)
    gw = launcher.gateway(gateway_conf([retry_route(
        [slow.url, upstream.url], {"on": ["timeout"], "per_try_timeout": 0.3})]))
    started = time.monotonic()
    assert statuses(gw, 6) == [200] * 6
    assert time.monotonic() - started < 6 * 0.3 + 3     # never the slow target's 2 s
    assert slow.stats()["requests"] >= 1


def test_a_refusing_target_is_skipped_per_host_not_per_worker(launcher, upstream):
    """4 workers, one target of 3 refusing connections, steady traffic for 6 s: the host's
    workers share the 1 s skip, so the dead target costs about one connect a second."""
    dead = f"http://127.0.0.1:{free_port()}"
    other = launcher.upstream("other")
    gw = launcher.gateway(gateway_conf([retry_route([upstream.url, other.url, dead])],
                                       workers=4))
    stop = time.monotonic() + 6.0
    failed = []

    def load():
        while time.monotonic() < stop:
            status = gw.request("GET", "/echo")[0].status
            if status != 200:
                failed.append(status)
            time.sleep(0.01)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    connects = len(re.findall(rf"cannot connect to {re.escape(dead)}", gw.log()))
    assert failed == []
    assert 3 <= connects <= 6 + 4 + 2, connects     # ~1/s per host, not ~4/s


def test_a_target_back_from_refusing_gets_its_share_at_once(launcher, upstream):
    """Once its skip runs out, one request a second probes a target that refused: the
    balancer could pick another target for that request, so a target back on its feet got
    its first request only when a probe happened to land on it. The probe now goes to it."""
    port = free_port()
    gw = launcher.gateway(gateway_conf([retry_route([upstream.url, f"http://127.0.0.1:{port}"])]))
    assert statuses(gw, 4) == [200] * 4               # refused, retried on the other
    back = launcher.upstream("back", port=port)
    time.sleep(1.5)                                   # past the skip
    assert statuses(gw, 20) == [200] * 20
    assert back.stats()["requests"] >= 5, back.stats()
