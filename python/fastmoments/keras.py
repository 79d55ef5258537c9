"""``FastNorm``: ``keras.layers.Normalization`` with an exact ``adapt()`` at memory bandwidth.

The layer is ``Normalization`` itself (same constructor, weights, outputs, saving); only
``adapt`` differs. It computes the statistics with the fastmoments kernel in float64 instead of
NumPy/Keras float32 arithmetic, so it is exact where ``Normalization.adapt`` loses digits
(features with a large mean), reads arrays in place on all cores, reduces ``tf.data`` datasets
in graph mode (:func:`fastmoments.tf.dataset_moments`) and never loops forever on a repeated
dataset.

Arrays, memory maps, ``.npy`` paths and dask arrays go through :func:`fastmoments.compute`, which
needs no TensorFlow: ``FastNorm`` works under every Keras backend for those inputs.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
import warnings
from typing import Any, Iterable, Optional, Tuple

import keras
import numpy as np

from ._accumulator import Accumulator
from ._batchnorm import BatchNormRecalibration, LayerRecalibration, recalibrate_batchnorm
from ._checks import check_count, check_nan_policy
from ._compute import compute
from ._moments import Moments
from ._stream import paths_shape
from ._routes import is_dask_collection

__all__ = ["FastNorm", "FastNormWarning", "AUTO_PROGRESS_BYTES", "AUTO_PROGRESS_BATCHES",
           "BatchNormRecalibration", "LayerRecalibration", "recalibrate_batchnorm"]

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


def _is_tf_sparse_or_ragged(data: Any) -> bool:
    tf = _tf()
    return tf is not None and isinstance(data, (tf.SparseTensor, tf.RaggedTensor))


def _is_pandas(data: Any) -> bool:
    return type(data).__module__.split(".")[0] == "pandas"


def _extract_x(element: Any) -> Any:
    """``x`` of an ``(x, y)`` or ``(x, y, sample_weight)`` element, as in Keras."""
    return element[0] if isinstance(element, tuple) else element


def _to_numpy(x: Any) -> np.ndarray:
    """A NumPy view (copy only where the framework must) of one array or batch."""
    if isinstance(x, np.ndarray):
        return x
    if _is_tf_sparse_or_ragged(x):
        # Densifying would count the implicit zeros / padding as values.
        raise TypeError(f"FastNorm.adapt() needs dense data; got {type(x).__name__}")
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

    def __init__(self, data: Any, shape: Tuple[Optional[int], ...], nbytes: Optional[int]):
        self.data, self.input_shape, self.nbytes = data, shape, nbytes

    def moments(self, keep, nan_policy, progress) -> Moments:
        shape = self.input_shape
        reduced = [shape[i] for i in range(len(shape)) if i not in keep]
        if any(n == 0 for n in reduced):
            raise ValueError(f"FastNorm.adapt() received empty data: shape {tuple(shape)}")
        bar = None
        callback: Any = False
        if _want_progress(progress, (self.nbytes or 0) >= AUTO_PROGRESS_BYTES):
            rows = shape[0] if shape and shape[0] is not None else None
            bar = _Progress(rows)

            def callback(done: int, total: int) -> None:
                samples = done * rows // total if rows and total else 0
                bar.update(samples, done)

        try:
            return compute(self.data, axis=tuple(keep) if keep else None, nan_policy=nan_policy,
                           progress=callback)
        finally:
            if bar is not None:
                bar.close()


class _DatasetSource:
    """A ``tf.data.Dataset``: a graph-mode reduction by :func:`fastmoments.tf.dataset_moments`."""

    def __init__(self, dataset: Any, batch_size: Optional[int], steps: Optional[int],
                 built_rank: Optional[int]):
        tf = _tf()
        spec = _extract_x(dataset.element_spec)
        if not isinstance(spec, tf.TensorSpec):
            raise TypeError(
                "FastNorm.adapt() needs dataset elements x, (x, y) or (x, y, w) with x a dense "
                f"tensor; got element_spec {dataset.element_spec!r}"
            )
        shape = tuple(spec.shape.as_list()) if spec.shape.rank is not None else None
        if shape is None:
            raise ValueError("FastNorm.adapt() needs a dataset whose elements have a known rank")
        batched = self._is_batched(shape, built_rank)
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

    def moments(self, keep, nan_policy, progress) -> Moments:
        from . import tf as fm_tf

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
        shape = getattr(first_x, "shape", None)
        if shape is None:
            raise TypeError(
                "FastNorm.adapt() expects batches that are arrays or tensors with a `.shape` "
                f"attribute; got {type(first_x).__name__}"
            )
        self.input_shape = tuple(None if d is None else int(d) for d in shape)
        self.length = length
        self._batches = itertools.chain([first], batches)

    def moments(self, keep, nan_policy, progress) -> Moments:
        bar = None
        if _want_progress(progress, (self.length or 0) >= AUTO_PROGRESS_BATCHES):
            bar = _Progress(None)
        acc = Accumulator(axis=tuple(keep) if keep else None, nan_policy=nan_policy)
        ref = self.input_shape
        samples = nbytes = 0
        try:
            for element in self._batches:
                x = _to_numpy(_extract_x(element))
                if x.ndim != len(ref) or any(x.shape[d] != ref[d] for d in keep):
                    raise ValueError(
                        "FastNorm.adapt() yielded a batch with incompatible shape: expected "
                        f"{ref} (axes {tuple(keep)} fixed), got {x.shape}"
                    )
                if x.size == 0:
                    continue
                acc.update(x)
                samples += x.shape[0] if x.ndim else 1
                nbytes += x.nbytes
                if bar is not None:
                    bar.update(samples, nbytes)
        finally:
            if bar is not None:
                bar.close()
        if acc.empty:
            raise ValueError("FastNorm.adapt() received empty data: every batch had no values")
        return acc.result()


def _source(data: Any, batch_size: Optional[int], steps: Optional[int],
            built_rank: Optional[int]):
    """Which reader ``data`` goes to, with its (batched) input shape."""
    if _is_tf_sparse_or_ragged(data):
        raise TypeError(f"FastNorm.adapt() needs dense data; got {type(data).__name__}")
    array_like = (isinstance(data, (np.ndarray, str, os.PathLike)) or is_dask_collection(data)
                  or _is_tf_tensor(data) or keras.ops.is_tensor(data) or _is_pandas(data))
    if array_like and steps is not None:
        raise ValueError("steps applies to datasets and iterables of batches, not to arrays")
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
        return _ArraySource(arr, arr.shape, arr.nbytes)
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


@keras.saving.register_keras_serializable(package="fastmoments")
class FastNorm(keras.layers.Normalization):
    """``keras.layers.Normalization`` with an exact, fast ``adapt``.

    Construct, call, save and load it exactly like ``Normalization`` (same arguments, weights
    and outputs); see ``keras.layers.Normalization`` for ``axis``, ``mean``, ``variance`` and
    ``invert``. Saved models refer to it as ``"fastmoments>FastNorm"``; an exported SavedModel
    (``model.export``) contains plain TensorFlow ops and serves without fastmoments.
    """

    def adapt(self, data, batch_size=None, steps=None, *, nan_policy="propagate", progress=None):
        """Sets the layer's mean and variance to those of ``data``, computed exactly.

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
        batch_size : int, optional
            Only for an unbatched ``tf.data.Dataset``: read it in batches of this size. Arrays
            are reduced in place whatever it is; ``ValueError`` for other inputs.
        steps : int, optional
            Read at most this many batches (elements of a dataset). Required for a dataset that
            repeats forever and an infinite PyDataset (``ValueError`` without it).
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

        Raises
        ------
        ValueError
            Empty data; data whose kept axes do not match the built layer; a repeating
            dataset without ``steps``; a layer constructed with ``mean``/``variance``.
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
        if self.input_mean is not None:
            raise ValueError(
                "this FastNorm was constructed with mean= and variance=; adapt() applies only "
                "to a layer constructed without them"
            )
        built_rank = len(self._build_input_shape) if self.built and self._build_input_shape \
            else None
        source = _source(data, batch_size, steps, built_rank)
        self._build_for(tuple(source.input_shape))
        moments = source.moments(self._keep_axis, nan_policy, progress)
        self._set_statistics(moments)

    # -- helpers -----------------------------------------------------------------------------
    def _build_for(self, input_shape: Tuple[Optional[int], ...]) -> None:
        if not self.built:
            self.build(input_shape)
            return
        built = tuple(self._build_input_shape)
        if len(input_shape) != len(built) or any(input_shape[d] != built[d]
                                                 for d in self._keep_axis):
            raise ValueError(
                f"The layer was built with input_shape={built}, but adapt() is being called "
                f"with data with an incompatible shape, data.shape={input_shape}"
            )

    def _set_statistics(self, moments: Moments) -> None:
        shape = tuple(self._mean_and_var_shape)
        count = np.asarray(moments.count, dtype=np.int64)
        if moments.shape != shape:
            raise ValueError(f"statistics of shape {moments.shape} do not fit the layer's {shape}")
        if np.all(count == 0):
            raise ValueError("FastNorm.adapt() received empty data (no values to normalize with)")
        mean = np.asarray(moments.mean, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            variance = np.where(count > 0, np.asarray(moments.m2, dtype=np.float64)
                                / np.maximum(count, 1), np.nan)
        self._warn_degenerate(mean, variance)
        self.adapt_mean.assign(mean.reshape(shape).astype(self.adapt_mean.dtype))
        self.adapt_variance.assign(variance.reshape(shape).astype(self.adapt_variance.dtype))
        # Normalization leaves count at 0; record the values per feature (clipped to the dtype).
        limit = np.iinfo(np.dtype(self.count.dtype)).max
        self.count.assign(np.asarray(min(int(count.max()), limit), dtype=self.count.dtype))
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
