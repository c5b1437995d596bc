"""Attack pass (Dec 5, m): a review of the newest commit (etcd and the shared table), as an
attacker.

Defects found (each test below fails on the code before its fix):

1. An etcd endpoint that is not etcd (a misrouted port, a proxy or WAF whose error page
   quotes the request, a debug echo service) answers ``authenticate`` with the request it
   got. Since a failed ``authenticate`` says why, that answer was quoted in the error, and
   the request is ``{"name": USER, "password": PASSWORD}``: the etcd password went into the
   log, into status.json's new ``error``, ``/admin/config`` (its ``sync`` part, to anyone
   with the admin listener) and ``gwserver routes status``. The reason now quoted is etcd's
   own error message, never a body that is not etcd's; and a secret of ours (the password,
   the token) is masked out of any error text an endpoint's answer puts there.
2. A new route refused for a misspelt key_auth option, whose paths name one position twice
   (``/admin/:id`` and ``/admin/:name/logs``): its fence, the same paths, was refused whole
   by the router (after a compile a path: the last commit's speed-up undone), so nothing
   held them, and the public catch-all answered them 200 with no key at all. A fence's
   parameters are never read: its paths now take one name a position (the first given).
"""
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ..conftest import route, wait_until
from .test_etcd import UP, all_workers_at, etcd_conf, put, runtime_of, serves

PASSWORD = "hunter2-Sesame"


TOKEN = "tok.0123456789abcdef.42"


class Echo(BaseHTTPRequestHandler):
    """Not etcd: a 400 page that quotes the request, as a WAF or a debug service does (or,
    with ``server.token``, a member that authenticates and whose proxy's 502 page quotes the
    next call's headers)."""

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.server.token and self.path == "/v3/auth/authenticate":
            return self.answer(200, json.dumps({"header": {}, "token": TOKEN}).encode())
        page = b"bad request: " + body + b" (" + \
            (self.headers.get("Authorization") or "").encode() + b")"
        self.answer(502 if self.server.token else 400, page)

    def answer(self, code, page):
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, *args):
        pass


@pytest.fixture
def echo_endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    server.token = False
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def url(server):
    return f"http://127.0.0.1:{server.server_address[1]}"


@pytest.mark.parametrize("secret", [PASSWORD, TOKEN])
def test_an_endpoint_that_quotes_the_request_never_shows_the_etcd_password(
        launcher, echo_endpoint, tmp_path, secret):
    echo_endpoint.token = secret == TOKEN
    gw = launcher.gateway(etcd_conf(tmp_path, [url(echo_endpoint)], workers=1,
                                    username="root", password=PASSWORD))
    said = "HTTP 502 bad request: " if secret == TOKEN else \
        "etcd authentication failed: HTTP 400"
    assert wait_until(lambda: said in gw.log(), timeout=10), gw.log()[-2000:]
    status_path = os.path.join(runtime_of(gw), "status.json")
    assert wait_until(lambda: said in open(status_path).read(), timeout=5)
    run = subprocess.run([sys.executable, "-m", "gwserver", "routes", "-c",
                          str(gw.conf_path), "status"], capture_output=True, text=True,
                         timeout=60)
    assert said in run.stderr, run.stderr                   # why, still said
    code, config = gw.admin_get("/admin/config")
    assert code == 200 and said in json.loads(config)["sync"]["error"]
    for where, text in (("log", gw.log()), ("status.json", open(status_path).read()),
                        ("routes status", run.stdout + run.stderr),
                        ("/admin/config", config.decode())):
        assert secret not in text, (where, text[-2000:])


def refused_beside_a_public_route(launcher, upstream, tmp_path, paths, key_auth):
    """A gateway whose public catch-all route serves beside an etcd route on ``paths`` that
    is refused (its key_auth config ``key_auth``), once every worker has the refusal."""
    etcd = launcher.etcd()
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url],
                                    [route("public", ["/*rest"], upstream.url)], workers=1))
    client = etcd.client()
    put(client, "upstreams", "up", UP(upstream))
    revision = put(client, "routes", "private", {
        "paths": paths, "upstream": "up", "plugins": {"key_auth": key_auth}})
    wait_until(lambda: all_workers_at(gw, revision))
    assert serves(gw, "/elsewhere") == 200
    return gw


def test_a_refused_route_whose_paths_name_a_position_twice_holds_them(launcher, upstream,
                                                                      tmp_path):
    gw = refused_beside_a_public_route(launcher, upstream, tmp_path,
                                       ["/admin/:id", "/admin/:name/logs"], {"hedaer": "X-Key"})
    assert {serves(gw, path) for path in ("/admin/1", "/admin/1/logs")} == {503}
