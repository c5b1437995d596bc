"""The lead's open suspicions of dec15a, against real gateways, upstreams, grpcio and etcd.

1. Not a defect: a client that leaves while a request's finish hooks run (HTTP/1.1 close;
   HTTP/2 close, or RST_STREAM of the answered stream) skips no other finish (limit_conn's
   release: the next request gets the slot), the request is logged and counted once, and
   the connection's other stream is served and logged.
2. Not a defect: a native gRPC call answered whole, grpc-status in trailers, is a 200 logged
   once, never `cut`; an answer with no grpc-status at all is relayed as it came, and the
   gRPC client reads it as the error it is (UNKNOWN).
3. A third-party plugin that added X-Consumer-ID to ``ctx.headers`` itself (docs/plugins.md
   lets a plugin edit ``headers``, keeping ``header_map`` so) had it forwarded: the upstream
   was told a consumer no auth plugin named, where ``set_header`` refuses the name and the
   docs promised a 500 for a header the gateway writes. It is now that 500, naming the
   plugin; the identified consumer's own pair stays. ``header_map`` alone is a view.
4. A third-party plugin whose ``link``, ``upstreams`` or ``for_consumer`` hook raised made
   `gwserver check` (and a reload, and etcd's rejected items) say "a value could not be
   checked: KeyError: 'spare'", naming neither the route or consumer, nor the plugin, nor the
   hook; a ``upstream_refs`` that raised passed the check, and in etcd mode, once such a route
   was served, the next upstream put in etcd raised out of the sync process's loop: it
   crash-looped and no later change applied. Each is now a config error naming the owner,
   the plugin and the hook, as ``prepare`` and ``needs`` are, and the last good table serves.
"""
import hashlib
import json
import os
import signal
import socket
import time

import grpc
import h2.events
import pytest

from ..grpc_upstream import generated_modules
from ..h2_upstreams import EventH2cUpstream
from ..h2client import RawH2
from ..conftest import (check_conf, gateway_conf, installed_plugin, route, to_toml,
                        wait_until)
from .test_etcd import etcd_conf, put, runtime_of
from .test_grpc_web import grpc_server  # noqa: F401 (the grpcio upstream fixture)

pb, pb_grpc = generated_modules()

LINKER = '''
from gwserver.core.schema import Field, Schema, string

NAME = "linker"
PRIORITY = 500
SCHEMA = Schema(Field("mode", string(), "link", "which hook fails"))


def access(conf, ctx):
    pass


def link(conf, resolve):
    if conf["mode"] == "link":
        raise KeyError("spare")
    return conf


def upstream_refs(conf):
    if conf["mode"] == "refs":
        raise KeyError("refs")
    return set()


def upstreams(conf):
    if conf["mode"] == "upstreams":
        raise KeyError("ups")
    return []
'''

PER_CONSUMER = '''
from gwserver.core.schema import Schema

NAME = "perconsumer"
PRIORITY = 500
SCHEMA = Schema()


def access(conf, ctx):
    pass


def for_consumer(conf, consumer_id):
    return conf["bucket"]       # the author's bug: a KeyError
'''

KEY_HASH = ("sha256$000102030405060708090a0b0c0d0e0f$c2f95c9ba9586babe88d75a1568081f8acbb5c56b"
            "93a42990ee3e8ad243699bd")


@pytest.fixture(scope="module")
def site_env(tmp_path_factory):
    base = tmp_path_factory.mktemp("hooks")
    env = installed_plugin(base, "gwhooks", "", "linker = gwhooks.linker\n"
                                                "perconsumer = gwhooks.perconsumer\n")
    (base / "site" / "gwhooks" / "linker.py").write_text(LINKER)
    (base / "site" / "gwhooks" / "perconsumer.py").write_text(PER_CONSUMER)
    return env


def alice(**plugins):
    return {"alice": {"credentials": {"key_auth": {"key_hash": KEY_HASH}}, "plugins": plugins}}


@pytest.mark.parametrize("plugins,consumers,said", [
    ({"linker": {"mode": "link"}}, None,
     "route r1: plugins.linker: the plugin's link() failed: KeyError('spare')"),
    ({"linker": {"mode": "upstreams"}}, None,
     "route r1: plugins.linker: the plugin's upstreams() failed: KeyError('ups')"),
    ({"linker": {"mode": "refs"}}, None,
     "route r1: plugins.linker: the plugin's upstream_refs() failed: KeyError('refs')"),
    ({"key_auth": {}}, alice(perconsumer={}),
     "consumer alice: plugins.perconsumer: the plugin's for_consumer() failed: "
     "KeyError('bucket')"),
], ids=["link", "upstreams", "upstream_refs", "for_consumer"])
def test_check_names_the_plugin_and_the_hook_that_raised(tmp_path, monkeypatch, site_env,
                                                         plugins, consumers, said):
    monkeypatch.setenv("PYTHONPATH", site_env["PYTHONPATH"])
    sections = {"consumers": consumers} if consumers else {}
    code, out = check_conf(tmp_path, gateway_conf([
        route("r1", ["/x"], "http://127.0.0.1:9", plugins=plugins)], **sections))
    assert code == 2, out
    assert said in out, out
    assert "could not be checked" not in out, out


def test_a_reload_whose_consumer_hook_raises_is_refused_named_and_serving_goes_on(
        launcher, site_env):
    echo = launcher.upstream("echo")
    gw = launcher.gateway(gateway_conf([route("good", ["/echo/good"], echo.url)]),
                          env=site_env)
    conf = dict(gw.conf, routes=[route("good", ["/echo/good"], echo.url,
                                       plugins={"key_auth": {}})],
                consumers=alice(perconsumer={}))
    gw.conf_path.write_text(to_toml(conf))
    os.kill(gw.pid, signal.SIGHUP)
    wait_until(lambda: "is invalid; still serving" in gw.log() or gw.proc.poll() is not None,
               timeout=15)
    assert gw.proc.poll() is None, gw.log()[-2000:]
    assert "consumer alice: plugins.perconsumer: the plugin's for_consumer() failed: " \
           "KeyError('bucket')" in gw.log(), gw.log()[-2000:]
    resp, body = gw.request("GET", "/echo/good")
    assert resp.status == 200, (resp.status, body)     # the old table, without key_auth


def etcd_rejected(gw):
    with open(os.path.join(runtime_of(gw), "status.json")) as f:
        return json.load(f).get("rejected") or {}


def test_etcd_names_the_hook_and_a_later_change_still_applies(launcher, tmp_path, site_env):
    etcd = launcher.etcd()
    echo = launcher.upstream("echo")
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], workers=1), env=site_env)
    client = etcd.client()
    put(client, "upstreams", "echo", {"targets": [{"url": echo.url}]})
    put(client, "routes", "refs", {"paths": ["/echo/refs"], "upstream": "echo",
                                   "plugins": {"linker": {"mode": "refs"}}})
    put(client, "routes", "linked", {"paths": ["/echo/linked"], "upstream": "echo",
                                     "plugins": {"linker": {"mode": "link"}}})
    # an upstream put asks every served route which upstreams it uses (upstream_refs)
    put(client, "upstreams", "other", {"targets": [{"url": echo.url}]})
    put(client, "routes", "after", {"paths": ["/echo/after"], "upstream": "echo"})
    wait_until(lambda: gw.request("GET", "/echo/after")[0].status == 200, timeout=10)
    rejected = etcd_rejected(gw)
    assert rejected["routes/linked"].startswith(
        "route linked: plugins.linker: the plugin's link() failed: KeyError('spare')"), rejected
    assert rejected["routes/refs"].startswith(
        "route refs: plugins.linker: the plugin's upstream_refs() failed: KeyError('refs')"), \
        rejected


# -- 1. a client that leaves while a request's finish hooks run --------------------------------

SLOW_FINISH = '''
import gevent

from gwserver.core.schema import Field, Schema, number

NAME = "slowfin"
PRIORITY = 1300            # its finish runs before limit_conn's (790) release
SCHEMA = Schema(Field("seconds", number(0), 1.0, "how long finish waits"))


def access(conf, ctx):
    pass


def finish(conf, ctx, status):
    if ctx.header("X-Slow-Finish"):
        gevent.sleep(conf["seconds"])       # a report sent somewhere, say
'''


@pytest.fixture(scope="module")
def finish_gw(module_launcher, tmp_path_factory):
    base = tmp_path_factory.mktemp("slowfin")
    env = installed_plugin(base, "gwslowfin", SLOW_FINISH, "slowfin = gwslowfin\n")
    echo = module_launcher.upstream("echo")
    routes = [route(name, [f"/echo/{name}"], echo.url, plugins={
        "slowfin": {"seconds": 0.6},
        "limit_conn": {"limit": 1, "key": "route", "scope": "host"}})
        for name in ("h1-close", "h2-close", "h2-reset")] + [
        route("other", ["/echo/other"], echo.url)]
    return module_launcher.gateway(gateway_conf(routes, http2={"h2c": True}), env=env)


def lines_of(gw, route_id):
    return [line for line in gw.access_lines() if line.get("route") == route_id]


def requests_counted(gw, route_id):
    text = gw.admin_get("/metrics")[1].decode()
    return sum(float(line.rpartition(" ")[2]) for line in text.splitlines()
               if line.startswith("gwserver_requests_total{") and f'route="{route_id}"' in line)


def rst_stream(sid, code=8):
    return (4).to_bytes(3, "big") + bytes([3, 0]) + sid.to_bytes(4, "big") + \
        code.to_bytes(4, "big")


@pytest.mark.parametrize("how", ["h1-close", "h2-close", "h2-reset"])
def test_a_client_leaving_while_finish_runs_skips_no_finish_and_is_logged_once(finish_gw, how):
    gw = finish_gw
    path = f"/echo/{how}"
    if how == "h1-close":
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: h\r\nX-Slow-Finish: 1\r\n\r\n".encode())
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        other = None
    else:
        client = RawH2(gw.port)
        try:
            sid = client.request(path, headers=[("x-slow-finish", "1")])
            assert client.response(sid)[0] == 200
            other = client.request("/echo/other", headers=[("x-slow-finish", "1")])
            time.sleep(0.2)                 # the first's finish waits now
            if how == "h2-close":
                other = None                # it goes with the connection
            else:
                client.send_raw(rst_stream(sid))
                assert client.response(other)[0] == 200, "the stream after it"
        finally:
            client.close()
    time.sleep(0.7)                         # the first finish is over, or was cut
    # limit_conn's release ran: a second request gets the slot (a 503 if it was skipped)
    resp, body = gw.request("GET", path)
    assert resp.status == 200, (resp.status, body)
    wait_until(lambda: len(lines_of(gw, how)) >= 2, timeout=5)
    lines = lines_of(gw, how)
    assert [line["status"] for line in lines] == [200, 200], lines
    assert requests_counted(gw, how) == 2
    if other is not None:
        wait_until(lambda: lines_of(gw, "other"), timeout=5)
    assert "plugin slowfin failed in finish" not in gw.log()



# -- 2. native gRPC through an h2 upstream -----------------------------------------------------

class NoStatusGrpc(EventH2cUpstream):
    """A broken gRPC server: one message, then the stream's end with no grpc-status, in its
    head or in trailers."""

    def on_event(self, conn, sock, event):
        if isinstance(event, h2.events.StreamEnded):
            conn.send_headers(event.stream_id, [(b":status", b"200"),
                                                (b"content-type", b"application/grpc")])
            message = pb.EchoReply(text="half").SerializeToString()
            conn.send_data(event.stream_id, b"\x00" + len(message).to_bytes(4, "big") + message,
                           end_stream=True)


@pytest.fixture
def grpc_gw(launcher, grpc_server):
    broken = NoStatusGrpc()
    gw = launcher.gateway(gateway_conf([
        {"id": "grpc", "paths": ["/gwtest.Echo/*method"], "upstream": {
            "targets": [{"url": f"http://127.0.0.1:{grpc_server.port}"}], "protocol": "h2"}},
        {"id": "nostatus", "paths": ["/gwtest.Broken/*method"], "upstream": {
            "targets": [{"url": f"http://127.0.0.1:{broken.port}"}], "protocol": "h2"}}],
        http2={"h2c": True}))
    yield gw
    broken.close()


def answers_counted(gw, route_id):
    text = gw.admin_get("/metrics")[1].decode()
    return [line for line in text.splitlines()
            if line.startswith("gwserver_gateway_answers_total{") and
            f'route="{route_id}"' in line]


def test_grpc_answers_are_logged_as_served_and_one_without_status_is_an_error(grpc_gw):
    """Not a defect (suspicion 2): a whole answer, its grpc-status in trailers, is a 200
    logged and counted once, never ``cut``; an answer with no grpc-status at all goes to
    the client as it came, which a gRPC client reads as the error it is (UNKNOWN)."""
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_gw.port}")
    try:
        echo = pb_grpc.EchoStub(channel)
        assert echo.Unary(pb.EchoRequest(text="hi"), timeout=10).text == "hi"
        with pytest.raises(grpc.RpcError) as err:
            echo.Unary(pb.EchoRequest(text="fail"), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert len(list(echo.Stream(pb.EchoRequest(text="s", count=3), timeout=10))) == 3
        broken = channel.unary_unary("/gwtest.Broken/Unary",
                                     request_serializer=pb.EchoRequest.SerializeToString,
                                     response_deserializer=pb.EchoReply.FromString)
        with pytest.raises(grpc.RpcError) as err:
            broken(pb.EchoRequest(text="hi"), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNKNOWN
    finally:
        channel.close()
    wait_until(lambda: len(lines_of(grpc_gw, "grpc")) == 3 and lines_of(grpc_gw, "nostatus"),
               timeout=5)
    for route_id, count in (("grpc", 3), ("nostatus", 1)):
        lines = lines_of(grpc_gw, route_id)
        assert [line["status"] for line in lines] == [200] * count, lines
        assert all(line.get("error") is None for line in lines), lines
        assert answers_counted(grpc_gw, route_id) == []     # no `cut`, no gateway answer
        assert requests_counted(grpc_gw, route_id) == count


# -- 3. a plugin that edits ctx.headers / ctx.header_map itself --------------------------------

FORGER = '''
from gwserver.core.schema import Field, Schema, one_of

NAME = "forger"
PRIORITY = 500             # after the auth plugins (key_auth 950)
SCHEMA = Schema(Field("how", one_of("headers", "header_map"), "headers", "where it writes"))


def access(conf, ctx):
    # "header_map ... holds every name in headers: a plugin that edits headers itself keeps
    # it so" (docs/plugins.md)
    if conf["how"] == "headers":
        ctx.headers.append((b"X-Consumer-ID", b"admin"))
    ctx.header_map[b"x-consumer-id"] = b"admin"
'''

ALICE_KEY = "alice-key"


@pytest.fixture(scope="module")
def forger_gw(module_launcher, tmp_path_factory):
    base = tmp_path_factory.mktemp("forger")
    env = installed_plugin(base, "gwforger", FORGER, "forger = gwforger\n")
    echo = module_launcher.upstream("echo")
    salt = "00" * 16
    digest = hashlib.sha256(bytes.fromhex(salt) + ALICE_KEY.encode()).hexdigest()
    key_hash = f"sha256${salt}${digest}"
    routes = [
        route("forge", ["/echo/forge"], echo.url, plugins={"forger": {}}),
        route("forge-map", ["/echo/forge-map"], echo.url,
              plugins={"forger": {"how": "header_map"}}),
        route("forge-alice", ["/echo/forge-alice"], echo.url,
              plugins={"key_auth": {}, "forger": {}}),
        route("alice", ["/echo/alice"], echo.url, plugins={"key_auth": {}})]
    return module_launcher.gateway(gateway_conf(routes, consumers={
        "alice": {"credentials": {"key_auth": {"key_hash": key_hash}}}}), env=env)


def consumer_ids_upstream(gw, path, headers=None):
    resp, body = gw.request("GET", path, headers=headers)
    if resp.status != 200:
        return resp.status
    return [value for name, value in json.loads(body)["headers"]
            if name.lower() == "x-consumer-id"]


def test_a_plugin_cannot_forward_a_consumer_id_by_editing_headers_itself(forger_gw):
    gw = forger_gw
    alice = {"X-API-Key": ALICE_KEY}
    assert consumer_ids_upstream(gw, "/echo/alice", alice) == ["alice"]
    # The gateway's own X-Consumer-ID, which set_header refuses: a 500 naming the plugin,
    # as docs/plugins.md says of a header the gateway writes that such a plugin adds
    assert consumer_ids_upstream(gw, "/echo/forge") == 500
    assert consumer_ids_upstream(gw, "/echo/forge-alice", alice) == 500
    assert "plugin forger: it set the request header b'X-Consumer-ID', which the gateway " \
           "writes itself" in gw.log()
    # header_map alone is a view: the upstream head is written from headers
    assert consumer_ids_upstream(gw, "/echo/forge-map") == []
