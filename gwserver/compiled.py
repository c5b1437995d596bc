"""The compiled build of the request path: which modules run compiled, and the rule that a
compiled module never runs older code than its source.

The hot modules (each one with a ``.pxd`` beside it) are compiled by Cython when the package
is installed (setup.py), into extension modules that Python imports before the ``.py`` of the
same name. The ``.py`` stays the code: the ``.pxd`` only declares attribute slots and
argument types. The build writes ``compiled.json``: each compiled module's name and the
SHA-256 of the source it was built from. At import, a module whose source no longer has that
digest (edited since the build, in a checkout) is imported from its ``.py``, and so is every
one when ``GWSERVER_PURE=1`` is set: a stale build can never run. ``status()`` says which run
compiled (``gwserver version``, the master's first log line).
"""
import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
RECORD = os.path.join(PACKAGE_DIR, "compiled.json")


def source_digest(path):
    """SHA-256 of a module's .py and of the .pxd beside it (setup.py computes the same)."""
    digest = hashlib.sha256()
    try:
        for part in (path, path[:-3] + ".pxd"):
            with open(part, "rb") as source:
                digest.update(source.read())
    except OSError:
        return ""           # no digest a build recorded: the module is taken from its .py
    return digest.hexdigest()


def built():
    """{module name: source digest} of the last build, {} when there was none."""
    try:
        with open(RECORD, "rb") as record:
            modules = json.load(record)
    except (OSError, ValueError):
        return {}
    return modules if isinstance(modules, dict) else {}


def source_path(name):
    return os.path.join(PACKAGE_DIR, *name.split(".")[1:]) + ".py"


class SourceFirst:
    """A meta path finder that imports the named modules from their ``.py``."""

    def __init__(self, names):
        self.names = frozenset(names)

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.names:
            return None
        return importlib.util.spec_from_file_location(fullname, source_path(fullname))


FROM_SOURCE = frozenset()       # built modules this process imports from their .py


def take_sources_where_stale():
    """Install the finder for every compiled module that must not run compiled; the names."""
    global FROM_SOURCE
    names = [name for name, digest in built().items()
             if pure() or source_digest(source_path(name)) != digest]
    if names:
        sys.meta_path.insert(0, SourceFirst(names))
    FROM_SOURCE = frozenset(names)
    return names


def pure():
    return os.environ.get("GWSERVER_PURE", "") not in ("", "0")


def status():
    """(modules that run compiled, modules built but run from their source), by name; from
    the files, importing none (the master must not import what its workers patch first)."""
    compiled, sources = [], []
    for name in sorted(built()):
        if name in FROM_SOURCE:
            sources.append(name)
        elif any(os.path.exists(source_path(name)[:-3] + suffix)
                 for suffix in importlib.machinery.EXTENSION_SUFFIXES):
            compiled.append(name)
    return compiled, sources


def describe():
    """One line for the master's log and ``gwserver --version``."""
    compiled, sources = status()
    if not compiled:
        if not sources:
            return "pure Python: no compiled build"
        return "pure Python: " + ("GWSERVER_PURE is set" if pure()
                                  else "the sources changed since the build")
    text = f"{len(compiled)} request-path modules compiled"
    if sources:
        text += f"; from their changed sources: {', '.join(sources)}"
    return text
