"""Other processes, as this one can see them."""
import os


def pid_alive(pid):
    """Is process ``pid`` running? Another user's process (EPERM) counts as running; a pid
    taken again by an unrelated process cannot be told apart, and counts too."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
