"""SIGHUP that adds, moves or removes a listener (server, admin, TLS) applies it; a bind that
fails refuses the reload and the gateway goes on serving (issue 17, part 1)."""
import http.client
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import tomllib

import pytest

from ..conftest import free_port, gateway_conf, listens_on, route, to_toml, wait_until
from ..pki import CA


def answers(port, path="/echo", ca=None):
    """The HTTP status on ``port`` (HTTPS when ``ca``), or None if nothing accepts there."""
    try:
        if ca is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        else:
            context = ssl.create_default_context(cafile=str(ca.cert_path))
            conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=context)
        conn.request("GET", path)
        status = conn.getresponse().status
        conn.close()
        return status
    except ConnectionRefusedError:
        return None


def refused(port):
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def workers(gw):
    return {pid for pid in gw.worker_pids() if b"worker" in _cmdline(pid)}


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def reload(gw, change, count=None):
    """Rewrite the conf with ``change(conf)``, SIGHUP, and wait until a new generation of
    workers alone serves. Returns the new worker pids."""
    conf = tomllib.loads(gw.conf_path.read_text())
    change(conf)
    gw.conf_path.write_text(to_toml(conf))
    before = workers(gw)
    os.kill(gw.pid, signal.SIGHUP)
    count = count or conf["server"].get("workers", 1)
    return wait_until(lambda: (now := workers(gw)) and not now & before and len(now) == count
                      and now, timeout=30)


def refused_reload(gw, change, message):
    """Rewrite the conf, SIGHUP, wait for ``message`` in the log; the workers must not move."""
    conf = tomllib.loads(gw.conf_path.read_text())
    # the gateway answers once one worker is up: wait for the whole generation, or a late
    # sibling's boot would look like a wrongly started worker
    count = conf["server"].get("workers", 1)
    before = wait_until(lambda: (now := workers(gw)) and len(now) == count and now, timeout=30)
    change(conf)
    gw.conf_path.write_text(to_toml(conf))
    seen = gw.log().count(message)
    os.kill(gw.pid, signal.SIGHUP)
    wait_until(lambda: gw.log().count(message) > seen, timeout=20)
    time.sleep(0.5)                     # a wrongly started new generation would show by now
    assert workers(gw) == before
    assert gw.proc.poll() is None


@pytest.fixture
def ca(tmp_path):
    ca = CA(tmp_path)
    ca.leaf = ca.issue("gw")
    return ca


def tls_section(ca, port):
    cert, key, _ = ca.leaf
    return {"bind": [f"127.0.0.1:{port}"], "certificates": [{"cert": str(cert),
                                                              "key": str(key)}]}


def test_moving_the_admin_listener_then_reloading_again_keeps_serving(start_gateway, upstream):
    """The issue's report: admin A -> B, then SIGHUP with no change, then with a change."""
    gw = start_gateway(gateway_conf([route("e", ["/echo"], upstream.url)], workers=2))
    old_admin, new_admin = gw.admin_port, free_port()
    reload(gw, lambda conf: conf["admin"].update(bind=f"127.0.0.1:{new_admin}"))
    assert answers(new_admin, "/-/healthz") == 200 and refused(old_admin)
    reload(gw, lambda conf: None)
    reload(gw, lambda conf: conf["server"].update(workers=3))
    assert gw.proc.poll() is None
    assert answers(gw.port) == 200 and answers(new_admin, "/-/healthz") == 200
    assert "Connection in use" not in gw.log() and "Can't connect" not in gw.log()


class Load:
    """Keep-alive GETs from ``threads`` threads until stopped; counts answers and failures."""

    def __init__(self, port, threads=4):
        self.port, self.stop, self.ok, self.failures = port, threading.Event(), 0, []
        self.threads = [threading.Thread(target=self.run) for _ in range(threads)]
        for thread in self.threads:
            thread.start()

    def run(self):
        conn = None
        while not self.stop.is_set():
            try:
                conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", "/echo/load")
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    self.failures.append(resp.status)
                else:
                    self.ok += 1
                if resp.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(repr(exc))
                conn = None

    def finish(self):
        self.stop.set()
        for thread in self.threads:
            thread.join(15)
        return self.ok, self.failures


def test_many_listener_changes_under_load_fail_no_request(start_gateway, upstream, ca):
    """Nine reloads in a row, each adding, moving or removing a server, admin or TLS
    listener, while four clients keep the main port busy: not one request fails."""
    gw = start_gateway(gateway_conf([route("e", ["/echo"], upstream.url, prefix=True)],
                                    workers=2, server={"keepalive": 2.0}))
    main = f"127.0.0.1:{gw.port}"
    extra, admin2, tls1, tls2 = free_port(), free_port(), free_port(), free_port()
    steps = [   # (change, ports that must answer afterwards: {port: path or (path, ca)}, gone)
        (lambda c: c["server"].update(bind=[main, f"127.0.0.1:{extra}"]),
         {extra: "/echo"}, []),
        (lambda c: c["admin"].update(bind=f"127.0.0.1:{admin2}"),
         {admin2: "/-/healthz"}, [gw.admin_port]),
        (lambda c: c.update(tls=tls_section(ca, tls1)), {tls1: ("/echo", ca)}, []),
        (lambda c: None, {extra: "/echo", admin2: "/-/healthz", tls1: ("/echo", ca)}, []),
        (lambda c: c["tls"].update(bind=[f"127.0.0.1:{tls2}"]), {tls2: ("/echo", ca)}, [tls1]),
        (lambda c: c["server"].update(bind=[main]), {}, [extra]),
        (lambda c: c["admin"].update(bind=f"127.0.0.1:{gw.admin_port}"),
         {gw.admin_port: "/-/healthz"}, [admin2]),
        (lambda c: c.pop("tls"), {}, [tls2]),
        (lambda c: c["server"].update(workers=3), {gw.admin_port: "/-/healthz"}, []),
    ]
    load = Load(gw.port)
    try:
        time.sleep(0.5)
        for change, serving, gone in steps:
            reload(gw, change)
            for port, path in serving.items():
                path, tls_ca = path if isinstance(path, tuple) else (path, None)
                assert answers(port, path, tls_ca) == 200, (port, path)
            for port in gone:       # old workers have exited: nothing holds the socket
                wait_until(lambda: refused(port), timeout=10)
        time.sleep(0.5)
    finally:
        ok, failures = load.finish()
    assert failures == [] and ok > 200, (ok, failures[:5])
    assert gw.proc.poll() is None
    assert gw.log().count("closing listener") == 5


@pytest.mark.parametrize("role", ["server", "admin", "tls"])
def test_a_reload_onto_a_taken_port_is_refused_and_the_gateway_serves_on(
        start_gateway, upstream, ca, role):
    gw = start_gateway(gateway_conf([route("e", ["/echo"], upstream.url)], workers=2))
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    bind = f"127.0.0.1:{port}"

    def change(conf):
        conf["routes"].append(route("added", ["/added"], upstream.url))
        if role == "server":
            conf["server"]["bind"].append(bind)
        elif role == "admin":
            conf["admin"]["bind"] = bind
        else:
            conf["tls"] = tls_section(ca, port)
    try:
        refused_reload(gw, change, f"reload refused: cannot listen on the {role} address "
                                   f"{bind}: Address already in use")
        # the previous configuration (no /added) and listeners serve on
        assert answers(gw.port) == 200 and answers(gw.port, "/added") == 404
        assert answers(gw.admin_port, "/-/healthz") == 200
    finally:
        taken.close()
    reload(gw, lambda conf: None)       # the port is free now: the same conf applies
    assert answers(gw.port, "/added") == 200
    assert answers(port, "/-/healthz" if role == "admin" else "/echo",
                   ca if role == "tls" else None) == 200
    if role == "admin":
        wait_until(lambda: refused(gw.admin_port), timeout=10)
    assert "Connection in use" not in gw.log()


def has_ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


def answers_on_ipv6(port):
    conn = http.client.HTTPConnection("::1", port, timeout=5)
    try:
        conn.request("GET", "/echo")
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback on this host")
def test_an_ipv4_and_the_ipv6_wildcard_on_one_port_both_listen(launcher, upstream, tmp_path):
    """nginx's `listen 8080; listen [::]:8080;`: `[::]` beside an IPv4 address on its port
    is bound IPv6-only. It was bound dual-stack, took the IPv4 port too, and the gateway
    could not start (Address already in use, five tries, exit 1: a restart loop under
    systemd)."""
    port = free_port()
    conf = gateway_conf([route("e", ["/echo"], upstream.url)],
                        server={"bind": [f"127.0.0.1:{port}", f"[::]:{port}"],
                                "state_dir": str(tmp_path / "state")},
                        admin={"bind": f"127.0.0.1:{free_port()}"})
    path = tmp_path / "dual.toml"
    path.write_text(to_toml(conf))
    with open(tmp_path / "dual.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gwserver", "run", "-c", str(path)],
                                stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
                                start_new_session=True)
    launcher.started.append(proc)           # stopped by the launcher, whatever happens
    wait_until(lambda: proc.poll() is not None or listens_on(proc.pid, port), timeout=20)
    assert proc.poll() is None, (tmp_path / "dual.log").read_text()[-800:]
    wait_until(lambda: answers(port) == 200, timeout=20)
    assert answers_on_ipv6(port) == 200


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback on this host")
def test_adding_ipv4_beside_a_dual_stack_listener_is_refused_naming_why(start_gateway,
                                                                       upstream):
    """`[::]:P` alone is dual-stack (IPv4 clients too); a reload adding 127.0.0.1:P cannot
    bind beside it, and the refusal says which listener holds the port and what to do."""
    other = free_port()
    gw = start_gateway(gateway_conf([route("e", ["/echo"], upstream.url)]),
                       extra_binds=[f"[::]:{other}"])
    assert answers(other) == 200 and answers_on_ipv6(other) == 200
    refused_reload(gw, lambda conf: conf["server"]["bind"].append(f"127.0.0.1:{other}"),
                   f"reload refused: cannot keep the server address [::]:{other}: the listener "
                   f"on [::]:{other}, bound dual-stack, holds IPv4 port {other} too: restart "
                   f"to listen on both")
    assert answers(other) == 200 and answers_on_ipv6(other) == 200


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback on this host")
def test_removing_the_ipv4_sibling_of_an_ipv6_only_listener_is_refused(start_gateway, upstream):
    """A review: [::]:P bound IPv6-only beside 127.0.0.1:P was kept as it was when the IPv4
    address went away, and IPv4 clients were refused on P, the reload said complete."""
    port = free_port()
    gw = start_gateway(gateway_conf([route("e", ["/echo"], upstream.url)]),
                       extra_binds=[f"127.0.0.1:{port}", f"[::]:{port}"])
    assert answers(port) == 200 and answers_on_ipv6(port) == 200
    refused_reload(gw, lambda conf: conf["server"]["bind"].remove(f"127.0.0.1:{port}"),
                   f"reload refused: cannot keep the server address [::]:{port}: the listener "
                   f"on [::]:{port} is bound IPv6-only")
    assert answers(port) == 200 and answers_on_ipv6(port) == 200


def listen_backlog(port):
    """The accept-queue limit of the listener on 127.0.0.1:port (ss's Send-Q)."""
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True,
                         check=True).stdout
    return next(int(line.split()[2]) for line in out.splitlines()
                if line.split()[3] == f"127.0.0.1:{port}")


def test_a_reload_applies_a_new_backlog_to_the_kept_listener(start_gateway, upstream):
    """A kept listener kept its backlog while the log said "reload complete" (an operator's
    pass: 2048 -> 16, ss still showed 2048): listen() again on it sets the new one."""
    gw = start_gateway(gateway_conf([route("e", ["/echo"], upstream.url)],
                                    server={"backlog": 64}))
    assert listen_backlog(gw.port) == 64
    reload(gw, lambda conf: conf["server"].update(backlog=16))
    assert listen_backlog(gw.port) == 16 and answers(gw.port) == 200
