"""Review of 849c19d and e56441f (who the client is; 304s, trace ids, metrics dirs).

1. request-ip (X-Forwarded, Forwarded-For, X-0-Client-IP, X-AppEngine-User-IP: each read
   before the socket's address), django-ipware / python-ipware and the common PHP getUserIP
   snippet (HTTP_X_FORWARDED, HTTP_FORWARDED_FOR) take more spellings of the client's address
   than the ones 849c19d covered: a client's ``X-Forwarded: 6.6.6.6`` reached such an
   upstream as it was written, from anyone, and was the client there.
"""

from ..conftest import wait_until
from .test_attack_dec08c import dropped_from_clients_said_by_proxies
from .test_etcd import put, reboot, status_of
from .test_fix_dec07b import refused_service_upstream
from .test_fix_dec08b import as_written_before_81e8b69, servers


# -- 1. the other spellings of the client's address -----------------------------------------

SPELLINGS = ("X-Forwarded", "Forwarded-For", "X-0-Client-IP", "X-AppEngine-User-IP")


def test_more_client_ip_spellings_are_a_proxys_word_alone(launcher, h1_up):
    dropped_from_clients_said_by_proxies(launcher, h1_up, SPELLINGS)


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
    reboot(gw, conf)
    assert as_written_before_81e8b69(conf["etcd"]["snapshot_path"])
    again = launcher.gateway(conf)
    wait_until(lambda: "loaded" in again.log())
    assert servers(again, 6) == {"static", "live"}  # before: {"moved", "live"}
