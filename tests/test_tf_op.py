"""The TensorFlow door: FastMoments>Moments / MergeMoments ops, their numpy_function fallback,
``fastmoments.tf.moments`` and ``dataset_moments``, against a NumPy float64 reference."""

import os
import subprocess
import sys
import types

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
ml_dtypes = pytest.importorskip("ml_dtypes")

import fastmoments  # noqa: E402
import fastmoments.tf as fmtf  # noqa: E402
from fastmoments import _build_info  # noqa: E402
from reference import assert_matches as shared_assert_matches, kept_axes, reference as shared_reference  # noqa: E402

pytestmark = pytest.mark.tf


DTYPES = ["uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64",
          "float16", "bfloat16", "float32", "float64", "bool"]
SHAPE = (37, 5, 3)
AXES = [-1, None, 0, (1, 2), (-1, 0), 1]


# -- reference and helpers --------------------------------------------------------------------------

def reference(a, axis, ddof=0):
    """Mean, variance and values per output over the non-kept axes (the shared reference)."""
    a = np.asarray(a)
    r = shared_reference(a, axis)
    n = int(np.prod([a.shape[i] for i in range(a.ndim) if i not in kept_axes(axis, a.ndim)]))
    return r.mean.astype(np.float64), r.variance(ddof).astype(np.float64), n


def sample(dtype, shape, rng):
    if dtype == "bool":
        return rng.random(shape) < 0.3
    if dtype == "bfloat16":
        return rng.normal(3.0, 2.0, shape).astype(ml_dtypes.bfloat16)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return rng.normal(3.0, 2.0, shape).astype(dt)
    info = np.iinfo(dt)
    lo, hi = max(info.min, -(2**40)), min(info.max, 2**40)
    return rng.integers(lo, hi, shape, endpoint=True).astype(dt)


@pytest.fixture
def path(tf_route):
    """The op and the fallback (conftest's ``tf_route``)."""
    return tf_route


def run(mode, fn, *args):
    if mode == "eager":
        return fn(*args)
    return tf.function(fn)(*args)


def assert_moments(mean, var, count, a, axis, ddof=0, rtol=1e-11):
    """``fastmoments.tf.moments`` output against the shared reference (m2 = var * (n - ddof))."""
    count = np.asarray(count)
    got = types.SimpleNamespace(count=count, mean=np.asarray(mean, np.float64),
                                m2=np.asarray(var, np.float64) * (count - ddof))
    shared_assert_matches(got, shared_reference(np.asarray(a), axis), mean_rtol=rtol,
                          m2_rtol=rtol, scale_atol=rtol)


# -- op_info and loading ----------------------------------------------------------------------------

def test_op_info_contents():
    fmtf._set_fallback(None)
    info = fmtf.op_info()
    assert set(info) >= {"loaded", "built_against", "tf_version", "reason", "path"}
    assert info["tf_version"] == tf.__version__
    built = _build_info.tensorflow
    assert info["built_against"] == (built["version"] if built else None)
    assert info["loaded"] == (info["reason"] is None)
    if built and built["version"] == tf.__version__ and not os.environ.get(fmtf.FALLBACK_ENV):
        # Built against this TF: the op must load, else the build is broken.
        assert info["loaded"], info["reason"]
        assert os.path.exists(info["path"])


def test_op_info_version_mismatch_and_not_built(monkeypatch):
    try:
        monkeypatch.setattr(_build_info, "tensorflow", {"version": "0.0.1", "abi": 1})
        fmtf._set_fallback(None)
        info = fmtf.op_info()
        assert not info["loaded"]
        assert info["built_against"] == "0.0.1"
        assert "mismatch" in info["reason"] and tf.__version__ in info["reason"]
        monkeypatch.setattr(_build_info, "tensorflow", None)
        fmtf._set_fallback(None)
        info = fmtf.op_info()
        assert not info["loaded"] and info["built_against"] is None
        assert "not built" in info["reason"]
    finally:
        monkeypatch.undo()
        fmtf._set_fallback(None)


def test_fallback_env_var(monkeypatch):
    monkeypatch.setenv(fmtf.FALLBACK_ENV, "1")
    fmtf._set_fallback(None)
    try:
        info = fmtf.op_info()
        assert not info["loaded"] and "forced" in info["reason"]
    finally:
        monkeypatch.delenv(fmtf.FALLBACK_ENV)
        fmtf._set_fallback(None)


def test_fallback_warns_once():
    fmtf._set_fallback(True)
    try:
        x = np.arange(12.0).reshape(4, 3)
        with pytest.warns(fmtf.OpFallbackWarning) as record:
            fmtf.moments(x)
            mean = fmtf.moments(x)[0]
        assert len(record) == 1
        assert "tf.numpy_function" in str(record[0].message)
        np.testing.assert_allclose(mean.numpy(), x.mean(axis=0))
    finally:
        fmtf._set_fallback(None)


def test_import_fastmoments_does_not_import_tensorflow():
    code = "import sys, fastmoments; assert 'tensorflow' not in sys.modules, 'tf imported'"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# -- moments of tensors -----------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_moments_dtypes_axes(path, mode, dtype):
    rng = np.random.default_rng(abs(hash(dtype)) % 2**32)
    a = sample(dtype, SHAPE, rng)
    x = tf.constant(a, dtype=tf.as_dtype(dtype))
    for axis in AXES:
        mean, var, count = run(mode, lambda t: fmtf.moments(t, axis=axis), x)
        assert mean.dtype == tf.float64 and var.dtype == tf.float64 and count.dtype == tf.int64
        assert_moments(mean, var, count, a, axis)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_subnormal_values_count_inside_the_op(path, dtype):
    # TensorFlow runs op kernels with the x86 DAZ/FTZ flags set (subnormals read as zero); the
    # kernel clears them for its own work (float_env.hpp), so a subnormal value is a value: the
    # op gives compute's bits and the exact mean. (A float16 mean was 5e-07 off before.)
    dt = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    tiny = {"float16": 2.2e-05, "bfloat16": 1e-39, "float32": 1e-40, "float64": 1e-310}[dtype]
    a = np.full((6, 5), 3.0).astype(dt)
    a[:, 1] = np.array([tiny, 2 * tiny, 3 * tiny, tiny, tiny, 0.0]).astype(dt)
    a[2, 3] = np.array(tiny).astype(dt)
    x = tf.constant(a, dtype=tf.as_dtype(dtype))
    want = fastmoments.compute(a, axis=-1)
    assert want.mean[1] > 0
    for threads in (1, 2):
        mean, var, count = fmtf.moments(x, axis=-1, threads=threads)
        np.testing.assert_array_equal(mean.numpy(), np.asarray(want.mean))
        np.testing.assert_array_equal(var.numpy(), np.asarray(want.variance))
    exact = np.mean(a.astype(np.longdouble), axis=0)
    # A float64 mean of subnormals is subnormal: exact to its last place, not to 1e-15.
    ulp = np.finfo(np.float64).smallest_subnormal
    assert np.all(np.abs(mean.numpy() - exact) <= 1e-15 * np.abs(exact) + ulp)


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_moments_ddof_threads_and_large_offset(path, mode):
    rng = np.random.default_rng(1)
    a = rng.normal(1e4, 1.0, (3000, 7)).astype(np.float32)
    mean, var, count = run(mode, lambda t: fmtf.moments(t, axis=-1, ddof=1, threads=1), a)
    assert_moments(mean, var, count, a, -1, ddof=1, rtol=1e-9)
    a64 = rng.normal(1e9, 1.0, (5000,))
    mean, var, _ = run(mode, lambda t: fmtf.moments(t, axis=None), a64)
    assert_moments(mean, var, 5000, a64, None, rtol=1e-8)


def test_moments_thread_count_does_not_change_bits(path):
    a = np.random.default_rng(2).normal(5.0, 3.0, (1 << 21, 2)).astype(np.float32)
    one = [t.numpy() for t in fmtf.moment_state(a, threads=1)]
    two = [t.numpy() for t in fmtf.moment_state(a, threads=2)]
    for u, v in zip(one, two):
        np.testing.assert_array_equal(u, v)


def test_moments_empty_and_nan(path):
    mean, var, count = fmtf.moments(np.zeros((0, 3), np.float32))
    assert count.numpy().tolist() == [0, 0, 0]
    assert np.isnan(mean.numpy()).all() and np.isnan(var.numpy()).all()
    _, var, _ = fmtf.moments(np.ones((1, 2)), ddof=1)
    assert np.isnan(var.numpy()).all()
    a = np.array([[1.0, np.nan], [3.0, 5.0], [np.nan, 7.0], [4.0, 9.0]])
    mean, var, count = fmtf.moments(a)
    assert np.isnan(mean.numpy()).all()
    mean, var, count = fmtf.moments(a, nan_policy="omit")
    np.testing.assert_array_equal(count.numpy(), [3, 3])
    np.testing.assert_allclose(mean.numpy(), np.nanmean(a, axis=0), rtol=1e-15)
    np.testing.assert_allclose(var.numpy(), np.nanvar(a, axis=0), rtol=1e-14)


def test_moments_bad_inputs(path):
    with pytest.raises(TypeError, match="string"):
        fmtf.moments(tf.constant(["a", "b"]))
    with pytest.raises(TypeError, match="complex"):
        fmtf.moments(tf.constant([1 + 2j]))
    with pytest.raises(ValueError, match="out of range"):
        fmtf.moments(np.zeros((3, 2)), axis=2)
    with pytest.raises(ValueError, match="repeats"):
        fmtf.moments(np.zeros((3, 2)), axis=(1, -1))
    with pytest.raises(TypeError, match="axis"):
        fmtf.moments(np.zeros((3, 2)), axis=1.5)
    with pytest.raises(ValueError, match="ddof"):
        fmtf.moments(np.zeros((3, 2)), ddof=-1)
    with pytest.raises(ValueError, match="nan_policy"):
        fmtf.moments(np.zeros((3, 2)), nan_policy="skip")


def test_op_static_shapes_and_unknown_rank():
    fmtf._set_fallback(False)
    try:
        if not fmtf.op_info()["loaded"]:
            pytest.skip("op not loaded")

        @tf.function(input_signature=[tf.TensorSpec([None, 5, None], tf.float32)])
        def known_rank(x):
            state = fmtf.moment_state(x, axis=(-1, 1))
            assert len(state) == len(fmtf.STATE_FIELDS)
            for t in state:
                assert t.shape.as_list() == [5, None]
            mean = state[1]
            return mean

        a = np.random.default_rng(3).random((4, 5, 2)).astype(np.float32)
        np.testing.assert_allclose(known_rank(a).numpy(), a.astype(np.float64).mean(axis=0), rtol=1e-14)

        @tf.function(input_signature=[tf.TensorSpec(None, tf.float32)])
        def unknown_rank(x):
            return fmtf.moments(x, axis=-1)

        mean, var, count = unknown_rank(a)
        assert_moments(mean, var, count, a, -1)
        with pytest.raises(tf.errors.InvalidArgumentError, match="out of range"):
            unknown_rank(np.float32(1.0))
    finally:
        fmtf._set_fallback(None)


def test_moments_in_tf_data_map_graph_mode(path):
    a = np.random.default_rng(4).normal(10.0, 2.0, (100, 6)).astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices(a).batch(32).map(lambda x: fmtf.moments(x))
    for i, (mean, var, count) in enumerate(ds):
        assert_moments(mean, var, count, a[32 * i: 32 * (i + 1)], -1)


def test_states_in_tf_data_reduce_graph_mode(path):
    a = np.random.default_rng(9).normal(-20.0, 4.0, (500, 4)).astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices(a).batch(33)
    init = fmtf.zero_state([4])
    count, mean, m2, _ = ds.reduce(init, lambda s, x: fmtf.merge_states(s, fmtf.moment_state(x)))
    assert_moments(mean, m2.numpy() / count.numpy(), count, a, -1)


# -- merging ----------------------------------------------------------------------------------------

def test_merge_states_matches_one_pass(path):
    rng = np.random.default_rng(5)
    a = rng.normal(100.0, 3.0, (1000, 4))
    cuts = [0, 1, 17, 400, 999, 1000]
    state = fmtf.zero_state()
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        state = fmtf.merge_states(state, fmtf.moment_state(a[lo:hi]))
    count, mean, m2, _ = (t.numpy() for t in state)
    rmean, rvar, n = reference(a, -1)
    np.testing.assert_array_equal(count, [n] * 4)
    np.testing.assert_allclose(mean, rmean, rtol=1e-14)
    np.testing.assert_allclose(m2 / n, rvar, rtol=1e-12)
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError)):
        fmtf.merge_states(fmtf.moment_state(a), fmtf.moment_state(a[:, :3]))
    # A state is the whole record: a (count, mean, m2) triple is refused, not guessed at.
    with pytest.raises(ValueError, match="count, mean, m2, mean_lo"):
        fmtf.merge_states(fmtf.moment_state(a)[:3], fmtf.moment_state(a))
    with pytest.raises(ValueError, match="count, mean, m2, mean_lo"):
        fmtf.merge_states(fmtf.moment_state(a), 3.0)


# -- the state record: mean_lo through the ops ------------------------------------------------------

def assert_state_equal(got, want):
    """Bitwise equality of two states given as sequences of four arrays or tensors."""
    assert len(got) == len(want) == len(fmtf.STATE_FIELDS)
    for name, g, w in zip(fmtf.STATE_FIELDS, got, want):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w), err_msg=name)


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_state_round_trips_mean_lo(path, mode):
    """Moments outputs the kernel's mean_lo; MergeMoments reads both mean_lo inputs, merges with
    the core's combine and outputs mean_lo: the same bits as _core.reduce / _core.combine."""
    from fastmoments import _core

    rng = np.random.default_rng(12)
    a = rng.normal(1e9, 1.0, (300, 5))
    b = rng.normal(1e9 + 0.5, 2.0, (77, 5))
    want_a = fastmoments.compute(a).to_dict()
    want_b = fastmoments.compute(b).to_dict()
    assert np.any(want_a["mean_lo"] != 0)  # the case under test: residuals that matter
    state_a = run(mode, fmtf.moment_state, a)
    assert_state_equal([t.numpy() for t in state_a], [want_a[f] for f in fmtf.STATE_FIELDS])
    state_b = run(mode, fmtf.moment_state, b)
    merged = run(mode, fmtf.merge_states, state_a, state_b)
    want = _core.combine(*(want_a[f] for f in fmtf.STATE_FIELDS[:3]),
                         *(want_b[f] for f in fmtf.STATE_FIELDS[:3]), want_a["mean_lo"], want_b["mean_lo"])
    assert_state_equal([t.numpy() for t in merged], want)
    # The residuals alone decide this merge: two values 1e9 +- 2^-25 (below half an ulp of 1e9),
    # each held as mean 1e9 with mean_lo +-2^-25. A merge that dropped mean_lo would give m2 = 0.
    lo = 2.0 ** -25
    one = [np.array([1]), np.array([1e9]), np.array([0.0]), np.array([lo])]
    other = [np.array([1]), np.array([1e9]), np.array([0.0]), np.array([-lo])]
    count, mean, m2, mean_lo = (t.numpy() for t in run(mode, fmtf.merge_states, one, other))
    assert count.tolist() == [2] and mean.tolist() == [1e9] and mean_lo.tolist() == [0.0]
    assert m2.tolist() == [2.0 ** -49]  # (2 * 2^-25)^2 * 1 * 1 / 2
    count, mean, m2, mean_lo = (t.numpy() for t in run(mode, fmtf.merge_states, one, one))
    assert mean.tolist() == [1e9] and mean_lo.tolist() == [lo] and m2.tolist() == [0.0]


def test_stale_op_library_is_detected(monkeypatch):
    """A _tf_ops.so built from older sources (state of three fields) loads into a TF of the right
    version; the loader compares the registered signatures with the state record and falls back."""
    fmtf._set_fallback(False)
    try:
        if not fmtf.op_info()["loaded"]:
            pytest.skip(f"op not loaded: {fmtf.op_info()['reason']}")
        assert fmtf._signature_mismatch() is None
        # Seen from a module that expects a three-field state, the library is "stale" (the same
        # comparison a three-output library fails against the current module).
        monkeypatch.setattr(fmtf, "STATE_FIELDS", ("count", "mean", "m2"))
        monkeypatch.setattr(fmtf, "_LIBRARIES", {})
        fmtf._set_fallback(None)
        info = fmtf.op_info()
        assert not info["loaded"]
        assert "stale" in info["reason"] and "mean_lo" in info["reason"]
        assert "rebuild" in info["reason"]
    finally:
        monkeypatch.undo()
        fmtf._set_fallback(None)
    assert fmtf.op_info()["loaded"]


def offset_data(kind):
    """512 batches of 200 rows: float64 at offset 1e9 with std 1, or float32 mean 1000 std 10."""
    rng = np.random.default_rng(13)
    if kind == "float64 1e9":
        return rng.normal(1e9, 1.0, (512 * 200, 4))
    return rng.normal(1000.0, 10.0, (512 * 200, 4)).astype(np.float32)


def assert_matches_compute(count, mean, m2, a):
    """Within ~1e-15 of fastmoments.compute on the concatenated data (a plain float64 mean in
    the merges gave 3.7e-10 in the variance for the float64 case)."""
    want = fastmoments.compute(a)
    np.testing.assert_array_equal(np.asarray(count), want.count)
    mean, m2 = np.asarray(mean), np.asarray(m2)
    assert np.max(np.abs(mean - want.mean) / np.abs(want.mean)) <= 2.3e-16
    assert np.max(np.abs(m2 - want.m2) / want.m2) < 5e-15
    # and compute itself against the long-double reference
    r = shared_reference(a, -1)
    assert np.max(np.abs(m2 - r.m2.astype(np.float64)) / r.m2.astype(np.float64)) < 5e-15


@pytest.mark.parametrize("kind", ["float64 1e9", "float32 1000"])
@pytest.mark.parametrize("mode", ["eager", "function"])
def test_many_batches_at_an_offset_match_compute(path, mode, kind):
    a = offset_data(kind)
    ds = tf.data.Dataset.from_tensor_slices(a).batch(200)
    assert int(ds.cardinality()) == 512
    if mode == "eager":
        m = fmtf.dataset_moments(ds)
        d = m.to_dict()
        assert_matches_compute(d["count"], d["mean"], d["m2"], a)
        state = fmtf.zero_state()
        for x in ds:
            state = fmtf.merge_states(state, fmtf.moment_state(x))
    else:
        @tf.function
        def reduce_dataset(dataset):
            return dataset.reduce(fmtf.zero_state([4]),
                                  lambda s, x: fmtf.merge_states(s, fmtf.moment_state(x)))

        state = reduce_dataset(ds)
    count, mean, m2, _ = (t.numpy() for t in state)
    assert_matches_compute(count, mean, m2, a)


# -- dataset_moments --------------------------------------------------------------------------------

def features(n=1000, d=4, seed=6, dtype=np.float32):
    return np.random.default_rng(seed).normal(50.0, 5.0, (n, d)).astype(dtype)


def check(m, a, axis=-1, rtol=1e-11):
    assert isinstance(m, fastmoments.Moments)
    assert_moments(m.mean, m.variance, m.count, a, axis, rtol=rtol)


@pytest.mark.parametrize("batch", [1, 64, 999, 1000, 4096])
def test_dataset_batched_short_last_batch(path, batch):
    a = features()
    check(fmtf.dataset_moments(tf.data.Dataset.from_tensor_slices(a).batch(batch)), a)


def test_dataset_tuple_elements(path):
    a = features()
    y = np.arange(1000.0)
    w = np.ones(1000, np.float32)
    check(fmtf.dataset_moments(tf.data.Dataset.from_tensor_slices((a, y)).batch(100)), a)
    check(fmtf.dataset_moments(tf.data.Dataset.from_tensor_slices((a, y, w)).batch(128)), a)
    check(fmtf.dataset_moments(tf.data.Dataset.from_tensor_slices((a,)).batch(7)), a)


def test_dataset_unbatched_rows_and_scalars(path):
    a = features(n=5000, d=3)
    check(fmtf.dataset_moments(tf.data.Dataset.from_tensor_slices(a)), a)
    check(fmtf.dataset_moments(tf.data.Dataset.from_tensor_slices((a, a[:, 0]))), a)
    s = a[:, 0].astype(np.float64)
    m = fmtf.dataset_moments(tf.data.Dataset.from_tensor_slices(s), axis=None)
    check(m, s, axis=None)
    # rank-1 elements of unknown length are batches of scalars
    m = fmtf.dataset_moments(tf.data.Dataset.from_tensor_slices(s).batch(300), axis=None)
    check(m, s, axis=None)
    # batched= overrides the guess: fixed-length rank-1 elements read as batches of scalars
    m = fmtf.dataset_moments(tf.data.Dataset.from_tensor_slices(a), axis=None, batched=True)
    check(m, a, axis=None)


def test_dataset_rank3_axes_and_dtypes(path):
    rng = np.random.default_rng(7)
    a = rng.integers(0, 255, (300, 4, 5), dtype=np.uint8)
    ds = tf.data.Dataset.from_tensor_slices(a).batch(64)
    for axis in [-1, (1, 2), None, 1]:
        check(fmtf.dataset_moments(ds, axis=axis), a, axis=axis)
    h = rng.normal(2.0, 1.0, (500, 3)).astype(np.float16)
    check(fmtf.dataset_moments(tf.data.Dataset.from_tensor_slices(h).batch(50)), h)
    b = rng.normal(2.0, 1.0, (500, 3)).astype(ml_dtypes.bfloat16)
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(b, tf.bfloat16)).batch(50)
    check(fmtf.dataset_moments(ds), b)


def test_dataset_steps_repeat_and_cardinality(path):
    a = features(n=100)
    ds = tf.data.Dataset.from_tensor_slices(a).batch(30)  # batches of 30, 30, 30, 10
    with pytest.raises(ValueError, match="infinite"):
        fmtf.dataset_moments(ds.repeat())
    check(fmtf.dataset_moments(ds.repeat(), steps=2), a[:60])
    check(fmtf.dataset_moments(ds.repeat(), steps=5), np.concatenate([a, a[:30]]))
    check(fmtf.dataset_moments(ds, steps=100), a)
    rows = tf.data.Dataset.from_tensor_slices(a)
    check(fmtf.dataset_moments(rows.repeat(), steps=42), a[:42])
    unknown = ds.filter(lambda x: tf.shape(x)[0] > 10)
    assert int(unknown.cardinality()) == tf.data.UNKNOWN_CARDINALITY
    check(fmtf.dataset_moments(unknown), a[:90])
    with pytest.raises(ValueError, match="steps"):
        fmtf.dataset_moments(ds, steps=0)
    with pytest.raises(TypeError, match="steps"):
        fmtf.dataset_moments(ds, steps=2.0)


def test_dataset_empty(path):
    a = features(n=10)
    with pytest.raises(ValueError, match="empty"):
        fmtf.dataset_moments(tf.data.Dataset.from_tensor_slices(a).take(0))
    with pytest.raises(ValueError, match="empty"):
        fmtf.dataset_moments(tf.data.Dataset.from_tensor_slices(a).batch(4).filter(lambda x: False))
    with pytest.raises(ValueError, match="empty"):  # batches of zero rows
        fmtf.dataset_moments(tf.data.Dataset.from_tensor_slices(np.zeros((3, 0, 4), np.float32)))


def test_dataset_nan_policies(path):
    a = features(n=200, d=3, dtype=np.float64)
    a[5, 1] = np.nan
    ds = tf.data.Dataset.from_tensor_slices(a).batch(16)
    m = fmtf.dataset_moments(ds)
    assert np.isnan(m.mean[1]) and not np.isnan(m.mean[0])
    m = fmtf.dataset_moments(ds, nan_policy="omit")
    np.testing.assert_array_equal(m.count, [200, 199, 200])
    np.testing.assert_allclose(m.variance, np.nanvar(a, axis=0), rtol=1e-12)
    with pytest.raises(ValueError, match="NaN"):
        fmtf.dataset_moments(ds, nan_policy="raise")
    check(fmtf.dataset_moments(tf.data.Dataset.from_tensor_slices(a[6:]).batch(16), nan_policy="raise"), a[6:])


def test_dataset_ddof(path):
    a = features(n=50)
    m = fmtf.dataset_moments(tf.data.Dataset.from_tensor_slices(a).batch(8), ddof=1)
    np.testing.assert_allclose(m.variance, a.astype(np.float64).var(axis=0, ddof=1), rtol=1e-11)


def test_dataset_bad_inputs(path):
    a = features(n=20)
    with pytest.raises(TypeError, match="tf.data.Dataset"):
        fmtf.dataset_moments(a)
    with pytest.raises(TypeError, match="string"):
        fmtf.dataset_moments(tf.data.Dataset.from_tensor_slices(["a", "b"]).batch(2))
    with pytest.raises(TypeError, match="dict"):
        fmtf.dataset_moments(tf.data.Dataset.from_tensor_slices({"x": a}).batch(2))
    with pytest.raises(TypeError, match="dense"):
        fmtf.dataset_moments(tf.data.Dataset.from_tensor_slices(
            tf.ragged.constant([[1.0], [2.0, 3.0]])).batch(2))
    with pytest.raises(ValueError, match="batch axis"):
        fmtf.dataset_moments(tf.data.Dataset.from_tensor_slices(a).batch(4), axis=0)
    with pytest.raises(ValueError, match="out of range"):
        fmtf.dataset_moments(tf.data.Dataset.from_tensor_slices(a).batch(4), axis=3)
    with pytest.raises(ValueError, match="tuple of 4"):
        fmtf.dataset_moments(tf.data.Dataset.from_tensor_slices((a, a, a, a)).batch(4))
    # batches whose kept dimension changes cannot be pooled
    gen = tf.data.Dataset.from_generator(
        lambda: iter([np.ones((2, 3), np.float32), np.ones((2, 4), np.float32)]),
        output_signature=tf.TensorSpec([None, None], tf.float32))
    with pytest.raises(ValueError, match="cannot be merged"):
        fmtf.dataset_moments(gen)


def test_dataset_accuracy_float32_large_offset(path):
    """float32 N(1000, 10): the relative variance error stays below 1e-6 (Keras's float32
    dataset state loses digits here; its ndarray path is off by percents)."""
    rng = np.random.default_rng(8)
    a = rng.normal(1000.0, 10.0, (200_000, 8)).astype(np.float32)
    m = fmtf.dataset_moments(tf.data.Dataset.from_tensor_slices(a).batch(1024))
    _, rvar, _ = reference(a, -1)
    assert np.max(np.abs(m.variance - rvar) / rvar) < 1e-6
    check(m, a, rtol=1e-9)


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_near_overflow_float64_same_as_compute(path, mode):
    """Issue 17 row 12 through the op: float64 values whose differences or squares overflow give
    compute's finite mean (the kernel's overflow pass) and merge with the core's combine."""
    x = np.array([[1.7e308, 9e153, 1.0], [-1.7e308, -9e153, 2.0], [1.7e308, 0.0, 3.0]])
    want = fastmoments.compute(x, axis=-1).to_dict()
    assert np.isfinite(want["mean"]).all() and want["m2"][1] == 1.62e308
    state = run(mode, fmtf.moment_state, x)
    assert_state_equal([t.numpy() for t in state], [want[f] for f in fmtf.STATE_FIELDS])
    one = fmtf.moment_state(np.array([9e153]))
    other = fmtf.moment_state(np.array([-9e153]))
    count, mean, m2, _ = (t.numpy() for t in run(mode, fmtf.merge_states, one, other))
    assert count.tolist() == [2] and mean.tolist() == [0.0] and m2.tolist() == [1.62e308]
