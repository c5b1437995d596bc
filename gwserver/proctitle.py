"""Process titles that say the role: ``gwserver: master``, ``gwserver: worker``, helpers.

gunicorn titles its processes ``gunicorn: master [name]``; we route its calls through here so
``ps`` and ``systemctl status`` show gwserver's roles instead. (~0.8 us a call: never per request.)
"""
import re

import gunicorn.util

try:
    from setproctitle import setproctitle
except ImportError:    # pragma: no cover - setproctitle is a hard dependency
    def setproctitle(title):
        pass

_GUNICORN_TITLE = re.compile(r"(?P<role>\w+) \[(?P<name>[^\]]+)\]")


def set_title(name, role):
    setproctitle(f"{name}: {role}")


# gunicorn titles a worker right after the fork; the worker retitles itself "worker" once its
# listeners accept (GatewayWorker.serve), so `ps` tells a booting worker from a serving one.
STARTING = {"worker": "worker (starting)"}


def _from_gunicorn(title):
    match = _GUNICORN_TITLE.fullmatch(title)
    if match:
        set_title(match["name"], STARTING.get(match["role"], match["role"]))
    else:
        setproctitle(f"gwserver: {title}")


def install():
    gunicorn.util._setproctitle = _from_gunicorn
