"""The compiled build (gwserver/compiled.py, setup.py): its declarations match the code, a
build runs when its sources are unchanged, and never once they have changed."""
import ast
import importlib.machinery
import json
import os
import re
import subprocess
import sys
from pathlib import Path

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


def test_a_build_runs_compiled_while_its_sources_are_unchanged():
    """What this checkout was built with (scripts/install-deps builds it): each module the
    build recorded, with its source unchanged, is the extension module."""
    built = compiled.built()
    if os.environ.get("GWSERVER_PURE", "") not in ("", "0"):
        assert compiled.status()[0] == []
        return
    fresh = [name for name, digest in built.items()
             if compiled.source_digest(compiled.source_path(name)) == digest]
    for name in fresh:
        __import__(name)
        assert isinstance(sys.modules[name].__loader__, importlib.machinery.ExtensionFileLoader)
    assert compiled.status()[0] == sorted(fresh)


def python(code, env):
    """Run ``code`` in a new interpreter, GWSERVER_PURE only as ``env`` says."""
    inherited = {k: v for k, v in os.environ.items() if k != "GWSERVER_PURE"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**inherited, **env}, cwd="/")


def run_python(code, env):
    out = python(code, env)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_a_module_whose_source_changed_since_the_build_runs_its_source(tmp_path):
    """A copy of the package with a fake build of core/target.py recorded: an .so file
    that is not even loadable. Its digest matching, the extension would be imported (and
    fail); with the source edited since, the source is."""
    copy = tmp_path / "gwserver"
    subprocess.run(["cp", "-r", str(PACKAGE), str(copy)], check=True)
    for stale in copy.rglob("*.so"):
        stale.unlink()
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    (copy / "core" / f"target{suffix}").write_bytes(b"not an extension module")
    (copy / "core" / "target.pxd").write_text("# declarations\n")
    source = copy / "core" / "target.py"
    code = ("import gwserver.core.target as t, gwserver.compiled as c; "
            "print(type(t.__loader__).__name__, c.describe())")
    env = {"PYTHONPATH": str(tmp_path)}

    def record(digest):
        (copy / "compiled.json").write_text(json.dumps({"gwserver.core.target": digest}))
    record(compiled.source_digest(str(source)))
    failed = python(code, env)
    assert failed.returncode != 0 and "ImportError" in failed.stderr    # the "build" ran
    assert run_python(code, {**env, "GWSERVER_PURE": "1"}) == \
        "SourceFileLoader pure Python: GWSERVER_PURE is set"
    source.write_text(source.read_text() + "\n# edited after the build\n")
    assert run_python(code, env) == \
        "SourceFileLoader pure Python: the sources changed since the build"
    record(compiled.source_digest(str(source)))
    (copy / "core" / "target.pxd").write_text("# declarations, edited after the build\n")
    assert run_python(code, env).startswith("SourceFileLoader")
