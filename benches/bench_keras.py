"""FastNorm.adapt against keras.layers.Normalization.adapt, on one ndarray and one tf.data dataset.

    python benches/bench_keras.py [SIZE_MB] [--features F] [--batch B] [--repeat R] [--skip-slow]

Data: float32 features with mean 1000 and std 10 (where float32 accumulation loses digits).
Prints seconds, GB/s, speed ratio against Normalization.adapt on the same input, and the largest
relative variance error against a float64 two-pass reference; for the dataset also the time to
merely iterate it (a Python loop and a graph-mode ``Dataset.reduce``), the floor for any adapt.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def make_data(n_bytes: int, features: int, seed: int = 0) -> np.ndarray:
    rows = max(1, n_bytes // (4 * features))
    rng = np.random.default_rng(seed)
    x = np.empty((rows, features), np.float32)
    step = max(1, (64 << 20) // (4 * features))
    for start in range(0, rows, step):  # bounded temporaries
        part = rng.standard_normal((min(step, rows - start), features), dtype=np.float32)
        x[start:start + step] = np.float32(1000) + np.float32(10) * part
    return x


def reference_variance(x: np.ndarray) -> np.ndarray:
    """Two-pass float64 variance per column, in blocks of rows (independent of fastmoments)."""
    step = max(1, (32 << 20) // (8 * x.shape[1]))
    total = np.zeros(x.shape[1])
    for start in range(0, len(x), step):
        total += x[start:start + step].astype(np.float64).sum(axis=0)
    mean = total / len(x)
    m2 = np.zeros(x.shape[1])
    for start in range(0, len(x), step):
        m2 += ((x[start:start + step].astype(np.float64) - mean) ** 2).sum(axis=0)
    return m2 / len(x)


def best_time(fn, repeat: int):
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def adapted_variance(layer_cls, data, **kwargs):
    layer = layer_cls()
    layer.adapt(data, **kwargs)
    return np.asarray(layer.adapt_variance, dtype=np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("size_mb", nargs="?", type=float, default=64.0,
                        help="array size in MB (1e6 bytes); default 64")
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1024, help="tf.data batch size")
    parser.add_argument("--repeat", type=int, default=3, help="best of N for the fast paths")
    parser.add_argument("--skip-slow", action="store_true",
                        help="skip Normalization.adapt on the dataset (~6 s per GB)")
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    import fastmoments
    from fastmoments import _core
    from fastmoments.keras import FastNorm

    x = make_data(int(args.size_mb * 1e6), args.features)
    gb = x.nbytes / 1e9
    ref = reference_variance(x)
    err = lambda v: float(np.max(np.abs(v / ref - 1)))  # noqa: E731
    threads = fastmoments.default_threads()
    print(f"data: float32 {x.shape}, {gb:.3f} GB, mean 1000, std 10; threads={threads}; "
          f"TF {tf.__version__}, Keras {keras.__version__}, batch {args.batch}")

    rows = []  # (name, seconds, variance error or None, group)
    t, _ = best_time(lambda: _core.read_bandwidth(x, threads), args.repeat)
    rows.append(("plain read loop (ndarray)", t, None, "array"))
    t, v = best_time(lambda: adapted_variance(FastNorm, x, progress=False), args.repeat)
    rows.append(("FastNorm.adapt(ndarray)", t, err(v), "array"))
    t, v = best_time(lambda: adapted_variance(keras.layers.Normalization, x), 1)
    rows.append(("Normalization.adapt(ndarray)", t, err(v), "array"))

    ds = tf.data.Dataset.from_tensor_slices(x).batch(args.batch)

    def python_iteration():
        for _ in ds:
            pass

    t, _ = best_time(python_iteration, args.repeat)
    rows.append(("iterate dataset (Python loop)", t, None, "dataset"))
    t, _ = best_time(lambda: int(ds.reduce(np.int64(0), lambda n, b: n + 1)), args.repeat)
    rows.append(("iterate dataset (Dataset.reduce)", t, None, "dataset"))
    t, v = best_time(lambda: adapted_variance(FastNorm, ds), args.repeat)
    rows.append(("FastNorm.adapt(dataset)", t, err(v), "dataset"))
    if not args.skip_slow:
        t, v = best_time(lambda: adapted_variance(keras.layers.Normalization, ds), 1)
        rows.append(("Normalization.adapt(dataset)", t, err(v), "dataset"))

    try:
        from fastmoments import tf as fm_tf
        info = fm_tf.op_info() if hasattr(fm_tf, "op_info") else {}
    except ImportError as exc:
        info = {"error": str(exc)}
    print(f"fastmoments.tf op: {info}")

    base = {g: next((s for n, s, _, gg in rows if gg == g and n.startswith("Normalization")), None)
            for g in ("array", "dataset")}
    iterate = min(s for n, s, _, g in rows if n.startswith("iterate"))
    print(f"\n{'path':34s} {'seconds':>9s} {'GB/s':>8s} {'vs Normalization':>17s} "
          f"{'var rel error':>14s}")
    for name, s, e, group in rows:
        ratio = f"{base[group] / s:16.1f}x" if base[group] else f"{'-':>17s}"
        es = f"{e:14.2e}" if e is not None else f"{'-':>14s}"
        print(f"{name:34s} {s:9.3f} {gb / s:8.2f} {ratio} {es}")
    fast_ds = next(s for n, s, _, _ in rows if n == "FastNorm.adapt(dataset)")
    print(f"\nFastNorm.adapt(dataset) / fastest plain iteration: {fast_ds / iterate:.2f}x "
          "(target <= 1.3x)")


if __name__ == "__main__":
    main()
