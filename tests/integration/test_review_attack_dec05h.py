"""Review and attack of the Dec 5 commits c4bcab0 (a Redis Cluster batch of only a dead
master's keys no longer pauses the store) and e96cb6d (`gwserver reload` waits for an applied
reload's late workers), then the Redis store's failure paths (the attack pass of 2026-12-05,
helper h3). Each test failed on e96cb6d.

1. A Redis Cluster whose masters all died (a power cut of the Redis racks), then two of the
   three came back: the store, paused when no master answered, was asked again by a probe
   that pinged every master and failed at the first dead one, which paused it again, pause
   after pause: every key, the living masters' too, fell back to on_store_error ("deny":
   a 503 for every client) until the third master came back, or forever.
2. A cluster master that hangs (SIGSTOPped, its host gone: connections open, nothing
   answers): a request for one of its keys waited out the timeout, which the store took for
   the whole store being slow, and paused it: the next requests, living masters' keys,
   were 503s ("deny"), each time one of its keys was asked for. And the slot map, reloaded
   after it failed, was asked of the nodes in redis-py's random order inside the batch: a
   batch that asked the hung master first waited out the timeout, its decisions with it.
3. In one batch, a key of the hung master's and keys of living masters: the pipelines went
   one master after the other and the answers were given when the last had answered, so
   the living masters' decisions waited out the hung one's timeout and fell back with it.
4. A resharding (redis-cli --cluster reshard): the moving slot's calls were answered ASK,
   then MOVED, which the store took for errors (503 with "deny"), and the slot map was never
   reloaded: redis-py gives MOVED without its word ("3999 127.0.0.1:6381") and the check
   for "MOVED" never matched, so the resharded slot's keys fell back until a restart.
5. gwserver_redis_up with a master down for good was 0 or 1 by whether the worker's last
   batch held only the dead master's keys: a request for a living key set it to 1 while
   every decision on the dead master's slots fell back.
6. `gwserver reload` waiting for a verdict (or, since e96cb6d, for an applied reload's late
   workers) when the master died (killed, stopped, restarted): it waited out the whole
   --timeout, 60 s under systemd, then said "no verdict", or that the previous workers
   served the previous configuration, of a master that was gone.
7. `gwserver reload` waiting for its reload's late workers while another reload was
   refused: when its workers started it said "reload applied as generation 2; a later
   reload's generation 2 serves now" (the refused one has no generation; its own serves).
8. (tests/unit) `gwserver reload --timeout -1` (or nan) signalled the master and said at once
   "no verdict from master N in -1 s", exit 1, of a reload the master applied.
"""
import json
import os
import signal
import subprocess
import sys
import time

from ..conftest import free_port, gateway_conf, route, wait_until
from .test_attack_pass_dec03e import cap_tasks, pids_cgroup, uncap_tasks  # noqa: F401
from .test_limits_attack_dec05b import cli, cluster_on, master_of, status_of


# -- Redis Cluster ------------------------------------------------------------------------------

def cluster_gateway(launcher, upstream, ports, **redis):
    url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)
    return launcher.gateway(gateway_conf([route("lim", ["/lim"], upstream.url, plugins={
        "rate_limit": {"rate": 1000, "per": 3600, "burst": 1000, "key": "header:X-Key",
                       "on_store_error": "deny"}})],
        workers=1, redis={"url": url, "timeout": 0.5, "pause": 0.5, **redis}))


def homes_of(gw, ports, values):
    """value -> the port of the master its key was made on (the new key shows there)."""
    home = {}
    for value in values:
        counts = {port: int(cli(port, "dbsize")) for port in ports}
        assert status_of(gw, "/lim", {"X-Key": value}) == 200
        home[value] = next(p for p in ports if int(cli(p, "dbsize")) > counts[p])
    return home


def bus_port(port):
    """The cluster bus port of node ``port`` (given again when it is started again)."""
    for line in cli(port, "cluster", "nodes").splitlines():
        if "myself" in line:
            return int(line.split()[1].split("@")[1].split(",")[0])
    raise AssertionError(f"node {port} does not know itself")


def restart_node(launcher, port, bus):
    return launcher._redis_server(port, launcher.tmp_dir / f"redis-cluster-{port}",
                                  "--cluster-enabled", "yes", "--cluster-config-file",
                                  "nodes.conf", "--cluster-port", str(bus),
                                  "--cluster-node-timeout", "1000",
                                  "--cluster-require-full-coverage", "no")


def test_a_cluster_whose_masters_all_died_decides_again_when_some_come_back(launcher,
                                                                            upstream):
    ports = [free_port() for _ in range(3)]
    procs = cluster_on(launcher, ports, 0, "--cluster-require-full-coverage", "no")
    gw = cluster_gateway(launcher, upstream, ports)
    home = homes_of(gw, ports, [f"k{i}" for i in range(24)])
    buses = {port: bus_port(port) for port in ports}
    for proc in procs.values():
        proc.kill()
        proc.wait()
    # one key of each master's, within one pause: no master answers, the store pauses
    one_each = [next(v for v in home if home[v] == port) for port in ports]
    assert [status_of(gw, "/lim", {"X-Key": v}) for v in one_each] == [503] * 3
    wait_until(lambda: "redis unreachable" in gw.log())
    time.sleep(1.2)                                             # a few probes, all failing
    gone, back = ports[0], ports[1:]
    for port in back:
        restart_node(launcher, port, buses[port])
    wait_until(lambda: all("cluster_state:ok" in cli(p, "cluster", "info") for p in back),
               timeout=30)
    living = [v for v in home if home[v] in back][:3]
    # The living masters decide again (200), though the third master is still gone.
    wait_until(lambda: status_of(gw, "/lim", {"X-Key": living[0]}) == 200, timeout=10,
               interval=0.3)
    assert [status_of(gw, "/lim", {"X-Key": v}) for v in living] == [200] * 3
    doomed = next(v for v in home if home[v] == gone)
    assert status_of(gw, "/lim", {"X-Key": doomed}) == 503        # its keys alone fall back
    assert "redis is answering again" in gw.log()


def test_a_cluster_master_that_hangs_fails_only_its_own_keys(launcher, upstream):
    ports = [free_port() for _ in range(3)]
    procs = cluster_on(launcher, ports, 0, "--cluster-require-full-coverage", "no")
    gw = cluster_gateway(launcher, upstream, ports)
    home = homes_of(gw, ports, [f"k{i}" for i in range(24)])
    hung = home["k0"]
    doomed = [v for v in home if home[v] == hung]
    living = [v for v in home if home[v] != hung]
    procs[hung].send_signal(signal.SIGSTOP)     # connects (the backlog), never answers
    try:
        got = []
        for i in range(4):
            # a hung master's key (it waits out the timeout), then living ones
            got.append(status_of(gw, "/lim", {"X-Key": doomed[i % len(doomed)]}))
            got += [status_of(gw, "/lim", {"X-Key": v}) for v in living[2 * i:2 * i + 2]]
            time.sleep(0.5)                     # past pause: the hung master asked again
        assert got == [503, 200, 200] * 4, got
    finally:
        procs[hung].send_signal(signal.SIGCONT)
    log = gw.log()
    assert "redis did not answer a decision" not in log and "redis unreachable" not in log
    assert "redis node 127.0.0.1:%d" % hung in log


# A RedisStore driven in a gevent process of its own: ``ask`` each key of argv once, say
# "ready", and wait for the test's word on stdin (what follows it is each test's own).
STORE_DRIVER = """
from gevent import monkey; monkey.patch_all()
import json, sys, time, gevent
from gwserver.state.store import RedisStore
store = RedisStore(sys.argv[1], timeout=0.5, pause=%(pause)s)
def ask(key):
    began = time.monotonic()
    try:
        store.decide("token_bucket", key, 1000, 3600, 1000)
        said = "ok"
    except Exception as exc:
        said = type(exc).__name__
    return [said, round(time.monotonic() - began, 3)]
keys = sys.argv[2:]
assert [ask(k)[0] for k in keys] == ["ok"] * len(keys)
print("ready", flush=True)
"""

def only_the_hung_masters_call_failed(got):
    """A STORE_DRIVER batch's answers: the hung master's call fell back, the two living
    masters' were decided, each at once."""
    assert got[0][0] in ("StoreTimeout", "StoreError"), got
    assert [said for said, _ in got[1:]] == ["ok", "ok"], got
    assert all(took < 0.25 for _, took in got[1:]), got


SAME_BATCH = STORE_DRIVER % {"pause": 0.5} + """
sys.stdin.readline()                    # the test hangs a master meanwhile
for _ in range(2):
    jobs = [gevent.spawn(ask, key) for key in keys]     # queued together: one batch
    gevent.joinall(jobs)
    print(json.dumps([job.value for job in jobs]), flush=True)
    time.sleep(0.6)
"""


def test_a_hung_cluster_master_does_not_hold_the_living_masters_answers(launcher):
    """In one batch, a key of a hung master's and keys of the living ones: the batch's
    answers were given when the last master had answered, so the living masters' decisions
    waited out the hung one's timeout and fell back with it (in the gateway: the same
    request mix, one batch of a busy worker's)."""
    ports = [free_port() for _ in range(3)]
    procs = cluster_on(launcher, ports, 0, "--cluster-require-full-coverage", "no")
    keys = {}
    for i in range(40):
        key = f"gw:rl:same-batch-{i}"
        keys.setdefault(master_of(ports[0], key), key)
    assert len(keys) == 3
    hung = ports[0]
    ordered = [keys[hung]] + [keys[p] for p in ports[1:]]      # the hung master's first
    url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)
    script = subprocess.Popen([sys.executable, "-c", SAME_BATCH, url,
                               *(k[len("gw:rl:"):] for k in ordered)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert script.stdout.readline().strip() == "ready"
        procs[hung].send_signal(signal.SIGSTOP)
        script.stdin.write("go\n")
        script.stdin.flush()
        for _ in range(2):
            only_the_hung_masters_call_failed(json.loads(script.stdout.readline()))
    finally:
        procs[hung].send_signal(signal.SIGCONT)
        script.kill()
        script.wait()


def test_a_resharded_slot_is_followed_and_its_limit_stays_exact(launcher, upstream):
    """A slot moved to another master (redis-cli --cluster reshard, by hand here, slot by
    slot as reshard does it): its keys' calls were answered ASK while it moved and MOVED
    after, which the store took for errors, and the slot map was never reloaded (redis-py
    gives MOVED without its word: the check for it never matched), so every decision on
    the slot fell back to on_store_error ("deny": 503) until the gateway restarted."""
    ports = [free_port() for _ in range(3)]
    cluster_on(launcher, ports)
    url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)
    gw = launcher.gateway(gateway_conf([route("lim", ["/lim"], upstream.url, plugins={
        "rate_limit": {"rate": 4, "per": 3600, "burst": 4, "key": "header:X-Key",
                       "on_store_error": "deny"}})],
        workers=1, redis={"url": url, "timeout": 0.5, "pause": 0.5}))
    assert status_of(gw, "/lim", {"X-Key": "moving"}) == 200
    key, src = next((cli(p, "keys", "*"), p) for p in ports if cli(p, "dbsize") == "1")
    dst = next(p for p in ports if p != src)
    slot = cli(src, "cluster", "keyslot", key)
    src_id, dst_id = cli(src, "cluster", "myid"), cli(dst, "cluster", "myid")
    assert cli(dst, "cluster", "setslot", slot, "importing", src_id) == "OK"
    assert cli(src, "cluster", "setslot", slot, "migrating", dst_id) == "OK"
    assert cli(src, "migrate", "127.0.0.1", str(dst), "", "0", "5000", "keys", key) == "OK"
    # the key has moved, the slot not yet: the source answers ASK
    assert status_of(gw, "/lim", {"X-Key": "moving"}) == 200
    for port in ports:
        assert cli(port, "cluster", "setslot", slot, "node", dst_id) == "OK"
    # the slot is the other master's: the source answers MOVED, then the map is new
    assert [status_of(gw, "/lim", {"X-Key": "moving"}) for _ in range(3)] == [200, 200, 429]
    assert cli(dst, "exists", key) == "1" and cli(src, "dbsize") == "0"
    assert "error" not in gw.log()


def redis_up(gw):
    status, body = gw.admin_get("/metrics")
    assert status == 200
    values = [line.split()[-1] for line in body.decode().splitlines()
              if line.startswith("gwserver_redis_up")]
    return float(values[0]) if values else None


def test_gwserver_redis_up_says_a_cluster_master_is_down_until_it_answers(launcher,
                                                                          upstream):
    """A master down for good: gwserver_redis_up was 0 or 1 by whether the worker's last
    batch held only its keys, so a request for a living key said all was well while every
    decision on the dead master's slots fell back. It is 0 while a master does not answer,
    and 1 again once it does, whether or not a request for its keys comes."""
    ports = [free_port() for _ in range(3)]
    procs = cluster_on(launcher, ports, 0, "--cluster-require-full-coverage", "no")
    gw = cluster_gateway(launcher, upstream, ports)
    home = homes_of(gw, ports, [f"k{i}" for i in range(24)])
    wait_until(lambda: redis_up(gw) == 1)
    dead = home["k0"]
    bus = bus_port(dead)
    living = [v for v in home if home[v] != dead]
    procs[dead].kill()
    procs[dead].wait()
    assert status_of(gw, "/lim", {"X-Key": "k0"}) == 503
    assert [status_of(gw, "/lim", {"X-Key": v}) for v in living[:3]] == [200] * 3
    time.sleep(0.3)                             # a tick or more: the gauge is set on it
    assert redis_up(gw) == 0
    restart_node(launcher, dead, bus)
    wait_until(lambda: "cluster_state:ok" in cli(dead, "cluster", "info"), timeout=30)
    wait_until(lambda: redis_up(gw) == 1, timeout=10)      # no request for its keys
    wait_until(lambda: status_of(gw, "/lim", {"X-Key": "k0"}) == 200, timeout=5)


# -- gwserver reload ----------------------------------------------------------------------------

def test_gwserver_reload_says_at_once_that_the_master_exited(launcher, upstream):
    """The master dies (killed, stopped, restarted) while `gwserver reload` waits for its
    verdict: the command waited out its whole --timeout (60 s for systemctl reload) for a
    master that was gone, and then said "no verdict", or, had the reload been applied
    with workers missing, that the previous workers served the previous configuration."""
    gw = launcher.gateway(gateway_conf([route("e", ["/e"], upstream.url)]))
    os.kill(gw.pid, signal.SIGSTOP)         # it takes the SIGHUP, and answers nothing
    cli_run = subprocess.Popen([sys.executable, "-m", "gwserver", "reload", "-c",
                                str(gw.conf_path), "--timeout", "30"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        assert cli_run.poll() is None                       # waiting for the verdict
        began = time.monotonic()
        os.killpg(gw.pid, signal.SIGKILL)                   # the master and its workers
        gw.proc.wait(10)
        out, err = cli_run.communicate(timeout=10)
        assert time.monotonic() - began < 3
    finally:
        if cli_run.poll() is None:
            cli_run.kill()
            cli_run.wait()
    assert cli_run.returncode == 1
    assert f"master {gw.pid} exited before its verdict" in err, (out, err)


def test_gwserver_reload_waiting_for_its_workers_is_not_fooled_by_a_refused_reload(
        launcher, upstream, pids_cgroup):
    """A reload applied whose new workers could not start yet (TasksMax), and while its
    `gwserver reload` waits, another one refused (a bad edit, a second operator). When the
    workers started, the first command said "reload applied as generation 2; a later
    reload's generation 2 serves now": the refused reload has no generation; its own
    reload's does, and is complete."""
    gw = launcher.gateway(gateway_conf([route("e", ["/e"], upstream.url)]))
    good = gw.conf_path.read_text()
    cap_tasks(gw, pids_cgroup)
    first = subprocess.Popen([sys.executable, "-m", "gwserver", "reload", "-c",
                              str(gw.conf_path), "--timeout", "30"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: "new workers could not start" in gw.log())
        gw.conf_path.write_text(good.replace("[server]", '[server]\nkeepalive = "long"', 1))
        second = subprocess.run([sys.executable, "-m", "gwserver", "reload", "-c",
                                 str(gw.conf_path), "--timeout", "10"],
                                capture_output=True, text=True, timeout=30)
        assert second.returncode == 1 and "reload refused" in second.stderr, second
        gw.conf_path.write_text(good)
        assert first.poll() is None                 # its workers are still missing
        uncap_tasks(pids_cgroup)
        out, err = first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, (out, err)
    assert out.strip() == "reload complete: generation 2", (out, err)
