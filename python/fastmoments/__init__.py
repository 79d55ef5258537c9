"""fastmoments: exact per-feature mean and variance in one pass, at memory bandwidth.

``import fastmoments`` never imports TensorFlow or Keras; ``fastmoments.FastNorm`` and
``fastmoments.tf`` load them on first use.
"""

from __future__ import annotations

from typing import Any

from ._accumulator import Accumulator
from ._checks import default_threads
from ._compute import compute
from ._moments import Moments
from ._info import build_info

__version__ = build_info()["version"]

__all__ = ["Accumulator", "FastNorm", "Moments", "build_info", "compute", "cuda_available",
           "default_threads", "__version__"]


def cuda_available() -> bool:
    """Whether ``compute(..., device="cuda")`` can run now: the CUDA module was built and loads,
    and the driver reports a GPU. Never raises; loads ``fastmoments._cuda`` on first call."""
    from ._gpu import cuda_available as _available

    return _available()


def __getattr__(name: str) -> Any:
    # Lazy: these import TensorFlow/Keras (or other optional dependencies) only when asked for.
    if name == "FastNorm":
        from .keras import FastNorm

        return FastNorm
    if name in ("tf", "keras", "dask"):
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'fastmoments' has no attribute {name!r}")
