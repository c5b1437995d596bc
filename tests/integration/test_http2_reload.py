"""A reload (SIGHUP to the master) with HTTP/2 clients connected (issue 19): the old worker sends
GOAWAY NO_ERROR, the stream in flight finishes on the old connection, and the client's next
request, on a new connection as real clients open after GOAWAY, is served by a new worker.
Which worker holds a client connection is read from the kernel (ss -p), by pid."""
import os
import re
import signal
import subprocess

from ..conftest import gateway_conf, route, wait_until


def connection_owners(port):
    """pids of the processes holding the accepted ends of connections to ``port``."""
    out = subprocess.run(["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True, timeout=10).stdout
    return {int(pid) for pid in re.findall(r"pid=(\d+)", out)}


def workers(gw):
    """The master's worker processes (by process title: helpers are children too)."""
    pids = set()
    for pid in gw.worker_pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"worker" in f.read():
                    pids.add(pid)
        except OSError:
            pass
    return pids


def test_after_goaway_new_streams_go_to_the_new_worker(launcher, upstream):
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)],
                                       http2={"h2c": True}, server={"graceful_timeout": 30.0}))
    [old] = workers(gw)
    # nghttp -v shows the frames; curl fetches a second URL after the first, as a browser
    # would, opening a new connection when the first one is going away.
    nghttp = subprocess.Popen(["nghttp", "-v", f"{gw.url}/slow/4"], stdout=subprocess.PIPE,
                              text=True)
    curl = subprocess.Popen(["curl", "-sS", "--http2-prior-knowledge", "-w",
                             "%{http_code} %{num_connects} %{local_port}\n",
                             "-o", "/dev/null", f"{gw.url}/slow/4",
                             "-o", "/dev/null", f"{gw.url}/slow/2"],
                            stdout=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: upstream.stats()["requests"] >= 2)      # both in flight
        assert connection_owners(gw.port) == {old}
        os.kill(gw.pid, signal.SIGHUP)
        new = wait_until(lambda: workers(gw) - {old}, timeout=20)
        wait_until(lambda: upstream.stats()["requests"] >= 3, timeout=20)  # curl's second
        owners = connection_owners(gw.port)
        assert owners and owners <= new, (owners, old, new)
        frames, _ = nghttp.communicate(timeout=30)
        transfers, _ = curl.communicate(timeout=30)
    finally:
        for proc in (nghttp, curl):
            if proc.poll() is None:
                proc.kill()
    goaway = re.search(r"recv GOAWAY frame <[^>]*>\n\s+\(last_stream_id=(\d+), "
                       r"error_code=(\w+)", frames)
    assert goaway and goaway.group(2) == "NO_ERROR", frames
    last = int(goaway.group(1))
    # the stream in flight, named by the GOAWAY, finished with its whole answer
    assert re.search(rf"recv \(stream_id={last}\) :status: 200", frames), frames
    assert re.search(rf"recv DATA frame <[^>]*flags=0x01, stream_id={last}>", frames), frames
    assert "slow done" in frames
    first, second = [line.split() for line in transfers.splitlines()]
    assert first[:2] == ["200", "1"] and second[:2] == ["200", "1"], transfers  # reconnected
    assert first[2] != second[2]
    wait_until(lambda: old not in workers(gw))        # drained, then gone
