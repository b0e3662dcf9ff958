"""FAISS k-means over a feature bank, and top-k candidate clusters for the sparse Sinkhorn-Knopp solver.

* :func:`kmeans`: faiss.Kmeans over one process's (N, D) bank.
* :func:`sharded_kmeans`: the same Lloyd iterations over rows spread across processes, nothing (N, D) in one place:
  each process assigns its own rows with a FAISS flat index, and only the (K, D) sums, the K counts and the objective
  are reduced. The collectives are injected (``reduce(t, op)`` as in :mod:`avdet.sinkhorn`, ``gather(t)`` = every
  process's rows concatenated); without them it is one process. Which rows train and which start the centroids is
  decided by a hash of each row's sample index, so the result does not depend on how the rows are split.

GPU is used only when asked for and FAISS was built with GPUs (faiss-gpu); otherwise CPU, same results' API.
"""
from __future__ import annotations

import logging
from typing import Callable

import faiss
import numpy as np
import torch

log = logging.getLogger(__name__)


def _gpu_available(use_gpu: bool) -> bool:
    if not use_gpu:
        return False
    n = getattr(faiss, "get_num_gpus", lambda: 0)()
    if n < 1:
        log.warning("use_gpu=True but FAISS sees no GPU (faiss-cpu build?); running on CPU")
    return n >= 1


def _as_f32(x: np.ndarray, name: str) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be (N, D), got shape {x.shape}")
    return x


def kmeans(features: np.ndarray, k: int, niter: int = 20, seed: int = 0, use_gpu: bool = False,
           nredo: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means (faiss.Kmeans), best of ``nredo`` random restarts.
    features (N, D) float32 -> centroids (k, D) float32, assignments (N,) int64 (nearest centroid)."""
    x = _as_f32(features, "kmeans: features")
    n, d = x.shape
    if not 1 <= k <= n:
        raise ValueError(f"kmeans: k={k} must be in [1, N={n}]")
    km = faiss.Kmeans(d, k, niter=niter, seed=seed, nredo=nredo, gpu=_gpu_available(use_gpu), verbose=False,
                      max_points_per_centroid=max(256, -(-n // k)))    # use every point (no subsampling)
    km.train(x)
    _, assign = km.index.search(x, 1)
    return km.centroids.copy(), assign[:, 0].astype(np.int64)


def topk_candidates(features: np.ndarray, centroids: np.ndarray, k: int,
                    use_gpu: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The k centroids with the largest inner product per sample (cosine if both are L2-normalised).

    features (N, D), centroids (K, D) -> idx (N, k) int64, sims (N, k) float32, each row sorted by decreasing
    similarity; feeds ``sparse_sinkhorn_knopp``."""
    x, c = _as_f32(features, "topk_candidates: features"), _as_f32(centroids, "topk_candidates: centroids")
    if x.shape[1] != c.shape[1]:
        raise ValueError(f"topk_candidates: features have D={x.shape[1]} but centroids D={c.shape[1]}")
    if not 1 <= k <= c.shape[0]:
        raise ValueError(f"topk_candidates: k={k} must be in [1, K={c.shape[0]}]")
    index = faiss.IndexFlatIP(c.shape[1])
    if _gpu_available(use_gpu):
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(c)
    sims, idx = index.search(x, k)
    return idx.astype(np.int64), sims.astype(np.float32)


def log_p_from_similarities(sims, temperature: float):
    """Candidate log-probabilities log softmax_j(sims_ij / T) over each row's k candidates.
    sims (N, k) numpy or torch -> same type, float32."""
    if temperature <= 0:
        raise ValueError(f"log_p_from_similarities: temperature must be > 0, got {temperature}")
    t = torch.as_tensor(np.asarray(sims, dtype=np.float32) if not torch.is_tensor(sims) else sims.float())
    out = torch.log_softmax(t / temperature, dim=1)
    return out if torch.is_tensor(sims) else out.numpy()


Reduce = Callable[[torch.Tensor, str], torch.Tensor]
Gather = Callable[[torch.Tensor], torch.Tensor]
_SPLIT_EPS = 1.0 / 1024                      # FAISS's perturbation when it splits a cluster to refill an empty one


def sample_keys(index: np.ndarray, seed: int) -> np.ndarray:
    """A pseudo-random key in [0, 1) per sample index (splitmix64 of index and seed): the same sample gets the same
    key in whichever process holds it. (N,) int -> (N,) float64."""
    z = np.asarray(index, dtype=np.int64).astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15) % 2 ** 64)
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def _nearest(x: np.ndarray, centroids: np.ndarray, use_gpu: bool) -> tuple[np.ndarray, np.ndarray]:
    """(squared L2 distance, index) of each row's nearest centroid (FAISS flat index)."""
    if x.shape[0] == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    index = faiss.IndexFlatL2(centroids.shape[1])
    if _gpu_available(use_gpu):
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    dist, idx = index.search(x, 1)
    return dist[:, 0], idx[:, 0].astype(np.int64)


def _split_empty(centroids: np.ndarray, counts: np.ndarray) -> int:
    """Refill empty clusters as FAISS does: copy the largest cluster and push the two copies apart by ±1/1024 of
    each coordinate (alternating signs), halving its count. In place; returns how many were refilled."""
    empty = np.flatnonzero(counts == 0)
    for ci in empty:
        cj = int(np.argmax(counts))
        sign = np.where(np.arange(centroids.shape[1]) % 2 == 0, 1.0, -1.0)
        centroids[ci] = centroids[cj] * (1 + sign * _SPLIT_EPS)
        centroids[cj] = centroids[cj] * (1 - sign * _SPLIT_EPS)
        counts[ci] = counts[cj] // 2
        counts[cj] -= counts[ci]
    return len(empty)


def sharded_kmeans(features: np.ndarray, index: np.ndarray, k: int, niter: int = 20, seed: int = 0, nredo: int = 1,
                   reduce: Reduce | None = None, gather: Gather | None = None, max_points_per_centroid: int = 256,
                   use_gpu: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
    """Lloyd's k-means over rows held by several processes (every process calls it with its own rows).

    features (n, D) and their sample ``index`` (n,) -> (centroids (k, D) float32, identical in every process;
    this process's assignments (n,) int64; the objective, the sum of squared distances of the training rows).
    As faiss.Kmeans: at most ``max_points_per_centroid`` · k rows train (those with the smallest
    :func:`sample_keys`, by a threshold on the key), the centroids start at k training rows (the smallest keys),
    empty clusters are refilled by splitting the largest, and the best of ``nredo`` restarts (lowest objective)
    wins; every row is then assigned. Per iteration a process reduces only the (k, D) float64 sums, the k counts
    and the objective; the start gathers k rows per process."""
    x = _as_f32(features, "sharded_kmeans: features")
    index = np.asarray(index, dtype=np.int64)
    if index.shape != (x.shape[0],):
        raise ValueError(f"sharded_kmeans: index has shape {index.shape}, features {x.shape}")
    reduce = reduce or (lambda t, op: t)
    gather = gather or (lambda t: t)
    total = int(reduce(torch.tensor([x.shape[0]], dtype=torch.int64), "sum")[0])
    if not 1 <= k <= total:
        raise ValueError(f"sharded_kmeans: k={k} must be in [1, N={total}]")
    best: tuple[float, np.ndarray] | None = None
    for restart in range(nredo):
        keys = sample_keys(index, seed * 7919 + restart)
        train = keys < max_points_per_centroid * k / total             # all rows when N <= max_points · k
        xt, kt = x[train], keys[train]
        first = np.argsort(kt, kind="stable")[:k]
        cand_keys = gather(torch.from_numpy(kt[first])).numpy()
        cand = gather(torch.from_numpy(xt[first])).numpy()
        if cand_keys.shape[0] < k:
            raise ValueError(f"sharded_kmeans: {cand_keys.shape[0]} training rows for k={k} clusters")
        centroids = cand[np.argsort(cand_keys, kind="stable")[:k]].astype(np.float64)
        objective = float("inf")
        for _ in range(niter):
            dist, assign = _nearest(xt, centroids.astype(np.float32), use_gpu)
            sums = torch.zeros(k, x.shape[1], dtype=torch.float64).index_add_(
                0, torch.from_numpy(assign), torch.from_numpy(xt).double()).numpy()
            stats = reduce(torch.from_numpy(np.concatenate([sums.ravel(), np.bincount(assign, minlength=k),
                                                            [dist.astype(np.float64).sum()]])), "sum").numpy()
            sums, counts = stats[:k * x.shape[1]].reshape(k, -1), stats[k * x.shape[1]:-1].astype(np.int64)
            objective = float(stats[-1])
            filled = counts > 0
            centroids[filled] = sums[filled] / counts[filled, None]
            _split_empty(centroids, counts)
        if best is None or objective < best[0]:
            best = (objective, centroids.astype(np.float32))
    objective, centroids = best
    return centroids, _nearest(x, centroids, use_gpu)[1], objective
