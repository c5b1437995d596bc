"""etcd edge cases of 2026-12-09 (o), against a real etcd (Debian's etcd-server) on loopback.

Checked and held (no test here, each passes on the code as it was): an instance deregistered
(deleted, or its lease revoked) while config-sync was stopped (SIGSTOP, up to 5 s), cut off
from etcd, or killed and restarted, with etcd compacted past the delete, leaves every worker;
writes made during a full load of 4,000 routes (sync killed, or its connection cut) all reach
the workers, none twice. A fresh start whose snapshot saw a refused update, its good version
compacted away, serves the snapshot's good version.

Fixed: a watch catching up more than 1000 revisions (etcd sends them 1000 a message, each
headed with its revision now) took the first message's header as its position."""
import time

from ..conftest import TcpRelay, wait_until
from .test_etcd import all_workers_at, etcd_conf, put, status_of


def eventually(predicate, timeout):
    try:
        return wait_until(predicate, timeout=timeout)
    except AssertionError:
        return False


class HeldWatches(TcpRelay):
    """A relay to an etcd member that holds watch streams, as a proxy may: the first after
    its "created" message, the second after its first message with events (passed whole);
    the others, and every other call, are passed on whole."""

    def __init__(self, target_port):
        self.watches, self.held, self.seen = {}, set(), {}
        super().__init__(target_port)

    def forward(self, data, dst, to_client):
        if not to_client:
            dst.settimeout(None)        # (TcpRelay's 2 s: a quiet watch is no broken one)
            if b"/v3/watch" in data:
                with self.lock:         # the client socket of this upstream one
                    client = self.conns[self.conns.index(dst) - 1]
                    self.watches[client] = len(self.watches) + 1
            return dst.sendall(data)
        if dst in self.held:
            return None
        before = self.seen.get(dst, b"")
        seen = self.seen[dst] = before + data
        mark = {1: b'"created":true', 2: b'"events"'}.get(self.watches.get(dst))
        at = seen.find(mark) if mark else -1
        end = seen.find(b"\n\r\n", at) if at >= 0 else -1
        if end < 0:
            return dst.sendall(data)
        self.held.add(dst)              # this message whole, nothing after it
        return dst.sendall(data[:max(0, end + 3 - len(before))])


def test_a_catch_up_of_more_than_1000_revisions_is_not_taken_as_whole(launcher, tmp_path,
                                                                      upstream):
    """etcd sends a watch that catches up at most 1000 revisions a message, each headed with
    its revision now. The sync took that header as its position: a watch held after the
    first such message (a proxy that holds streams) looked whole, and was resumed past the
    revisions still to come, their routes never served (1001 of 1201 routes, for good)."""
    member = launcher.etcd()
    relay = HeldWatches(member.client_port)
    try:
        client = member.client()
        put(client, "upstreams", "up", {"targets": [{"url": upstream.url}]})
        revision = put(client, "routes", "r", {"paths": ["/r"], "upstream": "up"})
        gw = launcher.gateway(etcd_conf(tmp_path, [relay.url], workers=1,
                                        watch_idle_timeout=3.0))
        wait_until(lambda: all_workers_at(gw, revision))    # its watch is held from here on
        for i in range(1200):                               # (a catch-up of 1200 revisions)
            put(client, "routes", f"k{i}", {"paths": [f"/k/{i}"], "upstream": "up"})
        whole = eventually(lambda: (status_of(gw) or {}).get("routes") == 1201, timeout=9)
        assert whole, (status_of(gw)["routes"], gw.log()[-2000:])
        revision = client.revision()
        wait_until(lambda: all_workers_at(gw, revision))
        assert all(gw.request("GET", f"/k/{i}")[0].status == 200 for i in range(0, 1200, 7))
    finally:
        relay.close()
