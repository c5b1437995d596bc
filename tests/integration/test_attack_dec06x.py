"""Review of d42dba2, 7ab583d, 3fdc6b4 and 9412095 (attack pass dec06x).

Defects found and fixed, each pinned below (each test seen failing before its fix):

1. Behind a trusted proxy that speaks Forwarded (``real_ip_header = "Forwarded"``), a
   client's X-Forwarded-Scheme and -Prefix are dropped (such a proxy may pass them through
   unread), but their other spellings d42dba2 took up, X-Scheme (Tornado reads it before
   X-Forwarded-Proto) and X-Script-Name (the Flask recipe's SCRIPT_NAME), passed as the client
   wrote them: a plain-http client said ``X-Scheme: https`` to the upstream. So did the
   other spellings of -Ssl and -Host 88134b6 took up: Front-End-Https, X-Host, X-Original-Host.
2. A gRPC-Web call whose Content-Length alone is past grpc_web.max_body_size (and within
   request_buffer_size) got ``100 Continue`` and had its body read before its 413; a route's
   own limit is refused on the Content-Length before any 100 Continue.
3. 7ab583d's sibling: a Redis Sentinel URL's db of "²" (str.isdigit() takes it, int() does
   not) passed `gwserver check` and the start, and every worker died as it started
   (state.store's int(db)), those of each reload too. A route's retry.on of "²" was refused
   as "a value could not be checked: ValueError", naming no route or field.
"""
import socket
import subprocess
import sys

from ..conftest import gateway_conf, route, to_toml
from ..h2client import RawH2
from .test_attack_dec06v import arrived, ask
from .test_attack_pass_dec03 import raw_request
from .test_attack_pass_dec04b import h2_gateway, h2_ok, h2_scripts  # noqa: F401 (fixture)


def test_behind_a_forwarded_proxy_a_clients_x_scheme_and_x_script_name_are_dropped(
        launcher, h1_up):
    gw = launcher.gateway(gateway_conf(
        [route("all", ["/p"], h1_up.url)],
        server={"trusted_proxies": ["127.0.0.1/32"], "real_ip_header": "Forwarded"},
        http2={"h2c": True}))
    ask(gw.port, ["https", "/shop", "ssl"])
    # was: ["https", "/shop", None], the client's X-Scheme and X-Script-Name as it sent them
    assert arrived(h1_up) == [None] * 3, h1_up.heads[-1]
    # and the other spellings of -Ssl and -Host, beside a Forwarded that says proto=http
    answer = raw_request(gw.port, b"GET /p HTTP/1.1\r\nHost: good.example\r\n"
                         b"Forwarded: for=192.0.2.1;proto=http\r\nFront-End-Https: on\r\n"
                         b"X-Host: evil.example\r\nX-Original-Host: evil.example\r\n"
                         b"Connection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    sent = [h1_up.header(-1, name) for name in ["Front-End-Https", "X-Host", "X-Original-Host"]]
    assert sent == [[]] * 3, h1_up.heads[-1]        # was: on, evil.example, evil.example
    assert h1_up.header(-1, "X-Forwarded-Proto") == ["http"], h1_up.heads[-1]
    client = RawH2(gw.port)                     # an HTTP/2 client alike
    try:
        sid = client.request("/p", authority="good.example",
                             headers=[("x-scheme", "https"), ("x-host", "evil.example")])
        assert client.response(sid)[0] == 200
    finally:
        client.close()
    assert h1_up.header(-1, "X-Scheme") == h1_up.header(-1, "X-Host") == [], h1_up.heads[-1]


def test_a_grpc_web_content_length_past_its_limit_gets_no_100_continue(launcher, h2_scripts):
    gw = h2_gateway(launcher, h2_scripts({b"/p.S/M": h2_ok}), {"plugins": {"grpc_web": {"max_body_size": 1000}}})
    with socket.create_connection(("127.0.0.1", gw.port), timeout=3) as sock:
        sock.sendall(b"POST /p.S/M HTTP/1.1\r\nHost: gw\r\nContent-Type: application/grpc-web\r\n"
                     b"Content-Length: 2000\r\nExpect: 100-continue\r\n\r\n")
        try:
            answer = sock.recv(4096)
        except TimeoutError:
            answer = b"(nothing in 3 s)"
        # was: "HTTP/1.1 100 Continue", then the 2000 bytes read, then the 413 (to a gRPC-Web
        # call: grpc-status 8, test_fix_dec07b)
        assert answer.startswith(b"HTTP/1.1 200 ") and b"grpc-status:8" in answer, answer[:200]
        # the body unread: the connection ends (its bytes are no next request)
        assert b"connection: close" in answer.lower(), answer[:300]

    # the control: exactly at the limit, Expect: 100-continue is answered, the call goes on
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(b"POST /p.S/M HTTP/1.1\r\nHost: gw\r\nContent-Type: application/grpc-web\r\n"
                     b"Content-Length: 1000\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(b"\0" * 1000)
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]


def test_a_sentinel_db_int_cannot_read_is_refused_by_check(tmp_path):
    path = tmp_path / "gw.toml"
    for db in ["\u00b2", "9" * 5000]:
        path.write_text(to_toml(gateway_conf(
            [route("r", ["/*rest"], "http://127.0.0.1:9")],
            redis={"url": f"redis+sentinel://127.0.0.1:26379/mymaster/{db}"})), "utf-8")
        run = subprocess.run([sys.executable, "-m", "gwserver", "check", "-c", str(path)],
                             capture_output=True, text=True, timeout=60)
        # was: "ok" (returncode 0), then every worker died on int(db) as it started
        assert run.returncode != 0, run.stdout
        assert "redis.url: needs the master's name" in run.stderr, run.stderr[-500:]


def test_a_retry_status_of_a_superscript_digit_is_named(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text(to_toml(gateway_conf([route("r", ["/*rest"], "http://127.0.0.1:9",
                                                retry={"on": ["\u00b2"]})])), "utf-8")
    run = subprocess.run([sys.executable, "-m", "gwserver", "check", "-c", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0, run.stdout
    # was: "a value could not be checked: ValueError: invalid literal for int()"
    assert "retry.on" in run.stderr and "must be connect" in run.stderr, run.stderr[-500:]
