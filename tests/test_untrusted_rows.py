"""Regression tests for the defects of issue 17 (untrusted files and odd inputs), one per row.

Anything that once crashed the process runs in a child process, so a regression fails the test
instead of killing pytest.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

import fastmoments
from reference import assert_matches, reference


def npy_with_header(path, header: dict, data: bytes = b"") -> None:
    """A version-1.0 .npy file with any header dict, valid or not (np.save refuses bad ones)."""
    text = repr(header).encode("latin1")
    pad = (64 - (10 + len(text) + 1) % 64) % 64
    text += b" " * pad + b"\n"
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + data)


def run_child(code: str, timeout: float = 120) -> dict:
    """Runs ``code`` in a fresh interpreter; it prints one JSON line. A signal fails the test."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"child died with {proc.returncode}: {proc.stderr[-2000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


CHILD_COMPUTE = """
import json, sys, fastmoments
out = {}
for axis in (-1, None):
    try:
        r = fastmoments.compute(sys.argv[1] if len(sys.argv) > 1 else PATH, axis=axis)
        out[str(axis)] = ["ok", str(r.mean)]
    except (ValueError, TypeError) as exc:
        out[str(axis)] = [type(exc).__name__, str(exc)]
print(json.dumps(out))
"""


# -- rows 1 and 2: header shapes that wrap or are negative ------------------------------------------

WRAPPING_SHAPES = [
    (1, 2**62 + 1, 4),     # row 1: the 132-byte file; the element count wraps int64 to 4
    (-1, 4),               # row 2
    (2**32, 2**32, 1),     # 2^64 elements: wraps to 0
    (2**63,),              # past int64
    (0, 2**62, 2**62),     # empty, but NumPy refuses the shape all the same
    (5, 2**61),            # past int64 as a product of two sizes
]


@pytest.mark.parametrize("shape", WRAPPING_SHAPES, ids=str)
@pytest.mark.parametrize("container", ["npy", "npz-stored", "npz-deflated"])
def test_corrupt_header_shape_is_a_value_error(tmp_path, shape, container):
    npy = tmp_path / "bad.npy"
    npy_with_header(npy, {"descr": "|u1", "fortran_order": False, "shape": shape}, bytes([1, 2, 3, 4]))
    path = npy
    if container != "npy":
        path = tmp_path / "bad.npz"
        mode = zipfile.ZIP_STORED if container == "npz-stored" else zipfile.ZIP_DEFLATED
        with zipfile.ZipFile(path, "w", compression=mode) as z:
            z.write(npy, "x.npy")
    with pytest.raises(ValueError):
        np.load(npy)  # the independent judge: NumPy refuses these files too
    got = run_child(f"PATH = {str(path)!r}\n" + CHILD_COMPUTE)
    for axis, (kind, message) in got.items():
        assert kind == "ValueError", (axis, kind, message)
        assert "bad." in message and ("corrupt" in message or "truncated" in message), message


def test_cli_reports_a_corrupt_header_on_one_line(tmp_path):
    path = tmp_path / "wrap.npy"
    npy_with_header(path, {"descr": "|u1", "fortran_order": False, "shape": (1, 2**62 + 1, 4)},
                    bytes([1, 2, 3, 4]))
    assert path.stat().st_size == 132
    proc = subprocess.run([sys.executable, "-m", "fastmoments", "stats", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "corrupt shape" in proc.stderr and "Traceback" not in proc.stderr


# -- row 3: compressed members are decompressed piece by piece --------------------------------------

def test_compressed_member_with_one_huge_row_is_read_in_bounded_memory(tmp_path):
    row = np.zeros((1, 96 << 20), np.uint8)  # 96 MiB row of zeros: deflates to ~100 KB
    row[0, ::4096] = np.arange(row.shape[1] // 4096) % 251
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, x=row)
    assert path.stat().st_size < 2 << 20
    got = run_child(f"""
        import json, resource, numpy as np, fastmoments
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        r = fastmoments.compute({str(path)!r}, axis=None)
        s = fastmoments.compute({str(path)!r}, axis=None, sample=1)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"grew_kib": after - before, "count": r.count, "mean": float(r.mean),
                          "m2": float(r.m2), "sample_count": s.count}}))
    """)
    want = reference(row, axis=None)
    assert got["count"] == row.size and got["sample_count"] == row.size
    assert got["mean"] == pytest.approx(float(want.mean), rel=1e-15)
    assert got["m2"] == pytest.approx(float(want.m2), rel=1e-12)
    assert got["grew_kib"] < 48 * 1024, f"peak RSS grew {got['grew_kib']} KiB for a 96 MiB row"


@pytest.mark.parametrize("axis", [-1, 0, None, (0, 2)])
@pytest.mark.parametrize("order", ["C", "F"])
def test_compressed_member_matches_reference(tmp_path, rng, axis, order):
    x = np.asarray(1e4 + rng.standard_normal((37, 5, 300)), order=order)
    path = tmp_path / "c.npz"
    np.savez_compressed(path, a=x.astype(">f8"))
    assert_matches(fastmoments.compute(f"{path}::a", axis=axis), reference(x, axis=axis))


def test_compressed_member_sample_reads_its_rows(tmp_path, rng):
    x = rng.standard_normal((32768, 16))  # 4 MiB: four 1 MiB sampling units
    path = tmp_path / "c.npz"
    np.savez_compressed(path, a=x)
    r = fastmoments.compute(path, axis=-1, sample=0.25, sample_seed=3)
    assert r.sample == 0.25 and np.all(r.count == 8192)
    rows = [x[i:i + 8192] for i in range(0, 32768, 8192)]
    assert any(np.allclose(r.mean, b.mean(axis=0), rtol=1e-13) for b in rows)


# -- row 4: a memmap is read through the mapping the caller holds ----------------------------------

@pytest.mark.parametrize("change", ["replace", "unlink"])
def test_memmap_reads_its_mapping_after_the_name_changes(tmp_path, change):
    path = tmp_path / "m.npy"
    np.save(path, np.ones((1000, 8)))
    m = np.load(path, mmap_mode="r")
    if change == "replace":
        other = tmp_path / "other.npy"
        np.save(other, np.full((1000, 8), 7.0))
        os.replace(other, path)
    else:
        os.unlink(path)
    r = fastmoments.compute(m, axis=-1)
    np.testing.assert_array_equal(r.mean, np.ones(8))
    np.testing.assert_array_equal(r.count, np.full(8, 1000))


def test_memmap_of_an_unchanged_file_uses_the_file_pipeline(tmp_path, monkeypatch):
    from fastmoments import _stream

    path = tmp_path / "m.npy"
    x = np.arange(4000.0).reshape(500, 8)
    np.save(path, x)
    m = np.load(path, mmap_mode="r")
    seen = []
    real = _stream._reduce_file
    monkeypatch.setattr(_stream, "_reduce_file", lambda src, *a, **k: seen.append(src.fd) or real(src, *a, **k))
    assert_matches(fastmoments.compute(m, axis=-1), reference(x, axis=-1))
    assert len(seen) == 1 and seen[0] >= 0


# -- rows 5 and 9: h5py datasets never written, and 0-d ones ---------------------------------------

def test_h5py_dataset_never_written_reads_its_fill_value(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "u.h5"
    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_dataset("x", shape=(1000, 4), dtype="f8", fillvalue=3.0)
    with h5py.File(path, "r") as f:
        ds = f["x"]
        r = fastmoments.compute(ds, axis=-1)
        np.testing.assert_array_equal(r.mean, np.full(4, 3.0))
        np.testing.assert_array_equal(r.m2, np.zeros(4))
        np.testing.assert_array_equal(r.count, np.full(4, 1000))


def test_h5py_zero_dimensional_dataset(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "s.h5"
    with h5py.File(path, "w") as f:
        f["s"] = 2.5
    with h5py.File(path, "r") as f:
        r = fastmoments.compute(f["s"], axis=None)
    assert r.count == 1 and r.mean == 2.5 and r.m2 == 0.0


# -- row 6: buffers do not grow with threads= -------------------------------------------------------

def test_many_threads_do_not_multiply_the_buffers(tmp_path):
    path = tmp_path / "big.npy"
    x = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(256 << 20 >> 10, 256))
    x[::1024] = 1.0
    del x
    got = run_child(f"""
        import json, resource, fastmoments
        from fastmoments import _stream
        _stream.READER_MODE = "thread"  # the pread ring, as for a file not in the page cache
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        r = fastmoments.compute({str(path)!r}, axis=None, threads=10000)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"grew_kib": after - before, "mean": float(r.mean)}}))
    """)
    assert got["mean"] == pytest.approx(1 / 1024, rel=1e-12)
    assert got["grew_kib"] < 64 * 1024, f"peak RSS grew {got['grew_kib']} KiB"


# -- row 7: Fortran order with axis=None gives scalars ---------------------------------------------

def test_fortran_order_sources_give_scalars_for_axis_none(tmp_path):
    x = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    np.save(tmp_path / "f.npy", x)
    np.savez(tmp_path / "s.npz", a=x)
    np.savez_compressed(tmp_path / "c.npz", a=x)
    mm = np.memmap(tmp_path / "raw.bin", dtype=np.float64, mode="w+", shape=(3, 4), order="F")
    mm[:] = x
    mm.flush()
    for data in (tmp_path / "f.npy", tmp_path / "s.npz", tmp_path / "c.npz", mm):
        r = fastmoments.compute(data, axis=None)
        assert np.ndim(r.mean) == 0 and np.ndim(r.count) == 0, data
        assert r.mean == 5.5 and r.count == 12


# -- row 8: byte-swapped arrays with a zero-length axis --------------------------------------------

@pytest.mark.parametrize("shape,axis", [((0, 3), 0), ((0, 3), -1), ((3, 0), 0), ((0,), None),
                                        ((2, 0, 3), (0, 2))])
def test_byteswapped_empty_arrays_behave_as_native(shape, axis):
    native = np.zeros(shape, "<f8")
    swapped = native.astype(">f8")

    def outcome(a):
        try:
            r = fastmoments.compute(a, axis=axis)
            return ("ok", np.shape(r.mean), np.asarray(r.count).tolist())
        except ValueError as exc:
            return ("ValueError", str(exc))

    assert outcome(swapped) == outcome(native)


# -- row 10: --out with an upper-case extension ----------------------------------------------------

def test_cli_out_keeps_the_name_it_was_given(tmp_path):
    src = tmp_path / "x.npy"
    np.save(src, np.arange(10.0).reshape(5, 2))
    out = tmp_path / "STATS.NPZ"
    proc = subprocess.run([sys.executable, "-m", "fastmoments", "stats", str(src), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.exists() and not (tmp_path / "STATS.NPZ.npz").exists()
    assert f"wrote {out}" in proc.stdout
    np.testing.assert_array_equal(np.load(out)["mean"], [4.0, 5.0])


# -- row 11: absurd thread counts -------------------------------------------------------------------

@pytest.mark.parametrize("threads", [2**31, 2**63, 10**11])
def test_threads_past_the_limit_are_a_value_error(threads):
    with pytest.raises(ValueError, match="threads"):
        fastmoments.compute(np.ones(4), threads=threads)


def test_cli_threads_past_the_limit(tmp_path):
    src = tmp_path / "x.npy"
    np.save(src, np.ones((4, 2)))
    proc = subprocess.run([sys.executable, "-m", "fastmoments", "stats", str(src), "--threads",
                           "99999999999"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "threads" in proc.stderr and "incompatible function arguments" not in proc.stderr


# -- row 14: files that are not regular files -------------------------------------------------------

def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = run_child(f"PATH = {str(fifo)!r}\n" + CHILD_COMPUTE, timeout=60)
    for kind, message in got.values():
        assert kind == "ValueError" and "not a regular file" in message


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
def test_proc_file_with_dtype_is_refused():
    with pytest.raises(ValueError, match="size of 0"):
        fastmoments.compute("/proc/self/status", dtype=np.uint8)


# -- the "also" list --------------------------------------------------------------------------------

def test_accumulator_update_with_no_rows_is_a_no_op(rng):
    x = rng.standard_normal((100, 3))
    acc = fastmoments.Accumulator(axis=-1)
    acc.update(np.zeros((0, 3)))
    acc.update(x[:60]).update(np.zeros((0, 3))).update(x[60:])
    assert_matches(acc.result(), reference(x, axis=-1))
    with pytest.raises(ValueError, match="shape"):
        acc.update(np.zeros((0, 4)))


def test_masked_arrays_honour_their_mask():
    m = np.ma.masked_array([1.0, 2.0, 100.0], mask=[False, False, True])
    r = fastmoments.compute(m, axis=None)
    assert r.count == 2 and r.mean == 1.5 and r.variance == 0.25


def test_bytes_path_reads_the_file(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.arange(6.0).reshape(3, 2))
    r = fastmoments.compute(os.fsencode(path), axis=-1)
    np.testing.assert_array_equal(r.mean, [2.0, 3.0])


@pytest.mark.parametrize("data", [None, {"a": 1}, object()], ids=["None", "dict", "object"])
def test_non_arrays_are_a_type_error_naming_them(data):
    with pytest.raises(TypeError, match=type(data).__name__):
        fastmoments.compute(data)


# -- row 13: state memory per kept output -----------------------------------------------------------

def test_state_memory_is_proportional_to_the_kept_outputs():
    got = run_child("""
        import json, resource, numpy as np, fastmoments
        x = np.ones((2, 4_000_000), np.float32)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        r = fastmoments.compute(x, axis=-1)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"per_output": (after - before) * 1024 / r.mean.size,
                          "ok": bool(np.all(r.mean == 1.0))}))
    """)
    assert got["ok"]
    # Documented in the README: about 113 bytes per kept index at the peak (32 of them the result).
    assert got["per_output"] <= 128, got["per_output"]
