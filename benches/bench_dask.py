"""fastmoments.dask vs Dask's own mean+var, and vs one process with the data in memory.

One LocalCluster (worker processes, one thread each) holds a persisted float32 dask array
(mean 1000, std 10, ``--features`` columns); every contender reduces the same chunks.

    python benches/bench_dask.py 256M          # validation size
    python benches/bench_dask.py 1G --workers 2 --chunk 64M

Prints times (median of ``--repeat`` after one warm-up run), GB/s over the array's bytes,
ratios, and the largest relative variance error of each path against float64 statistics of
the same data.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().rstrip("B").rstrip("I")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(float(t))


def median_time(fn, repeat, verbose=False, settle=lambda: None):
    out = fn()  # warm-up, untimed: imports and function shipping to the workers
    times = []
    for _ in range(repeat):
        settle()
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    if verbose:
        print("  times:", " ".join(f"{t:.3f}" for t in times))
    return float(np.median(times)), out


def _n_tasks(dask_scheduler=None):
    return len(dask_scheduler.tasks)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("size", type=parse_size, help="array size in bytes, e.g. 256M or 1G")
    p.add_argument("--features", type=int, default=256)
    p.add_argument("--chunk", type=parse_size, default=64 << 20,
                   help="bytes per chunk (default 64M)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--verbose", action="store_true", help="print every repetition's time")
    args = p.parse_args(argv)

    import dask
    import dask.array as da
    from distributed import Client, LocalCluster, wait

    import fastmoments
    import fastmoments.dask as fmd

    itemsize = 4
    rows = max(1, args.size // (itemsize * args.features))
    chunk_rows = max(1, args.chunk // (itemsize * args.features))
    nbytes = rows * args.features * itemsize

    cluster_args = dict(n_workers=args.workers, threads_per_worker=1, processes=True,
                        dashboard_address=None, silence_logs=50)
    with LocalCluster(**cluster_args) as cluster, Client(cluster) as client:
        z = da.random.default_rng(0).standard_normal(
            (rows, args.features), chunks=(chunk_rows, args.features), dtype=np.float32)
        x = (z * np.float32(10) + np.float32(1000)).persist()  # lives in the workers' memory
        wait(x)
        print(f"array: {rows} x {args.features} float32 = {nbytes / 1e9:.3f} GB in {x.npartitions} "
              f"chunks of {chunk_rows} rows; {args.workers} worker processes x 1 thread; "
              f"fastmoments {fastmoments.__version__}, dask {dask.__version__}")

        n_held = client.run_on_scheduler(_n_tasks)

        def settle():
            # Identical graphs resubmitted before the scheduler forgot the last run's keys would be
            # served from worker memory: wait until only the persisted chunks are left.
            deadline = time.perf_counter() + 10
            while client.run_on_scheduler(_n_tasks) > n_held and time.perf_counter() < deadline:
                time.sleep(0.01)

        timing = dict(repeat=args.repeat, verbose=args.verbose, settle=settle)
        t_fm, m = median_time(fn=lambda: fmd.moments(x, axis=-1).compute(), **timing)
        t_dask, (_, dvar) = median_time(
            fn=lambda: dask.compute(x.mean(axis=0), x.var(axis=0)), **timing)

        local = x.compute()  # the same data in this process's memory
        t_local, ml = median_time(
            fn=lambda: fastmoments.compute(local, axis=-1, threads=args.workers), **timing)

        # float64 truth for the error column, reduced in row blocks to bound memory
        ref = None
        for start in range(0, rows, chunk_rows):
            part = fastmoments.compute(local[start:start + chunk_rows].astype(np.float64), axis=-1)
            ref = part if ref is None else ref.merge(part)

        def err(var):
            return float(np.max(np.abs(np.asarray(var, np.float64) - ref.variance) / ref.variance))

        rows_out = [
            ("fastmoments.dask.moments (cluster)", t_fm, err(m.variance)),
            ("dask mean+var (cluster)", t_dask, err(dvar)),
            (f"fastmoments.compute (1 process, {args.workers} threads, in RAM)", t_local,
             err(ml.variance)),
        ]
        width = max(len(r[0]) for r in rows_out)
        print(f"{'path':<{width}}  {'time s':>8}  {'GB/s':>7}  {'vs dask':>8}  {'var rel err':>11}")
        for name, t, e in rows_out:
            gbs = nbytes / t / 1e9
            print(f"{name:<{width}}  {t:8.3f}  {gbs:7.2f}  {t_dask / t:7.2f}x  {e:11.1e}")
        print(f"fastmoments.dask is {t_dask / t_fm:.2f}x dask's mean+var and runs at "
              f"{t_local / t_fm:.2f}x the speed of the single-process compute")


if __name__ == "__main__":
    main()
