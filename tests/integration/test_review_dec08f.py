"""Review of 849c19d and e56441f (who the client is; 304s, trace ids, metrics dirs).

1. request-ip (X-Forwarded, Forwarded-For, X-0-Client-IP, X-AppEngine-User-IP: each read
   before the socket's address), django-ipware / python-ipware and the common PHP getUserIP
   snippet (HTTP_X_FORWARDED, HTTP_FORWARDED_FOR) take more spellings of the client's address
   than the ones 849c19d covered: a client's ``X-Forwarded: 6.6.6.6`` reached such an
   upstream as it was written, from anyone, and was the client there.
"""
import os
import shutil
import signal

from ..conftest import gateway_conf, route, wait_until
from ..h2client import RawH2
from .test_attack_pass_dec03 import raw_request
from .test_etcd import put, status_of
from .test_fix_dec07b import refused_service_upstream
from .test_fix_dec08b import as_written_before_81e8b69, servers


# -- 1. the other spellings of the client's address -----------------------------------------

SPELLINGS = ("X-Forwarded", "Forwarded-For", "X-0-Client-IP", "X-AppEngine-User-IP")


def test_more_client_ip_spellings_are_a_proxys_word_alone(launcher, h1_up):
    forged = b"".join(b"%s: 6.6.6.6\r\n" % name.encode() for name in SPELLINGS)
    untrusted = launcher.gateway(gateway_conf([route("all", ["/p"], h1_up.url)],
                                              http2={"h2c": True}))
    answer = raw_request(untrusted.port, b"GET /p HTTP/1.1\r\nHost: a\r\n%sConnection: close"
                                         b"\r\n\r\n" % forged)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    for name in SPELLINGS:
        assert h1_up.header(-1, name) == [], (name, h1_up.heads[-1])
    client = RawH2(untrusted.port)              # HTTP/2 alike
    try:
        sid = client.request("/p", authority="a",
                             headers=[(name.lower(), "6.6.6.6") for name in SPELLINGS])
        assert client.response(sid)[0] == 200
    finally:
        client.close()
    for name in SPELLINGS:
        assert h1_up.header(-1, name) == [], (name, h1_up.heads[-1])
    # from a trusted proxy they say the client the walk found, behind one that writes
    # Forwarded too
    for server, named in (({}, b"X-Forwarded-For: 203.0.113.7"),
                          ({"real_ip_header": "Forwarded"}, b"Forwarded: for=203.0.113.7")):
        trusted = launcher.gateway(gateway_conf(
            [route("all", ["/p"], h1_up.url)],
            server={"trusted_proxies": ["127.0.0.1/32"], **server}))
        answer = raw_request(trusted.port, b"GET /p HTTP/1.1\r\nHost: a\r\n%s\r\n%sConnection: "
                                           b"close\r\n\r\n" % (named, forged))
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
        for name in SPELLINGS:
            assert h1_up.header(-1, name) == ["203.0.113.7"], (name, h1_up.heads[-1])


# -- 2. an old snapshot's kept upstream, etcd holding two refused updates ------------------

def test_a_refused_updates_targets_are_never_taken_for_the_static_ones(launcher, tmp_path):
    """A snapshot written before tables listed static targets (a hot upgrade), of a
    service-following upstream etcd holds two refused updates of: the static targets were
    read from the version before the last one, the first refused update, and its targets
    (a host the operator moved to, refused for another field) served beside the instances
    in place of the good version's. The good version's static target serves."""
    static, live, moved = (launcher.upstream(name) for name in ("static", "live", "moved"))
    _, conf, gw, client = refused_service_upstream(launcher, tmp_path, static, live)
    for balance in ("bogus-again", "bogus-still"):
        revision = put(client, "upstreams", "orders", {
            "service": "orders", "targets": [{"url": moved.url}], "balance": balance})
    wait_until(lambda: (status_of(gw) or {}).get("revision") == revision)
    os.kill(gw.pid, signal.SIGTERM)         # the snapshot is written on exit
    gw.proc.wait(15)
    shutil.rmtree(conf["etcd"]["runtime_dir"])
    assert as_written_before_81e8b69(conf["etcd"]["snapshot_path"])
    again = launcher.gateway(conf)
    wait_until(lambda: "loaded" in again.log())
    assert servers(again, 6) == {"static", "live"}  # before: {"moved", "live"}
