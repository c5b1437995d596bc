"""The upstream pools' pure halves of tests/integration/test_retry_attack_dec05e.py. No socket
is opened (urllib3 pools connect on first use; H2Connection is replaced by a stand-in).

- proxy.UpstreamPools.prune (defect 1): what a worker keeps of upstreams the table replaced.
- h2client.H2Pools.get (defect 4): an HTTP/2 connection renewed because its stream ids ran out
  (MAX_STREAMS_PER_CONNECTION, 2**29 requests: hours of a busy gRPC upstream) was closed, and
  every stream in flight on it cut, long-lived streaming calls too; it is retired now (no new
  streams, closed when its last one ends, as after a GOAWAY).
"""
from types import SimpleNamespace

from gwserver.core.routes import Target, Upstream
from gwserver.upstream import h2client
from gwserver.upstream.proxy import UpstreamPools


def upstream(pool_size=4, port=8080):
    target = Target(f"http://127.0.0.1:{port}", "http", "127.0.0.1", port, 1)
    return Upstream(id="pool", targets=(target,), pool_size=pool_size)


def test_prune_forgets_the_targets_of_replaced_upstreams():
    """Each etcd change of an upstream made new Target objects; the old ones, their upstream
    and their pool stayed in _by_target for the worker's life (it grew with every change)."""
    pools = UpstreamPools()
    for _ in range(50):                     # fifty changes that keep the target and settings
        current = upstream()
        first = pools.get(current.targets[0], current)
    assert pools.prune([current]) == (set(), set())
    assert len(pools._by_target) == 1 and len(pools.pools) == 1
    assert pools.get(current.targets[0], current) is first     # the live pool is kept


def test_prune_closes_the_old_pool_of_changed_settings_and_says_which():
    pools = UpstreamPools()
    old, new, gone = upstream(4), upstream(5), upstream(4, port=9090)
    kept = pools.get(new.targets[0], new)
    pools.get(old.targets[0], old)
    pools.get(gone.targets[0], gone)
    removed, replaced = pools.prune([new])
    assert removed == {"http://127.0.0.1:9090"} and replaced == {"http://127.0.0.1:8080"}
    assert list(pools.pools.values()) == [kept] and len(pools._by_target) == 1


class SpentConnection:
    """An open HTTP/2 connection out of stream ids, with a stream in flight."""
    usable, closed, draining = False, False, False

    def __init__(self):
        self.calls = []

    def close(self):
        self.calls.append("close")

    def retire(self):
        self.calls.append("retire")


def test_a_connection_out_of_stream_ids_is_retired_not_closed(monkeypatch):
    monkeypatch.setattr(h2client, "H2Connection", lambda *args: SimpleNamespace(usable=True))
    pools = h2client.H2Pools()
    target = upstream().targets[0]
    spent = pools.connections[(target.key, None)] = SpentConnection()
    renewed = pools.get(target, 1.0, None, 5.0)
    assert renewed is not spent and pools.connections[(target.key, None)] is renewed
    assert spent.calls == ["retire"]


def test_per_url_state_of_targets_gone_from_the_table_is_forgotten():
    """Proxy.outstanding and Proxy.refused kept an entry for every target URL a worker ever
    sent to: with service discovery, every instance that ever came, for the worker's life."""
    from gwserver.upstream.proxy import forget_gone
    outstanding = {"http://live:1": 0, "http://gone:1": 0, "http://busy-gone:1": 2}
    refused = {"http://live:1": 5.0, "http://gone:1": 5.0}
    forget_gone(outstanding, refused, {"http://live:1"})
    # a gone target with requests in flight keeps its count until they end
    assert outstanding == {"http://live:1": 0, "http://busy-gone:1": 2}
    assert refused == {"http://live:1": 5.0}
