"""Which NumPy dtypes the kernel reads: the table compiled into ``_core`` (from
``csrc/core/fastmoments/dtypes.hpp``), read here and nowhere else."""

from __future__ import annotations

from typing import Dict, NamedTuple

import numpy as np

from . import _core


class KernelDType(NamedTuple):
    name: str
    code: int
    itemsize: int
    kind: str  # NumPy's kind letter: "b", "i", "u" or "f"


TABLE: Dict[str, KernelDType] = {row[0]: KernelDType(*row) for row in _core.dtypes}
BY_CODE: Dict[int, KernelDType] = {t.code: t for t in TABLE.values()}
SUPPORTED = tuple(TABLE)


def kernel_dtype(dtype: np.dtype) -> KernelDType:
    """The kernel's entry for ``dtype`` (byte order ignored), or ``TypeError``."""
    if dtype.kind in "biuf":
        name = dtype.newbyteorder("=").name
    else:
        name = dtype.name  # ml_dtypes.bfloat16 is kind "V" with name "bfloat16"
    entry = TABLE.get(name)
    if entry is None:
        raise TypeError(
            f"fastmoments cannot compute moments of dtype {dtype!r}; supported dtypes are "
            + ", ".join(SUPPORTED)
        )
    return entry


def dtype_code(dtype: np.dtype) -> int:
    """The kernel's code for ``dtype`` (byte order ignored), or ``TypeError``."""
    return kernel_dtype(dtype).code


def is_floating(dtype: np.dtype) -> bool:
    """Whether values of ``dtype`` can be NaN (float16, bfloat16, float32, float64)."""
    return kernel_dtype(dtype).kind == "f"


def is_floating_code(code: int) -> bool:
    return BY_CODE[code].kind == "f"


def is_native(dtype: np.dtype) -> bool:
    return dtype.byteorder in ("=", "|") or dtype.isnative


def check_plain_dtype(dtype: np.dtype, where: str) -> None:
    """``TypeError`` naming ``where`` unless ``dtype`` is a plain dtype the kernel reads."""
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise TypeError(f"{where} holds dtype {dtype!r}; fastmoments reads plain numeric dtypes")
    try:
        kernel_dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"{where}: {exc}") from None
