"""Review dec08g of 2801edf (TLS at the edge and to upstreams), against real gateways,
upstreams and Redis on loopback. Each test was seen failing before its fix."""
import os
import signal

from gwserver import files
from gwserver.settings import load_conf

from ..conftest import check_conf, gateway_conf, route, to_toml, wait_until
from ..pki import CA


# -- 1. a local tls file problem is no target's failure ----------------------------------------

def test_unloadable_tls_files_blame_no_target_and_leave_no_connection(launcher, tmp_path):
    """The gateway's own ca_file spoilt under it (or its client key_file replaced by one that
    does not match cert_file) was booked against the upstream as a connect failure (passive
    checks counted it, it was retried; with more targets each was ejected), and the TCP
    connection urllib3 opened before it read the files was left open: the upstream waited
    on its handshake, and once the file was put right the next request was a 502 "handshake
    timed out". Now a 502 that blames no target, the connection closed at once."""
    ca = CA(tmp_path)
    cert, key, _ = ca.issue("upstream")
    client_cert, client_key, _ = ca.issue("gateway", client=True)
    other_key = ca.issue("other")[1]
    up = launcher.upstream("tls", tls=(str(cert), str(key)))
    bundle, key_file = tmp_path / "upstream-ca.pem", tmp_path / "client.key"
    good, good_key = ca.cert_path.read_bytes(), client_key.read_bytes()
    bundle.write_bytes(good)
    key_file.write_bytes(good_key)
    tls = {"ca_file": str(bundle)}
    routes = [{**route(name, [f"/{name}/*r"], up.url, strip_prefix=f"/{name}"),
               "upstream": {"targets": [{"url": up.url}], "protocol": protocol, "tls": conf,
                            "passive": {"consecutive_failures": 1, "eject_for": 60}}}
              for name, protocol, conf in (
                  ("h1", "http1", tls), ("h2", "h2", tls),
                  ("key", "http1", {**tls, "cert_file": str(client_cert),
                                    "key_file": str(key_file)}))]
    gw = launcher.gateway(gateway_conf(routes))
    key_file.write_bytes(other_key.read_bytes())
    assert gw.request("GET", "/key/echo")[0].status == 502
    bundle.write_text("not a certificate\n")
    for name in ("h1", "h2"):
        assert gw.request("GET", f"/{name}/echo")[0].status == 502
    log = gw.log()
    assert "tls files cannot be loaded (tls.cert_file:" in log, log[-2500:]
    # (each names the file: dec09b)
    assert f"tls files cannot be loaded (tls.ca_file: {bundle} is not PEM" in log, log[-2500:]
    assert "eject" not in log and "retrying" not in log, log[-2500:]
    bundle.write_bytes(good)        # (the upstream speaks HTTP/1.1 only)
    key_file.write_bytes(good_key)
    for name in ("h1", "key"):
        assert gw.request("GET", f"/{name}/echo")[0].status == 200, gw.log()[-2500:]


# -- 2. a rediss:// URL's TLS files, checked as [etcd]'s are --------------------------------------

def test_check_names_a_rediss_url_tls_file_redis_py_cannot_load(tmp_path):
    """redis-py loads a rediss:// URL's ssl_ca_certs (and ssl_certfile, ssl_keyfile) at each
    connect: one missing, a text file, or a certificate its key does not match passed
    `check` (and a start, and a reload), then every call of every worker to Redis failed
    on it, each rate limit and breaker on its on_store_error."""
    ca = CA(tmp_path)
    cert, _, _ = ca.issue("gateway", client=True)
    other_key = ca.issue("other")[1]
    (tmp_path / "text.pem").write_text("not a certificate\n")
    cases = {"missing": (f"ssl_ca_certs={tmp_path}/missing.pem",
                         f"redis.url: ssl_ca_certs: {tmp_path}/missing.pem does not exist"),
             "text": (f"ssl_ca_certs={tmp_path}/text.pem",
                      f"redis.url: ssl_ca_certs: {tmp_path}/text.pem is not PEM"),
             "mismatch": (f"ssl_ca_certs={ca.cert_path}&ssl_certfile={cert}&"
                          f"ssl_keyfile={other_key}",
                          f"redis.url: ssl_certfile: {cert} and redis.url: ssl_keyfile: "
                          f"{other_key} make no client certificate")}
    for name, (query, said_wanted) in cases.items():
        code, said = check_conf(tmp_path, gateway_conf(
            [route("r", ["/*rest"], "http://127.0.0.1:9")],
            redis={"url": f"rediss://127.0.0.1:6380/0?{query}"}))
        assert code == 2 and said_wanted in said, (name, said)
    # (a good one passes: test_redis_urls_dec05n's control)


# -- 3. a system-sized CA bundle in many routes, each with a client certificate of its own ------

def test_a_bundle_named_by_many_routes_with_client_certificates_is_loaded_once(tmp_path,
                                                                               monkeypatch):
    """The check of loadable tls files kept its word per (ca_file, cert_file, key_file): the
    system bundle (~30 ms to load; a large one ~100 ms) was loaded again for each route with
    a client certificate of its own, 200 such routes took 6 s to check (as long in the sync
    process, and then in each worker applying the table, blocked). Now the bundle's word is
    kept apart from each pair's: it is loaded once, whatever the number of routes. (Counted,
    not timed: a timed check failed on a busy host.)"""
    ca = CA(tmp_path)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(ca.cert_path.read_bytes() * 40)
    cert, key, _ = ca.issue("gateway", client=True)
    routes = []
    for i in range(60):
        (tmp_path / f"c{i}.pem").write_bytes(cert.read_bytes())
        (tmp_path / f"k{i}.pem").write_bytes(key.read_bytes())
        routes.append({**route(f"r{i}", [f"/r{i}/*x"], "https://127.0.0.1:9"),
                       "upstream": {"targets": [{"url": "https://127.0.0.1:9"}], "tls": {
                           "ca_file": str(bundle),
                           "cert_file": str(tmp_path / f"c{i}.pem"),
                           "key_file": str(tmp_path / f"k{i}.pem")}}})
    loads = []
    real = files._ca_problem
    monkeypatch.setattr(files, "_ca_problem", lambda path: loads.append(path) or real(path))
    monkeypatch.setattr(files, "_CLIENT_TLS_CHECKED", {})
    path = tmp_path / "many.toml"
    path.write_text(to_toml(gateway_conf(routes)))
    conf = load_conf(str(path))
    assert len(conf.static_routes) == 60
    assert loads == [str(bundle)], len(loads)



# -- 4. a tls file caught half-written as a worker starts -----------------------------------------

def test_a_worker_started_while_a_ca_file_is_rewritten_serves_and_recovers(launcher, upstream,
                                                                           tmp_path):
    """etcd mode: each worker compiles the static routes and the published ones itself, and
    refused any whose ca_file OpenSSL could not load at that moment (`cp` rewriting it in
    place leaves it empty a while). A worker (re)started then died at boot on the static
    route, again at each respawn, no route served; the route from etcd, refused in it
    alone, answered 503 there after the file was whole again. Workers trust the check of
    the master and the sync process now: the file's routes fail while it is bad, no more."""
    from .test_etcd import etcd_conf, put
    up, bundle, good = tls_upstream_and_bundle(launcher, tmp_path)
    tls_upstream = {"targets": [{"url": up.url}], "tls": {"ca_file": str(bundle)}}
    etcd = launcher.etcd()
    gw = launcher.gateway(etcd_conf(tmp_path, [etcd.url], [
        route("ok", ["/ok/*r"], upstream.url, strip_prefix="/ok"),
        {**route("s", ["/s/*r"], up.url, strip_prefix="/s"), "upstream": tls_upstream}],
        workers=1))
    put(etcd.client(), "routes", "d", {"paths": ["/d/*r"], "strip_prefix": "/d",
                                       "upstream": tls_upstream})
    wait_until(lambda: gw.request("GET", "/d/echo")[0].status == 200, timeout=10)
    bundle.write_bytes(b"")             # caught between cp's truncate and its write
    old = set(gw.serving_worker_pids())
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: set(gw.serving_worker_pids()) - old, timeout=3), \
        gw.log()[-3000:]
    assert gw.request("GET", "/ok/echo", timeout=3)[0].status == 200
    bundle.write_bytes(good)
    for path in ("/s/echo", "/d/echo"):
        assert gw.request("GET", path, timeout=3)[0].status == 200, (path, gw.log()[-3000:])


def tls_upstream_and_bundle(launcher, tmp_path):
    """An upstream over TLS and the CA bundle its certificate verifies with, written to a
    file a test may spoil: -> (upstream, bundle path, the bundle's good bytes)"""
    ca = CA(tmp_path)
    cert, key, _ = ca.issue("upstream")
    up = launcher.upstream("tls", tls=(str(cert), str(key)))
    bundle = tmp_path / "upstream-ca.pem"
    good = ca.cert_path.read_bytes()
    bundle.write_bytes(good)
    return up, bundle, good
