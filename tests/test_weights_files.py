"""Weights and masks beside files (``compute(path_or_list_or_glob, weights=, where=)``): arrays or
``.npy`` files read block by block beside the data, against the in-memory door on the same values
and against the exact weighted reference; bounded memory; bad input."""

from __future__ import annotations

import os
import signal
import threading
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

import fastmoments
from fastmoments import _stream
from reference import exact_weighted_reference


def rel(got, want):
    """Largest relative difference; NaN where both are NaN (no positive weight) counts as equal."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    both = np.isnan(got) & np.isnan(want)
    got, want = np.where(both, 0.0, got), np.where(both, 0.0, want)
    scale = np.maximum(np.abs(want), np.finfo(np.float64).tiny)
    return float(np.max(np.abs(got - want) / scale)) if got.size else 0.0


def assert_close(a, b, *, tol=1e-13):
    """Same statistics to rounding (blocks merge in another grouping than the in-memory pass)."""
    np.testing.assert_array_equal(np.asarray(a.count), np.asarray(b.count))
    assert rel(a.sum_weights, b.sum_weights) <= tol
    assert rel(a.sum_weights_sq, b.sum_weights_sq) <= tol
    # The mean to rounding relative to the data's scale (a mean near 0 of unit data cancels).
    ma, mb = np.asarray(a.mean, np.float64), np.asarray(b.mean, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = np.sqrt(np.asarray(b.m2, np.float64) / np.asarray(b.sum_weights, np.float64))
    ok = np.isnan(mb) & np.isnan(ma) | (np.abs(ma - mb) <= tol * (np.abs(mb) + spread))
    assert ok.all(), (ma, mb)
    assert rel(a.m2, b.m2) <= 1e-12


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of a few KiB: every test file is read in many blocks, split inside files."""
    monkeypatch.setattr(_stream, "WEIGHTED_BLOCK_BYTES", 3000)


def write_parts(tmp_path, x, cuts, order="C"):
    paths = []
    for i, (a, b) in enumerate(zip([0] + cuts, cuts + [len(x)])):
        p = tmp_path / f"part_{i:02d}.npy"
        np.save(p, np.asarray(x[a:b], order=order))
        paths.append(str(p))
    return paths


@pytest.mark.parametrize("axis", [-1, None, 0, (0, 2)])
@pytest.mark.parametrize("form", ["array", "file"])
def test_per_row_weights_match_in_memory_and_exact(tmp_path, small_blocks, axis, form):
    rng = np.random.default_rng(1)
    x = (1000 + 10 * rng.standard_normal((301, 4, 3))).astype(np.float32)
    w = 10.0 ** rng.uniform(-3, 3, x.shape[0])
    w[::7] = 0.0
    paths = write_parts(tmp_path, x, [100, 101, 250])
    np.save(tmp_path / "w.npy", w)
    weights = w if form == "array" else str(tmp_path / "w.npy")
    got = fastmoments.compute(paths, axis=axis, weights=weights)
    assert_close(got, fastmoments.compute(x, axis=axis, weights=w))
    ref = exact_weighted_reference(x, np.broadcast_to(w[:, None, None], x.shape), axis)
    np.testing.assert_array_equal(np.asarray(got.count), ref.count)
    assert rel(got.mean, ref.mean) <= 1e-15
    assert rel(got.m2, ref.m2) <= 1e-12
    assert rel(got.sum_weights, ref.sum_weights) <= 1e-13


@pytest.mark.parametrize("form", ["array", "file", "mask_and_weights"])
def test_integer_weight_files_of_integer_data(tmp_path, small_blocks, form):
    """Integer data and integer weights beside files: each block's sums are exact, blocks merge
    by Chan's formula (~1 ulp), weight sums stay exact integers."""
    rng = np.random.default_rng(12)
    x = rng.integers(-30000, 30000, (301, 4, 3)).astype(np.int16)
    w = rng.integers(0, 1000, x.shape[0]).astype(np.int32)
    w[::7] = 0
    paths = write_parts(tmp_path, x, [100, 101, 250])
    np.save(tmp_path / "w.npy", w)
    kw = {"weights": w if form == "array" else str(tmp_path / "w.npy")}
    full = np.broadcast_to(w[:, None, None], x.shape).astype(np.int64)
    if form == "mask_and_weights":
        m = rng.random(x.shape) < 0.7
        np.save(tmp_path / "m.npy", m)
        kw["where"] = str(tmp_path / "m.npy")
        full = np.where(m, full, 0)
    for axis in (-1, None):
        got = fastmoments.compute(paths, axis=axis, **kw)
        ref = exact_weighted_reference(x, full, axis)
        np.testing.assert_array_equal(np.asarray(got.count), ref.count)
        np.testing.assert_array_equal(np.asarray(got.sum_weights, np.float64), ref.sum_weights)
        assert rel(got.mean, ref.mean) <= 1e-15
        assert rel(got.m2, ref.m2) <= 1e-15


@pytest.mark.parametrize("axis", [-1, None, 0])
def test_weight_files_give_the_same_bits_for_every_thread_count(tmp_path, small_blocks, axis):
    """Blocks are reduced by several workers at once and joined in block order."""
    rng = np.random.default_rng(5)
    x = (1e6 + rng.standard_normal((203, 5))).astype(np.float64)
    np.save(tmp_path / "w.npy", rng.uniform(0.0, 3.0, x.shape[0]))
    np.save(tmp_path / "m.npy", rng.random(x.shape) < 0.8)
    paths = write_parts(tmp_path, x, [70, 71, 150])
    runs = [fastmoments.compute(paths, axis=axis, weights=str(tmp_path / "w.npy"),
                                where=str(tmp_path / "m.npy"), threads=t) for t in (1, 2, 3, 8)]
    for r in runs[1:]:
        for field in ("count", "mean", "m2", "sum_weights", "sum_weights_sq"):
            np.testing.assert_array_equal(np.asarray(getattr(r, field)),
                                          np.asarray(getattr(runs[0], field)), err_msg=field)


@pytest.mark.parametrize("form", ["array", "file"])
def test_elementwise_weights_and_mask_files(tmp_path, small_blocks, form):
    rng = np.random.default_rng(2)
    x = 1e9 + rng.standard_normal((257, 6))
    w = rng.random(x.shape).astype(np.float32)
    m = rng.random(x.shape) < 0.8
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "w.npy", w)
    np.save(tmp_path / "m.npy", m)
    kw = ({"weights": w, "where": m} if form == "array" else
          {"weights": str(tmp_path / "w.npy"), "where": tmp_path / "m.npy"})
    for axis in (-1, None, 0):
        got = fastmoments.compute(str(tmp_path / "x.npy"), axis=axis, **kw)
        assert_close(got, fastmoments.compute(x, axis=axis, weights=w, where=m))
        ref = exact_weighted_reference(x, np.where(m, w, 0), axis)
        assert rel(got.mean, ref.mean) <= 1e-15
        assert rel(got.m2, ref.m2) <= 1e-12
    only_mask = fastmoments.compute(str(tmp_path / "x.npy"), axis=0, where=str(tmp_path / "m.npy"))
    assert_close(only_mask, fastmoments.compute(x, axis=0, where=m))


def test_glob_and_fortran_and_byteswapped_files(tmp_path, small_blocks):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((200, 5, 3))
    w = rng.integers(0, 5, x.shape[0]).astype(np.int16)  # converted block by block
    np.save(tmp_path / "a_0.npy", np.asfortranarray(x[:90]))
    np.save(tmp_path / "a_1.npy", x[90:].astype(">f8"))
    np.save(tmp_path / "w.npy", np.asfortranarray(w.astype(">i2")))
    ew = rng.random(x.shape)
    np.save(tmp_path / "ew.npy", np.asfortranarray(ew))
    for axis in (-1, None, (0, 1)):
        got = fastmoments.compute(str(tmp_path / "a_*.npy"), axis=axis, weights=str(tmp_path / "w.npy"))
        assert_close(got, fastmoments.compute(x, axis=axis, weights=w))
        got = fastmoments.compute(str(tmp_path / "a_*.npy"), axis=axis, weights=str(tmp_path / "ew.npy"))
        assert_close(got, fastmoments.compute(x, axis=axis, weights=ew))


def test_broadcast_weights_without_row_axis_and_raw_and_npz(tmp_path, small_blocks):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((150, 4)).astype(np.float32)
    fw = rng.random(4)  # one weight per feature: no row axis, read whole
    np.save(tmp_path / "fw.npy", fw)
    x.tofile(tmp_path / "x.raw")
    want = fastmoments.compute(x, axis=None, weights=fw)
    got = fastmoments.compute(str(tmp_path / "x.raw"), axis=None, dtype=np.float32, shape=(-1, 4),
                              weights=str(tmp_path / "fw.npy"))
    assert_close(got, want)
    w = rng.random(150)
    np.savez(tmp_path / "s.npz", x=x)
    np.savez_compressed(tmp_path / "c.npz", x=x)
    for p in ("s.npz", "c.npz"):
        got = fastmoments.compute(str(tmp_path / p), axis=-1, weights=w, nan_policy="omit")
        assert_close(got, fastmoments.compute(x, axis=-1, weights=w))


def test_nan_policies_with_weight_files(tmp_path, small_blocks):
    x = np.arange(60, dtype=np.float64).reshape(20, 3)
    x[5, 1] = np.nan
    w = np.ones(20)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "w.npy", w)
    with pytest.raises(ValueError, match="NaN"):
        fastmoments.compute(str(tmp_path / "x.npy"), axis=-1, weights=str(tmp_path / "w.npy"),
                            nan_policy="raise")
    got = fastmoments.compute(str(tmp_path / "x.npy"), axis=-1, weights=str(tmp_path / "w.npy"),
                              nan_policy="omit")
    assert_close(got, fastmoments.compute(x, axis=-1, weights=w, nan_policy="omit"))
    w[5] = 0.0  # a value of weight 0 does not exist, even NaN
    np.save(tmp_path / "w.npy", w)
    got = fastmoments.compute(str(tmp_path / "x.npy"), axis=-1, weights=str(tmp_path / "w.npy"),
                              nan_policy="raise")
    assert_close(got, fastmoments.compute(x, axis=-1, weights=w))


def test_accumulator_on_files_with_weight_files(tmp_path, small_blocks):
    rng = np.random.default_rng(5)
    x = (1000 + rng.standard_normal((300, 8))).astype(np.float32)
    w = rng.random(300)
    acc = fastmoments.Accumulator(axis=-1)
    for a, b in ((0, 120), (120, 300)):
        np.save(tmp_path / f"x{a}.npy", x[a:b])
        np.save(tmp_path / f"w{a}.npy", w[a:b])
        acc.update(str(tmp_path / f"x{a}.npy"), weights=str(tmp_path / f"w{a}.npy"))
    assert_close(acc.result(), fastmoments.compute(x, axis=-1, weights=w))


def test_in_memory_data_takes_a_weights_path(tmp_path):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((100, 3))
    w = rng.random(100)
    np.save(tmp_path / "w.npy", w)
    assert fastmoments.compute(x, weights=str(tmp_path / "w.npy")) == fastmoments.compute(x, weights=w)


def test_memory_stays_bounded(tmp_path):
    """32 MiB of data and 32 MiB of elementwise weights: a few blocks in memory at a time."""
    rng = np.random.default_rng(7)
    n = 1 << 20
    np.save(tmp_path / "x.npy", rng.standard_normal((n, 4)).astype(np.float64))
    np.save(tmp_path / "w.npy", rng.random((n, 4)))
    np.save(tmp_path / "r.npy", rng.random(n))
    for weights in ("w.npy", "r.npy"):
        tracemalloc.start()
        try:
            fastmoments.compute(str(tmp_path / "x.npy"), axis=0, weights=str(tmp_path / weights))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # axis=0 keeps the rows: n states of 48 bytes are the result itself (and its pieces).
        assert peak < n * 48 * 2 + 8 * _stream.WEIGHTED_BLOCK_BYTES, peak
    tracemalloc.start()
    try:
        fastmoments.compute(str(tmp_path / "x.npy"), axis=-1, weights=str(tmp_path / "w.npy"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * _stream.WEIGHTED_BLOCK_BYTES, peak


# ---- bad input -----------------------------------------------------------------------------------

def test_length_mismatch_names_both_shapes(tmp_path):
    x = np.ones((30, 3))
    write_parts(tmp_path, x, [10])
    np.save(tmp_path / "w.npy", np.ones(29))
    with pytest.raises(ValueError, match=r"\(29,\).*\(30, 3\)"):
        fastmoments.compute(str(tmp_path / "part_*.npy"), weights=str(tmp_path / "w.npy"))
    with pytest.raises(ValueError, match=r"\(31,\).*\(30, 3\)"):
        fastmoments.compute(str(tmp_path / "part_*.npy"), weights=np.ones(31))
    with pytest.raises(ValueError, match=r"\(30, 2\).*\(30, 3\)"):
        fastmoments.compute(str(tmp_path / "part_*.npy"), where=np.ones((30, 2), bool))


@pytest.mark.parametrize("bad,match", [(-1.0, "non-negative"), (np.nan, "NaN"), (np.inf, "infinite")])
@pytest.mark.parametrize("n", [10, 100_000])
def test_bad_weights_in_a_file_are_named(tmp_path, bad, match, n):
    np.save(tmp_path / "x.npy", np.ones((n, 2), np.float32))
    w = np.ones(n)
    w[n - 3] = bad
    np.save(tmp_path / "w.npy", w)
    with pytest.raises(ValueError, match=match):
        fastmoments.compute(str(tmp_path / "x.npy"), weights=str(tmp_path / "w.npy"))


def test_bad_weight_files_and_options(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((8, 2)))
    x = str(tmp_path / "x.npy")
    np.save(tmp_path / "m.npy", np.ones((8, 2)))
    with pytest.raises(ValueError, match="boolean"):
        fastmoments.compute(x, where=str(tmp_path / "m.npy"))
    np.save(tmp_path / "c.npy", np.ones(8, complex))
    with pytest.raises((ValueError, TypeError), match="complex|real numbers"):
        fastmoments.compute(x, weights=str(tmp_path / "c.npy"))
    with pytest.raises(FileNotFoundError, match="weights"):
        fastmoments.compute(x, weights=str(tmp_path / "nope.npy"))
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ValueError, match="bad.npy"):
        fastmoments.compute(x, weights=str(tmp_path / "bad.npy"))
    np.save(tmp_path / "w.npy", np.ones(8))
    with open(tmp_path / "w.npy", "r+b") as f:  # header promises more than the file holds
        f.truncate(f.seek(0, 2) - 8)
    with pytest.raises(ValueError, match="truncated"):
        fastmoments.compute(x, weights=str(tmp_path / "w.npy"))
    with pytest.raises(ValueError, match="sample="):
        fastmoments.compute(x, axis=-1, weights=np.ones(8), sample=0.5)
    with pytest.raises(ValueError, match="on_error"):
        fastmoments.compute(x, weights=np.ones(8), on_error="skip")
    np.save(tmp_path / "y.npy", np.ones((8, 3)))
    with pytest.raises(ValueError, match="trailing shape"):
        fastmoments.compute([x, str(tmp_path / "y.npy")], weights=np.ones(16))


def test_weight_files_are_not_modified(tmp_path):
    np.save(tmp_path / "x.npy", np.arange(20.0).reshape(10, 2).astype(">f4"))
    w = np.arange(10, dtype=">f8")
    np.save(tmp_path / "w.npy", w)
    before = (tmp_path / "w.npy").read_bytes()
    fastmoments.compute(str(tmp_path / "x.npy"), weights=str(tmp_path / "w.npy"))
    assert (tmp_path / "w.npy").read_bytes() == before


def test_ctrl_c_stops_the_block_workers(tmp_path, monkeypatch, sigint_raises):
    """Ctrl-C while workers reduce blocks: KeyboardInterrupt within a second, no thread left."""
    monkeypatch.setattr(_stream, "WEIGHTED_BLOCK_BYTES", 1 << 12)
    slow = _stream.reduce_ndarray

    def reduce_slowly(*args, **kwargs):
        time.sleep(0.01)
        return slow(*args, **kwargs)

    monkeypatch.setattr(_stream, "reduce_ndarray", reduce_slowly)
    rng = np.random.default_rng(3)
    np.save(tmp_path / "x.npy", rng.standard_normal((1 << 17, 4)))  # 1024 blocks: > 5 s
    np.save(tmp_path / "w.npy", rng.random(1 << 17))
    args = (str(tmp_path / "x.npy"),)
    before = threading.active_count()
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    t0 = time.monotonic()
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        fastmoments.compute(*args, weights=str(tmp_path / "w.npy"), threads=2)
    elapsed = time.monotonic() - t0
    timer.join()
    assert elapsed < 1.5
    assert threading.active_count() == before
