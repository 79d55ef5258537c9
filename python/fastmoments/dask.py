"""Moments of Dask arrays: the core kernel per chunk, the core merge in Dask's tree reduction.

Each chunk becomes a small partial state ``(count, mean, m2)`` per kept index, computed by
:func:`fastmoments.compute` (GIL released, one thread per task by default so that Dask's workers
and OpenMP do not oversubscribe the cores). States travel between tasks (and between worker
processes on a ``dask.distributed`` cluster) as NumPy structured arrays of :data:`STATE_DTYPE`,
which pickle as a few plain bytes, and are merged with :meth:`fastmoments.Moments.merge` (the
C++ Chan et al. 1983 combine) inside ``dask.array.reduction``. Chunks along kept axes stay
separate: each output block merges only the states of its own slice.

>>> import dask.array as da, fastmoments.dask
>>> x = da.arange(12, chunks=5).reshape(4, 3)
>>> lazy = fastmoments.dask.moments(x, axis=-1)
>>> lazy.compute().mean
array([4.5, 5.5, 6.5])
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, List, Optional, Tuple

import numpy as np

from ._axes import AxisLike, normalize_keep_axes
from ._array import array_moments
from ._checks import (ComputeOptions, aligned_shape, as_array, check_ddof, check_nan_policy,
                      check_threads, check_weights_dtype, check_where_dtype)
from ._dtypes import dtype_code
from ._finish import check_reduction, finish
from ._moments import Moments
from ._progress import progress_reporter
from ._routes import wants_gpu

__all__ = ["STATE_DTYPE", "WEIGHTED_STATE_DTYPE", "compute_eager", "moments", "moments_to_states", "state_array",
           "states_to_moments"]

#: One partial state per kept index: what a chunk task returns and what merges consume.
#: ``mean_lo`` is the rounding residual of ``mean`` (see :class:`fastmoments.Moments`).
STATE_DTYPE = np.dtype([("count", np.int64), ("mean", np.float64), ("m2", np.float64),
                        ("mean_lo", np.float64)])
#: The weighted state (``weights=``/``where=``): :data:`STATE_DTYPE` plus the weight sums.
WEIGHTED_STATE_DTYPE = np.dtype(STATE_DTYPE.descr + [("sum_weights", np.float64),
                                                     ("sum_weights_sq", np.float64)])
_WEIGHT_FIELDS = ("sum_weights", "sum_weights_sq")


# -- conversions between Moments and plain structured arrays -------------------------------------
def moments_to_states(m: Moments) -> np.ndarray:
    """A structured array of :data:`STATE_DTYPE` with the shape of ``m`` holding its state."""
    if not isinstance(m, Moments):
        raise TypeError(f"expected Moments, got {type(m).__name__}")
    d = m.to_dict()
    out = np.empty(m.shape, dtype=WEIGHTED_STATE_DTYPE if m.weighted else STATE_DTYPE)
    for field in out.dtype.names:
        out[field] = d[field]
    return out


def states_to_moments(states: np.ndarray, *, ddof: int = 0) -> Moments:
    """The :class:`~fastmoments.Moments` held by a structured array of :data:`STATE_DTYPE`."""
    states = np.asarray(states)
    if states.dtype not in (STATE_DTYPE, WEIGHTED_STATE_DTYPE):
        raise TypeError(f"expected a structured array of dtype {STATE_DTYPE} (or "
                        f"{WEIGHTED_STATE_DTYPE}), got {states.dtype}")
    weights = {f: states[f].copy() for f in _WEIGHT_FIELDS if f in states.dtype.names}
    return Moments(states["count"].copy(), states["mean"].copy(), states["m2"].copy(), ddof=ddof,
                   mean_lo=states["mean_lo"].copy(), **weights)


def _zero_states(shape: Tuple[int, ...], dtype: np.dtype = STATE_DTYPE) -> np.ndarray:
    # count 0 is the identity of the merge: an empty chunk contributes nothing.
    return np.zeros(shape, dtype=dtype)


# -- the three functions of dask.array.reduction -------------------------------------------------
def _chunk_states(block: np.ndarray, axis: Tuple[int, ...], keepdims: bool = True, *,
                  nan_policy: str = "propagate", threads: int = 1, device: str = "auto",
                  computing_meta: bool = False, **_: Any) -> np.ndarray:
    """Partial states of one block, with the reduced axes kept at length 1."""
    ndim = block.ndim
    kept = tuple(i for i in range(ndim) if i not in axis)
    out_shape = tuple(1 if i in axis else block.shape[i] for i in range(ndim))
    n_reduced = math.prod(block.shape[i] for i in axis)
    if computing_meta or n_reduced == 0 or block.size == 0:
        states = _zero_states(out_shape)
    else:
        states = moments_to_states(_block_moments(block, kept, nan_policy, threads, device))
        states = states.reshape(out_shape)
    return states if keepdims else states.reshape(tuple(block.shape[i] for i in kept))


def _block_moments(block: Any, kept: Tuple[int, ...], nan_policy: str, threads: int,
                   device: str) -> Moments:
    """One chunk through the in-memory kernels (CPU, or the GPU for GPU-backed chunks)."""
    opts = ComputeOptions(axis=kept if kept else None, nan_policy=nan_policy, threads=threads,
                          device=device)
    if wants_gpu(block, device):
        from ._gpu import compute as gpu_moments

        return gpu_moments(block, opts)
    return array_moments(as_array(block), opts)


def _weighted_chunk_states(block: np.ndarray, wblock: np.ndarray, *, reduced: Tuple[int, ...],
                           mask: bool, nan_policy: str, threads: int) -> np.ndarray:
    """Partial weighted states of one block and its aligned weights (or mask) block, with the
    reduced axes kept at length 1."""
    ndim = block.ndim
    kept = tuple(i for i in range(ndim) if i not in reduced)
    out_shape = tuple(1 if i in reduced else block.shape[i] for i in range(ndim))
    if block.size == 0 or math.prod(block.shape[i] for i in reduced) == 0:
        return _zero_states(out_shape, WEIGHTED_STATE_DTYPE)
    opts = ComputeOptions(axis=kept if kept else None, nan_policy=nan_policy, threads=threads,
                          **({"where": wblock} if mask else {"weights": wblock}))
    m = array_moments(as_array(block), opts)
    return moments_to_states(m).reshape(out_shape)


def _pass_states(states: np.ndarray, axis: Tuple[int, ...], keepdims: bool = True, **_: Any) -> np.ndarray:
    """The chunk step of the reduction over per-block states: they are states already."""
    return states


def _merge_states(states: np.ndarray, axis: Tuple[int, ...], keepdims: bool = True,
                  **_: Any) -> np.ndarray:
    """Merge the states along ``axis`` (a concatenation of partial states) into one per index."""
    states = np.asarray(states)
    ndim = states.ndim
    kept_shape = tuple(states.shape[i] for i in range(ndim) if i not in axis)
    n_parts = math.prod(states.shape[i] for i in axis)
    front = np.moveaxis(states, axis, tuple(range(len(axis)))).reshape((n_parts,) + kept_shape)
    if front.shape[0] == 0:
        merged = _zero_states(kept_shape, states.dtype)
    else:
        parts: List[Moments] = [states_to_moments(front[k]) for k in range(front.shape[0])]
        # Pairwise tree: log-depth rounding, and the same grouping wherever the task runs.
        while len(parts) > 1:
            paired = [parts[k].merge(parts[k + 1]) for k in range(0, len(parts) - 1, 2)]
            if len(parts) % 2:
                paired.append(parts[-1])
            parts = paired
        merged = moments_to_states(parts[0])
    if keepdims:
        merged = merged.reshape(tuple(1 if i in axis else states.shape[i] for i in range(ndim)))
    return merged


def _finalize(states: np.ndarray, ddof: int, nan_policy: str) -> Moments:
    if states.dtype == WEIGHTED_STATE_DTYPE:
        # The NaN rule for indices with no value of positive weight (the blocks applied the
        # NaN policy already).
        return finish(states_to_moments(states).state, nan_policy="propagate", floating=True,
                      expected=0, ddof=ddof)
    # Arrays of unknown length (e.g. boolean-filtered) can only be found empty here.
    if nan_policy != "omit" and states.size and not np.any(states["count"]):
        raise ValueError("cannot compute moments of an empty reduction: the dask array has no "
                         "values along the reduced axes")
    return states_to_moments(states, ddof=ddof)


# -- public API ------------------------------------------------------------------------------------
def _check_dask_array(darr: Any):
    import dask.array as da

    if not isinstance(darr, da.Array):
        hint = " (call .to_dask_array() first)" if hasattr(darr, "to_dask_array") else ""
        raise TypeError(f"expected a dask.array.Array, got {type(darr).__module__}."
                        f"{type(darr).__name__}{hint}")
    return da


def _aligned(da, arr: Any, darr: Any, name: str, rows: bool):
    """Weights or a mask as a dask array of ``darr``'s shape and chunks (the rule of
    ``_checks.aligned_shape``: a 1-D vector of length ``shape[0]`` weights the rows)."""
    a = arr if isinstance(arr, da.Array) else da.from_array(np.asarray(arr))
    (check_weights_dtype if rows else check_where_dtype)(a.dtype)
    a = a.reshape(aligned_shape(a.shape, darr.shape, name, rows))
    return da.broadcast_to(a, darr.shape).rechunk(darr.chunks)


def _weighted_state_array(da, darr, kept, reduced, weights, where, split_every, nan_policy, threads):
    mask = weights is None
    w = None if weights is None else _aligned(da, weights, darr, "weights", rows=True)
    m = None if where is None else _aligned(da, where, darr, "where", rows=False)
    if w is not None and m is not None:
        w = da.where(m, w, w.dtype.type(0))  # the array door's rule (_array.weights_view)
    chunks = tuple((1,) * len(c) if i in reduced else c for i, c in enumerate(darr.chunks))
    blocks = da.map_blocks(partial(_weighted_chunk_states, reduced=reduced, mask=mask,
                                   nan_policy=nan_policy, threads=threads),
                           darr, m if mask else w, dtype=WEIGHTED_STATE_DTYPE, chunks=chunks,
                           meta=np.empty((0,) * darr.ndim, dtype=WEIGHTED_STATE_DTYPE),
                           name="fastmoments-weighted-chunk")
    return da.reduction(blocks, _pass_states, _merge_states, combine=_merge_states, axis=reduced,
                        keepdims=False, dtype=WEIGHTED_STATE_DTYPE, split_every=split_every,
                        concatenate=True, name="fastmoments-weighted",
                        meta=np.empty((0,) * len(kept), dtype=WEIGHTED_STATE_DTYPE))


def state_array(darr: Any, axis: AxisLike = -1, *, split_every: Optional[Any] = None,
                nan_policy: str = "propagate", threads: int = 1, device: str = "auto",
                weights: Any = None, where: Any = None):
    """The lazy reduction itself: a dask array of :data:`STATE_DTYPE` with the kept shape
    (:data:`WEIGHTED_STATE_DTYPE` with ``weights``/``where``).

    Its blocks follow the chunks of ``darr`` along the kept axes. Most users want
    :func:`moments`; this is for keeping the per-index states as a dask array.
    """
    da = _check_dask_array(darr)
    nan_policy = check_nan_policy(nan_policy)
    threads = check_threads(threads)
    dtype_code(darr.dtype)  # TypeError now for dtypes the kernel cannot read, not in a worker
    kept = normalize_keep_axes(axis, darr.ndim)
    reduced = tuple(i for i in range(darr.ndim) if i not in kept)
    check_reduction(darr.shape, kept, what="dask array")
    if weights is not None or where is not None:
        if device == "cuda":
            raise ValueError("weights= and where= run on the CPU kernel; not with device='cuda'")
        return _weighted_state_array(da, darr, kept, reduced, weights, where, split_every,
                                     nan_policy, threads)
    chunk = partial(_chunk_states, nan_policy=nan_policy, threads=threads, device=device)
    return da.reduction(darr, chunk, _merge_states, combine=_merge_states, axis=reduced,
                        keepdims=False, dtype=STATE_DTYPE, split_every=split_every,
                        concatenate=True, name="fastmoments",
                        meta=np.empty((0,) * len(kept), dtype=STATE_DTYPE))


def moments(darr: Any, axis: AxisLike = -1, split_every: Optional[Any] = None, *, ddof: int = 0,
            nan_policy: str = "propagate", threads: int = 1, device: str = "auto",
            weights: Any = None, where: Any = None):
    """Lazy per-feature moments of a dask array; ``.compute()`` gives a ``fastmoments.Moments``.

    Parameters
    ----------
    darr : dask.array.Array
        Any chunking, including chunks along the kept axes and empty (size-0) chunks.
    axis : None, int or tuple of ints, default -1
        Axes that keep separate statistics (as in :func:`fastmoments.compute`).
    split_every : int or dict, optional
        Fan-in of Dask's tree reduction (``dask.array.reduction``); default Dask's.
    ddof, nan_policy :
        As in :func:`fastmoments.compute`; ``nan_policy="raise"`` raises ``ValueError`` from
        the task that meets a NaN.
    threads : int, default 1
        Kernel threads per chunk task. Keep 1 when Dask runs several tasks per machine.
    device : {"auto", "cpu", "cuda"}
        Passed to the per-chunk :func:`fastmoments.compute` (GPU-backed chunks go to the GPU).
    weights, where : dask or NumPy arrays, optional
        As in :func:`fastmoments.compute` (same broadcasting; a 1-D vector of length
        ``darr.shape[0]`` weights the rows); rechunked to ``darr``'s chunks and reduced
        block by block beside it.

    Returns
    -------
    dask.delayed.Delayed
        Computes (``.compute()``, ``dask.compute``, ``Client.compute``) to a ``Moments``.
    """
    import dask

    ddof = check_ddof(ddof)
    states = state_array(darr, axis, split_every=split_every, nan_policy=nan_policy,
                         threads=threads, device=device, weights=weights, where=where)
    return dask.delayed(_finalize, pure=True)(states, ddof, nan_policy)


def compute_eager(data: Any, opts: ComputeOptions) -> Moments:
    """The route :func:`fastmoments.compute` takes for dask arrays: build the graph, compute it.

    Chunks run with one kernel thread each (Dask's scheduler supplies the parallelism), so the
    ``threads`` option of ``compute`` does not apply. ``progress`` follows the finished tasks
    on Dask's local schedulers; on a ``dask.distributed`` client it reports only the end (use
    the cluster's dashboard there).
    """
    _check_dask_array(data)
    if opts.sample is not None or opts.dtype is not None or opts.shape is not None:
        raise ValueError("sample=, dtype= and shape= apply to files, not to dask arrays")
    lazy = moments(data, opts.axis, ddof=opts.ddof, nan_policy=opts.nan_policy, threads=1,
                   device=opts.device, weights=opts.weights, where=opts.where)
    total = 0 if any(math.isnan(s) for s in data.shape) else int(data.nbytes)
    with progress_reporter(opts.progress, total) as report:
        if report is None:
            return lazy.compute()
        with _task_progress(lambda frac: report(int(frac * total))):
            return lazy.compute()


def _task_progress(report):
    """A local-scheduler callback passing the fraction of finished tasks to ``report``."""
    from dask.callbacks import Callback

    class TaskProgress(Callback):
        """Reports the fraction of finished tasks of a local-scheduler run."""

        def __init__(self, report):
            super().__init__()
            self._report = report
            self._total = 1
            self._done = 0

        def _start_state(self, dsk, state):
            self._total = max(1, sum(len(state[k]) for k in ("ready", "waiting", "running")))

        def _posttask(self, key, result, dsk, state, worker_id):
            self._done += 1
            self._report(min(1.0, self._done / self._total))

    return TaskProgress(report)
