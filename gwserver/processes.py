"""Other processes, as this one can see them."""
import os
import signal
import time


# Linux's PID_MAX_LIMIT (2**22 on 64-bit; kernel.pid_max is at most that)
PID_MAX = 4194304


def pid_text(text):
    """The pid a file (a lock's, a status) names, or None when ``text`` names none: ASCII
    digits only (str.isdigit() takes "\u00b2", which int() refuses), within PID_MAX."""
    if not (text.isascii() and text.isdigit() and len(text) <= 7):
        return None
    pid = int(text)
    return pid if 0 < pid <= PID_MAX else None


# What the master handles once it runs, and what killed it before (their default action):
# held from the first line of `gwserver run` until its handlers are in place (cli.main)
MASTER_SIGNALS = frozenset({signal.SIGHUP, signal.SIGUSR1})


def pid_alive(pid):
    """Is process ``pid`` running? Another user's process (EPERM) counts as running; a pid
    taken again by an unrelated process cannot be told apart, and counts too. A pid no
    process can have (0 and negatives name process groups to kill(); one past a C int was an
    OverflowError: read from a file, a lock's, say) is not running."""
    if not 0 < pid <= PID_MAX:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_start(pid):
    """When process ``pid`` started (``/proc/PID/stat``'s starttime, clock ticks since boot),
    or None when it cannot be read. With the pid it names one process: a pid alone is taken
    again by the next process that gets it (after a wrap of kernel.pid_max, or at once in a
    container started again, whose processes get the pids of its previous run)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rpartition(b")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return None


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")      # process_start's unit


def process_age(pid):
    """Seconds since process ``pid`` started (process_start), or None when it cannot be
    read. starttime and CLOCK_BOOTTIME count from the same boot: no wall clock involved."""
    start = process_start(pid)
    if start is None:
        return None
    return time.clock_gettime(time.CLOCK_BOOTTIME) - start / CLOCK_TICKS


def running(pid):
    """pid_alive, but a zombie is dead: an orphan killed -9 waits to be reaped by whoever
    adopted it (an init that reaps late), and writes nothing meanwhile."""
    if not pid_alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


# Descriptors of the directories own_dir made, by path, each under a shared flock for the
# life of this process and of the children it forks (workers write in the master's)
_OWN_DIRS = {}


def _hold(path):
    """A descriptor of directory ``path`` under a shared flock (closed if it cannot be had)."""
    import fcntl
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except BaseException:
        os.close(fd)
        raise
    return fd


def own_dir(prefix, parent=None, sweep=True):
    """A fresh directory of this process's in ``parent`` (None: tempfile's default), named
    ``prefix``, its pid, "-" and mkdtemp's letters, after removing the ones of that name
    whose process is gone (remove_dead_dirs): a process killed -9 never runs its clean-up.
    It holds a shared flock on the directory, which says it lives to a process that cannot
    see its pid (another PID namespace: a container sharing /dev/shm or /tmp). ``sweep``
    False: none removed (an orphaned worker: the dead master's directory is its siblings'
    until each moves out, and removed under them it failed their metrics)."""
    import tempfile
    if sweep:
        remove_dead_dirs(parent or tempfile.gettempdir(), prefix)
    path = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent)
    _OWN_DIRS[os.path.abspath(path)] = _hold(path)
    return path


def hold_again(path):
    """own_dir's lock on ``path``, a directory of its made again after something removed it
    (a tmp cleaner; the master makes its metrics directory again: app.ensure_metrics_dir).
    The lock held was the removed directory's: a gateway in another PID namespace took the
    new one for a dead owner's and removed it too. Not one of own_dir's: nothing to hold."""
    path = os.path.abspath(path)
    old = _OWN_DIRS.get(path)
    if old is None:
        return
    _OWN_DIRS[path] = _hold(path)
    os.close(old)           # the removed directory's: one descriptor per path, never more


def remove_dead_dirs(parent, prefix):
    """Remove the directories in ``parent`` that own_dir made for processes no longer
    running: ours by name (``prefix``, a pid, "-", letters), by owner (this user: never
    another's, under a shared /tmp) and by type (a directory, not a link to one), and dead
    by pid and by lock. By pid alone, a gateway in another PID namespace (a container
    sharing /dev/shm), where this one's pids are no process, took every live master's
    metrics directory for a dead one's, and its workers' next writes failed."""
    import fcntl
    import re
    import shutil
    name_of_ours = re.compile(re.escape(prefix) + r"([0-9]+)-[A-Za-z0-9_]+")
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        match = name_of_ours.fullmatch(name)     # ([0-9]: "\u00b2" is no pid to int())
        if match is None or running(int(match.group(1))):
            continue            # not ours; or its process runs (or the pid was taken again)
        path = os.path.join(parent, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue            # gone meanwhile, a link, not a directory
        try:
            if os.fstat(fd).st_uid != os.getuid():
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                # its owner lives where its pid names no process of ours; or the filesystem
                # cannot say (NFS emulates flock with POSIX locks: EBADF on this descriptor)
                continue
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)
