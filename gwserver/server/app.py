"""gunicorn embedded through its application API, and a master that validates before reloading.

``GatewayApplication`` maps the conf file's ``[server]`` section onto gunicorn's settings;
``GatewayArbiter`` is gunicorn's master with three changes to SIGHUP: the conf file is
validated first, and a bad one is logged and ignored, so the old workers and settings keep
running (gunicorn's own reload would ``sys.exit`` the master on a config error); listeners are
changed in place (listeners.py) instead of closed and re-created, so a reload that adds, moves
or removes a listener applies it, and one whose bind fails is refused, never fatal; and
SIGHUPs close together are one reload (wait_for_signals).
"""
import glob
import logging
import math
import os
import signal
import stat
import subprocess
import sys
import time

from gunicorn import systemd, util
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

from .. import proctitle
from ..errors import ConfigError
from ..processes import MASTER_SIGNALS
from ..settings import conf_warnings, load_conf, resolve_workers, tmpfs_dir
from .instance import InstanceLocked, lock_paths
from .listeners import (ListenerError, bind_all, close_listener, describe, listener_roles,
                        rebind)

log = logging.getLogger("gwserver.master")
# Signals that stop the master (gunicorn's: TERM graceful, INT and QUIT fast)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)

LOG_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"


def configure_logging(level):
    logger = logging.getLogger("gwserver")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT, "%Y-%m-%d %H:%M:%S %z"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level.upper())


def child_exit(server, worker):
    """gunicorn hook, in the master: fold the dead worker's metrics into the archive."""
    from . import metrics
    try:
        metrics.retire(worker.pid)
    except Exception:       # a metrics hiccup must never disturb the master
        log.exception("could not retire metrics of worker %s", worker.pid)


def tls_of(conf):
    """The TLS listener's contexts of ``conf`` (client.tls.server_tls), or None without
    [tls]: pyOpenSSL and cryptography (~50 ms to import, and their memory in every worker)
    are loaded only by a gateway that serves TLS."""
    if conf.tls is None:
        return None
    from ..client.tls import server_tls
    return server_tls(conf)


class GatewayApplication(BaseApplication):

    def __init__(self, conf_path, conf=None):
        self.conf_path = conf_path
        self.conf = conf or load_conf(conf_path)
        self.tls_server = tls_of(self.conf)     # built once, before workers fork
        self.pending_conf = self.pending_tls = None
        super().__init__(prog="gwserver")

    def load_config(self):
        server = self.conf.server
        configure_logging(self.conf.log["level"])
        admin_bind = self.conf.admin["bind"]
        tls_bind = list(self.conf.tls["bind"]) if self.conf.tls else []
        for warning in self.tls_server.warnings if self.tls_server else ():
            log.warning("tls: %s", warning)
        for warning in conf_warnings(self.conf):      # what `gwserver check` warns of too
            log.warning("%s: %s", self.conf_path, warning)
        for key, value in {
            "bind": list(server["bind"]) + tls_bind + ([admin_bind] if admin_bind else []),
            "child_exit": child_exit,
            "workers": resolve_workers(server["workers"]),
            "worker_connections": server["worker_connections"],
            "graceful_timeout": math.ceil(server["graceful_timeout"]),
            "keepalive": math.ceil(server["keepalive"]),
            "timeout": server["timeout"],
            "backlog": server["backlog"],
            "max_requests": server["max_requests"],
            "proc_name": server["proc_name"],
            # Heartbeat files on tmpfs (settings.tmpfs_dir): gunicorn's default is tempfile's
            # (/tmp), where the fchmod of each beat can block a worker on a busy disk.
            "worker_tmp_dir": server["worker_tmp_dir"] or tmpfs_dir(),
            "worker_class": "gwserver.server.worker.GatewayWorker",
            "loglevel": self.conf.log["level"],
            "errorlog": "-",
            "accesslog": None,
            "control_socket_disable": True,
        }.items():
            self.cfg.set(key, value)

    def load(self):
        return None      # the worker class serves requests itself; there is no WSGI app

    def reload(self):
        if self.pending_conf is None:
            self.load_pending()
        self.conf, self.tls_server = self.pending_conf, self.pending_tls
        self.pending_conf = self.pending_tls = None
        self.do_load_config()

    def load_pending(self):
        """Read and check the conf file for a reload; raise ConfigError, changing nothing,
        if it or a certificate it names is bad."""
        conf = load_conf(self.conf_path)
        self.pending_tls = tls_of(conf)
        self.pending_conf = conf

    def run(self):
        proctitle.install()
        raise_open_files_limit()
        GatewayArbiter(self).run()


def raise_open_files_limit():
    """The soft open-file limit up to the hard one, for the master and so its workers (as Go's
    runtime and nginx's worker_rlimit_nofile do): a shell's soft 1024 under a hard limit of a
    million ran the demo's 1000 worker_connections out of descriptors, each request past
    them a 503. systemd's LimitNOFILE sets both."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):       # a hard limit this kernel will not give
            pass


# A worker installs its own handlers some milliseconds after fork; a SIGTERM that lands before
# that goes to the master's inherited handler and is lost, so the worker lives on until the
# master's graceful timeout kills it. Blocking these across fork() keeps such a signal pending
# until the worker unblocks them with its handlers in place (GatewayWorker.init_signals).
WORKER_STOP_SIGNALS = {signal.SIGTERM, signal.SIGQUIT, signal.SIGINT}


# What a worker past its graceful_timeout takes to cut the connections it still holds, log
# them and exit (worker.drain: server.stop's 1 s, the logs flushed): the master's stop waits
# this long more before its SIGKILL.
WORKER_CUT_SECONDS = 3

# Seconds between the starts of two reloads: SIGHUPs within them are one reload, at their
# end (GatewayArbiter.wait_for_signals).
RELOAD_SPACING = 1.0

# What a helper may take to start (imports, reading the conf) before its first sign of life.
STARTUP_SECONDS = 30.0
# The arbiter checks its helpers about once a second; a longer gap means it did not run.
HELPER_CHECK_GAP = 5.0


def sync_inputs(conf):
    """What the config-sync process takes from the conf file: its [etcd] section, and what it
    compiles etcd's items beside (core.table.LiveTable.for_conf). A reload that changes any
    of it starts the process again, to read the new conf."""
    return (dict(conf.etcd or {}), conf.static_routes, dict(conf.static_upstreams),
            dict(conf.static_consumers or {}), dict(conf.plugins),
            dict(conf.upstream_defaults), {k: conf.server[k] for k in ROUTE_SERVER_SETTINGS})


# The [server] settings a route is compiled with (core.routes: path rules, the body limit).
ROUTE_SERVER_SETTINGS = ("max_body_size", "merge_slashes", "escaped_slashes", "path_parameters")


class Helper:
    """A process the master owns besides its workers (config sync; later health checks).

    gunicorn's master reaps every child with waitpid(-1) and only logs unknown ones at debug
    level, so a helper's exit would go unnoticed (and Popen.poll() would wrongly report 0).
    We keep its pid and ask waitpid(pid) ourselves; ECHILD means gunicorn reaped it: gone.
    """

    def __init__(self, name, argv):
        self.name, self.argv = name, argv
        self.pid = None
        self.started_at = 0.0
        self.failures = 0
        self.next_start = 0.0
        self.exit_status = None     # set by collect() when it has exited
        self.state_dir = None       # where it beats (its GWSERVER_LOCAL_STATE)
        self.watched = False        # its beat file is there (made at its start)
        self.killed_at = None       # killed for its silence, not reaped yet

    def start(self):
        from ..helpers.helper import HELD_SIGNALS, MASTER_PID
        self.state_dir = os.environ.get("GWSERVER_LOCAL_STATE")
        self.forget_beats()         # of an earlier process of this role: dead or not ours
        # A reload forwards SIGHUP to health, ocsp and rollouts: one that came before the
        # helper's handler killed it. Blocked here, inherited through exec, let through by
        # the helper once its handlers are set (helper.handlers_in_place).
        signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
        try:
            proc = subprocess.Popen(self.argv, close_fds=True,
                                    env={**os.environ, MASTER_PID: str(os.getpid())})
        except OSError as exc:      # no fork (TasksMax, memory): the master must live on
            log.error("cannot start %s: %s; trying again in 5 s", self.name, exc)
            self.next_start = time.monotonic() + 5.0
            return
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)
        proc.returncode = 0         # we reap it ourselves: keep Popen from warning about it
        self.pid, self.started_at = proc.pid, time.monotonic()
        self.killed_at = None
        self.watched = self.make_beat_file(STARTUP_SECONDS)
        log.info("started %s (pid %d)", self.name, self.pid)

    def make_beat_file(self, seconds):
        """The helper's beat file, promising a sign of life ``seconds`` from now
        (helpers.helper.Heartbeat): at its start (STARTUP_SECONDS), and again if it was
        removed. Made by the master, so that a helper can beat where it could not make a
        file (a state_dir out of inodes, or removed by a reload that moved it), and under
        another name, then renamed, so no beat of the helper's is overwritten. Without one
        the helper is not watched, and the log says so."""
        if not self.state_dir:
            return False
        from ..helpers.helper import beat_path
        path = beat_path(self.state_dir, self.name, self.pid)
        promised = time.monotonic() + seconds
        try:
            os.close(os.open(f"{path}.new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
            os.utime(f"{path}.new", (promised, promised))
            os.rename(f"{path}.new", path)
        except OSError as exc:
            log.warning("cannot watch %s (pid %d) for a stuck loop: %s: %s; it is restarted "
                        "only when it exits", self.name, self.pid, path, exc.strerror)
            return False
        return True

    def forget_beats(self):
        if self.state_dir:
            for path in glob.glob(os.path.join(glob.escape(self.state_dir),
                                               f"helper-{self.name}.*.beat")):
                try:
                    os.unlink(path)
                except OSError:
                    pass

    def check_progress(self, timeout, excused=lambda since: 0.0):
        """Kill a helper that is stuck: ``timeout`` s past the sign of life it promised
        (helpers.helper.Heartbeat; its first is due STARTUP_SECONDS after its start). A
        stuck call (a lock never released, a blocking call under gevent) keeps the pid
        alive, and its work (the route table, target health, staples, canary steps) stale,
        with no exit to notice; alive() then sees it die and restarts it, as after a crash.
        Promises are CLOCK_MONOTONIC times (as gunicorn's worker heartbeat), so a step of
        the wall clock moves none. ``excused(since)``: the seconds since then that the
        master itself did not run (a frozen cgroup, a paused VM), which count for no one."""
        if self.pid is None or not self.watched:
            return
        now = time.monotonic()
        if self.killed_at is not None:
            if now - self.killed_at >= 60.0:        # SIGKILL waits out an uninterruptible
                self.killed_at = now                # sleep (D state): say so, every minute
                log.error("%s (pid %d) is still there after SIGKILL, in an uninterruptible "
                          "wait (a hung disk or NFS mount?); it is restarted when it exits",
                          self.name, self.pid)
            return
        from ..helpers.helper import beat_path
        try:
            promised = os.stat(beat_path(self.state_dir, self.name, self.pid)).st_mtime
        except OSError:
            # Removed under us (a tmp cleaner, a hand): made again, with a fresh promise,
            # rather than the helper killed for it or left unwatched.
            log.warning("the beat file of %s (pid %d) was gone; made again", self.name,
                        self.pid)
            self.watched = self.make_beat_file(timeout)
            return
        silent = now - promised - excused(promised)
        if silent <= timeout:
            return
        log.error("%s (pid %d) is stuck: no sign of life for %.0f s past the one it promised "
                  "(server.helper_timeout %g s); killing it, to restart it", self.name,
                  self.pid, silent, timeout)
        self.killed_at = now
        self.signal(signal.SIGKILL)

    def collect(self):
        """Reap it if it exited (before gunicorn's waitpid(-1) does and loses the status)."""
        if self.pid is None or self.exit_status is not None:
            return
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.pid, -1
        if pid:
            self.exit_status = status

    def alive(self):
        if self.pid is None:
            return False
        self.collect()
        status = self.exit_status
        if status is None:
            return True
        self.exit_status = None
        how = "exited (status unknown)" if status == -1 else \
            f"exited with {os.WEXITSTATUS(status)}" if os.WIFEXITED(status) else \
            f"was killed by signal {os.WTERMSIG(status)}"
        log.error("%s (pid %d) %s; restarting it", self.name, self.pid, how)
        self.forget_beats()
        # Quick deaths back off (1, 2, 4 ... 30 s) so a crash loop does not spin the master.
        self.failures = self.failures + 1 if time.monotonic() - self.started_at < 10 else 0
        self.next_start = time.monotonic() + min(30.0, 2 ** self.failures / 2)
        self.pid = None
        return False

    def signal(self, signum):
        if self.pid is not None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def stop(self):
        if self.pid is None:
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
            for _ in range(50):
                if os.waitpid(self.pid, os.WNOHANG)[0]:
                    break
                time.sleep(0.02)
            else:
                os.kill(self.pid, signal.SIGKILL)
        except (ProcessLookupError, ChildProcessError):
            pass
        self.forget_beats()
        self.pid = None


class ReloadStatus:
    """The master's account of its configuration, for those not under systemd: the generation
    (1 at start, +1 per applied reload), whether the last reload was applied, and when one last
    was. Written to the host state directory as ``master.json`` (``/admin/config``) and
    ``master.prom`` (``/metrics``; Prometheus names its own
    ``prometheus_config_last_reload_successful``), as the health helper writes health.prom.
    """

    def __init__(self, state_dir, previous=None):
        self.state_dir = state_dir
        self.generation = previous.generation if previous else 0
        self.successful, self.success_time = True, None
        self.attempts, self.error = 0, None     # reloads tried (the start is 0); why refused
        if previous is not None:
            self.successful, self.success_time = previous.successful, previous.success_time
            self.attempts, self.error = previous.attempts, previous.error
        self.routes = 0
        self.attempt_time = previous.attempt_time if previous else None
        self.worker_timeouts = previous.worker_timeouts if previous else 0
        self.conf = None
        self.workers_missing = previous.workers_missing if previous else 0
        # CLOCK_MONOTONIC (system-wide) when the master began the last reload, as it took
        # the SIGHUP: `gwserver reload` takes only the verdict of a reload begun after its
        # own signal, never that of one already under way when it sent it.
        self.started = previous.started if previous else None

    def worker_timed_out(self):
        """A worker stopped for its silence: counted in master.prom (what gwserver reload
        waits for in master.json does not move)."""
        self.worker_timeouts += 1
        self.rewrite()

    def workers_started(self):
        """The workers an applied reload could not start (fork refused) are started."""
        self.workers_missing = 0
        self.rewrite()

    def rewrite(self):
        """master.json and master.prom again, as they were (their directory was made again)."""
        if self.conf is not None:
            try:
                self._write(self.conf)
            except OSError as exc:
                log.warning("cannot write the reload status to %s: %s", self.state_dir, exc)

    def record(self, successful, conf, error=None, start=False, workers_missing=0):
        """A reload applied (``successful``) or refused (``error`` says why), or the start;
        ``workers_missing``: new workers an applied reload could not start yet."""
        now = self.attempt_time = time.time()
        self.conf = conf
        if successful:      # a refused one leaves the workers an applied one is waiting for
            self.workers_missing = workers_missing
        self.successful, self.error = successful, None if successful else error
        if not start:
            self.attempts += 1      # what `gwserver reload` waits to see move
        if successful:
            self.generation += 1
            self.success_time = now
            self.routes = len(conf.router)
            if conf.etcd is not None:       # the live table: the sync process counts it
                from ..sync.shm import STATUS, read_json
                status = read_json(os.path.join(conf.etcd["runtime_dir"], STATUS))
                # Only a count: JSON of another shape there (a hand, a tool, another
                # release) raised in the main loop, and the master exited with every worker.
                routes = status.get("routes") if isinstance(status, dict) else None
                if type(routes) is int:
                    self.routes += routes
        try:
            self._write(conf)
        except OSError as exc:
            log.warning("cannot write the reload status to %s: %s", self.state_dir, exc)

    def _write(self, conf):
        # A collector, not Gauge objects: in the master (PROMETHEUS_MULTIPROC_DIR is set) a
        # Gauge would be backed by a file of the multiprocess directory and summed into the
        # workers' /metrics as a stray process.
        from prometheus_client import CollectorRegistry, write_to_textfile
        from ..sync.shm import atomic_write
        import json
        from .metrics import (MASTER_GENERATION, RELOAD_SUCCESS_TIME, RELOAD_SUCCESSFUL,
                              WORKER_TIMEOUTS, family)
        values = ((RELOAD_SUCCESSFUL, 1 if self.successful else 0),
                  (RELOAD_SUCCESS_TIME, self.success_time or 0),
                  (MASTER_GENERATION, self.generation),
                  (WORKER_TIMEOUTS, self.worker_timeouts))

        class Collector:
            def collect(self):
                for metric, value in values:
                    yield family(metric, value=value)
        registry = CollectorRegistry()
        registry.register(Collector())
        write_to_textfile(os.path.join(self.state_dir, "master.prom"), registry)
        atomic_write(os.path.join(self.state_dir, "master.json"), json.dumps({
            "pid": os.getpid(), "generation": self.generation,
            # what `gwserver reload` compares with its -c: joined, not abspath's, which takes
            # a ".." off as text (after a symlink the kernel takes it in the link's target)
            "conf": os.path.join(os.getcwd(), conf.path),
            "reload_attempts": self.attempts, "last_reload_error": self.error,
            "last_reload_successful": self.successful,
            "last_reload_started_monotonic": self.started,
            "workers_not_started": self.workers_missing,
            "last_reload_success": rfc3339(self.success_time),
            "last_reload_attempt": rfc3339(self.attempt_time)}).encode())


def rfc3339(timestamp):
    """Unix time -> "2024-05-01T12:00:00.123Z" (what admin views show); None stays None."""
    if timestamp is None:
        return None
    from datetime import datetime, timezone
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def forget_health(state_dir):
    """Remove the health checker's verdicts (health.json) and counts (health.prom) from
    ``state_dir``: written by a checker that is gone for good (a reload that leaves no
    upstream with health_check stops it; a previous master's), they held for every worker,
    the reload's new ones too, with no one to lift them: a target judged down stayed out of
    rotation after it came back, and /admin/upstreams and /metrics said so for good.
    Passive ejections (ejections.json) expire by themselves and are kept."""
    from ..helpers.health import HEALTH_FILE, METRICS_FILE
    if not state_dir:
        return
    for name in (HEALTH_FILE, METRICS_FILE):
        try:
            os.unlink(os.path.join(state_dir, name))
        except OSError:
            pass


def forget_rollouts(state_dir):
    """Remove the rollouts helper's gauges (rollouts.prom) from ``state_dir``: written by a
    helper that is gone for good (a reload that leaves no route with a rollout stops it; a
    previous master's), every worker's /metrics served them for good, its last tick's step,
    weight and verdicts: a rollout taken out while rolled back kept GwserverRolloutRolledBack
    firing. (A helper that runs writes the file again each tick.)"""
    from ..helpers.rollouts import METRICS_FILE
    if not state_dir:
        return
    try:
        os.unlink(os.path.join(state_dir, METRICS_FILE))
    except OSError:
        pass


PREVIOUS_HEALTH_MAX_AGE = 300.0     # seconds since the previous master's checker last ran


def take_up_health(state_dir, asked):
    """At start: hand the previous master's active verdicts (health.json) to this master's
    checker, which takes up the targets judged down until they pass their checks
    (health.Checker.previous_verdicts reads only its own master's file), or forget them.

    Forgotten at every start, a restart (systemd's after a crash, an upgrade's) sent a
    target the checks had taken out its share of requests again, 500s or timeouts, until it
    failed unhealthy_threshold checks more, while passive ejections and per-host limits were
    kept. Kept only when this conf asks for checks (else none would be lifted) and the
    previous checker ran within PREVIOUS_HEALTH_MAX_AGE (its health.prom is rewritten every
    second): a verdict of a gateway stopped for hours is no news of the target."""
    import json
    from ..helpers.health import HEALTH_FILE, METRICS_FILE
    from ..sync.shm import atomic_write, read_json
    if not state_dir:
        return
    path = os.path.join(state_dir, HEALTH_FILE)
    written = read_json(path) if asked else None
    try:
        age = time.time() - os.stat(os.path.join(state_dir, METRICS_FILE)).st_mtime
    except OSError:
        age = math.inf
    if isinstance(written, dict) and isinstance(written.get("targets"), dict) and \
            -5.0 < age < PREVIOUS_HEALTH_MAX_AGE:
        try:
            atomic_write(path, json.dumps({**written, "master": os.getpid()}).encode())
            return
        except OSError:
            pass
    forget_health(state_dir)


def health_checks_asked(conf):
    """Whether an upstream of the conf file has a health_check: a named one, a route's own,
    or one a route's plugins send to (a split's canary, whose checks never ran)."""
    return any(spec.get("health_check") for spec in (conf.static_upstreams or {}).values()) \
        or any(upstream.health_check for route in conf.router.routes.values()
               for upstream in (route.upstream, *route.chain.linked_upstreams()))


def asks_for_health(conf):
    """Active health checks: one process per host. With etcd any upstream may ask for them
    later, so it always runs there; with a conf file, only if an upstream has health_check."""
    return conf.etcd is not None or health_checks_asked(conf)


def asks_for_rollouts(conf):
    """Rollouts (docs/rollouts.md): one controller per host, like the health checker."""
    from ..helpers.rollouts import rollouts_in
    return conf.etcd is not None or rollouts_in(conf.router)


def helpers_for(app):
    """The helper processes a configuration asks for."""
    conf = app.conf
    helpers = {}
    conf_path = os.path.abspath(app.conf_path)
    if conf.etcd is not None:
        os.makedirs(conf.etcd["runtime_dir"], exist_ok=True)
        helpers["config-sync"] = Helper("config-sync", [
            sys.executable, "-m", "gwserver", "sync", "-c", conf_path])
    if conf.tls is not None and conf.tls["ocsp_stapling"]:
        helpers["ocsp"] = Helper("ocsp", [sys.executable, "-m", "gwserver", "ocsp", "-c",
                                          conf_path])
    if asks_for_health(conf):
        helpers["health"] = Helper("health", [
            sys.executable, "-m", "gwserver", "health", "-c", conf_path])
    if asks_for_rollouts(conf):
        helpers["rollouts"] = Helper("rollouts", [
            sys.executable, "-m", "gwserver", "rollouts", "controller", "-c", conf_path])
    return helpers


class TimeoutKills(logging.Filter):
    """gunicorn logs a worker reaped after a SIGKILL as "Perhaps out of memory?"; for one it
    killed itself after its timeout (murder_workers), or at the end of a stop (stop_workers),
    that sends the operator after the wrong cause."""

    def __init__(self, arbiter):
        super().__init__()
        self.arbiter = arbiter

    def filter(self, record):
        if str(record.msg).endswith("Perhaps out of memory?") and record.args:
            if record.args[0] in self.arbiter.timed_out:
                record.msg = "Worker (pid:%s) was sent %s after its WORKER TIMEOUT (see above)"
            elif record.args[0] in self.arbiter.killed_by_stop:
                record.msg = "Worker (pid:%s) was sent %s at the end of the stop (see above)"
        return True


class GatewayArbiter(Arbiter):
    """gunicorn's master, plus: helpers it supervises, validated reloads, readiness-aware
    worker replacement and honest systemd notifications.

    gunicorn sends READY=1 before any worker has booted and never RELOADING or STOPPING; under
    ``Type=notify`` that would tell systemd (and whatever waits on it) we serve when we don't.
    """

    state_dir_failure = None        # (path, problem) ensure_state_dir said last

    def notify(self, state):
        systemd.sd_notify(state, self.log)

    def start(self):
        # We bind the listeners ourselves (unless systemd or a re-exec hands them over): each
        # is then named by role and scheme in the log, and a failed bind names the listener
        # instead of gunicorn's bare address.
        if not self.LISTENERS and not systemd.listen_fds(unset_environment=False) \
                and "GUNICORN_FD" not in os.environ:
            try:
                self.LISTENERS = bind_all(listener_roles(self.app.conf), self.cfg, self.log)
            except ListenerError as exc:
                log.error("cannot start: %s", exc)
                sys.exit(1)
        # gunicorn announces READY=1 in start(): too early. Hide the socket from it.
        notify_socket = os.environ.pop("NOTIFY_SOCKET", None)
        try:
            super().start()
        finally:
            if notify_socket is not None:
                os.environ["NOTIFY_SOCKET"] = notify_socket
        # gunicorn's handlers are in place (init_signals): a SIGHUP (SIGUSR1) held since
        # cli.main is let through, and queued as a reload (a reopen of the logs).
        signal.pthread_sigmask(signal.SIG_UNBLOCK, MASTER_SIGNALS)
        roles = listener_roles(self.app.conf)
        from .listeners import name_listener
        for listener in self.LISTENERS:     # from systemd: named too, by address
            role = next((r for a, r in roles.items() if a == listener.cfg_addr), None)
            if role is not None and not hasattr(listener, "role"):
                name_listener(listener, role)
        self.worker_generation = 1      # of the workers spawned from now on (+1 per reload)
        self.log.error_log.addFilter(TimeoutKills(self))
        self.reloads = ReloadStatus(self.app.conf.server["state_dir"])
        self.reloads.record(True, self.app.conf, start=True)
        self.ready_sent = False
        self.keep_applied_conf()
        # A previous master's active verdicts: taken up when this conf has checks too and its
        # checker ran moments ago (a restart); forgotten otherwise, since with no checker
        # now none would ever be lifted.
        self.helpers = helpers_for(self.app)
        take_up_health(self.app.conf.server["state_dir"], "health" in self.helpers)
        if "rollouts" not in self.helpers:
            forget_rollouts(self.app.conf.server["state_dir"])
        self.helper_conf = sync_inputs(self.app.conf)
        for helper in self.helpers.values():
            helper.start()

    def reap_workers(self):
        for helper in getattr(self, "helpers", {}).values():
            helper.collect()
        super().reap_workers()
        self.timed_out &= set(self.WORKERS)

    timed_out = frozenset()     # pids stopped by murder_workers, until reaped

    def murder_workers(self):
        """gunicorn's, which logs only "WORKER TIMEOUT (pid:N)", then for its SIGKILL a
        second later "Perhaps out of memory?": one line more says what it is and what to do,
        and gwserver_worker_timeouts_total counts it."""
        told = {pid for pid, worker in self.WORKERS.items() if worker.aborted}
        super().murder_workers()
        for pid, worker in self.WORKERS.items():
            if worker.aborted and pid not in told:
                self.timed_out = self.timed_out | {pid}
                self.reloads.worker_timed_out()
                log.error("worker %s sent no heartbeat for %ss (server.timeout): something "
                          "blocked it (a plugin or a call that does not yield to gevent, a "
                          "stalled disk under worker_tmp_dir); it is stopped and replaced, "
                          "and the requests it held are cut", pid, self.timeout)

    helpers_checked = 0.0
    master_gaps = ()            # (end, seconds) of the recent gaps in the master's own runs

    def manage_helpers(self):
        now = time.monotonic()
        gap = now - self.helpers_checked
        if self.helpers_checked and gap > HELPER_CHECK_GAP:
            # The master itself did not run for a while (a frozen cgroup, a paused VM, a
            # long reload): the helpers' silence meanwhile says nothing of them. Only the
            # gap is excused: what came before it still counts.
            self.master_gaps = (*self.master_gaps[-15:], (now, gap))
        self.helpers_checked = now
        timeout = self.app.conf.server["helper_timeout"]
        for helper in self.helpers.values():
            if helper.alive():
                helper.check_progress(timeout, self.excused)
            elif now >= helper.next_start:
                helper.start()

    def excused(self, since):
        """Seconds of the master's gaps after ``since`` (a helper's promise)."""
        return sum(min(seconds, end - since) for end, seconds in self.master_gaps
                   if end > since)

    def spawn_worker(self):
        self.ensure_state_dir()
        self.ensure_metrics_dir()
        # Whose table the worker waits for before it listens (worker.wait_for_table): the
        # sync process running now, which a reload may just have started again.
        sync = getattr(self, "helpers", {}).get("config-sync")
        self.app.sync_pid = sync.pid if sync is not None else None
        signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_STOP_SIGNALS)
        try:
            pid = super().spawn_worker()
        except OSError as exc:
            # fork() refused (systemd's TasksMax, memory): gunicorn's main loop exits the
            # master on any exception, taking every worker with it. The workers there serve
            # on; manage_workers tries again on its next turn (about a second).
            log.error("cannot start a worker: %s; the workers there serve on, trying again "
                      "in a second", exc)
            return None
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, WORKER_STOP_SIGNALS)
        worker = self.WORKERS.get(pid)
        if worker is not None:
            worker.generation = getattr(self, "worker_generation", 1)
            # A worker's first heartbeat comes once its listeners are serving (it rewrites the
            # tmp file's mtime); until then the file keeps the mtime set here. gunicorn beats
            # in time.monotonic() but leaves the file's creation time, the wall clock's, years
            # ahead of it: a worker hung before its first beat was never found silent.
            now = time.monotonic()
            os.utime(worker.tmp.fileno(), (now, now))
            worker.born_mtime = worker.tmp.last_update()
        return pid

    def serving_workers(self):
        """Workers not told to stop, oldest first."""
        return sorted((pid for pid, w in self.WORKERS.items()
                       if not getattr(w, "stopping", False)),
                      key=lambda pid: self.WORKERS[pid].age)

    def current_workers(self, serving=None):
        """Serving workers (``serving``, if the caller has them) of the current
        configuration's generation, oldest first."""
        generation = getattr(self, "worker_generation", 1)
        return [pid for pid in (self.serving_workers() if serving is None else serving)
                if getattr(self.WORKERS[pid], "generation", 1) == generation]

    def ensure_state_dir(self):
        """The host state directory, made again if it was removed under the running gateway
        (a tmp cleaner, a hand): every worker started without it died at boot, again and
        again, and the workers there were not replaced as they retired. What it held starts
        over (per-host limits, breaker states); workers started before keep the removed
        files until they stop."""
        state_dir = self.app.conf.server["state_dir"]
        # master.json too: a worker or helper writing there may have made the directory
        # again first, and `gwserver reload` finds no verdict without it.
        if os.path.exists(os.path.join(state_dir, "master.json")):
            self.state_dir_failure = None
            self.state_dir_seen = state_dir
            return
        # One a reload just moved to has no master.json yet (the reload writes it once it
        # is applied): made and prepared here too, but it was never removed.
        moved = state_dir != getattr(self, "state_dir_seen", state_dir)
        from ..settings import state_dir_problem
        from ..state.store import LocalStore
        try:
            os.makedirs(state_dir, mode=0o700, exist_ok=True)
            # As at start (cli.run): under /tmp another user may have made it first.
            problem = state_dir_problem(state_dir)
            if problem is None:
                LocalStore.prepare(state_dir)
        except OSError as exc:
            problem = exc.strerror
        if problem is not None:
            if self.state_dir_failure != (state_dir, problem):     # said once, not a turn
                self.state_dir_failure = (state_dir, problem)
                log.error("the state_dir %s was removed and cannot be made again: %s; new "
                          "workers keep per-host state of their own", state_dir, problem)
            return
        if moved:
            return
        lock = getattr(self.app, "instance_lock", None)
        if lock is not None:
            try:
                lock.renew(lock_paths(self.app.conf))   # its lock file went with it
            except InstanceLocked as exc:
                log.error("the state_dir %s was removed while the gateway ran, and another "
                          "instance took it meanwhile: %s", state_dir, exc)
        self.reloads.rewrite()          # `gwserver reload` learns its verdict there
        self.keep_applied_conf()        # and helpers, the configuration they run
        if self.state_dir_failure != (state_dir, None):     # said once, not a turn
            self.state_dir_failure = (state_dir, None)
            log.warning("the state_dir %s was removed while the gateway ran: made again; "
                        "per-host limits and breaker states start over", state_dir)

    metrics_dir_failure = None      # what ensure_metrics_dir said last

    def ensure_metrics_dir(self):
        """The Prometheus multiprocess directory, made again if it was removed under the
        running gateway (a tmp cleaner in /dev/shm, a hand): each worker makes its files
        there as it starts, and every worker started without it died at boot, the
        replacements of a reload, of a dead worker and of one retiring on max_requests
        alike, until none was left. The counts of the removed files are lost."""
        from .metrics import ENV
        path = os.environ.get(ENV)
        if not path or os.path.isdir(path):
            self.metrics_dir_failure = None
            return
        from ..processes import hold_again
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
            hold_again(path)    # own_dir's lock, on this one: else another namespace's removes it
        except OSError as exc:
            problem = exc.strerror
        else:
            problem = None
        if self.metrics_dir_failure != (path, problem):       # said once, not a turn
            self.metrics_dir_failure = (path, problem)
            if problem is None:
                log.warning("the metrics directory %s was removed while the gateway ran: made "
                            "again; the counts /metrics showed start over", path)
            else:
                log.error("the metrics directory %s was removed and cannot be made again: "
                          "%s; new workers cannot start", path, problem)

    def manage_workers(self):
        """gunicorn's, by generation: keep ``workers`` serving from the current conf, stop
        the others once those serve, and bound what drains (limit_draining).

        Only the current generation counts: a new worker that dies (on boot, or while old
        ones drain) is replaced now, and an old-configuration worker never stands in for it.
        Workers already told to stop never count (gunicorn's count held them: a worker
        retiring on max_requests had the older serving ones stopped with it)."""
        self.ensure_state_dir()         # (a stat a turn, about once a second)
        lock = getattr(self.app, "instance_lock", None)
        if lock is not None and lock.released:
            lock.forget_exited(set(self.WORKERS))
        for pid, worker in self.WORKERS.items():
            if not getattr(worker, "stopping", False) and self.draining_on_its_own(worker):
                worker.stopping = worker.retiring = True
                log.info("worker %s is draining on its own (max_requests): its replacement "
                         "starts now", pid)
        serving = self.serving_workers()
        current = self.current_workers(serving)
        for _ in range(self.num_workers - len(current)):
            pid = self.spawn_worker()
            if pid is not None:
                current.append(pid)
        older = [pid for pid in serving if pid not in current]
        # Replacements that could not be started (spawn_worker), or that died before they
        # served (wait_for_replacements): the old ones serve on.
        if older and len(current) >= self.num_workers and self.wait_for_replacements():
            for pid in older:
                self.kill_worker(pid, signal.SIGTERM)   # drains
        # Only the generation that lacked them: a reload in progress (reload) starts the
        # next one's, and says itself whether they started.
        if self.reloads.workers_missing and self.serving_count(current) >= self.num_workers \
                and getattr(self, "worker_generation", 1) == getattr(self, "missing_generation", 0):
            self.reloads.workers_started()
            log.info("reload complete: generation %d, %d workers, %d routes (its workers "
                     "could start only now)", self.reloads.generation, self.num_workers,
                     self.reloads.routes)
            self.notify(f"STATUS=serving with {self.num_workers} workers (reloaded)")
        for pid in current[:max(0, len(current) - self.num_workers)]:
            self.kill_worker(pid, signal.SIGTERM)       # TTOU: the oldest beyond the count
        self.limit_draining()
        if getattr(self, "helpers", None) is not None:
            self.manage_helpers()
        if not getattr(self, "ready_sent", True) and self.workers_serving():
            self.ready_sent = True
            self.notify(f"READY=1\nSTATUS=serving with {len(self.WORKERS)} workers")
            log.info("ready: %d workers serving", len(self.WORKERS))

    @staticmethod
    def draining_on_its_own(worker):
        """A worker stopping by itself marks its heartbeat file (worker.tell_master_draining)."""
        try:
            return not os.fstat(worker.tmp.fileno()).st_mode & stat.S_IWUSR
        except (OSError, ValueError):
            return False

    def limit_draining(self):
        """At most ``max_draining_generations`` generations of old workers drain at once.

        Each reload leaves the previous workers draining for up to graceful_timeout (a long
        download or a websocket keeps one for all of it); reloads faster than that would pile
        up processes until memory runs out. Past the limit the oldest draining generation is
        stopped at once (SIGQUIT): its connections are cut, which the log says."""
        draining, current = {}, getattr(self, "worker_generation", 1)
        for pid, worker in self.WORKERS.items():
            generation = getattr(worker, "generation", 1)
            # The current generation's own stopping workers (TTOU) are no reload's leftovers.
            if getattr(worker, "stopping", False) and not getattr(worker, "quitting", False) \
                    and generation != current:
                draining.setdefault(generation, []).append(pid)
        limit = self.app.conf.server["max_draining_generations"]
        for generation in sorted(draining)[:max(0, len(draining) - limit)]:
            pids = draining[generation]
            log.warning("%d generations of workers are draining (server.max_draining_"
                        "generations = %d): stopping generation %d (%d workers, pids %s) "
                        "now; their open connections are cut", len(draining), limit,
                        generation, len(pids), " ".join(map(str, sorted(pids))))
            self.quit_workers(pids)
        # Workers retiring on max_requests: replaced at once, so a client that holds a
        # connection on each (a download, a websocket) while it spends max_requests could
        # pile them up. At most ``workers`` of them drain at once; past that, the oldest
        # stops now.
        retiring = sorted((pid for pid, w in self.WORKERS.items()
                           if getattr(w, "retiring", False) and not getattr(w, "quitting", False)),
                          key=lambda pid: self.WORKERS[pid].age)
        for pid in retiring[:max(0, len(retiring) - self.num_workers)]:
            log.warning("%d workers are draining after max_requests (at most server.workers "
                        "= %d at once): stopping worker %s now; its open connections are cut",
                        len(retiring), self.num_workers, pid)
            self.quit_workers([pid])

    def quit_workers(self, pids):
        """Stop these draining workers at once (QUIT: their connections are cut); never
        counted against a drain limit again."""
        for pid in pids:
            self.WORKERS[pid].quitting = True
            self.kill_worker(pid, signal.SIGQUIT)

    def kill_workers(self, sig):
        """gunicorn's; a SIGKILL (the end of a stop) is said, by pid: a bare kill left the
        log with nothing on the connections it cut."""
        if sig == signal.SIGKILL and self.WORKERS:
            log.error("worker(s) %s still ran past server.graceful_timeout (%gs) and %gs "
                      "more to cut what they held: killed, and their connections cut",
                      " ".join(map(str, sorted(self.WORKERS))),
                      self.app.conf.server["graceful_timeout"], WORKER_CUT_SECONDS)
        super().kill_workers(sig)

    def kill_worker(self, pid, sig):
        worker = self.WORKERS.get(pid)
        if worker is not None and sig == signal.SIGTERM:
            worker.stopping = True
        super().kill_worker(pid, sig)

    @staticmethod
    def serving(worker):
        """A worker serves once it has heartbeated (see spawn_worker)."""
        return worker.tmp.last_update() != getattr(worker, "born_mtime", None)

    def serving_count(self, pids):
        return sum(1 for pid in pids if pid in self.WORKERS and self.serving(self.WORKERS[pid]))

    def workers_serving(self):
        workers = list(self.WORKERS.values())
        return len(workers) >= self.num_workers and all(map(self.serving, workers))

    cut_margin_added = False    # stop() gave the workers WORKER_CUT_SECONDS (once)

    def stop(self, graceful=True):
        self.notify("STOPPING=1\nSTATUS=stopping")
        if graceful and not self.cut_margin_added:
            # gunicorn SIGKILLs what runs at graceful_timeout, the very moment a worker's
            # own drain (worker.drain) ends and it would cut its connections itself: the
            # kill came first, and the cut requests left no access line, no word in the log.
            # (The workers' cfg was copied at fork: they keep the setting as written.)
            self.cut_margin_added = True
            self.cfg.set("graceful_timeout", self.cfg.graceful_timeout + WORKER_CUT_SECONDS)
        # The listeners are closed here, not by gunicorn's stop: it unlinks every unix:
        # path it listens on, a file removed by hand since (FileNotFoundError: the stop
        # ended there, exit status 1, the workers never told) or another's bound there
        # since. Only the file a listener bound goes (close_listener), and none under
        # systemd, as gunicorn's stop leaves them (its other cases, a USR2 re-exec and
        # reuse_port, cannot arise: handle_usr2 refuses, and no setting sets reuse_port).
        for listener in self.LISTENERS:
            if self.systemd:
                listener.close()
            else:
                close_listener(listener)
        self.LISTENERS = []
        self.stop_workers(graceful)
        super().stop(graceful)      # (gunicorn's own end of a stop: no worker is left to wait for)
        for helper in self.helpers.values():
            helper.stop()
        from ..helpers.helper import APPLIED_CONF
        copy = os.environ.get(APPLIED_CONF)
        if copy:
            try:
                os.unlink(copy)
            except OSError:
                pass

    def stop_workers(self, graceful):
        """gunicorn's wait in its stop, woken by each worker's exit (SIGCHLD) rather than by
        its 0.1 s poll, which slept once more after the last worker was reaped: every stop
        and restart took up to 0.2 s more than its workers did. As gunicorn's: TERM (a
        drain) or QUIT, a SIGINT or SIGQUIT meanwhile makes it a quick stop within 2 s, and
        what still runs at the limit is killed."""
        sig = signal.SIGTERM if graceful else signal.SIGQUIT
        limit = time.monotonic() + self.cfg.graceful_timeout
        self.kill_workers(sig)
        while True:
            self.reap_workers()
            left = limit - time.monotonic()
            if not self.WORKERS or left <= 0:
                break
            # (the base class's wait: this one's batches SIGHUPs for a reload, none is due now)
            for got in Arbiter.wait_for_signals(self, min(left, 0.1)):
                if got in (signal.SIGINT, signal.SIGQUIT) and sig != signal.SIGQUIT:
                    log.info("quick shutdown requested")
                    sig = signal.SIGQUIT
                    self.kill_workers(sig)
                    limit = time.monotonic() + 2.0
        if self.WORKERS:
            # reaped here or by gunicorn's stop after: the master's kill, not memory's
            self.killed_by_stop = frozenset(self.WORKERS)
            self.kill_workers(signal.SIGKILL)
            self.reap_workers()

    killed_by_stop = frozenset()    # pids stop_workers SIGKILLed at its limit (TimeoutKills)

    APPLIED_CONF_FILE = "conf.applied.toml"

    def keep_applied_conf(self):
        """The bytes of the conf file the master applied, kept in its state directory (0600:
        a conf may hold credentials) for its helpers (helpers.helper.applied_conf): a helper
        (re)started, or re-reading its targets on a reload's SIGHUP, reads what the master
        serves, never an edit of the file it refused or has not been asked to apply yet.
        Written whole before any helper of this configuration starts or is signalled; if it
        cannot be (a full disk), the helpers read the file itself, as they once did, and
        the log says so."""
        from ..helpers.helper import APPLIED_CONF
        from ..sync.shm import atomic_write, remove_stale_tmp
        source = getattr(self.app.conf, "source", None)
        state_dir = self.app.conf.server["state_dir"]
        path = os.path.join(state_dir, self.APPLIED_CONF_FILE)
        before = os.environ.pop(APPLIED_CONF, None)
        if before and before != path:       # a reload that moved state_dir
            try:
                os.unlink(before)
            except OSError:
                pass
        if source is None:
            return
        try:
            os.makedirs(state_dir, mode=0o700, exist_ok=True)
            remove_stale_tmp(state_dir, self.APPLIED_CONF_FILE)
            atomic_write(path, source, mode=0o600)
        except OSError as exc:
            try:
                os.unlink(path)             # never a copy of an earlier configuration
            except OSError:
                pass
            log.warning("cannot keep a copy of the applied configuration in %s: %s; helpers "
                        "started from now on read %s itself", state_dir, exc.strerror or exc,
                        self.app.conf_path)
            return
        os.environ[APPLIED_CONF] = path

    stop_asked = False          # a stop signal came (signal): a wait in a reload ends

    def signal(self, sig, frame):
        """gunicorn's handler queues the signal for the main loop (a queue it does not let
        one look into); a stop is also noted, for waits that hold the main loop."""
        if sig in STOP_SIGNALS:
            self.stop_asked = True
        super().signal(sig, frame)

    reload_due = None           # (monotonic) when a SIGHUP held by RELOAD_SPACING is applied
    last_reload_at = -RELOAD_SPACING

    def wait_for_signals(self, timeout=1.0):
        """gunicorn's, with SIGHUPs made one reload: those of one batch, and those within
        RELOAD_SPACING of the last reload's start, applied together at its end. Each came
        before that reload reads the file, so it applies what every one of them asked for.
        A storm (a tool reloading once per file it changed) was one reload per signal, of
        the same file: a generation of workers each, left draining what they held, and past
        max_draining_generations the oldest were stopped, their downloads cut."""
        if self.reload_due is not None:
            timeout = max(0.0, min(timeout, self.reload_due - time.monotonic()))
        signals = super().wait_for_signals(timeout)
        now = time.monotonic()
        if signal.SIGHUP not in signals and (self.reload_due is None or now < self.reload_due):
            return signals
        signals = [sig for sig in signals if sig != signal.SIGHUP]
        if now < self.last_reload_at + RELOAD_SPACING and self.reload_started_workers():
            if self.reload_due is None:
                log.info("SIGHUP %.1fs after the last reload began: reloading %gs after it, "
                         "once for every SIGHUP until then", now - self.last_reload_at,
                         RELOAD_SPACING)
            self.reload_due = self.last_reload_at + RELOAD_SPACING
            return signals
        self.last_reload_at, self.reload_due = now, None
        return [*signals, signal.SIGHUP]        # after a stop in the batch: none is needed

    def reload_started_workers(self):
        """Did the last reload start workers, leaving the previous ones draining? One that
        was refused, or whose workers could not start, did not: the next SIGHUP (the fix)
        is a reload at once, not held by RELOAD_SPACING."""
        reloads = getattr(self, "reloads", None)
        return reloads is None or (reloads.successful and not reloads.workers_missing)

    def wait_for_replacements(self):
        """Let old workers go only once the workers replacing them are serving: -> False if
        one of them died before it served (the old ones serve on; the next turn starts
        another, and tries again).

        gunicorn stops the old generation as soon as the new one is forked; a new worker needs
        a moment to start serving, and requests would queue in the backlog meanwhile (a 1.3 s
        latency spike per reload here). And a conf that passes every check yet no worker can
        start with (a fault only a worker meets) had every old worker stopped for
        replacements that died as they started, turn after turn: no worker served at all.
        """
        limit = max(10.0, float(self.cfg.timeout))
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.stop_asked:
                # A stop came meanwhile: the main loop handles it once this returns. Waited
                # out, it came after up to `limit` more seconds, and with graceful_timeout and
                # the helpers' stops past systemd's TimeoutStopSec: a SIGKILL mid-drain.
                return True
            self.reap_workers()
            current = self.current_workers()
            if len(current) < self.num_workers:
                self.replacements_died()
                return False
            if all(self.serving(self.WORKERS[pid]) for pid in current[-self.num_workers:]):
                return True
            time.sleep(0.02)
        log.warning("replacement workers not serving after %.0fs; stopping old ones anyway",
                    limit)
        return True

    died_generation = 0         # the last generation replacements_died told of

    def replacements_died(self):
        generation = getattr(self, "worker_generation", 1)
        if self.died_generation != generation:          # said once, not every turn
            self.died_generation = generation
            log.error("workers of generation %d die before they serve (the error above); the "
                      "previous workers serve on, and new ones are started about every "
                      "second until they serve: fix the cause, or the conf, and reload",
                      generation)

    def handle_usr2(self):
        """SIGUSR2, gunicorn's binary upgrade, is refused: its new master exec'd
        ``python .../gwserver/__main__.py`` (an ImportError under ``python -m``), and one that
        started would find this one's instance lock. The log says what to do instead."""
        log.warning("SIGUSR2 (gunicorn's binary upgrade) is not supported: a configuration "
                    "change is a reload (SIGHUP), new code a restart (docs/operations.md)")

    def handle_hup(self):
        """SIGHUP: reload. gunicorn's main loop ends the master, and every worker with it, on
        any exception a handler raises: one no check foresaw (a state file of another shape
        once did it) is logged and recorded as a failed reload, and the master serves on with
        what it has."""
        try:
            self.reload_on_hup()
        except Exception as exc:        # noqa: BLE001 - the master must outlive its reload
            log.exception("reload failed: an unexpected error; still serving with what runs")
            self.notify("READY=1\nSTATUS=reload failed (an unexpected error); serving on")
            try:
                self.reloads.record(False, self.app.conf, f"unexpected error: {exc!r}"[:500])
            except Exception:           # noqa: BLE001 - the record is the CLI's, not ours
                log.exception("the reload's verdict could not be recorded")

    def reload_on_hup(self):
        self.reloads.started = time.monotonic()     # this reload read the file from now on
        try:
            self.app.load_pending()
        except Exception as exc:        # noqa: BLE001 - the master must outlive any conf file
            if not isinstance(exc, ConfigError):
                log.exception("reading %s failed", self.app.conf_path)
                exc = ConfigError.of(exc)
            self.app.pending_conf = self.app.pending_tls = None
            for problem in exc.problems:
                log.error("reload refused: %s", problem)
            log.error("reload refused: %s is invalid; still serving the previous configuration",
                      self.app.conf_path)
            self.notify("STATUS=reload refused: invalid configuration; serving the previous one")
            self.reloads.record(False, self.app.conf, "invalid configuration: " +
                                "; ".join(exc.problems[:10]) +
                                (f" (and {len(exc.problems) - 10} more)"
                                 if len(exc.problems) > 10 else ""))
            return
        lock = getattr(self.app, "instance_lock", None)
        if lock is not None:
            try:
                lock.take(lock_paths(self.app.pending_conf))
            except InstanceLocked as exc:
                self.app.pending_conf = self.app.pending_tls = None
                log.error("reload refused: %s; still serving the previous configuration", exc)
                self.notify("STATUS=reload refused: runtime directory in use; serving the "
                            "previous configuration")
                self.reloads.record(False, self.app.conf, str(exc))
                return
        log.info("reloading with %s (%d routes)", self.app.conf_path,
                 len(self.app.pending_conf.router))
        self.notify(f"RELOADING=1\nMONOTONIC_USEC={int(time.monotonic() * 1e6)}\n"
                    f"STATUS=reloading")
        pending = self.app.pending_conf
        if pending.server["state_dir"] != os.environ.get("GWSERVER_LOCAL_STATE"):
            # The state_dir moved to may hold another gateway's (or an earlier run's) files,
            # which no helper of ours will rewrite: its health verdicts held a target out for
            # good, its rollout gauges stayed on /metrics (a rolled_back 1 paged). Removed
            # before the new workers fork: they read health.json as they start, and took a
            # moment to see it gone.
            if not asks_for_health(pending):
                forget_health(pending.server["state_dir"])
            if not asks_for_rollouts(pending):
                forget_rollouts(pending.server["state_dir"])
        reloaded = self.reload()
        if lock is not None and not reloaded:
            lock.keep_only(lock_paths(self.app.conf))      # let go of what the new conf took
        if not reloaded:
            self.notify(f"READY=1\nSTATUS=reload refused; serving with {len(self.WORKERS)} "
                        f"workers and the previous configuration")
            self.reloads.record(False, self.app.conf, self.refused_because)
            return
        # Helpers survive reloads: the health checker re-reads its targets on SIGHUP; a changed
        # [etcd] section gets a sync process that reads it; helpers the new conf asks for (or
        # no longer needs) start (or stop).
        synced = sync_inputs(self.app.conf)
        wanted = helpers_for(self.app)
        state_dir = self.app.conf.server["state_dir"]
        moved = state_dir != os.environ.get("GWSERVER_LOCAL_STATE")
        if moved:       # new workers use it; helpers that write there start again to follow
            os.makedirs(state_dir, mode=0o700, exist_ok=True)
            os.environ["GWSERVER_LOCAL_STATE"] = state_dir
            self.reloads = ReloadStatus(state_dir, self.reloads)
        for name in list(self.helpers):
            if name not in wanted or (name == "config-sync" and synced != self.helper_conf) or (
                    moved and name in ("health", "ocsp", "rollouts")):
                helper = self.helpers.pop(name)
                helper.stop()
                if name == "health" and name not in wanted:
                    forget_health(helper.state_dir)     # no one checks: no verdict holds
                if name == "rollouts" and name not in wanted:
                    forget_rollouts(helper.state_dir)   # no rollout left: no gauge holds
        for name, helper in wanted.items():
            if name not in self.helpers:
                self.helpers[name] = helper
                helper.start()
            elif name in ("health", "ocsp", "rollouts"):
                self.helpers[name].signal(signal.SIGHUP)      # re-read their targets
        self.helper_conf = synced
        if lock is not None:
            # The old sync process is gone; the old workers (not the new ones: drop_copies)
            # hold the paths let go of until they have drained.
            generation = getattr(self, "worker_generation", 1)
            lock.keep_only(lock_paths(self.app.conf), holders={
                pid for pid, worker in self.WORKERS.items()
                if getattr(worker, "generation", 1) != generation})
        # Not started (fork refused), or died before they served (wait_for_replacements)
        missing = max(0, self.num_workers - self.serving_count(self.current_workers()))
        self.reloads.record(True, self.app.conf, workers_missing=missing)
        if missing:
            # fork() refused (TasksMax, memory), or the new workers died before they served:
            # the configuration is taken, but the old workers serve the old one until
            # manage_workers gets the new ones serving.
            self.missing_generation = self.worker_generation
            log.warning("reload applied as generation %d, but %d of %d new workers could not "
                        "start: the previous workers serve the previous configuration until "
                        "they do", self.reloads.generation, missing, self.num_workers)
            self.notify(f"READY=1\nSTATUS=reload applied; {missing} of {self.num_workers} new "
                        f"workers not started yet")
            return
        # The new workers serve; the old ones are draining.
        log.info("reload complete: generation %d, %d workers, %d routes",
                 self.reloads.generation, self.num_workers, self.reloads.routes)
        self.notify(f"READY=1\nSTATUS=serving with {self.num_workers} workers (reloaded)")

    def replace_sync(self):
        """A changed [etcd] section, or static items beside which etcd's are compiled, gets
        its sync process before the new workers start: they listen once it has published
        (worker.wait_for_table). Started after them, it left workers of a moved runtime_dir
        without a table while the old ones were let go; kept, it went on refusing etcd items
        for the ids of static ones a reload had removed (an upstream moved into etcd: its
        routes 503 until the process restarted)."""
        synced = sync_inputs(self.app.conf)
        if synced == self.helper_conf:
            return
        old = self.helpers.pop("config-sync", None)
        if old is not None:
            old.stop()
        new = helpers_for(self.app).get("config-sync")
        if new is not None:
            self.helpers["config-sync"] = new
            new.start()
        self.helper_conf = synced

    def restore_conf(self, conf, tls, cfg):
        """Back to the configuration a refused reload found."""
        self.app.conf, self.app.tls_server, self.app.cfg = conf, tls, cfg
        configure_logging(conf.log["level"])

    def reload(self):
        """gunicorn's ``Arbiter.reload``, with listeners changed in place (listeners.py).

        Returns False, having changed nothing, if the new configuration cannot be applied: its
        gunicorn settings are refused, or a new listener cannot be bound. The master then goes
        on with the configuration, listeners and workers it had.
        """
        old_conf, old_tls, old_cfg = self.app.conf, self.app.tls_server, self.app.cfg
        self.refused_because = None
        try:
            self.app.reload()           # gunicorn's do_load_config sys.exits on a bad setting
            listeners, retired = rebind(self.LISTENERS, listener_roles(self.app.conf),
                                        self.app.cfg, self.log)
        except (SystemExit, ListenerError) as exc:
            self.restore_conf(old_conf, old_tls, old_cfg)
            reason = exc if isinstance(exc, ListenerError) else "gunicorn refused a setting"
            log.error("reload refused: %s; still serving the previous configuration and "
                      "listeners", reason)
            self.refused_because = str(reason)
            return False
        except Exception:
            # One no check foresaw (handle_hup logs it): the new conf stayed half applied,
            # and the next worker forked (a crashed one's replacement) served it. A backlog
            # past a C int did that before settings bounded it.
            self.restore_conf(old_conf, old_tls, old_cfg)
            raise
        self._stats["reloads"] += 1
        self.setup(self.app)
        self.log.reopen_files()
        changed = retired or len(listeners) != len(self.LISTENERS)
        self.LISTENERS = listeners
        for listener in retired:
            # Old workers hold their own copies until they have drained; new workers are
            # forked after this close and never see it.
            log.info("closing listener %s: no longer in the configuration",
                     describe(listener.cfg_addr))
            close_listener(listener)
        if changed:
            log.info("listening at: %s", ", ".join(map(str, listeners)))
        self.cfg.on_reload(self)
        if self.pidfile is not None:
            self.pidfile.unlink()
        if self.cfg.pidfile is not None:
            from gunicorn.pidfile import Pidfile
            self.pidfile = Pidfile(self.cfg.pidfile)
            self.pidfile.create(self.pid)
        util._setproctitle("master [%s]" % self.proc_name)
        self.keep_applied_conf()        # what helpers of this configuration read
        self.replace_sync()
        self.worker_generation += 1
        for _ in range(self.cfg.workers):
            self.spawn_worker()
        # Stops the old workers once the new ones serve, and returns: the old ones drain
        # (up to graceful_timeout) while the main loop goes on replacing dead workers,
        # restarting helpers and taking signals.
        self.manage_workers()
        return True
