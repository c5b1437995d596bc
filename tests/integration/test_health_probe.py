"""The active probe (http.client over the upstream's own TLS settings) against real servers:
what it calls healthy, and the reason it gives when it does not."""
import os
import subprocess
import sys
import textwrap

import pytest

from gwserver.core.routes import HEALTH_CHECK, _health_check, make_target
from gwserver.helpers.health import probe

from ..conftest import ROOT, free_port
from ..h2_upstreams import ScriptedH2Upstream
from ..pki import CA


def check(**conf):
    return _health_check(HEALTH_CHECK({"timeout": 0.5, **conf}))


def target(url):
    return make_target({"url": url, "weight": 1})


@pytest.mark.parametrize("path, statuses, ok, error", [
    ("/", None, True, ""),
    ("/status/503", None, False, "status 503"),
    ("/status/503", [503], True, ""),
    ("/status/301", None, True, ""),                    # default: 200-399
    ("/status/204", [200], False, "status 204"),
])
def test_http_statuses_decide(launcher, path, statuses, ok, error):
    up = launcher.upstream()
    conf = check(path=path, **({"expected_statuses": statuses} if statuses else {}))
    assert probe(target(up.url), conf) == (ok, error)


@pytest.mark.parametrize("path, error", [
    ("/junk", "not an HTTP answer"),
    ("/no-answer", "closed without an answer"),
])
def test_a_server_that_is_not_http_is_unhealthy(launcher, path, error):
    raw = launcher.raw_upstream()
    ok, text = probe(target(f"http://127.0.0.1:{raw.port}"), check(path=path))
    assert not ok and text.startswith(error), text


def test_refused_and_too_slow(launcher):
    ok, text = probe(target(f"http://127.0.0.1:{free_port()}"), check())
    assert not ok and text.startswith("connect:"), text
    slow = launcher.upstream(delay=2)
    ok, text = probe(target(slow.url), check(timeout=0.3))
    assert not ok and "timed out" in text, text


def test_tcp_checks_only_connect(launcher):
    raw = launcher.raw_upstream()
    assert probe(target(f"http://127.0.0.1:{raw.port}"), check(type="tcp", path="/junk")) == \
        (True, "")


def test_https_uses_the_upstreams_ca_sni_and_verify(launcher, tmp_path):
    ca = CA(tmp_path)
    cert, key, _ = ca.issue("api", hosts=("api.internal",), ips=())      # not 127.0.0.1
    up = launcher.upstream(tls=(str(cert), str(key)))
    https = target(up.url)
    ca_file = str(ca.cert_path)
    assert probe(https, check(), (True, ca_file, "api.internal", None, None)) == (True, "")
    ok, text = probe(https, check(), (True, ca_file, None, None, None))     # name: 127.0.0.1
    assert not ok and "certificate verify failed" in text, text
    ok, text = probe(https, check())                                        # system store
    assert not ok and "certificate verify failed" in text, text
    assert probe(https, check(), (False, None, None, None, None)) == (True, "")


@pytest.mark.parametrize("behaviour, ok, error", [
    ("ok", True, ""),
    ("500", False, "status 500"),
    ("bad-status", False, ":status b'abc': not a status code"),
])
def test_http2_statuses_decide(behaviour, ok, error):
    """h2 hands on any :status text; int() of "abc" raised out of the probe, which killed
    the target's check and froze its last verdict (healthy) for good."""
    up = ScriptedH2Upstream("up", behaviour)
    try:
        assert probe(target(f"http://127.0.0.1:{up.port}"), check(), protocol="h2") == \
            (ok, error)
    finally:
        up.close()


def test_a_connect_that_times_out_says_connect():
    """The whole-check timeout first began before the connect and ended with it: a target
    whose SYNs are dropped (a firewall, a dead host: the commonest failure) read "timed out:
    no whole answer", for tcp checks too, instead of "connect: timed out" (review pass).
    Run gevent-patched, as the checker runs."""
    code = textwrap.dedent("""
        from gevent import monkey
        monkey.patch_all()
        import socket
        from gwserver.core.routes import HEALTH_CHECK, _health_check, make_target
        from gwserver.helpers.health import probe
        srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(0)
        port = srv.getsockname()[1]
        fill = []
        for _ in range(4):                  # a full accept queue: SYNs dropped
            s = socket.socket(); s.setblocking(False)
            try:
                s.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            fill.append(s)
        for kind in ("tcp", "http"):
            conf = _health_check(HEALTH_CHECK({"timeout": 0.5, "type": kind}))
            print(probe(make_target({"url": f"http://127.0.0.1:{port}", "weight": 1}),
                        conf)[1])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30, cwd=ROOT).stdout.splitlines()
    # (on a loaded host the lookup of "127.0.0.1", in gevent's resolver threads, can take the
    # check's time before the connect began: said as the connect's, as it is)
    assert len(out) == 2 and all(line in ("connect: timed out", "connect: name lookup and "
                                          "connect took over 0.5s") for line in out), out


def test_a_name_lookup_that_hangs_is_within_the_probe_s_timeout(tmp_path):
    """A target named by a host name whose lookup never ends (a nameserver gone): the
    probe waited as long as resolv.conf lets it, its verdict with it, whatever its timeout.
    The hanging resolver is test_dns_bounded's, as GEVENT_RESOLVER names it."""
    from .test_dns_bounded import RESOLVER
    (tmp_path / "hanging_resolver.py").write_text(RESOLVER)
    code = textwrap.dedent("""
        from gevent import monkey
        monkey.patch_all()
        import time
        from gwserver.core.routes import HEALTH_CHECK, _health_check, make_target
        from gwserver.helpers.health import probe
        conf = _health_check(HEALTH_CHECK({"timeout": 0.5}))
        begun = time.monotonic()
        ok, error = probe(make_target({"url": "http://up.hang.test:9", "weight": 1}), conf)
        print(ok, error, time.monotonic() - begun < 2.0)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=ROOT, env={
                             **os.environ, "PYTHONPATH": f"{ROOT}:{tmp_path}",
                             "GEVENT_RESOLVER": "hanging_resolver.HangingResolver"})
    assert out.stdout.splitlines() == [
        "False connect: name lookup and connect took over 0.5s True"], out.stderr[-2000:]
