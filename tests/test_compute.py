"""fastmoments.compute against the slow reference: dtypes x shapes x axes x layouts x NaN/inf,
both instruction sets; thread-count determinism; the numeric bars of the issue; Moments and
Accumulator behaviour; thread safety and GIL release."""

from __future__ import annotations

import concurrent.futures
import pickle
import sys
import threading
import warnings

from fractions import Fraction

import numpy as np
import pytest

import fastmoments
from conftest import (ALL_DTYPES, ISAS, LAYOUTS, in_layout, is_exact_int, is_float, random_values,
                      supported_isas)
from reference import (Ref, assert_matches, exact_integer_reference, exact_reference,
                       reference, relative_error)


# shape -> axes to try
SHAPES_AXES = [
    ((9,), [None, -1, 0]),
    ((1,), [None, 0]),
    ((6, 3), [None, -1, 0, (0, 1)]),
    ((1, 5), [-1, 0]),
    ((5, 1), [-1, None]),
    ((40, 3), [-1, 0, None]),
    ((3, 4, 5), [None, -1, 1, (0, 2), (-1, -3)]),
    ((2, 1, 3, 4), [-1, 1, (0, 3), None]),
    ((4, 3, 2, 3), [1, (1, 2), (-1,), (0, 1, 2, 3)]),
]
# Larger inputs: several chunks and tasks per output, C and strided layouts only.
MEDIUM_SHAPES_AXES = [
    ((20011, 3), [-1, None]),
    ((3, 7001), [0, -1]),
    ((70001,), [None]),
]
POLICIES = ("propagate", "omit", "raise")


def _run(fn):
    try:
        return fn()
    except (ValueError, TypeError) as exc:
        return exc


def _check_case(x, axis, nan_policy, ref_fn, tol, isas, monkeypatch, context):
    """Compares compute() under each instruction set with the reference; both raising agrees."""
    want = _run(lambda: ref_fn(x, axis, nan_policy))
    for name in isas:
        monkeypatch.setenv("FASTMOMENTS_ISA", name)
        got = _run(lambda: fastmoments.compute(x, axis=axis, nan_policy=nan_policy))
        where = f"{context}, axis={axis}, nan_policy={nan_policy}, isa={name}"
        if isinstance(want, Exception) or isinstance(got, Exception):
            assert type(got) is type(want), f"{where}: got {got!r}, reference {want!r}"
            continue
        assert_matches(got, want, context=where, **tol)


def _reference_and_tolerance(dtype):
    if is_exact_int(dtype):
        # Exact integer sums rounded once: within a few ulp of the exact answer.
        def ref(x, axis, nan_policy):
            return exact_reference(x, axis)

        return ref, dict(mean_rtol=1e-15, m2_rtol=1e-15, scale_atol=0.0)

    def ref(x, axis, nan_policy):
        return reference(x, axis, nan_policy)

    return ref, dict()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_matches_reference(dtype, layout, rng, tmp_path, monkeypatch):
    isas = [i for i in ISAS if i in supported_isas()]
    ref_fn, tol = _reference_and_tolerance(dtype)
    specials = ("none", "nan", "inf", "nan_inf") if is_float(dtype) else ("none",)
    cases = list(SHAPES_AXES)
    if layout in ("C", "strided", "byteswapped"):
        cases += MEDIUM_SHAPES_AXES
    for shape, axes in cases:
        for special in specials:
            x = in_layout(lambda s: random_values(rng, s, dtype, special), shape, layout, tmp_path)
            assert x.shape == shape
            for axis in axes:
                for policy in POLICIES:
                    if special == "none" and policy != "propagate" and not is_float(dtype):
                        continue  # integer data: the policy has nothing to do
                    _check_case(x, axis, policy, ref_fn, tol, isas, monkeypatch,
                                f"{dtype}, {layout}, shape={shape}, {special}")


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_integer_policies_agree(dtype, rng):
    x = random_values(rng, (50, 4), dtype)
    a = fastmoments.compute(x, nan_policy="propagate")
    for p in ("omit", "raise"):
        assert fastmoments.compute(x, nan_policy=p) == a


def test_npy_path_and_memmap(rng, tmp_path, isa):
    x = random_values(rng, (3001, 5), np.dtype(np.float32))
    path = tmp_path / "x.npy"
    np.save(path, x)
    want = fastmoments.compute(x)
    assert fastmoments.compute(str(path)) == want
    assert fastmoments.compute(path) == want
    mm = np.load(path, mmap_mode="r")
    assert fastmoments.compute(mm) == want
    assert_matches(fastmoments.compute(str(path), axis=None), reference(x, None))


def test_fortran_npy_path(rng, tmp_path):
    x = np.asfortranarray(random_values(rng, (301, 7), np.dtype(np.float64)))
    path = tmp_path / "f.npy"
    np.save(path, x)
    assert np.load(path, mmap_mode="r").flags.f_contiguous
    assert_matches(fastmoments.compute(str(path), axis=0), reference(x, 0))


def test_scalars_and_sequences():
    r = fastmoments.compute(np.float32(3.0), axis=None)
    assert (r.count, r.mean, r.m2) == (1, 3.0, 0.0)
    r = fastmoments.compute([1, 2, 3, 4], axis=None)
    assert r.count == 4 and r.mean == 2.5 and r.variance == 1.25
    r = fastmoments.compute([[1.0, 2.0], [3.0, 6.0]])
    np.testing.assert_array_equal(r.mean, [2.0, 4.0])
    np.testing.assert_array_equal(r.variance, [1.0, 4.0])


def test_result_types():
    r = fastmoments.compute(np.ones((4, 3), np.float32))
    assert r.count.dtype == np.int64 and r.mean.dtype == np.float64 and r.m2.dtype == np.float64
    assert r.variance.dtype == np.float64 and r.std.dtype == np.float64
    assert r.shape == (3,)
    r = fastmoments.compute(np.ones((4, 3), np.float32), axis=None)
    assert isinstance(r.count, int) and isinstance(float(r.mean), float)
    assert np.ndim(r.mean) == 0 and np.ndim(r.variance) == 0


def test_empty_kept_axis_gives_empty_result():
    x = np.zeros((5, 0), np.float32)
    r = fastmoments.compute(x, axis=-1)
    assert r.shape == (0,) and r.count.shape == (0,)
    np.testing.assert_array_equal(np.var(x, axis=0), r.variance)


@pytest.mark.parametrize("policy", ["propagate", "omit"])
def test_inf_mean_with_kept_inner_axis(policy, isa):
    x = np.array([[1.0, 1.0], [np.inf, 2.0], [3.0, 3.0]])
    r = fastmoments.compute(x, axis=-1, nan_policy=policy)
    np.testing.assert_array_equal(r.mean, [np.inf, 2.0])
    assert np.isnan(r.m2[0])


@pytest.mark.parametrize("shape,axis", [((4000,), None), ((1000, 4), -1), ((4, 1000), 0)])
def test_omit_precision_with_leading_nan(shape, axis, isa):
    x = 1e4 + np.random.default_rng(0).standard_normal(shape)
    x[(slice(None), 0) if axis == 0 else 0] = np.nan
    r = fastmoments.compute(x, axis=axis, nan_policy="omit")
    ref = reference(x, axis, "omit")
    assert relative_error(r.variance, ref.variance()) <= 1e-12


def test_omit_precision_with_scattered_nan(isa):
    rng = np.random.default_rng(0)
    x = 1e6 + 3 * rng.standard_normal((20000, 3))
    x[rng.random(x.shape) < 0.2] = np.nan
    r = fastmoments.compute(x, axis=-1, nan_policy="omit")
    assert relative_error(r.variance, reference(x, -1, "omit").variance()) <= 1e-12


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_omit_lanes_starting_at_different_rows(dtype, isa):
    # The shift search goes row by row over all lanes of a column block and drops the lanes found:
    # lanes whose first finite value is at row 0, 1, 37, 1000, the search's last row (65535), just
    # past it (65536: shift 0), at the last row, or never (count 0), on an offset of 1e6, with
    # NaN scattered after each lane's start (chunks whose own first rows are NaN).
    rng = np.random.default_rng(5)
    starts = [0, 1, 37, 1000, 65535, 65536, 69_999, None, 0, 3]
    x = (1e6 + rng.standard_normal((70_000, len(starts)))).astype(dtype)
    x[rng.random(x.shape) < 0.1] = np.nan
    for lane, start in enumerate(starts):
        x[: x.shape[0] if start is None else start, lane] = np.nan
        if start is not None:
            x[start, lane] = 1e6 + 0.5
    r = fastmoments.compute(x, axis=-1, nan_policy="omit")
    ref = reference(x, -1, "omit")
    np.testing.assert_array_equal(r.count, (~np.isnan(x)).sum(axis=0))
    found = r.count > 0
    with warnings.catch_warnings():  # the empty lane's variance warns, as NumPy's does
        warnings.simplefilter("ignore", RuntimeWarning)
        got, want = r.variance[found], ref.variance()[found]
    assert relative_error(got, want) <= 1e-12
    assert relative_error(r.mean[found], ref.mean[found]) <= 1e-15
    assert np.isnan(r.mean[~found]).all()
    again = fastmoments.compute(x, axis=-1, nan_policy="omit", threads=1)
    np.testing.assert_array_equal(again.mean, r.mean)
    np.testing.assert_array_equal(again.m2, r.m2)


def test_uint32_large_values_kept_inner_axis(isa):
    x = np.array([[4000000000, 1], [0, 3]], np.uint32)
    r = fastmoments.compute(x, axis=-1)
    np.testing.assert_array_equal(r.m2, [8e18, 2.0])


def test_uint32_large_values_reduced(isa):
    x = np.array([4000000000, 0], np.uint32)
    r = fastmoments.compute(x, axis=None)
    assert r.m2 == 8e18 and r.mean == 2e9


def test_inf_with_reduced_inner_axis(isa):
    x = np.array([[1.0, np.inf, 3.0], [1.0, 2.0, -np.inf], [np.inf, 1.0, -np.inf]])
    r = fastmoments.compute(x, axis=0)
    np.testing.assert_array_equal(r.mean, [np.inf, -np.inf, np.nan])
    assert np.isnan(r.m2).all()


def test_near_overflow_float64(isa):
    # Issue 17 row 12: differences and squares past the float64 range (tests/test_near_overflow.py
    # has the properties against exact rationals).
    x = np.array([1e308, 1e308, -1e308])
    r = fastmoments.compute(x, axis=None)
    assert np.isfinite(r.mean) and abs(r.mean - 1e308 / 3) <= 1e-15 * 1e308
    r = fastmoments.compute(np.array([1.7e308, -1.7e308, 1.7e308]), axis=None)
    assert abs(r.mean - 1.7e308 / 3) <= 1e-15 * 1.7e308 and r.m2 == np.inf
    r = fastmoments.compute(np.array([9e153, -9e153]), axis=None)
    assert r.mean == 0.0 and r.variance == np.var([9e153, -9e153]) == 8.1e307


def test_all_nan_column_under_omit():
    x = np.array([[np.nan, 1.0], [np.nan, 3.0]])
    r = fastmoments.compute(x, nan_policy="omit")
    np.testing.assert_array_equal(r.count, [0, 2])
    with pytest.warns(RuntimeWarning):
        var = r.variance
    assert np.isnan(var[0]) and var[1] == 1.0


def test_raise_policy():
    x = np.array([[1.0, np.nan], [2.0, 3.0]], np.float32)
    with pytest.raises(ValueError, match="NaN"):
        fastmoments.compute(x, nan_policy="raise")
    y = np.array([[1.0, np.inf], [2.0, -np.inf]], np.float32)  # inf - inf is not an input NaN
    r = fastmoments.compute(y, nan_policy="raise", axis=0)
    np.testing.assert_array_equal(r.mean, [np.inf, -np.inf])
    r = fastmoments.compute(y, nan_policy="raise", axis=None)
    assert np.isnan(r.mean) and np.isnan(r.m2)


# -- determinism ------------------------------------------------------------------------------------

THREAD_CASES = [
    ((3_000_003,), np.float32, None),
    ((200_001, 7), np.float64, -1),
    ((7, 200_001), np.float32, 0),
    ((1500, 30, 3), np.uint8, -1),
    ((64, 3, 50, 70), np.float16, 1),
    ((300_000, 4), np.int64, None),
]


@pytest.mark.parametrize("shape,dtype,axis", THREAD_CASES, ids=lambda v: str(v))
def test_thread_count_gives_identical_bits(shape, dtype, axis, rng, isa):
    x = random_values(rng, shape, np.dtype(dtype), "nan" if np.dtype(dtype).kind == "f" else "none")
    for policy in ("propagate", "omit"):
        one = fastmoments.compute(x, axis=axis, threads=1, nan_policy=policy)
        for t in (2, 7):
            other = fastmoments.compute(x, axis=axis, threads=t, nan_policy=policy)
            assert other == one, f"threads={t} differs from threads=1 ({policy})"
            np.testing.assert_array_equal(other.m2, one.m2)
        if shape == (3_000_003,) and policy == "omit":
            assert_matches(one, reference(x, axis, "omit"))


# Columns inside rows (NCHW axis=1: every sample holds a run of each channel) are read a block of
# columns at a time, piece by piece across the block, in memory order; the block follows the thread
# count. Each column must come out bit for bit as it does alone (a view of that one column, read by
# itself), whatever the thread count, and match the reference.
def _block_cases():
    yield "float32 (45,6,160,160): 100 KiB runs, two splits per column", np.float32, (45, 6, 160, 160), 1, None
    yield "float16 short runs, chunks ending mid-run", np.float16, (70, 5, 1517), 1, None
    yield "float64 two column axes (a cropped view)", np.float64, (9, 4, 5, 1000), (1, 2), lambda a: a[:, :, :3]
    yield "float32 strided runs", np.float32, (12, 9, 6000), 1, lambda a: a[:, :, ::2]
    yield "int16 NCHW", np.int16, (30, 7, 50, 50), 1, None
    yield "uint8 NCHW, two splits", np.uint8, (700, 3, 40, 40), 1, None


@pytest.mark.parametrize("case,dtype,shape,axis,view", list(_block_cases()), ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("special", ["none", "nan_inf"])
def test_column_blocks_match_each_column_alone(case, dtype, shape, axis, view, special, rng, isa):
    dt = np.dtype(dtype)
    if special != "none" and dt.kind != "f":
        pytest.skip("integers have no NaN or inf")
    if dt.kind == "f":  # 32 binades, both signs: the sums round, so their order shows in the bits
        x = (rng.choice([-1.0, 1.0], shape) * np.exp2(rng.uniform(-20, 12, shape))).astype(dt)
        if special != "none":  # a few NaN and +-inf: most columns stay finite
            flat = x.reshape(-1)
            flat[rng.choice(flat.size, 6, replace=False)] = np.nan
            flat[rng.choice(flat.size, 4, replace=False)] = [np.inf, -np.inf, np.inf, -np.inf]
    else:
        x = random_values(rng, shape, dt)
    x = view(x) if view else x
    kept = (axis,) if isinstance(axis, int) else axis
    policies = ("propagate", "omit") if dt.kind == "f" else ("propagate",)
    for policy in policies:
        one = fastmoments.compute(x, axis=axis, threads=1, nan_policy=policy)
        for t in (2, 7):
            other = fastmoments.compute(x, axis=axis, threads=t, nan_policy=policy)
            assert other == one, f"threads={t} differs from threads=1 ({policy})"
        for idx in np.ndindex(*(x.shape[k] for k in kept)):
            alone = x[tuple(slice(i, i + 1) if k in kept else slice(None)  # a view: the same memory
                            for k, i in zip(range(x.ndim), _spread(idx, kept, x.ndim)))]
            got = fastmoments.compute(alone, axis=axis, threads=2, nan_policy=policy)
            for name in ("count", "mean", "m2"):
                np.testing.assert_array_equal(np.asarray(getattr(got, name)).reshape(-1),
                                              np.asarray(getattr(one, name))[idx].reshape(-1),
                                              err_msg=f"{name} of column {idx} ({policy})")
        if dt.kind == "f":
            assert_matches(one, reference(x, axis, policy))
        else:
            assert_matches(one, exact_integer_reference(x, axis))


def _spread(idx, kept, ndim):
    """idx over the kept axes -> one index per axis (0 for the reduced ones)."""
    it = iter(idx)
    return [next(it) if k in kept else 0 for k in range(ndim)]


def test_default_threads_honours_omp_num_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert fastmoments.default_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert fastmoments.default_threads() >= 1


# -- numeric bars of issue 2 ------------------------------------------------------------------------

def _variance_error(r, ref: Ref) -> float:
    return relative_error(np.asarray(r.variance), ref.variance())


def _bar(x, axis, ref: Ref, bar: float, monkeypatch):
    for name in [i for i in ISAS if i in supported_isas()]:
        monkeypatch.setenv("FASTMOMENTS_ISA", name)
        r = fastmoments.compute(x, axis=axis)
        err = _variance_error(r, ref)
        assert err <= bar, f"variance relative error {err:.3g} > {bar:g} (isa={name})"
        assert relative_error(np.asarray(r.mean), ref.mean) <= 1e-12


def test_bar_float32_offset_1000_columns(monkeypatch):
    x = (1000.0 + 10.0 * np.random.default_rng(1).standard_normal((1_000_000, 16))).astype(np.float32)
    _bar(x, -1, reference(x, -1), 1e-12, monkeypatch)


def test_bar_float32_offset_1e4_axis_none(monkeypatch):
    x = (1e4 + np.random.default_rng(2).standard_normal(20_000_000)).astype(np.float32)
    _bar(x, None, reference(x, None), 1e-12, monkeypatch)


def test_bar_float64_offset_1e9(monkeypatch):
    x = 1e9 + np.random.default_rng(3).standard_normal(10_000_000)
    _bar(x, None, reference(x, None), 1e-12, monkeypatch)


def test_bar_float16_near_60000(monkeypatch):
    rng = np.random.default_rng(4)
    x = rng.uniform(5.5e4, 6.5e4, size=(250_000, 4)).astype(np.float16)
    assert np.isfinite(x).all()
    for axis in (None, -1, 0):
        ref = reference(x, axis)
        _bar(x, axis, ref, 1e-12, monkeypatch)
        assert np.isfinite(ref.m2).all()


@pytest.mark.parametrize("dtype,shape", [(np.uint8, (48, 224, 224, 3)),
                                         (np.int16, (1_000_000, 8))], ids=["uint8", "int16"])
def test_bar_integers_exact(dtype, shape, monkeypatch):
    info = np.iinfo(dtype)
    x = np.random.default_rng(5).integers(info.min, info.max, size=shape, dtype=dtype,
                                          endpoint=True)
    for axis in (-1, None):
        ref = exact_integer_reference(x, axis)
        for name in [i for i in ISAS if i in supported_isas()]:
            monkeypatch.setenv("FASTMOMENTS_ISA", name)
            r = fastmoments.compute(x, axis=axis)
            assert relative_error(r.mean, ref.mean) <= 1e-15
            assert relative_error(r.m2, ref.m2) <= 1e-15
            assert relative_error(r.variance, ref.variance()) <= 1e-15


@pytest.mark.parametrize("dtype", [np.int64, np.uint64])
def test_64bit_integers_exact_over_full_range(dtype, monkeypatch):
    """Sums of 64-bit values and their squares (up to 2^128 each) are exact: mean and M2 round
    once, even across the whole range, where float64 sums would lose the low bits."""
    info = np.iinfo(dtype)
    rng = np.random.default_rng(11)
    cases = [rng.integers(info.min, info.max, size=(20_000, 3), dtype=dtype, endpoint=True),
             # a narrow spread far from zero: 2^62 + small integers (float64 spacing there is 1024)
             (np.asarray(2**62, dtype) + rng.integers(0, 1000, size=(20_000, 3)).astype(dtype)),
             np.full((5, 2), info.max, dtype), np.full((5, 2), info.min, dtype)]
    # Small values (the int64 fast path) with large ones sprinkled in, and values at the edges of
    # the fast path (|v| around 2^25); more than 4096 small rows per chunk.
    mixed = rng.integers(-1000 if info.min < 0 else 0, 1000, size=(20_000, 3)).astype(dtype)
    mixed[::997] = np.asarray(info.max - 5, dtype)
    edges = np.array([2**25 - 1, 2**25, 2**25 + 1] + ([-2**25, -2**25 - 1, -2**25 + 1]
                                                         if info.min < 0 else [0, 1, 2]), dtype)
    cases += [mixed, np.resize(edges, (9_000, 3)), np.resize(edges[::-1], (9_000, 3))]
    for x in cases:
        cols = [[int(v) for v in x[:, j]] for j in range(x.shape[1])]
        n = x.shape[0]
        for name in [i for i in ISAS if i in supported_isas()]:
            monkeypatch.setenv("FASTMOMENTS_ISA", name)
            for axis in (-1, 0):
                r = fastmoments.compute(x if axis == -1 else x.T, axis=axis)
                for j, col in enumerate(cols):
                    s1 = sum(col)
                    mean = Fraction(s1, n)
                    m2 = Fraction(sum(v * v for v in col)) - Fraction(s1 * s1, n)
                    where = (name, axis, j)
                    assert abs(Fraction(r.mean[j]) - mean) <= abs(mean) / 2**52, where
                    assert abs(Fraction(r.m2[j]) - m2) <= m2 / 2**50, where


@pytest.mark.parametrize("shape,axis", [((8000,), None), ((3000, 3), -1), ((3000, 3), None)])
def test_outlier_first_value(shape, axis, monkeypatch):
    """The chunk shift is the first value; an outlier there made s2 - s1^2/n cancel ~13 bits.
    Such chunks are summed again around their mean: M2 stays within a few ulp of exact."""
    v = 9.088492421234567e12
    x = np.zeros(shape)
    x[(0,) * len(shape)] = v
    n = x.shape[0] if axis == -1 else x.size
    exact_m2 = Fraction(v) ** 2 * (n - 1) / n
    for name in [i for i in ISAS if i in supported_isas()]:
        monkeypatch.setenv("FASTMOMENTS_ISA", name)
        r = fastmoments.compute(x, axis=axis)
        m2 = np.ravel(r.m2)[0]
        assert abs(Fraction(m2) - exact_m2) <= exact_m2 / 2**46, (name, m2 / float(exact_m2) - 1)


def test_integers_exact_small_spread():
    # Exactly representable answers must come out exactly.
    x = np.array([[0, 1], [2, 3], [4, 5], [6, 7]], np.int32) + np.int32(2**30)
    r = fastmoments.compute(x)
    np.testing.assert_array_equal(r.mean, [2**30 + 3, 2**30 + 4])
    np.testing.assert_array_equal(r.m2, [20.0, 20.0])


# -- ddof, Moments, pickling --------------------------------------------------------------------

@pytest.mark.parametrize("ddof", [0, 1, 3])
def test_ddof_variance_std(ddof, rng):
    x = 5.0 + rng.standard_normal((50, 4))
    r = fastmoments.compute(x, ddof=ddof)
    ref = reference(x)
    assert relative_error(r.variance, ref.variance(ddof)) <= 1e-14
    assert relative_error(r.std, np.sqrt(ref.variance(ddof))) <= 1e-14
    np.testing.assert_allclose(r.variance, np.var(x, axis=0, ddof=ddof), rtol=1e-13)
    np.testing.assert_allclose(r.std, np.std(x, axis=0, ddof=ddof), rtol=1e-13)
    assert r.ddof == ddof
    assert r.with_ddof(0).variance[0] * 50 == pytest.approx(r.m2[0], rel=1e-15)


def test_ddof_too_large_gives_nan_with_warning():
    r = fastmoments.compute(np.array([1.0, 2.0]), axis=None, ddof=2)
    with pytest.warns(RuntimeWarning):
        assert np.isnan(r.variance)


def test_moments_rebuild_from_arrays(rng):
    x = random_values(rng, (100, 3), np.dtype(np.float32))
    r = fastmoments.compute(x, ddof=1)
    rebuilt = fastmoments.Moments(r.count, r.mean, r.m2, ddof=1)
    assert rebuilt == r
    np.testing.assert_array_equal(rebuilt.variance, r.variance)
    again = fastmoments.Moments(**r.to_dict())
    assert again == r
    # Rebuilt from plain lists (e.g. JSON) too.
    js = fastmoments.Moments(r.count.tolist(), r.mean.tolist(), r.m2.tolist())
    assert js == r


@pytest.mark.parametrize("axis", [None, -1])
def test_pickle_moments_and_accumulator(axis, rng):
    x = random_values(rng, (64, 5), np.dtype(np.float64))
    r = fastmoments.compute(x, axis=axis, ddof=1)
    back = pickle.loads(pickle.dumps(r))
    assert back == r and back.ddof == 1
    np.testing.assert_array_equal(back.variance, r.variance)
    acc = fastmoments.Accumulator(axis=axis, ddof=1)
    acc.update(x[:10])
    acc2 = pickle.loads(pickle.dumps(acc))
    acc.update(x[10:])
    acc2.update(x[10:])
    assert acc2.result() == acc.result()
    empty = pickle.loads(pickle.dumps(fastmoments.Accumulator()))
    assert empty.empty


# -- merging and accumulating -------------------------------------------------------------------

def _offset_values(rng, shape, dtype):
    """Well-conditioned data (mean/std = 100): merges must match one pass to 1e-12."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return (1000.0 + 10.0 * rng.standard_normal(shape)).astype(dtype)
    return random_values(rng, shape, dtype)


def _assert_close_moments(a, b, rtol=1e-12):
    np.testing.assert_array_equal(a.count, b.count)
    np.testing.assert_allclose(a.mean, b.mean, rtol=rtol, atol=0)
    np.testing.assert_allclose(a.m2, b.m2, rtol=rtol, atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8, np.int16], ids=str)
def test_accumulator_uneven_batches_equals_one_pass(dtype, rng):
    x = _offset_values(rng, (60_000, 5), dtype)
    sizes = [1, 7, 1000, 3, 40_000, 2]
    sizes.append(len(x) - sum(sizes))
    for axis in (-1, None):
        acc = fastmoments.Accumulator(axis=axis)
        start = 0
        for n in sizes:
            acc.update(x[start:start + n])
            start += n
        whole = fastmoments.compute(x, axis=axis)
        _assert_close_moments(acc.result(), whole)
        assert_matches(acc.result(), reference(x, axis), m2_rtol=1e-12)


def test_accumulator_merge(rng):
    x = _offset_values(rng, (5000, 3), np.float32)
    a, b = fastmoments.Accumulator(), fastmoments.Accumulator()
    a.update(x[:1234])
    b.update(x[1234:3000]).update(x[3000:])
    a.merge(b)
    _assert_close_moments(a.result(), fastmoments.compute(x))
    a.merge(fastmoments.Accumulator())  # an empty one changes nothing
    _assert_close_moments(a.result(), fastmoments.compute(x))


def test_accumulator_empty_result_raises():
    with pytest.raises(ValueError):
        fastmoments.Accumulator().result()


@pytest.mark.parametrize("split_axis", [0, 1, 2])
def test_merge_of_splits(split_axis, rng):
    x = _offset_values(rng, (40, 30, 6), np.float64)
    whole = fastmoments.compute(x, axis=-1)
    assert_matches(whole, reference(x, -1), m2_rtol=1e-12, scale_atol=0.0)
    for k in (2, 3, 7):
        if split_axis == 2:
            continue  # kept axis: a split there is not a merge (different features)
        parts = np.array_split(x, k, axis=split_axis)
        merged = fastmoments.compute(parts[0], axis=-1)
        for p in parts[1:]:
            merged = merged.merge(fastmoments.compute(p, axis=-1))
        _assert_close_moments(merged, whole)
    # Merge order does not matter beyond rounding; + is merge.
    a, b = fastmoments.compute(x[:10], axis=-1), fastmoments.compute(x[10:], axis=-1)
    _assert_close_moments(a + b, b.merge(a))


def test_merge_with_empty_state():
    r = fastmoments.compute(np.array([[1.0, 2.0], [3.0, 5.0]]))
    zero = fastmoments.Moments(np.zeros(2, np.int64), np.zeros(2), np.zeros(2))
    assert r.merge(zero) == r and zero.merge(r) == r


# -- Python threads and the GIL ---------------------------------------------------------------------

def test_concurrent_calls_from_python_threads(rng):
    arrays = [random_values(rng, (50_000 + 997 * i, 3 + i % 4), np.dtype(dt))
              for i, dt in enumerate([np.float32, np.float64, np.uint8, np.int16] * 3)]
    expected = [fastmoments.compute(a, threads=1) for a in arrays]
    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda a: fastmoments.compute(a, threads=2), arrays * 2))
    for got, want in zip(results, expected * 2):
        assert got == want


def test_gil_released_during_compute():
    # With a huge switch interval the interpreter never takes the GIL away from a thread; the
    # main thread can only run while the worker sits in compute() if compute released the GIL.
    x = np.ones(32 << 20, np.float32)
    old = sys.getswitchinterval()
    seen_running = []
    try:
        sys.setswitchinterval(30.0)
        for _ in range(3):
            state = {"done": False}

            def work():
                fastmoments.compute(x, axis=None, threads=1)
                state["done"] = True

            t = threading.Thread(target=work)
            t.start()  # returns once the worker gives the GIL up
            seen_running.append(not state["done"])
            t.join()
            if seen_running[-1]:
                break
    finally:
        sys.setswitchinterval(old)
    assert any(seen_running), "the main thread never ran while compute() was running"


def test_user_input_not_modified(rng):
    x = random_values(rng, (1000, 4), np.dtype(np.float32), "nan")
    before = x.copy()
    for p in ("propagate", "omit"):
        fastmoments.compute(x, nan_policy=p)
    np.testing.assert_array_equal(x, before)


def test_no_warnings_from_compute(rng):
    x = random_values(rng, (100, 3), np.dtype(np.float64), "nan_inf")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fastmoments.compute(x, nan_policy="omit")
        fastmoments.compute(x)


def test_core_stub_matches_module():
    import ast
    import pathlib

    from fastmoments import _core

    stub = pathlib.Path(fastmoments.__file__).with_name("_core.pyi")
    if not stub.exists():
        pytest.skip("_core.pyi not installed next to the package")
    tree = ast.parse(stub.read_text())
    declared = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    declared |= {n.target.id for n in tree.body
                 if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    public = {n for n in dir(_core) if not n.startswith("__")}
    assert public - declared == set(), "names missing from _core.pyi"
    assert {n for n in declared if not n.startswith("_States")} - public == set()


def test_uint32_full_range_kept_inner_axis(isa):
    info = np.iinfo(np.uint32)
    x = np.random.default_rng(0).integers(0, info.max, size=(1000, 3), dtype=np.uint32,
                                          endpoint=True)
    r = fastmoments.compute(x, axis=-1)
    assert relative_error(r.m2, exact_reference(x, -1).m2) <= 1e-15
