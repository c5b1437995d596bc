"""Review of 2da5bb1 (2026-12-06, t): a route's static segment matches "%2B" as "+" and "%3B"
as ";". What still read the two spellings as two paths: the sync process's note of a route
written straight to etcd that another takes, a route naming one position twice across the
spellings, and a strip_prefix written in the other spelling. Real gateways, a real etcd, the
`gwserver check` command.
"""
import subprocess
import sys

import pytest

from ..conftest import gateway_conf, route, wait_until
from .test_attack_pass_dec03 import RecordingHttp1
from .test_edge_security import get
from .test_etcd import UP, all_workers_at, etcd_conf, put, serves


@pytest.fixture
def etcd(launcher):
    return launcher.etcd()


# (the sync process's note of a route on the other spelling: test_etcd.py's
# test_a_route_written_straight_to_etcd_that_takes_a_path_is_said_in_the_journal["%2B"])


def _check(tmp_path, routes_toml):
    conf = tmp_path / "gw.toml"
    conf.write_text(routes_toml)
    out = subprocess.run([sys.executable, "-m", "gwserver", "check", "-c", str(conf)],
                         capture_output=True, text=True, timeout=60)
    return out.returncode, out.stdout + out.stderr


def test_one_route_naming_a_position_twice_across_the_spellings_is_refused(tmp_path):
    """A route on "/files/a+b/*rest" and "/files/a%2Bb/*path": one position to the router,
    named twice. Written alike such a route is refused; across the spellings it was taken,
    and the router bound the last name for both ("/files/a+b/q" had $param_path = "q" and no
    $param_rest, so a rewrite to "/store/$param_rest" sent every request to /store/)."""
    upstream = 'upstream = { targets = [{ url = "http://127.0.0.1:9" }] }\n'
    code, said = _check(tmp_path, '[[routes]]\nid = "files"\n'
                        'paths = ["/files/a+b/*rest", "/files/a%2Bb/*path"]\n' + upstream)
    assert code != 0, said
    assert "*path in '/files/a%2Bb/*path' conflicts with *rest of another of its paths " \
           "at the same position" in said, said
    code, said = _check(tmp_path, '[[routes]]\nid = "files"\n'
                        'paths = ["/files/a+b/:id", "/files/a%2Bb/:name/logs"]\n' + upstream)
    assert code != 0 and ":name in '/files/a%2Bb/:name/logs' conflicts with :id" in said, said


def test_such_a_route_put_in_etcd_is_refused_and_fenced(launcher, etcd, upstream, tmp_path):
    """The same route written to etcd, an open catch-all beside it: it was taken (binding one
    name for both), and is now refused, its paths fenced (503) as a refused route's are, in
    either spelling, not left to the catch-all (the fence names each position once as the
    router keys it: named twice, the router refused the fence too, and the catch-all served
    every path of the route without its plugins)."""
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], []))
    client = etcd.client()
    put(client, "routes", "public", {"paths": ["/*rest"], "priority": -1,
                                     "upstream": UP(upstream)})
    revision = put(client, "routes", "files", {
        "paths": ["/files/a+b/:id", "/files/a%2Bb/:name/logs"], "upstream": UP(upstream)})
    wait_until(lambda: all_workers_at(gw, revision))
    wait_until(lambda: "rejected /gw/routes/files" in gw.log(), timeout=5)
    assert ":name in '/files/a%2Bb/:name/logs' conflicts with :id" in gw.log(), gw.log()[-2000:]
    for path in ("/files/a+b/1", "/files/a%2Bb/1", "/files/a+b/1/logs", "/files/a%2Bb/1/logs"):
        assert serves(gw, path) == 503, path
    assert serves(gw, "/elsewhere") == 200


def test_a_strip_prefix_in_the_other_spelling_of_the_route_path_is_taken(launcher):
    """The route on "/svc/a+b/*rest" takes "/svc/a%2Bb/..." and its strip_prefix cuts both
    spellings, but a strip_prefix written "/svc/a%2Bb" was refused as "not a prefix" of the
    path (the gateway did not start). It is taken and cuts either spelling."""
    up = RecordingHttp1()
    try:
        gw = launcher.gateway(gateway_conf([
            route("svc", ["/svc/a+b/*rest"], up.url, strip_prefix="/svc/a%2Bb"),
        ]))
        for target, line in ((b"/svc/a+b/items", "GET /items HTTP/1.1"),
                             (b"/svc/a%2Bb/items", "GET /items HTTP/1.1"),
                             (b"/svc/a%2bb", "GET / HTTP/1.1")):
            status, answer = get(gw.port, target)
            assert status == 200, (target, answer[:300])
            assert up.heads[-1].split(b"\r\n")[0].decode() == line, (target, up.heads[-1])
    finally:
        up.close()
