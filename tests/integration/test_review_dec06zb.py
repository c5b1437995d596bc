"""Review of this morning's commits (d62124c, 2d16bcd, 1190c94, 9d87e05), against real
processes."""
import subprocess
import sys

from gwserver.plugins.key_auth import hash_key

from ..conftest import ROOT, free_port, gateway_conf, route, to_toml, wait_until
from .test_etcd import (PREFIX, UP, all_workers_at, etcd_conf, put, reboot, serves,
                         start_while_etcd_hangs, status_of)


def consumer(key):
    return {"credentials": {"key_auth": {"key_hash": hash_key(key)}}}


REFUSED_CONSUMER = {"credentials": {"key_auth": {"key_hash": 7}}}


def test_a_fresh_start_never_serves_a_deleted_or_replaced_version_from_the_snapshot(
        launcher, upstream, tmp_path):
    """d62124c put the snapshot's version of every item etcd holds refused, whatever came
    between while the gateway was down: a consumer deleted (its key revoked) and put again
    with a typo, or whose key was rotated before a bad update, had its OLD key accepted
    again, and a deleted route or upstream served again, on the restarted host alone. The
    snapshot's version is kept only when it is the one the refused update replaced."""
    member = launcher.etcd()
    conf = etcd_conf(tmp_path, [member.url], workers=1)
    gw = launcher.gateway(conf)
    client = member.client()
    put(client, "upstreams", "up", UP(upstream))
    put(client, "upstreams", "gone", UP(upstream))
    put(client, "routes", "via-gone", {"paths": ["/via-gone"], "upstream": "gone"})
    put(client, "routes", "gone", {"paths": ["/gone"], "upstream": "up"})
    put(client, "consumers", "alice", consumer("alice-old"))
    put(client, "consumers", "bob", consumer("bob-old"))
    put(client, "consumers", "carol", consumer("carol-key"))
    revision = put(client, "routes", "keyed", {"paths": ["/keyed"], "upstream": "up",
                                               "plugins": {"key_auth": {}}})
    wait_until(lambda: (status_of(gw) or {}).get("revision") == revision)
    assert gw.request("GET", "/keyed", headers={"X-API-Key": "bob-old"})[0].status == 200
    assert serves(gw, "/gone") == 200 and serves(gw, "/via-gone") == 200
    reboot(gw, conf)
    # While it is down: alice revoked, then put again with a typo; bob's key rotated, then
    # a bad update; the route and the upstream deleted, then put again refused; carol's
    # bad update alone (the snapshot holds the version it replaced: that one is kept).
    client.delete(f"{PREFIX}/consumers/alice")
    put(client, "consumers", "alice", REFUSED_CONSUMER)
    put(client, "consumers", "bob", consumer("bob-new"))
    put(client, "consumers", "bob", REFUSED_CONSUMER)
    client.delete(f"{PREFIX}/routes/gone")
    put(client, "routes", "gone", {"paths": ["/gone"], "upstream": "up",
                                   "plugins": {"key_auth": {"no_such_option": 1}}})
    client.delete(f"{PREFIX}/upstreams/gone")
    put(client, "upstreams", "gone", {"targets": [{"url": "ftp://nowhere"}]})
    put(client, "consumers", "carol", REFUSED_CONSUMER)
    second = launcher.gateway(conf)
    wait_until(lambda: "loaded" in second.log() and serves(second, "/keyed") != 404)

    def status(key):
        return second.request("GET", "/keyed", headers={"X-API-Key": key})[0].status
    # a host that saw these come: alice's and bob's old keys refused (401), /gone fenced
    # (503), /via-gone waiting for its upstream (503). Before: 200 for all four.
    assert status("alice-old") == 401
    assert status("bob-old") == 401
    assert serves(second, "/gone") == 503
    assert serves(second, "/via-gone") == 503
    assert status("carol-key") == 200       # its refused update replaced the snapshot's
    log = second.log()
    assert "etcd holds refused updates of 1 item(s)" in log and "consumers/carol" in log, \
        log[-3000:]


def test_an_upstream_whose_update_is_refused_still_follows_its_service(launcher, tmp_path):
    """Its last good version kept the service's instances of the moment the bad update came:
    an instance whose lease expired (deregistered) kept its share of the traffic for good,
    and one that registered got none, until someone fixed the upstream (docs/health.md: "the
    instance leaves every gateway"). A fresh start kept the snapshot's (d62124c) alike."""
    member = launcher.etcd()
    first, second = launcher.upstream(name="first"), launcher.upstream(name="second")
    gw = launcher.gateway(etcd_conf(tmp_path, [member.url], workers=1))
    client = member.client()
    put(client, "upstreams", "orders", {"service": "orders"})
    put(client, "routes", "orders", {"paths": ["/orders"], "upstream": "orders"})
    revision = put(client, "services", "orders/i1", {"url": first.url})
    wait_until(lambda: all_workers_at(gw, revision))
    assert gw.request("GET", "/orders")[0].getheader("X-Upstream") == "first"
    put(client, "upstreams", "orders", {"service": "orders", "no_such_field": 1})
    put(client, "services", "orders/i2", {"url": second.url})
    client.delete(f"{PREFIX}/services/orders/i1")       # its lease expired
    revision = put(client, "routes", "marker", {"paths": ["/marker"], "upstream": "orders"})
    wait_until(lambda: all_workers_at(gw, revision))
    served = [gw.request("GET", "/orders")[0].getheader("X-Upstream") for _ in range(4)]
    assert served == ["second"] * 4, served      # before: ["first"] * 4
    assert "upstreams/orders" in status_of(gw)["rejected"]      # still said


def test_check_refuses_proxy_protocol_when_only_unix_peers_are_trusted(tmp_path, upstream):
    """2d16bcd let trusted_proxies hold "unix:": `check` then took trusted_proxies = ["unix:"]
    beside a TCP proxy_protocol listener (the NLB's CIDR forgotten) as a balancer named,
    and the gateway refused every connection there ("not in server.trusted_proxies")."""
    bind = f"127.0.0.1:{free_port()}"
    conf = gateway_conf([route("e", ["/echo"], upstream.url)],
                        server={"bind": [bind], "proxy_protocol": [bind],
                                "trusted_proxies": ["unix:"]})
    path = tmp_path / "gw.toml"
    path.write_text(to_toml(conf))
    done = subprocess.run([sys.executable, "-m", "gwserver", "check", "-c", str(path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=30)
    out = done.stdout + done.stderr
    assert done.returncode != 0 and "needs server.trusted_proxies" in out, out
    conf["server"]["trusted_proxies"] = ["unix:", "10.0.0.0/8"]
    path.write_text(to_toml(conf))
    done = subprocess.run([sys.executable, "-m", "gwserver", "check", "-c", str(path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_fresh_start_says_the_kept_versions_serve_once_and_then(launcher, upstream, tmp_path):
    """d62124c logged etcd's refusal before it put the snapshot's version: the journal said
    the route "answers 503 until a valid version arrives" while it served, and said it again
    at the next unrelated change, counted again (gwserver_etcd_rejections_total)."""
    member = launcher.etcd()
    conf = etcd_conf(tmp_path, [member.url], workers=1)
    gw = launcher.gateway(conf)
    client = member.client()
    put(client, "upstreams", "up", UP(upstream))
    put(client, "routes", "kept", {"paths": ["/kept"], "upstream": "up"})
    revision = put(client, "routes", "kept", {"paths": ["/kept"], "upstream": "up",
                                              "plugins": {"key_auth": {"no_such_option": 1}}})
    wait_until(lambda: (status_of(gw) or {}).get("revision") == revision)
    reboot(gw, conf)
    second = launcher.gateway(conf)
    wait_until(lambda: "etcd holds refused updates" in second.log())
    assert serves(second, "/kept") == 200
    revision = put(client, "routes", "unrelated", {"paths": ["/unrelated"], "upstream": "up"})
    wait_until(lambda: all_workers_at(second, revision))
    said = [line for line in second.log().splitlines() if f"rejected {PREFIX}/routes/kept" in line]
    assert len(said) == 1 and "the previous version keeps serving" in said[0], said


def test_a_start_served_from_the_snapshot_drops_a_deleted_version_once_etcd_answers(
        launcher, upstream, tmp_path):
    """etcd slow or down at a fresh start: the snapshot serves meanwhile (documented), but
    once etcd answered its full load was by value, and a value etcd holds refused left the
    snapshot's version serving whatever came between: a consumer deleted (revoked) and put
    again with a typo kept its old key accepted, for good, on this host alone."""
    member = launcher.etcd()
    conf = etcd_conf(tmp_path, [member.url], workers=1)
    gw = launcher.gateway(conf)
    client = member.client()
    put(client, "upstreams", "up", UP(upstream))
    put(client, "consumers", "alice", consumer("alice-old"))
    put(client, "consumers", "carol", consumer("carol-key"))
    put(client, "routes", "gone", {"paths": ["/gone"], "upstream": "up"})
    revision = put(client, "routes", "keyed", {"paths": ["/keyed"], "upstream": "up",
                                               "plugins": {"key_auth": {}}})
    wait_until(lambda: (status_of(gw) or {}).get("revision") == revision)
    reboot(gw, conf)
    client.delete(f"{PREFIX}/consumers/alice")
    put(client, "consumers", "alice", REFUSED_CONSUMER)
    client.delete(f"{PREFIX}/routes/gone")
    put(client, "routes", "gone", {"paths": ["/gone"], "upstream": "up",
                                   "plugins": {"key_auth": {"no_such_option": 1}}})
    put(client, "consumers", "carol", REFUSED_CONSUMER)     # replaced the snapshot's: kept
    second = start_while_etcd_hangs(launcher, conf, member)
    wait_until(lambda: "loaded" in second.log() and (status_of(second) or {}).get("connected"),
               timeout=20)
    revision = put(client, "routes", "marker", {"paths": ["/marker"], "upstream": "up"})
    wait_until(lambda: all_workers_at(second, revision))

    def status(key):
        return second.request("GET", "/keyed", headers={"X-API-Key": key})[0].status
    assert status("alice-old") == 401       # before: 200
    assert serves(second, "/gone") == 503   # before: 200 (fenced now, as a refused new route)
    assert status("carol-key") == 200
