"""Review of this session's later commits (helper r24).

0b158bb spares an HTTP/2 stream answered in full from the kill of its client's reset or its
connection's close, so its finish hooks run to their end. A stream so spared after its
connection closed belonged to no connection the worker counted: a drain (a reload, a stop)
found nothing held and the worker exited under the finish, its report, access line and
metrics lost, where over HTTP/1.1 the drain waits for them. A quick stop (SIGQUIT) cut
none of them, their connection closed or not: their access lines were lost too.
"""
import signal
import time

import pytest

from ..conftest import stop_process
from ..h2client import RawH2
from .test_h2_finish_dec15g import reported, reporting_gateway
from .test_review_dec15a import rst_stream


@pytest.fixture
def reporting_gw(launcher, tmp_path):
    return reporting_gateway(launcher, tmp_path, 2.0, {"slow-report": "/echo"})


def answered(gw, reset):
    """An HTTP/2 request answered in full, its stream reset or not: its finish hook waits on
    its report (2 s) -> the client, still connected."""
    client = RawH2(gw.port)
    try:
        sid = client.request("/echo")
        assert client.response(sid)[0] == 200
        if reset:
            client.send_raw(rst_stream(sid))
    except BaseException:
        client.close()
        raise
    time.sleep(0.2)         # (the reset, the close, read by the worker; the finish waits on)
    return client


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset-then-closed"])
def test_a_drain_waits_for_an_h2_stream_finishing_after_its_connection_closed(reporting_gw,
                                                                             reset):
    gw, reports = reporting_gw
    answered(gw, reset).close()
    time.sleep(0.2)
    started = time.monotonic()
    assert stop_process(gw.proc, timeout=10) == 0          # SIGTERM: a graceful drain
    assert time.monotonic() - started < 4.5                 # (graceful_timeout is 5 s)
    assert reported(reports, "slow-report") == ["slow-report 200"]
    lines = [line for line in gw.access_lines() if line.get("route") == "slow-report"]
    assert [line["status"] for line in lines] == [200], lines


@pytest.mark.parametrize("connection", ["closed", "open"])
def test_a_quick_stop_logs_an_h2_stream_finishing(reporting_gw, connection):
    gw, reports = reporting_gw
    client = answered(gw, reset=True)
    try:
        if connection == "closed":
            client.close()
            time.sleep(0.2)
        started = time.monotonic()
        assert stop_process(gw.proc, timeout=10, sig=signal.SIGQUIT) == 0
        assert time.monotonic() - started < 1.8             # not waited for: cut
    finally:
        client.close()
    # Cut in its finish as an HTTP/1.1 request's is; its access line in the last flush
    lines = [line for line in gw.access_lines() if line.get("route") == "slow-report"]
    assert [line["status"] for line in lines] == [200], lines
    assert reported(reports, "slow-report") == []
