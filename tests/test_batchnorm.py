"""``fastmoments.keras.recalibrate_batchnorm`` against an independent reference.

The reference recalibrates layer by layer the obvious way: a sub-model up to the layer's input
(``model.predict`` in inference mode; eager calls with ``training=True`` in train mode), the
float64 two-pass statistics of ``tests/reference.py``, then the layer's variables assigned before
the next layer is measured. No hooks, no levels, no fastmoments code.
"""

import os

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from fastmoments.keras import recalibrate_batchnorm  # noqa: E402
from reference import reference as shared_reference  # noqa: E402

pytestmark = pytest.mark.tf

L = keras.layers
BATCH = 16
ROWS = 100  # 6 batches of 16 and a short one of 4


def images(shape, seed=0, rows=ROWS):
    rng = np.random.default_rng(seed)
    return (3.0 + 2.0 * rng.standard_normal((rows,) + shape)).astype(np.float32)


def stats_of(layer):
    return (np.asarray(layer.moving_mean, dtype=np.float64),
            np.asarray(layer.moving_variance, dtype=np.float64))


def perturb(model, seed=1):
    """Wrong moving statistics, as a short or stale training run leaves them."""
    rng = np.random.default_rng(seed)
    for layer in bn_layers(model):
        n = layer.moving_mean.shape[0]
        layer.moving_mean.assign(rng.normal(0, 3, n).astype(np.float32))
        layer.moving_variance.assign(rng.uniform(0.01, 50, n).astype(np.float32))


def bn_layers(model):
    return [layer for layer in model._flatten_layers()
            if isinstance(layer, L.BatchNormalization)]


def estimate(batches, axis, estimator):
    """float64 two-pass statistics of a layer's inputs (a list of per-batch arrays)."""
    keep = axis % batches[0].ndim
    if estimator == "population":
        r = shared_reference(np.concatenate(batches), keep)
        return r.mean.astype(np.float64), r.variance().astype(np.float64)
    # The paper's estimator: per-batch means weighted by the batch's values per channel m, per-batch
    # unbiased variances weighted by their degrees of freedom m - 1.
    means, variances, counts = [], [], []
    for b in batches:
        r = shared_reference(b, keep)
        means.append(r.mean.astype(np.float64))
        variances.append(r.variance(ddof=1).astype(np.float64))
        counts.append(r.count.astype(np.float64))
    means, variances, counts = map(np.array, (means, variances, counts))
    mean = (counts * means).sum(0) / counts.sum(0)
    variance = ((counts - 1) * variances).sum(0) / (counts - 1).sum(0)
    return mean, variance


def reference_recalibration(model, x, order, inputs_of, mode, estimator, batch_size=BATCH):
    """{layer name: (mean, variance)}; ``order`` lists the layers so that each comes after every
    layer its input depends on; ``inputs_of(layer)`` is a model from x to that layer's input."""
    saved = model.get_weights()
    out = {}
    try:
        for layer in order:
            sub = inputs_of(layer)
            if mode == "inference":
                full = np.asarray(sub.predict(x, batch_size=batch_size, verbose=0))
                batches = [full[i:i + batch_size] for i in range(0, len(x), batch_size)]
            else:
                batches = [np.asarray(sub(x[i:i + batch_size], training=True))
                           for i in range(0, len(x), batch_size)]
                model.set_weights(saved)  # training=True moved the moving averages
            mean, variance = estimate(batches, layer.axis, estimator)
            # values per channel: rows x positions
            out[layer.name] = (mean, variance, sum(b.size for b in batches) // mean.size)
            if mode == "inference":
                layer.moving_mean.assign(mean.astype(np.float32))
                layer.moving_variance.assign(variance.astype(np.float32))
    finally:
        model.set_weights(saved)
    return out


def assert_recalibrated(model, want, rtol=2e-5):
    for layer in bn_layers(model):
        if layer.name not in want:
            continue
        mean, variance = stats_of(layer)
        ref_mean, ref_var = want[layer.name][:2]
        scale = np.sqrt(ref_var)
        np.testing.assert_allclose(mean, ref_mean, rtol=0, atol=rtol * float(scale.max()),
                                   err_msg=f"{layer.name} mean")
        np.testing.assert_allclose(variance, ref_var, rtol=rtol, err_msg=f"{layer.name} variance")


# -- models ---------------------------------------------------------------------------------------

def sequential_cnn():
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((6, 6, 2)),
        L.Conv2D(4, 3, padding="same"), L.BatchNormalization(), L.ReLU(),
        L.Conv2D(5, 3, padding="same"), L.BatchNormalization(momentum=0.9), L.ReLU(),
        L.GlobalAveragePooling2D(), L.Dense(3), L.BatchNormalization(), L.Dense(2),
    ])


def functional_submodels(model):
    return lambda layer: keras.Model(model.inputs[0], layer.input)


def residual_channels_first():
    """Two parallel BN branches (one level), a BN after their sum, channels_first throughout."""
    keras.utils.set_random_seed(1)
    inp = keras.Input((2, 6, 6))
    a = L.Conv2D(3, 3, padding="same", data_format="channels_first", name="conv_a")(inp)
    a = L.BatchNormalization(axis=1, name="bn_a")(a)
    b = L.Conv2D(3, 1, data_format="channels_first", name="conv_b")(inp)
    b = L.BatchNormalization(axis=1, center=False, scale=False, name="bn_b")(b)
    s = L.ReLU()(L.Add()([a, b]))
    s = L.Conv2D(4, 3, padding="same", data_format="channels_first")(s)
    s = L.BatchNormalization(axis=1, synchronized=True, name="bn_sum")(s)
    out = L.Dense(2)(L.GlobalAveragePooling2D(data_format="channels_first")(s))
    return keras.Model(inp, out)


class Block(L.Layer):
    """A custom layer that holds a BatchNormalization (found through attribute tracking)."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.conv = L.Conv2D(filters, 3, padding="same")
        self.bn = L.BatchNormalization(momentum=0.5)

    def call(self, x, training=None):
        return keras.ops.relu(self.bn(self.conv(x), training=training))


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.block1 = Block(3)
        self.block2 = Block(4)
        self.pool = L.GlobalAveragePooling2D()
        self.bn_head = L.BatchNormalization()
        self.head = L.Dense(2)

    def call(self, x, training=None):
        h = self.pool(self.block2(self.block1(x, training=training), training=training))
        return self.head(self.bn_head(h, training=training))


def subclassed_model():
    keras.utils.set_random_seed(2)
    model = Subclassed()
    model(np.zeros((1, 6, 6, 2), np.float32))
    return model


def subclassed_inputs(model):
    """Functions from x to each BN input, written out from the model's structure."""
    def up_to(layer):
        def run(x, training=False):
            h = model.block1.conv(x)
            if layer is model.block1.bn:
                return h
            h = model.block2.conv(model.block1(x, training=training))
            if layer is model.block2.bn:
                return h
            return model.pool(model.block2(model.block1(x, training=training),
                                           training=training))
        run.predict = lambda x, batch_size, verbose: np.concatenate(
            [np.asarray(run(x[i:i + batch_size])) for i in range(0, len(x), batch_size)])
        return run
    return up_to


def nested_model():
    """A Sequential with a BN inside a Functional, then a BN of the outer model."""
    keras.utils.set_random_seed(3)
    inner = keras.Sequential([keras.Input((6, 6, 2)), L.Conv2D(3, 3, padding="same"),
                              L.BatchNormalization(name="inner_bn"), L.ReLU()], name="inner")
    inp = keras.Input((6, 6, 2))
    h = inner(inp)
    h = L.Conv2D(4, 3, padding="same")(h)
    h = L.BatchNormalization(name="outer_bn")(h)
    return keras.Model(inp, L.Dense(2)(L.GlobalAveragePooling2D()(h)))


def nested_inputs(model):
    inner = model.get_layer("inner")
    inner_bn = inner.get_layer("inner_bn")

    def up_to(layer):
        if layer is inner_bn:
            # The inner model's own sub-model; the inner model takes the outer input directly.
            return keras.Model(inner.inputs[0], inner_bn.input)
        return keras.Model(model.inputs[0], layer.input)
    return up_to


CASES = {
    "sequential": (sequential_cnn, functional_submodels, (6, 6, 2)),
    "residual_channels_first": (residual_channels_first, functional_submodels, (2, 6, 6)),
    "subclassed": (subclassed_model, subclassed_inputs, (6, 6, 2)),
    "nested": (nested_model, nested_inputs, (6, 6, 2)),
}


# -- against the reference ------------------------------------------------------------------------

@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("mode", ["inference", "train"])
@pytest.mark.parametrize("estimator", ["population", "batch_mean"])
def test_matches_reference(case, mode, estimator):
    build, submodels, shape = CASES[case]
    model = build()
    perturb(model)
    x = images(shape)
    order = bn_layers(model)
    if case == "subclassed":
        order = [model.block1.bn, model.block2.bn, model.bn_head]
    want = reference_recalibration(model, x, order, submodels(model), mode, estimator)
    report = recalibrate_batchnorm(model, x, batch_size=BATCH, mode=mode, estimator=estimator)
    assert_recalibrated(model, want)
    assert [item.name for item in report] == [layer.name for layer in bn_layers(model)]
    for item in report:
        assert item.count == want[item.name][2], item.name


def test_levels_and_passes():
    model = residual_channels_first()
    report = recalibrate_batchnorm(model, images((2, 6, 6)), batch_size=BATCH)
    # bn_a and bn_b read only the input: one level, measured in one pass; bn_sum after both.
    assert {item.name: item.level for item in report} == {"bn_a": 0, "bn_b": 0, "bn_sum": 1}
    assert report.passes == 2 and report.batches == 2 * 7
    assert recalibrate_batchnorm(model, images((2, 6, 6)), mode="train").passes == 1


def test_head_is_never_run():
    executed = []

    def count(x):
        executed.append(1)
        return x

    class Head(L.Layer):
        def call(self, x):
            out = tf.py_function(count, [x], x.dtype)
            out.set_shape(x.shape)
            return out

        def compute_output_shape(self, shape):
            return shape

    keras.utils.set_random_seed(0)
    inp = keras.Input((4,))
    h = L.BatchNormalization()(L.Dense(3)(inp))
    model = keras.Model(inp, Head()(L.BatchNormalization()(L.Dense(3)(h))))
    executed.clear()
    recalibrate_batchnorm(model, np.ones((40, 4), np.float32), batch_size=8)
    recalibrate_batchnorm(model, np.ones((40, 4), np.float32), batch_size=8, mode="train")
    assert executed == []


def test_short_last_batch_weighting():
    """batch_mean with batches of 5 and 1 rows: the short batch weighs 1/6 in the mean and nothing
    in the variance (m - 1 = 0 degrees of freedom), not 1/2 as a plain average of batches."""
    inp = keras.Input((1,))
    bn = L.BatchNormalization()
    model = keras.Model(inp, bn(inp))
    x = np.array([[0], [1], [2], [3], [4], [100]], np.float32)
    recalibrate_batchnorm(model, x, batch_size=5, estimator="batch_mean")
    mean, variance = stats_of(bn)
    np.testing.assert_allclose(mean, [110 / 6], rtol=1e-6)
    np.testing.assert_allclose(variance, [2.5], rtol=1e-6)  # var(0..4, ddof=1); 100 has no spread
    recalibrate_batchnorm(model, x, batch_size=5)
    np.testing.assert_allclose(stats_of(bn)[1], [np.var(x)], rtol=1e-6)


# -- data kinds -----------------------------------------------------------------------------------

class Batches(keras.utils.PyDataset):
    def __init__(self, x, batch_size, fail_at=None, error=RuntimeError, infinite=False):
        super().__init__()
        self.x, self.batch_size, self.fail_at, self.error = x, batch_size, fail_at, error
        self.infinite, self.calls = infinite, 0

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    @property
    def num_batches(self):
        return None if self.infinite else len(self)

    def __getitem__(self, i):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise self.error("failing on purpose")
        i %= len(self)
        return self.x[i * self.batch_size:(i + 1) * self.batch_size], np.zeros(1)


def one_level_cnn():
    """Two BN layers on one level (parallel branches): one pass, so the data kinds cost little."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 2))
    a = L.BatchNormalization()(L.Conv2D(3, 3, padding="same")(inp))
    b = L.BatchNormalization()(L.Conv2D(3, 1)(inp))
    return keras.Model(inp, L.Dense(2)(L.GlobalAveragePooling2D()(L.Add()([a, b]))))


def recalibrated(data, mode="inference", build=sequential_cnn, **kwargs):
    model = build()
    perturb(model)
    recalibrate_batchnorm(model, data, mode=mode, **kwargs)
    return [stats_of(layer) for layer in bn_layers(model)]


def assert_same(a, b, rtol=1e-6):
    for (m1, v1), (m2, v2) in zip(a, b):
        np.testing.assert_allclose(m1, m2, rtol=rtol, atol=rtol)
        np.testing.assert_allclose(v1, v2, rtol=rtol)


def test_data_kinds_agree(tmp_path):
    def kinds(data, **kwargs):
        return recalibrated(data, build=one_level_cnn, **kwargs)

    x = images((6, 6, 2))
    y = np.zeros(len(x), np.float32)
    base = kinds(x, batch_size=BATCH)
    batches = [x[i:i + BATCH] for i in range(0, len(x), BATCH)]
    ds = tf.data.Dataset.from_tensor_slices
    assert_same(base, kinds(ds(x).batch(BATCH)))
    assert_same(base, kinds(ds((x, y)).batch(BATCH)))
    assert_same(base, kinds(ds((x, y, y)).batch(BATCH)))
    assert_same(base, kinds(ds(x), batch_size=BATCH))  # unbatched elements
    assert_same(base, kinds(Batches(x, BATCH)))
    assert_same(base, kinds(batches))
    assert_same(base, kinds(tf.constant(x), batch_size=BATCH))
    np.save(tmp_path / "x.npy", x)
    assert_same(base, kinds(str(tmp_path / "x.npy"), batch_size=BATCH))
    # One level, one pass: a generator (read once) is enough in both modes.
    assert_same(base, kinds(b for b in batches))
    train = kinds(x, mode="train", batch_size=BATCH)
    assert_same(train, kinds((b for b in batches), mode="train"))
    assert_same(train, kinds(((b, b) for b in batches), mode="train"))
    assert_same(train, kinds([[b, b[:, 0, 0, 0]] for b in batches], mode="train"))


def test_steps_and_infinite_data():
    x = images((6, 6, 2))
    repeated = tf.data.Dataset.from_tensor_slices(x).batch(BATCH).repeat()
    with pytest.raises(ValueError, match="repeats forever"):
        recalibrated(repeated)
    with pytest.raises(ValueError, match="infinite PyDataset"):
        recalibrated(Batches(x, BATCH, infinite=True))
    base = recalibrated(x[:3 * BATCH], batch_size=BATCH)
    assert_same(base, recalibrated(repeated, steps=3))
    assert_same(base, recalibrated(Batches(x, BATCH, infinite=True), steps=3))
    assert_same(base, recalibrated(x, steps=3, batch_size=BATCH))
    model = sequential_cnn()
    report = recalibrate_batchnorm(model, repeated, steps=3)
    assert report[0].count == 3 * BATCH * 36 and report.batches == 3 * report.passes


def test_generator_with_several_passes_is_refused_before_anything_changes():
    model = sequential_cnn()
    before = model.get_weights()
    batches = (b for b in np.split(images((6, 6, 2), rows=64), 4))
    with pytest.raises(ValueError, match="3 passes"):
        recalibrate_batchnorm(model, batches)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


# -- safety ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_error_midway_leaves_model_unchanged(error):
    model = sequential_cnn()
    perturb(model)
    before = model.get_weights()
    x = images((6, 6, 2))
    # 7 batches per pass, 3 passes: fail in the middle of the second pass.
    with pytest.raises(error, match="on purpose"):
        recalibrate_batchnorm(model, Batches(x, BATCH, fail_at=1 + 7 + 3, error=error))
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert all("call" not in layer.__dict__ for layer in bn_layers(model))
    recalibrate_batchnorm(model, x)  # and it runs again afterwards


def test_only_moving_statistics_change():
    model = sequential_cnn()
    layers = bn_layers(model)
    layers[1].trainable = False
    perturb(model)
    flags = [(layer.trainable, layer.momentum, layer.epsilon) for layer in layers]
    before = [(v, np.asarray(v).copy()) for v in model.weights]
    recalibrate_batchnorm(model, images((6, 6, 2)), layers=[layers[0], layers[1].name])
    assert [(layer.trainable, layer.momentum, layer.epsilon) for layer in layers] == flags
    chosen = {id(v) for layer in layers[:2] for v in (layer.moving_mean, layer.moving_variance)}
    for variable, value in before:
        # the frozen (trainable=False) layer is included; the unselected one is left alone
        assert np.array_equal(value, np.asarray(variable)) != (id(variable) in chosen), \
            variable.path


def test_mixed_precision():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 2))
    h = L.Conv2D(4, 3, padding="same", dtype="mixed_float16")(inp)
    bn = L.BatchNormalization(dtype="mixed_float16")
    h = L.Conv2D(3, 3, padding="same", dtype="mixed_float16")(bn(h))
    bn2 = L.BatchNormalization(dtype="mixed_bfloat16")
    model = keras.Model(inp, L.Dense(2)(L.GlobalAveragePooling2D()(bn2(h))))
    perturb(model)
    x = images((6, 6, 2))
    want = reference_recalibration(model, x, [bn, bn2], functional_submodels(model),
                                   "inference", "population")
    recalibrate_batchnorm(model, x, batch_size=BATCH)
    assert bn.moving_mean.dtype == "float32"
    assert_recalibrated(model, want, rtol=1e-3)  # the float16 inputs themselves round 5e-4


def test_report_values():
    model = sequential_cnn()
    perturb(model)
    layer = bn_layers(model)[0]
    old_mean, old_var = stats_of(layer)
    report = recalibrate_batchnorm(model, images((6, 6, 2)))
    new_mean, new_var = stats_of(layer)
    eps = layer.epsilon
    item = report[layer.name]
    assert item.count == ROWS * 36 and item.level == 0
    np.testing.assert_allclose(item.mean_shift,
                               np.max(np.abs(new_mean - old_mean) / np.sqrt(new_var + eps)),
                               rtol=1e-5)
    ratios = (old_var + eps) / (new_var + eps)
    np.testing.assert_allclose(item.variance_ratio, ratios[np.argmax(np.abs(np.log(ratios)))],
                               rtol=1e-5)
    text = str(report)
    assert layer.name in text and "var old/new" in text
    assert report.to_dict()["layers"][0]["name"] == layer.name


def test_progress_bar(capsys):
    recalibrated(images((6, 6, 2)), batch_size=BATCH, progress=True)
    assert "21/21" in capsys.readouterr().out


def test_bad_arguments():
    model = sequential_cnn()
    x = images((6, 6, 2))
    with pytest.raises(ValueError, match="mode"):
        recalibrate_batchnorm(model, x, mode="eval")
    with pytest.raises(ValueError, match="estimator"):
        recalibrate_batchnorm(model, x, estimator="ema")
    with pytest.raises(ValueError, match="no BatchNormalization layer named 'nope'"):
        recalibrate_batchnorm(model, x, layers="nope")
    with pytest.raises(TypeError, match="layers="):
        recalibrate_batchnorm(model, x, layers=[model.layers[0]])
    with pytest.raises(ValueError, match="batch_size"):
        recalibrate_batchnorm(model, [x[:16]], batch_size=4)
    with pytest.raises(TypeError, match="steps"):
        recalibrate_batchnorm(model, x, steps=1.5)
    with pytest.raises(TypeError, match="progress"):
        recalibrate_batchnorm(model, x, progress="yes")
    with pytest.raises(TypeError, match="cannot read"):
        recalibrate_batchnorm(model, 3)
    with pytest.raises(ValueError, match="no batches"):
        recalibrate_batchnorm(model, [])
    with pytest.raises(ValueError, match="no keras.layers.BatchNormalization"):
        recalibrate_batchnorm(keras.Sequential([keras.Input((2,)), L.Dense(1)]), x)
    with pytest.raises(ValueError, match="NaN or inf"):
        recalibrate_batchnorm(model, np.full((4, 6, 6, 2), np.nan, np.float32))
    with pytest.raises(ValueError, match="m - 1 = 0"):
        inp = keras.Input((3,))
        recalibrate_batchnorm(keras.Model(inp, L.BatchNormalization()(inp)),
                              np.ones((4, 3), np.float32), batch_size=1, estimator="batch_mean")


def test_digits_recovers_inference_accuracy():
    """The issue's example: 3-block CNN, BN momentum 0.99, 2 epochs at batch 16 on load_digits."""
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    keras.utils.set_random_seed(0)
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], digits.target[order]
    x_train, y_train, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]

    def block(filters):
        return [L.Conv2D(filters, 3, padding="same", use_bias=False), L.BatchNormalization(),
                L.ReLU()]

    model = keras.Sequential([keras.Input((8, 8, 1)), *block(16), *block(32), L.MaxPooling2D(),
                              *block(64), L.GlobalAveragePooling2D(),
                              L.Dense(10, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x_train, y_train, epochs=2, batch_size=16, verbose=0)

    def accuracy(training):
        return float(np.mean(np.argmax(np.asarray(model(x_test, training=training)), -1)
                             == y_test))

    batch_stats, before = accuracy(True), accuracy(False)
    assert before < batch_stats - 0.3  # the failure the issue describes
    recalibrate_batchnorm(model, x_train)
    assert accuracy(False) >= batch_stats - 0.01


@pytest.mark.parametrize("mode", ["inference", "train"])
def test_host_reduction_matches_reference(monkeypatch, mode):
    """The path other backends (and TF without the compiled op) take: inputs leave the traced
    function and are reduced by fastmoments.compute on the host."""
    import fastmoments._batchnorm as bn

    monkeypatch.setattr(bn, "_graph_reduction", lambda: None)
    model = sequential_cnn()
    perturb(model)
    x = images((6, 6, 2))
    want = reference_recalibration(model, x, bn_layers(model), functional_submodels(model), mode,
                                   "batch_mean")
    recalibrate_batchnorm(model, x, batch_size=BATCH, mode=mode, estimator="batch_mean")
    assert_recalibrated(model, want)


@pytest.mark.parametrize("backend", ["jax"])
def test_other_backends(backend):
    """Backend-neutral path (jax.jit, host reduction, levels from the call order): a residual
    model recalibrated under KERAS_BACKEND=jax against sub-model predicts in float64. (The numpy
    backend passed the same check by hand; left out to keep the file fast.)"""
    import json
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import json, sys, numpy as np
        try:
            import keras
            __import__(keras.backend.backend())
        except ImportError as exc:
            print("SKIP", exc); raise SystemExit(0)
        from fastmoments.keras import recalibrate_batchnorm
        L = keras.layers  # (no set_random_seed: it would import TensorFlow)
        inp = keras.Input((6, 6, 2))
        a = L.BatchNormalization(name="bn_a")(L.Conv2D(3, 3, padding="same")(inp))
        b = L.BatchNormalization(name="bn_b")(L.Conv2D(3, 1)(inp))
        h = L.Conv2D(4, 3, padding="same")(L.ReLU()(L.Add()([a, b])))
        s = L.BatchNormalization(name="bn_s")(h)
        model = keras.Model(inp, L.Dense(2)(L.GlobalAveragePooling2D()(s)))
        x = (3 + 2 * np.random.default_rng(0).standard_normal((100, 6, 6, 2))).astype("float32")
        report = recalibrate_batchnorm(model, x, batch_size=16)
        out = {"passes": report.passes, "tf": "tensorflow" in sys.modules}
        for name in ["bn_a", "bn_b", "bn_s"]:
            layer = model.get_layer(name)
            sub = keras.Model(model.inputs[0], layer.input)
            y = np.asarray(sub(x, training=False), np.float64)
            y = y.reshape(-1, y.shape[-1])
            out[name] = [np.asarray(layer.moving_mean).tolist(),
                         np.asarray(layer.moving_variance).tolist(),
                         y.mean(0).tolist(), y.var(0).tolist()]
        print(json.dumps(out))
    """)
    env = dict(os.environ, KERAS_BACKEND=backend)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    if out.stdout.startswith("SKIP"):
        pytest.skip(f"Keras {backend} backend not importable: {out.stdout.strip()}")
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["passes"] == 3  # no graph to read: one level per layer in call order
    assert got["tf"] is False
    for name in ["bn_a", "bn_b", "bn_s"]:
        mean, variance, ref_mean, ref_var = map(np.array, got[name])
        np.testing.assert_allclose(mean, ref_mean, rtol=0, atol=1e-5 * np.sqrt(ref_var).max())
        np.testing.assert_allclose(variance, ref_var, rtol=1e-5)
