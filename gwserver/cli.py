"""``gwserver run | check | reload | settings | demo-upstream``."""
import argparse
import os
import signal
import sys

from .errors import ConfigError
from .processes import MASTER_SIGNALS


def cmd_run(args):
    import shutil
    from .server.app import GatewayApplication
    from .settings import load_conf
    try:
        conf = load_conf(args.conf)
    except ConfigError as exc:
        return report(args.conf, exc)
    from .settings import state_dir_problem
    try:
        os.makedirs(conf.server["state_dir"], mode=0o700, exist_ok=True)
    except OSError as exc:      # a file in its place, a read-only or missing parent
        print(f"{args.conf}: cannot start: [server] state_dir {conf.server['state_dir']}: "
              f"cannot create it: {exc.strerror}", file=sys.stderr)
        return 2
    problem = state_dir_problem(conf.server["state_dir"])
    if problem is not None:
        print(f"{args.conf}: cannot start: [server] state_dir: {problem}", file=sys.stderr)
        return 2
    from .state.store import LocalStore
    try:
        LocalStore.prepare(conf.server["state_dir"])
    except OSError as exc:      # a full disk: else every worker dies at boot, in a loop
        print(f"{args.conf}: cannot start: [server] state_dir {conf.server['state_dir']}: "
              f"cannot make the per-host limit table there: {exc.strerror or exc}",
              file=sys.stderr)
        return 2
    from .server.instance import InstanceLock, InstanceLocked, lock_paths
    instance_lock = InstanceLock()      # held for the master's life (see instance.py)
    try:
        instance_lock.retarget(lock_paths(conf))
    except InstanceLocked as exc:
        print(f"{args.conf}: cannot start: {exc}", file=sys.stderr)
        return 2
    for warning in instance_lock.warnings:
        print(f"{args.conf}: warning: {warning}", file=sys.stderr)
    # Host state (health, ejections, per-host limits and breakers): files the workers map and
    # the helpers write, in [server] state_dir, kept across restarts (the instance lock above
    # keeps it to one instance). Helpers learn it from the environment.
    os.environ["GWSERVER_LOCAL_STATE"] = conf.server["state_dir"]
    private_metrics_dir = None
    if conf.admin["metrics"]:
        from .server import metrics
        metrics_dir = conf.admin["metrics_dir"]
        if not metrics_dir:     # in memory: the files are rewritten with every request
            from .settings import tmpfs_dir
            metrics_dir = private_metrics_dir = metrics.private_dir(
                tmpfs_dir(runtime_first=True))
        # Before anything imports prometheus_client: it reads the directory at import.
        try:
            metrics.prepare(metrics_dir)
        except OSError as exc:      # (a traceback, exit 1: systemd restarted it in a loop)
            print(f"{args.conf}: cannot start: [admin] metrics_dir {metrics_dir}: cannot "
                  f"make it or clear it: {exc.strerror or exc}", file=sys.stderr)
            return 2
    master = os.getpid()
    try:
        try:
            app = GatewayApplication(args.conf, conf)     # reads the TLS certificates
        except ConfigError as exc:
            return report(args.conf, exc)
        app.instance_lock = instance_lock
        app.run()
        status = 0
    except SystemExit as exc:
        if os.getpid() != master:
            raise       # a worker's own exit, on its way out through this frame (below)
        status = exc.code       # gunicorn's halt: its stop is done, its last line logged
    finally:
        # What the master created for itself goes with it. Workers are forked inside run() and
        # leave through this frame too: they must not remove what the others still use.
        if os.getpid() == master:
            if private_metrics_dir:
                shutil.rmtree(private_metrics_dir, ignore_errors=True)
    exit_at_once(status)


def exit_at_once(status):
    """Leave as ``sys.exit(status)`` would, without the interpreter's teardown of every module
    and object: 70-140 ms of each master's stop here (its heap holds gunicorn, gevent, the
    compiled table and the plugins), which a restart, systemd's stop and every test's gateway
    waited for. What of the teardown matters runs first: atexit's functions (logging's
    shutdown among them) and the flush of stdout and stderr. The master has no thread left
    to wait for (gunicorn's control socket is off)."""
    import atexit
    if status is None:
        status = 0
    elif not isinstance(status, int):
        print(status, file=sys.stderr)      # as sys.exit("text") says it
        status = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):       # a reader gone, a stream closed
            pass
    os._exit(status & 0xFF)


def cmd_check(args):
    from .client.tls import server_tls
    from .settings import load_conf
    try:
        conf = load_conf(args.conf)
        tls_server = server_tls(conf)
    except ConfigError as exc:
        return report(args.conf, exc)
    if args.dump:
        from .settings import dump_toml
        sys.stdout.write(dump_toml(conf))
        return 0
    tls = f"; TLS on {', '.join(conf.tls['bind'])}" if conf.tls else ""
    from .settings import resolve_workers
    workers = conf.server["workers"]
    workers = f"{resolve_workers(workers)} workers" + (" (auto)" if workers == "auto" else "")
    print(f"{args.conf}: ok ({len(conf.router)} routes, {workers}, "
          f"listening on {', '.join(conf.server['bind'])}{tls})")
    from .settings import conf_warnings
    for warning in [*(tls_server.warnings if tls_server else ()), *conf_warnings(conf)]:
        print(f"{args.conf}: warning: {warning}")
    from .sync.watcher import snapshot_warnings
    for warning in [*snapshot_warnings(conf), *state_dir_warnings(conf.server["state_dir"]),
                    *state_dir_warnings(conf.admin["metrics"] and conf.admin["metrics_dir"],
                                        "[admin] metrics_dir")]:
        print(f"{args.conf}: warning: {warning}")
    return 0


def state_dir_warnings(path, setting="[server] state_dir"):
    """What would stop ``gwserver run`` creating [server] state_dir (or ``setting``) on this
    host (a file in the way): check said "ok" to a conf that run then refused. A warning,
    not an error: it is the host's state, not the file's."""
    if not path:
        return []
    ancestor = os.path.abspath(path)
    while not os.path.lexists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if os.path.isdir(ancestor):
        return []
    return [f"{setting} {path}: cannot be created on this host: {ancestor} is not "
            f"a directory; gwserver run refuses to start"]


def cmd_settings(args):
    from .settings import reference_toml
    sys.stdout.write(reference_toml())
    return 0


def cmd_demo_upstream(args):
    from .demo import listen, serve
    try:
        server = listen(args.host, args.port)
    except (OSError, OverflowError) as exc:
        # A port taken (an earlier demo still running) was a traceback, which scripts/demo
        # scrolled away under the gateway's start: every request then a 502 from nowhere.
        print(f"demo-upstream: cannot listen on {args.host}:{args.port}: "
              f"{getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return 1
    serve(args.host, args.port, server=server)
    return 0


def cmd_ocsp(args):
    from .helpers.ocsp import run
    run(args.conf)
    return 0


def cmd_tls_new_ticket_key(args):
    from .client.tickets import write_key_file
    try:
        write_key_file(args.file)
    except OSError as exc:
        print(f"{args.file}: cannot write: {exc.strerror}", file=sys.stderr)
        return 2
    return 0


def cmd_health(args):
    from .helpers.health import run
    run(args.conf)
    return 0


def cmd_sync(args):
    from .sync.watcher import run
    run(args.conf)
    return 0


def report(path, exc):
    print(f"{path}: invalid configuration:", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)
    return 2


CONF = "/etc/gwserver/gwserver.toml"


def conf_option(parser, default=CONF):
    """-c/--conf on a command (``default`` SUPPRESS: an action's own, so that ``routes put
    -c FILE`` works as well as ``routes -c FILE put``)."""
    parser.add_argument("-c", "--conf", default=default,
                        help=f"the conf file (default {CONF})")


def main(argv=None):
    # A SIGHUP before the master's handler is in place (the imports, the conf, the binds:
    # half a second) killed it, SIGHUP's default action: a tool that reloads the gateway as
    # it starts (a template renderer's first pass) stopped it; so did logrotate's SIGUSR1.
    # Held from here, before the parsers' imports, until then (GatewayArbiter.start), each
    # is what it asks for. Other commands take them as before.
    held = signal.pthread_sigmask(signal.SIG_BLOCK, MASTER_SIGNALS)
    args = None
    try:
        args = parse(argv)
    finally:
        if args is None or args.func is not cmd_run:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, MASTER_SIGNALS - held)
    try:
        return args.func(args)
    except BrokenPipeError:
        # Its reader left (`gwserver settings | head`): a traceback for it, and another from
        # the interpreter's flush at exit, said nothing. Quiet, with the status of a process
        # SIGPIPE ended (as `ls | head` leaves), not 1, which some commands give a meaning.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE



def parse(argv):
    from . import __version__
    parser = argparse.ArgumentParser(prog="gwserver", description="An API gateway.")
    parser.add_argument("--version", action="version", version=f"gwserver {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start the master and its workers (foreground)")
    conf_option(run)
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check", help="validate a conf file; exit 0 if it is good")
    conf_option(check)
    check.add_argument("--dump", action="store_true", help="print the effective configuration "
                       "(TOML, defaults filled, secrets masked) instead of a summary")
    check.set_defaults(func=cmd_check)
    sync = sub.add_parser("sync", help="the config-sync process (the master starts it)")
    conf_option(sync)
    sync.set_defaults(func=cmd_sync)
    health = sub.add_parser("health", help="the active health-check process (the master "
                            "starts it)")
    conf_option(health)
    health.set_defaults(func=cmd_health)
    ocsp = sub.add_parser("ocsp", help="the OCSP-fetching process (the master starts it)")
    conf_option(ocsp)
    ocsp.set_defaults(func=cmd_ocsp)
    tls = sub.add_parser("tls", help="TLS housekeeping").add_subparsers(dest="tls_command",
                                                                       required=True)
    ticket_key = tls.add_parser("new-ticket-key", help="write a new session-ticket key file "
                                "(80 random bytes, mode 0600, replaced atomically; a file "
                                "replaced keeps its owner, group and group read)")
    ticket_key.add_argument("file")
    ticket_key.set_defaults(func=cmd_tls_new_ticket_key)
    from .reload_cli import add_parser as add_reload_parser
    add_reload_parser(sub, conf_option)
    settings = sub.add_parser("settings", help="print every setting with its default and doc")
    settings.set_defaults(func=cmd_settings)
    demo = sub.add_parser("demo-upstream", help="a small HTTP server to proxy to (demo, tests)")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=9001)
    demo.set_defaults(func=cmd_demo_upstream)
    from .routes_cli import add_parsers
    add_parsers(sub)
    from .rollouts_cli import add_parsers as add_rollout_parsers
    add_rollout_parsers(sub)
    args, extra = parser.parse_known_args(argv)
    if extra:
        hint = ""
        named = any(a == "--conf" or a.startswith(("-c", "--conf="))
                    for a in argv or sys.argv[1:])
        if not named and getattr(args, "conf", None) == CONF and len(extra) == 1 \
                and not extra[0].startswith("-"):
            # `gwserver check gwserver.toml`, as promtool and haproxy -c take it: the
            # file is an option here, and argparse named it no more than "unrecognized".
            hint = f" (the conf file is an option: -c {extra[0]})"
        parser.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    return args


if __name__ == "__main__":
    sys.exit(main())
