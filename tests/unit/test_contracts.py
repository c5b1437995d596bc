"""The private internals of urllib3 and prometheus-client gwserver relies on (setup.cfg bounds
their versions below the next major; a minor release may still move them). Each test names
the code that would break. No sockets: pools and connections are never connected here."""
import inspect

import pytest


def test_urllib3_pool_slots_get_put_new_conn():
    """upstream/proxy.py checkout()/release(): _get_conn(timeout=), _new_conn(), _put_conn(conn or
    None) on a pool whose queue holds None for a free slot; EmptyPoolError when exhausted."""
    from urllib3 import HTTPConnectionPool
    from urllib3.exceptions import EmptyPoolError
    pool = HTTPConnectionPool("127.0.0.1", 9, maxsize=1, block=True)
    assert "timeout" in inspect.signature(pool._get_conn).parameters
    conn = pool._get_conn(timeout=0.01)
    assert conn.sock is None                        # not connected: proxy.py calls connect()
    with pytest.raises(EmptyPoolError):
        pool._get_conn(timeout=0.01)
    pool._put_conn(None)                            # a failed connection gives its slot back
    again = pool._get_conn(timeout=0.01)
    pool._put_conn(again)
    assert list(pool.pool.queue) == [again]         # runtime.idle_connections reads this
    fresh = pool._new_conn()
    assert fresh is not again and fresh.sock is None
    pool.close()


def test_urllib3_connection_error_order():
    """proxy.py catches NewConnectionError before ConnectTimeoutError: it subclasses it."""
    from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
    assert issubclass(NewConnectionError, ConnectTimeoutError)


def test_prometheus_histogram_buckets_and_sum():
    """server/metrics.py _push_histogram: per-bucket (not cumulative) values in ``_buckets``,
    one per bound plus +Inf, and the sum in ``_sum``, each with inc(); the collector makes the
    buckets cumulative."""
    from prometheus_client import CollectorRegistry, Histogram
    registry = CollectorRegistry()
    h = Histogram("contract_seconds", "x", ["route"], buckets=(0.1, 1.0), registry=registry)
    child = h.labels("r")
    assert len(child._buckets) == 3
    child._buckets[0].inc(2)
    child._buckets[2].inc(1)
    child._sum.inc(5.5)
    samples = {(s.name, s.labels.get("le")): s.value
               for s in next(iter(registry.collect())).samples}
    assert samples[("contract_seconds_bucket", "0.1")] == 2
    assert samples[("contract_seconds_bucket", "1.0")] == 2
    assert samples[("contract_seconds_bucket", "+Inf")] == 3
    assert samples[("contract_seconds_count", None)] == 3
    assert samples[("contract_seconds_sum", None)] == 5.5


def test_prometheus_mmaped_dict(tmp_path):
    """server/metrics.py retire(): MmapedDict(path), read_value -> (value, timestamp),
    write_value(key, value, timestamp), close(), and read_all_values_from_file(path) yielding
    (key, value, timestamp, position); multiprocess.mark_process_dead(pid, directory)."""
    from prometheus_client import multiprocess
    from prometheus_client.mmap_dict import MmapedDict
    path = str(tmp_path / "counter_1.db")
    d = MmapedDict(path)
    assert d.read_value("k") == (0.0, 0.0)
    d.write_value("k", 3.0, 12.0)
    d.write_value("j", 1.5, 13.0)
    d.close()
    again = MmapedDict(path)
    assert again.read_value("k") == (3.0, 12.0)
    again.close()
    rows = list(MmapedDict.read_all_values_from_file(path))
    assert [(key, value, ts) for key, value, ts, _ in rows] == [("k", 3.0, 12.0), ("j", 1.5, 13.0)]
    assert list(inspect.signature(multiprocess.mark_process_dead).parameters)[:2] == \
        ["pid", "path"]


def test_setup_cfg_bounds_the_versions_whose_internals_we_use():
    import configparser
    from pathlib import Path
    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).resolve().parents[2] / "setup.cfg")
    requires = cfg["options"]["install_requires"]
    assert "urllib3>=2.0,<3" in requires and "prometheus-client>=0.19,<1" in requires
