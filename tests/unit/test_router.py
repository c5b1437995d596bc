"""Routing rules, as tables: routes in, requests in, (route id, params) or status out."""
import time

import pytest

from gwserver.core.routes import ROUTE, unreachable_paths
from gwserver.core.target import normalise_path
from gwserver.errors import MethodNotAllowed, RouteNotFound
from .helpers import compile_routes, router_for

ROUTES = [
    {"id": "users-me", "paths": ["/api/users/me"]},
    {"id": "user", "paths": ["/api/users/:id"], "methods": ["GET", "DELETE"]},
    {"id": "user-posts", "paths": ["/api/users/:id/posts/:post"]},
    {"id": "static", "paths": ["/static/*file"]},
    {"id": "api-prefix", "paths": ["/api"], "prefix": True, "priority": -1},
    {"id": "exact", "paths": ["/exact"]},
    {"id": "host-a", "paths": ["/h"], "hosts": ["a.example.com"]},
    {"id": "host-wild", "paths": ["/h"], "hosts": ["*.example.com"]},
    {"id": "host-any", "paths": ["/h"]},
    {"id": "hdr-beta", "paths": ["/v"], "headers": {"X-Version": "beta"}},
    {"id": "hdr-none", "paths": ["/v"]},
    {"id": "prio-low", "paths": ["/p"], "priority": 1},
    {"id": "prio-high", "paths": ["/p"], "priority": 5},
    {"id": "post-only", "paths": ["/form"], "methods": ["POST"]},
    {"id": "root", "paths": ["/"]},
]


@pytest.fixture(scope="module")
def router():
    return router_for([dict(r) for r in ROUTES])


MATCH_CASES = [
    ("GET", "x", "/api/users/me", {}, "users-me", {}),                    # static beats param
    ("GET", "x", "/api/users/42", {}, "user", {"id": "42"}),
    ("HEAD", "x", "/api/users/42", {}, "user", {"id": "42"}),             # HEAD rides on GET
    ("GET", "x", "/api/users/42/posts/7", {}, "user-posts", {"id": "42", "post": "7"}),
    ("GET", "x", "/static/css/site.css", {}, "static", {"file": "css/site.css"}),
    ("GET", "x", "/static/", {}, "static", {"file": ""}),
    ("GET", "x", "/static", {}, "static", {"file": ""}),      # /p/*rest covers /p: no hole
    ("GET", "x", "/api", {}, "api-prefix", {}),
    ("GET", "x", "/api/orders/1", {}, "api-prefix", {}),                  # prefix catches the rest
    ("POST", "x", "/api/users/42", {}, "api-prefix", {}),                 # backtracks past 405
    ("GET", "x", "/exact", {}, "exact", {}),
    ("GET", "x", "/exact/", {}, "exact", {}),     # frameworks serve it as /exact: no hole
    ("GET", "a.example.com", "/h", {}, "host-a", {}),                     # exact host first
    ("GET", "b.example.com", "/h", {}, "host-wild", {}),
    ("GET", "c.b.example.com", "/h", {}, "host-wild", {}),
    ("GET", "example.com", "/h", {}, "host-any", {}),
    ("GET", "x", "/v", {b"x-version": b"beta"}, "hdr-beta", {}),
    ("GET", "x", "/v", {b"x-version": b"stable"}, "hdr-none", {}),
    ("GET", "x", "/p", {}, "prio-high", {}),
    ("GET", "x", "/", {}, "root", {}),
]


@pytest.mark.parametrize("method, host, path, headers, expected_id, params", MATCH_CASES)
def test_match(router, method, host, path, headers, expected_id, params):
    route, bound = router.match(method, host, path, headers)
    assert (route.id, bound) == (expected_id, params)


@pytest.mark.parametrize("method, path, error, allow", [
    ("GET", "/exact/more", RouteNotFound, None),         # exact is exact
    ("GET", "/exactly", RouteNotFound, None),            # segments, not string prefixes
    ("GET", "/form", MethodNotAllowed, "POST"),
    ("PUT", "/form", MethodNotAllowed, "POST"),
    ("GET", "/nowhere", RouteNotFound, None),
])
def test_no_match(router, method, path, error, allow):
    with pytest.raises(error) as info:
        router.match(method, "x", path, {})
    if allow:
        assert dict(info.value.headers)["Allow"] == allow


def test_a_parameter_never_binds_an_empty_segment():
    router = router_for([{"id": "item", "paths": ["/items/:id/detail"]}])
    assert router.match("GET", "x", "/items/7/detail", None)[1] == {"id": "7"}
    with pytest.raises(RouteNotFound):
        router.match("GET", "x", "/items//detail", None)


def test_405_lists_every_allowed_method():
    router = router_for([{"id": "a", "paths": ["/r"], "methods": ["GET"]},
                         {"id": "b", "paths": ["/r"], "methods": ["PUT", "PATCH"]}])
    with pytest.raises(MethodNotAllowed) as info:
        router.match("DELETE", "x", "/r", {})
    assert dict(info.value.headers)["Allow"] == "GET, HEAD, PATCH, PUT"


@pytest.mark.parametrize("spec, message", [
    ({"id": "a", "paths": ["/a/:id/b/:id"]}, "binds parameter \"id\" twice"),
    ({"id": "a", "paths": ["/a/*rest/b"]}, "catch-all that is not the last segment"),
    ({"id": "a", "paths": ["no-slash"]}, "must start with /"),
    ({"id": "a", "paths": ["/a/:"]}, "bad parameter name"),
    ({"id": "a", "paths": ["/a/../b"]}, "dot segment"),
    ({"id": "a", "paths": ["/a b"]}, "characters not allowed"),
    ({"id": "a", "paths": ["/a%zz"]}, "paths[0]: has a malformed percent-escape in \"/a%zz\""),
    ({"id": "a", "paths": ["/a%00"]}, "paths[0]: holds a NUL byte"),
    ({"id": "a", "paths": ["/a/%c0%ae"]}, "paths[0]: is not UTF-8 once decoded"),
    ({"id": "a", "paths": ["/a/%2e%2E/b"]}, "paths[0]: has a dot segment"),
    ({"id": "a", "paths": ["/a\\b"]}, "characters not allowed"),
    ({"id": "a", "paths": ["/a/%3Aid"]}, "begins with : once decoded"),
    ({"id": "a", "paths": ["/a/%2aall"]}, "begins with * once decoded"),
    ({"id": "a", "paths": ["/a/:%69d"]}, "bad parameter name"),
    ({"id": "a", "paths": ["/q/..;x"]}, "dot segment"),
    ({"id": "a", "paths": ["/admin/"], "prefix": True}, 'ends in /: write "/admin"'),
    ({"id": "a", "paths": ["/panel/"]}, "ends in /"),
    ({"id": "a", "paths": ["/"], "prefix": True}, 'write "/*rest"'),
    ({"id": "a", "paths": ["/a//b"]}, "empty segment (//)"),
    ({"id": "a", "paths": ["/a%2fb/*rest"]}, 'escaped_slashes = "reject" answers 400'),
    ({"id": "a", "paths": ["/a;v=1"]}, 'path_parameters = "reject" answers 400'),
    ({"id": "a", "paths": ["/a%3bv"]}, 'path_parameters = "reject" answers 400'),
    ({"id": "a", "paths": ["/t/:tenant/*rest"], "strip_prefix": "/t/:tenant"},
     "strip_prefix: holds \":tenant\", a parameter"),
    ({"id": "a", "paths": ["/a"], "bogus": 1}, "route a: bogus: unknown key"),
    ({"id": "a", "paths": ["/a"], "methods": ["get"]}, "methods[0]: must be one of \"GET\""),
    ({"id": "a", "paths": ["/a"], "hosts": ["Bad Host"]}, "hosts[0]"),
    ({"id": "a", "paths": ["/a"], "strip_prefix": "/b"}, "is not a prefix of paths[0]"),
    ({"id": "a", "paths": ["/a/*r"], "prefix": True}, "prefix=true with a catch-all"),
    ({"id": "a", "paths": ["/a"], "upstream": {"targets": []}},
     "targets: needs at least one target, or a service to follow"),
    ({"id": "a", "paths": ["/a"], "upstream": {"targets": [{"url": "http://h/x"}]}},
     "must be scheme://host[:port] only"),
    ({"id": "a", "paths": ["/a"], "upstream": "missing"}, "unknown upstream id \"missing\""),
    ({"id": "a", "paths": ["/a"], "plugins": {"nope": {}}}, "plugins.nope: unknown plugin"),
])
def test_compiler_rejects_bad_routes_naming_route_and_field(spec, message):
    router, problems = compile_routes([spec])
    assert len(router) == 0
    assert any(message in p and ("route a" in p) for p in problems), problems


@pytest.mark.parametrize("pattern, request_path", [
    ("/caf%c3%a9/*rest", "/caf%C3%A9/x"),
    ("/caf%C3%A9/*rest", "/caf%c3%a9/x"),
    ("/%7euser", "/~user"),
    ("/%7Euser", "/%7euser"),
    ("/y%41/:id", "/yA/1"),
    ("/a%2fb", "/a%2Fb"),              # (server.escaped_slashes = "keep")
    ("/v1/things:batchDelete", "/v1/things%3abatchDelete"),
    ("/v1/things%3AbatchDelete", "/v1/things:batchDelete"),
    ("/%40admin/*rest", "/@admin/x"),
    ("/a/b%2b%21", "/a/b%2B!"),
])
def test_a_pattern_matches_every_spelling_of_its_path(pattern, request_path):
    """A pattern's escapes are made canonical as a request path's are: written otherwise
    ("%c3%a9", "%7e", "%3A"), the route matched nothing and a broader one took its
    requests, so an auth route was bypassed by its own spelling; so were ":" and "@" routes
    by "%3A" and "%40", which upstreams decode."""
    router = router_for([{"id": "guarded", "paths": [pattern]},
                         {"id": "public", "paths": ["/*rest"], "priority": -1}],
                        escaped_slashes="keep")
    path = normalise_path(request_path.encode(), escaped_slashes="keep").decode()
    assert router.match("GET", "x", path, {})[0].id == "guarded"


@pytest.mark.parametrize("pattern, request_path, server", [
    ("/files/a+b/*rest", "/files/a%2Bb/x", {}),
    ("/files/a%2Bb/*rest", "/files/a+b/x", {}),
    ("/files/a;b/*rest", "/files/a%3Bb/x", {"path_parameters": "keep"}),
])
def test_an_escape_upstreams_decode_matches_the_route_on_its_character(pattern, request_path,
                                                                        server):
    """"%2B" and "%3B" stay escaped in a canonical path (S3 reads a raw "+" as a space), yet
    nginx, Go and Spring route on "+" and ";": the other spelling went to the catch-all,
    past the route's auth (an attack pass)."""
    router = router_for([{"id": "guarded", "paths": [pattern]},
                         {"id": "public", "paths": ["/*rest"], "priority": -1}], **server)
    path = normalise_path(request_path.encode(), **server).decode()
    assert router.match("GET", "x", path, {})[0].id == "guarded"


def test_strip_prefix_and_sameness_read_escapes_as_requests_do():
    """strip_prefix cuts the canonical path, so it is made canonical too; and two spellings
    of one path are one path (a copied route block is seen whatever its escapes)."""
    router, problems = compile_routes([{"id": "a", "paths": ["/%7eu/*rest"],
                                        "strip_prefix": "/~u"}])
    assert problems == [] and router.routes["a"].strip_prefix == "/~u"
    assert router.routes["a"].paths == ("/~u/*rest",)
    specs = [ROUTE.validate({"id": i, "paths": [p], "upstream": "u"})
             for i, p in (("a", "/x%c3%a9"), ("b", "/x%C3%A9"))]
    assert unreachable_paths(specs) == [
        'route b: paths "/x%C3%A9" is never served by it: route a has the same path and '
        'conditions and wins (the same priority and the lower id)']


@pytest.mark.parametrize("spec, problem", [
    # a review pass: "" in the static segments less the last missed a // before a parameter
    ({"id": "a", "paths": ["/a//*rest"]}, "empty segment"),
    ({"id": "a", "paths": ["/a/:id//:x"]}, "empty segment"),
    ({"id": "a", "paths": ["/\udc80"]}, "is not text a path can hold"),    # JSON's lone surrogate
    ({"id": "a", "paths": ["/x/*rest"], "strip_prefix": "/%3Aid"}, "begins with : once decoded"),
])
def test_more_patterns_no_request_can_match_are_named(spec, problem):
    assert any(problem in p for p in compile_routes([spec])[1]), compile_routes([spec])[1]


def test_a_strip_prefix_ending_in_a_slash_takes_the_bare_path_too():
    """The advice for a pattern "/api/" is "/api", which a strip_prefix "/api/" (it takes
    "/api" too, at run time) must then accept."""
    assert compile_routes([{"id": "a", "paths": ["/api"], "prefix": True,
                            "strip_prefix": "/api/"}])[1] == []


def test_patterns_dead_under_one_path_rule_live_under_another():
    """What the [server] path rules make of requests decides which patterns can match."""
    assert compile_routes([{"id": "a", "paths": ["/a%2fb"]}], escaped_slashes="decode")[1] == [
        'route a: paths[0] "/a%2Fb" holds an encoded / or \\, which server.escaped_slashes = '
        '"decode" decodes to / in every request']
    assert compile_routes([{"id": "a", "paths": ["/a%2fb"]}], escaped_slashes="keep")[1] == []
    assert compile_routes([{"id": "a", "paths": ["/a;v=1"]}], path_parameters="keep")[1] == []
    assert compile_routes([{"id": "a", "paths": ["/a//b"]}], merge_slashes=False)[1] == []
    assert compile_routes([{"id": "a", "paths": ["/"]}])[1] == []


def test_conflicting_parameter_names_are_rejected_and_good_routes_kept():
    router, problems = compile_routes([{"id": "one", "paths": ["/u/:id"]},
                                       {"id": "two", "paths": ["/u/:uid/x"]},
                                       {"id": "three", "paths": ["/other"]}])
    assert problems == ["route two: parameter :uid in '/u/:uid/x' conflicts with :id of route "
                        "one at the same position"]
    assert sorted(router.routes) == ["one", "three"]


def test_duplicate_ids_are_rejected():
    _, problems = compile_routes([{"id": "a", "paths": ["/a"]}, {"id": "a", "paths": ["/b"]}])
    assert problems == ["route a: duplicate route id (routes[0] and routes[1])"]


def best_match_time(router, paths, rounds=5, repeat=2000):
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeat):
            for path in paths:
                router._matches.clear()     # the walk's cost, not the remembered match's
                router.match("GET", "x", path, None)
        best = min(best, (time.perf_counter() - start) / (repeat * len(paths)))
    return best


def test_lookup_cost_does_not_grow_with_table_size():
    """10,000 routes match about as fast as 10 (radix tree: cost follows depth, not count).

    The bound is loose (3x) because the machine is shared; scripts/bench-router prints figures.
    """
    def table(n):
        return router_for([{"id": f"r{i}", "paths": [f"/svc{i}/items/:id"]} for i in range(n)])
    small, large = table(10), table(10_000)
    small_t = best_match_time(small, ["/svc3/items/42", "/svc7/items/1"])
    large_t = best_match_time(large, ["/svc3/items/42", "/svc9997/items/1"])
    assert large_t < 3 * small_t, (small_t, large_t)


def test_removed_routes_leave_no_dead_branches():
    """A table that churns through unique paths (routes put and deleted in etcd) used to keep
    every static node it ever had."""
    def size(node):
        return 1 + sum(size(child) for child in node.static.values()) + \
            (size(node.param) if node.param is not None else 0)
    router = router_for([{"id": "keep", "paths": ["/api/v1/users/:id"]}])
    before = size(router._root)
    for i in range(200):
        churn = router_for([{"id": f"r{i}", "paths": [
            f"/api/v1/x{i}/deep/path", f"/api/v2/y{i}/*rest", f"/api/v1/users/:id/z{i}"]}])
        router.add(churn.routes[f"r{i}"])
        router.remove(f"r{i}")
    assert size(router._root) == before
    assert router.match("GET", "h", "/api/v1/users/7", None)[0].id == "keep"


UNCONDITIONAL = [r for r in ROUTES if "headers" not in r]


@pytest.mark.parametrize("method, host, path, headers, expected_id, params", [
    case for case in MATCH_CASES if not case[2].startswith("/v")])
def test_a_remembered_match_is_the_walk_s_answer(method, host, path, headers, expected_id,
                                                 params):
    """Without header or claim routes a match is remembered: the second lookup of the same
    (method, host, path) answers from memory, and answers the same; the params it hands out
    are the caller's own (a plugin that changes them changes no other request's)."""
    router = router_for([dict(r) for r in UNCONDITIONAL])
    first, bound = router.match(method, host, path, headers)     # walked
    bound["injected"] = "x"
    assert (method, host, path) in router._matches
    route, again = router.match(method, host, path, headers)     # remembered
    assert (route.id, again) == (expected_id, params)
    assert route is first
    again["injected"] = "y"
    route, third = router.match(method, host, path, headers)     # remembered, unchanged
    assert (route.id, third) == (expected_id, params)


def test_remembered_matches_follow_the_table():
    """A route added or removed takes effect on the next request, remembered or not."""
    router = router_for([{"id": "broad", "paths": ["/api"], "prefix": True}])
    assert router.match("GET", "h", "/api/orders", None)[0].id == "broad"
    narrow = router_for([{"id": "orders", "paths": ["/api/orders"]}]).routes["orders"]
    router.add(narrow)
    assert router.match("GET", "h", "/api/orders", None)[0].id == "orders"
    router.remove("orders")
    assert router.match("GET", "h", "/api/orders", None)[0].id == "broad"
    router.remove("broad")
    with pytest.raises(RouteNotFound):
        router.match("GET", "h", "/api/orders", None)


def test_no_match_is_remembered_while_a_route_matches_on_headers():
    """With a header route in the table the answer depends on more than the path: nothing is
    remembered, and each request is walked with its own headers."""
    router = router_for([{"id": "beta", "paths": ["/v"], "headers": {"X-Version": "beta"}},
                         {"id": "stable", "paths": ["/v"]}])
    assert router.match("GET", "h", "/v", {b"x-version": b"beta"})[0].id == "beta"
    assert router.match("GET", "h", "/v", {})[0].id == "stable"
    assert router._matches == {}
    router.remove("beta")
    assert router.match("GET", "h", "/v", {})[0].id == "stable"
    assert ("GET", "h", "/v") in router._matches       # no header route left


def test_the_match_memory_is_bounded():
    """Endless distinct paths or hosts (a scan) start the memory over; a long path or host is
    never kept."""
    from gwserver.core.router import MATCH_CACHE_KEY, MATCH_CACHE_SIZE
    router = router_for([{"id": "all", "paths": ["/*rest"]}])
    for i in range(MATCH_CACHE_SIZE * 3):
        assert router.match("GET", f"h{i % 7}", f"/scan/{i}", None)[0].id == "all"
        assert len(router._matches) <= MATCH_CACHE_SIZE
    router._matches.clear()
    long_path = "/" + "a" * MATCH_CACHE_KEY
    assert router.match("GET", "h", long_path, None)[1] == {"rest": long_path[1:]}
    assert router.match("GET", "h" * MATCH_CACHE_KEY, "/a", None)[1] == {"rest": "a"}
    assert router._matches == {}


def test_a_route_s_paths_are_parsed_once_for_the_router(monkeypatch):
    """The router parses a route's paths at its check, for the add, and its removal splits
    them without the checks (router._segments): each parsed them again, and a route of
    40,000 paths held every worker seconds an etcd write. (Not cached on the Route: a
    cached_property there made each route's __dict__ real, and every attribute read of it
    on the request path slower; nor kept in the router: the parsed paths more than doubled
    its memory, test_review_dec06j.py.)"""
    import gwserver.core.router as router_module
    from gwserver.core.router import Router
    compiled, problems = compile_routes([{"id": "many",
                                          "paths": [f"/p{i}/:id" for i in range(50)]}])
    route = compiled.routes["many"]
    assert problems == []
    calls = []
    parse = router_module.check_path
    monkeypatch.setattr(router_module, "check_path", lambda p: calls.append(p) or parse(p))
    router = Router()
    router.add(route)
    assert router.match("GET", "x", "/p7/42")[0] is route
    router.remove("many")
    assert len(calls) == 50 and router.routes == {}     # at the check, once a path
