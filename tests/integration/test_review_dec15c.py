"""Review pass dec15c of 461cfea (the master's stop woken by SIGCHLD) and 45fe6e1 (cors strips
a websocket's credentials for an origin allowed as any site's; route conditions on
X-Forwarded-For and Via refused), each against a real gateway and upstream.

1. A consumer's own cors replaces the route's, and runs after the auth plugin that named the
   consumer: one allowing "*" let any site's page open the user's websocket with the user's
   HTTP auth (the Authorization it removed had already named the consumer).
2. A worker that does not drain at a stop is SIGKILLed at the limit, which the master says;
   461cfea's stop then ran gunicorn's own after it, which waited for that worker again and
   reaped it as "was sent SIGKILL! Perhaps out of memory?" (the master's own kill, not
   memory), where the stop before reaped it never (the master exited first).
3. 45fe6e1 has compile_route ask every route's upstream_refs before it knew the plugins'
   configs valid: an invalid split config got a second problem, a hook "failing".
"""
import base64
import os
import signal
import time

from gwserver.plugins.basic_auth import hash_password
from tests.conftest import check_conf, gateway_conf, route, wait_until

from .test_attack_dec10c import EchoWebsocket, assert_handshakes


def basic(user, password):
    return b"Authorization: Basic %s\r\n" % base64.b64encode(f"{user}:{password}".encode())


def cred(user):
    return {"basic_auth": {"username": user, "password_hash": hash_password("pw", rounds=4)}}


# -- 1. a consumer's cors allowing "*" and a cross-site websocket ------------------------------

def test_a_consumers_cors_for_any_origin_opens_no_websocket_with_the_users_credentials(
        launcher):
    """The route's cors names the app's page; the partner's own allows "*" (no credentials).
    A handshake from any other site's page carries the user's cached Basic credentials: the
    consumer they name is the user's, and the websocket must not be opened as the user. A
    client without Origin (no browser) and the gateway's own page still get theirs."""
    up = EchoWebsocket()
    try:
        gw = launcher.gateway(gateway_conf([route("ws", ["/ws"], up.url, plugins={
            "cors": {"allow_origins": ["https://app.example"]}, "basic_auth": {}})],
            consumers={"partner": {"credentials": cred("p"), "plugins": {"cors": {
                "allow_origins": ["*"]}}}}))
        assert_handshakes(gw.port, [
            (b"Origin: https://evil.example\r\n" + basic("p", "pw"), b"403"),
            (b"Origin: null\r\n" + basic("p", "pw"), b"403"),
            (b"Origin: http://h\r\n" + basic("p", "pw"), b"101"),     # its own page
            (basic("p", "pw"), b"101"),                                # no browser
            (b"Origin: https://evil.example\r\n", b"401")])           # none: nobody
    finally:
        up.close()


# -- 2. a worker killed at the end of a stop ---------------------------------------------------

def test_a_worker_killed_at_the_stops_limit_is_not_said_to_be_out_of_memory(launcher, upstream):
    gw = launcher.gateway(gateway_conf([route("r", ["/*p"], upstream.url)], workers=1,
                                       server={"graceful_timeout": 0.5}))
    wait_until(lambda: "ready: 1 workers serving" in gw.log())
    stuck = gw.serving_worker_pids()
    assert len(stuck) == 1, stuck
    [os.kill(pid, signal.SIGSTOP) for pid in stuck]     # it never drains
    started = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(timeout=10) == 0
    took = time.monotonic() - started
    log = gw.log()
    assert "still ran past server.graceful_timeout (0.5s) and 3s more" in log, log[-2000:]
    assert 3.4 < took < 6, took                         # graceful_timeout + WORKER_CUT_SECONDS
    assert "Perhaps out of memory" not in log, log[-2000:]
    assert f"Worker (pid:{stuck[0]}) was sent SIGKILL at the end of the stop" in log, log[-2000:]


# -- 3. a shipped plugin's invalid config, as check names it -----------------------------------

def test_an_invalid_split_config_is_named_by_its_schema_not_by_a_hook_failing(tmp_path, upstream):
    """45fe6e1 has compile_route ask every route's upstream_refs, its plugins' configs as they
    were written, before it knew they were valid: split's, given a number for upstreams, added
    "the plugin's upstream_refs() failed: TypeError(...)" to the schema's own problem."""
    code, out = check_conf(tmp_path, gateway_conf([route("r1", ["/a"], upstream.url, plugins={
        "split": {"upstreams": 5}})]))
    assert code == 2, out
    assert "route r1: plugins.split: upstreams: must be a list, got 5" in out, out
    assert "upstream_refs() failed" not in out, out
