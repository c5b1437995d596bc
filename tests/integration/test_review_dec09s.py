"""Review of 4997c8e, d92c879 and 83f8429 (Dec 09 s), against real processes. Each test
failed on the code as it was.

1. A per-host limit_conn lease names a holder file in state_dir/conns/holders/, locked by its
   live worker. The file is never written after it is made, so an age-based tmp cleaner
   (systemd-tmpfiles on /tmp) or an operator's ``rm`` removes it under a live worker; the next
   claim that found every slot taken read the missing file as a dead worker's, dropped the
   leases still in flight and let more than ``limit`` in. The worker makes it again (on its
   next claim, and once a second).
"""
import glob
import os
import socket
import time

from ..conftest import gateway_conf, route, wait_until


def _status(port):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        return int(sock.recv(64).split()[1])


def test_a_removed_holder_file_does_not_free_a_slot_in_flight(launcher, upstream, tmp_path):
    state_dir = str(tmp_path / "state")
    conf = gateway_conf([route("r", ["/*rest"], upstream.url, plugins={
        "limit_conn": {"limit": 1, "key": "route", "scope": "host"}})], workers=2,
        server={"state_dir": state_dir})
    gw = launcher.gateway(conf)
    assert wait_until(lambda: _status(gw.port) == 200, timeout=10)
    held = None
    try:
        for _ in range(3):
            # (an answer's release follows its last byte: a request sent at once after it
            # may find the slot still taken, and one sent before the slow one may take it)
            time.sleep(0.5)
            held = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
            held.sendall(b"GET /slow/8 HTTP/1.1\r\nHost: h\r\n\r\n")
            time.sleep(0.5)
            if _status(gw.port) == 503:
                break
            held.close()
        else:
            raise AssertionError("the slow request never held the slot")
        holders = glob.glob(os.path.join(state_dir, "conns", "holders", "lock-*"))
        assert holders
        for path in holders:            # a tmp cleaner's pass, an operator's rm
            os.unlink(path)
        time.sleep(1.5)
        # before: the in-flight request's lease was dropped as a dead worker's: 200
        assert [_status(gw.port) for _ in range(4)] == [503] * 4
    finally:
        if held is not None:
            held.close()
