"""A route from etcd refused by its schema: `gwserver routes validate`, and the reason the
gateway records, name its bad paths too (the review of 2026-12-06, item carried over)."""
import json

from tests.unit.test_table import table


def test_a_routes_bad_paths_are_named_beside_its_bad_inline_upstream():
    t = table()
    written = {"id": "users", "paths": ["/ok", "x"], "strip_prefix": "/api",
               "upstream": {"targets": [{"url": "ftp://x"}]}}
    assert not t.put_route("users", json.dumps(written), 1)
    reason = t.rejected["routes/users"]
    assert "route users: upstream.targets[0].url: must be an http:// or https:// URL" in reason
    # before: only the upstream's problem; the paths' came on the next put
    assert 'route users: paths[1] must start with /, got "x"' in reason, reason


def test_a_bad_field_beside_bad_paths_names_both_and_not_twice():
    t = table()
    t.put_upstream("u1", json.dumps({"targets": [{"url": "http://127.0.0.1:9001"}]}), 1)
    written = {"id": "r", "paths": ["/a/*x/b"], "methods": ["GE T"], "upstream": "u1"}
    assert not t.put_route("r", json.dumps(written), 2)
    reason = t.rejected["routes/r"]
    assert "route r: methods" in reason and "catch-all that is not the last" in reason, reason
    assert reason.count("catch-all") == 1, reason
