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


def test_processes_the_tests_start_run_this_checkout(tmp_path):
    """The venv's editable install names one checkout; a test run in another worktree once
    started gateways with that checkout's code. Every process a test starts imports the
    gwserver of the tree the tests are in, from any working directory."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", "import gwserver; print(gwserver.__file__)"],
                         cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(conftest.ROOT / "gwserver" / "__init__.py")
