"""The docs' shell examples that no test ran, run as a new operator would run them (pass
dec05n): each ```sh line extracted from its page (a doc edit that breaks one fails here),
run by bash against real processes (etcd, a gateway, upstreams), and held to what the page
says it does.

Made tested here:

1. docs/consumers.md's etcd block (`consumers put - <<< '{...}'` with the page's own JSON,
   `list`, `get acme`, `delete acme`): a gateway following etcd serves the page's key as
   consumer acme once it is put, `list` shows the credential's kind and not its value, etcd
   and `get` hold a salted hash and never the key, and after `delete` the key is a 401.
2. docs/health.md's service discovery: `upstreams put` of a service upstream (503 `no live
   instance of service orders` until one registers); `gwserver register ... --ttl 10` (the
   instance appears under PREFIX/services/orders/HOST-PORT with a lease, the route serves
   through it, SIGTERM revokes it and the route is back to 503 at once); the etcdctl lease
   lines (`lease grant 10`, `put ... --lease=$LEASE`, `lease keep-alive`): the instance
   serves past its TTL while the keep-alive runs and leaves once it stops and the TTL runs
   out.
3. docs/tls.md's ticket-key rotation (`cp -p current.key previous.tmp && mv ...`, `gwserver
   tls new-ticket-key current.key`, the reload) in a temp dir: yesterday's key becomes
   previous.key byte for byte, both stay 0600, a ticket sealed before the rotation resumes
   after it and one sealed after it is sealed with the new key.

The addresses the pages name (10.0.0.7:8080, /etc/gwserver/..., etcdctl's default endpoint)
are swapped for the test's; `systemctl reload gwserver` is run as what the unit's
ExecReload= runs (`gwserver reload -c CONF --pid MASTER`): there is no systemd here.
README.md's curl lines and docs/grpc.md's server and curl were run already
(test_docs_attack_dec05c.py, test_grpc_docs.py), and consumers.md's hash-key/hash-password
lines (test_docs_attack_dec05c.py).

Defects found running them, fixed, each test below seen failing before its fix:

1. `gwserver register --url http://10.0.0.7:8080/` (a spelling health.md itself calls the
   same server) registered `.../services/orders/HOST-8080/`, and `--url http://10.0.0.7`
   (port 80 implied) `.../services/orders/HOST-//10.0.0.7`: the instance id was the URL's
   text after its last ':'. The gateway reads PREFIX/services/NAME/INSTANCE with no '/' in
   INSTANCE and ignored both keys: `registered ...` was printed, the upstream kept answering
   503 `no live instance`, and `routes status` named nothing. So did `--service orders/eu`
   and `--instance a/b`; `--ttl 0` (or -3) was registered and printed as `ttl 0s` (etcd
   granted its own minimum), and a TTL over etcd's maximum said `retrying` for ever. The
   instance id is now HOSTNAME-PORT by the port the URL names or implies; a service no
   upstream can follow, an instance with '/' or empty, and a TTL outside 1..9e9 are
   refused (exit 2, one line) before anything is written.
2. docs/tls.md's rotation runs as root (/etc/gwserver/tickets is root:gwserver 0750) for a
   gateway that runs as gwserver, and the unit leaves the keys root:gwserver 0640. `gwserver
   tls new-ticket-key current.key` wrote the new key root:root 0600: the gateway could not
   read it, so `systemctl reload gwserver` was refused, and the next start failed its
   ExecStartPre check (the timer's unit chgrp'd after it; the page's lines did not). A file
   replaced now lends the new key its owner, group and group read bit (never more than
   0640); one it cannot take them from is not written (tests/unit/test_tickets.py).
3. docs/health.md: an instance's value is `{"url": ..., "weight": 1}` "(or just the URL)".
   The URL alone, as an operator puts it with etcdctl (`etcdctl put KEY http://...`), is no
   JSON: the instance was rejected (`invalid JSON`), never served. The gateway takes a JSON
   string (`"http://..."`); the page now shows that form and says what a bare URL gets
   (the doc was wrong, not the code: every etcd value is JSON).

README.md's `gwserver --version` line is now run with the `check`/`settings` lines
(tests/unit/test_docs.py).
"""
import base64
import json
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import time
import tomllib

from ..conftest import ROOT, route, wait_until
from .test_etcd import all_workers_at, etcd_conf
from .test_health import served_by

ENV = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}"}
DEFAULT_CONF = "/etc/gwserver/gwserver.toml"


def sh_block(page, holding):
    """The one ```sh block of docs/``page`` that holds ``holding``, continuation lines
    joined: its lines, comments kept (bash ignores them)."""
    text = (ROOT / "docs" / page).read_text()
    found = [b for b in re.findall(r"```sh\n(.*?)```", text, re.S) if holding in b]
    assert len(found) == 1, (page, holding, found)
    return [line for line in found[0].replace("\\\n", " ").splitlines() if line.strip()]


def with_conf(line, conf_path):
    """A doc line pointed at the test's conf file: the page's /etc/gwserver/gwserver.toml
    swapped, or `-c FILE` given to a `gwserver routes|upstreams|consumers` line without one
    (the commands' default is /etc/gwserver/gwserver.toml)."""
    if DEFAULT_CONF in line:
        return line.replace(DEFAULT_CONF, str(conf_path))
    if " -c " in line:
        return line
    return re.sub(r"\bgwserver (routes|upstreams|consumers) ", rf"gwserver \1 -c {conf_path} ",
                  line)


def bash(line, cwd, env=ENV, timeout=60):
    return subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def etcd_gateway(launcher, tmp_path, routes=(), **sections):
    """etcd, and a gateway following it with the default prefix (/gwserver, which the pages'
    etcdctl keys name)."""
    etcd = launcher.etcd()
    conf = etcd_conf(tmp_path, [etcd.url], routes, workers=1, prefix="/gwserver")
    conf.update(sections)
    return etcd, launcher.gateway(conf)


# -- 1. docs/consumers.md: put, list, get, delete ---------------------------------------------

def test_the_consumers_etcd_block_runs_as_the_page_says(launcher, upstream, tmp_path):
    lines = sh_block("consumers.md", "gwserver consumers put")
    assert [shlex.split(line.split("<<<")[0])[:3] for line in lines] == [
        ["gwserver", "consumers", "put"], ["gwserver", "consumers", "list"],
        ["gwserver", "consumers", "get"], ["gwserver", "consumers", "delete"]]
    given = json.loads(re.search(r"<<< '([^']*)'", lines[0])[1])
    key = given["credentials"]["key_auth"]["key"]
    orders = route("orders", ["/orders/*rest"], upstream.url, plugins={
        "key_auth": {}, "acl": {"allow_groups": given["groups"]}})
    etcd, gw = etcd_gateway(launcher, tmp_path, [orders])
    client = etcd.client()
    assert gw.request("GET", "/orders/echo", headers={"X-API-Key": key})[0].status == 401

    def consumer_of(api_key):
        resp, body = gw.request("GET", "/orders/echo", headers={"X-API-Key": api_key})
        if resp.status != 200:
            return resp.status
        sent = {name.lower(): value for name, value in json.loads(body)["headers"]}
        return sent["x-consumer-id"], sent["x-consumer-groups"]

    put, listed, got, deleted = (bash(with_conf(line, gw.conf_path), tmp_path)
                                 for line in lines)
    for run in (put, listed, got, deleted):
        assert run.returncode == 0 and "Traceback" not in run.stderr, run
    # put: sealed before it was written; etcd holds a salted hash, never the key
    assert put.stdout.startswith("put /gwserver/consumers/acme ")
    # list: which credentials, not their values
    assert listed.stdout.startswith("acme\t") and '"credentials": ["key_auth"]' in listed.stdout
    assert key not in listed.stdout and "sha256$" not in listed.stdout
    # get: the consumer as stored
    shown = json.loads(got.stdout)
    assert shown["groups"] == given["groups"] and key not in got.stdout
    assert re.fullmatch(r"sha256\$[0-9a-f]{32}\$[0-9a-f]{64}",
                        shown["credentials"]["key_auth"]["key_hash"])
    # delete: gone from etcd, and from the gateway
    assert deleted.stdout.strip() == "deleted /gwserver/consumers/acme"
    assert client.range_prefix("/gwserver/consumers/")[1] == []
    wait_until(lambda: consumer_of(key) == 401, timeout=10)

    # Put again (twice: a line run again is no error), the gateway serves the page's key
    # as acme (synced live)
    for _ in range(2):
        again = bash(with_conf(lines[0], gw.conf_path), tmp_path)
        assert again.returncode == 0, again
    stored = client.range_prefix("/gwserver/consumers/")[1]
    assert len(stored) == 1 and key.encode() not in stored[0][1]
    wait_until(lambda: consumer_of(key) == ("acme", ",".join(given["groups"])), timeout=10)
    assert consumer_of(key + "x") == 401


# -- 2. docs/health.md: a service upstream, `gwserver register`, etcdctl leases --------------

DOC_URL = "http://10.0.0.7:8080"


def services(etcd):
    """{key: (value, lease)} of every service instance etcd holds, as etcdctl shows them."""
    run = subprocess.run(["etcdctl", "--endpoints", etcd.url, "get", "--prefix",
                          "/gwserver/services/", "-w", "json"], capture_output=True,
                         text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    return {base64.b64decode(kv["key"]).decode(): (json.loads(base64.b64decode(kv["value"])),
                                                   int(kv.get("lease", 0)))
            for kv in json.loads(run.stdout).get("kvs", [])}


def orders_route(etcd):
    """What the page's upstream is for: a route to it (health.md's retry example's id and
    paths), put as `gwserver routes put` puts it."""
    return etcd.client().put("/gwserver/routes/orders", json.dumps(
        {"paths": ["/orders/*rest"], "strip_prefix": "/orders", "upstream": "orders"}).encode())


def test_the_service_upstream_and_register_lines_run_as_the_page_says(launcher, tmp_path):
    (put_line,) = sh_block("health.md", "gwserver upstreams put")
    (register_line,) = sh_block("health.md", "gwserver register")
    assert DOC_URL in register_line and "--ttl 10" in register_line
    instance = launcher.upstream("instance")
    etcd, gw = etcd_gateway(launcher, tmp_path)

    run = bash(with_conf(put_line, gw.conf_path), tmp_path)
    assert run.returncode == 0 and run.stdout.startswith("put /gwserver/upstreams/orders "), run
    revision = orders_route(etcd)
    wait_until(lambda: all_workers_at(gw, revision))
    resp, body = gw.request("GET", "/orders/echo")
    assert resp.status == 503 and b"no live instance of service orders" in body

    # register: runs until SIGTERM (exec: the signal reaches gwserver, not bash)
    line = with_conf(register_line, gw.conf_path).replace(DOC_URL, instance.url)
    proc = subprocess.Popen(["bash", "-c", "exec " + line], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    launcher.started.append(proc)
    said = proc.stdout.readline()
    key = f"/gwserver/services/orders/{socket.gethostname()}-{instance.port}"
    assert said.startswith(f"registered {key} -> {instance.url} (lease ") and \
        said.rstrip().endswith("ttl 10s)"), said
    value, lease = services(etcd)[key]
    assert value == {"url": instance.url, "weight": 1} and lease != 0
    wait_until(lambda: served_by(gw, 5, "/orders/echo") == {"instance": 5}, timeout=10)
    # it keeps the lease alive past its TTL
    time.sleep(11)
    assert key in services(etcd) and served_by(gw, 3, "/orders/echo") == {"instance": 3}

    proc.send_signal(signal.SIGTERM)        # revokes the lease: the instance leaves at once
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0 and out.strip() == f"deregistered {key}", (out, err)
    assert services(etcd) == {}
    wait_until(lambda: gw.request("GET", "/orders/echo")[0].status == 503, timeout=3)


def test_the_etcdctl_lease_lines_run_as_the_page_says(launcher, tmp_path):
    etcdctl = shutil.which("etcdctl")
    assert etcdctl, "etcdctl (package etcd-client, or etcd-server's) is needed for health.md"
    lines = sh_block("health.md", "etcdctl lease grant")
    assert len(lines) == 3 and "lease keep-alive $LEASE" in lines[2] and DOC_URL in lines[1]
    instance = launcher.upstream("instance")
    etcd, gw = etcd_gateway(launcher, tmp_path)
    etcd.client().put("/gwserver/upstreams/orders", json.dumps({"service": "orders"}).encode())
    revision = orders_route(etcd)
    wait_until(lambda: all_workers_at(gw, revision))
    assert gw.request("GET", "/orders/echo")[0].status == 503

    # The page's lines as one script (they share $LEASE), the keep-alive in the foreground
    # as the page has it; etcdctl's default endpoint is the test's etcd.
    # The page's 10 s lease, granted for 3 s here: the test waits past it twice.
    assert "lease grant 10 " in lines[0]
    script = "set -e\n" + "\n".join(lines[:2]).replace(DOC_URL, instance.url).replace(
        "lease grant 10 ", "lease grant 3 ") + "\nexec " + lines[2]
    env = {**ENV, "ETCDCTL_ENDPOINTS": etcd.url}
    proc = subprocess.Popen(["bash", "-c", script], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    launcher.started.append(proc)
    assert proc.stdout.readline().strip() == "OK"           # etcdctl put
    key = "/gwserver/services/orders/host-a"
    value, lease = services(etcd)[key]
    assert value == {"url": instance.url} and lease != 0
    wait_until(lambda: served_by(gw, 5, "/orders/echo") == {"instance": 5}, timeout=10)
    time.sleep(4)                                   # past the lease's 3 s: kept alive
    assert proc.poll() is None and key in services(etcd)
    assert served_by(gw, 3, "/orders/echo") == {"instance": 3}

    proc.send_signal(signal.SIGTERM)                # the instance stops serving
    proc.wait(timeout=10)
    stopped = time.monotonic()
    wait_until(lambda: gw.request("GET", "/orders/echo")[0].status == 503, timeout=15)
    assert services(etcd) == {} and time.monotonic() - stopped <= 3 + 5


# -- 3. docs/tls.md: the ticket-key rotation ---------------------------------------------------

def tls_page_ticket_files():
    text = (ROOT / "docs" / "tls.md").read_text()
    block = next(b for b in re.findall(r"```toml\n(.*?)```", text, re.S)
                 if "ticket_key_files" in b)
    return tomllib.loads(block)["tls"]["ticket_key_files"]


def test_the_ticket_key_rotation_runs_as_the_page_says(launcher, upstream, tmp_path):
    from ..pki import CA
    from .test_tls_tickets import new_key, resumes, start, ticket, ticket_conf
    lines = sh_block("tls.md", "new-ticket-key")
    assert lines[0] == "cd /etc/gwserver/tickets" and lines[-1] == "systemctl reload gwserver"
    listed = tls_page_ticket_files()
    assert listed == ["/etc/gwserver/tickets/current.key", "/etc/gwserver/tickets/previous.key"]
    tickets = tmp_path / "tickets"
    tickets.mkdir()
    files = [tickets / os.path.basename(path) for path in listed]
    for path in files:                      # the first day's keys (the timer's first run)
        new_key(path)
    ca = CA(tmp_path)
    client = ssl.create_default_context(cafile=str(ca.cert_path))
    client.ca = ca
    gw = start(launcher, ticket_conf(upstream, ca.issue("site")[:2], files))
    yesterday = files[0].read_bytes()
    before = ticket(gw, client)

    # The page's lines: in the temp dir, and the reload the unit's ExecReload= runs
    reload = f"gwserver reload -c {gw.conf_path} --pid {gw.pid}"
    script = "\n".join([f"cd {tickets}", *lines[1:-1], reload])
    run = bash("set -e\n" + script, tmp_path, timeout=90)
    assert run.returncode == 0, run
    assert "reload complete: generation" in run.stdout, run
    assert sorted(p.name for p in tickets.iterdir()) == ["current.key", "previous.key"]
    assert files[1].read_bytes() == yesterday           # still opens yesterday's
    assert len(files[0].read_bytes()) == 80 and files[0].read_bytes() != yesterday
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    check = bash(f"gwserver check -c {gw.conf_path}", tmp_path)
    assert check.returncode == 0 and "warning" not in check.stdout + check.stderr, check

    assert resumes(gw, client, before)                  # sealed yesterday: resumes
    after = ticket(gw, client)                              # sealed with the new key
    only_new = start(launcher, ticket_conf(upstream, ca.issue("site2")[:2], [files[0]]))
    assert resumes(only_new, client, after) and not resumes(only_new, client, before)


# -- 4. `gwserver register` with a URL spelt otherwise: an instance the gateway never saw ------

def register(conf_path, *args):
    """`gwserver register` (--ttl 10 unless ``args`` give another)."""
    return subprocess.Popen([sys.executable, "-m", "gwserver", "register", "-c", str(conf_path),
                             "--ttl", "10", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def test_register_names_the_instance_by_its_port_however_the_url_is_spelt(launcher,
                                                                         tmp_path):
    instance = launcher.upstream("instance")
    etcd, gw = etcd_gateway(launcher, tmp_path)
    etcd.client().put("/gwserver/upstreams/orders", json.dumps({"service": "orders"}).encode())
    revision = orders_route(etcd)
    wait_until(lambda: all_workers_at(gw, revision))
    host = socket.gethostname()
    for url, port, serves in ((instance.url + "/", instance.port, True),   # health.md's spelling
                              ("http://127.0.0.1", 80, False)):            # no port: 80
        proc = register(gw.conf_path, "--service", "orders", "--url", url)
        launcher.started.append(proc)
        said = proc.stdout.readline()
        if serves:              # the key was one the gateway ignored: it never served
            wait_until(lambda: served_by(gw, 3, "/orders/echo") == {"instance": 3},
                       timeout=10)
        key = f"/gwserver/services/orders/{host}-{port}"
        assert said.startswith(f"registered {key} -> {url} (lease "), said
        assert list(services(etcd)) == [key]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0 and services(etcd) == {}


def test_register_refuses_a_service_or_instance_the_gateway_cannot_read(launcher, tmp_path):
    etcd = launcher.etcd()
    conf_path = tmp_path / "gw.toml"
    conf_path.write_text(f'[etcd]\nendpoints = ["{etcd.url}"]\n')
    for args, problem in (
            (["--service", "orders/eu"], '--service: must be a service name, got "orders/eu"'),
            (["--service", "orders", "--instance", "host-a/1"],
             '--instance: must hold no "/" (the gateway reads '
             'PREFIX/services/NAME/INSTANCE), got "host-a/1"'),
            (["--service", "orders", "--instance", ""], '--instance: must not be empty'),
            (["--service", "orders", "--ttl", "0"],
             "--ttl: must be 1 to 9,000,000,000 seconds, got 0"),
            (["--service", "orders", "--ttl", "9000000001"],
             "--ttl: must be 1 to 9,000,000,000 seconds, got 9000000001")):
        proc = register(conf_path, *args, "--url", "http://127.0.0.1:8080")
        launcher.started.append(proc)
        out, err = proc.communicate(timeout=15)
        assert proc.returncode == 2 and err == f"gwserver register: {problem}\n", (out, err)
        assert etcd.client().range_prefix("/gwserver/")[1] == []


# -- 5. tls.md's rotation, run as root for a gateway that runs as its own user --------------

GATEWAY_USER = (65534, 65534)       # nobody:nogroup, standing in for gwserver:gwserver


def read_as_gateway_user(path):
    """Whether the gateway's user (the unit's User=gwserver) can read ``path``."""
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to read as another user"
    uid, gid = GATEWAY_USER
    return subprocess.run([setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
                           "cat", str(path)], capture_output=True, timeout=10).returncode == 0


def test_a_rotated_ticket_key_stays_readable_by_the_gateways_group():
    """The page's rotation runs as root (/etc/gwserver/tickets is root:gwserver 0750, as the
    timer's unit makes it) for a gateway that runs as gwserver; the unit leaves both keys
    root:gwserver 0640. `new-ticket-key` wrote the new current.key root:root 0600: the
    gateway's user could not read it, `systemctl reload` was refused, and the next start
    failed its ExecStartPre check."""
    lines = sh_block("tls.md", "new-ticket-key")
    rotation = [line for line in lines[1:] if not line.startswith("systemctl ")]
    assert len(rotation) == 2 and "new-ticket-key current.key" in rotation[1]
    assert os.geteuid() == 0, "the page's rotation runs as root"
    tickets = tempfile.mkdtemp(prefix="gw-tickets-", dir="/tmp")     # tmp_path's are 0700
    try:
        os.chown(tickets, 0, GATEWAY_USER[1])
        os.chmod(tickets, 0o750)
        for name in ("current.key", "previous.key"):        # as the unit leaves them
            path = os.path.join(tickets, name)
            subprocess.run([sys.executable, "-m", "gwserver", "tls", "new-ticket-key", path],
                           check=True, timeout=30)
            os.chown(path, 0, GATEWAY_USER[1])
            os.chmod(path, 0o640)
            assert read_as_gateway_user(path)
        run = bash("set -e\n" + "\n".join([f"cd {tickets}", *rotation]), tickets)
        assert run.returncode == 0, run
        for name in ("current.key", "previous.key"):
            path = os.path.join(tickets, name)
            st = os.stat(path)
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == \
                (0, GATEWAY_USER[1], 0o640), name
            assert read_as_gateway_user(path), name
        assert sorted(os.listdir(tickets)) == ["current.key", "previous.key"]
    finally:
        shutil.rmtree(tickets)


# -- 6. health.md's "or just the URL": which value that is ------------------------------------

def test_an_instance_value_that_is_the_url_alone_is_the_one_the_page_shows(launcher,
                                                                            tmp_path):
    """health.md said an instance's value is `{"url": ..., "weight": 1}` "(or just the URL)":
    `etcdctl put .../host-b http://10.0.0.7:8080`, the URL alone, is no JSON and the instance
    was rejected. The page now shows the form the gateway takes (a JSON string), and says
    what becomes of a bare URL; both are held to what the gateway does."""
    text = " ".join((ROOT / "docs" / "health.md").read_text().split())
    shown = re.search(r"or the URL alone as a JSON string, `(\"[^`]+\")` \(quotes included: "
                      r"a bare `http://...` is no JSON, and the instance is rejected, named "
                      r"by `gwserver routes status`\)", text)
    assert shown, "health.md shows the URL-alone form of an instance value"
    assert json.loads(shown[1]) == DOC_URL
    instance = launcher.upstream("instance")
    etcd, gw = etcd_gateway(launcher, tmp_path)
    etcd.client().put("/gwserver/upstreams/orders", json.dumps({"service": "orders"}).encode())
    revision = orders_route(etcd)
    wait_until(lambda: all_workers_at(gw, revision))
    ctl = ["etcdctl", "--endpoints", etcd.url, "put"]
    bare = subprocess.run([*ctl, "/gwserver/services/orders/host-b", instance.url],
                          capture_output=True, text=True, timeout=30)
    quoted = subprocess.run([*ctl, "/gwserver/services/orders/host-a",
                             shown[1].replace(DOC_URL, instance.url)],
                            capture_output=True, text=True, timeout=30)
    assert bare.returncode == quoted.returncode == 0, (bare, quoted)
    wait_until(lambda: served_by(gw, 3, "/orders/echo") == {"instance": 3}, timeout=10)

    def status():
        return bash(f"gwserver routes -c {gw.conf_path} status", tmp_path)
    wait_until(lambda: "services/orders/host-b" in status().stdout, timeout=10)
    run = status()
    assert run.returncode == 1 and "invalid JSON" in run.stdout, run
