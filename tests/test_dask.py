"""fastmoments.dask: the core kernel per chunk, the core merge in Dask's tree reduction.

Every result is compared with an independent two-pass reference in extended precision and with
the single-machine ``fastmoments.compute``; the distributed tests run on a LocalCluster of two
worker processes, so chunk states really are serialized between processes.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

import fastmoments  # noqa: E402
import fastmoments.dask as fmd  # noqa: E402
from reference import assert_matches as shared_assert_matches, reference  # noqa: E402

RTOL = 1e-12


def assert_matches(res, x, keep, ddof=0, omit=False):
    """``res`` against the shared reference, and against the single-machine ``compute``."""
    assert isinstance(res, fastmoments.Moments)
    axis = None if keep is None else tuple(int(k) for k in np.atleast_1d(keep))
    policy = "omit" if omit else "propagate"
    shared_assert_matches(res, reference(x, axis, policy), ddof=ddof)
    single = fastmoments.compute(x, axis=keep, ddof=ddof, nan_policy=policy)
    np.testing.assert_array_equal(res.count, single.count)
    np.testing.assert_allclose(res.mean, single.mean, rtol=RTOL, atol=0)
    np.testing.assert_allclose(res.variance, single.variance, rtol=RTOL, atol=0)


@pytest.fixture(scope="module")
def data3d():
    rng = np.random.default_rng(6)
    return rng.normal(1000.0, 10.0, size=(211, 13, 6))


CHUNKINGS = [
    (211, 13, 6),                               # one block
    (50, 13, 6),                                # rows only, ragged last block
    (37, 5, 4),                                 # odd chunks on every axis, kept axes too
    ((0, 100, 0, 111), (13,), (6,)),           # empty chunks along the reduced axis
    ((1, 210), (0, 6, 0, 7), (3, 0, 3)),        # empty chunks along kept axes
    (1, 13, 1),                                 # many tiny chunks: a deep tree
]
AXES = [-1, None, 0, (0, 2), (1, 2), (0, 1, 2)]


@pytest.mark.parametrize("chunks", CHUNKINGS, ids=str)
@pytest.mark.parametrize("axis", AXES, ids=str)
def test_any_chunking_matches_reference(data3d, chunks, axis):
    d = da.from_array(data3d, chunks=chunks)
    res = fmd.moments(d, axis=axis, split_every=2).compute(scheduler="sync")
    assert_matches(res, data3d, axis)


@pytest.mark.parametrize("split_every", [None, 2, 3, 16, {0: 2}])
def test_split_every(data3d, split_every):
    d = da.from_array(data3d, chunks=(7, 5, 6))
    res = fmd.moments(d, axis=-1, split_every=split_every).compute(scheduler="threads")
    assert_matches(res, data3d, -1)


def test_lazy_result_is_a_dask_graph_with_one_kernel_call_per_chunk(data3d, monkeypatch):
    calls = []
    real = fmd._block_moments

    def counting(block, *args):
        calls.append(block.shape)
        return real(block, *args)

    monkeypatch.setattr(fmd, "_block_moments", counting)
    d = da.from_array(data3d, chunks=((50, 0, 161), 5, 6))
    lazy = fmd.moments(d, axis=-1)
    assert dask.is_dask_collection(lazy) and not calls  # nothing ran yet
    (res,) = dask.compute(lazy, scheduler="sync")
    assert_matches(res, data3d, -1)
    assert sorted(calls) == sorted(b.shape for b in d.blocks.ravel() if b.size)  # empty: no call
    assert len(calls) == 2 * 3


def test_state_array_keeps_output_blocks_of_kept_axes(data3d):
    d = da.from_array(data3d, chunks=(50, 5, 4))
    states = fmd.state_array(d, axis=(1, 2))
    assert states.dtype == fmd.STATE_DTYPE
    assert states.chunks == ((5, 5, 3), (4, 2))
    out = states.compute(scheduler="sync")
    assert_matches(fmd.states_to_moments(out), data3d, (1, 2))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.uint8, np.int64, np.bool_])
def test_dtypes(dtype):
    rng = np.random.default_rng(1)
    if dtype == np.bool_:
        x = rng.random((301, 5)) < 0.3
    elif np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        lo, hi = max(int(info.min), -(10 ** 6)), min(int(info.max), 10 ** 6)
        x = rng.integers(lo, hi, size=(301, 5), endpoint=True).astype(dtype)
    else:
        x = rng.normal(100.0, 3.0, size=(301, 5)).astype(dtype)
    d = da.from_array(x, chunks=(43, 2))
    assert_matches(fmd.moments(d, axis=-1).compute(scheduler="sync"), x, -1)


def test_integer_offset():
    # float64 states merged across chunks keep ~1e-16 * |mean| / std relative accuracy in m2,
    # as the core's own chunk merge does; 1e6 +- 3 stays far inside 1e-12.
    x = (np.arange(100_003, dtype=np.int64) % 7) + 10 ** 6
    res = fmd.moments(da.from_array(x, chunks=9_999), axis=None).compute(scheduler="sync")
    assert_matches(res, x, None)


def test_ddof_and_eager_compute_route(data3d):
    d = da.from_array(data3d, chunks=(31, 13, 6))
    res = fastmoments.compute(d, axis=(1, 2), ddof=1)
    assert res.ddof == 1
    assert_matches(res, data3d, (1, 2), ddof=1)


def test_nan_policies():
    rng = np.random.default_rng(2)
    x = rng.normal(5.0, 2.0, size=(120, 4))
    x[rng.random(x.shape) < 0.1] = np.nan
    x[40:80, 2] = np.nan                    # one column all-NaN within one whole chunk
    d = da.from_array(x, chunks=(40, 3))
    omit = fastmoments.compute(d, axis=-1, nan_policy="omit")
    assert_matches(omit, x, -1, omit=True)
    prop = fastmoments.compute(d, axis=-1)
    assert np.isnan(prop.mean).all()
    with pytest.raises(ValueError, match="NaN"):
        fastmoments.compute(d, axis=-1, nan_policy="raise")
    # inf - inf is not a NaN input: 'raise' must not fire for it
    y = np.array([[np.inf], [-np.inf], [1.0]])
    r = fastmoments.compute(da.from_array(y, chunks=1), axis=-1, nan_policy="raise")
    assert np.isnan(r.mean).all()


def test_unknown_chunk_sizes(data3d):
    x = data3d[:, :, 0]
    keep = x[:, 0] > 1000.0
    d = da.from_array(x, chunks=(40, 5))
    filtered = d[da.from_array(keep, chunks=40)]
    assert np.isnan(filtered.shape[0])
    assert_matches(fmd.moments(filtered, axis=-1).compute(scheduler="sync"), x[keep], -1)
    nothing = d[da.from_array(np.zeros_like(keep), chunks=40)]
    with pytest.raises(ValueError, match="empty reduction"):
        fmd.moments(nothing, axis=-1).compute(scheduler="sync")


def test_threads_per_chunk_is_configurable(data3d):
    d = da.from_array(data3d, chunks=(100, 13, 6))
    one = fmd.moments(d, axis=-1, threads=1).compute(scheduler="sync")
    two = fmd.moments(d, axis=-1, threads=2).compute(scheduler="sync")
    assert one == two  # the kernel is bitwise identical for every thread count


def test_progress_callable_on_local_scheduler():
    x = np.random.default_rng(7).random((1000, 4))
    d = da.from_array(x, chunks=(100, 4))
    seen = []
    with dask.config.set(scheduler="sync"):
        res = fastmoments.compute(d, axis=-1, progress=lambda done, tot: seen.append((done, tot)))
    assert_matches(res, x, -1)
    assert len(seen) > 10
    assert all(t == x.nbytes for _, t in seen)
    dones = [s for s, _ in seen]
    assert dones == sorted(dones) and dones[-1] == x.nbytes and dones[0] < x.nbytes


def test_bad_inputs():
    d = da.zeros((10, 3), chunks=4)
    with pytest.raises(TypeError, match="dask.array.Array"):
        fmd.moments(np.zeros((10, 3)))
    with pytest.raises(TypeError, match="dask.array.Array"):
        fastmoments.compute(dask.delayed(np.zeros)((3, 3)))
    with pytest.raises(ValueError, match="out of range"):
        fmd.moments(d, axis=2)
    with pytest.raises(ValueError, match="nan_policy"):
        fmd.moments(d, nan_policy="ignore")
    with pytest.raises(ValueError, match="ddof"):
        fmd.moments(d, ddof=-1)
    with pytest.raises(ValueError, match="threads"):
        fmd.moments(d, threads=0)
    with pytest.raises(TypeError):
        fmd.moments(da.zeros((4,), dtype=np.complex128, chunks=2))
    with pytest.raises(ValueError, match="empty reduction"):
        fmd.moments(da.zeros((0, 3), chunks=2))
    with pytest.raises(ValueError, match="files"):
        fastmoments.compute(d, sample=0.5)


def test_states_round_trip_through_bytes():
    m = fastmoments.compute(np.arange(12.0).reshape(4, 3), axis=-1)
    states = fmd.moments_to_states(m)
    back = np.frombuffer(states.tobytes(), dtype=fmd.STATE_DTYPE).reshape(states.shape)
    assert fmd.states_to_moments(back) == m
    assert pickle.loads(pickle.dumps(states)).dtype == fmd.STATE_DTYPE
    with pytest.raises(TypeError, match="structured"):
        fmd.states_to_moments(np.zeros(3))
    with pytest.raises(TypeError, match="Moments"):
        fmd.moments_to_states(states)


def test_hypothesis_random_chunks():
    hyp = pytest.importorskip("hypothesis")
    st = pytest.importorskip("hypothesis.strategies")

    @hyp.settings(max_examples=40, deadline=None)
    @hyp.given(rows=st.integers(1, 60), cols=st.integers(1, 5),
               rchunks=st.lists(st.integers(0, 9), min_size=1, max_size=8),
               ccols=st.integers(1, 5), axis=st.sampled_from([-1, None, 0]),
               split=st.integers(2, 5), seed=st.integers(0, 2 ** 32 - 1))
    def check(rows, cols, rchunks, ccols, axis, split, seed):
        x = np.random.default_rng(seed).normal(-300.0, 4.0, size=(rows, cols))
        # rows split at random (zero-length pieces allowed), the rest in one last chunk
        cuts, total = [], 0
        for c in rchunks:
            c = min(c, rows - total)
            cuts.append(c)
            total += c
        cuts.append(rows - total)
        d = da.from_array(x, chunks=(tuple(cuts), ccols))
        assert_matches(fmd.moments(d, axis=axis, split_every=split).compute(scheduler="sync"),
                       x, axis)

    check()


# -- on a real cluster: two worker processes, states pickled between them ------------------------
@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, silence_logs=50) as cluster:
        with distributed.Client(cluster) as c:
            yield c


def test_distributed_matches_reference(client, data3d):
    d = da.from_array(data3d, chunks=(23, 5, 4))
    for axis in (-1, None, (1, 2), 0):
        lazy = fmd.moments(d, axis=axis, split_every=3)
        assert_matches(lazy.compute(), data3d, axis)
        assert_matches(client.compute(lazy).result(), data3d, axis)


def test_distributed_runs_on_both_workers(client):
    x = np.random.default_rng(3).normal(0.0, 1.0, size=(4000, 8))
    d = da.from_array(x, chunks=(100, 3))
    distributed = pytest.importorskip("distributed")
    with distributed.get_task_stream(client) as ts:
        res = fastmoments.compute(d, axis=-1)
    assert_matches(res, x, -1)
    workers = {t["worker"] for t in ts.data if "fastmoments-" in str(t["key"])}
    assert len(workers) == 2


def test_distributed_nan_policies_and_empty_chunks(client):
    rng = np.random.default_rng(4)
    x = rng.normal(50.0, 5.0, size=(500, 6))
    x[rng.random(x.shape) < 0.05] = np.nan
    d = da.from_array(x, chunks=((0, 250, 0, 249, 1), (4, 0, 2)))
    assert_matches(fastmoments.compute(d, axis=-1, nan_policy="omit"), x, -1, omit=True)
    with pytest.raises(ValueError, match="NaN"):
        fastmoments.compute(d, axis=-1, nan_policy="raise")


def test_distributed_lazy_persisted_input(client):
    # data generated on the workers, never on the client
    d = da.random.default_rng(5).normal(7.0, 2.0, size=(3001, 5), chunks=(333, 2)).persist()
    x = d.compute()
    assert_matches(fmd.moments(d, axis=-1).compute(), x, -1)
