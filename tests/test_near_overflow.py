"""float64 data near the overflow limit (issue 17 row 12): finite values whose differences or
squares overflow float64 must still give the exact mean (always finite) and an m2 that is inf
only where the exact m2 exceeds DBL_MAX, in lanes mode, run mode and axis=None, under both NaN
policies, with the same bits for every thread count and instruction set. The reference is exact
rational arithmetic (``fractions.Fraction`` of the float values)."""

from __future__ import annotations

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

import fastmoments  # noqa: E402
from conftest import supported_isas  # noqa: E402
from reference import assert_matches_rational, exact_rational_reference, kept_axes  # noqa: E402

BIG = 1.7e308      # differences overflow
SQUARE = 1e154     # squares overflow (sqrt(DBL_MAX) = 1.34e154)
DBL_MAX = float(np.finfo(np.float64).max)

# Values near the limit, their neighbours, and small ones among them.
NEAR_LIMIT = st.one_of(
    st.sampled_from([BIG, -BIG, DBL_MAX, -DBL_MAX, 9e153, -9e153, SQUARE, -SQUARE, 0.0, 1.0, -2.5]),
    st.floats(-DBL_MAX, DBL_MAX).filter(lambda v: abs(v) > 8e307),
    st.floats(-2e154, 2e154),
    st.floats(-1e3, 1e3),
)


def _bits(m: fastmoments.Moments) -> tuple:
    s = m.state
    return tuple(np.ascontiguousarray(a).tobytes() for a in (s.count, s.mean, s.m2, s.mean_lo))


def compute_everywhere(x, axis, nan_policy, monkeypatch, threads=(1, 2)):
    """The result under every supported ISA and thread count, asserting they have the same bits."""
    first = None
    for isa in supported_isas():
        with monkeypatch.context() as m:
            m.setenv("FASTMOMENTS_ISA", isa)
            for t in threads:
                r = fastmoments.compute(x, axis=axis, nan_policy=nan_policy, threads=t)
                if first is None:
                    first = (r, isa, t)
                else:
                    assert _bits(r) == _bits(first[0]), \
                        f"{isa} threads={t} differs from {first[1]} threads={first[2]}"
    return first[0]


def check_exact(r: fastmoments.Moments, x, axis, nan_policy, **tol) -> None:
    refs = exact_rational_reference(x, axis, nan_policy)
    count = np.ravel(r.count)
    mean = np.ravel(r.mean)
    m2 = np.ravel(r.m2)
    assert len(refs) == count.size
    for i, ref in enumerate(refs):
        assert_matches_rational(int(count[i]), float(mean[i]), float(m2[i]), ref,
                                context=f"output {i}, axis={axis}, {nan_policy}", **tol)


# -- the cases of the issue ------------------------------------------------------------------------

def test_issue_cases(monkeypatch):
    r = compute_everywhere(np.array([BIG, -BIG, BIG]), None, "propagate", monkeypatch)
    assert r.mean == pytest.approx(BIG / 3, rel=1e-15) and r.m2 == np.inf
    r = compute_everywhere(np.array([9e153, -9e153]), None, "propagate", monkeypatch)
    # Exactly NumPy's: mean 0, m2 = 1.62e308 (fits), variance 8.1e307.
    assert r.mean == 0.0 and r.m2 == 1.62e308 and r.variance == np.var([9e153, -9e153]) == 8.1e307
    assert r.with_ddof(1).variance == 1.62e308


# -- properties: small arrays of any shape and axis ------------------------------------------------

@st.composite
def near_limit_arrays(draw, infs=False):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=7))
    nan = draw(st.booleans())
    elements = st.one_of(NEAR_LIMIT, st.just(np.nan)) if nan else NEAR_LIMIT
    if infs:
        elements = st.one_of(elements, st.sampled_from([np.inf, -np.inf]))
    x = draw(hnp.arrays(np.float64, shape, elements=elements))
    order = draw(st.sampled_from(["C", "F", "reversed"]))
    if order == "F":
        x = np.asfortranarray(x)
    elif order == "reversed":
        x = x[::-1]
    nd = x.ndim
    axis = draw(st.one_of(st.none(), st.integers(-nd, nd - 1),
                          st.lists(st.integers(0, nd - 1), unique=True, max_size=nd).map(tuple)))
    return x, axis


@settings(max_examples=150)
@given(case=near_limit_arrays(), nan_policy=st.sampled_from(["propagate", "omit"]))
def test_near_limit_matches_exact(case, nan_policy, monkeypatch):
    x, axis = case
    r = compute_everywhere(x, axis, nan_policy, monkeypatch)
    check_exact(r, x, axis, nan_policy)  # an all-NaN output under omit: count 0 only


@settings(max_examples=60)
@given(a=hnp.arrays(np.float64, st.integers(1, 6), elements=NEAR_LIMIT),
       b=hnp.arrays(np.float64, st.integers(1, 6), elements=NEAR_LIMIT))
def test_merge_near_limit_matches_exact(a, b):
    # The Chan merge (state.hpp combine, the one every door uses) of two states near the limit.
    merged = fastmoments.compute(a, axis=None).merge(fastmoments.compute(b, axis=None))
    both = np.concatenate([a, b])
    check_exact(merged, both, None, "propagate", mean_rtol=16 * 2.0**-52, scale_atol=16 * 2.0**-52)
    acc = fastmoments.Accumulator(axis=None)
    acc.update(a)
    acc.update(b)
    assert _bits(acc.result()) == _bits(merged)


# -- large arrays: several chunks, tasks and waves, lanes and run modes ---------------------------

def _pattern(kind: str, n: int, rng) -> np.ndarray:
    if kind == "signs":  # +-BIG at random: the mean is finite, m2 overflows
        return rng.choice([BIG, -BIG, 1.0], size=n, p=[0.5, 0.3, 0.2])
    if kind == "pair":  # zeros after -9e153, +9e153 near the end: d^2 overflows, m2 = 1.62e308
        x = rng.integers(-3, 4, size=n).astype(np.float64)
        x[0], x[-2] = -9e153, 9e153
        return x
    if kind == "far_chunks":  # the first value +BIG, then chunks of -BIG: relative means overflow
        x = np.full(n, -BIG)
        x[0] = BIG
        x[n // 2:] = rng.integers(0, 5, size=n - n // 2)
        return x
    raise ValueError(kind)


LARGE_CASES = [
    # (shape, axis, layout): axis=None over > 2**20 values (tasks), run mode per row, lanes mode.
    ((1_100_003,), None, "C"),
    ((4, 300_001), 0, "C"),       # run mode: one long run per output (axis = the kept axes)
    ((300_001, 4), -1, "C"),      # lanes mode: rows of 4 lanes, > 2**20 values (splits)
    ((300_001, 4), -1, "F"),      # the same values, column-major
    ((100_001, 3, 2), (1,), "C"),  # lanes folded into the outputs
]


@pytest.mark.parametrize("kind", ["signs", "pair", "far_chunks"])
@pytest.mark.parametrize("shape,axis,layout", LARGE_CASES)
def test_large_near_limit(kind, shape, axis, layout, monkeypatch):
    rng = np.random.default_rng(sum(map(ord, kind)) + len(LARGE_CASES) * len(shape))
    # The pattern runs along the reduced values of every output (the inverse of as_columns).
    kept = list(kept_axes(axis, len(shape)))
    reduced = [i for i in range(len(shape)) if i not in kept]
    nred = int(np.prod([shape[i] for i in reduced]))
    y = np.stack([_pattern(kind, nred, rng) for _ in range(int(np.prod(shape)) // nred)], -1)
    x = y.reshape([shape[i] for i in reduced] + [shape[i] for i in kept])
    x = np.ascontiguousarray(np.transpose(x, np.argsort(reduced + kept)))
    assert x.shape == shape
    if layout == "F":
        x = np.asfortranarray(x)
    for policy in ("propagate", "omit"):
        r = compute_everywhere(x, axis, policy, monkeypatch)
        check_exact(r, x, axis, policy, mean_rtol=64 * 2.0**-52, scale_atol=64 * 2.0**-52)


@pytest.mark.parametrize("kind", ["signs", "pair"])
def test_file_door_near_limit(kind, tmp_path):
    # The file door reduces pieces with the same kernel and merges them with the one combine.
    rng = np.random.default_rng(7)
    x = np.stack([_pattern(kind, 200_001, rng) for _ in range(3)], -1)
    path = tmp_path / "near_limit.npy"
    np.save(path, x)
    for threads in (1, 2):
        r = fastmoments.compute(str(path), axis=-1, threads=threads)
        check_exact(r, x, -1, "propagate", mean_rtol=64 * 2.0**-52, scale_atol=64 * 2.0**-52)
    assert _bits(fastmoments.compute(str(path), axis=-1, threads=2)) == _bits(r)


# -- inf/NaN rules stay NumPy's -------------------------------------------------------------------

def test_nan_inputs_still_propagate(monkeypatch):
    x = np.array([[BIG, np.nan], [-BIG, 1.0], [BIG, 2.0]])
    r = compute_everywhere(x.T, 0, "propagate", monkeypatch)
    assert np.isnan(r.mean[1]) and np.isnan(r.m2[1])
    assert r.mean[0] == pytest.approx(BIG / 3, rel=1e-15) and r.m2[0] == np.inf
    r = compute_everywhere(x, None, "omit", monkeypatch)
    assert r.count == 5 and np.isfinite(r.mean)
    r = fastmoments.compute(np.array([9e153, np.nan, -9e153]), nan_policy="omit", axis=None)
    assert r.mean == 0.0 and r.m2 == 1.62e308
    r = fastmoments.compute(np.array([9e153, -9e153]), nan_policy="raise", axis=None)
    assert r.m2 == 1.62e308
    with pytest.raises(ValueError, match="NaN"):
        fastmoments.compute(np.array([9e153, np.nan, -9e153]), nan_policy="raise", axis=None)


def check_inf_rules(r: fastmoments.Moments, x, axis, nan_policy) -> None:
    """Outputs holding an inf input keep the rules of NumPy's mean and var: m2 is NaN; the mean
    is +-inf where the infs have one sign (or NaN where finite values near the limit, whose sum
    NumPy may overflow too, meet them), NaN where both signs are present; never the other sign."""
    from reference import as_columns

    _, y = as_columns(x, axis)
    mean = np.ravel(r.mean)
    m2 = np.ravel(r.m2)
    for j in range(y.shape[1]):
        col = y[:, j]
        if nan_policy == "propagate" and np.isnan(col).any():
            continue
        pos, neg = bool((col == np.inf).any()), bool((col == -np.inf).any())
        if not (pos or neg):
            continue
        assert np.isnan(m2[j]), f"output {j}: m2 {m2[j]!r}"
        allowed = [np.nan] + ([np.inf] if pos and not neg else []) + ([-np.inf] if neg and not pos else [])
        assert any(np.array_equal(mean[j], a, equal_nan=True) for a in allowed), \
            f"output {j}: mean {mean[j]!r}, allowed {allowed}"


@pytest.mark.parametrize("values,means", [
    ([np.inf, BIG, -BIG], (np.inf, np.nan)),  # NumPy's sum: inf; the shifted sums: inf - inf
    ([-np.inf, 9e153, -9e153], (-np.inf,)),
    ([np.inf, -np.inf, BIG], (np.nan,)),
    ([np.inf, 1.0, 2.0], (np.inf,)),
])
def test_inf_inputs_follow_numpy(values, means, monkeypatch):
    r = compute_everywhere(np.array(values), None, "propagate", monkeypatch)
    assert any(np.array_equal(r.mean, m, equal_nan=True) for m in means)
    with np.errstate(invalid="ignore", over="ignore"):
        assert np.isnan(r.m2) and np.isnan(np.var(values))
    check_inf_rules(r, np.array(values), None, "propagate")


@settings(max_examples=60)
@given(case=near_limit_arrays(infs=True), nan_policy=st.sampled_from(["propagate", "omit"]))
def test_inf_inputs_near_limit(case, nan_policy, monkeypatch):
    x, axis = case
    r = compute_everywhere(x, axis, nan_policy, monkeypatch)
    check_inf_rules(r, x, axis, nan_policy)


def test_float32_and_integers_unaffected():
    f32 = np.finfo(np.float32).max
    r = fastmoments.compute(np.array([f32, -f32, f32], np.float32), axis=None)
    assert r.mean == pytest.approx(float(f32) / 3, rel=1e-15)
    assert r.m2 == pytest.approx(float(2 * float(f32)) ** 2 * 2 / 3, rel=1e-15)
    i64 = np.iinfo(np.int64)
    r = fastmoments.compute(np.array([i64.max, i64.min, i64.max]), axis=None)
    want = (2 * i64.max + i64.min) / 3
    assert r.mean == pytest.approx(want, rel=1e-15)
