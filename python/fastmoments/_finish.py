"""The finish rules, owned here for every door: the empty-input rule, the NaN policy (one kernel
pass: omit NaNs whenever the policy is not "propagate", then compare counts), and the state ->
``Moments`` step."""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

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


def kernel_omits(nan_policy: str, floating: bool) -> bool:
    """Whether the kernel pass drops NaNs: for "omit" and for "raise" (which then compares
    counts), on data that can hold NaN."""
    return floating and nan_policy != "propagate"


def finish(state: State, *, nan_policy: str, floating: bool, expected: Union[int, np.ndarray],
           ddof: int, sample: Optional[float] = None) -> Moments:
    """``Moments`` from a kernel pass made with ``kernel_omits(nan_policy, floating)``.

    ``expected`` is the number of values each output would count without NaNs; fewer under
    "raise" means the data held NaN (inf - inf NaNs are not inputs and do not count).
    """
    if nan_policy == "raise" and floating and np.any(state.count != expected):
        raise ValueError("the data contains NaN (nan_policy='raise')")
    if nan_policy == "omit" and not np.all(state.count):
        # Like np.nanmean/np.nanvar: an index whose values were all NaN has NaN statistics.
        empty = state.count == 0
        state = State(state.count, np.where(empty, np.nan, state.mean),
                      np.where(empty, np.nan, state.m2), state.mean_lo)
    return Moments.from_state(state, ddof=ddof, sample=sample)


def values_per_output(shape: Sequence[int], kept: Tuple[int, ...]) -> int:
    """How many values each output reduces: the product of the reduced axes."""
    return math.prod(shape[i] for i in range(len(shape)) if i not in kept)
