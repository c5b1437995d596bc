"""The compiled build (docs/architecture.md, "The compiled build"): every gwserver module with
a .pxd beside it is compiled by Cython. It is all or nothing: when a module fails to compile
(no C compiler), when Cython is missing, or with GWSERVER_PURE=1 set at install, the build
records no module and the package runs as pure Python, the same, slower. Everything else
about the package is in setup.cfg."""
import hashlib
import json
import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
RECORD = ROOT / "gwserver" / "compiled.json"


def source_digest(stem):
    """As gwserver.compiled.source_digest (which this build cannot import): the .py and the
    .pxd it was compiled from."""
    digest = hashlib.sha256()
    for suffix in (".py", ".pxd"):
        digest.update(stem.with_suffix(suffix).read_bytes())
    return digest.hexdigest()


def extensions():
    """The extensions to build, or [] (and an empty record: a build left in a checkout by an
    earlier install is then not run)."""
    why_not = "GWSERVER_PURE is set" if os.environ.get("GWSERVER_PURE", "") not in ("", "0") \
        else None
    if why_not is None:
        try:
            from Cython.Build import cythonize
        except ImportError:
            why_not = "Cython is not installed"
    if why_not is not None:
        print(f"gwserver: not compiling the request path: {why_not}", file=sys.stderr)
        RECORD.write_text("{}\n")
        return []
    modules = [Extension(".".join(pxd.relative_to(ROOT).with_suffix("").parts),
                         [str(pxd.with_suffix(".py").relative_to(ROOT))], optional=True)
               for pxd in sorted((ROOT / "gwserver").rglob("*.pxd"))]
    return cythonize(modules, quiet=True, compiler_directives={
        "language_level": 3,
        "infer_types": True,       # a local assigned from a typed attribute is typed too
        "binding": True,           # functions keep their signatures (the plugin loader reads them)
    })


class BuildAndRecord(build_ext):
    """Builds every extension anew, then writes gwserver/compiled.json: each module with the
    digest of the source it was built from, or nothing unless every one of them was built
    in this run (gwserver/compiled.py runs the build whole or not at all)."""

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
        super().run()
        names = {ext.name for ext in self.extensions}
        record = {name: source_digest(ROOT / name.replace(".", "/")) for name in sorted(names)} \
            if names and names <= self.built_now else {}
        if not record:
            print("gwserver: the request path did not compile: it runs as pure Python",
                  file=sys.stderr)
        text = json.dumps(record, indent=1) + "\n"
        targets = [Path(self.build_lib) / "gwserver" / "compiled.json"]
        if self.inplace or getattr(self, "editable_mode", False):
            targets.append(RECORD)
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildAndRecord})
