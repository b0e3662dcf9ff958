"""FAISS k-means and top-k candidate clusters."""
import numpy as np
import pytest
import torch

from avdet.kmeans import kmeans, log_p_from_similarities, sample_keys, sharded_kmeans, topk_candidates
from avdet.metrics.clusters import cluster_metrics


def _blobs(n_per=50, k=4, d=8, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 10
    x = np.concatenate([c + rng.normal(size=(n_per, d)) * 0.1 for c in centres]).astype(np.float32)
    return x, np.repeat(np.arange(k), n_per)


def test_kmeans_recovers_blobs():
    x, y = _blobs()
    cent, assign = kmeans(x, 4, niter=20, seed=0, nredo=5)
    assert cent.shape == (4, 8) and assign.shape == (200,) and assign.dtype == np.int64
    for c in range(4):                               # each true blob is exactly one cluster, all distinct
        assert len(set(assign[y == c])) == 1
    assert len(set(assign)) == 4


def test_topk_shapes_order_and_log_p():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(30, 6)).astype(np.float32)
    cents = rng.normal(size=(9, 6)).astype(np.float32)
    idx, sims = topk_candidates(feats, cents, 3)
    assert idx.shape == sims.shape == (30, 3) and idx.dtype == np.int64 and sims.dtype == np.float32
    full = feats @ cents.T
    assert np.array_equal(idx[:, 0], full.argmax(1))
    assert np.all(sims[:, :-1] >= sims[:, 1:])
    assert np.allclose(sims, np.take_along_axis(full, idx, 1), atol=1e-5)
    lp = log_p_from_similarities(sims, 0.1)
    assert isinstance(lp, np.ndarray) and np.allclose(np.exp(lp).sum(1), 1, atol=1e-5)
    lpt = log_p_from_similarities(torch.from_numpy(sims), 0.1)
    assert torch.is_tensor(lpt) and np.allclose(lpt.numpy(), lp)


def _mixture(n=6000, k=12, d=16, seed=4, spread=2.5):
    """Gaussian clusters that touch (NMI of FAISS's k-means to the truth: 1.0 at seed 4, spread 2.5)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    x = (rng.normal(size=(k, d))[y] * spread + rng.normal(size=(n, d))).astype(np.float32)
    return x, np.arange(n, dtype=np.int64) * 7 + 3, y


def _sharded_job(rank, world, out_dir):
    from distributed.cluster.dist import all_gather_rows, make_reduce
    x, index, _ = _mixture()
    rows = slice(0, 2500) if rank == 0 else slice(2500, None)           # unequal shares
    cent, assign, obj = sharded_kmeans(x[rows], index[rows], 12, niter=20, seed=5, nredo=2, reduce=make_reduce(),
                                       gather=all_gather_rows, max_points_per_centroid=200)
    torch.save({"centroids": torch.from_numpy(cent), "assign": torch.from_numpy(assign), "objective": obj},
               f"{out_dir}/rank{rank}.pt")


def test_sample_keys_depend_on_index_and_seed_only():
    keys = sample_keys(np.arange(1000), 4)
    assert keys.shape == (1000,)
    assert np.array_equal(keys, sample_keys(np.arange(1000), 4))                 # a function of (index, seed)
    assert np.histogram(keys, bins=10, range=(0, 1))[0].min() > 60               # spread over [0, 1), not clumped
    assert np.array_equal(sample_keys(np.arange(1000)[::-1], 4), keys[::-1])       # per sample, not per position
    assert abs(keys.mean() - 0.5) < 0.05 and not np.allclose(sample_keys(np.arange(1000), 5), keys)


def test_sharded_kmeans_in_two_processes_equals_one(tmp_path):
    """Two gloo processes holding unequal shares give the one-process result: the same assignments, the same
    centroids up to float32 rounding (the K×D sums are reduced in float64, in another order), the same objective."""
    from distributed.cluster.dist import spawn_loopback
    x, index, _ = _mixture()
    cent, assign, obj = sharded_kmeans(x, index, 12, niter=20, seed=5, nredo=2, max_points_per_centroid=200)
    spawn_loopback(_sharded_job, 2, str(tmp_path))
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert torch.equal(r0["centroids"], r1["centroids"]) and r0["objective"] == r1["objective"]
    assert np.allclose(r0["centroids"].numpy(), cent, rtol=0, atol=1e-5)
    assert np.array_equal(np.concatenate([r0["assign"].numpy(), r1["assign"].numpy()]), assign)
    assert abs(r0["objective"] - obj) <= 1e-6 * obj


def test_sharded_kmeans_agrees_with_faiss_kmeans():
    """On the same bank, seed and number of restarts (10; every row trains), the sharded k-means and faiss.Kmeans
    reach the same partition: objective within 1 % and NMI between the two ≥ 0.99 (measured: 1.0 and 1.0; with
    2 restarts either can stop in a worse local optimum, measured ratios 0.52–1.05)."""
    x, index, y = _mixture()
    cent, assign, _ = sharded_kmeans(x, index, 12, niter=20, seed=5, nredo=10, max_points_per_centroid=1000)
    f_cent, f_assign = kmeans(x, 12, niter=20, seed=5, nredo=10)
    sse = lambda c, a: float(((x - c[a]) ** 2).sum())                              # noqa: E731
    assert abs(sse(cent, assign) - sse(f_cent, f_assign)) <= 0.01 * sse(f_cent, f_assign)
    assert cluster_metrics(assign, f_assign)["nmi"] >= 0.99
    assert cluster_metrics(assign, y)["nmi"] >= 0.99


def test_sharded_kmeans_subsamples_and_refills_empty_clusters():
    x, y = _blobs(n_per=300, k=4)
    cent, assign, _ = sharded_kmeans(x, np.arange(len(x)), 4, niter=10, seed=0, nredo=3, max_points_per_centroid=20)
    assert [len(set(assign[y == c])) for c in range(4)] == [1] * 4 and len(set(assign)) == 4
    dup = np.repeat(x[:1], 50, axis=0)                                              # 1 distinct point, k = 3
    cent, assign, obj = sharded_kmeans(dup, np.arange(50), 3, niter=3)
    assert np.isfinite(cent).all() and obj < 1e-6 and len(set(assign)) == 1
    with pytest.raises(ValueError, match="k=60 must be in"):
        sharded_kmeans(dup, np.arange(50), 60)
