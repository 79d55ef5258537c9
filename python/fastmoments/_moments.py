"""The state record and the result: ``State`` is what every kernel, door and merge passes on
(count, mean, m2, mean_lo, whole); ``Moments`` is the public result built from it."""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from . import _core


class State(NamedTuple):
    """Per-index ``count`` (int64), ``mean``, ``m2`` and ``mean_lo`` (float64), one shape: the
    transport between the kernels (``_core``, ``_cuda``, the TF op) and ``Moments``. A kernel's
    4-tuple becomes one with :meth:`of`; :meth:`merge` is the one Chan merge (``_core.combine``).

    Weighted states also carry ``sum_weights`` and ``sum_weights_sq`` (float64; ``None`` for
    unweighted ones): ``count`` is then the number of values of positive weight, ``mean`` the
    weighted mean and ``m2 = sum(w * (x - mean)**2)``. An unweighted state is the weighted state
    of unit weights, so the two merge (``_core.combine_weighted``, the same Chan formula with
    weight sums for counts)."""

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    mean_lo: np.ndarray
    sum_weights: Optional[np.ndarray] = None
    sum_weights_sq: Optional[np.ndarray] = None

    @classmethod
    def of(cls, arrays: Sequence[Any], shape: Optional[Tuple[int, ...]] = None) -> "State":
        """From a kernel's ``(count, mean, m2, mean_lo)`` (or the weighted kernel's six arrays,
        ``sum_weights`` and ``sum_weights_sq`` last), reshaped to ``shape`` if given."""
        if isinstance(arrays, State):
            arrays = arrays.arrays
        if len(arrays) not in (4, 6):
            raise ValueError(f"a moment state has 4 parts (count, mean, m2, mean_lo) or 6 (with "
                             f"sum_weights, sum_weights_sq), got {len(arrays)}")
        count, mean, m2, lo = (np.asarray(a) for a in arrays[:4])
        weights = tuple(np.asarray(a).astype(np.float64, copy=False) for a in arrays[4:])
        state = cls(count.astype(np.int64, copy=False), mean.astype(np.float64, copy=False),
                    m2.astype(np.float64, copy=False), lo.astype(np.float64, copy=False), *weights)
        return state if shape is None else state.reshape(shape)

    @classmethod
    def empty(cls, shape: Tuple[int, ...]) -> "State":
        """Count 0 everywhere: the identity of :meth:`merge`."""
        return cls(np.zeros(shape, np.int64), np.zeros(shape), np.zeros(shape), np.zeros(shape))

    @property
    def shape(self) -> Tuple[int, ...]:
        return self.mean.shape

    @property
    def weighted(self) -> bool:
        return self.sum_weights is not None

    @property
    def arrays(self) -> Tuple[np.ndarray, ...]:
        """The 4 arrays of an unweighted state, the 6 of a weighted one."""
        return tuple(self) if self.weighted else tuple(self)[:4]

    def reshape(self, shape: Tuple[int, ...]) -> "State":
        return State(*(a.reshape(shape) for a in self.arrays))

    def as_weighted(self) -> "State":
        """The same state with its weight sums (unit weights: both equal ``count``)."""
        if self.weighted:
            return self
        n = self.count.astype(np.float64)
        return State(self.count, self.mean, self.m2, self.mean_lo, n, n.copy())

    @classmethod
    def concatenate(cls, parts: Sequence["State"], axis: int) -> "State":
        """States of consecutive pieces of the kept axes, joined along ``axis``."""
        if any(p.weighted for p in parts):
            parts = [p.as_weighted() for p in parts]
        n = len(parts[0].arrays)
        return cls(*(np.concatenate([p.arrays[k] for p in parts], axis=axis) for k in range(n)))

    def merge(self, other: "State") -> "State":
        """The state of the union of both data (Chan et al. 1983), elementwise."""
        if self.weighted or other.weighted:
            a, b = self.as_weighted(), other.as_weighted()
            return State.of(_core.combine_weighted(*a, *b), self.shape)
        c, m, q, lo = _core.combine(self.count, self.mean, self.m2, other.count, other.mean,
                                    other.m2, self.mean_lo, other.mean_lo)
        return State.of((c, m, q, lo), self.shape)


def _scalar_or_array(a: np.ndarray) -> Any:
    return a[()] if a.ndim == 0 else a


class Moments:
    """Count, mean and sum of squared deviations (``m2``) per kept index.

    Rebuild one from its arrays with ``Moments(count, mean, m2)`` (or ``Moments(**m.to_dict())``);
    merge partial results with :meth:`merge` (Chan et al. 1983), in any grouping, to get the
    statistics of all the data.

    Parameters
    ----------
    count, mean, m2 : array_like
        Per-index number of values, their mean and ``sum((x - mean)**2)``, all of one shape.
    ddof : int, default 0
        Delta degrees of freedom used by :attr:`variance` and :attr:`std`.
    sample : float or None
        Set when the statistics were computed on a sample (fraction of the rows read).
    mean_lo : array_like, optional
        Rounding residual of ``mean`` (the exact mean is ``mean + mean_lo``), filled in by the
        kernels. Merges use it so that means far from zero (1e9 with unit spread) lose no bits in
        Chan's delta; it defaults to 0, which is what a bare float64 mean holds.
    sum_weights, sum_weights_sq : array_like, optional
        Weighted statistics (``compute(..., weights=)`` or ``where=``): per-index ``sum(w)`` and
        ``sum(w**2)`` over the values of positive weight (``count`` of them); ``mean`` is then
        ``sum(w*x)/sum(w)`` and ``m2`` is ``sum(w*(x - mean)**2)``. Give both or neither.
        :attr:`variance` reads the weights as frequency weights (``m2 / (sum_weights - ddof)``,
        ``np.cov``'s ``fweights``); :attr:`reliability_variance` as reliability weights
        (``np.cov``'s ``aweights``). Unweighted results have ``sum_weights is None`` and merge
        with weighted ones as unit weights.

    Attributes
    ----------
    skipped : tuple of (str, str)
        Files left out by ``compute(..., on_error="skip")`` as ``(path, reason)`` pairs, in file
        order (empty otherwise); :meth:`merge` joins both sides' lists.
    """

    __slots__ = ("_count", "_mean", "_m2", "_mean_lo", "_sw", "_sw2", "ddof", "sample", "skipped")

    def __init__(self, count, mean, m2, *, ddof: int = 0, sample: Optional[float] = None,
                 mean_lo=None, sum_weights=None, sum_weights_sq=None):
        count = np.asarray(count)
        mean = np.asarray(mean, dtype=np.float64)
        m2 = np.asarray(m2, dtype=np.float64)
        mean_lo = np.zeros(mean.shape) if mean_lo is None else np.asarray(mean_lo, dtype=np.float64)
        if count.dtype.kind not in "iu":
            if count.dtype.kind == "f" and np.all(np.mod(count, 1) == 0):
                count = count.astype(np.int64)
            else:
                raise TypeError(f"count must hold integers, got dtype {count.dtype}")
        count = count.astype(np.int64, copy=False)
        if not (count.shape == mean.shape == m2.shape == mean_lo.shape):
            raise ValueError(
                f"count, mean, m2 and mean_lo must have one shape, got {count.shape}, {mean.shape}, "
                f"{m2.shape}, {mean_lo.shape}"
            )
        if np.any(count < 0):
            raise ValueError("count must be >= 0")
        if (sum_weights is None) != (sum_weights_sq is None):
            raise ValueError("give both sum_weights and sum_weights_sq, or neither")
        if sum_weights is not None:
            sum_weights = np.asarray(sum_weights, dtype=np.float64)
            sum_weights_sq = np.asarray(sum_weights_sq, dtype=np.float64)
            if not (sum_weights.shape == sum_weights_sq.shape == mean.shape):
                raise ValueError(f"sum_weights and sum_weights_sq must have the shape of mean "
                                 f"{mean.shape}, got {sum_weights.shape}, {sum_weights_sq.shape}")
        self._sw, self._sw2 = sum_weights, sum_weights_sq
        if int(ddof) != ddof or ddof < 0:
            raise ValueError(f"ddof must be a non-negative integer, got {ddof!r}")
        self._count, self._mean, self._m2, self._mean_lo = count, mean, m2, mean_lo
        self.ddof = int(ddof)
        self.sample = sample
        self.skipped: Tuple[Tuple[str, str], ...] = ()

    @classmethod
    def from_state(cls, state: State, *, ddof: int = 0, sample: Optional[float] = None) -> "Moments":
        """The result holding ``state`` (the one place kernels' states become ``Moments``)."""
        return cls(state.count, state.mean, state.m2, ddof=ddof, sample=sample, mean_lo=state.mean_lo,
                   sum_weights=state.sum_weights, sum_weights_sq=state.sum_weights_sq)

    @property
    def state(self) -> State:
        """The full state record, ``mean_lo`` included (arrays, not copies)."""
        return State(self._count, self._mean, self._m2, self._mean_lo, self._sw, self._sw2)

    # -- the statistics ---------------------------------------------------------------------------
    @property
    def shape(self) -> Tuple[int, ...]:
        return self._mean.shape

    @property
    def count(self):
        """Values per index: ``int`` for a full reduction, else an int64 array."""
        return int(self._count) if self._count.ndim == 0 else self._count

    @property
    def mean(self):
        return _scalar_or_array(self._mean)

    @property
    def m2(self):
        return _scalar_or_array(self._m2)

    @property
    def weighted(self) -> bool:
        """Whether these are weighted statistics (``sum_weights`` is set)."""
        return self._sw is not None

    @property
    def sum_weights(self):
        """``sum(w)`` per index (weighted results; ``None`` otherwise)."""
        return None if self._sw is None else _scalar_or_array(self._sw)

    @property
    def sum_weights_sq(self):
        """``sum(w**2)`` per index (weighted results; ``None`` otherwise)."""
        return None if self._sw2 is None else _scalar_or_array(self._sw2)

    @property
    def variance(self):
        """``m2 / (count - ddof)``, or ``m2 / (sum_weights - ddof)`` for weighted results
        (frequency weights); NaN (with a RuntimeWarning, like NumPy) where that is <= 0."""
        if self._sw is None:
            denom = (self._count - self.ddof).astype(np.float64)
        else:
            denom = self._sw - self.ddof
        return self._divide_m2(denom)

    @property
    def reliability_variance(self):
        """``m2 / (sum_weights - ddof * sum_weights_sq / sum_weights)``: the variance for
        reliability weights, ``np.cov(x, aweights=w, ddof=ddof)`` (with ``ddof=1`` unbiased).
        Unweighted results: the same as :attr:`variance`."""
        if self._sw is None:
            return self.variance
        with np.errstate(invalid="ignore", divide="ignore"):
            denom = self._sw - self.ddof * (self._sw2 / self._sw)
        return self._divide_m2(np.where(self._sw > 0, denom, 0.0))

    def _divide_m2(self, denom):
        bad = ~(denom > 0)
        if np.any(bad):
            warnings.warn("Degrees of freedom <= 0 for slice", RuntimeWarning, stacklevel=3)
            denom = np.where(bad, np.nan, denom)
        return _scalar_or_array(self._m2 / denom)

    @property
    def std(self):
        return _scalar_or_array(np.sqrt(np.asarray(self.variance)))

    # -- merging -----------------------------------------------------------------------------------
    def merge(self, other: "Moments") -> "Moments":
        """Statistics of the union of the data behind ``self`` and ``other`` (same shape)."""
        if not isinstance(other, Moments):
            raise TypeError(f"can only merge Moments with Moments, got {type(other).__name__}")
        if other.shape != self.shape:
            raise ValueError(f"cannot merge Moments of shape {self.shape} with shape {other.shape}")
        sample = self.sample if self.sample is not None else other.sample
        out = Moments.from_state(self.state.merge(other.state), ddof=self.ddof, sample=sample)
        out.skipped = tuple(self.skipped) + tuple(other.skipped)
        return out

    __add__ = merge

    def with_ddof(self, ddof: int) -> "Moments":
        out = Moments(self._count, self._mean, self._m2, ddof=ddof, sample=self.sample,
                      mean_lo=self._mean_lo, sum_weights=self._sw, sum_weights_sq=self._sw2)
        out.skipped = self.skipped
        return out

    # -- plain data --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain arrays (``count``, ``mean``, ``m2``, ``mean_lo``, and for weighted results
        ``sum_weights``, ``sum_weights_sq``) that rebuild this result with ``Moments(**d)``."""
        d = {"count": self._count.copy(), "mean": self._mean.copy(), "m2": self._m2.copy(),
             "mean_lo": self._mean_lo.copy()}
        if self._sw is not None:
            d["sum_weights"], d["sum_weights_sq"] = self._sw.copy(), self._sw2.copy()
        return d

    def __getstate__(self):
        return {"count": self._count, "mean": self._mean, "m2": self._m2,
                "ddof": self.ddof, "sample": self.sample, "mean_lo": self._mean_lo,
                "skipped": self.skipped, "sum_weights": self._sw, "sum_weights_sq": self._sw2}

    def __setstate__(self, state):
        self.__init__(state["count"], state["mean"], state["m2"], ddof=state["ddof"],
                      sample=state["sample"], mean_lo=state.get("mean_lo"),
                      sum_weights=state.get("sum_weights"), sum_weights_sq=state.get("sum_weights_sq"))
        self.skipped = tuple(state.get("skipped", ()))

    def __eq__(self, other):
        if not isinstance(other, Moments):
            return NotImplemented
        return (self.shape == other.shape and np.array_equal(self._count, other._count)
                and np.array_equal(self._mean, other._mean, equal_nan=True)
                and np.array_equal(self._m2, other._m2, equal_nan=True)
                and (self._sw is None) == (other._sw is None)
                and (self._sw is None or (np.array_equal(self._sw, other._sw, equal_nan=True)
                                          and np.array_equal(self._sw2, other._sw2, equal_nan=True))))
    # mean_lo is left out on purpose: Moments(count, mean, m2) rebuilt from the public arrays has
    # the same statistics; only later merges of far-from-zero means are slightly less exact.

    __hash__ = None  # mutable arrays inside

    def __repr__(self) -> str:
        extra = f", sample={self.sample}" if self.sample is not None else ""
        if self._sw is not None:
            extra += ", weighted"
        if self._mean.ndim == 0:
            return (f"Moments(count={self.count}, mean={float(self._mean)!r}, "
                    f"m2={float(self._m2)!r}, ddof={self.ddof}{extra})")
        return f"Moments(shape={self.shape}, ddof={self.ddof}{extra})"
