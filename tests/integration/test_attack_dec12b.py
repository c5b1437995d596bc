"""Attack pass h8 (Dec 12 b): floods of distinct values, against real processes. A hostile
client sends many requests, each with a value the gateway has not seen; what the gateway keeps
per value must stay bounded. Each defect below is shown by a test that failed on 61d11c4 and
passes with its fix.

1. Metrics: a worker kept one series per raw method (key (route, method, status class,
   protocol)), though the label of every method past the seven is `OTHER`: a client sending
   the 27 other methods llhttp parses made each route hold 27 series more per status class and
   protocol in every worker, each walked by the once-a-second flush, for the worker's life.
   They are now counted under `OTHER`, one series.
2. jwt, a route with `claims` behind a JWKS: the line that says why a token fell through to
   the next route is written at info once a minute per route and reason, and the reason of a
   token whose kid is in no key carried that kid: a client sending a new kid on each request
   wrote an info line per request (and each 1,000 emptied the memory of the others). Now the
   reason's kind is what is remembered, the kid left out.
3. HTTP/2: h2 remembers how each of a connection's last 65,536 streams ended (for frames a
   client sent before it saw the end): a client that sent its requests one after another
   on one connection made it hold ~165 bytes per stream, ~11 MiB once it had sent 65,536,
   for the connection's life; with worker_connections (1,000) such connections, a worker's
   11 GiB. A connection now remembers its last 1,024 (twice max_concurrent_streams when
   that is more): RFC 9113 5.1 lets a frame on a stream reset long ago be an error.
"""
import base64
import json
import socket
import struct
import time

from ..conftest import gateway_conf, wait_until
from .test_tunnel_attack_dec05c import worker_rss_kib

FAULT_204 = {"fault": {"abort": {"status": 204}}}

# What llhttp parses besides the seven methods the metrics name (and CONNECT, a tunnel)
OTHER_METHODS = ("TRACE COPY LOCK MKCOL MOVE PROPFIND PROPPATCH SEARCH UNLOCK BIND REBIND "
                 "UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY SUBSCRIBE "
                 "UNSUBSCRIBE PURGE MKCALENDAR LINK UNLINK SOURCE QUERY").split()


def pipelined(port, requests, answer=b"HTTP/1.1 204 ", batch=30):
    """Send ``requests`` (raw bytes each) on one keep-alive connection, ``batch`` at a time,
    each batch's answers (each starting with ``answer``) read before the next goes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for start in range(0, len(requests), batch):
            chunk = requests[start:start + batch]
            sock.sendall(b"".join(chunk))
            got = b""
            while got.count(answer) < len(chunk):
                piece = sock.recv(1 << 16)
                assert piece, got[-300:]
                got += piece


def settled_rss(pid):
    time.sleep(1.2)         # a flush (once a second) has pushed what the flood counted
    return worker_rss_kib(pid)


# -- 1. a series per method ---------------------------------------------------------------------

def test_methods_past_the_seven_keep_no_series_of_their_own(launcher):
    routes = [{"id": f"r{i}", "paths": [f"/r{i}"], "plugins": FAULT_204,
               "upstream": {"targets": [{"url": "http://127.0.0.1:9"}]}} for i in range(300)]
    gw = launcher.gateway(gateway_conf(routes, log={"level": "warning",
                                                    "access_log": False}))
    pid = gw.worker_pids()[0]

    def flood(methods):
        pipelined(gw.port, [f"{method} /r{i} HTTP/1.1\r\nHost: h\r\n\r\n".encode()
                            for method in methods for i in range(len(routes))])
    flood(["GET"])                  # the code paths warm, one series per route
    base = settled_rss(pid)
    flood(["GET"] * len(OTHER_METHODS))     # as many requests, one method
    same = settled_rss(pid)
    flood(OTHER_METHODS)            # as many requests, a method each of 27
    other = settled_rss(pid)
    # 8,100 series more held ~9.5 MiB; under OTHER they are the 300 of one method (what
    # grows besides: the router's memory of matches, 1,024 at most)
    assert other - same < 3072 + max(0, same - base), (base, same, other)
    status, body = gw.admin_get("/metrics")
    assert status == 200, body[:200]
    samples = [line for line in body.decode().splitlines()
               if line.startswith('gwserver_requests_total{') and 'route="r7"' in line]
    assert sorted(samples) == sorted([
        f'gwserver_requests_total{{method="GET",protocol="HTTP/1.1",route="r7",status="2xx"}} '
        f'{1.0 + len(OTHER_METHODS)}',
        f'gwserver_requests_total{{method="OTHER",protocol="HTTP/1.1",route="r7",status="2xx"}} '
        f'{float(len(OTHER_METHODS))}']), samples


# -- 2. jwt: a line per kid -----------------------------------------------------------------------

def _b64(data):
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def kid_token(kid):
    """A token whose header names ``kid`` (its signature is never reached: no key has it)."""
    return f"{_b64({'alg': 'RS256', 'typ': 'JWT', 'kid': kid})}.{_b64({'sub': 'x'})}.c2ln"


def test_tokens_with_new_kids_do_not_write_a_line_each(launcher, tmp_path):
    from cryptography.hazmat.primitives.asymmetric import rsa
    import jwt as pyjwt
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(pyjwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "RS256"}]}))
    auth = {"jwks_file": str(jwks)}
    gw = launcher.gateway(gateway_conf([
        {"id": "gold", "paths": ["/api"], "claims": {"tier": "gold"}, "plugins": {"jwt": auth},
         "upstream": {"targets": [{"url": "http://127.0.0.1:9"}]}},
        {"id": "rest", "paths": ["/api"], "plugins": FAULT_204,
         "upstream": {"targets": [{"url": "http://127.0.0.1:9"}]}}],
        log={"access_log": False}))

    def flood(kids):
        pipelined(gw.port, [f"GET /api HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer "
                            f"{kid_token(kid)}\r\n\r\n".encode() for kid in kids])
    flood(["same"] * 50)            # one kid again and again: one line, as documented
    wait_until(lambda: "not matched" in gw.log(), timeout=5)
    flood([f"kid-{n}" for n in range(1500)])
    time.sleep(0.5)
    lines = [line for line in gw.log().splitlines() if "route gold not matched" in line]
    assert len(lines) <= 2, (len(lines), lines[:3])


# -- 3. HTTP/2: how every stream of a connection ended -------------------------------------------

def h2_frame(kind, flags, stream_id, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + \
        struct.pack(">I", stream_id) + payload


# GET http / with :authority localhost (a literal never indexed: the HPACK table stays empty)
H2_GET = b"\x82\x86\x84\x01\x09localhost"
H2_NO_PATH = b"\x82\x86\x01\x09localhost"      # the same without :path: malformed, reset


def h2_requests(port, count, sock=None, first=1, batch=50, block=H2_GET):
    """``count`` requests (``block``) on one h2c connection (a new one, or ``sock`` opened
    here before, whose next stream is ``first``), one batch after another (under
    max_concurrent_streams), each batch's answers (or resets) read before the next goes;
    -> the socket, still open."""
    if sock is None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        # the connection's window opened wide: the answers never wait for a WINDOW_UPDATE
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(4, 0, 0) +
                     h2_frame(8, 0, 0, struct.pack(">I", (1 << 31) - 1 - 65535)))
    buf = b""
    for start in range(0, count, batch):
        n = min(batch, count - start)
        sid = first + 2 * start
        sock.sendall(b"".join(h2_frame(1, 5, sid + 2 * i, block) for i in range(n)))
        ended = 0
        while ended < n:
            piece = sock.recv(1 << 16)
            assert piece, buf[-200:]
            buf += piece
            while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
                size, kind, flags = int.from_bytes(buf[:3], "big"), buf[3], buf[4]
                assert kind != 7, buf[:9 + size]                # GOAWAY
                if kind == 4 and not flags & 1:
                    sock.sendall(h2_frame(4, 1, 0))            # SETTINGS ACK
                elif kind == 3 or kind in (0, 1) and flags & 1 and \
                        int.from_bytes(buf[5:9], "big"):
                    ended += 1                          # a stream's RST_STREAM or END_STREAM
                buf = buf[9 + size:]
    return sock


def test_an_h2_connection_does_not_keep_every_stream_it_served(launcher):
    # Streams reset as malformed (no :path) are remembered as served ones are (measured by
    # hand: 165 bytes a served stream, 60,000 of them 9.8 MiB), and cost the worker far less
    # time: the reset budget is lifted for the test's pace.
    gw = launcher.gateway(gateway_conf(
        [{"id": "r", "paths": ["/"], "plugins": FAULT_204,
          "upstream": {"targets": [{"url": "http://127.0.0.1:9"}]}}],
        http2={"h2c": True, "max_resets_per_second": 10 ** 9},
        log={"level": "warning", "access_log": False}))
    pid = gw.worker_pids()[0]
    for _ in range(8):      # the worker's memory at its steady state for 1,000-stream clients
        h2_requests(gw.port, 1000, batch=500, block=H2_NO_PATH).close()
    held = h2_requests(gw.port, 2000, batch=500, block=H2_NO_PATH)
    try:
        before = settled_rss(pid)
        h2_requests(gw.port, 20000, held, first=4001, batch=500, block=H2_NO_PATH)
        grown = settled_rss(pid)
        # 22,000 streams' ends held: ~2.3 MiB (the dict past 21,845 entries: 65,536 slots);
        # the last 1,024's: nothing new
        assert grown - before < 1280, (before, grown)
        h2_requests(gw.port, 1, held, first=44001)         # and the connection serves on
    finally:
        held.close()
