"""TensorFlow door: exact moments of tensors and ``tf.data`` datasets with the fastmoments kernel.

The compiled op library ``fastmoments/_tf_ops.so`` registers four ops, ``FastMoments>Moments``
(the per-index state ``(count, mean, m2, mean_lo)`` of a tensor, the core CPU kernel),
``FastMoments>MergeMoments`` (the core's Chan merge of two such states), and their weighted
forms ``FastMoments>WeightedMoments`` (weights or a boolean mask broadcast with stride 0: the
core's weighted driver, the kernel of ``compute(weights=, where=)``) and
``FastMoments>MergeWeightedMoments`` (the core's ``combine_weighted``). It is loaded on first
use and only when the running TensorFlow is the one it was built against and the library
registers the state layout this module expects (:data:`STATE_FIELDS`); otherwise every function
here falls back to the same kernel through ``tf.numpy_function`` and warns once with
:class:`OpFallbackWarning`. Set ``FASTMOMENTS_TF_FALLBACK=1`` to force the fallback.

A state is the core's record ``MomentState`` as a tuple of four tensors, ``(count, mean, m2,
mean_lo)``: ``m2`` is ``sum((x - mean)**2)`` and ``mean_lo`` the rounding residual of ``mean``
(the exact mean is ``mean + mean_lo``). Merges use all four, so a dataset reduced in many batches
keeps the precision of one pass (a mean of 1e9 with unit spread loses no bits). A weighted state
(``weights=``/``where=``) adds ``sum_weights`` and ``sum_weights_sq`` (:data:`WEIGHTED_STATE_FIELDS`);
:func:`merge_states` merges it with an unweighted one as unit weights.

Importing this module imports TensorFlow; ``import fastmoments`` alone does not.
"""

from __future__ import annotations

import os
import threading
import warnings
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from ._axes import AxisLike, normalize_keep_axes
from ._checks import (aligned_shape, check_count, check_ddof, check_mask_value, check_nan_policy,
                      check_threads, check_weights, check_weights_dtype,
                      check_where_dtype, default_threads, kernel_weights_dtype)
from ._array import bad_weights_message, reduce_ndarray, weighted_state
from ._finish import finish, kernel_omits
from ._moments import Moments, State as StateRecord

__all__ = [
    "OpFallbackWarning", "STATE_FIELDS", "WEIGHTED_STATE_FIELDS", "dataset_moments", "merge_states", "moment_state",
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

#: The fields of a weighted state: the outputs of the weighted ops (``WeightedMoments`` also
#: outputs ``bad_weights``), each side of ``MergeWeightedMoments``' inputs.
WEIGHTED_STATE_FIELDS = STATE_FIELDS + ("sum_weights", "sum_weights_sq")
_WEIGHTED_STATE_DTYPES = _STATE_DTYPES + (tf.float64, tf.float64)

State = Tuple[tf.Tensor, ...]  # 4 tensors, or 6 for a weighted state


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
        for op in _expected_signatures():
            tf.no_gradient(op)
    return _LIBRARIES[path], None


def _expected_signatures() -> Dict[str, Tuple[List[str], List[str]]]:
    """Input and output names of each op as this module calls them (the state layout)."""
    fields, wfields = list(STATE_FIELDS), list(WEIGHTED_STATE_FIELDS)
    return {
        "FastMoments>Moments": (["x"], fields),
        "FastMoments>MergeMoments": ([f + "_a" for f in fields] + [f + "_b" for f in fields], fields),
        "FastMoments>WeightedMoments": (["x", "weights"], wfields + ["bad_weights"]),
        "FastMoments>MergeWeightedMoments": ([f + "_a" for f in wfields] + [f + "_b" for f in wfields],
                                             wfields),
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


# -- weighted states ---------------------------------------------------------------------------------

def _fallback_weighted_state(x: tf.Tensor, w: tf.Tensor, keep: List[int], nan_omit: bool,
                             threads: int) -> Tuple[State, tf.Tensor]:
    """The weighted op's outputs through ``tf.numpy_function``: the same core pass
    (``_array.weighted_state``), the weights broadcast as a NumPy view (stride 0)."""
    n_threads = threads or default_threads()
    view = tf.bfloat16.as_numpy_dtype if x.dtype == tf.bfloat16 else None
    if view is not None:
        x = tf.bitcast(x, tf.uint16)

    def run(a: np.ndarray, wt: np.ndarray):
        a, wt = np.asarray(a), np.asarray(wt)
        if view is not None:
            a = a.view(view)
        kept = normalize_keep_axes(tuple(keep), a.ndim)
        kept_shape = tuple(a.shape[k] for k in kept)
        if wt.ndim != a.ndim or any(d not in (1, n) for d, n in zip(wt.shape, a.shape)):
            raise ValueError(f"weights of shape {wt.shape} do not broadcast to the data's shape "
                             f"{a.shape} (each dimension the data's or 1)")
        if a.size == 0:
            return (*(np.zeros(kept_shape, d.as_numpy_dtype) for d in _WEIGHTED_STATE_DTYPES),
                    np.bool_(False))
        state, bad = weighted_state(a, np.broadcast_to(wt, a.shape), kept, nan_omit, n_threads)
        return (*(np.asarray(part, dt.as_numpy_dtype)
                  for part, dt in zip(state.arrays, _WEIGHTED_STATE_DTYPES)), np.bool_(bad))

    out = tf.numpy_function(run, [x, w], [*_WEIGHTED_STATE_DTYPES, tf.bool], stateful=False,
                            name="fastmoments_weighted_state_fallback")
    shape = _static_state_shape(x.shape, keep)
    for t in out[:-1]:
        t.set_shape(shape)
    out[-1].set_shape([])
    return tuple(out[:-1]), out[-1]


def _op_weighted_state(ops: Any, x: tf.Tensor, w: tf.Tensor, keep: List[int], nan_omit: bool,
                       threads: int) -> Tuple[State, tf.Tensor]:
    *state, bad = ops.fast_moments_weighted_moments(x, w, keep_axes=keep, nan_omit=nan_omit,
                                                    threads=threads)
    return tuple(state), bad


def _op_merge_weighted(ops: Any, a: State, b: State) -> State:
    return tuple(ops.fast_moments_merge_weighted_moments(*a, *b))


def _weighted_raw(x: tf.Tensor, w: tf.Tensor, keep: List[int], nan_omit: bool,
                  threads: int) -> Tuple[State, tf.Tensor]:
    ops = _ops()
    if ops is None:
        return _fallback_weighted_state(x, w, keep, nan_omit, threads)
    return _op_weighted_state(ops, x, w, keep, nan_omit, threads)


def _to_tensor(value: Any, check_dtype: Any) -> tf.Tensor:
    """A tensor of ``value`` whose dtype passed ``check_dtype``; NumPy's dtype for non-tensors
    (Python floats stay float64, strings are named as NumPy names them)."""
    if isinstance(value, (tf.Tensor, tf.Variable)):
        t = tf.convert_to_tensor(value)
        check_dtype(_numpy_dtype(t))
        return t
    arr = np.asarray(value)
    check_dtype(arr.dtype)
    return tf.convert_to_tensor(arr)


def _numpy_dtype(t: tf.Tensor) -> Any:
    return np.dtype(t.dtype.as_numpy_dtype)  # bfloat16: ml_dtypes' (kind "V")


def _to_rank(w: tf.Tensor, shape: Sequence[int], ndim: int) -> tf.Tensor:
    """``w`` reshaped to ``shape`` and then to rank ``ndim`` (leading 1s: NumPy broadcasting)."""
    return tf.reshape(w, [1] * (ndim - len(shape)) + [int(d) for d in shape])


def _align_dynamic(w: tf.Tensor, x: tf.Tensor, rows: bool) -> tf.Tensor:
    """``aligned_shape``'s rule when a static shape is unknown (inside ``tf.function``): a 1-D
    ``w`` as long as ``x``'s axis 0 weights the rows (``rows``), others gain leading 1s. The op
    checks the result's dimensions at run time."""
    ndim, rank = x.shape.rank, w.shape.rank
    if rank is None:
        raise ValueError("weights/where of unknown rank: give them a static rank")
    if rank > ndim:
        raise ValueError(f"weights of shape {w.shape} do not broadcast to the data's shape {x.shape}")
    if rows and rank == 1 and ndim > 1:
        n = tf.shape(w, out_type=tf.int32)[0]
        ones = [1] * (ndim - 1)
        shape = tf.where(tf.equal(n, tf.shape(x, out_type=tf.int32)[0]),
                         tf.stack([n] + ones), tf.stack(ones + [n]))
        return tf.reshape(w, shape)
    return tf.reshape(w, tf.concat([tf.ones([ndim - rank], tf.int32),
                                    tf.shape(w, out_type=tf.int32)], 0))


def _kernel_weights(w: tf.Tensor, x_dtype: tf.DType) -> tf.Tensor:
    """Weights in the type the op reads (``_checks.kernel_weights_dtype``: integer weights of
    integer data as int64, summed exactly; other number types float64, a copy of the weights
    only). uint64 weights, whose values a graph cannot check, are float64."""
    target = kernel_weights_dtype(w.dtype.as_numpy_dtype, np.dtype(x_dtype.as_numpy_dtype),
                                  fits_int64=w.dtype != tf.uint64)
    return w if w.dtype == tf.as_dtype(target) else tf.cast(w, tf.as_dtype(target))


def _weight_operand(x: tf.Tensor, weights: Any, where: Any) -> Tuple[tf.Tensor, Any]:
    """The one weight tensor the weighted op reads for ``weights=``/``where=`` (the rules of
    ``compute``'s, from ``_checks``): ``x``'s rank, each dimension ``x``'s or 1 (no broadcast
    copy), float32/float64/int64 weights or a bool mask; both given: the weights zeroed where masked,
    at the shape of the two. Also the eager NumPy weights that name a bad weight (or None)."""
    if x.shape.rank is None:
        raise ValueError("weights= and where= need an input of known rank")
    ndim = x.shape.rank
    eager = tf.executing_eagerly() and x.shape.is_fully_defined()
    shape = tuple(x.shape.as_list())
    mask = w = w_np = None
    if where is not None:
        mask = _to_tensor(where, check_where_dtype)
        if eager or (mask.shape.is_fully_defined() and x.shape.is_fully_defined()):
            mask = _to_rank(mask, aligned_shape(tuple(mask.shape.as_list()), shape, "where", False), ndim)
        else:
            mask = _align_dynamic(mask, x, rows=False)
    if weights is not None:
        w = _to_tensor(weights, check_weights_dtype)
        if eager:
            w_np = w.numpy()
            check_weights(w_np, shape)  # compute's checks: dtype, broadcast, values (small arrays)
        if eager or (w.shape.is_fully_defined() and x.shape.is_fully_defined()):
            w = _to_rank(w, aligned_shape(tuple(w.shape.as_list()), shape, "weights", True), ndim)
        else:
            w = _align_dynamic(w, x, rows=True)
        w = _kernel_weights(w, x.dtype)
    if w is None:
        return mask, None
    if mask is not None:
        w = tf.where(mask, w, tf.zeros([], w.dtype))
    return w, w_np


def _checked_weighted(state: State, bad: tf.Tensor, w_np: Any) -> State:
    """Raises for a weight the kernel flagged: eagerly ``ValueError`` with compute's text
    (``weights_problem``), in a graph an ``InvalidArgumentError`` when it runs."""
    if tf.executing_eagerly():
        if bool(bad):
            raise ValueError(bad_weights_message(w_np if w_np is not None else np.array([np.nan])))
        return state
    check = tf.debugging.Assert(tf.logical_not(bad), [_BAD_WEIGHTS_GRAPH])
    with tf.control_dependencies([check]):
        return tuple(tf.identity(t) for t in state)


_BAD_WEIGHTS_GRAPH = "weights must be finite and non-negative (a NaN, infinite or negative weight)"


def moment_state(x: Any, axis: AxisLike = -1, *, weights: Any = None, where: Any = None,
                 nan_policy: str = "propagate", threads: Optional[int] = None) -> State:
    """The mergeable state ``(count, mean, m2, mean_lo)`` of a tensor, as tensors; with
    ``weights=`` or ``where=`` the weighted state (``sum_weights`` and ``sum_weights_sq`` added).

    Parameters
    ----------
    x : tensor-like
        Any of :data:`SUPPORTED_DTYPES`.
    axis : None, int or tuple of ints, default -1
        Axes that keep separate statistics (``keras.layers.Normalization`` semantics).
    weights : tensor-like, optional
        Non-negative finite weights broadcastable to ``x``, as in :func:`fastmoments.compute`
        (a 1-D vector as long as ``x``'s axis 0 weights the rows). Read by the weighted op with
        stride 0 along broadcast axes (never a full-size copy).
    where : tensor-like of bool, optional
        NumPy's ``where=``: only values where it is True count (per-index counts).
    nan_policy : {"propagate", "omit"}
    threads : int, optional
        OpenMP threads of the kernel; default: the size of TF's intra-op thread pool.

    Returns
    -------
    count (int64), mean, m2, mean_lo (float64) [, sum_weights, sum_weights_sq (float64)]
        Each with the shape of the kept axes (:data:`STATE_FIELDS`, or
        :data:`WEIGHTED_STATE_FIELDS` when weighted): ``m2`` is ``sum(w*(x - mean)**2)``,
        ``mean_lo`` the rounding residual of ``mean``; ``count`` counts the values of positive
        weight. An empty reduction gives the zero state. Merge states with :func:`merge_states`.

    Raises
    ------
    ValueError
        The errors of ``compute(weights=, where=)``, with its texts: weights that are not
        numbers, negative, NaN or infinite (inside ``tf.function``: an ``InvalidArgumentError``
        when it runs), a mask that is not boolean, shapes that do not broadcast.
    """
    x = tf.convert_to_tensor(x)
    _check_dtype(x.dtype)
    nan_policy = check_nan_policy(nan_policy)
    if nan_policy == "raise":
        raise ValueError("nan_policy='raise' is supported by dataset_moments only; "
                         "use 'propagate' or 'omit' here")
    keep = _keep_axes(axis, x.shape.rank)
    if weights is None and where is None:
        return _state(x, keep, nan_policy == "omit", _threads_attr(threads))
    w, w_np = _weight_operand(x, weights, where)
    state, bad = _weighted_raw(x, w, keep, nan_policy == "omit", _threads_attr(threads))
    return _checked_weighted(state, bad, w_np)


def _fallback_merge(a: State, b: State) -> State:
    n = len(a)
    dtypes = _STATE_DTYPES if n == len(STATE_FIELDS) else _WEIGHTED_STATE_DTYPES
    name = "MergeMoments" if n == len(STATE_FIELDS) else "MergeWeightedMoments"

    def run(*fields):
        sa, sb = fields[:n], fields[n:]
        ca, cb = sa[0], sb[0]
        if ca.shape != cb.shape:
            if ca.ndim == 0 and ca == 0:
                return sb
            if cb.ndim == 0 and cb == 0:
                return sa
            raise ValueError(f"{name}: states of shapes {ca.shape} and {cb.shape} cannot be merged")
        out = StateRecord.of(sa).merge(StateRecord.of(sb))  # the one merge
        return tuple(np.asarray(f, dt.as_numpy_dtype).reshape(ca.shape)
                     for f, dt in zip(out.arrays, dtypes))

    out = tf.numpy_function(run, [*a, *b], list(dtypes), stateful=False,
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
    """The tensors of a state, checked: a ``(count, mean, m2, mean_lo)`` sequence, or the six
    fields of a weighted one."""
    if not isinstance(state, (tuple, list)) or len(state) not in (len(STATE_FIELDS),
                                                                  len(WEIGHTED_STATE_FIELDS)):
        got = f"a sequence of {len(state)}" if isinstance(state, (tuple, list)) else type(state).__name__
        raise ValueError(f"{name} must be a state ({', '.join(STATE_FIELDS)}), or a weighted one "
                         f"(with sum_weights, sum_weights_sq), as returned by moment_state, got {got}")
    return tuple(tf.convert_to_tensor(t, dt) for t, dt in zip(state, _WEIGHTED_STATE_DTYPES))


def _as_weighted(state: State) -> State:
    """A state with its weight sums (an unweighted state: unit weights, both sums the count;
    ``State.as_weighted``'s rule)."""
    if len(state) == len(WEIGHTED_STATE_FIELDS):
        return state
    n = tf.cast(state[0], tf.float64)
    return (*state, n, n)


def zero_state(shape: Sequence[int] = (), *, weighted: bool = False) -> State:
    """The state of no data (the identity of :func:`merge_states`); a scalar one merges with a
    state of any shape. ``weighted=True``: the six fields of a weighted state."""
    dtypes = _WEIGHTED_STATE_DTYPES if weighted else _STATE_DTYPES
    return tuple(tf.zeros(shape, dt) for dt in dtypes)


def _merge(a: State, b: State, ops: Any) -> State:
    if len(a) != len(b) or len(a) == len(WEIGHTED_STATE_FIELDS):
        a, b = _as_weighted(a), _as_weighted(b)
        if ops is None:
            return _fallback_merge(a, b)
        return _op_merge_weighted(ops, a, b)
    if ops is None:
        return _fallback_merge(a, b)
    return _op_merge(ops, a, b)


def merge_states(a: State, b: State) -> State:
    """Merge two states (the core's Chan merge) into the state of both.

    ``(count, mean, m2, mean_lo)`` states merge with ``FastMoments>MergeMoments``; weighted
    ones (six fields) with ``FastMoments>MergeWeightedMoments`` (``combine_weighted``), an
    unweighted state merging with a weighted one as unit weights. The states must have one
    shape, except that a scalar state with count 0 (no data yet, see :func:`zero_state`)
    merges with a state of any shape.
    """
    a = _as_state(a, "the first state")
    b = _as_state(b, "the second state")
    return _merge(a, b, _ops())


def moments(x: Any, axis: AxisLike = -1, ddof: int = 0, *, weights: Any = None, where: Any = None,
            nan_policy: str = "propagate",
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
    weights, where : tensor-like, optional
        As in :func:`fastmoments.compute` (and :func:`moment_state`): weighted mean
        ``sum(w*x)/sum(w)`` and variance ``m2 / (sum(w) - ddof)`` (frequency weights), values
        where ``where`` is False left out.
    nan_policy : {"propagate", "omit"}
    threads : int, optional
        OpenMP threads of the kernel; default: the size of TF's intra-op thread pool.

    Returns
    -------
    mean, variance : float64 tensors with the shape of the kept axes
        NaN where there are no values (mean) or ``count - ddof <= 0`` (``sum(w) - ddof`` when
        weighted) (variance).
    count : int64 tensor of the same shape (values of positive weight when weighted)

    Examples
    --------
    >>> import tensorflow as tf, fastmoments.tf as fmtf
    >>> mean, var, count = fmtf.moments(tf.constant([[1.0, 2.0], [3.0, 6.0]]))
    >>> mean.numpy(), var.numpy(), count.numpy()
    (array([2., 4.]), array([1., 4.]), array([2, 2]))
    """
    ddof = check_ddof(ddof)
    state = moment_state(x, axis, weights=weights, where=where, nan_policy=nan_policy,
                         threads=threads)
    count, mean, m2 = state[:3]
    total = tf.cast(count, tf.float64) if len(state) == len(STATE_FIELDS) else state[4]
    nan = tf.constant(np.nan, tf.float64)
    denom = total - tf.constant(float(ddof), tf.float64)
    mean = tf.where(count > 0, mean, nan)
    variance = tf.where((denom > 0) & (count > 0), m2 / tf.where(denom > 0, denom, 1.0), nan)
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


# One traced loop per (kept axes and path of each feature, weighting, nan_omit, threads, op or
# fallback); tf.function retraces it per dataset element signature, not per dataset.
_LOOPS: Dict[Tuple[Any, ...], Any] = {}


class _Weighting(NamedTuple):
    """What makes a dataset reduction weighted (hashable: part of the loop's key).

    weight_path: where the per-row weights ``w`` sit in an element (``None``: no weights);
    mask_values: per feature, the value whose elements are dropped (``None``: none);
    count_nans: ``nan_policy="raise"``: a second, propagating pass counts the values of
    positive weight NaNs included, to compare with the omitting pass's counts."""

    weight_path: Optional[Tuple[Any, ...]] = None
    mask_values: Tuple[Any, ...] = ()
    count_nans: bool = False

    def weighted(self, i: int) -> bool:
        return self.weight_path is not None or self.mask_values[i] is not None


def _align_leading(w: tf.Tensor, ndim: int) -> tf.Tensor:
    """Sample weights (or a Keras mask) aligned with the leading axes of a batch of rank
    ``ndim``, Keras's meaning: ``(batch,)`` weights the rows, ``(batch, time)`` the steps."""
    rank = w.shape.rank
    if rank is None or rank > ndim:
        raise ValueError(f"sample weights of shape {w.shape} do not align with the leading axes of "
                         f"features of rank {ndim}")
    if rank == ndim:
        return w
    return tf.reshape(w, tf.concat([tf.shape(w, out_type=tf.int32), tf.ones([ndim - rank], tf.int32)], 0))


def _value_weights(x: "tf.RaggedTensor", w: tf.Tensor) -> tf.Tensor:
    """Per-row weights of a ragged batch as the weights of its ``flat_values``' rows (gathered
    through each ragged level's row ids: a vector as long as the values, not a broadcast)."""
    w = tf.reshape(w, [-1])
    check = tf.debugging.assert_equal(
        tf.size(w, out_type=tf.int64), tf.cast(x.nrows(), tf.int64),
        message="sample weights of ragged features must hold one weight per row (sequence)")
    with tf.control_dependencies([check]):
        for rowids in x.nested_value_rowids():
            w = tf.gather(w, rowids)
    return w


def _dataset_loop(keeps: Tuple[Tuple[int, ...], ...], paths: Optional[Tuple[Tuple[Any, ...], ...]],
                  nan_omit: bool, threads: int, use_op: bool, weighting: Optional[_Weighting] = None):
    """A traced loop reducing dataset elements that are one tensor (``len(keeps) == 1``) or a
    tuple of tensors, one state per tensor: several features from one pass over the data. With
    ``paths``, feature ``i`` is ``element[p0][p1]...`` for ``paths[i]`` (dict keys, tuple
    positions), picked inside the loop (no ``Dataset.map`` to trace per call). A ragged feature
    is reduced over its ``flat_values`` (``keeps`` then count in those). With ``weighting``,
    features with weights or a mask value get weighted states (the weighted op and merge)."""
    weighting = weighting or _Weighting(mask_values=(None,) * len(keeps))
    key = (keeps, paths, nan_omit, threads, use_op, weighting)
    if key in _LOOPS:
        return _LOOPS[key]
    keep_lists = [list(k) for k in keeps]
    ops = _ops() if use_op else None
    layout = _loop_layout(len(keeps), weighting)

    def batch_state(x, keep):
        if use_op:
            return _op_state(ops, x, keep, nan_omit, threads)
        return _fallback_state(x, keep, nan_omit, threads)

    def weighted_state(x, w, keep, omit):
        if use_op:
            return _op_weighted_state(ops, x, w, keep, omit, threads)
        return _fallback_weighted_state(x, w, keep, omit, threads)

    def merge(a, b):
        return _merge(a, b, ops)

    @tf.function
    def loop(dataset, init):
        # A graph-mode while loop over the dataset's iterator: no Python per batch, and the
        # iterator runs the pipeline with tf.data's default optimizations (parallel batching,
        # injected prefetch), which Dataset.reduce does not (about 3x slower here).
        it = iter(dataset)

        def more(opt, *state):
            return opt.has_value()

        def step(opt, *loop_vars):
            element = opt.get_value()
            xs = element
            if paths is not None:
                xs = tuple(_pick(element, path) for path in paths)
            xs = xs if isinstance(xs, tuple) else (xs,)
            w_raw = None if weighting.weight_path is None else _pick(element, weighting.weight_path)
            out = []
            any_bad = tf.constant(False)
            for i, (x, keep) in enumerate(zip(xs, keep_lists)):
                fields = loop_vars[layout[i][0]:layout[i][1]]
                if not weighting.weighted(i):
                    x = x.flat_values if isinstance(x, tf.RaggedTensor) else x
                    state, values = fields[:-1], fields[-1]
                    part = batch_state(x, keep)
                    # Values per index before NaNs are dropped, for nan_policy="raise".
                    seen = tf.size(x, out_type=tf.int64) // tf.maximum(tf.size(part[0], out_type=tf.int64), 1)
                    out += [*merge(state, part), values + seen]
                    continue
                w = w_raw
                if isinstance(x, tf.RaggedTensor):
                    if w is not None:
                        w = _value_weights(x, w)
                    x = x.flat_values
                if w is not None:
                    w = _align_leading(w, x.shape.rank)
                    w = _kernel_weights(w, x.dtype)
                mask_value = weighting.mask_values[i]
                if mask_value is not None:
                    mask = tf.not_equal(x, tf.constant(mask_value, x.dtype))
                    w = mask if w is None else tf.where(mask, w, tf.zeros([], w.dtype))
                state = fields[:len(WEIGHTED_STATE_FIELDS)]
                values = fields[len(WEIGHTED_STATE_FIELDS)]
                part, bad = weighted_state(x, w, keep, nan_omit)
                any_bad = any_bad | bad
                out += [*merge(state, part), values + tf.size(x, out_type=tf.int64)]
                if weighting.count_nans:
                    counted = fields[len(WEIGHTED_STATE_FIELDS) + 1]
                    plain, _ = weighted_state(x, w, keep, False)
                    out.append(counted + plain[0])
            if weighting.weight_path is not None:
                was_bad, bad_w = loop_vars[-2], loop_vars[-1]
                # The first batch of bad weights, to name the problem after the loop.
                bad_w = tf.cond(any_bad & tf.logical_not(was_bad),
                                lambda: tf.reshape(w_raw, [-1]), lambda: bad_w)
                out += [was_bad | any_bad, bad_w]
            return (it.get_next_as_optional(), *out)

        first = it.get_next_as_optional()
        invariants = [tf.TensorShape(None) if v.shape.rank != 0 or i in layout.scalar_free
                      else tf.TensorShape([]) for i, v in enumerate(init)]
        out = tf.while_loop(more, step, (first, *init),
                            shape_invariants=(tf.type_spec_from_value(first), *invariants))
        return out[1:]

    _LOOPS[key] = loop
    return loop


class _Layout(list):
    """Loop-variable slices ``(start, stop)`` per feature; ``scalar_free``: variables whose
    shape may change (states, per-index counts, the kept bad weights)."""

    scalar_free: set


def _loop_layout(n: int, weighting: _Weighting) -> _Layout:
    layout, pos, free = _Layout(), 0, set()
    for i in range(n):
        if weighting.weighted(i):
            width = len(WEIGHTED_STATE_FIELDS) + 1 + (1 if weighting.count_nans else 0)
            free.update(range(pos, pos + len(WEIGHTED_STATE_FIELDS)))
            if weighting.count_nans:
                free.add(pos + width - 1)
        else:
            width = len(STATE_FIELDS) + 1
            free.update(range(pos, pos + len(STATE_FIELDS)))
        layout.append((pos, pos + width))
        pos += width
    if weighting.weight_path is not None:
        free.add(pos + 1)  # bad_w
    layout.scalar_free = free
    return layout


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
                    paths: Optional[Sequence[Sequence[Any]]] = None,
                    weight_path: Optional[Sequence[Any]] = None,
                    mask_values: Optional[Sequence[Any]] = None) -> List[Moments]:
    """Statistics of each tensor of ``dataset``'s elements (a tensor, or a tuple of tensors, or
    with ``paths`` the tensors at those paths; all batches: axis 0 is reduced; ragged ones over
    their flat values), ``keeps[i]`` the normalized kept axes of tensor ``i`` (of its flat
    values if ragged): one graph-mode pass for all of them. ``weight_path``: where per-row
    sample weights sit in an element (aligned with each feature's leading axes; ragged
    features: one weight per sequence); ``mask_values[i]``: elements of feature ``i`` equal to
    it are dropped (checked by ``check_mask_value``). Finished per tensor (empty data:
    ``ValueError``)."""
    specs = dataset.element_spec
    all_specs = specs
    if paths is not None:
        paths = tuple(tuple(p) for p in paths)
        specs = tuple(_pick(specs, path) for path in paths)
        specs = tuple(_flat_values_spec(s) for s in specs)
    specs = specs if isinstance(specs, tuple) else (specs,)
    if len(specs) != len(keeps):
        raise ValueError(f"{len(keeps)} sets of kept axes for dataset elements of {len(specs)} tensors")
    mask_values = tuple(mask_values) if mask_values is not None else (None,) * len(keeps)
    # One pass over a dataset: "raise" omits NaNs and compares the counts with the values seen.
    nan_omit = kernel_omits(nan_policy, floating=True, can_rerun=False)
    weighting = _Weighting(None if weight_path is None else tuple(weight_path), mask_values,
                           nan_policy == "raise")
    init = []
    for i, (spec, keep) in enumerate(zip(specs, keeps)):
        kept_shape = _static_state_shape(spec.shape, keep)
        # A scalar empty state merges with any shape: the start when the kept shape is not static.
        shape = kept_shape.as_list() if kept_shape.is_fully_defined() else []
        init += [*zero_state(shape, weighted=weighting.weighted(i)), tf.constant(0, tf.int64)]
        if weighting.weighted(i) and weighting.count_nans:
            init.append(tf.constant(0, tf.int64))
    if weighting.weight_path is not None:
        w_spec = _pick(all_specs, weighting.weight_path)
        if not isinstance(w_spec, tf.TensorSpec) or type(w_spec) is not tf.TensorSpec:
            raise TypeError(f"sample weights must be dense tensors, got {w_spec!r}")
        check_weights_dtype(_numpy_dtype(tf.zeros([], w_spec.dtype)))
        init += [tf.constant(False), tf.zeros([0], w_spec.dtype)]
    loop = _dataset_loop(tuple(tuple(int(k) for k in keep) for keep in keeps), paths, nan_omit,
                         threads_attr, _ops() is not None, weighting)
    try:
        out = loop(dataset, tuple(init))
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as exc:
        raise ValueError(f"dataset_moments: {exc.message}") from None
    if weighting.weight_path is not None and bool(out[-2]):
        raise ValueError(bad_weights_message(out[-1].numpy()))
    layout = _loop_layout(len(keeps), weighting)
    results = []
    for i, (start, stop) in enumerate(layout):
        fields = out[start:stop]
        n = len(WEIGHTED_STATE_FIELDS) if weighting.weighted(i) else len(STATE_FIELDS)
        total = StateRecord.of([t.numpy() for t in fields[:n]])
        values = int(fields[n])
        if total.count.size == 0 or (not np.any(total.count > 0) and values == 0):
            raise ValueError("the dataset is empty: no data to compute moments of")
        expected: Any = values
        if weighting.weighted(i):
            # The values that count are those of positive weight (a propagating pass for "raise").
            expected = fields[n + 1].numpy() if weighting.count_nans else total.count
        results.append(finish(total, nan_policy=nan_policy, floating=True, expected=expected,
                              ddof=ddof))
    return results


def dataset_moments(dataset: "tf.data.Dataset", axis: AxisLike = -1, steps: Optional[int] = None, *,
                    sample_weight: bool = False, ddof: int = 0, nan_policy: str = "propagate",
                    batched: Optional[bool] = None, threads: Optional[int] = None) -> Moments:
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
    sample_weight : bool, default False
        ``True``: weight ``x`` by the ``w`` of ``(x, y, w)`` elements, Keras's ``sample_weight``
        (``(batch,)`` weights the rows, ``(batch, time)`` the steps: aligned with ``x``'s leading
        axes; a scalar per unbatched element): the weighted op
        (``FastMoments>WeightedMoments``, the kernel of ``compute(weights=)``) and the weighted
        merge in the same graph-mode loop; the result is weighted (``sum_weights`` set), equal to
        ``compute(x, weights=w)`` on the concatenated data. ``False`` ignores ``w``, as
        ``Normalization.adapt`` does.
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
        with ``nan_policy="raise"``; an axis out of range or naming the batch axis;
        ``sample_weight=True`` on elements without ``w``; negative, NaN or infinite weights
        (``compute``'s texts).
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
    if not isinstance(sample_weight, (bool, np.bool_)):
        raise TypeError(f"sample_weight must be True or False, got {sample_weight!r}")
    if steps is not None:
        dataset = dataset.take(steps)
    x_spec, is_tuple = _features_spec(dataset.element_spec)
    if sample_weight:
        check_sample_weight_elements(dataset.element_spec)

    cardinality = int(dataset.cardinality())
    if cardinality == tf.data.INFINITE_CARDINALITY:
        raise ValueError("the dataset is infinite (e.g. .repeat() without a count); pass steps= "
                         "to read a fixed number of elements")
    if cardinality == 0:
        raise ValueError("the dataset is empty: no data to compute moments of")

    rank = x_spec.shape.rank
    if batched is None:
        batched = rank is None or rank >= 2 or (rank == 1 and x_spec.shape[0] is None)
    if sample_weight:
        dataset = dataset.map(lambda *e: (e[0], e[2]))
    elif is_tuple:
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
    if sample_weight:
        return _reduce_batches(dataset, [keep], nan_policy, threads_attr, ddof, paths=[(0,)],
                               weight_path=(1,))[0]
    return _reduce_batches(dataset, [keep], nan_policy, threads_attr, ddof)[0]


def check_sample_weight_elements(spec: Any) -> None:
    """``sample_weight=True`` reads the ``w`` of ``(x, y, w)`` elements: ``ValueError`` for
    elements without one."""
    if not (isinstance(spec, (tuple, list)) and len(spec) == 3):
        what = f"tuples of {len(spec)}" if isinstance(spec, (tuple, list)) else "single tensors"
        raise ValueError("sample_weight=True uses the w of (x, y, w) dataset elements, but this "
                         f"dataset's elements are {what} (no weights): {spec!r}")
