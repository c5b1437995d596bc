"""Review of the plugin chain's catches (r17), against real gateways.

1. A kill that lands in a third-party plugin's ``finish`` while it waits (gevent I/O: an
   audit call to a slow service) was taken for the plugin's doing or let skip the rest:
   - over HTTP/1.1, the worker's drain running out (a reload, graceful_timeout) kills the
     connection's greenlet with GreenletExit, which no catch of run_finish took: the later
     plugins' finish never ran (limit_conn's release: its slot stayed taken in Redis for
     lease_seconds, and the client was refused 503 by the new workers) and the request had
     no access line;
   - over HTTP/2, a client that closed its connection once it had its answer killed the
     stream's greenlet with StreamKilled (a ClientGone), caught as the plugin's failure:
     "plugin X failed in finish", an ERROR with a traceback, blamed a client's hang-up on
     the plugin.
   A kill in finish now lets the other plugins' finish, the access line and the metrics
   run, and then ends the greenlet as it meant to, blaming no plugin.
2. A consumer deleted through etcd was taken out of the directory before its credentials'
   index entries, found by asking the plugin's ``credential_lookup`` again: a lookup that
   raised then (its key service down: a lookup that raises is a config error,
   docs/plugins.md) failed the worker's tick ("worker tick failed", a traceback) and left
   the entry behind: the deleted consumer's key still authenticated. The directory now
   takes out the entries it put in, never asking the plugin again.
3. A generator ``prepare``, ``claims`` or ``prepare_credential`` (a ``yield`` left in) was
   taken at load, where a generator phase is refused: `gwserver check` passed, and the
   route's conf (a consumer's credential, a claims hook's claims) was a generator object
   that no plugin code had run: every request on a generator prepare's route was a 500.
   Every hook whose value the gateway reads, not iterates, now refuses a generator at load.
"""
import os
import signal
import time

import pytest

from ..conftest import check_conf, free_port, gateway_conf, installed_plugin, route, wait_until
from ..h2client import RawH2
from .test_etcd import UP, all_workers_at, etcd_conf, put

LINGERER = '''
import gevent

from gwserver.core.schema import Schema

NAME = "lingerer"
PRIORITY = 1300             # its finish runs before limit_conn's (790)
SCHEMA = Schema()


def finish(conf, ctx, status):
    if ctx.header("X-Linger") is not None:
        gevent.sleep(3)     # an audit call to a slow service


def reply(conf, ctx, head):
    if ctx.header("X-Linger") is not None:
        gevent.sleep(3)
'''


@pytest.fixture(scope="module")
def site_env(tmp_path_factory):
    return installed_plugin(tmp_path_factory.mktemp("r17"), "gwreview17", LINGERER,
                            "lingerer = gwreview17\n")


def test_a_drain_that_kills_a_waiting_finish_gives_the_limit_conn_slot_back(launcher,
                                                                            site_env):
    echo = launcher.upstream("echo")
    redis = launcher.redis()
    gw = launcher.gateway(gateway_conf(
        [route("lc", ["/echo/*rest"], echo.url,
               plugins={"lingerer": True, "limit_conn": {"limit": 1}})],
        server={"graceful_timeout": 0.5}, redis={"url": redis.url}), env=site_env)
    resp, _ = gw.request("GET", "/echo/a", headers={"X-Linger": "1"})
    assert resp.status == 200           # answered; its finish now waits 3 s
    old = gw.serving_worker_pids()
    os.kill(gw.pid, signal.SIGHUP)      # a reload: the old worker drains 0.5 s, then kills
    wait_until(lambda: not set(old) & set(gw.worker_pids()), timeout=10)
    wait_until(lambda: gw.serving_worker_pids(), timeout=10)
    resp, body = gw.request("GET", "/echo/b")
    assert resp.status == 200, (resp.status, body)      # the slot was given back
    # the killed request's access line was written
    assert any("/echo/a" in str(line) for line in gw.access_lines()), gw.log()[-3000:]


def test_an_h2_client_gone_after_its_answer_is_no_plugins_failure(launcher, site_env):
    echo = launcher.upstream("echo")
    gw = launcher.gateway(gateway_conf(
        [route("lc", ["/echo/*rest"], echo.url,
               plugins={"lingerer": True, "limit_conn": {"limit": 1, "scope": "host"}})],
        http2={"h2c": True}), env=site_env)
    client = RawH2(gw.port)
    try:
        sid = client.request("/echo/h2", headers=[("x-linger", "1")])
        answer = client.response(sid)
        assert answer is not None and answer[0] == 200, answer
    finally:
        client.close()          # gone while the plugin's finish waits
    wait_until(lambda: any("/echo/h2" in str(line) for line in gw.access_lines()),
               timeout=10)      # its access line, written after the finish phase
    log = gw.log()
    assert "plugin lingerer failed in finish" not in log, log[-3000:]
    resp, body = gw.request("GET", "/echo/next")
    assert resp.status == 200, (resp.status, body)      # limit_conn's slot given back


def test_an_h2_client_gone_while_a_reply_hook_waits_is_no_plugins_failure(launcher,
                                                                          site_env):
    gw = launcher.gateway(gateway_conf(
        [route("dead", ["/dead/*rest"], f"http://127.0.0.1:{free_port()}",
               plugins={"lingerer": True})], http2={"h2c": True}), env=site_env)
    client = RawH2(gw.port)
    try:
        client.request("/dead/x", headers=[("x-linger", "1")])
        wait_until(lambda: "/dead/x" in gw.log() or "connection refused" in gw.log().lower()
                   or "cannot connect" in gw.log(), timeout=5)
        time.sleep(0.3)         # the 502's reply hook waits
    finally:
        client.close()
    wait_until(lambda: any("/dead/x" in str(line) for line in gw.access_lines()), timeout=10)
    log = gw.log()
    assert "plugin lingerer failed in reply" not in log, log[-3000:]


GENERATOR_HOOKS = {
    "prepare": '''
def prepare(conf):
    yield {**conf, "ready": True}
''',
    "claims": '''
IDENTIFIES_CONSUMER = True


def claims(conf, ctx, route_id):
    yield {"sub": "x"}
''',
    "prepare_credential": '''
from gwserver.core.schema import Field, string

CREDENTIAL = Schema(Field("token", string(), None, "the token"))


def prepare_credential(cred):
    yield {**cred, "digest": cred["token"][::-1]}


def credential_lookup(cred):
    return cred["token"]
''',
}


@pytest.mark.parametrize("hook", list(GENERATOR_HOOKS))
def test_a_generator_hook_whose_value_is_read_is_refused_at_load(tmp_path, monkeypatch, hook):
    env = installed_plugin(tmp_path, "gwgen", '''
from gwserver.core.schema import Schema

NAME, PRIORITY, SCHEMA = "gen", 10, Schema()


def access(conf, ctx):
    ctx.set_header("X-Ready", str(conf["ready"]))
''' + GENERATOR_HOOKS[hook], "gen = gwgen\n")
    monkeypatch.setenv("PYTHONPATH", env["PYTHONPATH"])
    consumers = {"alice": {"credentials": {"gen": {"token": "abc"}}}} \
        if hook == "prepare_credential" else {}
    code, out = check_conf(tmp_path, gateway_conf(
        [route("r1", ["/x"], "http://127.0.0.1:9", plugins={"gen": True})],
        consumers=consumers))
    assert code == 2, out
    assert f"plugin gen: {hook} must be a plain function, not an async or generator one" \
        in out, out


TOKEN_AUTH = '''
import os

from gwserver.core import consumers
from gwserver.core.context import Reply
from gwserver.core.schema import Field, Schema, string

NAME = "tokenauth"
PRIORITY = 945
IDENTIFIES_CONSUMER = True
SCHEMA = Schema()
CREDENTIAL = Schema(Field("token", string(), None, "the consumer's token"))


def credential_lookup(cred):
    if os.path.exists(os.environ["GW_R17_DOWN"]):
        raise ConnectionError("the token service is down")
    return cred["token"]


def access(conf, ctx):
    consumer = ctx.services.consumers.find(NAME, ctx.header("X-Token") or "")
    if consumer is None:
        return Reply.json(401, {"error": "unauthorized"})
    consumers.identify(ctx, consumer)
'''


def test_a_deleted_consumers_key_stops_authenticating_when_a_lookup_fails(launcher,
                                                                         tmp_path):
    down = tmp_path / "token-service-down"
    env = {**installed_plugin(tmp_path, "gwtoken", TOKEN_AUTH, "tokenauth = gwtoken\n"),
           "GW_R17_DOWN": str(down)}
    echo = launcher.upstream("echo")
    etcd = launcher.etcd()
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], workers=1), env=env)
    client = etcd.client()
    put(client, "upstreams", "up", UP(echo))
    put(client, "routes", "api", {"paths": ["/api/*rest"], "upstream": "up",
                                  "plugins": {"tokenauth": {}}})
    revision = put(client, "consumers", "tenant",
                   {"credentials": {"tokenauth": {"token": "t-old"}}})
    wait_until(lambda: all_workers_at(gw, revision))
    assert gw.request("GET", "/api/x", headers={"X-Token": "t-old"})[0].status == 200
    down.write_text("")         # the plugin's lookup raises from now on
    client.delete("/gw/consumers/tenant")
    wait_until(lambda: all_workers_at(gw, client.revision()), timeout=10)
    resp, body = gw.request("GET", "/api/x", headers={"X-Token": "t-old"})
    assert resp.status == 401, (resp.status, body, gw.log()[-2000:])
    assert "worker tick failed" not in gw.log(), gw.log()[-3000:]
