"""``gwserver reload``: SIGHUP to the master, then wait for its verdict and say it.

A bare ``kill -HUP`` succeeds whatever the master then decides: a conf it refuses (it logs why
and serves on with the previous one) looked like a good reload to ``systemctl reload`` and to
whatever automation ran it. The master writes each verdict to ``master.json`` in its state
directory (server.app.ReloadStatus: ``reload_attempts``, ``last_reload_successful``,
``last_reload_error``); this command waits for the attempt count to move, in a reload the
master began after its own SIGHUP (``last_reload_started_monotonic``: not one already under
way, which read the file before), and exits 0 for a reload applied, 1 for one refused
(printing why) or for no verdict in time.

It asks the master, not a second validation of the file: a check run beside it would judge
with this release's code what an older running master applies with its own, and without the
credentials systemd gives the service but not always its ExecReload.

    gwserver reload -c /etc/gwserver/gwserver.toml [--pid PID] [--timeout 60]
"""
import json
import os
import re
import signal
import stat
import sys
import time
import tomllib

from .server.instance import LOCK_FILE

STATUS_FILE = "master.json"


def state_dirs(conf_path, pid=None):
    """Where the master's verdicts may be: the state directory it holds its instance lock in
    (found through /proc/PID/fd: a conf that no longer parses, or that names another
    state_dir, still leads there), the conf's [server] state_dir (read as TOML alone, so a
    conf the master will refuse still names it: a reload that moves state_dir writes its
    verdict in the new one) and the default one."""
    from .settings import default_state_dir, read_conf_source
    found = []
    if pid is not None:
        try:
            found.extend(held_lock_dirs(pid))
        except OSError:
            pass                        # not ours to read, or gone: the other places
    try:
        state_dir = tomllib.loads(read_conf_source(conf_path).decode()).get(
            "server", {}).get("state_dir")
        if isinstance(state_dir, str) and state_dir:
            found.append(state_dir)
    except (OSError, tomllib.TOMLDecodeError, AttributeError, UnicodeDecodeError):
        pass
    found.append(default_state_dir())
    return list(dict.fromkeys(found))


def unreadable(conf_path):
    """Why ``conf_path`` names no state_dir for ``state_dirs`` (it cannot be read, or is not
    TOML), or None."""
    from .settings import read_conf_source, toml_error
    try:
        source = read_conf_source(conf_path)
        tomllib.loads(source.decode())
    except OSError as exc:
        return exc.strerror or str(exc)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        return toml_error(source, exc)
    return None


def read_status(directory):
    path = os.path.join(directory, STATUS_FILE)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None                 # (a FIFO would block the open)
        with open(path, "rb") as f:
            status = json.loads(f.read(1 << 16))
        return status if isinstance(status, dict) else None
    except (OSError, ValueError):
        return None


def attempt(status):
    """Which attempt a status tells of, comparable: the master's count of reloads tried, then
    the time (RFC 3339 UTC text; a master of a release before reload_attempts has that alone)."""
    count = status.get("reload_attempts")
    return (count if isinstance(count, int) else 0, str(status.get("last_reload_attempt") or ""))


def master_status(directories, pid):
    """The newest master.json of master ``pid`` (of any master when None) in
    ``directories``, or None; one under /tmp that another user could have written
    (settings.state_dir_problem: the default's last resort) is not read."""
    from .settings import state_dir_problem
    trusted = [d for d in directories if state_dir_problem(d) is None]
    statuses = [status for status in map(read_status, trusted)
                if status is not None and (pid is None or status.get("pid") == pid)]
    return max(statuses, key=attempt, default=None)


def begun_after(status, sent):
    """Is the verdict in ``status`` that of a reload the master began after ``sent`` (our
    SIGHUP, CLOCK_MONOTONIC)? One already under way when we signalled (another SIGHUP's:
    a deploy script, a second operator) read the file before our edit, or another edit; its
    verdict is not ours, and ours comes next. A master of a release that does not say when it
    began (no last_reload_started_monotonic): any new verdict, as before."""
    started = status.get("last_reload_started_monotonic")
    return not isinstance(started, (int, float)) or started >= sent


def held_lock_dirs(pid):
    """The directories of the instance lock files (state dir, runtime dir) that process
    ``pid`` holds open. Raises OSError when its descriptors are not ours to read, or it is
    gone."""
    return [directory for _, directory in held_locks(pid)]


DELETED = " (deleted)"      # what /proc shows after a file's name, once it is removed


def held_locks(pid):
    """(a /proc path the lock is read through, its directory) of each instance lock file
    process ``pid`` holds open. A lock removed with its directory (a tmp cleaner; the
    master makes the directory again) is still held: read through /proc, where its name
    ends in " (deleted)". Raises OSError as held_lock_dirs does."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.endswith(DELETED):
            target = target[:-len(DELETED)]
        if os.path.basename(target) == LOCK_FILE:
            found.append((f"/proc/{pid}/fd/{fd}", os.path.dirname(target)))
    return found


MASTER_TITLE = re.compile(rb"[A-Za-z0-9_.-]+: master\0*")     # proctitle: "{proc_name}: master"


def is_master(pid):
    """Is ``pid`` a gwserver master? It holds an instance lock open, and the lock file names
    it (workers inherit the descriptor; the master wrote its own pid in the file). Its
    command line said nothing: a master.json left by a gone master may name a pid that an
    editor of /etc/gwserver/gwserver.toml or a `tail -f` of its log has now, and a master
    with a proc_name of its own is titled "edge: master". Only where its descriptors are
    not ours to read: its title, whole."""
    from .files import read_regular
    try:
        locks = held_locks(pid)
    except PermissionError:
        return title_is_master(pid)
    except OSError:
        return False                    # gone
    for held, _ in locks:
        try:
            named = read_regular(held, 32)     # through the /proc link: a regular file only
        except OSError:
            continue
        if named.strip() == str(pid).encode():
            return True
    return False


def title_is_master(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return MASTER_TITLE.fullmatch(f.read(4096)) is not None
    except OSError:
        return False


def not_master(pid, source):
    """The refusal for a pid (from ``source``) that is no gwserver master: nothing signalled."""
    return (f"process {pid}, which {source} names, is no gwserver master (it holds no "
            f"instance lock that names it): nothing was signalled")


def served_conf(status, pid):
    """The conf file master ``pid`` reads again at each SIGHUP, as its master.json names it
    (a master of an earlier release named it as given: relative to its working directory),
    or None when that cannot be told."""
    path = status.get("conf") if status else None
    if not isinstance(path, str) or not path:
        return None
    if not os.path.isabs(path):
        try:
            path = os.path.join(os.readlink(f"/proc/{pid}/cwd"), path)
        except OSError:
            return None                 # not ours to read: as before, no comparison
    return path


def in_root(pid, path):
    """``path`` as process ``pid`` opens it, named from here: under /proc/PID/root, with its
    symlinks followed in that root. (Past /proc/PID/root the kernel takes an absolute link's
    target in our root: a conf named through one was compared with our file of its name.)"""
    root = f"/proc/{pid}/root"
    done, todo = "", path.split("/")
    for _ in range(40):                 # the kernel's own bound on links in a path
        while todo:
            part = todo.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                done = done.rpartition("/")[0]      # (done holds no link: as text)
                continue
            try:
                target = os.readlink(root + done + "/" + part)
            except OSError:             # no link (or not ours to read: the caller falls back)
                done += "/" + part
                continue
            todo = target.split("/") + todo
            if target.startswith("/"):
                done = ""
            break
        else:
            return root + (done or "/")
    return root + path                  # a loop: opened, it fails as it fails the master


def other_conf(conf_path, served, pid):
    """The refusal when ``conf_path`` is not the file the master reloads (``served``): a
    SIGHUP makes it read its own file again, and this command said `reload complete` of an
    edit in another copy that no process had read. None when it is that file, or when
    either cannot be looked at (the master's own reload says what it cannot read)."""
    if served is None:
        return None
    # Looked up as the master sees it, through its root: in a mount namespace of its own (a
    # unit's BindReadOnlyPaths=, a container) its path may be another file than ours, and
    # the very file it reads again was refused, the one of the same name here not.
    seen = in_root(pid, served)
    try:
        if os.path.samefile(conf_path, seen if os.path.exists(seen) else served):
            return None
    except OSError:
        return None
    if os.path.abspath(conf_path) == served:
        return (f"{served} in the master's mount namespace is another file than {conf_path} "
                f"here: a SIGHUP would apply that file, and this one would serve nowhere; "
                f"nothing was signalled. Edit the master's file (it is {seen} from here)")
    return (f"the master reloads {served}, not {conf_path}: a SIGHUP would apply that file, "
            f"and this one would serve nowhere; nothing was signalled. Edit {served} and "
            f"reload with -c {served}, or restart the gateway with -c {conf_path}")


def reload(conf_path, pid=None, timeout=60.0, out=sys.stdout, err=sys.stderr):
    directories = state_dirs(conf_path, pid)
    if pid is None:
        problem = unreadable(conf_path)
        if problem is not None:
            # Not "no running master": the master may be serving; its state_dir (where
            # master.json is) is what this file could not tell.
            print(f"{conf_path}: {problem}; so its [server] state_dir, where the master's "
                  f"{STATUS_FILE} is, is unknown: nothing was signalled. Fix the file "
                  f"(gwserver check -c {conf_path}) or give --pid", file=err)
            return 1
        # The master is whoever wrote master.json in the conf's own state_dir, or in the
        # default one when it names none: never both, since the default one may be another
        # instance's (a newer verdict there signalled that master).
        directories = directories[:1]
    before = master_status(directories, pid)
    if pid is None:
        if before is None or not isinstance(before.get("pid"), int):
            print(f"no running master found: no {STATUS_FILE} in {', '.join(directories)} "
                  f"(give --pid)", file=err)
            return 1
        pid = before["pid"]
        if not os.path.exists(f"/proc/{pid}"):
            # A stopped gateway leaves its master.json: "is no gwserver master ... give
            # --pid" sent a newcomer looking for a pid where none runs.
            print(f"no running master found: master {pid}, which {STATUS_FILE} in "
                  f"{directories[0]} names, has exited (the gateway is not running: start "
                  f"it with gwserver run -c {conf_path}); nothing was signalled", file=err)
            return 1
        if not is_master(pid):
            print(f"{not_master(pid, STATUS_FILE)} (give --pid)", file=err)
            return 1
        directories = state_dirs(conf_path, pid)
    elif not is_master(pid):            # a typo, or a pid file of another program
        gone = not os.path.exists(f"/proc/{pid}")
        print(f"no process {pid}" if gone else not_master(pid, "--pid"), file=err)
        return 1
    problem = other_conf(conf_path, served_conf(before, pid), pid)
    if problem is not None:
        print(problem, file=err)
        return 1
    sent = time.monotonic()     # CLOCK_MONOTONIC, as the master's last_reload_started_monotonic
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        print(f"no process {pid}", file=err)
        return 1
    if before is None:
        print(f"sent SIGHUP to {pid}, but found no {STATUS_FILE} of it in "
              f"{', '.join(directories)} to learn the verdict from: see the master's log",
              file=err)
        return 1
    deadline = time.monotonic() + timeout
    applied = None          # our reload's verdict, applied, while its new workers are missing
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = master_status(directories, pid)
        if now is None or not (attempt(now) > attempt(before) and begun_after(now, sent)):
            if not is_master(pid):
                return master_gone(pid, applied, directories, err)
            continue
        if not now.get("last_reload_successful") and applied is None:
            print(f"reload refused: {now.get('last_reload_error') or 'see the log'}; still "
                  f"serving the previous configuration", file=err)
            return 1
        if applied is None:
            applied = now
        if not now.get("workers_not_started"):
            # Another SIGHUP's reload may have come since: applied, its generation serves;
            # refused, ours does (it said "a later reload's generation N", N being ours).
            if now.get("generation") != applied.get("generation"):
                print(f"reload applied as generation {applied.get('generation')}; a later "
                      f"reload's generation {now.get('generation')} serves now", file=out)
            else:
                print(f"reload complete: generation {applied.get('generation')}", file=out)
            return 0
        # Applied, but its new workers do not serve yet: fork refused (TasksMax), or slow to
        # start (the master stops waiting after max(10 s, timeout)). The master says when
        # they serve; the verdict waits for that, as long as our timeout allows.
        if not is_master(pid):
            return master_gone(pid, applied, directories, err)
    if applied is not None:
        print(f"reload applied as generation {applied.get('generation')}, but "
              f"{applied.get('workers_not_started')} new workers could not start or were "
              f"not serving after {timeout:g} s (see the master's log); the previous workers "
              f"serve the previous configuration until they do", file=err)
        return 1
    print(f"no verdict from master {pid} in {timeout:g} s (see its log)", file=err)
    return 1


def master_gone(pid, applied, directories, err):
    """The master stopped (killed, `systemctl stop` or restart) while we waited: said then,
    with the master that runs now if there is one. We waited out the timeout, and then said
    the previous workers served the previous configuration, of a master that was gone."""
    what = "its verdict" if applied is None else \
        f"the new workers of generation {applied.get('generation')} served"
    other = master_status(directories, None)
    now = ""
    if other is not None and isinstance(other.get("pid"), int) and other["pid"] != pid \
            and is_master(other["pid"]):
        now = (f"; master {other['pid']} runs now (started again: generation "
               f"{other.get('generation')} of the configuration as it read it)")
    print(f"master {pid} exited before {what} (see its log){now}", file=err)
    return 1


def wait_seconds(text):
    """--timeout: seconds, 0 or more. A negative one (or NaN) signalled the master, then said
    at once "no verdict from master N in -1 s" of a reload that was applied."""
    import argparse
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text!r}: nothing "
                                         f"was signalled")
    return value


def cmd_reload(args):
    return reload(args.conf, args.pid, args.timeout)


def add_parser(sub, conf_option):
    parser = sub.add_parser("reload", help="SIGHUP to the master; wait for its verdict (exit "
                            "0: applied, 1: refused or its workers not started, with why)")
    conf_option(parser)
    parser.add_argument("--pid", type=int, default=None,
                        help="the master's pid (default: the one master.json names)")
    parser.add_argument("--timeout", type=wait_seconds, default=60.0,
                        help="seconds to wait for the verdict (default 60)")
    parser.set_defaults(func=cmd_reload)
