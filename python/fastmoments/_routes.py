"""Which door a ``compute`` input goes through.

Each route is a predicate on the input (cheap, imports nothing heavy) and the dotted name of a
handler ``handler(data, opts: ComputeOptions) -> Moments`` imported only when used. Routes are
tried in order; an input no route claims is read as an ndarray by the CPU kernel.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Callable, Optional, Sequence, Tuple

import numpy as np



def _module_name(obj: Any) -> str:
    return type(obj).__module__.split(".")[0]


def is_dask_collection(data: Any) -> bool:
    return _module_name(data) == "dask" and hasattr(data, "__dask_graph__")


def is_gpu_array(data: Any) -> bool:
    if hasattr(data, "__cuda_array_interface__"):
        return True
    dev = getattr(data, "__dlpack_device__", None)
    if dev is not None and _module_name(data) != "numpy":
        try:
            return dev()[0] in (2, 3, 13)  # kDLCUDA, kDLCUDAHost, kDLCUDAManaged
        except Exception:  # noqa: BLE001 - a device query that fails is not a GPU array
            return False
    return False


def is_stream_source(data: Any) -> bool:
    """Files and chunked stores read block by block (paths, lists of paths, memmaps, h5py, zarr)."""
    if isinstance(data, (str, bytes, os.PathLike, np.memmap)):
        return True
    if isinstance(data, (list, tuple)) and data and all(isinstance(d, (str, bytes, os.PathLike)) for d in data):
        return True
    return _module_name(data) in ("h5py", "zarr")


def wants_gpu(data: Any, device: str) -> bool:
    """Whether in-memory ``data`` is reduced on the GPU: asked for, or a GPU array under "auto"."""
    return device == "cuda" or (device == "auto" and is_gpu_array(data))


# (predicate(data, device) -> bool, "module:function")
ROUTES: Sequence[Tuple[Callable[[Any, str], bool], str]] = (
    (lambda d, dev: is_dask_collection(d), "fastmoments.dask:compute_eager"),
    (wants_gpu, "fastmoments._gpu:compute"),
    (lambda d, dev: is_stream_source(d), "fastmoments._stream:compute"),
)


def find_route(data: Any, device: str) -> Optional[Callable[..., Any]]:
    for accepts, target in ROUTES:
        if accepts(data, device):
            module, _, func = target.partition(":")
            return getattr(importlib.import_module(module), func)
    return None
