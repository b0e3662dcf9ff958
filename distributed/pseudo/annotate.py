"""Pseudo-annotation: the stage-1 model labels every frame with one box and one pseudo-class (paper §3.2).

Ray Data streams each split's shards (:func:`data.stream.ray_dataset`, unshuffled) through a pool of
``num_actors`` :class:`PseudoLabeler` actors (``map_batches`` with an ``ActorPoolStrategy``); each actor holds the
stage-1 ``AVModel`` and returns, per frame, the self-label of :func:`avdet.selflabels.self_labels` and the grid
heatmap, with the sample's ``video_id``, ``timestamp`` and ``file_name`` the stream carries, so each shard is read
once (plus a header-only listing of the split's indices and the few frames the heatmap figures show).

Artifacts under ``out_dir`` (each written to a temp file, then renamed; ``done.json`` last):

- ``pseudo_<split>.json`` — COCO. images ``{id: sample index, file_name: "<shard path rel. to the manifest>#<key>",
  width, height, video_id, timestamp, true_label (class id, -1 unknown; evaluation only)}``; annotations
  ``{id, image_id, bbox [x, y, w, h] (frame pixels), category_id = pseudo-class + 1, score = confidence,
  heatmap_score = max_u h_u, peakiness, area, iscrowd: 0}``; categories ``[{id: k+1, name: "cluster<k>"}]`` (one,
  ``"object"``, for a class-agnostic stage-1 method: :meth:`avdet.localisers.Localiser.num_classes`);
  ``info`` holds the split's statistics. Frames below ``selflabel.min_confidence`` keep their image entry but get
  no annotation (counted as filtered).
- ``heatmaps_<split>.npz`` — ``index (N,)``, ``heatmap (N, h, w)``, ``box (N, 4)`` xyxy, ``cls (N,)``,
  ``confidence (N,)``, ``frame (N, H, W, 3) uint8`` for up to ``num_heatmaps`` frames (no pickled objects).
- ``stats.json`` — per split and overall: counts, class histogram, box-area-fraction quantiles, filtered fraction,
  seconds, frames/s.  ``config.yaml`` — the resolved config.  ``done.json`` — the summary returned.

Re-running a complete stage returns its ``done.json``; a split whose json and npz exist is not recomputed.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from avdet.config import SelfLabelConfig, from_dict, load_config, replace, save_config, to_dict
from avdet.fileio import write_atomic, write_json
from avdet.localisers import LOCALISERS
from avdet.model import AVModel, load_model
from avdet.selflabels import self_labels
from data.artifacts import read_done, write_done
from data.pseudo_coco import coco_document
from data.shards import Manifest, list_indices, read_frames, read_manifest
from data.stream import BatchCollate, ray_dataset
from distributed.cluster.progress import Progress
from distributed.cluster.ray_local import connect_ray
from distributed.cluster.resources import fit_to_cluster, pool_demand
from distributed.pseudo.config import PseudoConfig
from distributed.stage1.config import Stage1Config

log = logging.getLogger(__name__)

AREA_QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
_COLUMNS = ("index", "label", "box", "cls", "confidence", "score", "peakiness", "height", "width", "video_id",
            "timestamp", "file_name", "d_on", "av_dist", "av_dist_neg")
ONSCREEN_COLUMNS = ("index", "video_id", "d_on", "av_dist", "av_dist_neg")     # onscreen_<split>.npz (seed 001)


def stage1_config(stage1_dir: str | Path) -> Stage1Config:
    """The resolved stage-1 config (``config.yaml``); checks that ``model.pt`` is there too."""
    d = Path(stage1_dir)
    for name in ("model.pt", "config.yaml"):
        if not (d / name).is_file():
            raise FileNotFoundError(f"stage-1 artifact {d / name} is missing (run stage 1 first, or fix stage1_dir)")
    return load_config(Stage1Config, d / "config.yaml")


def load_stage1(stage1_dir: str | Path) -> tuple[Stage1Config, AVModel]:
    """The stage-1 config (``config.yaml``) and model (``model.pt``, plain state_dict) in eval mode."""
    d = Path(stage1_dir)
    cfg = stage1_config(d)
    build = LOCALISERS[cfg.method].build
    return cfg, load_model(cfg.model, d / "model.pt", build=lambda _: build(cfg.model, cfg.dsol, cfg.proposals))


class PseudoLabeler:
    """Ray Data actor: numpy block ``{"frames" (B,H,W,3) uint8, "audio" (B,S) int16, "index", "label"}`` ->
    ``{"index", "label" (B,) int64, "box" (B,4) float32 xyxy, "cls" (B,) int64, "confidence", "score",
    "peakiness" (B,) float32, "height", "width" (B,) int64, "heatmap" (B,h,w) float32}``: every frame, unfiltered
    (the driver applies ``min_confidence`` so that it can count what it drops)."""

    def __init__(self, stage1_dir: str, selflabel: dict, torch_threads: int = 1, self_box: str = "method"):
        torch.set_num_threads(torch_threads)
        cfg, self.model = load_stage1(stage1_dir)
        self.method = LOCALISERS[cfg.method]
        self.own_box = self.method.boxes is not None and self_box == "method"
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        self.collate = BatchCollate(cfg.audio)
        self.selflabel = replace(from_dict(SelfLabelConfig, selflabel), min_confidence=0.0)

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        dec = self.collate(batch)
        extra = {k: dec[k].to(self.device) for k in ("proposals", "proposal_count") if k in dec}
        out = self.model(dec["frames"].to(self.device), dec["audio"].to(self.device), **extra)
        heat = self.method.maps(self.model, out).float().cpu()
        n, h, w = batch["frames"].shape[:3]
        logits = (out["vis_logits"], out["aud_logits"]) if self.method.classes else (None, None)
        recs = self_labels(heat, *logits, self.selflabel, (h, w))
        if self.own_box:                                   # the method's own box (seed 001: its best proposal)
            has = out["exists"].any(1).tolist() if "exists" in out else [True] * n
            for r, box, ok in zip(recs, self.method.boxes(out).float().cpu().tolist(), has):
                if ok:                                     # a frame without any proposal keeps the map's box
                    r["box"] = box
        onscreen = self._onscreen(dec, out) if "assoc" in out else np.full((3, n), np.nan, np.float32)
        if [r["index"] for r in recs] != list(range(n)):
            raise RuntimeError(f"self_labels returned {len(recs)} records for a batch of {n} at min_confidence 0")
        col = lambda k, dt: np.array([r[k] for r in recs], dtype=dt)  # noqa: E731
        return {"index": np.asarray(batch["index"], np.int64), "label": np.asarray(batch["label"], np.int64),
                "box": col("box", np.float32).reshape(n, 4), "cls": col("cls", np.int64),
                "confidence": col("confidence", np.float32), "score": col("score", np.float32),
                "peakiness": col("peakiness", np.float32), "height": np.full(n, h, np.int64),
                "width": np.full(n, w, np.int64), "heatmap": heat.numpy(),
                "d_on": onscreen[0], "av_dist": onscreen[1], "av_dist_neg": onscreen[2],
                **{k: np.asarray(batch[k]) for k in ("video_id", "timestamp", "file_name")}}

    def _onscreen(self, dec: dict, out: dict) -> np.ndarray:
        """(3, B): d_on = max_k d_k, ‖f^att − f^s‖ of the frame with its audio, and of the frame with the audio of the
        next frame of the batch from another clip (NaN: none) — seed 001's on/off-screen evidence."""
        from avdet.dsol import negative_partner
        n = len(dec["index"])
        partner = negative_partner(dec["clip"], torch.arange(n))
        has = partner >= 0
        neg = torch.full((n,), float("nan"))
        if bool(has.any()):
            frames = dec["frames"][has].to(self.device)
            other = dec["audio"][partner[has]].to(self.device)
            swapped = self.model(frames, other)                  # map-only mode: no proposals needed
            neg[has] = (swapped["att_feat"] - swapped["aud_feat"]).norm(dim=1).float().cpu()
        d_on = out["assoc"].amax(1).float().cpu()
        dist = (out["att_feat"] - out["aud_feat"]).norm(dim=1).float().cpu()
        return torch.stack([d_on, dist, neg]).numpy()


def heatmap_indices(indices: list[int], n: int) -> set[int]:
    """Up to ``n`` indices evenly spaced over the sorted ``indices`` (deterministic)."""
    idx = sorted(indices)
    if n <= 0 or not idx:
        return set()
    pos = np.unique(np.linspace(0, len(idx) - 1, min(n, len(idx))).round().astype(int))
    return {idx[p] for p in pos}


# ---------------------------------------------------------------------------------------------------------------
# one split


def _infer(manifest: Manifest, split: str, cfg: PseudoConfig, audio, keep: set[int], proposals: str = ""):
    """Run the actor pool over ``split`` (with the proposal set ``proposals`` joined, for a method that reads one);
    returns (columns of every frame, {index: heatmap} for ``keep``)."""
    import ray

    ds = ray_dataset(manifest, split, dataclasses.replace(cfg.stream_config(audio), proposals=proposals))
    ds = ds.map_batches(
        PseudoLabeler, batch_size=cfg.batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=cfg.num_actors),
        fn_constructor_kwargs={"stage1_dir": str(Path(cfg.stage1_dir).resolve()),
                               "selflabel": to_dict(cfg.selflabel), "torch_threads": cfg.torch_threads,
                               "self_box": cfg.self_box},
        num_cpus=cfg.actor_cpus, num_gpus=cfg.actor_gpus or None)
    cols: dict[str, list[np.ndarray]] = {k: [] for k in _COLUMNS}
    heat: dict[int, np.ndarray] = {}
    total = sum(s.count for s in manifest.split_shards(split))
    progress, done = Progress(cfg.out_dir, f"pseudo ({split})", 1, total, "frames"), 0
    batches = ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=cfg.stream.prefetch_batches)
    for batch in batches:
        done += len(batch["index"])
        progress.step(0, done, len(batch["index"]))
        for k in _COLUMNS:
            cols[k].append(batch[k])
        for i, index in enumerate(batch["index"].tolist()):
            if index in keep:
                heat[index] = batch["heatmap"][i]
    progress.close()
    if not cols["index"]:
        raise RuntimeError(f"pseudo-annotation: split {split!r} of {manifest.root} produced no frames")
    merged = {k: np.concatenate(v) for k, v in cols.items()}
    order = np.argsort(merged["index"], kind="stable")
    return {k: v[order] for k, v in merged.items()}, heat


def split_stats(doc: dict, num_clusters: int, unread: int) -> dict:
    """Counts, class histogram (index k = pseudo-class k), box-area-fraction quantiles of the kept annotations."""
    n_img, anns = len(doc["images"]), doc["annotations"]
    size = {im["id"]: im["width"] * im["height"] for im in doc["images"]}
    frac = np.array([a["area"] / size[a["image_id"]] for a in anns]) if anns else np.zeros(0)
    hist = np.bincount([a["category_id"] - 1 for a in anns], minlength=num_clusters)
    return {"frames": n_img, "annotated": len(anns), "filtered": n_img - len(anns),
            "filtered_fraction": (n_img - len(anns)) / max(n_img, 1), "unread_samples": unread, "class_histogram": hist.tolist(),
            "area_fraction_quantiles": {str(q): float(np.quantile(frac, q)) if len(frac) else None
                                        for q in AREA_QUANTILES},
            "mean_confidence": float(np.mean([a["score"] for a in anns])) if anns else None}


def annotate_split(manifest: Manifest, split: str, cfg: PseudoConfig, stage1: Stage1Config, out: Path) -> dict:
    """Write ``pseudo_<split>.json`` and ``heatmaps_<split>.npz`` (or reuse finished ones); returns the split stats."""
    json_path, npz_path = out / f"pseudo_{split}.json", out / f"heatmaps_{split}.npz"
    if json_path.is_file() and npz_path.is_file():
        log.info("pseudo: split %s already annotated in %s; reusing it", split, json_path)
        return {**json.loads(json_path.read_text())["info"], "reused": True}
    t0 = time.perf_counter()
    listed = list_indices(manifest, split)
    keep = heatmap_indices(listed, cfg.num_heatmaps)
    proposals = stage1.proposals.set if LOCALISERS[stage1.method].proposals else ""
    pred, heat = _infer(manifest, split, cfg, stage1.audio, keep, proposals)
    seconds = time.perf_counter() - t0
    k = LOCALISERS[stage1.method].num_classes(stage1.model.num_clusters)
    doc = coco_document(pred, k, cfg.selflabel.min_confidence)
    found = set(pred["index"].tolist())
    stats = split_stats(doc, k, unread=len(set(listed) - found))
    stats.update({"seconds": seconds, "frames_per_s": len(found) / max(seconds, 1e-9)})
    if stats["unread_samples"]:
        log.warning("pseudo: split %s: %d samples listed in the shards were not decoded (see the reader's log); "
                    "they have no image entry", split, stats["unread_samples"])
    doc["info"] = {"split": split, **stats}
    _write_heatmaps(npz_path, manifest, split, pred, heat)
    if np.isfinite(pred["d_on"]).any():                         # a method with on/off-screen evidence (seed 001)
        write_atomic(out / f"onscreen_{split}.npz",
                     lambda f: np.savez(f, **{k: pred[k].astype(str) if k == "video_id" else pred[k]
                                              for k in ONSCREEN_COLUMNS}))     # str, not object: no pickle
    write_json(json_path, doc)
    log.info("pseudo: split %s: %d frames, %d annotated, %.1f s (%.1f frames/s)", split, stats["frames"],
             stats["annotated"], seconds, stats["frames_per_s"])
    return stats


def _write_heatmaps(path: Path, manifest: Manifest, split: str, pred: dict, heat: dict[int, np.ndarray]) -> None:
    idx = np.array(sorted(heat), np.int64)
    rows = np.searchsorted(pred["index"], idx)
    frames = read_frames(manifest, split, idx.tolist())
    h, w = (next(iter(heat.values())).shape if heat else (0, 0))
    arrays = {"index": idx, "heatmap": np.stack([heat[i] for i in idx.tolist()]) if len(idx) else
              np.zeros((0, h, w), np.float32),
              "box": pred["box"][rows], "cls": pred["cls"][rows], "confidence": pred["confidence"][rows]}
    if len(frames) == len(idx) and len(idx):
        arrays["frame"] = np.stack([frames[i] for i in idx.tolist()])
    write_atomic(path, lambda f: np.savez(f, **arrays))


# ---------------------------------------------------------------------------------------------------------------
# the stage


def _local_cpus(cfg: PseudoConfig) -> int:
    """Logical CPUs for a local Ray: the actor pool plus the read tasks (0.5 CPU each) plus one spare."""
    need = cfg.num_actors * cfg.actor_cpus + max(1, cfg.stream.read_concurrency) * 0.5 + 1
    return max(os.cpu_count() or 1, math.ceil(need))


def _overall(per_split: dict[str, dict], num_clusters: int) -> dict:
    frames = sum(s["frames"] for s in per_split.values())
    annotated = sum(s["annotated"] for s in per_split.values())
    hist = np.sum([s["class_histogram"] for s in per_split.values()], axis=0).tolist()
    seconds = sum(s.get("seconds", 0.0) for s in per_split.values())
    return {"frames": frames, "annotated": annotated, "filtered": frames - annotated,
            "filtered_fraction": (frames - annotated) / max(frames, 1), "class_histogram": hist,
            "num_clusters": num_clusters, "seconds": seconds, "frames_per_s": frames / max(seconds, 1e-9)}


def run_pseudo(cfg: PseudoConfig) -> dict:
    """Annotate every split in ``cfg.splits`` (or return the finished stage's ``done.json``). Returns
    ``{"out_dir", "files": {split: json path}, "num_clusters", "stats": {...}}``."""
    out = Path(cfg.out_dir)
    done = read_done(out, "pseudo")
    if done is not None:
        return done
    stage1 = stage1_config(cfg.stage1_dir)
    manifest = read_manifest(cfg.manifest)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    connect_ray(cfg.ray_address, num_cpus=_local_cpus(cfg))
    fitted = fit_to_cluster(pool_demand("pseudo-annotation", cfg.num_actors, cfg.actor_cpus,
                                        cfg.stream.read_concurrency,
                                        "pseudo.num_actors or pseudo.stream.read_concurrency"))
    cfg = dataclasses.replace(cfg, actor_cpus=fitted.cpus_per_worker)
    k = LOCALISERS[stage1.method].num_classes(stage1.model.num_clusters)
    log.info("pseudo: splits %s, stage-1 method %s, K=%d, %d actors, beta=%.2f, min_confidence=%.3f", cfg.splits,
             stage1.method, k, cfg.num_actors, cfg.selflabel.beta, cfg.selflabel.min_confidence)
    per_split = {s: annotate_split(manifest, s, cfg, stage1, out) for s in cfg.splits}
    stats = {"splits": per_split, "overall": _overall(per_split, k), "selflabel": to_dict(cfg.selflabel)}
    write_json(out / "stats.json", stats)
    summary = {"out_dir": str(out), "num_clusters": k,
               "files": {s: str(out / f"pseudo_{s}.json") for s in cfg.splits},
               "heatmaps": {s: str(out / f"heatmaps_{s}.npz") for s in cfg.splits},
               "stats": stats["overall"]}
    files = [out / "stats.json", out / "config.yaml"] + [out / f"{kind}_{s}.{ext}" for s in cfg.splits
                                                          for kind, ext in (("pseudo", "json"), ("heatmaps", "npz"))]
    onscreen = {s: out / f"onscreen_{s}.npz" for s in cfg.splits if (out / f"onscreen_{s}.npz").is_file()}
    files += list(onscreen.values())
    if onscreen:
        summary["onscreen"] = {s: str(p) for s, p in onscreen.items()}
    return write_done(out, summary, files)
