"""Restarts and reloads that keep the truth: what the gateway knew before a master restart
(SIGTERM, then a start on the same state_dir, as systemd's Restart= does with
RuntimeDirectoryPreserve=restart) or a reload must still hold after it, and nothing it
should forget may keep applying."""
import collections
import json
import os
import signal
import time
import urllib.request

from ..conftest import gateway_conf, wait_until
from .test_health import FAST_CHECK, target_health


def served(gw, n):
    """{upstream name or status: count} over ``n`` requests to the pool's route."""
    out = collections.Counter()
    for _ in range(n):
        resp, body = gw.request("GET", "/r/echo")
        out[json.loads(body)["server"] if resp.status == 200 else resp.status] += 1
    return out


def pool_conf(state_dir, *targets, health_check=FAST_CHECK):
    upstream = {"targets": [{"url": t.url} for t in targets]}
    if health_check:
        upstream["health_check"] = health_check
    return gateway_conf([{"id": "r", "paths": ["/r/*rest"], "strip_prefix": "/r",
                          "upstream": "pool"}], workers=2,
                        server={"state_dir": str(state_dir)}, upstreams={"pool": upstream})


def test_a_master_restart_keeps_a_target_the_checks_took_out_out(launcher, tmp_path):
    """b answers 500 to everything, so its checks took it out. The master restarted
    (SIGTERM, a start on the same state_dir): the new one began with every target healthy
    and b got its share of requests (~1 in 5 over the next 2 s, each a 500) until it failed
    unhealthy_threshold checks again. Now the new checker takes up the verdict."""
    a, b = launcher.upstream("a"), launcher.upstream("b")
    conf = pool_conf(tmp_path / "state", a, b)
    gw = launcher.gateway(conf)
    wait_until(lambda: set(target_health(gw).values()) == {"healthy"}, timeout=10)
    urllib.request.urlopen(b.url + "/control?fail=1", timeout=5).read()
    gw.every_worker_says("/admin/upstreams", lambda view: [
        t["health"] for t in view["upstreams"]["pool"]["targets"] if t["url"] == b.url] ==
        ["unhealthy"])
    assert served(gw, 10) == {"a": 10}
    os.kill(gw.pid, signal.SIGTERM)
    assert gw.proc.wait(15) == 0
    again = launcher.gateway(conf)
    seen, started = collections.Counter(), time.monotonic()
    while time.monotonic() - started < 2.0:
        seen += served(again, 5)
    assert set(seen) == {"a"}, seen
    assert "taking up 1 target(s) the previous checker judged down" in again.log()
    assert target_health(again)[b.url] == "unhealthy"
    # and it still comes back once it passes its checks
    urllib.request.urlopen(b.url + "/control?fail=0", timeout=5).read()
    wait_until(lambda: target_health(again)[b.url] == "healthy", timeout=10)
    assert set(served(again, 20)) == {"a", "b"}


def reload_with(gw, conf, state_dir=None):
    """Write ``conf`` (on the gateway's own listeners, and its state_dir unless another is
    given) and reload it; it must be applied."""
    from ..conftest import to_toml
    conf = json.loads(json.dumps(conf))
    conf["server"].update(bind=gw.conf["server"]["bind"],
                          state_dir=str(state_dir or gw.conf["server"]["state_dir"]))
    conf["admin"] = gw.conf["admin"]
    done = gw.log().count("reload complete")
    gw.conf_path.write_text(to_toml(conf))
    os.kill(gw.pid, signal.SIGHUP)
    wait_until(lambda: gw.log().count("reload complete") > done or
               "reload refused" in gw.log(), timeout=15)
    assert "reload refused" not in gw.log(), gw.log()[-2000:]


def test_a_reload_that_takes_passive_away_lifts_its_ejections(launcher, tmp_path):
    """An operator whose passive checks ejected a target wrongly reloads without `passive`:
    the ejection went on holding the target out for the rest of its eject_for (up to
    max_eject_for), and /admin/upstreams said `ejected`, with no check left to own it."""
    a, b = launcher.upstream("a"), launcher.upstream("b")
    conf = pool_conf(tmp_path / "state", a, b, health_check=None)
    conf["upstreams"]["pool"]["passive"] = {"consecutive_failures": 1, "eject_for": 60.0,
                                            "max_eject_for": 120, "max_ejected_percent": 50}
    gw = launcher.gateway(conf)
    for _ in range(4):          # both answer 503 here; max_ejected_percent keeps one in
        gw.request("GET", "/r/status/503")
    ejected = wait_until(lambda: [url for url, h in target_health_of(gw).items()
                                  if h == "ejected"], timeout=2)
    assert len(ejected) == 1
    kept = "a" if ejected[0] == b.url else "b"
    # every worker reads the ejection on its next 50 ms tick
    wait_until(lambda: served(gw, 10) == {kept: 10}, timeout=2)
    del conf["upstreams"]["pool"]["passive"]
    reload_with(gw, conf)
    time.sleep(0.2)             # a worker's 50 ms tick
    assert set(served(gw, 20)) == {"a", "b"}
    assert set(target_health_of(gw).values()) == {"not checked"}


def target_health_of(gw):
    view = json.loads(gw.admin_get("/admin/upstreams")[1])
    return {t["url"]: t["health"] for t in view["upstreams"]["pool"]["targets"]}


def _download(gw):
    """A long download, started and then not read: its worker drains it after a reload."""
    import socket
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    sock.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
                 % (200 << 20))
    assert sock.recv(1 << 16).startswith(b"HTTP/1.1 200")
    return sock


def bytes_conf(upstream, state_dir):
    return gateway_conf([{"id": "b", "paths": ["/bytes/:n"],
                          "upstream": {"targets": [{"url": upstream.url}]}}],
                        server={"state_dir": str(state_dir), "graceful_timeout": 20.0})


def test_a_reload_back_to_the_previous_state_dir_is_applied(launcher, upstream, tmp_path):
    """state_dir moved by a reload, then moved back by the next one (a revert) while a
    worker of the first configuration still drains a download: refused, `reload refused:
    .../one is in use by another gwserver (pid M)`, M the master itself (its workers'
    copies of its own lock held it). The move itself was logged as `the state_dir .../two
    was removed while the gateway ran: made again`."""
    one, two = tmp_path / "one", tmp_path / "two"
    conf = bytes_conf(upstream, one)
    gw = launcher.gateway(conf)
    download = _download(gw)
    try:
        reload_with(gw, conf, state_dir=two)
        reload_with(gw, conf, state_dir=one)
        assert f"in use by another gwserver (pid {gw.pid})" not in gw.log()
        # and neither move is taken for a state_dir removed under the gateway
        assert "was removed while the gateway ran" not in gw.log()
        assert json.loads((one / "master.json").read_text())["generation"] == 3
    finally:
        download.close()


def test_a_state_dir_a_reload_moved_away_from_is_free_once_its_workers_are_gone(
        launcher, upstream, tmp_path):
    """After a reload that moves state_dir, the new workers held the old one's lock too
    (inherited from the master, which held both while it forked them): another instance
    could not start there for their whole life, though no process of this one used it."""
    one, two = tmp_path / "one", tmp_path / "two"
    conf = bytes_conf(upstream, one)
    gw = launcher.gateway(conf)
    old = set(gw.worker_pids())
    reload_with(gw, conf, state_dir=two)
    wait_until(lambda: not old & set(gw.worker_pids()), timeout=10)
    other = launcher.gateway(bytes_conf(upstream, one))      # raises if it exits
    assert other.request("GET", "/bytes/10")[0].status == 200


def test_a_master_killed_9_can_be_started_again_at_once_on_its_state_dir(launcher, upstream,
                                                                        tmp_path):
    """The master is killed -9 (the OOM killer) while its workers serve, one a download, and
    a supervisor starts it again at once on the same state_dir: the workers it left (each
    exits within a second or two, once it sees its parent gone) still held their copies of
    its lock, and the new master exited 2, `state is in use by another gwserver (pid N)`,
    N the dead master, a status systemd's unit does not restart on."""
    conf = bytes_conf(upstream, tmp_path / "state")
    conf["server"]["workers"] = 2
    gw = launcher.gateway(conf)
    download = _download(gw)
    try:
        os.kill(gw.pid, signal.SIGKILL)
        gw.proc.wait(5)
        again = launcher.gateway(conf)          # raises if it exits
        assert again.request("GET", "/bytes/10")[0].status == 200
        assert "in use by another gwserver" not in again.log()
    finally:
        download.close()
