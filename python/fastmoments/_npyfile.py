"""The layout of ``.npy`` files and ``.npz`` members, read from files fastmoments did not write.

The one owner of header reading and of every size derived from untrusted input (header shapes,
``shape=``, member sizes): each goes through :func:`checked_nbytes` before anything is allocated,
mapped or read. NumPy's own parser (``numpy.lib.format``, ``ast.literal_eval`` underneath) reads
the header dict, so nothing in a file is executed or unpickled.
"""

from __future__ import annotations

import math
import operator
import os
import struct
import threading
import zipfile
from dataclasses import dataclass
from typing import Any, BinaryIO, Sequence, Tuple, Union

import numpy as np

from ._dtypes import check_plain_dtype

# The most bytes an array may span: what NumPy can address (np.empty rejects larger shapes).
MAX_NBYTES = int(np.iinfo(np.intp).max)

# Deflate's largest expansion (258-byte matches at 2 bits each): 1032 bytes out per byte in.
MAX_INFLATE_RATIO = 1032

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
_ZIP_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., name length, extra length


def checked_nbytes(shape: Sequence[Any], itemsize: int, where: str) -> int:
    """Bytes of an array of ``shape`` and ``itemsize``, computed exactly.

    ``ValueError`` naming ``where`` for an entry that is not a non-negative integer, or a shape
    too big to address even when another axis is 0 (NumPy's rule: a zero does not excuse the
    other sizes, so every sub-product of the shape fits in an int64 afterwards).
    """
    dims = []
    for s in shape:
        if isinstance(s, (bool, np.bool_)):
            raise ValueError(f"{where}: corrupt shape {tuple(shape)!r}: {s!r} is not a size")
        try:
            d = operator.index(s)
        except TypeError:
            raise ValueError(f"{where}: corrupt shape {tuple(shape)!r}: {s!r} is not a size") from None
        if d < 0:
            raise ValueError(f"{where}: corrupt shape {tuple(shape)!r}: negative size {d}")
        dims.append(d)
    if math.prod(max(d, 1) for d in dims) * max(1, itemsize) > MAX_NBYTES:
        raise ValueError(f"{where}: corrupt shape {tuple(dims)!r}: {itemsize}-byte values of that "
                         f"shape need more than {MAX_NBYTES} bytes")
    return math.prod(dims) * itemsize


@dataclass(frozen=True)
class NpyHeader:
    """What a ``.npy`` header promises: the array's shape, order and dtype, and where its data
    starts (``offset``, from the start of the stream the header was read from)."""

    shape: Tuple[int, ...]
    fortran: bool
    dtype: np.dtype
    offset: int
    nbytes: int


# NumPy parses the header dict with ast.literal_eval, which on CPython 3.11 is not thread-safe:
# two threads parsing at once can fail with "SystemError: AST constructor recursion depth
# mismatch" (python/cpython#106905), which would read as a corrupt file. Headers are tiny; their
# parsing is serialized.
_HEADER_PARSE = threading.Lock()


def read_npy_header(f: BinaryIO, where: str) -> NpyHeader:
    """The header at ``f``'s position (every format version: 1.0, 2.0, 3.0), checked: a
    ``ValueError`` naming ``where`` for anything malformed, ``TypeError`` for a dtype the kernel
    cannot read. Leaves ``f`` at the first data byte."""
    start = f.tell()
    try:
        with _HEADER_PARSE:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):
                # 3.0 differs from 2.0 only by UTF-8 field names, which plain dtypes do not have.
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unknown .npy format version {version}")
    except Exception as exc:  # noqa: BLE001 -- untrusted header: NumPy's parser raises IndexError,
        # KeyError, SyntaxError, MemoryError, RecursionError, tokenize errors... on crafted ones
        raise ValueError(f"{where} is not a readable .npy file: {exc}") from None
    if not isinstance(shape, tuple):
        raise ValueError(f"{where} is not a readable .npy file: shape {shape!r} is not a tuple")
    check_plain_dtype(dtype, where)
    nbytes = checked_nbytes(shape, dtype.itemsize, f"{where} (.npy header)")
    return NpyHeader(tuple(int(s) for s in shape), bool(fortran), dtype, f.tell() - start, nbytes)


def npy_header_of_file(path: str, where: str, file_size: int) -> NpyHeader:
    """The header of the ``.npy`` file at ``path``, with its data checked to fit in the file."""
    with open(path, "rb") as f:
        head = read_npy_header(f, where)
    if file_size < head.offset + head.nbytes:
        raise ValueError(f"{where} is truncated: its header promises {head.offset + head.nbytes} "
                         f"bytes but the file has {file_size}")
    return head


def npz_member(zf: zipfile.ZipFile, path: str, member: Any) -> zipfile.ZipInfo:
    """The archive entry ``member`` names (``None``: the only one), or a ``ValueError``."""
    names = [i.filename for i in zf.infolist() if not i.filename.endswith("/")]
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
    if info.flag_bits & 0x1:
        raise ValueError(f"member {info.filename!r} of {path!r} is encrypted")
    if not info.filename:
        raise ValueError(f"{path!r} holds a member with an empty name: not an .npz archive")
    # Deflate expands at most 1032:1: a member claiming more holds no such data (a zip bomb's
    # header or a lie), and would otherwise be planned piece by piece for nothing.
    if info.compress_type != zipfile.ZIP_STORED and info.file_size > MAX_INFLATE_RATIO * info.compress_size + 4096:
        raise ValueError(f"member {info.filename!r} of {path!r} is corrupt: {info.file_size} bytes "
                         f"cannot be stored in {info.compress_size} compressed bytes")
    return info


def stored_member_data_start(f: BinaryIO, info: zipfile.ZipInfo, where: str, file_size: int) -> int:
    """Offset in the archive of an uncompressed member's first byte, from its local header."""
    if not 0 <= info.header_offset <= file_size - _ZIP_LOCAL_HEADER.size:
        raise ValueError(f"{where}: bad local zip header offset {info.header_offset}")
    f.seek(info.header_offset)
    local = f.read(_ZIP_LOCAL_HEADER.size)
    magic, name_len, extra_len = _ZIP_LOCAL_HEADER.unpack(local)
    if magic != ZIP_MAGIC:
        raise ValueError(f"{where}: bad local zip header")
    start = info.header_offset + _ZIP_LOCAL_HEADER.size + name_len + extra_len
    if start + info.file_size > file_size:
        raise ValueError(f"{where} is truncated: the member needs {start + info.file_size} bytes "
                         f"but the archive has {file_size}")
    return start


def load_npy(path: Union[str, bytes, "os.PathLike[str]"]) -> np.ndarray:
    """A read-only memory map of the ``.npy`` file at ``path`` (never read whole), its header
    checked first; ``ValueError`` naming the file for anything that is not a plain .npy array."""
    path = os.fsdecode(os.fspath(path))
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path!r}")
    npy_header_of_file(path, repr(path), os.path.getsize(path))
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path!r} is not a readable .npy file: {exc}") from None
    if not isinstance(arr, np.ndarray):
        if hasattr(arr, "close"):
            arr.close()
        raise ValueError(f"{path!r} is not a .npy file (an .npz archive? pass one member)")
    return arr
