"""The weighted TensorFlow door: ``FastMoments>WeightedMoments`` / ``MergeWeightedMoments``, their
``tf.numpy_function`` fallback, ``fastmoments.tf.moments(weights=, where=)`` and
``dataset_moments(sample_weight=True)``, against the exact weighted reference (Fractions),
repeated rows for integer weights, and ``fastmoments.compute(weights=, where=)``."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import fastmoments  # noqa: E402
import fastmoments.tf as fmtf  # noqa: E402
from reference import exact_reference, exact_weighted_reference  # noqa: E402

pytestmark = pytest.mark.tf


@pytest.fixture
def path(tf_route):
    """The op and the fallback (conftest's ``tf_route``)."""
    return tf_route


def run(mode, fn, *args):
    return fn(*args) if mode == "eager" else tf.function(fn)(*args)


def rel(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = np.maximum(np.abs(want), np.finfo(np.float64).tiny)
    return float(np.max(np.abs(got - want) / scale)) if got.size else 0.0


def full(w, shape, rows=True):
    """Weights as the reference reads them: the data's shape (1-D per-row vectors on axis 0)."""
    w = np.asarray(w)
    if rows and w.ndim == 1 and len(shape) > 1 and w.shape[0] == shape[0]:
        w = w.reshape((shape[0],) + (1,) * (len(shape) - 1))
    return np.broadcast_to(w, shape)


def check_state(state, ref, mean_tol=1e-15, m2_tol=1e-12):
    count, mean, m2, _, sw, sw2 = (np.asarray(t) for t in state)
    np.testing.assert_array_equal(count, ref.count)
    assert rel(sw, ref.sum_weights) <= 1e-13
    assert rel(sw2, ref.sum_weights_sq) <= 1e-13
    assert rel(mean, ref.mean) <= mean_tol, (mean, ref.mean)
    assert rel(m2, ref.m2) <= m2_tol, (m2, ref.m2)


ADVERSARIAL = {
    "f32_mean1000_std10": lambda rng, shape: (1000 + 10 * rng.standard_normal(shape)).astype(np.float32),
    "f64_offset1e9": lambda rng, shape: 1e9 + rng.standard_normal(shape),
}


def loguniform(rng, shape):
    return 10.0 ** rng.uniform(-3, 3, shape)


# -- the weighted op against the exact reference ------------------------------------------------

@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("case", sorted(ADVERSARIAL))
@pytest.mark.parametrize("layout", ["rows", "elementwise", "features", "axis_none", "keep_axis0",
                                    "mask", "weights_and_mask", "float32_weights"])
def test_weighted_state_against_exact_reference(path, mode, case, layout):
    rng = np.random.default_rng(21)
    shape = (240, 3)
    x = ADVERSARIAL[case](rng, shape)
    axis, where, w = -1, None, None
    if layout == "rows":
        w = loguniform(rng, shape[0])
    elif layout == "elementwise":
        w = loguniform(rng, shape)
    elif layout == "features":  # one weight per feature: broadcast along axis 0 with stride 0
        w = loguniform(rng, (1, shape[1]))
    elif layout == "axis_none":
        axis, w = None, loguniform(rng, shape[0])
    elif layout == "keep_axis0":
        axis, w = 0, loguniform(rng, shape)
    elif layout == "mask":
        where = rng.random(shape) < 0.6
    elif layout == "weights_and_mask":
        w, where = loguniform(rng, shape[0]), rng.random(shape) < 0.6
    else:
        w = loguniform(rng, shape[0]).astype(np.float32)

    def fn(x):
        return fmtf.moment_state(x, axis, weights=w, where=where)

    state = run(mode, fn, tf.constant(x))
    wf = np.ones(shape) if w is None else full(w, shape).astype(np.float64)
    if where is not None:
        wf = np.where(where, wf, 0.0)
    check_state(state, exact_weighted_reference(x, wf, axis))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.uint8])
@pytest.mark.parametrize("axis", [-1, None])
def test_integer_weights_equal_repeated_rows(path, dtype, axis):
    rng = np.random.default_rng(3)
    if np.dtype(dtype).kind == "f":
        x = (50 + 3 * rng.standard_normal((600, 6))).astype(dtype)
    else:
        x = rng.integers(0, 200, (600, 6)).astype(dtype)
    k = rng.integers(0, 5, x.shape[0])
    rep = exact_reference(np.repeat(x, k, axis=0), axis)
    mean, var, count = fmtf.moments(x, axis, weights=k)
    assert rel(mean, rep.mean) <= 1e-15
    assert rel(var, np.asarray(rep.m2) / np.asarray(rep.count)) <= 1e-15
    np.testing.assert_array_equal(count, np.count_nonzero(k) * np.asarray(rep.count) // k.sum())
    _, var1, _ = fmtf.moments(x, axis, 1, weights=k)
    assert rel(var1, np.asarray(rep.m2) / (np.asarray(rep.count) - 1)) <= 1e-15


@pytest.mark.parametrize("form", ["rows", "column", "features", "scalar", "elementwise", "mask"])
def test_same_bits_as_compute(path, form):
    """The op runs the weighted driver compute(weights=, where=) runs: identical states."""
    rng = np.random.default_rng(5)
    x = (7 + rng.standard_normal((3000, 3, 4))).astype(np.float32)
    kwargs = {
        "rows": {"weights": rng.random(3000)},
        "column": {"weights": rng.random((3000, 1, 1)).astype(np.float32)},
        "features": {"weights": rng.random(4)},
        "scalar": {"weights": np.float64(2.5)},
        "elementwise": {"weights": rng.random(x.shape)},
        "mask": {"where": rng.random((3, 4)) < 0.5},
    }[form]
    for axis in (-1, (1, 2), None, 0):
        got = fmtf.moment_state(x, axis, **kwargs)
        want = fastmoments.compute(x, axis, **kwargs).state
        empty = want.count == 0  # the raw state there is the zero state; compute's result NaN
        for g, w in zip(got, want.arrays):
            np.testing.assert_array_equal(np.asarray(g), np.where(empty, 0, w))


@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("form", ["rows", "elementwise_int8", "mask_and_weights", "uint64_weights"])
def test_integer_weights_of_integer_data_are_exact(path, mode, form):
    """Integer weights of integer data reach the op as int64: exact sums, compute's bits (and the
    exact reference to 2 ulp); uint64 weights, unchecked in a graph, are float64 weights."""
    rng = np.random.default_rng(9)
    x = rng.integers(-2**40, 2**40, (700, 3, 4))
    kwargs = {
        "rows": {"weights": rng.integers(0, 1000, 700)},
        "elementwise_int8": {"weights": rng.integers(0, 100, x.shape).astype(np.int8)},
        "mask_and_weights": {"weights": rng.integers(0, 9, (700, 1, 4)), "where": rng.random((3, 4)) < 0.6},
        "uint64_weights": {"weights": rng.integers(0, 1000, 700).astype(np.uint64)},
    }[form]
    for axis in (-1, None):
        got = run(mode, lambda t: fmtf.moment_state(t, axis, **kwargs), tf.constant(x))
        want = fastmoments.compute(x, axis, **kwargs)
        if form == "uint64_weights":  # float64 weights: ~1 ulp of compute's exact result
            assert rel(np.asarray(got[2]), want.m2) <= 1e-15
            continue
        for g, w in zip(got, want.state.arrays):
            np.testing.assert_array_equal(np.asarray(g), w)
        wf = full(kwargs["weights"], x.shape).astype(np.int64)
        if "where" in kwargs:
            wf = np.where(np.broadcast_to(kwargs["where"], x.shape), wf, 0)
        ref = exact_weighted_reference(x, wf, axis)
        assert rel(np.asarray(got[1]), ref.mean) <= 4.5e-16
        assert rel(np.asarray(got[2]), ref.m2) <= 4.5e-16


def test_dataset_integer_weights_of_integer_data(path):
    """Integer data and sample weights through dataset_moments: each batch exact, batches merged
    by Chan's formula (~1 ulp), weight sums exact."""
    rng = np.random.default_rng(10)
    x = rng.integers(-30000, 30000, (500, 3)).astype(np.int16)
    k = rng.integers(0, 4, 500).astype(np.int32)
    ds = tf.data.Dataset.from_tensor_slices((x, k, k)).batch(37)
    got = fmtf.dataset_moments(ds, sample_weight=True)
    ref = exact_weighted_reference(x, full(k, x.shape).astype(np.int64), -1)
    np.testing.assert_array_equal(got.sum_weights, ref.sum_weights)
    spread = np.sqrt(ref.m2 / ref.sum_weights)  # a merge rounds the mean to the data's scale
    assert np.all(np.abs(got.mean - ref.mean) <= 2e-16 * (np.abs(ref.mean) + spread))
    assert rel(got.m2, ref.m2) <= 1e-15


def test_op_and_fallback_give_the_same_bits():
    if not fmtf.op_info()["loaded"]:
        pytest.skip("op not loaded")
    rng = np.random.default_rng(8)
    x = 1e9 + rng.standard_normal((5000, 7))
    w = loguniform(rng, 5000)
    m = rng.random(x.shape) < 0.8
    try:
        fmtf._set_fallback(False)
        op = [t.numpy() for t in fmtf.moment_state(x, weights=w, where=m, nan_policy="omit")]
        fmtf._set_fallback(True)
        with pytest.warns(fmtf.OpFallbackWarning):
            fb = [t.numpy() for t in fmtf.moment_state(x, weights=w, where=m, nan_policy="omit")]
    finally:
        fmtf._set_fallback(None)
    for a, b in zip(op, fb):
        np.testing.assert_array_equal(a, b)


def test_weights_in_graph_with_unknown_shapes(path):
    """Inside tf.function with unknown dimensions: compute's rules applied when the op runs."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((50, 4))
    w = rng.random(50)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float64), tf.TensorSpec([None], tf.float64)])
    def fn(x, w):
        return fmtf.moments(x, weights=w)

    mean, var, count = fn(tf.constant(x), tf.constant(w))
    ref = fastmoments.compute(x, weights=w)
    assert rel(mean, ref.mean) <= 1e-15 and rel(var, ref.variance) <= 1e-14
    # A 1-D vector as long as the features (not the rows) weights the features, as NumPy broadcasts.
    wf = rng.random(4)
    mean, var, _ = fn(tf.constant(x), tf.constant(wf))
    ref = fastmoments.compute(x, weights=wf)
    assert rel(mean, ref.mean) <= 1e-15 and rel(var, ref.variance) <= 1e-14
    with pytest.raises(tf.errors.InvalidArgumentError, match="do not broadcast"):
        fn(tf.constant(x), tf.constant(rng.random(7)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="finite and non-negative"):
        fn(tf.constant(x), tf.constant(np.r_[w[:-1], -1.0]))
    # One weight per feature (the op's per-output route) is checked there too.
    with pytest.raises(tf.errors.InvalidArgumentError, match="finite and non-negative"):
        fn(tf.constant(x), tf.constant(np.r_[wf[:-1], np.nan]))


def test_fully_masked_feature_and_nan_policy(path):
    x = np.array([[1.0, np.nan], [3.0, 2.0], [5.0, np.nan]])
    mean, var, count = fmtf.moments(x, where=np.array([[True, False], [True, False], [False, False]]))
    np.testing.assert_array_equal(count, [2, 0])
    np.testing.assert_allclose(mean.numpy()[0], 2.0)
    assert np.isnan(mean.numpy()[1]) and np.isnan(var.numpy()[1])
    # A NaN of weight 0 does not exist; one of positive weight propagates, or is omitted.
    w = np.array([1.0, 2.0, 0.0])
    mean, _, _ = fmtf.moments(x, weights=w)
    assert np.isnan(mean.numpy()[1])
    mean, _, count = fmtf.moments(x, weights=w, nan_policy="omit")
    np.testing.assert_array_equal(count, [2, 1])
    np.testing.assert_allclose(mean.numpy(), [(1 + 6) / 3, 2.0])


# -- merges -------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["eager", "function"])
def test_merge_weighted_states_is_the_core_merge(path, mode):
    rng = np.random.default_rng(11)
    x = 1e9 + rng.standard_normal((900, 3))
    w = loguniform(rng, 900)

    def fn(x, w):
        a = fmtf.moment_state(x[:300], weights=w[:300])
        b = fmtf.moment_state(x[300:600])  # unweighted: unit weights
        c = fmtf.moment_state(x[600:], where=x[600:] > 1e9)
        return fmtf.merge_states(fmtf.merge_states(a, b), c)

    got = run(mode, fn, tf.constant(x), tf.constant(w))
    wf = np.r_[w[:300], np.ones(300)][:, None] * np.ones((1, 3))
    wf = np.r_[wf, (x[600:] > 1e9).astype(np.float64)]
    check_state(got, exact_weighted_reference(x, wf, -1), m2_tol=1e-13)
    # The same merge as the Python state record's (one owner: combine_weighted).
    parts = [fastmoments.compute(x[:300], weights=w[:300]).state,
             fastmoments.compute(x[300:600]).state,
             fastmoments.compute(x[600:], where=x[600:] > 1e9).state]
    want = parts[0].merge(parts[1]).merge(parts[2])
    for g, v in zip(got, want.arrays):
        np.testing.assert_array_equal(np.asarray(g), v)


def test_zero_state_and_bad_states(path):
    z = fmtf.zero_state(weighted=True)
    assert len(z) == len(fmtf.WEIGHTED_STATE_FIELDS)
    s = fmtf.moment_state(np.ones((3, 2)), weights=np.ones(3))
    for a, b in zip(fmtf.merge_states(z, s), s):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="must be a state"):
        fmtf.merge_states(s[:5], s)


def test_signatures_list_the_weighted_ops():
    sigs = fmtf._expected_signatures()
    assert sigs["FastMoments>WeightedMoments"] == (["x", "weights"],
                                                   list(fmtf.WEIGHTED_STATE_FIELDS) + ["bad_weights"])
    ins, outs = sigs["FastMoments>MergeWeightedMoments"]
    assert outs == list(fmtf.WEIGHTED_STATE_FIELDS) and len(ins) == 12


# -- bad input: compute's errors, compute's texts -----------------------------------------------

BIG = 1 << 17  # above the size _checks tests up front: the kernel flags these


@pytest.mark.parametrize("kwargs", [
    {"weights": np.r_[-1.0, np.ones(9)]},
    {"weights": np.r_[np.nan, np.ones(9)]},
    {"weights": np.r_[np.inf, np.ones(9)]},
    {"weights": np.r_[np.ones(BIG - 1), -0.5]},
    {"weights": np.r_[np.ones(BIG - 1), np.nan].astype(np.float32)},
    {"weights": np.r_[np.ones(9, np.int64), -3]},
    {"weights": np.ones(7)},
    {"weights": np.ones((2, 10, 3))},
    {"weights": np.array(["a"] * 10)},
    {"where": np.ones(10)},
    {"where": np.ones(4, bool)},
])
def test_bad_input_same_errors_as_compute(path, kwargs):
    n = len(next(iter(kwargs.values())))
    x = np.ones((n if n in (10, BIG) else 10, 3))
    with pytest.raises(ValueError) as want:
        fastmoments.compute(x, **kwargs)
    with pytest.raises(ValueError) as got:
        fmtf.moments(x, **kwargs)
    assert str(got.value) == str(want.value)


def test_inputs_are_not_modified(path):
    x = np.ones((20, 3))
    w = np.linspace(0, 1, 20)
    m = np.ones((20, 3), bool)
    wc, mc = w.copy(), m.copy()
    fmtf.moments(x, weights=w, where=m)
    np.testing.assert_array_equal(w, wc)
    np.testing.assert_array_equal(m, mc)


# -- datasets with sample weights ---------------------------------------------------------------

def weighted_data(n=1000, d=4, seed=6):
    rng = np.random.default_rng(seed)
    x = (1000 + 10 * rng.standard_normal((n, d))).astype(np.float32)
    w = loguniform(rng, n).astype(np.float32)
    return x, w


@pytest.mark.parametrize("batch", [1, 64, 999, 4096])
def test_dataset_sample_weight_equals_compute_on_the_concatenation(path, batch):
    x, w = weighted_data()
    ds = tf.data.Dataset.from_tensor_slices((x, np.zeros(len(x)), w)).batch(batch)
    got = fmtf.dataset_moments(ds, sample_weight=True)
    want = fastmoments.compute(x, weights=w)
    assert got.weighted
    np.testing.assert_array_equal(got.count, want.count)
    assert rel(got.sum_weights, want.sum_weights) <= 1e-14
    assert rel(got.mean, want.mean) <= 1e-15
    assert rel(got.m2, want.m2) <= 1e-12
    check_state(got.state, exact_weighted_reference(x, full(w, x.shape).astype(np.float64)))
    # Without sample_weight the w is ignored, as Keras does.
    plain = fmtf.dataset_moments(ds)
    assert not plain.weighted and rel(plain.mean, fastmoments.compute(x).mean) <= 1e-15


def test_dataset_integer_weights_equal_repeated_rows(path):
    rng = np.random.default_rng(2)
    x = rng.normal(5, 2, (500, 3))
    k = rng.integers(0, 4, 500)
    ds = tf.data.Dataset.from_tensor_slices((x, k, k)).batch(37)
    got = fmtf.dataset_moments(ds, sample_weight=True, ddof=1)
    rep = exact_reference(np.repeat(x, k, axis=0), -1)
    assert rel(got.mean, rep.mean) <= 1e-15
    assert rel(got.variance, np.asarray(rep.m2) / (np.asarray(rep.count) - 1)) <= 1e-14


def test_dataset_unbatched_and_temporal_weights(path):
    x, w = weighted_data(300, 2)
    ds = tf.data.Dataset.from_tensor_slices((x, np.zeros(300), w))  # rows: scalar weights
    got = fmtf.dataset_moments(ds, sample_weight=True)
    want = fastmoments.compute(x, weights=w)
    assert rel(got.mean, want.mean) <= 1e-15 and rel(got.m2, want.m2) <= 1e-12
    # (batch, time) weights on (batch, time, features): one weight per step (Keras's meaning).
    rng = np.random.default_rng(4)
    seq = rng.normal(3, 1, (40, 6, 2))
    ws = rng.random((40, 6))
    ds = tf.data.Dataset.from_tensor_slices((seq, np.zeros(40), ws)).batch(8)
    got = fmtf.dataset_moments(ds, sample_weight=True)
    ref = exact_weighted_reference(seq, np.broadcast_to(ws[..., None], seq.shape), -1)
    check_state(got.state, ref)


def test_dataset_nan_policies_with_weights(path):
    x = np.array([[1.0], [np.nan], [3.0], [np.nan]])
    w = np.array([1.0, 0.0, 2.0, 1.0])
    ds = tf.data.Dataset.from_tensor_slices((x, w, w)).batch(2)
    assert np.isnan(fmtf.dataset_moments(ds, sample_weight=True).mean[0])
    got = fmtf.dataset_moments(ds, sample_weight=True, nan_policy="omit")
    np.testing.assert_allclose(got.mean, [7 / 3])
    np.testing.assert_array_equal(got.count, [2])
    with pytest.raises(ValueError, match="NaN"):
        fmtf.dataset_moments(ds, sample_weight=True, nan_policy="raise")
    # The NaN of weight 0 alone does not exist: "raise" passes.
    ok = tf.data.Dataset.from_tensor_slices((x[:3], w[:3], w[:3])).batch(2)
    np.testing.assert_allclose(fmtf.dataset_moments(ok, sample_weight=True, nan_policy="raise").mean,
                               [7 / 3])


def test_dataset_sample_weight_bad_input(path):
    x, w = weighted_data(200, 2)
    with pytest.raises(ValueError, match=r"sample_weight=True uses the w of \(x, y, w\).*tuples of 2"):
        fmtf.dataset_moments(tf.data.Dataset.from_tensor_slices((x, w)).batch(10), sample_weight=True)
    with pytest.raises(ValueError, match="single tensors"):
        fmtf.dataset_moments(tf.data.Dataset.from_tensor_slices(x).batch(10), sample_weight=True)
    with pytest.raises(TypeError, match="sample_weight must be True or False"):
        fmtf.dataset_moments(tf.data.Dataset.from_tensor_slices(x).batch(10), sample_weight="w")
    for bad in (np.r_[w[:150], -1.0, w[151:]], np.r_[w[:150], np.nan, w[151:]],
                np.r_[w[:150], np.inf, w[151:]].astype(np.float32)):
        with pytest.raises(ValueError) as want:
            fastmoments.compute(x, weights=bad)
        ds = tf.data.Dataset.from_tensor_slices((x, bad, bad)).batch(16)
        with pytest.raises(ValueError) as got:
            fmtf.dataset_moments(ds, sample_weight=True)
        assert str(got.value) == str(want.value)
    with pytest.raises(ValueError, match="weights must be real numbers"):
        fmtf.dataset_moments(tf.data.Dataset.from_tensor_slices((x, w, w.astype(str))).batch(10),
                             sample_weight=True)
    ds = tf.data.Dataset.from_tensor_slices((x, w, np.ones((200, 3)))).batch(10)
    with pytest.raises(ValueError, match="do not broadcast"):
        fmtf.dataset_moments(ds, sample_weight=True)


def test_dataset_all_zero_weights_is_nan_with_the_empty_warning(path):
    x = np.ones((10, 2))
    ds = tf.data.Dataset.from_tensor_slices((x, x, np.zeros(10))).batch(4)
    got = fmtf.dataset_moments(ds, sample_weight=True)
    assert np.isnan(got.mean).all()
    with pytest.warns(RuntimeWarning, match="Degrees of freedom"):
        assert np.isnan(got.variance).all()
