"""Review of the HTTP/2 edge's FloodCut (82403d8 .. 2d9c86a) and the commits beside it."""
import textwrap
import time

import h2.events
import h2.settings

from ..conftest import gateway_conf, python_path_with, route
from ..h2client import RawH2


def test_window_updates_for_last_seconds_download_are_no_flood_in_a_new_second(launcher,
                                                                               upstream):
    """Each DATA frame sent earns the client a WINDOW_UPDATE (count_frames_read). A client
    that gives the connection's window back as its application consumes the body, a little
    over a second after the DATA came, sends them in one write: the first read of a new
    second. Counted after the read, the DATA frames of the second before still paid for it;
    set_caps turned the second over before the read, and the parse was cut at the 101st
    (max_empty_frames_per_second = 100): GOAWAY ENHANCE_YOUR_CALM mid-download."""
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)], http2={
        "h2c": True, "max_empty_frames_per_second": 100}))
    window = 8 << 20
    client = RawH2(gw.port, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
    client.conn.increment_flow_control_window(window)
    client.flush()
    size = 3 << 20
    sid = client.request(f"/bytes/{size}")
    frames = received = 0
    deadline = time.monotonic() + 5
    while not client.ended(sid) and time.monotonic() < deadline:
        client.sock.settimeout(1.0)
        data = client.sock.recv(65536)
        assert data
        for event in client.conn.receive_data(data):     # (no window given back yet)
            if isinstance(event, h2.events.DataReceived):
                frames += 1
                received += len(event.data)
            else:
                client.events.append(event)
    assert received == size and frames > 150
    time.sleep(1.3)                 # the application consumes the body
    for _ in range(frames):         # one WINDOW_UPDATE for each DATA frame, in one write
        client.conn.increment_flow_control_window(16384)
    client.flush()
    status, _, body, _ = client.response(client.request("/bytes/10"))
    assert client.goaway() is None
    assert status == 200 and len(body) == 10
    client.close()


BLOCKING_RESOLVER = textwrap.dedent("""
    import time
    from gevent.resolver.thread import Resolver

    class BlockingResolver(Resolver):
        def getaddrinfo(self, host, *args, **kwargs):
            name = host.decode() if isinstance(host, bytes) else str(host)
            if name.endswith(".hang.test"):
                self.pool.apply(time.sleep, (20,))  # the system's resolver, in a pool thread
            return super().getaddrinfo(host, *args, **kwargs)
""")


def hung_lookups_leave_resolver_threads(launcher, tmp_path, upstream, scheme):
    """Eleven requests to a ``scheme`` target whose name's lookup hangs each answer 504
    within 2 s, and a route to ``localhost`` is served after them."""
    (tmp_path / "blocking_resolver.py").write_text(BLOCKING_RESOLVER)
    gw = launcher.gateway(gateway_conf([
        {"id": "hang", "paths": ["/hang"], "timeouts": {"connect": 0.3},
         "upstream": {"targets": [{"url": f"{scheme}://up.hang.test:9"}]}},
        {"id": "ok", "paths": ["/ok"], "timeouts": {"connect": 0.5},
         "upstream": {"targets": [{"url": f"http://localhost:{upstream.port}"}]}}]),
        env={**python_path_with(tmp_path),
             "GEVENT_RESOLVER": "blocking_resolver.BlockingResolver"})
    for _ in range(11):
        begun = time.monotonic()
        assert gw.request("GET", "/hang")[0].status == 504
        assert time.monotonic() - begun < 2.0
    resp, body = gw.request("GET", "/ok")       # a new connection: its name looked up now
    assert resp.status == 200, body[:200]


def test_lookups_of_a_hanging_name_do_not_take_every_resolver_thread(launcher, tmp_path,
                                                                      upstream):
    """opening_within (8ebc611) answers a connect whose name lookup hangs within
    timeouts.connect, but the lookup goes on in gevent's resolver pool (10 threads): eleven
    requests to that route, one after another, took every thread, and a route whose upstream
    is named ``localhost`` answered 504 behind them (its lookup queued for 20 s)."""
    hung_lookups_leave_resolver_threads(launcher, tmp_path, upstream, "http")
