"""Review of 0065081 (fences' names, the GOAWAY race's cap) as an attacker and as a
legitimate client, then the etcd sync's operator-facing errors (helper s3, 2026-12-05).
Every test starts real processes and talks to them over loopback; each failed on the code
before its fix.

1. A reload's drain cut a busy gRPC client's calls again: 0065081 capped the GOAWAY race's
   allowance at 1,000 streams, whatever max_concurrent_streams says. With
   max_concurrent_streams = 3000, a client with 1,500 calls opened in a reload's race
   (before it read the gateway's GOAWAY, RFC 9113 6.8) had 500 of them counted as resets:
   GOAWAY ENHANCE_YOUR_CALM, and the call being drained was cut. The cap's attack was a
   flood after the client's own GOAWAY (no real race: the client knows it sent it); the
   cap now holds there only, and the gateway's GOAWAY keeps its race of
   max_concurrent_streams (100 at least).
2. A route written to etcd whose path binds one name twice (``/u/:id/f/:id``: an operator
   who meant two ids; key_auth on it) is refused for that, as it should be, but it was not
   fenced: ``fence_of`` skipped the path as unreadable, so nothing held it, and the public
   catch-all answered ``/u/1/f/2`` 200 with no key at all. 0065081 gave fences distinct
   names per path (``unused``); the path itself is now read with its second name made
   distinct too (``/u/:id/f/:id_``), and it answers 503 until a valid version arrives.
3. An operator configures a wrong etcd password (or user). etcd answers ``authenticate``
   itself, 400 "authentication failed, invalid user ID or password", but that was taken
   for the endpoint failing: the sync process logged ``etcd unreachable: no etcd endpoint
   answered: ...``, and ``routes status`` said ``etcd is unreachable from the gateway``: a
   network problem to look for, and the user it tried named nowhere. etcd's own refusal is
   now its own error (``AuthRejected``): ``etcd authentication failed for user "root":
   ...`` in the log, status.json (``auth_failed``), /admin/config and ``routes status``
   (``etcd refuses the gateway's credentials``); never the password.
4. An etcd member (or a proxy in front of it) that accepts and then trickles its answers,
   a byte every 0.3 s, with ``timeout = 1.0``: requests' read timeout bounds each recv, not
   the read, so every call to that member took minutes (a range's answer, ~400 bytes: two
   minutes), and the sync process never reached the healthy member after it: no route
   loaded in 10 s. The watch was held the same way (its messages trickled, never whole, and
   never silent for watch_idle_timeout): a change was never applied. A call's whole answer
   now comes within ``timeout`` (plus a second per 256 KiB that came: a large range over
   a slow link is not cut), or that member failed (``no whole answer within 1.0s``) and
   the next is asked; a watch's messages must come whole within ``watch_idle_timeout``
   (its first, which etcd sends at once, included), or the watch is lost and the next
   member asked.
"""
import json
import os
import subprocess
import sys
import time

from ..conftest import TcpRelay, wait_until
from .test_etcd import UP, all_workers_at, etcd_conf, put, runtime_of, serves
from .test_etcd_attack_dec05k import enable_auth
from .test_review_attack_dec05m import refused_beside_a_public_route


# -- 1. the GOAWAY race's cap cut a busy client's drained call -----------------------------------

# (its test is test_review_attack_dec05l.py's race test, with 3,000 streams and 1,500 calls)


# -- 2. a refused route whose path binds one name twice was not fenced ---------------------------

def test_a_refused_route_whose_path_binds_a_name_twice_is_fenced(launcher, upstream, tmp_path):
    gw = refused_beside_a_public_route(launcher, upstream, tmp_path,
                                       ["/u/:id/f/:id", "/u/:id/*id"], {"header": "X-Key"})
    assert serves(gw, "/u/1/f/2") == 503            # 200 from the public route before
    assert serves(gw, "/u/1/x/y") == 503


# -- 3. a wrong etcd password was reported as etcd unreachable -----------------------------------

WRONG = "not-the-Password-9"


def routes_status(gw):
    return subprocess.run([sys.executable, "-m", "gwserver", "routes", "-c", str(gw.conf_path),
                           "status"], capture_output=True, text=True, timeout=60)


def test_a_wrong_etcd_password_is_said_as_one_naming_the_user(launcher, tmp_path):
    etcd = launcher.etcd()
    enable_auth(etcd)
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], workers=1, username="root",
                                    password=WRONG))
    said = 'etcd authentication failed for user "root": HTTP 400 etcdserver: authentication ' \
        'failed, invalid user ID or password'
    assert wait_until(lambda: said in gw.log(), timeout=10), gw.log()[-2000:]
    assert "etcd unreachable" not in gw.log(), gw.log()[-2000:]
    status_path = os.path.join(runtime_of(gw), "status.json")
    assert wait_until(lambda: json.load(open(status_path)).get("auth_failed"), timeout=5)
    run = routes_status(gw)
    assert run.returncode == 1
    assert "problem: etcd refuses the gateway's credentials (" + said in run.stderr, run.stderr
    assert "unreachable" not in run.stderr, run.stderr
    code, config = gw.admin_get("/admin/config")
    assert code == 200 and said in json.loads(config)["sync"]["error"]
    for where, text in (("log", gw.log()), ("status.json", open(status_path).read()),
                        ("routes status", run.stdout + run.stderr),
                        ("/admin/config", config.decode())):
        assert WRONG not in text, (where, text[-2000:])


# -- 4. a member that trickles its answers held the sync process ---------------------------------

class Trickle(TcpRelay):
    """A proxy in front of an etcd member that passes requests at once and trickles the
    answers, a byte every 0.3 s (all of them; or with ``watch_only``, the watch's messages
    after its head)."""

    def __init__(self, target_port, watch_only=False):
        self.watch_only, self.watching, self.headed = watch_only, set(), set()
        super().__init__(target_port)

    def forward(self, data, dst, to_client):
        if not to_client:
            if b"/v3/watch" in data:
                with self.lock:         # the client socket of this upstream one
                    self.watching.add(self.conns[self.conns.index(dst) - 1])
            return dst.sendall(data)
        if self.watch_only and dst not in self.watching:
            return dst.sendall(data)
        if self.watch_only and dst not in self.headed:
            head, end, data = data.partition(b"\r\n\r\n")
            self.headed.add(dst)
            dst.sendall(head + end)
        for i in range(len(data)):
            if not self.open:
                return
            dst.sendall(data[i:i + 1])
            time.sleep(0.3)


def test_a_member_that_trickles_its_answers_is_passed_over(launcher, upstream, tmp_path):
    etcd = launcher.etcd()
    relay = Trickle(etcd.client_port)
    try:
        client = etcd.client()
        put(client, "upstreams", "up", UP(upstream))
        revision = put(client, "routes", "orders", {"paths": ["/orders"], "upstream": "up"})
        gw = launcher.gateway(etcd_conf(tmp_path, [relay.url, etcd.url], workers=1,
                                        timeout=1.0))
        assert wait_until(lambda: all_workers_at(gw, revision), timeout=10), \
            gw.log()[-2000:]                # minutes on the first member before
        assert serves(gw, "/orders") == 200
    finally:
        relay.close()


def test_a_watch_that_trickles_is_lost_and_the_next_member_asked(launcher, upstream,
                                                                 tmp_path):
    etcd = launcher.etcd()
    relay = Trickle(etcd.client_port, watch_only=True)
    try:
        client = etcd.client()
        put(client, "upstreams", "up", UP(upstream))
        revision = put(client, "routes", "orders", {"paths": ["/orders"], "upstream": "up"})
        gw = launcher.gateway(etcd_conf(tmp_path, [relay.url, etcd.url], workers=1,
                                        timeout=1.0, watch_idle_timeout=2.0))
        assert wait_until(lambda: all_workers_at(gw, revision), timeout=10), gw.log()[-2000:]
        time.sleep(1.0)                     # the watch is on the first member, trickling
        revision = put(client, "routes", "later", {"paths": ["/later"], "upstream": "up"})
        assert wait_until(lambda: all_workers_at(gw, revision), timeout=10), \
            gw.log()[-2000:]                # never before: the watch was held for good
        assert serves(gw, "/later") == 200
        assert "(it trickles, or hangs)" in gw.log()
    finally:
        relay.close()
