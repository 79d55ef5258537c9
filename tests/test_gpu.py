"""The CUDA door: build info, availability, DLPack views, and (on a GPU) the core's reference
comparison run on the device.

Without a GPU only the first group runs; every test that needs a device is marked ``gpu`` and
skips itself when :func:`fastmoments.cuda_available` is False.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import fastmoments
from fastmoments import _gpu
from fastmoments._dtypes import dtype_code
from reference import assert_matches as shared_assert_matches, reference  # noqa: E402

HAS_CUDA_BUILD = fastmoments.build_info()["cuda"] is not None
GPU = fastmoments.cuda_available()


def assert_matches(result, x, axis, rtol=1e-12):
    """The shared reference, with GPU tolerances (rtol relative, and of the data's scale)."""
    shared_assert_matches(result, reference(np.asarray(x), axis), mean_rtol=rtol, m2_rtol=rtol,
                          scale_atol=rtol)


# -- runs everywhere -------------------------------------------------------------------------------

def test_build_info_cuda_describes_the_build():
    info = fastmoments.build_info()["cuda"]
    if info is None:
        pytest.skip("built without a CUDA compiler")
    assert isinstance(info, dict)
    assert info["runtime"] == "static"
    assert info["nvcc"].split(".")[0].isdigit()
    archs = info["architectures"]
    assert "90-real" in archs and any(a.endswith("-virtual") for a in archs)


def test_cuda_available_is_a_bool_and_never_raises():
    first = fastmoments.cuda_available()
    assert isinstance(first, bool)
    assert fastmoments.cuda_available() is first
    assert (first is True) == (_gpu.unavailable_reason() is None)
    assert "cuda_available" in fastmoments.__all__


def test_device_cuda_without_a_gpu_is_a_clear_error():
    if GPU:
        pytest.skip("a GPU is available")
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    with pytest.raises(RuntimeError, match="device='cuda' cannot be used: .+"):
        fastmoments.compute(x, device="cuda")
    # device="auto" keeps host arrays on the CPU
    assert np.allclose(fastmoments.compute(x, axis=-1, device="auto").mean, x.mean(axis=0))


def test_unknown_device_is_rejected():
    with pytest.raises(ValueError, match="device must be one of"):
        fastmoments.compute(np.zeros(3), device="gpu")


@pytest.mark.skipif(not HAS_CUDA_BUILD, reason="built without CUDA")
@pytest.mark.parametrize("dtype", ["bool", "int8", "uint8", "int16", "uint16", "int32", "uint32",
                                   "int64", "uint64", "float16", "float32", "float64"])
@pytest.mark.parametrize("layout", ["c", "f", "reversed", "sliced", "transposed"])
def test_dlpack_view_reads_shape_strides_and_dtype(dtype, layout):
    # The DLPack reader of the CUDA module, fed NumPy's (CPU) capsules: no GPU needed.
    cuda = importlib.import_module("fastmoments._cuda")
    x = np.arange(60).reshape(3, 4, 5).astype(dtype)
    x = {"c": x, "f": np.asfortranarray(x), "reversed": x[::-1, :, ::-1], "sliced": x[:, ::2],
         "transposed": x.transpose(2, 0, 1)}[layout]
    ptr, shape, strides, code, dev_type, dev_id = cuda.dlpack_view(x.__dlpack__())
    assert ptr == x.__array_interface__["data"][0]
    assert shape == x.shape and strides == x.strides
    assert code == dtype_code(x.dtype)
    assert (dev_type, dev_id) == (1, 0)  # kDLCPU


@pytest.mark.skipif(not HAS_CUDA_BUILD, reason="built without CUDA")
def test_dlpack_view_rejects_other_objects():
    cuda = importlib.import_module("fastmoments._cuda")
    with pytest.raises(TypeError):
        cuda.dlpack_view(object())
    with pytest.raises(TypeError, match="DLPack dtype"):
        cuda.dlpack_view(np.zeros(3, np.complex64).__dlpack__())


def test_gpu_route_rejects_file_options_before_touching_the_device():
    with pytest.raises((ValueError, RuntimeError)):
        fastmoments.compute(np.zeros(4), device="cuda", sample=0.5)


# -- needs a GPU -----------------------------------------------------------------------------------

DTYPES = ["bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
          "float16", "float32", "float64"]


def sample_data(dtype, shape, rng, offset=True):
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return rng.random(shape) < 0.3
    if dt.kind in "iu":
        info = np.iinfo(dt)
        lo, hi = max(info.min, -(2**40)), min(info.max, 2**40)
        return rng.integers(lo, hi, size=shape, endpoint=True).astype(dt)
    center = {"float16": 100.0, "float32": 1e4, "float64": 1e9}[dt.name] if offset else 0.0
    return (center + rng.standard_normal(shape) * 3).astype(dt)


LAYOUTS = {
    # name: (shape, view, axis)
    "flat-none": ((5000,), lambda a: a, None),
    "lanes-last": ((3000, 37), lambda a: a, -1),
    "lanes-wide": ((300, 2100), lambda a: a, -1),
    "rgb-folded": ((8, 33, 32, 3), lambda a: a, -1),
    "nchw-axis1": ((6, 5, 41, 43), lambda a: a, 1),
    "none-4d": ((6, 5, 41, 43), lambda a: a, None),
    "keep-first": ((257, 300), lambda a: a, 0),
    "fortran": ((700, 13), np.asfortranarray, -1),
    "transposed": ((13, 700), lambda a: a.T, -1),
    "sliced": ((1200, 40), lambda a: a[::3, 1::2], -1),
    "negative": ((900, 20), lambda a: a[::-1, ::-1], (0,)),
    "keep-two": ((7, 300, 9), lambda a: a, (0, 2)),
    "scalar": ((), lambda a: a, None),
}


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="no usable GPU")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_host_arrays_on_the_device_match_the_reference(dtype, layout, monkeypatch):
    # Small slabs: several pinned-buffer round trips even on small arrays.
    monkeypatch.setattr(_gpu, "HOST_CHUNK_BYTES", 1 << 16)
    rng = np.random.default_rng([DTYPES.index(dtype), sorted(LAYOUTS).index(layout)])
    shape, view, axis = LAYOUTS[layout]
    x = view(sample_data(dtype, shape, rng))
    r = fastmoments.compute(x, axis=axis, device="cuda")
    assert_matches(r, x, axis)
    cpu = fastmoments.compute(x, axis=axis, device="cpu")
    assert np.array_equal(r.count, cpu.count)


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="no usable GPU")
@pytest.mark.parametrize("dtype", ["float32", "uint8", "float16", "int32"])
@pytest.mark.parametrize("layout", ["flat-none", "lanes-last", "nchw-axis1", "sliced", "rgb-folded"])
def test_results_are_bitwise_deterministic(dtype, layout):
    rng = np.random.default_rng(7)
    shape, view, axis = LAYOUTS[layout]
    x = view(sample_data(dtype, tuple(4 * s if i == 0 else s for i, s in enumerate(shape)), rng))
    runs = [fastmoments.compute(x, axis=axis, device="cuda") for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="no usable GPU")
def test_exact_integers_and_large_offsets():
    x = np.full((1 << 20,), 2**31 - 1, dtype=np.uint32)
    x[::2] -= 1
    r = fastmoments.compute(x, axis=None, device="cuda")
    assert r.count == x.size and r.mean == 2**31 - 1.5 and r.m2 == 0.25 * x.size
    y = (1e9 + np.random.default_rng(1).standard_normal(1 << 18)).astype(np.float64)
    assert_matches(fastmoments.compute(y, axis=None, device="cuda"), y, None)


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="no usable GPU")
def test_nan_policies_and_infinities():
    x = np.random.default_rng(2).standard_normal((500, 6))
    x[3, 1] = np.nan
    x[7, 2] = np.inf
    r = fastmoments.compute(x, device="cuda")
    assert np.isnan(r.mean[1]) and r.mean[2] == np.inf
    o = fastmoments.compute(x, device="cuda", nan_policy="omit")
    assert o.count[1] == 499 and o.count[0] == 500
    np.testing.assert_allclose(o.mean[1], np.nanmean(x[:, 1]), rtol=1e-13)
    with pytest.raises(ValueError, match="NaN"):
        fastmoments.compute(x, device="cuda", nan_policy="raise")


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="no usable GPU")
def test_empty_inputs_on_the_device():
    with pytest.raises(ValueError, match="empty reduction"):
        fastmoments.compute(np.zeros((0, 3), np.float32), device="cuda")
    r = fastmoments.compute(np.zeros((4, 0), np.float32), device="cuda")
    assert r.mean.shape == (0,)


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="no usable GPU")
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "uint8", "int64", "float64"])
@pytest.mark.parametrize("layout", ["flat-none", "lanes-last", "nchw-axis1", "sliced", "negative"])
def test_torch_tensors_are_reduced_in_place(dtype, layout):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no GPU")
    shape, view, axis = LAYOUTS[layout]
    rng = np.random.default_rng(3)
    host = sample_data("float32" if dtype == "bfloat16" else dtype, shape, rng)
    t = torch.from_numpy(np.ascontiguousarray(host)).cuda()
    if dtype == "bfloat16":
        t = t.to(torch.bfloat16)
    if layout == "sliced":
        t = t[::3, 1::2]
    elif layout == "negative":
        t = t.flip(0)  # torch has no negative strides: a flipped copy
    r = fastmoments.compute(t, axis=axis)  # device="auto" picks the GPU
    ref_x = (t.float() if dtype == "bfloat16" else t).cpu().numpy()
    assert_matches(r, ref_x, axis)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        assert fastmoments.compute(t, axis=axis) == r


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="no usable GPU")
@pytest.mark.parametrize("dtype", ["float32", "uint8", "float16", "int16"])
def test_cupy_arrays_are_reduced_in_place(dtype):
    cp = pytest.importorskip("cupy")
    rng = np.random.default_rng(4)
    for shape, view, axis in (LAYOUTS["lanes-wide"], LAYOUTS["nchw-axis1"], LAYOUTS["fortran"],
                              LAYOUTS["sliced"]):
        host = view(sample_data(dtype, shape, rng))
        d = cp.asarray(host)
        r = fastmoments.compute(d, axis=axis)
        assert_matches(r, host, axis)
        assert fastmoments.compute(d, axis=axis, device="cuda") == r


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="no usable GPU")
def test_dlpack_only_producers():
    jnp = pytest.importorskip("jax.numpy")
    jax = pytest.importorskip("jax")
    if not any(d.platform == "gpu" for d in jax.devices()):
        pytest.skip("JAX sees no GPU")
    x = np.random.default_rng(5).standard_normal((2000, 24)).astype(np.float32)
    r = fastmoments.compute(jnp.asarray(x), axis=-1)
    assert_matches(r, x, -1)


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="no usable GPU")
def test_memmap_and_npy_path_stream_to_the_device(tmp_path, monkeypatch):
    monkeypatch.setattr(_gpu, "HOST_CHUNK_BYTES", 1 << 16)
    x = sample_data("float32", (20000, 12), np.random.default_rng(6))
    path = tmp_path / "x.npy"
    np.save(path, x)
    for data in (np.load(path, mmap_mode="r"), path, str(path)):
        assert_matches(fastmoments.compute(data, device="cuda"), x, -1)
