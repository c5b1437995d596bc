"""Other processes, as this one can see them."""
import os


# Linux's PID_MAX_LIMIT (2**22 on 64-bit; kernel.pid_max is at most that)
PID_MAX = 4194304


def pid_text(text):
    """The pid a file (a lock's, a status) names, or None when ``text`` names none: ASCII
    digits only (str.isdigit() takes "\u00b2", which int() refuses), within PID_MAX."""
    if not (text.isascii() and text.isdigit() and len(text) <= 7):
        return None
    pid = int(text)
    return pid if 0 < pid <= PID_MAX else None


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
