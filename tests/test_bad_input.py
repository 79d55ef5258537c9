"""Bad input gives a clear TypeError/ValueError/FileNotFoundError, never a crash, and the
user's data is never modified."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import fastmoments
from conftest import LAYOUTS, checksum, in_layout, random_values


# -- dtypes -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("data", [
    np.zeros(4, np.complex64),
    np.zeros((2, 3), np.complex128),
    np.array([1, "a"], dtype=object),
    np.array([1, 2, 3], dtype=object),
    np.array(["a", "b"]),
    np.array([b"a", b"b"]),
    np.array(["2020-01-01", "2021-01-01"], dtype="datetime64[D]"),
    np.array([1, 2], dtype="timedelta64[s]"),
    np.zeros(3, dtype=[("a", "f4"), ("b", "i4")]),
    np.zeros(3, dtype="V4"),
    np.zeros(3, dtype=np.longdouble),
    1 + 2j,
    [1 + 2j, 3],
], ids=lambda d: str(getattr(d, "dtype", type(d).__name__)))
def test_unsupported_dtype_is_type_error(data):
    with pytest.raises(TypeError):
        fastmoments.compute(data, axis=None)


def test_type_error_names_the_dtype():
    with pytest.raises(TypeError, match="complex"):
        fastmoments.compute(np.zeros(3, np.complex64))


# -- axis -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("axis", [2, -3, (0, 2), 99, (-3,)])
def test_axis_out_of_range(axis):
    with pytest.raises(ValueError, match="out of range"):
        fastmoments.compute(np.zeros((3, 4)), axis=axis)


@pytest.mark.parametrize("axis", [(0, 0), (1, -1), [0, -2]])
def test_axis_repeated(axis):
    with pytest.raises(ValueError):
        fastmoments.compute(np.zeros((3, 4)), axis=axis)


@pytest.mark.parametrize("axis", [1.0, "0", (0, 1.5), [None], np.float64(0)])
def test_axis_not_int(axis):
    with pytest.raises(TypeError):
        fastmoments.compute(np.zeros((3, 4)), axis=axis)


def test_numpy_int_axis_accepted():
    r = fastmoments.compute(np.ones((3, 4)), axis=np.int64(-1))
    assert r.shape == (4,)


# -- empty inputs -------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,axis", [((0,), None), ((0, 3), -1), ((3, 0), 0), ((2, 0, 4), (0, 2)),
                                        ((0, 0), None)])
def test_empty_reduction(shape, axis):
    x = np.zeros(shape, np.float32)
    with pytest.raises(ValueError, match="empty"):
        fastmoments.compute(x, axis=axis)


@pytest.mark.parametrize("shape,axis", [((5, 0), -1), ((0, 3), 0), ((0, 0), 0), ((4, 0, 2), (1, 2))])
def test_empty_kept_axis_gives_empty_result(shape, axis):
    x = np.zeros(shape, np.float64)
    r = fastmoments.compute(x, axis=axis)
    kept = (axis,) if isinstance(axis, int) else axis
    want_shape = tuple(shape[a] for a in sorted(a % len(shape) for a in kept))
    assert r.shape == want_shape and r.count.shape == want_shape and r.m2.shape == want_shape
    assert r.mean.size == 0


def test_empty_accumulator_result():
    with pytest.raises(ValueError):
        fastmoments.Accumulator().result()


# -- options -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("threads", [0, -1, -100])
def test_threads_below_one(threads):
    with pytest.raises(ValueError, match="threads"):
        fastmoments.compute(np.ones(10), threads=threads)


@pytest.mark.parametrize("threads", [1.5, "2", True, [2]])
def test_threads_not_int(threads):
    with pytest.raises(TypeError, match="threads"):
        fastmoments.compute(np.ones(10), threads=threads)


def test_threads_numpy_int_accepted():
    assert fastmoments.compute(np.ones(10), axis=None, threads=np.int32(2)).count == 10


@pytest.mark.parametrize("ddof", [-1, 1.5, "1"])
def test_bad_ddof(ddof):
    with pytest.raises((ValueError, TypeError)):
        fastmoments.compute(np.ones(10), ddof=ddof)


@pytest.mark.parametrize("policy", ["ignore", "Omit", "", None, "nan"])
def test_unknown_nan_policy(policy):
    with pytest.raises(ValueError, match="nan_policy"):
        fastmoments.compute(np.ones(10), nan_policy=policy)


def test_unknown_device():
    with pytest.raises(ValueError, match="device"):
        fastmoments.compute(np.ones(10), device="tpu")


def test_bad_progress_type():
    with pytest.raises(TypeError, match="progress"):
        fastmoments.compute(np.ones(10), progress="yes")


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("axis", [None, -1, 0])
def test_nan_policy_raise(dtype, axis):
    x = np.ones((20, 3), dtype)
    x[7, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fastmoments.compute(x, axis=axis, nan_policy="raise")
    y = np.ones((20, 3), dtype)
    y[7, 1] = np.inf
    y[3, 2] = -np.inf
    r = fastmoments.compute(y, axis=axis, nan_policy="raise")  # inf alone is not an error
    assert np.asarray(r.count).sum() == 60


def test_nan_policy_raise_ignores_integers():
    assert fastmoments.compute(np.arange(10), axis=None, nan_policy="raise").count == 10


# -- files ---------------------------------------------------------------------------------------------

def test_missing_npy(tmp_path):
    for p in (tmp_path / "nope.npy", str(tmp_path / "nope.npy")):
        with pytest.raises(FileNotFoundError):
            fastmoments.compute(p)


def test_random_bytes_npy(tmp_path):
    p = tmp_path / "junk.npy"
    p.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(ValueError):
        fastmoments.compute(str(p))


def test_npy_magic_with_garbage_header(tmp_path):
    p = tmp_path / "junk.npy"
    p.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ValueError):
        fastmoments.compute(str(p))


def test_empty_file(tmp_path):
    p = tmp_path / "empty.npy"
    p.write_bytes(b"")
    with pytest.raises(ValueError):
        fastmoments.compute(str(p))


def _truncated_npy(tmp_path: pathlib.Path, keep_bytes: int) -> pathlib.Path:
    p = tmp_path / f"trunc_{keep_bytes}.npy"
    np.save(p, np.arange(100_000, dtype=np.float32).reshape(1000, 100))
    with open(p, "r+b") as f:
        f.truncate(keep_bytes)
    return p


@pytest.mark.parametrize("keep_bytes", [20, 130, 4096, 399_000])
def test_truncated_npy(tmp_path, keep_bytes):
    p = _truncated_npy(tmp_path, keep_bytes)
    with pytest.raises(ValueError):
        fastmoments.compute(str(p))


@pytest.mark.parametrize("keep_bytes", [130, 399_000])
def test_truncated_npy_never_crashes_the_process(tmp_path, keep_bytes):
    p = _truncated_npy(tmp_path, keep_bytes)
    code = ("import sys, fastmoments\n"
            "try:\n"
            "    fastmoments.compute(sys.argv[1])\n"
            "except ValueError as e:\n"
            "    print('ValueError:', e)\n"
            "    sys.exit(3)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ))
    assert proc.returncode == 3, (proc.returncode, proc.stdout, proc.stderr)
    assert "ValueError" in proc.stdout and str(p) in proc.stdout
    assert "Traceback" not in proc.stderr and "Fatal" not in proc.stderr


def test_npz_with_two_members_and_pickled_npy(tmp_path):
    npz = tmp_path / "a.npz"
    np.savez(npz, a=np.ones(3), b=np.zeros(3))
    with pytest.raises(ValueError):
        fastmoments.compute(str(npz))
    pk = tmp_path / "obj.npy"
    np.save(pk, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises((ValueError, TypeError)):
        fastmoments.compute(str(pk))


def test_directory_path(tmp_path):
    with pytest.raises((ValueError, IsADirectoryError)):
        fastmoments.compute(str(tmp_path))


def test_complex_npy_is_type_error(tmp_path):
    p = tmp_path / "c.npy"
    np.save(p, np.zeros(5, np.complex64))
    with pytest.raises(TypeError):
        fastmoments.compute(str(p))


# -- the user's data is never modified ----------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.uint8, np.int64])
def test_input_not_modified(layout, dtype, rng, tmp_path):
    special = "nan_inf" if np.dtype(dtype).kind == "f" else "none"
    x = in_layout(lambda s: random_values(rng, s, np.dtype(dtype), special), (30, 4, 3), layout,
                  tmp_path)
    before = checksum(x)
    strides, flags = x.strides, (x.flags.writeable, x.flags.c_contiguous, x.flags.f_contiguous)
    for policy in ("propagate", "omit"):
        for axis in (None, -1, (0, 2)):
            fastmoments.compute(x, axis=axis, nan_policy=policy)
    assert checksum(x) == before
    assert x.strides == strides
    assert (x.flags.writeable, x.flags.c_contiguous, x.flags.f_contiguous) == flags


def test_read_only_array_accepted():
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    x.flags.writeable = False
    r = fastmoments.compute(x)
    np.testing.assert_array_equal(r.mean, [4.5, 5.5, 6.5])
    assert not x.flags.writeable


def test_npy_file_not_modified(tmp_path, rng):
    p = tmp_path / "x.npy"
    np.save(p, random_values(rng, (500, 4), np.dtype(np.float32), "nan"))
    before = p.read_bytes()
    mtime = p.stat().st_mtime_ns
    fastmoments.compute(str(p), nan_policy="omit")
    assert p.read_bytes() == before and p.stat().st_mtime_ns == mtime


# -- merging -------------------------------------------------------------------------------------------

def test_merge_of_different_shapes():
    a = fastmoments.compute(np.ones((4, 3)))
    b = fastmoments.compute(np.ones((4, 2)))
    with pytest.raises(ValueError, match="shape"):
        a.merge(b)
    with pytest.raises(ValueError):
        a + fastmoments.compute(np.ones((4, 3)), axis=None)


def test_merge_with_other_types():
    a = fastmoments.compute(np.ones((4, 3)))
    with pytest.raises(TypeError):
        a.merge(np.ones(3))
    with pytest.raises(TypeError):
        fastmoments.Accumulator().merge(a)


def test_accumulator_batches_of_different_features():
    acc = fastmoments.Accumulator(axis=-1)
    acc.update(np.ones((4, 3)))
    with pytest.raises(ValueError, match="shape"):
        acc.update(np.ones((4, 5)))
    assert acc.result().shape == (3,)  # the failed batch left the state alone


def test_moments_constructor_checks():
    with pytest.raises(ValueError):
        fastmoments.Moments([1, 2], [0.0, 1.0], [0.0])
    with pytest.raises(ValueError):
        fastmoments.Moments([-1], [0.0], [0.0])
    with pytest.raises(TypeError):
        fastmoments.Moments([1.5], [0.0], [0.0])
    with pytest.raises(ValueError):
        fastmoments.Moments([1], [0.0], [0.0], ddof=-1)
