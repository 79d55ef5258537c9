"""The command line: ``python -m fastmoments stats`` and ``demo``."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import fastmoments
from fastmoments import __main__ as cli
from reference import assert_matches, reference


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "fastmoments", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=dict(os.environ))


@pytest.fixture
def npy(tmp_path, rng):
    x = (1000.0 + 10.0 * rng.standard_normal((2000, 6))).astype(np.float32)
    path = tmp_path / "x.npy"
    np.save(path, x)
    return path, x


class _FromFile:
    """A Moments-like view of what the CLI wrote (for assert_matches)."""

    def __init__(self, count, mean, m2):
        self.count, self.mean, self.m2 = count, mean, m2


def test_stats_npz_matches_reference(npy, tmp_path):
    path, x = npy
    out = tmp_path / "stats.npz"
    proc = run_cli("stats", path, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # not a terminal: no progress bar by default
    with np.load(out) as z:
        ref = reference(x, -1)
        assert_matches(_FromFile(z["count"], z["mean"], z["m2"]), ref)
        np.testing.assert_allclose(z["variance"], ref.variance().astype(np.float64), rtol=1e-13)
        np.testing.assert_allclose(z["std"], np.sqrt(ref.variance().astype(np.float64)),
                                   rtol=1e-13)
        assert int(z["ddof"]) == 0
    # The summary shows the shape, the count and each feature's mean.
    assert "(2000, 6)" in proc.stdout and "float32" in proc.stdout
    for j in range(6):
        assert f"{float(ref.mean[j]):.10g}"[:8] in proc.stdout
    assert "wrote" in proc.stdout


def test_stats_json_axis_ddof_nan_policy(tmp_path, rng):
    x = rng.standard_normal((40, 3, 5))
    x[0, 1, 2] = np.nan
    x[:, 2, 4] = np.nan  # an all-NaN feature: variance NaN -> null in JSON
    path = tmp_path / "x3.npy"
    np.save(path, x)
    out = tmp_path / "stats.json"
    proc = run_cli("stats", path, "--axis", "1,2", "--ddof", "1", "--nan-policy", "omit",
                   "--out", out)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["shape"] == [3, 5] and doc["ddof"] == 1 and doc["nan_policy"] == "omit"
    assert doc["axis"] == [1, 2] and doc["sources"] == [str(path)]
    ref = reference(x, (1, 2), "omit")
    count = np.array(doc["count"])
    np.testing.assert_array_equal(count, ref.count)
    assert doc["variance"][2][4] is None and count[2, 4] == 0
    var = np.array([[np.nan if v is None else v for v in row] for row in doc["variance"]])
    want = ref.variance(ddof=1).astype(np.float64)
    np.testing.assert_allclose(var, want, rtol=1e-12)


@pytest.mark.parametrize("axis_arg,axis", [("none", None), ("-1", -1), ("0", 0), ("0,1", (0, 1))])
def test_stats_axis_forms(npy, tmp_path, axis_arg, axis):
    path, x = npy
    out = tmp_path / "s.npz"
    proc = run_cli("stats", path, "--axis", axis_arg, "--out", out, "--threads", "2")
    assert proc.returncode == 0, proc.stderr
    with np.load(out) as z:
        assert_matches(_FromFile(z["count"], z["mean"], z["m2"]), reference(x, axis))


def test_parse_axis():
    assert cli.parse_axis("-1") == -1
    assert cli.parse_axis("none") is None and cli.parse_axis("None") is None
    assert cli.parse_axis("0,2") == (0, 2) and cli.parse_axis("(0, 2)") == (0, 2)
    assert cli.parse_axis("1,") == (1,)
    with pytest.raises(Exception):
        cli.parse_axis("x")


def test_stats_passes_paths_through(monkeypatch, tmp_path, capsys):
    seen = []

    def fake_compute(data, **kwargs):
        seen.append((data, kwargs))
        return fastmoments.Moments(np.array([2, 2]), np.zeros(2), np.ones(2))

    monkeypatch.setattr(fastmoments, "compute", fake_compute)
    assert cli.main(["stats", "a.npy", "--no-progress"]) == 0
    assert cli.main(["stats", "a.npy", "b_*.npy", "--axis", "none", "--threads", "3",
                     "--progress", "--nan-policy", "raise", "--ddof", "1"]) == 0
    assert seen[0][0] == "a.npy" and isinstance(seen[0][0], str)
    assert seen[0][1]["progress"] is False and seen[0][1]["axis"] == -1
    assert seen[1][0] == ["a.npy", "b_*.npy"]
    assert seen[1][1] == dict(axis=None, ddof=1, nan_policy="raise", threads=3, progress=True,
                              recursive=False, on_error="raise")
    capsys.readouterr()


def test_stats_several_files(tmp_path, rng):
    parts = [rng.standard_normal((n, 4)) + 50 for n in (100, 7, 300)]
    paths = []
    for i, p in enumerate(parts):
        paths.append(tmp_path / f"part{i}.npy")
        np.save(paths[-1], p)
    try:
        fastmoments.compute([str(p) for p in paths])
    except TypeError as exc:
        pytest.skip(f"lists of files not readable yet ({exc})")
    out = tmp_path / "s.npz"
    proc = run_cli("stats", *paths, "--out", out)
    assert proc.returncode == 0, proc.stderr
    with np.load(out) as z:
        assert_matches(_FromFile(z["count"], z["mean"], z["m2"]),
                       reference(np.concatenate(parts), -1))


def test_stats_many_features_are_truncated(tmp_path):
    path = tmp_path / "wide.npy"
    np.save(path, np.ones((3, 300), np.float32))
    proc = run_cli("stats", path, "--max-features", "6")
    assert proc.returncode == 0, proc.stderr
    assert "300 features, 6 shown" in proc.stdout
    assert len(proc.stdout.splitlines()) < 20


def test_stats_progress_flag(npy):
    path, _ = npy
    proc = run_cli("stats", path, "--progress")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr != ""  # the bar (or the plain-text fallback) went to stderr


@pytest.mark.parametrize("args,rc,message", [
    (["stats", "{tmp}/missing.npy"], 1, "no such file"),
    (["stats", "{tmp}/junk.npy"], 1, "error"),
    (["stats", "{npy}", "--out", "{tmp}/s.csv"], 1, ".npz or .json"),
    (["stats", "{npy}", "--axis", "7"], 1, "out of range"),
    (["stats", "{npy}", "--axis", "x"], 2, "invalid axis"),
    (["stats", "{npy}", "--threads", "0"], 2, ">= 1"),
    (["stats", "{npy}", "--nan-policy", "skip"], 2, "invalid choice"),
    (["demo", "--size-gb", "-1"], 2, "> 0"),
    (["demo", "--size-gb", "0.001", "--dir", "{tmp}/nodir"], 1, "not a directory"),
    ([], 2, "required"),
])
def test_errors_are_one_line_messages(args, rc, message, npy, tmp_path):
    path, _ = npy
    (tmp_path / "junk.npy").write_bytes(b"not an npy file at all")
    args = [a.format(tmp=tmp_path, npy=path) for a in args]
    proc = run_cli(*args)
    assert proc.returncode == rc, (proc.stdout, proc.stderr)
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_version():
    proc = run_cli("--version")
    assert proc.returncode == 0 and fastmoments.__version__ in proc.stdout


def _table_rows(stdout):
    return [line for line in stdout.splitlines()
            if re.search(r"\s\d+\.\d{3}\s+\d+\.\d{2}\s+\d\.\d\de[-+]\d\d$", line)]


def test_demo_small(tmp_path):
    proc = run_cli("demo", "--size-gb", "0.01", "--no-keras", "--dir", tmp_path, "--threads", "2")
    assert proc.returncode == 0, proc.stderr
    rows = _table_rows(proc.stdout)
    names = [r.split("  ")[0] for r in rows]
    assert any(n.startswith("fastmoments.compute") for n in names), proc.stdout
    assert any(n.startswith("numpy") for n in names), proc.stdout
    errors = {r.split("  ")[0].strip(): float(r.split()[-1]) for r in rows}
    assert errors["fastmoments.compute(path)"] <= 1e-12
    assert list(tmp_path.iterdir()) == []  # the temporary folder was removed
    assert len(proc.stdout.splitlines()) <= 12


@pytest.mark.tf
def test_demo_with_keras(tmp_path):
    pytest.importorskip("keras")
    proc = run_cli("demo", "--size-gb", "0.01", "--dir", tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr
    names = [r.split("  ")[0] for r in _table_rows(proc.stdout)]
    assert any("Normalization.adapt" in n for n in names), proc.stdout
    assert list(tmp_path.iterdir()) == []
    # TensorFlow's C++ log (oneDNN notice, absl warnings) stays out of the demo's output.
    assert "oneDNN" not in proc.stderr + proc.stdout and "absl" not in proc.stderr, proc.stderr


def test_console_script_declared():
    # The entry point resolves to the same main() (the script itself exists only after pip
    # installs into a prefix with a bin folder).
    script = shutil.which("fastmoments")
    if script is None:
        pytest.skip("no fastmoments script on PATH")
    proc = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and fastmoments.__version__ in proc.stdout


def test_demo_helpers(tmp_path):
    path = str(tmp_path / "d.npy")
    cli.make_demo_file(path, rows=5000, block_rows=1024)
    x = np.load(path)
    assert x.shape == (5000, cli.DEMO_FEATURES) and x.dtype == np.float32
    assert abs(float(x.mean()) - 1000) < 1 and abs(float(x.std()) - 10) < 0.5
    mean, var = cli.reference_variance(path, block_rows=777)
    ref = reference(x, -1)
    assert np.max(np.abs(var - ref.variance().astype(np.float64)) / var) <= 1e-14
    assert np.max(np.abs(mean - ref.mean.astype(np.float64)) / mean) <= 1e-15
