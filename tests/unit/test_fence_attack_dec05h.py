"""A refused route's fence, attacked (the attack pass of 2026-12-05, helper h4, on e96cb6d):
the fence must take every request its route would have taken, failing closed.

1. A refused new route whose ``hosts`` or ``methods`` held one item no check reads
   (``"API.example:8443"`` beside ``"admin.example"``, ``"DELTE"`` beside ``"GET"``) was
   fenced with the readable items alone: narrower than the route, so api.example's requests
   (or a DELETE) fell through to the public catch-all, which the fence exists to prevent
   (core/table.py: "a slip ... is read the way it was surely meant, or the field is left
   out, which makes the fence broader, never narrower"). A host is now read as requests
   are (case, port, trailing dot) and a field with any unreadable item is left out.
"""
import json

import pytest

from gwserver.errors import RouteNotFound

from .test_table import UP, bad, route, table


def served(t, method, host, path):
    try:
        return t.router.match(method, host, path, None)[0].id
    except RouteNotFound:
        return None


@pytest.mark.parametrize("slip, method, host", [
    ({"hosts": ["admin.example", "API.example:8443"]}, "GET", "api.example"),
    ({"hosts": ["admin.example", "api.example."]}, "GET", "api.example"),
    ({"hosts": ["admin.example", "api example"]}, "GET", "api.example"),
    ({"hosts": ["admin.example", 7]}, "GET", "other.example"),
    ({"methods": ["GET", "DELTE"]}, "DELETE", "h"),
    ({"methods": ["get", None]}, "POST", "h"),
])
def test_a_match_field_with_one_unreadable_item_fences_all_it_could_mean(slip, method, host):
    t = table()
    t.put_upstream("u1", json.dumps(UP), 1)
    t.put_route("public", route("public", "/*rest"), 2)
    assert not t.put_route("private", bad(**{"paths": ["/secret/*rest"], **slip}), 3)
    assert served(t, method, host, "/secret/k") == "private"
    # the readable items are fenced as before
    assert served(t, "GET", "admin.example" if "hosts" in slip else "h", "/secret/k") == \
        "private"
    assert served(t, method, host, "/open") == "public"
