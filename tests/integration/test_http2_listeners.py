"""Per-listener HTTP/2 settings (issue 19): one gateway, three HTTP/2 listeners (h2c with the
[http2] values, two TLS listeners with their own [http2.listeners."host:port"] entries). Each
advertises its own SETTINGS to a real client (nghttp -v) and enforces its own limits (a
hand-driven client sends what a real one would not)."""
import re
import subprocess

import h2.errors
import pytest
from hyperframe.frame import DataFrame, HeadersFrame

from ..conftest import free_port, gateway_conf, route
from ..h2client import RawH2
from ..pki import CA

E = h2.errors.ErrorCodes
TIGHT = {"max_concurrent_streams": 2, "initial_window_size": 16384}
ROOMY = {"max_concurrent_streams": 50, "initial_window_size": 1048576,
         "max_frame_size": 65536, "connection_window_size": 4194304}


@pytest.fixture(scope="module")
def gw(module_launcher):
    upstream = module_launcher.upstream("main")
    cert, key, _ = CA(module_launcher.tmp_dir).issue("site")
    tight, roomy = free_port(), free_port()
    gw = module_launcher.gateway(gateway_conf(
        [route("r", ["/*rest"], upstream.url),
         # The body waits a second before it goes upstream, so nothing of it is acknowledged
         # while a test's DATA frames arrive, however the TLS records split them.
         route("held", ["/held/*rest"], upstream.url, strip_prefix="/held",
               plugins={"fault": {"delay": {"seconds": 1}}})],
        tls={"bind": [f"127.0.0.1:{tight}", f"127.0.0.1:{roomy}"],
             "certificates": [{"cert": str(cert), "key": str(key)}]},
        http2={"h2c": True, "listeners": {f"127.0.0.1:{tight}": TIGHT,
                                          f"127.0.0.1:{roomy}": ROOMY}}))
    gw.tight, gw.roomy = tight, roomy
    return gw


def advertised(url):
    """nghttp -v: the gateway's first SETTINGS frame and its connection WINDOW_UPDATE."""
    out = subprocess.run(["nghttp", "-v", "-n", url], capture_output=True, text=True,
                         timeout=20).stdout
    frame = re.search(r"recv SETTINGS frame <[^>]*flags=0x00[^>]*>\n\s+\(niv=\d+\)\n"
                      r"((?:\s+\[SETTINGS_\w+\(0x\w+\):\d+\]\n)+)", out)
    assert frame, out
    settings = {name: int(value) for name, value in
                re.findall(r"\[SETTINGS_(\w+)\(0x\w+\):(\d+)\]", frame.group(1))}
    window = re.search(r"recv WINDOW_UPDATE frame <[^>]*stream_id=0>\n\s+"
                       r"\(window_size_increment=(\d+)\)", out)
    settings["CONNECTION_WINDOW"] = 65535 + (int(window.group(1)) if window else 0)
    assert re.search(r"recv \(stream_id=\d+\) :status: 200", out), out
    return settings


@pytest.mark.parametrize("listener, expected", [
    ("h2c", (100, 262144, 16384, 1048576)),     # [http2]'s values
    ("tight", (2, 16384, 16384, 1048576)),      # its own, the rest [http2]'s
    ("roomy", (50, 1048576, 65536, 4194304)),
])
def test_each_listener_advertises_its_own_settings(gw, listener, expected):
    url = gw.url if listener == "h2c" else f"https://127.0.0.1:{getattr(gw, listener)}"
    got = advertised(url + "/echo")
    assert (got["MAX_CONCURRENT_STREAMS"], got["INITIAL_WINDOW_SIZE"], got["MAX_FRAME_SIZE"],
            got["CONNECTION_WINDOW"]) == expected, got


def headers(sid, end, path="/slow/0.5", client=None):
    block = client.conn.encoder.encode([(b":method", b"POST" if not end else b"GET"),
                                        (b":scheme", b"https"), (b":path", path.encode()),
                                        (b":authority", b"localhost")])
    return HeadersFrame(sid, block, flags=["END_HEADERS"] + (["END_STREAM"] if end else []))


def open_streams(port, count, by_hand):
    """``count`` streams sent at once; by hand: ignoring the advertised limit."""
    client = RawH2(port, tls=True)
    if not by_hand:
        return client, [client.request("/slow/0.5") for _ in range(count)]
    ids = [1 + 2 * i for i in range(count)]
    client.send_raw(b"".join(headers(sid, True, client=client).serialize() for sid in ids))
    return client, ids


def test_max_concurrent_streams_is_the_listeners(gw):
    from .test_h2client_attack_dec05c import GOAWAY, RST_STREAM, read_frames
    client, ids = open_streams(gw.tight, 4, by_hand=True)      # limit 2: two refused
    answered = lambda fs: {f[2] for f in fs if f[0] == 0x0 and f[1] & 1}     # noqa: E731
    frames, _ = read_frames(client.sock, b"", lambda fs: any(f[0] == GOAWAY for f in fs) or
                            len(answered(fs)) >= 2, timeout=10)
    # (RFC 9113 5.1.2: a stream error, REFUSED_STREAM; the connection and its first two
    # streams go on: test_h2_past_limit_dec05n.py)
    assert not [f for f in frames if f[0] == GOAWAY]
    refused = {f[2]: int.from_bytes(f[3], "big") for f in frames if f[0] == RST_STREAM}
    assert refused == {5: E.REFUSED_STREAM, 7: E.REFUSED_STREAM}, refused
    assert answered(frames) == {1, 3}
    client, ids = open_streams(gw.roomy, 4, by_hand=False)     # limit 50: all served
    assert [client.response(sid, timeout=10)[0] for sid in ids] == [200] * 4


def send_body(port, sizes, by_hand, path="/upload"):
    """One POST whose DATA frames (of these sizes) go out before any is acknowledged; by
    hand: ignoring the advertised window and frame size."""
    client = RawH2(port, tls=True)
    if not by_hand:
        client.pump(lambda c: c.conn.remote_settings.max_frame_size != 16384, timeout=5)
        sid = client.request(path, method="POST", end=False)
        for i, size in enumerate(sizes):
            client.conn.send_data(sid, b"x" * size, end_stream=i == len(sizes) - 1)
        client.flush()
        return client
    frames = [headers(1, False, path, client=client)] + [
        DataFrame(1, b"x" * size, flags=["END_STREAM"] if i == len(sizes) - 1 else [])
        for i, size in enumerate(sizes)]
    client.send_raw(b"".join(frame.serialize() for frame in frames))
    return client


@pytest.mark.parametrize("sizes, tight", [
    ([10000, 10000], E.FLOW_CONTROL_ERROR),      # 20000 > tight's window of 16384
    ([40000], E.FRAME_SIZE_ERROR),               # a frame over tight's 16384
])
def test_windows_and_frame_size_are_the_listeners(gw, sizes, tight):
    client = send_body(gw.tight, sizes, by_hand=True, path="/held/upload")
    client.pump(lambda c: c.goaway() is not None or c.closed, timeout=10)
    assert client.goaway() is not None and client.goaway().error_code == tight
    client = send_body(gw.roomy, sizes, by_hand=False)      # within its window and frames
    status, _, body, _ = client.response(1, timeout=10)
    assert status == 200 and b'"size": %d' % sum(sizes) in body


def test_the_goaway_survives_a_client_that_keeps_sending(gw):
    """A client far over its window gets GOAWAY FLOW_CONTROL_ERROR although much of what it
    sent is still unread when the gateway gives up (it drains before closing: a close with
    unread input sends RST, which can cost the client the GOAWAY; seen once under load, not
    reproduced on demand)."""
    client = send_body(gw.tight, [10000] * 40, by_hand=True, path="/held/upload")     # 400 KB into a 16 KiB window
    client.pump(lambda c: c.goaway() is not None or c.closed, timeout=10)
    assert client.goaway() is not None and client.goaway().error_code == E.FLOW_CONTROL_ERROR
