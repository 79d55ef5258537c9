"""Progress reporting: a tqdm bar for ``progress=True`` or a user callable."""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Callable, Iterator, Optional, Union

ProgressLike = Union[bool, None, Callable[[int, int], Any]]


@contextlib.contextmanager
def progress_reporter(progress: ProgressLike, total_bytes: int,
                      desc: str = "fastmoments") -> Iterator[Optional[Callable[[int], None]]]:
    """Yields ``report(done_bytes)`` or ``None`` when no progress is wanted."""
    if progress is None or progress is False:
        yield None
        return
    if callable(progress):
        def report(done: int) -> None:
            progress(int(done), int(total_bytes))

        yield report
        report(total_bytes)
        return
    if progress is not True:
        raise TypeError(f"progress must be a bool or a callable, got {progress!r}")
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is optional
        tqdm = None
    if tqdm is None:
        def report(done: int) -> None:
            pct = 100.0 * done / max(1, total_bytes)
            sys.stderr.write(f"\r{desc}: {pct:5.1f}% of {total_bytes / 1e9:.2f} GB")
            sys.stderr.flush()

        yield report
        report(total_bytes)
        sys.stderr.write("\n")
        return
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1000, desc=desc,
               dynamic_ncols=True, file=sys.stderr)
    state = {"done": 0}

    def report(done: int) -> None:
        done = min(int(done), total_bytes)
        if done > state["done"]:
            bar.update(done - state["done"])
            state["done"] = done

    try:
        yield report
        report(total_bytes)
    finally:
        bar.close()
