"""``gwserver reload``: SIGHUP to the master, then wait for its verdict and say it.

A bare ``kill -HUP`` succeeds whatever the master then decides: a conf it refuses (it logs why
and serves on with the previous one) looked like a good reload to ``systemctl reload`` and to
whatever automation ran it. The master writes each verdict to ``master.json`` in its state
directory (server.app.ReloadStatus: ``reload_attempts``, ``last_reload_successful``,
``last_reload_error``); this command waits for the attempt count to move and exits 0 for a
reload applied, 1 for one refused (printing why) or for no verdict in time.

It asks the master, not a second validation of the file: a check run beside it would judge
with this release's code what an older running master applies with its own, and without the
credentials systemd gives the service but not always its ExecReload.

    gwserver reload -c /etc/gwserver/gwserver.toml [--pid PID] [--timeout 60]
"""
import json
import os
import signal
import sys
import time
import tomllib

STATUS_FILE = "master.json"


def state_dirs(conf_path):
    """Where the master's verdicts may be: the conf's [server] state_dir (read as TOML
    alone, so a conf the master will refuse still names it) and the default one."""
    from .settings import default_state_dir
    found = []
    try:
        with open(conf_path, "rb") as f:
            state_dir = tomllib.load(f).get("server", {}).get("state_dir")
        if isinstance(state_dir, str) and state_dir:
            found.append(state_dir)
    except (OSError, tomllib.TOMLDecodeError, AttributeError, UnicodeDecodeError):
        pass
    found.append(default_state_dir())
    return list(dict.fromkeys(found))


def read_status(directory):
    try:
        with open(os.path.join(directory, STATUS_FILE), "rb") as f:
            status = json.load(f)
        return status if isinstance(status, dict) else None
    except (OSError, ValueError):
        return None


def master_status(directories, pid):
    """(directory, status) of ``pid``'s master.json, or of the first found when ``pid`` is
    None; (None, None) when there is none."""
    for directory in directories:
        status = read_status(directory)
        if status is not None and (pid is None or status.get("pid") == pid):
            return directory, status
    return None, None


def reload(conf_path, pid=None, timeout=60.0, out=sys.stdout, err=sys.stderr):
    directories = state_dirs(conf_path)
    directory, before = master_status(directories, pid)
    if pid is None:
        if before is None:
            print(f"no running master found: no {STATUS_FILE} in {', '.join(directories)} "
                  f"(give --pid)", file=err)
            return 1
        pid = before["pid"]
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        print(f"no process {pid}", file=err)
        return 1
    if before is None or "reload_attempts" not in before:
        # (a master of a release that wrote no attempt count, or a state dir not found)
        print(f"sent SIGHUP to {pid}; no verdict to wait for in {', '.join(directories)}: "
              f"see the master's log", file=err)
        return 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.1)
        # a reload that moves state_dir writes its verdict in the new one
        _, now = master_status(directories, pid)
        if now is not None and now.get("reload_attempts", 0) > before["reload_attempts"]:
            if now.get("last_reload_successful"):
                print(f"reload complete: generation {now.get('generation')}", file=out)
                return 0
            print(f"reload refused: {now.get('last_reload_error') or 'see the log'}; still "
                  f"serving the previous configuration", file=err)
            return 1
    print(f"no verdict from master {pid} in {timeout:g} s (see its log)", file=err)
    return 1


def cmd_reload(args):
    return reload(args.conf, args.pid, args.timeout)


def add_parser(sub, conf_option):
    parser = sub.add_parser("reload", help="SIGHUP to the master; wait for its verdict (exit "
                            "0: applied, 1: refused, with why)")
    conf_option(parser)
    parser.add_argument("--pid", type=int, default=None,
                        help="the master's pid (default: the one master.json names)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for the verdict (default 60)")
    parser.set_defaults(func=cmd_reload)
