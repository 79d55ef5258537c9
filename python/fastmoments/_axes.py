"""The ``axis`` argument, with the meaning of ``keras.layers.Normalization``: the axes that keep
separate statistics; every other axis is reduced; ``None`` reduces everything."""

from __future__ import annotations

import operator
from typing import Sequence, Tuple, Union

AxisLike = Union[None, int, Sequence[int]]


def normalize_keep_axes(axis: AxisLike, ndim: int) -> Tuple[int, ...]:
    """Sorted non-negative kept axes for an array of ``ndim`` dimensions.

    Raises ``ValueError`` for an out-of-range or repeated axis and ``TypeError`` for a non-integer.
    """
    if axis is None:
        return ()
    items = (axis,) if not isinstance(axis, (tuple, list)) else tuple(axis)
    kept = []
    for a in items:
        try:
            i = operator.index(a)
        except TypeError:
            raise TypeError(f"axis must be None, an int or a tuple of ints, got {axis!r}") from None
        if not -ndim <= i < ndim:
            raise ValueError(f"axis {i} is out of range for an array of {ndim} dimensions")
        i %= ndim
        if i in kept:
            raise ValueError(f"axis {axis!r} repeats axis {i}")
        kept.append(i)
    return tuple(sorted(kept))


def keep_mask(kept: Tuple[int, ...], ndim: int) -> list:
    return [i in kept for i in range(ndim)]


def kept_shape(shape: Sequence[int], kept: Tuple[int, ...]) -> Tuple[int, ...]:
    return tuple(shape[i] for i in kept)
