"""FAISS k-means and top-k candidate search (``avdet.kmeans``) vs a torch brute-force baseline and the GEMM rate.

    python -m benchmarks.faiss_bench            # N 1e5, 2e5 (k-means K=300, 20 iters, D=128; top-10 of K=300, 3000)
    python -m benchmarks.faiss_bench --full     # adds N = 1e6
    python -m benchmarks.faiss_bench --tiny     # seconds-long smoke run

Features: N points around K_true = 300 random unit centres (noise σ = 0.3), L2-normalised, float32, D = 128.
Baselines in the same run: Lloyd's k-means written in torch (chunked ‖x‖² − 2x·cᵀ + ‖c‖², argmin, index_add
update, same iteration count) and chunked ``(x @ cᵀ).topk`` for search, at the sizes given by --baseline-max.
Physical limit: each k-means iteration and each search does at least 2·N·K·D flops of inner products; the figure
``x_of_gemm_bound`` divides the time by those flops at the rate torch.matmul reaches on (65536×D)·(D×K) here.
"""
from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import torch

from avdet.kmeans import kmeans, topk_candidates
from benchmarks.common import add_common_args, finish, interleaved_rates, loadavg

log = logging.getLogger("benchmarks.faiss_bench")

D, K, ITERS, TOPK, K_SEARCH = 128, 300, 20, 10, (300, 3000)
CHUNK = 65536


def make_features(n: int, d: int = D, k_true: int = 300, seed: int = 0) -> np.ndarray:
    """(n, d) float32 unit vectors around k_true random unit centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k_true, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, k_true, n)] + 0.3 * rng.standard_normal((n, d)).astype(np.float32) / np.sqrt(d)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def gemm_flops(d: int, k: int) -> float:
    """float32 matmul rate (flop/s) of a (CHUNK, d) @ (d, k) product, all threads."""
    a, b = torch.randn(CHUNK, d), torch.randn(d, k)
    return interleaved_rates({"mm": (lambda: a @ b, 2.0 * CHUNK * d * k)}, rounds=3, calls=3)["mm"]


def torch_kmeans(x: np.ndarray, k: int, niter: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute-force Lloyd's k-means in torch (random-point init, ``niter`` assignment+update rounds).
    Returns centroids (k, D), assignments (N,)."""
    xt = torch.from_numpy(x)
    g = torch.Generator().manual_seed(seed)
    c = xt[torch.randperm(len(xt), generator=g)[:k]].clone()
    x2 = (xt * xt).sum(1)
    assign = torch.empty(len(xt), dtype=torch.int64)
    for _ in range(niter):
        c2 = (c * c).sum(1)
        for s in range(0, len(xt), CHUNK):
            d2 = x2[s:s + CHUNK, None] - 2 * xt[s:s + CHUNK] @ c.T + c2[None]
            assign[s:s + CHUNK] = d2.argmin(1)
        sums = torch.zeros_like(c).index_add_(0, assign, xt)
        counts = torch.bincount(assign, minlength=k).to(c.dtype)
        keep = counts > 0                                   # empty clusters keep their centroid
        c[keep] = sums[keep] / counts[keep, None]
    return c, assign


def torch_topk(x: np.ndarray, c: np.ndarray, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute-force top-k inner products, chunked: idx (N, k), sims (N, k)."""
    xt, ct = torch.from_numpy(x), torch.from_numpy(c)
    sims, idx = [], []
    for s in range(0, len(xt), CHUNK):
        v, i = (xt[s:s + CHUNK] @ ct.T).topk(k, dim=1)
        sims.append(v)
        idx.append(i)
    return torch.cat(idx), torch.cat(sims)


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _inertia(x: np.ndarray, c: np.ndarray, assign: np.ndarray) -> float:
    """Mean squared distance to the assigned centroid (quality check: both methods should agree roughly)."""
    return float(np.mean(np.sum((x - c[assign]) ** 2, axis=1)))


def kmeans_case(x: np.ndarray, k: int, niter: int, flops: float, baseline: bool) -> dict:
    """FAISS k-means (and the torch baseline when ``baseline``) on x; seconds, per-iteration, vs the GEMM bound."""
    n = len(x)
    (cent, assign), t = _timed(lambda: kmeans(x, k, niter=niter))
    bound = 2.0 * n * k * x.shape[1] / flops
    row = {"n": n, "k": k, "iters": niter, "faiss_s": t, "faiss_per_iter_s": t / niter,
           "faiss_x_of_gemm_bound": t / niter / bound, "faiss_inertia": _inertia(x, cent, assign)}
    if baseline:
        (bc, ba), tb = _timed(lambda: torch_kmeans(x, k, niter))
        row.update({"torch_s": tb, "torch_x_of_gemm_bound": tb / niter / bound, "speedup_vs_torch": tb / t,
                    "torch_inertia": _inertia(x, bc.numpy(), ba.numpy())})
    return row


def search_case(x: np.ndarray, centroids: np.ndarray, topk: int, flops: float, baseline: bool) -> dict:
    """topk_candidates (FAISS IndexFlatIP) vs chunked torch matmul+topk; agreement of the top-1 ids."""
    n, k = len(x), len(centroids)
    (idx, _), t = _timed(lambda: topk_candidates(x, centroids, topk))
    bound = 2.0 * n * k * x.shape[1] / flops
    row = {"n": n, "k": k, "topk": topk, "faiss_s": t, "faiss_x_of_gemm_bound": t / bound}
    if baseline:
        (bi, _), tb = _timed(lambda: torch_topk(x, centroids, topk))
        row.update({"torch_s": tb, "torch_x_of_gemm_bound": tb / bound, "speedup_vs_torch": tb / t,
                    "top1_agreement": float(np.mean(idx[:, 0] == bi[:, 0].numpy()))})
    return row


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.faiss_bench", description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 200_000])
    p.add_argument("--full", action="store_true", help="add N = 1e6")
    p.add_argument("--baseline-max", type=int, default=200_000, help="largest N for the torch baselines")
    add_common_args(p, "faiss_bench")
    args = p.parse_args(argv)
    args.k, args.iters, args.k_search = K, ITERS, K_SEARCH
    if args.full:
        args.sizes = sorted(set(args.sizes) | {1_000_000})
    if args.tiny:
        args.sizes, args.k, args.iters, args.k_search = [4000], 30, 5, (30, 300)
    return args


def main(argv: list[str] | None = None) -> dict:
    argv = list(argv or [])
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    load0 = loadavg()
    flops = {k: gemm_flops(D, k) for k in sorted({args.k, *args.k_search})}
    fig = {"gemm_gflops": {k: v / 1e9 for k, v in flops.items()}, "d": D, "kmeans": [], "search": [],
           "torch_threads": torch.get_num_threads(), "faiss_threads": _faiss_threads()}
    for n in args.sizes:
        x = make_features(n)
        base = n <= args.baseline_max
        fig["kmeans"].append(kmeans_case(x, args.k, args.iters, flops[args.k], base))
        log.info("kmeans %s", fig["kmeans"][-1])
        for ks in args.k_search:
            cent = make_features(ks, seed=1)
            fig["search"].append(search_case(x, cent, TOPK, flops[ks], base))
            log.info("search %s", fig["search"][-1])
    fig["loadavg_1m_start_end"] = [load0, loadavg()]
    path = finish("faiss_bench", fig, _summary(fig), argv, args)
    log.info("%s -> %s", _summary(fig), path)
    return fig


def _faiss_threads() -> int:
    import faiss
    return faiss.omp_get_max_threads()


def _summary(fig: dict) -> str:
    km = fig["kmeans"]
    kb = [r for r in km if "torch_s" in r]
    parts = [f"GEMM {', '.join(f'K={k}: {v:.0f}' for k, v in fig['gemm_gflops'].items())} GFLOP/s"]
    for r in km:
        s = f"k-means N={r['n']} K={r['k']} {r['iters']} it: faiss {r['faiss_s']:.2f} s (x{r['faiss_x_of_gemm_bound']:.1f} of GEMM bound)"
        if r in kb:
            s += f" vs torch {r['torch_s']:.2f} s (x{r['speedup_vs_torch']:.2f})"
        parts.append(s)
    for r in fig["search"]:
        s = f"top{r['topk']} N={r['n']} K={r['k']}: faiss {r['faiss_s']:.2f} s (x{r['faiss_x_of_gemm_bound']:.1f})"
        if "torch_s" in r:
            s += f" vs torch {r['torch_s']:.2f} s (x{r['speedup_vs_torch']:.2f}, top-1 agree {r['top1_agreement']:.3f})"
        parts.append(s)
    parts.append(f"load avg {fig['loadavg_1m_start_end'][0]:.1f}->{fig['loadavg_1m_start_end'][1]:.1f}")
    return "; ".join(parts)


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])
