"""Detector inference over the test frames: a plain in-process loop (default, small sets) or a Ray Data
``map_batches`` over an actor pool (each actor loads the detector once).

Output ("predictions"): ``{sample index: {"boxes": (n, 4) xyxy frame pixels, "scores": (n,), "labels": (n,)
detector labels}}`` with an entry for every frame that was read, even when it has no detection. Detector label
``l`` >= 1 is pseudo-class ``l − 1`` (label 0 is background and never returned).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from avdet.detector import detect, load_detector
from data.shards import Manifest, iter_samples

log = logging.getLogger(__name__)

__all__ = ["Predictions", "predict_plain", "predict_indices", "predict_ray", "DetectorActor"]

Predictions = dict[int, dict[str, np.ndarray]]
_COLUMNS = ("index", "x0", "y0", "x1", "y1", "score", "label")


def _load(path: str | Path, score_threshold: float, device: str) -> torch.nn.Module:
    model = load_detector(path, map_location=device)
    model.roi_heads.score_thresh = float(score_threshold)  # torchvision's box_score_thresh
    return model.to(device).eval()


@torch.no_grad()
def _batches(samples: Iterable[dict], batch_size: int) -> Iterator[tuple[list[int], np.ndarray]]:
    idx, frames = [], []
    for s in samples:
        idx.append(int(s["meta"]["index"]))
        frames.append(s["frame"])
        if len(idx) == batch_size:
            yield idx, np.stack(frames)
            idx, frames = [], []
    if idx:
        yield idx, np.stack(frames)


def predict_plain(detector: str | Path, manifest: Manifest, split: str, batch_size: int = 8,
                  score_threshold: float = 0.05, device: str = "cpu") -> Predictions:
    """Every frame of ``split`` through the detector in this process."""
    model = _load(detector, score_threshold, device)
    out: Predictions = {}
    for idx, frames in _batches(iter_samples(manifest, split), batch_size):
        out.update(zip(idx, detect(model, frames, device)))
    log.info("detector: %d test frames, %d detections (score >= %.2f)", len(out),
             sum(len(p["scores"]) for p in out.values()), score_threshold)
    return out


def predict_indices(detector: str | Path, manifest: Manifest, split: str, indices, batch_size: int = 8,
                    score_threshold: float = 0.05, device: str = "cpu") -> Predictions:
    """Only the frames ``indices`` of ``split`` through the detector (decoding only those); frames not found are
    absent from the result."""
    from data.shards import read_frames

    frames = read_frames(manifest, split, indices)
    out: Predictions = {}
    if not frames:
        return out
    model = _load(detector, score_threshold, device)
    order = sorted(frames)
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        out.update(zip(idx, detect(model, np.stack([frames[i] for i in idx]), device)))
    return out


class DetectorActor:
    """Ray Data UDF: loads the detector once; a batch ``{"frames": (B,H,W,3) uint8, "index": (B,)}`` becomes one
    row per detection ``{"index", "x0", "y0", "x1", "y1", "score", "label"}``, plus a row with label −1 (no box)
    per frame so frames without detections are still seen."""

    def __init__(self, detector: str, score_threshold: float, device: str = "cpu"):
        torch.set_num_threads(1)
        self.device = device
        self.model = _load(detector, score_threshold, device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = detect(self.model, batch["frames"], self.device)
        cols: dict[str, list] = {c: [] for c in _COLUMNS}
        for i, o in zip(batch["index"], outs):
            rows = [(i, *o["boxes"][j], o["scores"][j], o["labels"][j]) for j in range(len(o["scores"]))]
            for row in rows + [(i, 0.0, 0.0, 0.0, 0.0, 0.0, -1)]:
                for c, v in zip(_COLUMNS, row):
                    cols[c].append(v)
        return {c: np.asarray(v, np.int64 if c in ("index", "label") else np.float64) for c, v in cols.items()}


def _rows_to_predictions(rows: dict[str, np.ndarray]) -> Predictions:
    out: Predictions = {}
    order = np.argsort(-rows["score"], kind="stable")
    for i in np.unique(rows["index"]):
        sel = order[(rows["index"][order] == i) & (rows["label"][order] >= 0)]
        out[int(i)] = {"boxes": np.stack([rows[c][sel] for c in ("x0", "y0", "x1", "y1")], axis=1).reshape(-1, 4),
                       "scores": rows["score"][sel], "labels": rows["label"][sel]}
    return out


def predict_ray(detector: str | Path, manifest: Manifest, split: str, batch_size: int = 8,
                score_threshold: float = 0.05, num_actors: int = 1, ray_address: str = "local",
                device: str = "cpu") -> Predictions:
    """The same as :func:`predict_plain` through Ray Data: shards read by tasks, frames scored by an actor pool."""
    import ray

    from data.config import StreamConfig
    from distributed.cluster.ray_local import connect_ray
    from data.stream import ray_dataset

    connect_ray(ray_address, num_cpus=max(2, num_actors + 1))
    ds = ray_dataset(manifest, split, StreamConfig(shuffle=False, batch_size=batch_size, read_concurrency=1,
                                                       logmel_in_reader=False))
    ds = ds.map_batches(DetectorActor, batch_size=batch_size, batch_format="numpy",
                        fn_constructor_kwargs={"detector": str(Path(detector).resolve()),
                                               "score_threshold": float(score_threshold), "device": device},
                        compute=ray.data.ActorPoolStrategy(size=num_actors), num_cpus=1,
                        num_gpus=1 if device.startswith("cuda") else 0)
    parts = list(ds.iter_batches(batch_size=None, batch_format="numpy"))
    rows = {c: np.concatenate([p[c] for p in parts]) if parts else np.zeros(0) for c in _COLUMNS}
    out = _rows_to_predictions(rows)
    log.info("detector (Ray, %d actors): %d test frames, %d detections", num_actors, len(out),
             sum(len(p["scores"]) for p in out.values()))
    return out
