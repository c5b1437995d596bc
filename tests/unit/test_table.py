"""The live table's rules, item by item (the same code runs in the sync process and workers)."""
import json

import pytest

from gwserver.core.table import LiveTable
from gwserver.errors import RouteNotFound
from gwserver.plugins import load_registry
from gwserver.settings import SERVER, UPSTREAM_DEFAULTS, parse_conf

UP = {"targets": [{"url": "http://127.0.0.1:9001"}]}


def table(**kw):
    return LiveTable(UPSTREAM_DEFAULTS.defaults(), SERVER.defaults(), {}, load_registry(), **kw)


def route(route_id, path, upstream="u1"):
    return json.dumps({"id": route_id, "paths": [path], "upstream": upstream})


def served(t, path):
    try:
        return t.router.match("GET", "h", path, None)[0].id
    except RouteNotFound:
        return None


def test_bad_values_are_rejected_alone():
    t = table()
    t.put_upstream("u1", json.dumps(UP), 1)
    t.put_route("good", route("good", "/good"), 2)
    assert not t.put_route("badjson", b"{nope", 3)
    assert not t.put_route("badschema", json.dumps({"paths": "/x", "upstream": "u1"}), 4)
    assert not t.put_route("conflict", route("conflict", "/a/:x"), 5) is False  # first is fine
    assert not t.put_route("conflict2", route("conflict2", "/a/:y/b"), 6)
    assert served(t, "/good") == "good" and served(t, "/a/1") == "conflict"
    assert "invalid JSON" in t.rejected["routes/badjson"]
    assert "paths: must be a list" in t.rejected["routes/badschema"]
    assert "conflicts with :x" in t.rejected["routes/conflict2"]
    assert set(t.published()["routes"]) == {"good", "conflict"}


def test_a_bad_update_keeps_the_last_good_version():
    t = table()
    t.put_upstream("u1", json.dumps(UP), 1)
    t.put_route("r", route("r", "/v1"), 2)
    assert not t.put_route("r", json.dumps({"id": "r", "paths": ["nope"], "upstream": "u1"}), 3)
    assert served(t, "/v1") == "r"
    assert "previous version keeps serving" in t.rejected["routes/r"]
    assert t.put_route("r", route("r", "/v2"), 4)
    assert served(t, "/v1") is None and served(t, "/v2") == "r"
    assert "routes/r" not in t.rejected


def test_route_waits_for_its_upstream_holding_its_paths():
    """Until its upstream arrives a route is served with a stand-in that has no targets (503
    after its own plugins): its paths never fall through to a broader route."""
    t = table()
    t.put_upstream("u1", json.dumps(UP), 1)
    t.put_route("public", route("public", "/*rest"), 2)
    assert t.put_route("r", route("r", "/late", upstream="later"), 3)
    assert "starts working when it arrives" in t.rejected["routes/r"] and not t.refused()
    assert served(t, "/late") == "r" and t.router.routes["r"].upstream.targets == ()
    assert "r" in t.published()["routes"]           # workers hold its paths too
    t.put_upstream("later", json.dumps(UP), 4)
    assert served(t, "/late") == "r" and t.rejected == {}
    assert t.router.routes["r"].upstream.targets[0].port == 9001


def test_upstream_change_recompiles_its_routes():
    t = table()
    t.put_upstream("u1", json.dumps(UP), 1)
    t.put_route("r", route("r", "/r"), 2)
    t.put_upstream("u1", json.dumps({"targets": [{"url": "http://127.0.0.1:9002"}]}), 3)
    assert t.router.routes["r"].upstream.targets[0].port == 9002


def test_deleting_a_used_upstream_leaves_its_routes_waiting_as_on_a_new_host():
    """Every host serves what etcd holds: the routes of a deleted upstream answer 503 until
    it is back, as they do on a host that starts after the delete (one that had kept the
    upstream served on while new hosts did not)."""
    t = table()
    t.put_upstream("u1", json.dumps(UP), 1)
    t.put_route("r", route("r", "/r"), 2)
    t.delete_upstream("u1")
    assert "u1" not in t.upstreams and "u1" not in t.published()["upstreams"]
    assert served(t, "/r") == "r" and t.router.routes["r"].upstream.targets == ()
    assert "starts working when it arrives" in t.rejected["routes/r"]
    fresh = table()
    fresh.apply_published(t.published())
    assert served(fresh, "/r") == "r" and fresh.router.routes["r"].upstream.targets == ()
    t.put_upstream("u1", json.dumps(UP), 3)
    assert t.router.routes["r"].upstream.targets and t.rejected == {}
    t.delete_route("r")
    assert t.rejected == {}


def test_static_ids_cannot_be_taken():
    t = table(static_routes=[{"id": "s", "paths": ["/s"], "upstream": UP}])
    assert not t.put_route("s", route("s", "/other"), 1)
    assert served(t, "/s") == "s" and "taken by a static route" in t.rejected["routes/s"]


def test_replace_all_and_apply_published_converge():
    source = table()
    source.replace_all({"a": (2, route("a", "/a")), "b": (3, route("b", "/b")),
                        "bad": (4, b"{")}, {"u1": (1, json.dumps(UP))})
    worker = table()
    worker.apply_published(json.loads(json.dumps(source.published())))
    assert sorted(worker.router.routes) == ["a", "b"]
    source.replace_all({"a": (5, route("a", "/a2"))}, {"u1": (1, json.dumps(UP))})
    worker.apply_published(json.loads(json.dumps(source.published())))
    assert sorted(worker.router.routes) == ["a"]
    assert served(worker, "/a2") == "a" and served(worker, "/b") is None


def test_an_equal_revision_with_another_value_is_replaced_on_both_sides():
    """Revisions restart in another etcd cluster, a restore or a wipe: r0 at revision 2 in
    cluster 1 (upstream X) is not r0 at revision 2 in cluster 2 (upstream Y)."""
    x = {"targets": [{"url": "http://127.0.0.1:1"}]}
    y = {"targets": [{"url": "http://127.0.0.1:2"}]}
    source = table()
    source.replace_all({"r0": (2, route("r0", "/r0", "x"))}, {"x": (1, json.dumps(x))})
    snapshot = json.loads(json.dumps(source.published()))
    source, worker = table(), table()
    source.apply_published(snapshot)            # the sync process starts from the snapshot
    worker.apply_published(snapshot)
    source.replace_all({"r0": (2, route("r0", "/r0", "y"))}, {"y": (1, json.dumps(y))})
    worker.apply_published(json.loads(json.dumps(source.published())))
    for t in (source, worker):
        upstream = t.router.match("GET", "h", "/r0", None)[0].upstream
        assert upstream.id == "y" and [tg.url for tg in upstream.targets] == \
            ["http://127.0.0.1:2"]
        assert sorted(t.upstream_specs) == ["y"]


def test_replace_all_skips_items_whose_value_is_unchanged():
    t = table()
    t.replace_all({"a": (2, route("a", "/a"))}, {"u1": (1, json.dumps(UP))})
    compiled = t.router.routes["a"]
    t.replace_all({"a": (2, route("a", "/a"))}, {"u1": (1, json.dumps(UP))})
    assert t.router.routes["a"] is compiled


def test_key_and_value_ids_must_agree():
    t = table()
    t.put_upstream("u1", json.dumps(UP), 1)
    assert not t.put_route("x", route("y", "/p"), 2)
    assert "does not match the key" in t.rejected["routes/x"]


@pytest.mark.parametrize("n", [1000])
def test_updates_touch_only_the_changed_route(n):
    t = table()
    t.put_upstream("u1", json.dumps(UP), 1)
    t.replace_all({f"r{i}": (i + 2, route(f"r{i}", f"/s{i}/items/:id")) for i in range(n)},
                  {"u1": (1, json.dumps(UP))})
    before = {k: v for k, v in t.router.routes.items()}
    t.put_route("r7", route("r7", "/moved/:id"), n + 10)
    changed = [k for k, v in t.router.routes.items() if before[k] is not v]
    assert changed == ["r7"]


@pytest.mark.parametrize("order", ["mover first", "taker first"])
def test_a_path_moving_between_routes_lands_in_either_order(order):
    """z leaves /p/:id for /q/:id and c takes /p/:name, in one change: whichever is applied
    first, both end up served (the worker applied them in another order than etcd did, and
    kept the old c for good, silently)."""
    t = table()
    t.put_upstream("u1", json.dumps(UP), 1)
    t.put_route("c", route("c", "/c/:name"), 2)
    t.put_route("z", route("z", "/p/:id"), 3)
    moves = [("z", route("z", "/q/:id"), 4), ("c", route("c", "/p/:name"), 5)]
    if order == "taker first":
        moves.reverse()
    for route_id, raw, version in moves:
        t.put_route(route_id, raw, version)
    assert served(t, "/p/x") == "c" and served(t, "/q/x") == "z" and served(t, "/c/x") is None
    assert t.rejected == {}
    assert t.route_specs["c"][0] == 5


def test_a_route_refused_for_a_conflict_serves_once_the_conflict_is_deleted():
    t = table()
    t.put_upstream("u1", json.dumps(UP), 1)
    t.put_route("z", route("z", "/p/:id"), 2)
    assert not t.put_route("c", route("c", "/p/:name"), 3)
    assert "routes/c" in t.rejected
    t.delete_route("z")
    assert served(t, "/p/x") == "c" and t.rejected == {}


def test_a_published_table_with_moved_paths_applies_in_any_dict_order():
    sync = table()
    sync.put_upstream("u1", json.dumps(UP), 1)
    sync.put_route("c", route("c", "/c/:name"), 2)
    sync.put_route("z", route("z", "/p/:id"), 3)
    worker = table()
    worker.apply_published(sync.published())
    sync.put_route("z", route("z", "/q/:id"), 4)
    sync.put_route("c", route("c", "/p/:name"), 5)
    published = sync.published()
    # c before z: the order a dict built from route_specs gives the worker
    published["routes"] = {k: published["routes"][k] for k in ("c", "z")}
    worker.apply_published(published)
    assert served(worker, "/p/x") == "c" and served(worker, "/q/x") == "z"
    assert worker.rejected == {}


@pytest.mark.parametrize("raw", [
    "[" * 100000 + "]" * 100000,
    json.dumps({"paths": ["/a"], "upstream": {"targets": [{"url": "http://[::1"}]}}),
    json.dumps({"paths": ["/a"], "upstream": "u1",
                "plugins": {"rate_limit": {"rate": 10 ** 400}}}),
])
def test_values_no_check_foresaw_are_rejected_alone(raw):
    t = table()
    t.put_upstream("u1", json.dumps(UP), 1)
    assert t.put_route("bad", raw, 2) is False
    assert t.put_upstream("badup", raw, 3) is False
    assert t.put_consumer("badc", raw, 4) is False
    assert {"routes/bad", "upstreams/badup", "consumers/badc"} <= set(t.rejected)


def nested(depth):
    value = []
    for _ in range(depth):
        value = [value]
    return value


def test_a_value_nested_too_deep_to_quote_is_still_rejected_by_its_field(tmp_path):
    """A value the JSON parser took, nested deeper than json.dumps could quote from inside
    the checks (show): the message was "could not be checked: RecursionError" with no
    field; and `gwserver routes validate` died with a traceback on one the parser refused."""
    from gwserver.errors import ConfigError
    from gwserver.routes_cli import read_items
    t = table()
    t.put_upstream("u1", json.dumps(UP), 1)
    deep = {"paths": ["/a"], "upstream": "u1", "plugins": {"cors": nested(5000)}}
    assert t.put_route("r", deep, 2) is False
    reason = t.rejected["routes/r"]
    assert "route r: plugins.cors: must be a table/object, got <list nested too deep" \
        in reason and "could not be checked" not in reason
    source = tmp_path / "route.json"
    source.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(ConfigError, match="invalid JSON: arrays or objects nested too deep"):
        read_items(str(source), "routes")


def test_a_file_path_no_file_can_have_is_refused_by_its_field():
    """JSON's "\\ud800" is a lone surrogate, which no file name encodes to: a jwt key file
    named with one was refused in a codec's words ("'utf-8' codec can't encode"), with no
    field named."""
    t = table()
    t.put_upstream("u1", json.dumps(UP), 1)
    raw = json.dumps({"paths": ["/r"], "upstream": "u1",
                      "plugins": {"jwt": {"public_key_file": "/etc/gwserver/jwt.pem\ud800"}}})
    assert t.put_route("r", raw, 2) is False
    reason = t.rejected["routes/r"]
    assert "plugins.jwt: public_key_file: must be an absolute path" in reason, reason


UNUSABLE_CURVE = ("-----BEGIN PUBLIC KEY-----\n"          # secp112r1: cryptography has no code
                  "MDIwEAYHKoZIzj0CAQYFK4EEAAYDHgAEq0kXVENeHqkTP9f7YbC3I9b3EMHCiL18\n"
                  "AAcZug==\n-----END PUBLIC KEY-----\n")


@pytest.mark.parametrize("jwt, reason", [
    ({"algorithms": ["ES256"], "public_key": UNUSABLE_CURVE}, "it can use"),
    ({"algorithms": ["HS256"], "secret_file": "/dev/zero"}, "not a regular file"),
])
def test_a_key_no_check_foresaw_is_rejected_alone(jwt, reason):
    """A key on a curve cryptography cannot use raised its own exception out of put_route,
    and /dev/zero was read until MemoryError: either crash-looped the sync process."""
    t = table()
    t.put_upstream("u1", json.dumps(UP), 1)
    assert t.put_route("r", json.dumps({"paths": ["/r"], "upstream": "u1",
                                        "plugins": {"jwt": jwt}}), 2) is False
    assert reason in t.rejected["routes/r"]


MISSPELT = {"paths": ["/private/*rest"], "upstream": "u1", "plugins": {"key_auth": {"hedaer": 1}}}


def test_a_refused_new_route_is_fenced_and_workers_fence_it_too():
    """Its paths answer 503 (a stand-in with no targets) instead of falling through to the
    public catch-all; the fence is published, so a worker holds the same paths."""
    t = table()
    t.put_upstream("u1", json.dumps(UP), 1)
    t.put_route("public", route("public", "/*rest"), 2)
    assert t.put_route("private", json.dumps(MISSPELT), 3) is False
    assert served(t, "/private/x") == "private"
    assert t.router.routes["private"].upstream.targets == ()
    assert "until a valid version arrives" in t.refused()["routes/private"]
    worker = table()
    worker.apply_published(json.loads(json.dumps(t.published())))
    assert served(worker, "/private/x") == "private" and worker.rejected == {}
    fixed = json.dumps({**MISSPELT, "plugins": {"key_auth": {}}})
    assert t.put_route("private", fixed, 4)
    assert t.fence_specs == {} and t.router.routes["private"].upstream.id == "u1"
    worker.apply_published(json.loads(json.dumps(t.published())))
    assert worker.fence_specs == {} and worker.router.routes["private"].upstream.id == "u1"


def test_a_fence_holds_its_paths_in_every_spelling():
    """A refused route's fence reads its escapes as requests have them: written
    "/priv%c3%a9/*rest", it used to fence a path no request had, and the catch-all took
    "/priv%C3%A9/x"; a malformed one is no path at all, and is left out."""
    t = table()
    t.put_upstream("u1", json.dumps(UP), 1)
    t.put_route("public", route("public", "/*rest"), 2)
    spelt = {**MISSPELT, "paths": ["/priv%c3%a9/*rest", "/%7eadmin", "/bad%zz"]}
    assert t.put_route("private", json.dumps(spelt), 3) is False
    assert served(t, "/priv%C3%A9/x") == "private" and served(t, "/~admin") == "private"
    assert t.fence_specs["private"][1]["paths"] == ["/priv%C3%A9/*rest", "/~admin"]


def test_unreadable_paths_claims_or_a_served_version_are_not_fenced():
    t = table()
    t.put_upstream("u1", json.dumps(UP), 1)
    t.put_route("held", route("held", "/a/:x"), 2)
    assert not t.put_route("r1", json.dumps({**MISSPELT, "paths": "/x"}), 3)
    assert not t.put_route("r3", json.dumps({**MISSPELT, "claims": {"role": "admin"}}), 5)
    t.put_route("r4", route("r4", "/v1"), 6)
    assert not t.put_route("r4", json.dumps({**MISSPELT, "paths": ["/v2"]}), 7)
    assert t.fence_specs == {} and served(t, "/v1") == "r4" and served(t, "/v2") is None
    assert served(t, "/a/1") == "held" and served(t, "/private/x") is None


def test_a_fence_takes_the_parameter_names_the_tree_has():
    """Its parameters are never read: named otherwise than the tree's, a path used to be
    left unfenced (and fell through to a broader route)."""
    t = table()
    t.put_upstream("u1", json.dumps(UP), 1)
    t.put_route("public", route("public", "/*rest"), 2)
    t.put_route("held", route("held", "/a/:x"), 3)
    assert not t.put_route("r2", json.dumps({**MISSPELT, "paths": ["/a/:y/b"]}), 4)
    assert t.fence_specs["r2"][1]["paths"] == ["/a/:x/b"] and served(t, "/a/1/b") == "r2"


def test_a_good_route_is_not_kept_out_by_a_fences_parameter_names():
    t = table()
    t.put_upstream("u1", json.dumps(UP), 1)
    t.put_route("public", route("public", "/*rest"), 2)
    assert not t.put_route("bad", json.dumps({**MISSPELT, "paths": ["/a/:x/b", "/s"]}), 3)
    assert t.put_route("api", route("api", "/a/:y"), 4)
    assert served(t, "/a/1") == "api" and served(t, "/a/1/b") == "bad"
    assert t.fence_specs["bad"][1]["paths"] == ["/a/:y/b", "/s"]
    worker = table()
    worker.apply_published(json.loads(json.dumps(t.published())))
    assert served(worker, "/a/1") == "api" and served(worker, "/a/1/b") == "bad"


def test_a_fence_takes_the_requests_its_route_would_have_taken():
    """Ranked as the route would be: on the same path, a route it would lose to keeps its
    requests, one it would win over loses them (to a 503, not to the route's absence)."""
    t = table()
    t.put_upstream("u1", json.dumps(UP), 1)
    t.put_route("m", route("m", "/p"), 2)
    assert not t.put_route("a", json.dumps({**MISSPELT, "paths": ["/p"]}), 3)
    assert not t.put_route("z", json.dumps({**MISSPELT, "paths": ["/p"],
                                            "headers": {"x-v": "2"}}), 4)
    assert served(t, "/p") == "a"                       # "a" sorts before "m", as a route
    assert t.router.match("GET", "h", "/p", {b"x-v": b"2"})[0].id == "z"    # more specific


def test_deleting_a_fenced_route_frees_its_paths_for_a_route_refused_for_them():
    t = table()
    t.put_upstream("u1", json.dumps(UP), 1)
    assert not t.put_route("bad", json.dumps(MISSPELT), 2)
    assert t.put_route("good", route("good", "/private/*other"), 3)   # the fence steps aside
    assert served(t, "/private/x") == "bad"                             # and ranks first
    t.delete_route("bad")
    assert served(t, "/private/x") == "good" and t.rejected == {}


@pytest.mark.parametrize("order", ["a first", "b first"])
def test_fences_that_swap_paths_in_one_change_land_in_any_order(order):
    t = table()
    t.put_upstream("u1", json.dumps(UP), 1)
    t.put_route("a", json.dumps({**MISSPELT, "paths": ["/p"]}), 2)
    t.put_route("b", json.dumps({**MISSPELT, "paths": ["/q"]}), 3)
    worker = table()
    worker.apply_published(json.loads(json.dumps(t.published())))
    t.delete_route("a"), t.delete_route("b")
    t.put_route("a", json.dumps({**MISSPELT, "paths": ["/q"]}), 4)
    t.put_route("b", json.dumps({**MISSPELT, "paths": ["/p"]}), 5)
    fences = t.published()["fences"]
    delta = {"fences": {k: fences[k] for k in (("a", "b") if order == "a first" else ("b", "a"))}}
    worker.apply_delta(json.loads(json.dumps(delta)))
    assert served(worker, "/p") == "b" and served(worker, "/q") == "a"


def test_a_fence_taken_up_from_the_workers_goes_when_etcd_no_longer_has_the_route():
    """A restarted sync process takes up the published table, fences included (load_served);
    a full load of etcd without that route must not leave its fence behind."""
    t = table()
    t.put_upstream("u1", json.dumps(UP), 1)
    t.put_route("bad", json.dumps(MISSPELT), 2)
    restarted = table()
    restarted.apply_published(json.loads(json.dumps(t.published())))
    assert served(restarted, "/private/x") == "bad"
    restarted.replace_all({}, {"u1": (1, json.dumps(UP))})
    assert served(restarted, "/private/x") is None and restarted.fence_specs == {}


def bad(paths, **extra):
    return json.dumps({**MISSPELT, "paths": paths, **extra})


def test_a_fence_is_not_lost_when_a_route_refused_for_its_paths_is_tried_again():
    """Every upstream change re-puts refused routes. The fence used to be taken out, routes
    refused for its paths retried (one got in), and the new fence then conflicted: gone
    whole, and /secret fell through to the catch-all again. A restarted sync process, taking
    up the workers' table then reading etcd in key order, did the same."""
    t = table()
    t.put_upstream("u1", json.dumps(UP), 1)
    t.put_route("public", route("public", "/*rest"), 2)
    assert not t.put_route("private", bad(["/a/:x", "/secret/*rest"]), 3)
    assert t.put_route("api", route("api", "/a/:y"), 4)             # the fence steps aside
    t.put_upstream("u9", json.dumps(UP), 5)                         # unrelated
    assert served(t, "/secret/k") == "private" and served(t, "/a/1") == "api"   # id order
    restarted = table()
    restarted.apply_published(json.loads(json.dumps(t.published())))
    restarted.replace_all({"api": (4, route("api", "/a/:y")),
                           "private": (3, bad(["/a/:x", "/secret/*rest"]))},
                          {"u1": (1, json.dumps(UP))})
    assert served(restarted, "/secret/k") == "private" and served(restarted, "/a/1") == "api"


@pytest.mark.parametrize("slip", [
    {"methods": ["get"]}, {"hosts": ["H"]}, {"priority": "10"}, {"prefix": "true"},
    {"paths": ["/secret/*rest", "no-slash"]}, {"headers": {"x-a": 1}}])
def test_a_slip_in_a_match_field_still_fences_failing_closed(slip):
    t = table()
    t.put_upstream("u1", json.dumps(UP), 1)
    t.put_route("public", route("public", "/*rest"), 2)
    assert not t.put_route("private", bad(**{"paths": ["/secret/*rest"], **slip}), 3)
    assert served(t, "/secret/k") == "private"


def test_a_path_no_request_can_hold_does_not_cost_the_others_their_fence():
    """A review pass: a lone surrogate (JSON's "\\udc80") among a refused route's paths
    raised out of fence_of, and the route got no fence at all: the catch-all took
    /admin/x."""
    t = table()
    t.put_upstream("u1", json.dumps(UP), 1)
    t.put_route("public", route("public", "/*rest"), 2)
    assert not t.put_route("private", bad(["/admin/*rest", "/\udc80", "/a//*rest"]), 3)
    assert served(t, "/admin/x") == "private"


@pytest.mark.parametrize("paths, prefix", [
    (["/secret"], "True"), (["/secret"], 1), (["/secret"], "yes"), (["/secret/"], True),
    (["/secret/"], "TRUE"), (["/"], True), (["/secret", "/x/*rest"], True)])
def test_a_prefix_or_a_trailing_slash_slip_fences_everything_below(paths, prefix):
    """An attack pass: only True and "true" were read as a prefix, so "True", 1 or "yes"
    fenced /secret alone and the catch-all took /secret/k; "/secret/" with prefix fenced
    "/secret/" alone, and so did "/secret" beside a catch-all path (prefix with a catch-all
    is refused, and the fence left prefix out). Not plainly false is true, "/secret/" is
    "/secret" (both refused in a valid route, docs/routes.md), and beside a catch-all
    "/secret" is fenced as "/secret/*rest"."""
    t = table()
    t.put_upstream("u1", json.dumps(UP), 1)
    t.put_route("public", route("public", "/*rest"), 2)
    assert not t.put_route("private", bad(**{"paths": paths, "prefix": prefix}), 3)
    assert served(t, "/secret/k") == "private" and served(t, "/secret") == "private"


def test_a_fenced_route_whose_next_value_has_no_readable_paths_keeps_its_fence():
    t = table()
    t.put_upstream("u1", json.dumps(UP), 1)
    t.put_route("public", route("public", "/*rest"), 2)
    t.put_route("private", bad(["/secret/*rest"]), 3)
    assert not t.put_route("private", bad("/secret/*rest"), 4)
    assert served(t, "/secret/k") == "private" and "until a valid" in t.rejected["routes/private"]


def test_a_fence_named_like_an_upstream_leaves_its_health_checks_alone():
    from gwserver.helpers.health import Checker
    t = table()
    t.put_upstream("api", json.dumps({**UP, "health_check": {"path": "/healthz"}}), 1)
    t.put_route("api-v1", route("api-v1", "/v1/*rest", upstream="api"), 2)
    t.put_route("api", bad(["/v2/*rest"], upstream="api"), 3)
    checker = Checker.__new__(Checker)
    checker.table, checker.conf = t, parse_conf({})
    assert len(checker.wanted()) == 1


@pytest.mark.parametrize("priority", ["--5", "\u00b2", "9" * 5000])
def test_a_priority_no_int_reads_leaves_the_fence_default_and_the_sync_alive(priority):
    t = table()
    t.put_upstream("u1", json.dumps(UP), 1)
    assert t.put_route("p", bad(["/p"], priority=priority), 2) is False
    assert served(t, "/p") == "p" and "priority" not in t.fence_specs["p"][1]


def test_a_path_freed_by_its_holder_is_fenced_then():
    """Left to a route that held it, a path was never fenced after that route went: it fell
    through to the catch-all."""
    t = table()
    t.put_upstream("u1", json.dumps(UP), 1)
    t.put_route("public", route("public", "/*rest"), 2)
    t.put_route("held", route("held", "/a/*x"), 3)
    assert not t.put_route("private", bad(["/a/*y", "/secret"]), 4)     # *y: held as *x
    t.delete_route("held")
    assert served(t, "/a/k") == "private" and served(t, "/secret") == "private"


def test_a_fence_that_changes_at_the_same_version_is_published_again():
    """A fence follows the table around its route (a path freed, names adopted) at its
    route's version: the sync process compared versions only, so workers fed changes kept
    the old fence."""
    from gwserver.sync.watcher import ConfigSync
    t = table()
    t.put_upstream("u1", json.dumps(UP), 1)
    t.put_route("private", bad(["/a/*y", "/secret"]), 3)
    sync = ConfigSync.__new__(ConfigSync)
    sync.table = t
    before = sync.versions()["fences"]
    t.put_route("api", route("api", "/a/*z"), 4)        # the fence steps aside, takes *z
    assert t.fence_specs["private"] == (3, {"id": "private", "paths": ["/a/*z", "/secret"],
                                            "priority": 0})
    assert sync.versions()["fences"] != before


def test_a_route_whose_own_paths_name_one_position_twice_is_refused():
    """{/a/:x/b, /a/:y/c} went in (the tree was checked, not the route against itself); a
    later recompile then could not put it back, and a served route vanished."""
    t = table()
    t.put_upstream("u1", json.dumps(UP), 1)
    assert not t.put_route("r0", json.dumps({"paths": ["/a/:x/b", "/a/:y/c"],
                                             "upstream": "u1"}), 2)
    assert "conflicts with :x of another of its paths" in t.rejected["routes/r0"]


def test_a_worker_follows_two_routes_that_rename_a_parameter_in_one_change():
    sync, worker = table(), table()
    sync.put_upstream("u1", json.dumps(UP), 1)
    sync.put_route("r1", route("r1", "/a/:x/b"), 2)
    sync.put_route("r2", route("r2", "/a/:x"), 3)
    worker.apply_published(json.loads(json.dumps(sync.published())))
    sync.put_route("r1", route("r1", "/a"), 4)
    sync.put_route("r2", route("r2", "/a/:y"), 5)
    sync.put_route("r1", route("r1", "/a/:y/b"), 6)
    published = json.loads(json.dumps(sync.published()))
    delta = {"routes": {k: published["routes"][k] for k in ("r1", "r2")}}
    fed = table()
    fed.apply_published(json.loads(json.dumps(worker.published())))
    fed.apply_delta(delta)
    worker.apply_published(published)
    for t in (fed, worker):
        assert served(t, "/a/1/b") == "r1" and served(t, "/a/1") == "r2" and t.rejected == {}


def test_a_watch_batch_of_instances_rebuilds_their_upstream_once():
    """Registering N instances of a service (one etcd watch batch) rebuilt the service's
    upstream after each of them, every rebuild listing all instances so far: N^2 work in
    the sync process (the last note's open item). The watcher hands a batch over whole."""
    from gwserver.sync.watcher import ConfigSync
    t = table()
    t.put_upstream("svc", json.dumps({"targets": [], "service": "orders"}), 1)
    rebuilds, put = [], t.put_upstream
    t.put_upstream = lambda *args: rebuilds.append(args[0]) or put(*args)
    sync = ConfigSync.__new__(ConfigSync)
    sync.table, sync.prefix = t, "/gw/"
    events = [("put", f"/gw/services/orders/i{n}",
               json.dumps({"url": f"http://10.0.{n // 250}.{n % 250 + 1}:8080"}).encode(),
               10 + n) for n in range(500)]
    events.append(("delete", "/gw/services/orders/i7", None, 600))
    sync._apply(events)
    assert rebuilds == ["svc"]
    targets = t.upstreams["svc"].targets
    assert len(targets) == 499 and "http://10.0.0.8:8080" not in {x.url for x in targets}
    assert t.upstream_specs["svc"][0] == 600        # the version follows the last event
