"""The detector's training rows: pseudo-annotations (``pseudo_<split>.json``) joined to the stream of frames by
sample index, so every worker sees ``{"frames" (H,W,3) uint8, "index", "box" (4,) xyxy float32, "cls"}``."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from data.shards import read_manifest
from data.stream import ray_dataset
from distributed.detector.config import DetectorTrainConfig

JOIN_CPUS = 0.25      # the pseudo-box join step of each worker's stream (distributed.cluster.resources counts it)


def load_pseudo_table(path: str | Path, min_confidence: float = 0.0, max_images: int = 0,
                      seed: int = 0) -> tuple[dict[str, np.ndarray], int]:
    """COCO pseudo-annotations -> ({"index" (N,) sorted int64, "box" (N,4) xyxy float32, "cls" (N,) int64
    category id}, K). One annotation per image (the first); boxes narrower than 1 px are widened to 1 px."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pseudo-annotations {path} do not exist (run jobs/pseudo_annotate.py first)")
    doc = json.loads(path.read_text())
    k = len(doc["categories"])
    first: dict[int, dict] = {}
    for a in doc["annotations"]:
        if a["score"] >= min_confidence:
            first.setdefault(int(a["image_id"]), a)
    index = np.array(sorted(first), np.int64)
    if max_images and len(index) > max_images:
        index = np.sort(np.random.default_rng(seed).choice(index, max_images, replace=False))
    box = np.array([first[i]["bbox"] for i in index.tolist()], np.float32).reshape(-1, 4)
    box[:, 2:] = box[:, :2] + np.maximum(box[:, 2:], 1.0)                     # [x, y, w, h] -> xyxy, >= 1 px
    cls = np.array([first[i]["category_id"] for i in index.tolist()], np.int64)
    if len(cls) and (cls.min() < 1 or cls.max() > k):
        raise ValueError(f"{path}: category ids {cls.min()}..{cls.max()} outside 1..{k}")
    return {"index": index, "box": box, "cls": cls}, k


def attach_pseudo(batch: dict[str, np.ndarray], index: np.ndarray, box: np.ndarray,
                  cls: np.ndarray) -> dict[str, np.ndarray]:
    """map_batches UDF: a stream block -> the rows of frames that have a pseudo-annotation, with it attached."""
    pos = np.searchsorted(index, batch["index"])
    pos_ok = np.minimum(pos, max(len(index) - 1, 0))
    found = (pos < len(index)) & (index[pos_ok] == batch["index"]) if len(index) else np.zeros(len(pos), bool)
    rows = pos[found]
    return {"frames": batch["frames"][found], "index": batch["index"][found], "box": box[rows], "cls": cls[rows]}


def training_dataset(cfg: DetectorTrainConfig, table: dict[str, np.ndarray], epoch: int | None = None,
                     part: tuple[int, int] | None = None):
    """Ray Dataset of annotated training rows (module docstring). ``epoch`` + ``part=(rank, world)``: that rank's
    part of the epoch's seeded order (reproducible; built per epoch by each worker); ``epoch=None``: shuffled
    afresh on every pass."""
    stream = dataclasses.replace(cfg.stream, batch_size=cfg.batch_size, shuffle=True, seed=cfg.seed)
    ds = ray_dataset(read_manifest(cfg.manifest), cfg.split, stream, epoch=epoch, part=part)
    return ds.map_batches(attach_pseudo, batch_size=None, batch_format="numpy", num_cpus=JOIN_CPUS,
                          fn_kwargs={k: table[k] for k in ("index", "box", "cls")})
