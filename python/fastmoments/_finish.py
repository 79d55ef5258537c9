"""The finish rules, owned here for every door: the empty-input rule, the NaN policy (which
kernel pass to make, and how "raise" tells NaN inputs from NaN results), and the state ->
``Moments`` step."""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np

from ._moments import Moments, State


class EmptyReductionError(ValueError):
    """Some output would get no values: the reduced axes hold none (NumPy returns NaN and warns).
    ``kept_shape`` is the shape the result would have had."""

    def __init__(self, shape: Sequence[int], kept_shape: Tuple[int, ...], what: str = "array"):
        super().__init__(f"cannot compute moments of an empty reduction: {what} of shape "
                         f"{tuple(shape)} has no values along the reduced axes")
        self.kept_shape = kept_shape


def check_reduction(shape: Sequence[int], kept: Tuple[int, ...], what: str = "array") -> None:
    """:class:`EmptyReductionError` when some output would get no values (shapes of unknown
    length, NaN in Dask, are judged when their data is known)."""
    if any(isinstance(s, float) and math.isnan(s) for s in shape):
        return
    out_shape = tuple(shape[i] for i in kept)
    n_reduced = math.prod(shape[i] for i in range(len(shape)) if i not in kept)
    if n_reduced == 0 and math.prod(out_shape) > 0:
        raise EmptyReductionError(shape, out_shape, what)


def kernel_omits(nan_policy: str, floating: bool, can_rerun: bool = True) -> bool:
    """Whether the kernel pass drops NaNs: for "omit", and for "raise" where the data cannot be
    read twice (a dataset); elsewhere "raise" reads once without omitting (the omitting kernel
    costs 2-4x the instructions) and a second time only when some mean came out NaN."""
    return floating and (nan_policy == "omit" or (nan_policy == "raise" and not can_rerun))


def finish(state: State, *, nan_policy: str, floating: bool, expected: Union[int, np.ndarray],
           ddof: int, sample: Optional[float] = None,
           rerun: Optional[Callable[[bool], State]] = None) -> Moments:
    """``Moments`` from a kernel pass made with ``kernel_omits(nan_policy, floating, rerun is not
    None)``.

    "raise": NaN inputs are an error, NaNs made from inputs (inf - inf) are not. An omitting pass
    shows NaN inputs as fewer values than ``expected`` (the values per output); a propagating
    pass can only hold NaN inputs where a mean is NaN, and then ``rerun(omit=True)`` counts.
    """
    if nan_policy == "raise" and floating:
        counted = state.count
        if rerun is not None:
            counted = rerun(True).count if np.isnan(state.mean).any() else expected
        if np.any(counted != expected):
            raise ValueError("the data contains NaN (nan_policy='raise')")
    if (nan_policy == "omit" or state.weighted) and not np.all(state.count):
        # Like np.nanmean/np.nanvar: an index whose values were all NaN has NaN statistics; so
        # has a weighted index whose weights are all zero (or that is fully masked, where=):
        # its variance warns as an empty index under "omit" does (Moments.variance).
        empty = state.count == 0
        state = State(state.count, np.where(empty, np.nan, state.mean),
                      np.where(empty, np.nan, state.m2), state.mean_lo, *state.arrays[4:])
    return Moments.from_state(state, ddof=ddof, sample=sample)


def values_per_output(shape: Sequence[int], kept: Tuple[int, ...]) -> int:
    """How many values each output reduces: the product of the reduced axes."""
    return math.prod(shape[i] for i in range(len(shape)) if i not in kept)
