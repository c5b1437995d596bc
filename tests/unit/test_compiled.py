"""The compiled build (gwserver/compiled.py, setup.py): its declarations match the code, a
build runs when its sources are unchanged, and never once they have changed."""
import ast
import importlib.machinery
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import gwserver
from gwserver import compiled

PACKAGE = Path(gwserver.__file__).parent
DECLARED = sorted(PACKAGE.rglob("*.pxd"))


def assigned_attributes(class_node):
    """Names a class's methods assign on self, and its __slots__."""
    names = set()
    for node in ast.walk(class_node):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                node.value.id == "self" and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
    for node in class_node.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "__slots__":
            names |= {element.value for element in node.value.elts}
    return names


def declared_classes(pxd):
    """{class name: declared attribute names} of a .pxd."""
    classes, current = {}, None
    for line in pxd.read_text().splitlines():
        if match := re.match(r"cdef class (\w+):", line):
            current = classes[match[1]] = set()
        elif current is not None and (match := re.match(r"    cdef public \w+ (\w+)$", line)):
            current.add(match[1])
    return classes


def test_some_modules_are_declared_for_the_build():
    assert {p.stem for p in DECLARED} >= {"http1", "proxy", "context", "runtime"}


@pytest.mark.parametrize("pxd", DECLARED, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_attribute_the_code_assigns_is_declared(pxd):
    """Compiled, a class holds only its declared attributes: one the .py assigns and the
    .pxd lacks is an AttributeError in the compiled build alone, which a checkout running
    its changed source (never stale) would not show."""
    tree = ast.parse(pxd.with_suffix(".py").read_text())
    classes = {node.name: node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
    for name, declared in declared_classes(pxd).items():
        assert name in classes, f"{pxd.name} declares class {name}, which the .py lacks"
        missing = assigned_attributes(classes[name]) - declared - {"__slots__"}
        assert not missing, f"{pxd.name}: class {name} assigns {sorted(missing)} undeclared"


def test_this_process_runs_the_build_whole_or_not_at_all():
    """Every extension module of the package is loaded as one only while the build runs."""
    for name in compiled.extension_modules():
        module = __import__(name, fromlist=["_"])
        is_extension = isinstance(module.__loader__, importlib.machinery.ExtensionFileLoader)
        assert is_extension == (name in compiled.COMPILED), name
    assert bool(compiled.COMPILED) == (compiled.describe().endswith("modules compiled"))


def python(code, env):
    """Run ``code`` in a new interpreter, GWSERVER_PURE only as ``env`` says."""
    inherited = {k: v for k, v in os.environ.items() if k != "GWSERVER_PURE"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**inherited, **env}, cwd="/")


@pytest.fixture
def built_copy(tmp_path):
    """A copy of this checkout's package as its install built it (compiled.json and the
    extension modules; scripts/install-deps builds them), and how it runs."""
    copy = tmp_path / "gwserver"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert json.loads((copy / "compiled.json").read_text()), \
        "this checkout has no compiled build: scripts/install-deps makes it (gcc, python3-dev)"

    def runs(env=None):
        """(the loader of client/http1, describe()) after importing the worker module."""
        out = python("import gwserver.server.worker, gwserver.compiled as c, "
                     "gwserver.client.http1 as h; "
                     "print(type(h.__loader__).__name__, '|', c.describe())",
                     {"PYTHONPATH": str(tmp_path), **(env or {})})
        assert out.returncode == 0, out.stderr[-3000:]
        return tuple(out.stdout.strip().split(" | "))
    return SimpleNamespace(path=copy, runs=runs)


def test_a_current_build_runs(built_copy):
    assert built_copy.runs() == ("ExtensionFileLoader",
                                 f"{len(DECLARED)} request-path modules compiled")


@pytest.mark.parametrize("edited", ["net/deadlines.py", "core/context.py", "core/context.pxd",
                                    "client/http1.py"])
def test_a_build_whose_sources_changed_runs_none_of_its_modules(built_copy, edited):
    """Per module, an edited deadlines.py (which the compiled sockets, runtime, proxy and
    http1 read as a C struct) made them fail to import (\"Deadlines size changed\"), and an
    edited context.py let them read a RequestContext's fields at the wrong offsets."""
    path = built_copy.path / edited
    path.write_text(path.read_text() + "\n# edited after the build\n")
    assert built_copy.runs() == ("SourceFileLoader",
                                 "pure Python: the sources changed since the build")


def test_an_incomplete_build_runs_none_of_its_modules(built_copy):
    next(built_copy.path.rglob("deadlines*.so")).unlink()
    assert built_copy.runs() == ("SourceFileLoader", "pure Python: the build is incomplete")


def test_extension_modules_no_build_recorded_never_run(built_copy):
    """Left by an older build, by a build whose compile failed, or in a checkout of another
    commit: with no record (or an empty one), no extension module is imported."""
    (built_copy.path / "compiled.json").write_text("{}\n")
    assert built_copy.runs() == ("SourceFileLoader", "pure Python: no compiled build")
    (built_copy.path / "compiled.json").unlink()
    assert built_copy.runs() == ("SourceFileLoader", "pure Python: no compiled build")


def test_an_extension_module_the_build_did_not_record_never_runs(built_copy):
    """A current build, and beside it a file that is no extension module at all, for a
    module the build does not compile: imported, it would fail."""
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    (built_copy.path / "core" / f"target{suffix}").write_bytes(b"not an extension module")
    out = python("import gwserver.core.target as t, gwserver.compiled as c; "
                 "print(type(t.__loader__).__name__, c.describe())",
                 {"PYTHONPATH": str(built_copy.path.parent)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[0] == "SourceFileLoader"


def test_gwserver_pure_runs_the_sources(built_copy):
    assert built_copy.runs({"GWSERVER_PURE": "1"}) == ("SourceFileLoader",
                                                       "pure Python: GWSERVER_PURE is set")


def test_a_module_built_for_another_abi_is_not_the_build(built_copy):
    """The record is of this interpreter's files: another suffix's file of the same module
    (an older build's, garbage here) does not complete it."""
    suffix = compiled.SUFFIX
    built = next(built_copy.path.rglob(f"deadlines{suffix}"))
    built.unlink()
    built.with_name("deadlines.abi3.so").write_bytes(b"not an extension module")
    assert built_copy.runs() == ("SourceFileLoader", "pure Python: the build is incomplete")


def test_a_record_of_another_interpreter_is_not_this_ones_build(built_copy):
    record = json.loads((built_copy.path / "compiled.json").read_text())
    record["suffix"] = ".cpython-312-x86_64-linux-gnu.so"
    (built_copy.path / "compiled.json").write_text(json.dumps(record))
    assert built_copy.runs() == ("SourceFileLoader", "pure Python: no compiled build")


def test_a_compiled_file_replaced_after_the_decision_is_refused(built_copy):
    """A rebuild while a process runs: the worker imports most compiled modules after the
    master decided; a file that changed since is refused, never mixed with the others."""
    deadlines = next(built_copy.path.rglob(f"deadlines{compiled.SUFFIX}"))
    out = python(f"import gwserver, os; os.utime({str(deadlines)!r}, ns=(1, 1)); "
                 f"import gwserver.net.deadlines",
                 {"PYTHONPATH": str(built_copy.path.parent)})
    assert out.returncode != 0
    assert "gwserver.net.deadlines: its compiled file changed after this process started " \
           "(gwserver was rebuilt): restart the process" in out.stderr


def test_extension_modules_in_a_symlinked_folder_are_seen(built_copy, tmp_path):
    server = built_copy.path / "server"
    moved = tmp_path / "elsewhere"
    server.rename(moved)
    server.symlink_to(moved)
    assert built_copy.runs({"GWSERVER_PURE": "1"}) == ("SourceFileLoader",
                                                       "pure Python: GWSERVER_PURE is set")
    assert built_copy.runs() == ("ExtensionFileLoader",
                                 f"{len(DECLARED)} request-path modules compiled")
