"""`gwserver upstreams delete` refuses to delete an upstream routes use (without --force):
it must find every route etcd holds that uses it, however the route was written."""
import json

from gwserver import routes_cli
from gwserver.settings import parse_conf

PREFIX = "/gwserver/"


class Etcd:
    """What range_prefix returns, for routes_using."""

    def __init__(self, routes):
        self.routes = routes

    def range_prefix(self, prefix):
        return 9, [(f"{PREFIX}routes/{route_id}", value if isinstance(value, bytes) else
                    json.dumps(value).encode(), 3) for route_id, value in self.routes.items()]


def test_routes_written_without_their_id_are_users_too():
    """docs/etcd.md: a route's "id" may be left out, the key gives it. Such routes were
    never counted, so delete went ahead without --force and they answered 503; and a value
    nested past the JSON parser's limit (rejected by the gateway) killed the command."""
    conf = parse_conf({"etcd": {"endpoints": ["http://127.0.0.1:2379"]}})
    etcd = Etcd({
        "noid": {"paths": ["/a"], "upstream": "x"},
        "withid": {"id": "withid", "paths": ["/b"], "upstream": "x"},
        "bysplit": {"paths": ["/c"], "upstream": "y",
                    "plugins": {"split": {"upstreams": [{"upstream": "x", "weight": 1}]}}},
        "other": {"paths": ["/d"], "upstream": "y"},
        "deep": b"[" * 100000 + b"]" * 100000,
        "notjson": b"{nope"})
    assert routes_cli.routes_using(conf, etcd, PREFIX, "x") == ["bysplit", "noid", "withid"]


def test_get_and_list_show_a_value_nested_too_deep_instead_of_dying(tmp_path, monkeypatch,
                                                                   capsys):
    """`routes get` and `consumers list` parse what etcd holds: a value nested past the JSON
    parser's limit (etcdctl takes it; the gateway rejects it) killed them with a
    RecursionError, where invalid JSON is shown as stored."""
    import argparse
    deep = b"[" * 100000 + b"]" * 100000

    class Client(Etcd):
        def get(self, key):
            return deep
    monkeypatch.setattr(routes_cli, "client_for", lambda conf: Client({}))
    conf = tmp_path / "gw.toml"
    conf.write_text('[etcd]\nendpoints = ["http://127.0.0.1:2379"]\n')
    args = argparse.Namespace(conf=str(conf), action="get", id="deep")
    assert routes_cli.main("routes", args) == 2
    assert "stored value is not valid JSON (nested too deep)" in capsys.readouterr().err
    assert routes_cli.public_view(deep) == "(not a JSON object)"
