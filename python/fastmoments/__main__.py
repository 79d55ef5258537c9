"""Command line: ``fastmoments stats PATH...`` and ``fastmoments demo``.

``stats`` prints per-feature count/mean/std of ``.npy`` files (memory-mapped, never loaded
whole) and writes them to ``.npz`` or ``.json``; ``demo`` makes a float32 file with mean 1000 and
std 10 and compares fastmoments with NumPy and Keras ``Normalization.adapt`` on it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import shutil
import stat
import sys
import tempfile
import time
import warnings
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["main", "parse_axis"]

PROG = "fastmoments"


class CommandError(Exception):
    """An error to report on one line (bad input, unreadable file) with exit status 1."""


def parse_axis(text: str):
    """``"-1"`` -> -1, ``"none"`` -> None, ``"0,2"`` or ``"(0, 2)"`` -> (0, 2)."""
    s = text.strip().strip("()[]").strip()
    if s.lower() in ("none", "all", ""):
        return None
    parts = [p.strip() for p in s.split(",") if p.strip()]
    try:
        axes = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid axis {text!r}: use an int, a comma-separated list such as 0,2, or none"
        ) from None
    if len(axes) == 1 and "," not in s:
        return axes[0]
    return axes


def _int_at_least(minimum: int):
    """An argparse type: an integer >= minimum."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog=PROG, description="Exact per-feature mean and variance at memory bandwidth.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    st = sub.add_parser(
        "stats", help="count, mean and std per feature of .npy, NIfTI and image files",
        description="Per-feature statistics of .npy files (memory-mapped), NIfTI volumes "
                    "(.nii, .nii.gz) and PNG/JPEG/TIFF images (pip install 'fastmoments[imaging]'): "
                    "several files, a glob or a folder are read as one dataset, concatenated along "
                    "axis 0; each volume or image is one sample (a new leading axis).")
    st.add_argument("paths", nargs="+", metavar="PATH",
                    help="file(s), glob pattern(s) or folder(s)")
    st.add_argument("--recursive", action="store_true",
                    help="folders also contribute the files of their sub-folders")
    st.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                    help="an unreadable file stops with an error (default) or is skipped and listed")
    st.add_argument("--axis", type=parse_axis, default=-1, metavar="AXES",
                    help="axes that keep separate statistics: -1 (default), 1, 0,2 or none")
    st.add_argument("--ddof", type=_non_negative_int, default=0, metavar="N",
                    help="delta degrees of freedom of the variance (default 0)")
    st.add_argument("--nan-policy", choices=("propagate", "omit", "raise"), default="propagate")
    st.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                    help="threads (default: the CPUs this process may use)")
    st.add_argument("--weights", metavar="FILE",
                    help="a .npy of non-negative weights read beside the data block by block: one "
                         "per row (length N of the files concatenated along axis 0) or broadcastable "
                         "to the data")
    st.add_argument("--where", metavar="FILE",
                    help="a boolean .npy mask broadcastable to the data (only True values count)")
    st.add_argument("--out", metavar="FILE", help="write the statistics to FILE.npz or FILE.json")
    st.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="progress bar on stderr (default: when stderr is a terminal)")
    st.add_argument("--max-features", type=_non_negative_int, default=10, metavar="N",
                    help="features to print (default 10; --out writes all)")
    st.set_defaults(func=cmd_stats)

    demo = sub.add_parser(
        "demo", help="compare fastmoments, NumPy and Keras on a generated float32 file",
        description="Writes a float32 .npy of shape (N, 256) with mean 1000 and std 10 to a "
                    "temporary folder, then prints time, GB/s and variance error of fastmoments, "
                    "NumPy and Keras Normalization.adapt (when installed). The folder is removed.")
    demo.add_argument("--size-gb", type=_positive_float, default=1.0, metavar="GB",
                      help="file size in GiB (default 1.0)")
    demo.add_argument("--dir", default=None, metavar="DIR",
                      help="where to make the temporary folder (default: the system temp dir)")
    demo.add_argument("--threads", type=_positive_int, default=None, metavar="N")
    demo.add_argument("--keras", action=argparse.BooleanOptionalAction, default=True,
                      help="include Keras rows when Keras is installed (default: yes)")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CommandError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


# -- stats -------------------------------------------------------------------------------------------

def _npy_header(path: str):
    """The checked ``.npy`` header of ``path`` without reading the data; None when not readable
    (the computation then reports why)."""
    from ._npyfile import read_npy_header

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None  # a FIFO or device: opening it could block; the computation says why
        with open(path, "rb") as f:
            return read_npy_header(f, repr(path))
    except (OSError, ValueError, TypeError):
        return None


def _describe_sources(paths: List[str], recursive: bool = False) -> Tuple[str, Optional[int]]:
    """A one-line description of the input and its size in bytes (None when unknown)."""
    from ._imaging import file_kind

    if any(os.path.isdir(p) or file_kind(p) for p in paths):  # folders, NIfTI, images
        from ._stream import paths_shape

        name = paths[0] if len(paths) == 1 else f"{len(paths)} paths"
        try:
            shape, nbytes = paths_shape(paths, recursive)
        except (OSError, ValueError, TypeError, ImportError):
            return name, None  # the computation reports why
        shown = tuple("?" if d is None else d for d in shape)
        return f"{name}: shape {shown}, {nbytes / 1e9:.3g} GB decoded", nbytes
    if len(paths) == 1:
        head = _npy_header(paths[0])
        if head is not None:
            return (f"{paths[0]}: shape {head.shape}, {head.dtype}, {head.nbytes / 1e9:.3g} GB",
                    head.nbytes)
        return paths[0], None
    heads = [_npy_header(p) for p in paths]
    if all(h is not None for h in heads):
        nbytes = sum(h.nbytes for h in heads)
        return f"{len(paths)} files, {nbytes / 1e9:.3g} GB", nbytes
    return f"{len(paths)} sources", None


def _fmt(value: float) -> str:
    return f"{value:.10g}"


def _summary_lines(r, max_features: int) -> List[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        variance = np.asarray(r.variance, dtype=np.float64)
        std = np.asarray(r.std, dtype=np.float64)
    count = np.asarray(r.count)
    mean = np.asarray(r.mean, dtype=np.float64)
    if mean.ndim == 0:
        return [f"count {int(count)}  mean {_fmt(float(mean))}  std {_fmt(float(std))}  "
                f"variance {_fmt(float(variance))}"]
    total = mean.size
    index_width = max(7, len(str(tuple(d - 1 for d in mean.shape))))
    lines = [f"{'feature':<{index_width}} {'count':>12} {'mean':>18} {'std':>18}"]
    indices = list(np.ndindex(mean.shape))
    if total > max_features:
        head = (max_features + 1) // 2
        shown = indices[:head] + [None] + indices[total - (max_features - head):]
    else:
        shown = indices
    for idx in shown:
        if idx is None:
            lines.append(f"{'...':<{index_width}}")
            continue
        name = str(idx[0]) if len(idx) == 1 else str(idx).replace(" ", "")
        lines.append(f"{name:<{index_width}} {int(count[idx]):>12d} {_fmt(mean[idx]):>18} "
                     f"{_fmt(std[idx]):>18}")
    if total > max_features:
        lines.append(f"({total} features, {min(max_features, total)} shown; --out writes all)")
    return lines


def _json_value(a: np.ndarray):
    """Nested lists with NaN/inf as None (strict JSON)."""
    a = np.asarray(a)
    if a.dtype.kind in "iu":
        return a.tolist()
    obj = a.astype(object)
    obj[~np.isfinite(a)] = None
    return obj.tolist()


def write_stats(r, out: str, *, axis, ddof: int, nan_policy: str, sources: List[str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        variance = np.asarray(r.variance, dtype=np.float64)
        std = np.asarray(r.std, dtype=np.float64)
    count = np.asarray(r.count, dtype=np.int64)
    mean = np.asarray(r.mean, dtype=np.float64)
    m2 = np.asarray(r.m2, dtype=np.float64)
    weight_sums = {} if not r.weighted else {
        "sum_weights": np.asarray(r.sum_weights, np.float64),
        "sum_weights_sq": np.asarray(r.sum_weights_sq, np.float64)}
    lower = out.lower()
    if lower.endswith(".npz"):
        with open(out, "wb") as f:  # a file object: np.savez would append ".npz" to "X.NPZ"
            np.savez(f, count=count, mean=mean, m2=m2, variance=variance, std=std,
                     ddof=np.int64(ddof), **weight_sums)
    elif lower.endswith(".json"):
        doc = {
            "sources": sources,
            "axis": list(axis) if isinstance(axis, tuple) else axis,
            "ddof": ddof,
            "nan_policy": nan_policy,
            "shape": list(mean.shape),
            "count": _json_value(count),
            "mean": _json_value(mean),
            "m2": _json_value(m2),
            "variance": _json_value(variance),
            "std": _json_value(std),
        }
        doc.update({k: _json_value(v) for k, v in weight_sums.items()})
        with open(out, "w", encoding="utf-8") as f:
            json.dump(doc, f, allow_nan=False)
            f.write("\n")
    else:
        raise CommandError(f"--out must end in .npz or .json, got {out!r}")


def cmd_stats(args: argparse.Namespace) -> int:
    import fastmoments

    if args.out is not None and not args.out.lower().endswith((".npz", ".json")):
        raise CommandError(f"--out must end in .npz or .json, got {args.out!r}")
    paths = list(args.paths)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    description, nbytes = _describe_sources(paths, args.recursive)
    data: Any = paths[0] if len(paths) == 1 else paths
    # Weight and mask files are read beside the data, block by block (bounded memory).
    weighting = {k: v for k, v in (("weights", args.weights), ("where", args.where)) if v is not None}
    t0 = time.perf_counter()
    r = fastmoments.compute(data, axis=args.axis, ddof=args.ddof, nan_policy=args.nan_policy,
                            threads=args.threads, progress=progress, recursive=args.recursive,
                            on_error=args.on_error, **weighting)
    seconds = time.perf_counter() - t0
    axis_text = "none" if args.axis is None else str(args.axis)
    rate = ""
    if nbytes and nbytes >= 1e6 and seconds > 0:
        rate = f", {nbytes / seconds / 1e9:.3g} GB/s"
    print(description)
    print(f"axis {axis_text} -> statistics of shape {tuple(np.shape(r.mean))}, ddof {args.ddof}, "
          f"nan_policy {args.nan_policy}; {seconds:.3f} s{rate}")
    for line in _summary_lines(r, args.max_features):
        print(line)
    if r.skipped:
        print(f"skipped {len(r.skipped)} unreadable file(s):")
        for path, reason in r.skipped:
            print(f"  {path}: {reason}")
    if args.out is not None:
        write_stats(r, args.out, axis=args.axis, ddof=args.ddof, nan_policy=args.nan_policy,
                    sources=paths)
        print(f"wrote {args.out}")
    return 0


# -- demo --------------------------------------------------------------------------------------------

DEMO_FEATURES = 256
DEMO_MEAN, DEMO_STD = 1000.0, 10.0


def make_demo_file(path: str, rows: int, seed: int = 0, block_rows: int = 1 << 15) -> None:
    """float32 (rows, 256) ~ N(1000, 10), written block by block (bounded memory) with plain
    write() calls, the way ``np.save`` writes a file."""
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_2_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (rows, DEMO_FEATURES)})
        for start in range(0, rows, block_rows):
            n = min(block_rows, rows - start)
            block = rng.standard_normal((n, DEMO_FEATURES), dtype=np.float32)
            block *= np.float32(DEMO_STD)
            block += np.float32(DEMO_MEAN)
            f.write(block.tobytes())


def reference_variance(path: str, block_rows: int = 1 << 14) -> Tuple[np.ndarray, np.ndarray]:
    """Per-column mean and variance in float64, two passes block by block.

    Each block is transposed so NumPy sums along contiguous memory (pairwise summation), and the
    second pass uses the corrected form sum(d^2) - sum(d)^2/n (Chan, Golub & LeVeque 1983).
    """
    x = np.load(path, mmap_mode="r")
    rows = x.shape[0]

    def block_sums(fn):
        parts = []
        for start in range(0, rows, block_rows):
            b = np.ascontiguousarray(x[start:start + block_rows].astype(np.float64).T)
            parts.append(fn(b))
        return np.ascontiguousarray(np.stack(parts, axis=1)).sum(axis=1)

    mean = block_sums(lambda b: b.sum(axis=1)) / rows
    d1 = block_sums(lambda b: (b - mean[:, None]).sum(axis=1))
    d2 = block_sums(lambda b: np.square(b - mean[:, None]).sum(axis=1))
    variance = (d2 - d1 * d1 / rows) / rows
    del x
    return mean + d1 / rows, variance


def _rel_err(got, want) -> float:
    got = np.asarray(got, dtype=np.float64).ravel()
    want = np.asarray(want, dtype=np.float64).ravel()
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.max(np.abs(got - want) / np.abs(want)))


@contextlib.contextmanager
def _native_stderr_silenced():
    """Silences what C++ libraries write to file descriptor 2 (TensorFlow's oneDNN notice is
    printed at import, before its log level applies); Python exceptions still propagate."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _keras_importable() -> bool:
    return importlib.util.find_spec("keras") is not None


def cmd_demo(args: argparse.Namespace) -> int:
    import fastmoments

    nbytes_target = args.size_gb * (1 << 30)
    rows = max(1, int(nbytes_target // (DEMO_FEATURES * 4)))
    nbytes = rows * DEMO_FEATURES * 4
    if args.dir is not None and not os.path.isdir(args.dir):
        raise CommandError(f"--dir {args.dir!r} is not a directory")
    workdir = tempfile.mkdtemp(prefix="fastmoments-demo-", dir=args.dir)
    threads = args.threads if args.threads is not None else fastmoments.default_threads()
    try:
        path = os.path.join(workdir, "demo.npy")
        print(f"fastmoments {fastmoments.__version__} demo: float32 ({rows}, {DEMO_FEATURES}) "
              f"~ N({DEMO_MEAN:g}, {DEMO_STD:g}), {nbytes / 1e9:.2f} GB in {workdir}, "
              f"{threads} threads")
        t0 = time.perf_counter()
        make_demo_file(path, rows)
        ref_mean, ref_var = reference_variance(path)
        print(f"(file written and float64 reference computed in {time.perf_counter() - t0:.1f} s)")

        results = []  # (name, seconds, variance)

        def run(name, fn):
            t = time.perf_counter()
            var = fn()
            results.append((name, time.perf_counter() - t, var))

        run("fastmoments.compute(path)",
            lambda: fastmoments.compute(path, axis=-1, threads=threads).variance)

        def numpy_mean_var():
            x = np.load(path)
            x.mean(axis=0)
            return x.var(axis=0)

        run("numpy load + mean + var", numpy_mean_var)

        skipped = []
        if args.keras and _keras_importable():
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's log quiet
            try:
                with warnings.catch_warnings(), _native_stderr_silenced():
                    warnings.simplefilter("ignore")
                    import keras
            except Exception as exc:  # noqa: BLE001 - a broken Keras install is only skipped
                keras = None
                skipped.append(f"Keras ({type(exc).__name__}: {exc})")
            if keras is not None:
                def keras_adapt():
                    x = np.load(path)
                    layer = keras.layers.Normalization(axis=-1)
                    layer.adapt(x)
                    return keras.ops.convert_to_numpy(layer.variance)

                run("keras Normalization.adapt (load + adapt, ~2x RAM)", keras_adapt)
                try:
                    from .keras import FastNorm
                except Exception as exc:  # noqa: BLE001
                    skipped.append(f"FastNorm ({type(exc).__name__}: {exc})")
                else:
                    def fastnorm_adapt():
                        layer = FastNorm(axis=-1)
                        layer.adapt(path, progress=False)
                        return keras.ops.convert_to_numpy(layer.variance)

                    run("fastmoments FastNorm.adapt(path)", fastnorm_adapt)
        elif args.keras:
            skipped.append("Keras (not installed)")

        width = max(len(name) for name, _, _ in results)
        print(f"{'method':<{width}} {'time s':>8} {'GB/s':>7} {'var rel err':>12}")
        for name, seconds, var in results:
            print(f"{name:<{width}} {seconds:>8.3f} {nbytes / seconds / 1e9:>7.2f} "
                  f"{_rel_err(var, ref_var):>12.2e}")
        print("var rel err: max over the 256 features against a float64 two-pass reference "
              "(Keras layers keep float32 weights: ~6e-8 at best).")
        if skipped:
            print("skipped: " + "; ".join(skipped))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
