"""The upstream connect path's waits (Dec 10, a): each test failed before its fix.

1. A target whose name's lookup hangs: a request's connect timed out (timeouts.connect), and
   the default retry policy (one retry of a failed connect) sent it to the same name again,
   where it waited for that name's shared lookup (net.sockets.opening_within) for a second
   connect timeout: every request's 504 came after twice timeouts.connect, one that waited
   behind another's lookup too, over HTTP/1.1 (http and https) and HTTP/2 upstreams alike.
   A retry to another name still goes ahead.
2. A gRPC call's ``grpc-timeout`` shorter than timeouts.connect did not bound its HTTP/2
   connect (a TLS handshake that dribbles), nor its wait for another request's connect to
   the target: the call waited the connect timeout and was answered UNAVAILABLE (14), not
   DEADLINE_EXCEEDED (4) at its own deadline. Nor its wait for a free stream under the
   upstream's SETTINGS_MAX_CONCURRENT_STREAMS (up to pool_timeout, 5 s).
3. A request waiting for another's HTTP/2 connect whose connector left without a verdict
   (its HTTP/2 client reset the stream) then connected for a whole timeouts.connect of its
   own: the wait and the connect together are within one now.
"""
import threading
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import pytest

from ..conftest import gateway_conf, python_path_with
from ..h2_upstreams import H2cUpstream
from ..h2client import RawH2
from .test_dns_bounded import RESOLVER
from .test_fix_dec09f import HandshakeDribbler

GRPC_WEB = {"content-type": "application/grpc-web", "grpc-timeout": "300m"}


def timed(gw, path, headers=None, results=None, name=None, delay=0.0):
    """(status, body, seconds) of one request; into ``results[name]`` with ``results``."""
    time.sleep(delay)
    begun = time.monotonic()
    resp, body = gw.request("POST", path, body=b"", headers=headers, timeout=10)
    answer = (resp.status, body, time.monotonic() - begun)
    if results is not None:
        results[name] = answer
    return answer


def at_once(*calls):
    """Run each (function, args...) in a thread of its own, and wait for all of them."""
    threads = [threading.Thread(target=call[0], args=call[1:]) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)


@pytest.mark.parametrize("scheme, protocol", [("http", "http1"), ("https", "http1"),
                                              ("http", "h2")])
def test_a_hung_name_costs_one_connect_timeout_not_two(launcher, tmp_path, upstream, scheme,
                                                       protocol):
    (tmp_path / "hanging_resolver.py").write_text(RESOLVER)
    hung = f"{scheme}://up.hang.test:9"
    gw = launcher.gateway(gateway_conf([
        {"id": "hang", "paths": ["/hang"], "timeouts": {"connect": 0.8},
         "upstream": {"targets": [{"url": hung}], "protocol": protocol}},
        {"id": "mixed", "paths": ["/mixed"], "timeouts": {"connect": 0.8},
         "upstream": {"targets": [{"url": hung},
                                  {"url": f"http://localhost:{upstream.port}"}]}}]),
        env={**python_path_with(tmp_path),
             "GEVENT_RESOLVER": "hanging_resolver.HangingResolver"})
    results = {}
    # the second waits behind the first's lookup, then behind the name's shared one
    at_once((timed, gw, "/hang", None, results, "first"),
            (timed, gw, "/hang", None, results, "behind", 0.3))
    for name, (status, body, took) in results.items():
        assert status == 504 and took < 1.3, (name, status, took, body[:200])
    assert len(results) == 2
    # a retry to a target of another name is still made
    for _ in range(2):
        status, body, _ = timed(gw, "/mixed")
        assert status == 200, body[:200]


def test_grpc_timeout_bounds_an_h2_connect_and_the_wait_for_another(launcher):
    up = HandshakeDribbler()
    try:
        gw = launcher.gateway(gateway_conf([{
            "id": "r", "paths": ["/r"], "timeouts": {"connect": 2.0},
            "upstream": {"targets": [{"url": f"https://127.0.0.1:{up.port}"}],
                         "protocol": "h2"}}]))
        status, body, took = timed(gw, "/r", GRPC_WEB)
        assert b"grpc-status:4" in body and took < 1.0, (status, took, body)
        results = {}
        # the second call waits for the first's connect (no grpc-timeout: 2 s) to the target
        at_once((timed, gw, "/r", None, results, "connecting"),
                (timed, gw, "/r", GRPC_WEB, results, "waiting", 0.3))
        status, body, took = results["waiting"]
        assert b"grpc-status:4" in body and took < 1.0, (status, took, body)
        assert results["connecting"][0] == 504
    finally:
        up.close()


class OneStreamUpstream(H2cUpstream):
    """Allows one stream at a time (its first SETTINGS say so), and answers none;
    ``streams`` counts the streams it was sent."""

    def __init__(self):
        self.streams = 0
        super().__init__()

    def connection(self, sock):
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.local_settings = h2.settings.Settings(
            client=False, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1})
        conn.initiate_connection()
        with sock:
            try:
                sock.sendall(conn.data_to_send())
                while data := sock.recv(65536):
                    for event in conn.receive_data(data):
                        if isinstance(event, h2.events.RequestReceived):
                            self.streams += 1
                    sock.sendall(conn.data_to_send())
            except (h2.exceptions.ProtocolError, OSError):
                pass


def test_grpc_timeout_bounds_the_wait_for_a_free_h2_stream(launcher):
    up = OneStreamUpstream()
    try:
        gw = launcher.gateway(gateway_conf([{
            "id": "r", "paths": ["/r"], "timeouts": {"read": 2.0},
            "upstream": {"targets": [{"url": f"http://127.0.0.1:{up.port}"}],
                         "protocol": "h2"}}]))
        results = {}
        # the first holds the upstream's one stream until its read timeout (2 s)
        at_once((timed, gw, "/r", None, results, "holding"),
                (timed, gw, "/r", GRPC_WEB, results, "waiting", 0.3))
        status, body, took = results["waiting"]
        assert b"grpc-status:4" in body and took < 1.0, (status, took, body)
        assert results["holding"][0] == 504
    finally:
        up.close()


def test_a_wait_for_a_connect_its_client_reset_leaves_one_connect_timeout(launcher, tmp_path):
    """An HTTP/2 client's request opens the target's connection (its name's lookup hangs)
    and resets its stream 0.9 s in: a request that waited 0.6 s for that connect then
    connected for a whole timeouts.connect of its own, its 504 at 1.6 s for a 1 s one."""
    (tmp_path / "hanging_resolver.py").write_text(RESOLVER)
    gw = launcher.gateway(gateway_conf([
        {"id": "hang", "paths": ["/hang"], "timeouts": {"connect": 1.0},
         "retry": {"attempts": 0},
         "upstream": {"targets": [{"url": "http://up.hang.test:9"}], "protocol": "h2"}}],
        http2={"h2c": True}),
        env={**python_path_with(tmp_path),
             "GEVENT_RESOLVER": "hanging_resolver.HangingResolver"})
    client = RawH2(gw.port)
    try:
        sid = client.request("/hang")
        results = {}
        waiter = threading.Thread(target=timed, args=(gw, "/hang", None, results, "w", 0.3))
        waiter.start()
        time.sleep(0.9)
        client.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        client.flush()
        waiter.join(10)
    finally:
        client.close()
    status, body, took = results["w"]
    assert status == 504 and took < 1.35, (status, took, body[:200])
