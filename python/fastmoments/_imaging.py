"""Decoded files: NIfTI volumes (nibabel) and images (Pillow), reduced on a bounded pool of
threads and merged in file order.

Each NIfTI volume or image file is one sample: it reads as an array with a new leading axis of
length 1 (a volume of shape (X, Y, Z) as (1, X, Y, Z); an image as (1, H, W, C), channels last,
C = 1 for grayscale), so that a folder of N files of one shape is the array (N, ...) of their
stack, concatenated along axis 0 exactly as a list of ``.npy`` files is. Files whose reduced axes
differ in size (images of different sizes with ``axis=-1``) merge as well; kept axes must agree.

- uncompressed ``.nii`` without scaling and with a dtype the kernel reads: a ``FileArray`` at the
  data offset nibabel reports (Fortran order), read by the native pipeline in ``_stream``;
- other ``.nii`` / ``.nii.gz``: read (inflated) in pieces of whole slabs along the last axis,
  scaled piece by piece with nibabel's ``apply_read_scaling`` exactly as ``img.dataobj`` scales,
  each piece reduced by the kernel: a few MiB per thread whatever the volume size;
- PNG / JPEG / TIFF: decoded whole by Pillow and reduced in Pillow's own memory where it exports
  it (8-bit images, Pillow >= 11.2), else from ``np.asarray(image)``.

:class:`DecodedStates` runs them on ``threads`` worker threads, at most ``2 * threads`` files in
flight, and hands their states back in file order (the bits never depend on threads or timing).
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import math
import os
import threading
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np

from ._array import reduce_ndarray
from ._dtypes import check_plain_dtype, kernel_dtype
from ._moments import State
from ._progress import result_of

NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
ARRAY_SUFFIXES = (".npy", ".npz")
# Every file a directory contributes, matched case-insensitively.
READABLE_SUFFIXES = ARRAY_SUFFIXES + NIFTI_SUFFIXES + IMAGE_SUFFIXES
EXTRA_HINT = "pip install 'fastmoments[imaging]'"
# Bytes of a NIfTI volume read, scaled and reduced at a time by one worker.
PIECE_BYTES = 4 << 20
# Compressed bytes of a .nii.gz read at a time.
INPUT_BYTES = 4 << 20

# Pillow modes read as they are: mode -> channels.
_IMAGE_CHANNELS = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "I;16": 1, "I;16L": 1, "I;16B": 1,
                   "I": 1, "F": 1}
# Modes converted first (as image viewers show them): mode -> target mode.
_IMAGE_CONVERT = {"1": "L", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB",
                  "La": "LA", "RGBa": "RGBA", "RGBX": "RGB", "PA": "RGBA"}


def file_kind(path: str) -> Optional[str]:
    """"nifti", "image" or None (anything else), from the name's suffix."""
    low = path.lower()
    if low.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if low.endswith(IMAGE_SUFFIXES):
        return "image"
    return None


def list_directory(path: str, recursive: bool) -> List[str]:
    """The files of ``path`` fastmoments reads (by suffix), sorted by their path relative to it;
    hidden names (starting with ".") are left out. ``ValueError`` when there is none."""
    found: List[str] = []
    if recursive:
        for root, dirs, files in os.walk(path):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            found.extend(os.path.join(root, f) for f in files
                         if not f.startswith(".") and f.lower().endswith(READABLE_SUFFIXES))
    else:
        with os.scandir(path) as it:
            found = [e.path for e in it
                     if not e.name.startswith(".") and e.name.lower().endswith(READABLE_SUFFIXES)
                     and e.is_file()]
    found.sort(key=lambda p: os.path.relpath(p, path).split(os.sep))
    if not found:
        where = "or below " if recursive else ""
        raise ValueError(f"no readable files in {where}folder {path!r}: fastmoments reads "
                         + ", ".join(READABLE_SUFFIXES)
                         + ("" if recursive else " (recursive=True also reads sub-folders)"))
    return found


def _import(name: str, what: str, path: str):
    try:
        if name == "nibabel":
            import nibabel
            return nibabel
        from PIL import Image
        return Image
    except ImportError:
        raise ImportError(f"reading {what} file {path!r} needs {name}, an optional dependency: "
                          f"{EXTRA_HINT}") from None


# ---- sources --------------------------------------------------------------------------------------

@dataclass
class DecodedFile:
    """A NIfTI volume or an image file reduced by a worker thread. ``shape`` is the array it
    reads as (leading axis 1), ``dtype`` the dtype of its decoded values."""

    path: str
    kind: str
    shape: Tuple[int, ...]
    dtype: np.dtype
    file_bytes: int
    describe: str  # "RGB image", "int16 NIfTI volume" (for messages)
    reduce: Callable[["DecodedFile", Tuple[int, ...], bool], State] = field(repr=False)
    info: Any = field(default=None, repr=False)
    fortran: bool = False

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def open_file(path: str, kind: str, size: int):
    """The source for a NIfTI or image file (headers only; nothing is decoded here)."""
    if kind == "nifti":
        return _open_nifti(path, size)
    return _open_image(path, size)


def _cannot_read(path: str, what: str, exc: BaseException) -> ValueError:
    return ValueError(f"{path!r} is not a readable {what} file: {type(exc).__name__}: {exc}")


def _open_nifti(path: str, size: int):
    nib = _import("nibabel", "NIfTI", path)
    from ._stream import FileArray  # the native pipeline's source record

    try:
        img = nib.load(path, mmap=False, keep_file_open=False)
    except Exception as exc:  # noqa: BLE001 - nibabel raises many kinds for a bad header
        raise _cannot_read(path, "NIfTI", exc) from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ValueError(f"{path!r} is a {type(img).__name__}, not a NIfTI-1/2 image")
    proxy = img.dataobj
    raw = np.dtype(img.header.get_data_dtype())
    check_plain_dtype(raw, f"NIfTI file {path!r}")
    shape = tuple(int(s) for s in img.shape)
    if getattr(proxy, "order", "F") != "F":
        raise ValueError(f"NIfTI file {path!r}: unexpected data order {proxy.order!r}")
    slope, inter = _scaling(proxy)
    scaled = (float(slope), float(inter)) != (1.0, 0.0)
    out_dtype = _scaled_dtype(raw, slope, inter) if scaled else raw
    kernel_dtype(out_dtype)
    offset = int(proxy.offset)
    nbytes = math.prod(shape) * raw.itemsize
    compressed = path.lower().endswith(".gz")
    if not compressed and offset + nbytes > size:
        raise ValueError(f"NIfTI file {path!r} is truncated: its header promises {offset + nbytes} "
                         f"bytes, the file holds {size}")
    if not compressed and not scaled:
        return FileArray(path, offset, raw, (1,) + shape, fortran=True)
    what = f"{out_dtype} NIfTI volume" + (" (scaled)" if scaled else "")
    return DecodedFile(path, "nifti", (1,) + shape, out_dtype, size, what, _reduce_nifti,
                       info=(raw, offset, slope, inter, scaled))


def _scaling(proxy) -> Tuple[np.ndarray, np.ndarray]:
    """The slope and intercept as ``ArrayProxy._get_scaled`` prepares them (dtype=None)."""
    slope = np.asanyarray(getattr(proxy, "slope", 1.0))
    inter = np.asanyarray(getattr(proxy, "inter", 0.0))
    if np.can_cast(inter, slope.dtype):
        inter = inter.astype(slope.dtype)
    return slope, inter


def _apply_scaling(raw: np.ndarray, slope, inter) -> np.ndarray:
    from nibabel.volumeutils import apply_read_scaling

    return apply_read_scaling(raw, slope, inter)


def _scaled_dtype(raw: np.dtype, slope, inter) -> np.dtype:
    """nibabel's output dtype depends on the dtypes and scale factors, never on the values."""
    return np.dtype(_apply_scaling(np.zeros(2, raw), slope, inter).dtype)


def _reduce_nifti(src: DecodedFile, kept: Tuple[int, ...], omit: bool) -> State:
    """Reads the volume in slabs along its last axis (contiguous in Fortran order), scales each as
    nibabel does and reduces it; slab states concatenate (last axis kept) or merge, in order."""
    raw, offset, slope, inter, scaled = src.info
    shape = src.shape
    if math.prod(shape) == 0:
        return reduce_ndarray(np.zeros(shape, src.dtype), kept, omit=omit, threads=1)
    last = len(shape) - 1
    slab_elems = math.prod(shape[:-1])
    per = max(1, PIECE_BYTES // max(1, slab_elems * raw.itemsize))
    out_axis = len(kept) - 1 if last in kept else None
    parts: List[State] = []
    total: Optional[State] = None
    try:
        with open(src.path, "rb") as f:
            inflate = _Inflater(f) if src.path.lower().endswith(".gz") else None
            read = f.read if inflate is None else inflate.read
            if len(read(offset)) != offset:
                raise ValueError(f"NIfTI file {src.path!r} is truncated before its data offset")
            for start in range(0, shape[-1], per):
                n = min(per, shape[-1] - start)
                want = n * slab_elems * raw.itemsize
                buf = read(want)
                if len(buf) != want:
                    raise ValueError(f"NIfTI file {src.path!r} is truncated: its data ends before "
                                     f"the {shape[1:]} values its header promises")
                piece = np.frombuffer(buf, raw).reshape(shape[:-1] + (n,), order="F")
                if scaled:
                    piece = _apply_scaling(piece, slope, inter)
                state = reduce_ndarray(piece, kept, omit=omit, threads=1)
                if out_axis is not None:
                    parts.append(state)
                else:
                    total = state if total is None else total.merge(state)
            if inflate is not None:
                inflate.finish(src.path)
    except ValueError as exc:
        if src.path in str(exc):
            raise
        raise _cannot_read(src.path, "NIfTI", exc) from exc
    except Exception as exc:  # noqa: BLE001 - OSError, zlib.error: an unreadable or corrupt file
        raise _cannot_read(src.path, "NIfTI", exc) from exc
    if out_axis is not None:
        return State(*(np.concatenate([p[k] for p in parts], axis=out_axis) for k in range(4)))
    assert total is not None
    return total


def inflater():
    """The zlib-compatible module that inflates ``.nii.gz``: ISA-L (``isal``, part of the
    ``imaging`` extra; 2-3x zlib's rate, same bytes) when installed, else ``zlib``. Both release
    the GIL while they inflate."""
    if INFLATER == "zlib":
        return zlib
    try:
        from isal import isal_zlib
    except ImportError:
        return zlib
    return isal_zlib


# "auto": ISA-L when installed, else zlib; "zlib" forces zlib (tests, benchmarks).
INFLATER = "auto"


class _Inflater:
    """Exactly ``n`` inflated bytes per :meth:`read` from a gzip file, reading 4 MiB of compressed
    input at a time (one inflate call per piece, without the GIL; members that follow one another,
    as bgzip writes them, are read in turn; zero padding after the last member is allowed).
    :meth:`finish` reads to the end of the member, so the CRC in its trailer is verified."""

    def __init__(self, f):
        self._f = f
        self._zlib = inflater()
        self._z = self._zlib.decompressobj(31)
        self._data = b""
        self._ended = False  # the last member is complete and only zeros (or nothing) follow

    def _more(self) -> bool:
        chunk = self._f.read(INPUT_BYTES)
        self._data = self._data + chunk if self._data else chunk
        return bool(chunk)

    def read(self, n: int) -> bytes:
        parts: List[bytes] = []
        got = 0
        while got < n and not self._ended:
            if self._z.eof:
                if not self._data.strip(b"\0"):
                    self._data = b""
                    if not self._more():
                        self._ended = True
                    continue
                self._z = self._zlib.decompressobj(31)
            # Enough input that one call fills the piece (a short call means a join: a copy).
            if len(self._data) < INPUT_BYTES // 2 and not self._more() and not self._data:
                break  # the compressed data ended early: a short read
            chunk = self._z.decompress(self._data, n - got)
            self._data = self._z.unused_data if self._z.eof else self._z.unconsumed_tail
            parts.append(chunk)
            got += len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def finish(self, path: str) -> None:
        """Reads to the end of the member (bytes past the volume are allowed), which checks the
        CRC in its trailer; ``ValueError`` when the stream is cut short."""
        while not self._z.eof:
            if not self._data and not self._more():
                raise ValueError(f"gzip stream of {path!r} is truncated")
            self._z.decompress(self._data, PIECE_BYTES)
            self._data = self._z.unused_data if self._z.eof else self._z.unconsumed_tail


def _image_target(img) -> str:
    mode = img.mode
    if mode == "P":
        return "RGBA" if "transparency" in img.info else "RGB"
    return _IMAGE_CONVERT.get(mode, mode)


def _open_image(path: str, size: int) -> DecodedFile:
    Image = _import("Pillow", "image", path)
    try:
        with Image.open(path) as img:
            frames = getattr(img, "n_frames", 1)
            target = _image_target(img)
            width, height = img.size
    except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds for a bad file
        raise _cannot_read(path, "image", exc) from exc
    if frames != 1:
        raise ValueError(f"image file {path!r} holds {frames} frames; fastmoments reads "
                         f"single-frame images (split the pages first)")
    if target not in _IMAGE_CHANNELS:
        raise ValueError(f"image file {path!r} has Pillow mode {target!r}, which fastmoments does "
                         f"not read; convert it to L, RGB or RGBA")
    dtype = _image_dtype(target)
    channels = _IMAGE_CHANNELS[target]
    return DecodedFile(path, "image", (1, height, width, channels), dtype, size,
                       f"{target} image ({channels} channel{'s' if channels > 1 else ''})",
                       _reduce_image, info=target)


def _image_dtype(mode: str) -> np.dtype:
    return {"I;16": np.dtype("<u2"), "I;16L": np.dtype("<u2"), "I;16B": np.dtype(">u2"),
            "I": np.dtype(np.int32), "F": np.dtype(np.float32)}.get(mode, np.dtype(np.uint8))


def _reduce_image(src: DecodedFile, kept: Tuple[int, ...], omit: bool) -> State:
    from PIL import Image

    try:
        with Image.open(src.path) as img:
            img.load()
            target = _image_target(img)
            if target != src.info:
                raise ValueError(f"image file {src.path!r} changed while being read")
            if img.mode != target:
                img = img.convert(target)
            pixels = _shared_pixels(img, src.shape)
            if pixels is not None and pixels.shape[-1] != src.shape[-1] and 3 not in kept:
                pixels = None  # the padding byte of RGB would join the channels reduced together
            if pixels is None:
                pixels = np.asarray(img).reshape(src.shape)
            state = reduce_ndarray(pixels, kept, omit=omit, threads=1)
    except ValueError as exc:
        if src.path in str(exc):
            raise
        raise _cannot_read(src.path, "image", exc) from exc
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt image data
        raise _cannot_read(src.path, "image", exc) from exc
    if pixels.shape[-1] != src.shape[-1]:  # RGB stored as RGBX: drop the padding channel's state
        state = State(*(a[..., :src.shape[-1]] for a in state.arrays))
    return state


# ---- Pillow's pixel memory, without a copy -------------------------------------------------------
# ``np.asarray(image)`` copies the decoded pixels twice while holding the GIL (Pillow's
# ``tobytes`` encodes them in 64 KiB pieces, then joins them): 13% of a JPEG's decode time on one
# thread, and work the other decoding threads wait for. Pillow >= 11.2 exports its own pixel memory
# through the Arrow C data interface (``Image.__arrow_c_array__``): a struct whose layout is a
# stable ABI, read here with ctypes. L, RGB and RGBA only (L as bytes, RGB and RGBA as 4 bytes per
# pixel, RGB padded by a fourth byte); anything else (LA keeps L and A in bytes 0 and 3), an
# image Pillow keeps in several blocks, or RGB whose channels are reduced together (axis=None:
# the padding would join them), is read by ``np.asarray``.

class _ArrowArray(ctypes.Structure):
    pass


_ArrowArray._fields_ = [
    ("length", ctypes.c_int64), ("null_count", ctypes.c_int64), ("offset", ctypes.c_int64),
    ("n_buffers", ctypes.c_int64), ("n_children", ctypes.c_int64),
    ("buffers", ctypes.POINTER(ctypes.c_void_p)),
    ("children", ctypes.POINTER(ctypes.POINTER(_ArrowArray))),
    ("dictionary", ctypes.c_void_p), ("release", ctypes.c_void_p), ("private_data", ctypes.c_void_p)]

_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]

# Pillow mode -> bytes per pixel in its memory (Arrow: "C" bytes, or a fixed-size list "+w:4").
_SHARED_MODES = {"L": 1, "RGB": 4, "RGBA": 4}


class _Pixels:
    """Owns the exported Arrow array (its capsules release it) for as long as a NumPy view of
    its bytes lives (the view's ``base``)."""

    def __init__(self, capsules: Tuple[Any, Any], address: int, shape: Tuple[int, ...]):
        self._capsules = capsules
        self.__array_interface__ = {"data": (address, True), "shape": shape, "typestr": "|u1",
                                    "version": 3}


def _shared_pixels(img, shape: Tuple[int, ...]) -> Optional[np.ndarray]:
    """A read-only (1, H, W, bytes per pixel) view of the loaded image's own memory, or None."""
    per_pixel = _SHARED_MODES.get(img.mode)
    if per_pixel is None or not hasattr(img, "__arrow_c_array__"):
        return None
    try:
        capsules = img.__arrow_c_array__()
    except Exception:  # noqa: BLE001 - e.g. an image Pillow keeps in several blocks
        return None
    arr = ctypes.cast(_capsule_pointer(capsules[1], b"arrow_array"),
                      ctypes.POINTER(_ArrowArray)).contents
    pixels = shape[1] * shape[2]
    if per_pixel > 1:
        if arr.n_children != 1 or arr.length != pixels or arr.offset != 0:
            return None
        arr = arr.children[0].contents
    if (arr.length != pixels * per_pixel or arr.offset != 0 or arr.null_count != 0
            or arr.n_buffers != 2 or not arr.buffers[1]):
        return None
    return np.asarray(_Pixels(capsules, arr.buffers[1], (1, shape[1], shape[2], per_pixel)))


def check_same_channels(sources: Sequence[Any]) -> None:
    """``ValueError`` naming the first image whose channels differ from the first image's."""
    first = None
    for s in sources:
        if isinstance(s, DecodedFile) and s.kind == "image":
            if first is None:
                first = s
            elif s.shape[-1] != first.shape[-1]:
                raise ValueError(
                    f"{s.path!r} is an {s.describe} but {first.path!r} before it is an "
                    f"{first.describe}: images read together must have the same channels "
                    f"(convert them, e.g. with Pillow's Image.convert('RGB'))")


# ---- the pool -------------------------------------------------------------------------------------

class DecodedStates:
    """States of ``sources`` (DecodedFile) in their order, reduced by ``threads`` workers with at
    most ``2 * threads`` files in flight. :meth:`next` returns the next file's state or raises
    the ``ValueError`` that names it; :meth:`close` cancels what is queued and waits for the
    running files, so nothing is left running."""

    def __init__(self, sources: Sequence[DecodedFile], kept: Tuple[int, ...], omit: bool,
                 threads: int):
        self._todo = iter(sources)
        self._kept, self._omit = kept, omit
        self._stop = threading.Event()
        workers = max(1, min(threads, len(sources)))
        self._depth = 2 * workers
        self._pending: deque = deque()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="fastmoments-decode") if sources else None
        self._fill()

    def _run(self, src: DecodedFile) -> Optional[State]:
        if self._stop.is_set():
            return None
        return src.reduce(src, self._kept, self._omit)

    def _fill(self) -> None:
        while self._pool is not None and len(self._pending) < self._depth and not self._stop.is_set():
            src = next(self._todo, None)
            if src is None:
                return
            self._pending.append((src, self._pool.submit(self._run, src)))

    def next(self) -> Tuple[DecodedFile, State]:
        src, fut = self._pending.popleft()
        try:
            return src, result_of(fut)
        finally:
            self._fill()

    def close(self) -> None:
        self._stop.set()
        for _, fut in self._pending:
            fut.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> "DecodedStates":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
