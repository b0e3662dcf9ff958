"""Detector stage (paper §3.3): a Ray Train ``TorchTrainer`` job (DDP) fits torchvision Faster R-CNN on the
(frame, pseudo-box, pseudo-class) triplets of ``pseudo_train.json``.

Data: :func:`data.stream.ray_dataset` streams the split's frames; a ``map_batches`` step joins each frame to its
pseudo-annotation by sample index and drops frames without one (filtered by confidence, or outside ``max_images``),
so every worker sees rows ``{"frames" (H,W,3) uint8, "index", "box" (4,) xyxy float32, "cls" = category id}``.
The loop itself is :mod:`distributed.detector_worker`.

Artifacts under ``out_dir``: ``config.yaml`` (resolved, with K filled in), ``tb/`` (TensorBoard, rank 0),
``ray/`` (the Ray Train run and its per-epoch checkpoints), ``detector.pt`` (:func:`avdet.detector.save_detector`:
plain torchvision builder + state_dict), ``history.json`` (per-epoch metrics), ``done.json`` (written last).
Re-running a complete stage returns its ``done.json``; re-running an interrupted one resumes from the latest
checkpoint (Ray Train restores it from ``ray/``).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from avdet.config import DetectorConfig, require, save_config, to_dict
from avdet.detector import build_detector, save_detector
from avdet.fileio import write_json
from data.config import StreamConfig
from data.raylocal import connect_ray
from data.shards import read_manifest
from data.stream import ray_dataset
from data.artifacts import read_done, write_done
from distributed.detector_worker import train_loop_per_worker
from distributed.resources import fit_to_cluster, train_demand

log = logging.getLogger(__name__)
JOIN_CPUS = 0.25      # the pseudo-box join step of each worker's stream (distributed.resources counts it)



@dataclass
class DetectorTrainConfig:
    """Pseudo-annotations (``pseudo_dir``/``pseudo_<split>.json``) + shards (``manifest``) -> detector in ``out_dir``.

    ``detector.num_classes`` is set to K, the number of categories of the pseudo-annotations. ``batch_size`` is
    images per worker per step; ``lr`` is for the global batch (torchvision's reference: 0.02 for 16 images).
    Warmup is linear from ``warmup_factor``·lr over ``warmup_steps`` steps; ``lr`` is multiplied by ``lr_gamma`` at
    each epoch in ``lr_steps``. ``min_confidence`` drops pseudo-annotations with a lower score; ``max_images`` > 0
    trains on a fixed random subset of that many annotated frames (CPU demos). ``torch_threads`` 0 keeps Ray's
    default (one thread per reserved CPU). ``hflip`` (probability) and ``scale_jitter`` ([lo, hi] resize factors,
    then crop/pad back to the frame size) augment the training images as torchvision's detection references do;
    ``seed`` drives initialisation, the stream order, the box samplers and the augmentations. ``fail_at_step`` >= 0 is a FAULT-INJECTION knob for tests: rank 0 raises
    once at that global step (a marker file in ``out_dir`` stops it recurring after the restart); leave it at -1.
    """
    pseudo_dir: str = ""
    manifest: str = ""
    out_dir: str = "outputs/detector"
    split: str = "train"
    ray_address: str = "local"
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    epochs: int = 4
    batch_size: int = 8
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    warmup_factor: float = 0.001
    lr_steps: list[int] = field(default_factory=list)
    lr_gamma: float = 0.1
    grad_clip: float = 0.0
    min_confidence: float = 0.0
    max_images: int = 0
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    torch_threads: int = 0
    report_every: int = 20
    max_failures: int = 0
    seed: int = 0
    hflip: float = 0.0
    scale_jitter: list[float] = field(default_factory=lambda: [1.0, 1.0])
    fail_at_step: int = -1
    stream: StreamConfig = field(default_factory=StreamConfig)

    def augments(self) -> bool:
        return self.hflip > 0 or list(self.scale_jitter) != [1.0, 1.0]

    def check(self) -> None:
        require(self.split in ("train", "test"), "split", "must be 'train' or 'test'")
        require(self.epochs >= 1, "epochs", "must be >= 1")
        require(self.batch_size >= 1, "batch_size", "must be >= 1 (images per worker per step)")
        require(self.lr > 0, "lr", "must be > 0")
        require(0 <= self.momentum < 1, "momentum", "must be in [0, 1)")
        require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        require(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        require(0 < self.warmup_factor <= 1, "warmup_factor", "must be in (0, 1]")
        require(all(e >= 1 for e in self.lr_steps), "lr_steps", "entries must be epochs >= 1")
        require(0 < self.lr_gamma <= 1, "lr_gamma", "must be in (0, 1]")
        require(self.grad_clip >= 0, "grad_clip", "must be >= 0 (0 = no clipping)")
        require(0 <= self.min_confidence <= 1, "min_confidence", "must be in [0, 1]")
        require(self.max_images >= 0, "max_images", "must be >= 0 (0 = all)")
        require(self.num_workers >= 1, "num_workers", "must be >= 1")
        require(self.cpus_per_worker > 0, "cpus_per_worker", "must be > 0")
        require(self.torch_threads >= 0, "torch_threads", "must be >= 0 (0 = Ray's default)")
        require(self.report_every >= 1, "report_every", "must be >= 1")
        require(self.max_failures >= -1, "max_failures", "must be >= 0, or -1 for unlimited")
        require(0 <= self.hflip <= 1, "hflip", "must be a probability in [0, 1]")
        require(len(self.scale_jitter) == 2 and 0 < self.scale_jitter[0] <= self.scale_jitter[1] <= 4,
                "scale_jitter", "must be [lo, hi] with 0 < lo <= hi <= 4 ([1, 1] = off)")
        require(self.seed >= 0, "seed", "must be >= 0")
        require(self.fail_at_step >= -1, "fail_at_step", "must be >= 0, or -1 for no fault injection")


# ---------------------------------------------------------------------------------------------------------------
# pseudo-annotations -> training rows


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


# ---------------------------------------------------------------------------------------------------------------
# the stage


def _trainer(cfg: DetectorTrainConfig, table: dict[str, np.ndarray]):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from distributed.torch_loopback import LoopbackTorchConfig

    out = Path(cfg.out_dir).resolve()
    return TorchTrainer(
        train_loop_per_worker,
        torch_config=LoopbackTorchConfig(),
        train_loop_config={"cfg": to_dict(dataclasses.replace(cfg, out_dir=str(out),
                                                              manifest=str(Path(cfg.manifest).resolve()))),
                           "table": table},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=RunConfig(name="detector", storage_path=str(out / "ray"),
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
        # no datasets: each worker streams its part of every epoch's seeded order (detector_worker)
    )


def _local_cpus(cfg: DetectorTrainConfig) -> int:
    """Logical CPUs for a local Ray: the train workers plus room for the read and join tasks."""
    need = cfg.num_workers * cfg.cpus_per_worker + cfg.stream.read_concurrency * 0.5 + 1
    return max(os.cpu_count() or 1, math.ceil(need))


def _finish(cfg: DetectorTrainConfig, checkpoint, out: Path, table: dict) -> dict:
    """Latest Ray Train checkpoint -> ``detector.pt``, ``history.json``, ``done.json``; returns the summary."""
    if checkpoint is None:
        raise RuntimeError(f"detector training under {out / 'ray'} ended without a checkpoint; nothing to save")
    with checkpoint.as_directory() as d:
        state = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=True)
        history = json.loads((Path(d) / "history.json").read_text())
    model = build_detector(cfg.detector)
    model.load_state_dict(state["model"])
    save_detector(model, cfg.detector, out / "detector.pt")
    write_json(out / "history.json", history)
    summary = {"detector": str(out / "detector.pt"), "history": str(out / "history.json"),
               "num_classes": cfg.detector.num_classes, "num_train_images": int(len(table["index"])),
               "epochs": len(history), "resumes": int(state["resumes"]),
               "final_loss": history[-1]["loss"] if history else None,
               "images_per_s": history[-1]["images_per_s"] if history else None}
    return write_done(out, summary, [out / "detector.pt", out / "history.json", out / "config.yaml"])


def run_detector_training(cfg: DetectorTrainConfig) -> dict:
    """Train the detector (or return the finished stage's summary). Returns ``{"detector", "history",
    "num_classes", "num_train_images", "epochs", "resumes", "final_loss", "images_per_s"}``."""
    out = Path(cfg.out_dir)
    done = read_done(out, "detector")
    if done is not None:
        return done
    table, k = load_pseudo_table(Path(cfg.pseudo_dir) / f"pseudo_{cfg.split}.json", cfg.min_confidence,
                                 cfg.max_images, cfg.seed)
    if len(table["index"]) < cfg.batch_size * cfg.num_workers:
        raise ValueError(f"detector: {len(table['index'])} annotated frames in {cfg.pseudo_dir} but batch_size "
                         f"{cfg.batch_size} x num_workers {cfg.num_workers} needs more; lower them")
    if cfg.detector.num_classes != k:
        log.info("detector: num_classes %d -> %d (categories of the pseudo-annotations)", cfg.detector.num_classes, k)
        cfg = dataclasses.replace(cfg, detector=dataclasses.replace(cfg.detector, num_classes=k))
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    connect_ray(cfg.ray_address, num_cpus=_local_cpus(cfg))
    log.info("detector: %d images, K=%d, %s at %d px, %d workers x batch %d, %d epochs", len(table["index"]), k,
             cfg.detector.backbone, cfg.detector.min_size, cfg.num_workers, cfg.batch_size, cfg.epochs)
    fitted = fit_to_cluster(train_demand("detector", cfg.num_workers, cfg.cpus_per_worker,
                                         cfg.stream.read_concurrency, "detector.num_workers or "
                                         "detector.stream.read_concurrency", join_cpus=JOIN_CPUS))
    cfg = dataclasses.replace(cfg, cpus_per_worker=fitted.cpus_per_worker)
    result = _trainer(cfg, table).fit()
    if result.error is not None:
        raise RuntimeError(f"detector training failed (checkpoints kept under {out / 'ray'}): "
                           f"{result.error}") from result.error
    return _finish(cfg, result.checkpoint, out, table)


@torch.no_grad()
def predict_batch(model: torch.nn.Module, frames: np.ndarray | torch.Tensor,
                  device: str | torch.device = "cpu") -> list[dict[str, np.ndarray]]:
    """Detections for a batch of frames: ``frames`` (B, H, W, 3) uint8 -> per frame ``{"boxes" (n,4) float32 xyxy
    frame pixels, "scores" (n,) float32, "labels" (n,) int64 category id (= pseudo-class + 1)}``. Eval mode."""
    model.eval().to(device)
    frames = torch.as_tensor(np.asarray(frames))
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"predict_batch: frames must be (B, H, W, 3) uint8, got {tuple(frames.shape)} {frames.dtype}")
    images = [f.permute(2, 0, 1).to(device).float().div_(255.0) for f in frames]
    return [{"boxes": o["boxes"].cpu().numpy().astype(np.float32), "scores": o["scores"].cpu().numpy(),
             "labels": o["labels"].cpu().numpy().astype(np.int64)} for o in model(images)]
