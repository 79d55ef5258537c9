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
- lists of paths, glob patterns (``"vol_*.npy"``) and folders (the files in them fastmoments
  reads, sorted; ``recursive=``): the arrays are concatenated along axis 0. They must agree on
  the number of axes and on the kept axes; reduced axes may differ in size.
- NIfTI volumes and PNG/JPEG/TIFF images (``_imaging``): each is one sample (a new leading axis
  of length 1), so a folder of volumes of one shape is their stack. Uncompressed unscaled ``.nii``
  is a ``FileArray`` for the native pipeline; the others are ``DecodedFile`` sources reduced on a
  bounded pool of threads, states merged in file order.

``sample=`` reads a seeded random subset of blocks of rows (axis 0, which must then be reduced);
the result's ``.sample`` is the fraction of rows read. In a Fortran-order file a block of rows is
one short run per column, read piece by piece.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import glob
import math
import mmap
import os
import stat
import struct
import threading
import zipfile
import zlib
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np

from . import _core
from ._axes import keep_mask, kept_shape, normalize_keep_axes
from ._array import array_moments, reduce_ndarray, weights_view
from ._dtypes import check_plain_dtype, dtype_code, is_floating, is_native
from ._finish import check_reduction, finish, kernel_omits
from ._npyfile import (NPY_MAGIC, ZIP_MAGIC, checked_nbytes, npy_header_of_file, npz_member,
                       read_npy_header, stored_member_data_start)
from ._moments import Moments, State
from ._progress import POLL_SECONDS, progress_reporter, result_of
from ._checks import (ComputeOptions, aligned_shape, check_weights_dtype,
                      check_where_dtype)
from ._imaging import (DecodedFile, DecodedStates, check_same_channels, file_kind, list_directory,
                       open_file)

# Bytes per piece handed to one worker: a small multiple fits the L3 cache, large enough for the
# disk to stream. Fixed (never derived from the thread count): piece boundaries decide the bits.
BLOCK_BYTES = 4 << 20
# Rows are sampled in units of about this many bytes.
SAMPLE_UNIT_BYTES = 1 << 20
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


# ---- sources --------------------------------------------------------------------------------------

@dataclass
class FileArray:
    """An array stored raw at ``offset`` of a file (read by the native pipeline)."""

    path: str
    offset: int
    dtype: np.dtype
    shape: Tuple[int, ...]
    fortran: bool = False
    fd: int = -1  # an open descriptor on the file to read instead of opening path (not owned)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


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
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass
class StreamedMember:
    """A compressed ``.npz`` member, decompressed once, in order, piece by piece (bounded memory
    whatever the compression ratio). ``shape`` is in storage order, as for ChunkedArray."""

    where: str
    stream: Any
    dtype: np.dtype
    shape: Tuple[int, ...]
    fortran: bool
    close: Callable[[], None]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def skip(self, n: int) -> None:
        while n > 0:
            got = len(self._read(min(n, BLOCK_BYTES)))
            if got == 0:
                raise ValueError(f"{self.where} is truncated")
            n -= got

    def read_exact(self, n: int) -> bytes:
        buf = self._read(n)
        if len(buf) != n:
            raise ValueError(f"{self.where} is truncated: its header promises more data than it holds")
        return buf

    def _read(self, n: int) -> bytes:
        try:
            return self.stream.read(n)
        except (zipfile.BadZipFile, EOFError, OSError, zlib.error, NotImplementedError,
                struct.error) as exc:  # bad CRC, cut stream
            raise ValueError(f"{self.where} is corrupt: {exc}") from None


def _regular_file_size(path: str) -> int:
    """Size of the regular file at ``path``; ``ValueError`` for FIFOs, devices and sockets (which
    would block or never end) and for files whose size is not known in advance (``/proc``)."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path!r} is not a regular file; fastmoments reads files whose size is "
                         f"known in advance")
    if st.st_size == 0:
        with open(path, "rb") as f:
            if f.read(1):
                raise ValueError(f"{path!r} reports a size of 0 but has content (a /proc or /sys "
                                 f"file?); copy it to a regular file first")
    return st.st_size


def _raw_source(path: str, dtype: Any, shape: Optional[Sequence[int]]) -> FileArray:
    try:
        dtype = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype= is not a NumPy dtype: {dtype!r} ({exc})") from None
    check_plain_dtype(dtype, f"dtype={dtype!r}")
    shape = (-1,) if shape is None else tuple(shape)
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise TypeError(f"shape= must be a tuple of ints, got {shape!r}") from None
    if sum(s == -1 for s in shape) > 1 or any(s < -1 for s in shape):
        raise ValueError(f"shape= may hold one -1 and otherwise sizes >= 0, got {shape}")
    size = _regular_file_size(path)
    known = checked_nbytes([s for s in shape if s != -1], dtype.itemsize,
                           f"shape= of raw file {path!r}")
    if -1 in shape:
        if known == 0 or size % known:
            raise ValueError(f"raw file {path!r} has {size} bytes, not a whole number of rows of "
                             f"shape {shape} and dtype {dtype} ({known} bytes each)")
        shape = tuple(size // known if s == -1 else s for s in shape)
    elif known != size:
        raise ValueError(f"raw file {path!r} has {size} bytes but shape {shape} of dtype {dtype} "
                         f"needs {known}")
    return FileArray(path, 0, dtype, shape, False)


def _npz_source(path: str, member: Optional[str], size: int):
    try:
        zf = zipfile.ZipFile(path)
    except Exception as exc:  # noqa: BLE001 - zipfile parses untrusted bytes: any failure is "corrupt"
        raise ValueError(f"{path!r} is not a readable .npz archive: {type(exc).__name__}: {exc}") from None
    try:
        info = npz_member(zf, path, member)
        where = f"member {info.filename!r} of {path!r}"
        if info.compress_type == zipfile.ZIP_STORED:
            with open(path, "rb") as f:
                start = stored_member_data_start(f, info, where, size)
                f.seek(start)
                head = read_npy_header(f, where)
            _check_member_size(head, info, where)
            zf.close()
            return FileArray(path, start + head.offset, head.dtype, head.shape, head.fortran)
        try:
            stream = zf.open(info)
        except Exception as exc:  # noqa: BLE001 - zipfile parses untrusted bytes: any failure is "corrupt"
            raise ValueError(f"{where} cannot be read: {type(exc).__name__}: {exc}") from None
        try:
            head = read_npy_header(stream, where)  # its own ValueError/TypeError name the member
        except (zipfile.BadZipFile, NotImplementedError, EOFError, OSError, zlib.error,
                struct.error) as exc:
            raise ValueError(f"{where} cannot be read: {type(exc).__name__}: {exc}") from None
        cshape = tuple(reversed(head.shape)) if head.fortran else head.shape
        _check_member_size(head, info, where)

        def close():
            stream.close()
            zf.close()

        return StreamedMember(where, stream, head.dtype, cshape, head.fortran, close)
    except BaseException:
        zf.close()
        raise


def _check_member_size(head, info: zipfile.ZipInfo, where: str) -> None:
    """A member's header may not promise more bytes than the archive says the member holds."""
    if head.offset + head.nbytes > info.file_size:
        raise ValueError(f"{where} is truncated: its header promises {head.offset + head.nbytes} "
                         f"bytes, the member holds {info.file_size}")


def _is_glob(s: str) -> bool:
    return any(c in _GLOB_CHARS for c in s)


def expand_paths(data: Any, recursive: bool = False) -> List[str]:
    """Paths named by a path, a glob pattern, a directory (the files in it fastmoments reads,
    sorted; sub-folders too when ``recursive``) or a list of them (globs sorted; none may be
    empty)."""
    items = [data] if isinstance(data, (str, bytes, os.PathLike)) else list(data)
    out: List[str] = []
    for item in items:
        s = os.fspath(item)
        if isinstance(s, bytes):
            s = os.fsdecode(s)
        if _is_glob(s) and not os.path.exists(s):
            matches = sorted(glob.glob(s, recursive=recursive))
            if not matches:
                raise FileNotFoundError(f"no file matches {s!r}")
            for m in matches:
                out.extend(list_directory(m, recursive) if os.path.isdir(m) else [m])
        elif os.path.isdir(s):
            out.extend(list_directory(s, recursive))
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
    size = _regular_file_size(path)
    kind = file_kind(path) if member is None else None
    if kind is not None and opts.dtype is None and opts.shape is None:
        return open_file(path, kind, size)
    if opts.dtype is not None:
        if member is not None:
            raise ValueError("dtype= and shape= describe raw files, not .npz members")
        return _raw_source(path, opts.dtype, opts.shape)
    if opts.shape is not None:
        raise ValueError(f"shape= needs dtype= (raw binary file {path!r})")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic[:4] == ZIP_MAGIC:
        return _npz_source(path, member, size)
    if member is not None:
        raise ValueError(f"{path!r} is not an .npz archive, so '::{member}' names nothing")
    if magic != NPY_MAGIC:
        raise ValueError(f"{path!r} is neither a .npy nor an .npz file; for raw binary data pass "
                         f"dtype= and shape= (NIfTI and image files are known by their suffix: "
                         f".nii, .nii.gz, .png, .jpg, .jpeg, .tif, .tiff)")
    head = npy_header_of_file(path, repr(path), size)
    return FileArray(path, head.offset, head.dtype, head.shape, head.fortran)


def _memmap_source(m: np.memmap):
    """The file range behind a memmap, or None when it must be read in memory.

    The file is re-opened by name only when that name still names the mapped file (same device and
    inode as the mapping in ``/proc/self/maps``); a file replaced or unlinked since is read through
    the mapping the caller holds."""
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
    address = m.__array_interface__["data"][0]
    fd = _open_mapped_file(os.fspath(filename), address)
    if fd is None:
        return None
    start = m.offset - m.offset % mmap.ALLOCATIONGRANULARITY  # where np.memmap starts its map
    offset = start + (address - base)
    fortran = not m.flags.c_contiguous
    return FileArray(os.fspath(filename), int(offset), m.dtype, tuple(m.shape), fortran, fd=fd)


def _open_mapped_file(filename: str, address: int) -> Optional[int]:
    """A read-only descriptor on ``filename`` if it is the file mapped at ``address``, else None."""
    ident = _mapping_identity(address)
    if ident is None:
        return None
    try:
        fd = os.open(filename, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None  # unlinked or unreadable by name: the mapping is still there
    st = os.fstat(fd)
    if (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino) != ident or not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return fd


def _mapping_identity(address: int) -> Optional[Tuple[int, int, int]]:
    """(major, minor, inode) of the file mapped at ``address`` in this process (Linux), or None."""
    try:
        with open("/proc/self/maps", "rb") as f:
            for line in f:
                fields = line.split(maxsplit=5)
                lo, _, hi = fields[0].partition(b"-")
                if int(lo, 16) <= address < int(hi, 16):
                    major, _, minor = fields[3].partition(b":")
                    inode = int(fields[4])
                    return (int(major, 16), int(minor, 16), inode) if inode else None
    except (OSError, ValueError, IndexError):
        pass
    return None


def _h5py_source(ds):
    import h5py

    if not isinstance(ds, h5py.Dataset):
        raise TypeError(f"fastmoments reads h5py Datasets, got {type(ds).__name__}")
    check_plain_dtype(ds.dtype, f"dataset {ds.name!r}")
    if ds.ndim == 0 or ds.size == 0:
        return np.asarray(ds[()])
    f = ds.file
    offset = ds.id.get_offset()
    # Raw reads only where the data is written out whole (never-written storage reads as the fill
    # value through h5py, and its "offset" may point at the superblock).
    allocated = ds.id.get_storage_size() == ds.size * ds.dtype.itemsize
    if (ds.chunks is None and offset is not None and allocated and f.driver == "sec2"
            and not ds.external):
        if f.mode != "r":
            f.flush()  # the reader sees the file, not HDF5's cache
        return FileArray(f.filename, int(offset), ds.dtype, tuple(ds.shape), False)
    chunk_rows = ds.chunks[0] if ds.chunks else max(1, SAMPLE_UNIT_BYTES // max(1, ds.nbytes // ds.shape[0]))
    return ChunkedArray(ds.shape, ds.dtype, lambda a, b: ds[a:b], chunk_rows, sequential=False)


def _zarr_source(z):
    if not (hasattr(z, "chunks") and hasattr(z, "shape") and hasattr(z, "dtype")):
        raise TypeError(f"fastmoments reads zarr Arrays, got {type(z).__name__}")
    dtype = np.dtype(z.dtype)
    check_plain_dtype(dtype, "zarr array")
    if len(z.shape) == 0 or int(np.prod(z.shape)) == 0:
        return np.asarray(z[...])
    return ChunkedArray(z.shape, dtype, lambda a, b: np.asarray(z[a:b]), z.chunks[0])


class SkippedFiles(list):
    """``(path, reason)`` of the files left out under ``on_error="skip"``, in file order
    (``order``: each path's position in the expanded list)."""

    def __init__(self) -> None:
        super().__init__()
        self.order: dict = {}

    def add(self, path: str, reason: str) -> None:
        self.append((path, reason))
        self.sort(key=lambda entry: self.order.get(entry[0], len(self.order)))


def sources_of(data: Any, opts: ComputeOptions, skipped: Optional[SkippedFiles] = None) -> list:
    """FileArray / ChunkedArray / StreamedMember / DecodedFile / ndarray objects for ``data``.
    Under ``on_error="skip"`` files that cannot be opened are left out and recorded in
    ``skipped`` as ``(path, reason)``."""
    mod = type(data).__module__.split(".")[0]
    if opts.dtype is not None or opts.shape is not None:
        if not isinstance(data, (str, bytes, os.PathLike, list, tuple)):
            raise ValueError("dtype= and shape= describe raw binary files given by path")
    if isinstance(data, np.memmap):
        src = _memmap_source(data)
        return [np.asarray(data) if src is None else src]
    if mod == "h5py":
        return [_h5py_source(data)]
    if mod == "zarr":
        return [_zarr_source(data)]
    if isinstance(data, (str, bytes, os.PathLike, list, tuple)):
        if opts.dtype is not None and any(os.path.isdir(os.fspath(d)) for d in
                                          ([data] if isinstance(data, (str, bytes, os.PathLike)) else data)):
            raise ValueError("dtype= and shape= describe raw binary files; a folder names the "
                             "files fastmoments reads by their suffix")
        out = []
        try:
            paths = expand_paths(data, opts.recursive)
            if skipped is not None:
                skipped.order = {p: i for i, p in reversed(list(enumerate(paths)))}
            for p in paths:
                try:
                    out.append(_path_source(p, opts))
                except (ValueError, OSError) as exc:
                    if opts.on_error != "skip" or skipped is None:
                        raise
                    skipped.add(p, str(exc))
            if not out:
                raise ValueError(f"every file was skipped as unreadable: {list(skipped or ())}")
            check_same_channels(out)
        except BaseException:
            _close(out)
            raise
        return out
    raise TypeError(f"fastmoments cannot stream {type(data).__name__} objects")


def _close(sources) -> None:
    for s in sources:
        if isinstance(s, (ChunkedArray, StreamedMember)) and s.close is not None:
            s.close()
        elif isinstance(s, FileArray) and s.fd >= 0:
            os.close(s.fd)
            s.fd = -1


# ---- sampling ------------------------------------------------------------------------------------

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
    spec = _core.FileStreamSpec()
    spec.path, spec.fd = src.path, src.fd
    spec.dtype_code, spec.byteswap = dtype_code(src.dtype), not is_native(src.dtype)
    spec.tail, spec.keep = list(cshape[j + 1:]), list(keep_c[j:])
    spec.offsets, spec.rows, spec.out_base = offsets * itemsize + src.offset, rows, out_base
    spec.out_size = _kept_size(cshape, keep_c)
    spec.nan_omit, spec.threads = omit, opts.threads
    spec.sequential, spec.read_delay = len(ranges) == 1, READ_DELAY
    spec.reader_mode = _READER_CODES[READER_MODE]
    poll = None if report is None else (lambda done, total: report(done))
    return _core.stream_file(spec, poll, POLL_SECONDS)


def _kept_size(cshape, keep_c) -> int:
    return math.prod(n for n, k in zip(cshape, keep_c) if k)


def _reduce_streamed(src: StreamedMember, keep_c, cshape, ranges, omit, opts, report):
    """A compressed member, piece by piece as planned for files: pieces come in increasing offset
    order, so the stream is decompressed once, skipping what a sample leaves out."""
    itemsize = src.dtype.itemsize
    j, offsets, rows, out_base = plan_pieces(cshape, itemsize, keep_c, ranges, BLOCK_BYTES)
    tail = tuple(cshape[j + 1:])
    keep = [bool(k) for k in keep_c[j:]]
    slice_bytes = math.prod(tail) * itemsize
    kept = tuple(i for i, k in enumerate(keep) if k)
    out = State.empty((_kept_size(cshape, keep_c),))
    pos = done = 0
    for off, r, base in zip((offsets * itemsize).tolist(), rows.tolist(), out_base.tolist()):
        src.skip(off - pos)
        want = r * slice_bytes
        piece = np.frombuffer(src.read_exact(want), dtype=src.dtype).reshape((r,) + tail)
        pos = off + want
        part = reduce_ndarray(piece, kept, omit=omit, threads=opts.threads)
        at = slice(base, base + part.count.size)
        merged = State(*(a[at] for a in out.arrays)).merge(part.reshape((part.count.size,)))
        for whole, new in zip(out.arrays, merged.arrays):
            whole[at] = new
        done += want
        if report is not None:
            report(done)
    return out


# ---- the chunked pipeline (h5py, zarr, compressed npz) -----------------------------------------------

def _reduce_chunked(src: ChunkedArray, keep_c, cshape, ranges, omit, opts, report):
    row_bytes = int(np.prod(cshape[1:], dtype=np.int64)) * src.dtype.itemsize
    block_rows = src.chunk_rows * max(1, BLOCK_BYTES // max(1, src.chunk_rows * row_bytes))
    blocks = [(a, min(r1, a + block_rows)) for r0, r1 in ranges for a in range(r0, r1, block_rows)]
    kept = tuple(i for i, k in enumerate(keep_c) if k)
    out_shape = kept_shape(cshape, kept)
    out = State.empty(out_shape)
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
            arr = np.asarray(arr)
            if arr.shape != (r1 - r0,) + tuple(cshape[1:]):
                raise ValueError(f"read rows {r0}:{r1} with shape {arr.shape}, expected "
                                 f"{(r1 - r0,) + tuple(cshape[1:])}")
            part = reduce_ndarray(arr, kept, omit=omit, threads=opts.threads)
            if keep_c[0]:
                for whole, new in zip(out.arrays, part.arrays):
                    whole[r0:r1] = new
            else:
                out = out.merge(part)
            done += arr.nbytes
            if report is not None:
                report(done)
    finally:
        for _, fut in pending:
            fut.cancel()
        ex.shutdown(wait=True)
    return out


# ---- weights and masks beside files --------------------------------------------------------------

# Rows are read, weighted and reduced in blocks of about this many bytes of data; a few blocks (and
# their weights) are in memory at once, whatever the size of the files.
WEIGHTED_BLOCK_BYTES = 16 << 20
# Blocks read and reduced at once by the weighted file path (each by its share of the threads).
MAX_BLOCK_WORKERS = 4


def _is_path(value: Any) -> bool:
    return isinstance(value, (str, bytes, os.PathLike))


class BlockBuffers:
    """Read buffers reused from block to block: a new 16 MiB buffer per block costs its page
    faults (the kernel zeroes every page) on top of the copy from the page cache. Alone this
    moved cached (N, 256) float32 with per-row weights from a file 2.5 -> 2.6 GB/s on the busy
    2-core Xeon VM (cold 0.58x -> 0.75x dd); the workers in ``_compute_weighted.run`` did the
    rest. Only as many buffers live as blocks are in flight."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: List[np.ndarray] = []
        self._lent: dict = {}

    def take(self, nbytes: int) -> np.ndarray:
        """A uint8 array of ``nbytes`` bytes (contents undefined), lent until :meth:`recycle`."""
        with self._lock:
            for i, raw in enumerate(self._free):
                if raw.nbytes >= nbytes:
                    raw = self._free.pop(i)
                    break
            else:
                raw = None
        if raw is None:
            raw = np.empty(nbytes, np.uint8)
        with self._lock:
            self._lent[id(raw)] = raw
        return raw[:nbytes]

    def recycle(self, *arrays: Any) -> None:
        """Takes back the buffers under ``arrays`` (views of what :meth:`take` lent); the caller no
        longer uses them."""
        with self._lock:
            for a in arrays:
                while isinstance(a, np.ndarray):
                    raw = self._lent.pop(id(a), None)
                    if raw is not None:
                        self._free.append(raw)
                        break
                    a = a.base


def _block_reader(src, where: str, buffers: Optional[BlockBuffers] = None
                  ) -> Tuple[Callable[[int, int], np.ndarray], Callable[[], None]]:
    """``read(r0, r1)``: rows ``r0:r1`` (axis 0) of ``src`` as an array, and a ``close()``. Files
    are ``pread`` into a buffer per block (from ``buffers`` when given: the caller recycles it
    once the block is reduced; a Fortran-order file one run per column); nothing else of the file
    is held in memory."""
    if isinstance(src, ChunkedArray):
        if src.fortran:
            raise ValueError(f"weights= and where= read Fortran-order chunked arrays row by row, "
                             f"which this one cannot do ({where}); store it in C order")
        return src.read, lambda: None
    if isinstance(src, StreamedMember):
        if src.fortran:
            raise ValueError(f"weights= and where= need the rows of {src.where}, a compressed "
                             f"Fortran-order member; store it uncompressed or in C order")
        row_bytes = math.prod(src.shape[1:]) * src.dtype.itemsize
        pos = [0]

        def read_member(r0: int, r1: int) -> np.ndarray:
            src.skip(r0 * row_bytes - pos[0])  # blocks come in order: the stream is read once
            buf = src.read_exact((r1 - r0) * row_bytes)
            pos[0] = r1 * row_bytes
            return np.frombuffer(buf, dtype=src.dtype).reshape((r1 - r0,) + tuple(src.shape[1:]))

        return read_member, lambda: None
    if isinstance(src, np.ndarray):  # a small dataset h5py/zarr hand over in memory
        return (lambda r0, r1: src[r0:r1]), lambda: None
    if not isinstance(src, FileArray):
        raise ValueError(f"weights= and where= are not supported for decoded image or NIfTI files "
                         f"({where}); convert them to .npy")
    fd = (os.dup(src.fd) if src.fd >= 0 else
          os.open(src.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)))
    shape, item = tuple(src.shape), src.dtype.itemsize
    n_rows = shape[0] if shape else 1
    tail = shape[1:]
    # Fortran order: the file holds one run of all rows per column (the logical shape reversed).
    columns = math.prod(tail) if src.fortran and len(shape) > 1 else 1

    def pread_into(buf: np.ndarray, offset: int) -> None:
        view = memoryview(buf).cast("B")
        got = 0
        while got < len(view):
            n = os.preadv(fd, [view[got:]], offset + got)
            if n == 0:
                raise ValueError(f"{where} is truncated: it ends before byte {offset + len(view)}")
            got += n

    def empty(shp: Tuple[int, ...]) -> np.ndarray:
        if buffers is None:
            return np.empty(shp, src.dtype)
        return buffers.take(math.prod(shp) * item).view(src.dtype).reshape(shp)

    def read(r0: int, r1: int) -> np.ndarray:
        rows = r1 - r0
        if columns == 1:
            buf = empty((rows,) + tail)
            pread_into(buf, src.offset + r0 * math.prod(tail) * item)
            return buf
        buf = empty((columns, rows))
        for c in range(columns):
            pread_into(buf[c], src.offset + (c * n_rows + r0) * item)
        return buf.reshape(tuple(reversed(tail)) + (rows,)).T

    return read, lambda: os.close(fd)


def _rows_of_side(value: Any, name: str, shape: Tuple[int, ...], opened: list,
                  buffers: Optional[BlockBuffers] = None):
    """``weights=``/``where=`` for data of ``shape`` read by rows: ``rows(r0, r1)``, the part that
    weighs rows ``r0:r1`` (broadcastable to them), or None. An array is sliced; a ``.npy`` file is
    read beside the data, row block by row block (or whole when it holds no row axis: it is then
    at most one row's size). Shapes are checked here, once, against the whole data."""
    if value is None:
        return None
    check_dtype = check_weights_dtype if name == "weights" else check_where_dtype
    rows_rule = name == "weights"
    if _is_path(value):
        path = os.fsdecode(os.fspath(value))
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such {name} file: {path!r}")
        where = f"{name} file {path!r}"
        head = npy_header_of_file(path, where, _regular_file_size(path))
        check_dtype(head.dtype)
        aligned = aligned_shape(head.shape, shape, name, rows_rule)
        src = FileArray(path, head.offset, head.dtype, head.shape, head.fortran)
        if len(aligned) == len(shape) and shape and aligned[0] == shape[0] != 1:
            read, close = _block_reader(src, where, buffers)
            opened.append(close)
            return lambda r0, r1: read(r0, r1).reshape((r1 - r0,) + aligned[1:])
        whole = np.array(_materialize(src)).reshape(aligned)  # no row axis: at most a row's size
        return lambda r0, r1: whole
    arr = np.asarray(value)
    check_dtype(arr.dtype)
    aligned = aligned_shape(arr.shape, shape, name, rows_rule)
    arr = arr.reshape(aligned)
    if len(aligned) == len(shape) and shape and aligned[0] == shape[0] != 1:
        return lambda r0, r1: arr[r0:r1]
    return lambda r0, r1: arr


def _compute_weighted(sources, opts: ComputeOptions) -> Moments:
    """Weighted or masked moments of files (concatenated along axis 0): blocks of rows are read
    with their weights and mask (arrays sliced, ``.npy`` files read alongside), weighted by the
    array door's rule (``weights_view``) and reduced by the weighted kernel; block states are
    joined in row order (see ``run``)."""
    if opts.sample is not None:
        raise ValueError("sample= does not combine with weights= or where= (the weights of the "
                         "rows left out would be skipped silently)")
    if opts.on_error != "raise":
        raise ValueError("on_error='skip' does not combine with weights= or where=: a skipped "
                         "file would shift the rows the weights belong to")
    shapes = [_logical_shape(s) for s in sources]
    ndim = len(shapes[0])
    if ndim == 0 or any(len(s) != ndim or s[1:] != shapes[0][1:] for s in shapes):
        raise ValueError(f"weights= and where= need files of the same trailing shape, concatenated "
                         f"along axis 0; got shapes {[tuple(s) for s in shapes]}")
    shape = (sum(s[0] for s in shapes),) + tuple(shapes[0][1:])
    kept = normalize_keep_axes(opts.axis, ndim)
    check_reduction(shape, kept)
    floating = any(is_floating(s.dtype) for s in sources)
    opened: list = []
    buffers = BlockBuffers()
    try:
        wrows = _rows_of_side(opts.weights, "weights", shape, opened, buffers)
        mrows = _rows_of_side(opts.where, "where", shape, opened, buffers)
        if math.prod(shape) == 0:
            whole = dataclasses.replace(opts, weights=None if wrows is None else wrows(0, shape[0]),
                                        where=None if mrows is None else mrows(0, shape[0]))
            return array_moments(np.zeros(shape, sources[0].dtype), whole)
        readers = []
        for src in sources:
            read, close = _block_reader(src, _name(src), buffers)
            opened.append(close)
            readers.append(read)
        row_bytes = math.prod(shape[1:]) * max(s.dtype.itemsize for s in sources)
        block_rows = max(1, WEIGHTED_BLOCK_BYTES // max(1, row_bytes))
        blocks = []  # (source index, r0, r1 in the source, global row of r0)
        base = 0
        for i, (src, shp) in enumerate(zip(sources, shapes)):
            step = block_rows
            if isinstance(src, ChunkedArray):
                step = src.chunk_rows * max(1, block_rows // src.chunk_rows)
            blocks.extend((i, a, min(shp[0], a + step), base + a) for a in range(0, shp[0], step))
            base += shp[0]
        sequential = any(isinstance(s, StreamedMember) or getattr(s, "sequential", False)
                         for s in sources)
        total_bytes = sum(math.prod(shp) * s.dtype.itemsize for s, shp in zip(sources, shapes))

        def load(block):
            i, r0, r1, g = block
            arr = np.asarray(readers[i](r0, r1))
            if arr.shape != (r1 - r0,) + shape[1:]:
                raise ValueError(f"read rows {r0}:{r1} of {_name(sources[i])} with shape "
                                 f"{arr.shape}, expected {(r1 - r0,) + shape[1:]}")
            w = None if wrows is None else wrows(g, g + r1 - r0)
            m = None if mrows is None else mrows(g, g + r1 - r0)
            return arr, w, m

        def reduce_loaded(loaded, omit: bool, threads: int) -> Tuple[State, int]:
            arr, w, m = loaded
            try:
                return (reduce_ndarray(arr, kept, omit=omit, threads=threads,
                                       weights=weights_view(arr, w, m)), arr.nbytes)
            finally:
                buffers.recycle(arr, w, m)

        def run(omit: bool, report=None) -> State:
            # Files read at any offset: each of up to MAX_BLOCK_WORKERS workers reads a block and
            # reduces it (a 16 MiB block split over all threads would start the kernel's threads
            # once per block: on a busy 2-core VM 16 MiB blocks at threads=2 took 6x threads=1);
            # only running tasks hold block buffers, so memory is workers x a block of data and
            # weights. A stream read in order (compressed member): one reader thread reads the
            # next blocks while the kernel reduces this one on every thread. Either way the block
            # states are joined in block order: the bits do not depend on the threads.
            if sequential:
                workers, depth = 1, 2
                task = lambda b: load(b)  # noqa: E731
            else:
                workers = max(1, min(opts.threads, MAX_BLOCK_WORKERS, len(blocks)))
                depth = 2 * workers
                inner = max(1, opts.threads // workers)
                task = lambda b: reduce_loaded(load(b), omit, inner)  # noqa: E731
            parts: List[State] = []
            done = 0
            pending: deque = deque()
            it = iter(blocks)
            with concurrent.futures.ThreadPoolExecutor(
                    max_workers=workers, thread_name_prefix="fastmoments-read") as ex:
                try:
                    for b in it:
                        pending.append(ex.submit(task, b))
                        if len(pending) >= depth:
                            break
                    while pending:
                        got = result_of(pending.popleft())
                        nxt = next(it, None)
                        if nxt is not None:
                            pending.append(ex.submit(task, nxt))
                        part, nbytes = reduce_loaded(got, omit, opts.threads) if sequential else got
                        if 0 in kept or not parts:
                            parts.append(part)
                        else:
                            parts[0] = parts[0].merge(part)
                        done += nbytes
                        if report is not None:
                            report(done)
                finally:
                    for fut in pending:
                        fut.cancel()
            return State.concatenate(parts, axis=0) if 0 in kept else parts[0]

        can_rerun = not any(isinstance(s, StreamedMember) for s in sources)
        with progress_reporter(opts.progress, total_bytes, files=len(sources)) as report:
            state = run(kernel_omits(opts.nan_policy, floating, can_rerun), report)
        return finish(state, nan_policy=opts.nan_policy, floating=floating, expected=state.count,
                      ddof=opts.ddof, rerun=run if can_rerun else None)
    finally:
        for close in opened:
            close()


# ---- compute -------------------------------------------------------------------------------------

def compute(data: Any, opts: ComputeOptions) -> Moments:
    """Moments of a file, list of files, folder, memmap, h5py dataset or zarr array (see module
    doc). Under ``on_error="skip"`` the result's ``skipped`` lists the files left out."""
    skipped = SkippedFiles()
    sources = sources_of(data, opts, skipped)
    try:
        if opts.weights is not None or opts.where is not None:
            result = _compute_weighted(sources, opts)
        else:
            result = _compute_sources(sources, opts, skipped)
    finally:
        _close(sources)
    result.skipped = tuple(skipped)
    return result


def paths_shape(data: Any, recursive: bool = False) -> Tuple[Tuple[Optional[int], ...], int]:
    """The shape ``compute`` reads ``data`` (a path, glob, folder or list of them) as, from the
    files' headers (nothing decoded), and its size in bytes once decoded. Axes whose size differs
    between files are None."""
    sources = sources_of(data, ComputeOptions(recursive=recursive))
    try:
        shapes = [_logical_shape(s) for s in sources]
        nbytes = sum(int(getattr(s, "nbytes", 0)) for s in sources)
    finally:
        _close(sources)
    first = shapes[0]
    if any(len(s) != len(first) for s in shapes) or not first:
        return first, nbytes
    rest = tuple(d if all(s[k] == d for s in shapes) else None for k, d in enumerate(first) if k)
    return (sum(s[0] for s in shapes),) + rest, nbytes


def _check_shapes(sources, shapes, kept: Optional[Tuple[int, ...]]) -> None:
    """Files concatenate along axis 0: they must agree on the number of axes and on the size of
    every kept axis after the first; reduced axes may differ (images of several sizes). With
    ``kept`` None (arrays concatenated in memory) every axis after the first must agree."""
    ndim = len(shapes[0])
    first = shapes[0]
    axes = range(1, ndim) if kept is None else [k for k in kept if k > 0]
    for p, s in zip(sources, shapes):
        if len(s) != ndim or any(s[k] != first[k] for k in axes):
            along = "" if kept is None else f" (at least along the kept axes {tuple(axes)})"
            raise ValueError(f"files must share their trailing shape to be concatenated along "
                             f"axis 0{along}: {first} and {s} ({_name(p)})")


def _compute_sources(sources, opts: ComputeOptions,
                     skipped: Optional[SkippedFiles] = None) -> Moments:
    if len(sources) == 1 and isinstance(sources[0], np.ndarray):
        if opts.sample is not None:
            raise ValueError("sample= needs a file-backed source")
        return array_moments(sources[0], opts)
    shapes = [_logical_shape(s) for s in sources]
    ndim = len(shapes[0])
    if any(len(s) != ndim or s[1:] != shapes[0][1:] for s in shapes):
        # Differing sizes are fine along reduced axes of files reduced one by one.
        in_memory = ndim == 0 or any(isinstance(s, np.ndarray) for s in sources)
        _check_shapes(sources, shapes, None if in_memory else normalize_keep_axes(opts.axis, ndim))
    if ndim == 0 or any(isinstance(s, np.ndarray) for s in sources):
        if opts.sample is not None:
            raise ValueError("sample= needs file-backed sources")
        arr = np.concatenate([_materialize(s) for s in sources]) if ndim else _materialize(sources[0])
        return array_moments(arr, opts)
    kept = normalize_keep_axes(opts.axis, ndim)
    if opts.sample is not None:
        _check_sample_axis(kept, opts)
    if all(math.prod(s) == 0 for s in shapes):
        total_shape = (sum(s[0] for s in shapes),) + shapes[0][1:]
        return array_moments(np.zeros(total_shape, sources[0].dtype), opts)
    floating = any(is_floating(s.dtype) for s in sources)
    fraction = None
    if opts.sample is not None:
        decoded = [s for s in sources if isinstance(s, DecodedFile)]
        if decoded:
            raise ValueError(f"sample= reads rows of uncompressed arrays, not of decoded files "
                             f"({decoded[0].path!r})")
        total_rows = sum(s[0] for s in shapes)
        if isinstance(opts.sample, (float, np.floating)):
            fraction = float(opts.sample)
        else:
            fraction = min(1.0, int(opts.sample) / max(1, total_rows))
    plans = []
    total_bytes = 0
    for i, (src, shp) in enumerate(zip(sources, shapes)):
        fortran = bool(src.fortran)
        cshape = tuple(reversed(shp)) if fortran else shp
        keep = keep_mask(kept, ndim)
        keep_c = list(reversed(keep)) if fortran else keep
        # Rows (axis 0 of the data) are the storage's last axis in a Fortran-order file.
        row_axis = ndim - 1 if fortran else 0
        row_bytes = math.prod(shp[1:]) * src.dtype.itemsize
        if fraction is not None:
            _check_sample_axis(kept, opts)
            if fortran and not isinstance(src, FileArray):
                raise ValueError(f"sample= needs an uncompressed file to read the rows of a "
                                 f"Fortran-order array ({_name(src)})")
            unit = src.chunk_rows if isinstance(src, ChunkedArray) else SAMPLE_UNIT_BYTES // max(1, row_bytes)
            seed = None if opts.sample_seed is None else (opts.sample_seed, i)
            ranges, nrows = sample_ranges(shp[0], unit, fraction, seed)
        else:
            ranges, nrows = [(0, cshape[0])], shp[0]
            row_axis = 0  # whole file: pieces follow the storage order
        total_bytes += nrows * row_bytes
        plans.append((src, cshape, keep_c, ranges, nrows, fortran, row_axis, row_bytes, shp))

    def run(omit: bool, report=None, skipped: Optional[SkippedFiles] = None):
        """(state, values each output would count without NaNs, rows read) of one pass."""
        parts, expected_parts = [], []
        rows_read = 0
        to_decode = [p[0] for p in plans if isinstance(p[0], DecodedFile)]
        with DecodedStates(to_decode, kept, omit, opts.threads) as decoded:
            base = 0
            for n_done, (src, cshape, keep_c, ranges, nrows, fortran, row_axis, row_bytes,
                         shp) in enumerate(plans):
                sub = None if report is None else (lambda done, b=base: report(b + done))
                try:
                    if isinstance(src, DecodedFile):
                        _, state = decoded.next()
                    else:
                        if isinstance(src, FileArray):
                            raw = _reduce_file(src, keep_c, cshape, ranges, omit, opts, sub, row_axis)
                        elif isinstance(src, StreamedMember):
                            raw = _reduce_streamed(src, keep_c, cshape, ranges, omit, opts, sub)
                        else:
                            raw = _reduce_chunked(src, keep_c, cshape, ranges, omit, opts, sub)
                        state = State.of(raw, kept_shape(cshape, tuple(i for i, k in enumerate(keep_c) if k)))
                        if fortran:
                            state = State(*(a.T.copy() for a in state.arrays))  # (ascontiguousarray makes 0-d 1-d)
                except (ValueError, OSError) as exc:
                    if opts.on_error != "skip":
                        raise
                    if skipped is not None:
                        skipped.add(_name(src), str(exc))
                    state = None
                base += nrows * row_bytes
                if report is not None:
                    report(base, files=n_done + 1)
                if state is None:
                    continue
                parts.append(state)
                rows_read += nrows
                per_row = math.prod(shp[k] for k in range(1, ndim) if k not in kept)
                expected_parts.append(per_row if 0 in kept else per_row * nrows)
        if not parts:
            raise ValueError(f"every file was skipped as unreadable: {list(skipped or ())}")
        # One state per source, concatenated (axis 0 kept) or merged in source order.
        if 0 in kept:
            total = State(*(np.concatenate([p[k] for p in parts], axis=0) for k in range(4)))
            expected: Any = np.concatenate([np.full(p.shape, e, np.int64)
                                            for p, e in zip(parts, expected_parts)])
        else:
            total = parts[0]
            for p in parts[1:]:
                total = total.merge(p)
            expected = sum(expected_parts)
        return total, expected, rows_read

    # A compressed member is decompressed once: "raise" then omits NaNs in its single pass.
    can_rerun = not any(isinstance(src, StreamedMember) for src in sources)
    with progress_reporter(opts.progress, total_bytes, files=len(plans)) as report:
        total, expected, rows_read = run(kernel_omits(opts.nan_policy, floating, can_rerun), report,
                                         skipped)
    sample = None if fraction is None else rows_read / max(1, sum(p[-1][0] for p in plans))
    return finish(total, nan_policy=opts.nan_policy, floating=floating, expected=expected,
                  ddof=opts.ddof, sample=sample,
                  rerun=(lambda omit: run(omit)[0]) if can_rerun else None)


def _check_sample_axis(kept: Tuple[int, ...], opts: ComputeOptions) -> None:
    if 0 in kept:
        raise ValueError(f"sample= draws rows along axis 0, which axis={opts.axis!r} keeps; "
                         f"sample only when axis 0 is reduced")


def _logical_shape(src) -> Tuple[int, ...]:
    if isinstance(src, (ChunkedArray, StreamedMember)) and src.fortran:
        return tuple(reversed(src.shape))
    return tuple(src.shape)


def _materialize(src) -> np.ndarray:
    if isinstance(src, np.ndarray):
        return src
    if isinstance(src, FileArray):
        return np.memmap(src.path, dtype=src.dtype, mode="r", offset=src.offset, shape=src.shape,
                         order="F" if src.fortran else "C")
    if isinstance(src, StreamedMember):  # 0-d members only: larger ones are reduced piece by piece
        arr = np.frombuffer(src.read_exact(src.nbytes), dtype=src.dtype).reshape(src.shape)
        return arr.T if src.fortran else arr
    return src.read(0, src.shape[0])


def _name(src) -> str:
    return getattr(src, "path", type(src).__name__)
