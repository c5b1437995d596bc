"""The compiled build (docs/architecture.md, "The compiled build"): every gwserver module with
a .pxd beside it is compiled by Cython, as an optional extension. Without a C compiler, or
with GWSERVER_PURE=1 set at install, the package installs as pure Python, and works the
same. Everything else about the package is in setup.cfg."""
import hashlib
import json
import os
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def source_digest(stem):
    """As gwserver.compiled.source_digest (which this build cannot import): the .py and the
    .pxd it was compiled from."""
    digest = hashlib.sha256()
    for suffix in (".py", ".pxd"):
        digest.update(stem.with_suffix(suffix).read_bytes())
    return digest.hexdigest()


def compiled_sources():
    return sorted(pxd.with_suffix(".py").relative_to(ROOT)
                  for pxd in (ROOT / "gwserver").rglob("*.pxd"))


def extensions():
    if os.environ.get("GWSERVER_PURE", "") not in ("", "0"):
        return []
    from Cython.Build import cythonize
    modules = [Extension(".".join(path.with_suffix("").parts), [str(path)], optional=True)
               for path in compiled_sources()]
    return cythonize(modules, quiet=True, compiler_directives={
        "language_level": 3,
        "infer_types": True,       # a local assigned from a typed attribute is typed too
        "binding": True,           # functions keep their signatures (the plugin loader reads them)
    })


class BuildAndRecord(build_ext):
    """Builds, then writes gwserver/compiled.json: each module that was built, with the digest
    of the source it was built from (gwserver/compiled.py reads it)."""

    def finalize_options(self):
        super().finalize_options()
        if self.parallel is None:
            self.parallel = os.cpu_count()      # one C compiler per core

    def run(self):
        super().run()
        record = {ext.name: source_digest(ROOT / ext.name.replace(".", "/"))
                  for ext in self.extensions if os.path.exists(self.get_ext_fullpath(ext.name))}
        text = json.dumps(record, indent=1, sort_keys=True) + "\n"
        targets = [Path(self.build_lib) / "gwserver" / "compiled.json"]
        if self.inplace or getattr(self, "editable_mode", False):
            targets.append(ROOT / "gwserver" / "compiled.json")
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildAndRecord})
