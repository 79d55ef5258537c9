"""Type stub of the private compiled module ``fastmoments._core`` (csrc/python).

Use the public API (``fastmoments.compute``, ``Moments``, ``Accumulator``) instead.
"""

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt

# (count int64, mean float64, m2 float64, mean_lo float64), each with the shape of the kept axes.
_States = Tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]
"""``(count, mean, m2, mean_lo)``: mean_lo is the rounding residual of mean."""

dtypes: Tuple[Tuple[str, int, int, str], ...]
"""The kernel's dtype table: ``(name, code, itemsize, kind)`` per type, kind a NumPy kind letter."""

supported_isas: List[str]
"""Compiled instruction-set variants this CPU can run, best first (e.g. ``["avx512", "avx2", "baseline"]``)."""

selected_isa: str
"""The variant chosen at import (``FASTMOMENTS_ISA`` or the best supported one)."""

_compiled_info: Dict[str, Any]
"""What the module was compiled with: ``openmp``, ``openmp_version``, ``compiler``."""

def reduce(
    array: np.ndarray,
    keep: Sequence[bool],
    dtype_code: int,
    nan_omit: bool = False,
    threads: int = 1,
    poll: Optional[Callable[[int, int], object]] = None,
    isa: str = "",
) -> _States:
    """Per-output ``(count, mean, m2, mean_lo)`` of ``array`` reduced over the axes with ``keep[i] == False``.

    ``dtype_code`` is the kernel's code of the element type (``fastmoments._dtypes``); the array
    must be in native byte order. ``poll(done, total)`` is called about every 0.1 s with the GIL
    held; an exception it raises cancels the computation. ``isa`` ("" = ``FASTMOMENTS_ISA`` or
    the best supported) picks the compiled variant. The GIL is released while the kernel runs.
    """

def combine(
    count_a: npt.ArrayLike,
    mean_a: npt.ArrayLike,
    m2_a: npt.ArrayLike,
    count_b: npt.ArrayLike,
    mean_b: npt.ArrayLike,
    m2_b: npt.ArrayLike,
    mean_lo_a: Optional[npt.ArrayLike] = None,
    mean_lo_b: Optional[npt.ArrayLike] = None,
) -> _States:
    """Elementwise Chan merge of two sets of ``(count, mean, m2[, mean_lo])`` of one size."""

# (count, mean, m2, mean_lo, sum_weights, sum_weights_sq) of weighted states.
_WeightedStates = Tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.float64],
                        npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]

def reduce_weighted(
    array: np.ndarray,
    weights: np.ndarray,
    keep: Sequence[bool],
    dtype_code: int,
    weight_code: int,
    nan_omit: bool = False,
    threads: int = 1,
    poll: Optional[Callable[[int, int], object]] = None,
    isa: str = "",
) -> Tuple[Any, ...]:
    """Per-output ``(count, mean, m2, mean_lo, sum_weights, sum_weights_sq, bad_weights)`` of
    ``array`` weighted by ``weights`` (the array's shape, any strides; stride 0 broadcasts).
    ``weight_code``: 0 float64, 1 float32, 2 bool mask. ``bad_weights`` is True when a weight
    was negative, NaN or infinite (the states are then meaningless). GIL released."""

def combine_weighted(
    count_a: npt.ArrayLike,
    mean_a: npt.ArrayLike,
    m2_a: npt.ArrayLike,
    mean_lo_a: npt.ArrayLike,
    sum_weights_a: npt.ArrayLike,
    sum_weights_sq_a: npt.ArrayLike,
    count_b: npt.ArrayLike,
    mean_b: npt.ArrayLike,
    m2_b: npt.ArrayLike,
    mean_lo_b: npt.ArrayLike,
    sum_weights_b: npt.ArrayLike,
    sum_weights_sq_b: npt.ArrayLike,
) -> _WeightedStates:
    """Elementwise weighted Chan merge of two sets of weighted states of one size."""

def read_bandwidth(buffer: Any, threads: int = 1) -> int:
    """Sum of the buffer's 64-bit words: a plain multi-threaded read loop for benchmarks."""

class FileStreamSpec:
    """One file's read plan for :func:`stream_file`: layout, pieces and options."""

    path: str
    fd: int
    dtype_code: int
    byteswap: bool
    tail: List[int]
    keep: List[bool]
    offsets: npt.NDArray[np.int64]
    rows: npt.NDArray[np.int64]
    out_base: npt.NDArray[np.int64]
    out_size: int
    nan_omit: bool
    threads: int
    sequential: bool
    read_delay: float
    reader_mode: int
    isa: str
    def __init__(self) -> None: ...

def stream_file(
    spec: FileStreamSpec,
    poll: Optional[Callable[[int, int], object]] = None,
    poll_seconds: float = 0.05,
) -> _States:
    """Flat ``(count, mean, m2, mean_lo)`` of a raw C-order array in a file, read piece by piece."""
