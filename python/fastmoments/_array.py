"""The CPU kernel over an ndarray (any strides, byte order, memmap): the in-memory door, and the
reduction that the file door uses for data it holds in memory."""

from __future__ import annotations

import os
from typing import Optional, Tuple

import numpy as np

from . import _core
from ._axes import keep_mask, normalize_keep_axes
from ._dtypes import dtype_code, is_floating, is_native
from ._finish import check_reduction, finish, kernel_omits, values_per_output
from ._moments import Moments, State
from ._npyfile import load_npy
from ._progress import progress_reporter
from ._checks import ComputeOptions, WEIGHT_CODES, check_weights, check_where, weights_problem

# Blocks of this many bytes are converted at a time where the kernel cannot read the array as
# it is (non-native byte order): bounded extra memory instead of a full-size copy.
CONVERT_BLOCK_BYTES = 8 << 20


def reduce_ndarray(arr: np.ndarray, kept: Tuple[int, ...], *, omit: bool, threads: int,
                   report=None, weights: Optional[np.ndarray] = None) -> State:
    """The state of ``arr`` over every axis not in ``kept`` (checked arguments; one pass).
    ``weights``: a view of ``arr``'s shape from ``check_weights``/``check_where`` (a bool mask or
    float weights): the weighted kernel, and a weighted state."""
    if weights is not None:
        return _reduce_weighted(arr, weights, kept, omit, threads, report)
    code = dtype_code(arr.dtype)
    keep = keep_mask(kept, arr.ndim)
    out_shape = tuple(arr.shape[i] for i in kept)
    if is_native(arr.dtype) or arr.size <= 1:
        arr = arr if is_native(arr.dtype) else arr.astype(arr.dtype.newbyteorder("="))
        poll = None if report is None else (lambda done, total: report(done * arr.dtype.itemsize))
        return State.of(_core.reduce(arr, keep, code, omit, threads, poll), out_shape)
    return _reduce_converting(arr, keep, code, omit, threads, report, out_shape)


def _reduce_converting(arr, keep, code, omit, threads, report, out_shape) -> State:
    """Non-native byte order: convert and reduce blocks along the outermost axis."""
    native = arr.dtype.newbyteorder("=")
    axis = int(np.argmax([abs(s) if n > 1 else -1 for s, n in zip(arr.strides, arr.shape)]))
    slice_bytes = max(1, arr.nbytes // max(1, arr.shape[axis]))
    step = max(1, CONVERT_BLOCK_BYTES // slice_bytes)
    out_axis = sum(keep[:axis])
    parts = []
    for start in range(0, arr.shape[axis], step):
        index = [slice(None)] * arr.ndim
        index[axis] = slice(start, start + step)
        block = np.ascontiguousarray(arr[tuple(index)], dtype=native)
        parts.append(State.of(_core.reduce(block, keep, code, omit, threads, None)))
        if report is not None:
            report(min(arr.shape[axis], start + step) * slice_bytes)
    if keep[axis]:
        return State(*(np.concatenate([p[k] for p in parts], axis=out_axis) for k in range(4)))
    total = parts[0]
    for p in parts[1:]:
        total = total.merge(p)
    return total.reshape(out_shape)


def _reduce_weighted(arr, weights, kept, omit, threads, report) -> State:
    if not is_native(arr.dtype) and arr.size > 1:
        return _weighted_converting(arr, weights, kept, omit, threads, report)
    if not is_native(arr.dtype):
        arr = arr.astype(arr.dtype.newbyteorder("="))
    poll = None if report is None else (lambda done, total: report(done * arr.dtype.itemsize))
    state, bad = weighted_state(arr, weights, kept, omit, threads, poll)
    if bad:
        raise ValueError(bad_weights_message(weights))
    return state


def weighted_state(arr: np.ndarray, weights: np.ndarray, kept: Tuple[int, ...], omit: bool,
                   threads: int, poll=None) -> Tuple[State, bool]:
    """One pass of the weighted kernel over a native-order ``arr`` and a weight (or mask) view
    of its shape: the state, and whether some weight was negative, NaN or infinite (name it
    with :func:`bad_weights_message`). The TF fallback calls this as the op calls the core."""
    keep = keep_mask(kept, arr.ndim)
    out_shape = tuple(arr.shape[i] for i in kept)
    *parts, bad = _core.reduce_weighted(arr, weights, keep, dtype_code(arr.dtype),
                                        WEIGHT_CODES[weights.dtype], omit, threads, poll)
    return State.of(parts, out_shape), bool(bad)


def bad_weights_message(weights: np.ndarray) -> str:
    """The ValueError text for weights the kernel flagged (``weights_problem``'s)."""
    return weights_problem(np.asarray(weights)) or "weights must be finite and non-negative"


def _weighted_converting(arr, weights, kept, omit, threads, report) -> State:
    """Non-native byte order: convert and reduce blocks along the outermost axis (weights
    sliced alongside)."""
    native = arr.dtype.newbyteorder("=")
    keep = keep_mask(kept, arr.ndim)
    axis = int(np.argmax([abs(s) if n > 1 else -1 for s, n in zip(arr.strides, arr.shape)]))
    slice_bytes = max(1, arr.nbytes // max(1, arr.shape[axis]))
    step = max(1, CONVERT_BLOCK_BYTES // slice_bytes)
    parts = []
    for start in range(0, arr.shape[axis], step):
        index = [slice(None)] * arr.ndim
        index[axis] = slice(start, start + step)
        block = np.ascontiguousarray(arr[tuple(index)], dtype=native)
        parts.append(_reduce_weighted(block, weights[tuple(index)], kept, omit, threads, None))
        if report is not None:
            report(min(arr.shape[axis], start + step) * slice_bytes)
    if keep[axis]:
        return State.concatenate(parts, axis=sum(keep[:axis]))
    total = parts[0]
    for p in parts[1:]:
        total = total.merge(p)
    return total


def weights_view(arr: np.ndarray, weights, where) -> Optional[np.ndarray]:
    """The one weight array the kernel reads for ``weights=``/``where=`` (checked), or None:
    a view of ``arr``'s shape (a mask stays a mask; both given: weights zeroed where masked)."""
    if weights is None and where is None:
        return None
    # A .npy path beside an in-memory array: read in place through a checked memory map.
    weights = load_npy(weights) if isinstance(weights, (str, bytes, os.PathLike)) else weights
    where = load_npy(where) if isinstance(where, (str, bytes, os.PathLike)) else where
    mask = None if where is None else check_where(where, arr.shape)
    if weights is None:
        return mask
    w = check_weights(weights, arr.shape, arr.dtype)
    if mask is None:
        return w
    return np.where(mask, w, w.dtype.type(0))


def array_moments(arr: np.ndarray, opts: ComputeOptions, sample: Optional[float] = None) -> Moments:
    """The in-memory door: moments of an ndarray (or memmap) with checked options."""
    kept = normalize_keep_axes(opts.axis, arr.ndim)
    check_reduction(arr.shape, kept)
    floating = is_floating(arr.dtype)
    weights = weights_view(arr, opts.weights, opts.where)

    def run(omit: bool, report=None) -> State:
        return reduce_ndarray(arr, kept, omit=omit, threads=opts.threads, report=report,
                              weights=weights)

    with progress_reporter(opts.progress, arr.nbytes) as report:
        state = run(kernel_omits(opts.nan_policy, floating), report)
    # Weighted: the values that count are those of positive weight, which the pass just counted.
    expected = values_per_output(arr.shape, kept) if weights is None else state.count
    return finish(state, nan_policy=opts.nan_policy, floating=floating,
                  expected=expected, ddof=opts.ddof, sample=sample, rerun=run)
