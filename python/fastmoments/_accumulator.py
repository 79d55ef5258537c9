"""``Accumulator``: statistics of data that arrives in batches, through the front door."""

from __future__ import annotations

from typing import Optional

from ._axes import AxisLike
from ._compute import compute
from ._finish import EmptyReductionError
from ._moments import Moments


class Accumulator:
    """Statistics of data that arrives in batches: ``update`` each batch, ``result`` at the end.

    Batches are reduced with :func:`fastmoments.compute` and merged exactly, so the result equals
    one pass over the concatenated data (to rounding), whatever the batch sizes.

    Parameters
    ----------
    axis : None, int or tuple of ints
        Axes that keep separate statistics (as in ``keras.layers.Normalization``).
    ddof, nan_policy, threads :
        As in :func:`fastmoments.compute`.
    """

    def __init__(self, axis: AxisLike = -1, *, ddof: int = 0, nan_policy: str = "propagate",
                 threads: Optional[int] = None):
        self.axis = axis
        self.ddof = ddof
        self.nan_policy = nan_policy
        self.threads = threads
        self._state: Optional[Moments] = None

    def update(self, batch, *, weights=None, where=None, **kwargs) -> "Accumulator":
        """Adds ``batch`` (anything :func:`fastmoments.compute` reads); a batch with no rows adds
        nothing (its kept shape must still match earlier batches). ``weights``/``where`` weight
        or mask this batch as in :func:`fastmoments.compute`; unweighted batches merge with
        weighted ones as unit weights."""

        try:
            part = compute(batch, axis=self.axis, ddof=self.ddof, nan_policy=self.nan_policy,
                           threads=self.threads, weights=weights, where=where, **kwargs)
        except EmptyReductionError as exc:
            if self._state is not None and exc.kept_shape != self._state.shape:
                raise ValueError(f"batch statistics have shape {exc.kept_shape}, earlier batches "
                                 f"had {self._state.shape}") from None
            return self
        self._merge_state(part)
        return self

    def _merge_state(self, part: Moments) -> None:
        if self._state is None:
            self._state = part
        elif part.shape != self._state.shape:
            raise ValueError(
                f"batch statistics have shape {part.shape}, earlier batches had {self._state.shape}"
            )
        else:
            self._state = self._state.merge(part)

    def merge(self, other: "Accumulator") -> "Accumulator":
        if not isinstance(other, Accumulator):
            raise TypeError(f"can only merge an Accumulator, got {type(other).__name__}")
        if other._state is not None:
            self._merge_state(other._state)
        return self

    @property
    def empty(self) -> bool:
        return self._state is None

    def result(self) -> Moments:
        if self._state is None:
            raise ValueError("Accumulator.result(): no data was added")
        return self._state.with_ddof(self.ddof)

    def __repr__(self) -> str:
        return f"Accumulator(axis={self.axis!r}, state={self._state!r})"
