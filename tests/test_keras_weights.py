"""``FastNorm.adapt(sample_weight=, mask_value=)``, Keras masks, and the same through
``reset_state=False``, ``adapt_all`` and the JAX backend: against references built by hand
(rows repeated ``k`` times for integer weights, masked values removed)."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import fastmoments  # noqa: E402
from fastmoments.keras import FastNorm, adapt_all  # noqa: E402
from reference import reference as shared_reference  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::fastmoments.tf.OpFallbackWarning")


def reference(x, keep):
    r = shared_reference(x, tuple(keep))
    return r.mean.astype(np.float64), r.variance().astype(np.float64)


def assert_layer(layer, mean, var, rtol=1e-6):
    np.testing.assert_allclose(np.asarray(layer.adapt_mean, np.float64), mean, rtol=rtol, atol=0)
    np.testing.assert_allclose(np.asarray(layer.adapt_variance, np.float64), var, rtol=rtol, atol=0)


def data(n=600, d=3, seed=0):
    rng = np.random.default_rng(seed)
    x = (1000 + 10 * rng.standard_normal((n, d))).astype(np.float32)
    k = rng.integers(0, 4, n)
    return x, k


def repeated(x, k):
    """The reference for integer weights: each row repeated k times."""
    return reference(np.repeat(x, k, axis=0), (-1,))


def masked_columns(x, keep_mask):
    """The reference for a mask: per feature, the values left after removing the masked ones."""
    cols = [x[:, j][keep_mask[:, j]].astype(np.float64) for j in range(x.shape[1])]
    return np.array([c.mean() for c in cols]), np.array([c.var() for c in cols])


# -- sample_weight ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["ndarray", "tensor", "npy", "memmap"])
def test_sample_weight_array_equals_repeated_rows(kind, tmp_path):
    x, k = data()
    src = x
    if kind == "tensor":
        src = tf.constant(x)
    elif kind in ("npy", "memmap"):
        np.save(tmp_path / "x.npy", x)
        src = str(tmp_path / "x.npy") if kind == "npy" else np.load(tmp_path / "x.npy", mmap_mode="r")
    layer = FastNorm(dtype="float64")
    layer.adapt(src, sample_weight=k)
    assert_layer(layer, *repeated(x, k), rtol=1e-13)


def _weighted_sources(x, k):
    w = k.astype(np.float32)
    y = np.zeros(len(x))
    yield "batched", dict(data=tf.data.Dataset.from_tensor_slices((x, y, w)).batch(64))
    yield "unbatched", dict(data=tf.data.Dataset.from_tensor_slices((x, y, w)))
    yield "unbatched_batch_size", dict(data=tf.data.Dataset.from_tensor_slices((x, y, w)), batch_size=50)
    yield "progress", dict(data=tf.data.Dataset.from_tensor_slices((x, y, w)).batch(64), progress=True)
    yield "list", dict(data=[(x[i:i + 100], y[i:i + 100], w[i:i + 100]) for i in range(0, len(x), 100)])
    yield "generator", dict(data=((x[i:i + 70], y[i:i + 70], w[i:i + 70]) for i in range(0, len(x), 70)))


@pytest.mark.parametrize("kind", [k for k, _ in _weighted_sources(*data(10))])
def test_sample_weight_true_reads_w_of_elements(kind, tf_route, capsys):
    x, k = data()
    kwargs = dict(_weighted_sources(x, k))[kind]
    layer = FastNorm(dtype="float64")
    layer.adapt(sample_weight=True, **kwargs)
    assert_layer(layer, *repeated(x, k), rtol=1e-12)
    # Default: the weights are ignored, as Keras does.
    plain = FastNorm(dtype="float64")
    plain.adapt(**dict(_weighted_sources(x, k))[kind])
    assert_layer(plain, *reference(x, (-1,)), rtol=1e-12)


def test_sample_weight_temporal_and_ragged(tf_route):
    rng = np.random.default_rng(3)
    seq = rng.normal(5, 2, (30, 8, 2))
    k = rng.integers(0, 3, (30, 8))  # one weight per step
    layer = FastNorm()
    layer.adapt(seq, sample_weight=k)
    flat = np.repeat(seq.reshape(-1, 2), k.reshape(-1), axis=0)
    assert_layer(layer, *reference(flat, (-1,)))
    ds = tf.data.Dataset.from_tensor_slices((seq, np.zeros(30), k.astype(np.float64))).batch(7)
    layer = FastNorm()
    layer.adapt(ds, sample_weight=True)
    assert_layer(layer, *reference(flat, (-1,)))
    # Ragged sequences: one weight per sequence.
    lengths = rng.integers(1, 6, 20)
    values = rng.normal(-3, 1, (int(lengths.sum()), 2))
    rt = tf.RaggedTensor.from_row_lengths(values, lengths)
    ks = rng.integers(0, 3, 20)
    want = reference(np.repeat(values, np.repeat(ks, lengths), axis=0), (-1,))
    layer = FastNorm()
    layer.adapt(rt, sample_weight=ks)
    assert_layer(layer, *want)
    ds = tf.data.Dataset.from_tensor_slices((rt, np.zeros(20), ks.astype(np.float32))).batch(6)
    layer = FastNorm()
    layer.adapt(ds, sample_weight=True)
    assert_layer(layer, *want)


@pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy:DeprecationWarning")
def test_sample_weight_reset_state_false_and_saving(tf_route, tmp_path):
    x, k = data(900)
    layer = FastNorm(dtype="float64")
    layer.adapt(x[:300], sample_weight=k[:300])
    ds = tf.data.Dataset.from_tensor_slices((x[300:600], k[300:600], k[300:600].astype(np.float64)))
    layer.adapt(ds.batch(40), sample_weight=True, reset_state=False)
    inputs = keras.Input(shape=(3,), dtype="float64")
    keras.Model(inputs, layer(inputs)).save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras").layers[1]
    loaded.adapt(x[600:], reset_state=False)  # unweighted data merges as unit weights
    kk = np.r_[k[:600], np.ones(300, np.int64)]
    assert_layer(loaded, *repeated(x, kk), rtol=1e-12)
    assert loaded._exact_state.state.weighted


def test_sample_weight_bad_input_leaves_layer_untouched(tf_route):
    x, k = data(100)
    layer = FastNorm()
    layer.adapt(x)
    before = [np.asarray(v).copy() for v in (layer.adapt_mean, layer.adapt_variance)]
    ds_xy = tf.data.Dataset.from_tensor_slices((x, k)).batch(10)
    cases = [
        (dict(data=x, sample_weight=True), "for array data pass the weights as an array"),
        (dict(data=ds_xy, sample_weight=True), r"w of \(x, y, w\).*no weights"),
        (dict(data=ds_xy, sample_weight=k), "goes with array data"),
        (dict(data=[(x, k)], sample_weight=True), r"w of \(x, y, w\) batches.*no weights"),
        (dict(data=x, sample_weight=k[:10]), "does not align with the leading axes"),
        (dict(data=x, sample_weight=np.r_[-1.0, k[1:]]), "weights must be non-negative, got -1.0"),
        (dict(data=x, sample_weight=np.r_[np.nan, k[1:]]), "weights must be finite, got NaN"),
        (dict(data=tf.data.Dataset.from_tensor_slices((x, k, np.r_[np.inf, k[1:]])).batch(10),
              sample_weight=True), "weights must be finite, got an infinite weight"),
        (dict(data=x, mask_value="pad"), "mask_value 'pad'.*not a value of the data's dtype float32"),
        (dict(data=x.astype(np.int32), mask_value=0.5), "mask_value 0.5.*int32"),
        (dict(data=tf.data.Dataset.from_tensor_slices(x.astype(np.uint8)).batch(8), mask_value=-1),
         "mask_value -1.*uint8"),
        (dict(data=x, mask_value=np.nan), "nan_policy='omit'"),
        (dict(data=x, reset_state=False, sample_weight=k[:5]), "does not align"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            layer.adapt(**kwargs)
        after = [np.asarray(v) for v in (layer.adapt_mean, layer.adapt_variance)]
        for a, b in zip(before, after):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(TypeError, match="sample_weight must be"):
        layer.adapt(x, sample_weight="w")


# -- masks ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["ndarray", "tensor", "dataset", "unbatched", "batches", "progress"])
def test_mask_value_drops_padding(kind, tf_route):
    rng = np.random.default_rng(7)
    x = (50 + rng.standard_normal((400, 3))).astype(np.float32)
    x[rng.random(x.shape) < 0.3] = -1.0  # padding
    src = {"ndarray": x, "tensor": tf.constant(x),
           "dataset": tf.data.Dataset.from_tensor_slices(x).batch(32),
           "unbatched": tf.data.Dataset.from_tensor_slices(x),
           "batches": [x[i:i + 50] for i in range(0, 400, 50)],
           "progress": tf.data.Dataset.from_tensor_slices(x).batch(32)}[kind]
    layer = FastNorm()
    layer.adapt(src, mask_value=-1, progress=kind == "progress")
    assert_layer(layer, *masked_columns(x, x != -1))


def test_mask_value_integer_and_ragged_data(tf_route):
    rng = np.random.default_rng(8)
    x = rng.integers(0, 9, (300, 2)).astype(np.int16)
    layer = FastNorm()
    layer.adapt(x, mask_value=0)
    assert_layer(layer, *masked_columns(x, x != 0))
    seqs = tf.ragged.constant([[[1.0, 0.0], [3.0, 4.0]], [[0.0, 0.0]], [[5.0, 2.0], [7.0, 0.0], [9.0, 6.0]]],
                              ragged_rank=1)
    values = seqs.flat_values.numpy()
    want = masked_columns(values, values != 0)
    layer = FastNorm()
    layer.adapt(seqs, mask_value=0.0)
    assert_layer(layer, *want)
    layer = FastNorm()
    layer.adapt(tf.data.Dataset.from_tensors(seqs), mask_value=0.0)
    assert_layer(layer, *want)


def test_keras_mask_of_tensors(tf_route):
    rng = np.random.default_rng(9)
    x = rng.normal(2, 3, (40, 7, 3)).astype(np.float32)
    x[:, 5:] = 0.0  # padded steps
    masked = keras.layers.Masking(mask_value=0.0)(tf.constant(x))
    assert getattr(masked, "_keras_mask", None) is not None
    mask = masked._keras_mask.numpy()
    want = reference(x[mask], (-1,))
    layer = FastNorm()
    layer.adapt(masked)
    assert_layer(layer, *want)
    # With a mask value and weights too: all three combine.
    k = rng.integers(0, 3, 40)
    layer = FastNorm()
    layer.adapt(masked, sample_weight=k, mask_value=x[0, 0, 0])
    kk = np.broadcast_to(k[:, None, None], x.shape)
    keep = mask[..., None] & (x != x[0, 0, 0])
    cols = [np.repeat(x[..., j][keep[..., j]], kk[..., j][keep[..., j]]).astype(np.float64) for j in range(3)]
    assert_layer(layer, [c.mean() for c in cols], [c.var() for c in cols])
    # Batches carrying masks.
    layer = FastNorm()
    masking = keras.layers.Masking(mask_value=0.0)
    layer.adapt([masking(tf.constant(x[:20])), masking(tf.constant(x[20:]))])
    assert_layer(layer, *want)


def test_mask_value_with_nan_omit_and_reset_state(tf_route):
    rng = np.random.default_rng(10)
    x = rng.normal(0, 1, (500, 2))
    x[rng.random(x.shape) < 0.1] = np.nan
    x[rng.random(x.shape) < 0.2] = 99.0
    layer = FastNorm(dtype="float64")
    layer.adapt(x[:250], mask_value=99, nan_policy="omit")
    layer.adapt(tf.data.Dataset.from_tensor_slices(x[250:]).batch(16), mask_value=99,
                nan_policy="omit", reset_state=False)
    keep = (x != 99) & ~np.isnan(x)
    assert_layer(layer, *masked_columns(x, keep), rtol=1e-12)


# -- adapt_all ------------------------------------------------------------------------------------

def test_adapt_all_sample_weight_and_mask_value(tf_route):
    rng = np.random.default_rng(11)
    cols = {"a": rng.normal(10, 2, 400), "b": rng.integers(0, 5, 400).astype(np.int32)}
    k = rng.integers(0, 4, 400)
    y = np.zeros(400)
    want_a = reference(np.repeat(cols["a"], k), ())
    want_b = reference(np.repeat(cols["b"], k), ())
    for data, kwargs in [
        (tf.data.Dataset.from_tensor_slices((cols, y, k.astype(np.float32))).batch(32), {"sample_weight": True}),
        ([({n: c[i:i + 100] for n, c in cols.items()}, y[i:i + 100], k[i:i + 100]) for i in range(0, 400, 100)],
         {"sample_weight": True}),
        (cols, {"sample_weight": k}),
    ]:
        norms = {"a": FastNorm(axis=None), "b": FastNorm(axis=None)}
        adapt_all(norms, data, **kwargs)
        assert_layer(norms["a"], *want_a)
        assert_layer(norms["b"], *want_b)
    norms = {"a": FastNorm(axis=None), "b": FastNorm(axis=None)}
    adapt_all(norms, tf.data.Dataset.from_tensor_slices(cols).batch(50), mask_value=0)
    assert_layer(norms["b"], *reference(cols["b"][cols["b"] != 0], ()))
    assert_layer(norms["a"], *reference(cols["a"], ()))
    with pytest.raises(ValueError, match=r"w of \(features, y, w\)"):
        adapt_all({"a": FastNorm(axis=None)}, tf.data.Dataset.from_tensor_slices((cols, y)).batch(8),
                  sample_weight=True)
    with pytest.raises(ValueError, match="mask_value 0.5.*int32"):
        adapt_all({"a": FastNorm(axis=None), "b": FastNorm(axis=None)},
                  tf.data.Dataset.from_tensor_slices(cols).batch(8), mask_value=0.5)


# -- JAX backend ----------------------------------------------------------------------------------

def test_weights_and_masks_under_jax(tmp_path):
    x, k = data(300)
    x[::7, 1] = -5.0
    np.savez(tmp_path / "d.npz", x=x, k=k)
    code = textwrap.dedent(f"""
        import json, sys, numpy as np
        try:
            import keras
        except ImportError as exc:
            print("SKIP", exc); raise SystemExit(0)
        assert keras.backend.backend() == "jax"
        from fastmoments.keras import FastNorm
        d = np.load({str(tmp_path / "d.npz")!r})
        a = FastNorm(); a.adapt(d["x"], sample_weight=d["k"])
        b = FastNorm(); b.adapt(keras.ops.convert_to_tensor(d["x"][:150]), mask_value=-5)
        b.adapt(((d["x"][i:i + 50],) for i in range(150, 300, 50)), mask_value=-5, reset_state=False)
        print(json.dumps({{"tf": "tensorflow" in sys.modules,
                          "a": [np.asarray(a.adapt_mean).tolist(), np.asarray(a.adapt_variance).tolist()],
                          "b": [np.asarray(b.adapt_mean).tolist(), np.asarray(b.adapt_variance).tolist()]}}))
    """)
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    if out.stdout.startswith("SKIP"):
        pytest.skip(f"Keras jax backend not importable: {out.stdout.strip()}")
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["tf"] is False
    np.testing.assert_allclose(got["a"], repeated(x, k), rtol=1e-6)
    np.testing.assert_allclose(got["b"], masked_columns(x, x != -5), rtol=1e-6)
