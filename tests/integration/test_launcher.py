"""The test launcher itself: a gateway whose port was taken between the probe and the bind
must not leave the test talking to whoever took it (a CI run once failed four HTTP/2
tests that way: their requests reached another test run's gateways and upstreams)."""
import socket

from .. import conftest
from ..conftest import gateway_conf, route


def test_a_gateway_whose_port_is_taken_is_started_again_on_another(launcher, monkeypatch):
    stranger = socket.create_server(("127.0.0.1", 0))
    taken = stranger.getsockname()[1]
    free_port, handed_out = conftest.free_port, iter([taken])
    monkeypatch.setattr(conftest, "free_port", lambda: next(handed_out, None) or free_port())
    try:
        gw = launcher.gateway(gateway_conf([route("a", ["/*rest"], "http://127.0.0.1:9")]))
        assert gw.port != taken
        assert conftest.listens_on(gw.pid, gw.port)
        assert not conftest.listens_on(gw.pid, taken)
    finally:
        stranger.close()
