"""``compute``: the one-call entry point over arrays, memmaps and ``.npy`` files."""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Optional, Tuple, Union

import numpy as np

from . import _core
from ._axes import AxisLike, keep_mask, kept_shape, normalize_keep_axes
from ._dtypes import dtype_code, is_native
from ._moments import Moments
from ._progress import ProgressLike, progress_reporter
from ._routes import ComputeOptions, find_route

NAN_POLICIES = ("propagate", "omit", "raise")

# Blocks of this many bytes are converted at a time where the kernel cannot read the array as
# it is (non-native byte order): bounded extra memory instead of a full-size copy.
_CONVERT_BLOCK_BYTES = 8 << 20


def default_threads() -> int:
    """Threads ``threads=None`` uses: ``OMP_NUM_THREADS`` if set, else the CPUs this process may use."""
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env:
        try:
            n = int(env)
            if n >= 1:
                return n
        except ValueError:
            pass
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def check_nan_policy(nan_policy: str) -> str:
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
    return nan_policy


# More threads than this is a mistake, not a machine (the kernel takes a C int).
MAX_THREADS = 1 << 16


def check_threads(threads: Optional[int]) -> int:
    if threads is None:
        return default_threads()
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)):
        raise TypeError(f"threads must be an int or None, got {threads!r}")
    if not 1 <= threads <= MAX_THREADS:
        raise ValueError(f"threads must be between 1 and {MAX_THREADS}, got {threads}")
    return int(threads)


def check_ddof(ddof: int) -> int:
    if isinstance(ddof, bool) or not isinstance(ddof, (int, np.integer)) or ddof < 0:
        raise ValueError(f"ddof must be a non-negative integer, got {ddof!r}")
    return int(ddof)


def load_npy(path: Union[str, os.PathLike]) -> np.ndarray:
    """Memory-maps a ``.npy`` file (never reads it whole); clear errors for bad files."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path!r}")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path!r} is not a readable .npy file: {exc}") from None
    if not isinstance(arr, np.ndarray):
        if hasattr(arr, "close"):
            arr.close()
        raise ValueError(f"{path!r} is not a .npy file (an .npz archive? pass one member)")
    return arr


def as_array(data: Any) -> np.ndarray:
    """An ndarray view of ``data`` without copying arrays or memmaps."""
    if isinstance(data, np.ma.MaskedArray):
        raise TypeError("fastmoments does not read the mask of a numpy.ma.MaskedArray; pass "
                        "data.filled(np.nan) with nan_policy='omit', or data.compressed()")
    if isinstance(data, np.ndarray):
        return data
    if isinstance(data, (str, os.PathLike)):
        return load_npy(data)
    if isinstance(data, (complex, np.complexfloating)):
        raise TypeError("fastmoments cannot compute moments of complex values")
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError) as exc:
        raise TypeError(f"cannot interpret {type(data).__name__} as an array: {exc}") from None
    if arr.dtype.hasobject:
        raise TypeError(f"fastmoments computes moments of arrays of numbers, got "
                        f"{type(data).__name__} {_short_repr(data)}")
    return arr


def _short_repr(obj: Any) -> str:
    text = repr(obj)
    return text if len(text) <= 60 else text[:57] + "..."


class EmptyReductionError(ValueError):
    """Some output would get no values: the reduced axes hold none (NumPy returns NaN and warns).
    ``kept_shape`` is the shape the result would have had."""

    def __init__(self, shape: Tuple[int, ...], kept_shape: Tuple[int, ...]):
        super().__init__(f"cannot compute moments of an empty reduction: array of shape "
                         f"{tuple(shape)} has no values along the reduced axes")
        self.kept_shape = kept_shape


def check_reduction(shape: Tuple[int, ...], kept: Tuple[int, ...]) -> None:
    """:class:`EmptyReductionError` when some output would get no values."""
    out_shape = kept_shape(shape, kept)
    n_reduced = math.prod(shape[i] for i in range(len(shape)) if i not in kept)
    if n_reduced == 0 and math.prod(out_shape) > 0:
        raise EmptyReductionError(tuple(shape), out_shape)


def nan_where_empty(count, mean, m2):
    """Like np.nanmean/np.nanvar: an index whose values were all NaN (omitted) has NaN statistics."""
    if np.all(count):
        return mean, m2
    empty = count == 0
    return np.where(empty, np.nan, mean), np.where(empty, np.nan, m2)


def moments_by_nan_policy(run: Callable[[bool], tuple], nan_policy: str, floating: bool,
                          ddof: int) -> Moments:
    """One kernel pass with NaN omitted or propagated; "raise" re-reads only when a mean is NaN.

    ``run(omit)`` returns ``(count, mean, m2[, mean_lo])``.
    """
    omit = nan_policy == "omit" and floating
    state = run(omit)
    count, mean, m2 = state[:3]
    mean_lo = state[3] if len(state) > 3 else None
    if omit:
        mean, m2 = nan_where_empty(count, mean, m2)
    # NaN means can also come from inf - inf; only NaN *inputs* are an error.
    if nan_policy == "raise" and floating and np.isnan(mean).any() and np.any(run(True)[0] != count):
        raise ValueError("the data contains NaN (nan_policy='raise')")
    return Moments(count, mean, m2, ddof=ddof, mean_lo=mean_lo)


def reduce_array(arr: np.ndarray, kept: Tuple[int, ...], *, ddof: int, nan_policy: str,
                 threads: int, progress: ProgressLike = False) -> Moments:
    """Moments of an ndarray over every axis not in ``kept`` (validated arguments)."""
    code = dtype_code(arr.dtype)
    check_reduction(arr.shape, kept)
    with progress_reporter(progress, arr.nbytes) as report:
        if is_native(arr.dtype):
            run = _native_runner(arr, kept, code, threads, report)
        else:
            run = _converting_runner(arr, kept, code, threads, report)
        return moments_by_nan_policy(run, nan_policy, arr.dtype.kind not in "biu", ddof)


def _native_runner(arr, kept, code, threads, report):
    keep = keep_mask(kept, arr.ndim)
    itemsize = arr.dtype.itemsize

    def run(omit: bool):
        poll = None if report is None else (lambda done, total: report(done * itemsize))
        return _core.reduce(arr, keep, code, omit, threads, poll)

    return run


def _converting_runner(arr, kept, code, threads, report):
    """Non-native byte order: convert and reduce blocks along the outermost axis."""
    native = arr.dtype.newbyteorder("=")
    if arr.size <= 1:  # converting it whole costs nothing
        return _native_runner(arr.astype(native), kept, code, threads, report)
    axis = int(np.argmax([abs(s) if n > 1 else -1 for s, n in zip(arr.strides, arr.shape)]))
    slice_bytes = max(1, arr.nbytes // max(1, arr.shape[axis]))
    step = max(1, _CONVERT_BLOCK_BYTES // slice_bytes)
    keep = keep_mask(kept, arr.ndim)
    out_axis = sum(keep[:axis])

    def run(omit: bool):
        parts = []
        for start in range(0, arr.shape[axis], step):
            index = [slice(None)] * arr.ndim
            index[axis] = slice(start, start + step)
            block = np.ascontiguousarray(arr[tuple(index)], dtype=native)
            parts.append(_core.reduce(block, keep, code, omit, threads, None))
            if report is not None:
                report(min(arr.shape[axis], start + step) * slice_bytes)
        if keep[axis]:
            return tuple(np.concatenate([p[k] for p in parts], axis=out_axis) for k in range(4))
        total = Moments(*parts[0][:3], mean_lo=parts[0][3])
        for p in parts[1:]:
            total = total.merge(Moments(*p[:3], mean_lo=p[3]))
        return total._count, total._mean, total._m2, total._mean_lo

    return run


DEVICES = ("auto", "cpu", "cuda")


def compute(data: Any, axis: AxisLike = -1, *, ddof: int = 0, nan_policy: str = "propagate",
            threads: Optional[int] = None,
            progress: Union[bool, Callable[[int, int], Any]] = False,
            device: str = "auto", sample: Optional[Union[float, int]] = None,
            sample_seed: Optional[int] = None, dtype: Any = None,
            shape: Optional[Tuple[int, ...]] = None) -> Moments:
    """Per-feature count, mean and variance in one pass, exactly and at memory bandwidth.

    Parameters
    ----------
    data : array_like, np.memmap, path, list of paths, h5py/zarr array, dask array, GPU array
        Any NumPy array (any strides, byte order, read-only), a memory map, the path of a
        ``.npy`` file (streamed, never loaded whole), or anything ``np.asarray`` accepts.
        Also streamed with bounded memory: ``"a.npz::name"`` (or ``"a.npz"`` holding one
        array), raw binary files with ``dtype=``/``shape=``, a list of paths or a glob such as
        ``"vol_*.npy"`` (concatenated along axis 0), h5py datasets and zarr arrays.
        Dtypes: bool, (u)int8-64, float16, bfloat16 (``ml_dtypes``), float32, float64.
    axis : None, int or tuple of ints, default -1
        Axes that keep separate statistics, as in ``keras.layers.Normalization``; all other axes
        are reduced. ``None`` reduces everything.
    ddof : int, default 0
        Delta degrees of freedom of :attr:`Moments.variance`.
    nan_policy : {"propagate", "omit", "raise"}
        NaN handling: like ``np.var``, like ``np.nanvar`` (per-index counts), or ``ValueError``.
    threads : int, optional
        Threads to use; default ``OMP_NUM_THREADS`` or the CPUs this process may use. The result
        is bitwise identical for every thread count.
    progress : bool or callable
        ``True`` shows a progress bar; a callable receives ``(done_bytes, total_bytes)``.
    device : {"auto", "cpu", "cuda"}
        Where to compute; ``auto`` uses the GPU for GPU arrays and the CPU otherwise.
    sample, sample_seed :
        Fraction (< 1) or number of rows to read for an approximate answer on huge files.
    dtype, shape :
        Element type and shape of a raw binary file given as ``data``.

    Returns
    -------
    Moments
        ``count``, ``mean``, ``variance``, ``std`` and ``m2`` with the shape of the kept axes.

    Examples
    --------
    >>> import numpy as np, fastmoments
    >>> x = np.arange(12, dtype=np.float32).reshape(4, 3)
    >>> r = fastmoments.compute(x, axis=-1)
    >>> r.mean
    array([4.5, 5.5, 6.5])
    >>> float(fastmoments.compute(x, axis=None).variance)
    11.916666666666666
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    opts = ComputeOptions(axis=axis, ddof=check_ddof(ddof), nan_policy=check_nan_policy(nan_policy),
                          threads=check_threads(threads), progress=progress, device=device,
                          sample=sample, sample_seed=sample_seed, dtype=dtype,
                          shape=None if shape is None else tuple(shape))
    route = find_route(data, device)
    if route is not None:
        return route(data, opts)
    if sample is not None or dtype is not None or shape is not None:
        raise ValueError("sample=, dtype= and shape= apply to files, not to in-memory arrays")
    return compute_array(as_array(data), opts)


def compute_array(arr: np.ndarray, opts: ComputeOptions) -> Moments:
    """The CPU kernel over an ndarray (or memmap) with validated options."""
    kept = normalize_keep_axes(opts.axis, arr.ndim)
    return reduce_array(arr, kept, ddof=opts.ddof, nan_policy=opts.nan_policy,
                        threads=opts.threads, progress=opts.progress)
