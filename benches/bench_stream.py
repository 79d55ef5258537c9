"""Streaming a .npy file: fastmoments vs dd and vs NumPy on a memory map, cold and cached.

    python benches/bench_stream.py --size-mb 256            # validated size on the dev machine
    python benches/bench_stream.py --size-mb 32768 --dir /data   # larger than RAM (lead)
    python benches/bench_stream.py --size-mb 1024 --weights      # + per-row weights from a file

Cold: the file's pages are dropped first (posix_fadvise DONTNEED on the whole file, or
``--drop-caches`` writes /proc/sys/vm/drop_caches when permitted). Cached: the file was just read by dd.
Reported: GB/s, ratios (cold: fastmoments / dd; cached: fastmoments / the in-memory kernel on the
same data already in RAM), the peak growth of anonymous memory during the fastmoments run
(/proc/self/smaps_rollup, sampled every 5 ms) and how much of the file a cold run left cached.
With --weights a (rows,) float32 weights file is written beside the data and the same rows are
measured for ``compute(path, weights=weights_path)`` (dd then reads both files; GB/s count
both files' bytes).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import mmap
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

import fastmoments


def anon_kib() -> int:
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("Anonymous:"):
                return int(line.split()[1])
    return 0


class AnonPeak:
    """Peak growth of anonymous memory over the body of a ``with`` block."""

    def __enter__(self):
        self.base = anon_kib()
        self.peak = self.base
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, anon_kib())

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, anon_kib())
        self.growth_mib = (self.peak - self.base) / 1024


def drop_file_pages(path: str, all_caches: bool) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    if all_caches:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")


def cached_fraction(path: str) -> float:
    """Fraction of the file's pages in the page cache (mincore on an untouched map)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            return float("nan")
        pages = -(-size // mmap.PAGESIZE)
        vec = (ctypes.c_ubyte * pages)()
        libc.mincore(addr, size, vec)
        libc.munmap(addr, size)
        return float(np.frombuffer(vec, np.uint8).astype(bool).mean())
    finally:
        os.close(fd)


def write_file(path: str, rows: int, features: int) -> None:
    """N(1000, 10) float32 rows, written by buffered write() calls the way ``np.save`` writes."""
    rng = np.random.default_rng(0)
    step = max(1, (64 << 20) // (4 * features))
    with open(path, "wb") as f:
        np.lib.format.write_array_header_2_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (rows, features)})
        for a in range(0, rows, step):
            b = min(rows, a + step)
            f.write(rng.normal(1000.0, 10.0, (b - a, features)).astype(np.float32).tobytes())


def timed(fn, repeat=1):
    best = float("inf")
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def dd(path: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=8M"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def numpy_mmap(path: str):
    x = np.load(path, mmap_mode="r")
    return x.mean(axis=0), x.var(axis=0)


def weights_path(path: str) -> str:
    return path[:-len(".npy")] + "_w.npy"


def weighted_rows(path: str, rows: int, args) -> list:
    """Per-row float32 weights in a second file: cold and cached, against dd of both files and
    against the weighted kernel on both arrays in RAM."""
    wpath = weights_path(path)
    np.save(wpath, np.random.default_rng(1).uniform(0.5, 2.0, rows).astype(np.float32))
    gb = (os.path.getsize(path) + os.path.getsize(wpath)) / 1e9
    run = lambda: fastmoments.compute(path, weights=wpath, threads=args.threads)  # noqa: E731
    out = []
    t_dd = t_cold = float("inf")
    for _ in range(args.cold_repeat):
        drop_file_pages(path, args.drop_caches), drop_file_pages(wpath, args.drop_caches)
        t_dd = min(t_dd, dd(path) + dd(wpath))
        drop_file_pages(path, args.drop_caches), drop_file_pages(wpath, args.drop_caches)
        t_cold = min(t_cold, timed(run)[0])
    out.append(("cold", "dd bs=8M, data + weights", gb / t_dd, f"best of {args.cold_repeat}"))
    out.append(("cold", "compute(path, weights=wpath)", gb / t_cold, f"{t_dd / t_cold:.2f}x dd"))
    dd(path), dd(wpath)
    t_dd_c = min(dd(path) + dd(wpath) for _ in range(args.repeat))
    t_cached, r = timed(run, args.repeat)
    with AnonPeak() as mem:
        run()
    x, w = np.array(np.load(path, mmap_mode="r")), np.load(wpath)
    t_mem, r_mem = timed(lambda: fastmoments.compute(x, weights=w, threads=args.threads), args.repeat)
    del x
    np.testing.assert_allclose(r.mean, r_mem.mean, rtol=1e-12)
    np.testing.assert_allclose(r.variance, r_mem.variance, rtol=1e-10)
    out.append(("cached", "dd bs=8M, data + weights", gb / t_dd_c, ""))
    out.append(("cached", "weighted kernel, arrays in RAM", gb / t_mem, "(reference)"))
    out.append(("cached", "compute(path, weights=wpath)", gb / t_cached,
                f"{t_mem / t_cached:.2f}x in-memory; {t_dd_c / t_cached:.2f}x dd; "
                f"anon +{mem.growth_mib:.0f} MiB"))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=float, default=256.0, help="file size in MB (default 256)")
    ap.add_argument("--features", type=int, default=256, help="float32 columns (default 256)")
    ap.add_argument("--dir", default=None, help="where to write the file (default: temp dir)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=3, help="cached runs: best of N")
    ap.add_argument("--cold-repeat", type=int, default=2,
                    help="cold runs: dd and fastmoments alternate N times, best of N each")
    ap.add_argument("--drop-caches", action="store_true",
                    help="also write /proc/sys/vm/drop_caches (needs root)")
    ap.add_argument("--numpy-max-mb", type=float, default=4096.0,
                    help="skip NumPy (its var makes a full-size temporary) above this size")
    ap.add_argument("--keep", action="store_true", help="keep the file afterwards")
    ap.add_argument("--weights", action="store_true",
                    help="also time per-row weights streamed from a second .npy file")
    ap.add_argument("--reader", choices=["thread", "workers", "map", "auto"], default="auto",
                    help="native pipeline: a reader thread + ring, workers reading their own "
                         "pieces, or workers reducing cached pieces from a memory map "
                         "(default: the library's choice)")
    args = ap.parse_args(argv)
    if args.size_mb <= 0 or args.features <= 0 or args.repeat < 1 or args.cold_repeat < 1:
        ap.error("--size-mb, --features, --repeat and --cold-repeat must be positive")
    if args.reader is not None:
        from fastmoments import _stream
        _stream.READER_MODE = None if args.reader == "auto" else args.reader
    rows = max(1, int(args.size_mb * 1e6) // (4 * args.features))
    nbytes = rows * args.features * 4
    gb = nbytes / 1e9
    directory = args.dir or tempfile.gettempdir()
    path = os.path.join(directory, f"fastmoments_bench_{os.getpid()}.npy")
    print(f"file {path}: ({rows}, {args.features}) float32, {gb:.3f} GB; "
          f"threads={args.threads or os.cpu_count()}")
    write_file(path, rows, args.features)
    rowsout = []
    try:
        # ---- cold ----
        # A virtual disk's speed swings between consecutive reads: dd and fastmoments alternate
        # `--cold-repeat` times and each keeps its best time, as the cached rows do.
        t_dd = t_cold = float("inf")
        mem_cold = None
        for _ in range(args.cold_repeat):
            drop_file_pages(path, args.drop_caches)
            t_dd = min(t_dd, dd(path))
            drop_file_pages(path, args.drop_caches)
            if mem_cold is None:
                with AnonPeak() as mem_cold:
                    t, r = timed(lambda: fastmoments.compute(path, threads=args.threads))
                left = cached_fraction(path)
            else:
                t, _ = timed(lambda: fastmoments.compute(path, threads=args.threads))
            t_cold = min(t_cold, t)
        rowsout.append(("cold", "dd bs=8M", gb / t_dd, f"best of {args.cold_repeat}"))
        rowsout.append(("cold", "fastmoments.compute(path)", gb / t_cold,
                        f"{t_dd / t_cold:.2f}x dd; anon +{mem_cold.growth_mib:.0f} MiB; "
                        f"{100 * left:.0f}% of file left cached"))
        if gb * 1000 <= args.numpy_max_mb:
            drop_file_pages(path, args.drop_caches)
            t_np_cold, _ = timed(lambda: numpy_mmap(path))
            rowsout.append(("cold", "np.load(mmap) mean+var", gb / t_np_cold,
                            f"fastmoments {t_np_cold / t_cold:.1f}x faster"))
        # ---- cached ----
        # Warm: dropped, then read once by dd (read() calls; NumPy's cold run above filled the
        # cache through page faults instead, which leaves a different page-cache layout).
        drop_file_pages(path, args.drop_caches)
        dd(path)
        t_dd_c = min(dd(path) for _ in range(args.repeat))
        # Timed without the memory sampler: reading smaps_rollup walks the page tables of the
        # map the cached path reads through, which would slow the very run it measures.
        t_cached, r2 = timed(lambda: fastmoments.compute(path, threads=args.threads), args.repeat)
        with AnonPeak() as mem_cached:
            fastmoments.compute(path, threads=args.threads)
        rowsout.append(("cached", "dd bs=8M", gb / t_dd_c, ""))
        in_ram = None
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            avail = 0
        if nbytes * 2.5 < avail:
            in_ram = np.array(np.load(path, mmap_mode="r"))
            t_mem, r3 = timed(lambda: fastmoments.compute(in_ram, threads=args.threads), args.repeat)
            rowsout.append(("cached", "fastmoments in-memory ndarray", gb / t_mem, "(reference)"))
            ratio = f"{t_mem / t_cached:.2f}x in-memory; "
            np.testing.assert_allclose(r2.mean, r3.mean, rtol=1e-12)
        else:
            ratio = "(file too large for an in-memory copy); "
        rowsout.append(("cached", "fastmoments.compute(path)", gb / t_cached,
                        f"{ratio}{t_dd_c / t_cached:.2f}x dd; anon +{mem_cached.growth_mib:.0f} MiB"))
        del in_ram
        if gb * 1000 <= args.numpy_max_mb:
            t_np, (m, v) = timed(lambda: numpy_mmap(path), 1)
            rowsout.append(("cached", "np.load(mmap) mean+var", gb / t_np,
                            f"fastmoments {t_np / t_cached:.1f}x faster"))
        np.testing.assert_allclose(r.mean, r2.mean, rtol=0, atol=0)
        if args.weights:
            rowsout += weighted_rows(path, rows, args)
    finally:
        if not args.keep:
            os.unlink(path)
            if os.path.exists(weights_path(path)):
                os.unlink(weights_path(path))
    print(f"{'cache':7} {'path':34} {'GB/s':>7}  notes")
    for cache, name, rate, note in rowsout:
        print(f"{cache:7} {name:34} {rate:7.2f}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
