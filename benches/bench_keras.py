"""FastNorm.adapt against keras.layers.Normalization.adapt: one ndarray, one tf.data dataset, a
ragged sequence dataset, and adapt_all over 8 numeric columns.

    python benches/bench_keras.py [SIZE_MB] [--features F] [--batch B] [--repeat R] [--skip-slow]
                                  [--only {arrays,ragged,adapt_all} ...] [--ragged-mb M]
                                  [--columns-rows N]

Data: float32 features with mean 1000 and std 10 (where float32 accumulation loses digits).
Prints seconds, GB/s, speed ratio against Normalization.adapt on the same input, and the largest
relative variance error against a float64 two-pass reference; for the dataset also the time to
merely iterate it (a Python loop and a graph-mode ``Dataset.reduce``), the floor for any adapt.

Ragged: a ``(sequences, None, features)`` float32 ``tf.RaggedTensor`` dataset (lengths 1-200,
batches of 64 sequences); ``FastNorm.adapt`` (statistics of the real time steps) against the time
to iterate the dataset (bar: <= 1.3x), and Keras ``Normalization.adapt`` on the zero-padded
batches (``to_tensor``: padding counted, so its statistics are wrong) for scale.

adapt_all: a batched dataset of ``({8 float32 columns, a label}, label)`` elements;
``fastmoments.keras.adapt_all`` (one pass) against 8 ``Normalization.adapt`` calls on the mapped
column datasets, the way ``keras.utils.FeatureSpace`` adapts ``float_normalized()`` features
(bar: >= 5x).
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


def bench_arrays(args) -> None:
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


def bench_ragged(args) -> float:
    """Ragged sequence dataset: FastNorm.adapt vs iterating it; returns the ratio."""
    import keras
    import tensorflow as tf

    from fastmoments.keras import FastNorm

    rng = np.random.default_rng(1)
    features = 32
    mean_len = 100
    n_seq = max(1, int(args.ragged_mb * 1e6) // (4 * features * mean_len))
    lengths = rng.integers(1, 2 * mean_len, n_seq)
    values = make_data(int(lengths.sum()) * 4 * features, features, seed=2)[:int(lengths.sum())]
    ragged = tf.RaggedTensor.from_row_lengths(values, lengths)
    ds = tf.data.Dataset.from_tensor_slices(ragged).batch(64)
    gb = values.nbytes / 1e9
    ref = reference_variance(values)
    err = lambda v: float(np.max(np.abs(v / ref - 1)))  # noqa: E731
    print(f"\nragged: {n_seq} sequences x (1-{2 * mean_len - 1} steps) x {features} float32, "
          f"{len(values)} real steps, {gb:.3f} GB of values; batches of 64 sequences")

    def python_iteration():
        for _ in ds:
            pass

    rows = []
    t, _ = best_time(python_iteration, args.repeat)
    rows.append(("iterate ragged dataset (Python loop)", t, None))
    # Counting elements lets TF skip decoding the ragged batches (no values are produced);
    # reading one value of each batch makes it produce them, as any consumer does.
    t, _ = best_time(lambda: int(ds.reduce(np.int64(0), lambda n, b: n + 1)), args.repeat)
    rows.append(("count elements (Dataset.reduce)", t, None))
    count_only = t
    t, _ = best_time(lambda: float(ds.reduce(0.0, lambda n, b: n + b.flat_values[0, 0])),
                     args.repeat)
    rows.append(("iterate, one value a batch (Dataset.reduce)", t, None))
    t, v = best_time(lambda: adapted_variance(FastNorm, ds), args.repeat)
    rows.append(("FastNorm.adapt(ragged dataset)", t, err(v)))
    fast = t
    if not args.skip_slow:
        padded = ds.map(lambda r: r.to_tensor())
        t, v = best_time(lambda: adapted_variance(keras.layers.Normalization, padded), 1)
        rows.append(("Normalization.adapt(padded)", t, err(v)))
    iterate = min(s for n, s, _ in rows if n.startswith("iterate"))
    print(f"{'path':44s} {'seconds':>9s} {'GB/s':>8s} {'vs iteration':>13s} {'var rel error':>14s}")
    for name, s, e in rows:
        es = f"{e:14.2e}" if e is not None else f"{'-':>14s}"
        print(f"{name:44s} {s:9.3f} {gb / s:8.2f} {s / iterate:12.2f}x {es}")
    print(f"(FastNorm.adapt / counting the elements without decoding them: {fast / count_only:.2f}x)")
    return fast / iterate


def bench_adapt_all(args) -> float:
    """adapt_all over 8 numeric columns vs 8 Normalization.adapt calls; returns the speedup."""
    import keras
    import tensorflow as tf

    from fastmoments.keras import FastNorm, adapt_all

    rng = np.random.default_rng(3)
    n = args.columns_rows
    names = [f"col{i}" for i in range(8)]
    cols = {k: (10.0 ** i + (i + 1) * rng.standard_normal(n)).astype(np.float32)
            for i, k in enumerate(names)}
    label = rng.integers(0, 2, n).astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices((dict(cols, label=label), label)).batch(args.batch)
    refs = {k: float(np.var(v.astype(np.float64))) for k, v in cols.items()}
    gb = sum(v.nbytes for v in cols.values()) / 1e9
    print(f"\nadapt_all: {n} rows x 8 float32 columns (+ a label), batch {args.batch}, "
          f"{gb:.3f} GB of columns")

    def fast():
        norms = {k: FastNorm(axis=None) for k in names}
        adapt_all(norms, ds)
        return max(abs(float(np.asarray(norms[k].adapt_variance)) / refs[k] - 1) for k in names)

    def keras_feature_space_way():
        # FeatureSpace.adapt: per float_normalized() feature, map the dataset to the feature
        # (as a column) and adapt a Normalization on it: one pass per feature.
        errs = []
        for k in names:
            layer = keras.layers.Normalization(axis=-1)
            layer.adapt(ds.map(lambda x, y, k=k: tf.expand_dims(x[k], -1)))
            errs.append(abs(float(np.asarray(layer.adapt_variance)[0]) / refs[k] - 1))
        return max(errs)

    def python_iteration():
        for _ in ds:
            pass

    rows = []
    t, _ = best_time(python_iteration, args.repeat)
    rows.append(("iterate dataset once (Python loop)", t, None))
    t, _ = best_time(lambda: int(ds.reduce(np.int64(0), lambda n, b: n + 1)), args.repeat)
    rows.append(("iterate dataset once (Dataset.reduce)", t, None))
    t, e = best_time(fast, args.repeat)
    rows.append(("adapt_all (8 FastNorm, one pass)", t, e))
    t_fast = t
    t, e = best_time(keras_feature_space_way, 1)
    rows.append(("8 x Normalization.adapt", t, e))
    t_keras = t
    print(f"{'path':40s} {'seconds':>9s} {'vs 8 Keras adapts':>18s} {'var rel error':>14s}")
    for name, s, e in rows:
        es = f"{e:14.2e}" if e is not None else f"{'-':>14s}"
        print(f"{name:40s} {s:9.3f} {t_keras / s:17.1f}x {es}")
    return t_keras / t_fast


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("size_mb", nargs="?", type=float, default=64.0,
                        help="array size in MB (1e6 bytes); default 64")
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1024, help="tf.data batch size")
    parser.add_argument("--repeat", type=int, default=3, help="best of N for the fast paths")
    parser.add_argument("--skip-slow", action="store_true",
                        help="skip Normalization.adapt on the datasets (~6 s per GB)")
    parser.add_argument("--only", nargs="+", choices=["arrays", "ragged", "adapt_all"],
                        default=["arrays", "ragged", "adapt_all"],
                        help="sections to run (default: all three)")
    parser.add_argument("--ragged-mb", type=float, default=64.0,
                        help="MB of real values in the ragged dataset; default 64")
    parser.add_argument("--columns-rows", type=int, default=1 << 20,
                        help="rows of the 8-column dataset; default 1048576")
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    print(f"TF {tf.__version__}, Keras {keras.__version__}")
    if "arrays" in args.only:
        bench_arrays(args)
    ratios = []
    if "ragged" in args.only:
        ratios.append(f"ragged FastNorm.adapt / fastest iteration: {bench_ragged(args):.2f}x "
                      "(bar <= 1.3x)")
    if "adapt_all" in args.only:
        ratios.append(f"adapt_all vs 8 Normalization.adapt: {bench_adapt_all(args):.1f}x faster "
                      "(bar >= 5x)")
    if ratios:
        print("\n" + "\n".join(ratios))


if __name__ == "__main__":
    main()
