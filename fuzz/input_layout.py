"""How a fuzz input maps to a file and a call (shared by fuzz_files.py and make_seeds.py).

    byte 0   kind: 0 the rest is the whole file (.npy, .npz or anything), 1 the rest is a .npy
             stored in an .npz, 2 the same deflated, 3 a raw file (layout below)
    byte 1   door: 0 axis=-1, 1 axis=None, 2 axis=None with sample=, 3 axis=-1 with sample=
    byte 2   sample fraction (b + 1) / 256;  byte 3: sample_seed
    kind 3:  byte 4 dtype index into RAW_DTYPES, byte 5 ndim (0: no shape=), then ndim
             little-endian int64 sizes, then the file
"""

from __future__ import annotations

import io
import struct
import zipfile
from typing import Any, Dict, Optional, Sequence, Tuple

KINDS = ("file", "stored", "deflated", "raw")
RAW_DTYPES = ("|u1", "<i2", ">i2", "<u4", "<i8", "<f2", "<f4", ">f4", "<f8", "|b1", "<c8", "O",
              "V3", "<M8[s]", "[('a', '<f4')]")


def encode(kind: str, body: bytes, door: int = 0, fraction_byte: int = 127, seed: int = 0,
           dtype: Optional[str] = None, shape: Optional[Sequence[int]] = None) -> bytes:
    head = bytes([KINDS.index(kind), door % 4, fraction_byte % 256, seed % 256])
    if kind == "raw":
        shape = list(shape or [])
        head += bytes([RAW_DTYPES.index(dtype), len(shape)]) + struct.pack(f"<{len(shape)}q", *shape)
    return head + body


def decode(data: bytes) -> Optional[Tuple[int, bytes, Dict[str, Any], Any, Optional[float], int]]:
    """(kind, file bytes, dtype=/shape= kwargs, axis, sample, sample_seed); None if too short."""
    if len(data) < 4:
        return None
    kind, door = data[0] % 4, data[1] % 4
    fraction, seed = (data[2] + 1) / 256, data[3]
    body = data[4:]
    kwargs: Dict[str, Any] = {}
    if kind == 3:
        if len(body) < 2:
            return None
        nd = body[1] % 4
        end = 2 + 8 * nd
        if len(body) < end:
            return None
        kwargs["dtype"] = RAW_DTYPES[body[0] % len(RAW_DTYPES)]
        if nd:
            kwargs["shape"] = struct.unpack(f"<{nd}q", body[2:end])
        body = body[end:]
    elif kind in (1, 2):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED if kind == 1 else zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("arr_0.npy", body)
        body = buf.getvalue()
    axis = -1 if door in (0, 3) else None
    sample = fraction if door >= 2 else None
    return kind, body, kwargs, axis, sample, seed
