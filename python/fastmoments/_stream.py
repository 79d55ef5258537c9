"""Data bigger than memory: files and chunked stores streamed block by block with bounded memory.

Sources (all reach here through :func:`fastmoments.compute`):

- ``.npy`` files (C or Fortran order, either byte order) and ``np.memmap`` objects: read by the
  native pipeline (``_core.stream_file``): one reader thread ``pread``s pieces of whole slices into
  a ring of a few 4 MiB buffers, worker threads reduce them, piece states merge in file order.
- raw binary files: ``compute(path, dtype=..., shape=...)``; one entry of ``shape`` may be -1.
- ``.npz`` members: ``"a.npz::name"``, or ``"a.npz"`` when the archive holds one array. Stored
  (uncompressed) members go through the native pipeline; compressed ones are decompressed block by
  block.
- HDF5 datasets (h5py): contiguous uncompressed datasets through the native pipeline, chunked ones
  chunk by chunk along axis 0; Zarr arrays chunk by chunk, decompressed by a thread pool ahead of
  the kernel.
- lists of paths and glob patterns (``"vol_*.npy"``): the arrays are concatenated along axis 0
  (same trailing shape required). For statistics per voxel over many volumes of one shape, feed
  each file to an :class:`~fastmoments.Accumulator` instead.

``sample=`` reads a seeded random subset of blocks of rows (axis 0, which must then be reduced);
the result's ``.sample`` is the fraction of rows read. In a Fortran-order file a block of rows is
one short run per column, read piece by piece.
"""

from __future__ import annotations

import concurrent.futures
import glob
import mmap
import os
import struct
import tokenize
import zipfile
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np

from . import _core
from ._axes import keep_mask, kept_shape, normalize_keep_axes
from ._compute import compute_array, nan_where_empty
from ._dtypes import dtype_code, is_native
from ._moments import Moments
from ._progress import progress_reporter
from ._routes import ComputeOptions

# Bytes per piece handed to one worker: a small multiple fits the L3 cache, large enough for the
# disk to stream. Fixed (never derived from the thread count): piece boundaries decide the bits.
BLOCK_BYTES = 4 << 20
# Rows are sampled in units of about this many bytes.
SAMPLE_UNIT_BYTES = 1 << 20
# How often the calling thread checks for Ctrl-C and reports progress.
POLL_SECONDS = 0.05
# Seconds the native reader sleeps per piece (tests use it to slow the reader down).
READ_DELAY = 0.0
# "thread": a reader thread fills a ring of buffers for the workers; "workers": each worker reads
# its own piece (copies from the page cache then scale with the threads); "map": as "workers", but
# pieces already in the page cache are reduced straight from a memory map (no copy; a file
# truncated meanwhile is reported, never SIGBUS); None: "map" when most of the data is in the page
# cache, else "thread". Same result in every mode.
READER_MODE = None
_READER_CODES = {None: 0, "thread": 1, "workers": 2, "map": 3}

_GLOB_CHARS = frozenset("*?[")
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"


# ---- sources --------------------------------------------------------------------------------------

@dataclass
class FileArray:
    """An array stored raw at ``offset`` of a file (read by the native pipeline)."""

    path: str
    offset: int
    dtype: np.dtype
    shape: Tuple[int, ...]
    fortran: bool = False

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


class ChunkedArray:
    """A C-order array read in row blocks by ``read(r0, r1)`` (h5py, zarr, compressed npz)."""

    def __init__(self, shape, dtype, read: Callable[[int, int], np.ndarray], chunk_rows: int,
                 sequential: bool = False, fortran: bool = False, close: Optional[Callable] = None):
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.read = read
        self.chunk_rows = max(1, int(chunk_rows))
        self.sequential = sequential  # reads must happen one at a time, in order
        self.fortran = fortran        # shape is reversed: rows are the last axis of the array
        self.close = close

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def _check_dtype(dtype: np.dtype, where: str) -> None:
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise TypeError(f"{where} holds dtype {dtype!r}; fastmoments reads plain numeric dtypes")
    dtype_code(dtype)  # TypeError for unsupported dtypes


def _read_npy_header(f, where: str):
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            # 3.0 differs from 2.0 only by UTF-8 field names, which plain dtypes do not have
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unknown .npy format version {version}")
    except (ValueError, OSError, EOFError, SyntaxError, TypeError, tokenize.TokenError) as exc:
        raise ValueError(f"{where} is not a readable .npy file: {exc}") from None
    _check_dtype(dtype, where)
    return tuple(int(s) for s in shape), bool(fortran), dtype


def _npy_source(path: str) -> FileArray:
    with open(path, "rb") as f:
        shape, fortran, dtype = _read_npy_header(f, repr(path))
        offset = f.tell()
    src = FileArray(path, offset, dtype, shape, fortran)
    size = os.path.getsize(path)
    if size < offset + src.nbytes:
        raise ValueError(f"file {path!r} is truncated: its header promises {offset + src.nbytes} "
                         f"bytes but the file has {size}")
    return src


def _raw_source(path: str, dtype: Any, shape: Optional[Sequence[int]]) -> FileArray:
    try:
        dtype = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype= is not a NumPy dtype: {dtype!r} ({exc})") from None
    _check_dtype(dtype, f"dtype={dtype!r}")
    shape = (-1,) if shape is None else tuple(shape)
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise TypeError(f"shape= must be a tuple of ints, got {shape!r}") from None
    if sum(s == -1 for s in shape) > 1 or any(s < -1 for s in shape):
        raise ValueError(f"shape= may hold one -1 and otherwise sizes >= 0, got {shape}")
    size = os.path.getsize(path)
    known = int(np.prod([s for s in shape if s != -1], dtype=np.int64)) * dtype.itemsize
    if -1 in shape:
        if known == 0 or size % known:
            raise ValueError(f"raw file {path!r} has {size} bytes, not a whole number of rows of "
                             f"shape {shape} and dtype {dtype} ({known} bytes each)")
        shape = tuple(size // known if s == -1 else s for s in shape)
    elif known != size:
        raise ValueError(f"raw file {path!r} has {size} bytes but shape {shape} of dtype {dtype} "
                         f"needs {known}")
    return FileArray(path, 0, dtype, shape, False)


def _npz_source(path: str, member: Optional[str]):
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{path!r} is not a readable .npz archive: {exc}") from None
    try:
        names = [i.filename for i in zf.infolist() if not i.is_dir()]
        if member is None:
            if len(names) != 1:
                raise ValueError(f"{path!r} holds {len(names)} arrays {names}; name one as "
                                 f"'{path}::name'")
            info = zf.getinfo(names[0])
        else:
            for cand in (member, member + ".npy"):
                if cand in names:
                    info = zf.getinfo(cand)
                    break
            else:
                raise ValueError(f"{path!r} has no member {member!r}; it holds {names}")
        where = f"member {info.filename!r} of {path!r}"
        if info.flag_bits & 0x1:
            raise ValueError(f"{where} is encrypted")
        if info.compress_type == zipfile.ZIP_STORED:
            with open(path, "rb") as f:
                f.seek(info.header_offset)
                local = f.read(30)
                if len(local) != 30 or local[:4] != _ZIP_MAGIC:
                    raise ValueError(f"{where}: bad local zip header")
                name_len, extra_len = struct.unpack("<HH", local[26:30])
                start = info.header_offset + 30 + name_len + extra_len
                f.seek(start)
                shape, fortran, dtype = _read_npy_header(f, where)
                offset = f.tell()
            src = FileArray(path, offset, dtype, shape, fortran)
            if offset - start + src.nbytes > info.file_size:
                raise ValueError(f"{where} is truncated")
            if os.path.getsize(path) < offset + src.nbytes:
                raise ValueError(f"file {path!r} is truncated")
            zf.close()
            return src
        # Compressed: decompressed block by block, in order, by one thread.
        stream = zf.open(info)
        shape, fortran, dtype = _read_npy_header(stream, where)
        cshape = tuple(reversed(shape)) if fortran else shape
        row_bytes = int(np.prod(cshape[1:], dtype=np.int64)) * dtype.itemsize
        state = {"pos": 0}

        def read(r0: int, r1: int) -> np.ndarray:
            if r0 != state["pos"]:  # sampling: skip forward (decompressing) to r0
                stream.read((r0 - state["pos"]) * row_bytes)
            want = (r1 - r0) * row_bytes
            buf = stream.read(want)
            if len(buf) != want:
                raise ValueError(f"{where} is truncated")
            state["pos"] = r1
            return np.frombuffer(buf, dtype=dtype).reshape((r1 - r0,) + cshape[1:])

        def close():
            stream.close()
            zf.close()

        rows = max(1, SAMPLE_UNIT_BYTES // max(1, row_bytes))
        return ChunkedArray(cshape, dtype, read, rows, sequential=True, fortran=fortran, close=close)
    except BaseException:
        zf.close()
        raise


def _is_glob(s: str) -> bool:
    return any(c in _GLOB_CHARS for c in s)


def expand_paths(data: Any) -> List[str]:
    """Paths named by a path, a glob pattern or a list of them (globs sorted; none may be empty)."""
    items = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    out: List[str] = []
    for item in items:
        s = os.fspath(item)
        if isinstance(s, bytes):
            s = os.fsdecode(s)
        if _is_glob(s) and not os.path.exists(s):
            matches = sorted(glob.glob(s))
            if not matches:
                raise FileNotFoundError(f"no file matches {s!r}")
            out.extend(matches)
        else:
            out.append(s)
    if not out:
        raise ValueError("no files given")
    return out


def _path_source(spec: str, opts: ComputeOptions):
    path, member = spec, None
    if "::" in spec and not os.path.exists(spec):
        path, member = spec.split("::", 1)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path!r}")
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a directory; pass files or a glob such as '{path}/*.npy'")
    if opts.dtype is not None:
        if member is not None:
            raise ValueError("dtype= and shape= describe raw files, not .npz members")
        return _raw_source(path, opts.dtype, opts.shape)
    if opts.shape is not None:
        raise ValueError(f"shape= needs dtype= (raw binary file {path!r})")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic[:4] == _ZIP_MAGIC:
        return _npz_source(path, member)
    if member is not None:
        raise ValueError(f"{path!r} is not an .npz archive, so '::{member}' names nothing")
    if magic != _NPY_MAGIC:
        raise ValueError(f"{path!r} is neither a .npy nor an .npz file; for raw binary data pass "
                         f"dtype= and shape=")
    return _npy_source(path)


def _memmap_source(m: np.memmap):
    """The file range behind a memmap, or None when it must be read in memory."""
    mm = getattr(m, "_mmap", None)
    filename = getattr(m, "filename", None)
    if mm is None or filename is None or getattr(m, "mode", "r") == "c" or m.size == 0:
        return None  # copy-on-write changes live only in this process's pages
    if not (m.flags.c_contiguous or m.flags.f_contiguous):
        return None
    try:
        base = np.frombuffer(mm, dtype=np.uint8).ctypes.data
    except (ValueError, TypeError):  # closed map
        return None
    start = m.offset - m.offset % mmap.ALLOCATIONGRANULARITY  # where np.memmap starts its map
    offset = start + (m.__array_interface__["data"][0] - base)
    fortran = not m.flags.c_contiguous
    return FileArray(os.fspath(filename), int(offset), m.dtype, tuple(m.shape), fortran)


def _h5py_source(ds):
    import h5py

    if not isinstance(ds, h5py.Dataset):
        raise TypeError(f"fastmoments reads h5py Datasets, got {type(ds).__name__}")
    _check_dtype(ds.dtype, f"dataset {ds.name!r}")
    if ds.ndim == 0 or ds.size == 0:
        return ds[()]
    f = ds.file
    offset = ds.id.get_offset()
    if ds.chunks is None and offset is not None and f.driver == "sec2" and not ds.external:
        if f.mode != "r":
            f.flush()  # the reader sees the file, not HDF5's cache
        return FileArray(f.filename, int(offset), ds.dtype, tuple(ds.shape), False)
    chunk_rows = ds.chunks[0] if ds.chunks else 1
    return ChunkedArray(ds.shape, ds.dtype, lambda a, b: ds[a:b], chunk_rows, sequential=False)


def _zarr_source(z):
    if not (hasattr(z, "chunks") and hasattr(z, "shape") and hasattr(z, "dtype")):
        raise TypeError(f"fastmoments reads zarr Arrays, got {type(z).__name__}")
    dtype = np.dtype(z.dtype)
    _check_dtype(dtype, "zarr array")
    if len(z.shape) == 0 or int(np.prod(z.shape)) == 0:
        return np.asarray(z[...])
    return ChunkedArray(z.shape, dtype, lambda a, b: np.asarray(z[a:b]), z.chunks[0])


def sources_of(data: Any, opts: ComputeOptions) -> list:
    """FileArray / ChunkedArray / ndarray objects for ``data``."""
    mod = type(data).__module__.split(".")[0]
    if opts.dtype is not None or opts.shape is not None:
        if not isinstance(data, (str, os.PathLike, list, tuple)):
            raise ValueError("dtype= and shape= describe raw binary files given by path")
    if isinstance(data, np.memmap):
        src = _memmap_source(data)
        return [np.asarray(data) if src is None else src]
    if mod == "h5py":
        return [_h5py_source(data)]
    if mod == "zarr":
        return [_zarr_source(data)]
    if isinstance(data, (str, os.PathLike, list, tuple)):
        out = []
        try:
            for p in expand_paths(data):
                out.append(_path_source(p, opts))
        except BaseException:
            _close(out)
            raise
        return out
    raise TypeError(f"fastmoments cannot stream {type(data).__name__} objects")


def _close(sources) -> None:
    for s in sources:
        if isinstance(s, ChunkedArray) and s.close is not None:
            s.close()


# ---- sampling ------------------------------------------------------------------------------------

def _check_sample(sample) -> None:
    if sample is None:
        return
    if isinstance(sample, (bool, np.bool_)) or not isinstance(sample, (int, float, np.integer, np.floating)):
        raise TypeError(f"sample must be a fraction in (0, 1] or a number of rows, got {sample!r}")
    if isinstance(sample, (float, np.floating)):
        if not 0.0 < float(sample) <= 1.0:
            raise ValueError(f"a fractional sample must lie in (0, 1], got {sample!r}")
    elif sample < 1:
        raise ValueError(f"a sample of rows must be >= 1, got {sample!r}")


def sample_ranges(n_rows: int, unit_rows: int, fraction: float, seed) -> Tuple[List[Tuple[int, int]], int]:
    """Sorted, merged row ranges covering about ``fraction`` of ``n_rows`` in units of rows."""
    unit_rows = max(1, int(unit_rows))
    n_units = -(-n_rows // unit_rows)
    k = min(n_units, max(1, int(round(fraction * n_units))))
    chosen = np.sort(np.random.default_rng(seed).choice(n_units, size=k, replace=False))
    ranges: List[Tuple[int, int]] = []
    for u in chosen.tolist():
        a, b = u * unit_rows, min(n_rows, (u + 1) * unit_rows)
        if ranges and ranges[-1][1] == a:
            ranges[-1] = (ranges[-1][0], b)
        else:
            ranges.append((a, b))
    return ranges, sum(b - a for a, b in ranges)


# ---- the native pipeline -------------------------------------------------------------------------

# Most pieces a sample of a Fortran-order file may be cut into (each a run of one column).
MAX_SAMPLE_PIECES = 1 << 22


def plan_pieces(shape: Tuple[int, ...], itemsize: int, keep: Sequence[bool],
                ranges: Sequence[Tuple[int, int]], block_bytes: int, range_axis: int = 0):
    """Pieces of a C-order array: whole slices along a split axis j, at most ``block_bytes`` each
    unless one element row is larger. Returns (j, offsets, rows, out_base) with offsets in elements.
    ``ranges`` restrict axis ``range_axis``: 0, or the last axis (the rows of a Fortran-order
    file, read as runs along it). Depends only on the shape, never on the thread count."""
    nd = len(shape)
    if range_axis not in (0, nd - 1):
        raise ValueError(f"ranges can restrict axis 0 or the last axis, not {range_axis}")
    j = 0
    if range_axis > 0:
        j = nd - 1
        runs_per_lead = sum(-(-(b - a) // max(1, block_bytes // itemsize)) for a, b in ranges)
        n_pieces = int(np.prod(shape[:-1], dtype=np.int64)) * runs_per_lead
        if n_pieces > MAX_SAMPLE_PIECES:
            raise ValueError(
                f"sample= on this Fortran-order file would read {n_pieces} scattered pieces (its rows "
                f"are spread over the whole file); save it in C order, or reduce it whole")
    while j < nd - 1 and int(np.prod(shape[j + 1:], dtype=np.int64)) * itemsize > block_bytes:
        j += 1
    slice_elems = int(np.prod(shape[j + 1:], dtype=np.int64))
    per = max(1, block_bytes // max(1, slice_elems * itemsize))
    estride = [int(np.prod(shape[i + 1:], dtype=np.int64)) for i in range(nd)]
    ostride = [int(np.prod([shape[k] for k in range(i + 1, nd) if keep[k]], dtype=np.int64))
               for i in range(nd)]
    # Leading indices (axes < j) and the runs along axis j.
    if j == 0:
        lead_elem = np.zeros(1, np.int64)
        lead_out = np.zeros(1, np.int64)
        runs = list(ranges)
    else:
        if range_axis == 0:
            axes = [np.concatenate([np.arange(a, b) for a, b in ranges]).astype(np.int64)]
        else:
            axes = [np.arange(shape[0], dtype=np.int64)]
        axes += [np.arange(shape[i], dtype=np.int64) for i in range(1, j)]
        grids = np.meshgrid(*axes, indexing="ij")
        lead_elem = sum(g.ravel() * estride[i] for i, g in enumerate(grids))
        lead_out = sum(g.ravel() * (ostride[i] if keep[i] else 0) for i, g in enumerate(grids))
        lead_elem = np.asarray(lead_elem, np.int64)
        lead_out = np.asarray(lead_out, np.int64)
        runs = list(ranges) if range_axis == j else [(0, shape[j])]
    starts = np.concatenate([np.arange(a, b, per, dtype=np.int64) for a, b in runs])
    ends = np.concatenate([np.minimum(np.arange(a, b, per, dtype=np.int64) + per, b) for a, b in runs])
    rows = ends - starts
    offsets = (lead_elem[:, None] + starts[None, :] * estride[j]).ravel()
    out_j = starts * ostride[j] if keep[j] else np.zeros_like(starts)
    out_base = (lead_out[:, None] + out_j[None, :]).ravel()
    rows = np.broadcast_to(rows, (len(lead_elem), len(rows))).ravel()
    return j, offsets, np.ascontiguousarray(rows), out_base


def _reduce_file(src: FileArray, keep_c, cshape, ranges, omit, opts, report, range_axis=0):
    itemsize = src.dtype.itemsize
    j, offsets, rows, out_base = plan_pieces(cshape, itemsize, keep_c, ranges, BLOCK_BYTES, range_axis)
    out_size = int(np.prod(kept_shape(cshape, tuple(i for i, k in enumerate(keep_c) if k)),
                           dtype=np.int64))
    poll = None if report is None else (lambda done, total: report(done))
    count, mean, m2, mean_lo = _core.stream_file(
        src.path, dtype_code(src.dtype), not is_native(src.dtype), list(cshape[j + 1:]),
        list(keep_c[j:]), offsets * itemsize + src.offset, rows, out_base, out_size, omit,
        opts.threads, poll, POLL_SECONDS, len(ranges) == 1, READ_DELAY,
        _READER_CODES[READER_MODE], "")
    return count, mean, m2, mean_lo


# ---- the chunked pipeline (h5py, zarr, compressed npz) -----------------------------------------------

def _reduce_chunked(src: ChunkedArray, keep_c, cshape, ranges, omit, opts, report):
    row_bytes = int(np.prod(cshape[1:], dtype=np.int64)) * src.dtype.itemsize
    block_rows = src.chunk_rows * max(1, BLOCK_BYTES // max(1, src.chunk_rows * row_bytes))
    blocks = [(a, min(r1, a + block_rows)) for r0, r1 in ranges for a in range(r0, r1, block_rows)]
    code = dtype_code(src.dtype)
    native = src.dtype.newbyteorder("=") if src.dtype.byteorder not in "=|" else src.dtype
    kept = tuple(i for i, k in enumerate(keep_c) if k)
    out_shape = kept_shape(cshape, kept)
    count = np.zeros(out_shape, np.int64)
    mean = np.zeros(out_shape)
    m2 = np.zeros(out_shape)
    mean_lo = np.zeros(out_shape)
    workers = 1 if src.sequential else max(2, min(opts.threads, 8))
    depth = workers + 1
    done = 0
    pending: deque = deque()
    ex = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fastmoments-read")
    try:
        it = iter(blocks)
        for b in it:
            pending.append((b, ex.submit(src.read, *b)))
            if len(pending) >= depth:
                break
        while pending:
            (r0, r1), fut = pending.popleft()
            arr = fut.result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, ex.submit(src.read, *nxt)))
            arr = np.ascontiguousarray(arr, dtype=native)
            if arr.shape != (r1 - r0,) + tuple(cshape[1:]):
                raise ValueError(f"read rows {r0}:{r1} with shape {arr.shape}, expected "
                                 f"{(r1 - r0,) + tuple(cshape[1:])}")
            c, m, q, lo = _core.reduce(arr, list(keep_c), code, omit, opts.threads, None)
            if keep_c[0]:
                count[r0:r1], mean[r0:r1], m2[r0:r1], mean_lo[r0:r1] = c, m, q, lo
            else:
                count, mean, m2, mean_lo = (a.reshape(out_shape) for a in
                                            _core.combine(count, mean, m2, c, m, q, mean_lo, lo))
            done += arr.nbytes
            if report is not None:
                report(done)
    finally:
        for _, fut in pending:
            fut.cancel()
        ex.shutdown(wait=True)
    return count.ravel(), mean.ravel(), m2.ravel(), mean_lo.ravel()


# ---- compute -------------------------------------------------------------------------------------

def compute(data: Any, opts: ComputeOptions) -> Moments:
    """Moments of a file, list of files, memmap, h5py dataset or zarr array (see module doc)."""
    _check_sample(opts.sample)
    sources = sources_of(data, opts)
    try:
        return _compute_sources(sources, opts)
    finally:
        _close(sources)


def _compute_sources(sources, opts: ComputeOptions) -> Moments:
    if len(sources) == 1 and isinstance(sources[0], np.ndarray):
        if opts.sample is not None:
            raise ValueError("sample= needs a file-backed source")
        return compute_array(sources[0], opts)
    shapes = [_logical_shape(s) for s in sources]
    ndim = len(shapes[0])
    for p, s in zip(sources, shapes):
        if len(s) != ndim or s[1:] != shapes[0][1:]:
            raise ValueError(f"files must share their trailing shape to be concatenated along "
                             f"axis 0: {shapes[0]} and {s} ({_name(p)})")
    if ndim == 0 or any(isinstance(s, np.ndarray) for s in sources):
        if opts.sample is not None:
            raise ValueError("sample= needs file-backed sources")
        arr = np.concatenate([_materialize(s) for s in sources]) if ndim else _materialize(sources[0])
        return compute_array(arr, opts)
    total_shape = (sum(s[0] for s in shapes),) + shapes[0][1:]
    kept = normalize_keep_axes(opts.axis, ndim)
    if int(np.prod(total_shape, dtype=np.int64)) == 0:
        return compute_array(np.zeros(total_shape, sources[0].dtype), opts)
    for s in sources:
        dtype_code(s.dtype)
    omit = opts.nan_policy != "propagate"
    fraction = None
    if opts.sample is not None:
        if isinstance(opts.sample, (float, np.floating)):
            fraction = float(opts.sample)
        else:
            fraction = min(1.0, int(opts.sample) / max(1, total_shape[0]))
    plans = []
    total_bytes = 0
    for i, (src, shp) in enumerate(zip(sources, shapes)):
        fortran = bool(src.fortran)
        cshape = tuple(reversed(shp)) if fortran else shp
        keep = keep_mask(kept, ndim)
        keep_c = list(reversed(keep)) if fortran else keep
        # Rows (axis 0 of the data) are the storage's last axis in a Fortran-order file.
        row_axis = ndim - 1 if fortran else 0
        row_bytes = int(np.prod(shp[1:], dtype=np.int64)) * src.dtype.itemsize
        if fraction is not None:
            if keep[0]:
                raise ValueError(f"sample= draws rows along axis 0, which axis={opts.axis!r} "
                                 f"keeps; sample only when axis 0 is reduced")
            if fortran and isinstance(src, ChunkedArray):
                raise ValueError(f"sample= needs an uncompressed file to read the rows of a "
                                 f"Fortran-order array ({_name(src)})")
            unit = src.chunk_rows if isinstance(src, ChunkedArray) else SAMPLE_UNIT_BYTES // max(1, row_bytes)
            seed = None if opts.sample_seed is None else (opts.sample_seed, i)
            ranges, nrows = sample_ranges(shp[0], unit, fraction, seed)
        else:
            ranges, nrows = [(0, cshape[0])], shp[0]
            row_axis = 0  # whole file: pieces follow the storage order
        total_bytes += nrows * row_bytes
        plans.append((src, cshape, keep_c, ranges, nrows, fortran, row_axis, row_bytes, shp[0]))
    rows_read = 0
    parts = []
    with progress_reporter(opts.progress, total_bytes) as report:
        base = 0
        for src, cshape, keep_c, ranges, nrows, fortran, row_axis, row_bytes, _ in plans:
            sub = None if report is None else (lambda done, b=base: report(b + done))
            if isinstance(src, FileArray):
                state = _reduce_file(src, keep_c, cshape, ranges, omit, opts, sub, row_axis)
            else:
                state = _reduce_chunked(src, keep_c, cshape, ranges, omit, opts, sub)
            kshape = kept_shape(cshape, tuple(i for i, k in enumerate(keep_c) if k))
            state = tuple(a.reshape(kshape) for a in state)
            if fortran:
                state = tuple(np.ascontiguousarray(a.T) for a in state)
            parts.append(state)
            rows_read += nrows
            base += nrows * row_bytes
    # parts: (count, mean, m2, mean_lo) per source, concatenated or merged in source order
    if 0 in kept:
        count, mean, m2, mean_lo = (np.concatenate([p[k] for p in parts], axis=0) for k in range(4))
    else:
        count, mean, m2, mean_lo = parts[0]
        for c, m, q, lo in parts[1:]:
            count, mean, m2, mean_lo = (a.reshape(count.shape) for a in
                                        _core.combine(count, mean, m2, c, m, q, mean_lo, lo))
    if opts.nan_policy == "raise" and any(s.dtype.kind == "f" or s.dtype.name == "bfloat16"
                                          for s in sources):
        # Values each output should have counted: fewer means NaN inputs were omitted.
        per_part = []
        for _, cshape, keep_c, _, nrows, fortran, _, _, _ in plans:
            sizes = list(cshape)
            sizes[ndim - 1 if fortran else 0] = nrows  # rows read along the data's axis 0
            per_part.append(int(np.prod([sizes[k] for k in range(ndim) if not keep_c[k]],
                                        dtype=np.int64)))
        expected = per_part[0] if 0 in kept else sum(per_part)
        if np.any(count != expected):
            raise ValueError("the data contains NaN (nan_policy='raise')")
    sample = None if fraction is None else rows_read / max(1, sum(p[-1] for p in plans))
    if opts.nan_policy == "omit":
        mean, m2 = nan_where_empty(count, mean, m2)
    return Moments(count, mean, m2, ddof=opts.ddof, sample=sample, mean_lo=mean_lo)


def _logical_shape(src) -> Tuple[int, ...]:
    if isinstance(src, ChunkedArray) and src.fortran:
        return tuple(reversed(src.shape))
    return tuple(src.shape)


def _materialize(src) -> np.ndarray:
    if isinstance(src, np.ndarray):
        return src
    if isinstance(src, FileArray):
        return np.memmap(src.path, dtype=src.dtype, mode="r", offset=src.offset, shape=src.shape,
                         order="F" if src.fortran else "C")
    return src.read(0, src.shape[0])


def _name(src) -> str:
    return getattr(src, "path", type(src).__name__)
