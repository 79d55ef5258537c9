"""Crafted untrusted files for fastmoments (issue 17) and the child process that runs them.

Independent of fastmoments' own header reading: every file is assembled byte by byte here
(``.npy`` headers from text, zip archives from struct-packed local/central headers), so a
header NumPy would never write (shape ``(1, 2**62+1, 4)``, ``(-1, 4)``, a v2 length past EOF)
is as easy to make as a valid one.

``build_corpus(directory)`` writes the files and returns :class:`Case` objects;
``tests/test_untrusted.py`` runs each case through every door in a child process
(``python tests/untrusted_corpus.py --run`` reads the jobs on stdin and prints one JSON line per
door) so that a signal or a hang fails one test instead of killing pytest. ``python tests/untrusted_corpus.py --write DIR``
writes the files alone (the fuzz target's seeds are made from them).
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

# Doors every case goes through, in this order (the child reports one JSON line per door).
DOORS = ("numpy", "axis_m1", "axis_none", "accumulator", "sample", "cli")
# Peak RSS a door may add on a compressed member, whatever its uncompressed size (issue 17 row 3).
BOMB_RSS_LIMIT = 64 << 20
# The child ends itself past this RSS (every file is small; the bombs inflate to 192 MiB).
CHILD_RSS_LIMIT = 1536 << 20
MARKER = "PWNED"  # a pickle payload in the corpus would create this directory if unpickled


# ---- file builders --------------------------------------------------------------------------------

def npy_bytes(header: str, data: bytes = b"", version: Tuple[int, int] = (1, 0),
              magic: bytes = b"\x93NUMPY", header_len: Optional[int] = None) -> bytes:
    """A .npy file with the header dict text ``header`` (any text), padded as NumPy pads it."""
    enc = "latin1" if version[0] < 3 else "utf8"
    text = header.encode(enc)
    len_fmt = "<H" if version[0] < 2 else "<I"
    pre = len(magic) + 2 + struct.calcsize(len_fmt)
    pad = (-(pre + len(text) + 1)) % 64
    text = text + b" " * pad + b"\n"
    n = len(text) if header_len is None else header_len
    return magic + bytes(version) + struct.pack(len_fmt, n) + text + data


def hdr(descr: str, shape: Any, fortran: Any = False) -> str:
    """Header dict text; ``shape`` is put in verbatim when a string."""
    s = shape if isinstance(shape, str) else repr(tuple(shape))
    return f"{{'descr': {descr!r}, 'fortran_order': {fortran!r}, 'shape': {s}, }}"


def valid_npy(arr: np.ndarray, version: Tuple[int, int] = (1, 0)) -> bytes:
    fortran = arr.flags.f_contiguous and not arr.flags.c_contiguous
    data = arr.tobytes(order="F" if fortran else "C")
    return npy_bytes(hdr(np.lib.format.dtype_to_descr(arr.dtype), arr.shape, fortran), data, version)


@dataclass
class Member:
    name: Any                 # str, or bytes written as they are
    payload: bytes            # the member's uncompressed bytes
    method: int = 0           # 0 stored, 8 deflated, 12 bzip2, 14 lzma (only 0/8 built here)
    flags: int = 0
    crc: Optional[int] = None             # None: the right CRC
    size: Optional[int] = None            # uncompressed size to record (None: the real one)
    offset_delta: int = 0                 # added to the local-header offset in the central dir


def zip_bytes(members: Sequence[Member]) -> bytes:
    """A zip archive built field by field (lets tests lie in any header)."""
    out = bytearray()
    central = bytearray()
    for m in members:
        if m.method == 8:
            co = zlib.compressobj(9, zlib.DEFLATED, -15)
            comp = co.compress(m.payload) + co.flush()
        elif m.method == 0:
            comp = m.payload
        else:
            raise ValueError(m.method)
        crc = zlib.crc32(m.payload) if m.crc is None else m.crc
        size = len(m.payload) if m.size is None else m.size
        name = m.name if isinstance(m.name, bytes) else m.name.encode()
        offset = len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, m.flags, m.method, 0, 0x21,
                           crc, len(comp), size, len(name), 0) + name + comp
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, m.flags, m.method, 0,
                               0x21, crc, len(comp), size, len(name), 0, 0, 0, 0, 0,
                               offset + m.offset_delta) + name
    cd_offset = len(out)
    out += central
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central),
                       cd_offset, 0)
    return bytes(out)


def bomb_npz(shape: Tuple[int, ...], dtype: str = "|u1") -> bytes:
    """A deflated .npz member of zeros: one compressed MiB of zeros, fully flushed (so it stands
    alone), repeated; the array's size must be a whole number of MiB."""
    header = npy_bytes(hdr(dtype, shape))
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    mib = 1 << 20
    assert nbytes % mib == 0
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = co.compress(header) + co.flush(zlib.Z_FULL_FLUSH)
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = co.compress(bytes(mib)) + co.flush(zlib.Z_FULL_FLUSH)
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    comp = head + piece * (nbytes // mib) + co.flush()  # ends with an empty final block
    crc = zlib.crc32(header)
    zeros = bytes(mib)
    for _ in range(nbytes // mib):
        crc = zlib.crc32(zeros, crc)
    name = b"arr_0.npy"
    total = len(header) + nbytes
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, len(comp), total,
                        len(name), 0) + name
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0x21, crc, len(comp),
                          total, len(name), 0, 0, 0, 0, 0, 0) + name
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), len(local) + len(comp), 0)
    return local + comp + central + end


class _Payload:
    """Unpickling this runs os.mkdir(marker): proof that a file was unpickled."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


# ---- cases ----------------------------------------------------------------------------------------

@dataclass
class Case:
    """One crafted input. ``spec`` is what the child gets; the test judges its JSON lines.

    expect: "numpy" (the result NumPy's loader gives, or an error where it refuses the file),
    "error" (an error whatever NumPy does: FIFOs, /proc and device files).
    """

    name: str
    path: str                         # what is passed to compute (may hold '::member')
    file: str                         # the file on disk (its basename must be in error messages)
    expect: str = "numpy"
    kwargs: Dict[str, Any] = field(default_factory=dict)   # dtype=/shape= for raw files
    member: Optional[str] = None      # .npz member NumPy's reference reads
    rows: Tuple[int, ...] = ()        # issue 17 rows the case reproduces
    bomb: Optional[Dict[str, Any]] = None   # {"count":, "mean":, "var":} for axis=None; RSS bounded
    doors: Tuple[str, ...] = DOORS
    name_required: bool = True        # errors must name the file (False: usage errors)
    typeerror_ok: bool = False        # a header dtype NumPy expands (subarray): TypeError is fine

    def spec(self) -> Dict[str, Any]:
        return {"name": self.name, "path": self.path, "file": self.file, "expect": self.expect,
                "kwargs": self.kwargs, "member": self.member, "bomb": self.bomb,
                "doors": list(self.doors)}  # what the child needs


WRAP = 2**62 + 1  # (1, WRAP, 4) u1: 4 * (2**62+1) wraps int64 to 4


def _cases() -> List[Tuple[str, Any, Dict[str, Any]]]:
    """(file name, bytes or special, Case fields) for every corpus entry."""
    rng = np.random.default_rng(17)
    f4 = (1000 + 10 * rng.standard_normal((8, 3))).astype("<f4")
    u1 = rng.integers(0, 255, (5, 4), dtype=np.uint8)
    out: List[Tuple[str, Any, Dict[str, Any]]] = []

    def add(fname, content, **kw):
        out.append((fname, content, kw))

    # -- valid controls: the doors must give NumPy's numbers
    add("valid_f4.npy", valid_npy(f4))
    add("valid_u1_fortran.npy", valid_npy(np.asfortranarray(rng.integers(0, 9, (3, 4, 2), dtype=np.uint8))))
    add("valid_f8_bigendian.npy", valid_npy(rng.standard_normal((5, 2)).astype(">f8")))
    add("valid_i2_1d.npy", valid_npy(rng.integers(-500, 500, 7).astype("<i2")))
    add("valid_0d.npy", valid_npy(np.array(3.5)))
    add("valid_v2.npy", valid_npy(f4, (2, 0)))
    add("valid_v3.npy", valid_npy(f4, (3, 0)))
    add("valid_empty_rows.npy", valid_npy(np.zeros((0, 4), "<f4")))
    add("valid_empty_cols.npy", valid_npy(np.zeros((3, 0), "<f4")))
    add("shape_bool_dim.npy", npy_bytes(hdr("<f4", "(True, 3)"), f4[:1].tobytes()))
    add("trailing_bytes.npy", npy_bytes(hdr("<f4", (2, 3)), f4[:2].tobytes() + b"extra"))

    # -- wrapping and absurd shapes (issue 17 rows 1, 2)
    add("wrap_132.npy", npy_bytes(hdr("|u1", (1, WRAP, 4)), bytes([1, 2, 3, 4])), rows=(1,))
    add("wrap_132_fortran.npy", npy_bytes(hdr("|u1", (1, WRAP, 4), True), bytes([1, 2, 3, 4])), rows=(1,))
    add("wrap_f4.npy", npy_bytes(hdr("<f4", (2**61 + 1, 2)), f4[:1, :2].tobytes()), rows=(1,))
    add("neg_dim.npy", npy_bytes(hdr("<f4", (-1, 4)), f4[:4, :3].tobytes() + bytes(4)), rows=(2,))
    add("neg_dims_product_positive.npy", npy_bytes(hdr("<f4", (-2, -2)), f4[:2, :2].tobytes()), rows=(2,))
    add("dim_2p63.npy", npy_bytes(hdr("|u1", (2**63,)), bytes(8)), rows=(2,))
    add("dim_2p64.npy", npy_bytes(hdr("|u1", (2**64 + 4,)), bytes(4)), rows=(2,))
    add("product_wraps_zero.npy", npy_bytes(hdr("|u1", (2**32, 2**32)), b""), rows=(2,))
    add("product_wraps_negative.npy", npy_bytes(hdr("<i2", (2**62, 2)), bytes(8)), rows=(2,))
    add("zero_with_huge.npy", npy_bytes(hdr("<f4", (0, 2**62))), rows=(2,))
    add("huge_with_zero.npy", npy_bytes(hdr("<f4", (2**62, 0))), rows=(2,))
    add("huge_rows_no_data.npy", npy_bytes(hdr("<f8", (2**40, 3)), bytes(24)))
    add("float_dim.npy", npy_bytes(hdr("<f4", "(2.0, 3)"), f4[:2].tobytes()))
    add("shape_not_tuple.npy", npy_bytes(hdr("<f4", "6"), f4[:2].tobytes()))

    # -- truncated, bad magic, versions, header lengths
    add("truncated_data.npy", npy_bytes(hdr("<f4", (100, 4)), f4.tobytes()[:40]))
    add("truncated_header.npy", valid_npy(f4)[:40])
    add("magic_only.npy", b"\x93NUMPY")
    add("empty.npy", b"")
    add("bad_magic.npy", npy_bytes(hdr("<f4", (8, 3)), f4.tobytes(), magic=b"\x93NUMPZ"))
    for ver in ((0, 0), (1, 1), (4, 0), (255, 255)):
        add(f"version_{ver[0]}_{ver[1]}.npy", npy_bytes(hdr("<f4", (8, 3)), f4.tobytes(), ver))
    add("hlen_past_eof_v1.npy", npy_bytes(hdr("<f4", (8, 3)), f4.tobytes(), header_len=65535))
    add("hlen_past_eof_v2.npy", npy_bytes(hdr("<f4", (8, 3)), f4.tobytes(), (2, 0), header_len=2**32 - 1))
    add("hlen_zero.npy", npy_bytes(hdr("<f4", (8, 3)), f4.tobytes(), header_len=0))
    add("v3_utf8_header.npy", npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (8, 3), 'é': 1}",
                                        f4.tobytes(), (3, 0)))

    # -- header text that is not a valid dict
    add("header_list.npy", npy_bytes("[1, 2, 3]", f4.tobytes()))
    add("header_not_python.npy", npy_bytes("{'descr': '<f4', 'shape': (8, 3", f4.tobytes()))
    add("header_missing_shape.npy", npy_bytes("{'descr': '<f4', 'fortran_order': False}", f4.tobytes()))
    add("header_extra_key.npy", npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (8, 3), 'x': 1}",
                                          f4.tobytes()))
    add("header_code.npy", npy_bytes("{'descr': __import__('os').mkdir('" + MARKER + "'), "
                                     "'fortran_order': False, 'shape': (8, 3)}", f4.tobytes()))
    add("header_huge_int.npy", npy_bytes(hdr("<f4", "(" + "9" * 5000 + ",)"), f4.tobytes()))
    add("header_nested.npy", npy_bytes(hdr("<f4", "(" * 200 + ")" * 200), f4.tobytes()))
    add("header_unclosed_nesting.npy", npy_bytes(hdr("<f4", "(" * 2000), f4.tobytes()))
    # found by the fuzzer: a starred expression 200 deep makes Python's parser raise MemoryError
    add("header_deep_nesting.npy", npy_bytes(hdr("<f4", "(" * 95 + "*" + "(" * 104 + ")" * 200),
                                             f4.tobytes()))

    # -- dtypes fastmoments does not read (TypeError naming the file) or NumPy refuses
    obj = pickle.dumps(np.array([_Payload(MARKER)], dtype=object), protocol=2)
    add("object_pickle.npy", npy_bytes(hdr("|O", (1,)), obj))
    add("structured.npy", npy_bytes(hdr("TEMPLATE", (3,)).replace("'TEMPLATE'", "[('a', '<f4'), ('b', '<i4')]"),
                                    bytes(24)))
    add("subarray.npy", npy_bytes(hdr("TEMPLATE", (3,)).replace("'TEMPLATE'", "('<f4', (2,))"), bytes(24)),
        typeerror_ok=True)
    add("complex.npy", valid_npy(np.ones((2, 3), "<c8")))
    add("datetime.npy", valid_npy(np.zeros(3, "<M8[D]")))
    add("unicode.npy", valid_npy(np.array(["ab", "cd"])))
    add("void.npy", npy_bytes(hdr("|V4", (3,)), bytes(12)))
    add("longdouble.npy", npy_bytes(hdr("<f16", (3,)), bytes(48)))
    add("descr_nonsense.npy", npy_bytes(hdr("zz9", (3,)), bytes(12)))
    add("descr_not_str.npy", npy_bytes(hdr("TEMPLATE", (3,)).replace("'TEMPLATE'", "5"), bytes(12)))

    # -- fortran_order variants
    add("fortran_int.npy", npy_bytes(hdr("<f4", (8, 3), 1), f4.tobytes()))
    add("fortran_str.npy", npy_bytes(hdr("<f4", (8, 3), "True"), f4.tobytes()))
    add("fortran_truncated.npy", npy_bytes(hdr("<f4", (100, 3), True), f4.tobytes()))
    add("fortran_neg_dim.npy", npy_bytes(hdr("<f4", (4, -1), True), f4[:2, :2].tobytes()), rows=(2,))
    add("fortran_1d.npy", npy_bytes(hdr("<f4", (6,), True), f4[:2].tobytes()))

    # -- .npz members, stored and deflated
    for method, tag in ((0, "stored"), (8, "deflated")):
        mk = lambda payload, **kw: zip_bytes([Member("arr_0.npy", payload, method, **kw)])
        add(f"npz_{tag}_valid.npz", mk(valid_npy(f4)), member="arr_0")
        add(f"npz_{tag}_fortran.npz", mk(valid_npy(np.asfortranarray(u1))), member="arr_0")
        add(f"npz_{tag}_wrap_132.npz", mk(npy_bytes(hdr("|u1", (1, WRAP, 4)), bytes([1, 2, 3, 4]))),
            member="arr_0", rows=(1,))
        add(f"npz_{tag}_neg_dim.npz", mk(npy_bytes(hdr("<f4", (-1, 4)), bytes(16))), member="arr_0", rows=(2,))
        add(f"npz_{tag}_dim_2p63.npz", mk(npy_bytes(hdr("|u1", (2**63,)), bytes(8))), member="arr_0", rows=(2,))
        add(f"npz_{tag}_huge_rows.npz", mk(npy_bytes(hdr("<f8", (2**50, 3)), bytes(24))), member="arr_0")
        add(f"npz_{tag}_truncated.npz", mk(npy_bytes(hdr("<f4", (100, 3)), f4.tobytes())), member="arr_0")
        add(f"npz_{tag}_not_npy.npz", mk(b"just some text, not an array"), member="arr_0")
        add(f"npz_{tag}_object.npz", mk(npy_bytes(hdr("|O", (1,)), obj)), member="arr_0")
        add(f"npz_{tag}_bad_crc.npz", mk(valid_npy(f4), crc=0x12345678), member="arr_0")
        add(f"npz_{tag}_encrypted.npz", mk(valid_npy(f4), flags=1), member="arr_0")
        add(f"npz_{tag}_offset_past_eof.npz", mk(valid_npy(f4), offset_delta=1 << 20), member="arr_0")
        add(f"npz_{tag}_offset_inside.npz", mk(valid_npy(f4), offset_delta=7), member="arr_0")
        add(f"npz_{tag}_size_lies.npz", mk(valid_npy(f4), size=64), member="arr_0")
    add("npz_two_members.npz", zip_bytes([Member("a.npy", valid_npy(f4)), Member("b.npy", valid_npy(u1), 8)]),
        member="b", path_suffix="::b")
    add("npz_two_members_unnamed.npz", zip_bytes([Member("a.npy", valid_npy(f4)),
                                                  Member("b.npy", valid_npy(u1), 8)]), expect="error")
    add("npz_empty.npz", zip_bytes([]), expect="error")
    bad_cd = bytearray(zip_bytes([Member("arr_0.npy", valid_npy(f4), 8)]))
    bad_cd[-6:-2] = struct.pack("<I", 0xFFFF0000)  # central directory offset past EOF
    add("npz_bad_central_offset.npz", bytes(bad_cd), member="arr_0")
    shifted = bytearray(zip_bytes([Member("arr_0.npy", valid_npy(f4))]))
    cd_at = struct.unpack("<I", shifted[-6:-2])[0]
    shifted[-6:-2] = struct.pack("<I", cd_at + 100)  # members appear to start 100 bytes early
    add("npz_stored_negative_offset.npz", bytes(shifted), member="arr_0")
    add("npz_empty_member_name.npz", zip_bytes([Member("", valid_npy(f4))]), expect="error")
    add("npz_member_name_not_utf8.npz", zip_bytes([Member(b"\x9e\x8d.npy", valid_npy(f4), flags=0x800)]),
        expect="error")
    add("npz_truncated_archive.npz", zip_bytes([Member("arr_0.npy", valid_npy(f4))])[:100])
    add("npz_missing_member.npz", zip_bytes([Member("arr_0.npy", valid_npy(f4))]), path_suffix="::nope",
        expect="error")

    # -- zip bombs: a small .npz holding a big array (issue 17 row 3); zeros, so the answers are known
    n_row = 192 << 20
    add("bomb_one_row.npz", lambda: bomb_npz((2, n_row // 2)), rows=(3,),
        bomb={"count": n_row, "mean": 0.0, "var": 0.0}, doors=("axis_none", "sample", "cli"))
    add("bomb_rows.npz", lambda: bomb_npz((n_row // 64, 64)), rows=(3,),
        bomb={"count": n_row, "mean": 0.0, "var": 0.0}, doors=("axis_m1", "axis_none", "sample"))
    add("bomb_wide_rows.npz", lambda: bomb_npz((48, 4 << 20)), rows=(3,),
        bomb={"count": 48 * (4 << 20), "mean": 0.0, "var": 0.0}, doors=("axis_none", "sample"))

    # -- raw files with dtype=/shape=
    raw = f4.tobytes()  # 96 bytes
    add("raw_ok.bin", raw, kwargs={"dtype": "<f4", "shape": [8, 3]})
    add("raw_minus_one.bin", raw, kwargs={"dtype": "<f4", "shape": [-1, 3]})
    add("raw_no_shape.bin", raw, kwargs={"dtype": "<f4"})
    add("raw_size_mismatch.bin", raw, kwargs={"dtype": "<f4", "shape": [8, 4]})
    add("raw_not_whole_rows.bin", raw + b"xy", kwargs={"dtype": "<f4", "shape": [-1, 3]})
    add("raw_itemsize_mismatch.bin", raw[:-1], kwargs={"dtype": "<f8"})
    add("raw_wrap_shape.bin", raw[:4], kwargs={"dtype": "|u1", "shape": [1, WRAP, 4]}, rows=(1, 2))
    add("raw_2p63.bin", raw[:8], kwargs={"dtype": "|u1", "shape": [2**63]}, rows=(2,))
    add("raw_neg_shape.bin", raw, kwargs={"dtype": "<f4", "shape": [-2, 3]}, name_required=False)
    add("raw_two_minus_one.bin", raw, kwargs={"dtype": "<f4", "shape": [-1, -1]}, name_required=False)
    add("raw_zero_row.bin", raw, kwargs={"dtype": "<f4", "shape": [-1, 0]})
    add("raw_empty_file.bin", b"", kwargs={"dtype": "<f4", "shape": [-1, 3]})
    add("raw_empty_bigendian.bin", b"", kwargs={"dtype": ">f4"}, rows=(8,))
    add("empty_bigendian.npy", valid_npy(np.zeros((0,), ">f4")), rows=(8,))
    add("raw_object_dtype.bin", raw, kwargs={"dtype": "O"}, name_required=False)
    add("raw_complex_dtype.bin", raw, kwargs={"dtype": "<c8"}, name_required=False)

    # -- not regular files (issue 17 row 14): a clear error, never a blocking open or an empty result
    add("fifo", "FIFO", expect="error", rows=(14,))
    add("fifo_raw", "FIFO", kwargs={"dtype": "|u1"}, expect="error", rows=(14,))
    add("proc_status", "/proc/self/status", kwargs={"dtype": "|u1"}, expect="error", rows=(14,))
    add("proc_status_npy", "/proc/self/status", expect="error")
    add("dev_zero_raw", "/dev/zero", kwargs={"dtype": "<f4"}, expect="error", rows=(14,))
    add("directory", "DIR", expect="error")
    add("missing_file.npy", "MISSING", expect="error")
    add("symlink_loop.npy", "LOOP", expect="error")

    # -- found by the fuzz target (kept last so that earlier seeds keep their names)
    # NumPy's descr_to_dtype indexes descr[1] of a tuple descr: a 1-tuple raised IndexError through
    # the header reader (found by the fuzz target in CI, issue 17); a list descr is a record dtype.
    add("descr_short_tuple.npy", npy_bytes(hdr("TEMPLATE", (3,)).replace("'TEMPLATE'", "('<f4',)"), bytes(12)))
    add("descr_bad_record.npy", npy_bytes(hdr("TEMPLATE", (3,)).replace("'TEMPLATE'", "[('a',)]"), bytes(12)),
        typeerror_ok=True)
    return out


def _write(file: str, fname: str, content) -> None:
    if isinstance(content, bytes):
        Path(file).write_bytes(content)
    elif content == "FIFO":
        if not os.path.exists(file):
            os.mkfifo(file)
    elif content == "DIR":
        os.makedirs(file, exist_ok=True)
    elif content == "LOOP":
        if not os.path.lexists(file):
            os.symlink(fname, file)  # a link to itself
    elif content != "MISSING":
        raise ValueError(content)


def build_corpus(directory, write: bool = True) -> List[Case]:
    """Writes every corpus file under ``directory`` (unless ``write`` is false); returns the cases."""
    d = Path(directory)
    if write:
        d.mkdir(parents=True, exist_ok=True)
    cases = []
    for fname, content, kw in _cases():
        suffix = kw.pop("path_suffix", "")
        file = str(d / fname)
        if isinstance(content, str) and content.startswith("/"):
            file = content  # a system path (/proc, /dev)
        elif write:
            _write(file, fname, content() if callable(content) else content)
        case = Case(name=fname, path=file + suffix, file=file, **kw)
        if case.expect == "error":  # NumPy's loaders would block or read forever on these
            case.doors = tuple(x for x in case.doors if x != "numpy")
        cases.append(case)
    return cases


# ---- the child: every door on one file, one JSON line each ------------------------------------------

def fix(v) -> np.ndarray:
    """JSON null (the CLI's NaN) back to NaN."""
    a = np.array(v, dtype=object)
    a[a == None] = np.nan  # noqa: E711 - element-wise
    return a.astype(np.float64)


def _summary(count, mean, var) -> Dict[str, Any]:
    return {"count": np.asarray(count, np.int64).tolist(),
            "mean": np.asarray(mean, np.float64).tolist(),
            "var": np.asarray(var, np.float64).tolist(),
            "shape": list(np.shape(mean))}


def _numpy_reference(spec) -> Dict[str, Any]:
    """What NumPy's loaders give for the file, reduced by tests/reference.py (axis -1 and None)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from reference import reference

    kw = spec["kwargs"]
    path = spec["file"]
    if kw:  # as np.fromfile, but a size that is not a whole number of items is corrupt
        dtype = np.dtype(kw["dtype"])
        if os.path.getsize(path) % dtype.itemsize:
            raise ValueError("not a whole number of items")
        shape = kw.get("shape")
        if shape is not None and any(s < -1 for s in shape):
            raise ValueError("negative size in shape=")  # NumPy's reshape takes -2 as -1
        arr = np.fromfile(path, dtype=dtype)
        arr = arr.reshape(shape) if shape is not None else arr
    elif spec["member"] is not None:
        with np.load(path, allow_pickle=False) as z:
            arr = z[spec["member"]]
    else:
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except TypeError:  # np.memmap refuses a shape like (True, 3) that np.load reads
            arr = np.load(path, allow_pickle=False)
    dt = arr.dtype
    supported = (dt.fields is None and dt.subdtype is None and
                 (dt.kind in "biu" or (dt.kind == "f" and dt.itemsize <= 8)))
    res: Dict[str, Any] = {"shape": list(arr.shape), "supported": bool(supported), "dtype": str(dt)}
    if supported:
        for axis, key in ((-1, "axis_m1"), (None, "axis_none")):
            kept = 1 if axis is None or arr.ndim == 0 else arr.shape[-1]
            if arr.ndim == 0 and axis is not None:
                res[key] = {"error": "axis -1 is out of range for a 0-d array"}
                continue
            if kept > 1 << 20:
                res[key] = {"error": "too many outputs for the reference"}
                continue
            try:
                r = reference(np.asarray(arr), axis=axis)
                res[key] = _summary(r.count, r.mean.astype(np.float64), r.variance().astype(np.float64))
            except ValueError as exc:  # empty reduction: fastmoments must raise too
                res[key] = {"error": str(exc)}
    return res


def _peak_reset() -> int:
    """Resets the peak RSS counter; returns the current RSS in bytes."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _status_kb("VmRSS") * 1024


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _run_door(door: str, spec) -> Dict[str, Any]:
    import fastmoments

    path, kw = spec["path"], dict(spec["kwargs"])
    if kw.get("shape") is not None:
        kw["shape"] = tuple(kw["shape"])
    if door == "numpy":
        return _numpy_reference(spec)
    if door == "cli":
        import contextlib
        import io
        import tempfile

        from fastmoments.__main__ import main

        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "stats.json")
            argv = ["stats", path, "--out", out, "--no-progress"]
            if spec.get("bomb"):
                argv += ["--axis", "none"]
            err, std = io.StringIO(), io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):
                try:
                    rc = main(argv)
                except SystemExit as exc:  # argparse
                    rc = exc.code
            if rc == 0:
                with open(out) as f:
                    doc = json.load(f)
                return {"ok": _summary(doc["count"], fix(doc["mean"]), fix(doc["variance"]))}
            return {"cli_rc": rc, "stderr": err.getvalue()[:3000]}
    if door == "axis_m1":
        r = fastmoments.compute(path, axis=-1, **kw)
    elif door == "axis_none":
        r = fastmoments.compute(path, axis=None, **kw)
    elif door == "accumulator":
        r = fastmoments.Accumulator().update(path, **kw).result()
    elif door == "sample":
        axis = None if spec.get("bomb") else -1
        r = fastmoments.compute(path, axis=axis, sample=0.5, sample_seed=0, **kw)
        return {"ok": _summary(r.count, r.mean, r.variance), "sample": r.sample}
    else:
        raise AssertionError(door)
    return {"ok": _summary(r.count, r.mean, r.variance)}


def _rss_guard(current: List[int]) -> None:
    """Ends the child (after reporting the job) when its RSS passes CHILD_RSS_LIMIT: a door that
    allocates without bound on these small files fails at once instead of exhausting the machine."""
    import threading
    import time

    page = os.sysconf("SC_PAGE_SIZE")

    def watch():
        while True:
            with open("/proc/self/statm") as f:
                rss = int(f.read().split()[1]) * page
            if rss > CHILD_RSS_LIMIT:
                msg = {"job": current[0], "died": f"RSS passed {CHILD_RSS_LIMIT >> 20} MiB "
                                                  f"({rss >> 20} MiB): memory not bounded"}
                os.write(1, (json.dumps(msg) + "\n").encode())
                os._exit(3)
            time.sleep(0.01)

    threading.Thread(target=watch, daemon=True).start()


def child_main() -> None:
    """Reads ``[[spec, door], ...]`` as JSON from stdin; one JSON line per job on stdout."""
    jobs = json.loads(sys.stdin.read())
    import fastmoments  # noqa: F401  (import time is not a door's time)

    current = [0]
    _rss_guard(current)
    print(json.dumps({"ready": True}), flush=True)
    for index, (spec, door) in enumerate(jobs):
        current[0] = index
        print(json.dumps({"job": index, "start": True}), flush=True)
        base = _peak_reset()
        try:
            res = _run_door(door, spec)
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which judges it
            res = {"exc": type(exc).__name__, "mro": [c.__name__ for c in type(exc).__mro__],
                   "msg": str(exc)[:2000]}
        res["job"] = index
        res["rss_added"] = max(0, _status_kb("VmHWM") * 1024 - base)
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1] == "--run":
        child_main()
    elif len(sys.argv) == 3 and sys.argv[1] == "--write":
        for c in build_corpus(sys.argv[2]):
            print(c.name, c.path)
    else:
        sys.exit("usage: untrusted_corpus.py --run < JOBS_JSON | --write DIR")
