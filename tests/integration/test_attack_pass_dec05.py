"""Items left open by the passes of 2026-12-04, closed on 2026-12-05, against real processes.

1. A TLS upstream's stray answer whose record had only partly arrived when the gateway
   checked the idle connection: the TLS layer said "no data yet", the connection was reused,
   and the rest of the record was read as the next request's answer. Bytes on an idle TLS
   connection that decrypt to no data now close it too (net/sockets.py, tls_idle_state).
2. `routes status` read healthy when no worker had said which table it served (workers not
   running, or unable to write the board): it now says so, and a worker that cannot write
   there logs why.
3. `consumers put` stored an API key that another consumer already held: each hash has its
   own salt, so only use found the clash, and then refused the key for both. A key given in
   clear is now checked against every stored one (plugins' ``same_secret``)."""
import glob
import json
import os
import shutil
import socket
import time
from types import SimpleNamespace

import pytest

from ..conftest import gateway_conf, to_toml, wait_until
from gwserver.plugins.key_auth import hash_key
from ..pki import CA
from .test_attack_pass_dec04e import gwcli
from .test_edge_security import body_of, get
from .test_etcd import etcd_conf, put, runtime_of, serves, serving


@pytest.fixture
def tls_raw_gw(launcher, tmp_path):
    cert, key, _ = CA(tmp_path).issue("upstream")
    raw = launcher.raw_upstream("tls_raw_upstream.py", cert, key)
    return launcher.gateway(gateway_conf([{"id": "raw", "paths": ["/*rest"], "upstream": {
        "targets": [{"url": f"https://127.0.0.1:{raw.port}"}], "tls": {"verify": False}}}]))


@pytest.mark.parametrize("path", [b"/stray-later", b"/stray-split"])
def test_a_stray_answer_on_an_idle_tls_connection_reaches_nobody(tls_raw_gw, path):
    """/stray-later sends the stray answer's record whole; /stray-split sends its first 10
    bytes while the connection is idle and the rest once the gateway writes to it again."""
    for _ in range(3):
        assert body_of(get(tls_raw_gw.port, path)[1]) == b"first"
        time.sleep(0.3)             # the stray bytes land while the connection is idle
        assert body_of(get(tls_raw_gw.port, b"/ok")[1]) == b"ok"
    assert "sent bytes on an idle keep-alive connection" in tls_raw_gw.log()


def test_an_idle_tls_connection_with_nothing_on_it_is_still_reused(tls_raw_gw):
    """The other side of the rule above: TLS 1.3's session tickets come before the first
    answer, whose read takes them, so a quiet connection is reused, not redialled."""
    def accepted():     # connections the upstream took, the test's port probe included
        return int(body_of(get(tls_raw_gw.port, b"/connections")[1]))
    before = accepted()
    for _ in range(20):
        assert body_of(get(tls_raw_gw.port, b"/ok")[1]) == b"ok"
        time.sleep(0.01)
    assert accepted() == before
    assert "idle keep-alive connection" not in tls_raw_gw.log()


def test_an_early_413_from_a_tls_upstream_reaches_the_client_during_a_large_upload(
        launcher, tmp_path):
    """As test_edge_security's test over plain TCP: an upstream that answers 413 as soon as
    the head is in and reads no more. The gateway's sends of the body fill the buffers and
    must wait; while they wait, the answer must reach the client (not a 504 at read_timeout:
    the upstream said why long before)."""
    from .test_edge_security import answer_to_upload
    cert, key, _ = CA(tmp_path).issue("upstream")
    raw = launcher.raw_upstream("tls_raw_upstream.py", cert, key)
    gw = launcher.gateway(gateway_conf([{"id": "raw", "paths": ["/*rest"], "upstream": {
        "targets": [{"url": f"https://127.0.0.1:{raw.port}"}], "tls": {"verify": False}},
        "timeouts": {"read": 6}}], server={"client_body_timeout": 2.0}))
    answer, took = answer_to_upload(gw.port, b"/early-413", timeout=15)
    assert answer.startswith(b"HTTP/1.1 413"), (answer[:200], took)
    assert took < 4, took


def test_a_tls_upstreams_cut_record_during_an_upload_is_a_timeout_not_a_spin(launcher,
                                                                             tmp_path):
    """A record's first bytes and no more, while the gateway waits to send the body: the
    TLS layer has no data to give. The wait must end at read_timeout (504), without taking
    the bytes for an answer, waiting on them past the deadline, or spinning the worker on
    them meanwhile."""
    from .test_auth_abuse import cpu_seconds
    from .test_edge_security import upload_in_background
    cert, key, _ = CA(tmp_path).issue("upstream")
    raw = launcher.raw_upstream("tls_raw_upstream.py", cert, key)
    gw = launcher.gateway(gateway_conf([{"id": "raw", "paths": ["/*rest"], "upstream": {
        "targets": [{"url": f"https://127.0.0.1:{raw.port}"}], "tls": {"verify": False}},
        "timeouts": {"read": 3}}], workers=1, server={"client_body_timeout": 5.0}))
    size = 64 << 20
    with socket.create_connection(("127.0.0.1", gw.port), timeout=15) as sock:
        sock.sendall(b"POST /part-record HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n"
                     % size)
        upload_in_background(sock, size)
        time.sleep(1.0)                 # the buffers are full: the gateway waits
        before = cpu_seconds(gw)
        started = time.monotonic()
        answer = b""
        while b"\r\n\r\n" not in answer and (piece := sock.recv(65536)):
            answer += piece
        spent, took = cpu_seconds(gw) - before, time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 504"), answer[:200]
    assert spent < 0.3 * took, (spent, took)        # a spinning wait takes a whole core


def test_streamed_uploads_to_a_tls_upstream_are_whole_while_it_reads_them(launcher, tmp_path):
    """The other side of the rule above: TLS 1.3 session tickets make the socket readable
    while the body goes out, and must not be taken for an answer, nor wait for one (the
    upstream answers only after the body). Uploads of 8 MiB, streamed (over
    request_buffer_size), fast and in paced pieces, on one keep-alive connection: each
    arrives whole."""
    import hashlib
    import http.client
    cert, key, _ = CA(tmp_path).issue("upstream")
    upstream = launcher.upstream("tls", tls=(str(cert), str(key)))
    gw = launcher.gateway(gateway_conf([{"id": "up", "paths": ["/*rest"], "upstream": {
        "targets": [{"url": upstream.url}], "tls": {"verify": False}},
        "timeouts": {"read": 10}}]))
    body = os.urandom(8 << 20)

    def paced():
        for at in range(0, len(body), 1 << 20):
            yield body[at:at + (1 << 20)]
            time.sleep(0.05)

    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=20)
    for data in (body, paced(), body):
        started = time.monotonic()
        conn.request("POST", "/upload", body=data, headers={"Content-Length": str(len(body))})
        resp = conn.getresponse()
        answer = json.loads(resp.read())
        assert resp.status == 200, answer
        assert answer == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        assert time.monotonic() - started < 8
    conn.close()


def test_routes_status_says_when_no_worker_reports_the_table_it_serves(launcher, upstream,
                                                                       tmp_path):
    etcd = launcher.etcd()
    client = etcd.client()
    gw = serving(launcher, tmp_path, etcd.url, client, upstream, "r", "/r")
    assert gwcli(gw, "routes", "status").returncode == 0
    runtime_dir = runtime_of(gw)
    board = os.path.join(runtime_dir, "workers")
    shutil.rmtree(board)
    open(board, "w").close()            # a file where the board's folder was: none can write
    put(client, "routes", "r2", {"paths": ["/r2"], "upstream": "up"})
    wait_until(lambda: serves(gw, "/r2") == 200)
    wait_until(lambda: "cannot say on the worker board which table this worker serves" in
               gw.log())
    said = gwcli(gw, "routes", "status")
    assert "no worker has said which table it serves" in said.stdout, said
    assert said.returncode == 0, said   # just published: workers may not have applied it yet
    long_ago = time.time() - 30
    for path in glob.glob(f"{runtime_dir}/changes/*.json") + [f"{runtime_dir}/table.json"]:
        os.utime(path, (long_ago, long_ago))
    said = gwcli(gw, "routes", "status")
    assert said.returncode == 1 and "problem: no worker has said which table it serves" in \
        said.stderr and f"{runtime_dir}/workers" in said.stderr, said


def test_consumers_put_refuses_an_api_key_another_consumer_holds(launcher, tmp_path):
    etcd = launcher.etcd()
    conf = etcd_conf(tmp_path, [etcd.url])
    conf["consumers"] = {"static": {"credentials": {"key_auth": {
        "key_hash": hash_key("k-static")}}}}
    cli = SimpleNamespace(conf_path=tmp_path / "cli.toml")     # what gwcli needs of a gateway
    cli.conf_path.write_text(to_toml(conf))

    def put_consumers(*consumers):
        return gwcli(cli, "consumers", "put", "-", stdin=json.dumps([
            {"id": cid, "credentials": {"key_auth": {"key": key}}} for cid, key in consumers]))

    assert put_consumers(("a", "k1")).returncode == 0
    said = put_consumers(("b", "k1"))
    assert said.returncode == 2 and "consumer b: credentials.key_auth: the same secret is " \
        "consumer a's" in said.stderr and "k1" not in said.stderr, said
    assert etcd.client().get("/gw/consumers/b") is None
    assert put_consumers(("a", "k1")).returncode == 0          # its own key, again
    said = put_consumers(("c", "k2"), ("d", "k2"))             # two in one put
    assert said.returncode == 2 and said.stderr.count("the same secret") == 1 and \
        "consumer c: credentials.key_auth: the same secret is consumer d's" in said.stderr, said
    said = put_consumers(("e", "k-static"))                    # the conf file's
    assert said.returncode == 2 and "consumer static's" in said.stderr, said
    assert put_consumers(("a", "k3"), ("b", "k1")).returncode == 0      # a gives k1 up
