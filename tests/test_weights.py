"""Weighted and masked moments (``weights=``, ``where=``, masked arrays): against an exact
Fraction reference, against repeated rows for integer weights, against NumPy's weighted
estimators, across threads, ISA variants, layouts, merges and bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import fastmoments
from fastmoments import _core
from conftest import supported_isas
from reference import exact_reference, exact_weighted_reference

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402


def rel(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = np.maximum(np.abs(want), np.finfo(np.float64).tiny)
    return float(np.max(np.abs(got - want) / scale)) if got.size else 0.0


def per_row(w, shape):
    """A 1-D per-row weight vector as the full weight array (the reference's view)."""
    return np.broadcast_to(np.reshape(w, (shape[0],) + (1,) * (len(shape) - 1)), shape)


def check_exact(r, x, w, axis, *, mean_tol=1e-15, var_tol=1e-12):
    ref = exact_weighted_reference(x, w, axis)
    np.testing.assert_array_equal(np.asarray(r.count), ref.count)
    # Weight sums are plain float64 sums per chunk, merged pairwise: a few ulp.
    assert rel(r.sum_weights, ref.sum_weights) <= 1e-13
    assert rel(r.sum_weights_sq, ref.sum_weights_sq) <= 1e-13
    assert rel(r.mean, ref.mean) <= mean_tol, (r.mean, ref.mean)
    assert rel(r.m2, ref.m2) <= var_tol, (r.m2, ref.m2)


# ---- the adversarial cases of the issue against an exact reference -------------------------------

ADVERSARIAL = {
    "f32_mean1000_std10": lambda rng, shape: (1000 + 10 * rng.standard_normal(shape)).astype(np.float32),
    "f64_offset1e9": lambda rng, shape: 1e9 + rng.standard_normal(shape),
}


def loguniform_weights(rng, n):
    return 10.0 ** rng.uniform(-3, 3, n)


@pytest.mark.parametrize("case", sorted(ADVERSARIAL))
@pytest.mark.parametrize("layout", ["rows", "elementwise", "axis_none", "keep_axis0", "fortran", "mask"])
def test_adversarial_against_exact_reference(case, layout):
    rng = np.random.default_rng(12)
    shape = (3000, 7)
    x = ADVERSARIAL[case](rng, shape)
    if layout == "rows":
        w = loguniform_weights(rng, shape[0])
        r = fastmoments.compute(x, axis=-1, weights=w)
        check_exact(r, x, per_row(w, shape), -1)
    elif layout == "elementwise":
        w = loguniform_weights(rng, x.size).reshape(shape)
        r = fastmoments.compute(x, axis=-1, weights=w)
        check_exact(r, x, w, -1)
    elif layout == "axis_none":
        w = loguniform_weights(rng, shape[0])
        r = fastmoments.compute(x, axis=None, weights=w)
        check_exact(r, x, per_row(w, shape), None)
    elif layout == "keep_axis0":
        w = loguniform_weights(rng, x.size).reshape(shape).astype(np.float32)
        r = fastmoments.compute(x, axis=0, weights=w)
        check_exact(r, x, w, 0)
    elif layout == "fortran":
        xf = np.asfortranarray(x)[::-2]
        w = loguniform_weights(rng, xf.shape[0])
        r = fastmoments.compute(xf, axis=-1, weights=w)
        check_exact(r, xf, per_row(w, xf.shape), -1)
    else:
        m = rng.random(shape) < 0.7
        r = fastmoments.compute(x, axis=-1, where=m)
        check_exact(r, x, m.astype(np.float64), -1)


@pytest.mark.parametrize("threads", [1, 2])
def test_large_offset_many_chunks_rows(threads):
    """Enough rows for many chunks and tasks (merges), per-row weights spanning 1e-3..1e3."""
    rng = np.random.default_rng(1)
    x = 1e9 + rng.standard_normal((400_000, 3))
    w = loguniform_weights(rng, x.shape[0])
    r = fastmoments.compute(x, axis=-1, weights=w, threads=threads)
    # Reference: exact sums are too slow here; longdouble two-pass around the exact mean is
    # far below the 1e-12 bar.
    xl, wl = x.astype(np.longdouble), w.astype(np.longdouble)[:, None]
    mean = (wl * xl).sum(0) / wl.sum()
    m2 = (wl * (xl - mean) ** 2).sum(0)
    assert rel(r.mean, mean) <= 1e-15
    assert rel(r.m2, m2) <= 1e-12


# ---- integer weights are repeated rows ------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.uint8, np.int64])
@pytest.mark.parametrize("axis", [-1, None])
def test_integer_weights_equal_repeated_rows(dtype, axis):
    rng = np.random.default_rng(3)
    if np.dtype(dtype).kind == "f":
        x = (50 + 3 * rng.standard_normal((2000, 9))).astype(dtype)
    else:
        x = rng.integers(0, min(np.iinfo(dtype).max, 1000), (2000, 9)).astype(dtype)
    k = rng.integers(0, 5, x.shape[0])
    repeated = np.repeat(x, k, axis=0)
    r = fastmoments.compute(x, axis=axis, weights=k)
    rep = exact_reference(repeated, axis)  # the repeated rows, summed exactly
    # count: the values of positive weight; sum_weights: the repeated rows' count.
    np.testing.assert_array_equal(r.count, np.count_nonzero(k) * np.asarray(rep.count) // k.sum())
    np.testing.assert_array_equal(r.sum_weights, np.asarray(rep.count, np.float64))
    tol = 1e-15
    assert rel(r.mean, rep.mean) <= tol
    assert rel(r.m2, rep.m2) <= tol
    d1 = fastmoments.compute(x, axis=axis, weights=k, ddof=1)
    assert rel(d1.variance, rep.m2 / (rep.count - 1)) <= tol
    # ... and the unweighted kernel on the repeated rows agrees to its own accuracy.
    plain = fastmoments.compute(repeated, axis=axis)
    assert rel(r.variance, plain.variance) <= 1e-12


# ---- integer data with integer weights: exact sums ---------------------------------------------------

INT_DTYPES = [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64, np.bool_]


def integer_data(rng, dtype, shape, values):
    """Values over the whole range of the dtype (its extremes included), or small ones."""
    if np.dtype(dtype) == np.bool_:
        return rng.integers(0, 2, shape).astype(np.bool_)
    if values == "small":
        return rng.integers(0, 50, shape).astype(dtype)
    info = np.iinfo(dtype)
    x = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    x.flat[:4] = [info.min, info.max, info.max, info.min]
    return x


def weight_array(rng, form, shape):
    """(compute keyword arguments, the weights as an array of the data's shape)."""
    huge = form.startswith("huge")  # up to 2^62: the fast 64-bit sums cannot hold them
    high = 1 << 62 if huge else 20 if form.startswith("small") else 1000  # small: 32-bit sums of 8-bit data
    if form.endswith("rows"):
        w = rng.integers(0, high, shape[0])
        return {"weights": w}, np.broadcast_to(w.reshape((-1,) + (1,) * (len(shape) - 1)), shape)
    if form == "mask":
        m = rng.random(shape) < 0.5
        return {"where": m}, m
    w = rng.integers(0, high, shape)
    w[rng.random(shape) < 0.2] = 0
    return {"weights": w}, w


def check_exact_integer(r, x, w, axis):
    """Exact sums rounded once: weight sums correctly rounded; mean and m2 within 2 ulp."""
    ref = exact_weighted_reference(x, w, axis)
    np.testing.assert_array_equal(np.asarray(r.count), ref.count)
    np.testing.assert_array_equal(np.asarray(r.sum_weights, np.float64), ref.sum_weights)
    np.testing.assert_array_equal(np.asarray(r.sum_weights_sq, np.float64), ref.sum_weights_sq)
    live = ref.sum_weights > 0
    assert rel(np.asarray(r.mean)[live], ref.mean[live]) <= 4.5e-16, (r.mean, ref.mean)
    assert rel(np.asarray(r.m2)[live], ref.m2[live]) <= 4.5e-16, (r.m2, ref.m2)
    assert np.all(np.isnan(np.asarray(r.mean)[~live]))


@pytest.mark.parametrize("dtype", INT_DTYPES)
@pytest.mark.parametrize("values", ["full", "small"])
@pytest.mark.parametrize("form", ["rows", "small_rows", "elementwise", "mask", "huge_rows", "huge_elementwise"])
def test_integer_weights_on_integer_data_are_exact(dtype, values, form):
    rng = np.random.default_rng(abs(hash((np.dtype(dtype).name, values, form))) % 2**32)
    x = integer_data(rng, dtype, (1500, 7), values)
    kw, w = weight_array(rng, form, x.shape)
    for axis in (-1, None, 0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # rows of weight 0 under axis=0
            check_exact_integer(fastmoments.compute(x, axis=axis, **kw), x, w, axis)
    # Fortran order and a strided view take the strided loops.
    check_exact_integer(fastmoments.compute(np.asfortranarray(x), axis=-1, **kw), x, w, -1)
    check_exact_integer(fastmoments.compute(x[::2], axis=None,
                                            **{k: v[::2] for k, v in kw.items()}), x[::2], w[::2], None)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.int64])
@pytest.mark.parametrize("axis", [-1, None])
def test_integer_weights_give_the_bits_of_repeated_rows(dtype, axis):
    """Both are exact sums rounded by the same finish: the same bits, not just 1e-15."""
    rng = np.random.default_rng(31)
    x = rng.integers(-100 if np.dtype(dtype).kind == "i" else 0, 100, (4000, 9)).astype(dtype)
    k = rng.integers(0, 6, x.shape[0])
    got = fastmoments.compute(x, axis=axis, weights=k)
    want = fastmoments.compute(np.repeat(x, k, axis=0), axis=axis)
    np.testing.assert_array_equal(got.mean, want.mean)
    np.testing.assert_array_equal(got.m2, want.m2)
    np.testing.assert_array_equal(got.state.mean_lo, want.state.mean_lo)
    np.testing.assert_array_equal(got.sum_weights, want.count)


def test_integer_mask_gives_the_bits_of_the_kept_values():
    rng = np.random.default_rng(32)
    x = rng.integers(-30000, 30000, (3000, 11)).astype(np.int16)
    m = rng.random(x.shape) < 0.3
    got = fastmoments.compute(x, axis=None, where=m)
    want = fastmoments.compute(x[m], axis=None)
    assert (got.count, got.mean, got.m2) == (want.count, want.mean, want.m2)


def test_integer_weights_per_output_beyond_2_53_stay_exact():
    """One weight per output takes the unweighted kernel with the weight applied as a double,
    exact only below 2^53: larger integer weights take the exact weighted kernel."""
    rng = np.random.default_rng(33)
    x = rng.integers(-100, 100, (1000, 4)).astype(np.int32)
    w = np.array([[2**60 + 1, 3, 0, 2**53 + 1]], np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the output of weight 0
        r = fastmoments.compute(x, axis=-1, weights=w)
    check_exact_integer(r, x, np.broadcast_to(w, x.shape), -1)


@pytest.mark.parametrize("threads", [1, 2])
def test_integer_weights_exact_across_tasks(threads):
    """Many tasks and chunks (lanes and runs), fast and wide sums mixed: same bits for every
    thread count and the exact result."""
    rng = np.random.default_rng(34)
    x = rng.integers(-2**40, 2**40, (300_000, 5))
    w = rng.integers(0, 1 << 20, x.shape)
    w[:1000] = 1 << 40  # the first chunks need the wide sums
    for axis in (-1, None):
        r = fastmoments.compute(x, axis=axis, weights=w, threads=threads)
        one = fastmoments.compute(x, axis=axis, weights=w, threads=1)
        np.testing.assert_array_equal(r.mean, one.mean)
        np.testing.assert_array_equal(r.m2, one.m2)
    small = slice(0, 3000)
    check_exact_integer(fastmoments.compute(x[small], axis=-1, weights=w[small], threads=threads),
                        x[small], w[small], -1)


def test_integer_weights_other_types():
    rng = np.random.default_rng(35)
    x = rng.integers(0, 200, (500, 3)).astype(np.uint8)
    w = rng.integers(0, 100, 500)
    want = fastmoments.compute(x, weights=w)
    for wt in (np.int8, np.uint16, np.int32, np.uint64):
        got = fastmoments.compute(x, weights=w.astype(wt))
        np.testing.assert_array_equal(got.m2, want.m2)
        np.testing.assert_array_equal(got.mean, want.mean)
    # uint64 weights of 2^63 and more have no int64: float64 weights (not exact, still close).
    big = np.full(500, 2**63 + 2**12, np.uint64)
    r = fastmoments.compute(x, weights=big)
    assert rel(r.mean, fastmoments.compute(x).mean) <= 1e-15
    # Integer weights of float data stay float64 weights.
    f = x.astype(np.float32)
    assert rel(fastmoments.compute(f, weights=w).m2, want.m2) <= 1e-13
    with pytest.raises(ValueError, match="non-negative"):
        fastmoments.compute(x, weights=np.r_[w[:-1], -1].astype(np.int8))


def test_int64_weight_code_needs_integer_data():
    x = np.ones((4, 3), np.float32)
    w = np.ones((4, 3), np.int64)
    with pytest.raises(ValueError, match="integer data"):
        _core.reduce_weighted(x, w, [False, True], 11, 3)


# ---- NumPy's weighted estimators ------------------------------------------------------------------

def test_matches_numpy_average_and_cov():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1000, 4)) * [1, 10, 100, 1000] + [0, 5, -5, 50]
    w = rng.random(1000) * 3
    r = fastmoments.compute(x, axis=-1, weights=w, ddof=1)
    np.testing.assert_allclose(r.mean, np.average(x, axis=0, weights=w), rtol=1e-13)
    for j in range(4):
        np.testing.assert_allclose(r.reliability_variance[j], np.cov(x[:, j], aweights=w, ddof=1), rtol=1e-12)
    fw = rng.integers(1, 4, 1000)
    r = fastmoments.compute(x, axis=-1, weights=fw, ddof=1)
    for j in range(4):
        np.testing.assert_allclose(r.variance[j], np.cov(x[:, j], fweights=fw, ddof=1), rtol=1e-12)


def test_where_matches_numpy_where():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((300, 5, 4)).astype(np.float32)
    m = rng.random(x.shape) < 0.5
    r = fastmoments.compute(x, axis=1, where=m)
    xd = x.astype(np.float64)
    np.testing.assert_allclose(r.mean, np.mean(xd, axis=(0, 2), where=m), rtol=1e-12)
    np.testing.assert_allclose(r.variance, np.var(xd, axis=(0, 2), where=m), rtol=1e-12)
    np.testing.assert_array_equal(r.count, m.sum(axis=(0, 2)))
    # A mask broadcast by NumPy's rules: (4,) masks the last axis.
    m4 = np.array([True, False, True, True])
    r = fastmoments.compute(x, axis=None, where=m4)
    np.testing.assert_allclose(r.mean, np.mean(xd, where=m4), rtol=1e-12)


def test_masked_array_is_read_with_its_mask():
    rng = np.random.default_rng(7)
    data = rng.standard_normal((200, 3))
    mask = rng.random(data.shape) < 0.3
    ma = np.ma.masked_array(data, mask=mask)
    r = fastmoments.compute(ma, axis=-1)
    np.testing.assert_allclose(r.mean, ma.mean(axis=0).data, rtol=1e-13)
    np.testing.assert_allclose(r.variance, ma.var(axis=0).data, rtol=1e-12)
    np.testing.assert_array_equal(r.count, ma.count(axis=0))
    # No mask at all: the plain (unweighted) result.
    plain = np.ma.masked_array(data)
    assert fastmoments.compute(plain, axis=-1) == fastmoments.compute(data, axis=-1)


def test_masked_values_do_not_exist_even_nan():
    x = np.array([[1.0, np.nan], [np.inf, 2.0], [3.0, 4.0]])
    m = np.isfinite(x)
    r = fastmoments.compute(x, axis=-1, where=m)
    np.testing.assert_array_equal(r.mean, [2.0, 3.0])
    r = fastmoments.compute(x, axis=-1, weights=m.astype(np.float64))
    np.testing.assert_array_equal(r.mean, [2.0, 3.0])
    np.testing.assert_array_equal(r.count, [2, 2])


def test_nan_policy_with_weights():
    x = np.array([[1.0, 2.0], [np.nan, 4.0], [3.0, 6.0]])
    w = np.array([1.0, 2.0, 1.0])
    r = fastmoments.compute(x, axis=-1, weights=w, nan_policy="omit")
    np.testing.assert_allclose(r.mean, [2.0, (2 + 8 + 6) / 4])
    np.testing.assert_array_equal(r.count, [2, 3])
    np.testing.assert_array_equal(r.sum_weights, [2.0, 4.0])
    assert np.isnan(fastmoments.compute(x, axis=-1, weights=w).mean[0])
    with pytest.raises(ValueError, match="NaN"):
        fastmoments.compute(x, axis=-1, weights=w, nan_policy="raise")
    # A NaN of weight 0 is no NaN input.
    fastmoments.compute(x, axis=-1, weights=[1.0, 0.0, 1.0], nan_policy="raise")


def test_fully_masked_feature_is_nan_with_the_empty_warning():
    x = np.arange(12.0).reshape(4, 3)
    m = np.ones_like(x, bool)
    m[:, 1] = False
    r = fastmoments.compute(x, axis=-1, where=m)
    assert np.isnan(r.mean[1]) and r.count[1] == 0
    with pytest.warns(RuntimeWarning, match="Degrees of freedom"):
        v = r.variance
    assert np.isnan(v[1]) and np.isfinite(v[[0, 2]]).all()
    w = np.ones_like(x)
    w[:, 2] = 0
    r = fastmoments.compute(x, axis=-1, weights=w)
    assert np.isnan(r.mean[2])
    with pytest.warns(RuntimeWarning, match="Degrees of freedom"):
        r.variance
    # The same warning as an empty index under nan_policy="omit".
    y = x.copy()
    y[:, 1] = np.nan
    with pytest.warns(RuntimeWarning, match="Degrees of freedom"):
        fastmoments.compute(y, axis=-1, nan_policy="omit").variance


@pytest.mark.parametrize("form", ["mask", "weights"])
def test_masked_fill_values_and_masked_features_keep_exact_results(form):
    # A lane's chunks take their shift from its first values of positive weight: masked fill
    # values far from the data (1e30 in the first 40 rows of every lane, beyond the rows probed
    # for a shift) and features masked everywhere must neither spoil the variance nor cost a scan.
    rng = np.random.default_rng(12)
    x = 1e9 + rng.standard_normal((2000, 40))
    keep = np.ones(x.shape, bool)
    x[:40] = 1e30
    keep[:40] = False
    keep[:, 7] = False  # a feature masked everywhere
    keep[rng.random(x.shape) < 0.3] = False
    kw = {"where": keep} if form == "mask" else {"weights": keep * 10.0 ** rng.uniform(-3, 3, x.shape)}
    w = keep if form == "mask" else kw["weights"]
    with pytest.warns(RuntimeWarning, match="Degrees of freedom"):
        r = fastmoments.compute(x, axis=-1, **kw)
        assert np.isnan(r.variance[7])
    live = np.arange(40) != 7
    ref = exact_weighted_reference(x[:, live], w[:, live].astype(np.float64), -1)
    assert rel(r.mean[live], ref.mean) <= 1e-15
    assert rel(r.m2[live], ref.m2) <= 1e-12
    per_feature = np.ones((1, 40), bool)
    per_feature[0, 7] = False
    y = x[40:]
    with pytest.warns(RuntimeWarning, match="Degrees of freedom"):
        r = fastmoments.compute(y, axis=-1, where=per_feature)
        assert np.isnan(r.variance[7])
    ref = exact_weighted_reference(y[:, live], np.ones_like(y[:, live]), -1)
    assert rel(r.m2[live], ref.m2) <= 1e-12


# ---- lanes whose positive weights start late: the column shift search is bounded ------------------

# Rows before which column j has no positive weight (its values there are a 1e30 fill): inside
# the 16 rows searched for a column shift (lanes mode), just past them, past the 256 values
# searched in run mode, at the last row, and never (a fully masked feature).
LATE_STARTS = [0, 5, 16, 17, 300, 2999, None]


def late_weights(rng, x, form):
    """Weights (or a mask) of x's shape with column j's positive weights from LATE_STARTS[j] on,
    and x set to 1e30 where the weight is zero; returns (kwargs for compute, weights as float64)."""
    keep = np.ones(x.shape, bool)
    for j, start in enumerate(LATE_STARTS):
        keep[: x.shape[0] if start is None else start, j] = False
    x[~keep] = 1e30
    if form == "mask":
        return {"where": keep}, keep.astype(np.float64)
    w = keep * 10.0 ** rng.uniform(-3, 3, x.shape)
    return {"weights": w}, w


@pytest.mark.parametrize("case", sorted(ADVERSARIAL))
@pytest.mark.parametrize("layout", ["elementwise", "mask", "run", "run_mask", "fortran"])
def test_late_positive_weights_keep_exact_results(case, layout):
    # A lane whose first values of positive weight lie beyond the bounded shift search merges its
    # chunks relative to 0 (weighted_reduce.hpp, compute_shifts): against the exact reference
    # with offsets 1e9 (float64) and 1000 (float32), weights 1e-3..1e3, fills 1e30 never a shift.
    rng = np.random.default_rng(21)
    x = ADVERSARIAL[case](rng, (3000, len(LATE_STARTS)))
    kw, w = late_weights(rng, x, "mask" if layout.endswith("mask") else "weights")
    if layout.startswith("run"):  # features along axis 0, their values contiguous: run mode
        xt = np.ascontiguousarray(x.T)
        kw = {k: np.ascontiguousarray(v.T) for k, v in kw.items()}
        r = fastmoments.compute(xt, axis=0, **kw)
    elif layout == "fortran":
        r = fastmoments.compute(np.asfortranarray(x), axis=-1, **{k: np.asfortranarray(v) for k, v in kw.items()})
    else:
        r = fastmoments.compute(x, axis=-1, **kw)
    live = np.array([s is not None for s in LATE_STARTS])
    check_exact_columns(r, x, w, live)


def check_exact_columns(r, x, w, live):
    """check_exact on the live columns; the others (no positive weight) are NaN with the warning of
    an empty feature under nan_policy="omit"."""
    ref = exact_weighted_reference(x[:, live], w[:, live], -1)
    np.testing.assert_array_equal(np.asarray(r.count)[live], ref.count)
    assert rel(r.sum_weights[live], ref.sum_weights) <= 1e-13
    assert rel(r.mean[live], ref.mean) <= 1e-15, (r.mean[live], ref.mean)
    assert rel(r.m2[live], ref.m2) <= 1e-12, (r.m2[live], ref.m2)
    assert (np.asarray(r.count)[~live] == 0).all() and np.isnan(r.mean[~live]).all()
    with pytest.warns(RuntimeWarning, match="Degrees of freedom"):
        v = r.variance
    assert np.isnan(v[~live]).all() and np.isfinite(v[live]).all()


@pytest.mark.parametrize("layout", ["elementwise", "mask", "run"])
def test_late_positive_weights_across_tasks_threads_same_bits(layout):
    # 1.1M rows: more than one task per column (lanes and run mode), so the late column (positive
    # weights only from row 1.08M, inside the last task) and the fully masked one merge empty task
    # states; threads=1 and threads=2 give the same bits, and the 1e-12 bar holds at offset 1e9.
    rng = np.random.default_rng(22)
    n = 1_100_000
    x = 1e9 + rng.standard_normal((n, 4))
    keep = np.ones(x.shape, bool)
    keep[:1_080_000, 1] = False
    keep[:, 2] = False
    keep[:50, 3] = False
    x[~keep] = 1e30
    w = keep * 10.0 ** rng.uniform(-3, 3, x.shape)
    kw = {"where": keep} if layout == "mask" else {"weights": w}
    if layout == "mask":
        w = keep.astype(np.float64)
    if layout == "run":
        runs = {k: np.ascontiguousarray(v.T) for k, v in kw.items()}
        outs = [fastmoments.compute(np.ascontiguousarray(x.T), axis=0, threads=t, **runs) for t in (1, 2)]
    else:
        outs = [fastmoments.compute(x, axis=-1, threads=t, **kw) for t in (1, 2)]
    a, b = outs
    for f in ("count", "mean", "m2", "sum_weights", "sum_weights_sq"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    np.testing.assert_array_equal(a.state.mean_lo, b.state.mean_lo)
    # Reference: x - 1e9 is exact in float64, so two passes in longdouble on the shifted values
    # around their exact-to-~1e-19 mean are far below the bar (the shift moves the mean only).
    live = keep.any(axis=0)
    d = (x[:, live] - 1e9).astype(np.longdouble)
    wl = w[:, live].astype(np.longdouble)
    mean = (wl * d).sum(0) / wl.sum(0)
    m2 = (wl * (d - mean) ** 2).sum(0)
    assert rel(a.mean[live], 1e9 + mean) <= 1e-15
    assert rel(a.m2[live], m2) <= 1e-12
    assert (a.count[~live] == 0).all() and np.isnan(a.mean[~live]).all()


# ---- determinism: threads and ISA variants --------------------------------------------------------

@pytest.mark.parametrize("layout", ["rows", "elementwise_f32", "mask", "axis_none", "keep_axis0_rows"])
def test_threads_give_identical_bits(layout):
    rng = np.random.default_rng(8)
    x = (100 + rng.standard_normal((40_000, 40))).astype(np.float32)
    kw = {"axis": -1}
    if layout == "rows":
        kw["weights"] = rng.random(x.shape[0])
    elif layout == "elementwise_f32":
        kw["weights"] = rng.random(x.shape).astype(np.float32)
    elif layout == "mask":
        kw["where"] = rng.random(x.shape) < 0.5
    elif layout == "axis_none":
        kw.update(axis=None, weights=rng.random(x.shape[0]))
    else:
        kw.update(axis=0, weights=rng.random(x.shape[0]))
    a = fastmoments.compute(x, threads=1, **kw)
    b = fastmoments.compute(x, threads=2, **kw)
    for f in ("count", "mean", "m2", "sum_weights", "sum_weights_sq"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    np.testing.assert_array_equal(a.state.mean_lo, b.state.mean_lo)


@pytest.mark.parametrize("wdtype", [np.float64, np.float32, np.bool_, "rows", "int_rows", "int_elementwise"])
@pytest.mark.parametrize("axis", [(-1,), ()])
def test_isa_variants_give_identical_bits(wdtype, axis):
    rng = np.random.default_rng(9)
    x = (10 + rng.standard_normal((3001, 37))).astype(np.float32)
    dcode = 11
    if wdtype == "rows":
        w = np.broadcast_to(rng.random((x.shape[0], 1)), x.shape)
        code = 0
    elif wdtype in ("int_rows", "int_elementwise"):  # integer data: exact sums (int16 code 2)
        x, dcode, code = rng.integers(-3000, 3000, x.shape).astype(np.int16), 2, 3
        w = rng.integers(0, 9, (x.shape[0], 1) if wdtype == "int_rows" else x.shape)
        w = np.broadcast_to(w, x.shape)
    else:
        w = (rng.random(x.shape) * 2).astype(wdtype)
        code = {np.float64: 0, np.float32: 1, np.bool_: 2}[wdtype]
    keep = [False, bool(axis)]
    outs = [_core.reduce_weighted(x, w, keep, dcode, code, False, 2, None, isa) for isa in supported_isas()]
    for other in outs[1:]:
        for a, b in zip(outs[0][:6], other[:6]):
            np.testing.assert_array_equal(a, b)


# ---- merging ---------------------------------------------------------------------------------------

def test_accumulator_weighted_batches_equal_one_pass():
    rng = np.random.default_rng(10)
    x = 1e6 + rng.standard_normal((10_000, 6))
    w = loguniform_weights(rng, x.shape[0])
    acc = fastmoments.Accumulator(axis=-1)
    for s in np.array_split(np.arange(x.shape[0]), 7):
        acc.update(x[s], weights=w[s])
    one = fastmoments.compute(x, axis=-1, weights=w)
    got = acc.result()
    assert rel(got.mean, one.mean) <= 1e-15
    assert rel(got.m2, one.m2) <= 1e-12
    np.testing.assert_allclose(got.sum_weights, one.sum_weights, rtol=1e-14)


def test_unweighted_batches_merge_as_unit_weights():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((1000, 3))
    acc = fastmoments.Accumulator(axis=-1)
    acc.update(x[:400])
    acc.update(x[400:], weights=np.ones(600))
    ref = fastmoments.compute(x, axis=-1)
    got = acc.result()
    assert got.weighted
    np.testing.assert_allclose(got.mean, ref.mean, rtol=1e-14)
    np.testing.assert_allclose(got.variance, ref.variance, rtol=1e-13)
    np.testing.assert_array_equal(got.sum_weights, [1000.0] * 3)
    # merge is commutative to the bit
    a = fastmoments.compute(x[:400], axis=-1, weights=rng.random(400))
    b = fastmoments.compute(x[400:], axis=-1)
    assert a.merge(b) == b.merge(a)


def test_weighted_moments_round_trip():
    import pickle

    x = np.arange(20.0).reshape(10, 2)
    r = fastmoments.compute(x, axis=-1, weights=np.arange(10.0))
    assert fastmoments.Moments(**r.to_dict()) == r
    assert pickle.loads(pickle.dumps(r)) == r
    assert r != fastmoments.compute(x, axis=-1)
    with pytest.raises(ValueError, match="both"):
        fastmoments.Moments(1, 0.0, 0.0, sum_weights=1.0)


# ---- layouts and doors ------------------------------------------------------------------------------

def test_memmap_with_weights(tmp_path):
    rng = np.random.default_rng(13)
    x = rng.standard_normal((5000, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    w = rng.random(5000)
    a = fastmoments.compute(mm, axis=-1, weights=w)
    b = fastmoments.compute(x, axis=-1, weights=w)
    assert a == b


def test_byteswapped_and_strided_data():
    rng = np.random.default_rng(14)
    x = rng.standard_normal((500, 6))
    w = rng.random(500)
    want = fastmoments.compute(x, axis=-1, weights=w)
    swapped = x.astype(x.dtype.newbyteorder("S"))
    got = fastmoments.compute(swapped, axis=-1, weights=w.astype(w.dtype.newbyteorder("S")))
    assert rel(got.mean, want.mean) <= 1e-15 and rel(got.m2, want.m2) <= 1e-13
    got = fastmoments.compute(x[::-1], axis=-1, weights=w[::-1])
    assert rel(got.mean, want.mean) <= 1e-15 and rel(got.m2, want.m2) <= 1e-13


def test_one_dimensional_weights_weight_rows_even_on_square_data():
    x = np.arange(9.0).reshape(3, 3)
    w = np.array([1.0, 0.0, 2.0])
    r = fastmoments.compute(x, axis=-1, weights=w)
    np.testing.assert_allclose(r.mean, np.average(x, axis=0, weights=w))
    r = fastmoments.compute(x, axis=-1, weights=(w + 1)[None, :])  # NumPy broadcasting: per column
    np.testing.assert_allclose(r.mean, x.mean(axis=0))


@pytest.mark.parametrize("form", ["rows", "elementwise_dask", "mask", "both"])
def test_dask_weights_match_the_array_door(form):
    da = pytest.importorskip("dask.array")
    import fastmoments.dask as fmd

    rng = np.random.default_rng(16)
    x = 1e6 + rng.standard_normal((3000, 5, 4))
    dx = da.from_array(x, chunks=(700, 5, 3))
    kw, dkw = {}, {}
    if form in ("rows", "both"):
        w = loguniform_weights(rng, x.shape[0])
        kw["weights"], dkw["weights"] = w, da.from_array(w, chunks=1000)
    if form == "elementwise_dask":
        w = rng.random(x.shape)
        kw["weights"], dkw["weights"] = w, da.from_array(w, chunks=(500, 2, 4))
    if form in ("mask", "both"):
        m = rng.random((5, 4)) < 0.6
        m[0, 0] = False
        kw["where"] = dkw["where"] = np.broadcast_to(m, x.shape)
    want = fastmoments.compute(x, axis=(1, 2), **kw)
    got = fmd.moments(dx, axis=(1, 2), **dkw).compute()
    np.testing.assert_array_equal(got.count, want.count)
    np.testing.assert_allclose(got.sum_weights, want.sum_weights, rtol=1e-14)
    np.testing.assert_allclose(got.mean, want.mean, rtol=1e-15, equal_nan=True)
    np.testing.assert_allclose(got.m2, want.m2, rtol=1e-12, equal_nan=True)
    got2 = fastmoments.compute(dx, axis=(1, 2), **dkw)  # the front door's dask route
    np.testing.assert_allclose(got2.m2, want.m2, rtol=1e-12, equal_nan=True)
    with pytest.raises(ValueError, match="does not broadcast"):
        fmd.moments(dx, weights=np.ones(7))


@pytest.mark.parametrize("form", ["rows", "elementwise_and_mask"])
def test_dask_integer_weights_of_integer_data(form):
    """Exact sums per chunk, chunk states merged by Chan's formula: ~1 ulp of the exact result,
    the integer weights kept as integers (not float64) also under where=."""
    da = pytest.importorskip("dask.array")
    import fastmoments.dask as fmd

    rng = np.random.default_rng(17)
    x = rng.integers(-2**40, 2**40, (3000, 6))
    dx = da.from_array(x, chunks=(700, 4))
    if form == "rows":
        w = rng.integers(0, 100, x.shape[0])
        kw, full = {"weights": da.from_array(w, chunks=1000)}, np.broadcast_to(w[:, None], x.shape)
    else:
        w = rng.integers(0, 100, x.shape)
        m = rng.random(x.shape) < 0.6
        kw = {"weights": da.from_array(w, chunks=(500, 3)), "where": m}
        full = np.where(m, w, 0)
    got = fmd.moments(dx, axis=-1, **kw).compute()
    ref = exact_weighted_reference(x, full, -1)
    np.testing.assert_array_equal(got.sum_weights, ref.sum_weights)
    spread = np.sqrt(ref.m2 / ref.sum_weights)  # a merge rounds the mean to the data's scale
    assert np.all(np.abs(got.mean - ref.mean) <= 2e-16 * (np.abs(ref.mean) + spread))
    assert rel(got.m2, ref.m2) <= 1e-15


def test_cli_weights_file(tmp_path):
    import json
    import subprocess
    import sys

    rng = np.random.default_rng(17)
    x = (1000 + 10 * rng.standard_normal((4000, 6))).astype(np.float32)
    w = rng.integers(0, 4, x.shape[0]).astype(np.float64)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "w.npy", w)
    out = tmp_path / "s.json"
    run = subprocess.run([sys.executable, "-m", "fastmoments", "stats", str(tmp_path / "x.npy"),
                          "--weights", str(tmp_path / "w.npy"), "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    doc = json.loads(out.read_text())
    want = fastmoments.compute(x, axis=-1, weights=w)
    np.testing.assert_array_equal(doc["mean"], want.mean)
    np.testing.assert_array_equal(doc["sum_weights"], want.sum_weights)
    bad = subprocess.run([sys.executable, "-m", "fastmoments", "stats", str(tmp_path / "x.npy"),
                          str(tmp_path / "x.npy"), "--weights", str(tmp_path / "w.npy")],
                         capture_output=True, text=True, timeout=300)
    # Two files are 8000 rows: 4000 weights name both shapes.
    assert bad.returncode != 0 and "(4000,)" in bad.stderr and "(8000, 6)" in bad.stderr


# ---- bad input ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [10, 100_000])  # checked up front; checked by the kernel's pass
@pytest.mark.parametrize("bad,match", [(-1.0, "non-negative"), (np.nan, "NaN"), (np.inf, "infinite"),
                                       (-np.inf, "infinite")])
@pytest.mark.parametrize("form", ["rows", "elementwise", "run"])
def test_bad_weights_raise_naming_the_problem(n, bad, match, form):
    x = np.ones((n, 3), np.float32)
    if form == "rows":
        w = np.ones(n)
        w[n // 2] = bad
        kw = {"axis": -1}
    elif form == "elementwise":
        w = np.ones((n, 3), np.float32)
        w[n // 2, 1] = bad
        kw = {"axis": -1}
    else:
        w = np.ones((n, 3))
        w[n // 2, 1] = bad
        kw = {"axis": None}
    before = w.copy()
    with pytest.raises(ValueError, match=match):
        fastmoments.compute(x, weights=w, **kw)
    np.testing.assert_array_equal(w, before)


def test_bad_masks_and_shapes():
    x = np.ones((4, 3))
    with pytest.raises(ValueError, match="boolean"):
        fastmoments.compute(x, where=np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"\(5,\).*\(4, 3\)"):
        fastmoments.compute(x, weights=np.ones(5))
    with pytest.raises(ValueError, match=r"\(4, 2\).*\(4, 3\)"):
        fastmoments.compute(x, where=np.ones((4, 2), bool))
    with pytest.raises(ValueError, match="real numbers"):
        fastmoments.compute(x, weights=np.ones(4, complex))
    with pytest.raises(ValueError, match="real numbers"):
        fastmoments.compute(x, weights=["a", "b", "c", "d"])


def test_inputs_are_not_modified():
    rng = np.random.default_rng(15)
    x = rng.standard_normal((100, 3))
    w = rng.random(100)
    m = rng.random((100, 3)) < 0.5
    copies = (x.copy(), w.copy(), m.copy())
    fastmoments.compute(x, axis=-1, weights=w, where=m)
    for a, b in zip((x, w, m), copies):
        np.testing.assert_array_equal(a, b)


# ---- properties ------------------------------------------------------------------------------------

@st.composite
def weighted_cases(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64, np.int32, np.uint8, np.float16]))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=7))
    if np.dtype(dtype).kind == "f":
        elements = st.floats(-1e4, 1e4, width=8 * np.dtype(dtype).itemsize)
    else:
        elements = None
    x = draw(hnp.arrays(dtype, shape, elements=elements))
    steps = tuple(draw(st.sampled_from([1, -1])) for _ in shape)
    x = x[tuple(slice(None, None, s) for s in steps)]
    kind = draw(st.sampled_from(["elementwise", "mask", "rows", "broadcast_last"]))
    if kind == "mask":
        w = draw(hnp.arrays(np.bool_, shape))
    elif kind == "rows":
        w = draw(hnp.arrays(np.float64, (shape[0],), elements=st.floats(0, 1e3)))
    elif kind == "broadcast_last":  # (1, .., F): a bare (F,) on square data would weight rows
        w = draw(hnp.arrays(np.float32, (1,) * (len(shape) - 1) + (shape[-1],),
                            elements=st.floats(0, 1e3, width=32)))
    else:
        w = draw(hnp.arrays(np.float64, shape, elements=st.sampled_from([0.0, 0.5, 1.0, 3.0, 1e-3, 1e3])))
    nd = len(shape)
    axis = draw(st.one_of(st.none(), st.integers(-nd, nd - 1)))
    return x, w, kind, axis


@settings(max_examples=150, deadline=None)
@given(weighted_cases())
def test_property_matches_exact_reference(case):
    x, w, kind, axis = case
    if kind == "mask":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            r = fastmoments.compute(x, axis=axis, where=w)
        full = w.astype(np.float64)
    else:
        r = fastmoments.compute(x, axis=axis, weights=w)
        full = np.broadcast_to(w.reshape((x.shape[0],) + (1,) * (x.ndim - 1)), x.shape) \
            if kind == "rows" and x.ndim > 1 else np.broadcast_to(w, x.shape)
    ref = exact_weighted_reference(x, full, axis)
    np.testing.assert_array_equal(np.asarray(r.count), ref.count)
    np.testing.assert_allclose(r.sum_weights, ref.sum_weights, rtol=1e-14)
    # Rounding errors scale with the data's magnitude, not with a mean that cancels (int32 data
    # spans +-2e9: a mean of 2.4e4 from values of 6.7e7 is right to 8e-17 of them, 2e-13 of it).
    xmax = float(np.max(np.abs(x.astype(np.float64)), initial=1.0))
    np.testing.assert_allclose(r.mean, ref.mean, rtol=1e-13, atol=1e-13 * xmax)
    scale = ref.sum_weights * xmax ** 2 + 1  # m2 errors are relative to sum(w) * x^2
    np.testing.assert_allclose(r.m2, ref.m2, rtol=1e-11, atol=float(np.max(scale)) * 1e-13)


# ---- one weight per output (weights constant along every reduced axis) ----------------------------

@pytest.mark.parametrize("case", sorted(ADVERSARIAL))
@pytest.mark.parametrize("form", ["weights", "mask", "rows_axis0", "nchw"])
def test_one_weight_per_output_against_exact_reference(case, form):
    """A weight or mask per output (the unweighted kernel with the weight applied per output): the
    exact weighted reference, NaN and 1e30 values of masked outputs left out, the same bits for
    every thread count."""
    rng = np.random.default_rng(31)
    if form == "nchw":
        x = ADVERSARIAL[case](rng, (40, 5, 6, 7))
        axis, wshape = 1, (1, 5, 1, 1)
    elif form == "rows_axis0":
        x = ADVERSARIAL[case](rng, (300, 9))
        axis, wshape = 0, (300, 1)
    else:
        x = ADVERSARIAL[case](rng, (3000, 9))
        axis, wshape = -1, (1, 9)
    w = 10.0 ** rng.uniform(-3, 3, wshape)
    dead = np.zeros(wshape, bool)
    dead.flat[::3] = True
    w[dead] = 0.0
    kw = {"where": ~dead} if form == "mask" else {"weights": w}
    full_w = np.broadcast_to(np.where(dead, 0.0, 1.0 if form == "mask" else w), x.shape)
    x = x.copy()
    x[np.broadcast_to(dead, x.shape) & (rng.random(x.shape) < 0.5)] = np.nan  # masked: never read
    x[np.broadcast_to(dead, x.shape) & (rng.random(x.shape) < 0.3)] = 1e30
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the empty (masked) outputs
        runs = [fastmoments.compute(x, axis=axis, threads=t, **kw) for t in (1, 2)]
    live = np.asarray(runs[0].count) > 0
    assert not live.ravel()[::3].any() and live.sum() == live.size - live.ravel()[::3].size
    ref = exact_weighted_reference(np.where(full_w > 0, x, 0.0), full_w, axis)
    np.testing.assert_array_equal(np.asarray(runs[0].count), ref.count)
    for name, tol in (("mean", 1e-15), ("m2", 1e-12), ("sum_weights", 1e-15), ("sum_weights_sq", 1e-15)):
        got, want = np.asarray(getattr(runs[0], name))[live], np.asarray(getattr(ref, name))[live]
        assert rel(got, want) <= tol, (name, got, want)
        np.testing.assert_array_equal(np.asarray(getattr(runs[1], name)), np.asarray(getattr(runs[0], name)))
    assert np.isnan(np.asarray(runs[0].mean)[~live]).all()

