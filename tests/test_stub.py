"""``python/fastmoments/_core.pyi`` against the compiled module ``fastmoments._core``.

Two checks, so that the stub cannot go stale when a binding changes:

* mypy's ``stubtest`` (names present on both sides, types of module attributes, stub entries
  that do not exist at runtime);
* the parameters of every function, read from the signature line pybind11 writes at the top of
  each docstring (``name(a: T, b: U = default) -> R``): names, order and defaults must be those of
  the stub. stubtest cannot do this part: pybind11 functions have no ``__text_signature__``, so
  ``inspect.signature`` fails on them and stubtest skips their parameters.
"""

from __future__ import annotations

import ast
import os
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
    """Names the stub says the module has: functions and annotated variables (plain assignments
    such as ``_States = Tuple[...]`` are type aliases of the stub only)."""
    tree = ast.parse(STUB.read_text(), filename=str(STUB))
    names = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
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


def test_mypy_stubtest(tmp_path):
    pytest.importorskip("mypy.stubtest", reason="mypy is not installed (pip install '.[test]')")
    env = dict(os.environ)
    # Run against the installed package (the stub next to the compiled module), not a source tree.
    env.pop("MYPYPATH", None)
    proc = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "fastmoments._core"],
        capture_output=True, text=True, timeout=600, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
