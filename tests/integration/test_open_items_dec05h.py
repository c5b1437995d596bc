"""Open items the last passes reported and left, confirmed against real gateways, upstreams,
Redis, etcd and `gwserver check`, and fixed (the attack pass of 2026-12-05, helper h1, on
e96cb6d). Each test failed on that commit.

1. The anonymous consumer a route's key_auth and basic_auth name (``anonymous = "guest"``)
   deleted from etcd while the route still names it: every request without a credential was
   a 500 (``anonymous_consumer_missing``, the consumer's id told to any client) and the
   operator's log said nothing; with both auth plugins naming it (docs/consumers.md's
   "either credential"), a client with a good password was a 500 too, since key_auth ended
   the request before basic_auth looked. Such a client is now served, one without a
   credential gets the 401 of a route without an anonymous consumer, saying so, and the log
   names the route and the consumer. `gwserver check` said ok of a conf file (no etcd) whose
   route named an anonymous consumer it did not define; it warns now.
2. ``:`` in route ids (allowed: "letters, digits, _ . : -"): rate_limit and limit_conn keyed
   their state ``ROUTE:KIND:VALUE``, so a route's id could spell part of another key. A route
   "key_auth:60" limited per address (a sliding window, per host) counted in key_auth's budget
   of failed look-ups for that address (``key_auth:60:ip:ADDR``): five good requests there and
   a client's first mistyped key elsewhere was a 429 "too many unknown API keys". A route
   "r:consumer" limited per address shared its bucket with route "r"'s limit of a consumer
   whose id is "ip:127.0.0.1". The route part of a key has its ``:`` escaped now (``%3A``;
   keys of ids without one are unchanged).
3. A Redis URL whose user part holds an unencoded "/", "?" or "#" (``redis://us/er:pass@host``):
   `gwserver check` said ok (redis-py reads host "us", so every worker would have connected
   there, without the password) and ``--dump`` showed the password whole, as it did for a
   ``redis+sentinel://`` URL (the gateway's own parser takes that user part whole, so the
   password works) and a password redis-py takes from the query (``?password=``). The user
   part is masked as every reader takes it, secret query parameters are masked, and a
   single-host URL redis-py would misread is refused, saying how to write it.
4. A websocket's access line said ``bytes`` 0 and ``request_bytes`` 0 however much its tunnel
   relayed, cut by either side or closed cleanly: the line now counts what went each way.
5. A consumer's own ``grpc_web`` was accepted, and joined routes of any upstream: a gRPC-Web
   call with its key went to an HTTP/1.1 upstream untranslated (200, JSON, no grpc-status)
   and back to the browser with CORS headers no route allowed, where the route's own grpc_web
   is refused with such an upstream. So was a route's grpc_web with a ``split`` that sends
   part of its calls to an HTTP/1.1 upstream (only the route's own upstream was checked).
   Both are refused now, naming the problem.
6. ``RateLimit-Limit`` rendered ``int(rate)``: ``rate = 0.5`` said 0, "nothing allowed", on
   answers it let through. The draft's limit is the quota of the window in whole requests:
   a configured rate that is not whole is stated over the fewest windows in which it is
   (``RateLimit-Limit: 1``, ``RateLimit-Policy: 1;w=2``); an adaptive one is rounded down
   as before, and stated so under 1.
7. ``/admin/breakers`` counted an open breaker's time to its probe (``half_open_in``) on the
   gateway host's wall clock, from an ``until`` written on Redis' (TIME): a host 30 s ahead
   of Redis showed 0 for all of the breaker's 5 s. Counted on Redis' clock now.
8. Two consumers that trade their API keys in etcd (one transaction, or two puts): each new
   version wanted the key the other's served version held, both were refused, and nothing
   tried them again: each partner was served as the other for good. They go in together now.
9. A HEAD answer with a Content-Length (the GET's, RFC 9110 9.3.2) left its connection
   waiting for a body that never comes: every HEAD cost a new upstream connection (a
   monitor's every few seconds too). Put back in the pool at once, a body a broken upstream
   wrote 40 ms late was the next request's answer (a smuggled response reached the client:
   seen while fixing this); the connection now goes back after 0.1 s without a byte.
"""
import base64
import http.client
import json
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

from gwserver.plugins.basic_auth import hash_password
from gwserver.plugins.key_auth import hash_key

from ..conftest import (gateway_conf, open_websocket, python_path_with, route, stop_process,
                        to_toml, wait_until)
from .test_auth_edges import get, upstream_saw
from .test_etcd import PREFIX, etcd_conf, put


def access_lines(gw):
    """The access log's lines (json, whatever fields the conf names)."""
    return [json.loads(line) for line in gw.log().splitlines() if line.startswith("{")]


def basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# -- 1. the anonymous consumer deleted while routes name it ----------------------------------------

def test_a_deleted_anonymous_consumer_is_a_401_that_says_so_and_no_500(launcher, upstream,
                                                                      tmp_path):
    etcd = launcher.etcd()
    either = {"key_auth": {"anonymous": "guest"}, "basic_auth": {"anonymous": "guest"},
              "acl": {"allow_consumers": ["alice", "guest"]}}
    conf = etcd_conf(tmp_path, [etcd.url], [route("k", ["/k/*rest"], upstream.url,
                                                  plugins=either)], workers=1)
    conf["consumers"] = {"alice": {"credentials": {"basic_auth": {
        "username": "alice", "password_hash": hash_password("alice-pw-1", rounds=4)}}}}
    gw = launcher.gateway(conf)
    client = etcd.client()
    put(client, "consumers", "guest", {"groups": ["guests"]})
    wait_until(lambda: get(gw.port, "/k/echo")[0] == 200)
    client.delete(f"{PREFIX}/consumers/guest")
    wait_until(lambda: get(gw.port, "/k/echo")[0] != 200)
    status, body = get(gw.port, "/k/echo")
    assert status == 401 and b"anonymous consumer is not configured" in body, (status, body)
    assert b"guest" not in body
    status, body = get(gw.port, "/k/echo", {"Authorization": basic("alice", "alice-pw-1")})
    assert status == 200, body
    assert upstream_saw(body)["x-consumer-id"] == "alice"
    assert get(gw.port, "/k/echo", {"Authorization": basic("alice", "wrong")})[0] == 401
    wait_until(lambda: "anonymous consumer guest, which is not configured" in gw.log(), 5)
    assert "route k" in gw.log() and "Traceback" not in gw.log()
    put(client, "consumers", "guest", {"groups": ["guests"]})          # back: served again
    wait_until(lambda: get(gw.port, "/k/echo")[0] == 200)


def test_check_warns_of_an_anonymous_consumer_the_conf_file_does_not_define(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text(to_toml(gateway_conf([route("k", ["/k/*rest"], "http://127.0.0.1:9",
                                                plugins={"key_auth": {"anonymous": "guest"}})],
                                         consumers={"other": {}})))
    run = subprocess.run([sys.executable, "-m", "gwserver", "check", "-c", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    out = run.stdout + run.stderr
    assert 'plugins.key_auth.anonymous: no consumer "guest" is defined' in out, out


# -- 2. ':' in a route id spells another state key -------------------------------------------------

def test_a_route_id_with_a_colon_shares_no_state_key_with_another_limit(launcher, upstream):
    window = {"rate": 100, "per": 60, "algorithm": "sliding_window", "key": "ip"}
    gw = launcher.gateway(gateway_conf([
        route("key_auth:60", ["/a/*rest"], upstream.url, plugins={"rate_limit": window}),
        route("api", ["/k/*rest"], upstream.url, plugins={"key_auth": {"max_failures": 3}}),
        route("r", ["/r/*rest"], upstream.url, plugins={
            "key_auth": {}, "rate_limit": {**window, "rate": 2, "key": "consumer"}}),
        route("r:consumer", ["/rc/*rest"], upstream.url, plugins={
            "rate_limit": {**window, "rate": 2}})],
        consumers={"ip:127.0.0.1": {"credentials": {"key_auth": {
            "key_hash": hash_key("ak_live_colon_consumer_0123")}}}}))
    for _ in range(5):
        assert get(gw.port, "/a/echo")[0] == 200
    status, body = get(gw.port, "/k/echo", {"X-API-Key": "ak_live_mistyped_key_0000"})
    assert status == 401 and b"invalid_key" in body, (status, body)
    for _ in range(2):
        assert get(gw.port, "/r/echo", {"X-API-Key": "ak_live_colon_consumer_0123"})[0] == 200
    assert get(gw.port, "/r/echo", {"X-API-Key": "ak_live_colon_consumer_0123"})[0] == 429
    status, body = get(gw.port, "/rc/echo")
    assert status == 200, body


# -- 3. a password in a Redis URL that the mask missed ---------------------------------------------

SHOWN_NOWHERE = "hunter2-pw"


def check_dump(tmp_path, url):
    path = tmp_path / "gw.toml"
    path.write_text(to_toml(gateway_conf([], redis={"url": url})))
    run = subprocess.run([sys.executable, "-m", "gwserver", "check", "-c", str(path), "--dump"],
                         capture_output=True, text=True, timeout=60)
    return run.returncode, run.stdout + run.stderr


def test_a_redis_urls_password_never_shows_however_its_user_part_is_written(tmp_path):
    for url in (f"redis://us/er:{SHOWN_NOWHERE}@127.0.0.1:6379/0",
                f"redis://us#er:{SHOWN_NOWHERE}@127.0.0.1:6379/0",
                f"unix://us/er:{SHOWN_NOWHERE}@/run/redis.sock"):
        code, out = check_dump(tmp_path, url)
        assert code != 0 and "must be percent-encoded" in out, out
        assert SHOWN_NOWHERE not in out, out
    for url in (f"redis+sentinel://us/er:{SHOWN_NOWHERE}@127.0.0.1:26379,127.0.0.1:26380/m",
                f"redis+cluster://:p/{SHOWN_NOWHERE}@127.0.0.1:7000,127.0.0.1:7001",
                f"redis://127.0.0.1:6379/0?db=0&password={SHOWN_NOWHERE}"):
        code, out = check_dump(tmp_path, url)
        assert code == 0 and "url = " in out, out
        assert SHOWN_NOWHERE not in out, out
    code, out = check_dump(tmp_path, "redis://alice:pw@127.0.0.1:6379/0?db=0")
    assert code == 0 and 'url = "redis://alice:***@127.0.0.1:6379/0?db=0"' in out, out



# -- 4. a websocket's bytes in the access log ------------------------------------------------------

def echo_through(sock, rest, messages):
    """Send each message and read its echo; -> bytes sent, bytes received (``rest`` first)."""
    received = len(rest)
    for message in messages:
        sock.sendall(message)
        got = b""
        while len(got) < len(message):
            piece = sock.recv(65536)
            assert piece, got
            got += piece
        received += len(got)
    return sum(map(len, messages)), received


@pytest.mark.parametrize("ending", ["client_closes", "client_resets", "upstream_dies"])
def test_a_websockets_access_line_counts_what_it_relayed_each_way(launcher, ending):
    up = launcher.upstream("ws")
    gw = launcher.gateway(gateway_conf([route("ws", ["/ws"], up.url)], log={
        "access_fields": ["path", "status", "bytes", "request_bytes"]}))
    sock, head, rest = open_websocket(gw.port, b"first")
    assert head.startswith(b"HTTP/1.1 101"), head
    sent, received = echo_through(sock, rest, [b"x" * 1000, b"y" * 70000])
    sent += len(b"first")
    if ending == "upstream_dies":
        stop_process(up.proc, sig=signal.SIGKILL)
        assert sock.recv(10) == b""             # the gateway closes the client's side
    elif ending == "client_resets":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()

    def line():
        return next((entry for entry in access_lines(gw) if entry.get("path") == "/ws"), None)
    entry = wait_until(line, timeout=10)
    assert (entry["status"], entry["bytes"], entry["request_bytes"]) == \
        (101, received, sent), (entry, received, sent)


# -- 5. a consumer's grpc_web ----------------------------------------------------------------------

WEB_KEY = "ak_live_web_consumer_0001"


def test_a_consumers_grpc_web_is_refused_as_a_routes_is_on_an_http1_upstream(launcher, upstream,
                                                                             tmp_path):
    web = {"credentials": {"key_auth": {"key_hash": hash_key(WEB_KEY)}},
           "plugins": {"grpc_web": {"allow_origins": ["https://app.example"]}}}
    api = route("r", ["/*rest"], upstream.url, plugins={"key_auth": {}})
    path = tmp_path / "gw.toml"
    path.write_text(to_toml(gateway_conf([api], consumers={"web": web})))
    run = subprocess.run([sys.executable, "-m", "gwserver", "check", "-c", str(path)],
                         capture_output=True, text=True, timeout=60)
    out = run.stdout + run.stderr
    assert run.returncode != 0 and "consumer web: plugins.grpc_web: it needs the route's " \
        "upstream to speak h2" in out, out
    # from etcd: refused alone, and the key names no one (the gRPC-Web call went to the
    # HTTP/1.1 upstream untranslated, its answer to the browser with the consumer's CORS)
    etcd = launcher.etcd()
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], [api], workers=1))
    put(etcd.client(), "consumers", "web", web)
    wait_until(lambda: "consumers/web" in gw.log(), timeout=10)
    status, body = get(gw.port, "/svc.Greeter/SayHello", {
        "X-API-Key": WEB_KEY, "Content-Type": "application/grpc-web+proto",
        "Origin": "https://app.example"})
    # a GET is no gRPC-Web call: its 401 stays an HTTP status (test_review_dec07d; a POST
    # gets grpc-status 16, test_fix_dec07b)
    assert status == 401, (status, body)


def test_a_grpc_web_route_cannot_split_its_calls_to_an_http1_upstream(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text(to_toml(gateway_conf([{
        "id": "r", "paths": ["/*rest"], "upstream": "g2", "plugins": {
            "grpc_web": {}, "split": {"upstreams": [{"upstream": "g2", "weight": 50},
                                                  {"upstream": "g1", "weight": 50}]}}}],
        upstreams={"g2": {"protocol": "h2", "targets": [{"url": "http://127.0.0.1:9"}]},
                   "g1": {"targets": [{"url": "http://127.0.0.1:10"}]}})))
    run = subprocess.run([sys.executable, "-m", "gwserver", "check", "-c", str(path)],
                         capture_output=True, text=True, timeout=60)
    out = run.stdout + run.stderr
    assert run.returncode != 0 and "route r: plugins.grpc_web: the upstream must speak " \
        "HTTP/2" in out and "upstream g1, which it may send to" in out, out


# -- 6. RateLimit-Limit of a rate that is not whole ------------------------------------------------

def limit_headers(gw, path):
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    conn.request("GET", path)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp.status, resp.getheader("RateLimit-Limit"), resp.getheader("RateLimit-Policy")


def test_ratelimit_limit_states_a_fractional_rate_as_a_whole_quota_and_its_window(launcher,
                                                                                   upstream):
    gw = launcher.gateway(gateway_conf([
        route("half", ["/half/*rest"], upstream.url, plugins={"rate_limit": {"rate": 0.5}}),
        route("win", ["/win/*rest"], upstream.url, plugins={"rate_limit": {
            "rate": 1.5, "per": 10, "algorithm": "sliding_window"}}),
        route("whole", ["/whole/*rest"], upstream.url, plugins={"rate_limit": {"rate": 3}})]))
    # 0.5 a second is 1 request in 2 seconds, not "0" (nothing allowed), which the 200 belies
    assert limit_headers(gw, "/half/echo") == (200, "1", "1;w=2")
    assert limit_headers(gw, "/half/echo") == (429, "1", "1;w=2")
    assert limit_headers(gw, "/win/echo") == (200, "3", "3;w=20")
    assert limit_headers(gw, "/whole/echo") == (200, "3", None)      # as it was


# -- 7. /admin/breakers on a host whose clock is not Redis' ----------------------------------------

SKEWED = """import time
_time = time.time
time.time = lambda: _time() + {skew}     # this host's wall clock, {skew} s off Redis'
"""


def test_admin_breakers_counts_an_open_breakers_time_on_the_clock_that_set_it(launcher,
                                                                             upstream,
                                                                             tmp_path):
    """The state's ``until`` is on Redis' clock (TIME, in the script), and the view took it
    from this host's wall clock: a gateway 30 s ahead of Redis showed an open breaker as
    due to probe at once (``half_open_in`` 0) for all its 5 s; one behind, 30 s too long."""
    from .test_breaker import FAST
    from .test_breaker import get as breaker_get
    site = tmp_path / "skewed"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SKEWED.format(skew=30.0))
    redis = launcher.redis()
    gw = launcher.gateway(gateway_conf([route("br", ["/br/*rest"], upstream.url,
                                              strip_prefix="/br", plugins={"breaker": {
                                                  **FAST, "open_for": 5.0, "max_open_for": 10.0}})],
                                       redis={"url": redis.url}),
                          env=python_path_with(site))
    for _ in range(4):
        breaker_get(gw, "/br/status/500")
    tripped = time.monotonic()
    assert breaker_get(gw, "/br/echo")[0] == 503
    entry = json.loads(gw.admin_get("/admin/breakers")[1])["breakers"]["route:br"]
    assert entry["state"] == "open", entry
    assert 5.0 - (time.monotonic() - tripped) - 0.5 <= entry["half_open_in"] <= 5.0, entry


# -- 8. two consumers trade their keys -------------------------------------------------------------

KEY_A, KEY_B = "ak_live_trade_alice_000000001", "ak_live_trade_bob_00000000002"


@pytest.mark.parametrize("how", ["one_transaction", "two_puts"])
def test_two_consumers_that_trade_keys_get_each_others_once_etcd_holds_the_trade(
        launcher, upstream, tmp_path, how):
    etcd = launcher.etcd()
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], [route(
        "k", ["/k/*rest"], upstream.url, plugins={"key_auth": {"cache_seconds": 0}})],
        workers=1))
    client = etcd.client()
    hash_a, hash_b = hash_key(KEY_A), hash_key(KEY_B)

    def consumer(key_hash):
        return json.dumps({"credentials": {"key_auth": {"key_hash": key_hash}}}).encode()
    put(client, "consumers", "alice", consumer(hash_a))
    put(client, "consumers", "bob", consumer(hash_b))

    def served_as(key):
        status, body = get(gw.port, "/k/echo", {"X-API-Key": key})
        return upstream_saw(body)["x-consumer-id"] if status == 200 else status
    wait_until(lambda: (served_as(KEY_A), served_as(KEY_B)) == ("alice", "bob"))
    if how == "one_transaction":
        client.txn_put([(f"{PREFIX}/consumers/alice", consumer(hash_b)),
                        (f"{PREFIX}/consumers/bob", consumer(hash_a))])
    else:
        put(client, "consumers", "alice", consumer(hash_b))
        put(client, "consumers", "bob", consumer(hash_a))
    wait_until(lambda: (served_as(KEY_A), served_as(KEY_B)) == ("bob", "alice"), timeout=10)


# -- 9. a HEAD answer with a Content-Length --------------------------------------------------------

def test_head_answers_with_a_content_length_keep_their_upstream_connection(launcher, upstream):
    """A monitor's HEAD every 0.25 s, a GET between them now and then: one connection."""
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)]))
    before = upstream.stats()["connections"]       # each /stats call is a connection too
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    for i in range(12):
        time.sleep(0.25)
        method = "GET" if i % 4 == 3 else "HEAD"
        conn.request(method, f"/bytes/{1000 + i}")
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200 and resp.getheader("Content-Length") == str(1000 + i)
        assert len(body) == (1000 + i if method == "GET" else 0), (i, len(body))
    conn.close()
    stats = upstream.stats()
    assert stats["requests"] == 12
    assert stats["connections"] - before - 1 == 1, (before, stats)
    # What the connection was closed for still holds: an upstream that writes the body of a
    # HEAD after all, 40 ms after the head (a delayed ACK under Nagle), a whole response in
    # it. A request right after the HEAD, and later ones, get their own answers.
    from .test_attack_pass_dec04b import SMUGGLED, ScriptedHttp1, read_one, writes
    up = ScriptedHttp1({b"/evil": writes(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n"
                                         % len(SMUGGLED), SMUGGLED, pause=0.04)})
    try:
        late = launcher.gateway(gateway_conf([route("r", ["/*rest"], up.url)]))
        with socket.create_connection(("127.0.0.1", late.port), timeout=10) as sock:
            sock.sendall(b"HEAD /evil HTTP/1.1\r\nHost: gw\r\n\r\n")
            head, _ = read_one(sock, head_only=True)
            assert head.startswith(b"HTTP/1.1 200"), head
            for pause in (0, 0.2, 0.2):
                time.sleep(pause)
                sock.sendall(b"GET /next HTTP/1.1\r\nHost: gw\r\n\r\n")
                head, body = read_one(sock)
                assert body == b"ok" and b"x-smuggled" not in head.lower(), (head, body)
        assert up.connection_of(b"/next") != up.connection_of(b"/evil")
    finally:
        up.close()
