"""Review of the fixes of 2026-12-05 (a736bbe..5e4cc99): the pure-code half.

1. proxy, a TLS upstream's interim head read while a send waits (ca78ea2, c8ed221):
   ``tls_answered`` parses what ``tls_read_now`` took without going through a read that arms
   and disarms the deadline, and ``tls_send_unless_answered`` took an interim head to mean
   the deadline had been disarmed. The send's deadline stayed armed after the send returned,
   and fired later under an upload the upstream was reading (the integration test in
   tests/integration/test_review_attack_dec05b.py shows the 500 it became).
2. The same look on a TLS connection its deadline had closed raised AttributeError
   (``_sslobj`` is None once gevent closes an SSLSocket): a 500 "internal error", not a 504.
"""
import socket
import ssl
from types import SimpleNamespace

import pytest

from gwserver.errors import UpstreamTimeout
from gwserver.net.deadlines import Deadlines
from gwserver.upstream.proxy import Exchange, Proxy

ROUTE = SimpleNamespace(max_body_size=0, read_timeout=5.0)
INTERIM = b"HTTP/1.1 100 Continue\r\n\r\n"


class FakeSSLObject:
    """The TLS layer: the first write finds the TCP buffer full; the socket then holds an
    interim head, decrypted whole in one read; the next write goes through."""

    def __init__(self):
        self.writes = 0
        self.unread = INTERIM

    def write(self, data):
        self.writes += 1
        if self.writes == 1:
            raise ssl.SSLWantWriteError()
        return len(data)

    def read(self, n, buf):
        data, self.unread = self.unread[:n], self.unread[n:]
        if not data:
            raise ssl.SSLWantReadError()
        buf[:len(data)] = data
        return len(data)

    def pending(self):
        return 0


class FakeTLSSocket:
    def __init__(self, raw):
        self._sock = raw            # readable: the interim head's record is on it
        self._sslobj = FakeSSLObject()

    def pending(self):
        return self._sslobj.pending() if self._sslobj else 0


def proxy_for_tests():
    proxy = Proxy.__new__(Proxy)
    proxy.deadlines = Deadlines()           # not started: nothing fires during the test
    proxy.buf = bytearray(65536)
    proxy.view = memoryview(proxy.buf)
    proxy.max_head = 65536
    return proxy


@pytest.fixture
def tls_exchange():
    raw, peer = socket.socketpair()
    peer.sendall(b"x")              # the record (its bytes are the fake TLS layer's)
    ex = Exchange(SimpleNamespace(sock=FakeTLSSocket(raw), host="up"))
    assert not ex.plain
    yield ex
    raw.close()
    peer.close()


def test_an_interim_head_read_while_a_tls_send_waits_leaves_no_deadline_armed(tls_exchange):
    proxy = proxy_for_tests()
    assert proxy.send_piece(tls_exchange, b"body", ROUTE) is True    # taken, not answered
    assert tls_exchange.status == 100 and not tls_exchange.final
    assert tls_exchange not in proxy.deadlines._armed


def test_a_tls_connection_its_deadline_closed_is_a_timeout_between_pieces(tls_exchange):
    proxy = proxy_for_tests()
    tls_exchange.timed_out = True           # Exchange.expire: gevent's close drops _sslobj
    tls_exchange.sock._sslobj = None
    tls_exchange.sock._sock.close()
    with pytest.raises(UpstreamTimeout):
        proxy.answered_between(tls_exchange, ROUTE)


class RenegotiatingSSLObject(FakeSSLObject):
    """The TLS layer in a renegotiation (TLS 1.2, asked for by the server): a write needs the
    server's handshake bytes first (SSLWantReadError) while the TCP socket has room. They come
    with the answer, 0.2 s later."""

    def __init__(self):
        super().__init__()
        self.unread = b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n"

    def write(self, data):
        self.writes += 1
        if self.writes > 1000:
            raise OSError("spinning: 1000 writes")
        raise ssl.SSLWantReadError()


def test_a_tls_send_that_needs_the_peers_bytes_waits_for_them_without_spinning():
    import gevent
    raw, peer = socket.socketpair()
    try:
        sock = FakeTLSSocket(raw)
        sock._sslobj = RenegotiatingSSLObject()
        ex = Exchange(SimpleNamespace(sock=sock, host="up"))
        gevent.spawn_later(0.2, peer.sendall, b"x")
        proxy = proxy_for_tests()
        assert proxy.send_piece(ex, b"body", ROUTE) is False    # it answered
        assert ex.status == 413
        assert sock._sslobj.writes <= 3
    finally:
        raw.close()
        peer.close()


def test_starting_a_rollout_moves_no_ab_key_between_arms():
    """bbf0f88 keeps a key's baseline group while the canary grows, but took that group from
    a second, salted hash: the moment a rollout is configured (at 0 %, before the controller
    says a word, or after a rollback) about 4 keys in 9 of a 2:1 A/B test changed arm from
    the one the weights gave them without a rollout. The canary (configured weight 0, as a
    rollout starts) should change nobody's arm; only moves to the canary are the rollout's."""
    import uuid
    from gwserver.core.routes import Upstream
    from gwserver.plugins import split

    groups = [{"upstream": "a", "weight": 2}, {"upstream": "b", "weight": 1},
              {"upstream": "c", "weight": 0, "group": "canary"}]

    def resolve(ref, where):
        return Upstream(ref, ())

    plain = split.link(split.prepare(split.SCHEMA.validate({"upstreams": groups})), resolve)
    rolled = split.link(split.prepare(split.SCHEMA.validate({"upstreams": groups,
                                                              "rollout": {}})), resolve)
    keys = [str(uuid.uuid4()) for _ in range(3000)]
    before = {k: split.pick(plain["choices"], plain["total"],
                            split.hash_point(k, plain["total"]))[0] for k in keys}
    assert set(before.values()) == {"a", "b"}
    for percent in (0, 10, 50):
        now = {k: split.place_in_rollout(rolled, percent, k)[0] for k in keys}
        moved = [k for k in keys if now[k] != before[k] and now[k] != "canary"]
        assert len(moved) <= len(keys) // 100, (percent, len(moved))


@pytest.mark.parametrize("url", [
    "http://2852039166/", "http://0xA9FEA9FE/", "http://0xa9.0xfe.0xa9.0xfe/",
    "http://0251.0376.0251.0376/", "http://169.254.43518/", "http://169.254.169.254./",
    "http://[::169.254.169.254]/", "http://[64:ff9b::a9fe:a9fe]/", "http://0:8080/",
    "http://0x0/", "http://000/"])
def test_an_etcd_target_is_refused_however_its_address_is_spelled(url):
    """2c91a50 read a target's host with ipaddress only; getaddrinfo, which the gateway
    connects with, takes inet_aton's spellings too (each of these is 169.254.169.254 or
    0.0.0.0 to it), and an IPv6 address can embed the IPv4 one."""
    from gwserver.core.table import unreachable_from_etcd
    from gwserver.errors import ConfigError
    with pytest.raises(ConfigError):
        unreachable_from_etcd({"targets": [{"url": url}]}, "upstream x")


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "http://[::1]:8080",
                                 "http://orders.internal", "http://10.1.2.3", "http://1e100.net",
                                 "http://[2001:db8::1]"])
def test_ordinary_etcd_targets_pass(url):
    from gwserver.core.table import unreachable_from_etcd
    unreachable_from_etcd({"targets": [{"url": url}]}, "upstream x")


def test_a_capped_ring_moves_only_the_keys_a_new_target_takes():
    """8dfa9fc shares MAX_RING_POINTS by weight once the weights ask for more: every target's
    share then depends on the total, so one instance registering (or leaving, or changing its
    weight) shrank or grew every other target's points too, and keys moved between targets
    that did not change: with 12 targets of weight 100 (a registry's usual weight), adding a
    13th moved ~6 % of all keys between the first 12, on top of the ~7.7 % it takes.
    Consistent hashing moves only the keys the new target takes."""
    import bisect
    import uuid
    from gwserver.core.balancer import ConsistentHash, ring_point
    from gwserver.core.routes import Target

    def target(i):
        return Target(f"http://10.0.0.{i}:80", "http", f"10.0.0.{i}", 80, 100)

    keys = [uuid.uuid4().hex for _ in range(5000)]

    def owners(targets):
        ring = ConsistentHash(targets)
        return {k: ring.owners[bisect.bisect(ring.points, ring_point(k)) % len(ring.points)].url
                for k in keys}

    before = owners([target(i) for i in range(12)])
    after = owners([target(i) for i in range(13)])
    between_old = [k for k in keys if after[k] != before[k] and after[k] != target(12).url]
    assert len(between_old) <= len(keys) // 200, len(between_old)
