"""What the HTTP/1.1 reader keeps of each request header (ClientConnection.on_header), without
sockets: forwarded as sent, kept for plugins only, or dropped. And what an idle keep-alive
connection keeps of its last request (nothing), with real sockets in a child process."""
import json
import subprocess
import sys
import textwrap
from collections import deque

import pytest

from gwserver.client.http1 import _LOOKED_AT, ClientConnection
from gwserver.core.context import RequestContext
from gwserver.errors import BadRequest, HeadersTooLarge


def reader(trusted_peer=False, trusted_x_forwarded=False, underscores="drop", fields=100,
           field_size=8190):
    conn = ClientConnection.__new__(ClientConnection)
    conn.limits = (8190, fields, field_size)
    _, conn.fields_limit, conn.field_limit = conn.limits
    conn.head_fields = conn.head_size = 0
    conn.current = RequestContext("192.0.2.1", "http")
    conn.queue = deque([conn.current])
    conn.underscores = underscores
    conn.trusted_peer, conn.trusted_x_forwarded = trusted_peer, trusted_x_forwarded
    return conn


def read(conn, *headers):
    for name, value in headers:
        conn.on_header(name, value)
    return conn.current.headers, conn.current.header_map


def test_the_names_looked_at_first_hold_no_underscore():
    """on_header looks a name up in _LOOKED_AT before the underscore rule: the same verdict
    as the rule first only while none of them holds one."""
    assert not [name for name in _LOOKED_AT if b"_" in name]


def test_an_ordinary_header_is_forwarded_and_repeated_ones_are_joined():
    headers, hmap = read(reader(), (b"Accept", b"a"), (b"X-Tag", b"1"), (b"x-tag", b"2"))
    assert headers == [(b"Accept", b"a"), (b"X-Tag", b"1"), (b"x-tag", b"2")]
    assert hmap == {b"accept": b"a", b"x-tag": b"1, 2"}


@pytest.mark.parametrize("trusted", [False, True])
def test_what_the_gateway_writes_itself_is_kept_for_plugins_not_forwarded(trusted):
    conn = reader(trusted_peer=trusted, trusted_x_forwarded=trusted)
    headers, hmap = read(conn, (b"Host", b"a"), (b"Connection", b"keep-alive, X-Drop"),
                         (b"Content-Length", b"3"), (b"X-Forwarded-For", b"10.0.0.1"),
                         (b"X-Consumer-Id", b"admin"))
    assert headers == []
    assert conn.current.host_count == 1
    assert conn.current.connection_tokens == [b"keep-alive", b"x-drop"]
    assert b"x-consumer-id" not in hmap                 # only an auth plugin says it
    assert (b"x-forwarded-for" in hmap) is trusted      # only a trusted proxy's is read


@pytest.mark.parametrize("trusted", [False, True])
def test_what_only_a_trusted_proxy_may_say_is_dropped_from_anyone_else(trusted):
    headers, hmap = read(reader(trusted_peer=trusted), (b"X-Real-IP", b"10.0.0.9"))
    expected = [(b"X-Real-IP", b"10.0.0.9")] if trusted else []
    assert headers == expected and (b"x-real-ip" in hmap) is trusted


@pytest.mark.parametrize("mode", ["drop", "reject", "allow"])
def test_underscored_names(mode):
    conn = reader(underscores=mode)
    if mode == "reject":
        with pytest.raises(BadRequest, match="underscore"):
            read(conn, (b"X_User_Id", b"1"))
        return
    headers, hmap = read(conn, (b"X_User_Id", b"1"))
    assert (headers == [(b"X_User_Id", b"1")]) is (mode == "allow")
    assert (b"x_user_id" in hmap) is (mode == "allow")


def test_trailers_count_against_the_limits_and_are_never_kept():
    conn = reader(fields=2)
    read(conn, (b"Accept", b"a"))
    conn.current.head_done = True
    headers, hmap = read(conn, (b"X-Trailer", b"t"))
    assert headers == [(b"Accept", b"a")] and b"x-trailer" not in hmap
    with pytest.raises(HeadersTooLarge, match="more than 2 header fields"):
        read(conn, (b"X-Trailer-2", b"t"))


def test_a_field_over_its_size_limit_is_named():
    with pytest.raises(HeadersTooLarge, match="X-Big"):
        read(reader(field_size=20), (b"X-Big", b"x" * 20))


IDLE_CHILD = textwrap.dedent("""
    import gc, json, sys
    from gevent import monkey
    monkey.patch_all()                  # as in a worker
    import gevent
    from gevent import socket
    from gwserver.client.http1 import ClientConnection
    from gwserver.core.context import RequestContext
    from gwserver.server.runtime import Runtime
    from gwserver.settings import parse_conf

    conf = parse_conf({"server": {"state_dir": sys.argv[1], "keepalive": 30.0}, "routes": [{
        "id": "r", "paths": ["/*rest"], "plugins": {"redirect": {"uri": "/elsewhere"}},
        # never asked: the plugin answers before the request would be sent on
        "upstream": {"targets": [{"url": "http://127.0.0.1:9"}]}}]})
    runtime = Runtime(conf, 10)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname())
    sock, addr = listener.accept()
    conn = ClientConnection(runtime, sock, addr)
    gevent.spawn(conn.serve)
    body = b"x" * 40000
    client.sendall(b"POST /upload HTTP/1.1\\r\\nHost: h\\r\\nContent-Length: %d\\r\\n\\r\\n"
                   % len(body) + body)
    answer = b""
    while b"\\r\\n\\r\\n" not in answer:
        answer += client.recv(65536)
    for _ in range(500):                # back in read_head, waiting for the next request
        if conn in runtime.idle_clients:
            break
        gevent.sleep(0.01)
    gc.collect()
    held = [(r.method, r.path, r.body_size) for r in gc.get_objects()
            if isinstance(r, RequestContext)]
    print(json.dumps({"answer": answer.split(b"\\r\\n\\r\\n")[0].decode(),
                      "idle": conn in runtime.idle_clients, "held": held}))
""")


def test_an_idle_keep_alive_connection_holds_no_request(tmp_path):
    """A review found that ClientConnection.current kept the last request (its headers, and a
    body a plugin answered before it was sent on) for as long as a keep-alive connection sat
    idle, and serve()'s own ``req`` kept it too while read_head waited. A real connection (a
    worker's Runtime, loopback sockets, gevent as in a worker: in a child process) answered by
    a plugin, then idle: no request of it is alive."""
    out = subprocess.run([sys.executable, "-c", IDLE_CHILD, str(tmp_path)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.splitlines()[-1])
    assert seen["answer"].startswith("HTTP/1.1 301") and \
        "Connection: keep-alive" in seen["answer"], seen
    assert seen["idle"], seen
    assert seen["held"] == [], f"an idle connection still holds {seen['held']}"
