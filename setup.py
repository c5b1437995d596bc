"""The compiled build (docs/architecture.md, "The compiled build"): every gwserver module with
a .pxd beside it is compiled by Cython. It is all or nothing: when a module fails to compile
(no C compiler), when Cython is missing, or with GWSERVER_PURE=1 set at install, the build
records no module and the package runs as pure Python, the same, slower. Everything else
about the package is in setup.cfg."""
import hashlib
import json
import os
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
RECORD = ROOT / "gwserver" / "compiled.json"
SUFFIX = sysconfig.get_config_var("EXT_SUFFIX")
# An editable install (pip install -e, as scripts/install-deps makes) runs from this tree,
# whose record must then say what it holds; other builds leave the tree's record alone.
IN_TREE = any(arg in ("editable_wheel", "develop", "--inplace", "-i") for arg in sys.argv)


def source_digest(module):
    """As gwserver.compiled.source_digest (which this build cannot import): SHA-256 over the
    .py and .pxd of a module, each with its length first."""
    digest = hashlib.sha256()
    for suffix in (".py", ".pxd"):
        data = (ROOT / (module.replace(".", "/") + suffix)).read_bytes()
        digest.update(b"%d:" % len(data) + data)
    return digest.hexdigest()


def write_record(path, modules):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"suffix": SUFFIX, "modules": modules}, indent=1) + "\n")


def module_names():
    return [".".join(pxd.relative_to(ROOT).with_suffix("").parts)
            for pxd in sorted((ROOT / "gwserver").rglob("*.pxd"))]


SOURCES = {}        # module -> digest of the sources as the build found them


def extensions():
    """The extensions to build, or [] (and, in the tree, an empty record: a build an earlier
    install left there is then not run)."""
    why_not = "GWSERVER_PURE is set" if os.environ.get("GWSERVER_PURE", "") not in ("", "0") \
        else None
    if why_not is None:
        try:
            from Cython.Build import cythonize
        except ImportError:
            why_not = "Cython is not installed"
    if why_not is not None:
        print(f"gwserver: not compiling the request path: {why_not}", file=sys.stderr)
        if IN_TREE:
            write_record(RECORD, {})
        return []
    SOURCES.update((name, source_digest(name)) for name in module_names())
    modules = [Extension(name, [name.replace(".", "/") + ".py"], optional=True)
               for name in SOURCES]
    return cythonize(modules, quiet=True, force=True, compiler_directives={
        "language_level": 3,
        "infer_types": True,       # a local assigned from a typed attribute is typed too
        "binding": True,           # functions keep their signatures (the plugin loader reads them)
    })


class BuildAndRecord(build_ext):
    """Builds every extension anew, then writes gwserver/compiled.json: each module with the
    digest of the source it was built from, or none unless every one of them was built in
    this run from the sources it started with (gwserver/compiled.py runs the build whole or
    not at all). In the tree, the record is emptied before the build and written after it:
    a process that starts meanwhile runs no compiled module."""

    def finalize_options(self):
        super().finalize_options()
        if self.parallel is None:
            self.parallel = os.cpu_count()      # one C compiler per core
        self.built_now = set()

    def build_extension(self, ext):
        target = self.get_ext_fullpath(ext.name)
        if os.path.exists(target):
            os.remove(target)       # a failed compile must not leave an older one to record
        super().build_extension(ext)            # (optional: a failure is a warning)
        self.built_now.add(ext.name)

    def run(self):
        in_tree = self.inplace or getattr(self, "editable_mode", False)
        if in_tree:
            write_record(RECORD, {})
        super().run()
        unchanged = all(source_digest(name) == digest for name, digest in SOURCES.items())
        record = dict(SOURCES) if SOURCES and set(SOURCES) <= self.built_now and unchanged \
            else {}
        if not record:
            print("gwserver: the request path did not compile: it runs as pure Python",
                  file=sys.stderr)
        for target in [Path(self.build_lib) / "gwserver" / "compiled.json"] + \
                ([RECORD] if in_tree else []):
            write_record(target, record)


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildAndRecord})
