"""least_outstanding weighs HTTP/2 upstream exchanges as it weighs HTTP/1.1 ones: new
requests go to the target that is not holding the slow ones (real h2c upstreams, loopback)."""
import collections
import threading
from concurrent.futures import ThreadPoolExecutor

import h2.config
import h2.connection
import h2.events
import pytest

from ..conftest import gateway_conf
from ..h2_upstreams import H2cUpstream


class NamedH2Upstream(H2cUpstream):
    """h2c with prior knowledge: every request is answered with the server's name, after
    ``delay`` seconds (each answer on its own timer, so streams overlap)."""

    def __init__(self, name, delay=0.0):
        self.name, self.delay = name.encode(), delay
        super().__init__()

    def connection(self, sock):
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        lock = threading.Lock()

        def answer(stream_id):
            with lock:
                conn.send_headers(stream_id, [(":status", "200"),
                                              ("content-length", str(len(self.name)))])
                conn.send_data(stream_id, self.name, end_stream=True)
                try:
                    sock.sendall(conn.data_to_send())
                except OSError:
                    pass

        with lock:
            conn.initiate_connection()
            sock.sendall(conn.data_to_send())
        with sock:
            while data := sock.recv(65536):
                with lock:
                    events = conn.receive_data(data)
                    sock.sendall(conn.data_to_send())
                for event in events:
                    if isinstance(event, h2.events.RequestReceived):
                        timer = threading.Timer(self.delay, answer, (event.stream_id,))
                        timer.daemon = True
                        timer.start()


@pytest.fixture
def upstreams():
    fast, slow = NamedH2Upstream("fast"), NamedH2Upstream("slow", delay=0.2)
    yield fast, slow
    fast.close()
    slow.close()


def shares(gw):
    def one(_):
        resp, body = gw.request("GET", "/r/x")
        assert resp.status == 200, body
        return body.decode()
    with ThreadPoolExecutor(8) as pool:
        return collections.Counter(pool.map(one, range(80)))


@pytest.mark.parametrize("balance", ["least_outstanding", "round_robin"])
def test_least_outstanding_counts_http2_exchanges(launcher, upstreams, balance):
    fast, slow = upstreams
    gw = launcher.gateway(gateway_conf(
        [{"id": "r", "paths": ["/r/*rest"], "strip_prefix": "/r", "upstream": "pool"}],
        workers=1, upstreams={"pool": {
            "targets": [{"url": f"http://127.0.0.1:{u.port}"} for u in (fast, slow)],
            "protocol": "h2", "balance": balance}}))
    seen = shares(gw)
    if balance == "round_robin":
        assert seen == {"fast": 40, "slow": 40}     # alternates whatever the load
    else:
        assert seen["fast"] >= 60, seen             # not sent to the target holding 8 slow ones
