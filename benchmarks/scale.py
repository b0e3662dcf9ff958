"""A relabel round at scale, per rank: peak memory and time, simulated with worker processes (no model).

    python -m benchmarks.scale                  # N = 1e6 and 1e7 over 4 ranks (minutes; ~8 GB in all at 1e7)
    python -m benchmarks.scale --n 1e6 --world 2
    python -m benchmarks.scale --tiny           # seconds-long smoke run

Each rank (a process of a loopback gloo group, one torch thread) holds N/world rows, as training workers hold their
scores: D = 64 pooled features for the k-means warm start (K = 300, sharded: Lloyd steps reducing K×D sums) and
top-10 candidate log-probabilities over K = 3000 clusters for the sparse Sinkhorn. It runs both rounds as
``relabel.relabel_round`` does (the previous table over all N samples, labels exchanged in that table's order) and
reports the time of each round and its peak RSS above what it held before the round (its inputs and the previous
table, which training holds anyway). The point: rank 0 holds nothing beyond the others but O(N) int labels —
the goal ``scale_rank0_extra_bytes_per_sample`` (rank 0's peak minus the largest other rank's, per sample) ≤ 8.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import PeakRSS, add_common_args, finish, loadavg

log = logging.getLogger("benchmarks.scale")

FEATURE_DIM, KMEANS_K, SINKHORN_K, TOPK = 64, 300, 3000, 10


def _rows(rank: int, world: int, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                   torch.Tensor]:
    """This rank's rows: global indices rank, rank + world, ...; features; candidate ids and log-probabilities."""
    index = torch.arange(rank, n, world, dtype=torch.int64)
    g = torch.Generator().manual_seed(seed * 1000 + rank)
    centres = torch.randn(KMEANS_K, FEATURE_DIM, generator=torch.Generator().manual_seed(seed)) * 3
    feats = centres[torch.randint(0, KMEANS_K, (len(index),), generator=g)]
    feats += torch.randn(feats.shape, generator=g)
    cand = torch.randint(0, SINKHORN_K, (len(index), TOPK), generator=g)
    log_p = torch.log_softmax(torch.randn(len(index), TOPK, generator=g) * 3, dim=1)
    return index, feats, cand, log_p


def _rank_job(rank: int, world: int, n: int, out_dir: str, max_iters: int) -> None:
    from avdet.config import SinkhornConfig
    from distributed.stage1.config import RelabelConfig
    from distributed.stage1.labels import random_equipartition
    from distributed.stage1.relabel import Round, Scores, relabel_round
    import faiss  # noqa: F401  - imported before the measurements: a lazy import is not the round's memory
    import scipy.optimize  # noqa: F401
    torch.set_num_threads(1)
    index, feats, cand, log_p = _rows(rank, world, n)
    true = torch.full((1,), -1)
    out = {"rank": rank, "rows": len(index)}
    km_cfg = RelabelConfig(warm_start="kmeans", kmeans_solver="sharded", kmeans_iters=10, kmeans_restarts=1)
    prev = random_equipartition(np.arange(n), KMEANS_K, version=1)
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        table, _ = relabel_round(Scores(index, true, KMEANS_K, {"features": feats}),
                                 Round(km_cfg, SinkhornConfig(), prev, 1))
        out["kmeans_s"] = time.perf_counter() - t0
    out["kmeans_peak_mb"] = mem.peak / 2**20
    prev = random_equipartition(np.arange(n), SINKHORN_K, version=2)
    del table
    sk = SinkhornConfig(max_iters=max_iters)
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        table, stats = relabel_round(Scores(index, true, SINKHORN_K, {"cand_idx": cand, "cand_log_p": log_p}),
                                     Round(RelabelConfig(topk=TOPK), sk, prev, 2))
        out["sparse_s"] = time.perf_counter() - t0
    out.update(sparse_peak_mb=mem.peak / 2**20, sparse_iters=stats["iters"], sparse_converged=stats["converged"],
               table_samples=len(table))
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(out))


def run_scale(n: int, world: int, max_iters: int) -> dict:
    from distributed.cluster.dist import spawn_loopback
    with tempfile.TemporaryDirectory(prefix="avdet-bench-scale-") as tmp:
        t0 = time.perf_counter()
        spawn_loopback(_rank_job, world, n, tmp, max_iters)
        wall = time.perf_counter() - t0
        ranks = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(world)]
    peak = [max(r["kmeans_peak_mb"], r["sparse_peak_mb"]) for r in ranks]
    extra = (peak[0] - max(peak[1:] or [peak[0]])) * 2**20 / n
    return {"n": n, "world": world, "wall_s": wall, "ranks": ranks, "peak_mb_by_rank": peak,
            "rank0_extra_bytes_per_sample": extra, "label_table_mb": n * 16 / 2**20}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.split("\n")[0])
    p.add_argument("--n", default="1e6,1e7", help="comma-separated sample counts (default 1e6,1e7)")
    p.add_argument("--world", type=int, default=4, help="ranks (processes)")
    p.add_argument("--max-iters", type=int, default=200, help="Sinkhorn passes at most")
    p.add_argument("--goals", action="store_true", help="write the goal to benchmarks/GOALS.json (make bench)")
    add_common_args(p, "scale")
    argv = list(argv or [])
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sizes = [20_000] if args.tiny else [int(float(x)) for x in args.n.split(",") if x.strip()]
    world = 2 if args.tiny else args.world
    load0 = loadavg()
    rows = []
    for n in sizes:
        rows.append(run_scale(n, world, 30 if args.tiny else args.max_iters))
        log.info("N=%d: peak MB by rank %s, rank 0 extra %.1f B/sample, %.0f s", n,
                 [round(x) for x in rows[-1]["peak_mb_by_rank"]], rows[-1]["rank0_extra_bytes_per_sample"],
                 rows[-1]["wall_s"])
    big = rows[-1]
    fig = {"rows": rows, "loadavg_1m_start_end": [load0, loadavg()], "cores": os.cpu_count(),
           "goals": [{"goal": "scale_rank0_extra_bytes_per_sample", "measured": round(big["rank0_extra_bytes_per_sample"], 2),
                      "target": "<= 8 (N = %d, %d ranks)" % (big["n"], big["world"]),
                      "met": bool(big["rank0_extra_bytes_per_sample"] <= 8)}]}
    summary = "; ".join(
        f"N={r['n']:.0e} over {r['world']} ranks: peak MB by rank {[round(x) for x in r['peak_mb_by_rank']]} "
        f"(label table {r['label_table_mb']:.0f} MB), rank 0 extra {r['rank0_extra_bytes_per_sample']:.1f} B/sample, "
        f"k-means {r['ranks'][0]['kmeans_s']:.1f} s, sparse Sinkhorn {r['ranks'][0]['sparse_s']:.1f} s "
        f"({r['ranks'][0]['sparse_iters']} passes)" for r in rows)
    path = finish("scale", fig, summary, argv, args)
    log.info("%s -> %s", summary, path)
    return fig


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])
