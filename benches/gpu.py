"""GPU benchmark of fastmoments: one script for one call on a GPU machine.

Device-resident data (float32 >= 1 GiB by default, uint8 images): fastmoments.compute against the
device-to-device copy bandwidth (bytes read + written) measured in the same run, torch.var_mean
and CuPy var + mean on the same data; then host-to-GPU streaming against the pinned copy
bandwidth. Every case is also checked against a float64 reference computed by torch.

    python benches/gpu.py               # 1 GiB per case
    python benches/gpu.py --gib 0.25    # smaller
Needs torch with CUDA; CuPy is optional. Prints a table last.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

import fastmoments


def median_seconds(fn, reps: int, sync) -> float:
    fn()
    sync()
    times = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def event_seconds(torch, fn, reps: int) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def rel_error(got, ref) -> float:
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.max(np.abs(got - ref)) / max(np.max(np.abs(ref)), 1e-300))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=1.0, help="GiB per device-resident case (default 1)")
    ap.add_argument("--host-gib", type=float, default=2.0, help="GiB for the host streaming case")
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()

    if not fastmoments.cuda_available():
        from fastmoments._gpu import unavailable_reason

        print(f"no usable GPU: {unavailable_reason()}", file=sys.stderr)
        return 2
    import torch

    try:
        import cupy as cp
    except ImportError:
        cp = None
    from fastmoments import _cuda

    dev = torch.device("cuda")
    props = _cuda.device_properties(0)
    print(f"device: {props['name']}, {props['multiprocessors']} SMs, "
          f"{props['total_memory'] / 2**30:.0f} GiB; build: {fastmoments.build_info()['cuda']}")
    sync = torch.cuda.synchronize
    nbytes = int(args.gib * 2**30)
    gen = torch.Generator(device=dev).manual_seed(0)

    # Device-to-device copy bandwidth, bytes read + written.
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=dev)
    dst = torch.empty_like(src)
    t_copy = event_seconds(torch, lambda: dst.copy_(src), args.reps)
    copy_tbs = 2 * nbytes / t_copy / 1e12
    del src, dst
    torch.cuda.empty_cache()

    n = nbytes // 4
    cases = [
        ("f32 (N,256) axis=-1", (n // 256, 256), torch.float32, -1),
        ("f32 flat axis=None", (n,), torch.float32, None),
        ("f32 NCHW axis=1", (max(1, n // (64 * 128 * 128)), 64, 128, 128), torch.float32, 1),
        ("u8 NHWC images axis=-1", (max(1, nbytes // (224 * 224 * 3)), 224, 224, 3), torch.uint8, -1),
        ("u8 NCHW images axis=1", (max(1, nbytes // (224 * 224 * 3)), 3, 224, 224), torch.uint8, 1),
    ]
    rows = []
    for name, shape, dtype, axis in cases:
        if dtype == torch.uint8:
            x = torch.randint(0, 256, shape, dtype=dtype, device=dev, generator=gen)
        else:
            x = 1000.0 + 10.0 * torch.randn(shape, dtype=dtype, device=dev, generator=gen)
        size = x.numel() * x.element_size()
        red = tuple(range(x.ndim)) if axis is None else tuple(i for i in range(x.ndim) if i != axis % x.ndim)

        r = fastmoments.compute(x, axis=axis)
        # Reference: float64 on the device, two passes.
        x64 = x.double()
        ref_mean = x64.mean(dim=red)
        ref_var = ((x64 - x64.mean(dim=red, keepdim=True)) ** 2).mean(dim=red)
        err = max(rel_error(r.mean, ref_mean.cpu().numpy()), rel_error(r.variance, ref_var.cpu().numpy()))
        del x64
        torch.cuda.empty_cache()
        again = fastmoments.compute(x, axis=axis)
        deterministic = again == r

        t_fm = median_seconds(lambda: fastmoments.compute(x, axis=axis), args.reps, sync)
        xt = x if x.is_floating_point() else None
        t_torch = float("nan")
        if xt is not None:
            t_torch = event_seconds(torch, lambda: torch.var_mean(xt, dim=red, correction=0), args.reps)
        else:
            # torch.var_mean needs a float tensor: the cast is part of what a user pays.
            t_torch = event_seconds(torch, lambda: torch.var_mean(x.float(), dim=red, correction=0), args.reps)
        t_cupy = float("nan")
        if cp is not None:
            xc = cp.from_dlpack(x)
            cax = red if axis is not None else None

            def cupy_run():
                if xc.dtype == cp.uint8:
                    return xc.var(axis=cax, dtype=cp.float32), xc.mean(axis=cax, dtype=cp.float32)
                return xc.var(axis=cax), xc.mean(axis=cax)
            t_cupy = event_seconds(torch, cupy_run, args.reps)
        rows.append((name, size, t_fm, t_torch, t_cupy, err, deterministic))
        del x
        torch.cuda.empty_cache()

    # Host to GPU: pinned copy bandwidth vs streaming a pageable NumPy array through compute().
    hbytes = int(args.host_gib * 2**30)
    pinned = torch.empty(hbytes // 4, dtype=torch.float32, pin_memory=True)
    pinned.normal_(1000.0, 10.0)
    gpu_buf = torch.empty(hbytes // 4, dtype=torch.float32, device=dev)
    h_reps = max(3, args.reps // 3)
    t_pinned = event_seconds(torch, lambda: gpu_buf.copy_(pinned, non_blocking=True), h_reps)
    host = pinned.numpy().reshape(-1, 256).copy()  # pageable
    del gpu_buf
    t_pageable = event_seconds(torch, lambda: torch.from_numpy(host).to(dev), h_reps)
    torch.cuda.empty_cache()
    t_stream = median_seconds(lambda: fastmoments.compute(host, axis=-1, device="cuda"), h_reps, sync)
    pinned_view = pinned.numpy().reshape(-1, 256)
    t_stream_pinned = median_seconds(lambda: fastmoments.compute(pinned_view, axis=-1, device="cuda"),
                                     h_reps, sync)
    r = fastmoments.compute(host, axis=-1, device="cuda")
    h_err = rel_error(r.mean, host.astype(np.float64).mean(axis=0))
    t_cpu = median_seconds(lambda: fastmoments.compute(host, axis=-1, device="cpu"), 2, sync)

    print()
    print(f"device-to-device copy: {copy_tbs:.2f} TB/s (read + write, {args.gib:g} GiB)")
    print(f"{'case':26s} {'GiB':>5s} {'fm TB/s':>8s} {'/copy':>6s} {'torch':>7s} {'cupy':>7s} "
          f"{'x torch':>8s} {'x cupy':>7s} {'rel err':>9s} {'bitwise':>7s}")
    for name, size, t_fm, t_torch, t_cupy, err, det in rows:
        fm = size / t_fm / 1e12
        tt = size / t_torch / 1e12
        tc = size / t_cupy / 1e12 if t_cupy == t_cupy else float("nan")
        print(f"{name:26s} {size / 2**30:5.2f} {fm:8.2f} {fm / copy_tbs:6.2f} {tt:7.2f} {tc:7.2f} "
              f"{t_torch / t_fm:8.2f} {t_cupy / t_fm:7.2f} {err:9.1e} {str(det):>7s}")
    gb = hbytes / 1e9
    print()
    print(f"host to GPU ({args.host_gib:g} GiB float32 (N,256), axis=-1):")
    print(f"  pinned copy           {gb / t_pinned:7.1f} GB/s")
    print(f"  pageable copy (torch) {gb / t_pageable:7.1f} GB/s")
    print(f"  fastmoments pageable  {gb / t_stream:7.1f} GB/s  ({t_pinned / t_stream:.2f} of pinned copy), "
          f"rel err {h_err:.1e}")
    print(f"  fastmoments pinned    {gb / t_stream_pinned:7.1f} GB/s  ({t_pinned / t_stream_pinned:.2f} of pinned copy)")
    print(f"  fastmoments CPU       {gb / t_cpu:7.1f} GB/s  ({fastmoments.default_threads()} threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
