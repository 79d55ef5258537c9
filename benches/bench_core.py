"""In-memory throughput of fastmoments.compute against the machine's read limit and peers.

For each case (>= 1 GiB by default, held in RAM) prints GB/s of:
  read     a plain multi-threaded read loop over the same bytes, same threads (the ceiling),
  fm       fastmoments.compute,
  numpy    x.mean(axis) + x.var(axis) (what Keras's adapt does on an ndarray),
  keras    keras.layers.Normalization.adapt (when TensorFlow/Keras are installed),
and the ratios fm/read and fm/numpy, plus the variance error of each against an exact reference.

    python benches/bench_core.py            # 1 GiB cases, all cores
    python benches/bench_core.py --gib 0.25 --threads 2 --no-keras
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # idle BLAS threads spin and steal cores

import numpy as np

import fastmoments
from fastmoments import _core


def best_time(fn, repeat):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def exact_variance(x, axis):
    """Reference variance: exact integer sums for integers, extended-precision two pass for floats,
    in blocks along axis 0 (never a full-size temporary)."""
    kept = fastmoments._axes.normalize_keep_axes(axis, x.ndim)
    red = tuple(i for i in range(x.ndim) if i not in kept)
    n = int(np.prod([x.shape[i] for i in red]))
    step = max(1, x.shape[0] // 256)
    blocks = [x[i:i + step] for i in range(0, x.shape[0], step)] if 0 in red else [x]
    shape = [x.shape[i] for i in kept]
    if x.dtype.kind in "biu":
        s1 = sum(b.astype(np.int64).sum(axis=red, dtype=np.int64).astype(object) for b in blocks)
        s2 = sum((b.astype(np.int64) ** 2).sum(axis=red, dtype=np.int64).astype(object) for b in blocks)
        var = (np.asarray(s2) * n - np.asarray(s1) ** 2) / (n * n)  # Python ints: exact, one rounding
        return np.asarray(var, dtype=np.float64).reshape(shape)
    ld = np.longdouble
    mean = sum(b.astype(ld).sum(axis=red, keepdims=True) for b in blocks) / n
    m2 = sum(((b.astype(ld) - mean) ** 2).sum(axis=red, keepdims=True) for b in blocks)
    return (m2 / n).astype(np.float64).reshape(shape)


def rel_err(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want) / np.abs(want)))


def cases(gib, rng):
    n_f32 = int(gib * 2**30) // 4
    x = rng.standard_normal(n_f32, dtype=np.float32)
    x *= 10
    x += 1000  # mean 1000, std 10: where float32 accumulation fails
    rows = n_f32 // 256
    yield "float32 (N,256) axis=-1", x[: rows * 256].reshape(rows, 256), -1
    yield "float32 (N,256) axis=None", x[: rows * 256].reshape(rows, 256), None
    n = n_f32 // (64 * 128 * 128)
    yield "float32 NCHW (N,64,128,128) axis=1", x[: n * 64 * 128 * 128].reshape(n, 64, 128, 128), 1
    del x
    n = int(gib * 2**30) // (224 * 224 * 3)
    u = rng.integers(0, 256, size=(n, 224, 224, 3), dtype=np.uint8)
    yield "uint8 (N,224,224,3) axis=-1", u, -1


def keras_adapt(x, axis):
    import keras

    layer = keras.layers.Normalization(axis=axis)
    layer.adapt(x)
    return np.asarray(layer.variance).reshape(-1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=fastmoments.default_threads())
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-keras", action="store_true")
    args = ap.parse_args()
    have_keras = False
    if not args.no_keras:
        try:
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
            import keras  # noqa: F401

            have_keras = True
        except ImportError:
            pass
    rng = np.random.default_rng(0)
    print(f"fastmoments {fastmoments.__version__}, isa {fastmoments.build_info()['simd_selected']}, "
          f"threads {args.threads}, {args.gib} GiB per case")
    head = (f"{'case':38s} {'read':>6s} {'fm':>6s} {'numpy':>6s} {'keras':>6s} | {'fm/read':>7s} "
            f"{'fm/numpy':>8s} {'fm/keras':>8s} | {'err fm':>7s} {'err np':>7s} {'err keras':>9s}")
    print(head)
    print("-" * len(head))
    for name, x, axis in cases(args.gib, rng):
        gb = x.nbytes / 1e9
        t_read = best_time(lambda: _core.read_bandwidth(x, args.threads), args.repeat)
        t_fm = best_time(lambda: fastmoments.compute(x, axis=axis, threads=args.threads), args.repeat)
        kept = fastmoments._axes.normalize_keep_axes(axis, x.ndim)
        red = tuple(i for i in range(x.ndim) if i not in kept)
        np_res = {}

        def numpy_path():
            np_res["mean"] = x.mean(axis=red)
            np_res["var"] = x.var(axis=red)

        t_np = best_time(numpy_path, 1)
        want = exact_variance(x, axis)
        err_fm = rel_err(fastmoments.compute(x, axis=axis, threads=args.threads).variance, want)
        err_np = rel_err(np_res["var"], want)
        t_k = err_k = None
        if have_keras and axis is not None:
            k_res = {}
            t_k = best_time(lambda: k_res.setdefault("v", keras_adapt(x, axis)), 1)
            err_k = rel_err(k_res["v"], np.asarray(want).reshape(-1))
        fmt = lambda t: f"{gb / t:6.2f}" if t else f"{'-':>6s}"  # noqa: E731
        ratio = lambda t: f"{t / t_fm:7.1f}x" if t else f"{'-':>8s}"  # noqa: E731
        print(f"{name:38s} {fmt(t_read)} {fmt(t_fm)} {fmt(t_np)} {fmt(t_k)} | {t_read / t_fm:7.2f} "
              f"{ratio(t_np):>8s} {ratio(t_k):>8s} | {err_fm:7.1e} {err_np:7.1e} "
              f"{(f'{err_k:9.1e}' if err_k is not None else '        -')}", flush=True)
        del x


if __name__ == "__main__":
    main()
