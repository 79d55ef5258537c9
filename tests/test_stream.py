"""Streaming sources (issue 4): .npy/.npz/raw files, memmaps, lists and globs, h5py, zarr; errors,
progress, sampling and Ctrl-C. Every result is compared with a NumPy float64 two-pass reference."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

import fastmoments
from fastmoments import _stream
from reference import kept_axes, reference as shared_reference  # noqa: E402

RNG = np.random.default_rng(1234)


def reference(x, axis):
    """Mean, variance and values per output over every axis not kept (the shared reference)."""
    x = np.asarray(x)
    r = shared_reference(x, axis)
    n = int(np.prod([x.shape[i] for i in range(x.ndim) if i not in kept_axes(axis, x.ndim)]))
    return r.mean.astype(np.float64), r.variance().astype(np.float64), n


def check(result, x, axis, rtol=1e-10):
    mean, var, n = reference(x, axis)
    np.testing.assert_allclose(result.mean, mean, rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(result.variance, var, rtol=rtol, atol=1e-12)
    assert np.all(np.asarray(result.count) == n)


def make(shape, dtype, order="C", loc=100.0, scale=7.0):
    x = RNG.normal(loc, scale, shape)
    if np.dtype(dtype).kind in "iu":
        x = np.clip(np.round(x), np.iinfo(dtype).min, np.iinfo(dtype).max)
    elif np.dtype(dtype).kind == "b":
        x = x > loc
    return np.asarray(x.astype(dtype), order=order)


@pytest.fixture(params=[None, 96, 1 << 12], ids=["default-blocks", "tiny-blocks", "small-blocks"])
def block_bytes(request, monkeypatch):
    """Default 4 MiB pieces, and tiny ones that split rows along inner axes."""
    if request.param is not None:
        monkeypatch.setattr(_stream, "BLOCK_BYTES", request.param)
    return request.param


@pytest.fixture(params=["thread", "workers", "map", None], ids=["reader-thread", "worker-reads", "map", "auto"])
def reader_mode(request, monkeypatch):
    """Every native pipeline: a reader thread filling a ring, workers reading their own piece,
    workers reducing cached pieces from a memory map."""
    monkeypatch.setattr(_stream, "READER_MODE", request.param)
    return request.param


AXES = [None, -1, 0, 1, (0, 2), (1, 2)]
DTYPES = ["float32", "float64", "float16", "int16", "uint8", "int32", "bool", ">f8", "<i8"]


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_npy_matches_reference(tmp_path, dtype, order, block_bytes, reader_mode):
    x = make((301, 5, 6), dtype, order)
    path = tmp_path / "x.npy"
    np.save(path, x)
    for axis in AXES:
        rtol = 1e-3 if np.dtype(dtype) == np.float16 else 1e-10
        check(fastmoments.compute(path, axis=axis), x, axis, rtol=rtol)
        check(fastmoments.compute(str(path), axis=axis, threads=1), x, axis, rtol=rtol)


def test_one_and_four_dims(tmp_path, block_bytes):
    for shape in [(1000,), (7, 3, 5, 11)]:
        x = make(shape, np.float32)
        np.save(tmp_path / "x.npy", x)
        for axis in [None, 0, -1]:
            check(fastmoments.compute(tmp_path / "x.npy", axis=axis), x, axis, rtol=1e-9)


def test_same_bits_for_every_thread_count(tmp_path, monkeypatch, reader_mode):
    monkeypatch.setattr(_stream, "BLOCK_BYTES", 1 << 10)
    x = make((5000, 8), np.float32, loc=1e4, scale=3.0)
    np.save(tmp_path / "x.npy", x)
    results = [fastmoments.compute(tmp_path / "x.npy", axis=ax, threads=t)
               for ax in (-1, None) for t in (1, 2, 3, 7)]
    assert results[0] == results[1] == results[2] == results[3]
    assert results[4] == results[5] == results[6] == results[7]
    monkeypatch.setattr(_stream, "READER_MODE", "workers" if reader_mode == "thread" else "thread")
    assert results[0] == fastmoments.compute(tmp_path / "x.npy", axis=-1, threads=2)
    check(results[0], x, -1, rtol=1e-8)


def test_same_bits_from_map_and_buffers(tmp_path, monkeypatch):
    """Mapped pieces start at odd addresses (30-byte slices after a 128-byte header), read pieces
    at page-aligned buffers: the kernel's answer must not depend on where a piece lies."""
    monkeypatch.setattr(_stream, "BLOCK_BYTES", 1 << 12)
    x = make((3001, 5, 3), np.float16, loc=50.0, scale=3.0)
    np.save(tmp_path / "x.npy", x)
    got = {}
    for mode in ("thread", "workers", "map"):
        monkeypatch.setattr(_stream, "READER_MODE", mode)
        got[mode] = [fastmoments.compute(tmp_path / "x.npy", axis=ax, threads=2) for ax in (-1, None, (1, 2))]
    assert got["thread"] == got["workers"] == got["map"]
    check(got["map"][0], x, -1, rtol=1e-3)


def test_large_offset_float64(tmp_path):
    x = make((20000, 3), np.float64, loc=1e9, scale=1.0)
    np.save(tmp_path / "x.npy", x)
    check(fastmoments.compute(tmp_path / "x.npy", axis=-1), x, -1, rtol=1e-7)


# ---- memmaps ------------------------------------------------------------------------------------

def _spy_native(monkeypatch):
    calls = []
    real = _stream._reduce_file

    def spy(*a, **k):
        calls.append(a[0])
        return real(*a, **k)

    monkeypatch.setattr(_stream, "_reduce_file", spy)
    return calls


@pytest.mark.parametrize("order", ["C", "F"])
def test_memmap_streams_through_the_reader(tmp_path, monkeypatch, order):
    calls = _spy_native(monkeypatch)
    x = make((400, 6, 3), np.float32, order)
    path = tmp_path / "m.dat"
    x.tofile(path) if order == "C" else x.T.tofile(path)
    m = np.memmap(path, dtype=np.float32, mode="r", shape=x.shape, order=order)
    for axis in AXES:
        check(fastmoments.compute(m, axis=axis), x, axis, rtol=1e-9)
    assert len(calls) == len(AXES) and calls[0].fortran == (order == "F")


def test_memmap_views_and_offsets(tmp_path, monkeypatch):
    calls = _spy_native(monkeypatch)
    x = make((500, 9), np.int16)
    path = tmp_path / "m.npy"
    np.save(path, x)
    m = np.load(path, mmap_mode="r")
    check(fastmoments.compute(m[123:456]), x[123:456], -1)
    check(fastmoments.compute(m[7]), x[7], -1)
    assert len(calls) == 2
    # a strided view and a copy-on-write map are read in memory, still correctly
    check(fastmoments.compute(m[::3, ::2], axis=None), x[::3, ::2], None)
    c = np.memmap(path, dtype=np.int16, mode="c", offset=128, shape=x.shape)
    c[0] = 1000
    y = x.copy()
    y[0] = 1000
    check(fastmoments.compute(c, axis=0), y, 0)
    assert len(calls) == 2


def test_memmap_written_in_place_is_seen(tmp_path):
    path = tmp_path / "w.dat"
    m = np.memmap(path, dtype=np.float64, mode="w+", shape=(300, 4))
    x = make((300, 4), np.float64)
    m[:] = x
    check(fastmoments.compute(m), x, -1)


# ---- raw binary, npz -------------------------------------------------------------------------------

def test_raw_binary(tmp_path):
    x = make((250, 4, 3), "<f4")
    path = tmp_path / "x.raw"
    x.tofile(path)
    check(fastmoments.compute(path, dtype="<f4", shape=(250, 4, 3), axis=(1, 2)), x, (1, 2), 1e-9)
    check(fastmoments.compute(path, dtype=np.float32, shape=(-1, 4, 3), axis=-1), x, -1, 1e-9)
    check(fastmoments.compute(path, dtype="f4", axis=None), x.ravel(), None, 1e-9)
    xb = x.astype(">f4")
    xb.tofile(path)
    check(fastmoments.compute(path, dtype=">f4", shape=(-1, 12)), x.reshape(-1, 12), -1, 1e-9)


def test_raw_binary_wrong_dtype_or_shape(tmp_path):
    path = tmp_path / "x.raw"
    make((10, 3), np.float32).tofile(path)  # 120 bytes
    with pytest.raises(ValueError, match="needs 240"):
        fastmoments.compute(path, dtype=np.float64, shape=(10, 3))
    with pytest.raises(ValueError, match="whole number of rows"):
        fastmoments.compute(path, dtype=np.float32, shape=(-1, 7))
    with pytest.raises(ValueError, match="one -1"):
        fastmoments.compute(path, dtype=np.float32, shape=(-1, -1))
    with pytest.raises(ValueError, match="needs dtype"):
        fastmoments.compute(path, shape=(10, 3))
    with pytest.raises(TypeError, match="complex"):
        fastmoments.compute(path, dtype=np.complex64, shape=(-1,))
    with pytest.raises(TypeError):
        fastmoments.compute(path, dtype="not-a-dtype")
    with pytest.raises(ValueError, match="raw binary"):
        fastmoments.compute(np.memmap(path, dtype=np.float32, mode="r"), dtype=np.float32)


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_members(tmp_path, compressed, block_bytes):
    a = make((300, 5), np.float32)
    b = make((40, 3, 2), np.int32, order="F")
    path = tmp_path / "z.npz"
    (np.savez_compressed if compressed else np.savez)(path, a=a, b=b)
    check(fastmoments.compute(f"{path}::a"), a, -1, 1e-9)
    check(fastmoments.compute(f"{path}::b.npy", axis=(0, 1)), b, (0, 1))
    check(fastmoments.compute(f"{path}::b", axis=None), b, None)
    with pytest.raises(ValueError, match="holds 2 arrays"):
        fastmoments.compute(path)
    with pytest.raises(ValueError, match="no member 'c'"):
        fastmoments.compute(f"{path}::c")
    single = tmp_path / "one.npz"
    (np.savez_compressed if compressed else np.savez)(single, data=a)
    check(fastmoments.compute(single, axis=0), a, 0, 1e-9)


def test_stored_npz_member_uses_native_reader(tmp_path, monkeypatch):
    calls = _spy_native(monkeypatch)
    a = make((100, 4), np.float64)
    np.savez(tmp_path / "z.npz", a=a)
    check(fastmoments.compute(f"{tmp_path / 'z.npz'}::a"), a, -1)
    assert len(calls) == 1


# ---- lists and globs --------------------------------------------------------------------------------

def test_list_and_glob(tmp_path, block_bytes):
    parts = [make((n, 4, 2), np.float32) for n in (100, 1, 57)]
    parts.append(np.asfortranarray(make((30, 4, 2), np.float32)))
    for i, p in enumerate(parts):
        np.save(tmp_path / f"v{i}.npy", p)
    x = np.concatenate(parts)
    paths = [tmp_path / f"v{i}.npy" for i in range(len(parts))]
    for axis in [None, -1, (1, 2), 0, (0, 2)]:
        check(fastmoments.compute(paths, axis=axis), x, axis, 1e-9)
        check(fastmoments.compute(str(tmp_path / "v*.npy"), axis=axis), x, axis, 1e-9)
    check(fastmoments.compute([str(tmp_path / "v[01].npy"), paths[2], paths[3]]), x, -1, 1e-9)


def test_list_with_different_trailing_shapes(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((3, 4)))
    np.save(tmp_path / "b.npy", np.zeros((3, 5)))
    with pytest.raises(ValueError, match="trailing shape"):
        fastmoments.compute([tmp_path / "a.npy", tmp_path / "b.npy"])
    with pytest.raises(FileNotFoundError, match="no file matches"):
        fastmoments.compute(str(tmp_path / "nothing*.npy"))


# ---- errors -----------------------------------------------------------------------------------------

def test_missing_and_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        fastmoments.compute(tmp_path / "missing.npy")
    with pytest.raises(FileNotFoundError):
        fastmoments.compute([tmp_path / "missing.npy"])
    (tmp_path / "t.txt").write_text("hello world")
    with pytest.raises(ValueError, match="neither a .npy nor an .npz"):
        fastmoments.compute(tmp_path / "t.txt")
    np.save(tmp_path / "o.npy", np.array([1, "a"], dtype=object), allow_pickle=True)
    with pytest.raises(TypeError):
        fastmoments.compute(tmp_path / "o.npy")
    np.save(tmp_path / "c.npy", np.ones(4, np.complex64))
    with pytest.raises(TypeError, match="complex"):
        fastmoments.compute(tmp_path / "c.npy")
    (tmp_path / "sub").mkdir()  # a folder means the files in it: here none fastmoments reads
    (tmp_path / "sub" / "t.txt").write_text("hello world")
    with pytest.raises(ValueError, match="no readable files"):
        fastmoments.compute(tmp_path / "sub")


def test_bad_npy_headers(tmp_path):
    p = tmp_path / "bad.npy"
    for raw in (b"\x93NUMPY\x01\x00garbage header", b"\x93NUMPY\x07\x00\x10\x00{}",
                b"\x93NUMPY\x02\x00\x04\x00\x00\x00{'a'"):
        p.write_bytes(raw)
        with pytest.raises(ValueError, match="npy"):
            fastmoments.compute(p)
    x = make((20, 3), np.float32)
    with open(p, "wb") as f:
        np.lib.format.write_array(f, x, version=(3, 0))
    check(fastmoments.compute(p), x, -1, 1e-9)


def test_truncated_file(tmp_path):
    x = make((1000, 8), np.float64)
    path = tmp_path / "x.npy"
    np.save(path, x)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 100)
    with pytest.raises(ValueError, match="truncated"):
        fastmoments.compute(path)


def _truncate_mid_run(path, monkeypatch, *, block_bytes, delay, keep_bytes, **kw):
    """Runs compute(path) with a slowed reader and cuts the file to keep_bytes at the first
    progress report; returns the byte counts reported. The run must fail with 'truncated'."""
    monkeypatch.setattr(_stream, "BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(_stream, "READ_DELAY", delay)
    monkeypatch.setattr(_stream, "POLL_SECONDS", 0.005)
    seen = []

    def cut(done, total):
        if not seen:
            with open(path, "r+b") as f:
                f.truncate(keep_bytes)
        seen.append(done)

    with pytest.raises((ValueError, OSError), match="truncated") as info:
        fastmoments.compute(path, progress=cut, **kw)
    return seen, info


def test_file_truncated_while_reading(tmp_path, monkeypatch, reader_mode):
    x = make((20000, 8), np.float64)  # 1.28 MB: about 100 pieces, one second of reading
    path = tmp_path / "x.npy"
    np.save(path, x)
    seen, _ = _truncate_mid_run(path, monkeypatch, block_bytes=1 << 14, delay=0.01, keep_bytes=200_000)
    assert seen and seen[-1] < x.nbytes


def test_mapped_file_truncated_under_the_kernel(tmp_path, monkeypatch):
    """Pieces mapped, then the file shrinks to its header before the kernel reads them: the
    kernel's loads fault (SIGBUS) inside the map; the result is an error, not a crash."""
    monkeypatch.setattr(_stream, "READER_MODE", "map")
    x = make((1 << 16, 4), np.float64)  # 2 MiB, cached: just written
    path = tmp_path / "x.npy"
    np.save(path, x)
    # READ_DELAY sleeps between mapping a piece and reducing it.
    _, info = _truncate_mid_run(path, monkeypatch, block_bytes=1 << 16, delay=0.05, keep_bytes=64,
                                threads=2)
    assert info.type is ValueError
    np.save(path, x)  # the same process maps files again afterwards
    check(fastmoments.compute(path, threads=2), x, -1)


def test_concurrent_mapped_reads(tmp_path, monkeypatch):
    """Python threads reducing cached files at once each get their own guarded map."""
    import concurrent.futures
    monkeypatch.setattr(_stream, "READER_MODE", "map")
    monkeypatch.setattr(_stream, "BLOCK_BYTES", 1 << 14)
    xs = [make((4000, 6), np.float64, loc=10.0 * k) for k in range(3)]
    for k, x in enumerate(xs):
        np.save(tmp_path / f"x{k}.npy", x)
    want = [fastmoments.compute(tmp_path / f"x{k}.npy") for k in range(3)]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        got = list(pool.map(lambda k: fastmoments.compute(tmp_path / f"x{k % 3}.npy", threads=2),
                            range(24)))
    for k, r in enumerate(got):
        assert r == want[k % 3]
    for k, x in enumerate(xs):
        check(want[k], x, -1)


def test_foreign_sigbus_still_fatal(tmp_path):
    """The SIGBUS handler forwards faults outside fastmoments' maps: a program that reads past the
    end of its own truncated map still dies of SIGBUS."""
    import subprocess
    import sys
    import textwrap
    code = textwrap.dedent(f"""
        import mmap, numpy as np, fastmoments
        np.save({str(tmp_path / 'a.npy')!r}, np.ones(1000))
        fastmoments.compute({str(tmp_path / 'a.npy')!r})   # installs the handler (map mode)
        with open({str(tmp_path / 'b.bin')!r}, 'w+b') as f:
            f.truncate(1 << 16)
            m = mmap.mmap(f.fileno(), 1 << 16, access=mmap.ACCESS_READ)
            f.truncate(0)
            print('read', m[40000], flush=True)
    """)
    env = dict(os.environ, PYTHONFAULTHANDLER="")
    env.pop("PYTHONFAULTHANDLER")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=120)
    assert p.returncode == -signal.SIGBUS, (p.returncode, p.stdout, p.stderr)
    assert "read" not in p.stdout


def test_sample_and_options_rejected_for_arrays():
    with pytest.raises(ValueError, match="files"):
        fastmoments.compute(np.ones((3, 3)), sample=0.5)


def test_nan_policies(tmp_path):
    x = make((400, 3), np.float32)
    x[5, 1] = np.nan
    np.save(tmp_path / "n.npy", x)
    r = fastmoments.compute(tmp_path / "n.npy")
    assert np.isnan(r.mean[1]) and not np.isnan(r.mean[0])
    r = fastmoments.compute(tmp_path / "n.npy", nan_policy="omit")
    np.testing.assert_allclose(r.mean, np.nanmean(x.astype(np.float64), axis=0), rtol=1e-10)
    np.testing.assert_allclose(r.variance, np.nanvar(x.astype(np.float64), axis=0), rtol=1e-9)
    assert list(r.count) == [400, 399, 400]
    with pytest.raises(ValueError, match="NaN"):
        fastmoments.compute(tmp_path / "n.npy", nan_policy="raise")
    with pytest.raises(ValueError, match="NaN"):
        fastmoments.compute(tmp_path / "n.npy", nan_policy="raise", axis=0)
    x[5, 1] = 0
    np.save(tmp_path / "n.npy", x)
    check(fastmoments.compute(tmp_path / "n.npy", nan_policy="raise"), x, -1, 1e-9)


# ---- progress ---------------------------------------------------------------------------------------

def test_progress_callable_monotone(tmp_path, monkeypatch, reader_mode):
    monkeypatch.setattr(_stream, "BLOCK_BYTES", 1 << 12)
    monkeypatch.setattr(_stream, "READ_DELAY", 0.002)
    monkeypatch.setattr(_stream, "POLL_SECONDS", 0.001)
    parts = [make((3000, 4), np.float32) for _ in range(2)]
    for i, p in enumerate(parts):
        np.save(tmp_path / f"p{i}.npy", p)
    calls = []
    fastmoments.compute(str(tmp_path / "p*.npy"), progress=lambda d, t: calls.append((d, t)))
    total = sum(p.nbytes for p in parts)
    assert len(calls) > 3
    done = [d for d, _ in calls]
    assert all(t == total for _, t in calls)
    assert done == sorted(done) and done[-1] == total and 0 <= done[0] < total


def test_progress_bar(tmp_path, capsys):
    pytest.importorskip("tqdm")
    np.save(tmp_path / "x.npy", make((1000, 4), np.float32))
    fastmoments.compute(tmp_path / "x.npy", progress=True)
    assert "16.0k" in capsys.readouterr().err


def test_progress_error_propagates(tmp_path, monkeypatch):
    monkeypatch.setattr(_stream, "READ_DELAY", 0.05)
    monkeypatch.setattr(_stream, "BLOCK_BYTES", 1 << 12)
    np.save(tmp_path / "x.npy", make((5000, 4), np.float32))

    def boom(done, total):
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        fastmoments.compute(tmp_path / "x.npy", progress=boom)


# ---- sampling ---------------------------------------------------------------------------------------

def test_sample(tmp_path, monkeypatch):
    monkeypatch.setattr(_stream, "SAMPLE_UNIT_BYTES", 1 << 10)
    x = make((20000, 4), np.float32)
    np.save(tmp_path / "x.npy", x)
    full = fastmoments.compute(tmp_path / "x.npy")
    assert full.sample is None
    r = fastmoments.compute(tmp_path / "x.npy", sample=0.1, sample_seed=3)
    assert 0.08 < r.sample < 0.12
    assert r.count[0] == round(r.sample * 20000)
    np.testing.assert_allclose(r.mean, full.mean, rtol=0.01)
    np.testing.assert_allclose(r.variance, full.variance, rtol=0.2)
    assert r == fastmoments.compute(tmp_path / "x.npy", sample=0.1, sample_seed=3)
    assert r != fastmoments.compute(tmp_path / "x.npy", sample=0.1, sample_seed=4)
    # the sample is exactly the statistics of the rows it read: rebuild them from the seed
    rows_per_unit = (1 << 10) // 16
    ranges, n = _stream.sample_ranges(20000, rows_per_unit, 0.1, (3, 0))
    sub = np.concatenate([x[a:b] for a, b in ranges])
    check(r, sub, -1, 1e-9)
    c = fastmoments.compute(tmp_path / "x.npy", sample=1000, sample_seed=1)
    assert c.count[0] == 1024 and c.sample == 1024 / 20000
    all_rows = fastmoments.compute(tmp_path / "x.npy", sample=10 ** 9)
    assert all_rows.sample == 1.0
    check(all_rows, x, -1, 1e-9)


@pytest.mark.parametrize("shape,axis", [((20000, 4), -1), ((3000, 5, 2), -1), ((3000, 5, 2), None),
                                        ((3000, 5, 2), (1, 2)), ((3000, 5, 2), 1)])
def test_sample_fortran_order_draws_rows(tmp_path, monkeypatch, shape, axis):
    """In a Fortran-order file the sample is still a set of rows (axis 0), not of columns."""
    monkeypatch.setattr(_stream, "SAMPLE_UNIT_BYTES", 1 << 10)
    x = np.asfortranarray(make(shape, np.float64))
    np.save(tmp_path / "f.npy", x)
    with open(tmp_path / "f.npy", "rb") as f:
        np.lib.format.read_magic(f)
        assert np.lib.format.read_array_header_1_0(f)[1]  # stored in Fortran order
    r = fastmoments.compute(tmp_path / "f.npy", axis=axis, sample=0.1, sample_seed=3)
    row_bytes = int(np.prod(shape[1:])) * 8
    ranges, n = _stream.sample_ranges(shape[0], (1 << 10) // row_bytes, 0.1, (3, 0))
    sub = np.concatenate([x[a:b] for a, b in ranges])
    assert r.sample == n / shape[0]
    check(r, sub, axis, 1e-9)
    c = fastmoments.compute(tmp_path / "f.npy", axis=axis, sample=1000, sample_seed=1)
    assert abs(c.sample * shape[0] - 1000) <= (1 << 10) // row_bytes
    monkeypatch.setattr(_stream, "MAX_SAMPLE_PIECES", 10)
    with pytest.raises(ValueError, match="Fortran-order"):
        fastmoments.compute(tmp_path / "f.npy", axis=axis, sample=0.1)


def test_sample_rejects(tmp_path):
    np.save(tmp_path / "x.npy", make((100, 4), np.float32))
    with pytest.raises(ValueError, match="keeps"):
        fastmoments.compute(tmp_path / "x.npy", axis=0, sample=0.5)
    for bad in (0.0, 1.5, -3, 0):
        with pytest.raises(ValueError):
            fastmoments.compute(tmp_path / "x.npy", sample=bad)
    with pytest.raises(TypeError):
        fastmoments.compute(tmp_path / "x.npy", sample=True)
    with pytest.raises(TypeError):
        fastmoments.compute(tmp_path / "x.npy", sample="half")


# ---- interruption -----------------------------------------------------------------------------------

def _task_count():
    return len(os.listdir("/proc/self/task"))


def _task_count_settled(target, timeout=5.0):
    """The task count once exited threads have left /proc: a joined thread (pthread_join, or
    Python's join, which returns before its OS thread ends) can stay listed for a moment after it
    returned. A thread left running keeps the count above ``target`` for the whole timeout."""
    deadline = time.monotonic() + timeout
    while (n := _task_count()) != target and time.monotonic() < deadline:
        time.sleep(0.01)
    return n


def test_ctrl_c_raises_and_leaves_no_threads(tmp_path, monkeypatch, reader_mode, sigint_raises):
    monkeypatch.setattr(_stream, "BLOCK_BYTES", 1 << 16)
    monkeypatch.setattr(_stream, "READ_DELAY", 0.05)
    monkeypatch.setattr(_stream, "POLL_SECONDS", 0.01)
    x = make((1 << 20, 2), np.float32)  # 8 MB: 128 pieces, >6 s with the slowed reader
    np.save(tmp_path / "x.npy", x)
    fastmoments.compute(tmp_path / "x.npy", sample=1, threads=2)  # warm up OpenMP / imports
    before_py, before_os = threading.active_count(), _task_count()
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    t0 = time.monotonic()
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        fastmoments.compute(tmp_path / "x.npy", threads=2)
    elapsed = time.monotonic() - t0
    timer.join()
    assert elapsed < 6.0  # interrupted, not finished (whole run takes > 6 s)
    assert threading.active_count() == before_py
    assert _task_count_settled(before_os) == before_os


# ---- h5py and zarr ----------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["contiguous", "chunked", "gzip", "big-endian"])
def test_h5py(tmp_path, layout, monkeypatch, block_bytes):
    h5py = pytest.importorskip("h5py")
    calls = _spy_native(monkeypatch)
    x = make((333, 6, 2), np.float32)
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        if layout == "contiguous":
            f.create_dataset("x", data=x)
        elif layout == "chunked":
            f.create_dataset("x", data=x, chunks=(50, 6, 2))
        elif layout == "gzip":
            f.create_dataset("x", data=x, chunks=(64, 3, 2), compression="gzip")
        else:
            f.create_dataset("x", data=x.astype(">f4"), chunks=(10, 6, 2))
        f.create_group("g")
    with h5py.File(path, "r") as f:
        for axis in AXES:
            check(fastmoments.compute(f["x"], axis=axis), x, axis, 1e-9)
        with pytest.raises(TypeError, match="Group"):
            fastmoments.compute(f["g"])
        r = fastmoments.compute(f["x"], sample=0.5, sample_seed=0)
        assert 0 < r.sample <= 1
    assert bool(calls) == (layout == "contiguous")


def test_h5py_file_open_for_writing(tmp_path):
    h5py = pytest.importorskip("h5py")
    x = make((100, 3), np.float64)
    with h5py.File(tmp_path / "w.h5", "w") as f:
        ds = f.create_dataset("x", shape=x.shape, dtype=x.dtype)
        ds[:] = x
        check(fastmoments.compute(ds), x, -1)


def test_zarr(tmp_path, block_bytes):
    zarr = pytest.importorskip("zarr")
    x = make((517, 5, 3), np.float64)
    z = zarr.open_array(str(tmp_path / "z.zarr"), mode="w", shape=x.shape, chunks=(40, 5, 3),
                        dtype=x.dtype)
    z[:] = x
    for axis in AXES:
        check(fastmoments.compute(z, axis=axis, threads=2), x, axis)
    r = fastmoments.compute(z, sample=0.25, sample_seed=1)
    assert 0.2 < r.sample < 0.3
    calls = []
    fastmoments.compute(z, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (x.nbytes, x.nbytes)
