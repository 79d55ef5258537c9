"""The CUDA door: GPU arrays reduced in place on their device, host data streamed to a GPU.

``fastmoments._cuda`` is loaded on first use, never by ``import fastmoments``: the module links
the CUDA runtime statically and needs only the driver, and a machine without either simply has
no usable GPU (:func:`cuda_available` is False).
"""

from __future__ import annotations

import os
from typing import Any, Optional, Tuple

import numpy as np

from ._axes import keep_mask, normalize_keep_axes
from ._dtypes import dtype_code, is_floating_code, is_native
from ._finish import check_reduction, finish, kernel_omits, values_per_output
from ._moments import Moments, State
from ._npyfile import load_npy
from ._checks import ComputeOptions, as_array
from ._routes import is_gpu_array

# Host data goes to the GPU in slabs of about this many bytes, through this many pinned buffers.
HOST_CHUNK_BYTES = 64 << 20
HOST_BUFFERS = 3

_DL_CUDA, _DL_CUDA_HOST, _DL_CUDA_MANAGED = 2, 3, 13

_module: Any = None
_import_error: Optional[str] = None


def _load() -> Any:
    """The compiled module, or ``None`` with the reason kept in ``_import_error``."""
    global _module, _import_error
    if _module is None and _import_error is None:
        try:
            from . import _build_info
        except ImportError:  # pragma: no cover - a source tree without a build
            _build_info = None
        if _build_info is not None and getattr(_build_info, "cuda", None) is None:
            _import_error = "fastmoments was built without CUDA (no CUDA compiler found at build time)"
            return None
        try:
            from . import _cuda
        except ImportError as exc:
            _import_error = f"the CUDA module fastmoments._cuda could not be loaded: {exc}"
            return None
        _module = _cuda
    return _module


def unavailable_reason() -> Optional[str]:
    """Why no GPU can be used now, or ``None`` when one can. Never raises."""
    try:
        mod = _load()
        if mod is None:
            return _import_error
        count, why = mod.device_count()
        if count <= 0:
            return f"no usable CUDA device ({why})"
        return None
    except Exception as exc:  # noqa: BLE001 - availability checks must not raise
        return f"CUDA check failed: {exc}"


def cuda_available() -> bool:
    """True when the CUDA module is built and loads, and a driver reports at least one GPU."""
    return unavailable_reason() is None


def _require() -> Any:
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"device='cuda' cannot be used: {reason}")
    return _module


# -- GPU arrays ------------------------------------------------------------------------------------

class DeviceView:
    """Pointer, shape, byte strides, dtype code, device and stream of a GPU array."""

    __slots__ = ("ptr", "shape", "strides", "code", "device", "stream", "keepalive")

    def __init__(self, ptr, shape, strides, code, device, stream, keepalive):
        self.ptr, self.shape, self.strides = int(ptr), tuple(shape), tuple(strides)
        self.code, self.device, self.stream = int(code), int(device), int(stream)
        self.keepalive = keepalive


def _c_strides(shape: Tuple[int, ...], itemsize: int) -> Tuple[int, ...]:
    strides, step = [], itemsize
    for n in reversed(shape):
        strides.append(step)
        step *= max(int(n), 1)
    return tuple(reversed(strides))


def _from_cai(data: Any, mod: Any) -> Optional[DeviceView]:
    obj = data
    if hasattr(obj, "detach") and getattr(obj, "requires_grad", False):
        obj = obj.detach()  # torch refuses the interface on tensors that require grad
    try:
        cai = obj.__cuda_array_interface__
    except (AttributeError, TypeError, RuntimeError):
        return None  # e.g. torch.bfloat16 has no typestr: DLPack describes it
    dtype = np.dtype(cai["typestr"])
    if dtype.kind == "V":
        return None
    if not is_native(dtype):
        raise TypeError(f"GPU arrays must be in native byte order, got typestr {cai['typestr']!r}")
    shape = tuple(int(n) for n in cai["shape"])
    strides = cai.get("strides")
    strides = _c_strides(shape, dtype.itemsize) if strides is None else tuple(int(s) for s in strides)
    ptr = int(cai["data"][0])
    if cai.get("mask") is not None:
        raise TypeError("masked GPU arrays are not supported")
    # CUDA Array Interface v3: the producer's stream (1 legacy default, 2 per-thread default);
    # None or absent: no synchronisation needed, the legacy default stream (0) is used.
    stream = cai.get("stream") or 0
    device = mod.pointer_device(ptr) if ptr else 0
    if type(obj).__module__.split(".")[0] == "torch" and "stream" not in cai:
        # PyTorch's interface names no stream; its work runs on the current (non-blocking) stream.
        import torch

        stream = torch.cuda.current_stream(obj.device).cuda_stream
    return DeviceView(ptr, shape, strides, dtype_code(dtype), max(device, 0), stream, obj)


def _from_dlpack(data: Any, mod: Any) -> DeviceView:
    # stream=1: the producer orders its pending work before the legacy default stream, on which
    # the reduction then runs.
    try:
        capsule = data.__dlpack__(stream=1)
    except TypeError:
        capsule = data.__dlpack__()
    ptr, shape, strides, code, dev_type, dev_id = mod.dlpack_view(capsule)
    if dev_type not in (_DL_CUDA, _DL_CUDA_HOST, _DL_CUDA_MANAGED):
        raise TypeError(f"{type(data).__name__} is not on a CUDA device (DLPack device type {dev_type})")
    device = dev_id if dev_type != _DL_CUDA_HOST else max(mod.pointer_device(ptr), 0)
    return DeviceView(ptr, shape, strides, code, device, 0, capsule)


def device_view(data: Any, mod: Any) -> DeviceView:
    """Reads a GPU array's memory description (no copy): CUDA Array Interface, else DLPack."""
    view = _from_cai(data, mod) if hasattr(data, "__cuda_array_interface__") else None
    if view is None and hasattr(data, "__dlpack__"):
        view = _from_dlpack(data, mod)
    if view is None:
        raise TypeError(f"cannot read {type(data).__name__} as a GPU array")
    return view


# -- the route -------------------------------------------------------------------------------------

def _host_array(data: Any) -> np.ndarray:
    arr = as_array(load_npy(data) if isinstance(data, (str, bytes, os.PathLike)) else data)
    if not is_native(arr.dtype) or not arr.flags.aligned:
        # The device reads native, aligned values; other arrays are converted once (a copy).
        arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("="))
    return arr


def compute(data: Any, opts: ComputeOptions) -> Moments:
    """``compute`` on a GPU: GPU arrays in place, host arrays/memmaps/.npy streamed to device 0."""
    if opts.device == "cpu":  # pragma: no cover - the route never sends device="cpu" here
        raise ValueError("fastmoments._gpu.compute called with device='cpu'")
    if opts.sample is not None or opts.dtype is not None or opts.shape is not None:
        raise ValueError("sample=, dtype= and shape= are not supported with device='cuda'")
    mod = _require()
    if is_gpu_array(data) or hasattr(data, "__cuda_array_interface__"):
        view = device_view(data, mod)
        kept = normalize_keep_axes(opts.axis, len(view.shape))
        check_reduction(view.shape, kept)
        keep = keep_mask(kept, len(view.shape))

        def run(omit: bool):
            return mod.reduce_device(view.ptr, view.device, view.code, list(view.shape),
                                     list(view.strides), keep, omit, view.stream)
        code, shape = view.code, view.shape
    else:
        if isinstance(data, (list, tuple)) and data and all(isinstance(d, (str, os.PathLike)) for d in data):
            raise TypeError("device='cuda' reads one array, memmap or .npy file at a time")
        if type(data).__module__.split(".")[0] in ("h5py", "zarr", "dask"):
            raise TypeError(f"device='cuda' does not read {type(data).__module__} arrays; "
                            "use device='cpu' or pass a NumPy array")
        arr = _host_array(data)
        code = dtype_code(arr.dtype)
        kept = normalize_keep_axes(opts.axis, arr.ndim)
        check_reduction(arr.shape, kept)
        keep = keep_mask(kept, arr.ndim)

        def run(omit: bool):
            return mod.reduce_host(arr, keep, code, omit, -1, HOST_CHUNK_BYTES, HOST_BUFFERS, opts.threads)
        shape = arr.shape

    floating = is_floating_code(code)
    out_shape = tuple(shape[i] for i in kept)
    state = State.of(run(kernel_omits(opts.nan_policy, floating)), out_shape)
    return finish(state, nan_policy=opts.nan_policy, floating=floating,
                  expected=values_per_output(shape, kept), ddof=opts.ddof,
                  rerun=lambda omit: State.of(run(omit), out_shape))
