"""A quick stop signalled twice (Ctrl-C in a terminal signals the whole process group: each
worker gets SIGINT, then the master's SIGQUIT) exits once, without a traceback in the log."""
import signal
import socket

from tests.conftest import gateway_conf, route, stop_process, wait_until


def test_ctrl_c_on_the_process_group_exits_without_a_traceback(launcher, upstream):
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)]))
    # An idle keep-alive client: the worker has a connection to cut, which takes its time.
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as client:
        client.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        assert client.recv(65536).startswith(b"HTTP/1.1 200")
        stop_process(gw.proc, sig=signal.SIGINT)        # to the group, as a terminal does
    assert gw.proc.returncode == 0
    assert wait_until(lambda: "Worker exiting" in gw.log() or None, timeout=5), gw.log()
    assert "Traceback" not in gw.log() and "SystemExit" not in gw.log(), gw.log()[-3000:]
