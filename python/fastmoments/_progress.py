"""Progress reporting: a tqdm bar for ``progress=True`` or a user callable."""

from __future__ import annotations

import concurrent.futures
import contextlib
import sys
from typing import Any, Callable, Iterator, Optional, Union

ProgressLike = Union[bool, None, Callable[[int, int], Any]]

# How often a thread waiting on work done elsewhere (native code, worker threads) wakes up to
# poll: Ctrl-C and progress callbacks are seen within this time.
POLL_SECONDS = 0.05


def result_of(fut: "concurrent.futures.Future") -> Any:
    """``fut.result()`` by timed waits, so that Ctrl-C reaches the waiting (main) thread while a
    worker thread runs."""
    while not concurrent.futures.wait([fut], timeout=POLL_SECONDS).done:
        pass
    return fut.result()


@contextlib.contextmanager
def progress_reporter(progress: ProgressLike, total_bytes: int, desc: str = "fastmoments",
                      files: int = 0) -> Iterator[Optional[Callable[..., None]]]:
    """Yields ``report(done_bytes, files=None)`` or ``None`` when no progress is wanted. With
    ``files`` (more than one file to read) the bar also counts the files done (``files=``)."""
    files_total = files
    if progress is None or progress is False:
        yield None
        return
    if callable(progress):
        def report(done: int, files: Optional[int] = None) -> None:
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
        counted = {"files": 0}

        def report(done: int, files: Optional[int] = None) -> None:
            pct = 100.0 * done / max(1, total_bytes)
            if files is not None:
                counted["files"] = files
            of_files = f", {counted['files']}/{files_total} files" if files_total > 1 else ""
            sys.stderr.write(f"\r{desc}: {pct:5.1f}% of {total_bytes / 1e9:.2f} GB{of_files}")
            sys.stderr.flush()

        yield report
        report(total_bytes, files=files_total)
        sys.stderr.write("\n")
        return
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1000, desc=desc,
               dynamic_ncols=True, file=sys.stderr)
    state = {"done": 0}

    def report(done: int, files: Optional[int] = None) -> None:
        done = min(int(done), total_bytes)
        if files is not None and files_total > 1:
            bar.set_postfix_str(f"{files}/{files_total} files", refresh=False)
        if done > state["done"]:
            bar.update(done - state["done"])
            state["done"] = done

    try:
        yield report
        report(total_bytes, files=files_total)
    finally:
        bar.close()
