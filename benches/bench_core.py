"""In-memory throughput of fastmoments.compute against a plain read loop, per ISA variant.

For each case (>= 1 GiB by default, held in RAM) and each compiled instruction-set variant this
CPU supports, prints GB/s of
  read     a plain read loop over the same bytes (independent 64-bit sums, OpenMP), the ceiling,
  fm       fastmoments.compute with that variant,
at threads=1 and at all threads, and fm/read for the same thread count, against the bar the
kernel must reach (issue 10). Timed runs of the read loop and of every variant are interleaved,
and each figure is the best of --repeat, so a neighbour's load affects them alike. The last
column says whether every variant and thread count gave the same bits.

--clock cpu times CPU seconds instead of wall seconds (threads=1: the calling thread, which runs
both loops; all threads: the process): on a machine shared with other jobs a run is preempted
part of the time, and wall-clock ratios then measure the neighbours more than the kernel.

    python benches/bench_core.py                      # 1 GiB cases, threads 1 and all
    python benches/bench_core.py --gib 0.25 --isa avx512 --cases float32
    python benches/bench_core.py --peers              # also NumPy / Keras speed and errors
    python benches/bench_core.py --clock cpu          # on a shared machine
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # idle BLAS threads spin and steal cores

import numpy as np

import fastmoments
from fastmoments import _core


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return platform.processor() or platform.machine()
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?")
    flags = next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), [])
    simd = [f for f in ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512dq", "avx512vl",
                        "avx512_vnni", "avx512_bf16", "avx512_fp16") if f in flags]
    return f"{model} ({os.cpu_count()} CPUs; {' '.join(simd) or 'no AVX'})"


class BestTimes(dict):
    """Best (smallest) time per key over repeated calls. ``clock="cpu"`` times a key whose
    second item is 1 (threads=1) with this thread's CPU clock and others with the process's
    (both immune to other programs' load); ``"wall"`` uses perf_counter."""

    def __init__(self, clock: str):
        super().__init__()
        self.clock = clock

    def __call__(self, key, fn):
        clock = time.perf_counter
        if self.clock == "cpu":
            clock = time.thread_time if key[1] == 1 else time.process_time
        t0 = clock()
        r = fn()
        self[key] = min(self.get(key, float("inf")), clock() - t0)
        return r


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
    mean = sum(b.astype(np.float32).astype(ld).sum(axis=red, keepdims=True) for b in blocks) / n
    m2 = sum(((b.astype(np.float32).astype(ld) - mean) ** 2).sum(axis=red, keepdims=True) for b in blocks)
    return (m2 / n).astype(np.float64).reshape(shape)


def rel_err(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want) / np.abs(want)))


def _floats(nbytes, rng, dtype):
    n = nbytes // np.dtype(dtype).itemsize
    x = rng.standard_normal(n, dtype=np.float32)
    x *= 10
    x += 1000  # mean 1000, std 10: where float32 accumulation fails
    return x.astype(dtype, copy=False)


def cases(gib, rng, want):
    """(name, bar at threads=1, bar at all threads, array factory, axis)."""
    nb = int(gib * 2**30)

    def rows(dtype, width):
        def make():
            x = _floats(nb, rng, dtype)
            return x[: x.size // width * width].reshape(-1, width)
        return make

    def nchw(dtype):
        def make():
            x = _floats(nb, rng, dtype)
            n = x.size // (64 * 128 * 128)
            return x[: n * 64 * 128 * 128].reshape(n, 64, 128, 128)
        return make

    def ints(dtype, shape_tail, lo, hi):
        def make():
            per = int(np.prod(shape_tail)) * np.dtype(dtype).itemsize
            return rng.integers(lo, hi, size=(nb // per,) + shape_tail, dtype=dtype)
        return make

    def bf16(width):
        def make():
            import ml_dtypes

            x = _floats(nb * 2, rng, np.float32)  # bfloat16: the upper half of each float32
            x = x.view(np.uint32) >> 16
            x = x.astype(np.uint16).view(ml_dtypes.bfloat16)
            return x[: x.size // width * width].reshape(-1, width)
        return make

    table = [
        ("float32 (N,256) axis=-1", 0.85, 0.85, rows(np.float32, 256), -1),
        ("float32 (N,256) axis=None", 0.85, 0.85, rows(np.float32, 256), None),
        ("float32 NCHW (N,64,128,128) axis=1", 0.85, 0.85, nchw(np.float32), 1),
        ("float64 (N,256) axis=-1", 0.85, 0.85, rows(np.float64, 256), -1),
        ("float64 (N,256) axis=None", 0.85, 0.85, rows(np.float64, 256), None),
        ("float64 NCHW (N,64,128,128) axis=1", 0.85, 0.85, nchw(np.float64), 1),
        ("float16 (N,256) axis=-1", 0.70, 0.85, rows(np.float16, 256), -1),
        ("float16 (N,256) axis=None", 0.70, 0.85, rows(np.float16, 256), None),
        ("bfloat16 (N,256) axis=-1", 0.70, 0.85, bf16(256), -1),
        ("bfloat16 (N,256) axis=None", 0.70, 0.85, bf16(256), None),
        ("uint8 (N,224,224,3) axis=-1", 0.80, 0.80, ints(np.uint8, (224, 224, 3), 0, 256), -1),
        ("uint8 (N,224,224,3) axis=None", 0.80, 0.80, ints(np.uint8, (224, 224, 3), 0, 256), None),
        ("int8 (N,256) axis=-1", 0.80, 0.80, ints(np.int8, (256,), -128, 128), -1),
        ("int16 (N,256) axis=-1", 0.80, 0.85, ints(np.int16, (256,), -32768, 32768), -1),
        ("int16 (N,256) axis=None", 0.80, 0.85, ints(np.int16, (256,), -32768, 32768), None),
        ("int32 (N,256) axis=-1", 0.80, 0.85, ints(np.int32, (256,), -2**31, 2**31), -1),
        ("int32 (N,256) axis=None", 0.80, 0.85, ints(np.int32, (256,), -2**31, 2**31), None),
        ("int64 [-1000,1000) (N,64) axis=-1", 0.70, 0.85, ints(np.int64, (64,), -1000, 1000), -1),
        ("int64 [-1000,1000) (N,64) axis=None", 0.70, 0.85, ints(np.int64, (64,), -1000, 1000), None),
    ]
    for name, bar1, barn, make, axis in table:
        if want and not any(w in name for w in want):
            continue
        yield name, bar1, barn, make, axis


def keras_adapt(x, axis):
    import keras

    layer = keras.layers.Normalization(axis=axis)
    layer.adapt(x)
    return np.asarray(layer.variance).reshape(-1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=fastmoments.default_threads(),
                    help="the 'all threads' count (default: fastmoments.default_threads())")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--isa", nargs="*", default=None, help="variants to time (default: every supported one)")
    ap.add_argument("--cases", nargs="*", default=None, help="substrings of case names to run")
    ap.add_argument("--errors", action="store_true", help="variance error against an exact reference")
    ap.add_argument("--peers", action="store_true", help="also time NumPy mean+var and Keras adapt")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall seconds, or CPU seconds (for a machine shared with other jobs)")
    args = ap.parse_args()
    isas = args.isa or list(_core.supported_isas)
    for name in isas:
        if name not in _core.supported_isas:
            ap.error(f"variant {name!r} is not supported here (supported: {list(_core.supported_isas)})")
    counts = [1] if args.threads == 1 else [1, args.threads]
    rng = np.random.default_rng(0)
    print(f"fastmoments {fastmoments.__version__}; CPU: {cpu_model()}")
    print(f"variants {isas} (auto picks {_core.selected_isa}); threads {counts}; {args.gib} GiB per case; "
          f"best of {args.repeat}, interleaved; {args.clock}-clock seconds")
    cols = "".join(f" | {'read':>6s} {'fm':>6s} {'fm/read':>7s} {'bar':>4s}" for _ in counts)
    head = f"{'case':36s} {'isa':8s}{cols} | bits" + (" | err fm" if args.errors else "")
    tcols = "".join(f" | {f'threads={t}':^29s}" for t in counts)
    print(f"{'':36s} {'':8s}{tcols} |")
    print(head)
    print("-" * len(head))
    below = []
    for name, bar1, barn, make, axis in cases(args.gib, rng, args.cases):
        x = make()
        gb = x.nbytes / 1e9
        raw = x.reshape(-1).view(np.uint8)  # the read loop takes plain bytes (bfloat16 has no buffer code)
        best = timed = BestTimes(args.clock)

        results = {}
        for _ in range(args.repeat):
            for t in counts:
                timed(("read", t), lambda: _core.read_bandwidth(raw, t))
                for isa in isas:
                    os.environ["FASTMOMENTS_ISA"] = isa  # read by the kernel at every call
                    results[(isa, t)] = timed((isa, t), lambda: fastmoments.compute(x, axis=axis, threads=t))
        ref = results[(isas[0], counts[-1])]
        same = all(np.array_equal(np.asarray(r.variance), np.asarray(ref.variance), equal_nan=True)
                   and np.array_equal(np.asarray(r.mean), np.asarray(ref.mean), equal_nan=True)
                   for r in results.values())
        same_within = all(
            np.array_equal(np.asarray(results[(i, counts[0])].variance), np.asarray(results[(i, t)].variance),
                           equal_nan=True) for i in isas for t in counts)
        bits = "all same" if same else ("per isa" if same_within else "DIFFER")
        err = ""
        if args.errors:
            want = exact_variance(x, axis)
            err = " | " + f"{max(rel_err(r.variance, want) for r in results.values()):7.1e}"
        for isa in isas:
            row = f"{name:36s} {isa:8s}"
            for t in counts:
                ratio = best[("read", t)] / best[(isa, t)]
                bar = bar1 if t == 1 else barn
                if ratio < bar:
                    below.append(f"{name} {isa} threads={t}: {ratio:.2f} < {bar:.2f}")
                row += (f" | {gb / best[('read', t)]:6.2f} {gb / best[(isa, t)]:6.2f} {ratio:7.2f}"
                        f" {bar:4.2f}{'*' if ratio < bar else ' '}")
            print(row + f" | {bits}{err}", flush=True)
        if args.peers:
            peer_line(x, axis, gb, best[(isas[0], counts[-1])])
        del x, raw
    print("-" * len(head))
    print("every row at its bar" if not below else "below the bar (*):\n  " + "\n  ".join(below))


def peer_line(x, axis, gb, t_fm):
    kept = fastmoments._axes.normalize_keep_axes(axis, x.ndim)
    red = tuple(i for i in range(x.ndim) if i not in kept)
    t0 = time.perf_counter()
    var = x.mean(axis=red), x.var(axis=red)
    t_np = time.perf_counter() - t0
    msg = f"    peers: numpy mean+var {gb / t_np:6.2f} GB/s ({t_np / t_fm:.1f}x slower)"
    want = exact_variance(x, axis)
    msg += f", err numpy {rel_err(var[1], want):.1e}"
    if axis is not None and x.dtype.kind in "fiu":
        try:
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
            t0 = time.perf_counter()
            v = keras_adapt(x, axis)
            t_k = time.perf_counter() - t0
            msg += (f"; keras adapt {gb / t_k:6.2f} GB/s ({t_k / t_fm:.1f}x slower), "
                    f"err {rel_err(v, np.asarray(want).reshape(-1)):.1e}")
        except ImportError:
            pass
    print(msg, flush=True)


if __name__ == "__main__":
    main()
