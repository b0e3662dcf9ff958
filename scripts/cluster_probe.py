"""Where does a finished stage 1 lose cluster accuracy? Probe its model on the labelled split of its shards.

    python scripts/cluster_probe.py outputs/demo/stage1 [--split train] [--out probe.json] [--restarts 3,10,30]

For the frames of ``split`` (their true labels are used for scoring only): Hungarian accuracy of FAISS k-means on the
L2-normalised pooled audio / visual / both trunk features (what the classifiers see), and of each head's argmax and
Sinkhorn labels (audio, visual, combined). Features scoring far above the heads mean the heads reproduce early, noisy
labels (see README: the k-means warm start). ``--restarts``: how often k-means on the relabel rounds' features
(``both``) finds the partition with the lowest objective when it keeps the best of that many restarts (``--tries``
seeds each; ``stage1.relabel.kmeans_restarts``). Prints one JSON object.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from avdet.config import load_config  # noqa: E402
from avdet.fileio import write_json  # noqa: E402
from avdet.kmeans import kmeans  # noqa: E402
from avdet.metrics.clusters import hungarian_accuracy  # noqa: E402
from avdet.model import AVModel, pooled_features  # noqa: E402
from avdet.sinkhorn import column_marginal, sinkhorn_knopp  # noqa: E402
from data.stream import plain_loader  # noqa: E402
from distributed.stage1.config import Stage1Config  # noqa: E402


@torch.no_grad()
def features(stage1_dir: Path, split: str, batch_size: int = 128) -> tuple[dict[str, torch.Tensor], np.ndarray, int]:
    """(pooled features and logits of every frame of ``split``, true labels, K) from ``stage1_dir``."""
    cfg = load_config(Stage1Config, stage1_dir / "config.yaml")
    model = AVModel(cfg.model)
    model.load_state_dict(torch.load(stage1_dir / "model.pt", map_location="cpu", weights_only=True))
    model.eval()
    stream = dataclasses.replace(cfg.stream_config(shuffle=False), num_workers=0, batch_size=batch_size)
    cols: dict[str, list[torch.Tensor]] = {k: [] for k in ("vis_pool", "aud_pool", "vis_logits", "aud_logits")}
    labels = []
    for batch in plain_loader(cfg.manifest, split, stream):
        out = model(batch["frames"], batch["audio"])
        for k in cols:
            cols[k].append(out[k].float())
        labels.append(batch["label"])
    true = torch.cat(labels).numpy()
    if (true < 0).any():
        raise ValueError(f"cluster_probe: split {split!r} of {cfg.manifest} has frames without a true label")
    return {k: torch.cat(v) for k, v in cols.items()}, true, cfg.model.num_clusters


def probe(feats: dict[str, torch.Tensor], true: np.ndarray, k: int, lambda_sk: float = 20.0) -> dict[str, float]:
    """Hungarian accuracy of k-means on the features and of each head's argmax and Sinkhorn labels."""
    v, a = F.normalize(feats["vis_pool"], dim=1), F.normalize(feats["aud_pool"], dim=1)
    res = {}
    for name, f in {"audio": a, "visual": v, "both": torch.cat([v, a], 1)}.items():
        res[f"kmeans_{name}"] = hungarian_accuracy(kmeans(f.numpy(), k, niter=20, seed=0, nredo=3)[1], true)
    lv, la = F.log_softmax(feats["vis_logits"], 1), F.log_softmax(feats["aud_logits"], 1)
    for name, lp in {"audio": la, "visual": lv, "combined": (lv + la) / 2}.items():
        res[f"argmax_{name}"] = hungarian_accuracy(lp.argmax(1).numpy(), true)
        res[f"sinkhorn_{name}"] = hungarian_accuracy(
            sinkhorn_knopp(lp, lambda_sk, column_marginal(k), 300, 1e-3).labels.numpy(), true)
    return {key: round(float(val), 4) for key, val in res.items()}


def restart_sweep(x: np.ndarray, true: np.ndarray, k: int, restarts: list[int], tries: int) -> dict[str, dict]:
    """For each count in ``restarts``: k-means (best of that many restarts) with seeds 0..tries-1 on ``x`` (N, D);
    the Hungarian accuracy of each try (mean, min, how many < 0.9) and its objective (sum of squared distances to
    the nearest centroid: min, max; the lowest over every try is ``best_objective``)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    runs = {}
    for r in restarts:
        accs, objs = [], []
        for seed in range(tries):
            centroids, assign = kmeans(x, k, niter=20, seed=seed, nredo=r)
            accs.append(hungarian_accuracy(assign, true))
            objs.append(float(((x - centroids[assign]) ** 2).sum()))
        runs[str(r)] = {"acc_mean": float(np.mean(accs)), "acc_min": float(np.min(accs)),
                        "below_0.9": int(np.sum(np.array(accs) < 0.9)), "tries": tries,
                        "objective_min": min(objs), "objective_max": max(objs)}
    best = min(run["objective_min"] for run in runs.values())
    for run in runs.values():
        run["best_objective"] = best
    return {key: {name: round(val, 4) if isinstance(val, float) else val for name, val in run.items()}
            for key, run in runs.items()}


def main(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(prog="scripts/cluster_probe.py", description=__doc__.split("\n")[0])
    p.add_argument("stage1_dir", type=Path, help="a finished stage 1 (config.yaml, model.pt)")
    p.add_argument("--split", default="train")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.add_argument("--restarts", default="", help="comma-separated k-means restart counts to sweep, e.g. 3,10,30")
    p.add_argument("--tries", type=int, default=20, help="seeds per restart count (--restarts)")
    args = p.parse_args(argv)
    feats, true, k = features(args.stage1_dir, args.split)
    result = {"stage1_dir": str(args.stage1_dir), "split": args.split, "frames": int(true.size), "K": k,
              **probe(feats, true, k)}
    if args.restarts:
        x = pooled_features(feats, "both").numpy()
        result["kmeans_restarts"] = restart_sweep(x, true, k, [int(r) for r in args.restarts.split(",")], args.tries)
    print(json.dumps(result))
    if args.out:
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
