"""The HTTP/1.1 request edge (smuggling, path and host confusion), attacked through real
gateways and upstreams (the attack pass of 2026-12-05, helper h4, on 5f14d21). Each test
failed on that commit.

1. A chunked body of tiny chunks: each chunk became a bytes object and a list slot in the
   request's body, held while the rest of a body up to ``request_buffer_size`` came. A
   client that sent 64 KiB in 2-byte chunks (227 KB on the wire) made the worker hold
   ~1.8 MB for it, ~28x the 64 KiB a buffered body is said to cost (and that `gwserver
   check` multiplies by worker_connections); a thousand such clients, 1.8 GB in one worker.
   Short pieces are now joined as they come (core/context.py, add_body): the body costs
   about its bytes.
2. A route's ``headers`` condition on ``Host`` read the value as the client wrote it, while
   the upstream gets Host canonical: ``ADMIN.test``, ``admin.test.``, ``admin.test:80`` or
   ``GET http://admin.test/x`` with another Host missed a route on ``Host = "admin.test"``
   (guarded by ip_restriction here), went to the public catch-all, and the upstream got
   ``Host: admin.test`` all the same. Such a condition is now refused by name (check, start,
   reload, etcd): ``hosts`` matches the canonical name (core/routes.py,
   condition_header_name).
3. A route's ``headers`` condition and a header sent twice: header_map joins the copies, so
   ``X-Env: internal`` twice was ``internal, internal``, missed the guarded route on
   ``X-Env = "internal"`` and went to the public one, whose upstream read ``internal`` (Go
   reads the first copy, PHP the last). A condition that fails on a list holding its value is
   now a 400 (core/router.py, refuse_listed), as a rate limit keyed on such a header is.

Held (tried, and the gateway routed what it forwarded, or refused it): CL.TE, TE.CL and
TE.TE in every spelling the brief lists (``chunked, identity``, a space before the colon, a
tab before or after ``chunked``, two TE fields, upper case, ``chunked,``), ``5, 5`` and
``+5`` Content-Length, huge chunk sizes, a quoted chunk extension hiding a request, bare LF,
bare CR, obs-fold, CR or NUL in a value, two spaces in the request line (routed and
forwarded as one canonical line), HTTP/1.0 keep-alive with pipelining (and a chunked answer
to it, which closes), ``Expect: 100-continue`` refused by ip_restriction (403) and
rate_limit (429) without a 100 and with the connection closed (the body is never a request),
absolute-form with another Host, userinfo, a fragment or backslash in the authority, Host
with a port, trailing dot, upper case or userinfo, two Hosts, ``/admin/../x``, ``//admin``,
``/%61dmin``, ``/admin%2f..``, ``;`` parameters, ``%00``, a backslash, fragments,
``#``/``?`` first; 5 pipelined requests behind a slow first answer come back in order; a
flood of tiny pipelined requests is answered 32 then closed.
"""
import json
import socket
import subprocess
import sys
import time

from ..conftest import gateway_conf, read_response, route, to_toml, wait_until
from .test_attack_pass_dec04c import rss_kib

DENY_LOOPBACK = {"ip_restriction": {"deny": ["127.0.0.0/8", "::1/128"]}}


def exchange(port, data, timeout=5):
    """Send ``data`` on a new connection; -> every byte the gateway sent until it closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        answer = b""
        while piece := sock.recv(65536):
            answer += piece
        return answer


def status_of(answer):
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else None


# -- 1. a body of tiny chunks ---------------------------------------------------------------

def unread_on(port):
    """Bytes waiting unread in the receive queues of the sockets accepted on ``port``."""
    waiting = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if int(fields[1].rpartition(":")[2], 16) == port and fields[3] == "01":
                    waiting += int(fields[4].partition(":")[2], 16)
    return waiting


def test_a_body_of_tiny_chunks_costs_about_its_bytes(launcher, upstream):
    """40 clients each send 64,000 bytes of body in 2-byte chunks (227 KB on the wire), all
    but the last chunk, and wait: each body is under request_buffer_size (64 KiB), so the
    worker holds it whole. It grew ~72 MB for the 9 MB sent; now ~3 MB."""
    gw = launcher.gateway(gateway_conf([route("r", ["/*rest"], upstream.url)]))
    worker = gw.worker_pids()[0]
    body = b"2\r\nxx\r\n" * 32000
    socks = []
    try:
        time.sleep(0.5)
        before = rss_kib(worker)
        for _ in range(40):
            sock = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
            sock.sendall(b"POST /upload HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
                         + body)
            socks.append(sock)
        wait_until(lambda: unread_on(gw.port) == 0, timeout=20)     # all of it read
        time.sleep(0.3)
        grown = rss_kib(worker) - before
        sent_kib = len(body) * len(socks) // 1024
        assert grown < sent_kib, f"worker grew {grown} KiB for {sent_kib} KiB sent"
        # ... and each body is whole when it ends: one goes upstream byte for byte
        socks[0].sendall(b"0\r\n\r\n")
        socks[0].settimeout(10)
        head, answer = read_response(socks[0])
        assert status_of(head) == 200 and json.loads(answer)["size"] == 64000, answer
    finally:
        for sock in socks:
            sock.close()
    assert upstream.stats()["requests"] == 1


# -- 2. a header condition on Host ----------------------------------------------------------

def host_condition_conf(up_url):
    return gateway_conf([
        route("admin", ["/*rest"], up_url, headers={"Host": "admin.test"}, plugins=DENY_LOOPBACK),
        route("public", ["/*rest"], up_url)])


def test_a_header_condition_on_host_is_refused_by_name(launcher, upstream, tmp_path):
    """Every spelling of the host but the one written reached the guarded vhost through the
    public route; the condition is now refused, with the way to write it."""
    conf = tmp_path / "gw.toml"
    conf.write_text(to_toml(host_condition_conf(upstream.url)))
    checked = subprocess.run([sys.executable, "-m", "gwserver", "check", "-c", str(conf)],
                             capture_output=True, text=True, timeout=60)
    out = checked.stdout + checked.stderr
    assert checked.returncode == 2, out
    assert "route admin: headers.Host" in out and "hosts" in out, out
    # hosts = ["admin.test"] covers what the condition missed
    gw = launcher.gateway(gateway_conf([
        route("admin", ["/*rest"], upstream.url, hosts=["admin.test"], plugins=DENY_LOOPBACK),
        route("public", ["/*rest"], upstream.url)]))
    for request in (b"GET /x HTTP/1.1\r\nHost: ADMIN.test\r\n",
                    b"GET /x HTTP/1.1\r\nHost: admin.test.\r\n",
                    b"GET /x HTTP/1.1\r\nHost: admin.test:80\r\n",
                    b"GET http://admin.test/x HTTP/1.1\r\nHost: other\r\n"):
        answer = exchange(gw.port, request + b"Connection: close\r\n\r\n")
        assert status_of(answer) == 403, (request, answer[:300])
    assert upstream.stats()["requests"] == 0


# -- 3. a header condition and a header sent twice ------------------------------------------

def test_a_header_condition_on_a_header_sent_twice_is_a_400(launcher, h1_up):
    gw = launcher.gateway(gateway_conf([
        route("internal", ["/*rest"], h1_up.url, headers={"X-Env": "internal"},
              plugins=DENY_LOOPBACK),
        route("public", ["/*rest"], h1_up.url)]))
    head = b"GET /x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
    assert status_of(exchange(gw.port, head + b"X-Env: internal\r\n\r\n")) == 403
    for twice in (b"X-Env: internal\r\nX-Env: internal\r\n",
                  b"X-Env: internal\r\nX-Env: other\r\n",
                  b"X-Env: other\r\nx-env: internal\r\n",
                  b"X-Env: internal, other\r\n"):
        answer = exchange(gw.port, head + twice + b"\r\n")
        assert status_of(answer) == 400 and b"x-env header is a list" in answer, \
            (twice, answer[:400])
    assert h1_up.heads == []
    # a value the condition does not hold, once or twice, is the public route's as before
    assert status_of(exchange(gw.port, head + b"X-Env: other\r\n\r\n")) == 200
    assert status_of(exchange(gw.port, head + b"X-Env: a\r\nX-Env: b\r\n\r\n")) == 200
    assert status_of(exchange(gw.port, head + b"\r\n")) == 200
    assert len(h1_up.heads) == 3
