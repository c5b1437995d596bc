"""Docs pass dec10d: promises today's docs make to an operator, checked against real gateways,
etcd and upstreams on loopback (docs/operations.md "Upgrade" and per-host state, and
docs/security.md on websockets). Each test was seen failing with its promise broken by hand.
"""
from ..conftest import gateway_conf, route, wait_until
from .test_attack_dec10c import EchoWebsocket, applied, echoes, open_tunnel
from .test_etcd import PREFIX, etcd_conf, put


def test_breaker_files_an_earlier_version_named_are_removed_after_the_upgrade(
        launcher, upstream, tmp_path):
    """docs/operations.md: files an earlier version named by one hash are removed after the
    upgrade (their breakers start over once); the table's own files stay."""
    from gwserver.state.store import state_file_name
    states = tmp_path / "state" / "states"
    states.mkdir(parents=True, mode=0o700)
    old = states / "0123456789abcdef0123456789abcdef"      # the one-hash name of before
    old.write_bytes(b"x")
    conf = gateway_conf([route("b", ["/b"], upstream.url, plugins={"breaker": {}})])
    conf["server"]["state_dir"] = str(tmp_path / "state")
    gw = launcher.gateway(conf)
    assert gw.request("GET", "/b")[0].status == 200
    ours = states / state_file_name("br:route:b")
    wait_until(lambda: not old.exists(), timeout=8)
    assert ours.exists() and gw.request("GET", "/b")[0].status == 200


def test_a_websocket_stays_open_when_etcd_changes_its_route_otherwise(launcher, tmp_path):
    """docs/security.md: a route deleted ends its websockets; other changes to the route
    (its paths, its timeouts) leave them open."""
    up = EchoWebsocket()
    etcd = launcher.etcd()
    client = etcd.client()
    try:
        put(client, "upstreams", "up", {"targets": [{"url": up.url}]})
        put(client, "routes", "ws", {"paths": ["/ws"], "upstream": "up"})
        gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], workers=1))
        applied(gw, client)
        sock = open_tunnel(gw.port, b"/ws")
        try:
            put(client, "routes", "ws", {"paths": ["/ws", "/ws2"], "upstream": "up",
                                         "timeouts": {"connect": 2}})
            applied(gw, client)
            open_tunnel(gw.port, b"/ws2").close()       # the changed route is the one served
            assert echoes(sock) and echoes(sock)
            assert "websocket" not in gw.log()
            client.delete(f"{PREFIX}/routes/ws")
            applied(gw, client)
            wait_until(lambda: not echoes(sock), timeout=3)
        finally:
            sock.close()
    finally:
        up.close()
