"""The compiled instruction-set variants (baseline, AVX2, AVX-512): one pick for every door, the same
error for a name that cannot be used, exact integers at the edges of the SIMD loops, and the same
bits from every variant this CPU runs. (Accuracy and thread-count determinism run under every
variant through the ``isa`` fixture of conftest.py.)"""

import platform
from fractions import Fraction

import numpy as np
import pytest
from conftest import ISAS, supported_isas
from reference import assert_matches, reference

import fastmoments
from fastmoments import _core

X86 = platform.machine().lower() in ("x86_64", "amd64")


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def test_variant_names_and_selection():
    info = fastmoments.build_info()
    assert set(info["simd"]) <= set(ISAS) and "baseline" in info["simd"]
    assert set(info["simd_supported"]) <= set(info["simd"])
    # Best first: the automatic pick is the first supported variant.
    order = [i for i in ("avx512", "avx2", "baseline") if i in info["simd_supported"]]
    assert info["simd_supported"] == order
    if X86:
        assert "avx2" in info["simd"]
    flags = _cpu_flags()
    if flags is not None and "avx512" in info["simd"]:
        cpu_has = {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni", "avx2", "fma", "f16c"} <= flags
        assert ("avx512" in info["simd_supported"]) == cpu_has


def test_unknown_isa_is_a_value_error(monkeypatch):
    x = np.arange(12.0).reshape(3, 4)
    with pytest.raises(ValueError, match="unknown instruction set 'avx9'"):
        _core.reduce(x, [False, True], 12, isa="avx9")
    monkeypatch.setenv("FASTMOMENTS_ISA", "avx9")
    with pytest.raises(ValueError, match=r"FASTMOMENTS_ISA=avx9: unknown instruction set 'avx9' \(known: auto, "):
        fastmoments.compute(x, axis=0)
    monkeypatch.setenv("FASTMOMENTS_ISA", "auto")
    assert fastmoments.compute(x, axis=0).count.tolist() == [4, 4, 4]


@pytest.mark.parametrize("name", ["avx512", "avx2"])
def test_unusable_isa_is_a_value_error(name, monkeypatch):
    if name in supported_isas():
        pytest.skip(f"this CPU runs {name}: no error to see")
    compiled = name in fastmoments.build_info()["simd"]
    why = "is not supported by this CPU" if compiled else "was not compiled into this build"
    monkeypatch.setenv("FASTMOMENTS_ISA", name)
    with pytest.raises(ValueError, match=f"instruction set '{name}' {why}"):
        fastmoments.compute(np.ones((2, 2)), axis=0)


def test_tf_op_uses_the_same_pick(monkeypatch):
    tf = pytest.importorskip("tensorflow")
    import fastmoments.tf as fmtf

    fmtf._set_fallback(False)
    try:
        if not fmtf.op_info()["loaded"]:
            pytest.skip(f"op not loaded: {fmtf.op_info()['reason']}")
        x = tf.constant(np.arange(12.0).reshape(3, 4))
        monkeypatch.setenv("FASTMOMENTS_ISA", "avx9")
        with pytest.raises(ValueError) as py_err:
            fastmoments.compute(x.numpy(), axis=0)
        with pytest.raises(tf.errors.InvalidArgumentError) as tf_err:
            fmtf.moment_state(x, axis=1)
        assert str(py_err.value) in tf_err.value.message
        for name in supported_isas():
            monkeypatch.setenv("FASTMOMENTS_ISA", name)
            count, mean, m2 = (np.asarray(t) for t in fmtf.moment_state(x, axis=1)[:3])
            assert count.tolist() == [3, 3, 3, 3] and mean.tolist() == [4.0, 5.0, 6.0, 7.0]
    finally:
        fmtf._set_fallback(None)


def _state(x, axis, isa, monkeypatch, **kw):
    monkeypatch.setenv("FASTMOMENTS_ISA", isa)
    r = fastmoments.compute(x, axis=axis, **kw)
    return [np.asarray(a) for a in (r.count, r.mean, r.m2, r.to_dict()["mean_lo"])]


def _exact_sums(x, axis):
    """(count, sum, sum of squares) in Python integers per output of a 1-D or 2-D array, `axis`
    being the kept axis as in fastmoments (None: one output)."""
    if axis is None:
        groups = [x.reshape(-1)]
    elif axis in (-1, x.ndim - 1):
        groups = list(x.T)
    else:
        groups = list(x)
    out = []
    for g in groups:
        v = g.astype(object)
        out.append((v.size, int(v.sum()), int((v * v).sum())))
    return out


EDGE = {
    "int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1), "uint32": (0, 2**32 - 1),
    "int8": (-128, 127), "uint8": (0, 255),
}


@pytest.mark.parametrize("dtype", list(EDGE))
@pytest.mark.parametrize("shape,axis", [((70_001,), None), ((3, 40_003), -1), ((40_003, 37), 0),
                                         ((9, 70), 0), ((5_003, 130), 0)])
def test_integer_extremes_exact_under_every_variant(dtype, shape, axis, monkeypatch):
    """Values at the type's limits (the split squares and int32/uint32 lane sums at their edge)
    and lengths that leave tails after every vector and half-stream loop."""
    lo, hi = EDGE[dtype]
    rng = np.random.default_rng(7)
    x = np.where(rng.random(shape) < 0.5, lo, hi).astype(dtype)
    x.reshape(-1)[::5] = rng.integers(lo, hi, size=x.reshape(-1)[::5].shape, endpoint=True)
    want = _exact_sums(x, axis)
    for isa in supported_isas():
        count, mean, m2, _ = _state(x, axis, isa, monkeypatch)
        count, mean, m2 = count.reshape(-1), mean.reshape(-1), m2.reshape(-1)
        for i, (n, s1, s2) in enumerate(want):
            assert count[i] == n
            exact_m2 = Fraction(s2) - Fraction(s1 * s1, n)
            assert abs(Fraction(float(m2[i])) - exact_m2) <= abs(exact_m2) * Fraction(1, 2**50), (isa, i)
            assert abs(Fraction(float(mean[i])) - Fraction(s1, n)) <= abs(Fraction(s1, n)) * Fraction(1, 2**52) + Fraction(1, 2**60)


FLOAT_CASES = [
    ("float32", (100_003, 37), -1), ("float32", (1000, 300), None), ("float32", (6, 20, 33, 33), 1),
    ("float32", (5, 3, 20_000), 1),  # 80 KB runs, chunks ending mid-run: the next-run prefetch
    ("float64", (50_001, 19), -1), ("float64", (123_457,), None), ("float64", (3, 8, 2000), 1),
    ("float16", (60_001, 40), -1), ("float16", (99_999,), None),  # lanes: three chunks
    ("bfloat16", (60_001, 40), -1), ("bfloat16", (99_999,), None),
]


@pytest.mark.parametrize("dtype,shape,axis", FLOAT_CASES, ids=str)
@pytest.mark.parametrize("nan_policy", ["propagate", "omit"])
def test_variants_agree_bit_for_bit(dtype, shape, axis, nan_policy, monkeypatch):
    """Every variant does the same float operations in the same order per value (the core is
    built with -ffp-contract=off; the 16-bit float kernels fuse squares into their sums by an
    explicit FMA in every variant, std::fma in the portable one), so the states agree to the
    last bit. The 16-bit data spans 32 binades, so that many squared deviations are not exact
    in double: a variant that rounded the square apart from its sum would differ."""
    if dtype == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        dt = np.dtype(ml_dtypes.bfloat16)
    else:
        dt = np.dtype(dtype)
    rng = np.random.default_rng(11)
    if dt.itemsize >= 4:
        x = (rng.standard_normal(shape) * 3 + 1e3).astype(dt)
    else:  # magnitudes 2^-20 ... 2^12, both signs: a fifth of the squared deviations is inexact
        x = (rng.choice([-1.0, 1.0], shape) * np.exp2(rng.uniform(-20, 12, shape))).astype(dt)
    flat = x.reshape(-1)
    if nan_policy == "omit":  # (with 'propagate' a NaN would make every state NaN)
        flat[::997] = np.nan
    flat[5::1009] = 4e4 if dt.itemsize == 2 else 1e7  # outliers: chunks summed a second time
    isas = supported_isas()
    if len(isas) < 2:
        pytest.skip("one variant on this CPU: nothing to compare")
    first = _state(x, axis, isas[0], monkeypatch, nan_policy=nan_policy)
    for isa in isas[1:]:
        other = _state(x, axis, isa, monkeypatch, nan_policy=nan_policy)
        for name, a, b in zip(("count", "mean", "m2", "mean_lo"), first, other):
            np.testing.assert_array_equal(a, b, err_msg=f"{name}: {isas[0]} vs {isa}")


# (shape, axis, places of the special values): lanes with a vector tail (43 lanes), one run, and
# NCHW runs; specials deep in a chunk, near its start and in a tail lane.
BITS_CASES = [
    ((9_001, 43), -1, [(7001, 17), (3, 5), (4500, 41), (8999, 0)]),
    ((99_999,), None, [(77_777,)]),
    ((3, 6, 64, 64), 1, [(1, 2, 30, 7), (2, 5, 0, 0)]),
]


@pytest.mark.parametrize("shape,axis,places", BITS_CASES, ids=str)
@pytest.mark.parametrize("special", ["nan", "inf", "-inf", "both infs", "huge", "subnormal"])
def test_bfloat16_specials_under_every_variant(shape, axis, places, special, monkeypatch):
    """The AVX-512 kernels read bfloat16 by placing its bits in a double (simd::bits_minus),
    exact for finite values only: a NaN or inf becomes a finite number there, and its chunk must
    be found (simd::bits_suspect) and summed again by loads. One such value deep in a chunk must
    give the baseline's bits and the reference's NaN/inf, and so must huge finite values (beyond
    2^126: such chunks are summed twice) and data all subnormal (k * 2^-133, whose bits
    become subnormal doubles)."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    dt = np.dtype(ml_dtypes.bfloat16)
    rng = np.random.default_rng(3)
    x = (100.0 + 5.0 * rng.standard_normal(shape)).astype(dt)
    if special == "subnormal":
        x = (rng.integers(-127, 128, shape) * 2.0**-133).astype(dt)
        assert np.array_equal(x.astype(np.float64) / 2.0**-133, np.round(x.astype(np.float64) / 2.0**-133))
    for i, at in enumerate(places):
        if special == "subnormal":
            break
        if special == "huge":
            x[at] = (-1.0) ** i * 2.5e38
            x[tuple(a // 2 for a in at)] = 1.0e38
        elif special == "both infs":
            x[at] = np.inf
            x[(at[0] // 3,) + at[1:]] = -np.inf
        else:
            x[at] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}[special]
    want = reference(x, axis)
    assert np.isfinite(want.mean).all() == (special in ("huge", "subnormal"))  # as it says
    states = {}
    for isa in supported_isas():
        monkeypatch.setenv("FASTMOMENTS_ISA", isa)
        r = fastmoments.compute(x, axis=axis)
        assert_matches(r, want, context=isa)
        states[isa] = _state(x, axis, isa, monkeypatch)
    for isa, state in states.items():
        for name, a, b in zip(("count", "mean", "m2", "mean_lo"), states["baseline"], state):
            np.testing.assert_array_equal(a, b, err_msg=f"{name}: baseline vs {isa}")
