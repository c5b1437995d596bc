"""Attack pass of 2026-12-05 (e, a helper's): retries, upstream keep-alive pools, TLS to
upstreams and session-ticket keys, against real gateways and loopback upstreams that count
their open connections. Each numbered defect is shown by a test that failed before its fix;
tests named test_held_* pin behaviour that was tried and held.

1. An upstream whose pool settings changed in etcd (``pool_size``, ``block_when_full``,
   ``tls``; ``timeouts.connect`` too, before 5) while its target stayed got a new pool in
   every worker, and the old pool was never closed: its idle keep-alive connections stayed
   open for the worker's life (one more set with each change), and the old upstream and
   targets stayed referenced (proxy.UpstreamPools.prune only closed the pools of targets gone
   from the table).
2. An HTTP/2 upstream's connection to a target removed from the table (etcd, service
   discovery) was never closed: H2Pools was not pruned at all, so every worker kept one open
   connection (and its reader and writer greenlets) per target ever used.
3. With ``block_when_full``, a request whose target's pool was full (a slow request held its
   connections) waited ``pool_timeout`` and got a 503, while the upstream's other target had
   free connections: round robin sent every other request into that wait. Nothing had been
   sent, so the request now goes to a target not tried yet at once (nginx's ``max_conns``
   skips a full server too), and waits only for the last one.
4. (tests/unit/test_upstream_pools.py) An HTTP/2 connection renewed because its stream ids
   ran out was closed with its streams in flight: they were cut. It is retired now, as the
   connections of defect 2 are (test 2 shows a retired connection's answer arrive whole).
5. A route's ``timeouts.connect`` was ignored by HTTP/1.1 upstreams: the pools connected
   with their upstream's connect timeout (5 s by default), so a target whose SYNs are
   dropped, or a TLS target that never finishes its handshake, held the client 5 s per try
   for a route that said 0.5 s (HTTP/2 upstreams used the route's). Each new connection now
   gets the route's connect timeout.
6. Pooled upstream connections were kept idle for ever. A firewall or NAT between the
   gateway and an upstream that forgets an idle flow drops what is sent on it without a
   word: the next request on that connection waited read_timeout and got a 504 (no retry:
   the request had gone out). Connections idle past ``upstream_defaults.keepalive_timeout``
   (60 s, nginx's) are closed on the worker's tick now, HTTP/1.1 and HTTP/2 alike.
7. A session-ticket key file that every user of the host could read (mode 0644: what
   ``openssl rand 80 > FILE``, one of the two recipes the errors and docs gave, makes under
   the usual umask) was taken without a word, though whoever reads it decrypts the TLS 1.2
   sessions its tickets carry. ``check``, and the master at start and reload, warn of a key
   file others may read or write now, and the recipe says ``umask 077``.
"""
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest

from ..conftest import free_port, gateway_conf, wait_until
from ..h2_upstreams import EventH2cUpstream
from .test_attack_pass_dec03 import RecordingHttp1
from .test_attack_pass_dec03d import OK, ScriptedHttp1, exchange
from .test_etcd import all_workers_at, etcd_conf, put
from .test_upstream_attack_dec05 import blackhole  # noqa: F401 (a fixture)


# -- upstreams that count their open connections -------------------------------------------

class CountingHttp1(RecordingHttp1):
    """RecordingHttp1 (200 with the request line, keep-alive) that counts the connections
    open now (``open``): one closes when the gateway closes it."""

    def __init__(self):
        self.open, self.lock = 0, threading.Lock()
        super().__init__()

    def serve(self, conn):
        with self.lock:
            self.open += 1
        try:
            super().serve(conn)
        finally:
            with self.lock:
                self.open -= 1


class CountingH2(EventH2cUpstream):
    """An h2c upstream answering 200 "ok" (``/r/slow``: 2 s later) that counts the
    connections open now."""

    def __init__(self):
        self.open, self.lock = 0, threading.Lock()
        super().__init__()

    def connection(self, sock):
        with self.lock:
            self.open += 1
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None))
        conn.initiate_connection()
        guard = threading.Lock()        # the delayed answer's thread writes too
        try:
            with sock:
                with guard:
                    sock.sendall(conn.data_to_send())
                while data := sock.recv(65536):
                    with guard:
                        for event in conn.receive_data(data):
                            if isinstance(event, h2.events.RequestReceived):
                                self.request(conn, sock, guard, event)
                        sock.sendall(conn.data_to_send())
        except (h2.exceptions.ProtocolError, OSError):
            pass
        finally:
            with self.lock:
                self.open -= 1

    @staticmethod
    def request(conn, sock, guard, event):
        def answer():
            with guard:
                conn.send_headers(event.stream_id, [(b":status", b"200"),
                                                    (b"content-length", b"2")])
                conn.send_data(event.stream_id, b"ok", end_stream=True)
                sock.sendall(conn.data_to_send())
        if dict(event.headers)[b":path"] != b"/r/slow":
            conn.send_headers(event.stream_id, [(b":status", b"200"),
                                                (b"content-length", b"2")])
            conn.send_data(event.stream_id, b"ok", end_stream=True)
            return
        threading.Timer(2.0, answer).start()


def etcd_gateway(launcher, tmp_path):
    etcd = launcher.etcd()
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], workers=1))
    return gw, etcd.client()


def apply(gw, client, kind, item_id, spec):
    revision = put(client, kind, item_id, spec)
    wait_until(lambda: all_workers_at(gw, revision))


def ok(gw, path="/r/x"):
    resp, body = gw.request("GET", path)
    return resp.status == 200 and body


# -- 1. a pool whose settings changed was never closed ---------------------------------------

def test_an_old_pool_closes_when_its_upstreams_pool_settings_change(launcher, tmp_path):
    up = CountingHttp1()
    try:
        gw, client = etcd_gateway(launcher, tmp_path)
        apply(gw, client, "upstreams", "pool", {"targets": [{"url": up.url}], "pool_size": 4})
        apply(gw, client, "routes", "r", {"paths": ["/r/*rest"], "upstream": "pool"})
        assert ok(gw)
        wait_until(lambda: up.open == 1)
        for size in (5, 6, 7):
            apply(gw, client, "upstreams", "pool",
                  {"targets": [{"url": up.url}], "pool_size": size})
            assert ok(gw)       # a new pool for the new settings, a connection of its own
        # The old pools' idle connections close on the worker's tick after the change
        wait_until(lambda: up.open == 1, timeout=5)
        assert "closed the old pools of 1 targets whose pool settings changed" in gw.log()
        assert ok(gw) and up.open == 1          # the live pool's connection is kept
    finally:
        up.close()


# -- 2. HTTP/2 connections to removed targets stayed open ------------------------------------

def test_an_h2_connection_to_a_removed_target_closes(launcher, tmp_path):
    """... once its streams in flight are done: an answer still coming is not cut."""
    a, b = CountingH2(), CountingH2()
    try:
        gw, client = etcd_gateway(launcher, tmp_path)
        spec = {"protocol": "h2", "targets": [{"url": f"http://127.0.0.1:{a.port}"}]}
        apply(gw, client, "upstreams", "g", spec)
        apply(gw, client, "routes", "r", {"paths": ["/r/*rest"], "upstream": "g"})
        assert ok(gw) == b"ok"
        assert a.open == 1
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(ok, gw, "/r/slow")           # in flight on a for 2 s
            time.sleep(0.2)
            apply(gw, client, "upstreams", "g",
                  {**spec, "targets": [{"url": f"http://127.0.0.1:{b.port}"}]})
            assert ok(gw) == b"ok" and b.open == 1
            wait_until(lambda: "closed the pools of 1 removed targets: "
                               f"http://127.0.0.1:{a.port}" in gw.log(), timeout=5)
            assert slow.result(timeout=10) == b"ok"         # drained, not cut
        wait_until(lambda: a.open == 0, timeout=5)
        assert ok(gw) == b"ok" and b.open == 1
    finally:
        a.close()
        b.close()


# -- 3. a full pool held a request while another target had room -----------------------------

def test_a_full_pool_sends_the_request_to_another_target_at_once(launcher):
    slow = {b"/slow": lambda n: (time.sleep(3), OK)[1]}
    a, b = ScriptedHttp1(dict(slow)), ScriptedHttp1(dict(slow))
    try:
        gw = launcher.gateway(gateway_conf([{
            "id": "r", "paths": ["/*rest"], "upstream": {
                "targets": [{"url": a.url}, {"url": b.url}], "pool_size": 1,
                "block_when_full": True}}], upstream_defaults={"pool_timeout": 1.5}))
        assert exchange(gw.port, b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\n", timeout=1) \
            .startswith(b"HTTP/1.1 200 ")
        held = threading.Thread(target=exchange, args=(
            gw.port, b"GET /slow HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"))
        held.start()            # one target's only connection is busy for 3 s
        wait_until(lambda: len(a.lines) + len(b.lines) == 2)
        for _ in range(4):      # round robin picks the busy target for half of them
            started = time.monotonic()
            answer = exchange(gw.port, b"GET /ok HTTP/1.1\r\nHost: h\r\n"
                                       b"Connection: close\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
            assert time.monotonic() - started < 1.0
        held.join()
        # A single target (or the last one left) is still waited for, then a 503
        one = launcher.gateway(gateway_conf([{
            "id": "r", "paths": ["/*rest"], "upstream": {
                "targets": [{"url": a.url}], "pool_size": 1, "block_when_full": True}}],
            upstream_defaults={"pool_timeout": 1.0}))
        held = threading.Thread(target=exchange, args=(
            one.port, b"GET /slow HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"))
        slow_before = a.lines.count(b"GET /slow HTTP/1.1")
        held.start()
        wait_until(lambda: a.lines.count(b"GET /slow HTTP/1.1") == slow_before + 1)
        started = time.monotonic()
        answer = exchange(one.port, b"GET /ok HTTP/1.1\r\nHost: h\r\nConnection: close"
                                    b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 503 "), answer[:200]
        assert 0.9 < time.monotonic() - started < 2.5
        held.join()
    finally:
        a.close()
        b.close()


# -- 5. a route's connect timeout was not the HTTP/1.1 pools' ---------------------------------

class SilentListener:
    """Accepts connections and never says a word: a TLS handshake to it never ends."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"https://127.0.0.1:{self.sock.getsockname()[1]}"
        self.held = []
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self):
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.mark.parametrize("silent", ["syn-dropped", "tls-handshake"])
def test_a_routes_connect_timeout_bounds_an_http1_connect(launcher, blackhole, silent):
    listener = SilentListener() if silent == "tls-handshake" else None
    url = listener.url if listener else blackhole.url
    try:
        gw = launcher.gateway(gateway_conf([{
            "id": "r", "paths": ["/*rest"], "timeouts": {"connect": 0.5},
            "retry": {"attempts": 0},
            "upstream": {"targets": [{"url": url}], "tls": {"verify": False}}}]))
        started = time.monotonic()
        answer = exchange(gw.port, b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
                          timeout=15)
        took = time.monotonic() - started
        assert answer.startswith((b"HTTP/1.1 502 ", b"HTTP/1.1 504 ")), answer[:200]
        assert took < 2.5, f"{took:.1f} s for a route's connect timeout of 0.5 s"
    finally:
        if listener:
            listener.close()


# -- 6. a pooled connection a middlebox forgot ------------------------------------------------

class ForgetfulRelay:
    """A middlebox in front of ``port``: ``forget()`` makes it drop every byte of the
    connections it carries at that moment, without a word (a firewall or NAT whose state
    for an idle flow expired); connections made afterwards are carried."""

    def __init__(self, port):
        self.to = port
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.pairs, self.forgotten = [], set()
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                client = self.sock.accept()[0]
            except OSError:
                return
            pair = (client, socket.create_connection(("127.0.0.1", self.to)))
            self.pairs.append(pair)
            for src, dst in (pair, pair[::-1]):
                threading.Thread(target=self.pump, args=(pair, src, dst), daemon=True).start()

    def pump(self, pair, src, dst):
        try:
            while data := src.recv(65536):
                if id(pair) not in self.forgotten:
                    dst.sendall(data)
        except OSError:
            pass

    def forget(self):
        self.forgotten |= {id(pair) for pair in self.pairs}

    def close(self):
        self.sock.close()
        for pair in self.pairs:
            for sock in pair:
                sock.close()


@pytest.mark.parametrize("protocol", ["http1", "h2"])
def test_an_idle_pooled_connection_is_closed_before_a_middlebox_forgets_it(launcher,
                                                                           protocol):
    up = CountingHttp1() if protocol == "http1" else CountingH2()
    relay = ForgetfulRelay(up.port)
    try:
        gw = launcher.gateway(gateway_conf(
            [{"id": "r", "paths": ["/*rest"], "timeouts": {"read": 3.0},
              "upstream": {"targets": [{"url": relay.url}], "protocol": protocol}}],
            upstream_defaults={"keepalive_timeout": 1.0}))
        request = b"GET /r/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        assert exchange(gw.port, request).startswith(b"HTTP/1.1 200 ")
        relay.forget()          # the pooled connection's flow: gone, silently
        time.sleep(2.5)         # idle past keepalive_timeout (and a tick)
        started = time.monotonic()
        answer = exchange(gw.port, request, timeout=10)
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
        assert time.monotonic() - started < 1.0
        assert len(relay.pairs) == 2            # on a new connection
    finally:
        relay.close()
        up.close()


# -- 7. a ticket key every user can read ------------------------------------------------------

def test_a_ticket_key_file_others_may_read_is_warned_of(launcher, upstream, tmp_path):
    from ..conftest import route, to_toml
    from ..pki import CA
    cert, key, _ = CA(tmp_path).issue("site")
    shared, private = tmp_path / "shared.key", tmp_path / "private.key"
    for path, mode in ((shared, 0o644), (private, 0o640)):
        path.write_bytes(os.urandom(80))
        path.chmod(mode)
    conf = gateway_conf([route("r", ["/*rest"], upstream.url)], tls={
        "bind": [f"127.0.0.1:{free_port()}"],
        "certificates": [{"cert": str(cert), "key": str(key)}],
        "ticket_key_files": [str(private), str(shared)]})
    conf_path = tmp_path / "gw.toml"
    conf_path.write_text(to_toml(conf))
    checked = subprocess.run([sys.executable, "-m", "gwserver", "check", "-c", str(conf_path)],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr          # a warning, as nginx takes it
    warning = f"tls.ticket_key_files[1]: {shared} may be read by users other than its " \
              f"owner (mode 0644)"
    assert warning in checked.stdout, checked.stdout
    assert "ticket_key_files[0]" not in checked.stdout      # 0640: the gateway's group
    gw = launcher.gateway(conf)
    assert warning in gw.log()


@pytest.mark.parametrize("protocol", ["http1", "h2"])
def test_a_canarys_own_connect_timeout_bounds_its_connect(launcher, upstream, protocol):
    """(Found on review.) A split's upstream connects within its own timeouts.connect, over
    HTTP/2 as over HTTP/1.1: the h2 side took the route's (its main upstream's 5 s)."""
    listener = SilentListener()
    try:
        canary = {"targets": [{"url": listener.url}], "tls": {"verify": False},
                  "timeouts": {"connect": 0.5}, "retry": {"attempts": 0}}
        if protocol == "h2":
            canary["protocol"] = "h2"
        gw = launcher.gateway(gateway_conf([{
            "id": "r", "paths": ["/*rest"], "upstream": "main", "plugins": {"split": {
                "upstreams": [{"upstream": "main", "weight": 0},
                              {"upstream": "canary", "weight": 100}]}}}],
            upstreams={"main": {"targets": [{"url": upstream.url}]}, "canary": canary}))
        started = time.monotonic()
        answer = exchange(gw.port, b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
                          timeout=15)
        took = time.monotonic() - started
        assert answer.startswith((b"HTTP/1.1 502 ", b"HTTP/1.1 504 ")), answer[:200]
        assert took < 2.5, f"{took:.1f} s for the canary's connect timeout of 0.5 s"
    finally:
        listener.close()
