"""NIfTI volumes and image files (issue 16): folders, lists mixed with .npy, scaling, errors,
skipping, determinism and bounded memory. Every result is compared with the shared reference
(tests/reference.py) over the arrays nibabel / Pillow decode from the same files."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastmoments
from fastmoments import _imaging
from reference import assert_matches, reference

nib = pytest.importorskip("nibabel")
Image = pytest.importorskip("PIL.Image")

RNG = np.random.default_rng(16)


def nifti_data(path) -> np.ndarray:
    """What nibabel reads (scaled as ``img.dataobj`` scales)."""
    return np.asanyarray(nib.load(str(path)).dataobj)


def image_data(path) -> np.ndarray:
    with Image.open(path) as img:
        a = np.asarray(img.convert("RGB") if img.mode in ("P", "CMYK") else img)
    return a[..., None] if a.ndim == 2 else a


def stack(arrays) -> np.ndarray:
    return np.stack([np.asarray(a) for a in arrays])


def check(result, x, axis, **tol):
    assert_matches(result, reference(x, axis), **tol)


def save_nifti(path, data, version=1, slope=None, inter=None, dtype=None):
    cls = nib.Nifti1Image if version == 1 else nib.Nifti2Image
    img = cls(data, np.eye(4))
    if dtype is not None:
        img.set_data_dtype(dtype)
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    nib.save(img, str(path))
    return path


# ---- NIfTI ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("version", [1, 2])
def test_nifti_folder_matches_reference(tmp_path, suffix, version):
    vols = [(RNG.normal(100.0, 7.0, (9, 8, 7))).astype(np.float32) for _ in range(4)]
    paths = [save_nifti(tmp_path / f"scan{i}{suffix}", v, version) for i, v in enumerate(vols)]
    x = stack(nifti_data(p) for p in paths)
    assert x.shape == (4, 9, 8, 7)
    for axis in [None, -1, (1, 2, 3), 0, (0, 2)]:
        check(fastmoments.compute(tmp_path, axis=axis), x, axis)
    check(fastmoments.compute(str(tmp_path / f"scan*{suffix}"), axis=None), x, None)
    check(fastmoments.compute(paths[0], axis=-1), x[:1], -1)


def test_uncompressed_nifti_goes_through_the_native_pipeline(tmp_path):
    p = save_nifti(tmp_path / "a.nii", RNG.normal(size=(5, 6, 7)).astype(">f4"))
    opts = fastmoments._checks.ComputeOptions()
    (src,) = fastmoments._stream.sources_of(str(p), opts)
    assert isinstance(src, fastmoments._stream.FileArray) and src.fortran
    assert src.offset == nib.load(str(p)).dataobj.offset and src.shape == (1, 5, 6, 7)
    gz = save_nifti(tmp_path / "a.nii.gz", RNG.normal(size=(5, 6, 7)).astype(np.float32))
    (src,) = fastmoments._stream.sources_of(str(gz), opts)
    assert isinstance(src, _imaging.DecodedFile)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_scaled_nifti_as_nibabel_scales(tmp_path, suffix):
    raw = RNG.integers(-3000, 3000, (10, 9, 8)).astype(np.int16)
    paths = [save_nifti(tmp_path / f"s{i}{suffix}", raw + i, slope=0.25 + i, inter=-11.5 * i,
                        dtype=np.int16) for i in range(3)]
    data = [nifti_data(p) for p in paths]
    assert data[1].dtype.kind == "f" and not np.array_equal(data[1], raw + 1)
    x = stack(data)
    for axis in [None, -1, (1, 2, 3)]:
        check(fastmoments.compute(paths, axis=axis), x, axis)
    # Unscaled int16 stays int16 (exact integer sums), not nibabel's float64 get_fdata.
    plain = save_nifti(tmp_path / f"plain{suffix}", raw, dtype=np.int16)
    src = fastmoments._stream.sources_of(str(plain), fastmoments._checks.ComputeOptions())[0]
    assert src.dtype == np.int16
    check(fastmoments.compute(plain, axis=None), raw[None], None, mean_rtol=0, m2_rtol=1e-15)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_4d_volumes(tmp_path, suffix):
    vols = [RNG.normal(50, 3, (6, 5, 4, 3)).astype(np.float64) for _ in range(2)]
    paths = [save_nifti(tmp_path / f"f{i}{suffix}", v) for i, v in enumerate(vols)]
    x = stack(nifti_data(p) for p in paths)
    for axis in [None, -1, (1, 2, 3), (0, 4)]:
        check(fastmoments.compute(paths, axis=axis), x, axis)


def test_large_volume_read_in_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(_imaging, "PIECE_BYTES", 4 * 6 * 5 * 2)  # two slabs per piece
    v = RNG.normal(3, 1, (6, 5, 9)).astype(np.float32)
    p = save_nifti(tmp_path / "v.nii.gz", v, slope=2.0, inter=1.0)
    x = nifti_data(p)[None]
    for axis in [None, -1, (1, 3), (0, 1, 2, 3)]:
        check(fastmoments.compute(p, axis=axis), x, axis)


def test_mixed_list_npy_and_nifti(tmp_path):
    a = RNG.normal(5, 2, (3, 6, 5, 4)).astype(np.float32)
    np.save(tmp_path / "first.npy", a)
    v1 = save_nifti(tmp_path / "v1.nii", RNG.normal(5, 2, (6, 5, 4)).astype(np.float32))
    v2 = save_nifti(tmp_path / "v2.nii.gz", RNG.normal(5, 2, (6, 5, 4)).astype(np.float64))
    paths = [v1, tmp_path / "first.npy", v2]
    x = np.concatenate([nifti_data(v1)[None], a, nifti_data(v2)[None]])
    for axis in [None, -1, (1, 2, 3), 0]:
        check(fastmoments.compute(paths, axis=axis), x, axis)
    # A folder holds the same files, sorted by name.
    xs = np.concatenate([a, nifti_data(v1)[None], nifti_data(v2)[None]])
    check(fastmoments.compute(tmp_path, axis=0), xs, 0)
    acc = fastmoments.Accumulator(axis=-1)
    acc.update(v1).update(str(tmp_path / "first.npy")).update(v2)
    check(acc.result(), x, -1)


# ---- images ---------------------------------------------------------------------------------------

def write_images(folder, n=4, size=(12, 10), modes=("RGB",), fmt="png", seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        mode = modes[i % len(modes)]
        channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
        a = rng.integers(0, 256, (size[0], size[1], channels), dtype=np.uint8)
        img = Image.fromarray(a[..., 0] if channels == 1 else a, mode)
        p = folder / f"img{i:03d}.{fmt}"
        img.save(p, **({"quality": 90} if fmt == "jpg" else {}))
        paths.append(p)
    return paths


@pytest.mark.parametrize("fmt", ["png", "jpg", "tif"])
def test_image_folder_per_channel(tmp_path, fmt):
    paths = write_images(tmp_path / "imgs", n=5, fmt=fmt)
    x = stack(image_data(p) for p in paths)  # JPEG: decoded by Pillow here too
    assert x.shape == (5, 12, 10, 3) and x.dtype == np.uint8
    for axis in [-1, None, (1, 2, 3), (0, 3)]:
        check(fastmoments.compute(tmp_path / "imgs", axis=axis), x, axis)


def test_grayscale_and_16_bit_images(tmp_path):
    paths = write_images(tmp_path / "g", n=3, modes=("L",))
    x = stack(image_data(p) for p in paths)
    assert x.shape == (3, 12, 10, 1)
    check(fastmoments.compute(tmp_path / "g", axis=-1), x, -1)
    a = RNG.integers(0, 65536, (7, 9), dtype=np.uint16)
    Image.fromarray(a).save(tmp_path / "deep.png")
    r = fastmoments.compute(tmp_path / "deep.png", axis=None)
    check(r, image_data(tmp_path / "deep.png")[None], None)
    np.testing.assert_allclose(r.mean, a.mean(dtype=np.float64), rtol=1e-15)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
def test_pixels_read_in_place_match_the_copy(tmp_path, mode, monkeypatch):
    # 8-bit images are reduced in Pillow's own memory (Arrow export, RGB padded to 4 bytes) when
    # Pillow exports it; the results must be those of np.asarray's copy, bit for bit, and match
    # the reference, for kept and reduced channel axes.
    paths = write_images(tmp_path / "p", n=3, modes=(mode,))
    x = stack(image_data(p) for p in paths)
    used = []
    shared = _imaging._shared_pixels

    def spy(img, shape):
        v = shared(img, shape)
        used.append(v is not None)
        return v

    monkeypatch.setattr(_imaging, "_shared_pixels", spy)
    in_place = {axis: fastmoments.compute(tmp_path / "p", axis=axis) for axis in [-1, None, (1, 2, 3)]}
    from PIL import Image as PILImage
    if hasattr(PILImage.Image, "__arrow_c_array__"):
        assert all(used)
    monkeypatch.setattr(_imaging, "_shared_pixels", lambda img, shape: None)
    for axis, r in in_place.items():
        copied = fastmoments.compute(tmp_path / "p", axis=axis)
        assert r.mean.tobytes() == copied.mean.tobytes() and r.m2.tobytes() == copied.m2.tobytes()
        assert np.array_equal(r.count, copied.count)
        check(r, x, axis)


def test_pixels_fall_back_to_the_copy_when_pillow_does_not_export(tmp_path, monkeypatch):
    paths = write_images(tmp_path / "q", n=2)
    x = stack(image_data(p) for p in paths)

    def refuse(self, *args, **kwargs):
        raise ValueError("image is in several blocks")

    monkeypatch.setattr(Image.Image, "__arrow_c_array__", refuse, raising=False)
    check(fastmoments.compute(tmp_path / "q", axis=-1), x, -1)


def test_images_of_different_sizes_merge_per_channel(tmp_path):
    a = write_images(tmp_path / "d", n=2, size=(12, 10))
    b = write_images(tmp_path / "e", n=2, size=(7, 13), seed=1)
    x = np.concatenate([image_data(p).reshape(-1, 3) for p in a + b])
    check(fastmoments.compute(a + b, axis=-1), x, -1)
    with pytest.raises(ValueError, match="trailing shape.*img000"):
        fastmoments.compute(a + b, axis=(1, 2, 3))


def test_channel_mismatch_names_the_first_file_that_differs(tmp_path):
    write_images(tmp_path / "m", n=4, modes=("RGB", "RGB", "L", "RGBA"))
    with pytest.raises(ValueError, match=r"img002\.png.*L image.*img000\.png.*RGB image"):
        fastmoments.compute(tmp_path / "m", axis=-1)
    write_images(tmp_path / "n", n=2, modes=("RGB", "RGBA"))
    with pytest.raises(ValueError, match=r"img001\.png.*RGBA"):
        fastmoments.compute(tmp_path / "n", axis=None)


# ---- folders, errors, skipping -----------------------------------------------------------------------

def test_folder_rules(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no readable files"):
        fastmoments.compute(tmp_path / "empty")
    top = tmp_path / "top"
    write_images(top / "b", n=2, seed=2)
    write_images(top / "a", n=2, seed=3)
    (top / "notes.txt").write_text("not data")
    (top / ".hidden.png").write_bytes(b"junk")
    with pytest.raises(ValueError, match="no readable files.*recursive=True"):
        fastmoments.compute(top)
    order = [top / "a" / "img000.png", top / "a" / "img001.png", top / "b" / "img000.png",
             top / "b" / "img001.png"]
    x = stack(image_data(p) for p in order)
    r = fastmoments.compute(top, axis=0, recursive=True)
    check(r, x, 0)  # axis 0 kept: the order of the files is visible
    assert r.skipped == ()
    with pytest.raises(TypeError, match="recursive"):
        fastmoments.compute(top, recursive="yes")
    with pytest.raises(ValueError, match="on_error"):
        fastmoments.compute(top, on_error="ignore")


def corrupt_files(folder):
    """A truncated .nii.gz, a garbage .png and a truncated JPEG among good files."""
    good = write_images(folder, n=3, fmt="png")
    data = good[0].read_bytes()
    (folder / "img001.png").write_bytes(data[: len(data) // 2])  # truncated
    return good


def test_corrupt_file_raises_naming_it(tmp_path):
    corrupt_files(tmp_path / "c")
    with pytest.raises(ValueError, match=r"img001\.png"):
        fastmoments.compute(tmp_path / "c", axis=-1)
    # garbage that is not an image at all
    (tmp_path / "g").mkdir()
    write_images(tmp_path / "g", n=2)
    (tmp_path / "g" / "img005.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(ValueError, match=r"img005\.jpg"):
        fastmoments.compute(tmp_path / "g", axis=-1)
    # a .nii.gz whose gzip stream is cut short
    v = save_nifti(tmp_path / "v.nii.gz", RNG.normal(size=(20, 20, 20)).astype(np.float32))
    blob = v.read_bytes()
    v.write_bytes(blob[: len(blob) * 2 // 3])
    with pytest.raises(ValueError, match=r"v\.nii\.gz"):
        fastmoments.compute(v, axis=None)
    # an uncompressed .nii shorter than its header says
    u = save_nifti(tmp_path / "u.nii", RNG.normal(size=(8, 8, 8)).astype(np.float32))
    u.write_bytes(u.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"u\.nii.*truncated"):
        fastmoments.compute(u, axis=None)
    import threading
    assert not [t for t in threading.enumerate() if t.name.startswith("fastmoments-decode")]


def test_on_error_skip_records_the_files(tmp_path):
    good = corrupt_files(tmp_path / "c")
    (tmp_path / "c" / "img009.png").write_bytes(b"garbage")
    r = fastmoments.compute(tmp_path / "c", axis=-1, on_error="skip")
    assert [os.path.basename(p) for p, _ in r.skipped] == ["img001.png", "img009.png"]
    assert all(isinstance(why, str) and why for _, why in r.skipped)
    x = stack(image_data(p) for p in (good[0], good[2]))
    check(r, x, -1)
    assert r.merge(r).skipped == r.skipped + r.skipped
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="every file was skipped"):
        fastmoments.compute(tmp_path / "bad", on_error="skip")


def test_threads_do_not_change_the_bits(tmp_path):
    paths = [save_nifti(tmp_path / f"v{i}.nii.gz", RNG.normal(1e3, 1, (7, 6, 5)).astype(np.float32))
             for i in range(5)]
    write_images(tmp_path / "i", n=6, fmt="jpg")
    for data, axis in [(paths, None), (paths, (1, 2)), (tmp_path / "i", -1)]:
        one = fastmoments.compute(data, axis=axis, threads=1)
        two = fastmoments.compute(data, axis=axis, threads=2)
        three = fastmoments.compute(data, axis=axis, threads=3)
        for r in (two, three):
            for k in ("count", "mean", "m2"):
                assert np.asarray(getattr(r, k)).tobytes() == np.asarray(getattr(one, k)).tobytes()


def test_progress_counts_bytes_and_files(tmp_path, capsys):
    write_images(tmp_path / "p", n=3)
    pytest.importorskip("tqdm")
    fastmoments.compute(tmp_path / "p", axis=-1, progress=True)
    assert "3/3 files" in capsys.readouterr().err
    seen = []
    fastmoments.compute(tmp_path / "p", axis=-1, progress=lambda done, total: seen.append((done, total)))
    total = 3 * 12 * 10 * 3
    assert seen[-1] == (total, total) and all(t == total for _, t in seen)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_missing_extra_names_it(tmp_path, monkeypatch):
    p = save_nifti(tmp_path / "a.nii.gz", np.zeros((2, 2, 2), np.float32))
    monkeypatch.setitem(sys.modules, "nibabel", None)
    with pytest.raises(ImportError, match=r"fastmoments\[imaging\]"):
        fastmoments.compute(p)
    q = write_images(tmp_path / "i", n=1)[0]
    monkeypatch.setitem(sys.modules, "PIL", None)
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    with pytest.raises(ImportError, match=r"Pillow.*fastmoments\[imaging\]"):
        fastmoments.compute(q)


def test_cli_reads_a_folder(tmp_path):
    write_images(tmp_path / "c", n=3)
    (tmp_path / "c" / "zz.png").write_bytes(b"junk")
    out = subprocess.run([sys.executable, "-m", "fastmoments", "stats", str(tmp_path / "c"),
                          "--axis", "-1", "--on-error", "skip", "--out", str(tmp_path / "s.json")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "skipped" in out.stdout and "zz.png" in out.stdout
    import json
    doc = json.loads((tmp_path / "s.json").read_text())
    x = stack(image_data(tmp_path / "c" / f"img{i:03d}.png") for i in range(3))
    np.testing.assert_allclose(doc["mean"], x.reshape(-1, 3).mean(0, dtype=np.float64), rtol=1e-14)


def test_memory_stays_bounded(tmp_path):
    """Peak RSS over a folder of volumes grows by less than 2 x threads x one volume."""
    folder = tmp_path / "vols"
    folder.mkdir()
    shape = (128, 128, 64)  # 4 MiB float32 each: larger than one 4 MiB piece with the header
    for i in range(8):
        v = np.random.default_rng(i).normal(0, 1, shape).astype(np.float32)
        save_nifti(folder / f"v{i:02d}.nii.gz", v)
    code = textwrap.dedent(f"""
        import glob, resource, numpy as np, fastmoments, nibabel
        files = sorted(glob.glob({str(folder)!r} + "/v*.nii.gz"))
        fastmoments.compute(files[:1], axis=None, threads=2)  # warm up imports and pools
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        r = fastmoments.compute(files, axis=None, threads=2)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) * 1024, r.count)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    grown, count = out.stdout.split()
    volume = 128 * 128 * 64 * 4
    assert int(count) == 8 * 128 * 128 * 64
    assert int(grown) <= 2 * 2 * volume, f"peak RSS grew {int(grown) / volume:.1f} volumes"


@pytest.mark.parametrize("inflater", ["auto", "zlib"])
def test_gzip_members_and_checksums(tmp_path, monkeypatch, inflater):
    monkeypatch.setattr(_imaging, "INFLATER", inflater)
    monkeypatch.setattr(_imaging, "INPUT_BYTES", 997)  # many refills of compressed input
    monkeypatch.setattr(_imaging, "PIECE_BYTES", 16 * 15 * 4 * 3)  # three slabs per piece
    v = RNG.normal(7, 2, (16, 15, 14)).astype(np.float32)
    p = save_nifti(tmp_path / "v.nii", v)
    raw = p.read_bytes()
    # bgzip-style: the file in several gzip members one after another
    cut = [0, 1000, 5000, len(raw) // 2, len(raw)]
    multi = tmp_path / "multi.nii.gz"
    multi.write_bytes(b"".join(gzip.compress(raw[a:b]) for a, b in zip(cut, cut[1:])))
    check(fastmoments.compute(multi, axis=-1), nifti_data(multi)[None], -1)
    assert np.array_equal(nifti_data(multi), v)
    # zero padding after the last member (as some writers leave)
    padded = tmp_path / "padded.nii.gz"
    padded.write_bytes(gzip.compress(raw) + bytes(3000))
    check(fastmoments.compute(padded, axis=-1), v[None], -1)
    # a flipped bit in the CRC of the trailer
    one = bytearray(gzip.compress(raw))
    one[-6] ^= 0x40
    bad = tmp_path / "crc.nii.gz"
    bad.write_bytes(bytes(one))
    with pytest.raises(ValueError, match=r"crc\.nii\.gz"):
        fastmoments.compute(bad, axis=None)
    # the same bits from ISA-L and zlib (they inflate the same bytes)
    good = tmp_path / "good.nii.gz"
    good.write_bytes(gzip.compress(raw))
    monkeypatch.setattr(_imaging, "INFLATER", "zlib")
    want = fastmoments.compute(good, axis=(1, 2))
    monkeypatch.setattr(_imaging, "INFLATER", inflater)
    assert fastmoments.compute(good, axis=(1, 2)) == want


def test_ctrl_c_stops_within_a_second(tmp_path, monkeypatch, sigint_raises):
    import signal
    import threading
    import time

    write_images(tmp_path / "k", n=40, size=(8, 8))
    slow = _imaging._reduce_image

    def slow_reduce(*args):
        time.sleep(0.2)
        return slow(*args)

    monkeypatch.setattr(_imaging, "_reduce_image", slow_reduce)  # 40 x 0.2 s: >= 4 s whole
    sent = []

    def interrupt():
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)

    timer = threading.Timer(0.5, interrupt)
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        fastmoments.compute(tmp_path / "k", axis=-1, threads=2)
    stopped = time.monotonic() - sent[0]
    timer.join()
    assert stopped < 1.0, f"{stopped:.2f} s from Ctrl-C to the end of compute()"
    assert not [t for t in threading.enumerate() if t.name.startswith("fastmoments-decode")]


@pytest.mark.tf
def test_fastnorm_adapts_to_a_folder(tmp_path):
    pytest.importorskip("keras")
    from fastmoments import FastNorm

    paths = write_images(tmp_path / "k", n=3, size=(6, 5))
    x = stack(image_data(p) for p in paths)
    layer = FastNorm(axis=-1)
    layer.adapt(str(tmp_path / "k"))
    ref = reference(x, -1)
    np.testing.assert_allclose(np.asarray(layer.mean).ravel(), ref.mean.astype(np.float64), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(layer.variance).ravel(), ref.variance().astype(np.float64),
                               rtol=1e-5)
