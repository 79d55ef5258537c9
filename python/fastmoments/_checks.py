"""Argument checks shared by every door: each rule here once, with the offending value named."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional, Tuple, Union

import numpy as np

from ._axes import AxisLike

NAN_POLICIES = ("propagate", "omit", "raise")
ON_ERRORS = ("raise", "skip")
DEVICES = ("auto", "cpu", "cuda")
# More threads than this is a mistake, not a machine (the kernel takes a C int).
MAX_THREADS = 1 << 16


def default_threads() -> int:
    """Threads ``threads=None`` uses: ``OMP_NUM_THREADS`` if set, else the CPUs this process may use."""
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env:
        try:
            n = int(env)
            if n >= 1:
                return min(n, MAX_THREADS)
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


def check_on_error(on_error: str) -> str:
    if on_error not in ON_ERRORS:
        raise ValueError(f"on_error must be one of {ON_ERRORS}, got {on_error!r}")
    return on_error


def check_recursive(recursive: Any) -> bool:
    if not isinstance(recursive, (bool, np.bool_)):
        raise TypeError(f"recursive must be True or False, got {recursive!r}")
    return bool(recursive)


def check_count(name: str, value: Optional[int]) -> Optional[int]:
    """``steps=``, ``batch_size=`` and the like: a positive int, or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a positive int or None, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")
    return int(value)


def check_device(device: str) -> str:
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    return device


def check_sample(sample: Any) -> None:
    """``sample=``: a fraction in (0, 1] (float) or a number of rows >= 1 (int), or None."""
    if sample is None:
        return
    if isinstance(sample, (bool, np.bool_)) or not isinstance(sample, (int, float, np.integer, np.floating)):
        raise TypeError(f"sample must be a fraction in (0, 1] or a number of rows, got {sample!r}")
    if isinstance(sample, (float, np.floating)):
        if not 0.0 < float(sample) <= 1.0:
            raise ValueError(f"a fractional sample must lie in (0, 1], got {sample!r}")
    elif sample < 1:
        raise ValueError(f"a sample of rows must be >= 1, got {sample!r}")


def as_array(data: Any) -> np.ndarray:
    """An ndarray view of in-memory ``data`` without copying arrays or memmaps; ``TypeError``
    naming what it got for anything that is not an array of numbers."""
    if isinstance(data, np.ma.MaskedArray):
        raise TypeError("this door does not read the mask of a numpy.ma.MaskedArray; "
                        "fastmoments.compute reads it (as where=~mask), or pass "
                        "data.filled(np.nan) with nan_policy='omit'")
    if isinstance(data, np.ndarray):
        return data
    if isinstance(data, (complex, np.complexfloating)):
        raise TypeError("fastmoments cannot compute moments of complex values")
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError) as exc:
        raise TypeError(f"cannot interpret {type(data).__name__} as an array: {exc}") from None
    if arr.dtype.hasobject:
        raise TypeError(f"fastmoments computes moments of arrays of numbers, got "
                        f"{type(data).__name__} {short_repr(data)}")
    return arr


# Weight storage the weighted kernel reads (``_core.reduce_weighted``'s weight codes). int64
# weights are summed exactly with integer data (``kernel_weights_dtype``); other number types are
# converted (a copy of the weights, not of the data).
WEIGHT_CODES = {np.dtype(np.float64): 0, np.dtype(np.float32): 1, np.dtype(np.bool_): 2,
                np.dtype(np.int64): 3}


def kernel_weights_dtype(wdtype: Any, data_dtype: Any = None, *, fits_int64: bool = True) -> np.dtype:
    """The type the kernel reads weights of ``wdtype`` in: float64/float32/bool as they are
    (native byte order); integer weights of integer (or bool) data as int64, which the kernel sums
    exactly (``fits_int64=False``: uint64 weights of 2^63 or more, read as float64); everything
    else as float64."""
    dt = np.dtype(wdtype)
    integer_data = data_dtype is not None and np.dtype(data_dtype).kind in "biu"
    if dt.kind in "iu" and integer_data and (fits_int64 or dt != np.uint64):
        return np.dtype(np.int64)
    if dt in WEIGHT_CODES and dt.isnative and dt != np.int64:
        return dt
    return np.dtype(np.float64)


def split_masked(data: Any, where: Any) -> Tuple[Any, Any]:
    """A ``numpy.ma.MaskedArray`` is its data with ``where=~mask`` (masked values do not exist
    for the statistics), joined with the caller's ``where`` if both are given."""
    if not isinstance(data, np.ma.MaskedArray):
        return data, where
    mask = np.ma.getmask(data)
    values = np.ma.getdata(data)
    if mask is np.ma.nomask:
        return values, where
    keep = ~mask
    if where is not None:
        w = check_where(where, values.shape)
        keep = keep & w
    return values, keep


def aligned_shape(wshape: Tuple[int, ...], shape: Tuple[int, ...], name: str, rows: bool) -> Tuple[int, ...]:
    """The shape weights (``rows``) or a mask of shape ``wshape`` take before NumPy broadcasting
    to the data's ``shape``: a 1-D array of length ``shape[0]`` on data of 2+ dimensions is one
    weight per row (axis 0), as ``np.average``'s 1-D weights along the reduced axis and Keras's
    ``sample_weight``. ``ValueError`` with both shapes when they do not broadcast."""
    wshape, shape = tuple(wshape), tuple(shape)
    if rows and len(wshape) == 1 and len(shape) > 1 and wshape[0] == shape[0]:
        return (shape[0],) + (1,) * (len(shape) - 1)
    try:
        ok = np.broadcast_shapes(wshape, shape) == shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{name} of shape {wshape} does not broadcast to the data's shape {shape}")
    return wshape


def _broadcast(arr: np.ndarray, shape: Tuple[int, ...], name: str, rows: bool) -> np.ndarray:
    """``arr`` as a read-only view of ``shape`` (stride 0 on broadcast axes; see aligned_shape)."""
    return np.broadcast_to(arr.reshape(aligned_shape(arr.shape, shape, name, rows)), shape)


def check_where_dtype(dtype: Any) -> None:
    if np.dtype(dtype) != np.bool_:
        raise ValueError(f"where must be a boolean mask (NumPy's where=), got dtype {dtype}")


def check_weights_dtype(dtype: Any) -> None:
    if np.dtype(dtype).kind not in "biuf":
        raise ValueError(f"weights must be real numbers, got dtype {dtype}")


def check_where(where: Any, shape: Tuple[int, ...]) -> np.ndarray:
    """``where=``: a boolean mask broadcastable to the data (NumPy's meaning), as a view."""
    arr = np.asarray(where)
    check_where_dtype(arr.dtype)
    return _broadcast(arr, shape, "where", rows=False)


def check_weights(weights: Any, shape: Tuple[int, ...], data_dtype: Any = None) -> np.ndarray:
    """``weights=``: non-negative finite numbers broadcastable to the data (a 1-D vector of
    length ``shape[0]`` weights the rows), as a view of the data's shape in a stored type the
    kernel reads (``kernel_weights_dtype`` for data of ``data_dtype``). The values are checked by
    the kernel as it reads them (one pass); a weight it flags is named by
    :func:`weights_problem`. Small weight arrays are checked here at once."""
    arr = np.asarray(weights)
    check_weights_dtype(arr.dtype)
    big = arr.dtype == np.uint64 and arr.size and int(arr.max()) > np.iinfo(np.int64).max
    target = kernel_weights_dtype(arr.dtype, data_dtype, fits_int64=not big)
    if arr.dtype != target:
        arr = arr.astype(target)
    if arr.size <= 1 << 16:
        problem = weights_problem(arr)
        if problem:
            raise ValueError(problem)
    return _broadcast(arr, shape, "weights", rows=True)


def weights_problem(weights: np.ndarray) -> Optional[str]:
    """What is wrong with ``weights`` (NaN, infinite or negative values), or None."""
    if weights.dtype.kind != "f":
        return None if weights.dtype.kind != "i" or weights.size == 0 or weights.min() >= 0 else \
            "weights must be non-negative, got a negative weight"
    if np.isnan(weights).any():
        return "weights must be finite, got NaN"
    if np.isinf(weights).any():
        return "weights must be finite, got an infinite weight"
    if weights.size and weights.min() < 0:
        return f"weights must be non-negative, got {float(weights.min())!r}"
    return None


def check_mask_value(value: Any, dtype: Any) -> Any:
    """``mask_value=`` (FastNorm): values equal to it are dropped. It must be a number of the
    data's kind: a bool for bool data; an integer in the dtype's range for integer data; a real
    number for float data, compared in the data's dtype (rounded to it, as ``keras.layers.Masking``
    compares), not NaN (NaN equals nothing) and not beyond the dtype's range. Returns it as a
    scalar of that dtype; ``ValueError`` naming the value and dtype otherwise."""
    dtype = np.dtype(dtype)
    if isinstance(value, (np.ndarray, list, tuple)) and np.ndim(value) != 0:
        raise ValueError(f"mask_value must be a single value, got {short_repr(value)}")
    scalar = np.asarray(value)
    kind = scalar.dtype.kind
    wrong = f"mask_value {value!r} ({scalar.dtype}) is not a value of the data's dtype {dtype}"
    if kind not in "biuf" or (kind == "b") != (dtype.kind == "b"):
        raise ValueError(wrong)
    if kind == "f" and np.isnan(scalar):
        raise ValueError("mask_value cannot be NaN (NaN equals nothing); use nan_policy='omit' "
                         "to drop NaN values")
    if dtype.kind in "iu":
        exact = float(scalar) == int(scalar) if kind == "f" and np.isfinite(scalar) else kind in "iu"
        info = np.iinfo(dtype)
        if not exact or not info.min <= int(scalar) <= info.max:
            raise ValueError(wrong + " (no element could equal it)")
        return dtype.type(int(scalar))
    if dtype.kind == "f" or dtype.kind == "V":  # float16/32/64 (bfloat16: ml_dtypes)
        with np.errstate(over="ignore"):
            converted = np.asarray(scalar, np.float64).astype(dtype)
        if not np.isfinite(np.asarray(converted, np.float64)) and np.isfinite(np.asarray(scalar, np.float64)):
            raise ValueError(wrong + " (beyond its range)")
        return converted[()]
    return dtype.type(scalar)


def short_repr(obj: Any, limit: int = 60) -> str:
    text = repr(obj)
    return text if len(text) <= limit else text[:limit - 3] + "..."


@dataclass(frozen=True)
class ComputeOptions:
    """Validated ``compute`` arguments handed to a route."""

    axis: AxisLike = -1
    ddof: int = 0
    nan_policy: str = "propagate"
    threads: int = 1
    progress: Any = False
    device: str = "auto"
    sample: Optional[Union[float, int]] = None
    sample_seed: Optional[int] = None
    dtype: Any = None
    shape: Optional[Tuple[int, ...]] = None
    recursive: bool = False
    on_error: str = "raise"
    weights: Any = None
    where: Any = None
