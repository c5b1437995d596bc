"""What every helper process (config-sync, health, ocsp) does first.

The master starts helpers with its own environment (``server/app.py``, ``Helper``); each one
leaves prometheus' multiprocess directory to the workers (its gauges go to a text file of its
own, and must not be summed into the workers' files), dies with the master, reads the conf
file, titles itself ``gwserver: ROLE`` and logs like the master.
"""
import ctypes
import os
import signal
import time


MASTER_PID = "GWSERVER_MASTER_PID"      # set by the master for the helpers it starts
# The copy of the conf file the master applied (server.app.GatewayArbiter.keep_applied_conf):
# what a helper reads, at its start and on a reload's SIGHUP, rather than the file itself,
# which may hold an edit the master refused or has not been asked to apply yet.
APPLIED_CONF = "GWSERVER_APPLIED_CONF"
# Blocked by the master across a helper's start, so a reload's SIGHUP that comes before the
# helper's handler is held, not fatal (SIGHUP's default action); see handlers_in_place().
HELD_SIGNALS = {signal.SIGHUP}


def beat_path(state_dir, role, pid):
    """The empty file whose mtime is helper ``role`` (``pid``)'s promised next sign of life,
    a CLOCK_MONOTONIC time (``Heartbeat``). The master makes it when it starts the helper:
    an mtime needs no free space, so a full state_dir stops no beat."""
    return os.path.join(state_dir, f"helper-{role}.{pid}.beat")


class Heartbeat:
    """A helper's sign of life for the master, which kills and restarts a helper that stays
    silent ``[server] helper_timeout`` seconds past its promise (``Helper.check_progress``):
    a helper stuck in a call that never returns would otherwise keep its pid, and its
    routes, health or staples, stale for good. The helper's main loop beats, saying how long
    its next turn may take; a promise covers a second more, so a loop that beats several
    times a second touches the file about once a second."""

    def __init__(self, state_dir, role):
        self.path = beat_path(state_dir, role, os.getpid()) if state_dir else None
        self.promised = 0.0

    def beat(self, within):
        """Alive now; the next beat comes within ``within`` seconds."""
        if self.path is None:
            return                          # run by hand, without a master watching
        due = time.monotonic() + within
        if self.promised - 1.0 <= due <= self.promised:
            return      # the promise made covers it, and is no more than a second later
        promised = due + 1.0
        try:
            os.utime(self.path, (promised, promised))
        except OSError:
            return      # no file: the master could not make one, and does not watch us
        self.promised = promised


def handlers_in_place():
    """The helper's signal handlers are set: let through what the master held for it."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)


def die_with_parent():
    """Ask the kernel to SIGTERM us if the master dies (PR_SET_PDEATHSIG), and go now if it
    died before we asked: a master killed while a helper it had just started was still
    importing left that helper running for good, beside the next master's own."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:
        pass
    master = os.environ.get(MASTER_PID)
    if master and os.getppid() != int(master):
        raise SystemExit(f"gwserver helper: its master (pid {master}) is gone; exiting")


def applied_conf(conf_path):
    """The configuration the master serves: the copy of ``conf_path`` it applied (named by
    APPLIED_CONF), checked as ``conf_path``. A helper restarted after the file was edited
    (a crash, a kill, a stuck loop between the edit and its reload) once ran the edit: one
    the master refused killed it at every restart (config-sync: no etcd change applied
    until the file was fixed), one not yet applied ran beside workers of the previous one.
    Without a copy (started by hand, or the state_dir removed and its copy with it) the file
    itself."""
    from ..settings import load_conf
    copy = os.environ.get(APPLIED_CONF)
    if copy:
        try:
            with open(copy, "rb") as f:
                return load_conf(conf_path, f.read())
        except OSError:
            pass
    return load_conf(conf_path)


def start_helper(conf_path, role, state_dir_needed=False, secrets=()):
    """-> (conf, host state directory or None). ``secrets``: the sections whose secret
    files (settings.SECRET_FILES) this helper reads as it starts; the others' are not read
    (settings.READ_SECRET_FILES)."""
    from .. import proctitle
    from ..server.app import configure_logging
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    die_with_parent()
    # the master checked the conf's files; one replaced since made this helper die at each
    # start (files.checks_files; config-sync checks again the items it takes from etcd, once
    # it compiled the conf's: sync.watcher.run)
    from ..files import compiles_checked
    compiles_checked()
    from .. import settings
    settings.READ_SECRET_FILES = frozenset(secrets)
    conf = applied_conf(conf_path)
    proctitle.set_title(conf.server["proc_name"], role)
    configure_logging(conf.log["level"])
    state_dir = os.environ.get("GWSERVER_LOCAL_STATE")
    if state_dir_needed and not state_dir:
        raise SystemExit(f"gwserver {role}: GWSERVER_LOCAL_STATE is not set (the master "
                         f"sets it)")
    return conf, state_dir


def heartbeat(role):
    """The Heartbeat of helper ``role`` (GWSERVER_LOCAL_STATE, set by the master)."""
    return Heartbeat(os.environ.get("GWSERVER_LOCAL_STATE"), role)


def no_beat(within):
    """The ``beat`` of a helper's loop object run without a master (tests, by hand)."""
