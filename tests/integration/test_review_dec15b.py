"""Review pass dec15b: the carried suspicions at the edges (a client's Via, route conditions
on the headers that name the client, a route named "none", CLI messages, cors and websockets),
each against a real gateway, upstream and CLI."""
import base64
import json
import subprocess
import sys

from gwserver.plugins.basic_auth import hash_password
from tests.conftest import check_conf, gateway_conf, route, to_toml, wait_until

from .test_attack_dec10c import assert_handshakes


def echoed(data):
    """The upstream's /echo answer's headers as {lower name: [values]}."""
    got = {}
    for name, value in json.loads(data)["headers"]:
        got.setdefault(name.lower(), []).append(value)
    return got


# -- 1. a client's own Via -------------------------------------------------------------------

def test_a_clients_via_starts_the_chain_and_a_forged_loop_never_reaches_the_upstream(
        launcher, upstream):
    gw = launcher.gateway(gateway_conf([route("echo", ["/echo"], upstream.url, prefix=True)]))
    resp, data = gw.request("GET", "/echo", headers={"Via": "1.0 corp-proxy"})
    assert resp.status == 200
    assert echoed(data)["via"] == ["1.0 corp-proxy, 1.1 gwserver"]
    before = upstream.stats()["requests"]
    resp, data = gw.request("GET", "/echo", headers={"Via": ", ".join(["1.1 gwserver"] * 8)})
    assert resp.status == 508, data
    assert upstream.stats()["requests"] == before


# -- 2. route conditions on the headers that name the client -----------------------------------

def test_a_condition_on_x_real_ip_never_matches_an_untrusted_peers_copy(launcher, upstream):
    # X-Real-IP behind a trusted proxy is judged as the upstream gets it (kept as it said):
    # only an untrusted peer's copy is at stake, and it is dropped before the router.
    gw = launcher.gateway(gateway_conf([
        route("internal", ["/echo"], upstream.url, headers={"X-Real-IP": "10.9.9.9"}),
        route("public", ["/echo"], upstream.url, priority=-1)]))
    resp, data = gw.request("GET", "/echo", headers={"X-Real-IP": "10.9.9.9",
                                                     "X-Forwarded-For": "10.9.9.9"})
    assert resp.status == 200
    sent = echoed(data)
    assert "x-real-ip" not in sent and sent["x-forwarded-for"] == ["127.0.0.1"]
    assert wait_until(lambda: gw.access_lines())[-1]["route"] == "public"


def test_a_condition_on_x_forwarded_for_is_refused_at_load(tmp_path, upstream):
    # Behind a trusted proxy it matched the proxy's "10.9.9.9" while the upstream got
    # "10.9.9.9, 127.0.0.1": the gateway appends the peer to what the condition read.
    code, out = check_conf(tmp_path, gateway_conf([route(
        "internal", ["/echo"], upstream.url, headers={"X-Forwarded-For": "10.9.9.9"})],
        server={"trusted_proxies": ["127.0.0.1"]}))
    assert code == 2, out
    assert "route internal: headers.X-Forwarded-For: X-Forwarded-For goes upstream" in out, out
    assert "ip_restriction" in out, out


# -- 3. a route named "none" -------------------------------------------------------------------

def test_a_route_named_none_is_refused_at_load(tmp_path, upstream):
    # Its answers were counted with every request no route took (route="none" in
    # gwserver_requests_total and gwserver_gateway_answers_total): its 404s and theirs alike.
    code, out = check_conf(tmp_path, gateway_conf([route("none", ["/n"], upstream.url)]))
    assert code == 2, out
    assert 'id: "none" is the metrics\' label of requests no route took' in out, out


# -- 4. the CLI's messages for what does not exist ---------------------------------------------

def test_cli_names_a_missing_rollout_and_upstream_without_masking_them(tmp_path, upstream):
    conf = gateway_conf([route("r1", ["/a"], upstream.url, plugins={"split": {
        "upstreams": [{"upstream": "session-v2", "weight": 10, "group": "canary"}]}})],
        server={"state_dir": str(tmp_path / "state")})
    code, out = check_conf(tmp_path, conf)
    assert code == 2
    assert 'route r1: plugins.split.upstreams[0]: unknown upstream id "session-v2"' in out, out
    conf["routes"][0]["plugins"] = {}
    (tmp_path / "state").mkdir()
    (tmp_path / "ok.toml").write_text(to_toml(conf))
    done = subprocess.run([sys.executable, "-m", "gwserver", "rollouts", "status", "token-api",
                           "-c", str(tmp_path / "ok.toml")], capture_output=True, text=True,
                          timeout=30)
    assert (done.returncode, done.stdout, done.stderr) == (
        1, "", "no rollout on route 'token-api'\n")


# -- 5. cors allow_origins = ["*"] and a cross-site websocket ----------------------------------

def basic(user, password):
    return b"Authorization: Basic %s\r\n" % base64.b64encode(f"{user}:{password}".encode())


def test_any_origin_without_credentials_opens_no_websocket_with_the_users_credentials(
        launcher, upstream):
    # A browser sends the user's cookies and HTTP auth with every websocket handshake and
    # applies no CORS to it: allow_origins = ["*"] (which may not go with credentials) let
    # any site's page open the user's authenticated websocket and read every message.
    gw = launcher.gateway(gateway_conf([route("ws", ["/ws"], upstream.url, plugins={
        "cors": {"allow_origins": ["*"]}, "basic_auth": {}})], consumers={"alice": {
            "credentials": {"basic_auth": {"username": "alice",
                                           "password_hash": hash_password("pw", 4)}}}}))
    assert_handshakes(gw.port, [
        (b"Origin: https://evil.example\r\n" + basic("alice", "pw"), b"401"),
        (b"Origin: null\r\n" + basic("alice", "pw"), b"401"),
        (b"Origin: http://h\r\n" + basic("alice", "pw"), b"101"),    # the gateway's own page
        (basic("alice", "pw"), b"101")])                                # no browser
