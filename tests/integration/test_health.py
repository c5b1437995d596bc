"""Upstream health, balancing and service discovery through real gateways, with real upstream
processes that the tests kill, hang, break and bring back (issue 7)."""
import collections
import json
import os
import signal
import socket
import subprocess
import sys
import time

from ..conftest import gateway_conf, stop_process, wait_until
from ..h2_upstreams import ScriptedH2Upstream
from .test_etcd import all_workers_at, etcd_conf, put

FAST_CHECK = {"interval": 0.2, "timeout": 0.3, "healthy_threshold": 2,
              "unhealthy_threshold": 2, "max_interval": 1.0, "path": "/echo"}


def pool_conf(upstreams, workers=2, **upstream):
    return gateway_conf([{"id": "r", "paths": ["/r/*rest"], "strip_prefix": "/r",
                          "upstream": "pool"}], workers=workers, upstreams={"pool": {
                              "targets": [{"url": u.url} for u in upstreams], **upstream}})


def served_by(gw, n=20, path="/r/echo", headers=None):
    out = collections.Counter()
    for _ in range(n):
        resp, body = gw.request("GET", path, headers=headers)
        out[json.loads(body)["server"] if resp.status == 200 else resp.status] += 1
    return out


def target_health(gw):
    view = json.loads(gw.admin_get("/admin/upstreams")[1])
    return {t["url"]: t["health"] for t in view["upstreams"]["pool"]["targets"]}


def target_view(gw, url, upstream="pool"):
    """What /admin/upstreams says of one target."""
    view = json.loads(gw.admin_get("/admin/upstreams")[1])
    return [t for t in view["upstreams"][upstream]["targets"] if t["url"] == url][0]


def test_active_checks_take_a_killed_target_out_and_bring_it_back(launcher):
    a, b = launcher.upstream("a"), launcher.upstream("b")
    gw = launcher.gateway(pool_conf([a, b], health_check=FAST_CHECK))
    wait_until(lambda: set(target_health(gw).values()) == {"healthy"}, timeout=10)
    assert set(served_by(gw)) == {"a", "b"}
    stop_process(b.proc)
    killed = time.monotonic()
    # connect failures meanwhile are retried on a: no client sees an error
    seen = collections.Counter()
    while target_health(gw)[b.url] != "unhealthy":
        seen += served_by(gw, 5)
        assert time.monotonic() - killed < 5
    assert set(seen) <= {"a"}
    assert served_by(gw, 30) == {"a": 30}
    launcher.upstream("b", port=b.port)         # back on its port
    wait_until(lambda: target_health(gw)[b.url] == "healthy", timeout=10)
    wait_until(lambda: "b" in served_by(gw, 10), timeout=5)
    assert "is now UNHEALTHY (connect" in gw.log() and "is now healthy" in gw.log()
    text = gw.admin_get("/metrics")[1].decode()
    assert f'gwserver_health_checks_total{{result="failure",target="{b.url}",upstream="pool"}}' \
        in text


def h2_pool_gateway(launcher, *upstreams):
    """A gateway whose route /r/* goes to an h2 upstream of ``upstreams`` (h2c servers on
    loopback), checked every 0.2 s at /; -> (gateway, the targets' URLs)."""
    urls = [f"http://127.0.0.1:{up.port}" for up in upstreams]
    gw = launcher.gateway(gateway_conf(
        [{"id": "r", "paths": ["/r/*rest"], "upstream": "pool"}],
        upstreams={"pool": {"targets": [{"url": url} for url in urls], "protocol": "h2",
                            "health_check": {**FAST_CHECK, "path": "/"}}}))
    return gw, urls


def test_active_checks_speak_http2_to_an_h2_upstream(launcher):
    """The check spoke HTTP/1.1 to every target: an h2c-only target (a gRPC server) was "not
    an HTTP answer", so every target of such an upstream was unhealthy and the upstream in
    panic, sending traffic to the failing ones too."""
    up, down = ScriptedH2Upstream("up", "ok"), ScriptedH2Upstream("down", "500")
    try:
        gw, urls = h2_pool_gateway(launcher, up, down)
        wait_until(lambda: target_health(gw) == {urls[0]: "healthy", urls[1]: "unhealthy"},
                   timeout=10)
        assert [gw.request("GET", "/r/x")[0].status for _ in range(10)] == [200] * 10
    finally:
        up.close()
        down.close()


def test_a_target_whose_answer_breaks_its_check_is_taken_out(launcher):
    """An h2 target that went from a good answer to a :status of "abc" stayed healthy: the
    probe raised, its greenlet died, and the target's last verdict stood for good."""
    up, broken = ScriptedH2Upstream("up", "ok"), ScriptedH2Upstream("broken", "ok")
    try:
        gw, urls = h2_pool_gateway(launcher, up, broken)
        wait_until(lambda: set(target_health(gw).values()) == {"healthy"}, timeout=10)
        broken.behaviour = "bad-status"
        wait_until(lambda: target_health(gw)[urls[1]] == "unhealthy", timeout=10)
        error = target_view(gw, urls[1])
        assert "not a status code" in error["last_error"]
        assert target_health(gw)[urls[0]] == "healthy"
        assert [gw.request("GET", "/r/x")[0].status for _ in range(10)] == [200] * 10
        broken.behaviour = "ok"                 # and it is still checked: it comes back
        wait_until(lambda: target_health(gw)[urls[1]] == "healthy", timeout=10)
    finally:
        up.close()
        broken.close()


def test_a_target_that_drips_its_answer_is_taken_out(launcher):
    """Each read of the check waited up to its timeout, and nothing bounded the whole: a
    target that sends its answer's head a byte every 0.1 s (3 s in all) passed a check
    whose timeout is 0.3 s, and a head that never ends would hold the check for good."""
    a, raw = launcher.upstream("a"), launcher.raw_upstream()
    gw = launcher.gateway(pool_conf([a, raw], health_check={**FAST_CHECK,
                                                            "path": "/drip-head"}))
    # Both at once: a checker the master restarted takes a down target up before its own
    # probe has said why (health.json then holds no reason until one fails).
    expected = {"health": "unhealthy", "last_error": "timed out: no whole answer in 0.3 s"}
    wait_until(lambda: target_view(gw, raw.url).items() >= expected.items(), timeout=10)


def test_a_target_that_accepts_but_never_answers_is_taken_out(launcher):
    a = launcher.upstream("a")
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(64)                 # the kernel completes handshakes; nobody ever answers
    hung_url = f"http://127.0.0.1:{hung.getsockname()[1]}"
    try:
        gw = launcher.gateway(gateway_conf(
            [{"id": "r", "paths": ["/r/*rest"], "strip_prefix": "/r", "upstream": "pool"}],
            upstreams={"pool": {"targets": [{"url": a.url}, {"url": hung_url}],
                                "health_check": FAST_CHECK}}))
        wait_until(lambda: target_health(gw)[hung_url] == "unhealthy", timeout=10)
        error = target_view(gw, hung_url)
        assert "timed out" in error["last_error"]
        assert served_by(gw, 20) == {"a": 20}
    finally:
        hung.close()


def test_health_path_answering_5xx_and_panic_when_all_are_down(launcher):
    a, b = launcher.upstream("a"), launcher.upstream("b")
    # one worker: with two, the admin view below may come from the other one, which reads the
    # checker's verdicts on its own tick and may not have seen the second target fall yet
    gw = launcher.gateway(pool_conf([a, b], workers=1, health_check={**FAST_CHECK,
                                                                     "path": "/status/503"}))
    wait_until(lambda: set(target_health(gw).values()) == {"unhealthy"}, timeout=10)
    # every target is down: panic mode spreads traffic over all of them rather than failing
    assert set(served_by(gw, 20)) == {"a", "b"}
    view = json.loads(gw.admin_get("/admin/upstreams")[1])
    assert view["upstreams"]["pool"]["panic"] is True
    assert "panic mode" in gw.log()


def test_passive_ejection_tells_every_worker_and_expires(launcher):
    a, b = launcher.upstream("a"), launcher.upstream("b")
    gw = launcher.gateway(pool_conf([a, b], workers=2, passive={
        "consecutive_failures": 3, "eject_for": 8.0, "max_eject_for": 30,
        "max_ejected_percent": 50}))
    # both answer 503 here; failures count per worker and target, 3 in a row eject. The
    # ejection lasts 8 s: long enough to be seen even when a loaded machine is slow.
    statuses = collections.Counter()
    for _ in range(30):
        resp, _ = gw.request("GET", "/r/status/503")
        statuses[resp.status] += 1
    assert statuses == {503: 30}
    # the worker answering the admin request may read the ejection on its next 50 ms tick
    ejected = wait_until(lambda: [url for url, h in target_health(gw).items()
                                  if h == "ejected"], timeout=2)
    assert len(ejected) == 1            # max_ejected_percent 50: the second is kept in
    assert "not ejecting" in gw.log() and "ejected http" in gw.log()
    survivor = "a" if ejected[0] == b.url else "b"
    # both workers honour it (and still do a second later: none lags behind)
    wait_until(lambda: served_by(gw, 20) == {survivor: 20}, timeout=2)
    time.sleep(1)
    assert served_by(gw, 20) == {survivor: 20}
    wait_until(lambda: set(served_by(gw, 10)) == {"a", "b"}, timeout=15)    # 8 s later: back
    text = gw.admin_get("/metrics")[1].decode()
    assert f'gwserver_upstream_ejections_total{{target="{ejected[0]}",upstream="pool"}}' in text


def test_retry_budget_exhausted_stops_retries(launcher):
    from ..conftest import free_port
    a = launcher.upstream("a")
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(4)]       # nothing listens
    targets = {"pool": {"targets": [{"url": u} for u in [a.url] + dead]}}
    route = [{"id": "r", "paths": ["/r/*rest"], "strip_prefix": "/r", "upstream": "pool"}]
    tight = launcher.gateway(gateway_conf(route, upstreams=targets, upstream_defaults={
        "retries": 5, "retry_budget_percent": 0, "retry_budget_min_per_second": 0.2}))
    roomy = launcher.gateway(gateway_conf(route, upstreams=targets,
                                          upstream_defaults={"retries": 5}))
    # Each dead target refuses once per worker per second, then is skipped for a second.
    tight_statuses = collections.Counter(tight.request("GET", "/r/echo")[0].status
                                         for _ in range(30))
    roomy_statuses = collections.Counter(roomy.request("GET", "/r/echo")[0].status
                                         for _ in range(30))
    assert roomy_statuses == {200: 30}                  # default budget: every one retried
    assert tight_statuses[502] >= 1                     # 2 retries per 10 s, then failures
    assert tight_statuses[200] >= 20
    assert "retry budget of upstream pool is spent" in tight.log()
    wait_until(lambda: 'gwserver_upstream_retries_total{outcome="budget_exhausted",'
                       'upstream="pool"}' in tight.admin_get("/metrics")[1].decode(), timeout=5)


def test_balancing_policies_through_real_workers(launcher):
    from concurrent.futures import ThreadPoolExecutor
    fast, slow = launcher.upstream("fast"), launcher.upstream("slow", delay=0.2)

    def shares(gw):
        def one(_):
            resp, body = gw.request("GET", "/r/echo")
            return json.loads(body)["server"]
        with ThreadPoolExecutor(8) as pool:
            return collections.Counter(pool.map(one, range(80)))
    least = shares(launcher.gateway(pool_conf([fast, slow], workers=1,
                                              balance="least_outstanding")))
    rotating = shares(launcher.gateway(pool_conf([fast, slow], workers=1)))
    # round robin alternates whatever the load; least outstanding sends new requests to the
    # target that is not holding 8 slow ones
    assert rotating == {"fast": 40, "slow": 40}
    assert least["fast"] >= 60, least
    hashing = launcher.gateway(pool_conf([fast, slow], workers=2, balance="consistent_hash",
                                         hash_key="header:X-User"))
    for user in ("ann", "bob", "cyd", "dan", "eve"):
        assert len(served_by(hashing, 8, headers={"X-User": user})) == 1   # sticky, any worker
    assert set(served_by(hashing, 40)) == {"fast", "slow"}     # no key: round robin


def test_health_process_is_titled_restarted_and_kept_across_reload(launcher):
    a = launcher.upstream("a")
    gw = launcher.gateway(pool_conf([a], health_check=FAST_CHECK))
    def titled():
        pid = gw.helper_pid("health")
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return pid if f.read().startswith(b"gwserver: health") else None
    pid = wait_until(titled, timeout=10)
    os.kill(gw.pid, signal.SIGHUP)
    time.sleep(2)
    assert gw.helper_pid("health") == pid                        # kept across the reload
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: gw.helper_pid("health") not in (None, pid), timeout=10)
    assert "health (pid" in gw.log() and "restarting it" in gw.log()


def test_a_stuck_health_process_is_killed_and_restarted(launcher):
    """Stopped (SIGSTOP: a call that never returns, as the master sees it), the health
    process kept its pid, and target health froze: a target that died stayed "healthy".
    Past its promised sign of life (a turn promised 5 s ahead, 1 s more) and
    server.helper_timeout it is killed and restarted, and a target that died meanwhile is
    found out. (A turn was promised 30 s ahead: stuck, its verdicts froze 31 s and more.)"""
    a, b = launcher.upstream("a"), launcher.upstream("b")
    conf = pool_conf([a, b], health_check=FAST_CHECK)
    conf["server"]["helper_timeout"] = 1.0
    gw = launcher.gateway(conf)
    wait_until(lambda: set(target_health(gw).values()) == {"healthy"}, timeout=10)
    first = gw.helper_pid("health")
    os.kill(first, signal.SIGSTOP)
    stopped = time.monotonic()
    stop_process(b.proc)
    time.sleep(2)
    assert "is stuck" not in gw.log()           # silent, but within its promise
    wait_until(lambda: f"health (pid {first}) is stuck" in gw.log(), timeout=20)
    assert time.monotonic() - stopped < 5 + 1 + 1 + 5       # the promise, the timeout, slack
    wait_until(lambda: target_health(gw).get(b.url) == "unhealthy", timeout=30)
    assert gw.helper_pid("health") not in (None, first)
    assert f"health (pid {first}) was killed by signal 9; restarting it" in gw.log()


def test_service_instances_follow_leases(launcher, tmp_path):
    etcd = launcher.etcd()
    a, b = launcher.upstream("a"), launcher.upstream("b")
    conf = etcd_conf(tmp_path, [etcd.url])
    gw = launcher.gateway(conf)
    client = etcd.client()
    put(client, "upstreams", "orders", {"service": "orders"})
    revision = put(client, "routes", "o", {"paths": ["/o/*rest"], "strip_prefix": "/o",
                                           "upstream": "orders"})
    wait_until(lambda: all_workers_at(gw, revision))
    resp, body = gw.request("GET", "/o/echo")
    assert resp.status == 503 and b"no live instance of service orders" in body

    def register(upstream, ttl):
        proc = subprocess.Popen([sys.executable, "-m", "gwserver", "register", "-c",
                                 str(gw.conf_path), "--service", "orders", "--url", upstream.url,
                                 "--ttl", str(ttl)], stdout=subprocess.PIPE, text=True,
                                start_new_session=True)
        launcher.started.append(proc)
        assert "registered" in proc.stdout.readline()
        return proc
    reg_a, reg_b = register(a, 2), register(b, 2)
    wait_until(lambda: set(served_by(gw, 10, "/o/echo")) == {"a", "b"}, timeout=10)
    reg_b.send_signal(signal.SIGTERM)           # a clean stop revokes the lease at once
    assert reg_b.wait(5) == 0
    wait_until(lambda: served_by(gw, 10, "/o/echo") == {"a": 10}, timeout=5)
    reg_a.kill()                                # a crash: the key goes when the lease expires
    reg_a.wait()
    killed = time.monotonic()
    wait_until(lambda: gw.request("GET", "/o/echo")[0].status == 503, timeout=10)
    assert 1.0 <= time.monotonic() - killed <= 6.0
    client.put("/gw/services/orders/bad", b"{not json")           # rejected alone, named
    from .test_etcd import status_of
    wait_until(lambda: "services/orders/bad" in (status_of(gw) or {}).get("rejected", {}),
               timeout=5)


def test_removed_targets_are_drained_not_cut(launcher, tmp_path):
    from concurrent.futures import ThreadPoolExecutor
    etcd = launcher.etcd()
    a, b = launcher.upstream("a"), launcher.upstream("b")
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], workers=1))
    client = etcd.client()
    put(client, "upstreams", "pool", {"targets": [{"url": a.url}]})
    revision = put(client, "routes", "r", {"paths": ["/r/*rest"], "strip_prefix": "/r",
                                           "upstream": "pool"})
    wait_until(lambda: all_workers_at(gw, revision))
    assert served_by(gw, 3) == {"a": 3}
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(gw.request, "GET", "/r/slow/1.5")     # in flight on a
        time.sleep(0.3)
        revision = put(client, "upstreams", "pool", {"targets": [{"url": b.url}]})
        wait_until(lambda: all_workers_at(gw, revision))
        assert served_by(gw, 3) == {"b": 3}
        resp, body = slow.result(timeout=10)
        assert resp.status == 200 and body == b"slow done"        # finished on the old one

    def pools():
        return set(json.loads(gw.admin_get("/admin/upstreams")[1])["pools_in_this_worker"])
    wait_until(lambda: pools() == {b.url}, timeout=5)
    assert "closed the pools of 1 removed targets" in gw.log()


def test_health_checks_cover_upstreams_written_inline_in_routes(launcher):
    a, b = launcher.upstream("a"), launcher.upstream("b")
    gw = launcher.gateway(gateway_conf([{
        "id": "inline", "paths": ["/r/*rest"], "strip_prefix": "/r", "upstream": {
            "targets": [{"url": a.url}, {"url": b.url}], "health_check": FAST_CHECK}}]))
    stop_process(b.proc)

    def b_is_down():
        view = json.loads(gw.admin_get("/admin/upstreams")[1])
        targets = view["upstreams"]["inline.upstream"]["targets"]
        return [t["health"] for t in targets if t["url"] == b.url] == ["unhealthy"]
    wait_until(b_is_down, timeout=10)
    assert served_by(gw, 10) == {"a": 10}


def test_the_checker_keeps_to_its_probe_budget_however_short_the_intervals(launcher):
    """An interval of 0.05 s is valid for any number of targets: four asked the checker for
    80 probes a second. With a budget of 8, every interval is stretched ten times, each
    target keeps its share, and the journal says why (docs/health.md)."""
    targets = [launcher.upstream(name) for name in "abcd"]
    conf = pool_conf(targets, workers=1, health_check={**FAST_CHECK, "interval": 0.05})
    conf["upstream_defaults"] = {"health_probes_per_second": 8}
    gw = launcher.gateway(conf)
    wait_until(lambda: "every interval is 10.0 times as long" in gw.log(), timeout=10)
    assert "health checks of 4 targets ask for 80 probes a second, over " \
           "upstream_defaults.health_probes_per_second = 8" in gw.log()
    before = [stats(t)["requests"] for t in targets]
    time.sleep(3.0)
    probes = [stats(t)["requests"] - n for t, n in zip(targets, before)]
    # 2 a second each, +-20% jitter (unbounded: 20 a second each, 240 in all)
    assert 12 <= sum(probes) <= 40 and min(probes) >= 2, probes
    assert set(target_health(gw).values()) == {"healthy"}


def stats(upstream):
    with socket.create_connection(("127.0.0.1", upstream.port), timeout=5) as sock:
        sock.sendall(b"GET /stats HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return json.loads(answer.partition(b"\r\n\r\n")[2])
