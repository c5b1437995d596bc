"""What the benchmark scripts share: free ports, waiting for a listener, wrk, and a process
group that always stops what it started (SIGTERM to each process group, then SIGKILL).

Loopback only. Scripts in this directory import it as ``benchlib`` (their own directory is on
sys.path when run as scripts/bench-*).
"""
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").exists() else sys.executable


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def redis_server_command(port):
    """A redis-server on loopback ``port`` that keeps nothing on disk."""
    return ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no"]


def pinned(cmd, core):
    return cmd if core is None else ["taskset", "-c", str(core)] + list(cmd)


def wrk_command(url, seconds, connections, threads=1, core=None, extra=()):
    return pinned(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
                   *extra, url], core)


def parse_wrk(out):
    """wrk's report -> total, rejected (non-2xx/3xx), rps, p50/p99 in ms, socket errors."""
    def lat(p):
        value, unit = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"total": int(re.search(r"(\d+) requests in", out).group(1)),
            "rejected": int(non2xx.group(1)) if non2xx else 0,
            "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50": lat(50), "p99": lat(99), "errors": errors.group(1) if errors else ""}


def _stat(pid):
    """/proc/PID/stat's fields from the state on (field 3 is [0]), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    return text[text.rindex(")") + 2:].split()


def cpu_ticks(pids):
    """CPU time (user + sys, in clock ticks) the processes have used so far."""
    total = 0
    for pid in pids:
        fields = _stat(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])
    return total


def workers_ticks(master):
    """CPU time of a master's workers, those it has reaped included (its cutime + cstime): a
    worker that dies during a run takes its time with it otherwise."""
    fields = _stat(master)
    reaped = int(fields[13]) + int(fields[14]) if fields is not None else 0
    return cpu_ticks(children(master)) + reaped


def costed_wrk(ticks, url, seconds, connections, **kw):
    """``wrk``, its result with ``cpu_us``: how much the CPU time ``ticks()`` reads (clock
    ticks, as ``cpu_ticks`` and ``workers_ticks`` give them) grew over the run, in
    microseconds per request wrk counted."""
    before = ticks()
    result = wrk(url, seconds, connections, **kw)
    used = ticks() - before
    result["cpu_us"] = used / os.sysconf("SC_CLK_TCK") * 1e6 / result["total"] \
        if result["total"] else float("nan")
    return result


def children(pid):
    """A process's child pids (a gateway master's workers)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def wrk(url, seconds, connections, threads=1, core=None, extra=()):
    done = subprocess.run(wrk_command(url, seconds, connections, threads, core, extra),
                          capture_output=True, text=True)
    if "Requests/sec" not in done.stdout:
        raise SystemExit(f"wrk {url}: no report (exit {done.returncode}): "
                         f"{(done.stderr or done.stdout).strip()[:300]}")
    return parse_wrk(done.stdout)


class Processes:
    """Processes a benchmark started, each in its own session, logged to DIR/NAME.log."""

    def __init__(self, directory):
        self.directory = Path(directory)
        self.started = []

    def spawn(self, cmd, core=None, name="proc", env=None):
        log = open(self.directory / f"{name}.log", "wb")
        proc = subprocess.Popen(pinned(cmd, core), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=self.directory,
                                env={**os.environ, **(env or {})})
        log.close()
        self.started.append(proc)
        return proc

    def stop(self, proc, timeout=20):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()

    def close(self):
        for proc in reversed(self.started):
            self.stop(proc)

    def redis(self, core=None):
        port = free_port()
        self.spawn(redis_server_command(port), core, f"redis-{port}")
        wait_port(port)
        return f"redis://127.0.0.1:{port}/0"

    def gateway(self, name, routes, workers, redis_url=None, core=None, extra=""):
        """A gwserver with ``routes`` (TOML), once every worker serves (the master's sd_notify
        READY=1, received on a socket of our own); returns (base url, admin url)."""
        port, admin = free_port(), free_port()
        conf = self.directory / f"{name}.toml"
        # Each gateway its own state directory: a second one on the same directory refuses to
        # start (one instance per state dir), and benchmarks run several side by side.
        state = self.directory / f"{name}-state"
        text = (f'[server]\nbind = ["127.0.0.1:{port}"]\nworkers = {workers}\n'
                f'state_dir = "{state}"\n[admin]\nbind = "127.0.0.1:{admin}"\n[log]\naccess_log = false\n{extra}')
        if redis_url:
            text += f'[redis]\nurl = "{redis_url}"\ntimeout = 0.2\n'
        conf.write_text(text + routes)
        notify_path = str(self.directory / f"{name}.notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind(notify_path)
            notify.settimeout(60)
            self.spawn([PYTHON, "-m", "gwserver", "run", "-c", str(conf)], core, name,
                       env={"NOTIFY_SOCKET": notify_path})
            try:
                while b"READY=1" not in notify.recv(4096):
                    pass
            except TimeoutError:
                log = (self.directory / f"{name}.log").read_text(errors="replace")
                raise SystemExit(f"gateway {name} never got ready; its log ends:\n"
                                 f"{log[-2000:]}") from None
        os.unlink(notify_path)
        return f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}"
