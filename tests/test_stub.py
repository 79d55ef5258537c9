"""``python/fastmoments/_core.pyi`` against the compiled module ``fastmoments._core``.

Checks that keep the stub from going stale when a binding changes:

* mypy's ``stubtest`` (names present on both sides, class members, types of module attributes,
  stub entries that do not exist at runtime);
* what stubtest cannot read from pybind11 objects (no ``__text_signature__``, so
  ``inspect.signature`` fails and stubtest skips them), from the signature line pybind11 writes
  atop each docstring: every function's parameter names, order and defaults
  (``name(a: T, b: U = default) -> R``), and the type of every bound class attribute (its getter's
  ``(self: C) -> T``).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

import fastmoments
from fastmoments import _core

STUB = Path(fastmoments.__file__).with_name("_core.pyi")

Params = List[Tuple[str, str]]  # (name, default as source text or "" for none)


def _params(func: ast.FunctionDef) -> Params:
    args = func.args
    assert not (args.vararg or args.kwarg or args.kwonlyargs or args.posonlyargs), (
        f"{func.name}: only plain parameters are compared; extend tests/test_stub.py")
    defaults = [""] * (len(args.args) - len(args.defaults)) + [
        repr(ast.literal_eval(d)) for d in args.defaults]
    return [(a.arg, d) for a, d in zip(args.args, defaults)]


def _stub_functions() -> Dict[str, Params]:
    tree = ast.parse(STUB.read_text(), filename=str(STUB))
    return {node.name: _params(node) for node in tree.body if isinstance(node, ast.FunctionDef)}


def _stub_names() -> set:
    """Names the stub says the module has: functions, classes and annotated variables (plain
    assignments such as ``_States = Tuple[...]`` are type aliases of the stub only)."""
    tree = ast.parse(STUB.read_text(), filename=str(STUB))
    names = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    names |= {node.target.id for node in tree.body
              if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)}
    return names


def _runtime_params(name: str, func) -> Params:
    doc = (func.__doc__ or "").lstrip()
    first = doc.splitlines()[0] if doc else ""
    assert first.startswith(name + "("), (
        f"_core.{name}: no pybind11 signature line at the top of its docstring "
        f"(overloaded or not a pybind11 function?): {first!r}")
    tree = ast.parse(f"def {first}: ...")
    return _params(tree.body[0])


def test_stub_lists_what_the_module_has():
    runtime = {n for n in dir(_core) if not (n.startswith("__") and n.endswith("__"))}
    stub = _stub_names()
    assert runtime - stub == set(), f"in _core but missing from _core.pyi: {sorted(runtime - stub)}"
    assert stub - runtime == set(), f"in _core.pyi but not in _core: {sorted(stub - runtime)}"


def test_stub_parameters_match_the_bindings():
    stub = _stub_functions()
    for name, params in stub.items():
        got = _runtime_params(name, getattr(_core, name))
        assert got == params, (f"_core.{name}: the binding takes {got}, _core.pyi says {params}")


def _type_text(t: str) -> str:
    """A type as text in one spelling: the stub's aliases (List, npt, np) as pybind11 writes them."""
    t = re.sub(r"\bList\[", "list[", t)
    t = re.sub(r"\bnpt\.", "numpy.typing.", t)
    t = re.sub(r"\bnp\.", "numpy.", t)
    return t.replace(" ", "")


def test_stub_class_attributes_match_the_bindings():
    """Attributes of bound classes (pybind11 properties, whose types stubtest cannot read) have
    the type the getter's pybind11 signature line gives (``(self: C) -> T``)."""
    tree = ast.parse(STUB.read_text(), filename=str(STUB))
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        runtime = getattr(_core, cls.name)
        for node in cls.body:
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                continue
            name = node.target.id
            prop = vars(runtime).get(name)
            assert isinstance(prop, property), f"_core.{cls.name}.{name} is not a bound attribute"
            first = (prop.fget.__doc__ or "").lstrip().splitlines()[0]
            got = first.rpartition(") -> ")[2]
            want = ast.unparse(node.annotation)
            assert _type_text(got) == _type_text(want), (
                f"_core.{cls.name}.{name}: the binding gives {got}, _core.pyi says {want}")


def test_mypy_stubtest(tmp_path):
    pytest.importorskip("mypy.stubtest", reason="mypy is not installed (pip install '.[test]')")
    env = dict(os.environ)
    # Run against the installed package (the stub next to the compiled module), not a source tree.
    env.pop("MYPYPATH", None)
    # pybind11 classes have pybind11's own metaclass, which no stub can name: stubtest reports
    # "metaclass differs" on the class itself. Those entries only; their members are still checked.
    allowlist = tmp_path / "allowlist.txt"
    allowlist.write_text("".join(
        f"fastmoments._core.{name}\n" for name, obj in vars(_core).items()
        if isinstance(obj, type) and type(obj).__module__ == "pybind11_builtins"))
    proc = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "fastmoments._core", "--allowlist", str(allowlist),
         "--ignore-unused-allowlist"],
        capture_output=True, text=True, timeout=600, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
