"""HTTP/2 bodies stream both ways with bounded memory, and draining ends with GOAWAY (issue 19).

Each upload is 1 GiB, as the issue asks: the worker's peak RSS (VmHWM) must grow by far less
than the body either way (~12 s each here)."""
import json
import os
import signal
import subprocess
import time

import h2.errors
import pytest

from ..conftest import gateway_conf, route, wait_until
from ..h2client import RawH2
from .test_grpc_native import grpc_route, grpc_server, pb, stub  # noqa: F401 (fixture)

UPLOAD = 1024 * 1024 * 1024
RSS_GROWTH_LIMIT = 64 * 1024 * 1024


def peak_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_large_upload_to_an_http1_upstream(launcher, upstream, tmp_path):
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)],
                                       http2={"h2c": True}))
    worker = gw.worker_pids()[0]
    body = tmp_path / "body"
    with open(body, "wb") as f:
        f.truncate(UPLOAD)                          # sparse: no disk, all zeros
    before = peak_rss(worker)
    # -T streams the file (--data-binary @file would read all of it into curl first)
    out = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-X", "POST", "-T",
                          str(body), f"{gw.url}/upload"], capture_output=True, timeout=180)
    assert json.loads(out.stdout)["size"] == UPLOAD
    assert peak_rss(worker) - before < RSS_GROWTH_LIMIT


def test_large_upload_to_an_h2_upstream(launcher, grpc_server):   # noqa: F811
    gw = launcher.gateway(gateway_conf([grpc_route(grpc_server.port)], http2={"h2c": True}))
    worker = gw.worker_pids()[0]
    before = peak_rss(worker)
    echo, channel = stub(gw.port)
    piece = "x" * (1 << 20)
    count = UPLOAD // len(piece)
    reply = echo.Collect(iter([pb.EchoRequest(text="bytes")] +
                              [pb.EchoRequest(text=piece) for _ in range(count)]), timeout=180)
    assert reply.index == 5 + count * len(piece)
    channel.close()
    assert peak_rss(worker) - before < RSS_GROWTH_LIMIT


def test_goaway_on_sigterm_lets_streams_in_flight_finish(launcher, upstream):
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)],
                                       http2={"h2c": True}))
    client = RawH2(gw.port)
    slow = client.request("/slow/1")
    wait_until(lambda: upstream.stats()["requests"] >= 1)     # in flight at the upstream
    worker = gw.worker_pids()[0]
    os.kill(worker, signal.SIGTERM)                 # what a reload does to the old workers
    client.pump(lambda c: c.goaway() is not None, timeout=5)
    goaway = client.goaway()
    assert goaway is not None and goaway.error_code == h2.errors.ErrorCodes.NO_ERROR
    assert goaway.last_stream_id == slow
    client.pump(lambda c: c.closed, timeout=10)     # closed once the stream is done
    assert client.closed
    # h2 (the client library) stops parsing at GOAWAY: the gateway's log says how it ended.
    wait_until(lambda: any(line.get("path") == "/slow/1" for line in gw.access_lines()))
    line = [line for line in gw.access_lines() if line.get("path") == "/slow/1"][0]
    assert line["status"] == 200 and line["bytes"] > 0 and line["protocol"] == "HTTP/2"


@pytest.fixture
def silent_grpc_call(launcher):
    """-> call(path): a gRPC call over h2c through a gateway (client_body_timeout 1.5 s) to a
    StreamingH2Upstream, whose client sends one empty message and then nothing; -> (the
    client, its stream id)."""
    from ..h2_upstreams import StreamingH2Upstream
    upstream, clients = StreamingH2Upstream(), []
    gw = launcher.gateway(gateway_conf(
        [{"id": "g", "paths": ["/*rest"],
          "upstream": {"targets": [{"url": f"http://127.0.0.1:{upstream.port}"}],
                       "protocol": "h2"}}],
        http2={"h2c": True}, server={"client_body_timeout": 1.5}))

    def call(path):
        client = RawH2(gw.port)
        clients.append(client)
        sid = client.request(path, "POST", [("content-type", "application/grpc"),
                                            ("te", "trailers")], end=False)
        client.conn.send_data(sid, b"\0\0\0\0\0")      # one empty message, then silence
        client.flush()
        return client, sid
    yield call
    for client in clients:
        client.close()
    upstream.close()


def test_a_bidi_call_whose_client_listens_is_not_cut_at_client_body_timeout(
        silent_grpc_call):
    """A bidi gRPC call whose server streams while its client says nothing (a subscription)
    was reset at client_body_timeout (INTERNAL_ERROR), its answer cut: the client's silence
    was taken for a stalled upload. While the call's answer goes on it is listening."""
    client, sid = silent_grpc_call("/svc.Feed/Subscribe/tick?n=5&every=0.8")
    answer = client.response(sid, timeout=10)
    assert answer is not None and answer[0] == 200, answer
    assert answer[2] == b"tick" * 5, answer


def test_a_silent_grpc_upload_with_no_answer_flowing_is_still_cut(silent_grpc_call):
    """The other side of the test above: a call whose answer has not begun waits for its
    client's body at most client_body_timeout, as before."""
    client, sid = silent_grpc_call("/svc.Feed/Upload/slow")
    started = time.monotonic()
    client.pump(lambda c: c.reset_code(sid) is not None or c.ended(sid), timeout=8)
    assert time.monotonic() - started < 4.0
