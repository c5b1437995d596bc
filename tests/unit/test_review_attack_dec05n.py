"""Review of 0065081 (helper s3, 2026-12-05), pure code.

2. A route whose path binds one name twice (``/u/:id/f/:id``) is refused for it, and was not
   fenced: ``fence_of`` skipped the path as unreadable, and its requests went to a broader
   route (a public catch-all, with none of the refused route's plugins). Its fence now
   takes the path with the second name made distinct (``unused``), as 0065081 did across a
   fence's paths; a worker applies that fence as published.
"""
import json

from gwserver.core.table import names_once

from .test_table import MISSPELT, UP, route, served, table


def test_a_path_binding_a_name_twice_is_read_with_distinct_names():
    assert names_once("/u/:id/f/:id") == "/u/:id/f/:id_"
    assert names_once("/u/:id/:id/:id_") == "/u/:id/:id_/:id__"
    assert names_once("/u/:id/*id") == "/u/:id/*id_"
    assert names_once("/u/:a/xid/:b") == "/u/:a/xid/:b"            # statics are no names


def test_a_refused_route_whose_path_binds_a_name_twice_is_fenced():
    t = table()
    t.put_upstream("u1", json.dumps(UP), 1)
    t.put_route("public", route("public", "/*rest"), 2)
    for refused in ({"paths": ["/u/:id/f/:id"], "upstream": "u1"},      # for that alone
                    {**MISSPELT, "paths": ["/u/:id/f/:id", "/v/:x/*x"]}):
        assert t.put_route("private", json.dumps(refused), 3) is False
        assert served(t, "/u/1/f/2") == "private", refused     # "public" before
        assert "its paths answer 503" in t.rejected["routes/private"]
        worker = table()
        worker.apply_published(json.loads(json.dumps(t.published())))
        assert served(worker, "/u/1/f/2") == "private" and worker.rejected == {}
        t.delete_route("private")
        assert served(t, "/u/1/f/2") == "public"
    assert served(worker, "/v/1/a/b") == "private"
