"""Fixtures that start real processes (gateways, upstreams) on free loopback ports.

Every process is started in its own session and stopped by pid in teardown (SIGTERM to its
process group, SIGKILL if it has not exited in time), whether or not the test passed.
"""
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Every process a test starts (gateways run from a temp dir, the CLI) imports the gwserver of
# this checkout: the venv's editable install names one checkout, and a test run in a second
# worktree would otherwise test the first one's code.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT),
                                                         os.environ.get("PYTHONPATH")]))
UPSTREAM_SCRIPT = ROOT / "tests" / "upstream.py"


def python_path_with(*dirs):
    """A gateway's env with ``dirs`` on its path (a third-party plugin's site, a resolver
    class), added to this checkout's: a PYTHONPATH replaced would leave the checkout out and
    run the venv's editable install, another tree's code."""
    return {"PYTHONPATH": os.pathsep.join([*map(str, dirs), os.environ["PYTHONPATH"]])}


def installed_plugin(tmp_path, package, source, entry_points):
    """A third-party plugin as pip would install it: package ``package`` (its ``source``) and
    a distribution whose `gwserver.plugins` ``entry_points`` ("name = module:attr" lines)
    name it, in a site dir; returns the env a gateway needs to load it."""
    site = tmp_path / "site"
    (site / package).mkdir(parents=True)
    (site / package / "__init__.py").write_text(textwrap.dedent(source))
    dist = site / f"{package}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[gwserver.plugins]\n" + entry_points)
    return python_path_with(site)


_handed_out = set()


def free_port():
    """A loopback port nobody listens on, and not one this run handed out before: the kernel
    may give the same free port twice in a row (a gateway's bind and admin bind, say)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def wait_for_port(port, timeout=15.0, proc=None, log_path=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            said = ""
            if log_path is not None and os.path.exists(log_path):
                said = ": " + Path(log_path).read_text(errors="replace")[-2000:]
            raise RuntimeError(f"process exited with {proc.returncode} before listening{said}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {timeout}s")


def listens_on(pid, port):
    """Whether process ``pid`` holds the socket listening on loopback ``port``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:
                    inodes.add(fields[9])
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:         # closed since the listing (the listing's own fd, say)
            continue
        if link.startswith("socket:[") and link[8:-1] in inodes:
            return True
    return False


def stop_process(proc, timeout=15.0, sig=signal.SIGTERM):
    """Stop a process we started, and its group; return its exit code."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    try:     # leftovers of the group (workers of a killed master)
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return proc.returncode


def toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) \
            + " }"
    raise TypeError(value)


def to_toml(conf):
    """A small TOML writer for test confs: sections, [[routes]], inline values."""
    lines = []
    for key, value in conf.items():
        if isinstance(value, dict) and key != "upstreams":
            lines.append(f"[{key}]")
            lines.extend(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items())
        elif key == "upstreams":
            for name, spec in value.items():
                lines.append(f"[upstreams.{json.dumps(name)}]")
                lines.extend(f"{json.dumps(k)} = {toml_value(v)}" for k, v in spec.items())
        elif isinstance(value, list):
            for item in value:
                lines.append(f"[[{key}]]")
                lines.extend(f"{json.dumps(k)} = {toml_value(v)}" for k, v in item.items())
        else:
            raise TypeError(key)
        lines.append("")
    return "\n".join(lines)


class Upstream:
    def __init__(self, proc, port, name):
        self.proc, self.port, self.name = proc, port, name
        self.url = f"http://127.0.0.1:{port}"

    def stats(self):
        if self.url.startswith("https:"):
            import ssl
            conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=5,
                                               context=ssl._create_unverified_context())
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        conn.request("GET", "/stats")
        data = json.loads(conn.getresponse().read())
        conn.close()
        return data


class Etcd:
    def __init__(self, proc, client_port, peer_port, data_dir, name):
        self.proc, self.client_port, self.peer_port = proc, client_port, peer_port
        self.data_dir, self.name = data_dir, name
        self.url = f"http://127.0.0.1:{client_port}"

    def client(self):
        from gwserver.sync.etcd import EtcdClient
        return EtcdClient([self.url], timeout=2.0)

    def wait_ready(self, timeout=20):
        from gwserver.sync.etcd import EtcdError
        wait_for_port(self.client_port, timeout, self.proc)
        wait_until(lambda: _answers(self.client(), EtcdError), timeout)

    def stop(self):
        stop_process(self.proc, timeout=10)


def _answers(client, error):
    try:
        client.revision()
        return True
    except error:
        return False


class Gateway:
    def __init__(self, proc, port, conf_path, log_path):
        self.proc, self.port, self.conf_path, self.log_path = proc, port, conf_path, log_path
        self.url = f"http://127.0.0.1:{port}"
        self.pid = proc.pid

    def log(self):
        return Path(self.log_path).read_text(errors="replace")

    def access_lines(self):
        return [json.loads(line) for line in self.log().splitlines() if line.startswith('{"time"')]

    def worker_pids(self):
        out = subprocess.run(["pgrep", "-P", str(self.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def serving_worker_pids(self):
        """The workers whose listeners accept: a worker is titled "NAME: worker (starting)"
        from its fork until then (gwserver/proctitle.py), and counted among worker_pids()
        with the helpers all along."""
        name = self.conf["server"].get("proc_name", "gwserver")
        out = subprocess.run(["pgrep", "-P", str(self.pid), "-f", f"^{name}: worker *$"],
                             capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def helper_pids(self, role):
        """The pids of the master's helper processes titled ``gwserver: ROLE`` (health,
        ocsp, config-sync, rollouts): one, while the master keeps it."""
        out = subprocess.run(["pgrep", "-P", str(self.pid), "-f", f"gwserver:? {role}"],
                             capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def helper_pid(self, role):
        """The first of ``helper_pids(role)``, or None when there is none."""
        pids = self.helper_pids(role)
        return pids[0] if pids else None

    def every_worker_says(self, path, holds, timeout=10):
        """Wait until each serving worker's view at admin ``path`` (JSON, with its "pid")
        satisfies ``holds``: each reads shared state (health.json, ejections, the table) on
        its own 50 ms tick, later than another under load, so one worker's view says nothing
        of the next request's."""
        told = set()

        def every_one():
            view = json.loads(self.admin_get(path)[1])
            if holds(view):
                told.add(view["pid"])
            serving = set(self.serving_worker_pids())
            return len(serving) >= self.conf["server"].get("workers", 1) and told >= serving
        return wait_until(every_one, timeout=timeout)

    def admin_get(self, path, token=None):
        """GET on the admin listener -> (status, body bytes)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=10)
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        return resp.status, body

    def request(self, method, path, body=None, headers=None, timeout=10):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return resp, data

    def raw(self, data, timeout=5):
        """Send raw bytes; return everything the gateway sent back until it closed."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(data)
            chunks = []
            try:
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
            except socket.timeout:
                pass
            return b"".join(chunks)


class Launcher:
    """Starts upstreams and gateways into one temp dir; ``close()`` stops them all by pid."""

    def __init__(self, tmp_dir):
        self.tmp_dir = Path(tmp_dir)
        self.started = []

    def upstream(self, name=None, tls=None, port=None, delay=None):
        """A tests/upstream.py process; ``tls=(cert, key)`` makes it HTTPS; ``port`` brings
        one back where a stopped one was; ``delay`` makes every answer that late."""
        port = port or free_port()
        env = {**os.environ, "GW_TEST_DELAY": str(delay)} if delay else None
        proc = subprocess.Popen([sys.executable, str(UPSTREAM_SCRIPT), str(port), name or "",
                                 *(tls or ())], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        self.started.append(proc)
        wait_for_port(port, proc=proc)
        upstream = Upstream(proc, port, name or f"up{port}")
        if tls:
            upstream.url = f"https://127.0.0.1:{port}"
        return upstream

    def raw_upstream(self, script="raw_upstream.py", *args):
        """tests/raw_upstream.py: an upstream that misbehaves on purpose, by path (or another
        such ``script`` in tests/, given ``args`` after its port)."""
        port = free_port()
        proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / script), str(port),
                                 *map(str, args)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        self.started.append(proc)
        wait_for_port(port, proc=proc)
        return Upstream(proc, port, "raw")

    def nginx(self, name, server):
        """An nginx with one server block (``{port}`` filled with a free port); -> the port."""
        port = free_port()
        conf = self.tmp_dir / f"{name}.conf"
        conf.write_text(f"user root root; worker_processes 1; daemon off; "
                        f"pid {self.tmp_dir}/{name}.pid; error_log {self.tmp_dir}/{name}.err; "
                        f"events {{ }} http {{ access_log off; "
                        f"server {{ {server.format(port=port)} }} }}")
        proc = subprocess.Popen(["nginx", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        self.started.append(proc)
        wait_for_port(port, proc=proc)
        return port

    def gateway(self, conf, env=None, wait=True, extra_binds=()):
        """A gateway on 127.0.0.1:<a free port> (``.port``), and on ``extra_binds`` too.

        A free port can be taken by another process between our probe and the gateway's
        bind (a second test run on the host); the gateway then answers nothing and the test
        talks to a stranger. So the port must be held by this gateway's master, or a new
        gateway is started on another port."""
        for attempt in range(3):
            gw = self._start_gateway(conf, env, extra_binds)
            if not wait:
                return gw
            # Watched in /proc, not by connecting: a probe's connection waits in the backlog
            # until the worker accepts it, after a test's first client perhaps, and takes a
            # connection slot then (a worker_connections test saw its idle client closed so).
            # Only the ports picked here move: another address the test chose (a TLS bind)
            # taken by a client's ephemeral port is let go within the master's own tries
            # (4 s), where each new gateway found it taken again, three in a row.
            picked = [f"127.0.0.1:{p}: Address already in use" for p in (gw.port, gw.admin_port)]
            held = wait_until(lambda: "ours" if listens_on(gw.pid, gw.port) else
                              "taken" if any(line in gw.log() for line in picked) else
                              "exited" if gw.proc.poll() is not None else None)
            if held == "exited":
                raise RuntimeError(f"gateway exited with {gw.proc.returncode} before listening"
                                   f": {gw.log()[-2000:]}")
            if held == "ours":
                # Every worker serving: a test's first request answered by the backlog's wait
                # for a booting worker timed that boot, not the gateway.
                wait_until(lambda: len(gw.serving_worker_pids()) >=
                           gw.conf["server"].get("workers", 1))
                return gw
            stop_process(gw.proc)
        raise RuntimeError(f"three gateways in a row found their port taken: {gw.log()[-2000:]}")

    def _start_gateway(self, conf, env, extra_binds):
        port = free_port()
        conf = json.loads(json.dumps(conf))
        conf.setdefault("server", {})["bind"] = [f"127.0.0.1:{port}", *extra_binds]
        # Each gateway its own host state (the default, /run/gwserver/state, is one per host).
        conf["server"].setdefault("state_dir", str(self.tmp_dir / f"state-{port}"))
        conf.setdefault("admin", {}).setdefault("bind", f"127.0.0.1:{free_port()}")
        if "redis" in conf:
            # Exact-count tests must not fall back to per-host state because a loaded CI
            # machine missed the 50 ms production default; tests of failing fast set it.
            conf["redis"].setdefault("timeout", 0.5)
        conf_path = self.tmp_dir / f"gw-{port}.toml"
        conf_path.write_text(to_toml(conf))
        log_path = self.tmp_dir / f"gw-{port}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gwserver", "run", "-c", str(conf_path)],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.tmp_dir,
                env={**os.environ, **(env or {})}, start_new_session=True)
        self.started.append(proc)
        gw = Gateway(proc, port, conf_path, log_path)
        gw.conf = conf
        gw.admin_port = int(conf["admin"]["bind"].rpartition(":")[2])
        return gw

    def etcd(self, name="e0", cluster=None, data_dir=None, ports=None, extra=()):
        """One etcd member on free loopback ports with its own data dir (``extra``: more of
        etcd's flags)."""
        client_port, peer_port = ports or (free_port(), free_port())
        data_dir = data_dir or self.tmp_dir / f"etcd-{name}-{client_port}"
        cmd = ["etcd", "--name", name, "--data-dir", str(data_dir),
               "--listen-client-urls", f"http://127.0.0.1:{client_port}",
               "--advertise-client-urls", f"http://127.0.0.1:{client_port}",
               "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
               "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
               "--initial-cluster", cluster or f"{name}=http://127.0.0.1:{peer_port}",
               "--initial-cluster-token", "gwtest", "--initial-cluster-state", "new", *extra]
        log = open(self.tmp_dir / f"etcd-{name}-{client_port}.log", "ab")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        log.close()
        self.started.append(proc)
        member = Etcd(proc, client_port, peer_port, data_dir, name)
        if cluster is None:
            member.wait_ready()
        return member

    def redis(self, port=None):
        """A redis-server on a free loopback port, no persistence, its own dir."""
        port = port or free_port()
        directory = self.tmp_dir / f"redis-{port}"
        directory.mkdir(exist_ok=True)
        proc = self._redis_server(port, directory)
        proc.url = f"redis://127.0.0.1:{port}/0"
        return proc

    def redis_cluster(self, size=3):
        """``size`` cluster-enabled redis-servers joined into one Redis Cluster (no replicas)."""
        ports = [free_port() for _ in range(size)]
        for port in ports:
            directory = self.tmp_dir / f"redis-cluster-{port}"
            directory.mkdir()
            self._redis_server(port, directory, "--cluster-enabled", "yes",
                               "--cluster-config-file", "nodes.conf",
                               "--cluster-port", str(free_port()))     # not port + 10000
        subprocess.run(["redis-cli", "--cluster", "create",
                        *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", "0",
                        "--cluster-yes"], check=True, capture_output=True, timeout=60)
        wait_until(lambda: all(b"cluster_state:ok" in subprocess.run(
            ["redis-cli", "-p", str(p), "cluster", "info"], capture_output=True).stdout
            for p in ports), timeout=30)
        return ports, "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)

    def redis_sentinel(self):
        """A master, a replica and one Sentinel (quorum 1, down after 1 s) watching "gwmaster".

        Returns (master, replica, sentinel) processes; each has ``.port``."""
        master_port, replica_port, sentinel_port = free_port(), free_port(), free_port()
        procs = []
        for port, extra in ((master_port, ()),
                            (replica_port, ("--replicaof", "127.0.0.1", str(master_port)))):
            directory = self.tmp_dir / f"redis-{port}"
            directory.mkdir()
            procs.append(self._redis_server(port, directory, *extra))
        conf = self.tmp_dir / f"sentinel-{sentinel_port}.conf"
        conf.write_text(f"port {sentinel_port}\nbind 127.0.0.1\ndir {self.tmp_dir}\n"
                        f"sentinel monitor gwmaster 127.0.0.1 {master_port} 1\n"
                        f"sentinel down-after-milliseconds gwmaster 1000\n"
                        f"sentinel failover-timeout gwmaster 5000\n")
        sentinel = subprocess.Popen(["redis-server", str(conf), "--sentinel"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True)
        self.started.append(sentinel)
        wait_for_port(sentinel_port, proc=sentinel)
        sentinel.port = sentinel_port
        wait_until(lambda: b"master_link_status:up" in subprocess.run(
            ["redis-cli", "-p", str(replica_port), "info", "replication"],
            capture_output=True).stdout, timeout=20)
        return procs[0], procs[1], sentinel

    def _redis_server(self, port, directory, *extra):
        proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                 "--save", "", "--appendonly", "no", "--dir", str(directory),
                                 *extra],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        self.started.append(proc)
        wait_for_port(port, proc=proc)
        proc.port = port
        return proc

    def etcd_cluster(self, size=3):
        ports = [(free_port(), free_port()) for _ in range(size)]
        cluster = ",".join(f"e{i}=http://127.0.0.1:{peer}" for i, (_, peer) in enumerate(ports))
        members = [self.etcd(f"e{i}", cluster, ports=ports[i]) for i in range(size)]
        for member in members:
            member.wait_ready()
        return members

    def close(self):
        """Stop everything this launcher started, all at once. A gateway's master gets
        SIGINT (gunicorn's quick stop): SIGTERM's drain waits out each idle keep-alive
        connection a test left open, up to server.keepalive, at every teardown. Tests of
        the graceful stop send SIGTERM themselves."""
        procs = [proc for proc in reversed(self.started) if proc.poll() is None]
        for proc in procs:
            try:
                if is_gateway(proc):
                    os.kill(proc.pid, signal.SIGINT)    # the master alone: it stops its own
                else:
                    os.killpg(proc.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        for proc in reversed(self.started):
            stop_process(proc, timeout=10)


def is_gateway(proc):
    """Whether ``proc`` is a gateway's master (``gwserver run``) a test started."""
    args = proc.args if isinstance(proc.args, (list, tuple)) else str(proc.args).split()
    args = [str(arg) for arg in args]
    return "run" in args and any(arg == "gwserver" or arg.endswith("/gwserver")
                                 for arg in args)


@pytest.fixture
def launcher(tmp_path):
    launcher = Launcher(tmp_path)
    yield launcher
    launcher.close()


@pytest.fixture(scope="module")
def module_launcher(tmp_path_factory):
    launcher = Launcher(tmp_path_factory.mktemp("procs"))
    yield launcher
    launcher.close()


@pytest.fixture
def start_upstream(launcher):
    return launcher.upstream


@pytest.fixture
def start_gateway(launcher):
    return launcher.gateway


@pytest.fixture
def upstream(start_upstream):
    return start_upstream("main")


def check_conf(tmp_path, conf):
    """`gwserver check` of ``conf`` (a dict) -> (exit code, its output, stdout and stderr)."""
    path = tmp_path / "checked.toml"
    path.write_text(to_toml(conf))
    done = subprocess.run([sys.executable, "-m", "gwserver", "check", "-c", str(path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=30)
    return done.returncode, done.stdout + done.stderr


def gateway_conf(routes, workers=1, **sections):
    conf = {"server": {"workers": workers, "graceful_timeout": 5.0, **sections.pop("server", {})},
            "log": {"level": "info", **sections.pop("log", {})}}
    conf.update(sections)
    conf["routes"] = routes
    return conf


WEBSOCKET_HANDSHAKE = (b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
                       b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                       b"Sec-WebSocket-Version: 13\r\n\r\n")


def recv_until(sock, suffix):
    """What ``sock`` receives until it ends with ``suffix`` (an AssertionError, with what
    came, if the peer closes first)."""
    got = b""
    while not got.endswith(suffix):
        piece = sock.recv(65536)
        assert piece, got
        got += piece
    return got


def open_websocket(port, first_bytes=b"", timeout=10):
    """A websocket handshake for /ws (then ``first_bytes``); -> (socket, the answer's head,
    the bytes that came after it)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(WEBSOCKET_HANDSHAKE + first_bytes)
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    head, _, rest = head.partition(b"\r\n\r\n")
    return sock, head, rest


def wait_until(predicate, timeout=15.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def route(id, paths, upstream_url, **extra):
    return {"id": id, "paths": paths, "upstream": {"targets": [{"url": upstream_url}]}, **extra}


class TcpRelay:
    """A loopback TCP relay to a port, which a test can cut (a partition) and restore."""

    def __init__(self, target_port):
        import threading
        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.open = True
        self.conns = []
        self.accepted = 0           # connections made to the relay, cut or passed on
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import threading
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            if not self.open:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, upstream]
            for src, dst, to_client in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(target=self._pump, args=(src, dst, to_client),
                                 daemon=True).start()

    def _pump(self, src, dst, to_client):
        try:
            while data := src.recv(65536):
                self.forward(data, dst, to_client)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def forward(self, data, dst, to_client):
        """Pass ``data`` on (a subclass may delay or split it)."""
        dst.sendall(data)

    def cut(self):
        self.open = False
        with self.lock:
            for conn in self.conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.conns = []

    def restore(self):
        self.open = True

    def close(self):
        self.cut()
        try:        # wakes the thread in accept(): close() alone leaves the port listening
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()


def read_response(sock):
    """One whole HTTP/1.1 response (Content-Length framed) from a socket: -> (head, body).
    A response may come in several reads (head and body are often separate writes)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += _recv_some(sock, data)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    while len(body) < length:
        body += _recv_some(sock, head + body)
    return head, body


def _recv_some(sock, so_far):
    piece = sock.recv(65536)
    if not piece:
        raise AssertionError(f"connection closed mid-response after {so_far[:300]!r}")
    return piece
