"""Review of 2026-12-16's commits (a helper's pass, a31), on the live table: 62fb992's
upstream refused as a route using it cannot take it (core.table._put_upstream, _retry_unfit).

While one upstream stayed refused so, every route put anywhere in the table tried it again,
and each try read the upstreams of every route of the table (_recompile_users): N route puts
cost N x N. A sync process that restarts (load_served, then etcd's full load, which puts every
route again: the published values are specs, etcd's are bytes) took 3.9 s for 1,000 routes,
minutes for 10,000, publishing nothing meanwhile. It is tried again only when a route that
could not take it changes or goes: no other change can let it in."""
import json

from gwserver.core.table import LiveTable
from gwserver.plugins import load_registry
from gwserver.settings import SERVER, UPSTREAM_DEFAULTS

PLAIN = {"targets": [{"url": "http://127.0.0.1:9001"}]}
H2 = {"targets": [{"url": "http://127.0.0.1:9002"}], "protocol": "h2"}
H1 = {"targets": [{"url": "http://127.0.0.1:9002"}]}
RPC = {"paths": ["/rpc/*rest"], "upstream": "g", "plugins": {"grpc_web": True}}
ROUTES = 300


def table():
    return LiveTable(UPSTREAM_DEFAULTS.defaults(), SERVER.defaults(), {}, load_registry())


def counting_puts(t, upstream_id):
    """The puts of ``upstream_id`` the table makes by itself from now on (its retries)."""
    tries = []
    put = t.put_upstream

    def counted(item_id, raw, version=0):
        if item_id == upstream_id:
            tries.append(version)
        return put(item_id, raw, version)
    t.put_upstream = counted
    return tries


def with_unfit_g():
    """A table where g's update (protocol h2 taken off) is refused: route rpc (grpc_web)
    cannot take it."""
    t = table()
    t.put_upstream("u", json.dumps(PLAIN), 1)
    t.put_upstream("g", json.dumps(H2), 2)
    assert t.put_route("rpc", json.dumps(RPC), 3)
    assert not t.put_upstream("g", json.dumps(H1), 4)
    assert "route rpc" in t.rejected["upstreams/g"], t.rejected
    return t


def plain_route(i):
    return json.dumps({"paths": [f"/r{i}"], "upstream": "u"})


def test_routes_that_never_used_an_unfit_upstream_do_not_try_it_again():
    t = with_unfit_g()
    tries = counting_puts(t, "g")
    for i in range(ROUTES):
        assert t.put_route(f"r{i}", plain_route(i), 10 + i)
    t.delete_route("r0")
    assert tries == [], f"g tried again {len(tries)} times for {ROUTES} unrelated routes"
    # the route that could not take it lets it in as it changes (as before)
    assert t.put_route("rpc", json.dumps({**RPC, "plugins": {}}), 1000)
    assert tries == [4] and t.upstream_specs["g"][1]["protocol"] == "http1"
    assert "upstreams/g" not in t.rejected, t.rejected


def test_a_restarted_sync_process_tries_an_unfit_upstream_once_per_route_that_refused_it():
    """load_served (the workers' table, from runtime_dir), then etcd's full load, by value:
    every route is put again. Each put tried g again, reading every route's upstreams."""
    before = with_unfit_g()
    for i in range(ROUTES):
        before.put_route(f"r{i}", plain_route(i), 10 + i)
    t = table()
    t.apply_published(before.published())
    tries = counting_puts(t, "g")
    routes = {f"r{i}": (10 + i, plain_route(i).encode()) for i in range(ROUTES)}
    routes["rpc"] = (3, json.dumps(RPC).encode())
    t.replace_all(routes, {"u": (1, json.dumps(PLAIN).encode()),
                           "g": (4, json.dumps(H1).encode())})
    assert len(tries) <= 2, f"g tried {len(tries)} times in one full load"
    assert "route rpc" in t.rejected["upstreams/g"], t.rejected
    assert t.upstream_specs["g"][1]["protocol"] == "h2"


def test_deleting_the_route_that_refused_an_upstream_lets_it_in():
    t = with_unfit_g()
    t.put_route("other", plain_route(1), 5)
    t.delete_route("rpc")
    assert t.upstream_specs["g"][1]["protocol"] == "http1"
    assert "upstreams/g" not in t.rejected, t.rejected


def test_two_upstreams_one_route_could_not_take_both_go_in_as_it_changes():
    t = table()
    t.put_upstream("g", json.dumps(H2), 1)
    t.put_upstream("h", json.dumps({**H2, "targets": [{"url": "http://127.0.0.1:9003"}]}), 2)
    split = {"upstreams": [{"upstream": "g", "weight": 50}, {"upstream": "h", "weight": 50}]}
    assert t.put_route("rpc", json.dumps({**RPC, "plugins": {"grpc_web": True,
                                                             "split": split}}), 3)
    assert not t.put_upstream("g", json.dumps(H1), 4)
    assert not t.put_upstream("h", json.dumps({"targets": [{"url": "http://127.0.0.1:9003"}]}),
                              5)
    assert {"upstreams/g", "upstreams/h"} <= set(t.rejected), t.rejected
    assert t.put_route("rpc", json.dumps({**RPC, "plugins": {"split": split}}), 6)
    assert [t.upstream_specs[u][1]["protocol"] for u in "gh"] == ["http1", "http1"]
    assert t.rejected == {}, t.rejected
