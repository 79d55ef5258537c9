"""Folders of NIfTI volumes and JPEG images: fastmoments vs the decoder's own rate and vs the loop
a user writes today (issue 16). Files are written by the benchmark into a temporary folder.

    python benches/bench_imaging.py                 # 8 volumes 256x256x128 float32, 96 JPEGs 512x512
    python benches/bench_imaging.py --volumes 32 --shape 128 128 64 --images 256 --repeat 5

Rows (GB/s of decoded values, best of --repeat, all cached in the page cache):
- ``.nii.gz`` folder: ``compute(folder, axis=None)`` vs threads x the one-thread gzip inflate rate
  of the same inflater (the faster of ``decompress`` of each whole file and of 4 MiB output
  pieces, the same files: ISA-L when ``isal`` is installed, and zlib, each with its own
  fastmoments row) and vs the plain loop
  (``nib.load(f).get_fdata()`` + ``np.mean``/``np.var`` per file, merged by hand).
- ``.nii`` folder: ``compute(folder, axis=None)`` vs ``compute`` of the same volumes as ``.npy``
  files (the cached-file figure) and vs the plain loop.
- JPEG folder: ``compute(folder, axis=-1)`` (per channel) vs threads x the one-thread Pillow decode
  rate (``np.asarray(Image.open(f))``) and vs the plain loop (Pillow + ``np.mean``/``np.var`` over
  the pixels of each file, merged by hand).
Bars (issue 16): >= 0.8 of threads x decode rate, >= 0.8 of the .npy figure, >= 3x the loop.
The ``threads=1`` rows compare one thread with one thread (the per-core efficiency, which the
machine's load does not skew); the last line says how many cores the process actually got.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import zlib

import numpy as np

import fastmoments


def best(fn, repeat):
    times = []
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def merge_by_hand(parts):
    """Chan's merge of per-file (count, mean, var) as a user would write it."""
    n, mean, m2 = 0, 0.0, 0.0
    for c, m, v in parts:
        delta = m - mean
        tot = n + c
        mean = mean + delta * c / tot
        m2 = m2 + v * c + delta * delta * n * c / tot
        n = tot
    return n, mean, m2 / n


def write_volumes(folder, count, shape, seed=0):
    import nibabel as nib

    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(folder, "gz"), exist_ok=True)
    os.makedirs(os.path.join(folder, "nii"), exist_ok=True)
    os.makedirs(os.path.join(folder, "npy"), exist_ok=True)
    # An MRI-like volume: a smooth field plus noise, stored as float32 with 1/16 steps (gzip
    # finds some redundancy, as in real scans).
    zz, yy, xx = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape[::-1]), indexing="ij")
    field = (600 * np.exp(-(xx ** 2 + yy ** 2 + zz ** 2) * 2)).T.astype(np.float32)
    for i in range(count):
        v = np.round((field + rng.normal(0, 20, shape).astype(np.float32)) * 16) / 16
        v = v.astype(np.float32)
        img = nib.Nifti1Image(v, np.eye(4))
        nib.save(img, os.path.join(folder, "gz", f"scan{i:04d}.nii.gz"))
        nib.save(img, os.path.join(folder, "nii", f"scan{i:04d}.nii"))
        np.save(os.path.join(folder, "npy", f"scan{i:04d}.npy"), v[None])


def write_jpegs(folder, count, size, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(count):
        base = np.stack([(xx * (1 + i % 3)) % 256, (yy * 2) % 256, (xx + yy) % 256], -1)
        a = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(a, "RGB").save(os.path.join(folder, f"img{i:05d}.jpg"), quality=90)


def parallelism(threads: int) -> float:
    """How many cores this process got just now: ``threads`` SHA-256 jobs (GIL released) on
    ``threads`` threads vs one job on one thread (1.0 on a machine busy with other work)."""
    import hashlib
    import threading

    data = os.urandom(1 << 20) * 32

    def job():
        hashlib.sha256(data).digest()

    t0 = time.perf_counter()
    job()
    one = time.perf_counter() - t0
    ts = [threading.Thread(target=job) for _ in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return threads * one / (time.perf_counter() - t0)


def files(folder):
    return sorted(os.path.join(folder, f) for f in os.listdir(folder))


def read_all(paths):
    """Puts each file in the page cache as reading it from disk does. A file just written sits
    in the cache in the pieces its writer wrote: nibabel writes a volume in many small writes,
    and the kernel (6.18, ext4 here) then keeps it in small folios, which any reader of the file
    (a map or ``pread``) walks 2-3x slower than the large folios of one ``np.save`` write or of
    readahead: measured 3.1 GB/s for a fresh ``.nii`` against 7.9 for the same values in a fresh
    ``.npy``, and 6.0-9.3 against 6.2-6.8 once both were dropped and read back. So the files are
    written to disk, dropped from the cache and read back, all the same way."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        with open(p, "rb") as f:
            while f.read(1 << 22):
                pass


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--volumes", type=int, default=8)
    ap.add_argument("--shape", type=int, nargs=3, default=(256, 256, 128))  # the seed's scans
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args(argv)

    import nibabel as nib
    from PIL import Image

    threads = args.threads or fastmoments.default_threads()
    cores_before = parallelism(threads)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        write_volumes(tmp, args.volumes, tuple(args.shape))
        write_jpegs(os.path.join(tmp, "jpg"), args.images, args.image_size)
        gz, nii, npy, jpg = (files(os.path.join(tmp, d)) for d in ("gz", "nii", "npy", "jpg"))
        for group in (gz, nii, npy, jpg):
            read_all(group)  # cached
        vol_bytes = args.volumes * int(np.prod(args.shape)) * 4
        img_bytes = args.images * args.image_size ** 2 * 3

        def rate(nbytes, seconds):
            return nbytes / seconds / 1e9

        # ---- .nii.gz ----
        blobs = []
        for p in gz:
            with open(p, "rb") as f:
                blobs.append(f.read())
        from fastmoments import _imaging

        inflaters = [("zlib", zlib)]
        if _imaging.inflater() is not zlib:
            inflaters.insert(0, ("isal", _imaging.inflater()))
        one_thread = {}
        def inflate_pieces(mod, blob, piece=4 << 20):
            z = mod.decompressobj(31)
            data = blob
            while not z.eof:
                z.decompress(data, piece)
                data = z.unconsumed_tail

        for name, mod in inflaters:
            # The faster of whole-file decompress and 4 MiB output pieces (a 32 MiB output
            # buffer costs page faults that pieces reuse): the inflater's own one-thread rate.
            t_whole, _ = best(lambda: [mod.decompress(b, 31) for b in blobs], args.repeat)
            t_piece, _ = best(lambda: [inflate_pieces(mod, b) for b in blobs], args.repeat)
            one_thread[name] = rate(vol_bytes, min(t_whole, t_piece))
        blobs.clear()  # free the compressed copies

        def nib_loop(paths):
            parts = []
            for p in paths:
                a = nib.load(p).get_fdata()
                parts.append((a.size, float(np.mean(a)), float(np.var(a))))
            return merge_by_hand(parts)

        t_loop, (n, mean, var) = best(lambda: nib_loop(gz), max(1, args.repeat - 1))
        loop = rate(vol_bytes, t_loop)
        for name, _ in inflaters:
            _imaging.INFLATER = "zlib" if name == "zlib" else "auto"
            t_fm, r = best(lambda: fastmoments.compute(os.path.join(tmp, "gz"), axis=None,
                                                       threads=threads), args.repeat)
            assert n == r.count and abs(mean - r.mean) <= 1e-9 * abs(mean)
            assert abs(var - r.variance) <= 1e-6 * var
            fm = rate(vol_bytes, t_fm)
            rows.append((f".nii.gz folder ({name})", fm,
                         f"{threads} x {name} inflate {one_thread[name]:.3f}",
                         fm / (threads * one_thread[name]), loop, fm / loop))
            if threads > 1:  # per-core efficiency: one thread vs one thread, whatever the load
                t1, _ = best(lambda: fastmoments.compute(os.path.join(tmp, "gz"), axis=None,
                                                         threads=1), args.repeat)
                fm1 = rate(vol_bytes, t1)
                rows.append(("  same, threads=1", fm1, f"1 x {name} inflate {one_thread[name]:.3f}",
                             fm1 / one_thread[name], loop, fm1 / loop))
        _imaging.INFLATER = "auto"

        # ---- .nii ----
        t_npy, rn = best(lambda: fastmoments.compute(os.path.join(tmp, "npy"), axis=None,
                                                     threads=threads), args.repeat)
        t_fm, r = best(lambda: fastmoments.compute(os.path.join(tmp, "nii"), axis=None,
                                                   threads=threads), args.repeat)
        assert r.count == rn.count and abs(r.mean - rn.mean) <= 1e-12 * abs(rn.mean)

        def nii_loop(paths):
            parts = []
            for p in paths:
                a = nib.load(p).get_fdata()
                parts.append((a.size, float(np.mean(a)), float(np.var(a))))
            return merge_by_hand(parts)

        t_loop, _ = best(lambda: nii_loop(nii), max(1, args.repeat - 1))
        fm = rate(vol_bytes, t_fm)
        npy_rate = rate(vol_bytes, t_npy)
        rows.append((".nii folder", fm, f".npy folder {npy_rate:.3f}", fm / npy_rate,
                     rate(vol_bytes, t_loop), fm / rate(vol_bytes, t_loop)))

        # ---- JPEG ----
        def decode_all():
            for p in jpg:
                with Image.open(p) as img:
                    np.asarray(img)

        t_dec, _ = best(decode_all, args.repeat)
        t_fm, r = best(lambda: fastmoments.compute(os.path.join(tmp, "jpg"), axis=-1,
                                                   threads=threads), args.repeat)

        def pil_loop():
            n, mean, m2 = 0, np.zeros(3), np.zeros(3)
            for p in jpg:
                with Image.open(p) as img:
                    a = np.asarray(img).reshape(-1, 3)
                c, m, v = a.shape[0], np.mean(a, axis=0), np.var(a, axis=0)
                delta = m - mean
                tot = n + c
                mean = mean + delta * c / tot
                m2 = m2 + v * c + delta * delta * n * c / tot
                n = tot
            return n, mean, m2 / n

        t_loop, (n, mean, var) = best(pil_loop, max(1, args.repeat - 1))
        assert np.all(n == r.count) and np.allclose(mean, r.mean, rtol=1e-12)
        assert np.allclose(var, r.variance, rtol=1e-9)
        dec = rate(img_bytes, t_dec)
        fm = rate(img_bytes, t_fm)
        rows.append(("JPEG folder (per channel)", fm, f"{threads} x decode {dec:.3f}",
                     fm / (threads * dec), rate(img_bytes, t_loop), fm / rate(img_bytes, t_loop)))
        if threads > 1:
            t1, _ = best(lambda: fastmoments.compute(os.path.join(tmp, "jpg"), axis=-1, threads=1),
                         args.repeat)
            fm1 = rate(img_bytes, t1)
            rows.append(("  same, threads=1", fm1, f"1 x decode {dec:.3f}", fm1 / dec,
                         rate(img_bytes, t_loop), fm1 / rate(img_bytes, t_loop)))

    print(f"threads {threads}; {args.volumes} volumes {tuple(args.shape)} float32 "
          f"({vol_bytes / 1e6:.0f} MB), {args.images} JPEGs {args.image_size}x{args.image_size} RGB "
          f"({img_bytes / 1e6:.0f} MB); GB/s of decoded values, best of {args.repeat}, cached")
    print(f"{'input':<26} {'fastmoments':>11}  {'peer (GB/s)':<24} {'ratio':>6}  {'plain loop':>10} "
          f"{'speed-up':>8}")
    for name, fm, peer, ratio, loop, up in rows:
        print(f"{name:<26} {fm:>11.3f}  {peer:<24} {ratio:>6.2f}  {loop:>10.3f} {up:>7.1f}x")
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; cores this process got "
          f"(SHA-256 on {threads} threads vs 1): before {cores_before:.2f}, after "
          f"{parallelism(threads):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
