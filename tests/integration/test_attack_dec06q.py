"""Attack pass of 2026-12-06 (q): the HTTP/1.1 client edge, for what the gateway routes and
authorises against what the upstream serves. Each test runs a real gateway in front of nginx
(which decodes a path before it picks a location, as Go, Spring and WSGI servers do) or a
loopback upstream that records the request line it got.
"""
import subprocess
import sys

from gwserver.plugins.key_auth import hash_key

from ..conftest import gateway_conf, route
from .test_attack_pass_dec03 import RecordingHttp1
from .test_edge_security import get

KEY = "ak_dec06q_files_key_0123456789"
CONSUMERS = {"ops": {"credentials": {"key_auth": {"key_hash": hash_key(KEY)}}}}


def body_of(answer):
    return answer.partition(b"\r\n\r\n")[2]


def test_a_plus_in_a_protected_path_is_not_bypassed_by_its_escape(launcher):
    """key_auth on "/files/a+b/*rest" (and on "/files/x%2By/*rest"), an open catch-all, nginx
    behind both. nginx decodes %2B to + before it picks a location, so /files/a%2Bb/x is its
    /files/a+b/x; the router kept %2B apart from +, and the open catch-all served the
    protected location without a key. Either spelling of either route now asks for the key."""
    nginx = launcher.nginx("files", (
        "listen 127.0.0.1:{port}; server_name _; "
        'location /files/a+b {{ return 200 "PROTECTED $uri"; }} '
        'location /files/x+y {{ return 200 "PROTECTED $uri"; }} '
        'location / {{ return 200 "PUBLIC $uri"; }}'))
    site = f"http://127.0.0.1:{nginx}"
    gw = launcher.gateway(gateway_conf([
        route("plus", ["/files/a+b/*rest"], site, plugins={"key_auth": {}}),
        route("escaped", ["/files/x%2By/*rest"], site, plugins={"key_auth": {}}),
        route("public", ["/*rest"], site),
    ], consumers=CONSUMERS))
    for target in (b"/files/a+b/x", b"/files/a%2Bb/x", b"/files/a%2bb/x", b"/files/a%2Bb",
                   b"/files/x%2By/q", b"/files/x+y/q"):
        status, answer = get(gw.port, target)
        assert status == 401, (target, body_of(answer)[:200])
    # with the key, the upstream gets the path as the client spelt it (%2B stays escaped:
    # a space to S3 and PHP), and serves the location the route guards
    status, answer = get(gw.port, b"/files/a%2Bb/x", extra=b"X-API-Key: %s\r\n" % KEY.encode())
    assert (status, body_of(answer)) == (200, b"PROTECTED /files/a+b/x"), answer[:300]
    # a segment that only holds the escape is no other route's: the catch-all's, no key
    status, answer = get(gw.port, b"/files/a%2Bbc/x")
    assert status == 200, answer[:300]


def test_a_kept_path_parameter_is_not_bypassed_by_its_escape(launcher):
    """With server.path_parameters = "keep" (for upstreams that do not strip ;parameters), a
    key_auth route on "/files/a;b/*rest": /files/a%3Bb/x is /files/a;b/x to nginx, and went to
    the open catch-all past the key. Both spellings now ask for it."""
    nginx = launcher.nginx("params", (
        "listen 127.0.0.1:{port}; server_name _; "
        'location "/files/a;b/" {{ return 200 "PROTECTED $uri"; }} '
        'location / {{ return 200 "PUBLIC $uri"; }}'))
    site = f"http://127.0.0.1:{nginx}"
    gw = launcher.gateway(gateway_conf([
        route("params", ["/files/a;b/*rest"], site, plugins={"key_auth": {}}),
        route("public", ["/*rest"], site),
    ], consumers=CONSUMERS, server={"path_parameters": "keep"}))
    for target in (b"/files/a;b/x", b"/files/a%3Bb/x", b"/files/a%3bb/x"):
        status, answer = get(gw.port, target)
        assert status == 401, (target, body_of(answer)[:200])
    status, answer = get(gw.port, b"/files/a%3Bb/x", extra=b"X-API-Key: %s\r\n" % KEY.encode())
    assert (status, body_of(answer)) == (200, b"PROTECTED /files/a;b/x"), answer[:300]


def test_strip_prefix_with_a_plus_cuts_the_escaped_spelling_too(launcher):
    """A route on "/svc/a+b/*rest" with strip_prefix "/svc/a+b": a request for
    /svc/a%2Bb/items, which that route takes, reaches the upstream as /items, as
    /svc/a+b/items does (uncut, the upstream got a path it does not serve under that name)."""
    up = RecordingHttp1()
    try:
        gw = launcher.gateway(gateway_conf([
            route("svc", ["/svc/a+b/*rest"], up.url, strip_prefix="/svc/a+b",
                  plugins={"key_auth": {}}),
            route("public", ["/*rest"], up.url),
        ], consumers=CONSUMERS))
        key = b"X-API-Key: %s\r\n" % KEY.encode()
        for target, line in ((b"/svc/a+b/items", "GET /items HTTP/1.1"),
                             (b"/svc/a%2Bb/items?q=1", "GET /items?q=1 HTTP/1.1"),
                             (b"/svc/a%2Bb", "GET / HTTP/1.1"),
                             (b"/svc/a%2Bb/", "GET / HTTP/1.1")):
            status, answer = get(gw.port, target, extra=key)
            assert status == 200, (target, answer[:300])
            assert up.heads[-1].split(b"\r\n")[0].decode() == line, (target, up.heads[-1])
    finally:
        up.close()


def test_check_warns_of_a_route_whose_path_another_takes_in_its_escaped_spelling(tmp_path):
    """Two routes on "/files/a+b" and "/files/a%2Bb" are one path to the router: the second
    (by priority, then id) never serves it. `gwserver check` said so of two routes written
    alike only, and was silent here."""
    conf = tmp_path / "gw.toml"
    conf.write_text(''.join(
        f'[[routes]]\nid = "{id}"\npaths = ["{path}"]\n'
        'upstream = { targets = [{ url = "http://127.0.0.1:9" }] }\n'
        for id, path in (("plus", "/files/a+b"), ("escaped", "/files/a%2Bb"))))
    out = subprocess.run([sys.executable, "-m", "gwserver", "check", "-c", str(conf)],
                         capture_output=True, text=True, timeout=60)
    said = out.stdout + out.stderr
    assert out.returncode == 0, said
    assert 'route plus: paths "/files/a+b" is never served by it: route escaped has the ' \
        'same path' in said, said
