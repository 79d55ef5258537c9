"""Partial states leave the process and come back: pickle bytes, plain arrays, JSON, other
processes; merged in any order and grouping they give the statistics of all the data."""

from __future__ import annotations

import concurrent.futures
import functools
import json
import multiprocessing
import pickle

import numpy as np
import pytest

import fastmoments
from fastmoments import Accumulator, Moments
from reference import assert_matches, reference

RTOL = 1e-12


@pytest.fixture(scope="module")
def data():
    return np.random.default_rng(11).normal(1000.0, 10.0, size=(5003, 7))


@pytest.mark.parametrize("axis", [-1, None])
def test_pickle_round_trip_keeps_everything(data, axis):
    m = fastmoments.compute(data, axis=axis, ddof=1)
    back = pickle.loads(pickle.dumps(m))
    assert back == m and back.ddof == 1 and back.sample is None
    np.testing.assert_array_equal(back.variance, m.variance)
    sampled = Moments(m.to_dict()["count"], m.to_dict()["mean"], m.to_dict()["m2"], sample=0.25)
    assert pickle.loads(pickle.dumps(sampled)).sample == 0.25


def test_to_dict_is_plain_independent_arrays(data):
    m = fastmoments.compute(data, axis=-1)
    d = m.to_dict()
    assert set(d) == {"count", "mean", "m2", "mean_lo"}
    assert d["count"].dtype == np.int64
    assert d["mean"].dtype == d["m2"].dtype == d["mean_lo"].dtype == np.float64
    assert Moments(**d) == m
    d["mean"][:] = 0.0  # a copy: the result it came from is untouched
    assert not np.array_equal(m.mean, d["mean"])


def test_state_through_json_and_raw_bytes(data):
    m = fastmoments.compute(data, axis=-1)
    # JSON (e.g. a message queue, a REST call): Python floats print with round-trip precision
    text = json.dumps({k: v.tolist() for k, v in m.to_dict().items()})
    assert Moments(**{k: np.asarray(v) for k, v in json.loads(text).items()}) == m
    # raw buffers (e.g. Arrow/Parquet columns, MPI): one array per field
    raw = {k: (v.dtype.str, v.tobytes()) for k, v in m.to_dict().items()}
    assert Moments(**{k: np.frombuffer(b, dtype=t) for k, (t, b) in raw.items()}) == m


def test_accumulator_pickled_mid_stream_continues(data):
    acc = Accumulator(axis=-1)
    acc.update(data[:1000]).update(data[1000:2500])
    resumed = pickle.loads(pickle.dumps(acc))
    resumed.update(data[2500:])
    assert_matches(resumed.result(), reference(data, axis=-1))
    other = Accumulator(axis=-1).update(data[2500:])
    np.testing.assert_allclose(acc.merge(pickle.loads(pickle.dumps(other))).result().m2,
                               resumed.result().m2, rtol=RTOL, atol=0)


def test_accumulator_result_without_data_raises():
    with pytest.raises(ValueError, match="no data"):
        pickle.loads(pickle.dumps(Accumulator())).result()


def _merge_tree(parts, rng):
    """Merge ``parts`` by joining two random neighbours or strangers until one is left."""
    parts = list(parts)
    while len(parts) > 1:
        i, j = sorted(rng.choice(len(parts), size=2, replace=False))
        a, b = parts.pop(j), parts.pop(i)
        parts.append(a.merge(b) if rng.random() < 0.5 else b.merge(a))
    return parts[0]


@pytest.mark.parametrize("seed", range(8))
def test_any_grouping_and_order_gives_the_same_answer(data, seed):
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, data.shape[0]), size=rng.integers(1, 40), replace=False))
    pieces = np.split(data, cuts)
    parts = [pickle.loads(pickle.dumps(fastmoments.compute(p, axis=-1))) for p in pieces]
    rng.shuffle(parts)
    merged = _merge_tree(parts, rng)
    assert_matches(merged, reference(data, axis=-1))
    whole = fastmoments.compute(data, axis=-1)
    np.testing.assert_allclose(merged.m2, whole.m2, rtol=RTOL, atol=0)
    np.testing.assert_allclose(merged.mean, whole.mean, rtol=RTOL, atol=0)


def test_merge_is_commutative_and_empty_state_is_identity(data):
    a = fastmoments.compute(data[:100], axis=-1)
    b = fastmoments.compute(data[100:], axis=-1)
    assert a.merge(b) == b.merge(a)
    zero = Moments(np.zeros(7, np.int64), np.zeros(7), np.zeros(7))
    assert zero.merge(a) == a and a.merge(zero) == a
    with pytest.raises(ValueError, match="shape"):
        a.merge(fastmoments.compute(data, axis=None))
    with pytest.raises(TypeError, match="Moments"):
        a.merge(a.to_dict())


def _part_in_other_process(args):
    path, start, stop = args
    x = np.load(path, mmap_mode="r")[start:stop]
    return fastmoments.compute(x, axis=-1, threads=1).to_dict()


def test_states_from_worker_processes(data, tmp_path):
    # Another engine in miniature: separate processes return plain dicts, the parent merges.
    path = tmp_path / "x.npy"
    np.save(path, data)
    bounds = [(str(path), s, min(s + 977, data.shape[0])) for s in range(0, data.shape[0], 977)]
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
        dicts = list(pool.map(_part_in_other_process, bounds))
    total = functools.reduce(Moments.merge, [Moments(**d) for d in reversed(dicts)])
    assert_matches(total, reference(data, axis=-1))


def test_merges_keep_full_precision_far_from_zero():
    # 1000 sequential merges of batches with mean 1e9 and unit spread: the means' rounding
    # residuals (mean_lo) keep Chan's delta exact; a bare float64 mean gave 1.2e-10 here.
    rng = np.random.default_rng(5)
    x = 1e9 + rng.standard_normal(1_000_000)
    ref = x.astype(np.longdouble)
    want = float(((ref - ref.mean()) ** 2).mean())
    acc = fastmoments.Accumulator(axis=None)
    for batch in np.array_split(x, 1000):
        acc.update(batch)
    assert abs(acc.result().variance - want) / want <= 1e-12
    # the same through plain arrays (to_dict) and pickling between the merges
    parts = [pickle.loads(pickle.dumps(fastmoments.compute(b, axis=None))).to_dict()
             for b in np.array_split(x, 50)]
    total = Moments(**parts[0])
    for d in parts[1:]:
        total = total.merge(Moments(**d))
    assert abs(total.variance - want) / want <= 1e-12
