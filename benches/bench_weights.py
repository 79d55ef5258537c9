"""Weighted and masked moments: fastmoments.compute(weights=/where=) against a plain read loop over
the bytes of data plus weights, and against NumPy's best weighted mean+variance, in one run.

For each case (1 GiB of data by default, held in RAM) prints GB/s (data + weight bytes) of
  read     a plain read loop over the data and then the weights (independent 64-bit sums),
  fm       fastmoments.compute(x, weights=w) or (x, where=m),
at threads=1 and all threads, fm/read against the issue's bar (per-row weights 0.75,
elementwise weights or masks 0.6; integer data with integer weights, summed exactly, has none and
is shown beside the same data with float64 weights), then NumPy once (np.average twice: mean, then the weighted
mean of squared deviations; or np.mean + np.var with where=) with its speed-up and both
variance errors against an extended-precision reference. Best of --repeat, interleaved.

    python benches/bench_weights.py                  # 1 GiB cases
    python benches/bench_weights.py --gib 0.25 --cases rows
    python benches/bench_weights.py --clock cpu      # on a machine shared with other jobs
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

import fastmoments
from fastmoments import _core

from bench_core import BestTimes, cpu_model  # noqa: E402  (same folder)


def _floats(n, rng, dtype):
    x = rng.standard_normal(n, dtype=np.float32)
    x *= 10
    x += 1000  # mean 1000, std 10
    return x.astype(dtype, copy=False)


def cases(gib, rng, want):
    """(name, bar, make() -> (x, kwargs), axis)."""
    nb = int(gib * 2**30)

    def rows(dtype, width, wdtype=np.float64):
        def make():
            x = _floats(nb // np.dtype(dtype).itemsize, rng, dtype).reshape(-1, width)
            return x, {"weights": (10.0 ** rng.uniform(-3, 3, x.shape[0])).astype(wdtype)}
        return make

    def elementwise(dtype, width):
        def make():
            x = _floats(nb // np.dtype(dtype).itemsize, rng, dtype).reshape(-1, width)
            w = rng.random(x.shape, dtype=np.float32)
            w *= 3
            return x, {"weights": w}
        return make

    def mask(dtype, width):
        def make():
            x = _floats(nb // np.dtype(dtype).itemsize, rng, dtype).reshape(-1, width)
            return x, {"where": rng.random(x.shape, dtype=np.float32) < 0.8}
        return make

    def feature_mask(dtype, width):
        def make():
            x = _floats(nb // np.dtype(dtype).itemsize, rng, dtype).reshape(-1, width)
            return x, {"where": rng.random((1, width), dtype=np.float32) < 0.8}  # per feature
        return make

    def zero_weight_features(dtype, width):
        def make():
            x, kw = elementwise(dtype, width)()
            kw["weights"][:, rng.random(width) < 0.2] = 0  # features without positive weight
            return x, kw
        return make

    def feature_mask_runs(dtype, width):
        def make():  # each feature's values contiguous (an F-order (N, width) array): run mode
            x = _floats(nb // np.dtype(dtype).itemsize, rng, dtype).reshape(width, -1).T
            return x, {"where": rng.random((1, width), dtype=np.float32) < 0.8}
        return make

    def integers(dtype, width, form, wdtype=np.int64):
        """Integer data with integer weights (exact sums), or with the same weights as float64
        (wdtype=np.float64: the float64 weights path), per row, per value or a mask."""
        def make():
            info = np.iinfo(dtype)
            x = rng.integers(max(info.min, -30000), min(info.max, 30000), nb // np.dtype(dtype).itemsize,
                             dtype=dtype, endpoint=True).reshape(-1, width)
            if form == "mask":
                return x, {"where": rng.random(x.shape, dtype=np.float32) < 0.5}
            w = rng.integers(0, 10, x.shape[0] if form == "rows" else x.shape, dtype=np.uint8)
            return x, {"weights": w.astype(wdtype)}
        return make

    table = [
        ("float32 (N,256) axis=-1, per-row weights", 0.75, rows(np.float32, 256), -1),
        ("float64 (N,256) axis=-1, per-row weights", 0.75, rows(np.float64, 256), -1),
        ("float32 (N,256) axis=None, per-row weights", 0.75, rows(np.float32, 256), None),
        ("float32 (N,256) axis=-1, f32 weights per value", 0.60, elementwise(np.float32, 256), -1),
        ("float32 (N,256) axis=None, f32 weights per value", 0.60, elementwise(np.float32, 256), None),
        ("float32 (N,256) axis=-1, where= mask", 0.60, mask(np.float32, 256), -1),
        ("float32 (N,256) axis=None, where= mask", 0.60, mask(np.float32, 256), None),
        ("float32 (N,256) axis=-1, where= (1,256) per feature", 0.60, feature_mask(np.float32, 256), -1),
        ("float32 (N,256) axis=-1, f32 weights, 20% zero features", 0.60, zero_weight_features(np.float32, 256), -1),
        ("float32 (N,256) F-order axis=-1, where= (1,256) per feature", 0.60, feature_mask_runs(np.float32, 256), -1),
        # Integer data with integer weights or masks: exact sums (no bar in the issue; the same
        # data with float64 weights beside it, the path these took before).
        ("uint8 (N,256) axis=-1, int64 per-row weights (exact)", None, integers(np.uint8, 256, "rows"), -1),
        ("uint8 (N,256) axis=-1, float64 per-row weights", None, integers(np.uint8, 256, "rows", np.float64), -1),
        ("int16 (N,256) axis=-1, int64 per-row weights (exact)", None, integers(np.int16, 256, "rows"), -1),
        ("int16 (N,256) axis=-1, float64 per-row weights", None, integers(np.int16, 256, "rows", np.float64), -1),
        ("int32 (N,256) axis=-1, int64 per-row weights (exact)", None, integers(np.int32, 256, "rows"), -1),
        ("int32 (N,256) axis=-1, float64 per-row weights", None, integers(np.int32, 256, "rows", np.float64), -1),
        ("int16 (N,256) axis=-1, int64 weights per value (exact)", None, integers(np.int16, 256, "values"), -1),
        ("int16 (N,256) axis=-1, float64 weights per value", None, integers(np.int16, 256, "values", np.float64), -1),
        ("int16 (N,256) axis=-1, where= mask (exact)", None, integers(np.int16, 256, "mask"), -1),
    ]
    for row in table:
        if not want or any(w in row[0] for w in want):
            yield row


def reference(x, axis, kw):
    """Weighted variance in long double, blockwise along axis 0 (two passes)."""
    red = (0, 1) if axis is None else (0,)
    ld = np.longdouble
    step = 1 << 14
    w = kw.get("weights")
    if w is None:
        w = kw["where"]
    if w.ndim == x.ndim:
        w = np.broadcast_to(w, x.shape)  # per-feature weights or masks: rows sliced below

    def blocks():
        for i in range(0, x.shape[0], step):
            wb = w[i:i + step].astype(ld)
            yield x[i:i + step].astype(ld), (wb[:, None] if wb.ndim == 1 else wb)

    sw = sum(np.broadcast_to(b, a.shape).sum(axis=red) for a, b in blocks())
    mean = sum((a * b).sum(axis=red) for a, b in blocks()) / sw
    m2 = sum((b * (a - mean) ** 2).sum(axis=red) for a, b in blocks())
    with np.errstate(invalid="ignore", divide="ignore"):  # NaN where no weight is positive
        return (m2 / sw).astype(np.float64)


def numpy_best(x, axis, kw):
    red = (0, 1) if axis is None else 0
    if "where" in kw:
        m = kw["where"]
        return np.mean(x, axis=red, where=m), np.var(x, axis=red, where=m)
    w = kw["weights"]
    if axis is None and w.ndim == 1:
        w = np.broadcast_to(w[:, None], x.shape)
    try:
        mean = np.average(x, axis=red, weights=w)
        var = np.average((x - mean) ** 2, axis=red, weights=w)
    except ZeroDivisionError:  # a feature without positive weight: np.average's sums, NaN there
        with np.errstate(invalid="ignore", divide="ignore"):
            sw = w.sum(axis=red)
            mean = np.multiply(x, w).sum(axis=red) / sw
            var = np.multiply((x - mean) ** 2, w).sum(axis=red) / sw
    return mean, var


def rel_err(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.nanmax(np.abs(got - want) / np.abs(want)))  # NaN: features without weight


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=1.0, help="data bytes per case (weights come on top)")
    ap.add_argument("--threads", type=int, default=fastmoments.default_threads())
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--cases", nargs="*", default=None, help="substrings of case names to run")
    ap.add_argument("--no-peers", action="store_true", help="skip NumPy and the error columns")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = ap.parse_args()
    counts = [1] if args.threads == 1 else [1, args.threads]
    rng = np.random.default_rng(0)
    print(f"fastmoments {fastmoments.__version__}; CPU: {cpu_model()}; kernel variant {_core.selected_isa}")
    print(f"threads {counts}; {args.gib} GiB of data per case; best of {args.repeat}; {args.clock}-clock; "
          f"GB/s count data + weight bytes")
    cols = "".join(f" | t={t}: {'read':>6s} {'fm':>6s} {'fm/read':>7s}" for t in counts)
    head = f"{'case':60s}{cols} | bar  | bits"
    if not args.no_peers:
        head += " | numpy GB/s  fm/numpy | err fm   err numpy"
    print(head)
    print("-" * len(head))
    below = []
    for name, bar, make, axis in cases(args.gib, rng, args.cases):
        x, kw = make()
        w = next(iter(kw.values()))
        gb = (x.nbytes + w.nbytes) / 1e9
        raw_x = x.ravel(order="K").view(np.uint8)  # a view for C- and F-order arrays
        raw_w = w.ravel(order="K").view(np.uint8)
        best = timed = BestTimes(args.clock)

        results = {}
        for _ in range(args.repeat):
            for t in counts:
                timed(("read", t), lambda: (_core.read_bandwidth(raw_x, t), _core.read_bandwidth(raw_w, t)))
                results[t] = timed(("fm", t), lambda: fastmoments.compute(x, axis=axis, threads=t, **kw))
        # equal_nan: a feature without positive weight is NaN for every thread count
        same = all(np.array_equal(results[t].m2, results[counts[0]].m2, equal_nan=True) and
                   np.array_equal(results[t].mean, results[counts[0]].mean, equal_nan=True) for t in counts)
        row = f"{name:60s}"
        for t in counts:
            ratio = best[("read", t)] / best[("fm", t)]
            low = bar is not None and ratio < bar
            if low:
                below.append(f"{name} threads={t}: {ratio:.2f} < {bar:.2f}")
            row += f" | t={t}: {gb / best[('read', t)]:6.2f} {gb / best[('fm', t)]:6.2f} {ratio:7.2f}"
            row += "*" if low else " "
        row += f" | {'  - ' if bar is None else f'{bar:4.2f}'} | {'same' if same else 'DIFFER'}"
        if not args.no_peers:
            with warnings.catch_warnings():  # features without positive weight: NaN, empty-slice warnings
                warnings.simplefilter("ignore", RuntimeWarning)
                t0 = time.perf_counter()
                _, var_np = numpy_best(x, axis, kw)
                t_np = time.perf_counter() - t0
                want = reference(x, axis, kw)
                fm = results[counts[-1]]
                row += (f" | {gb / t_np:10.2f} {t_np / best[('fm', counts[-1])]:8.1f}x"
                        f" | {rel_err(fm.variance, want):7.1e}  {rel_err(var_np, want):7.1e}")
        print(row, flush=True)
        del x, kw, w, raw_x, raw_w, results
    print("-" * len(head))
    print("every row at its bar" if not below else "below the bar (*):\n  " + "\n  ".join(below))


if __name__ == "__main__":
    main()
