"""``fastmoments.keras.FastNorm`` against a float64 two-pass reference and against
``keras.layers.Normalization`` (outputs, weights, saving), over every input kind it reads."""

import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import fastmoments  # noqa: E402
from fastmoments.keras import FastNorm, FastNormWarning, adapt_all  # noqa: E402
from reference import reference as shared_reference  # noqa: E402

# Datasets go through fastmoments.tf, whose op-or-fallback choice is tested in test_tf.py; the
# ``tf_route`` fixture runs the dataset tests here on both paths.
pytestmark = pytest.mark.filterwarnings("ignore::fastmoments.tf.OpFallbackWarning")


# -- reference ---------------------------------------------------------------------------------
def reference(x, keep, nan=False):
    """Population mean and variance over the axes not in ``keep`` (the shared reference)."""
    r = shared_reference(x, tuple(keep), "omit" if nan else "propagate")
    return r.mean.astype(np.float64), r.variance().astype(np.float64)


def weights(layer):
    return (np.asarray(layer.adapt_mean, dtype=np.float64),
            np.asarray(layer.adapt_variance, dtype=np.float64))


def assert_stats(layer, x, keep, rtol=1e-6, nan=False):
    mean, var = reference(x, keep, nan=nan)
    got_mean, got_var = weights(layer)
    assert got_mean.shape == mean.shape
    np.testing.assert_allclose(got_mean, mean, rtol=rtol, atol=0)
    np.testing.assert_allclose(got_var, var, rtol=rtol, atol=0)


def features(shape, dtype=np.float32, mean=1000.0, std=10.0, seed=0):
    rng = np.random.default_rng(seed)
    return (mean + std * rng.standard_normal(shape)).astype(dtype)


def run_python(code, env_update=None, drop_pythonpath=False):
    env = dict(os.environ)
    if drop_pythonpath:
        env.pop("PYTHONPATH", None)
    env.update(env_update or {})
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=300)


# -- import hygiene --------------------------------------------------------------------------
def test_import_fastmoments_never_imports_tf_or_keras():
    out = run_python("""
        import sys, fastmoments
        assert "tensorflow" not in sys.modules and "keras" not in sys.modules, "eager import"
        cls = fastmoments.FastNorm
        import fastmoments.keras
        assert cls is fastmoments.keras.FastNorm
        print("ok")
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_array_adapt_needs_no_tensorflow(backend, tmp_path):
    x = features((3000, 5), seed=3)
    np.save(tmp_path / "x.npy", x)
    out = run_python(f"""
        import sys, json, numpy as np
        try:
            import keras
        except ImportError as exc:
            print("SKIP", exc); raise SystemExit(0)
        assert keras.backend.backend() == {backend!r}
        from fastmoments.keras import FastNorm
        x = np.load({str(tmp_path / "x.npy")!r})
        a = FastNorm(); a.adapt(x)
        b = FastNorm(); b.adapt({str(tmp_path / "x.npy")!r})
        print(json.dumps({{"tf": "tensorflow" in sys.modules,
                          "mean": np.asarray(a.adapt_mean).tolist(),
                          "var": np.asarray(b.adapt_variance).tolist(),
                          "out": np.asarray(a(x[:3])).tolist()}}))
    """, env_update={"KERAS_BACKEND": backend})
    assert out.returncode == 0, out.stderr
    if out.stdout.startswith("SKIP"):
        pytest.skip(f"Keras {backend} backend not importable: {out.stdout.strip()}")
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["tf"] is False
    mean, var = reference(x, (-1,))
    np.testing.assert_allclose(got["mean"], mean, rtol=1e-6)
    np.testing.assert_allclose(got["var"], var, rtol=1e-6)
    np.testing.assert_allclose(got["out"], (x[:3] - mean) / np.sqrt(var), rtol=1e-4, atol=1e-4)


# -- statistics --------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.uint8, np.int32])
def test_ndarray_dtypes(dtype):
    rng = np.random.default_rng(1)
    x = (rng.random((513, 7)) * 100).astype(dtype)
    layer = FastNorm()
    layer.adapt(x)
    assert_stats(layer, x, (-1,))


@pytest.mark.parametrize("shape,axis", [
    ((40, 6), -1), ((40, 6), None), ((40, 6), 1), ((12, 4, 3, 5), (1, 2)),
    ((12, 4, 3, 5), (-1, 1)), ((12, 4, 3), 1), ((12, 4, 3), (1, 2)),
])
def test_axis_semantics_match_normalization(shape, axis):
    # float64 data, where Normalization.adapt is accurate: same weights and outputs.
    x = features(shape, np.float64, mean=3.0, std=2.0, seed=2)
    fast, slow = FastNorm(axis=axis), keras.layers.Normalization(axis=axis)
    fast.adapt(x)
    slow.adapt(x)
    keep = () if axis is None else ((axis,) if isinstance(axis, int) else axis)
    assert_stats(fast, x, keep)
    assert tuple(fast.adapt_mean.shape) == tuple(slow.adapt_mean.shape)
    np.testing.assert_allclose(weights(fast)[1], weights(slow)[1], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(fast(x)), np.asarray(slow(x)), rtol=1e-4, atol=1e-5)
    assert int(fast.count.numpy()) == x.size // max(1, np.asarray(fast.adapt_mean).size)


@pytest.mark.parametrize("layout", ["F", "transposed", "sliced", "negative", "byteswapped"])
def test_ndarray_layouts(layout):
    base = features((300, 8), np.float32, seed=4)
    x = {
        "F": np.asfortranarray(base),
        "transposed": np.ascontiguousarray(base.T).T,
        "sliced": features((600, 16), seed=4)[::2, ::2],
        "negative": base[::-1, ::-1],
        "byteswapped": base.astype(base.dtype.newbyteorder(">")),
    }[layout]
    layer = FastNorm()
    layer.adapt(x)
    assert_stats(layer, x, (-1,))


def test_exact_where_normalization_loses_digits():
    # float32 features with mean 1000 and std 10: Keras sums in float32.
    x = features((1 << 21, 4), np.float32, seed=5)
    fast = FastNorm()
    fast.adapt(x)
    _, var = reference(x, (-1,))
    rel = np.abs(weights(fast)[1] / var - 1)
    assert rel.max() < 1e-6


def test_float64_layer_keeps_float64_statistics(tf_route):
    # Mean 1e4, std 1: float32 weights would be off by ~1e-8, float64 ones are not.
    x = features((5000, 3), np.float64, mean=1e4, std=1.0, seed=6)
    ds = tf.data.Dataset.from_tensor_slices(x).batch(700)
    for data in (x, ds):
        layer = FastNorm(dtype="float64")
        layer.adapt(data)
        assert layer.adapt_variance.dtype == "float64"
        assert_stats(layer, x, (-1,), rtol=1e-11)
        assert layer(x).dtype == "float64"


def test_float64_layer_many_batches_at_an_offset(tf_route):
    """512 batches at mean 1e9, std 1: the dataset's states merge with their mean residuals, so
    the float64 layer's variance is that of one pass over the array (~1e-15; 3.7e-10 when the
    merges dropped mean_lo)."""
    x = features((512 * 64, 3), np.float64, mean=1e9, std=1.0, seed=14)
    want = fastmoments.compute(x)
    for data in (tf.data.Dataset.from_tensor_slices(x).batch(64),
                 [x[i:i + 64] for i in range(0, len(x), 64)]):
        layer = FastNorm(dtype="float64")
        layer.adapt(data)
        got_mean, got_var = weights(layer)
        np.testing.assert_array_equal(got_mean, want.mean)
        assert np.max(np.abs(got_var - want.variance) / want.variance) < 5e-15


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_policies(policy, tf_route):
    x = features((4000, 5), np.float32, mean=50.0, std=3.0, seed=7)
    for data in (x, tf.data.Dataset.from_tensor_slices(x).batch(512),
                 [x[:1000], x[1000:]]):
        layer = FastNorm(dtype=policy)
        layer.adapt(data)
        assert_stats(layer, x, (-1,))  # variables stay float32
        out = layer(x[:100])
        assert out.dtype == policy.split("_")[1]
        # The inputs are rounded to the compute dtype first: compare with Normalization given
        # the exact statistics under the same policy.
        ref_mean, ref_var = reference(x, (-1,))
        expected = keras.layers.Normalization(mean=ref_mean, variance=ref_var, dtype=policy)
        np.testing.assert_allclose(np.asarray(out, np.float64),
                                   np.asarray(expected(x[:100]), np.float64), atol=1e-2)


# -- input kinds -------------------------------------------------------------------------------
def test_memmap_and_npy_paths(tmp_path):
    x = features((2000, 6), seed=8)
    path = tmp_path / "x.npy"
    np.save(path, x)
    mm = np.load(path, mmap_mode="r")
    for data in (mm, str(path), path):
        layer = FastNorm()
        layer.adapt(data)
        assert_stats(layer, x, (-1,))
    assert layer._build_input_shape == (2000, 6)


def test_npy_path_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        FastNorm().adapt(str(tmp_path / "missing.npy"))
    (tmp_path / "bad.npy").write_bytes(b"not a npy file")
    with pytest.raises(ValueError):
        FastNorm().adapt(str(tmp_path / "bad.npy"))


def test_tf_tensor_and_variable():
    x = features((700, 3), seed=9)
    for data in (tf.constant(x), tf.Variable(x)):
        layer = FastNorm()
        layer.adapt(data)
        assert_stats(layer, x, (-1,))


def _dataset_variants(x, y):
    ds = tf.data.Dataset.from_tensor_slices
    return {
        "batched": ds(x).batch(64),
        "short_last_batch": ds(x).batch(300),
        "drop_remainder": ds(x[:960]).batch(64, drop_remainder=True),
        "x_y": ds((x, y)).batch(100),
        "x_y_w": ds((x, y, y)).batch(100),
        "unbatched_rows": ds(x),
        "unbatched_x_y": ds((x, y)),
        "prefetched": ds(x).batch(128).prefetch(2),
    }


@pytest.mark.parametrize("kind", list(_dataset_variants(np.zeros((1, 1)), np.zeros(1))))
def test_tf_data_datasets(kind, tf_route):
    x = features((1000, 4), seed=10)
    y = np.arange(1000, dtype=np.int32)
    data = _dataset_variants(x, y)[kind]
    layer = FastNorm()
    layer.adapt(data)
    ref = x[:960] if kind == "drop_remainder" else x
    assert_stats(layer, ref, (-1,))
    assert tuple(layer.adapt_mean.shape) == (4,)


def test_tf_data_multi_axis_and_unbatched_images(tf_route):
    x = features((64, 5, 6, 3), seed=11)
    layer = FastNorm(axis=(1, 3))
    layer.adapt(tf.data.Dataset.from_tensor_slices(x).batch(10))
    assert_stats(layer, x, (1, 3))
    built = FastNorm(axis=-1)
    built.build((None, 5, 6, 3))
    built.adapt(tf.data.Dataset.from_tensor_slices(x))  # unbatched elements, rank from build
    assert_stats(built, x, (-1,))


def test_unbatched_dataset_with_batch_size():
    x = features((333, 2), seed=12)
    layer = FastNorm()
    layer.adapt(tf.data.Dataset.from_tensor_slices(x), batch_size=50)
    assert_stats(layer, x, (-1,))
    with pytest.raises(ValueError, match="already batched"):
        FastNorm().adapt(tf.data.Dataset.from_tensor_slices(x).batch(10), batch_size=50)


def test_repeated_dataset(tf_route):
    x = features((100, 3), seed=13)
    ds = tf.data.Dataset.from_tensor_slices(x).batch(25).repeat()
    with pytest.raises(ValueError, match="repeats forever"):
        FastNorm().adapt(ds)
    layer = FastNorm()
    layer.adapt(ds, steps=6)  # 4 batches of x, then its first 2 again
    assert_stats(layer, np.concatenate([x, x[:50]]), (-1,))


class _Batches(keras.utils.PyDataset):
    def __init__(self, x, size, with_y=False, infinite=False):
        super().__init__()
        self.x, self.size, self.with_y, self.infinite = x, size, with_y, infinite

    @property
    def num_batches(self):
        return None if self.infinite else -(-len(self.x) // self.size)

    def __getitem__(self, i):
        if self.infinite:
            i %= -(-len(self.x) // self.size)
        b = self.x[i * self.size:(i + 1) * self.size]
        return (b, np.zeros(len(b))) if self.with_y else b


def test_pydataset():
    x = features((1000, 3, 2), seed=14)
    for with_y in (False, True):
        layer = FastNorm(axis=(1, 2))
        layer.adapt(_Batches(x, 300, with_y))
        assert_stats(layer, x, (1, 2))
    with pytest.raises(ValueError, match="infinite PyDataset"):
        FastNorm().adapt(_Batches(x, 300, infinite=True))
    layer = FastNorm(axis=(1, 2))
    layer.adapt(_Batches(x, 300, infinite=True), steps=5)
    assert_stats(layer, np.concatenate([x, x[:300]]), (1, 2))


def test_generators_lists_and_iterators():
    x = features((900, 4), seed=15)
    parts = [x[:100], x[100:450], x[450:]]
    for data in (parts, iter(parts), (p for p in parts), [(p, p[:, 0]) for p in parts],
                 [tf.constant(p) for p in parts]):
        layer = FastNorm()
        layer.adapt(data)
        assert_stats(layer, x, (-1,))
    layer = FastNorm()
    layer.adapt((p for p in parts), steps=2)
    assert_stats(layer, x[:450], (-1,))


def test_dask_array():
    da = pytest.importorskip("dask.array")
    try:
        import fastmoments.dask  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"fastmoments.dask not available: {exc}")
    x = features((2000, 5), seed=16)
    layer = FastNorm()
    layer.adapt(da.from_array(x, chunks=(300, 5)))
    assert_stats(layer, x, (-1,))


# -- NaN, zero variance, invert ----------------------------------------------------------------
def test_nan_policies(tf_route):
    x = features((500, 3), np.float64, seed=17)
    x[::7, 1] = np.nan
    ds = tf.data.Dataset.from_tensor_slices(x).batch(64)
    for data in (x, ds, [x[:200], x[200:]]):
        layer = FastNorm()
        with pytest.warns(FastNormWarning, match="NaN"):
            layer.adapt(data)
        m, v = weights(layer)
        assert np.isnan(m[1]) and np.isnan(v[1]) and np.isfinite(m[[0, 2]]).all()
        layer = FastNorm()
        layer.adapt(data, nan_policy="omit")
        assert_stats(layer, x, (-1,), nan=True)
        with pytest.raises(ValueError, match="NaN"):
            FastNorm().adapt(data, nan_policy="raise")
    with pytest.raises(ValueError, match="nan_policy"):
        FastNorm().adapt(x, nan_policy="ignore")


def test_zero_variance_warns_and_keeps_keras_output():
    x = features((200, 3), np.float32, mean=5, std=1, seed=18)
    x[:, 1] = 7.0
    fast = FastNorm()
    match = r"1 of 3 features have zero variance \(indices \(1,\)"
    with pytest.warns(FastNormWarning, match=match):
        fast.adapt(x)
    assert weights(fast)[1][1] == 0.0
    m, v = reference(x, (-1,))
    slow = keras.layers.Normalization(mean=m, variance=v)
    probe = x[:4] + np.float32(0.5)
    np.testing.assert_allclose(np.asarray(fast(probe)), np.asarray(slow(probe)), rtol=1e-5)
    assert np.abs(np.asarray(fast(probe))[:, 1]).min() > 1e6  # Keras's epsilon semantics kept


def test_invert():
    x = features((400, 3), np.float64, mean=2.0, std=3.0, seed=19)
    fast, slow = FastNorm(invert=True), keras.layers.Normalization(invert=True)
    fast.adapt(x)
    slow.adapt(x)
    z = np.linspace(-2, 2, 12, dtype=np.float32).reshape(4, 3)
    m, v = reference(x, (-1,))
    np.testing.assert_allclose(np.asarray(fast(z)), m + z * np.sqrt(v), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(fast(z)), np.asarray(slow(z)), rtol=1e-5)


def test_constructor_mean_variance_and_config_match_normalization():
    kw = dict(axis=-1, mean=[0.5, 0.2, -0.1], variance=[0.1, 0.2, 0.3])
    fast, slow = FastNorm(**kw), keras.layers.Normalization(**kw)
    z = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(np.asarray(fast(z)), np.asarray(slow(z)))
    assert fast.get_config() == slow.get_config() | {"name": fast.name}
    with pytest.raises(ValueError, match="constructed with mean"):
        fast.adapt(z)
    with pytest.raises(ValueError, match="both `mean` and `variance`"):
        FastNorm(mean=1.0)


def test_adapt_replaces_previous_statistics():
    a, b = features((300, 2), seed=20), features((300, 2), mean=-4, std=0.5, seed=21)
    layer = FastNorm()
    layer.adapt(a)
    layer.adapt(b)
    assert_stats(layer, b, (-1,))


# -- bad input ---------------------------------------------------------------------------------
def test_empty_inputs_raise():
    empties = [np.zeros((0, 3), np.float32), [], (b for b in ()),
               tf.data.Dataset.from_tensor_slices(np.zeros((0, 3), np.float32)).batch(4),
               [np.zeros((0, 3), np.float32)]]
    for data in empties:
        with pytest.raises(ValueError, match="empty"):
            FastNorm().adapt(data)
    unknown_size = tf.data.Dataset.from_tensor_slices(np.ones((8, 3), np.float32)).filter(
        lambda row: row[0] < 0).batch(4)
    with pytest.raises(ValueError):
        FastNorm().adapt(unknown_size)


def test_bad_arguments():
    x = features((10, 3))
    layer = FastNorm()
    layer.build((None, 3))
    with pytest.raises(ValueError, match="incompatible shape"):
        layer.adapt(features((10, 4)))
    with pytest.raises(ValueError, match="incompatible shape"):
        FastNorm().adapt([x, features((10, 4))])
    with pytest.raises(ValueError, match="steps"):
        FastNorm().adapt(x, steps=3)
    with pytest.raises(ValueError, match="batch_size"):
        FastNorm().adapt([x], batch_size=3)
    with pytest.raises(ValueError, match="steps"):
        FastNorm().adapt([x], steps=0)
    with pytest.raises(TypeError, match="batch_size"):
        FastNorm().adapt(x, batch_size=2.5)
    with pytest.raises(TypeError, match="progress"):
        FastNorm().adapt(x, progress="yes")
    with pytest.raises(TypeError, match="cannot read int"):
        FastNorm().adapt(42)
    with pytest.raises(TypeError, match="`.shape`"):
        FastNorm().adapt([42])
    with pytest.raises(TypeError, match="dtype"):
        FastNorm().adapt(np.array([["a", "b"]]))
    with pytest.raises(ValueError, match="known shape"):  # axis=-1 of (2, None) is ragged
        FastNorm().adapt(tf.ragged.constant([[1.0, 2.0], [3.0]]))
    with pytest.raises(TypeError, match="dense or ragged data"):
        FastNorm().adapt([tf.sparse.from_dense(x)])
    with pytest.raises(TypeError, match="dense tensor"):
        FastNorm().adapt(tf.data.Dataset.from_tensor_slices({"a": x}))


# -- progress ----------------------------------------------------------------------------------
def test_progress_bar(capsys):
    x = features((5000, 4), seed=22)
    FastNorm().adapt(x, progress=True)
    out = capsys.readouterr().out
    assert "5000/5000" in out and "GB/s" in out and "sample" in out
    FastNorm().adapt([x[:2500], x[2500:]], progress=True)
    out = capsys.readouterr().out
    assert "5000" in out and "GB/s" in out
    FastNorm().adapt(tf.data.Dataset.from_tensor_slices(x), progress=True)  # unbatched rows
    out = capsys.readouterr().out
    assert "5000" in out and "GB/s" in out
    FastNorm().adapt(x)  # auto: small input, no bar
    FastNorm().adapt(x, progress=False)
    assert capsys.readouterr().out == ""


# -- serving -----------------------------------------------------------------------------------
def _adapted_model(x):
    layer = FastNorm()
    layer.adapt(x)
    inputs = keras.Input(shape=(x.shape[1],))
    return keras.Model(inputs, keras.layers.Dense(2, kernel_initializer="ones")(layer(inputs)))


# Keras's own saving code converts variables with np.array(..., copy=False) (NumPy 2 warns).
@pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy:DeprecationWarning")
def test_keras_save_and_load(tmp_path):
    x = features((800, 4), seed=23)
    model = _adapted_model(x)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.layers[1], FastNorm)
    np.testing.assert_array_equal(np.asarray(loaded(x[:50])), np.asarray(model(x[:50])))
    config = keras.saving.serialize_keras_object(model.layers[1])
    assert config["registered_name"] == "fastmoments>FastNorm"


def test_export_serves_without_fastmoments(tmp_path):
    x = features((800, 4), seed=24)
    model = _adapted_model(x)
    model.export(str(tmp_path / "sm"), verbose=False)
    np.save(tmp_path / "probe.npy", x[:20])
    np.save(tmp_path / "expected.npy", np.asarray(model(x[:20])))
    out = run_python(f"""
        import sys, numpy as np, tensorflow as tf
        served = tf.saved_model.load({str(tmp_path / "sm")!r})
        got = served.serve(tf.constant(np.load({str(tmp_path / "probe.npy")!r}))).numpy()
        assert "fastmoments" not in sys.modules, "fastmoments was imported"
        np.testing.assert_allclose(got, np.load({str(tmp_path / "expected.npy")!r}), rtol=1e-6)
        print("ok")
    """, drop_pythonpath=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


def test_parallel_tf_data_map_and_tf_function():
    x = features((1024, 4), seed=25)
    layer = FastNorm()
    layer.adapt(x)
    expected = np.asarray(layer(x))
    ds = tf.data.Dataset.from_tensor_slices(x).batch(64).map(
        layer, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    np.testing.assert_allclose(np.concatenate([b.numpy() for b in ds]), expected, rtol=1e-6)
    np.testing.assert_allclose(tf.function(layer)(tf.constant(x)).numpy(), expected, rtol=1e-6)


# -- property test -----------------------------------------------------------------------------
def test_matches_reference_on_random_arrays():
    pytest.importorskip("hypothesis")
    from hypothesis import given, settings, strategies as st
    from hypothesis.extra import numpy as hnp

    @st.composite
    def cases(draw):
        ndim = draw(st.integers(2, 4))
        shape = draw(hnp.array_shapes(min_dims=ndim, max_dims=ndim, min_side=1, max_side=6))
        keep = draw(st.lists(st.integers(1, ndim - 1), unique=True, max_size=ndim - 1))
        dtype = draw(st.sampled_from([np.float32, np.float64, np.int16]))
        elems = st.floats(-1e3, 1e3, width=32) if dtype != np.int16 else st.integers(-300, 300)
        return draw(hnp.arrays(dtype, shape, elements=elems)), tuple(keep)

    @settings(max_examples=40, deadline=None)
    @given(cases())
    def check(case):
        x, keep = case
        layer = FastNorm(axis=keep if keep else None)
        layer.adapt(x)
        mean, var = reference(x, keep)
        got_mean, got_var = weights(layer)
        np.testing.assert_allclose(got_mean, mean, rtol=1e-6, atol=1e-4)
        np.testing.assert_allclose(got_var, var, rtol=1e-5, atol=1e-3)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FastNormWarning)  # constant draws have zero variance
        check()


# -- incremental adapt (reset_state=False) ------------------------------------------------------
def _parts_as(kind, part):
    if kind == "array":
        return part
    if kind == "dataset":
        return tf.data.Dataset.from_tensor_slices(part).batch(97)
    return [part[:50], part[50:]]


@pytest.mark.parametrize("kind", ["array", "dataset", "batches"])
def test_reset_state_false_equals_one_adapt_on_the_concatenation(kind, tf_route):
    # float64 layer at mean 1e6: the pooled variance must be that of the concatenation, not a
    # float32 round trip through the weights.
    parts = [features((n, 3), np.float64, mean=1e6 + 5 * i, std=1.0 + i, seed=40 + i)
             for i, n in enumerate((300, 120, 451))]
    layer = FastNorm(dtype="float64")
    layer.adapt(_parts_as(kind, parts[0]), reset_state=False)  # never adapted: starts empty
    for i, part in enumerate(parts[1:], start=2):
        layer.adapt(_parts_as(kind, part), reset_state=False)
        assert_stats(layer, np.concatenate(parts[:i]), (-1,), rtol=1e-12)
    assert int(layer.count.numpy()) == sum(len(p) for p in parts)
    layer.adapt(_parts_as(kind, parts[2]))  # reset_state=True: only the new data
    assert_stats(layer, parts[2], (-1,), rtol=1e-12)


def test_reset_state_false_multi_axis_and_nan_omit():
    a = features((40, 4, 3), np.float64, seed=43)
    b = features((25, 4, 3), np.float64, mean=990, seed=44)
    b[::3, 1, 2] = np.nan
    layer = FastNorm(axis=(1, 2), dtype="float64")
    layer.adapt(a)
    layer.adapt([b[:10], b[10:]], reset_state=False, nan_policy="omit")
    assert_stats(layer, np.concatenate([a, b]), (1, 2), rtol=1e-12, nan=True)


@pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy:DeprecationWarning")
@pytest.mark.parametrize("how", ["keras_file", "weights_file"])
def test_reset_state_false_after_save_and_load(how, tmp_path):
    a, b = features((500, 4), seed=45), features((200, 4), mean=1010, seed=46)
    model = _adapted_model(a)
    if how == "keras_file":
        model.save(tmp_path / "m.keras")
        loaded = keras.models.load_model(tmp_path / "m.keras")
    else:
        model.save_weights(tmp_path / "m.weights.h5")
        loaded = keras.models.clone_model(model)
        loaded.load_weights(tmp_path / "m.weights.h5")
    layer = loaded.layers[1]
    assert len(layer.weights) == 3  # Normalization's weights; the exact state is beside them
    layer.adapt(b, reset_state=False)
    assert_stats(layer, np.concatenate([a, b]), (-1,))
    np.testing.assert_array_equal(layer._exact_state.state.count, [700] * 4)


@pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy:DeprecationWarning")
def test_saved_model_loads_and_serves_without_fastmoments(tmp_path):
    x = features((800, 4), seed=47)
    model = _adapted_model(x)
    model.layers[1].adapt(features((100, 4), mean=900, seed=48), reset_state=False)
    model.save(tmp_path / "m.keras")
    np.save(tmp_path / "probe.npy", x[:20])
    np.save(tmp_path / "expected.npy", np.asarray(model(x[:20])))
    out = run_python(f"""
        import sys
        sys.modules["fastmoments"] = None  # import fastmoments now raises ImportError
        import numpy as np, keras
        try:
            import fastmoments  # noqa: F401
        except ImportError:
            pass
        else:
            raise AssertionError("fastmoments importable")
        # Keras files name a layer's weights after its class: a two-line stand-in named
        # FastNorm loads them (the exact state beside them is skipped).
        class FastNorm(keras.layers.Normalization):
            pass

        loaded = keras.models.load_model({str(tmp_path / "m.keras")!r},
                                         custom_objects={{"fastmoments>FastNorm": FastNorm}})
        assert type(loaded.layers[1]) is FastNorm
        got = np.asarray(loaded.predict(np.load({str(tmp_path / "probe.npy")!r}), verbose=0))
        np.testing.assert_allclose(got, np.load({str(tmp_path / "expected.npy")!r}), rtol=1e-6)
        print("ok")
    """, drop_pythonpath=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


def test_reset_state_false_bad_input():
    x = features((100, 3), seed=49)
    layer = FastNorm()
    layer.adapt(x)
    with pytest.raises(ValueError, match="reset_state=False cannot merge"):
        layer.adapt(features((100, 4)), reset_state=False)
    with pytest.raises(ValueError, match="reset_state=False cannot merge"):
        layer.adapt(features((10, 5, 3)), reset_state=False)
    with pytest.raises(TypeError, match="reset_state"):
        layer.adapt(x, reset_state="no")
    # Weights that did not come from FastNorm.adapt have no exact state to merge into.
    layer.set_weights([np.ones(3), np.full(3, 2.0), np.array(0)])
    with pytest.raises(ValueError, match="changed since its last adapt"):
        layer.adapt(x, reset_state=False)
    plain = keras.layers.Normalization()
    plain.adapt(x)
    copied = FastNorm()
    copied.build((None, 3))
    copied.set_weights(plain.get_weights())
    with pytest.raises(ValueError, match="not set by FastNorm.adapt"):
        copied.adapt(x, reset_state=False)
    copied.adapt(x)  # reset_state=True always works
    copied.adapt(x, reset_state=False)
    assert_stats(copied, np.concatenate([x, x]), (-1,))


def _snapshot(layer):
    return [np.asarray(w).copy() for w in layer.weights], layer._exact_state.state


def _assert_unchanged(layer, snap):
    weights_before, state_before = snap
    for w, before in zip(layer.weights, weights_before):
        np.testing.assert_array_equal(np.asarray(w), before)
    assert layer._exact_state.state is state_before


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("reset_state", [True, False])
def test_failed_or_interrupted_adapt_leaves_statistics(error, reset_state):
    x = features((300, 3), seed=50)
    layer = FastNorm()
    layer.adapt(x)
    snap = _snapshot(layer)

    def halfway():
        yield x[:100]
        yield x[100:200]
        raise error("stopped halfway")

    with pytest.raises(error, match="halfway"):
        layer.adapt(halfway(), reset_state=reset_state)
    _assert_unchanged(layer, snap)
    ds = tf.data.Dataset.from_tensor_slices(np.concatenate([x, x[:1] * np.nan])).batch(50)
    with pytest.raises(ValueError, match="NaN"):
        layer.adapt(ds, nan_policy="raise", reset_state=reset_state)
    _assert_unchanged(layer, snap)
    layer.adapt(features((50, 3), seed=51), reset_state=reset_state)  # still usable after
    assert layer._exact_state.state is not snap[1]


def test_interrupt_while_assigning_restores_everything(monkeypatch):
    x = features((300, 3), seed=52)
    layer = FastNorm()
    layer.adapt(x)
    snap = _snapshot(layer)
    probe = np.asarray(layer(x[:5]))
    real_assign = type(layer.count).assign

    def interrupted(self, value):
        if self is layer.count:  # mean and variance are already assigned by then
            raise KeyboardInterrupt
        return real_assign(self, value)

    monkeypatch.setattr(type(layer.count), "assign", interrupted)
    with pytest.raises(KeyboardInterrupt):
        layer.adapt(features((100, 3), mean=5, seed=53), reset_state=False)
    monkeypatch.undo()
    _assert_unchanged(layer, snap)
    np.testing.assert_array_equal(np.asarray(layer(x[:5])), probe)  # finalize_state restored


# -- several layers from one pass (adapt_all) ----------------------------------------------------
def _columns(n=1000, seed=60):
    rng = np.random.default_rng(seed)
    return {
        "age": rng.normal(40, 12, n).astype(np.float32),
        "income": rng.normal(5e4, 1e4, n),  # float64
        "visits": rng.integers(0, 50, n).astype(np.int32),
        "coords": rng.normal(1000, 10, (n, 2)).astype(np.float32),
        "city": np.array(["paris", "oslo"] * (n // 2)),  # not normalized
    }


def _norms():
    return {"age": FastNorm(axis=None), "income": FastNorm(axis=None),
            "visits": FastNorm(axis=None), "coords": FastNorm(axis=-1)}


def _assert_columns(norms, cols, rows=slice(None)):
    for key, layer in norms.items():
        assert_stats(layer, cols[key][rows], (-1,) if cols[key].ndim == 2 else ())


def _column_sources(cols):
    y = np.zeros(len(cols["age"]))
    ds = tf.data.Dataset.from_tensor_slices
    return {
        "dataset_x_y": ds((cols, y)).batch(128),
        "dataset_dicts": ds(cols).batch(100),
        "dataset_unbatched": ds(cols),
        "dataset_drop_remainder": ds(cols).batch(250, drop_remainder=True),
        "dict_of_arrays": cols,
        "x_y_arrays": (cols, y),
        "generator": ({k: v[i:i + 300] for k, v in cols.items()} for i in range(0, 1000, 300)),
        "list_x_y": [({k: v[i:i + 400] for k, v in cols.items()}, y[i:i + 400])
                     for i in range(0, 1000, 400)],
    }


@pytest.mark.parametrize("kind", list(_column_sources(_columns(10))))
def test_adapt_all_named_features(kind, tf_route):
    cols = _columns()
    norms = _norms()
    adapt_all(norms, _column_sources(cols)[kind])
    _assert_columns(norms, cols)
    assert tuple(norms["coords"].adapt_mean.shape) == (2,)


def test_adapt_all_reads_the_data_once(tf_route):
    cols = _columns()
    calls = []

    def gen():
        calls.append(1)
        for i in range(0, 1000, 200):
            yield {k: v[i:i + 200] for k, v in cols.items() if k != "city"}

    spec = {k: tf.TensorSpec((None,) + v.shape[1:], tf.as_dtype(v.dtype))
            for k, v in cols.items() if k != "city"}
    norms = _norms()
    adapt_all(norms, tf.data.Dataset.from_generator(gen, output_signature=spec))
    assert len(calls) == 1
    _assert_columns(norms, cols)


def test_adapt_all_positional_features(tf_route):
    cols = _columns()
    a, b, c = cols["age"], cols["coords"], cols["visits"]
    y = np.zeros(len(a))
    for data in (tf.data.Dataset.from_tensor_slices((a, b, c)).batch(64),
                 tf.data.Dataset.from_tensor_slices(((a, b, c), y)).batch(64),
                 (a, b, c), ((a, b, c), y), [(a[:500], b[:500], c[:500]), (a[500:], b[500:], c[500:])]):
        norms = {0: FastNorm(axis=None), 1: FastNorm(), -1: FastNorm(axis=None)}
        adapt_all(norms, data)
        assert_stats(norms[0], a, ())
        assert_stats(norms[1], b, (-1,))
        assert_stats(norms[-1], c, ())


def test_adapt_all_reset_state_false_and_ragged(tf_route):
    cols = _columns()
    norms = _norms()
    adapt_all(norms, {k: v[:600] for k, v in cols.items()})
    adapt_all(norms, tf.data.Dataset.from_tensor_slices({k: v[600:] for k, v in cols.items()})
              .batch(50), reset_state=False)
    _assert_columns(norms, cols)
    seq, values = _ragged(seed=61)
    layer = FastNorm()
    adapt_all({"events": layer}, tf.data.Dataset.from_tensor_slices({"events": seq}).batch(7))
    assert_stats(layer, values, (-1,))


def test_adapt_all_bad_input():
    cols = _columns(100)
    ds = tf.data.Dataset.from_tensor_slices(cols).batch(10)
    for data in (ds, cols, [cols]):
        with pytest.raises(ValueError, match="no feature 'height'"):
            adapt_all({"age": FastNorm(axis=None), "height": FastNorm(axis=None)}, data)
    with pytest.raises(ValueError, match="no feature 7"):
        adapt_all({7: FastNorm(axis=None)}, (cols["age"], cols["visits"]))
    with pytest.raises(TypeError, match="city.*dtype|dtype.*string"):
        adapt_all({"city": FastNorm(axis=None)}, ds)
    with pytest.raises(TypeError, match="not a FastNorm"):
        adapt_all({"age": keras.layers.Normalization()}, ds)
    with pytest.raises(TypeError, match="all strings"):
        adapt_all({"age": FastNorm(), 0: FastNorm()}, ds)
    with pytest.raises(TypeError, match="dict"):
        adapt_all([FastNorm()], ds)
    with pytest.raises(TypeError, match="integer keys"):
        adapt_all({0: FastNorm()}, tf.data.Dataset.from_tensor_slices(cols["coords"]).batch(5))
    with pytest.raises(ValueError, match="repeats forever"):
        adapt_all({"age": FastNorm(axis=None)}, ds.repeat())
    with pytest.raises(ValueError, match="empty"):
        adapt_all({"age": FastNorm(axis=None)}, ds.take(0))
    shared = FastNorm(axis=None)
    with pytest.raises(ValueError, match="several keys"):
        adapt_all({"age": shared, "visits": shared}, ds)


def test_adapt_all_changes_no_layer_unless_all_succeed():
    cols = _columns(300)
    norms = _norms()
    adapt_all(norms, cols)
    snaps = {k: _snapshot(v) for k, v in norms.items()}
    bad = dict(cols, visits=cols["visits"].astype(np.float64))
    bad["visits"][5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        adapt_all(norms, bad, nan_policy="raise", reset_state=False)
    for key, layer in norms.items():
        _assert_unchanged(layer, snaps[key])

    def halfway():
        yield {k: v[:100] for k, v in cols.items()}
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        adapt_all(norms, halfway())
    for key, layer in norms.items():
        _assert_unchanged(layer, snaps[key])


# -- ragged sequences ---------------------------------------------------------------------------
def _ragged(seed, n=60, inner=(4,), mean=100.0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 25, n)
    lengths[0] = 0  # an empty sequence adds nothing
    values = (mean + 3 * rng.standard_normal((int(lengths.sum()),) + inner)).astype(np.float32)
    return tf.RaggedTensor.from_row_lengths(values, lengths), values


@pytest.mark.parametrize("kind", ["tensor", "dataset", "dataset_x_y", "unbatched_sequences",
                                  "list_of_batches", "progress"])
def test_ragged_sequences_reduce_their_values(kind, tf_route):
    seq, values = _ragged(seed=62)
    ds = tf.data.Dataset.from_tensor_slices
    data = {
        "tensor": seq,
        "dataset": ds(seq).batch(8),
        "dataset_x_y": ds((seq, np.zeros(60))).batch(16),
        "unbatched_sequences": ds(seq),
        "list_of_batches": [seq[:25], seq[25:]],
        "progress": ds(seq).batch(8),
    }[kind]
    layer = FastNorm()
    layer.adapt(data, progress=kind == "progress")
    assert_stats(layer, values, (-1,))  # the real time steps only, no padding
    out = layer(seq.to_tensor())
    assert out.shape[-1] == 4


def test_ragged_multi_axis_and_errors(tf_route):
    seq, values = _ragged(seed=63, inner=(3, 2))
    layer = FastNorm(axis=(-2, -1))
    layer.adapt(tf.data.Dataset.from_tensor_slices(seq).batch(9))
    assert_stats(layer, values, (1, 2))
    layer = FastNorm(axis=None)
    layer.adapt(seq)
    assert_stats(layer, values, ())
    built = FastNorm(axis=1)
    built.build((None, 5, 4))  # keeps axis 1, which is ragged in the data
    with pytest.raises(ValueError, match="incompatible shape|variable length"):
        built.adapt(seq)
    with pytest.raises(ValueError, match="already batched|ragged batches"):
        FastNorm().adapt(tf.data.Dataset.from_tensor_slices(seq).batch(4), batch_size=3)
    with pytest.raises(TypeError, match="dense or ragged"):
        FastNorm().adapt(tf.sparse.from_dense(values))


def test_reset_state_adapt_all_and_saving_under_jax(tmp_path):
    cols = _columns(900)
    np.savez(tmp_path / "cols.npz", **{k: v for k, v in cols.items() if k != "city"})
    out = run_python(f"""
        import json, sys, numpy as np
        try:
            import keras
        except ImportError as exc:
            print("SKIP", exc); raise SystemExit(0)
        assert keras.backend.backend() == "jax"
        from fastmoments.keras import FastNorm, adapt_all
        cols = dict(np.load({str(tmp_path / "cols.npz")!r}))
        a = FastNorm(dtype="float64")
        a.adapt(cols["coords"][:400])
        a.adapt((cols["coords"][i:i + 100] for i in range(400, 900, 100)), reset_state=False)
        norms = {{"age": FastNorm(axis=None), "coords": FastNorm()}}
        adapt_all(norms, {{k: cols[k][:500] for k in norms}})
        adapt_all(norms, ({{k: cols[k][i:i + 200] for k in norms}} for i in range(500, 900, 200)),
                  reset_state=False)
        tf_imported = "tensorflow" in sys.modules  # before Keras saving, which may import it
        inputs = keras.Input(shape=(2,))
        keras.Model(inputs, a(inputs)).save({str(tmp_path / "jax.keras")!r})
        b = keras.models.load_model({str(tmp_path / "jax.keras")!r}).layers[1]
        b.adapt(cols["coords"][:100], reset_state=False)
        print(json.dumps({{"tf": tf_imported,
                          "a": [np.asarray(a.adapt_mean).tolist(), np.asarray(a.adapt_variance).tolist()],
                          "age": [float(np.asarray(norms["age"].adapt_mean)),
                                  float(np.asarray(norms["age"].adapt_variance))],
                          "coords": np.asarray(norms["coords"].adapt_variance).tolist(),
                          "b": np.asarray(b.adapt_variance).tolist()}}))
    """, env_update={"KERAS_BACKEND": "jax"})
    assert out.returncode == 0, out.stderr[-3000:]
    if out.stdout.startswith("SKIP"):
        pytest.skip(f"Keras jax backend not importable: {out.stdout.strip()}")
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["tf"] is False
    coords = cols["coords"]
    mean, var = reference(coords, (-1,))
    # JAX without x64 stores a float64 layer's weights as float32; the exact state is float64.
    np.testing.assert_allclose(got["a"][0], mean, rtol=1e-6)
    np.testing.assert_allclose(got["a"][1], var, rtol=1e-6)
    np.testing.assert_allclose(got["age"], reference(cols["age"], ()), rtol=1e-6)
    np.testing.assert_allclose(got["coords"], var, rtol=1e-6)
    np.testing.assert_allclose(got["b"], reference(np.concatenate([coords, coords[:100]]), (-1,))[1],
                               rtol=1e-6)


@pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy:DeprecationWarning")
def test_file_without_exact_state_loads_and_refuses_to_merge(tmp_path):
    # A file saved before the exact state existed holds only the three weights.
    x = features((300, 4), seed=70)
    model = _adapted_model(x)
    model.layers[1]._exact_state.state = None
    model.save(tmp_path / "old.keras")
    layer = keras.models.load_model(tmp_path / "old.keras").layers[1]
    assert layer._exact_state.state is None
    assert_stats(layer, x, (-1,))
    with pytest.raises(ValueError, match="no exact state"):
        layer.adapt(x, reset_state=False)


def test_adapt_all_steps_on_a_repeated_dataset(tf_route):
    cols = _columns(400)
    ds = tf.data.Dataset.from_tensor_slices({k: v for k, v in cols.items() if k != "city"})
    norms = _norms()
    adapt_all(norms, ds.batch(100).repeat(), steps=6)  # 4 batches, then the first 2 again
    _assert_columns(norms, {k: np.concatenate([v, v[:200]]) for k, v in cols.items()})
