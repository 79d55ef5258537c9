"""TensorFlow door: exact moments of tensors and ``tf.data`` datasets with the fastmoments kernel.

The compiled op library ``fastmoments/_tf_ops.so`` registers two ops, ``FastMoments>Moments``
(the per-index state ``(count, mean, m2, mean_lo)`` of a tensor, the core CPU kernel) and
``FastMoments>MergeMoments`` (the core's Chan merge of two such states). It is loaded on first
use and only when the running TensorFlow is the one it was built against and the library
registers the state layout this module expects (:data:`STATE_FIELDS`); otherwise every function
here falls back to the same kernel through ``tf.numpy_function`` and warns once with
:class:`OpFallbackWarning`. Set ``FASTMOMENTS_TF_FALLBACK=1`` to force the fallback.

A state is the core's record ``MomentState`` as a tuple of four tensors, ``(count, mean, m2,
mean_lo)``: ``m2`` is ``sum((x - mean)**2)`` and ``mean_lo`` the rounding residual of ``mean``
(the exact mean is ``mean + mean_lo``). Merges use all four, so a dataset reduced in many batches
keeps the precision of one pass (a mean of 1e9 with unit spread loses no bits).

Importing this module imports TensorFlow; ``import fastmoments`` alone does not.
"""

from __future__ import annotations

import os
import threading
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from ._axes import AxisLike, normalize_keep_axes
from ._checks import check_count, check_ddof, check_nan_policy, check_threads, default_threads
from ._array import reduce_ndarray
from ._finish import finish, kernel_omits
from ._moments import Moments, State as StateRecord

__all__ = [
    "OpFallbackWarning", "STATE_FIELDS", "dataset_moments", "merge_states", "moment_state",
    "moments", "op_info", "zero_state",
]

FALLBACK_ENV = "FASTMOMENTS_TF_FALLBACK"
_LIBRARY = "_tf_ops.so"

# Element types the op reads (TF's half/bfloat16 have the bit layouts the core reads).
SUPPORTED_DTYPES = (
    tf.bool, tf.int8, tf.int16, tf.int32, tf.int64, tf.uint8, tf.uint16, tf.uint32, tf.uint64,
    tf.float16, tf.bfloat16, tf.float32, tf.float64,
)

#: The fields of a state, in order: the outputs of both ops and each side of MergeMoments' inputs.
STATE_FIELDS = ("count", "mean", "m2", "mean_lo")
# Their dtypes (count int64, the rest float64).
_STATE_DTYPES = (tf.int64, tf.float64, tf.float64, tf.float64)

State = Tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]


class OpFallbackWarning(RuntimeWarning):
    """The compiled TensorFlow op is not loaded; the core kernel runs through ``tf.numpy_function``
    (correct, but Python runs per call and graphs using it cannot be serialized)."""


# -- loading the op library -------------------------------------------------------------------------

class _OpLoader:
    """Loads ``_tf_ops.so`` once, on first use, and remembers why it could not."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.force_fallback: Optional[bool] = None  # None: follow FASTMOMENTS_TF_FALLBACK
        self.reset()

    def reset(self) -> None:
        self.tried = False
        self.module: Any = None
        self.reason: Optional[str] = None
        self.warned = False

    def load(self) -> Any:
        with self.lock:
            if not self.tried:
                self.tried = True
                self.module, self.reason = _load_library(self._forced())
            return self.module

    def _forced(self) -> bool:
        if self.force_fallback is not None:
            return self.force_fallback
        return os.environ.get(FALLBACK_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _built_against() -> Optional[str]:
    from . import _build_info

    info = getattr(_build_info, "tensorflow", None)
    return info.get("version") if isinstance(info, dict) else None


def _library_path() -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), _LIBRARY)


# The module object of a loaded library, cached by path: TF registers ops once per process.
_LIBRARIES: Dict[str, Any] = {}


def _load_library(forced: bool) -> Tuple[Any, Optional[str]]:
    if forced:
        return None, f"fallback forced ({FALLBACK_ENV} or fastmoments.tf._set_fallback)"
    built = _built_against()
    path = _library_path()
    if built is None:
        return None, ("not built: TensorFlow was not importable when fastmoments was built "
                      "(install with `pip install --no-build-isolation` into an environment with TF)")
    if not os.path.exists(path):
        return None, f"missing: {path} does not exist"
    if built != tf.__version__:
        return None, (f"TensorFlow version mismatch: the op was built against {built}, "
                      f"TensorFlow {tf.__version__} is running; rebuild fastmoments")
    if path not in _LIBRARIES:
        try:
            module = tf.load_op_library(path)
        except Exception as exc:  # noqa: BLE001 - any load failure means: use the fallback
            return None, f"failed to load {path}: {type(exc).__name__}: {exc}"
        stale = _signature_mismatch()
        if stale is not None:
            return None, (f"stale library: {path} {stale}; rebuild fastmoments "
                          "(pip install --no-build-isolation .)")
        _LIBRARIES[path] = module
        # Statistics are not differentiated through (as Normalization.adapt).
        tf.no_gradient("FastMoments>Moments")
        tf.no_gradient("FastMoments>MergeMoments")
    return _LIBRARIES[path], None


def _expected_signatures() -> Dict[str, Tuple[List[str], List[str]]]:
    """Input and output names of each op as this module calls them (the state layout)."""
    fields = list(STATE_FIELDS)
    return {
        "FastMoments>Moments": (["x"], fields),
        "FastMoments>MergeMoments": ([f + "_a" for f in fields] + [f + "_b" for f in fields], fields),
    }


def _signature_mismatch() -> Optional[str]:
    """None when the registered ops have the signatures this module calls, else what differs.

    A library built from older sources (three state fields) still loads into a TensorFlow of the
    right version; its registered op definitions tell it apart.
    """
    from tensorflow.python.framework import op_def_registry

    for name, (inputs, outputs) in _expected_signatures().items():
        op_def = op_def_registry.get(name)
        if op_def is None:
            return f"does not register {name}"
        got_in = [a.name for a in op_def.input_arg]
        got_out = [a.name for a in op_def.output_arg]
        if (got_in, got_out) != (inputs, outputs):
            return (f"registers {name}({', '.join(got_in)}) -> ({', '.join(got_out)}), expected "
                    f"({', '.join(inputs)}) -> ({', '.join(outputs)})")
    return None


_loader = _OpLoader()


def _set_fallback(force: Optional[bool]) -> None:
    """Force (True) or forbid (False) the ``tf.numpy_function`` fallback; None follows the
    ``FASTMOMENTS_TF_FALLBACK`` variable. Resets the loader (for tests and debugging)."""
    with _loader.lock:
        _loader.force_fallback = force
        _loader.reset()


def op_info() -> Dict[str, Any]:
    """Whether the TensorFlow op is in use, and why not.

    Returns
    -------
    dict
        ``loaded`` (bool), ``built_against`` (TF version the op was compiled with, or None when it
        was not built), ``tf_version`` (running TF), ``path`` (the library file) and ``reason``
        (None when loaded, else why the fallback is used: not built, missing, version mismatch,
        load error, or forced).
    """
    module = _loader.load()
    return {
        "loaded": module is not None,
        "built_against": _built_against(),
        "tf_version": tf.__version__,
        "path": _library_path(),
        "reason": _loader.reason,
    }


def _caller_stacklevel() -> int:
    """warnings.warn stacklevel of the first frame outside the fastmoments package."""
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == here:
        frame, level = frame.f_back, level + 1
    return level


def _ops() -> Any:
    """The op module, or None after warning (once) that the fallback is used."""
    module = _loader.load()
    if module is None and not _loader.warned:
        _loader.warned = True
        warnings.warn(
            f"fastmoments.tf: the TensorFlow op is not loaded ({_loader.reason}); using the "
            "core kernel through tf.numpy_function instead",
            OpFallbackWarning, stacklevel=_caller_stacklevel())
    return module


# -- argument checks --------------------------------------------------------------------------------

def _check_dtype(dtype: tf.DType) -> None:
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"fastmoments cannot compute moments of dtype {dtype.name}; supported dtypes are "
            + ", ".join(d.name for d in SUPPORTED_DTYPES))


def _keep_axes(axis: AxisLike, rank: Optional[int]) -> List[int]:
    """The op's ``keep_axes`` attr: normalized when the rank is known, else checked for ints."""
    if rank is not None:
        return list(normalize_keep_axes(axis, rank))
    if axis is None:
        return []
    items = (axis,) if not isinstance(axis, (tuple, list)) else tuple(axis)
    out = []
    for a in items:
        if isinstance(a, bool) or not isinstance(a, (int, np.integer)):
            raise TypeError(f"axis must be None, an int or a tuple of ints, got {axis!r}")
        out.append(int(a))
    return out


def _threads_attr(threads: Optional[int]) -> int:
    return 0 if threads is None else check_threads(threads)


def _static_state_shape(shape: tf.TensorShape, keep: Sequence[int]) -> tf.TensorShape:
    if shape.rank is None:
        return tf.TensorShape(None)
    return tf.TensorShape([shape[k] for k in sorted(keep)])


# -- per-tensor states ------------------------------------------------------------------------------

def _fallback_state(x: tf.Tensor, keep: List[int], nan_omit: bool, threads: int) -> State:
    n_threads = threads or default_threads()
    # bfloat16 crosses as its bits: TF's numpy_function conversion of bfloat16 tensors warns.
    view = tf.bfloat16.as_numpy_dtype if x.dtype == tf.bfloat16 else None
    if view is not None:
        x = tf.bitcast(x, tf.uint16)

    def run(a: np.ndarray):
        a = np.asarray(a)
        if view is not None:
            a = a.view(view)
        kept = normalize_keep_axes(tuple(keep), a.ndim)
        kept_shape = tuple(a.shape[k] for k in kept)
        if a.size == 0:  # the identity state, as the op gives
            return tuple(np.zeros(kept_shape, d.as_numpy_dtype) for d in _STATE_DTYPES)
        state = reduce_ndarray(a, kept, omit=nan_omit, threads=n_threads)  # the raw state, as the op's
        return tuple(np.asarray(part, dt.as_numpy_dtype) for part, dt in zip(state, _STATE_DTYPES))

    state = tf.numpy_function(run, [x], list(_STATE_DTYPES), stateful=False,
                              name="fastmoments_state_fallback")
    shape = _static_state_shape(x.shape, keep)
    for t in state:
        t.set_shape(shape)
    return tuple(state)


def _op_state(ops: Any, x: tf.Tensor, keep: List[int], nan_omit: bool, threads: int) -> State:
    return tuple(ops.fast_moments_moments(x, keep_axes=keep, nan_omit=nan_omit, threads=threads))


def _op_merge(ops: Any, a: State, b: State) -> State:
    return tuple(ops.fast_moments_merge_moments(*a, *b))


def _state(x: tf.Tensor, keep: List[int], nan_omit: bool, threads: int) -> State:
    ops = _ops()
    if ops is None:
        return _fallback_state(x, keep, nan_omit, threads)
    return _op_state(ops, x, keep, nan_omit, threads)


def moment_state(x: Any, axis: AxisLike = -1, *, nan_policy: str = "propagate",
                 threads: Optional[int] = None) -> State:
    """The mergeable state ``(count, mean, m2, mean_lo)`` of a tensor, as tensors.

    Parameters
    ----------
    x : tensor-like
        Any of :data:`SUPPORTED_DTYPES`.
    axis : None, int or tuple of ints, default -1
        Axes that keep separate statistics (``keras.layers.Normalization`` semantics).
    nan_policy : {"propagate", "omit"}
    threads : int, optional
        OpenMP threads of the kernel; default: the size of TF's intra-op thread pool.

    Returns
    -------
    count (int64), mean, m2, mean_lo (float64)
        Each with the shape of the kept axes (:data:`STATE_FIELDS`): ``m2`` is
        ``sum((x - mean)**2)``, ``mean_lo`` the rounding residual of ``mean``. An empty reduction
        gives the zero state. Merge states with :func:`merge_states`.
    """
    x = tf.convert_to_tensor(x)
    _check_dtype(x.dtype)
    nan_policy = check_nan_policy(nan_policy)
    if nan_policy == "raise":
        raise ValueError("nan_policy='raise' is supported by dataset_moments only; "
                         "use 'propagate' or 'omit' here")
    return _state(x, _keep_axes(axis, x.shape.rank), nan_policy == "omit", _threads_attr(threads))


def _fallback_merge(a: State, b: State) -> State:
    def run(*fields):
        sa, sb = fields[:4], fields[4:]
        ca, cb = sa[0], sb[0]
        if ca.shape != cb.shape:
            if ca.ndim == 0 and ca == 0:
                return sb
            if cb.ndim == 0 and cb == 0:
                return sa
            raise ValueError(f"MergeMoments: states of shapes {ca.shape} and {cb.shape} cannot be merged")
        out = StateRecord.of(sa).merge(StateRecord.of(sb))  # the one merge
        return tuple(np.asarray(f, dt.as_numpy_dtype).reshape(ca.shape)
                     for f, dt in zip(out, _STATE_DTYPES))

    out = tf.numpy_function(run, [*a, *b], list(_STATE_DTYPES), stateful=False,
                            name="fastmoments_merge_fallback")
    sa, sb = a[0].shape, b[0].shape
    if sa.rank == 0 and sb.rank not in (0, None):
        shape = sb
    elif sb.rank == 0 and sa.rank not in (0, None):
        shape = sa
    elif sa.is_compatible_with(sb):
        shape = sa.merge_with(sb)
    else:
        shape = tf.TensorShape(None)
    for t in out:
        t.set_shape(shape)
    return tuple(out)


def _as_state(state: Any, name: str) -> State:
    """The four tensors of a state, checked: a ``(count, mean, m2, mean_lo)`` sequence."""
    if not isinstance(state, (tuple, list)) or len(state) != len(STATE_FIELDS):
        got = f"a sequence of {len(state)}" if isinstance(state, (tuple, list)) else type(state).__name__
        raise ValueError(f"{name} must be a state ({', '.join(STATE_FIELDS)}) as returned by "
                         f"moment_state, got {got}")
    return tuple(tf.convert_to_tensor(t, dt) for t, dt in zip(state, _STATE_DTYPES))


def zero_state(shape: Sequence[int] = ()) -> State:
    """The state of no data (the identity of :func:`merge_states`); a scalar one merges with a
    state of any shape."""
    return tuple(tf.zeros(shape, dt) for dt in _STATE_DTYPES)


def merge_states(a: State, b: State) -> State:
    """Merge two ``(count, mean, m2, mean_lo)`` states (the core's Chan merge) into the state of
    both.

    The states must have one shape, except that a scalar state with count 0 (no data yet, see
    :func:`zero_state`) merges with a state of any shape.
    """
    a = _as_state(a, "the first state")
    b = _as_state(b, "the second state")
    ops = _ops()
    if ops is None:
        return _fallback_merge(a, b)
    return _op_merge(ops, a, b)


def moments(x: Any, axis: AxisLike = -1, ddof: int = 0, *, nan_policy: str = "propagate",
            threads: Optional[int] = None) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Exact mean and variance of a tensor in one pass: eager, in ``tf.function``, in ``tf.data``.

    Parameters
    ----------
    x : tensor-like
        Any integer, float16/bfloat16/float32/float64 or bool tensor.
    axis : None, int or tuple of ints, default -1
        Axes that keep separate statistics (as in ``keras.layers.Normalization``); the others are
        reduced; ``None`` reduces everything.
    ddof : int, default 0
        Delta degrees of freedom of the variance.
    nan_policy : {"propagate", "omit"}
    threads : int, optional
        OpenMP threads of the kernel; default: the size of TF's intra-op thread pool.

    Returns
    -------
    mean, variance : float64 tensors with the shape of the kept axes
        NaN where there are no values (mean) or ``count - ddof <= 0`` (variance).
    count : int64 tensor of the same shape

    Examples
    --------
    >>> import tensorflow as tf, fastmoments.tf as fmtf
    >>> mean, var, count = fmtf.moments(tf.constant([[1.0, 2.0], [3.0, 6.0]]))
    >>> mean.numpy(), var.numpy(), count.numpy()
    (array([2., 4.]), array([1., 4.]), array([2, 2]))
    """
    ddof = check_ddof(ddof)
    count, mean, m2, _ = moment_state(x, axis, nan_policy=nan_policy, threads=threads)
    nan = tf.constant(np.nan, tf.float64)
    denom = tf.cast(count, tf.float64) - tf.constant(float(ddof), tf.float64)
    mean = tf.where(count > 0, mean, nan)
    variance = tf.where(denom > 0, m2 / tf.where(denom > 0, denom, 1.0), nan)
    return mean, variance, count


# -- datasets ---------------------------------------------------------------------------------------

# Rows per internal batch for unbatched datasets: about 1 MiB per batch, within these limits.
_ROW_BATCH_BYTES = 1 << 20
_ROW_BATCH_LIMITS = (64, 65536)


def _features_spec(spec: Any) -> Tuple[tf.TensorSpec, bool]:
    """The spec of ``x`` in elements ``x``, ``(x,)``, ``(x, y)`` or ``(x, y, w)``; True if a tuple."""
    is_tuple = isinstance(spec, (tuple, list))
    if is_tuple:
        if not 1 <= len(spec) <= 3:
            raise ValueError(f"dataset elements must be x, (x, y) or (x, y, w); got a tuple of {len(spec)}")
        spec = spec[0]
    if isinstance(spec, dict):
        raise TypeError("dataset elements that are dicts are not supported; map them to a tensor x "
                        "(or (x, y)) first")
    if not isinstance(spec, tf.TensorSpec) or type(spec) is not tf.TensorSpec:
        raise TypeError(f"the features x must be dense tensors, got {spec!r}")
    _check_dtype(spec.dtype)
    return spec, is_tuple


def _row_batch_size(spec: tf.TensorSpec) -> int:
    if not spec.shape.is_fully_defined():
        return 1024
    row_bytes = max(1, int(np.prod(spec.shape.as_list(), dtype=np.int64)) * spec.dtype.size)
    lo, hi = _ROW_BATCH_LIMITS
    return int(min(hi, max(lo, _ROW_BATCH_BYTES // row_bytes)))


# One traced loop per (kept axes and path of each feature, nan_omit, threads, op or fallback);
# tf.function retraces it per dataset element signature, not per dataset.
_LOOPS: Dict[Tuple[Any, ...], Any] = {}


def _dataset_loop(keeps: Tuple[Tuple[int, ...], ...], paths: Optional[Tuple[Tuple[Any, ...], ...]],
                  nan_omit: bool, threads: int, use_op: bool):
    """A traced loop reducing dataset elements that are one tensor (``len(keeps) == 1``) or a
    tuple of tensors, one state per tensor: several features from one pass over the data. With
    ``paths``, feature ``i`` is ``element[p0][p1]...`` for ``paths[i]`` (dict keys, tuple
    positions), picked inside the loop (no ``Dataset.map`` to trace per call). A ragged feature
    is reduced over its ``flat_values`` (``keeps`` then count in those)."""
    key = (keeps, paths, nan_omit, threads, use_op)
    if key in _LOOPS:
        return _LOOPS[key]
    keep_lists = [list(k) for k in keeps]
    width = len(STATE_FIELDS) + 1  # a state and its count of values seen
    if use_op:
        ops = _ops()

        def batch_state(x, keep):
            return _op_state(ops, x, keep, nan_omit, threads)

        def merge(a, b):
            return _op_merge(ops, a, b)
    else:
        def batch_state(x, keep):
            return _fallback_state(x, keep, nan_omit, threads)

        merge = _fallback_merge

    @tf.function
    def loop(dataset, init):
        # A graph-mode while loop over the dataset's iterator: no Python per batch, and the
        # iterator runs the pipeline with tf.data's default optimizations (parallel batching,
        # injected prefetch), which Dataset.reduce does not (about 3x slower here).
        it = iter(dataset)

        def more(opt, *state):
            return opt.has_value()

        def step(opt, *loop_vars):
            xs = opt.get_value()
            if paths is not None:
                xs = tuple(_pick(xs, path) for path in paths)
            xs = xs if isinstance(xs, tuple) else (xs,)
            xs = tuple(x.flat_values if isinstance(x, tf.RaggedTensor) else x for x in xs)
            out = []
            for i, (x, keep) in enumerate(zip(xs, keep_lists)):
                state, values = loop_vars[i * width:(i + 1) * width - 1], loop_vars[(i + 1) * width - 1]
                part = batch_state(x, keep)
                # Values per index before NaNs are dropped, for nan_policy="raise".
                seen = tf.size(x, out_type=tf.int64) // tf.maximum(tf.size(part[0], out_type=tf.int64), 1)
                out += [*merge(state, part), values + seen]
            return (it.get_next_as_optional(), *out)

        first = it.get_next_as_optional()
        any_shape = tf.TensorShape(None)
        invariants = ([any_shape] * len(STATE_FIELDS) + [tf.TensorShape([])]) * len(keep_lists)
        out = tf.while_loop(more, step, (first, *init),
                            shape_invariants=(tf.type_spec_from_value(first), *invariants))
        return out[1:]

    _LOOPS[key] = loop
    return loop


def _pick(element: Any, path: Tuple[Any, ...]) -> Any:
    for step in path:
        element = element[step]
    return element


def _flat_values_spec(spec: Any) -> Any:
    """The spec of a ragged spec's ``flat_values`` (others unchanged)."""
    if not isinstance(spec, tf.RaggedTensorSpec) or spec.shape.rank is None:
        return spec
    return tf.TensorSpec([None] + spec.shape[spec.ragged_rank + 1:].as_list(), spec.dtype)


def _reduce_batches(dataset: "tf.data.Dataset", keeps: Sequence[Sequence[int]], nan_policy: str,
                    threads_attr: int, ddof: int = 0,
                    paths: Optional[Sequence[Sequence[Any]]] = None) -> List[Moments]:
    """Statistics of each tensor of ``dataset``'s elements (a tensor, or a tuple of tensors, or
    with ``paths`` the tensors at those paths; all batches: axis 0 is reduced; ragged ones over
    their flat values), ``keeps[i]`` the normalized kept axes of tensor ``i`` (of its flat
    values if ragged): one graph-mode pass for all of them. Finished per tensor (empty data:
    ``ValueError``)."""
    specs = dataset.element_spec
    if paths is not None:
        paths = tuple(tuple(p) for p in paths)
        specs = tuple(_pick(specs, path) for path in paths)
        specs = tuple(_flat_values_spec(s) for s in specs)
    specs = specs if isinstance(specs, tuple) else (specs,)
    if len(specs) != len(keeps):
        raise ValueError(f"{len(keeps)} sets of kept axes for dataset elements of {len(specs)} tensors")
    # One pass over a dataset: "raise" omits NaNs and compares the counts with the values seen.
    nan_omit = kernel_omits(nan_policy, floating=True, can_rerun=False)
    init = []
    for spec, keep in zip(specs, keeps):
        kept_shape = _static_state_shape(spec.shape, keep)
        # A scalar empty state merges with any shape: the start when the kept shape is not static.
        shape = kept_shape.as_list() if kept_shape.is_fully_defined() else []
        init += [*zero_state(shape), tf.constant(0, tf.int64)]
    loop = _dataset_loop(tuple(tuple(int(k) for k in keep) for keep in keeps), paths, nan_omit,
                         threads_attr, _ops() is not None)
    try:
        out = loop(dataset, tuple(init))
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as exc:
        raise ValueError(f"dataset_moments: {exc.message}") from None
    width = len(STATE_FIELDS) + 1
    results = []
    for i in range(len(keeps)):
        *state, values = out[i * width:(i + 1) * width]
        total = StateRecord.of([t.numpy() for t in state])
        if total.count.size == 0 or (not np.any(total.count > 0) and int(values) == 0):
            raise ValueError("the dataset is empty: no data to compute moments of")
        results.append(finish(total, nan_policy=nan_policy, floating=True, expected=int(values),
                              ddof=ddof))
    return results


def dataset_moments(dataset: "tf.data.Dataset", axis: AxisLike = -1, steps: Optional[int] = None, *,
                    ddof: int = 0, nan_policy: str = "propagate", batched: Optional[bool] = None,
                    threads: Optional[int] = None) -> Moments:
    """Exact pooled statistics of the features of a ``tf.data`` dataset, in one graph-mode pass.

    Each batch becomes a ``(count, mean, m2, mean_lo)`` state (the ``FastMoments>Moments`` op) merged into
    the running state with the core's merge (``FastMoments>MergeMoments``) in a ``tf.function``
    while loop over the dataset's iterator: no Python runs per batch. Results equal one pass over the concatenated
    data to rounding, whatever the batch sizes (short last batch included).

    Parameters
    ----------
    dataset : tf.data.Dataset
        Elements ``x``, ``(x, y)`` or ``(x, y, w)``; statistics of ``x``.
    axis : None, int or tuple of ints, default -1
        Axes of a batch ``(batch, ...)`` that keep separate statistics (Keras semantics); the
        batch axis (0) is always reduced.
    steps : int, optional
        Read at most this many elements of ``dataset`` (batches, or rows if unbatched). Required
        for an infinite dataset (``.repeat()``).
    ddof : int, default 0
        Delta degrees of freedom of the returned :class:`~fastmoments.Moments`.
    nan_policy : {"propagate", "omit", "raise"}
    batched : bool, optional
        Whether elements are batches. Default as Keras decides: elements of rank >= 2, or rank 1
        of unknown length, are batches; rank-0 and fixed-length rank-1 elements are single rows,
        batched here internally (the statistics do not depend on it).
    threads : int, optional
        OpenMP threads of the kernel; default: TF's intra-op pool size.

    Returns
    -------
    fastmoments.Moments

    Raises
    ------
    ValueError
        Infinite dataset without ``steps``; no data; batches whose kept dimensions differ; NaN
        with ``nan_policy="raise"``; an axis out of range or naming the batch axis.
    TypeError
        Not a dataset, or features of a non-numeric dtype.
    """
    if not isinstance(dataset, tf.data.Dataset):
        raise TypeError(f"dataset must be a tf.data.Dataset, got {type(dataset).__name__}")
    if not tf.executing_eagerly():
        raise RuntimeError("dataset_moments returns NumPy statistics and must be called eagerly; "
                           "inside tf.function use moment_state/merge_states")
    ddof = check_ddof(ddof)
    nan_policy = check_nan_policy(nan_policy)
    threads_attr = _threads_attr(threads)
    steps = check_count("steps", steps)
    if steps is not None:
        dataset = dataset.take(steps)
    x_spec, is_tuple = _features_spec(dataset.element_spec)

    cardinality = int(dataset.cardinality())
    if cardinality == tf.data.INFINITE_CARDINALITY:
        raise ValueError("the dataset is infinite (e.g. .repeat() without a count); pass steps= "
                         "to read a fixed number of elements")
    if cardinality == 0:
        raise ValueError("the dataset is empty: no data to compute moments of")

    rank = x_spec.shape.rank
    if batched is None:
        batched = rank is None or rank >= 2 or (rank == 1 and x_spec.shape[0] is None)
    if is_tuple:
        dataset = dataset.map(lambda *e: e[0])
    if not batched:
        dataset = dataset.batch(_row_batch_size(x_spec))
        rank = None if rank is None else rank + 1
    if rank is not None:
        keep = _keep_axes(axis, rank)
        if 0 in keep:
            raise ValueError(f"axis {axis!r} keeps axis 0, the batch axis of dataset elements of rank {rank}; "
                             "dataset statistics always reduce over the samples")
    else:
        keep = _keep_axes(axis, None)
    return _reduce_batches(dataset, [keep], nan_policy, threads_attr, ddof)[0]
