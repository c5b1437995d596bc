"""The compiled build of the request path: whether it runs, and the rule that it runs whole
and current, or not at all.

The hot modules (each one with a ``.pxd`` beside it) are compiled by Cython when the package
is installed (setup.py), into extension modules that Python imports before the ``.py`` of the
same name. The ``.py`` stays the code: the ``.pxd`` only declares attribute slots and
argument types. The build writes ``compiled.json``: each module it compiled, with the SHA-256
of the ``.py`` and ``.pxd`` it compiled.

The compiled modules read each other's classes as C structs (``cimport``): a compiled module
next to one that runs from its ``.py`` (edited since the build, or left out of it) would read
the wrong fields. So the build runs whole or not at all: only when every module it recorded is
there, built, and unchanged, and ``GWSERVER_PURE`` is not set. Otherwise every extension
module in the package, recorded or not (an older build's, a checkout of another commit), is
imported from its ``.py``. ``describe()`` says which (``gwserver --version``, and the master's
``ready`` log line).
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
    return modules if isinstance(modules, dict) and \
        all(isinstance(v, str) for v in modules.values()) else {}


def source_path(name):
    return os.path.join(PACKAGE_DIR, *name.split(".")[1:]) + ".py"


def extension_modules():
    """Names of the package's modules that have an extension module file."""
    names = set()
    for folder, _, files in os.walk(PACKAGE_DIR):
        package = ["gwserver", *os.path.relpath(folder, PACKAGE_DIR).split(os.sep)]
        for file in files:
            for suffix in importlib.machinery.EXTENSION_SUFFIXES:     # (the longest first)
                if file.endswith(suffix):
                    names.add(".".join([p for p in package if p != "."] +
                                       [file[:-len(suffix)]]))
                    break
    return names


def pure():
    return os.environ.get("GWSERVER_PURE", "") not in ("", "0")


class SourceFirst:
    """A meta path finder that imports the named modules from their ``.py``."""

    def __init__(self, names):
        self.names = frozenset(names)

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.names or not os.path.exists(source_path(fullname)):
            return None
        return importlib.util.spec_from_file_location(fullname, source_path(fullname))


COMPILED = frozenset()          # the modules this process runs compiled
WHY_NOT = ""                    # why it runs none, when it runs none


def decide():
    """Run the build whole (it is complete and current) or not at all; install the finder
    for every extension module that must not run. Returns the modules that run compiled."""
    global COMPILED, WHY_NOT
    record, extensions = built(), extension_modules()
    if pure():
        WHY_NOT = "GWSERVER_PURE is set"
    elif not record:
        WHY_NOT = "no compiled build"
    elif not set(record) <= extensions:
        WHY_NOT = "the build is incomplete"
    elif any(source_digest(source_path(name)) != digest for name, digest in record.items()):
        WHY_NOT = "the sources changed since the build"
    else:
        COMPILED = frozenset(record)
    from_source = extensions - COMPILED
    if from_source:
        sys.meta_path.insert(0, SourceFirst(from_source))
    return COMPILED


def describe():
    """One line for the master's log and ``gwserver --version``."""
    if COMPILED:
        return f"{len(COMPILED)} request-path modules compiled"
    return f"pure Python: {WHY_NOT}"
