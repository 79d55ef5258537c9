"""Property tests (hypothesis): results match the reference for random shapes, strides, dtypes
and axes; merging any split equals one pass; any thread count gives identical bits."""

from __future__ import annotations

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

import fastmoments  # noqa: E402
from conftest import (ALL_DTYPES, BFLOAT16, ISAS, is_exact_int, random_values,  # noqa: E402
                      supported_isas)
from reference import EPS64, assert_matches, exact_reference, reference  # noqa: E402

# Finite float64 inputs stay below 1e100 so that m2 (a sum of squares) cannot overflow.
F64_LIMIT = 1e100
BF16_LIMIT = float(np.float32(1e38))  # float32 values that stay finite as bfloat16


def _elements(dtype: np.dtype, allow_nan: bool):
    """Element strategy: any value of the dtype, floats kept where m2 cannot overflow."""
    if dtype.kind in "biu":
        return None  # hypothesis' default: the whole integer range
    if dtype == BFLOAT16:  # drawn as float32 (below bfloat16's largest finite value), cast later
        finite = st.floats(-BF16_LIMIT, BF16_LIMIT, width=32)
    elif dtype.itemsize == 8:
        finite = st.floats(-F64_LIMIT, F64_LIMIT)
    else:
        finite = st.floats(allow_nan=False, allow_infinity=False, width=8 * dtype.itemsize)
    if not allow_nan:
        return finite
    return st.one_of(finite, st.sampled_from([np.nan, np.inf, -np.inf]))


@st.composite
def strided_arrays(draw, dtypes=ALL_DTYPES, allow_nan=True, max_side=6):
    """An array with random dtype, shape, axis order and steps (negative included)."""
    dtype = draw(st.sampled_from(dtypes))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=max_side))
    nd = len(shape)
    steps = draw(st.lists(st.sampled_from([1, 1, 2, -1, -2, 3]), min_size=nd, max_size=nd))
    perm = draw(st.permutations(range(nd)))
    base_shape = tuple(shape[p] * abs(steps[p]) for p in perm)
    draw_dtype = np.dtype(np.float32) if dtype == BFLOAT16 else dtype
    base = draw(hnp.arrays(draw_dtype, base_shape, elements=_elements(dtype, allow_nan)))
    if dtype == BFLOAT16:
        base = base.astype(BFLOAT16)
    x = base.transpose(np.argsort(perm))
    x = x[tuple(slice(None, None, s) for s in steps)]
    assert x.shape == shape
    if draw(st.booleans()) and dtype.itemsize > 1 and dtype != BFLOAT16:
        x = x.astype(dtype.newbyteorder("S"))
    return x


@st.composite
def keep_axes(draw, ndim: int):
    """None, an int (maybe negative) or a tuple of distinct axes (maybe negative)."""
    kind = draw(st.sampled_from(["none", "int", "tuple"]))
    if kind == "none":
        return None
    if kind == "int":
        return draw(st.integers(-ndim, ndim - 1))
    axes = draw(st.lists(st.integers(0, ndim - 1), unique=True, max_size=ndim))
    return tuple(a - ndim if draw(st.booleans()) else a for a in axes)


def _tolerances(dtype: np.dtype) -> dict:
    if is_exact_int(dtype):
        return dict(mean_rtol=1e-15, m2_rtol=1e-15, scale_atol=0.0)
    return dict(mean_rtol=8 * EPS64, m2_rtol=1e-12, scale_atol=8 * EPS64)


@settings(max_examples=120)
@given(data=st.data())
def test_matches_reference(data, monkeypatch):
    x = data.draw(strided_arrays())
    axis = data.draw(keep_axes(x.ndim))
    policy = data.draw(st.sampled_from(["propagate", "omit", "raise"]))
    is_int = x.dtype.kind in "biu"
    try:
        want = exact_reference(x, axis) if is_int else reference(x, axis, policy)
    except ValueError as exc:
        want = exc
    for name in [i for i in ISAS if i in supported_isas()]:
        monkeypatch.setenv("FASTMOMENTS_ISA", name)
        try:
            got = fastmoments.compute(x, axis=axis, nan_policy=policy)
        except ValueError as exc:
            got = exc
        if isinstance(want, Exception) or isinstance(got, Exception):
            assert type(got) is type(want), (got, want)
            continue
        assert_matches(got, want,
                       context=f"{x.dtype}, shape {x.shape}, strides {x.strides}, axis={axis}, "
                               f"{policy}, isa={name}",
                       **_tolerances(x.dtype))


@settings(max_examples=80)
@given(data=st.data())
def test_merge_of_any_split_equals_one_pass(data):
    x = data.draw(strided_arrays(allow_nan=False, max_side=9))
    axis = data.draw(keep_axes(x.ndim))
    kept = () if axis is None else tuple(sorted(
        a % x.ndim for a in (axis if isinstance(axis, tuple) else (axis,))))
    reduced = [i for i in range(x.ndim) if i not in kept]
    if not reduced or x.size == 0:
        return
    split_axis = data.draw(st.sampled_from(reduced))
    n = x.shape[split_axis]
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, n - 1)), max_size=3))))
    cuts = [c for c in cuts if 0 < c < n]
    parts = np.split(x, cuts, axis=split_axis)
    whole = fastmoments.compute(x, axis=axis)
    order = data.draw(st.permutations(range(len(parts))))
    merged = None
    for i in order:
        part = fastmoments.compute(parts[i], axis=axis)
        merged = part if merged is None else merged.merge(part)
    np.testing.assert_array_equal(merged.count, whole.count)
    # One pass and the merge both carry rounding of the data's magnitude: compare them with
    # the reference's tolerances, scaled by the data (tiny variances of huge values).
    ref = reference(x, axis)
    tol = _tolerances(x.dtype)
    if is_exact_int(x.dtype):  # merges of exact states round more than once
        tol = dict(mean_rtol=4 * EPS64, m2_rtol=1e-12, scale_atol=8 * EPS64)
    assert_matches(whole, ref, **tol)
    assert_matches(merged, ref, context=f"split at {cuts} along {split_axis}, order {order}",
                   **dict(tol, scale_atol=8 * EPS64 * max(2, len(parts))))


@settings(max_examples=12)
@given(
    dtype=st.sampled_from(ALL_DTYPES),
    inner=st.sampled_from([1, 3, 16, 257]),
    values=st.integers(1_000_000, 2_600_000),  # several 2**20-value tasks
    transpose=st.booleans(),
    keep=st.sampled_from(["inner", "outer", "none"]),
    threads=st.integers(2, 9),
    nan=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_thread_count_gives_identical_bits(dtype, inner, values, transpose, keep, threads,
                                               nan, seed):
    rows = max(1, values // inner)
    x = random_values(np.random.default_rng(seed), (rows, inner), dtype,
                      "nan" if nan and (dtype.kind == "f" or dtype == BFLOAT16) else "none")
    if transpose:
        x = x.T
    axis = {"inner": -1, "outer": 0, "none": None}[keep]
    for policy in ("propagate", "omit"):
        one = fastmoments.compute(x, axis=axis, threads=1, nan_policy=policy)
        many = fastmoments.compute(x, axis=axis, threads=threads, nan_policy=policy)
        assert many == one
