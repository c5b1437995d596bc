"""What every helper process (config-sync, health, ocsp) does first.

The master starts helpers with its own environment (``server/app.py``, ``Helper``); each one
leaves prometheus' multiprocess directory to the workers (its gauges go to a text file of its
own, and must not be summed into the workers' files), dies with the master, reads the conf
file, titles itself ``gwserver: ROLE`` and logs like the master.
"""
import ctypes
import os
import signal


MASTER_PID = "GWSERVER_MASTER_PID"      # set by the master for the helpers it starts
# Blocked by the master across a helper's start, so a reload's SIGHUP that comes before the
# helper's handler is held, not fatal (SIGHUP's default action); see handlers_in_place().
HELD_SIGNALS = {signal.SIGHUP}


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


def start_helper(conf_path, role, state_dir_needed=False):
    """-> (conf, host state directory or None)."""
    from .. import proctitle
    from ..settings import load_conf
    from ..server.app import configure_logging
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    die_with_parent()
    conf = load_conf(conf_path)
    proctitle.set_title(conf.server["proc_name"], role)
    configure_logging(conf.log["level"])
    state_dir = os.environ.get("GWSERVER_LOCAL_STATE")
    if state_dir_needed and not state_dir:
        raise SystemExit(f"gwserver {role}: GWSERVER_LOCAL_STATE is not set (the master "
                         f"sets it)")
    return conf, state_dir
