"""Items left from the last session's review: a route from etcd refused by its schema
(`gwserver routes validate`, and the reason the gateway records) names its bad paths too;
`check --dump` names the heartbeat directory."""
import json

from gwserver.settings import parse_conf
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


def test_the_dump_names_the_heartbeat_directory_the_master_uses():
    """`check --dump` showed ``worker_tmp_dir = ""`` (state_dir, beside it, was filled)."""
    import os
    import tomllib

    from gwserver.settings import dump_toml, tmpfs_dir
    conf = parse_conf({"upstreams": {"u": {"targets": [{"url": "http://127.0.0.1:9"}]}},
                       "routes": [{"id": "r", "paths": ["/r"], "upstream": "u"}]})
    shown = tomllib.loads(dump_toml(conf))["server"]["worker_tmp_dir"]
    assert shown and os.path.isdir(shown), shown
    assert shown == (tmpfs_dir() or shown)


def test_an_ip_restriction_on_an_untrusted_unix_tls_listener_is_warned_of(tmp_path):
    """unix_peer_warnings (2d16bcd) read server.bind alone: a tls.bind on a unix socket (a
    local TLS-speaking proxy) refused every request as quietly."""
    from gwserver.settings import conf_warnings
    from tests.pki import CA
    cert, key, _ = CA(tmp_path).issue("gw")
    conf = parse_conf({"tls": {"bind": ["unix:/run/gw-tls.sock"],
                               "certificates": [{"cert": str(cert), "key": str(key)}]},
                       "upstreams": {"u": {"targets": [{"url": "http://127.0.0.1:9"}]}},
                       "routes": [{"id": "r", "paths": ["/r"], "upstream": "u",
                                   "plugins": {"ip_restriction": {"allow": ["10.0.0.0/8"]}}}]})
    assert any("ip_restriction refuses every request on unix:/run/gw-tls.sock" in warning
               for warning in conf_warnings(conf)), conf_warnings(conf)
