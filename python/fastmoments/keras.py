"""``FastNorm``: ``keras.layers.Normalization`` with an exact ``adapt()`` at memory bandwidth.

The layer is ``Normalization`` itself (same constructor, weights, outputs, saving); only
``adapt`` differs. It computes the statistics with the fastmoments kernel in float64 instead of
NumPy/Keras float32 arithmetic, so it is exact where ``Normalization.adapt`` loses digits
(features with a large mean), reads arrays in place on all cores, reduces ``tf.data`` datasets
in graph mode (:func:`fastmoments.tf.dataset_moments`) and never loops forever on a repeated
dataset.

Arrays, memory maps, ``.npy`` paths and dask arrays go through :func:`fastmoments.compute`, which
needs no TensorFlow: ``FastNorm`` works under every Keras backend for those inputs.

``adapt(..., reset_state=False)`` merges new data into the statistics adapted before;
:func:`adapt_all` adapts one layer per feature of dict or tuple data from one pass; ragged
tensors are reduced over their values. ``adapt(..., sample_weight=, mask_value=)`` weights the
statistics (the ``w`` of ``(x, y, w)`` elements, or an array) and drops padding; a tensor's Keras
mask (``_keras_mask``) counts too.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
import warnings
from collections.abc import Mapping
from typing import Any, Iterable, Optional, Tuple

import keras
import numpy as np

from ._accumulator import Accumulator
from ._batchnorm import BatchNormRecalibration, LayerRecalibration, recalibrate_batchnorm
from ._checks import check_count, check_mask_value, check_nan_policy
from ._compute import compute
from ._moments import Moments, State
from ._stream import paths_shape
from ._routes import is_dask_collection

__all__ = ["FastNorm", "FastNormWarning", "adapt_all", "AUTO_PROGRESS_BYTES",
           "AUTO_PROGRESS_BATCHES", "BatchNormRecalibration", "LayerRecalibration",
           "recalibrate_batchnorm"]

# progress=None shows a bar for inputs at least this big (bytes of an array or file) ...
AUTO_PROGRESS_BYTES = 1 << 30
# ... or with at least this many batches (sized iterables and PyDatasets).
AUTO_PROGRESS_BATCHES = 1000
# Rows per batch when an unbatched dataset is read in Python (progress=True).
_ROWS_PER_BATCH = 1024


class FastNormWarning(UserWarning):
    """``adapt()`` found statistics that make the layer's output degenerate (zero variance, NaN)."""


# -- recognizing inputs without importing TensorFlow ----------------------------------------------
# A TensorFlow object can only exist if TensorFlow was imported, so looking in sys.modules keeps
# the array path free of TensorFlow under other Keras backends.
def _tf():
    return sys.modules.get("tensorflow")


def _is_tf_dataset(data: Any) -> bool:
    tf = _tf()
    return tf is not None and isinstance(data, tf.data.Dataset)


def _is_tf_tensor(data: Any) -> bool:
    tf = _tf()
    return tf is not None and isinstance(data, (tf.Tensor, tf.Variable))


def _is_tf_sparse(data: Any) -> bool:
    tf = _tf()
    return tf is not None and isinstance(data, tf.SparseTensor)


def _is_tf_ragged(data: Any) -> bool:
    tf = _tf()
    return tf is not None and isinstance(data, tf.RaggedTensor)


def _is_pandas(data: Any) -> bool:
    return type(data).__module__.split(".")[0] == "pandas"


def _extract_x(element: Any) -> Any:
    """``x`` of an ``(x, y)`` or ``(x, y, sample_weight)`` element, as in Keras."""
    return element[0] if isinstance(element, tuple) else element


def _to_numpy(x: Any) -> np.ndarray:
    """A NumPy view (copy only where the framework must) of one array or batch."""
    if isinstance(x, np.ndarray):
        return x
    if _is_tf_sparse(x):
        # Densifying would count the implicit zeros as values.
        raise TypeError(f"FastNorm.adapt() needs dense or ragged data; got {type(x).__name__}")
    if _is_tf_tensor(x):
        if not hasattr(x, "numpy"):
            raise TypeError(
                "FastNorm.adapt() needs concrete data; got a symbolic tf.Tensor (call adapt "
                "outside tf.function)"
            )
        return np.asarray(x.numpy())  # CPU eager tensors share their buffer
    if keras.ops.is_tensor(x):
        return np.asarray(keras.ops.convert_to_numpy(x))
    if isinstance(x, keras.KerasTensor):
        raise TypeError("FastNorm.adapt() needs concrete data; got a symbolic KerasTensor")
    return np.asarray(x)


def _values_of(x: Any) -> Tuple[np.ndarray, int]:
    """One batch as ``(array, ragged_rank)``: a ``tf.RaggedTensor`` gives its ``flat_values``
    (the real elements of its variable-length rows, no padding) and its ragged rank, anything
    else its dense NumPy view and 0."""
    if _is_tf_ragged(x):
        return _to_numpy(x.flat_values), int(x.ragged_rank)
    return _to_numpy(x), 0


def _flat_keep(keep: Tuple[int, ...], ragged_rank: int) -> Tuple[int, ...]:
    """Kept axes of a ragged batch ``(batch, ragged..., uniform...)`` as axes of its
    ``flat_values`` ``(values, uniform...)``: only uniform axes can keep statistics."""
    if not ragged_rank:
        return tuple(keep)
    if any(k <= ragged_rank for k in keep):
        raise ValueError(
            f"FastNorm.adapt(): axes {tuple(keep)} keep an axis of ragged data that is the batch "
            f"axis or has variable length (ragged rank {ragged_rank}); only the uniform inner "
            f"axes (from {ragged_rank + 1} on) can keep statistics"
        )
    return tuple(k - ragged_rank for k in keep)


def _shape_of(x: Any) -> Tuple[Optional[int], ...]:
    shape = x.shape
    if hasattr(shape, "as_list"):  # tf.TensorShape (ragged dimensions are None)
        shape = shape.as_list()
    return tuple(None if d is None else int(d) for d in shape)


class _Weighting:
    """What ``adapt(sample_weight=, mask_value=)`` and a Keras mask ask of one source: the
    values that count and their weights. ``sample_weight``: ``None`` (ignore weights, as Keras
    does), ``True`` (the ``w`` of ``(x, y, w)`` elements) or an array aligned with array data."""

    def __init__(self, sample_weight: Any = None, mask_value: Any = None):
        self.sample_weight, self.mask_value = sample_weight, mask_value

    @property
    def from_elements(self) -> bool:
        return self.sample_weight is True

    @property
    def array(self) -> Any:
        return None if self.sample_weight is None or self.sample_weight is True else self.sample_weight

    def mask_value_for(self, dtype: Any) -> Any:
        """The checked mask value for data of ``dtype`` (``ValueError`` for a wrong one), or None."""
        if self.mask_value is None:
            return None
        return check_mask_value(self.mask_value, dtype).item()


def _check_sample_weight(sample_weight: Any) -> Any:
    if sample_weight is None or sample_weight is True:
        return sample_weight
    if sample_weight is False:
        return None
    if isinstance(sample_weight, (str, bytes)) or not hasattr(sample_weight, "shape") and not \
            isinstance(sample_weight, (list, tuple, float, int)):
        raise TypeError("sample_weight must be None, True (the w of (x, y, w) dataset elements) "
                        f"or an array aligned with array data, got {type(sample_weight).__name__}")
    return sample_weight


def _leading(w: np.ndarray, shape: Tuple[int, ...], name: str = "sample_weight") -> np.ndarray:
    """Sample weights or a Keras mask aligned with the leading axes of data of ``shape`` (Keras's
    meaning: ``(batch,)`` weights the rows, ``(batch, time)`` the steps), as a view."""
    w = np.asarray(w)
    if w.ndim > len(shape) or any(d not in (1, n) for d, n in zip(w.shape, shape)):
        raise ValueError(f"{name} of shape {w.shape} does not align with the leading axes of the "
                         f"data's shape {tuple(shape)}")
    return w.reshape(w.shape + (1,) * (len(shape) - w.ndim))


def _keras_mask_of(x: Any) -> Optional[np.ndarray]:
    """The Keras mask a tensor carries (``x._keras_mask``, set by masking layers), as NumPy."""
    mask = getattr(x, "_keras_mask", None)
    return None if mask is None else _to_numpy(mask)


def _where(values: Any, weighting: "_Weighting", keras_mask: Optional[np.ndarray]) -> Any:
    """The ``where=`` mask of one array or batch: values unequal to ``mask_value`` and inside
    the Keras mask; None when neither applies."""
    where = None
    mask_value = weighting.mask_value_for(values.dtype)
    if mask_value is not None:
        where = values != mask_value
    if keras_mask is not None:
        km = _leading(keras_mask, values.shape, "the Keras mask")
        if km.dtype != np.bool_:
            km = km.astype(bool)
        where = km if where is None else where & km
    return where


def _ragged_value_weights(ragged: Any, w: Any) -> np.ndarray:
    """Per-sequence weights of a ragged batch as weights of its flat values."""
    from . import tf as fm_tf

    tf = _tf()
    return fm_tf._value_weights(ragged, tf.convert_to_tensor(np.asarray(_to_numpy(w)))).numpy()


# -- progress ----------------------------------------------------------------------------------
class _Progress:
    """A Keras ``Progbar`` counting samples, with the read rate in GB/s."""

    def __init__(self, total_samples: Optional[int]):
        self._target = total_samples
        self._bar = keras.utils.Progbar(total_samples, unit_name="sample",
                                        stateful_metrics=["GB/s"])
        self._start = time.perf_counter()
        self._samples = 0
        self._bytes = 0
        self._finished = False

    def update(self, samples: int, nbytes: int) -> None:
        self._samples, self._bytes = int(samples), int(nbytes)
        self._finished = self._target is not None and self._samples >= self._target
        # Progbar ends its line itself once the target is reached.
        self._bar.update(self._samples, values=[("GB/s", self._rate())])

    def _rate(self) -> float:
        return self._bytes / max(time.perf_counter() - self._start, 1e-9) / 1e9

    def close(self) -> None:
        if not self._finished:
            self._finished = True
            self._bar.update(self._samples, values=[("GB/s", self._rate())], finalize=True)


def _want_progress(progress: Optional[bool], big: bool) -> bool:
    if progress is None:
        return big
    if not isinstance(progress, (bool, np.bool_)):
        raise TypeError(f"progress must be True, False or None (auto), got {progress!r}")
    return bool(progress)


# -- the sources adapt() reads ---------------------------------------------------------------
class _ArraySource:
    """An ndarray, memmap, ``.npy`` path, eager tensor or dask array: one ``compute`` call."""

    def __init__(self, data: Any, shape: Tuple[Optional[int], ...], nbytes: Optional[int],
                 ragged_rank: int = 0, ragged: Any = None, keras_mask: Any = None):
        # For ragged data, ``data`` is its flat values, ``ragged`` the tensor and ``shape`` the
        # ragged shape.
        self.data, self.input_shape, self.nbytes = data, shape, nbytes
        self.ragged_rank, self.ragged, self.keras_mask = ragged_rank, ragged, keras_mask

    def moments(self, keep, nan_policy, progress, weighting: Optional[_Weighting] = None) -> Moments:
        weighting = weighting or _Weighting()
        keep = _flat_keep(keep, self.ragged_rank)
        shape = self.input_shape if not self.ragged_rank else self.data.shape
        reduced = [shape[i] for i in range(len(shape)) if i not in keep]
        if any(n == 0 for n in reduced):
            raise ValueError(f"FastNorm.adapt() received empty data: shape {tuple(shape)}")
        if weighting.from_elements:
            raise ValueError("sample_weight=True uses the w of (x, y, w) dataset elements; for "
                             "array data pass the weights as an array (sample_weight=w)")
        data, weights, where = self.data, None, None
        if weighting.array is not None or weighting.mask_value is not None or self.keras_mask is not None:
            if isinstance(data, (str, os.PathLike)):
                if not os.fspath(data).endswith(".npy"):
                    raise ValueError("sample_weight, mask_value and Keras masks apply to arrays, "
                                     f".npy files and datasets, not to {os.fspath(data)!r}")
                data = np.load(data, mmap_mode="r")  # read in place, the weights beside it
            if weighting.array is not None:
                w = _to_numpy(weighting.array)
                if self.ragged_rank:
                    w = _ragged_value_weights(self.ragged, w)
                weights = _leading(w, data.shape)
            where = _where(data, weighting, None if self.ragged_rank else self.keras_mask)
        bar = None
        callback: Any = False
        if _want_progress(progress, (self.nbytes or 0) >= AUTO_PROGRESS_BYTES):
            rows = shape[0] if shape and shape[0] is not None else None
            bar = _Progress(rows)

            def callback(done: int, total: int) -> None:
                samples = done * rows // total if rows and total else 0
                bar.update(samples, done)

        try:
            return compute(data, axis=tuple(keep) if keep else None, nan_policy=nan_policy,
                           progress=callback, weights=weights, where=where)
        finally:
            if bar is not None:
                bar.close()


class _DatasetSource:
    """A ``tf.data.Dataset``: a graph-mode reduction by :func:`fastmoments.tf.dataset_moments`."""

    def __init__(self, dataset: Any, batch_size: Optional[int], steps: Optional[int],
                 built_rank: Optional[int]):
        tf = _tf()
        spec = _extract_x(dataset.element_spec)
        if not isinstance(spec, (tf.TensorSpec, tf.RaggedTensorSpec)):
            raise TypeError(
                "FastNorm.adapt() needs dataset elements x, (x, y) or (x, y, w) with x a dense "
                f"tensor (or a ragged one); got element_spec {dataset.element_spec!r}"
            )
        shape = tuple(spec.shape.as_list()) if spec.shape.rank is not None else None
        if shape is None:
            raise ValueError("FastNorm.adapt() needs a dataset whose elements have a known rank")
        self.ragged_rank = 0
        if isinstance(spec, tf.RaggedTensorSpec):
            if spec.ragged_rank == 0:  # one variable-length sequence per element: a dense tensor
                dataset = dataset.map(lambda *e: (_dense_x(e), *e[1:]) if len(e) > 1 else _dense_x(e))
            else:  # batches of variable-length sequences: their values, without padding
                self.ragged_rank = int(spec.ragged_rank)
        batched = self._is_batched(shape, built_rank) or self.ragged_rank > 0
        if self.ragged_rank and batch_size is not None:
            raise ValueError(
                "batch_size applies to arrays and unbatched datasets; this dataset holds ragged "
                f"batches (elements of shape {shape})"
            )
        if batch_size is not None:
            if batched:
                raise ValueError(
                    "batch_size applies to arrays and unbatched datasets; this dataset is "
                    f"already batched (elements of shape {shape})"
                )
            dataset, batched = dataset.batch(batch_size), True
            shape = (None,) + shape
        elif not batched:
            shape = (None,) + shape
        self.batched = batched
        cardinality = int(dataset.cardinality())
        if cardinality == 0:
            raise ValueError("FastNorm.adapt() received an empty dataset (cardinality 0)")
        if cardinality == int(tf.data.INFINITE_CARDINALITY) and steps is None:
            raise ValueError(
                "FastNorm.adapt() got a dataset that repeats forever; pass steps= (the number "
                "of elements to read) or drop .repeat()"
            )
        self.dataset, self.steps, self.input_shape = dataset, steps, shape

    @staticmethod
    def _is_batched(shape, built_rank) -> bool:
        # The same rule Keras applies (rank-1 elements are rows to be batched) unless the layer's
        # rank or an unknown leading dimension says otherwise.
        if len(shape) == 0:
            return False
        if built_rank is not None and len(shape) in (built_rank, built_rank - 1):
            return len(shape) == built_rank
        if shape[0] is None:
            return True
        return len(shape) > 1

    def moments(self, keep, nan_policy, progress, weighting: Optional[_Weighting] = None) -> Moments:
        from . import tf as fm_tf

        weighting = weighting or _Weighting()
        if weighting.array is not None:
            raise ValueError("sample_weight as an array goes with array data; for a tf.data "
                             "dataset use sample_weight=True with (x, y, w) elements")
        if weighting.from_elements:
            fm_tf.check_sample_weight_elements(self.dataset.element_spec)
        x_spec = _extract_x(self.dataset.element_spec)
        mask_value = weighting.mask_value_for(fm_tf._numpy_dtype(_tf().zeros([], x_spec.dtype)))
        if weighting.from_elements or mask_value is not None:
            ds = self.dataset if self.steps is None else self.dataset.take(self.steps)
            if progress:  # read in Python, as below (same kernel per batch, exact merges)
                if not self.batched:
                    ds = ds.batch(_ROWS_PER_BATCH)
                n = int(ds.cardinality())
                return _IterableSource(ds, None, n if n >= 0 else None).moments(
                    keep, nan_policy, progress, weighting)
            if not self.batched:
                ds = ds.batch(fm_tf._row_batch_size(x_spec))
            path = (0,) if isinstance(ds.element_spec, tuple) else ()
            return fm_tf._reduce_batches(
                ds, [_flat_keep(keep, self.ragged_rank)], nan_policy, 0, paths=[path],
                weight_path=(2,) if weighting.from_elements else None, mask_values=[mask_value])[0]
        if self.ragged_rank:
            flat = _flat_keep(keep, self.ragged_rank)
            ds = self.dataset if self.steps is None else self.dataset.take(self.steps)
            if progress:
                ds = ds.map(lambda *e: _extract_x(e if len(e) > 1 else e[0]).flat_values)
                n = int(ds.cardinality())
                return _IterableSource(ds, None, n if n >= 0 else None).moments(
                    flat, nan_policy, progress)
            # The loop takes x's flat values itself: no map to trace per call.
            path = (0,) if isinstance(ds.element_spec, tuple) else ()
            return fm_tf._reduce_batches(ds, [flat], nan_policy, 0, paths=[path])[0]
        if progress:
            # The graph reduction shows no bar: read the elements here (same kernel per batch,
            # states merged exactly by the Accumulator).
            ds = self.dataset if self.steps is None else self.dataset.take(self.steps)
            if not self.batched:
                ds = ds.batch(_ROWS_PER_BATCH)
            n = int(ds.cardinality())
            source = _IterableSource(ds, None, n if n >= 0 else None)
            return source.moments(keep, nan_policy, progress)
        # Our reading of the elements (it may use the built layer's rank) decides whether they are
        # batches; axes count in the batched shape. The result carries the whole state
        # (count, mean, m2, mean_lo) merged by the op over every batch.
        return fm_tf.dataset_moments(self.dataset, axis=tuple(keep) if keep else None,
                                     steps=self.steps, nan_policy=nan_policy, batched=self.batched)


class _IterableSource:
    """PyDatasets, lists of batches, generators: one ``compute`` per batch, merged exactly."""

    def __init__(self, data: Iterable, steps: Optional[int], length: Optional[int] = None):
        if isinstance(data, keras.utils.PyDataset):
            length = data.num_batches
            if length is None and steps is None:
                raise ValueError(
                    "FastNorm.adapt() got an infinite PyDataset (num_batches is None); pass steps="
                )
        elif length is None and hasattr(data, "__len__"):
            try:
                length = len(data)  # type: ignore[arg-type]
            except TypeError:
                length = None
        if steps is not None:
            length = steps if length is None else min(length, steps)
        batches = iter(data)
        if steps is not None:
            batches = itertools.islice(batches, steps)
        first = next(batches, None)
        if first is None:
            raise ValueError(
                "FastNorm.adapt() received an empty iterable (no batches); expected at least "
                "one batch of data"
            )
        first_x = _extract_x(first)
        if getattr(first_x, "shape", None) is None:
            raise TypeError(
                "FastNorm.adapt() expects batches that are arrays or tensors with a `.shape` "
                f"attribute; got {type(first_x).__name__}"
            )
        self.input_shape = _shape_of(first_x)
        self.length = length
        self._batches = itertools.chain([first], batches)

    def moments(self, keep, nan_policy, progress, weighting: Optional[_Weighting] = None) -> Moments:
        weighting = weighting or _Weighting()
        if weighting.array is not None:
            raise ValueError("sample_weight as an array goes with array data; for batches of "
                             "(x, y, w) use sample_weight=True")
        bar = None
        if _want_progress(progress, (self.length or 0) >= AUTO_PROGRESS_BATCHES):
            bar = _Progress(None)
        reducer = _BatchReducer(keep, self.input_shape, nan_policy)
        samples = nbytes = 0
        try:
            for element in self._batches:
                rows, size = reducer.add(_extract_x(element), _element_weights(element, weighting),
                                         weighting)
                samples, nbytes = samples + rows, nbytes + size
                if bar is not None:
                    bar.update(samples, nbytes)
        finally:
            if bar is not None:
                bar.close()
        return reducer.result()


class _BatchReducer:
    """One feature's statistics over batches read in Python: each batch is checked against the
    first one's shape, reduced by the kernel (a ragged batch: its flat values) and merged
    exactly by an :class:`~fastmoments.Accumulator`."""

    def __init__(self, keep: Tuple[int, ...], input_shape: Tuple[Optional[int], ...],
                 nan_policy: str):
        self.keep, self.input_shape, self.nan_policy = tuple(keep), input_shape, nan_policy
        self._acc: Optional[Accumulator] = None
        self._ragged_rank: Optional[int] = None

    def add(self, x: Any, w: Any = None, weighting: Optional[_Weighting] = None) -> Tuple[int, int]:
        """Adds one batch (``w``: its sample weights, or None); returns its rows and bytes."""
        values, ragged_rank = _values_of(x)
        shape = _shape_of(x) if ragged_rank else values.shape
        ref, keep = self.input_shape, self.keep
        first_ragged_rank = ragged_rank if self._ragged_rank is None else self._ragged_rank
        if (len(shape) != len(ref) or any(shape[d] != ref[d] for d in keep)
                or ragged_rank != first_ragged_rank):
            raise ValueError(
                "FastNorm.adapt() yielded a batch with incompatible shape: expected "
                f"{ref} (axes {keep} fixed), got {tuple(shape)}"
            )
        if values.size == 0:
            return 0, 0
        if self._acc is None:
            flat = _flat_keep(keep, ragged_rank)
            self._ragged_rank = ragged_rank
            self._acc = Accumulator(axis=flat if flat else None, nan_policy=self.nan_policy)
        weights = None
        if w is not None:
            w = _ragged_value_weights(x, w) if ragged_rank else _to_numpy(w)
            weights = _leading(w, values.shape)
        where = _where(values, weighting or _Weighting(), None if ragged_rank else _keras_mask_of(x))
        self._acc.update(values, weights=weights, where=where)
        return (shape[0] if len(shape) else 1), values.nbytes

    def result(self) -> Moments:
        if self._acc is None or self._acc.empty:
            raise ValueError("FastNorm.adapt() received empty data: every batch had no values")
        return self._acc.result()


def _element_weights(element: Any, weighting: _Weighting) -> Any:
    """The ``w`` of an ``(x, y, w)`` batch when ``sample_weight=True``, else None."""
    if not weighting.from_elements:
        return None
    if not (isinstance(element, (tuple, list)) and len(element) == 3):
        what = f"tuples of {len(element)}" if isinstance(element, (tuple, list)) else "single arrays"
        raise ValueError("sample_weight=True uses the w of (x, y, w) batches, but the batches "
                         f"are {what} (no weights)")
    return element[2]


def _dense_x(element: Tuple[Any, ...]) -> Any:
    """``x`` of a dataset element given as ``map``'s arguments, as a dense tensor (a ragged
    tensor of ragged rank 0 is one)."""
    x = _extract_x(element if len(element) > 1 else element[0])
    return x.flat_values if _is_tf_ragged(x) else x


def _source(data: Any, batch_size: Optional[int], steps: Optional[int],
            built_rank: Optional[int]):
    """Which reader ``data`` goes to, with its (batched) input shape."""
    if _is_tf_sparse(data):
        raise TypeError(f"FastNorm.adapt() needs dense or ragged data; got {type(data).__name__}")
    array_like = (isinstance(data, (np.ndarray, str, os.PathLike)) or is_dask_collection(data)
                  or _is_tf_tensor(data) or keras.ops.is_tensor(data) or _is_pandas(data)
                  or _is_tf_ragged(data))
    if array_like and steps is not None:
        raise ValueError("steps applies to datasets and iterables of batches, not to arrays")
    if _is_tf_ragged(data):
        values, ragged_rank = _values_of(data)
        return _ArraySource(values, _shape_of(data), values.nbytes, ragged_rank, ragged=data)
    if isinstance(data, np.ndarray):
        return _ArraySource(data, data.shape, data.nbytes)
    if isinstance(data, (str, os.PathLike)):
        shape, nbytes = paths_shape(data)  # .npy, NIfTI, images, folders: headers only
        return _ArraySource(os.fspath(data), shape, nbytes)
    if is_dask_collection(data):
        shape = tuple(None if d != d else int(d) for d in data.shape)  # NaN: unknown chunks
        nbytes = data.nbytes if all(d is not None for d in shape) else None
        return _ArraySource(data, shape, nbytes)
    if _is_tf_tensor(data) or keras.ops.is_tensor(data) or _is_pandas(data):
        arr = _to_numpy(data)
        return _ArraySource(arr, arr.shape, arr.nbytes, keras_mask=_keras_mask_of(data))
    if _is_tf_dataset(data):
        return _DatasetSource(data, batch_size, steps, built_rank)
    if batch_size is not None:
        raise ValueError(
            "batch_size applies to arrays and unbatched tf.data datasets; iterables and "
            "PyDatasets yield their own batches"
        )
    if isinstance(data, keras.utils.PyDataset) or hasattr(data, "__iter__"):
        return _IterableSource(data, steps)
    raise TypeError(
        f"FastNorm.adapt() cannot read {type(data).__name__}; it accepts NumPy arrays and memmaps, "
        ".npy paths, tensors, dask arrays, tf.data.Dataset, keras.utils.PyDataset and iterables "
        "of batches"
    )


def _check_reset_state(reset_state: Any) -> bool:
    if not isinstance(reset_state, (bool, np.bool_)):
        raise TypeError(f"reset_state must be True or False, got {reset_state!r}")
    return bool(reset_state)


try:  # the base of what Keras saving walks into (layers, optimizers, metrics)
    from keras.src.saving.keras_saveable import KerasSaveable as _Saveable
except ImportError:  # pragma: no cover - a Keras without it keeps the exact state in memory only
    _Saveable = object


class _ExactState(_Saveable):
    """The exact statistics (:class:`~fastmoments._moments.State`) behind a FastNorm's weights.

    Keras saving (``.keras``, ``save_weights``) stores it as a child of the layer; it is not a
    layer and holds no variables, so the layer's weights stay ``Normalization``'s three, and
    Keras without fastmoments (a ``Normalization`` subclass standing in) skips this entry."""

    def __init__(self, state: Optional[State] = None):
        self.state = state

    def _obj_type(self) -> str:
        # Keras saving accepts a fixed set of kinds; "Loss" is a plain one, walked for
        # attributes only (this object has no saveable attributes).
        return "Loss"

    def save_own_variables(self, store) -> None:
        if self.state is not None:
            for name, part in zip(State._fields, self.state.arrays):  # 4 parts, or 6 if weighted
                store[name] = np.asarray(part)

    def load_own_variables(self, store) -> None:
        names = set(store.keys())
        if not names:  # saved before adapt, or by a FastNorm without the exact state
            self.state = None
            return
        fields = [f for f in State._fields if f in names]
        if names != set(fields) or len(fields) not in (4, 6) or fields != list(State._fields[:len(fields)]):
            raise ValueError(f"FastNorm's saved exact state holds {sorted(names)}, expected "
                             f"{list(State._fields[:4])} (and {list(State._fields[4:])} if weighted)")
        self.state = State.of([np.asarray(store[name]) for name in fields])

    def __reduce__(self):
        # A plain object for copy and pickle (KerasSaveable pickles whole models).
        return (_ExactState, (self.state,))


@keras.saving.register_keras_serializable(package="fastmoments")
class FastNorm(keras.layers.Normalization):
    """``keras.layers.Normalization`` with an exact, fast ``adapt``.

    Construct, call, save and load it exactly like ``Normalization`` (same arguments, weights
    and outputs); see ``keras.layers.Normalization`` for ``axis``, ``mean``, ``variance`` and
    ``invert``. Saved models refer to it as ``"fastmoments>FastNorm"``; an exported SavedModel
    (``model.export``) contains plain TensorFlow ops and serves without fastmoments.

    Beside the three weights, the layer keeps the exact state of its last ``adapt`` (count, mean,
    m2 and mean residual per feature) for ``adapt(..., reset_state=False)``; ``.keras`` files and
    ``save_weights`` store it as a separate entry, which plain Keras skips. Keras names a
    layer's weights in the file after its class, so without fastmoments a ``.keras`` file loads
    with a stand-in ``class FastNorm(keras.layers.Normalization): pass`` passed as
    ``custom_objects={"fastmoments>FastNorm": FastNorm}``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The exact statistics behind adapt_mean/adapt_variance, for reset_state=False.
        self._exact_state = _ExactState()

    def adapt(self, data, batch_size=None, steps=None, *, sample_weight=None, mask_value=None,
              nan_policy="propagate", progress=None, reset_state=True):
        """Sets the layer's mean and variance to those of ``data`` (or, with
        ``reset_state=False``, of the data adapted before and ``data`` together), exactly.

        Parameters
        ----------
        data : array_like, np.memmap, path, tf.Tensor, tf.data.Dataset, PyDataset, iterable
            * NumPy arrays (any dtype the kernel reads, any strides) and memory maps, read in
              place on all cores; the path of a ``.npy`` file (memory-mapped, never loaded),
              of a NIfTI volume or image, a glob or a folder (as in :func:`fastmoments.compute`);
              dask arrays; backend tensors (``tf.Tensor``, JAX, torch), viewed as NumPy.
            * ``tf.data.Dataset`` of ``x``, ``(x, y)`` or ``(x, y, w)`` elements, batched or
              not (statistics of ``x``), reduced in graph mode by
              :func:`fastmoments.tf.dataset_moments`. Elements whose leading dimension is
              unknown are batches; of a known leading dimension, rank-1 elements are single
              rows (as in Keras) and others are batches, unless the built layer's rank says
              otherwise.
            * ``keras.utils.PyDataset``, lists and generators of batches (``x`` or tuples).
            * ``tf.RaggedTensor`` data, datasets and batches (variable-length sequences, e.g.
              ``(sequences, None, features)`` with ``axis=-1``): the statistics of their values
              (``flat_values``), the real time steps without padding. Only the uniform inner
              axes can keep statistics.
        batch_size : int, optional
            Only for an unbatched ``tf.data.Dataset``: read it in batches of this size. Arrays
            are reduced in place whatever it is; ``ValueError`` for other inputs.
        steps : int, optional
            Read at most this many batches (elements of a dataset). Required for a dataset that
            repeats forever and an infinite PyDataset (``ValueError`` without it).
        sample_weight : None, True or array_like
            ``None`` (default) ignores sample weights, as ``Normalization.adapt`` does. ``True``
            weights ``x`` by the ``w`` of ``(x, y, w)`` dataset elements or batches (the weighted
            TF op in the graph-mode loop for ``tf.data``). An array weights array data (arrays,
            memmaps, ``.npy`` files, tensors; ragged data: one weight per sequence). Weights
            align with the leading axes of ``x`` (Keras's meaning: ``(batch,)`` weights the
            rows, ``(batch, time)`` the steps) and must be non-negative and finite. The layer's
            mean is then ``sum(w*x)/sum(w)`` and its variance ``sum(w*(x - mean)**2)/sum(w)``,
            exactly what repeating each row ``w`` times gives for integer weights.
        mask_value : scalar, optional
            Values equal to it (padding) do not exist for the statistics (per-feature counts,
            as ``where=`` in :func:`fastmoments.compute`). It must be a value of the data's
            dtype (an integer for integer data, not NaN: use ``nan_policy="omit"``), else
            ``ValueError``. A Keras mask carried by a tensor given to ``adapt`` (its
            ``_keras_mask``, aligned with the leading axes) drops the masked steps too.
        nan_policy : {"propagate", "omit", "raise"}
            As in :func:`fastmoments.compute`: NaN statistics, NaN-skipping statistics, or
            ``ValueError``.
        progress : bool or None
            ``True`` shows a Keras progress bar with the samples read and the rate in GB/s;
            ``None`` (default) shows it only for arrays or files of at least
            ``AUTO_PROGRESS_BYTES`` (1 GiB) and for inputs of at least
            ``AUTO_PROGRESS_BATCHES`` (1000) batches. A ``tf.data`` dataset is reduced in
            graph mode without a bar unless ``progress=True``, which reads it batch by batch
            from Python instead (same kernel and results, some Python per batch).
        reset_state : bool, default True
            ``False`` merges the statistics of ``data`` into those adapted before (Chan's
            merge of the exact states, :meth:`fastmoments.Moments.merge`): the result is that
            of one ``adapt`` on the concatenation of all the data, to rounding. The layer keeps
            the exact state (count, mean, m2, mean residual per feature) beside its weights and
            in ``.keras`` files and ``save_weights``, so this also works after loading. A layer
            never adapted starts from no data. Each call's ``nan_policy`` applies to its own
            data.

        Raises
        ------
        ValueError
            ``sample_weight=True`` on data without weights, an array ``sample_weight`` with a
            dataset, weights of another shape or negative, NaN or infinite (``compute``'s
            texts), a ``mask_value`` of the wrong dtype;
            empty data; data whose kept axes do not match the built layer; a repeating
            dataset without ``steps``; a layer constructed with ``mean``/``variance``;
            ``reset_state=False`` on a layer whose mean and variance were not set by
            ``FastNorm.adapt`` (``set_weights``, a file saved without the exact state, or
            changed since). A failed or interrupted ``adapt`` leaves the layer as it was.
        TypeError
            Inputs of an unsupported type or dtype.

        Warns
        -----
        FastNormWarning
            Features with zero variance: ``Normalization`` divides by ``keras.backend.epsilon()``
            there, so inputs that differ from the mean are scaled by about 1e7. The weights are
            set as computed (the output is that of ``Normalization``); set those variances to
            1 or drop the features. Also warns when the statistics contain NaN.
        """
        check_nan_policy(nan_policy)
        batch_size = check_count("batch_size", batch_size)
        steps = check_count("steps", steps)
        if progress is not None and not isinstance(progress, (bool, np.bool_)):
            raise TypeError(f"progress must be True, False or None (auto), got {progress!r}")
        reset_state = _check_reset_state(reset_state)
        weighting = _Weighting(_check_sample_weight(sample_weight), mask_value)
        self._check_adaptable()
        source = _source(data, batch_size, steps, self._built_rank())
        self._build_for(tuple(source.input_shape), reset_state)
        previous = None if reset_state else self._previous_state()
        moments = source.moments(self._keep_axis, nan_policy, progress, weighting)
        self._set_statistics(self._merged(previous, moments))

    # -- helpers -----------------------------------------------------------------------------
    def _check_adaptable(self) -> None:
        if self.input_mean is not None:
            raise ValueError(
                "this FastNorm was constructed with mean= and variance=; adapt() applies only "
                "to a layer constructed without them"
            )

    def _built_rank(self) -> Optional[int]:
        return len(self._build_input_shape) if self.built and self._build_input_shape else None

    def _build_for(self, input_shape: Tuple[Optional[int], ...], reset_state: bool = True) -> None:
        if not self.built:
            self.build(input_shape)
            return
        built = tuple(self._build_input_shape)
        if len(input_shape) != len(built) or any(input_shape[d] != built[d]
                                                 for d in self._keep_axis):
            what = "" if reset_state else " (reset_state=False cannot merge statistics of another shape)"
            raise ValueError(
                f"The layer was built with input_shape={built}, but adapt() is being called "
                f"with data with an incompatible shape, data.shape={input_shape}{what}"
            )

    def _weights_of(self, state: State) -> Tuple[np.ndarray, np.ndarray]:
        """``adapt_mean`` and ``adapt_variance`` (population variance) of an exact state, in the
        variables' dtypes."""
        shape = tuple(self._mean_and_var_shape)
        count = state.count
        # Population variance: m2 / count, or m2 / sum(w) for weighted statistics.
        total = count.astype(np.float64) if state.sum_weights is None else state.sum_weights
        with np.errstate(invalid="ignore", divide="ignore"):
            variance = np.where((count > 0) & (total > 0), state.m2 / np.where(total > 0, total, 1.0),
                                np.nan)
        mean = np.asarray(state.mean, np.float64).reshape(shape)
        return (mean.astype(self.adapt_mean.dtype),
                np.asarray(variance).reshape(shape).astype(self.adapt_variance.dtype))

    def _previous_state(self) -> State:
        """The exact state that ``reset_state=False`` merges into: ``ValueError`` unless the
        layer's weights are what its last ``adapt`` set (or those of a layer never adapted)."""
        shape = tuple(self._mean_and_var_shape)
        mean, variance = np.asarray(self.adapt_mean), np.asarray(self.adapt_variance)
        state = self._exact_state.state
        if state is None:
            if np.all(mean == 0) and np.all(variance == 1):  # the initial weights: no data yet
                return State.empty(shape)
            raise ValueError(
                "adapt(reset_state=False): this layer's mean and variance were not set by "
                "FastNorm.adapt (set_weights, adapted by keras Normalization, or loaded from a "
                "file saved without fastmoments' exact state), so there is no exact state to "
                "merge into; adapt once with reset_state=True first"
            )
        if state.shape != shape:
            raise ValueError(f"adapt(reset_state=False): the layer's exact state has shape "
                             f"{state.shape}, its weights {shape}")
        want_mean, want_variance = self._weights_of(state)
        # Compared in the dtype the backend stores (JAX without x64 keeps float64 as float32).
        if not (np.array_equal(want_mean.astype(mean.dtype), mean, equal_nan=True)
                and np.array_equal(want_variance.astype(variance.dtype), variance, equal_nan=True)):
            raise ValueError(
                "adapt(reset_state=False): the layer's mean or variance changed since its last "
                "adapt (assigned or set_weights), so they no longer match the exact state to "
                "merge into; adapt with reset_state=True"
            )
        return state

    @staticmethod
    def _merged(previous: Optional[State], moments: Moments) -> State:
        new = State(*(np.array(a, copy=True) for a in moments.state.arrays))
        return new if previous is None else previous.merge(new)  # the one Chan merge

    def _check_statistics(self, state: State) -> None:
        shape = tuple(self._mean_and_var_shape)
        if state.shape != shape:
            raise ValueError(f"statistics of shape {state.shape} do not fit the layer's {shape}")
        if np.all(state.count == 0):
            raise ValueError("FastNorm.adapt() received empty data (no values to normalize with)")

    def _set_statistics(self, state: State) -> None:
        """Sets the weights and the exact state from ``state``, all or nothing: an exception or
        KeyboardInterrupt while assigning restores the previous ones."""
        self._check_statistics(state)
        mean, variance = self._weights_of(state)
        self._warn_degenerate(np.asarray(mean, np.float64), np.asarray(variance, np.float64))
        # Normalization leaves count at 0; record the values per feature (clipped to the dtype).
        limit = np.iinfo(np.dtype(self.count.dtype)).max
        count = np.asarray(min(int(state.count.max()), limit), dtype=self.count.dtype)
        snapshot = self._snapshot()
        try:
            self.adapt_mean.assign(mean)
            self.adapt_variance.assign(variance)
            self.count.assign(count)
            self._exact_state.state = state
            self.finalize_state()
        except BaseException:
            self._restore(snapshot)
            raise

    def _snapshot(self) -> tuple:
        return (tuple(np.asarray(v).copy() for v in (self.adapt_mean, self.adapt_variance,
                                                     self.count)), self._exact_state.state)

    def _restore(self, snapshot: tuple) -> None:
        values, state = snapshot
        for var, value in zip((self.adapt_mean, self.adapt_variance, self.count), values):
            var.assign(value)
        self._exact_state.state = state
        self.finalize_state()

    def _warn_degenerate(self, mean: np.ndarray, variance: np.ndarray) -> None:
        n = variance.size
        nan = np.isnan(mean) | np.isnan(variance)
        if nan.any():
            warnings.warn(
                f"FastNorm.adapt(): {int(nan.sum())} of {n} features have NaN statistics (the "
                "data contains NaN or inf); the layer will output NaN for them. Use "
                "nan_policy='omit' to skip NaN values.",
                FastNormWarning, stacklevel=3,
            )
        eps = keras.backend.epsilon()
        with np.errstate(invalid="ignore"):
            flat = np.sqrt(variance) < eps
        if flat.any():
            where = np.argwhere(flat.reshape(variance.shape))
            shown = ", ".join(str(tuple(int(i) for i in w)) if w.size else "()" for w in where[:5])
            more = "" if len(where) <= 5 else f" and {len(where) - 5} more"
            warnings.warn(
                f"FastNorm.adapt(): {int(flat.sum())} of {n} features have zero variance "
                f"(indices {shown}{more}); like Normalization the layer divides by "
                f"epsilon={eps:g} there, so an input that differs from the mean comes out "
                f"scaled by {1 / eps:.0e}. Set those variances to 1 or drop the features.",
                FastNormWarning, stacklevel=3,
            )


# -- several layers from one pass ------------------------------------------------------------
def _feature_container(element: Any, named: bool) -> Any:
    """The features of one element (or element spec): a dict (named features) or a tuple
    (positional ones); of ``(features, y)`` / ``(features, y, w)`` elements, ``features``."""
    path = _container_path(element, named)
    return element[0] if path else element


def _container_path(element: Any, named: bool) -> Tuple[int, ...]:
    """Where :func:`_feature_container` finds the features: ``()`` or ``(0,)``."""
    if isinstance(element, Mapping):
        return ()
    if isinstance(element, (tuple, list)) and len(element) > 0:
        first = element[0]
        if isinstance(first, Mapping) or (isinstance(first, (tuple, list)) and 2 <= len(element) <= 3):
            return (0,)
        if not named:
            return ()
    raise TypeError(
        "adapt_all() needs data whose elements are a dict of features (string keys), a tuple of "
        "features (integer keys), or (features, y[, w]); got "
        f"{type(element).__name__} elements for {'string' if named else 'integer'} keys"
    )


def _feature(container: Any, key: Any) -> Any:
    """Feature ``key`` of a container, or ``ValueError`` naming the missing key."""
    if isinstance(container, Mapping):
        if key in container:
            return container[key]
        raise ValueError(f"adapt_all(): the data has no feature {key!r}; its features are "
                         f"{sorted(map(str, container))}")
    if isinstance(key, int) and -len(container) <= key < len(container):
        return container[key]
    raise ValueError(f"adapt_all(): the data has no feature {key!r}; its elements hold "
                     f"{len(container)} positional features")


def _check_layers(layers: Any) -> Tuple[list, bool]:
    if not isinstance(layers, Mapping):
        raise TypeError("adapt_all() takes a dict {feature key: FastNorm}, got "
                        f"{type(layers).__name__}")
    if not layers:
        raise ValueError("adapt_all() got no layers to adapt")
    keys = list(layers)
    named = all(isinstance(k, str) for k in keys)
    positional = all(isinstance(k, (int, np.integer)) and not isinstance(k, bool) for k in keys)
    if not (named or positional):
        raise TypeError(f"adapt_all() keys must be all strings (dict features) or all integers "
                        f"(tuple positions), got {keys!r}")
    for key, layer in layers.items():
        if not isinstance(layer, FastNorm):
            raise TypeError(f"adapt_all(): layers[{key!r}] is a {type(layer).__name__}, not a "
                            "FastNorm")
        layer._check_adaptable()
    if len({id(layer) for layer in layers.values()}) != len(layers):
        raise ValueError("adapt_all(): one FastNorm appears under several keys")
    return ([k if named else int(k) for k in keys]), named


def _dataset_features(layers: Mapping, keys: list, named: bool, dataset: Any,
                      batch_size: Optional[int], steps: Optional[int],
                      reset_state: bool, nan_policy: str, weighting: _Weighting) -> list:
    """Every keyed feature of a ``tf.data`` dataset from one graph-mode pass."""
    tf = _tf()
    from . import tf as fm_tf

    if steps is not None:
        dataset = dataset.take(steps)
    cardinality = int(dataset.cardinality())
    if cardinality == int(tf.data.INFINITE_CARDINALITY):
        raise ValueError("adapt_all() got a dataset that repeats forever; pass steps= (the "
                         "number of elements to read) or drop .repeat()")
    if cardinality == 0:
        raise ValueError("adapt_all() received an empty dataset (cardinality 0)")
    specs = {}
    for key in keys:
        spec = _feature(_feature_container(dataset.element_spec, named), key)
        if not isinstance(spec, (tf.TensorSpec, tf.RaggedTensorSpec)) or spec.shape.rank is None:
            raise TypeError(f"adapt_all(): feature {key!r} must be a dense or ragged tensor of "
                            f"known rank, got {spec!r}")
        try:
            fm_tf._check_dtype(spec.dtype)
        except TypeError as exc:
            raise TypeError(f"adapt_all(): feature {key!r}: {exc}") from None
        specs[key] = spec
    # Batches or rows, for all features at once: scalar features are rows; features whose
    # leading dimensions are all unknown are batches; else FastNorm.adapt's reading of each
    # feature, and batches where that differs between features of one leading dimension.
    leading = {s.shape[0] if s.shape.rank else "scalar" for s in specs.values()}
    votes = {isinstance(s, tf.RaggedTensorSpec) and s.ragged_rank > 0
             or _DatasetSource._is_batched(tuple(s.shape.as_list()), layers[k]._built_rank())
             for k, s in specs.items()}
    if "scalar" in leading:
        batched = False
    elif leading == {None} or len(votes) == 1:
        batched = leading == {None} or votes.pop()
    elif len(leading) == 1:
        batched = True
    else:
        raise ValueError("adapt_all(): cannot tell whether the dataset's elements are batches "
                         f"(features of leading dimensions {sorted(map(str, leading))}); batch it")
    if batched and batch_size is not None:
        raise ValueError("batch_size applies to unbatched datasets; this dataset is already batched")
    if not batched:
        row_bytes = sum(max(1, int(np.prod([d or 1 for d in s.shape.as_list()]))) * s.dtype.size
                        for s in specs.values())
        dataset = dataset.batch(batch_size or int(min(65536, max(64, (1 << 20) // row_bytes))))
    batch_specs = {k: _feature(_feature_container(dataset.element_spec, named), k) for k in keys}
    ragged = {k: int(s.ragged_rank) if isinstance(s, tf.RaggedTensorSpec) else 0
              for k, s in batch_specs.items()}
    keeps, previous = [], []
    for key in keys:
        layer = layers[key]
        layer._build_for(tuple(batch_specs[key].shape.as_list()), reset_state)
        previous.append(None if reset_state else layer._previous_state())
        if 0 in layer._keep_axis:
            raise ValueError(f"adapt_all(): the layer for {key!r} keeps axis 0, the batch axis")
        keeps.append(_flat_keep(layer._keep_axis, ragged[key]))

    # The loop picks each feature (and a ragged one's flat values) itself: no map to trace.
    prefix = _container_path(dataset.element_spec, named)
    weight_path = None
    if weighting.from_elements:
        if prefix != (0,) or len(dataset.element_spec) != 3:
            raise ValueError("sample_weight=True uses the w of (features, y, w) dataset "
                             f"elements; these elements have no weights: {dataset.element_spec!r}")
        weight_path = (2,)
    if weighting.array is not None:
        raise ValueError("sample_weight as an array goes with array data; for a tf.data dataset "
                         "use sample_weight=True with (features, y, w) elements")
    mask_values = [weighting.mask_value_for(fm_tf._numpy_dtype(tf.zeros([], batch_specs[k].dtype)))
                   for k in keys]
    moments = fm_tf._reduce_batches(dataset, keeps, nan_policy, 0,
                                    paths=[prefix + (key,) for key in keys],
                                    weight_path=weight_path, mask_values=mask_values)
    return [(layers[k], p, m) for k, p, m in zip(keys, previous, moments)]


def _iterable_features(layers: Mapping, keys: list, named: bool, data: Any,
                       steps: Optional[int], reset_state: bool, nan_policy: str,
                       weighting: _Weighting) -> list:
    """Every keyed feature of an iterable of batches (PyDataset, list, generator), read once."""
    if isinstance(data, keras.utils.PyDataset) and data.num_batches is None and steps is None:
        raise ValueError("adapt_all() got an infinite PyDataset (num_batches is None); pass steps=")
    elements = iter(data)
    if steps is not None:
        elements = itertools.islice(elements, steps)
    first = next(elements, None)
    if first is None:
        raise ValueError("adapt_all() received an empty iterable (no batches)")
    container = _feature_container(first, named)
    reducers, previous = [], []
    for key in keys:
        x = _feature(container, key)
        if getattr(x, "shape", None) is None:
            raise TypeError(f"adapt_all(): feature {key!r} must be an array or tensor with a "
                            f"`.shape`, got {type(x).__name__}")
        shape = _shape_of(x)
        layers[key]._build_for(shape, reset_state)
        previous.append(None if reset_state else layers[key]._previous_state())
        reducers.append(_BatchReducer(layers[key]._keep_axis, shape, nan_policy))
    if weighting.array is not None:
        raise ValueError("sample_weight as an array goes with array data; for batches of "
                         "(features, y, w) use sample_weight=True")
    for element in itertools.chain([first], elements):
        container = _feature_container(element, named)
        w = _element_weights(element, weighting)
        for key, reducer in zip(keys, reducers):
            reducer.add(_feature(container, key), w, weighting)
    return [(layers[k], p, r.result()) for k, p, r in zip(keys, previous, reducers)]


def adapt_all(layers, data, batch_size=None, steps=None, *, sample_weight=None, mask_value=None,
              nan_policy="propagate", reset_state=True) -> None:
    """Adapts several :class:`FastNorm` layers, one per feature, from one pass over ``data``.

    Where ``keras.utils.FeatureSpace`` (and a loop of ``Normalization.adapt`` calls) reads the
    whole dataset once per normalized feature, this reads it once for all of them: each batch's
    features are reduced by the kernel and merged exactly, in one graph-mode loop for a
    ``tf.data`` dataset.

    Parameters
    ----------
    layers : dict
        ``{key: FastNorm}``: string keys name the features of dict elements, integer keys the
        positions in tuple elements.
    data : tf.data.Dataset, dict or tuple of arrays, PyDataset, list or generator of batches
        Elements (batches) whose features are a dict or a tuple, or ``(features, y)`` /
        ``(features, y, w)`` (the features, as Keras reads ``x``). A dict (or tuple) of arrays
        is read feature by feature, each array once, as :meth:`FastNorm.adapt` reads it.
        Features may be ``tf.RaggedTensor`` (their values are reduced).
    batch_size, steps, sample_weight, mask_value, nan_policy, reset_state :
        As in :meth:`FastNorm.adapt`, for every layer: ``sample_weight=True`` weights every
        feature by the ``w`` of ``(features, y, w)`` elements, an array weights the rows of a
        dict (or tuple) of arrays; ``mask_value`` drops the values equal to it in every feature
        (checked against each feature's dtype).

    Raises
    ------
    ValueError
        A key the data lacks (named in the message), empty data, shapes that do not fit a
        built layer, and the other errors of :meth:`FastNorm.adapt`. No layer changes unless
        every layer's statistics were computed (an error or interrupt changes none).
    TypeError
        ``layers`` is not a dict of FastNorm, keys of mixed kinds, data of another kind.

    Examples
    --------
    >>> norms = {"age": FastNorm(axis=None), "income": FastNorm(axis=None)}  # doctest: +SKIP
    >>> adapt_all(norms, train_ds)  # ({"age": ..., "income": ..., ...}, label)  # doctest: +SKIP
    """
    check_nan_policy(nan_policy)
    batch_size = check_count("batch_size", batch_size)
    steps = check_count("steps", steps)
    reset_state = _check_reset_state(reset_state)
    weighting = _Weighting(_check_sample_weight(sample_weight), mask_value)
    keys, named = _check_layers(layers)
    if named and isinstance(data, tuple) and data and isinstance(data[0], Mapping):
        data = data[0]  # (x, y) arrays with x a dict
    if isinstance(data, Mapping) or (isinstance(data, tuple) and not named):
        if isinstance(data, tuple) and data and isinstance(data[0], tuple):
            data = data[0]  # (x, y) arrays with x a tuple
        container = _feature_container(data, named) if isinstance(data, Mapping) else data
        results = []
        for key in keys:
            layer = layers[key]
            source = _source(_feature(container, key), batch_size, steps, layer._built_rank())
            layer._build_for(tuple(source.input_shape), reset_state)
            previous = None if reset_state else layer._previous_state()
            results.append((layer, previous, source.moments(layer._keep_axis, nan_policy, False,
                                                            weighting)))
    elif _is_tf_dataset(data):
        results = _dataset_features(layers, keys, named, data, batch_size, steps, reset_state,
                                    nan_policy, weighting)
    elif batch_size is not None:
        raise ValueError("batch_size applies to arrays and unbatched tf.data datasets; iterables "
                         "and PyDatasets yield their own batches")
    elif isinstance(data, keras.utils.PyDataset) or (hasattr(data, "__iter__")
                                                      and not isinstance(data, (str, bytes))):
        results = _iterable_features(layers, keys, named, data, steps, reset_state, nan_policy,
                                     weighting)
    else:
        raise TypeError(f"adapt_all() cannot read {type(data).__name__}; it reads tf.data "
                        "datasets, dicts or tuples of arrays, PyDatasets and iterables of batches")
    merged = [(layer, FastNorm._merged(previous, moments)) for layer, previous, moments in results]
    for layer, state in merged:  # every check before any layer changes
        layer._check_statistics(state)
    done = []
    try:
        for layer, state in merged:
            snapshot = layer._snapshot()
            layer._set_statistics(state)
            done.append((layer, snapshot))
    except BaseException:
        for layer, snapshot in reversed(done):
            layer._restore(snapshot)
        raise
