"""Attack pass (Dec 11, h2): who the client is. A hostile client tries to be someone else:
other spellings of an address (IPv4-mapped, zero-padded, bracketed, upper case, with ports)
in X-Forwarded-For and Forwarded, copies and empty elements, chains longer than the trusted
hops, over HTTP/1.1 and h2c alike. The gateway's walk held for ip_restriction, limits, the
access log and the upstream's X-Forwarded-For, the same over both protocols. Three defects, each
shown by a test that failed before its fix:

1. A request refused once its head was read (a malformed chunk in the packet of the head; an
   HTTP/2 body that overruns its content-length before its stream began) is logged as
   the trusted proxy, not the client that proxy named: whoever reads the log (fail2ban on
   400s) took one client's malformed requests for the balancer's, every client's with it.
2. A limit keyed on ``header:X-Forwarded-For`` (nginx's ``limit_req_zone
   $http_x_forwarded_for`` habit) counted the list as a trusted proxy sent it, whose left
   part the client writes: each address it prepended was a fresh bucket, over HTTP/1.1 and
   HTTP/2 alike. From anyone else the header is dropped, and every client shared the one
   bucket of requests without it: one client spent everyone's limit.
3. ``trusted_proxies`` holding ``0.0.0.0/0`` (or ``::/0``) lets every client name its own
   address in X-Forwarded-For, past ip_restriction and into its own rate-limit bucket;
   ``gwserver check`` and the master warned of it only beside ``proxy_protocol`` (as they
   do for ``identity_proxies`` in any case).

Every test starts a real gateway on 127.0.0.1 with a real upstream; a client and a trusted
proxy are told apart by their source address (127.0.0.2 and 127.0.0.1).
"""
import json
import re
import socket

from ..conftest import gateway_conf, route, wait_until
from ..h2client import RawH2

TRUSTED, STRANGER = "127.0.0.1", "127.0.0.2"


def exchange(port, data, source=TRUSTED):
    """Send ``data`` from ``source``; -> (status, body) of the one answer, the socket closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=5,
                                  source_address=(source, 0)) as sock:
        sock.sendall(data)
        got = b""
        while b"\r\n\r\n" not in got:
            piece = sock.recv(65536)
            assert piece, got
            got += piece
        head, _, body = got.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
        while len(body) < length:
            piece = sock.recv(65536)
            assert piece, got
            body += piece
        return int(head.split(b" ")[1]), body


def rejected_lines(gw, count):
    return wait_until(lambda: len(lines := [line for line in gw.access_lines()
                                            if "rejected" in line]) >= count and lines,
                      timeout=5)


def test_a_request_refused_after_its_head_is_logged_as_the_client_the_proxy_named(
        launcher, upstream):
    gw = launcher.gateway(gateway_conf(
        [route("echo", ["/echo"], upstream.url)],
        server={"trusted_proxies": [f"{TRUSTED}/32"]}))
    bad_chunk = (b"POST /echo HTTP/1.1\r\nHost: gw\r\nX-Forwarded-For: 203.0.113.9\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\nzz\r\n")
    # HTTP/1.1, the malformed chunk in the packet of the head: from the trusted proxy ...
    assert exchange(gw.port, bad_chunk)[0] == 400
    assert [line["client"] for line in rejected_lines(gw, 1)] == ["203.0.113.9"]   # was 127.0.0.1
    # ... and from anyone else, whose X-Forwarded-For names nobody
    assert exchange(gw.port, bad_chunk, STRANGER)[0] == 400
    assert rejected_lines(gw, 2)[1]["client"] == STRANGER
    # a head refused before the proxy's header was read (two Host fields) is the proxy's
    assert exchange(gw.port, b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n"
                             b"X-Forwarded-For: 203.0.113.9\r\n\r\n")[0] == 400
    assert rejected_lines(gw, 3)[2]["client"] == TRUSTED


def test_an_http2_stream_refused_after_its_head_is_logged_as_the_client_the_proxy_named(
        launcher, upstream):
    gw = launcher.gateway(gateway_conf(
        [route("echo", ["/echo"], upstream.url)],
        server={"trusted_proxies": [f"{TRUSTED}/32"]}, http2={"h2c": True}))
    # h2c from the trusted proxy: a body past its content-length, reset before the stream
    # began
    client = RawH2(gw.port)
    try:
        sid = client.request("/echo", "POST", [("x-forwarded-for", "203.0.113.9"),
                                               ("content-length", "1")], body=b"abc")
        assert client.response(sid) is None                       # reset, never answered
    finally:
        client.close()
    line = rejected_lines(gw, 1)[0]
    assert "content" in line["rejected"].lower() or "length" in line["rejected"].lower(), line
    assert line["client"] == "203.0.113.9", line                  # was 127.0.0.1
    # the same stream, answered: the client it named is in the line, as over HTTP/1.1
    client = RawH2(gw.port)
    try:
        sid = client.request("/echo", headers=[("x-forwarded-for", "203.0.113.9")])
        assert client.response(sid)[0] == 200
    finally:
        client.close()
    assert wait_until(lambda: [line["client"] for line in gw.access_lines()
                               if line.get("path") == "/echo"], timeout=5) == ["203.0.113.9"]


def test_a_limit_on_x_forwarded_for_counts_the_client_the_gateway_names_there(
        launcher, upstream):
    gw = launcher.gateway(gateway_conf(
        [route("lim", ["/lim"], upstream.url, plugins={"rate_limit": {
            "rate": 1, "per": 3600, "burst": 1, "key": "header:X-Forwarded-For"}})],
        server={"trusted_proxies": [f"{TRUSTED}/32"]}, http2={"h2c": True}))

    def ask(forwarded_for=None, source=TRUSTED):
        named = b"X-Forwarded-For: %s\r\n" % forwarded_for.encode() if forwarded_for else b""
        return exchange(gw.port, b"GET /lim HTTP/1.1\r\nHost: gw\r\n%s\r\n" % named,
                        source)[0]
    # behind the trusted proxy, the client 203.0.113.9 prepends what it likes
    assert ask("10.1.1.1, 203.0.113.9") == 200
    assert ask("10.2.2.2, 203.0.113.9") == 429                 # was 200: a fresh bucket
    assert ask("203.0.113.10") == 200                          # another client
    # the proxy's list in two fields is one list: the same client, no 400 for two copies
    two = exchange(gw.port, b"GET /lim HTTP/1.1\r\nHost: gw\r\nX-Forwarded-For: 10.5.5.5\r\n"
                            b"X-Forwarded-For: 203.0.113.10\r\n\r\n", TRUSTED)[0]
    assert two == 429
    client = RawH2(gw.port)                                    # over HTTP/2 the same
    try:
        sid = client.request("/lim", headers=[("x-forwarded-for", "10.3.3.3, 203.0.113.9")])
        assert client.response(sid)[0] == 429                 # was 200
    finally:
        client.close()
    # anyone else: its X-Forwarded-For is dropped, it is counted by its own address
    assert ask("10.4.4.4", source=STRANGER) == 200
    assert ask(None, source="127.0.0.3") == 200                # was 429: one shared bucket
    assert ask("203.0.113.11", source=STRANGER) == 429         # not a bucket it can choose


def test_check_and_the_master_warn_when_every_client_may_name_itself(
        launcher, upstream, tmp_path):
    from ..conftest import check_conf
    conf = gateway_conf(
        [route("internal", ["/internal"], upstream.url,
               plugins={"ip_restriction": {"allow": ["10.0.0.0/8"]},
                        "rate_limit": {"rate": 1, "per": 3600, "burst": 1, "key": "ip"}})],
        server={"trusted_proxies": ["10.0.0.0/8", "0.0.0.0/0"]})
    gw = launcher.gateway(conf)
    # what the warning is about: any client names an internal address, and a fresh bucket
    # each time
    for n in range(2):
        status, body = exchange(gw.port, b"GET /internal HTTP/1.1\r\nHost: gw\r\n"
                                         b"X-Forwarded-For: 10.6.6.%d\r\n\r\n" % n, STRANGER)
        assert status == 200, body
        assert dict((k.lower(), v) for k, v in json.loads(body)["headers"])[
            "x-forwarded-for"] == f"10.6.6.{n}, {STRANGER}"
    said = "server.trusted_proxies holds 0.0.0.0/0: any client may name"
    assert said in gw.log(), gw.log()[-1500:]                     # the master said nothing
    code, output = check_conf(tmp_path, conf)
    assert code == 0 and said in output, output                   # nor did check
    # ::/0 too (IPv6 clients), and "::ffff:0:0/96", which is every IPv4 client
    for everyone in ("::/0", "::ffff:0:0/96"):
        code, output = check_conf(tmp_path, gateway_conf(
            [], server={"trusted_proxies": ["10.0.0.0/8", everyone]}))
        assert code == 0 and f"server.trusted_proxies holds {everyone}: any client may " \
                             f"name" in output, output
    code, output = check_conf(tmp_path, gateway_conf(
        [], server={"trusted_proxies": ["10.0.0.0/8"]}))
    assert code == 0 and "trusted_proxies holds" not in output, output
