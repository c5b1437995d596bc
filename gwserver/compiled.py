"""The compiled build of the request path: whether it runs, and the rule that it runs whole
and current, or not at all.

The hot modules (each one with a ``.pxd`` beside it) are compiled by Cython when the package
is installed (setup.py), into extension modules that Python imports before the ``.py`` of the
same name. The ``.py`` stays the code: the ``.pxd`` only declares attribute slots and
argument types. The build writes ``compiled.json``: the extension suffix it built for (one
interpreter's), and each module it compiled with the SHA-256 of the ``.py`` and ``.pxd`` it
compiled. It writes an empty record first, and the whole one only once every module built.

The compiled modules read each other's classes as C structs (``cimport``): a compiled module
next to one that runs from its ``.py`` (edited since the build, or left out of it) would read
the wrong fields. So the build runs whole or not at all: only when every module it recorded
has its extension file for this interpreter and an unchanged source, and ``GWSERVER_PURE`` is
not set. Otherwise every extension module in the package, recorded or not (an older build's,
a checkout of another commit), is imported from its ``.py``. A compiled module whose file
changed after this process decided (a rebuild while it runs) is refused, not mixed in.
``describe()`` says which runs (``gwserver --version``, and the master's ``ready`` line).
"""
import importlib.machinery
import importlib.util
import json
import os
import sys
import sysconfig

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
RECORD = os.path.join(PACKAGE_DIR, "compiled.json")
SUFFIX = sysconfig.get_config_var("EXT_SUFFIX")     # what this interpreter's build makes


def source_digest(path):
    """SHA-256 over a module's .py and the .pxd beside it, each with its length first
    (setup.py computes the same); "" when either is missing."""
    import hashlib          # (here: importing it costs every process start ~3 ms)
    digest = hashlib.sha256()
    try:
        for part in (path, path[:-3] + ".pxd"):
            with open(part, "rb") as source:
                data = source.read()
            digest.update(b"%d:" % len(data) + data)
    except OSError:
        return ""
    return digest.hexdigest()


def built():
    """{module name: source digest} of the last build for this interpreter, {} if none."""
    try:
        with open(RECORD, "rb") as file:
            record = json.load(file)
    except (OSError, ValueError):
        return {}
    if not isinstance(record, dict) or record.get("suffix") != SUFFIX:
        return {}
    modules = record.get("modules")
    return modules if isinstance(modules, dict) and \
        all(isinstance(v, str) for v in modules.values()) else {}


def source_path(name):
    """The .py of a module, or the __init__.py of a package."""
    base = os.path.join(PACKAGE_DIR, *name.split(".")[1:])
    return os.path.join(base, "__init__.py") if os.path.isdir(base) else base + ".py"


def extension_path(name):
    return os.path.join(PACKAGE_DIR, *name.split(".")[1:]) + SUFFIX


def extension_modules():
    """Names of the package's modules that have an extension module file (any suffix)."""
    names = set()
    for folder, _, files in os.walk(PACKAGE_DIR, followlinks=True):
        parts = [p for p in os.path.relpath(folder, PACKAGE_DIR).split(os.sep) if p != "."]
        for file in files:
            for suffix in importlib.machinery.EXTENSION_SUFFIXES:     # (the longest first)
                if file.endswith(suffix):
                    stem = file[:-len(suffix)]
                    names.add(".".join(["gwserver", *parts] +
                                       ([] if stem == "__init__" else [stem])))
                    break
    return names


def pure():
    return os.environ.get("GWSERVER_PURE", "") not in ("", "0")


def file_identity(path):
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns


class Decided:
    """A meta path finder: the modules that must run from source are imported from their
    ``.py``; a compiled one whose file is not the one decided on is refused."""

    def __init__(self, from_source, compiled):
        self.from_source = frozenset(from_source)
        self.compiled = compiled            # name -> file identity when decided

    def find_spec(self, fullname, path=None, target=None):
        if fullname in self.compiled:
            if file_identity(extension_path(fullname)) != self.compiled[fullname]:
                raise ImportError(f"{fullname}: its compiled file changed after this process "
                                  f"started (gwserver was rebuilt): restart the process")
            return None
        if fullname not in self.from_source:
            return None
        if not os.path.exists(source_path(fullname)):
            raise ModuleNotFoundError(f"{fullname}: an extension module without its .py "
                                      f"(left by another build) is not run", name=fullname)
        source = source_path(fullname)
        return importlib.util.spec_from_file_location(
            fullname, source, submodule_search_locations=[os.path.dirname(source)]
            if source.endswith("__init__.py") else None)


COMPILED = frozenset()          # the modules this process runs compiled
WHY_NOT = ""                    # why it runs none, when it runs none


def decide():
    """Run the build whole (it is complete and current) or not at all; install the finder
    that holds to it. Returns the modules that run compiled."""
    global COMPILED, WHY_NOT
    COMPILED, WHY_NOT = frozenset(), ""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, Decided)]
    record, extensions = built(), extension_modules()
    identities = {name: file_identity(extension_path(name)) for name in record}
    if pure():
        WHY_NOT = "GWSERVER_PURE is set"
    elif not record:
        WHY_NOT = "no compiled build"
    elif None in identities.values():
        WHY_NOT = "the build is incomplete"
    elif any(source_digest(source_path(name)) != digest for name, digest in record.items()):
        WHY_NOT = "the sources changed since the build"
    else:
        COMPILED = frozenset(record)
    if extensions or COMPILED:
        sys.meta_path.insert(0, Decided(extensions - COMPILED,
                                        {name: identities[name] for name in COMPILED}))
    return COMPILED


def describe():
    """One line for the master's log and ``gwserver --version``."""
    if COMPILED:
        return f"{len(COMPILED)} request-path modules compiled"
    return f"pure Python: {WHY_NOT}"
