"""Review of 1014469, 522ae6f and ef1d34a (Dec 09, g): each test failed before its fix.

1. ``gwserver_upstream_pool_idle_connections{target}`` and /admin/upstreams'
   ``pools_in_this_worker`` label a keep-alive pool by the URL of the target that opened it.
   Two spellings of one target (``http://h:P`` and ``http://h:P/``, two upstreams) share the
   pool; once the spelling that opened it left the table (etcd), the pool, still used by the
   other, was shown under the removed target's URL for the worker's life (the gauge never 0
   for it, none for the target that holds the connections). Relabelled at the prune now
   (an HTTP/2 connection shared so too).
2. 522ae6f's whole-connect Timeout of an https:// HTTP/1.1 target, started before
   opening_within with the same bound, fired first: a hung name's lookup was no longer
   shared (_HANGING), and eleven requests took every resolver thread (504 for ``localhost``).
3. Requests waiting for another's HTTP/2 connect (H2Pools._connecting) each made their own
   after it failed, one after the other, their wait unbounded: n requests to a target whose
   handshake (or connect) times out, the last waited n connect timeouts.
4. An HTTP/2 upstream's TLS handshake had a connect timeout of its own after the lookup's
   and TCP connect's: the whole connect up to twice timeouts.connect. What they left now.
"""
import json
import textwrap
import threading
import time

from ..conftest import gateway_conf, python_path_with, wait_until
from ..h2_upstreams import StreamingH2Upstream
from .test_attack_dec08h import series
from .test_etcd import all_workers_at, etcd_conf, put
from .test_fix_dec09f import HandshakeDribbler
from .test_review_dec06l import hung_lookups_leave_resolver_threads

IDLE = "gwserver_upstream_pool_idle_connections"


def shown(gw):
    """The idle-connections gauge's series above 0."""
    return {labels: value for labels, value in series(gw, IDLE).items() if value}


def test_a_shared_pool_is_relabelled_when_the_spelling_that_opened_it_is_removed(launcher,
                                                                                 tmp_path):
    one, two = launcher.upstream("one"), launcher.upstream("two")
    other_spelling = one.url + "/"      # the same target (scheme, host, port): one pool
    etcd = launcher.etcd()
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], workers=1))
    client = etcd.client()
    put(client, "upstreams", "up", {"targets": [{"url": one.url}]})
    put(client, "upstreams", "kept", {"targets": [{"url": other_spelling}]})
    put(client, "routes", "r", {"paths": ["/x"], "upstream": "up"})
    revision = put(client, "routes", "k", {"paths": ["/k"], "upstream": "kept"})
    wait_until(lambda: all_workers_at(gw, revision))
    assert gw.request("GET", "/x")[0].status == 200       # opens the pool, as one.url
    revision = put(client, "upstreams", "up", {"targets": [{"url": two.url}]})
    wait_until(lambda: all_workers_at(gw, revision))
    assert gw.request("GET", "/k")[0].status == 200       # the shared pool's connection
    # (pruned a second or so after a table change; the gauge set once a second)
    wait_until(lambda: shown(gw) == {f'target="{other_spelling}"': 1.0}, timeout=6)
    pools = json.loads(gw.admin_get("/admin/upstreams")[1])["pools_in_this_worker"]
    assert one.url not in pools, pools
    assert pools[other_spelling]["idle"] == 1, pools


def test_lookups_of_a_hanging_name_of_a_tls_target_do_not_take_every_resolver_thread(
        launcher, tmp_path, upstream):
    """handshake_within's Timeout, started before the lookup with opening_within's
    duration, fired first: opening_within took the cut for the socket's own connect timeout
    and never ran the one shared lookup of the hung name (_HANGING). Eleven requests to an
    https:// target whose name hangs took every resolver thread, and a route whose upstream
    is named ``localhost`` answered 504 behind them."""
    hung_lookups_leave_resolver_threads(launcher, tmp_path, upstream, "https")


def test_requests_waiting_on_a_dribbled_h2_handshake_share_its_timeout(launcher):
    """An HTTP/2 upstream's connect is made once, by one request; the others arriving
    meanwhile wait for it (H2Pools._connecting). When it failed (a handshake held to the
    connect timeout, 522ae6f; a connect that timed out), each waiter in turn made a connect
    of its own, its wait unbounded: the fourth of four requests to a dribbling target got
    its 504 after 8.8 s (two tries of a 1 s connect timeout each). A waiter shares the
    failure of the connect it waited for now, and waits no longer than its connect timeout."""
    up = HandshakeDribbler()
    try:
        gw = launcher.gateway(gateway_conf([{
            "id": "r", "paths": ["/r"], "timeouts": {"connect": 1.0},
            "upstream": {"targets": [{"url": f"https://127.0.0.1:{up.port}"}],
                         "protocol": "h2"}}], workers=1))
        got = []

        def ask():
            begun = time.monotonic()
            resp, _ = gw.request("GET", "/r", timeout=15)
            got.append((resp.status, time.monotonic() - begun))

        askers = [threading.Thread(target=ask) for _ in range(4)]
        for asker in askers:
            asker.start()
            time.sleep(0.05)
        for asker in askers:
            asker.join(20)
        assert [status for status, _ in got] == [504] * 4, got
        assert max(took for _, took in got) < 3.5, got
    finally:
        up.close()


def test_a_shared_h2_connection_is_relabelled_when_the_spelling_that_opened_it_is_removed(
        launcher, tmp_path):
    up, two = StreamingH2Upstream(), StreamingH2Upstream()
    try:
        url = f"http://127.0.0.1:{up.port}"
        etcd = launcher.etcd()
        gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], workers=1))
        client = etcd.client()
        put(client, "upstreams", "up", {"targets": [{"url": url}], "protocol": "h2"})
        put(client, "upstreams", "kept", {"targets": [{"url": url + "/"}], "protocol": "h2"})
        put(client, "routes", "r", {"paths": ["/x"], "upstream": "up"})
        revision = put(client, "routes", "k", {"paths": ["/k"], "upstream": "kept"})
        wait_until(lambda: all_workers_at(gw, revision))
        assert gw.request("GET", "/x")[0].status == 200   # opens the connection, as url
        revision = put(client, "upstreams", "up",
                       {"targets": [{"url": f"http://127.0.0.1:{two.port}"}],
                        "protocol": "h2"})
        wait_until(lambda: all_workers_at(gw, revision))
        assert gw.request("GET", "/k")[0].status == 200   # the shared connection
        wait_until(lambda: shown(gw) == {f'target="{url}/"': 1.0}, timeout=6)
        pools = json.loads(gw.admin_get("/admin/upstreams")[1])["pools_in_this_worker"]
        assert list(pools) == [url + "/"], pools
    finally:
        up.close()
        two.close()


SLOW_RESOLVER = textwrap.dedent("""
    import gevent
    from gevent.resolver.thread import Resolver

    class SlowResolver(Resolver):
        def getaddrinfo(self, host, *args, **kwargs):
            name = host.decode() if isinstance(host, bytes) else str(host)
            if name.endswith(".slow.test"):
                gevent.sleep(0.8)       # a slow nameserver, answering within the timeout
                host = "127.0.0.1"
            return super().getaddrinfo(host, *args, **kwargs)
""")


def test_an_h2_targets_lookup_connect_and_handshake_are_held_to_one_connect_timeout(
        launcher, tmp_path):
    """522ae6f held an HTTP/2 upstream's TLS handshake to a connect timeout of its own,
    after the lookup and TCP connect had theirs: a slow name (0.8 s of a 1 s timeout) and a
    dribbled handshake took 1.9 s a try, where an HTTP/1.1 upstream's whole connect is held
    to the one timeout (and docs/routes.md says so of both)."""
    (tmp_path / "slow_resolver.py").write_text(SLOW_RESOLVER)
    up = HandshakeDribbler()
    try:
        gw = launcher.gateway(gateway_conf([{
            "id": "r", "paths": ["/r"], "timeouts": {"connect": 1.0},
            "retry": {"attempts": 0},
            "upstream": {"targets": [{"url": f"https://up.slow.test:{up.port}"}],
                         "protocol": "h2"}}], workers=1),
            env={**python_path_with(tmp_path),
                 "GEVENT_RESOLVER": "slow_resolver.SlowResolver"})
        begun = time.monotonic()
        resp, body = gw.request("GET", "/r", timeout=10)
        took = time.monotonic() - begun
        assert resp.status == 504, (resp.status, body)
        assert took < 1.5, took
    finally:
        up.close()
