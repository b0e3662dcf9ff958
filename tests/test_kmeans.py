"""FAISS k-means and top-k candidate clusters."""
import numpy as np
import torch

from avdet.kmeans import kmeans, log_p_from_similarities, topk_candidates


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
