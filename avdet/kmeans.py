"""FAISS k-means over a feature bank, and top-k candidate clusters for the sparse Sinkhorn-Knopp solver.

GPU is used only when asked for and FAISS was built with GPUs (faiss-gpu); otherwise CPU, same results' API.
"""
from __future__ import annotations

import logging

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
