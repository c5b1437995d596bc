"""Attack pass of 2026-12-05 (z, a helper's): a review of 9a2da0c (no retry back to a target
that asked to wait, Retry-After read as RFC 9110 says, a busy worker's budget share by its
traffic, ticket key lookups walked whole), against real gateways and upstreams that misbehave
on purpose (tests/raw_upstream.py). Each numbered defect is shown by a test that failed before
its fix.

1. A target of weight 0 undid the rule that no retry goes back to a target that asked for a
   wait: ``choose`` let the balancer choose among all but those that asked only once every
   target listed was avoided, and a weight-0 target, which no balancer chooses, never is.
   With A (503 ``Retry-After: 30``), B (500) and C (weight 0), two attempts and a
   consistent hash, the second retry was the balancer's plain choice among A and B: the
   key's owner, A, milliseconds after it asked for 30 s (16 client GETs: 24 requests to
   A). Only the targets a balancer chooses count now.
2. Every target avoided, the avoid set became the targets that asked for a wait alone: a
   target health checks took out was as good as a tried, healthy one. With A (503
   ``Retry-After: 30``), B (healthy, slower than ``per_try_timeout``) and D (down: 500 to
   everything, its checks too), A's keys went A, B, then D half the time, and the client
   got D's 500. A tried target is chosen again before one down, refusing connections or
   asking to wait (panic mode, where none is down, unchanged).
3. The retry budget's share between two publishes (9a2da0c: a worker's part of the host's
   recent requests) set its requests as of now against the others' as of their last
   publish, up to a second old: in a burst after a trickle every worker's part was nearly
   all, and each spent nearly all of what was left (4 workers: 4 times the budget, what
   the share was there to stop). tests/unit/test_retry_budget_dec05z.py.
4. The ticket key lookup's walk (9a2da0c) began at os.getcwd() for every path, absolute
   ones too: ``gwserver check`` run in a directory since removed (a shell left in a
   release directory a deploy replaced) called a valid configuration invalid (exit 2, ``a
   value could not be checked: FileNotFoundError``), and a master's reload there was
   refused by it first (gunicorn refuses it too, after). An absolute path asks for no
   working directory now (key paths are absolute: the schema says so).

Tried, and held: Retry-After values "1e309", "inf", "+5" ask for a wait and "nan", "-inf",
"0x10", "-0", a 10 MB run of digits (3 ms), dates with a zone of +9999 or
+99999999999999999999, a year 99999 or 0, a day 32, no zone at all, and a Date far in the
future or past raise nothing (200,000 random values and Dates); with one target a retry is
the policy's, as before; ``share`` never divides by 0 (``own`` is at least the request
asking; peers 0 and no traffic is 1/N); the buckets stay within the window; a worker
restarted by max_requests starts at 1/N, at least one retry; ``lookup_directories``: a link
loop stops at 40 links (the key read fails, ELOOP, and says so), ``..`` past ``/`` stays at
``/``, a directory it may not search ends the walk (the key read names EACCES), /proc/self/fd
links to sockets or deleted files end in a name that is no link.
"""
import json
import os
import subprocess
import sys

from ..conftest import free_port, gateway_conf, route, to_toml, wait_until
from ..pki import CA
from .test_retry_policy import failing
from .test_retry_tickets_attack_dec05o import raw_counts


def test_a_weight_0_target_lets_no_retry_back_to_one_that_asked_to_wait(launcher, upstream):
    raw = launcher.raw_upstream()           # A: 503 Retry-After: 30
    bad = failing(launcher)                 # B: 500 to everything
    gw = launcher.gateway(gateway_conf([{
        "id": "r", "paths": ["/*rest"],
        "retry": {"on": ["500", "503"], "attempts": 2, "backoff": 0.01},
        "upstream": {"targets": [{"url": f"http://127.0.0.1:{raw.port}"}, {"url": bad.url},
                                 {"url": upstream.url, "weight": 0}],     # C: no traffic
                     "balance": "consistent_hash", "hash_key": "header:x-key"}}]))
    answers = [gw.request("GET", "/retry-after", headers={"X-Key": str(k)})[0].status
               for k in range(16)]
    assert set(answers) <= {500, 503}, answers
    # A first: A, B, B again (A asked for 30 s); B first: B, A (relayed, none left)
    assert raw_counts(raw)["/retry-after"] == 16


def target_health(gw):
    view = json.loads(gw.admin_get("/admin/upstreams")[1])
    return {t["url"]: t["health"] for t in view["upstreams"]["pool"]["targets"]}


def test_a_retry_after_a_wait_goes_to_a_tried_target_before_one_down(launcher):
    raw = launcher.raw_upstream()           # A: 503 Retry-After: 30
    slow = launcher.upstream("slow", delay=0.5)     # B: healthy, later than per_try_timeout
    down = failing(launcher)                # D: 500 to everything, its health checks too
    a = f"http://127.0.0.1:{raw.port}"
    gw = launcher.gateway(gateway_conf(
        [{"id": "r", "paths": ["/*rest"], "upstream": "pool",
          "retry": {"on": ["503", "timeout"], "attempts": 2, "per_try_timeout": 0.2,
                    "backoff": 0.01}}],
        upstreams={"pool": {
            "targets": [{"url": a}, {"url": slow.url}, {"url": down.url}],
            "balance": "consistent_hash", "hash_key": "header:x-key",
            "health_check": {"interval": 0.2, "timeout": 1.5, "healthy_threshold": 1,
                             "unhealthy_threshold": 1, "max_interval": 1.0,
                             "path": "/echo"}}}))
    wait_until(lambda: target_health(gw) == {a: "healthy", slow.url: "healthy",
                                             down.url: "unhealthy"}, timeout=15)
    answers = [gw.request("GET", "/retry-after", headers={"X-Key": str(k)})[0].status
               for k in range(20)]
    # A's keys: A, B (timed out), B again (504); B's: B, A (503 relayed); D's: A's or B's
    assert 500 not in answers, answers
    assert set(answers) <= {503, 504}, answers


def test_check_in_a_removed_directory_reads_the_ticket_keys(upstream, tmp_path):
    cert, key, _ = CA(tmp_path).issue("site")
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o750)
    (keys / "current.key").write_bytes(os.urandom(80))
    (keys / "current.key").chmod(0o600)
    conf = gateway_conf([route("r", ["/*rest"], upstream.url)], tls={
        "bind": [f"127.0.0.1:{free_port()}"],
        "certificates": [{"cert": str(cert), "key": str(key)}],
        "ticket_key_files": [str(keys / "current.key")]})
    conf_path = tmp_path / "gw.toml"
    conf_path.write_text(to_toml(conf))
    release = tmp_path / "release"         # a shell's directory, removed by a deploy
    checked = subprocess.run(
        ["sh", "-c", 'mkdir "$1" && cd "$1" && rmdir "$1" && exec "$2" -m gwserver check -c "$3"',
         "sh", str(release), sys.executable, str(conf_path)],
        capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "ok (1 routes" in checked.stdout, checked.stdout
