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
        raise TypeError("fastmoments does not read the mask of a numpy.ma.MaskedArray; pass "
                        "data.filled(np.nan) with nan_policy='omit', or data.compressed()")
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
