"""``build_info()``: what this installation was compiled with."""

from __future__ import annotations

from typing import Any, Dict


def build_info() -> Dict[str, Any]:
    """What was compiled in: OpenMP, SIMD variants (and the one in use), CUDA, the TF op.

    ``cuda`` and ``tensorflow`` are ``None`` when that part was not built, else a dict.
    """
    from . import _build_info, _core

    info: Dict[str, Any] = {
        "version": _build_info.version,
        "openmp": _build_info.openmp,
        "simd": list(_build_info.simd),
        "simd_supported": list(_core.supported_isas),
        "simd_selected": _core.selected_isa,
        "compiler": _build_info.cxx_compiler,
        "build_type": _build_info.build_type,
        "cuda": _build_info.cuda,
        "tensorflow": _build_info.tensorflow,
    }
    info["openmp_version"] = _core._compiled_info.get("openmp_version")
    return info
