"""A slow, obviously-correct reference for per-feature count, mean and variance.

Independent of fastmoments (no imports from the package). Two implementations:

* :func:`reference` -- any dtype, any size: the values are converted to ``np.longdouble``
  (64-bit mantissa on x86) block by block and reduced with the corrected two-pass formula
  ``m2 = sum(d**2) - sum(d)**2 / n`` with ``d = x - mean0`` (Chan, Golub & LeVeque 1983), which
  stays exact to ~1e-18 even when ``mean0`` is slightly off. Non-finite values follow NumPy:
  NaN propagates (or is omitted), a lone +-inf gives a +-inf mean and a NaN variance.
* :func:`exact_reference` -- small inputs: every value becomes a Python ``int`` or an exact
  ``Fraction`` and the sums are exact; the results are rounded once to float64.
  :func:`exact_rational_reference` keeps them as rationals (float64 data near the overflow
  limit, whose m2 may exceed the float64 range), checked by :func:`assert_matches_rational`.
  :func:`exact_integer_reference` does the same for large 8/16-bit integer arrays with exact
  int64 block sums.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence, Tuple, Union

import numpy as np

AxisLike = Union[None, int, Sequence[int]]

EPS64 = float(np.finfo(np.float64).eps)


@dataclass
class Ref:
    """Reference statistics with the shape of the kept axes."""

    count: np.ndarray  # int64
    mean: np.ndarray   # longdouble (or float64 for the exact references)
    m2: np.ndarray
    # Per kept index, over the finite values that were used: max |x| and max(x) - min(x)
    # (scales for absolute tolerances).
    maxabs: np.ndarray
    spread: np.ndarray

    def variance(self, ddof: int = 0) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            denom = (self.count - ddof).astype(np.longdouble)
            return np.where(denom > 0, self.m2 / np.where(denom > 0, denom, 1), np.nan)


def kept_axes(axis: AxisLike, ndim: int) -> Tuple[int, ...]:
    """Sorted kept axes (keras.layers.Normalization meaning); ValueError/TypeError like the API."""
    if axis is None:
        return ()
    items = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
    out = []
    for a in items:
        i = operator.index(a)
        if not -ndim <= i < ndim:
            raise ValueError(f"axis {i} out of range for ndim {ndim}")
        i %= ndim
        if i in out:
            raise ValueError(f"repeated axis {i}")
        out.append(i)
    return tuple(sorted(out))


def as_columns(x: np.ndarray, axis: AxisLike) -> Tuple[Tuple[int, ...], np.ndarray]:
    """(kept shape, 2-D array (reduced values, kept indices)); a view where NumPy can."""
    x = np.asarray(x)
    kept = kept_axes(axis, x.ndim)
    reduced = [i for i in range(x.ndim) if i not in kept]
    kshape = tuple(x.shape[i] for i in kept)
    nred = int(np.prod([x.shape[i] for i in reduced], dtype=np.int64))
    nkept = int(np.prod(kshape, dtype=np.int64))
    y = np.transpose(x, reduced + list(kept)).reshape(nred, nkept)
    return kshape, y


def _to_longdouble(block: np.ndarray) -> np.ndarray:
    if block.dtype.kind in "biu":
        return block.astype(np.longdouble)
    # float16, bfloat16, float32, float64 (any byte order) are exact in float64.
    return block.astype(np.float64).astype(np.longdouble)


def _row_blocks(nrows: int, ncols: int, target: int = 1 << 20):
    step = max(1, target // max(1, ncols))
    for start in range(0, nrows, step):
        yield slice(start, min(nrows, start + step))


def reference(x, axis: AxisLike = -1, nan_policy: str = "propagate") -> Ref:
    """Reference moments in extended precision; raises like the API for NaN with "raise"."""
    if nan_policy not in ("propagate", "omit", "raise"):
        raise ValueError(f"unknown nan_policy {nan_policy!r}")
    kshape, y = as_columns(x, axis)
    nrows, ncols = y.shape
    if nrows == 0 and ncols > 0:
        raise ValueError("empty reduction")
    ld = np.longdouble
    count = np.zeros(ncols, np.int64)
    nfinite = np.zeros(ncols, np.int64)
    has_nan = np.zeros(ncols, bool)
    has_pinf = np.zeros(ncols, bool)
    has_ninf = np.zeros(ncols, bool)
    total = np.zeros(ncols, ld)
    maxabs = np.zeros(ncols, np.float64)
    vmax = np.full(ncols, -np.inf)
    vmin = np.full(ncols, np.inf)
    # Pass 0: counts, non-finite flags, a first mean over the finite values.
    for rows in _row_blocks(nrows, ncols):
        v = _to_longdouble(y[rows])
        nan = np.isnan(v)
        has_nan |= nan.any(axis=0)
        has_pinf |= (v == np.inf).any(axis=0)
        has_ninf |= (v == -np.inf).any(axis=0)
        count += (~nan).sum(axis=0) if nan_policy == "omit" else v.shape[0]
        finite = np.isfinite(v)
        nfinite += finite.sum(axis=0)
        vf = np.where(finite, v, 0)
        total += vf.sum(axis=0)
        maxabs = np.maximum(maxabs, np.abs(vf).max(axis=0).astype(np.float64))
        vmax = np.maximum(vmax, np.where(finite, v, -np.inf).max(axis=0).astype(np.float64))
        vmin = np.minimum(vmin, np.where(finite, v, np.inf).min(axis=0).astype(np.float64))
    if nan_policy == "raise" and has_nan.any():
        raise ValueError("NaN in the data")
    mean0 = total / np.maximum(nfinite, 1)
    # Pass 1: corrected two-pass over the finite values.
    s1 = np.zeros(ncols, ld)
    s2 = np.zeros(ncols, ld)
    for rows in _row_blocks(nrows, ncols):
        v = _to_longdouble(y[rows])
        finite = np.isfinite(v)
        d = np.where(finite, v - np.where(finite, mean0, 0), 0)
        s1 += d.sum(axis=0)
        s2 += (d * d).sum(axis=0)
    # Where some values are not finite the result is overwritten below.
    n = np.maximum(nfinite, 1).astype(ld)
    mean = mean0 + s1 / n
    m2 = s2 - s1 * s1 / n
    m2 = np.maximum(m2, 0)
    # Non-finite cases, as NumPy: inf - inf = NaN.
    nanres = (has_nan & (nan_policy == "propagate")) | (has_pinf & has_ninf) | (count == 0)
    mean = np.where(has_pinf & ~has_ninf, np.inf, mean)
    mean = np.where(has_ninf & ~has_pinf, -np.inf, mean)
    mean = np.where(nanres, np.nan, mean)
    m2 = np.where(nanres | has_pinf | has_ninf, np.nan, m2)
    spread = np.where(vmax >= vmin, vmax - vmin, 0.0)
    return Ref(count.reshape(kshape), mean.reshape(kshape), m2.reshape(kshape),
               maxabs.reshape(kshape), spread.reshape(kshape))


def _exact_value(v) -> Fraction:
    if isinstance(v, (bool, np.bool_)):
        return Fraction(int(v))
    if isinstance(v, (int, np.integer)):
        return Fraction(int(v))
    return Fraction(float(v))  # exact for every binary float up to float64


def _exact_from_sums(n: int, s1: Fraction, s2: Fraction) -> Tuple[float, float]:
    mean = s1 / n
    m2 = s2 - s1 * s1 / n
    return float(mean), float(m2)


def exact_reference(x, axis: AxisLike = -1) -> Ref:
    """Exact moments (finite data, NaN-free) rounded once to float64; for small inputs."""
    kshape, y = as_columns(x, axis)
    nrows, ncols = y.shape
    if nrows == 0 and ncols > 0:
        raise ValueError("empty reduction")
    if y.dtype.kind not in "biu":
        y = y.astype(np.float64)
        if not np.isfinite(y).all():
            raise ValueError("exact_reference needs finite data")
    mean = np.zeros(ncols)
    m2 = np.zeros(ncols)
    maxabs = np.zeros(ncols)
    spread = np.zeros(ncols)
    if y.dtype.kind in "biu":
        # Python ints (object arrays): exact sums at C speed.
        v = y.astype(np.int64 if y.dtype.kind == "b" else y.dtype).astype(object)
        s1s = v.sum(axis=0) if nrows else [0] * ncols
        s2s = (v * v).sum(axis=0) if nrows else [0] * ncols
        for j in range(ncols):
            mean[j], m2[j] = _exact_from_sums(nrows, Fraction(int(s1s[j])), Fraction(int(s2s[j])))
        if nrows:
            maxabs[:] = np.abs(v).max(axis=0).astype(np.float64)
            spread[:] = (v.max(axis=0) - v.min(axis=0)).astype(np.float64)
    else:
        for j in range(ncols):
            col = [_exact_value(a) for a in y[:, j].tolist()]
            s1 = sum(col, Fraction(0))
            s2 = sum((c * c for c in col), Fraction(0))
            mean[j], m2[j] = _exact_from_sums(nrows, s1, s2)
            maxabs[j] = float(max(abs(c) for c in col))
            spread[j] = float(max(col) - min(col))
    return Ref(np.full(kshape, nrows, np.int64), mean.reshape(kshape), m2.reshape(kshape),
               maxabs.reshape(kshape), spread.reshape(kshape))


def exact_integer_reference(x, axis: AxisLike = -1) -> Ref:
    """Exact moments of a large bool/8/16-bit integer array (exact int64 block sums)."""
    kshape, y = as_columns(x, axis)
    if y.dtype.kind not in "biu" or y.dtype.itemsize > 2:
        raise TypeError("exact_integer_reference handles bool and 8/16-bit integers")
    nrows, ncols = y.shape
    s1 = [0] * ncols
    s2 = [0] * ncols
    lo = np.full(ncols, np.iinfo(np.int64).max)
    hi = np.full(ncols, np.iinfo(np.int64).min)
    # A block of 1<<20 rows keeps every int64 sum of squares below 2^52.
    for rows in _row_blocks(nrows, 1, target=1 << 20):
        v = y[rows].astype(np.int64)
        for j, (a, b) in enumerate(zip(v.sum(axis=0).tolist(), (v * v).sum(axis=0).tolist())):
            s1[j] += a
            s2[j] += b
        lo = np.minimum(lo, v.min(axis=0))
        hi = np.maximum(hi, v.max(axis=0))
    mean = np.empty(ncols)
    m2 = np.empty(ncols)
    for j in range(ncols):
        mean[j], m2[j] = _exact_from_sums(nrows, Fraction(s1[j]), Fraction(s2[j]))
    maxabs = np.maximum(np.abs(lo), np.abs(hi)).astype(np.float64)
    return Ref(np.full(kshape, nrows, np.int64), mean.reshape(kshape), m2.reshape(kshape),
               maxabs.reshape(kshape), (hi - lo).astype(np.float64).reshape(kshape))


DBL_MAX = Fraction(float(np.finfo(np.float64).max))


@dataclass
class RationalRef:
    """Exact statistics of one output, as rationals (no rounding, no overflow): ``mean`` and
    ``m2`` are None when a NaN was kept (propagate) or no value is left (omit)."""

    count: int
    mean: Union[Fraction, None]
    m2: Union[Fraction, None]
    maxabs: Fraction
    spread: Fraction


def exact_rational_reference(x, axis: AxisLike = -1, nan_policy: str = "propagate") -> list:
    """Per kept index (C order of the kept axes), a :class:`RationalRef` of finite float data
    with NaNs (omitted or propagated). Values of 2**53 and above are integers: Python ints keep
    their sums fast, which makes ~1e6 values of 1e308 affordable."""
    _, y = as_columns(np.asarray(x), axis)
    y = y.astype(np.float64)
    if np.isinf(y).any():
        raise ValueError("exact_rational_reference needs finite or NaN data")
    out = []
    for j in range(y.shape[1]):
        col = y[:, j]
        nan = np.isnan(col)
        col = col[~nan]
        vals = [int(v) if v.is_integer() else Fraction(v) for v in col.tolist()]
        n = len(vals)
        if n:
            maxabs = Fraction(float(np.abs(col).max()))
            spread = Fraction(float(col.max())) - Fraction(float(col.min()))
        else:
            maxabs = spread = Fraction(0)
        if n == 0 or (nan.any() and nan_policy == "propagate"):
            out.append(RationalRef(n + int(nan.sum()) * (nan_policy == "propagate"), None, None,
                                   maxabs, spread))
            continue
        s1 = Fraction(sum(vals))
        s2 = Fraction(sum(v * v for v in vals))
        out.append(RationalRef(n, s1 / n, s2 - s1 * s1 / n, maxabs, spread))
    return out


def assert_matches_rational(count: int, mean: float, m2: float, ref: RationalRef, *,
                            mean_rtol: float = 8 * EPS64, m2_rtol: float = 1e-12,
                            scale_atol: float = 8 * EPS64, context: str = "") -> None:
    """Checks one output against :func:`exact_rational_reference`, with the tolerances of
    :func:`assert_matches`. The mean of finite data lies within its range, so it must be finite.
    m2 (the sum of squared deviations, as NumPy's var sums them) must be inf where the exact m2
    exceeds DBL_MAX, and finite and close below it (within m2_rtol of the boundary either)."""
    where = f" ({context})" if context else ""
    assert count == ref.count, f"count {count} != {ref.count}{where}"
    if ref.mean is None:
        if ref.count:  # a NaN input under propagate
            assert np.isnan(mean) and np.isnan(m2), f"want NaN, got {mean!r}, {m2!r}{where}"
        return
    assert np.isfinite(mean), f"mean {mean!r}, exact {float(ref.mean)!r}{where}"
    tiny = Fraction(float(np.finfo(np.float64).tiny))  # underflow floor, as assert_matches
    tol = Fraction(mean_rtol) * abs(ref.mean) + Fraction(scale_atol) * ref.maxabs + 4 * tiny
    assert abs(Fraction(mean) - ref.mean) <= tol, \
        f"mean {mean!r}, exact {float(ref.mean)!r}, tolerance {float(tol)!r}{where}"
    if ref.m2 > DBL_MAX * (1 + Fraction(m2_rtol)):
        assert m2 == np.inf, f"m2 {m2!r}, exact {float(ref.m2 / DBL_MAX)!r} * DBL_MAX{where}"
        return
    if np.isinf(m2) and ref.m2 >= DBL_MAX * (1 - Fraction(m2_rtol)):
        return
    assert np.isfinite(m2), f"m2 {m2!r}, exact {float(ref.m2)!r}{where}"
    tol = (Fraction(m2_rtol) * ref.m2 + Fraction(scale_atol) * ref.count * ref.spread * ref.maxabs
           + 16 * ref.count * tiny)
    assert abs(Fraction(m2) - ref.m2) <= tol, \
        f"m2 {m2!r}, exact {float(ref.m2)!r}, tolerance {float(tol)!r}{where}"


def relative_error(got, want) -> float:
    """max |got - want| / |want| over the entries, in extended precision (0/0 counts as 0)."""
    got = np.asarray(got, dtype=np.longdouble)
    want = np.asarray(want, dtype=np.longdouble)
    diff = np.abs(got - want)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.where(diff == 0, 0, diff / np.abs(want))
    return float(np.max(rel)) if rel.size else 0.0


def assert_matches(got, ref: Ref, *, mean_rtol: float = 8 * EPS64, m2_rtol: float = 1e-12,
                   scale_atol: float = 8 * EPS64, ddof: int = 0,
                   m2_atol=None, context: str = "") -> None:
    """Checks a ``fastmoments.Moments`` against a :class:`Ref`.

    Tolerances: ``|mean - ref| <= mean_rtol*|ref| + scale_atol*maxabs`` and
    ``|m2 - ref| <= m2_rtol*ref + scale_atol*n*spread*maxabs`` (the absolute parts are the
    rounding of the stored values' magnitude: a float64 shift cannot do better than that).
    Both absolute parts have a floor of a few float64 ``tiny`` (underflow).
    ``m2_atol`` replaces the absolute part of the m2 tolerance when given.
    NaN must match NaN, +-inf must match exactly. Entries with count 0 (all NaN under "omit")
    are checked for count and a NaN variance only.
    """
    where = f" ({context})" if context else ""
    count = np.asarray(got.count)
    assert count.shape == ref.count.shape, f"shape {count.shape} != {ref.count.shape}{where}"
    np.testing.assert_array_equal(count, ref.count, err_msg=f"count{where}")
    mean = np.asarray(got.mean, dtype=np.float64)
    m2 = np.asarray(got.m2, dtype=np.float64)
    assert mean.shape == m2.shape == ref.count.shape
    live = ref.count > 0
    rmean = ref.mean.astype(np.longdouble)
    rm2 = ref.m2.astype(np.longdouble)

    def check(name, value, want, atol, rtol):
        value = value.astype(np.longdouble)
        nan_want = np.isnan(want)
        inf_want = np.isinf(want)
        bad = live & nan_want & ~np.isnan(value)
        bad |= live & inf_want & ~(value == want)
        fin = live & ~nan_want & ~inf_want
        with np.errstate(invalid="ignore"):
            err = np.where(fin, np.abs(value - want), 0)
            tol = rtol * np.abs(want) + atol
            bad |= fin & ~(err <= tol)
        if bad.any():
            idx = tuple(np.argwhere(bad)[0])
            raise AssertionError(
                f"{name} differs at {idx}{where}: got {value[idx]!r}, want {want[idx]!r}, "
                f"tolerance {np.asarray(tol)[idx] if np.ndim(tol) else tol!r}; "
                f"{int(bad.sum())} of {bad.size} entries differ"
            )

    n = ref.count.astype(np.longdouble)
    # float64 cannot hold results below its smallest normal number exactly (underflow floor).
    tiny = np.longdouble(np.finfo(np.float64).tiny)
    check("mean", mean, rmean, scale_atol * ref.maxabs + 4 * tiny, mean_rtol)
    if m2_atol is None:
        m2_atol = scale_atol * n * ref.spread * ref.maxabs + 16 * n * tiny
    check("m2", m2, rm2, m2_atol, m2_rtol)
    if (~live).any():
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            var = np.asarray(got.with_ddof(ddof).variance if hasattr(got, "with_ddof") else got.variance)
        assert np.isnan(var[~live]).all(), f"variance of an empty index is not NaN{where}"


@dataclass
class WeightedRef:
    """Exact weighted statistics (values of positive weight only), rounded once to float64."""

    count: np.ndarray  # values of positive weight
    mean: np.ndarray
    m2: np.ndarray     # sum(w * (x - mean)**2)
    sum_weights: np.ndarray
    sum_weights_sq: np.ndarray


def exact_weighted_reference(x, w, axis: AxisLike = -1) -> WeightedRef:
    """Exact weighted moments of finite data ``x`` with weights ``w`` of ``x``'s shape (a mask
    is 0/1 weights): every value and weight becomes a Fraction; for small inputs. An index with
    no positive weight gets NaN mean and m2."""
    x = np.asarray(x)
    w = np.asarray(w)
    assert w.shape == x.shape, (w.shape, x.shape)
    kshape, y = as_columns(x, axis)
    _, v = as_columns(w, axis)
    ncols = y.shape[1]
    out = {k: np.zeros(ncols) for k in ("mean", "m2", "sw", "sq")}
    count = np.zeros(ncols, np.int64)
    for j in range(ncols):
        pairs = [(_exact_value(a), _exact_value(b)) for a, b in zip(y[:, j].tolist(), v[:, j].tolist())
                 if b > 0]
        count[j] = len(pairs)
        sw = sum((b for _, b in pairs), Fraction(0))
        out["sw"][j] = float(sw)
        out["sq"][j] = float(sum((b * b for _, b in pairs), Fraction(0)))
        if sw == 0:
            out["mean"][j] = out["m2"][j] = np.nan
            continue
        mean = sum((a * b for a, b in pairs), Fraction(0)) / sw
        out["mean"][j] = float(mean)
        out["m2"][j] = float(sum((b * (a - mean) ** 2 for a, b in pairs), Fraction(0)))
    return WeightedRef(count.reshape(kshape), out["mean"].reshape(kshape), out["m2"].reshape(kshape),
                       out["sw"].reshape(kshape), out["sq"].reshape(kshape))
