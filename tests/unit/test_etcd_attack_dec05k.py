"""Attack pass (Dec 5, k), pure code: the sync process's table.

5. A refused new route is fenced (its paths answer 503 until a valid version arrives). Its
   paths were placed one by one, a route compiled for each: a value of 100,000 paths (1 MB,
   under etcd's default request limit) with one misspelt plugin option held the sync
   process ~5 s at each write of it, and every other team's change waited behind it. The
   fence is now placed whole when it fits, path by path only when it does not.
"""
import json

from .test_table import UP, table


def test_a_refused_route_of_many_paths_is_fenced_with_one_compile(monkeypatch):
    t = table()
    t.put_upstream("u1", json.dumps(UP), 1)
    compiled = []
    fence_route = type(t)._fence_route
    monkeypatch.setattr(type(t), "_fence_route",
                        lambda self, *args: compiled.append(1) or fence_route(self, *args))
    paths = [f"/team/{i}" for i in range(2000)]
    refused = {"paths": paths, "upstream": "u1", "plugins": {"key_auth": {"hedaer": "k"}}}
    assert t.put_route("big", json.dumps(refused).encode(), 2) is False
    assert t.fence_specs["big"][1]["paths"] == paths            # every path held
    assert len(compiled) <= 3, len(compiled)    # placed whole (was one compile a path)
