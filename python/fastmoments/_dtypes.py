"""Which NumPy dtypes the kernel reads, and their codes in ``csrc/core/fastmoments/dtypes.hpp``."""

from __future__ import annotations

import numpy as np

# Order matches enum class DType.
_NAMES = (
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "bfloat16", "float32", "float64",
)
_CODES = {name: code for code, name in enumerate(_NAMES)}

SUPPORTED = _NAMES


def dtype_code(dtype: np.dtype) -> int:
    """The kernel's code for ``dtype`` (byte order ignored), or ``TypeError``."""
    if dtype.kind in "biuf":
        name = dtype.newbyteorder("=").name
    else:
        name = dtype.name  # ml_dtypes.bfloat16 is kind "V" with name "bfloat16"
    code = _CODES.get(name)
    if code is None:
        raise TypeError(
            f"fastmoments cannot compute moments of dtype {dtype!r}; supported dtypes are "
            + ", ".join(SUPPORTED)
        )
    return code


def is_native(dtype: np.dtype) -> bool:
    return dtype.byteorder in ("=", "|") or dtype.isnative


def check_plain_dtype(dtype: np.dtype, where: str) -> None:
    """``TypeError`` naming ``where`` unless ``dtype`` is a plain dtype the kernel reads."""
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise TypeError(f"{where} holds dtype {dtype!r}; fastmoments reads plain numeric dtypes")
    dtype_code(dtype)
