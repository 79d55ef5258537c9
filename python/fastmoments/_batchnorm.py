"""``recalibrate_batchnorm``: exact population statistics for every BatchNormalization layer.

A model can be right in training (batch statistics) and wrong at inference when the layers'
moving mean/variance are stale or noisy: small batches, few steps, averaged or fine-tuned
weights, a momentum too high for the run. This module replaces them with the statistics of the
inputs each layer actually receives, computed by the fastmoments kernel (``compute`` per batch,
``Moments.merge`` across batches: Chan et al. 1983), and assigns them all at once at the end.

How the inputs are caught: for the duration of the call every ``BatchNormalization`` layer of
the model gets an instance-level ``call`` hook (removed afterwards). A hook records the input of
the layers being measured and, once the last of them has been reached, raises ``_Stop``: the
forward function (traced by ``tf.function``/``jax.jit``) then contains only the ops up to the
deepest input it needs, never the head, for Functional, Sequential and subclassed models alike.
Statistics of earlier layers are fed to later passes through ``keras.StatelessScope`` mappings,
so the model's variables are not touched until every pass has finished.
"""

from __future__ import annotations

import itertools
import os
import sys
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import keras
import numpy as np

from ._checks import check_count
from ._compute import compute
from ._moments import Moments, State
from ._npyfile import load_npy

__all__ = ["BatchNormRecalibration", "LayerRecalibration", "recalibrate_batchnorm"]

_MODES = ("inference", "train")
_ESTIMATORS = ("population", "batch_mean")
_DEFAULT_BATCH_SIZE = 32  # as model.predict
# Threads of each in-graph reduction: a batch's activations are a few MiB and TensorFlow runs
# the op beside the rest of the forward pass on its own pool.
_OP_THREADS = 1


class _Stop(BaseException):
    """Ends a forward call once every wanted input is recorded. A BaseException, so that Keras'
    argument-info wrappers (``except Exception``) pass it through untouched."""


# -- report ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerRecalibration:
    """What ``recalibrate_batchnorm`` did to one layer.

    Attributes
    ----------
    name : str
        The layer's name.
    count : int
        Values per channel the statistics were computed from (samples x positions x calls).
    mean_shift : float
        Largest ``|new_mean - old_mean| / sqrt(new_variance + epsilon)`` over the channels: how
        far, in standard deviations of its real inputs, the layer's old mean was.
    variance_ratio : float
        ``(old_variance + epsilon) / (new_variance + epsilon)`` of the channel where it is
        furthest from 1 (in log scale): 68 means the layer divided by an 8x too large std.
    level : int
        The pass that measured it (``mode="inference"``: layers of level ``k`` see the
        recalibrated statistics of the levels before).
    """

    name: str
    count: int
    mean_shift: float
    variance_ratio: float
    level: int


class BatchNormRecalibration:
    """The report ``recalibrate_batchnorm`` returns: one :class:`LayerRecalibration` per layer.

    Iterate over it, index it by position or layer name, print it for a table.
    """

    def __init__(self, layers: List[LayerRecalibration], *, mode: str, estimator: str,
                 passes: int, batches: int):
        self.layers = layers
        self.mode, self.estimator, self.passes, self.batches = mode, estimator, passes, batches

    def __iter__(self) -> Iterator[LayerRecalibration]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, key) -> LayerRecalibration:
        if isinstance(key, str):
            for item in self.layers:
                if item.name == key:
                    return item
            raise KeyError(key)
        return self.layers[key]

    def to_dict(self) -> Dict[str, Any]:
        return {"mode": self.mode, "estimator": self.estimator, "passes": self.passes,
                "batches": self.batches,
                "layers": [dict(item.__dict__) for item in self.layers]}

    def __str__(self) -> str:
        width = max([len("layer")] + [len(item.name) for item in self.layers])
        lines = [f"recalibrate_batchnorm(mode={self.mode!r}, estimator={self.estimator!r}): "
                 f"{len(self.layers)} layers, {self.passes} passes, {self.batches} batches",
                 f"{'layer':<{width}}  {'level':>5}  {'count':>10}  {'mean shift (std)':>16}  "
                 f"{'var old/new':>11}"]
        for item in self.layers:
            lines.append(f"{item.name:<{width}}  {item.level:>5}  {item.count:>10}  "
                         f"{item.mean_shift:>16.3g}  {item.variance_ratio:>11.3g}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"BatchNormRecalibration(mode={self.mode!r}, estimator={self.estimator!r}, "
                f"layers={len(self.layers)}, passes={self.passes})")


# -- arguments ------------------------------------------------------------------------------------

def _choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def _batchnorm_layers(model: Any) -> List[Any]:
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(f"model must be a Keras model or layer, got {type(model).__name__}")
    # _flatten_layers walks nested models and layers tracked as attributes, each layer once.
    return [layer for layer in model._flatten_layers(include_self=True, recursive=True)
            if isinstance(layer, keras.layers.BatchNormalization)]


def _select(found: List[Any], layers: Any) -> List[Any]:
    if not found:
        raise ValueError("the model has no keras.layers.BatchNormalization layer")
    if layers is None:
        chosen = list(found)
    else:
        items = [layers] if isinstance(layers, (str, keras.layers.Layer)) else list(layers)
        picked = set()
        for item in items:
            if isinstance(item, str):
                matches = [layer for layer in found if layer.name == item]
                if not matches:
                    names = ", ".join(repr(layer.name) for layer in found)
                    raise ValueError(f"layers=: the model has no BatchNormalization layer named "
                                     f"{item!r}; its BatchNormalization layers are {names}")
                if len(matches) > 1:
                    raise ValueError(f"layers=: {len(matches)} BatchNormalization layers are "
                                     f"named {item!r}; pass the layer objects instead")
                picked.add(id(matches[0]))
            elif isinstance(item, keras.layers.BatchNormalization):
                if not any(layer is item for layer in found):
                    raise ValueError(f"layers=: layer {item.name!r} is not part of this model")
                picked.add(id(item))
            else:
                raise TypeError("layers= must hold BatchNormalization layers or their names; "
                                f"got {type(item).__name__}")
        if not picked:
            raise ValueError("layers= selects no layer")
        chosen = [layer for layer in found if id(layer) in picked]
    for layer in chosen:
        if not layer.built or layer.moving_mean is None:
            raise ValueError(f"BatchNormalization layer {layer.name!r} is not built (it has no "
                             "moving statistics yet); call the model on data first")
    return chosen


# -- data -----------------------------------------------------------------------------------------

def _tf():
    return sys.modules.get("tensorflow")


def _features(element: Any) -> Any:
    """``x`` of an ``x``, ``(x, y)`` or ``(x, y, sample_weight)`` element, as Keras unpacks it
    (``keras.utils.unpack_x_y_sample_weight``: lists count as tuples)."""
    if isinstance(element, list):
        element = tuple(element)
    if isinstance(element, tuple) and 1 <= len(element) <= 3:
        return element[0]
    return element


def _rows(x: Any) -> Optional[int]:
    first = keras.tree.flatten(x)[0]
    shape = getattr(first, "shape", None)
    return None if shape is None or len(shape) == 0 else shape[0]


class _Data:
    """The batches ``x`` of the data, as ``model.predict`` would read them, once or again."""

    def __init__(self, data: Any, steps: Optional[int], batch_size: Optional[int]):
        tf = _tf()
        self.length: Optional[int] = None
        self._once: Optional[Iterator] = None
        if isinstance(data, (str, os.PathLike)):
            data = load_npy(data)  # a memory map: rows are read as batches are sliced
        if tf is not None and isinstance(data, (tf.SparseTensor, tf.RaggedTensor)):
            raise TypeError(f"recalibrate_batchnorm() needs dense data; got {type(data).__name__}")
        if isinstance(data, np.ndarray) or keras.ops.is_tensor(data) or (
                tf is not None and isinstance(data, tf.Tensor)):
            array = data if isinstance(data, np.ndarray) else np.asarray(
                keras.ops.convert_to_numpy(data))
            if array.ndim == 0:
                raise ValueError("recalibrate_batchnorm() needs data with a batch axis; got a "
                                 "scalar")
            size = batch_size or _DEFAULT_BATCH_SIZE
            count = -(-array.shape[0] // size)
            if steps is not None:
                count = min(count, steps)
            self.length = count
            self._make = lambda: (array[i * size:(i + 1) * size] for i in range(count))
        elif tf is not None and isinstance(data, tf.data.Dataset):
            dataset = data if batch_size is None else data.batch(batch_size)
            cardinality = int(dataset.cardinality())
            if cardinality == int(tf.data.INFINITE_CARDINALITY) and steps is None:
                raise ValueError("recalibrate_batchnorm() got a dataset that repeats forever; "
                                 "pass steps= (the number of batches to read) or drop .repeat()")
            if steps is not None:
                dataset = dataset.take(steps)
                cardinality = int(dataset.cardinality())
            self.length = cardinality if cardinality >= 0 else None
            self._make = lambda: (_features(element) for element in dataset)
        elif isinstance(data, keras.utils.PyDataset):
            if batch_size is not None:
                raise ValueError("batch_size applies to arrays and tf.data datasets; a PyDataset "
                                 "yields its own batches")
            count = data.num_batches
            if count is None and steps is None:
                raise ValueError("recalibrate_batchnorm() got an infinite PyDataset (num_batches "
                                 "is None); pass steps=")
            count = steps if count is None else count if steps is None else min(count, steps)
            self.length = count
            self._make = lambda: (_features(data[i]) for i in range(count))
        elif hasattr(data, "__iter__"):
            if batch_size is not None:
                raise ValueError("batch_size applies to arrays and tf.data datasets; iterables "
                                 "and generators yield their own batches")
            if hasattr(data, "__len__"):
                self.length = len(data) if steps is None else min(len(data), steps)
            if iter(data) is data:  # a generator or iterator: it can be read once
                self._once = itertools.islice(data, steps) if steps is not None else data
                self._make = None
            else:
                self._make = lambda: (_features(element)
                                      for element in itertools.islice(data, steps))
        else:
            raise TypeError(
                f"recalibrate_batchnorm() cannot read {type(data).__name__}; it accepts NumPy "
                "arrays, memmaps and .npy paths, tensors, tf.data.Dataset, keras.utils.PyDataset "
                "and iterables or generators of batches x, (x, y) or (x, y, w)"
            )
        self._peeked: List[Any] = []

    @property
    def reiterable(self) -> bool:
        return self._make is not None

    def first(self) -> Any:
        """The first batch (for tracing); a one-shot iterator keeps it for the pass."""
        if self._make is not None:
            for x in self._make():
                return x
            raise ValueError("recalibrate_batchnorm() received no batches")
        if not self._peeked:
            element = next(self._once, None)
            if element is None:
                raise ValueError("recalibrate_batchnorm() received no batches")
            self._peeked.append(_features(element))
        return self._peeked[0]

    def batches(self) -> Iterator[Any]:
        if self._make is not None:
            return self._make()
        if self._once is None:
            raise ValueError("this generator was already read; mode='inference' needs a new pass")
        once, self._once = self._once, None
        return itertools.chain(self._peeked, (_features(element) for element in once))


# -- hooks on the layers --------------------------------------------------------------------------

class _Taps:
    """Instance-level ``call`` hooks on every BatchNormalization layer, removed on exit.

    What a hook does depends on the pass being traced: record the layer's input (a target),
    normalize with statistics computed in an earlier pass (``overrides``), normalize by batch
    statistics (``train``), and stop the forward call once every target input is recorded.
    """

    def __init__(self, layers: List[Any], targets: List[Any]):
        self.layers = layers
        self.slot = {id(layer): i for i, layer in enumerate(targets)}
        self.train = False
        self.overrides: Dict[int, List[Tuple[Any, Any]]] = {}
        self.wanted: Dict[int, int] = {}  # target id -> calls per forward to record
        self.record: Optional[List[Tuple[int, Any, Any]]] = None  # analysis: (id, input, output)
        # In-graph reduction of a captured input to a (count, mean, m2) state, or None to return
        # the input itself (reduced on the host).
        self.reduce: Optional[Any] = None
        self._captured: Dict[str, Any] = {}
        self._seen: Dict[int, int] = {}

    def __enter__(self) -> "_Taps":
        done = []
        try:
            for layer in self.layers:
                if "call" in layer.__dict__:
                    raise RuntimeError(f"layer {layer.name!r} already has an instance-level call "
                                       "(is recalibrate_batchnorm running on it already?)")
                layer.__dict__["call"] = self._hook(layer, layer.call)
                done.append(layer)
        except BaseException:
            for layer in done:
                del layer.__dict__["call"]
            raise
        return self

    def __exit__(self, *exc) -> None:
        for layer in self.layers:
            layer.__dict__.pop("call", None)

    def _hook(self, layer: Any, original: Any):
        def call(inputs, *args, **kwargs):
            return self._on_call(layer, original, inputs, args, kwargs)
        return call

    def start(self) -> None:
        """Called at the start of every trace (or eager forward)."""
        self._captured = {}
        self._seen = {}

    def captured(self) -> Dict[str, Any]:
        return dict(self._captured)

    def _on_call(self, layer, original, inputs, args, kwargs):
        key = id(layer)
        calls = self._seen[key] = self._seen.get(key, 0) + 1
        mask = kwargs.get("mask", args[1] if len(args) > 1 else None)
        if key in self.wanted and calls <= self.wanted[key]:
            if mask is not None:
                raise ValueError(f"BatchNormalization layer {layer.name!r} is called with a mask; "
                                 "recalibrate_batchnorm() computes statistics over every position "
                                 "and does not support masked inputs")
            self._captured[f"{self.slot[key]}:{calls}"] = (
                inputs if self.reduce is None else self.reduce(layer, inputs))
            if self.record is None and all(self._seen.get(k, 0) >= n
                                           for k, n in self.wanted.items()):
                raise _Stop()  # every wanted input is recorded: the rest is never traced
        if self.train:
            # As in fit(): batch statistics (frozen layers keep their moving statistics, by
            # Keras' rule), with the moving-average updates swallowed by the stateless scope.
            kwargs = dict(kwargs)
            kwargs["training"] = True
            if args:
                kwargs.setdefault("mask", mask)
                args = ()
            with keras.StatelessScope(initialize_variables=False):
                output = original(inputs, *args, **kwargs)
        elif key in self.overrides:
            with keras.StatelessScope(self.overrides[key], initialize_variables=False):
                output = original(inputs, *args, **kwargs)
        else:
            output = original(inputs, *args, **kwargs)
        if self.record is not None:
            self.record.append((key, inputs, output))
        return output


def _kept_axes(layer: Any, ndim: int) -> Tuple[int, ...]:
    axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    return tuple(sorted(int(a) % ndim for a in axes))


def _graph_reduction():
    """Under TensorFlow with the compiled op loaded: reduce each captured input inside the traced
    function with ``FastMoments>Moments`` (the same kernel), so only (count, mean, m2) leave the
    graph and TensorFlow overlaps the reduction with the rest of the forward pass."""
    if keras.backend.backend() != "tensorflow":
        return None
    from . import tf as fm_tf

    if not fm_tf.op_info()["loaded"]:
        return None  # the numpy_function fallback would only add a round trip: reduce on the host

    def reduce(layer, x):
        return fm_tf.moment_state(x, axis=_kept_axes(layer, len(x.shape)), threads=_OP_THREADS)
    return reduce


def _batch_spec(first: Any):
    """TensorSpecs of the batches with an unknown batch size: one trace serves every batch,
    the short last one included."""
    import tensorflow as tf

    def spec(t):
        t = tf.convert_to_tensor(t)
        return tf.TensorSpec((None,) + tuple(t.shape[1:]), t.dtype)
    return keras.tree.map_structure(spec, first)


def _compile(fn, first: Any):
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, input_signature=[_batch_spec(first)])
    if backend == "jax":
        import jax

        return jax.jit(fn)
    return fn  # torch/numpy: eager, like their predict without jit_compile


def _forward(model: Any, taps: _Taps):
    def step(x):
        taps.start()
        try:
            model(x, training=False)
        except _Stop:
            pass
        return taps.captured()
    return step


# -- levels: which layers must be measured before which --------------------------------------------

def _graph_dependencies(record, targets: set) -> Dict[int, set]:
    """For each target call, the targets whose outputs its input is computed from (TF graph)."""
    producers: Dict[str, set] = {}
    for key, _, output in record:
        if key in targets:
            for tensor in keras.tree.flatten(output):
                producers.setdefault(tensor.op.name, set()).add(key)
    deps: Dict[int, set] = {}
    for key, inputs, _ in record:
        if key not in targets:
            continue
        found = deps.setdefault(key, set())
        stack = [t.op for t in keras.tree.flatten(inputs)]
        seen = set()
        while stack:
            op = stack.pop()
            if op.name in seen:
                continue
            seen.add(op.name)
            if op.name in producers:
                found |= producers[op.name]  # their own inputs are accounted by their level
                continue
            stack.extend(t.op for t in op.inputs)
            stack.extend(op.control_inputs)
    return deps


def _levels(model: Any, taps: _Taps, targets: List[Any], first: Any, mode: str
            ) -> Tuple[Dict[int, int], Dict[int, int]]:
    """(level per target id, calls per forward per target id)."""
    keys = {id(layer) for layer in targets}
    taps.record, taps.wanted = [], {}
    try:
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            def probe(x):
                taps.start()
                model(x, training=False)
                return 0

            tf.function(probe).get_concrete_function(_batch_spec(first))
        else:
            taps.start()
            model(first, training=False)
        record = taps.record
    finally:
        taps.record = None
    calls: Dict[int, int] = {}
    order: Dict[int, int] = {}
    for position, (key, _, _) in enumerate(record):
        if key in keys:
            calls[key] = calls.get(key, 0) + 1
            order.setdefault(key, position)
    missing = [layer.name for layer in targets if id(layer) not in calls]
    if missing:
        raise ValueError("recalibrate_batchnorm(): these BatchNormalization layers are not called "
                         f"when the model runs on the data: {', '.join(missing)}")
    if mode == "train":
        return {key: 0 for key in calls}, calls
    if keras.backend.backend() == "tensorflow":
        deps = _graph_dependencies(record, keys)
    else:
        # Without a graph to read, each layer is assumed to depend on every layer called before.
        deps = {key: {k for k in calls if order[k] < order[key]} for key in calls}
    level: Dict[int, int] = {}
    for key in sorted(calls, key=order.get):
        before = [level[d] for d in deps.get(key, ()) if d != key and order[d] < order[key]]
        level[key] = 1 + max(before) if before else 0
    return level, calls


# -- statistics -----------------------------------------------------------------------------------

class _LayerStatistics:
    """Running statistics of one layer's inputs: the merged state, and for ``batch_mean`` the
    sums of per-batch ``m2`` and of per-batch degrees of freedom ``m - 1``."""

    def __init__(self, layer: Any, estimator: str):
        self.layer, self.estimator = layer, estimator
        self.state: Optional[Moments] = None
        self.within: Optional[np.ndarray] = None
        self.dof: Optional[np.ndarray] = None

    def add(self, x: Any) -> None:
        if isinstance(x, (tuple, list)):  # a state reduced in the graph by the op
            part = Moments.from_state(State.of([t.numpy() for t in x]))
        else:
            # TF eager tensors: .numpy() shares the CPU buffer (np.array() warns under NumPy 2)
            x = np.asarray(x.numpy() if hasattr(x, "numpy") else keras.ops.convert_to_numpy(x))
            part = compute(x, axis=_kept_axes(self.layer, x.ndim))  # one state per batch
        self.state = part if self.state is None else self.state.merge(part)
        if self.estimator == "batch_mean":
            count = np.asarray(part.count, dtype=np.float64)
            m2 = np.asarray(part.m2, dtype=np.float64)
            dof = np.maximum(count - 1, 0)
            self.within = m2 if self.within is None else self.within + m2
            self.dof = dof if self.dof is None else self.dof + dof

    def result(self) -> Tuple[np.ndarray, np.ndarray, int]:
        name = self.layer.name
        if self.state is None:
            raise ValueError(f"BatchNormalization layer {name!r} received no inputs")
        count = np.asarray(self.state.count, dtype=np.int64)
        mean = np.asarray(self.state.mean, dtype=np.float64)
        if self.estimator == "population":
            variance = np.asarray(self.state.m2, dtype=np.float64) / np.maximum(count, 1)
        else:
            if np.any(self.dof == 0):
                raise ValueError(f"estimator='batch_mean': layer {name!r} received batches of "
                                 "one value per channel only (m - 1 = 0); use a larger batch or "
                                 "estimator='population'")
            # Mean of the per-batch means weighted by m (= the pooled mean) and of the per-batch
            # variances x m/(m-1) weighted by m - 1 (each batch by its degrees of freedom).
            variance = self.within / self.dof
        shape = tuple(self.layer.moving_mean.shape)
        if mean.size != int(np.prod(shape)):
            raise ValueError(f"layer {name!r}: statistics of shape {mean.shape} do not fit its "
                             f"moving_mean of shape {shape}")
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(variance))):
            raise ValueError(f"BatchNormalization layer {name!r} received NaN or inf inputs; "
                             "no statistics were assigned")
        return mean.reshape(shape), variance.reshape(shape), int(count.max())


def _values(variable: Any) -> np.ndarray:
    """A copy of a Keras variable's values (its own ``__array__``; ``convert_to_numpy`` would reach
    the TF variable's, which warns under NumPy 2's copy protocol)."""
    return np.array(np.asarray(variable))


def _summary(layer: Any, mean: np.ndarray, variance: np.ndarray, count: int, level: int
             ) -> LayerRecalibration:
    eps = float(layer.epsilon)
    old_mean = np.asarray(_values(layer.moving_mean), dtype=np.float64)
    old_var = np.asarray(_values(layer.moving_variance), dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        shift = np.abs(mean - old_mean) / np.sqrt(variance + eps)
        ratio = (old_var + eps) / (variance + eps)
        log_ratio = np.abs(np.log(ratio))
    worst = int(np.nanargmax(log_ratio)) if np.any(~np.isnan(log_ratio)) else 0
    return LayerRecalibration(name=layer.name, count=count,
                              mean_shift=float(np.nanmax(shift)) if shift.size else 0.0,
                              variance_ratio=float(ratio.reshape(-1)[worst]), level=level)


# -- the public function --------------------------------------------------------------------------

def recalibrate_batchnorm(model, data, steps=None, *, batch_size=None, mode="inference",
                          estimator="population", layers=None, progress=False
                          ) -> BatchNormRecalibration:
    """Sets every BatchNormalization layer's moving mean/variance to the statistics of its inputs.

    Parameters
    ----------
    model : keras.Model or keras.layers.Layer
        Functional, Sequential or subclassed; BatchNormalization layers in nested models and
        layers are found too. The model must be built.
    data : array, tf.data.Dataset, keras.utils.PyDataset, iterable or generator
        As ``FastNorm.adapt`` and ``model.predict`` read it: NumPy arrays, memmaps, ``.npy``
        paths and tensors (cut into batches of ``batch_size``); batched ``tf.data`` datasets;
        PyDatasets, lists and generators of batches. Elements ``x``, ``(x, y)`` or ``(x, y, w)``;
        only ``x`` is used. ``mode="inference"`` reads the data once per level (see below): a
        generator, which can be read once, is accepted only when one pass is enough.
    steps : int, optional
        Read at most this many batches per pass. Required for a dataset that repeats forever
        and an infinite PyDataset (``ValueError`` without it).
    batch_size : int, optional
        Rows per batch for arrays (default 32, as ``predict``); for a ``tf.data`` dataset,
        batches its (unbatched) elements. With ``mode="train"`` it is the batch whose statistics
        the layers normalize by; with ``mode="inference"`` it changes only the speed.
    mode : {"inference", "train"}
        ``"inference"``: each layer gets the exact statistics of the inputs it receives when the
        model runs in inference mode with every BatchNormalization layer before it already
        recalibrated: what the deployed model sees. Layers are grouped in levels (a layer's
        level is one more than the highest level among the layers its input is computed from;
        read from the traced TensorFlow graph, or the call order under other backends); one pass
        per level, each stopping at the deepest input it needs. ``"train"``: one pass, the
        layers normalizing by batch statistics as in ``fit()`` (frozen layers, by Keras' rule,
        by their moving statistics), other layers (dropout) in inference mode, as PreciseBN.
    estimator : {"population", "batch_mean"}
        ``"population"``: the exact mean and (biased, as Keras' moving variance) variance of all
        the inputs, pooled with fastmoments' merge. ``"batch_mean"``: the BatchNorm paper's
        estimator, the mean of per-batch means and of per-batch variances x m/(m-1), a short
        last batch weighted by its size (means by m, variances by m - 1).
    layers : layer, name or list of them, optional
        Only these BatchNormalization layers (default: all, including ``trainable=False`` ones).
    progress : bool
        Show a Keras progress bar (batches over all passes).

    Returns
    -------
    BatchNormRecalibration
        Per layer: values per channel, largest mean shift in standard deviations, variance ratio
        old/new; print it for a table.

    Notes
    -----
    Only ``moving_mean`` and ``moving_variance`` change, all at once after the last pass: an
    error or Ctrl-C before leaves the model as it was. Other weights, ``trainable`` flags and
    ``momentum`` are untouched. Statistics are computed in float64 by the fastmoments kernel
    from the layer's input as it receives it (float16/bfloat16 under mixed precision) and cast
    to the variables' dtype. Masked calls raise ``ValueError``.
    """
    mode = _choice("mode", mode, _MODES)
    estimator = _choice("estimator", estimator, _ESTIMATORS)
    steps = check_count("steps", steps)
    batch_size = check_count("batch_size", batch_size)
    if not isinstance(progress, (bool, np.bool_)):
        raise TypeError(f"progress must be True or False, got {progress!r}")
    found = _batchnorm_layers(model)
    targets = _select(found, layers)
    source = _Data(data, steps, batch_size)

    results: Dict[int, Tuple[np.ndarray, np.ndarray, int]] = {}
    level_of: Dict[int, int] = {}
    batches_read = 0
    with _Taps(found, targets) as taps:
        first = source.first()
        level_of, calls = _levels(model, taps, targets, first, mode)
        passes = max(level_of.values()) + 1
        if passes > 1 and not source.reiterable:
            raise ValueError(f"mode='inference' needs {passes} passes over the data for this "
                             "model (one per level of BatchNormalization layers), but a generator "
                             "can be read once: pass an array, a list, a tf.data.Dataset or a "
                             "PyDataset, or use mode='train'")
        bar = None
        if progress:
            total = None if source.length is None else source.length * passes
            bar = keras.utils.Progbar(total, unit_name="batch", stateful_metrics=["pass"])
        taps.train = mode == "train"
        taps.reduce = _graph_reduction()
        for level in range(passes):
            members = [layer for layer in targets if level_of[id(layer)] == level]
            stats = {id(layer): _LayerStatistics(layer, estimator) for layer in members}
            taps.wanted = {id(layer): calls[id(layer)] for layer in members}
            # Layers of earlier levels normalize with their new statistics (not yet assigned).
            taps.overrides = {
                id(layer): [(layer.moving_mean, results[id(layer)][0]),
                            (layer.moving_variance, results[id(layer)][1])]
                for layer in targets if id(layer) in results
            }
            step = _compile(_forward(model, taps), first)
            by_slot = {taps.slot[id(layer)]: stats[id(layer)] for layer in members}
            for x in source.batches():
                rows = _rows(x)
                if rows == 0:
                    continue
                for name, value in step(x).items():
                    by_slot[int(name.split(":")[0])].add(value)
                batches_read += 1
                if bar is not None:
                    bar.add(1, values=[("pass", level + 1)])
            for layer in members:
                results[id(layer)] = stats[id(layer)].result()
        if bar is not None and source.length is None:
            bar.update(batches_read, finalize=True)

    report = [_summary(layer, *results[id(layer)], level_of[id(layer)]) for layer in targets]
    _assign(targets, results)
    return BatchNormRecalibration(report, mode=mode, estimator=estimator, passes=passes,
                                  batches=batches_read)


def _assign(targets: List[Any], results: Dict[int, Tuple[np.ndarray, np.ndarray, int]]) -> None:
    """All layers' statistics at once; restored as they were if anything interrupts it."""
    values = []
    for layer in targets:
        mean, variance, _ = results[id(layer)]
        values.append((layer.moving_mean, mean.astype(layer.moving_mean.dtype)))
        values.append((layer.moving_variance, variance.astype(layer.moving_variance.dtype)))
    old = [(variable, _values(variable)) for variable, _ in values]
    try:
        for variable, value in values:
            variable.assign(value)
    except BaseException:
        for variable, value in old:
            variable.assign(value)
        raise
