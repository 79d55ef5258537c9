"""Shared test helpers: instruction-set switching, data makers and memory layouts."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Callable, Tuple

import numpy as np
import pytest

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # pragma: no cover - hypothesis is a test dependency
    settings = None

if settings is not None:
    # CI time matters: moderate example counts, no per-example deadline (2 shared cores).
    settings.register_profile(
        "default", max_examples=60, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    settings.register_profile(
        "thorough", max_examples=600, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    settings.load_profile(os.environ.get("FASTMOMENTS_HYPOTHESIS_PROFILE", "default"))

try:
    import ml_dtypes

    BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - ml_dtypes is a test dependency
    BFLOAT16 = None

INT_DTYPES = [np.dtype(t) for t in ("int8", "int16", "int32", "int64",
                                    "uint8", "uint16", "uint32", "uint64")]
FLOAT_DTYPES = [np.dtype(t) for t in ("float16", "float32", "float64")] + (
    [BFLOAT16] if BFLOAT16 is not None else [])
ALL_DTYPES = [np.dtype(bool)] + INT_DTYPES + FLOAT_DTYPES

ISAS = ("baseline", "avx2", "avx512")


def pytest_configure(config):
    # hypothesis' failure report imports mypy_extensions, which warns on import; with
    # filterwarnings=error that would hide the real failure behind an INTERNALERROR.
    config.addinivalue_line(
        "filterwarnings", "ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning")

def is_float(dtype: np.dtype) -> bool:
    return dtype.kind == "f" or dtype == BFLOAT16


def is_exact_int(dtype: np.dtype) -> bool:
    """Dtypes the kernel sums exactly in integers (bool and every integer type)."""
    return dtype.kind in "biu"


def supported_isas():
    from fastmoments import _core

    return list(_core.supported_isas)


@pytest.fixture(params=ISAS)
def isa(request, monkeypatch):
    """Runs the test once per compiled instruction set (FASTMOMENTS_ISA), skipping absent ones."""
    if request.param not in supported_isas():
        pytest.skip(f"instruction set {request.param} not supported here")
    monkeypatch.setenv("FASTMOMENTS_ISA", request.param)
    return request.param


@pytest.fixture
def set_isa(monkeypatch) -> Callable[[str], bool]:
    """``set_isa(name)`` selects an instruction set; returns False when it is not supported."""

    def set_(name: str) -> bool:
        if name not in supported_isas():
            return False
        monkeypatch.setenv("FASTMOMENTS_ISA", name)
        return True

    return set_


@pytest.fixture(params=["op", pytest.param("fallback", marks=pytest.mark.filterwarnings(
    "ignore::fastmoments.tf.OpFallbackWarning"))])
def tf_route(request):
    """Runs a test on the compiled TensorFlow op and on the forced ``tf.numpy_function``
    fallback (the op's run is skipped, with the reason, when its library is not loaded)."""
    fm_tf = pytest.importorskip("fastmoments.tf")
    fm_tf._set_fallback(request.param == "fallback")
    try:
        if request.param == "op" and not fm_tf.op_info()["loaded"]:
            pytest.skip(f"TensorFlow op not loaded: {fm_tf.op_info()['reason']}")
        yield request.param
    finally:
        fm_tf._set_fallback(None)


@pytest.fixture
def sigint_raises():
    """Ctrl-C raises KeyboardInterrupt during the test, whatever the process was started with (a
    shell starts background jobs with SIGINT ignored, and Python then keeps it ignored)."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture
def rng():
    return np.random.default_rng(20240601)


# -- data -----------------------------------------------------------------------------------------

def random_values(rng: np.random.Generator, shape: Tuple[int, ...], dtype: np.dtype,
                  special: str = "none") -> np.ndarray:
    """C-contiguous values of ``dtype`` spread over its range (floats: an offset plus noise).

    ``special``: "none", "nan", "inf" or "nan_inf" put NaN and/or +-inf at random places
    (float dtypes only).
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) < 0.3
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    # Floats: |offset| >> noise so a naive sum of squares would fail.
    offset, noise = {2: (300.0, 4.0), 4: (1.0e3, 10.0), 8: (1.0e6, 3.0)}[dtype.itemsize]
    sign = rng.choice([-1.0, 1.0])
    x = (sign * offset + noise * rng.standard_normal(shape)).astype(dtype)
    if dtype == BFLOAT16:
        x = (sign * 100.0 + 5.0 * rng.standard_normal(shape)).astype(dtype)
    if special in ("nan", "nan_inf") and x.size:
        x[rng.random(shape) < 0.2] = np.nan
    if special in ("inf", "nan_inf") and x.size:
        mask = rng.random(shape) < 0.08
        x[mask] = rng.choice([np.inf, -np.inf], size=int(mask.sum()))
    return x


LAYOUTS = ("C", "F", "transposed", "strided", "negative", "byteswapped", "byteswapped_F",
           "readonly", "memmap")


_file_numbers = itertools.count()


def in_layout(make: Callable[[Tuple[int, ...]], np.ndarray], shape: Tuple[int, ...], layout: str,
              tmp_path: Path) -> np.ndarray:
    """An array of ``shape`` whose memory layout is ``layout``; ``make(shape)`` gives C values."""
    nd = len(shape)
    if layout == "C":
        return make(shape)
    if layout == "F":
        return np.asfortranarray(make(shape))
    if layout == "transposed":
        perm = np.roll(np.arange(nd), 1)
        base = make(tuple(shape[i] for i in perm))
        return base.transpose(np.argsort(perm))
    if layout == "strided":
        big = make(tuple(2 * s + 1 for s in shape))
        return big[tuple(slice(1, 1 + 2 * s, 2) for s in shape)]
    if layout == "negative":
        if nd == 0:
            return make(shape)
        big = make(shape[:-1] + (2 * shape[-1],))
        return big[(slice(None, None, -1),) * (nd - 1) + (slice(None, None, -2),)]
    if layout in ("byteswapped", "byteswapped_F"):
        x = make(shape)
        if layout == "byteswapped_F":
            x = np.asfortranarray(x)
        if x.dtype == BFLOAT16 or x.dtype.itemsize == 1:
            return x  # no non-native variant exists
        swapped = x.astype(x.dtype.newbyteorder("S"), order="K")
        assert not swapped.dtype.isnative
        return swapped
    if layout == "readonly":
        x = make(shape)
        x.flags.writeable = False
        return x
    if layout == "memmap":
        x = make(shape)
        if x.size == 0:
            return x  # an empty file cannot be mapped
        path = tmp_path / f"data_{next(_file_numbers)}.bin"
        mm = np.memmap(path, dtype=x.dtype, mode="w+", shape=x.shape)
        mm[...] = x
        mm.flush()
        del mm
        return np.memmap(path, dtype=x.dtype, mode="r", shape=x.shape)
    raise ValueError(layout)


def checksum(x: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(x).view(np.uint8).tobytes()).hexdigest()
