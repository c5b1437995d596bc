"""Attack pass (Dec 5, m), pure code: a review of the newest commit (the shared table).

2. A refused route whose paths name one position twice (``/admin/:id`` and
   ``/admin/:name/logs``: a route refused for that alone, or for a misspelt plugin too) was
   never fenced: its fence has the same paths, the router refuses such a route whole, and
   the paths were held by nothing; they fell through to a broader route, a public catch-all
   perhaps, which is what a fence is for. The same value also undid the last commit's
   speed-up: the fence placed whole failed, and was placed path by path (a compile a path,
   ~5 s for the 100,000 paths of a 1 MB value, at each write), to fail all the same. A
   fence's parameters are never read: its paths take one name a position, the first given.
"""
import json

from .test_table import MISSPELT, UP, route, served, table


def test_a_refused_route_whose_paths_name_a_position_twice_is_fenced():
    t = table()
    t.put_upstream("u1", json.dumps(UP), 1)
    t.put_route("public", route("public", "/*rest"), 2)
    refused = {**MISSPELT, "paths": ["/admin/:id", "/admin/:name/logs"]}
    assert t.put_route("private", json.dumps(refused), 3) is False
    assert served(t, "/admin/1") == "private" and served(t, "/admin/1/logs") == "private"
    assert t.fence_specs["private"][1]["paths"] == ["/admin/:id", "/admin/:id/logs"]
    worker = table()
    worker.apply_published(json.loads(json.dumps(t.published())))
    assert served(worker, "/admin/1/logs") == "private" and worker.rejected == {}


def test_such_a_route_of_many_paths_is_fenced_with_one_compile(monkeypatch):
    t = table()
    t.put_upstream("u1", json.dumps(UP), 1)
    compiled = []
    fence_route = type(t)._fence_route
    monkeypatch.setattr(type(t), "_fence_route",
                        lambda self, *args: compiled.append(1) or fence_route(self, *args))
    paths = [f"/team/{i}" for i in range(2000)] + ["/t/:a", "/t/:b/x"]
    assert t.put_route("big", json.dumps({**MISSPELT, "paths": paths}).encode(), 2) is False
    assert len(t.fence_specs["big"][1]["paths"]) == len(paths)      # every path held
    assert len(compiled) <= 3, len(compiled)


def test_a_fences_paths_never_bind_a_name_twice_whatever_the_tree_and_the_paths():
    """A review of the fix above: names given per position across the paths, or by the tree
    (``Router.conforming``), could still bind one name twice in one path ("/a/:id/:x" and
    "/a/:y/b/:id" made "/a/:id/b/:id"; "/a/:id/c" in the tree made "/a/:foo/:id"
    "/a/:id/:id"): the router refused the fence, and the public catch-all served its paths."""
    cases = [(["/a/:id/:x", "/a/:y/b/:id"], ["/a/1/2", "/a/1/b/2"]),
             (["/a/:id", "/a/:x/:id"], ["/a/1", "/a/1/2"]),
             (["/a/:id", "/a/:x/*id"], ["/a/1/2", "/a/1/b/2"])]
    for paths, probes in cases:
        t = table()
        t.put_upstream("u1", json.dumps(UP), 1)
        t.put_route("public", route("public", "/*rest"), 2)
        assert t.put_route("private", json.dumps({**MISSPELT, "paths": paths}), 3) is False
        assert [served(t, p) for p in probes] == ["private"] * len(probes), paths
    # a name the tree binds at an earlier position
    t = table()
    t.put_upstream("u1", json.dumps(UP), 1)
    t.put_route("public", route("public", "/*rest"), 2)
    t.put_route("c", route("c", "/a/:id/c"), 3)
    assert t.put_route("private", json.dumps({**MISSPELT, "paths": ["/a/:foo/:id"]}), 4) \
        is False
    assert served(t, "/a/1/2") == "private" and served(t, "/a/1/c") == "c"
    t.delete_route("c")
    assert served(t, "/a/1/2") == "private"
